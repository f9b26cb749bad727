//! [`RedisAdapterConfig`]: everything configurable in cluster mode, with Node-compatible
//! defaults and `with_*` builders.

use std::time::Duration;

use crate::driver::DriverConfig;
use crate::target::{RedisTarget, parse_redis_target};

/// Why a [`RedisAdapterConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `key` is empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// `inbound_buffer` is 0.
    #[error("inbound_buffer must be > 0")]
    ZeroInboundBuffer,
    /// A timeout or interval is zero.
    #[error("{0} must be > 0")]
    ZeroDuration(&'static str),
    /// `max_message_bytes` or `remote_ack_requests_max` is 0.
    #[error("{0} must be > 0")]
    ZeroLimit(&'static str),
    /// The Redis URL cannot be parsed (see [`parse_redis_target`](crate::parse_redis_target));
    /// the message never contains the password.
    #[error("invalid redis URL {0}")]
    InvalidUrl(String),
    /// The reconnect delays are not `0 < min <= max`.
    #[error("reconnect delays must satisfy 0 < min <= max (min {min:?}, max {max:?})")]
    ReconnectDelays {
        /// `reconnect_min_delay`.
        min: Duration,
        /// `reconnect_max_delay`.
        max: Duration,
    },
}

/// Configuration of the Redis (cluster) mode.
#[derive(Debug, Clone)]
pub struct RedisAdapterConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0` (classic mode, one Redis; RESP2 is fine) or
    /// `redis+cluster://h1:7000,h2:7001` / `rediss+cluster://…` (sharded mode on a Redis
    /// Cluster, see [`parse_redis_target`](crate::parse_redis_target)).
    pub url: String,
    /// Channel prefix (`key` option of `@socket.io/redis-adapter`). Default `socket.io`.
    pub key: String,
    /// How long `rooms`/`fetch_sockets` wait for every peer (`requestsTimeout`). Default 5 s.
    pub request_timeout: Duration,
    /// Capacity of every inbound queue (per namespace, per plain channel subscription, and
    /// per pending request). A full queue drops the message and counts it. Default 4096.
    pub inbound_buffer: usize,
    /// Registry the `fanout_adapter_*` metrics are registered into (None: a private one).
    pub registry: Option<prometheus::Registry>,
    /// Deadline of one Redis command (PUBLISH, NUMSUB, SUBSCRIBE, health-check PING). Default 2 s.
    pub command_timeout: Duration,
    /// Deadline of one connection attempt. Default 2 s.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles on every failed attempt. Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// Reconnect delay cap. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// How often the subscriber connection is PINGed to detect dead peers. Default 5 s.
    pub health_check_interval: Duration,
    /// Publish responses on the requester's own response channel
    /// (`publishOnSpecificResponseChannel`) instead of the shared one. Default false, like Node.
    pub publish_on_specific_response_channel: bool,
    /// Largest inbound message accepted from Redis, in bytes, on every subscribed channel
    /// (broadcasts, requests, responses, plain channels). A bigger one is skipped before it
    /// is copied or decoded and counted (`fanout_adapter_oversize_messages_total{kind}`).
    /// Default 4 MiB.
    pub max_message_bytes: usize,
    /// Most broadcast-with-ack requests from other nodes served at once (each holds its
    /// packet and waits for client acks until its timeout). Requests over it are refused
    /// without an answer and counted (`fanout_adapter_remote_requests_refused_total`).
    /// Default 256.
    pub remote_ack_requests_max: usize,
    /// Longest ack timeout a remote broadcast-with-ack request gets; a longer (or absent)
    /// timeout is lowered to it and counted (`fanout_adapter_remote_ack_timeouts_capped_total`).
    /// Default 30 s.
    pub remote_ack_timeout_max: Duration,
    /// A counter vector with labels `[transport, reason]` that inbound drops are also counted
    /// in, as `("redis", "too_large")` and `("redis", "queue_full")` — the node passes its
    /// `fanout_messages_dropped_total`. None: only the adapter's own metrics count them.
    pub dropped_counter: Option<prometheus::IntCounterVec>,
    /// Sharded mode: how often room channels no longer needed (no local socket in the room
    /// and the room keeper does not keep it) are `SUNSUBSCRIBE`d. Default 5 s.
    pub room_sweep_interval: Duration,
}

impl Default for RedisAdapterConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key: "socket.io".into(),
            request_timeout: Duration::from_millis(5000),
            inbound_buffer: 4096,
            registry: None,
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(5),
            publish_on_specific_response_channel: false,
            max_message_bytes: 4 * 1024 * 1024,
            remote_ack_requests_max: 256,
            remote_ack_timeout_max: Duration::from_secs(30),
            dropped_counter: None,
            room_sweep_interval: Duration::from_secs(5),
        }
    }
}

impl RedisAdapterConfig {
    /// Defaults with the given Redis URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Default::default()
        }
    }
    /// Sets the channel prefix.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }
    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Sets the inbound queue capacity.
    pub fn with_inbound_buffer(mut self, size: usize) -> Self {
        self.inbound_buffer = size;
        self
    }
    /// Sets the metrics registry.
    pub fn with_registry(mut self, registry: prometheus::Registry) -> Self {
        self.registry = Some(registry);
        self
    }
    /// Sets the Redis command deadline.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }
    /// Sets the connection attempt deadline.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets the reconnect backoff bounds.
    pub fn with_reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max;
        self
    }
    /// Sets the subscriber health-check interval.
    pub fn with_health_check_interval(mut self, interval: Duration) -> Self {
        self.health_check_interval = interval;
        self
    }
    /// Publishes responses on the requester's own response channel.
    pub fn with_publish_on_specific_response_channel(mut self, on: bool) -> Self {
        self.publish_on_specific_response_channel = on;
        self
    }
    /// Sets the largest inbound message accepted from Redis.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
    /// Sets how many remote broadcast-with-ack requests are served at once.
    pub fn with_remote_ack_requests_max(mut self, max: usize) -> Self {
        self.remote_ack_requests_max = max;
        self
    }
    /// Sets the longest ack timeout a remote broadcast-with-ack request gets.
    pub fn with_remote_ack_timeout_max(mut self, max: Duration) -> Self {
        self.remote_ack_timeout_max = max;
        self
    }
    /// Also counts inbound drops in `counter` (labels `[transport, reason]`).
    pub fn with_dropped_counter(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.dropped_counter = Some(counter);
        self
    }

    /// Sets how often unneeded room channels are unsubscribed (sharded mode).
    pub fn with_room_sweep_interval(mut self, interval: Duration) -> Self {
        self.room_sweep_interval = interval;
        self
    }

    /// The parsed [`url`](Self::url): one Redis or a Redis Cluster.
    pub fn target(&self) -> Result<RedisTarget, ConfigError> {
        parse_redis_target(&self.url)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.target()?;
        if self.key.is_empty() {
            return Err(ConfigError::EmptyKey);
        }
        if self.inbound_buffer == 0 {
            return Err(ConfigError::ZeroInboundBuffer);
        }
        let timeouts = [
            ("request_timeout", self.request_timeout),
            ("command_timeout", self.command_timeout),
            ("connect_timeout", self.connect_timeout),
            ("health_check_interval", self.health_check_interval),
            ("remote_ack_timeout_max", self.remote_ack_timeout_max),
            ("room_sweep_interval", self.room_sweep_interval),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::ZeroDuration(name));
        }
        if self.max_message_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max_message_bytes"));
        }
        if self.remote_ack_requests_max == 0 {
            return Err(ConfigError::ZeroLimit("remote_ack_requests_max"));
        }
        if self.reconnect_min_delay.is_zero() || self.reconnect_max_delay < self.reconnect_min_delay
        {
            return Err(ConfigError::ReconnectDelays {
                min: self.reconnect_min_delay,
                max: self.reconnect_max_delay,
            });
        }
        Ok(())
    }

    pub(crate) fn driver_config(&self) -> DriverConfig {
        DriverConfig {
            url: self.url.clone(),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            reconnect_min_delay: self.reconnect_min_delay,
            reconnect_max_delay: self.reconnect_max_delay,
            health_check_interval: self.health_check_interval,
            max_message_bytes: self.max_message_bytes,
        }
    }
}
