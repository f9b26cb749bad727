//! Node configuration: every setting is a command-line flag and a `FANOUT_*` environment
//! variable (clap), documented in `--help`. [`Config::validate`] checks what clap cannot.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

use crate::auth::acl::ModelAcl;
use crate::auth::hashing::HashSettings;
use crate::auth::throttle::ThrottleSettings;
use crate::store::ModelLimits;

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

    /// Redis: one server, `redis://[user:password@]host:port[/db]` (`rediss://` for TLS), or a
    /// Redis Cluster, `redis+cluster://[user:password@]host1:port1,host2:port2,…` (seed nodes;
    /// `rediss+cluster://` for TLS): stores sharded by hash tags, pub/sub sharded per room.
    /// Absent: embedded mode with in-memory stores.
    #[arg(long, env = "FANOUT_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel fanout owns (no spaces, no braces: braces would
    /// make it every key's Redis Cluster hash tag).
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

    /// Login attempts per minute from one client address (IPv6: per /64), any accounts; the
    /// next attempts get 429 with Retry-After. The address is the TCP peer. 0 = no limit.
    #[arg(long, env = "FANOUT_LOGIN_PER_IP_PER_MINUTE", default_value_t = 60)]
    pub login_per_ip_per_minute: u32,

    /// Login attempts per minute on one account name (username, or e-mail), from any address.
    /// 0 = no limit.
    #[arg(
        long,
        env = "FANOUT_LOGIN_PER_USERNAME_PER_MINUTE",
        default_value_t = 10
    )]
    pub login_per_username_per_minute: u32,

    /// Signups (POST /api/users) per minute from one client address. 0 = no limit.
    #[arg(long, env = "FANOUT_SIGNUP_PER_IP_PER_MINUTE", default_value_t = 30)]
    pub signup_per_ip_per_minute: u32,

    /// Threads that hash and check passwords (argon2id: ~19 MiB and tens of ms of a core each).
    #[arg(long, env = "FANOUT_PASSWORD_HASH_THREADS", default_value_t = 2)]
    pub password_hash_threads: usize,

    /// Password jobs waiting for a hashing thread, all clients together; past it logins and
    /// signups get 503 with Retry-After.
    #[arg(long, env = "FANOUT_PASSWORD_HASH_QUEUE", default_value_t = 256)]
    pub password_hash_queue: usize,

    /// Password jobs one client address may have queued or running; past it its logins and
    /// signups get 429 with Retry-After, so one address cannot fill the queue.
    #[arg(long, env = "FANOUT_PASSWORD_HASH_PER_IP", default_value_t = 8)]
    pub password_hash_per_ip: usize,

    /// Write policies of models: comma-separated `Model=policy`, `*=policy` for the others.
    /// Policies: `owner` (the default: anyone authenticated reads and creates, only a record's
    /// creator updates or deletes it), `authenticated` (anyone authenticated writes),
    /// `readonly` (no REST writes). Example: `Order=owner,Public=authenticated`.
    #[arg(
        long,
        env = "FANOUT_MODEL_ACL",
        default_value = "",
        value_parser = ModelAcl::parse
    )]
    pub model_acl: ModelAcl,

    /// Largest model record: bytes of its JSON without `id`; larger writes get 413.
    #[arg(long, env = "FANOUT_MODEL_RECORD_MAX_BYTES", default_value_t = 16_384)]
    pub model_record_max_bytes: usize,

    /// Most records one user may own in one model; more creates get 422 quota_exceeded.
    /// 0 = no limit.
    #[arg(
        long,
        env = "FANOUT_MODEL_MAX_RECORDS_PER_USER",
        default_value_t = 1000
    )]
    pub model_max_records_per_user: u64,

    /// Most models the store holds (a model exists from its first record on); creating a record
    /// in one more model gets 422 quota_exceeded. 0 = no limit.
    #[arg(long, env = "FANOUT_MODEL_MAX_MODELS", default_value_t = 100)]
    pub model_max_models: u64,

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

    /// Largest message accepted from Redis in bytes, on every channel (adapter broadcasts,
    /// requests and responses, the events, stream and revocations channels). A bigger one is
    /// skipped undecoded and counted in `fanout_messages_dropped_total{transport="redis",
    /// reason="too_large"}`. Must exceed FANOUT_MAX_PAYLOAD by at least 64 KiB (envelopes);
    /// Redis's `client-output-buffer-limit pubsub` must fit it many times (docs/OPERATIONS.md).
    #[arg(
        long,
        env = "FANOUT_REDIS_MAX_MESSAGE_BYTES",
        default_value_t = 4_194_304
    )]
    pub redis_max_message_bytes: usize,

    /// Most broadcast-with-ack requests from other nodes served at once; more are refused
    /// (no answer) and counted in `fanout_adapter_remote_requests_refused_total`.
    #[arg(long, env = "FANOUT_REMOTE_ACK_REQUESTS_MAX", default_value_t = 256)]
    pub remote_ack_requests_max: usize,

    /// Longest ack timeout a broadcast-with-ack request from another node gets (ms); a longer
    /// or absent one is lowered to it and counted in
    /// `fanout_adapter_remote_ack_timeouts_capped_total`.
    #[arg(
        long,
        env = "FANOUT_REMOTE_ACK_TIMEOUT_MAX_MS",
        default_value_t = 30_000
    )]
    pub remote_ack_timeout_max_ms: u64,

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

    // ---- Resource limits at the HTTP / transport level (see docs/OPERATIONS.md "Limits").
    /// Most TCP connections this node holds at once; further ones are closed at accept.
    /// Default: 90 % of the open-file limit (RLIMIT_NOFILE, whose soft value the node raises
    /// to the hard one at start), so the node refuses connections before accept(2) starts
    /// failing with EMFILE and keeps descriptors for Redis and its own files. 0 = no limit.
    #[arg(long, env = "FANOUT_MAX_CONNECTIONS", default_value_t = default_max_connections())]
    pub max_connections: usize,

    /// Most TCP connections from one client address (IPv6: one /64). Behind a trusted proxy
    /// (FANOUT_TRUSTED_PROXIES) the address comes from `X-Forwarded-For` and the cap applies
    /// to WebSocket upgrades instead (refused with 429). 0 = off.
    #[arg(long, env = "FANOUT_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Proxies whose `X-Forwarded-For` is believed, comma separated (CIDR or plain address,
    /// e.g. `10.0.0.0/8,127.0.0.1`). Empty: the header is ignored.
    #[arg(long, env = "FANOUT_TRUSTED_PROXIES", default_value = "", value_parser = parse_nets)]
    pub trusted_proxies: NetList,

    /// Time a client has to send a complete request head, on a new connection and between
    /// two requests of a kept-alive one; then the connection is closed (ms).
    #[arg(long, env = "FANOUT_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// A connection with no request in flight (a long-polling GET is one), no WebSocket
    /// upgrade and no byte moving for this long is closed (ms): e.g. a client that stopped
    /// reading its responses.
    #[arg(long, env = "FANOUT_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_idle_timeout_ms: u64,

    /// Time a request may take, body included, until its response starts; then it gets 408
    /// and its connection is closed (ms). Must exceed the ping interval: a long-polling GET
    /// waits that long for a ping.
    #[arg(long, env = "FANOUT_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_request_timeout_ms: u64,

    /// Most binary attachments one Socket.IO packet may announce; more closes the connection.
    /// Their total size is bounded by FANOUT_MAX_PAYLOAD.
    #[arg(long, env = "FANOUT_MAX_ATTACHMENTS", default_value_t = 64)]
    pub max_attachments: usize,

    /// Time the attachments of one Socket.IO packet have to arrive, from its first frame (ms).
    #[arg(long, env = "FANOUT_ATTACHMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub attachment_timeout_ms: u64,

    /// Time a `/chat` socket has to log in to a room, and a `/stream` socket to set a term,
    /// after connecting; then it is closed (ms).
    #[arg(long, env = "FANOUT_ANONYMOUS_IDLE_MS", default_value_t = 300_000)]
    pub anonymous_idle_ms: u64,

    /// WebSocket read buffer of a connection in bytes, Socket.IO and `/ws` alike: what an idle
    /// connection holds to read into (a larger frame gets a buffer of its size while it is
    /// read, in reads of this size; clients that publish large messages read faster with
    /// 4096).
    #[arg(long, env = "FANOUT_WS_READ_BUFFER", default_value_t = 512)]
    pub ws_read_buffer: usize,

    /// jemalloc purges freed memory from background threads, so an idle node gives back what
    /// a burst took (false: only when the arena allocates again).
    #[arg(long, env = "FANOUT_ALLOC_BACKGROUND_THREADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub alloc_background_threads: bool,

    /// How long jemalloc keeps freed pages resident for reuse before purging them (ms;
    /// -1 = never).
    #[arg(
        long,
        env = "FANOUT_ALLOC_DIRTY_DECAY_MS",
        default_value_t = 10_000,
        allow_negative_numbers = true
    )]
    pub alloc_dirty_decay_ms: i64,

    /// How long jemalloc keeps lazily purged pages mapped before releasing them (ms; -1 =
    /// never).
    #[arg(
        long,
        env = "FANOUT_ALLOC_MUZZY_DECAY_MS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub alloc_muzzy_decay_ms: i64,
}

/// Raises the soft open-file limit to the hard one, as servers commonly do at start (a
/// distribution's soft default of 1024 would cap the node at 921 connections); returns the
/// soft limit now in force (`None`: unlimited). Call before parsing the configuration: the
/// default of FANOUT_MAX_CONNECTIONS derives from it.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        // Refused (e.g. a hard limit above the kernel's nr_open): keep the soft one.
        setrlimit(Resource::Nofile, raised).ok();
    }
    getrlimit(Resource::Nofile).current
}

/// The default of FANOUT_MAX_CONNECTIONS: 90 % of the soft open-file limit (at least 64),
/// 1,000,000 when there is no limit.
fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(limit) => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            (limit / 10 * 9).max(64)
        }
        None => 1_000_000,
    }
}

/// A list of networks (FANOUT_TRUSTED_PROXIES); empty when none is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetList(pub Vec<IpNet>);

/// Comma-separated networks; blank items (and an empty variable) are skipped.
fn parse_nets(text: &str) -> Result<NetList, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(parse_net)
        .collect::<Result<_, _>>()
        .map(NetList)
}

/// A network (`10.0.0.0/8`) or a single address (`127.0.0.1`, `::1`).
fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is neither an address nor a CIDR network"))
}

/// A configuration that clap accepted but that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The allocator tuning these settings ask for.
    pub fn alloc_tuning(&self) -> crate::alloc::AllocTuning {
        crate::alloc::AllocTuning {
            background_threads: self.alloc_background_threads,
            dirty_decay_ms: self.alloc_dirty_decay_ms,
            muzzy_decay_ms: self.alloc_muzzy_decay_ms,
        }
    }

    /// Checks relations between settings that clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ws_read_buffer < 64 {
            return Err(ConfigError(
                "FANOUT_WS_READ_BUFFER must be at least 64 bytes".into(),
            ));
        }
        if self.alloc_dirty_decay_ms < -1 || self.alloc_muzzy_decay_ms < -1 {
            return Err(ConfigError(
                "FANOUT_ALLOC_DIRTY_DECAY_MS and FANOUT_ALLOC_MUZZY_DECAY_MS must be -1 or more"
                    .into(),
            ));
        }
        // Braces would make the prefix every key's Redis Cluster hash tag (store::keys).
        if self.prefix.is_empty()
            || self
                .prefix
                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(ConfigError(
                "FANOUT_PREFIX must be non-empty, without spaces or braces".into(),
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
        if !(1..=64).contains(&self.password_hash_threads) {
            return Err(ConfigError(
                "FANOUT_PASSWORD_HASH_THREADS must be 1 to 64".into(),
            ));
        }
        if self.password_hash_queue == 0 || self.password_hash_per_ip == 0 {
            return Err(ConfigError(
                "FANOUT_PASSWORD_HASH_QUEUE and FANOUT_PASSWORD_HASH_PER_IP must be positive"
                    .into(),
            ));
        }
        if self.model_record_max_bytes < 64 {
            return Err(ConfigError(
                "FANOUT_MODEL_RECORD_MAX_BYTES must be at least 64".into(),
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
        if self.redis_max_message_bytes < self.max_payload.saturating_add(65_536) {
            return Err(ConfigError(
                "FANOUT_REDIS_MAX_MESSAGE_BYTES must be at least FANOUT_MAX_PAYLOAD + 65536".into(),
            ));
        }
        if self.remote_ack_requests_max == 0 || self.remote_ack_timeout_max_ms == 0 {
            return Err(ConfigError(
                "FANOUT_REMOTE_ACK_REQUESTS_MAX and FANOUT_REMOTE_ACK_TIMEOUT_MAX_MS must be positive"
                    .into(),
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
        self.validate_limits()?;
        if let Some(url) = &self.redis_url {
            fanout_adapter::parse_redis_target(url)
                .map_err(|err| ConfigError(format!("FANOUT_REDIS_URL: {err}")))?;
        }
        Ok(())
    }

    /// Checks the resource-limit settings.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.http_header_timeout_ms == 0
            || self.http_idle_timeout_ms == 0
            || self.anonymous_idle_ms == 0
        {
            return Err(ConfigError(
                "FANOUT_HTTP_HEADER_TIMEOUT_MS, FANOUT_HTTP_IDLE_TIMEOUT_MS and \
                 FANOUT_ANONYMOUS_IDLE_MS must be positive"
                    .into(),
            ));
        }
        if self.http_request_timeout_ms <= self.ping_interval_ms {
            return Err(ConfigError(
                "FANOUT_HTTP_REQUEST_TIMEOUT_MS must exceed FANOUT_PING_INTERVAL_MS (a \
                 long-polling GET waits that long)"
                    .into(),
            ));
        }
        if self.max_attachments == 0 || self.attachment_timeout_ms == 0 {
            return Err(ConfigError(
                "FANOUT_MAX_ATTACHMENTS and FANOUT_ATTACHMENT_TIMEOUT_MS must be positive".into(),
            ));
        }
        Ok(())
    }

    /// HTTP header read timeout as a duration.
    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_ms)
    }

    /// HTTP idle timeout as a duration.
    pub fn http_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.http_idle_timeout_ms)
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

    /// The login and signup throttles.
    pub fn throttle_settings(&self) -> ThrottleSettings {
        ThrottleSettings {
            login_per_ip: self.login_per_ip_per_minute,
            login_per_username: self.login_per_username_per_minute,
            signup_per_ip: self.signup_per_ip_per_minute,
        }
    }

    /// The password hashing pool.
    pub fn hash_settings(&self) -> HashSettings {
        HashSettings {
            threads: self.password_hash_threads,
            queue: self.password_hash_queue,
            per_source: self.password_hash_per_ip,
        }
    }

    /// The model store's limits.
    pub fn model_limits(&self) -> ModelLimits {
        ModelLimits {
            record_max_bytes: self.model_record_max_bytes,
            records_per_user: self.model_max_records_per_user,
            max_models: self.model_max_models,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_settings_parse_and_validate() {
        let cfg = Config::parse_from([
            "fanout-node",
            "--model-acl",
            "Order=owner,Public=authenticated",
        ]);
        assert!(cfg.validate().is_ok());
        assert_eq!(
            cfg.model_acl.policy("Public"),
            crate::auth::acl::ModelPolicy::Authenticated
        );
        assert!(Config::try_parse_from(["fanout-node", "--model-acl", "Order=admin"]).is_err());
        for (flag, value) in [
            ("--password-hash-threads", "0"),
            ("--password-hash-queue", "0"),
            ("--password-hash-per-ip", "0"),
            ("--model-record-max-bytes", "10"),
        ] {
            let cfg = Config::parse_from(["fanout-node", flag, value]);
            assert!(cfg.validate().is_err(), "{flag} {value}");
        }
        let cfg = Config::parse_from(["fanout-node", "--login-per-ip-per-minute", "0"]);
        assert!(cfg.validate().is_ok(), "0 turns a throttle off");
    }

    #[test]
    fn redis_urls_are_validated() {
        // The parser itself is fanout_adapter's (tested there); here: it is the one used.
        let mut cfg = Config::parse_from(["fanout-node"]);
        for good in [
            "redis://h:1/2",
            "rediss://u:p@h:1",
            "redis+cluster://a:7000,b:7001",
            "rediss+cluster://u:p@a:7000",
        ] {
            cfg.redis_url = Some(good.into());
            assert!(cfg.validate().is_ok(), "{good}");
        }
        for bad in [
            "http://h:1",
            "h:1",
            "redis+cluster://",
            "redis+cluster://a:0",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/3",
            "redis+cluster://a:1?x=y",
        ] {
            cfg.redis_url = Some(bad.into());
            let err = cfg.validate().expect_err(bad);
            assert!(err.to_string().contains("FANOUT_REDIS_URL"), "{err}");
        }
        let cfg = Config::parse_from(["fanout-node", "--prefix", "a{b}"]);
        assert!(cfg.validate().is_err(), "braces in the prefix");
    }

    #[test]
    fn memory_settings_parse_and_validate() {
        let cfg = Config::parse_from([
            "fanout-node",
            "--ws-read-buffer",
            "4096",
            "--alloc-background-threads",
            "false",
            "--alloc-dirty-decay-ms",
            "-1",
        ]);
        assert!(cfg.validate().is_ok());
        let tuning = cfg.alloc_tuning();
        assert!(!tuning.background_threads);
        assert_eq!((tuning.dirty_decay_ms, tuning.muzzy_decay_ms), (-1, 0));
        assert_eq!(cfg.ws_read_buffer, 4096);
        assert_eq!(Config::for_tests().ws_read_buffer, 512);

        let mut tiny = Config::for_tests();
        tiny.ws_read_buffer = 10;
        assert!(tiny.validate().is_err());
        let mut never = Config::for_tests();
        never.alloc_muzzy_decay_ms = -2;
        assert!(never.validate().is_err());
        assert!(
            Config::try_parse_from(["fanout-node", "--alloc-background-threads", "maybe"]).is_err()
        );
    }

    #[test]
    fn redis_limits_are_validated() {
        let ok = Config::for_tests();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.redis_max_message_bytes, 4_194_304);
        assert_eq!(ok.remote_ack_requests_max, 256);
        assert_eq!(ok.remote_ack_timeout_max_ms, 30_000);

        let mut small = Config::for_tests();
        small.redis_max_message_bytes = small.max_payload; // no room for the envelope
        assert!(small.validate().is_err());
        let mut zero = Config::for_tests();
        zero.remote_ack_requests_max = 0;
        assert!(zero.validate().is_err());
        let mut zero = Config::for_tests();
        zero.remote_ack_timeout_max_ms = 0;
        assert!(zero.validate().is_err());

        let parsed = Config::try_parse_from([
            "fanout-node",
            "--redis-max-message-bytes",
            "2000000",
            "--remote-ack-requests-max",
            "8",
            "--remote-ack-timeout-max-ms",
            "500",
        ])
        .expect("flags parse");
        assert_eq!(parsed.redis_max_message_bytes, 2_000_000);
        assert_eq!(parsed.remote_ack_requests_max, 8);
        assert_eq!(parsed.remote_ack_timeout_max_ms, 500);
        assert!(parsed.validate().is_ok());
    }
}
