//! Accounting and reporting: latency histograms, the publish ledger, per-subscriber
//! loss / duplicate / reorder tracking, and the final [`Report`] (human table or JSON).
//!
//! Every published payload carries a [`Stamp`]: publisher id, per-publisher sequence number
//! and the send time in microseconds since the load generator started (one monotonic clock
//! for publishers and subscribers, so latency needs no clock sync). Publishers write each
//! message into a [`PublisherLedger`]; each subscriber connection owns a [`Tracker`]. At the
//! end [`account`] joins them: a message is *expected* at every subscriber of its topic, and
//! what did not arrive is lost.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Key of the stamp object inside every published `data` payload.
pub const STAMP_KEY: &str = "_lt";

/// The measurement stamp carried in every published payload (`data._lt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Publisher id (0-based, dense).
    pub p: u32,
    /// Sequence number of the message for this publisher (0-based, dense).
    pub s: u64,
    /// Send time, microseconds since the load generator started.
    pub t: u64,
}

/// The part of a payload the subscriber parses; every other field is skipped.
#[derive(Debug, Deserialize)]
pub struct Stamped {
    /// The stamp.
    #[serde(rename = "_lt")]
    pub lt: Stamp,
}

/// Builds a `data` payload of about `size` bytes of JSON carrying `stamp`.
pub fn payload(stamp: Stamp, size: usize) -> String {
    let head = format!(
        "{{\"{STAMP_KEY}\":{{\"p\":{},\"s\":{},\"t\":{}}},\"pad\":\"",
        stamp.p, stamp.s, stamp.t
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + pad + 2);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// A new latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        // Bounds are constants that hdrhistogram accepts; this arm is unreachable.
        Histogram::new(3).unwrap_or_else(|e| panic!("hdrhistogram: {e}"))
    })
}

/// Latency histograms sharded by connection to keep lock contention negligible.
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    /// `n` shards (at least 1).
    pub fn new(n: usize) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records `us` microseconds into shard `key % n` (values are clamped into range).
    pub fn record(&self, key: usize, us: u64) {
        let shard = &self.shards[key % self.shards.len()];
        if let Ok(mut h) = shard.lock() {
            h.saturating_record(us.max(1));
        }
    }

    /// Merges all shards into one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for s in &self.shards {
            if let Ok(h) = s.lock() {
                let _ = out.add(&*h);
            }
        }
        out
    }
}

/// One published message, as the publisher saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Topic index.
    pub topic: u32,
    /// Sent after the warm-up: counted.
    pub in_window: bool,
    /// The server refused it (error ack / HTTP error): not expected anywhere.
    pub failed: bool,
}

/// What one publisher sent, indexed by sequence number.
#[derive(Debug, Clone, Default)]
pub struct PublisherLedger {
    /// Entry `s` is the message with sequence number `s`.
    pub entries: Vec<LedgerEntry>,
}

impl PublisherLedger {
    /// Records message `seq` (must be the next sequence number) to `topic`.
    pub fn sent(&mut self, seq: u64, topic: u32, in_window: bool) {
        debug_assert_eq!(seq as usize, self.entries.len());
        self.entries.push(LedgerEntry {
            topic,
            in_window,
            failed: false,
        });
    }

    /// Marks message `seq` as refused by the server.
    pub fn failed(&mut self, seq: u64) {
        if let Some(e) = self.entries.get_mut(seq as usize) {
            e.failed = true;
        }
    }
}

/// Per-publisher state inside one subscriber's [`Tracker`].
#[derive(Debug, Clone, Default)]
struct PubTrack {
    bits: Vec<u64>,
    max_seq: Option<u64>,
    duplicates: u64,
    reordered: u64,
}

/// What one subscriber connection received. Owned by the connection's task: no locking.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Topic indexes this connection subscribed to (acknowledged).
    pub topics: Vec<u32>,
    per_pub: Vec<PubTrack>,
    /// Deliveries stamped before the end of the warm-up (ignored).
    pub warmup: u64,
    /// Deliveries whose payload had no parsable stamp.
    pub unparsable: u64,
}

/// The verdict on one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Sent during the warm-up: not counted.
    Warmup,
    /// First arrival of this message here: its latency counts.
    First {
        /// Receive time minus send time, µs.
        latency_us: u64,
    },
    /// Already received here before.
    Duplicate,
}

impl Tracker {
    /// A tracker for a connection subscribed to `topics`.
    pub fn new(topics: Vec<u32>) -> Self {
        Self {
            topics,
            ..Self::default()
        }
    }

    /// Accounts one delivery of `stamp` received at `now_us`; `warmup_end_us` is the end of
    /// the warm-up on the same clock.
    pub fn arrive(&mut self, stamp: Stamp, now_us: u64, warmup_end_us: u64) -> Arrival {
        if stamp.t < warmup_end_us {
            self.warmup += 1;
            return Arrival::Warmup;
        }
        let p = stamp.p as usize;
        if self.per_pub.len() <= p {
            self.per_pub.resize_with(p + 1, PubTrack::default);
        }
        let track = &mut self.per_pub[p];
        let word = (stamp.s / 64) as usize;
        let bit = 1u64 << (stamp.s % 64);
        if track.bits.len() <= word {
            track.bits.resize(word + 1, 0);
        }
        if track.bits[word] & bit != 0 {
            track.duplicates += 1;
            return Arrival::Duplicate;
        }
        track.bits[word] |= bit;
        match track.max_seq {
            Some(m) if stamp.s < m => track.reordered += 1,
            _ => track.max_seq = Some(stamp.s),
        }
        Arrival::First {
            latency_us: now_us.saturating_sub(stamp.t),
        }
    }
}

/// Loss / duplicate / reorder totals over all subscribers, after the warm-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStats {
    /// Messages published after the warm-up and accepted by the server.
    pub published: u64,
    /// Messages the server refused (error ack / HTTP error).
    pub publish_errors: u64,
    /// Deliveries expected: for each counted message, the subscribers of its topic.
    pub expected: u64,
    /// Distinct expected deliveries that arrived.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Arrivals of a message already received by the same connection.
    pub duplicates: u64,
    /// Arrivals with a lower sequence number than one already seen from the same
    /// publisher on the same connection.
    pub reordered: u64,
    /// Arrivals of a message the connection should not get (other topic, unknown or
    /// refused message).
    pub unexpected: u64,
    /// Arrivals without a parsable stamp.
    pub unparsable: u64,
    /// Reorders by publisher id.
    pub reordered_by_publisher: Vec<u64>,
    /// Deliveries owed over the whole run, warm-up included: for every accepted message, the
    /// subscribers of its topic (what the servers' own counters must add up to).
    #[serde(default)]
    pub expected_all: u64,
}

/// The servers' own account of a run, from `/metrics` of every target (fanout only): the
/// deliveries they handed to a subscriber and the ones they dropped, counted, since before
/// the clients connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDelivery {
    /// `fanout_topic_messages_delivered_total`, summed over targets.
    pub delivered: u64,
    /// `fanout_messages_dropped_total`, every transport and reason, summed over targets.
    pub dropped: u64,
}

impl DeliveryStats {
    /// Loss as a fraction of expected deliveries (0 when nothing was expected).
    pub fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// Joins what the publishers sent with what each subscriber received.
pub fn account(ledgers: &[PublisherLedger], trackers: &[Tracker]) -> DeliveryStats {
    let max_topic = ledgers
        .iter()
        .flat_map(|l| l.entries.iter().map(|e| e.topic))
        .chain(trackers.iter().flat_map(|t| t.topics.iter().copied()))
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut per_topic = vec![0u64; max_topic];
    let mut per_topic_all = vec![0u64; max_topic];
    let mut stats = DeliveryStats {
        reordered_by_publisher: vec![0; ledgers.len()],
        ..DeliveryStats::default()
    };
    for l in ledgers {
        for e in &l.entries {
            if !e.failed {
                per_topic_all[e.topic as usize] += 1;
            }
            if !e.in_window {
                continue;
            }
            if e.failed {
                stats.publish_errors += 1;
            } else {
                stats.published += 1;
                per_topic[e.topic as usize] += 1;
            }
        }
    }
    for t in trackers {
        stats.expected += t.topics.iter().map(|&k| per_topic[k as usize]).sum::<u64>();
        stats.expected_all += t
            .topics
            .iter()
            .map(|&k| per_topic_all[k as usize])
            .sum::<u64>();
        stats.unparsable += t.unparsable;
        for (p, track) in t.per_pub.iter().enumerate() {
            stats.duplicates += track.duplicates;
            stats.reordered += track.reordered;
            if p >= stats.reordered_by_publisher.len() {
                stats.reordered_by_publisher.resize(p + 1, 0);
            }
            stats.reordered_by_publisher[p] += track.reordered;
            let ledger = ledgers.get(p);
            for (w, &word) in track.bits.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let seq = w * 64 + b;
                    let ok = ledger
                        .and_then(|l| l.entries.get(seq))
                        .is_some_and(|e| e.in_window && !e.failed && t.topics.contains(&e.topic));
                    if ok {
                        stats.received += 1;
                    } else {
                        stats.unexpected += 1;
                    }
                }
            }
        }
    }
    stats.lost = stats.expected.saturating_sub(stats.received);
    stats
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Latency at fixed percentiles (for plots): pairs of (percentile, ms).
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    const POINTS: &[f64] = &[
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
    ];
    POINTS
        .iter()
        .map(|&p| {
            let v = if p >= 100.0 {
                h.max()
            } else {
                h.value_at_percentile(p)
            };
            (p, v as f64 / 1000.0)
        })
        .collect()
}

/// Memory and sockets of one target (server process), from `/metrics` and/or `/proc`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetMem {
    /// URL or `pid:N`.
    pub target: String,
    /// RSS (bytes) before the clients connected.
    pub rss_before: Option<u64>,
    /// RSS (bytes) at the end of the run (clients still connected).
    pub rss_after: Option<u64>,
    /// Highest RSS sampled.
    pub rss_max: Option<u64>,
    /// `fanout_sockets_connected` at the end, when exposed.
    pub sockets: Option<f64>,
}

/// A storm of large messages over idle connections (`connect --storm-rounds`): the
/// targets' summed RSS before it, at its peak and after it settled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormFigures {
    /// Messages published on the events channel (each to one topic).
    pub messages: u64,
    /// Payload of each, bytes.
    pub payload: u64,
    /// Time between the first publish and the `after` figure, seconds.
    pub settle_secs: f64,
    /// RSS before the storm, bytes.
    pub rss_before: u64,
    /// Highest RSS sampled during the storm and the settling, bytes.
    pub rss_peak: u64,
    /// RSS after the settling, bytes.
    pub rss_after: u64,
}

impl StormFigures {
    /// How far above the pre-storm RSS the settled RSS still is (0.05 = 5%).
    pub fn excess(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / (self.rss_before.max(1) as f64)
    }
}

/// The load generator's own resource use: makes a saturated generator visible.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneratorStats {
    /// tokio worker threads.
    pub threads: usize,
    /// CPU seconds (user + system) during the measurement window.
    pub cpu_secs: f64,
    /// CPU during the window in cores (1.0 = one core busy all the time).
    pub cpu_cores: f64,
    /// Whole-machine CPU busy fraction during the window (from /proc/stat).
    pub machine_busy: f64,
    /// Event-loop lag of the generator (timer overshoot): p99, ms.
    pub lag_p99_ms: f64,
    /// Event-loop lag max, ms.
    pub lag_max_ms: f64,
    /// Highest sum of unread bytes in the generator's sockets (kernel Recv-Q).
    pub recvq_max_bytes: u64,
}

/// One periodic sample (soak and progress history).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since measurement start.
    pub t: f64,
    /// Deliveries received so far (after warm-up).
    pub received: u64,
    /// Deliveries expected so far (counted when published).
    pub expected: u64,
    /// Connections currently open.
    pub connected: u64,
    /// Sum of targets' RSS, bytes.
    pub targets_rss: Option<u64>,
    /// Generator CPU since previous sample, in cores.
    pub cpu_cores: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Run label (defaults to the workload name; `compare` uses it as the system name).
    pub label: String,
    /// Workload name.
    pub workload: String,
    /// Target URLs.
    pub targets: Vec<String>,
    /// Unix time of the start, seconds.
    pub started_unix: u64,
    /// The parameters of the run.
    pub params: serde_json::Value,
    /// Client connections requested (subscribers or idle connections, publishers excluded).
    pub clients: u64,
    /// Connections that completed the handshake.
    pub connected: u64,
    /// Transport / protocol / timeout failures while connecting.
    pub connect_failures: u64,
    /// Handshakes refused with `connect_error` (bad token), or failed logins.
    pub auth_failures: u64,
    /// Connections that dropped during the run.
    pub disconnects: u64,
    /// A few failure messages.
    pub failure_samples: Vec<String>,
    /// Full handshake time (TCP + WebSocket + Engine.IO + Socket.IO CONNECT), ms.
    pub connect_ms: Percentiles,
    /// Successful connects per second during the connect phase.
    pub connects_per_sec: f64,
    /// Subscribe acknowledgement round trip during the connect phase, ms.
    #[serde(default)]
    pub subscribe_ack_ms: Percentiles,
    /// Fan-out latency (publish send → subscriber receive), ms.
    pub latency_ms: Percentiles,
    /// (percentile, ms) points of the latency distribution, for plots.
    pub latency_curve: Vec<(f64, f64)>,
    /// Publish acknowledgement round trip (Socket.IO ack, HTTP response or Redis reply), ms.
    pub publish_ack_ms: Percentiles,
    /// Loss / duplicates / reorders.
    pub deliveries: DeliveryStats,
    /// Length of the measurement window, seconds.
    pub window_secs: f64,
    /// Distinct expected deliveries received per second of window.
    pub deliveries_per_sec: f64,
    /// Offered publish rate, messages/s.
    pub publish_rate: f64,
    /// Generator resource use.
    pub generator: GeneratorStats,
    /// Targets' memory.
    pub targets_mem: Vec<TargetMem>,
    /// The servers' delivered and dropped counters over the run (fanout targets only).
    #[serde(default)]
    pub server: Option<ServerDelivery>,
    /// Growth of the targets' summed RSS per connected client, bytes (connect workload).
    pub rss_per_connection: Option<f64>,
    /// Growth of the targets' allocated bytes (live objects, from `fanout_allocator_bytes`)
    /// per connected client (connect workload, fanout targets).
    #[serde(default)]
    pub allocated_per_connection: Option<f64>,
    /// `connect --storm-rounds`: memory before, at the peak of and after a message storm.
    #[serde(default)]
    pub storm: Option<StormFigures>,
    /// Periodic samples.
    pub samples: Vec<Sample>,
    /// Honesty warnings: generator saturation, lag, loss, failures.
    pub warnings: Vec<String>,
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".to_owned(), |b| {
        format!("{:.1} MiB", b as f64 / 1048576.0)
    })
}

impl Report {
    /// The human-readable table printed at the end of a run.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let l = &self.latency_ms;
        let d = &self.deliveries;
        let _ = writeln!(o, "== {} ({}) ==", self.label, self.workload);
        let _ = writeln!(o, "targets            {}", self.targets.join(", "));
        let _ = writeln!(
            o,
            "clients            {} requested, {} connected, {} connect failures, {} auth failures, {} dropped",
            self.clients,
            self.connected,
            self.connect_failures,
            self.auth_failures,
            self.disconnects
        );
        let c = &self.connect_ms;
        let _ = writeln!(
            o,
            "connect (ms)       p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}   {:.0} connects/s",
            c.p50, c.p90, c.p99, c.p999, c.max, self.connects_per_sec
        );
        let s = &self.subscribe_ack_ms;
        if s.max > 0.0 {
            let _ = writeln!(
                o,
                "subscribe ack (ms) p50 {:.2}  p99 {:.2}  max {:.2}",
                s.p50, s.p99, s.max
            );
        }
        if d.published > 0 || d.expected > 0 {
            let _ = writeln!(
                o,
                "latency (ms)       p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            );
            let a = &self.publish_ack_ms;
            let _ = writeln!(
                o,
                "publish ack (ms)   p50 {:.2}  p99 {:.2}  max {:.2}",
                a.p50, a.p99, a.max
            );
            let _ = writeln!(
                o,
                "published          {} in {:.1}s window ({:.1} msg/s offered), {} refused",
                d.published, self.window_secs, self.publish_rate, d.publish_errors
            );
            let _ = writeln!(
                o,
                "deliveries         expected {}  received {}  lost {} ({:.4}%)  dup {}  reordered {}  unexpected {}",
                d.expected,
                d.received,
                d.lost,
                d.loss_ratio() * 100.0,
                d.duplicates,
                d.reordered,
                d.unexpected
            );
            if let Some(sv) = &self.server {
                let _ = writeln!(
                    o,
                    "server account     delivered {} + dropped {} = {}  (owed over the run: {} = published × subscribers)",
                    sv.delivered,
                    sv.dropped,
                    sv.delivered + sv.dropped,
                    d.expected_all
                );
            }
            let _ = writeln!(
                o,
                "throughput         {:.0} deliveries/s",
                self.deliveries_per_sec
            );
        }
        let g = &self.generator;
        let _ = writeln!(
            o,
            "generator          {:.2} cores of {} threads ({:.1} cpu-s), machine busy {:.0}%, loop lag p99 {:.2} ms max {:.2} ms, max Recv-Q {} B",
            g.cpu_cores,
            g.threads,
            g.cpu_secs,
            g.machine_busy * 100.0,
            g.lag_p99_ms,
            g.lag_max_ms,
            g.recvq_max_bytes
        );
        for t in &self.targets_mem {
            let _ = writeln!(
                o,
                "target {:<12} RSS before {}  after {}  max {}{}",
                t.target,
                mib(t.rss_before),
                mib(t.rss_after),
                mib(t.rss_max),
                t.sockets
                    .map(|s| format!("  sockets {s}"))
                    .unwrap_or_default()
            );
        }
        if let Some(per) = self.rss_per_connection {
            let _ = writeln!(o, "RSS per connection {:.1} KB", per / 1000.0);
        }
        if let Some(per) = self.allocated_per_connection {
            let _ = writeln!(
                o,
                "allocated per conn {:.1} KB (live objects; the rest of RSS is allocator and kernel)",
                per / 1000.0
            );
        }
        if let Some(s) = &self.storm {
            let _ = writeln!(
                o,
                "storm              {} × {} B: RSS {} → peak {} → {} after {:.0}s ({:+.1}% of before)",
                s.messages,
                s.payload,
                mib(Some(s.rss_before)),
                mib(Some(s.rss_peak)),
                mib(Some(s.rss_after)),
                s.settle_secs,
                s.excess() * 100.0
            );
        }
        for s in &self.failure_samples {
            let _ = writeln!(o, "failure            {s}");
        }
        for w in &self.warnings {
            let _ = writeln!(o, "WARNING            {w}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn storm_excess_is_relative_to_before() {
        let s = StormFigures {
            rss_before: 100,
            rss_peak: 300,
            rss_after: 105,
            ..StormFigures::default()
        };
        assert!((s.excess() - 0.05).abs() < 1e-9);
        let back = StormFigures {
            rss_before: 100,
            rss_after: 90,
            ..s
        };
        assert!(back.excess() < 0.0);
    }

    use super::*;

    fn st(p: u32, s: u64, t: u64) -> Stamp {
        Stamp { p, s, t }
    }

    #[test]
    fn payload_has_the_requested_size_and_parses() {
        let s = st(3, 99, 123_456);
        let body = payload(s, 128);
        assert_eq!(body.len(), 128);
        let parsed: Stamped = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed.lt, s);
        // Too small a size still yields a valid payload.
        let small = payload(s, 10);
        assert_eq!(serde_json::from_str::<Stamped>(&small).unwrap().lt, s);
    }

    /// A fake delivery stream with known latencies, warm-up, losses, duplicates,
    /// reorders and a stray message gives exact numbers.
    #[test]
    fn accounting_is_exact() {
        let warmup_end = 1_000;
        // Publisher 0 → topic 0: seq 0 in warm-up, seqs 1..=4 counted.
        // Publisher 1 → topic 1: seqs 0..=2 counted, seq 2 refused by the server.
        let mut l0 = PublisherLedger::default();
        l0.sent(0, 0, false);
        for s in 1..=4 {
            l0.sent(s, 0, true);
        }
        let mut l1 = PublisherLedger::default();
        for s in 0..=2 {
            l1.sent(s, 1, true);
        }
        l1.failed(2);
        let ledgers = vec![l0, l1];

        let hist = ShardedHistogram::new(4);
        let mut a = Tracker::new(vec![0]); // topic 0: expects p0 s1..4 (4)
        let mut b = Tracker::new(vec![0, 1]); // both: expects 4 + 2 = 6
        let mut c = Tracker::new(vec![1]); // topic 1: expects 2

        let feed = |t: &mut Tracker, key: usize, stamp: Stamp, now: u64| {
            if let Arrival::First { latency_us } = t.arrive(stamp, now, warmup_end) {
                hist.record(key, latency_us);
            }
        };
        // a: warm-up message, then 1, 3, 2 (reorder), 3 again (duplicate); 4 lost.
        feed(&mut a, 0, st(0, 0, 500), 600);
        feed(&mut a, 0, st(0, 1, 1_000), 1_100); // 100 µs
        feed(&mut a, 0, st(0, 3, 1_200), 1_500); // 300
        feed(&mut a, 0, st(0, 2, 1_100), 1_600); // 500, reordered
        feed(&mut a, 0, st(0, 3, 1_200), 1_700); // duplicate
        // b: everything from p0 in order, p1 seq 0 only (seq 1 lost).
        for s in 1..=4 {
            feed(&mut b, 1, st(0, s, 1_000 + s * 100), 1_000 + s * 100 + 200); // 200 each
        }
        feed(&mut b, 1, st(1, 0, 2_000), 2_400); // 400
        // c: p1 seq 1, seq 0, then the refused seq 2 (unexpected) and a p0 message of
        // another topic (unexpected).
        feed(&mut c, 2, st(1, 1, 2_100), 2_800); // 700
        feed(&mut c, 2, st(1, 0, 2_000), 2_900); // 900, reordered
        feed(&mut c, 2, st(1, 2, 2_200), 3_000); // 800, unexpected (refused)
        feed(&mut c, 2, st(0, 4, 1_400), 3_100); // 1700, unexpected (other topic)

        let stats = account(&ledgers, &[a.clone(), b, c]);
        assert_eq!(stats.published, 6);
        assert_eq!(stats.publish_errors, 1);
        assert_eq!(stats.expected, 4 + 6 + 2);
        assert_eq!(stats.received, 3 + 5 + 2);
        assert_eq!(stats.lost, 2);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.reordered, 2);
        assert_eq!(stats.reordered_by_publisher, vec![1, 1]);
        assert_eq!(stats.unexpected, 2);
        assert_eq!(a.warmup, 1);

        // Latencies recorded (µs): 100, 300, 500, 200×4, 400, 700, 900, 800, 1700.
        let h = hist.merged();
        assert_eq!(h.len(), 12);
        let p = Percentiles::from_us(&h);
        assert_eq!(p.count, 12);
        assert_eq!(p.p50, 0.3); // 6th of 12 sorted: 100,200,200,200,200,300,...
        assert_eq!(p.p90, 0.9); // 11th: ...,700,800,900 → 0.9 quantile → 11th value
        assert_eq!(p.p99, 1.7);
        assert_eq!(p.max, 1.7);
        let mean = (100 + 300 + 500 + 800 + 400 + 700 + 900 + 800 + 1700) as f64 / 12.0 / 1000.0;
        assert!((p.mean - mean).abs() < 1e-9);
        assert!((stats.loss_ratio() - 2.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn empty_run_reports_zeroes() {
        let stats = account(&[], &[Tracker::new(vec![0])]);
        assert_eq!(stats, DeliveryStats::default());
        assert_eq!(
            Percentiles::from_us(&new_histogram()),
            Percentiles::default()
        );
        assert!(percentile_curve(&new_histogram()).is_empty());
    }

    #[test]
    fn table_mentions_loss_and_warnings() {
        let r = Report {
            label: "x".into(),
            workload: "rooms".into(),
            deliveries: DeliveryStats {
                published: 1,
                expected: 4,
                received: 3,
                lost: 1,
                ..DeliveryStats::default()
            },
            warnings: vec!["generator saturated".into()],
            ..Report::default()
        };
        let t = r.table();
        assert!(t.contains("lost 1 (25.0000%)"), "{t}");
        assert!(t.contains("WARNING            generator saturated"));
    }
}
