//! Redis connections: one dedicated RESP2 subscriber connection, one publisher connection,
//! reconnect with capped exponential backoff, resubscription, readiness, and routing of
//! inbound messages into bounded queues. Plus the in-process loopback used in embedded mode.
//!
//! # Why a dedicated RESP2 pub/sub connection
//! A RESP2 connection in subscribe mode makes the subscription state explicit: the
//! connection is either up with every `SUBSCRIBE`/`PSUBSCRIBE` confirmed (we set
//! `ready = true` only after the confirmations of the full resubscription arrive) or gone
//! (the message stream ends, we set `ready = false` and reconnect). It works with every
//! Redis/Valkey version and with a plain `redis://` URL (no `?protocol=resp3`), and since a
//! subscribed connection carries nothing else, `PUBSUB NUMSUB` counts exactly one
//! connection per process — what the Node adapter's peer counting assumes.
//! Commands (`PUBLISH`, `PUBSUB NUMSUB`) go through a separate `ConnectionManager`,
//! which reconnects by itself; every command is bounded by a timeout.
//!
//! # Routing
//! Every subscription (a channel or a pattern) has one or more [`Route`]s: a bounded
//! `mpsc` sender. The reader task only does `try_send`: a full queue drops the message
//! and counts it (`fanout_adapter_dropped_messages_total`), a closed queue removes the
//! route. The reader therefore never blocks on a slow consumer.
//!
//! # Modules
//! * [`routes`] — the routing table ([`Route`], [`SubKey`], [`SubId`]).
//! * [`local`] — [`LocalBus`], the embedded-mode loopback.
//! * [`connection`] — [`RedisDriver`]: connections, commands, readiness.
//! * [`reader`] — the subscriber's reader task (reconnect, resubscribe, health check).
//! * [`sharded`] — [`ShardedDriver`]: Redis Cluster, `SPUBLISH`/`SSUBSCRIBE`, desired vs
//!   live subscriptions (see its docs).

mod connection;
mod local;
mod reader;
mod routes;
mod sharded;

use std::time::Duration;

use tokio::sync::watch;

use crate::error::Error;

pub(crate) use connection::RedisDriver;
pub(crate) use local::LocalBus;
pub(crate) use routes::{Inbound, Route, SubId, SubKey};
pub(crate) use sharded::ShardedDriver;

/// Timing knobs of the Redis driver.
#[derive(Debug, Clone)]
pub(crate) struct DriverConfig {
    pub url: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    pub health_check_interval: Duration,
    /// Inbound messages longer than this are skipped and counted.
    pub max_message_bytes: usize,
}

/// The message bus behind the adapter: Redis, or an in-process loopback.
#[derive(Debug, Clone)]
pub(crate) enum Driver {
    /// Embedded mode.
    Local(LocalBus),
    /// Cluster mode, classic protocol (one Redis).
    Redis(RedisDriver),
    /// Cluster mode, sharded protocol (Redis Cluster).
    Sharded(ShardedDriver),
}

impl Driver {
    pub fn is_ready(&self) -> bool {
        match self {
            Driver::Local(_) => true,
            Driver::Redis(r) => *r.inner.ready.borrow(),
            Driver::Sharded(s) => *s.inner.ready.borrow(),
        }
    }

    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        match self {
            Driver::Local(l) => l.ready.subscribe(),
            Driver::Redis(r) => r.inner.ready.subscribe(),
            Driver::Sharded(s) => s.inner.ready.subscribe(),
        }
    }

    pub async fn subscribe(&self, key: SubKey, route: Route) -> Result<SubId, Error> {
        match self {
            Driver::Local(l) => Ok(l.subscribe(key, route)),
            Driver::Redis(r) => r.subscribe(key, route).await,
            Driver::Sharded(s) => s.subscribe(key, route).await,
        }
    }

    pub async fn unsubscribe(&self, sub: &SubId) {
        match self {
            Driver::Local(l) => l.unsubscribe(sub),
            Driver::Redis(r) => r.unsubscribe(sub).await,
            Driver::Sharded(s) => s.unsubscribe(sub).await,
        }
    }

    pub async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), Error> {
        match self {
            Driver::Local(l) => {
                l.publish(channel, payload);
                Ok(())
            }
            Driver::Redis(r) => r.publish(channel, payload).await,
            Driver::Sharded(s) => s.publish(channel, payload).await,
        }
    }

    /// Subscribers of `channel`: `PUBSUB NUMSUB` (classic), `PUBSUB SHARDNUMSUB` summed
    /// over the masters (sharded), 1 (embedded).
    pub async fn numsub(&self, channel: &str) -> Result<u64, Error> {
        match self {
            Driver::Local(_) => Ok(1),
            Driver::Redis(r) => r.numsub(channel).await,
            Driver::Sharded(s) => s.shard_numsub(channel).await,
        }
    }
}
