//! Prometheus metrics, all named `fanout_*`, in one registry. Handlers call one method per
//! event (`socket_connected`, `auth_failed`, …) and never touch a counter directly. Labels
//! come from bounded sets only: namespace, reason, code, source — never topics or ids.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Where a published topic message came from (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishSource {
    /// A Socket.IO client's `publish`.
    Socket,
    /// A `/ws` client's `publish`.
    WebSocket,
    /// `POST /api/publish`.
    Rest,
    /// The events channel: model writes of any node and external producers.
    Events,
    /// Another node (fanout or Node.js) through the adapter.
    Remote,
}

impl PublishSource {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishSource::Socket => "socket",
            PublishSource::WebSocket => "ws",
            PublishSource::Rest => "rest",
            PublishSource::Events => "events",
            PublishSource::Remote => "remote",
        }
    }
}

/// Where a message was dropped (metric label `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropTransport {
    /// A Socket.IO socket (any namespace).
    SocketIo,
    /// A `/ws` connection.
    Ws,
    /// On the way to or from Redis (other nodes' share).
    Redis,
}

impl DropTransport {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropTransport::SocketIo => "socketio",
            DropTransport::Ws => "ws",
            DropTransport::Redis => "redis",
        }
    }
}

/// Why a message was dropped (metric label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The connection was over its outbound budget; it is being closed.
    SlowConsumer,
    /// The connection was closed or closing.
    Closed,
    /// The message alone is larger than a connection's whole outbound budget.
    TooLarge,
    /// Redis could not take the message: other nodes' subscribers missed it.
    RedisDown,
    /// A bounded inbound queue (adapter, channel listener) was full.
    QueueFull,
}

impl DropReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Closed => "closed",
            DropReason::TooLarge => "too_large",
            DropReason::RedisDown => "redis_down",
            DropReason::QueueFull => "queue_full",
        }
    }
}

/// Why a connection was refused (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// FANOUT_MAX_CONNECTIONS reached, at accept.
    MaxConnections,
    /// FANOUT_MAX_CONNECTIONS_PER_IP reached by the TCP peer, at accept.
    PerIp,
    /// FANOUT_MAX_CONNECTIONS_PER_IP reached by a client behind a trusted proxy, at upgrade.
    PerIpForwarded,
}

impl Refusal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerIp => "per_ip",
            Refusal::PerIpForwarded => "per_ip_forwarded",
        }
    }
}

/// Why the server closed an HTTP connection (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpClose {
    /// The request head did not arrive within FANOUT_HTTP_HEADER_TIMEOUT_MS.
    HeaderTimeout,
    /// Nothing in flight and nothing moving for FANOUT_HTTP_IDLE_TIMEOUT_MS.
    Idle,
    /// A request not answered within FANOUT_HTTP_REQUEST_TIMEOUT_MS (408).
    RequestTimeout,
}

impl HttpClose {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpClose::HeaderTimeout => "header_timeout",
            HttpClose::Idle => "idle",
            HttpClose::RequestTimeout => "request_timeout",
        }
    }
}

type DropLogLimiter = governor::DefaultKeyedRateLimiter<(DropTransport, DropReason)>;

/// All node metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    sockets_connected: IntGaugeVec,
    connections: IntCounterVec,
    disconnections: IntCounterVec,
    auth_failures: IntCounterVec,
    events_received: IntCounterVec,
    events_sent: IntCounterVec,
    topic_published: IntCounterVec,
    topic_delivered: IntCounter,
    delivery_latency: Histogram,
    bad_input: IntCounterVec,
    dropped: IntCounterVec,
    drop_logs: std::sync::Arc<DropLogLimiter>,
    redis_command_duration: HistogramVec,
    redis_errors: IntCounterVec,
    tcp_connections: IntGauge,
    tcp_rejected: IntCounterVec,
    http_closed: IntCounterVec,
    idle_closed: IntCounterVec,
    http_requests: IntCounterVec,
    credentials_throttled: IntCounterVec,
    password_hash_jobs: IntGauge,
    model_writes_refused: IntCounterVec,
    session_checks: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|err| panic!("metric {name} definition: {err}"));
    register(registry, name, metric)
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    metric: M,
) -> M {
    // A failure here is a programming error (duplicate name), found by the first test run.
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|err| panic!("metric {name} registration: {err}"));
    metric
}

impl Metrics {
    /// Creates and registers every metric; `node_id` labels `fanout_build_info`.
    pub fn new(node_id: &str) -> Self {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "fanout_build_info",
                "Build information of this fanout node (always 1)",
            ),
            &["version", "node"],
        )
        .unwrap_or_else(|err| panic!("metric fanout_build_info: {err}"));
        let build_info = register(&registry, "fanout_build_info", build_info);
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total…: the
        // standard process metrics (unprefixed, as every Prometheus client library names them).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .unwrap_or_else(|err| panic!("process metrics registration: {err}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), node_id])
            .set(1);
        // jemalloc's figures mean nothing when it is not the allocator.
        #[cfg(not(feature = "system-allocator"))]
        {
            let allocator = crate::alloc::AllocatorCollector::new()
                .unwrap_or_else(|err| panic!("metric fanout_allocator_bytes: {err}"));
            registry
                .register(Box::new(allocator))
                .unwrap_or_else(|err| panic!("allocator metrics registration: {err}"));
        }

        let sockets_connected = IntGaugeVec::new(
            Opts::new(
                "fanout_sockets_connected",
                "Sockets connected now, by namespace",
            ),
            &["namespace"],
        )
        .unwrap_or_else(|err| panic!("metric fanout_sockets_connected: {err}"));
        let sockets_connected = register(&registry, "fanout_sockets_connected", sockets_connected);

        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "fanout_delivery_latency_seconds",
                "Fan-out latency: from a publish reaching this node to the emit to its local subscribers",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .unwrap_or_else(|err| panic!("metric fanout_delivery_latency_seconds: {err}"));
        let delivery_latency = register(&registry, "fanout_delivery_latency_seconds", latency);

        let redis_latency = HistogramVec::new(
            HistogramOpts::new(
                "fanout_redis_command_duration_seconds",
                "Latency of Redis commands issued by the stores, by operation",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
            &["op"],
        )
        .unwrap_or_else(|err| panic!("metric fanout_redis_command_duration_seconds: {err}"));
        let redis_command_duration = register(
            &registry,
            "fanout_redis_command_duration_seconds",
            redis_latency,
        );

        let tcp_connections = IntGauge::new("fanout_tcp_connections", "Open TCP connections")
            .unwrap_or_else(|err| panic!("metric fanout_tcp_connections: {err}"));
        let tcp_connections = register(&registry, "fanout_tcp_connections", tcp_connections);
        let tcp_rejected = counter_vec(
            &registry,
            "fanout_tcp_connections_rejected_total",
            "Connections refused by a connection limit: closed at accept (max_connections, \
             per_ip) or a WebSocket upgrade answered 429 (per_ip_forwarded)",
            &["reason"],
        );
        let password_hash_jobs = IntGauge::new(
            "fanout_password_hash_jobs",
            "Password hash jobs (signups, logins) queued or running on the hashing threads",
        )
        .unwrap_or_else(|err| panic!("metric fanout_password_hash_jobs: {err}"));
        let password_hash_jobs =
            register(&registry, "fanout_password_hash_jobs", password_hash_jobs);
        let topic_delivered = IntCounter::new(
            "fanout_topic_messages_delivered_total",
            "Topic messages handed to local subscribers (one per subscriber connection)",
        )
        .unwrap_or_else(|err| panic!("metric fanout_topic_messages_delivered_total: {err}"));
        let topic_delivered = register(
            &registry,
            "fanout_topic_messages_delivered_total",
            topic_delivered,
        );

        Self {
            sockets_connected,
            connections: counter_vec(
                &registry,
                "fanout_connections_total",
                "Sockets connected, by namespace",
                &["namespace"],
            ),
            disconnections: counter_vec(
                &registry,
                "fanout_disconnections_total",
                "Sockets disconnected, by namespace and reason",
                &["namespace", "reason"],
            ),
            auth_failures: counter_vec(
                &registry,
                "fanout_auth_failures_total",
                "Refused authentications, by reason",
                &["reason"],
            ),
            events_received: counter_vec(
                &registry,
                "fanout_events_received_total",
                "Client events received, by namespace",
                &["namespace"],
            ),
            events_sent: counter_vec(
                &registry,
                "fanout_events_sent_total",
                "Events emitted to clients (one per recipient), by namespace",
                &["namespace"],
            ),
            topic_published: counter_vec(
                &registry,
                "fanout_topic_messages_published_total",
                "Topic messages that entered this node's local delivery, by source",
                &["source"],
            ),
            topic_delivered,
            delivery_latency,
            bad_input: counter_vec(
                &registry,
                "fanout_bad_input_total",
                "Rejected client input, by origin and error code",
                &["origin", "code"],
            ),
            dropped: counter_vec(
                &registry,
                "fanout_messages_dropped_total",
                "Messages not delivered to a client, by transport and reason",
                &["transport", "reason"],
            ),
            drop_logs: std::sync::Arc::new(governor::RateLimiter::keyed(
                governor::Quota::per_second(std::num::NonZeroU32::MIN),
            )),
            redis_command_duration,
            redis_errors: counter_vec(
                &registry,
                "fanout_redis_errors_total",
                "Failed Redis commands issued by the stores, by operation",
                &["op"],
            ),
            tcp_connections,
            tcp_rejected,
            http_closed: counter_vec(
                &registry,
                "fanout_http_connections_closed_total",
                "HTTP connections closed by the server for a timeout (header_timeout, idle, \
                 request_timeout)",
                &["reason"],
            ),
            idle_closed: counter_vec(
                &registry,
                "fanout_sockets_idle_closed_total",
                "Anonymous /chat and /stream sockets closed by FANOUT_ANONYMOUS_IDLE_MS",
                &["namespace"],
            ),
            http_requests: counter_vec(
                &registry,
                "fanout_http_requests_total",
                "REST requests, by route template and status class",
                &["route", "status"],
            ),
            credentials_throttled: counter_vec(
                &registry,
                "fanout_credentials_throttled_total",
                "Logins and signups refused before any password work, by route and limit",
                &["route", "limit"],
            ),
            password_hash_jobs,
            model_writes_refused: counter_vec(
                &registry,
                "fanout_model_writes_refused_total",
                "Model writes refused by a policy or a limit, by reason",
                &["reason"],
            ),
            session_checks: counter_vec(
                &registry,
                "fanout_session_checks_total",
                "Tokens of live sessions looked up again by re-validation, by outcome (live, dead, error)",
                &["outcome"],
            ),
            registry,
        }
    }

    /// The registry, for components that register their own metrics (the adapter).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(%err, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// A socket (or `/ws` connection) connected to `namespace`.
    pub fn socket_connected(&self, namespace: &str) {
        self.connections.with_label_values(&[namespace]).inc();
        self.sockets_connected.with_label_values(&[namespace]).inc();
    }

    /// A socket left `namespace` for `reason`.
    pub fn socket_disconnected(&self, namespace: &str, reason: &str) {
        self.disconnections
            .with_label_values(&[namespace, reason])
            .inc();
        self.sockets_connected.with_label_values(&[namespace]).dec();
    }

    /// An authentication was refused.
    pub fn auth_failed(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// A client event arrived.
    pub fn event_received(&self, namespace: &str) {
        self.events_received.with_label_values(&[namespace]).inc();
    }

    /// `count` events were emitted to clients.
    pub fn events_sent(&self, namespace: &str, count: u64) {
        self.events_sent
            .with_label_values(&[namespace])
            .inc_by(count);
    }

    /// A topic message was published through this node.
    pub fn topic_published(&self, source: PublishSource) {
        self.topic_published
            .with_label_values(&[source.as_str()])
            .inc();
    }

    /// A topic message reached `recipients` local subscribers, `latency` after its publish
    /// reached this node.
    pub fn topic_delivered(&self, recipients: u64, latency: Duration) {
        self.topic_delivered.inc_by(recipients);
        self.delivery_latency.observe(latency.as_secs_f64());
    }

    /// Client input was refused (`origin`: socket, ws, http, events).
    pub fn bad_input(&self, origin: &str, code: &str) {
        self.bad_input.with_label_values(&[origin, code]).inc();
    }

    /// `count` messages were dropped: counted, and logged at most once a second per
    /// transport and reason (with the running total, so nothing is hidden by the limit).
    pub fn messages_dropped(&self, transport: DropTransport, reason: DropReason, count: u64) {
        if count == 0 {
            return;
        }
        let counter = self
            .dropped
            .with_label_values(&[transport.as_str(), reason.as_str()]);
        counter.inc_by(count);
        if self.drop_logs.check_key(&(transport, reason)).is_ok() {
            tracing::warn!(
                transport = transport.as_str(),
                reason = reason.as_str(),
                count,
                total = counter.get(),
                "messages dropped"
            );
        }
    }

    /// The `fanout_messages_dropped_total` counter vector, for components that count their
    /// own drops under the same metric (the adapter's inbound queues).
    pub fn dropped_counter(&self) -> &IntCounterVec {
        &self.dropped
    }

    /// A store issued a Redis command.
    pub fn redis_command(&self, op: &str, took: Duration, ok: bool) {
        self.redis_command_duration
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
        if !ok {
            self.redis_errors.with_label_values(&[op]).inc();
        }
    }

    /// A TCP connection was accepted (`true`) or closed (`false`).
    pub fn tcp_connection(&self, opened: bool) {
        if opened {
            self.tcp_connections.inc();
        } else {
            self.tcp_connections.dec();
        }
    }

    /// A connection was refused by a connection limit.
    pub fn connection_refused(&self, refusal: Refusal) {
        self.tcp_rejected
            .with_label_values(&[refusal.as_str()])
            .inc();
    }

    /// The server closed an HTTP connection for `reason`.
    pub fn http_connection_closed(&self, reason: HttpClose) {
        self.http_closed.with_label_values(&[reason.as_str()]).inc();
    }

    /// An anonymous socket of `namespace` was closed for staying anonymous too long.
    pub fn socket_idle_closed(&self, namespace: &str) {
        self.idle_closed.with_label_values(&[namespace]).inc();
    }

    /// A session re-validation round looked tokens up: `live` still valid, `dead` gone
    /// (their sessions ended), `failed` lookups that could not reach the store.
    pub fn session_checks(&self, live: u64, dead: u64, failed: u64) {
        for (outcome, count) in [("live", live), ("dead", dead), ("error", failed)] {
            self.session_checks
                .with_label_values(&[outcome])
                .inc_by(count);
        }
    }

    /// A REST request finished.
    pub fn http_request(&self, route: &str, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests.with_label_values(&[route, class]).inc();
    }

    /// A login or signup (`route`) was refused by a throttle (`limit`: `ip`, `username`,
    /// `hash_per_ip`, `hash_queue`).
    pub fn credentials_throttled(&self, route: &str, limit: &str) {
        self.credentials_throttled
            .with_label_values(&[route, limit])
            .inc();
    }

    /// A password hash job was queued (`true`) or finished (`false`).
    pub fn password_hash_job(&self, queued: bool) {
        if queued {
            self.password_hash_jobs.inc();
        } else {
            self.password_hash_jobs.dec();
        }
    }

    /// A model write was refused (`reason`: `forbidden`, `readonly`, `too_large`,
    /// `user_quota`, `model_quota`).
    pub fn model_write_refused(&self, reason: &str) {
        self.model_writes_refused.with_label_values(&[reason]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fanout_metrics() {
        let m = Metrics::new("n1");
        m.socket_connected("/");
        m.auth_failed("invalid_token");
        m.topic_delivered(3, Duration::from_millis(2));
        m.messages_dropped(DropTransport::Ws, DropReason::SlowConsumer, 2);
        m.messages_dropped(DropTransport::Ws, DropReason::SlowConsumer, 1);
        m.credentials_throttled("login", "ip");
        m.model_write_refused("forbidden");
        m.password_hash_job(true);
        let text = m.render();
        assert!(
            text.contains("fanout_credentials_throttled_total{limit=\"ip\",route=\"login\"} 1")
        );
        assert!(text.contains("fanout_model_writes_refused_total{reason=\"forbidden\"} 1"));
        assert!(text.contains("fanout_password_hash_jobs 1"));
        assert!(text.contains("fanout_sockets_connected{namespace=\"/\"} 1"));
        assert!(text.contains("fanout_auth_failures_total{reason=\"invalid_token\"} 1"));
        assert!(text.contains("fanout_topic_messages_delivered_total 3"));
        assert!(text.contains(
            "fanout_messages_dropped_total{reason=\"slow_consumer\",transport=\"ws\"} 3"
        ));
        assert!(text.contains("fanout_delivery_latency_seconds_count 1"));
        assert!(text.contains("fanout_build_info{node=\"n1\""));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("fanout_") || line.starts_with("process_"),
                "{line}"
            );
        }
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "));
    }
}
