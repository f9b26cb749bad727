//! Prometheus metrics of the adapter, and the rate-limited log lines that go with them.
//!
//! Every counted event has one method here (`malformed`, `dropped`, `publish_failed`, ...)
//! that bumps the metric *and* writes the log line, so no other module touches a counter
//! directly. Label values come from small fixed sets (request type, message kind, channel
//! kind) — never a room, socket id or payload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::error::{Error, chain};

/// How often (at most) a repeated warning of the same kind is logged.
const LOG_EVERY_MS: u64 = 10_000;

/// The adapter's metrics. All fields are public so tests (and the node) can read them.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `fanout_adapter_requests_sent_total{type}`: requests published, by Node request type
    /// (`sockets`, `all_rooms`, `remote_join`, `remote_leave`, `remote_disconnect`,
    /// `remote_fetch`, `broadcast_ack`).
    pub requests_sent: IntCounterVec,
    /// `fanout_adapter_request_timeouts_total{type}`: requests that did not get every answer in time.
    pub request_timeouts: IntCounterVec,
    /// `fanout_adapter_requests_failed_total{type,reason}`: requests refused or failed without
    /// waiting (`not_ready`, `publish`, `numsub`).
    pub requests_failed: IntCounterVec,
    /// `fanout_adapter_messages_received_total{kind}`: messages read from Redis, by kind
    /// (`broadcast`, `request`, `response`, `channel`).
    pub messages_received: IntCounterVec,
    /// `fanout_adapter_malformed_messages_total{kind}`: messages that could not be decoded
    /// or had the wrong shape; they are skipped.
    pub malformed: IntCounterVec,
    /// `fanout_adapter_dropped_messages_total{kind}`: inbound messages dropped because a
    /// bounded queue was full.
    pub dropped: IntCounterVec,
    /// `fanout_adapter_publish_errors_total`: PUBLISH commands that failed or timed out.
    pub publish_errors: IntCounter,
    /// `fanout_adapter_reconnects_total`: subscriber connection losses followed by a reconnect attempt.
    pub reconnects: IntCounter,
    /// `fanout_adapter_subscriptions_live`: 1 when the subscriber connection is up and
    /// every subscription is confirmed, else 0.
    pub subscriptions_live: IntGauge,
    /// `fanout_adapter_subscription_channels{state}`: sharded mode: channels this node wants
    /// subscribed (`state="expected"`) and those Redis confirmed (`state="live"`).
    pub subscription_channels: IntGaugeVec,
    /// `fanout_adapter_subscription_gaps_total{reason}`: sharded mode: a wanted channel
    /// stopped being subscribed (`moved`: Redis unsubscribed it because its slot moved;
    /// `connection`: its shard connection dropped and resubscribing failed; `silent`: Redis
    /// holds fewer subscriptions than we hold live, one per missing channel). Messages
    /// published to it until it is live again are not delivered to this node.
    pub subscription_gaps: IntCounterVec,
    /// `fanout_adapter_unmappable_sockets_total`: remote sockets returned by a fetch whose id
    /// is not a socketioxide `Sid` (e.g. Node.js 20-char ids); they are left out of the result.
    pub unmappable_sockets: IntCounter,
    /// `fanout_adapter_oversize_messages_total{kind}`: inbound messages longer than
    /// `max_message_bytes`, skipped before being copied or decoded, by kind (`broadcast`,
    /// `request`, `response`, `channel`).
    pub oversize: IntCounterVec,
    /// `fanout_adapter_remote_requests_refused_total{type}`: requests from other nodes
    /// refused because too many of that type were already being served (`broadcast_ack`).
    pub remote_requests_refused: IntCounterVec,
    /// `fanout_adapter_remote_ack_timeouts_capped_total`: remote broadcast-with-ack requests
    /// whose timeout was longer than `remote_ack_timeout_max` (or absent) and was lowered.
    pub remote_ack_timeouts_capped: IntCounter,
    /// The node's `fanout_messages_dropped_total{transport,reason}`, when given: inbound drops
    /// are also counted there with `transport="redis"`.
    node_dropped: Option<IntCounterVec>,
    last_log: std::sync::Arc<[AtomicU64; 6]>,
}

/// The kinds of warnings that are rate-limited independently.
#[derive(Debug, Clone, Copy)]
enum LogKind {
    Malformed = 0,
    Dropped = 1,
    Publish = 2,
    Connection = 3,
    Oversize = 4,
    Refused = 5,
}

impl Metrics {
    /// Create the metrics and register them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        m.register(registry)?;
        Ok(m)
    }

    /// Registers these metrics into `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.requests_sent.clone()))?;
        registry.register(Box::new(self.request_timeouts.clone()))?;
        registry.register(Box::new(self.requests_failed.clone()))?;
        registry.register(Box::new(self.messages_received.clone()))?;
        registry.register(Box::new(self.malformed.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        registry.register(Box::new(self.publish_errors.clone()))?;
        registry.register(Box::new(self.reconnects.clone()))?;
        registry.register(Box::new(self.subscriptions_live.clone()))?;
        registry.register(Box::new(self.unmappable_sockets.clone()))?;
        registry.register(Box::new(self.subscription_channels.clone()))?;
        registry.register(Box::new(self.subscription_gaps.clone()))?;
        registry.register(Box::new(self.oversize.clone()))?;
        registry.register(Box::new(self.remote_requests_refused.clone()))?;
        registry.register(Box::new(self.remote_ack_timeouts_capped.clone()))?;
        Ok(())
    }

    /// Create the metrics without registering them anywhere.
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(Self {
            requests_sent: vec(
                "fanout_adapter_requests_sent_total",
                "Adapter requests published to other nodes, by request type",
                &["type"],
            )?,
            request_timeouts: vec(
                "fanout_adapter_request_timeouts_total",
                "Adapter requests that timed out waiting for responses, by request type",
                &["type"],
            )?,
            requests_failed: vec(
                "fanout_adapter_requests_failed_total",
                "Adapter requests that failed without waiting, by request type and reason",
                &["type", "reason"],
            )?,
            messages_received: vec(
                "fanout_adapter_messages_received_total",
                "Messages received from Redis, by kind",
                &["kind"],
            )?,
            malformed: vec(
                "fanout_adapter_malformed_messages_total",
                "Messages received from Redis that could not be decoded and were skipped, by kind",
                &["kind"],
            )?,
            dropped: vec(
                "fanout_adapter_dropped_messages_total",
                "Inbound messages dropped because a bounded queue was full, by kind",
                &["kind"],
            )?,
            publish_errors: IntCounter::new(
                "fanout_adapter_publish_errors_total",
                "PUBLISH commands that failed or timed out",
            )?,
            reconnects: IntCounter::new(
                "fanout_adapter_reconnects_total",
                "Redis subscriber connection losses followed by a reconnect",
            )?,
            subscriptions_live: IntGauge::new(
                "fanout_adapter_subscriptions_live",
                "1 when the Redis subscriber connection is up and all subscriptions are live",
            )?,
            subscription_channels: IntGaugeVec::new(
                Opts::new(
                    "fanout_adapter_subscription_channels",
                    "Sharded mode: channels wanted (expected) and confirmed by Redis (live)",
                ),
                &["state"],
            )?,
            subscription_gaps: vec(
                "fanout_adapter_subscription_gaps_total",
                "Sharded mode: wanted channels that stopped being subscribed, by reason",
                &["reason"],
            )?,
            unmappable_sockets: IntCounter::new(
                "fanout_adapter_unmappable_sockets_total",
                "Remote sockets left out of fetch_sockets because their id is not a socketioxide Sid",
            )?,
            oversize: vec(
                "fanout_adapter_oversize_messages_total",
                "Inbound messages over the size cap, skipped undecoded, by kind",
                &["kind"],
            )?,
            remote_requests_refused: vec(
                "fanout_adapter_remote_requests_refused_total",
                "Requests from other nodes refused because too many were being served, by type",
                &["type"],
            )?,
            remote_ack_timeouts_capped: IntCounter::new(
                "fanout_adapter_remote_ack_timeouts_capped_total",
                "Remote broadcast-with-ack requests whose ack timeout was lowered to the maximum",
            )?,
            node_dropped: None,
            last_log: std::sync::Arc::new(Default::default()),
        })
    }

    /// Also counts inbound drops in `counter` (labels `[transport, reason]`, the node's
    /// `fanout_messages_dropped_total`).
    pub(crate) fn with_node_dropped(mut self, counter: Option<IntCounterVec>) -> Self {
        self.node_dropped = counter;
        self
    }

    fn node_drop(&self, reason: &'static str) {
        if let Some(counter) = &self.node_dropped {
            counter.with_label_values(&["redis", reason]).inc();
        }
    }

    /// A broadcast from another server skipped local sockets: `full` had no room in their
    /// buffer, `closed` were closing. Counted in the node's `fanout_messages_dropped_total`
    /// under `transport="socketio"` (the local share of a remote broadcast).
    pub(crate) fn local_sockets_skipped(&self, full: u64, closed: u64) {
        if let Some(counter) = &self.node_dropped {
            counter
                .with_label_values(&["socketio", "slow_consumer"])
                .inc_by(full);
            counter
                .with_label_values(&["socketio", "closed"])
                .inc_by(closed);
        }
    }

    /// An inbound message was over the size cap and skipped; count it and log (rate-limited).
    pub(crate) fn too_large(&self, kind: &'static str, channel: &str, len: usize, max: usize) {
        self.oversize.with_label_values(&[kind]).inc();
        self.node_drop("too_large");
        if self.should_log(LogKind::Oversize) {
            tracing::warn!(
                kind,
                channel,
                len,
                max,
                "inbound message over the size cap skipped (FANOUT_REDIS_MAX_MESSAGE_BYTES)"
            );
        }
    }

    /// A request from another node was refused: too many of its type in flight.
    pub(crate) fn remote_refused(&self, kind: &'static str, max: usize) {
        self.remote_requests_refused
            .with_label_values(&[kind])
            .inc();
        if self.should_log(LogKind::Refused) {
            tracing::warn!(
                kind,
                max,
                "remote request refused: too many in flight (FANOUT_REMOTE_ACK_REQUESTS_MAX)"
            );
        }
    }

    /// A remote ack request asked for a longer (or no) timeout and got the maximum.
    pub(crate) fn ack_timeout_capped(&self) {
        self.remote_ack_timeouts_capped.inc();
    }

    /// A message could not be decoded; count it and log (rate-limited).
    pub(crate) fn malformed(&self, kind: &'static str, channel: &str, err: &dyn std::error::Error) {
        self.malformed.with_label_values(&[kind]).inc();
        if self.should_log(LogKind::Malformed) {
            tracing::warn!(kind, channel, "malformed message skipped: {}", chain(err));
        }
    }

    /// An inbound message was dropped because its queue was full; count it and log (rate-limited).
    pub(crate) fn dropped(&self, kind: &'static str, channel: &str) {
        self.dropped.with_label_values(&[kind]).inc();
        self.node_drop("queue_full");
        if self.should_log(LogKind::Dropped) {
            tracing::warn!(
                kind,
                channel,
                "inbound queue full, message dropped (raise inbound_buffer?)"
            );
        }
    }

    /// A PUBLISH failed; count it and log (rate-limited).
    pub(crate) fn publish_failed(&self, channel: &str, err: &Error) {
        self.publish_errors.inc();
        if self.should_log(LogKind::Publish) {
            tracing::warn!(channel, "redis publish failed: {}", chain(err));
        }
    }

    /// A connection attempt failed; log (rate-limited).
    pub(crate) fn connect_failed(&self, err: &Error) {
        if self.should_log(LogKind::Connection) {
            tracing::warn!("redis subscriber connection failed: {}", chain(err));
        }
    }

    /// A message was received on a channel of the given kind.
    pub(crate) fn received(&self, kind: &'static str) {
        self.messages_received.with_label_values(&[kind]).inc();
    }

    /// A request of the given type was published.
    pub(crate) fn request_sent(&self, kind: &'static str) {
        self.requests_sent.with_label_values(&[kind]).inc();
    }

    /// A request timed out.
    pub(crate) fn request_timeout(&self, kind: &'static str) {
        self.request_timeouts.with_label_values(&[kind]).inc();
        tracing::warn!(kind, "adapter request timed out");
    }

    /// A request failed before waiting for answers.
    pub(crate) fn request_failed(&self, kind: &'static str, reason: &'static str) {
        self.requests_failed
            .with_label_values(&[kind, reason])
            .inc();
    }

    /// Sets the sharded channel gauges.
    pub(crate) fn set_channels(&self, expected: usize, live: usize) {
        let set = |state: &str, n: usize| {
            self.subscription_channels
                .with_label_values(&[state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("expected", expected);
        set("live", live);
    }

    /// A wanted channel went un-live; messages published to it meanwhile are lost here.
    pub(crate) fn subscription_gap(&self, channel: &str, reason: &'static str) {
        self.subscription_gaps.with_label_values(&[reason]).inc();
        if self.should_log(LogKind::Connection) {
            tracing::warn!(channel, reason, "sharded subscription lost, resubscribing");
        }
    }

    /// Sets the subscription gauge.
    pub(crate) fn set_live(&self, live: bool) {
        self.subscriptions_live.set(i64::from(live));
    }

    /// Reads a counter of a vec for one label set (for tests and diagnostics).
    pub fn get(vec: &IntCounterVec, labels: &[&str]) -> u64 {
        vec.get_metric_with_label_values(labels)
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Sum of a counter vec over all its label sets.
    pub fn sum(vec: &IntCounterVec) -> u64 {
        use prometheus::core::Collector;
        vec.collect()
            .iter()
            .flat_map(|mf| mf.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    fn should_log(&self, kind: LogKind) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let slot = &self.last_log[kind as usize];
        let last = slot.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY_MS || last == 0 {
            slot.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_counts() {
        let reg = Registry::new();
        let m = Metrics::new(&reg).unwrap();
        let boom = std::io::Error::other("boom");
        m.malformed("broadcast", "c", &boom);
        m.malformed("request", "c", &boom);
        m.dropped("request", "c");
        assert_eq!(Metrics::get(&m.malformed, &["broadcast"]), 1);
        assert_eq!(Metrics::sum(&m.malformed), 2);
        assert_eq!(Metrics::get(&m.dropped, &["request"]), 1);
        let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(names.iter().all(|n| n.starts_with("fanout_adapter_")));
        assert!(names.contains(&"fanout_adapter_malformed_messages_total".to_string()));
        // registering twice into the same registry is an error, not a panic
        assert!(Metrics::new(&reg).is_err());
    }

    #[test]
    fn drops_reach_the_node_counter() {
        let node =
            IntCounterVec::new(Opts::new("x_dropped", "h"), &["transport", "reason"]).unwrap();
        let m = Metrics::unregistered()
            .unwrap()
            .with_node_dropped(Some(node.clone()));
        m.dropped("channel", "c");
        m.too_large("request", "c", 10, 5);
        m.too_large("broadcast", "c", 10, 5);
        assert_eq!(Metrics::get(&node, &["redis", "queue_full"]), 1);
        assert_eq!(Metrics::get(&node, &["redis", "too_large"]), 2);
        assert_eq!(Metrics::get(&m.oversize, &["request"]), 1);
    }
}
