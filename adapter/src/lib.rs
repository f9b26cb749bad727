//! Redis adapter for socketioxide, wire-compatible with `@socket.io/redis-adapter` 8.x
//! (classic protocol) and `@socket.io/redis-emitter` 5.x.
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
//! * [`adapter`] — [`FanoutAdapter`], the `CoreAdapter` impl (sending side), [`InitRes`].
//! * [`remote`] — the receiving side: per-namespace receive loop, request handling.
//! * [`ctr`] — [`FanoutAdapterCtr`] (the shared state: readiness, plain channels, hook).
//! * [`config`] — [`RedisAdapterConfig`].
//! * [`protocol`] — the Node wire format: channels, messages, encode/decode.
//! * [`convert`] — socketioxide types ↔ wire types.
//! * [`driver`] — Redis connections, reconnect/resubscribe, routing; local loopback.
//! * [`metrics`] — `fanout_adapter_*` Prometheus metrics.
//! * [`error`] — [`Error`].

pub mod adapter;
pub mod config;
pub mod convert;
pub mod ctr;
pub(crate) mod driver;
pub mod error;
pub mod metrics;
pub mod protocol;
pub(crate) mod remote;

pub use adapter::{FanoutAckStream, FanoutAdapter, InitRes};
pub use config::RedisAdapterConfig;
pub use ctr::{FanoutAdapterCtr, RemoteBroadcast, RemoteBroadcastHook};
pub use error::Error;
pub use metrics::Metrics;
