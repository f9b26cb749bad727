//! The crate error type.
//!
//! One enum for everything the adapter can report; it is boxed into socketioxide's
//! [`AdapterError`] at the trait boundary (like socketioxide-redis does).

use socketioxide_core::adapter::errors::{AdapterError, BroadcastError};

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
    /// A Redis command did not complete within its deadline.
    #[error("redis command timed out: {0}")]
    CommandTimeout(&'static str),
    /// A message could not be encoded for the wire.
    #[error("encode error: {0}")]
    Encode(String),
    /// A message received from the wire could not be decoded.
    #[error("decode error: {0}")]
    Decode(String),
    /// Registering the metrics failed (e.g. the names are already registered).
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
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
