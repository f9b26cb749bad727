//! Node configuration: every setting is a command-line flag and a `FANOUT_*` environment
//! variable (clap), documented in `--help`. [`Config::validate`] checks what clap cannot.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Configuration of one fanout node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "fanout-node",
    version,
    about = "fanout node: Socket.IO / WebSocket pub/sub with REST API, auth, topics and metrics",
    long_about = "fanout node: Socket.IO / WebSocket pub/sub with REST API, auth, topics and metrics.\n\n\
Without --redis-url (FANOUT_REDIS_URL) the node runs alone with in-memory stores (embedded mode).\n\
Every flag can also be set by the environment variable shown next to it."
)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, env = "FANOUT_BIND", default_value = "0.0.0.0:3000")]
    pub bind: SocketAddr,

    /// Identifier of this node in logs, metrics and `whoami` (default: hostname + random suffix).
    #[arg(long, env = "FANOUT_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis URL (`redis://host:port/db`). Absent: embedded mode with in-memory stores.
    #[arg(long, env = "FANOUT_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel fanout owns.
    #[arg(long, env = "FANOUT_PREFIX", default_value = "fanout")]
    pub prefix: String,

    /// Channel prefix of the @socket.io/redis-adapter protocol (shared with Node.js servers).
    #[arg(long, env = "FANOUT_ADAPTER_KEY", default_value = "socket.io")]
    pub adapter_key: String,

    /// Time a connected socket has to send `authentication` before it is disconnected (ms).
    #[arg(long, env = "FANOUT_AUTH_TIMEOUT_MS", default_value_t = 5000)]
    pub auth_timeout_ms: u64,

    /// Default lifetime of an access token in seconds (LoopBack's default: two weeks).
    #[arg(long, env = "FANOUT_TOKEN_TTL", default_value_t = 1_209_600)]
    pub token_ttl: u64,

    /// Largest lifetime a login may ask for with `ttl`, in seconds (LoopBack's maxTTL: one year).
    #[arg(long, env = "FANOUT_TOKEN_MAX_TTL", default_value_t = 31_556_926)]
    pub token_max_ttl: u64,

    /// Largest accepted message in bytes: Socket.IO packets, /ws frames and REST bodies.
    #[arg(long, env = "FANOUT_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: usize,

    /// Engine.IO ping interval (ms).
    #[arg(long, env = "FANOUT_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// Engine.IO ping timeout (ms).
    #[arg(long, env = "FANOUT_PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,

    /// Log format.
    #[arg(long, env = "FANOUT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info,fanout_node=debug`).
    #[arg(long, env = "FANOUT_LOG", default_value = "info")]
    pub log: String,

    /// Allowed CORS origins, comma separated; `*` allows any origin.
    #[arg(
        long,
        env = "FANOUT_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Most TCP connections this node holds at once; further ones are closed at accept. 0 = no limit.
    #[arg(long, env = "FANOUT_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Connections closed per batch while draining on SIGTERM/SIGINT.
    #[arg(long, env = "FANOUT_DRAIN_BATCH", default_value_t = 500)]
    pub drain_batch: usize,

    /// Pause between two drain batches (ms).
    #[arg(long, env = "FANOUT_DRAIN_INTERVAL_MS", default_value_t = 100)]
    pub drain_interval_ms: u64,

    /// Upper bound on the whole drain; the process exits when it is reached (ms).
    #[arg(long, env = "FANOUT_DRAIN_TIMEOUT_MS", default_value_t = 20_000)]
    pub drain_timeout_ms: u64,

    /// Outbound budget of one connection in bytes (Socket.IO and /ws): what was handed to
    /// it and not yet written to its socket. Over it the connection is closed as a slow
    /// consumer and the messages it missed are counted as dropped.
    #[arg(long, env = "FANOUT_CLIENT_QUEUE_BYTES", default_value_t = 1_048_576)]
    pub client_queue_bytes: u64,

    /// Outbound budget of one connection in messages (its send queue's length).
    #[arg(long, env = "FANOUT_CLIENT_QUEUE_MESSAGES", default_value_t = 1024)]
    pub client_queue_messages: usize,

    /// Requests per second one connection (Socket.IO `/` or `/ws`) may send, sustained; over
    /// it a request is answered `rate_limited`. 0 = no limit.
    #[arg(long, env = "FANOUT_CLIENT_RATE", default_value_t = 100)]
    pub client_rate: u32,

    /// Requests one connection may send at once above its rate (token bucket size).
    #[arg(long, env = "FANOUT_CLIENT_BURST", default_value_t = 200)]
    pub client_burst: u32,

    /// Refused requests in a row (none accepted in between) after which a connection is
    /// closed at the transport level (reason `rate_limited`).
    #[arg(long, env = "FANOUT_CLIENT_MAX_REFUSALS", default_value_t = 100)]
    pub client_max_refusals: u32,

    /// How often every live session's token is checked again (ms), through the token cache, so
    /// that a revocation whose message was lost still ends its sessions: within this interval
    /// plus the cache's 5 s.
    #[arg(long, env = "FANOUT_SESSION_REVALIDATE_MS", default_value_t = 15_000)]
    pub session_revalidate_ms: u64,

    /// Seats in a `/chat` room.
    #[arg(long, env = "FANOUT_CHAT_ROOM_CAPACITY", default_value_t = 2)]
    pub chat_room_capacity: u32,
}

/// A configuration that clap accepted but that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Checks relations between settings that clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err(ConfigError(
                "FANOUT_PREFIX must be non-empty, without spaces".into(),
            ));
        }
        if self.adapter_key.is_empty() || self.adapter_key.contains('#') {
            return Err(ConfigError(
                "FANOUT_ADAPTER_KEY must be non-empty, without '#'".into(),
            ));
        }
        if self.token_ttl == 0 || self.token_max_ttl == 0 {
            return Err(ConfigError("token TTLs must be positive".into()));
        }
        if self.token_ttl > self.token_max_ttl {
            return Err(ConfigError(
                "FANOUT_TOKEN_TTL exceeds FANOUT_TOKEN_MAX_TTL".into(),
            ));
        }
        if self.max_payload < 1024 {
            return Err(ConfigError(
                "FANOUT_MAX_PAYLOAD must be at least 1024 bytes".into(),
            ));
        }
        if self.ping_interval_ms == 0 || self.ping_timeout_ms == 0 || self.auth_timeout_ms == 0 {
            return Err(ConfigError(
                "ping and auth timeouts must be positive".into(),
            ));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || id.contains(['/', '|'])
                || id.contains(char::is_whitespace))
        {
            return Err(ConfigError(
                "FANOUT_NODE_ID: 1 to 64 characters, no '/', '|' or spaces".into(),
            ));
        }
        if self.drain_batch == 0 {
            return Err(ConfigError("FANOUT_DRAIN_BATCH must be positive".into()));
        }
        if self.client_queue_bytes < 1024 || self.client_queue_messages == 0 {
            return Err(ConfigError(
                "FANOUT_CLIENT_QUEUE_BYTES must be at least 1024 and FANOUT_CLIENT_QUEUE_MESSAGES positive".into(),
            ));
        }
        if self.client_rate > 0 && self.client_burst == 0 {
            return Err(ConfigError(
                "FANOUT_CLIENT_BURST must be positive when FANOUT_CLIENT_RATE is set".into(),
            ));
        }
        if self.client_max_refusals == 0 {
            return Err(ConfigError(
                "FANOUT_CLIENT_MAX_REFUSALS must be positive".into(),
            ));
        }
        if !(100..=3_600_000).contains(&self.session_revalidate_ms) {
            return Err(ConfigError(
                "FANOUT_SESSION_REVALIDATE_MS must be between 100 and 3600000".into(),
            ));
        }
        if self.chat_room_capacity == 0 {
            return Err(ConfigError(
                "FANOUT_CHAT_ROOM_CAPACITY must be positive".into(),
            ));
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError(
                "FANOUT_REDIS_URL must start with redis:// or rediss://".into(),
            ));
        }
        Ok(())
    }

    /// The node id: configured, or hostname plus a random suffix.
    pub fn resolved_node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "fanout".to_string());
        let suffix: u32 = rand::random::<u32>() % 0x10000;
        format!("{host}-{suffix:04x}")
    }

    /// Session re-validation interval as a duration.
    pub fn session_revalidate(&self) -> Duration {
        Duration::from_millis(self.session_revalidate_ms)
    }

    /// Auth timeout as a duration.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    /// A configuration with defaults for tests: loopback, port 0, short timeouts.
    pub fn for_tests() -> Self {
        let mut cfg = Config::parse_from(["fanout-node"]);
        cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.node_id = Some("test-node".into());
        cfg
    }
}
