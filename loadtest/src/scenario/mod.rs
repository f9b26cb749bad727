//! Workloads: connect the clients, subscribe them, drive publishers, sample resources and
//! build the [`Report`].
//!
//! [`run`] goes through these phases, each in its own function:
//! 1. **limits** ([`check_limits`]): a target, enough open files, source addresses;
//! 2. **tokens** ([`auth::obtain`]): REST logins, a token file, or tokens seeded into Redis;
//! 3. **monitors** ([`monitor`]): the targets' memory before the run, the event-loop lag
//!    probe, the once-a-second sampler (progress line, periodic samples);
//! 4. **connect** ([`clients::connect_all`]): connect + subscribe every client (bounded
//!    concurrency and rate); each client then records its deliveries;
//! 5. **measure**: publishing workloads publish for `warmup + duration` (messages stamped
//!    during the warm-up are ignored everywhere), stop, and wait `drain` for deliveries in
//!    flight ([`publishers::publish_all`]); `connect` holds the idle connections and
//!    measures memory per connection ([`hold`]);
//! 6. **close** : stop every task and collect the clients' trackers;
//! 7. **account** ([`build_report`]): losses, duplicates, reorderings, percentiles,
//!    generator health, and the [`warnings`].

mod clients;
mod monitor;
mod publishers;
mod shared;
mod storm;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tokio::sync::watch;

use crate::auth::{self, AuthSource, Tokens};
use crate::error::RunError;
use crate::report::{
    self, GeneratorStats, Percentiles, PublisherLedger, Report, Sample, ServerDelivery,
    StormFigures, TargetMem, Tracker,
};
use crate::sys;
use monitor::{Snapshot, TargetProbe, sum_rss};
use shared::{Shared, topic_names};

pub use monitor::{parse_allocated, parse_delivery, parse_metrics};
pub use shared::publisher_topics;

/// The named workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// C clients spread over T topics (one topic each), P publishers at R msg/s in total.
    Rooms,
    /// Everyone in one topic.
    Storm,
    /// REST writes `POST /api/models/{Model}` → subscribers of `/Model/POST`.
    Models,
    /// Raw `PUBLISH` on the Redis events channel (`{"topic","data"}`): external producers.
    Redis,
    /// Connection storm: connects/s, handshake latency, subscribe (one topic each), then
    /// hold N idle authenticated connections and measure the targets' RSS per connection.
    Connect,
    /// Long `rooms`-like run that samples loss and the targets' memory periodically.
    Soak,
}

impl Workload {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Rooms => "rooms",
            Workload::Storm => "storm",
            Workload::Models => "models",
            Workload::Redis => "redis",
            Workload::Connect => "connect",
            Workload::Soak => "soak",
        }
    }

    fn publishes(self) -> bool {
        self != Workload::Connect
    }
}

/// The protocol the subscriber (or idle) clients speak.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ClientTransport {
    /// Socket.IO v5 over a WebSocket (`/socket.io/`, namespace `/`).
    Socketio,
    /// fanout's plain-WebSocket endpoint `/ws` (connect workload only).
    Ws,
}

/// Everything a run needs (the CLI fills it from a preset plus flags).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Workload.
    pub workload: Workload,
    /// Report label.
    pub label: String,
    /// Target base URLs (`http://127.0.0.1:3000`); clients are spread round-robin.
    pub urls: Vec<String>,
    /// Subscriber (or idle) connections.
    pub clients: usize,
    /// Protocol of those connections.
    pub transport: ClientTransport,
    /// Topics.
    pub topics: usize,
    /// Total publish rate, messages/s.
    pub rate: f64,
    /// Publishers (connections, HTTP workers or Redis publishers).
    pub publishers: usize,
    /// Payload size, bytes of JSON.
    pub payload: usize,
    /// Measured publishing time.
    pub duration: Duration,
    /// Publishing time before measurement starts.
    pub warmup: Duration,
    /// Wait for in-flight deliveries after publishing stops.
    pub drain: Duration,
    /// `connect`: how long to hold the idle connections.
    pub hold: Duration,
    /// `connect`: messages per topic of the storm after the hold (0 = no storm).
    pub storm_rounds: usize,
    /// `connect`: how long to follow RSS after the storm starts.
    pub storm_settle: Duration,
    /// Handshakes in flight at most.
    pub connect_concurrency: usize,
    /// New connections per second (0 = as fast as the concurrency allows).
    pub connect_rate: f64,
    /// Per-connection handshake timeout.
    pub connect_timeout: Duration,
    /// Where tokens come from.
    pub auth: AuthSource,
    /// Redis URL for the `redis` workload's PUBLISH.
    pub redis_url: Option<String>,
    /// Redis events channel.
    pub events_channel: String,
    /// Topic name prefix (`{prefix}.{k}`).
    pub topic_prefix: String,
    /// Model name prefix for `models` (`{prefix}{k}`).
    pub model_prefix: String,
    /// Source addresses 127.0.0.1..=N to spread connections over (0 = automatic beyond
    /// 25,000 connections).
    pub source_ips: usize,
    /// PIDs of the target processes (RSS from /proc).
    pub target_pids: Vec<u32>,
    /// Interval of the periodic samples.
    pub sample_interval: Duration,
    /// Show the live progress line (only on a terminal).
    pub progress: bool,
    /// tokio worker threads of this run (reported).
    pub threads: usize,
    /// Parameters echoed into the report.
    pub params: Value,
}

/// What the measuring phase produced.
struct Measured {
    /// One ledger per publisher (empty for `connect`).
    ledgers: Vec<PublisherLedger>,
    /// The measured window.
    window: Duration,
    /// Generator CPU seconds in the window.
    cpu_secs: f64,
    /// Busy fraction of the whole machine in the window.
    machine_busy: f64,
    /// The targets at the end.
    after: Snapshot,
    /// `connect`: RSS growth of the targets per held connection.
    rss_per_connection: Option<f64>,
    /// `connect`: growth of the targets' allocated bytes (allocator figure) per connection.
    allocated_per_connection: Option<f64>,
    /// `connect --storm-rounds`: memory around a message storm.
    storm: Option<StormFigures>,
}

/// Runs `plan` and returns its report.
pub async fn run(plan: Plan) -> Result<Report, RunError> {
    let source_ips = check_limits(&plan)?;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pb = progress_bar(plan.progress);

    pb.set_message("obtaining tokens");
    let tokens = auth::obtain(&plan.auth).await?;
    let names = Arc::new(topic_names(&plan));
    let sh = Arc::new(Shared::new(names.len(), tokens.samples.clone()));

    let http = auth::http_client();
    let probe = TargetProbe::new(http.clone(), &plan);
    let before = probe.snapshot().await;
    let allocated_before = probe.allocated().await;
    let delivery_before = probe.delivery().await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let lag = monitor::spawn_lag_probe(sh.clone(), stop_rx.clone());
    let mut sampler = monitor::spawn_sampler(
        &plan,
        sh.clone(),
        pb.clone(),
        probe.clone(),
        stop_rx.clone(),
    );

    pb.set_message("connecting");
    let connected = clients::connect_all(&plan, &names, &tokens, source_ips, &sh, &stop_rx).await;

    let measured = if plan.workload.publishes() {
        publishers::publish_all(&plan, &names, &tokens, source_ips, &sh, &http, &probe, &pb).await?
    } else {
        let before = (sum_rss(&before), allocated_before);
        hold(&plan, &sh, &probe, &pb, &connected, before).await
    };
    let mut measured = measured;
    if plan.workload == Workload::Connect && plan.storm_rounds > 0 {
        pb.set_message("storm");
        // A failed storm leaves the connect figures standing.
        match storm::run(&plan, &names).await {
            Ok(figures) => measured.storm = figures,
            Err(err) => sh.failure(format!("storm: {}", crate::error::chain(&err))),
        }
    }
    let delivery_after = probe.delivery().await;
    let server = match (delivery_before, delivery_after) {
        (Some(b), Some(a)) => Some(ServerDelivery {
            delivered: a.delivered.saturating_sub(b.delivered),
            dropped: a.dropped.saturating_sub(b.dropped),
        }),
        _ => None,
    };
    let snapshots = sampler
        .snapshots
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let mem = monitor::target_memory(&before, &snapshots, &measured.after);

    pb.set_message("closing");
    let _ = stop_tx.send(true);
    let trackers = clients::collect(connected.clients, plan.clients).await;
    let _ = lag.await;
    sampler.join().await;
    pb.finish_and_clear();

    let samples = sampler
        .samples
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let recvq_max = sampler.recvq_max.load(Ordering::Relaxed);
    let connect = ConnectFigures {
        count: connected.count,
        per_sec: connected.per_sec,
    };
    Ok(build_report(
        &plan,
        started_unix,
        &tokens,
        &sh,
        connect,
        measured,
        &trackers,
        mem,
        server,
        samples,
        recvq_max,
    ))
}

/// Phase 1: refuses runs that cannot work; returns how many loopback source addresses to
/// spread the connections over (0 = the default one).
fn check_limits(plan: &Plan) -> Result<usize, RunError> {
    let (nofile, _) = sys::raise_nofile();
    let sio_publishers = matches!(
        plan.workload,
        Workload::Rooms | Workload::Storm | Workload::Soak
    );
    let needed = plan.clients + if sio_publishers { plan.publishers } else { 0 };
    if needed as u64 + 64 > nofile {
        return Err(RunError::TooManyConnections { needed, nofile });
    }
    if plan.urls.is_empty() {
        return Err(RunError::NoTarget);
    }
    if plan.transport == ClientTransport::Ws && plan.workload != Workload::Connect {
        return Err(RunError::TransportNotSupported);
    }
    Ok(if plan.source_ips > 0 {
        plan.source_ips
    } else if needed > 25_000 {
        needed.div_ceil(25_000)
    } else {
        0
    })
}

fn progress_bar(visible: bool) -> ProgressBar {
    let pb = if visible {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb
}

/// Phase 5 of `connect`: hold the idle connections for `hold`, then measure the targets'
/// memory per held connection.
async fn hold(
    plan: &Plan,
    sh: &Shared,
    probe: &TargetProbe,
    pb: &ProgressBar,
    connected: &clients::Connected,
    (rss_before, allocated_before): (Option<u64>, Option<u64>),
) -> Measured {
    pb.set_message("holding idle connections");
    sh.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(plan.hold).await;
    sh.measuring.store(false, Ordering::Relaxed);
    let after = probe.snapshot().await;
    let held = sh.connected.load(Ordering::Relaxed);
    let per_connection = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if held > 0 => Some((a as f64 - b as f64) / held as f64),
        _ => None,
    };
    let rss_per_connection = per_connection(rss_before, sum_rss(&after));
    let allocated_per_connection = per_connection(allocated_before, probe.allocated().await);
    Measured {
        ledgers: Vec::new(),
        window: connected.elapsed,
        cpu_secs: connected.cpu_secs,
        // The connect phase's: connects/s depends on it, idle holding does not.
        machine_busy: connected.machine_busy,
        after,
        rss_per_connection,
        allocated_per_connection,
        storm: None,
    }
}

/// How connecting went, for the report.
struct ConnectFigures {
    count: u64,
    per_sec: f64,
}

/// Phase 7: accounting and the report.
#[allow(clippy::too_many_arguments)]
fn build_report(
    plan: &Plan,
    started_unix: u64,
    tokens: &Tokens,
    sh: &Shared,
    connect: ConnectFigures,
    measured: Measured,
    trackers: &[Tracker],
    mem: Vec<TargetMem>,
    server: Option<ServerDelivery>,
    samples: Vec<Sample>,
    recvq_max: u64,
) -> Report {
    let workload = plan.workload;
    let Measured {
        ledgers,
        window,
        cpu_secs: cpu_window,
        machine_busy: busy_window,
        rss_per_connection,
        allocated_per_connection,
        storm,
        ..
    } = measured;
    let connected_n = connect.count;
    let connects_per_sec = connect.per_sec;
    let stats = report::account(&ledgers, trackers);
    let lat = sh.latency.merged();
    let lag_h = sh
        .lag_hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| report::new_histogram());
    let connect_h = sh
        .connect_hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| report::new_histogram());
    let subscribe_h = sh
        .subscribe_hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| report::new_histogram());
    let win = window.as_secs_f64().max(1e-9);
    let generator = GeneratorStats {
        threads: plan.threads,
        cpu_secs: cpu_window,
        cpu_cores: cpu_window / win,
        machine_busy: busy_window,
        lag_p99_ms: if lag_h.is_empty() {
            0.0
        } else {
            lag_h.value_at_quantile(0.99) as f64 / 1000.0
        },
        lag_max_ms: lag_h.max() as f64 / 1000.0,
        recvq_max_bytes: recvq_max,
    };
    let mut report = Report {
        label: plan.label.clone(),
        workload: workload.name().to_owned(),
        targets: plan.urls.clone(),
        started_unix,
        params: plan.params.clone(),
        clients: plan.clients as u64,
        connected: connected_n,
        connect_failures: sh.connect_failed.load(Ordering::Relaxed),
        auth_failures: sh.auth_failed.load(Ordering::Relaxed) + tokens.failures,
        disconnects: sh.disconnects.load(Ordering::Relaxed),
        failure_samples: sh.failures.lock().map(|f| f.clone()).unwrap_or_default(),
        connect_ms: Percentiles::from_us(&connect_h),
        connects_per_sec,
        subscribe_ack_ms: Percentiles::from_us(&subscribe_h),
        latency_ms: Percentiles::from_us(&lat),
        latency_curve: report::percentile_curve(&lat),
        publish_ack_ms: Percentiles::from_us(&sh.acks.merged()),
        deliveries_per_sec: if workload.publishes() {
            stats.received as f64 / win
        } else {
            0.0
        },
        publish_rate: if workload.publishes() { plan.rate } else { 0.0 },
        deliveries: stats,
        window_secs: window.as_secs_f64(),
        generator,
        targets_mem: mem,
        server: if workload.publishes() { server } else { None },
        rss_per_connection,
        allocated_per_connection,
        storm,
        samples,
        warnings: Vec::new(),
    };
    report.warnings = warnings(&report, plan.rate, workload.publishes());
    report
}

/// The honesty checks: generator saturation, lag, unread sockets, loss, failures.
pub fn warnings(r: &Report, rate: f64, publishes: bool) -> Vec<String> {
    let mut w = Vec::new();
    let g = &r.generator;
    if g.threads > 0 && g.cpu_cores > 0.85 * g.threads as f64 {
        w.push(format!(
            "load generator near CPU saturation ({:.2} of {} cores): latencies include its own queueing",
            g.cpu_cores, g.threads
        ));
    }
    if g.machine_busy > 0.95 {
        w.push(format!(
            "machine CPU saturated ({:.0}% busy): generator and servers compete for cores",
            g.machine_busy * 100.0
        ));
    }
    if g.lag_p99_ms > 5.0 || g.lag_max_ms > 50.0 {
        w.push(format!(
            "generator event loop lagged (p99 {:.1} ms, max {:.1} ms): receive timestamps are late",
            g.lag_p99_ms, g.lag_max_ms
        ));
    }
    if g.recvq_max_bytes > 1 << 20 {
        w.push(format!(
            "generator's sockets held up to {} KiB unread: it did not keep up reading",
            g.recvq_max_bytes / 1024
        ));
    }
    if r.connect_failures > 0 {
        w.push(format!("{} connections failed", r.connect_failures));
    }
    if r.auth_failures > 0 {
        w.push(format!("{} authentication failures", r.auth_failures));
    }
    if r.disconnects > 0 {
        w.push(format!(
            "{} connections dropped during the run",
            r.disconnects
        ));
    }
    let d = &r.deliveries;
    if publishes {
        if d.lost > 0 {
            w.push(format!(
                "{} of {} deliveries lost ({:.4}%)",
                d.lost,
                d.expected,
                d.loss_ratio() * 100.0
            ));
        }
        if let Some(sv) = &r.server
            && sv.delivered + sv.dropped != d.expected_all
        {
            w.push(format!(
                "server account off: delivered {} + dropped {} != {} owed (published × subscribers)",
                sv.delivered, sv.dropped, d.expected_all
            ));
        }
        if d.duplicates > 0 || d.unexpected > 0 {
            w.push(format!(
                "{} duplicate and {} unexpected deliveries",
                d.duplicates, d.unexpected
            ));
        }
        let offered = rate * r.window_secs;
        if offered > 10.0 && ((d.published + d.publish_errors) as f64) < 0.95 * offered {
            w.push(format!(
                "publishers fell behind: {} sent of {:.0} offered",
                d.published + d.publish_errors,
                offered
            ));
        }
        if d.expected == 0 {
            w.push("no delivery was expected: nothing subscribed or published".to_owned());
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::shared::source_ip;
    use super::*;

    #[test]
    fn spreads_topics_over_publishers() {
        assert_eq!(publisher_topics(0, 3, 7), vec![0, 3, 6]);
        assert_eq!(publisher_topics(2, 3, 7), vec![2, 5]);
        assert_eq!(publisher_topics(4, 8, 3), vec![1]);
        assert_eq!(publisher_topics(0, 1, 1), vec![0]);
    }

    #[test]
    fn source_ips_cycle_over_loopback() {
        assert_eq!(source_ip(0, 0), None);
        assert_eq!(source_ip(0, 2), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_ip(3, 2), Some("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn parses_the_servers_delivery_counters() {
        let text = "# HELP x\nfanout_topic_messages_delivered_total 40\n\
fanout_messages_dropped_total{reason=\"slow_consumer\",transport=\"ws\"} 3\n\
fanout_messages_dropped_total{reason=\"closed\",transport=\"socketio\"} 2\n";
        assert_eq!(
            parse_delivery(text),
            Some(ServerDelivery {
                delivered: 40,
                dropped: 5
            })
        );
        assert_eq!(parse_delivery("socketio_connected 3\n"), None);
    }

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1.2e+07\n\
fanout_sockets_connected{namespace=\"/\"} 42\nfanout_sockets_connected{namespace=\"/chat\"} 1\n";
        assert_eq!(parse_metrics(text), (Some(12_000_000), Some(42.0)));
        assert_eq!(parse_allocated(text), None);
        let text = "fanout_allocator_bytes{kind=\"active\"} 9\nfanout_allocator_bytes{kind=\"allocated\"} 7340032\n";
        assert_eq!(parse_allocated(text), Some(7_340_032));
    }

    #[test]
    fn warns_on_saturation_and_loss() {
        let mut r = Report {
            window_secs: 10.0,
            ..Report::default()
        };
        r.generator.threads = 2;
        r.generator.cpu_cores = 1.9;
        r.deliveries.expected = 100;
        r.deliveries.received = 90;
        r.deliveries.lost = 10;
        r.deliveries.published = 100;
        let w = warnings(&r, 10.0, true);
        assert!(w.iter().any(|x| x.contains("CPU saturation")), "{w:?}");
        assert!(
            w.iter().any(|x| x.contains("10 of 100 deliveries lost")),
            "{w:?}"
        );
    }
}
