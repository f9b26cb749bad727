//! Redis adapter for socketioxide, wire-compatible with `@socket.io/redis-adapter` 8.x
//! (classic protocol) and `@socket.io/redis-emitter` 5.x — and, with a
//! `redis+cluster://h1:p1,h2:p2` URL, with `createShardedAdapter` of
//! `@socket.io/redis-adapter` 8.3 on a Redis Cluster (sharded pub/sub, one channel per room:
//! see [`FanoutAdapterCtr::ensure_room`] and `adapter/docs/SHARDED.md`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use fanout_adapter::{FanoutAdapter, FanoutAdapterCtr, RedisAdapterConfig};
//! use socketioxide::SocketIo;
//!
//! let ctr = match std::env::var("FANOUT_REDIS_URL") {
//!     Ok(url) => FanoutAdapterCtr::redis(RedisAdapterConfig::new(url)).await?,
//!     Err(_) => FanoutAdapterCtr::local(),
//! };
//! let (_layer, io) = SocketIo::builder()
//!     .with_adapter::<FanoutAdapter<_>>(ctr.clone())
//!     .build_layer();
//! io.ns("/", async |_s: socketioxide::extract::SocketRef<FanoutAdapter<_>>| {}).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! * `adapter` — [`FanoutAdapter`], the `CoreAdapter` impl (sending side), [`InitRes`].
//! * `remote` — the receiving side: per-namespace receive loop, one `recv_*` function per
//!   request type.
//! * `ctr` — [`FanoutAdapterCtr`] (the shared state: readiness, plain channels, hook).
//! * `config` — [`RedisAdapterConfig`].
//! * `target` — [`parse_redis_target`]: one Redis or a Redis Cluster ([`RedisTarget`]).
//! * `wire` — a namespace's protocol (classic or sharded): channels, encode, decode.
//! * `rooms` — sharded mode: room-channel registry, `ensure_room`, the sweep.
//! * [`protocol`] — the Node wire format: channels, messages, encode/decode (public: tools
//!   and tests may read the traffic with it).
//! * `convert` — socketioxide types ↔ wire types.
//! * `driver` — routing table, embedded loopback, Redis connection, subscriber reader,
//!   Redis Cluster driver (sharded mode).
//! * `metrics` — [`Metrics`], the `fanout_adapter_*` Prometheus metrics.
//! * `error` — [`Error`].

mod adapter;
mod config;
mod convert;
mod ctr;
mod driver;
mod either_conn;
mod error;
mod metrics;
pub mod protocol;
mod remote;
mod rooms;
mod sync;
mod target;
mod wire;

pub use adapter::{FanoutAckStream, FanoutAdapter, InitRes, Reply};
pub use config::{ConfigError, RedisAdapterConfig};
pub use convert::ConvertError;
pub use ctr::{FanoutAdapterCtr, RemoteBroadcast, RemoteBroadcastHook, RoomKeeper};
pub use either_conn::EitherConnection;
pub use error::Error;
pub use metrics::Metrics;
pub use target::{ClusterTarget, RedisTarget, parse_redis_target};

#[cfg(test)]
#[path = "../tests/golden/mod.rs"]
mod golden;
