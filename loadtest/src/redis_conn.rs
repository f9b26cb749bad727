//! The loadtest's own Redis connection (token seeding, the `redis` workload's publishes): one
//! server for `redis://…`, a Redis Cluster for `redis+cluster://…` — the URL forms of
//! `FANOUT_REDIS_URL`, parsed by the same parser the nodes use (`fanout_adapter`).

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// A multiplexed connection to one Redis or to a Redis Cluster (commands routed by slot).
#[derive(Clone)]
pub enum RedisConn {
    /// One server (classic mode).
    Single(MultiplexedConnection),
    /// A Redis Cluster (sharded mode).
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects to what `url` names.
    pub async fn connect(url: &str) -> RedisResult<Self> {
        let target = fanout_adapter::parse_redis_target(url).map_err(|err| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "bad Redis URL",
                err.to_string(),
            ))
        })?;
        match target {
            fanout_adapter::RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                Ok(Self::Single(
                    client.get_multiplexed_async_connection().await?,
                ))
            }
            fanout_adapter::RedisTarget::Cluster(cluster) => {
                let client = ClusterClientBuilder::new(cluster.seed_urls()).build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// The publish command the nodes listen to: `PUBLISH` on one Redis, `SPUBLISH` (sharded
    /// pub/sub) on a cluster.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }

    /// True for a Redis Cluster (a pipeline must then stay within one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
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
