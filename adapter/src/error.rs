//! The crate error type.
//!
//! One enum for everything the adapter can report; it is boxed into socketioxide's
//! [`AdapterError`] at the trait boundary (like socketioxide-redis does). Every variant
//! that wraps another error keeps it as its `source()`; the message also names the
//! immediate cause, because callers often print only `to_string()`.

use socketioxide_core::adapter::errors::{AdapterError, BroadcastError};

use crate::config::ConfigError;
use crate::convert::ConvertError;
use crate::protocol::EncodeError;

/// Everything that can go wrong in the adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Redis command or connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The subscriber connection is down (or its subscriptions are not live yet):
    /// requests that need answers from other nodes fail fast instead of hanging.
    #[error("adapter is not connected to redis (reconnecting)")]
    NotReady,
    /// Not every peer answered a request within `request_timeout`.
    #[error(
        "timeout reached while waiting for {what} response ({received} of {expected} received)"
    )]
    Timeout {
        /// The request kind (`allRooms`, `fetchSockets`, ...).
        what: &'static str,
        /// How many responses arrived.
        received: usize,
        /// How many responses were expected.
        expected: usize,
    },
    /// A cluster operation on an adapter built with `FanoutAdapterCtr::local()`.
    #[error("not in cluster mode")]
    NotCluster,
    /// A Redis command did not complete within its deadline.
    #[error("redis command timed out: {0}")]
    CommandTimeout(&'static str),
    /// A message could not be encoded for the wire.
    #[error("message not encodable: {0}")]
    Encode(#[from] EncodeError),
    /// A payload could not be converted between socketioxide and the wire format.
    #[error("payload not convertible: {0}")]
    Convert(#[from] ConvertError),
    /// A peer answered an ack broadcast with a response of another kind.
    #[error("unexpected response type for an ack broadcast")]
    UnexpectedResponse,
    /// Registering the metrics failed (e.g. the names are already registered).
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// An operation the current mode cannot do (e.g. pattern subscriptions in sharded mode).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// `ensure_room` for a namespace that has no adapter (not created, or closed).
    #[error("namespace {0} has no adapter")]
    UnknownNamespace(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

impl From<Error> for AdapterError {
    fn from(err: Error) -> Self {
        AdapterError(Box::new(err))
    }
}

impl From<Error> for BroadcastError {
    fn from(err: Error) -> Self {
        BroadcastError::Adapter(err.into())
    }
}

/// Formats an error with its chain of sources (`a: b: c`) for log lines, skipping a source
/// whose message the previous one already ends with.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let msg = e.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = e.source();
    }
    out
}
