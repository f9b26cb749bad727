//! [`EitherConnection`]: a connection to whatever a [`RedisTarget`](crate::RedisTarget) names
//! — one server or a Redis Cluster — as one [`ConnectionLike`], so code that sends commands
//! (the node's stores, the loadtest's seeding and publishing) is written once for both.

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection of one of two kinds, both speaking [`ConnectionLike`]: typically a
/// single-server connection (multiplexed, maybe reconnecting) and a cluster connection.
pub enum EitherConnection<S, C> {
    /// A connection to one Redis server (classic mode).
    Single(S),
    /// A connection to a Redis Cluster (sharded mode).
    Cluster(C),
}

impl<S, C> EitherConnection<S, C> {
    /// True for a Redis Cluster (a pipeline must then stay within one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl<S: Clone, C: Clone> Clone for EitherConnection<S, C> {
    fn clone(&self) -> Self {
        match self {
            Self::Single(s) => Self::Single(s.clone()),
            Self::Cluster(c) => Self::Cluster(c.clone()),
        }
    }
}

impl<S: ConnectionLike + Send, C: ConnectionLike + Send> ConnectionLike for EitherConnection<S, C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
