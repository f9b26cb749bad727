//! Workloads: connect the clients, subscribe them, drive publishers, sample resources and
//! build the [`Report`].
//!
//! Timeline of a publishing workload: tokens → connect + subscribe every client (bounded
//! concurrency and rate) → connect publishers → publish for `warmup + duration` (messages
//! stamped during the warm-up are ignored everywhere) → stop publishing, wait `drain` for
//! deliveries in flight → snapshot targets → close → account.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::MissedTickBehavior;

use crate::auth::{self, AuthSource};
use crate::client::{ConnectOptions, Connection, Incoming, connect};
use crate::report::{
    self, GeneratorStats, Percentiles, PublisherLedger, Report, Sample, ShardedHistogram, Stamp,
    Stamped, TargetMem, Tracker,
};
use crate::sys;

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
    /// Connection storm: connects/s, handshake latency, then hold N idle authenticated
    /// connections and measure the targets' RSS per connection.
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

/// State shared by every task of a run.
struct Shared {
    start: Instant,
    warmup_end_us: AtomicU64,
    measuring: AtomicBool,
    connected: AtomicU64,
    connect_failed: AtomicU64,
    auth_failed: AtomicU64,
    disconnects: AtomicU64,
    received: AtomicU64,
    expected_live: AtomicU64,
    published: AtomicU64,
    subs_per_topic: Vec<AtomicU64>,
    latency: ShardedHistogram,
    acks: ShardedHistogram,
    connect_hist: Mutex<Histogram<u64>>,
    lag_hist: Mutex<Histogram<u64>>,
    failures: Mutex<Vec<String>>,
    last_connect_ok: Mutex<Option<Instant>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn failure(&self, msg: String) {
        if let Ok(mut f) = self.failures.lock()
            && f.len() < 5
        {
            f.push(msg);
        }
    }
}

fn topic_names(plan: &Plan) -> Vec<String> {
    (0..plan.topics.max(1))
        .map(|k| match plan.workload {
            Workload::Models => format!("/{}{k}/POST", plan.model_prefix),
            _ => format!("{}.{k}", plan.topic_prefix),
        })
        .collect()
}

/// Topics publisher `j` of `p` publishes to (round-robin over them).
pub fn publisher_topics(j: usize, p: usize, topics: usize) -> Vec<u32> {
    let topics = topics.max(1);
    if p <= topics {
        (0..topics)
            .filter(|k| k % p == j)
            .map(|k| k as u32)
            .collect()
    } else {
        vec![(j % topics) as u32]
    }
}

fn source_ip(i: usize, n: usize) -> Option<IpAddr> {
    if n == 0 {
        return None;
    }
    let k = (i % n) as u32 + 1;
    Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | k)))
}

/// Waits for the ack `id` on `conn`, answering pings; returns the ack's JSON array text.
async fn wait_ack(conn: &mut Connection, id: u64, timeout: Duration) -> Result<String, String> {
    let fut = async {
        loop {
            match conn.reader.recv().await {
                Ok(Incoming::Ping) => {
                    let _ = conn.writer.pong().await;
                }
                Ok(ack @ Incoming::Ack { .. }) => {
                    if matches!(ack, Incoming::Ack { id: got, .. } if got == id) {
                        return Ok(ack.args().to_owned());
                    }
                }
                Ok(Incoming::Disconnect) => return Err("disconnected".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "ack timeout".to_owned())?
}

fn ack_ok(args: &str) -> bool {
    args.contains("\"ok\":true")
}

/// One subscriber (or idle) client: connect, subscribe, then record deliveries until stop.
#[allow(clippy::too_many_arguments)]
async fn client_task(
    i: usize,
    opts: ConnectOptions,
    topics: Vec<u32>,
    names: Arc<Vec<String>>,
    sh: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) -> Option<Tracker> {
    let (mut conn, timings) = match connect(&opts).await {
        Ok(c) => c,
        Err(e) => {
            if e.is_auth() {
                sh.auth_failed.fetch_add(1, Ordering::Relaxed);
            } else {
                sh.connect_failed.fetch_add(1, Ordering::Relaxed);
            }
            sh.failure(format!("client {i} → {}: {e}", opts.url));
            return None;
        }
    };
    if let Ok(mut h) = sh.connect_hist.lock() {
        h.saturating_record((timings.total.as_micros() as u64).max(1));
    }
    let mut tracker = Tracker::new(Vec::with_capacity(topics.len()));
    for t in topics {
        let name = &names[t as usize];
        let res = match conn.writer.emit_with_ack("subscribe", &json!([name])).await {
            Ok(id) => wait_ack(&mut conn, id, opts.timeout).await,
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(args) if ack_ok(&args) => {
                tracker.topics.push(t);
                sh.subs_per_topic[t as usize].fetch_add(1, Ordering::Relaxed);
            }
            Ok(args) => sh.failure(format!("client {i}: subscribe {name} refused: {args}")),
            Err(e) => sh.failure(format!("client {i}: subscribe {name}: {e}")),
        }
    }
    sh.connected.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut l) = sh.last_connect_ok.lock() {
        *l = Some(Instant::now());
    }
    drop(permit);
    let key = i;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = conn.reader.recv() => match r {
                Ok(Incoming::Ping) => {
                    let _ = conn.writer.pong().await;
                }
                Ok(ev @ Incoming::Event { .. }) => {
                    let now = sh.now_us();
                    match serde_json::from_str::<(IgnoredAny, Stamped)>(ev.args()) {
                        Ok((_, st)) => {
                            let warm = sh.warmup_end_us.load(Ordering::Relaxed);
                            if let report::Arrival::First { latency_us } = tracker.arrive(st.lt, now, warm) {
                                sh.latency.record(key, latency_us);
                                sh.received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => tracker.unparsable += 1,
                    }
                }
                Ok(Incoming::Disconnect) | Err(_) => {
                    sh.disconnects.fetch_add(1, Ordering::Relaxed);
                    sh.connected.fetch_sub(1, Ordering::Relaxed);
                    return Some(tracker);
                }
                Ok(_) => {}
            }
        }
    }
    let _ = conn.writer.close().await;
    Some(tracker)
}

/// What publishes: a Socket.IO connection, the REST API, or Redis.
enum PubSink {
    SocketIo(Box<Connection>),
    Http {
        http: reqwest::Client,
        base: String,
        token: String,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        channel: String,
    },
}

struct PubCtx {
    id: u32,
    topics: Vec<u32>,
    names: Arc<Vec<String>>,
    model_prefix: String,
    period: Duration,
    first_tick: tokio::time::Instant,
    end: tokio::time::Instant,
    drain: Duration,
    payload: usize,
}

/// Runs one publisher until `end`, then waits (at most `drain`) for outstanding acks.
async fn publisher_task(ctx: PubCtx, mut sink: PubSink, sh: Arc<Shared>) -> PublisherLedger {
    let mut ledger = PublisherLedger::default();
    let mut tick = tokio::time::interval_at(ctx.first_tick, ctx.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut pending: HashMap<u64, (u64, u64, u32)> = HashMap::new();
    let mut seq: u64 = 0;
    let mut sending = true;
    let give_up = ctx.end + ctx.drain;
    let topic_json: Vec<String> = ctx
        .names
        .iter()
        .map(|n| serde_json::to_string(n).unwrap_or_default())
        .collect();
    let in_window_expect = |sh: &Shared, topic: u32, add: bool| {
        let n = sh.subs_per_topic[topic as usize].load(Ordering::Relaxed);
        if add {
            sh.expected_live.fetch_add(n, Ordering::Relaxed);
            sh.published.fetch_add(1, Ordering::Relaxed);
        } else {
            sh.expected_live.fetch_sub(n, Ordering::Relaxed);
            sh.published.fetch_sub(1, Ordering::Relaxed);
        }
    };
    loop {
        if !sending && pending.is_empty() {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if sending => {
                if tokio::time::Instant::now() >= ctx.end {
                    sending = false;
                    continue;
                }
                let topic = ctx.topics[(seq as usize) % ctx.topics.len()];
                let t = sh.now_us();
                let in_window = t >= sh.warmup_end_us.load(Ordering::Relaxed);
                let data = report::payload(Stamp { p: ctx.id, s: seq, t }, ctx.payload);
                ledger.sent(seq, topic, in_window);
                if in_window {
                    in_window_expect(&sh, topic, true);
                }
                let failed: Option<String> = match &mut sink {
                    PubSink::SocketIo(conn) => {
                        let args = format!("{{\"topic\":{},\"data\":{data}}}", topic_json[topic as usize]);
                        match conn.writer.emit_raw_with_ack("publish", &args).await {
                            Ok(id) => {
                                pending.insert(id, (seq, t, topic));
                                None
                            }
                            Err(e) => {
                                sending = false;
                                pending.clear();
                                Some(format!("publisher {}: {e}", ctx.id))
                            }
                        }
                    }
                    PubSink::Http { http, base, token } => {
                        let url = format!("{base}/api/models/{}{topic}", ctx.model_prefix);
                        let res = http
                            .post(url)
                            .header("Authorization", token.as_str())
                            .header("content-type", "application/json")
                            .body(data)
                            .send()
                            .await;
                        sh.acks.record(ctx.id as usize, sh.now_us().saturating_sub(t));
                        match res {
                            Ok(r) if r.status().is_success() => None,
                            Ok(r) => Some(format!("publisher {}: HTTP {}", ctx.id, r.status())),
                            Err(e) => Some(format!("publisher {}: {e}", ctx.id)),
                        }
                    }
                    PubSink::Redis { conn, channel } => {
                        let msg = format!("{{\"topic\":{},\"data\":{data}}}", topic_json[topic as usize]);
                        let res: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                            .arg(channel.as_str())
                            .arg(msg)
                            .query_async(conn)
                            .await;
                        sh.acks.record(ctx.id as usize, sh.now_us().saturating_sub(t));
                        match res {
                            Ok(_) => None,
                            Err(e) => Some(format!("publisher {}: PUBLISH: {e}", ctx.id)),
                        }
                    }
                };
                if let Some(msg) = failed {
                    ledger.failed(seq);
                    if in_window {
                        in_window_expect(&sh, topic, false);
                    }
                    sh.failure(msg);
                }
                seq += 1;
            }
            r = async {
                match &mut sink {
                    PubSink::SocketIo(conn) => conn.reader.recv().await.ok(),
                    _ => std::future::pending().await,
                }
            } => {
                match r {
                    Some(Incoming::Ping) => {
                        if let PubSink::SocketIo(conn) = &mut sink {
                            let _ = conn.writer.pong().await;
                        }
                    }
                    Some(ack @ Incoming::Ack { .. }) => {
                        if let Incoming::Ack { id, .. } = ack
                            && let Some((s, t, topic)) = pending.remove(&id)
                        {
                            sh.acks.record(ctx.id as usize, sh.now_us().saturating_sub(t));
                            if !ack_ok(ack.args()) {
                                ledger.failed(s);
                                if t >= sh.warmup_end_us.load(Ordering::Relaxed) {
                                    in_window_expect(&sh, topic, false);
                                }
                                sh.failure(format!("publisher {}: publish refused: {}", ctx.id, ack.args()));
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        sh.failure(format!("publisher {}: connection lost", ctx.id));
                        sending = false;
                        pending.clear();
                    }
                }
            }
            _ = tokio::time::sleep_until(give_up) => break,
        }
    }
    if let PubSink::SocketIo(conn) = &mut sink {
        let _ = conn.writer.close().await;
    }
    ledger
}

/// Reads memory facts of the targets: `/metrics` of each URL and `/proc/<pid>` of each PID.
struct TargetProbe {
    http: reqwest::Client,
    urls: Vec<String>,
    pids: Vec<u32>,
}

/// Parses `process_resident_memory_bytes` and `fanout_sockets_connected{namespace="/"}`
/// from Prometheus text.
pub fn parse_metrics(text: &str) -> (Option<u64>, Option<f64>) {
    let mut rss = None;
    let mut sockets = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut parts = line.rsplitn(2, ' ');
        let (Some(val), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        if name == "process_resident_memory_bytes" {
            rss = val.parse::<f64>().ok().map(|v| v as u64);
        } else if name.starts_with("fanout_sockets_connected")
            && (name.contains("namespace=\"/\"") || !name.contains('{'))
        {
            sockets = val.parse::<f64>().ok();
        }
    }
    (rss, sockets)
}

impl TargetProbe {
    async fn snapshot(&self) -> Vec<(String, Option<u64>, Option<f64>)> {
        let mut out = Vec::new();
        for pid in &self.pids {
            out.push((format!("pid:{pid}"), sys::pid_rss(*pid), None));
        }
        for url in &self.urls {
            let res = self
                .http
                .get(format!("{}/metrics", url.trim_end_matches('/')))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            let Ok(resp) = res else { continue };
            if !resp.status().is_success() {
                continue;
            }
            let Ok(text) = resp.text().await else {
                continue;
            };
            let (rss, sockets) = parse_metrics(&text);
            if rss.is_some() || sockets.is_some() {
                out.push((url.clone(), rss, sockets));
            }
        }
        out
    }
}

fn merge_mem(mem: &mut Vec<TargetMem>, snap: &[(String, Option<u64>, Option<f64>)], before: bool) {
    for (name, rss, sockets) in snap {
        let idx = match mem.iter().position(|m| &m.target == name) {
            Some(i) => i,
            None => {
                mem.push(TargetMem {
                    target: name.clone(),
                    ..TargetMem::default()
                });
                mem.len() - 1
            }
        };
        let m = &mut mem[idx];
        if before {
            m.rss_before = *rss;
        } else {
            m.rss_after = *rss;
            if sockets.is_some() {
                m.sockets = *sockets;
            }
        }
        if let Some(r) = rss {
            m.rss_max = Some(m.rss_max.map_or(*r, |x| x.max(*r)));
        }
    }
}

fn sum_rss(snap: &[(String, Option<u64>, Option<f64>)]) -> Option<u64> {
    // Prefer /proc figures; fall back to /metrics.
    let pids: Vec<u64> = snap
        .iter()
        .filter(|s| s.0.starts_with("pid:"))
        .filter_map(|s| s.1)
        .collect();
    if !pids.is_empty() {
        return Some(pids.iter().sum());
    }
    let m: Vec<u64> = snap.iter().filter_map(|s| s.1).collect();
    (!m.is_empty()).then(|| m.iter().sum())
}

/// Runs `plan` and returns its report.
pub async fn run(plan: Plan) -> Result<Report, String> {
    let (nofile, _) = sys::raise_nofile();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workload = plan.workload;
    let names = Arc::new(topic_names(&plan));
    let sio_publishers = matches!(workload, Workload::Rooms | Workload::Storm | Workload::Soak);
    let total_conns = plan.clients + if sio_publishers { plan.publishers } else { 0 };
    if total_conns as u64 + 64 > nofile {
        return Err(format!(
            "{total_conns} connections need more open files than this process may have ({nofile}); \
             split the run over several loadtest processes"
        ));
    }
    let source_ips = if plan.source_ips > 0 {
        plan.source_ips
    } else if total_conns > 25_000 {
        total_conns.div_ceil(25_000)
    } else {
        0
    };
    if plan.urls.is_empty() {
        return Err("no target URL".to_owned());
    }

    let pb = if plan.progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message("obtaining tokens");
    let tokens = auth::obtain(&plan.auth).await?;
    let tokens = Arc::new(tokens);

    let sh = Arc::new(Shared {
        start: Instant::now(),
        warmup_end_us: AtomicU64::new(u64::MAX),
        measuring: AtomicBool::new(false),
        connected: AtomicU64::new(0),
        connect_failed: AtomicU64::new(0),
        auth_failed: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        received: AtomicU64::new(0),
        expected_live: AtomicU64::new(0),
        published: AtomicU64::new(0),
        subs_per_topic: (0..names.len()).map(|_| AtomicU64::new(0)).collect(),
        latency: ShardedHistogram::new(64),
        acks: ShardedHistogram::new(16),
        connect_hist: Mutex::new(report::new_histogram()),
        lag_hist: Mutex::new(report::new_histogram()),
        failures: Mutex::new(tokens.samples.clone()),
        last_connect_ok: Mutex::new(None),
    });
    let http = auth::http_client();
    let probe = TargetProbe {
        http: http.clone(),
        urls: plan.urls.clone(),
        pids: plan.target_pids.clone(),
    };
    let mut mem: Vec<TargetMem> = Vec::new();
    let before = probe.snapshot().await;
    let rss_before = sum_rss(&before);
    merge_mem(&mut mem, &before, true);

    // Event-loop lag probe: a 10 ms timer; its overshoot is time the generator's tasks
    // waited for a worker thread.
    let (stop_tx, stop_rx) = watch::channel(false);
    let lag = {
        let sh = sh.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(10);
            let mut next = tokio::time::Instant::now() + period;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep_until(next) => {
                        let over = tokio::time::Instant::now().saturating_duration_since(next);
                        if sh.measuring.load(Ordering::Relaxed)
                            && let Ok(mut h) = sh.lag_hist.lock()
                        {
                            h.saturating_record((over.as_micros() as u64).max(1));
                        }
                        next = tokio::time::Instant::now() + period;
                    }
                }
            }
        })
    };

    // Progress + sampler: once a second.
    let ports: HashSet<u16> = plan
        .urls
        .iter()
        .filter_map(|u| u.rsplit(':').next()?.split('/').next()?.parse().ok())
        .collect();
    let recvq_max = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let rss_samples = Arc::new(Mutex::new(
        Vec::<Vec<(String, Option<u64>, Option<f64>)>>::new(),
    ));
    let sampler = {
        let sh = sh.clone();
        let pb = pb.clone();
        let mut stop = stop_rx.clone();
        let recvq_max = recvq_max.clone();
        let samples = samples.clone();
        let rss_samples = rss_samples.clone();
        let probe = TargetProbe {
            http: http.clone(),
            urls: plan.urls.clone(),
            pids: plan.target_pids.clone(),
        };
        let clients = plan.clients;
        let sample_every = plan.sample_interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut last_recv = 0u64;
            let mut last_cpu = sys::self_cpu_secs();
            let mut last_t = Instant::now();
            let mut last_sample = Instant::now();
            let mut measure_start: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
                let recv = sh.received.load(Ordering::Relaxed);
                let cpu = sys::self_cpu_secs();
                let cores = (cpu - last_cpu) / dt;
                let rate = (recv - last_recv) as f64 / dt;
                (last_recv, last_cpu, last_t) = (recv, cpu, now);
                let measuring = sh.measuring.load(Ordering::Relaxed);
                let expected = sh.expected_live.load(Ordering::Relaxed);
                if measuring {
                    measure_start.get_or_insert(now);
                    let q = tokio::task::spawn_blocking({
                        let ports = ports.clone();
                        move || sys::recv_queue_bytes(&ports)
                    })
                    .await
                    .unwrap_or(0);
                    recvq_max.fetch_max(q, Ordering::Relaxed);
                }
                pb.set_message(format!(
                    "conn {}/{} (fail {}, auth-fail {}) | {:.0} deliveries/s | gap {} | cpu {:.2} cores{}",
                    sh.connected.load(Ordering::Relaxed),
                    clients,
                    sh.connect_failed.load(Ordering::Relaxed),
                    sh.auth_failed.load(Ordering::Relaxed),
                    rate,
                    expected.saturating_sub(recv),
                    cores,
                    if measuring { "" } else { " | not measuring" }
                ));
                pb.tick();
                if now.duration_since(last_sample) >= sample_every {
                    last_sample = now;
                    let snap = probe.snapshot().await;
                    let s = Sample {
                        t: measure_start.map_or(0.0, |m| now.duration_since(m).as_secs_f64()),
                        received: recv,
                        expected,
                        connected: sh.connected.load(Ordering::Relaxed),
                        targets_rss: sum_rss(&snap),
                        cpu_cores: cores,
                    };
                    if let Ok(mut v) = samples.lock() {
                        v.push(s);
                    }
                    if let Ok(mut v) = rss_samples.lock() {
                        v.push(snap);
                    }
                }
            }
        })
    };

    // ---- connect phase ----
    pb.set_message("connecting");
    let connect_start = Instant::now();
    let cpu_connect0 = sys::self_cpu_secs();
    let sem = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let mut clients = tokio::task::JoinSet::new();
    let pacing =
        (plan.connect_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.connect_rate));
    let mut next_at = tokio::time::Instant::now();
    let topics_n = names.len();
    for i in 0..plan.clients {
        if let Some(p) = pacing {
            tokio::time::sleep_until(next_at).await;
            next_at += p;
        }
        let permit = match sem.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break,
        };
        let mut opts = ConnectOptions::new(plan.urls[i % plan.urls.len()].clone());
        opts.auth = Some(json!({ "token": tokens.tokens[i % tokens.tokens.len()] }));
        opts.local_ip = source_ip(i, source_ips);
        opts.timeout = plan.connect_timeout;
        let topics = if workload.publishes() {
            vec![(i % topics_n) as u32]
        } else {
            Vec::new()
        };
        clients.spawn(client_task(
            i,
            opts,
            topics,
            names.clone(),
            sh.clone(),
            permit,
            stop_rx.clone(),
        ));
    }
    // All handshakes done when every permit is back.
    let _all = sem
        .acquire_many(plan.connect_concurrency.max(1) as u32)
        .await;
    drop(_all);
    let cpu_connect = sys::self_cpu_secs() - cpu_connect0;
    let connected_n = sh.connected.load(Ordering::Relaxed);
    let connect_elapsed = sh
        .last_connect_ok
        .lock()
        .ok()
        .and_then(|l| *l)
        .map_or(Duration::ZERO, |l| l.duration_since(connect_start));
    let connects_per_sec = if connect_elapsed.is_zero() {
        0.0
    } else {
        connected_n as f64 / connect_elapsed.as_secs_f64()
    };

    let mut ledgers: Vec<PublisherLedger> = Vec::new();
    let window: Duration;
    let cpu_window: f64;
    let busy_window: f64;
    let mut rss_per_connection = None;
    let after;

    if workload.publishes() {
        // ---- publishers ----
        pb.set_message("starting publishers");
        let p = plan.publishers.max(1);
        let period = Duration::from_secs_f64(p as f64 / plan.rate.max(0.001));
        let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
        let warm_end = t0 + plan.warmup;
        let end = warm_end + plan.duration;
        let mut sinks = Vec::with_capacity(p);
        let redis_conn = if workload == Workload::Redis {
            let url = plan
                .redis_url
                .clone()
                .ok_or("the redis workload needs --redis-url")?;
            let c = redis::Client::open(url.as_str()).map_err(|e| format!("redis: {e}"))?;
            Some(
                c.get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("redis {url}: {e}"))?,
            )
        } else {
            None
        };
        for j in 0..p {
            let token = tokens.tokens[j % tokens.tokens.len()].clone();
            let url = plan.urls[j % plan.urls.len()].clone();
            let sink = match workload {
                Workload::Models => PubSink::Http {
                    http: http.clone(),
                    base: url.trim_end_matches('/').to_owned(),
                    token,
                },
                Workload::Redis => match &redis_conn {
                    Some(c) => PubSink::Redis {
                        conn: c.clone(),
                        channel: plan.events_channel.clone(),
                    },
                    None => return Err("no redis connection".to_owned()),
                },
                _ => {
                    let mut o = ConnectOptions::new(url).with_auth(json!({ "token": token }));
                    o.local_ip = source_ip(plan.clients + j, source_ips);
                    o.timeout = plan.connect_timeout;
                    match connect(&o).await {
                        Ok((c, _)) => PubSink::SocketIo(Box::new(c)),
                        Err(e) => {
                            if e.is_auth() {
                                sh.auth_failed.fetch_add(1, Ordering::Relaxed);
                            }
                            return Err(format!("publisher {j} could not connect: {e}"));
                        }
                    }
                }
            };
            sinks.push(sink);
        }
        let mut pubs = tokio::task::JoinSet::new();
        for (j, sink) in sinks.into_iter().enumerate() {
            let ctx = PubCtx {
                id: j as u32,
                topics: publisher_topics(j, p, topics_n),
                names: names.clone(),
                model_prefix: plan.model_prefix.clone(),
                period,
                // Spread the publishers' phases over one period.
                first_tick: t0 + period.mul_f64(j as f64 / p as f64),
                end,
                drain: plan.drain,
                payload: plan.payload,
            };
            let sh = sh.clone();
            pubs.spawn(async move { (j, publisher_task(ctx, sink, sh).await) });
        }
        sh.warmup_end_us.store(
            (warm_end.into_std().duration_since(sh.start)).as_micros() as u64,
            Ordering::Relaxed,
        );
        pb.set_message("warming up");
        tokio::time::sleep_until(warm_end).await;
        sh.measuring.store(true, Ordering::Relaxed);
        let cpu0 = sys::self_cpu_secs();
        let m0 = sys::machine_cpu();
        let w0 = Instant::now();
        tokio::time::sleep_until(end).await;
        window = w0.elapsed();
        cpu_window = sys::self_cpu_secs() - cpu0;
        let m1 = sys::machine_cpu();
        busy_window = (m1.0 - m0.0) as f64 / ((m1.1 - m0.1) as f64).max(1.0);
        sh.measuring.store(false, Ordering::Relaxed);
        pb.set_message("draining");
        let mut got: Vec<(usize, PublisherLedger)> = Vec::new();
        while let Some(r) = pubs.join_next().await {
            if let Ok(x) = r {
                got.push(x);
            }
        }
        got.sort_by_key(|x| x.0);
        ledgers = got.into_iter().map(|x| x.1).collect();
        tokio::time::sleep_until(end + plan.drain).await;
        after = probe.snapshot().await;
    } else {
        // ---- connect: hold the idle connections, then measure memory ----
        window = connect_elapsed;
        cpu_window = cpu_connect;
        pb.set_message("holding idle connections");
        sh.measuring.store(true, Ordering::Relaxed);
        let m0 = sys::machine_cpu();
        tokio::time::sleep(plan.hold).await;
        let m1 = sys::machine_cpu();
        busy_window = (m1.0 - m0.0) as f64 / ((m1.1 - m0.1) as f64).max(1.0);
        sh.measuring.store(false, Ordering::Relaxed);
        after = probe.snapshot().await;
        let held = sh.connected.load(Ordering::Relaxed);
        if let (Some(b), Some(a)) = (rss_before, sum_rss(&after))
            && held > 0
        {
            rss_per_connection = Some((a as f64 - b as f64) / held as f64);
        }
    }
    merge_mem(&mut mem, &after, false);
    if let Ok(v) = rss_samples.lock() {
        for s in v.iter() {
            merge_mem(&mut mem, s, false);
        }
    }
    // rss_after must be the end snapshot, not the last periodic sample.
    merge_mem(&mut mem, &after, false);

    // ---- stop everything and collect ----
    pb.set_message("closing");
    let _ = stop_tx.send(true);
    let mut trackers = Vec::with_capacity(plan.clients);
    while let Some(r) = clients.join_next().await {
        if let Ok(Some(t)) = r {
            trackers.push(t);
        }
    }
    let _ = lag.await;
    let _ = sampler.await;
    pb.finish_and_clear();

    let stats = report::account(&ledgers, &trackers);
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
        recvq_max_bytes: recvq_max.load(Ordering::Relaxed),
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
        rss_per_connection,
        samples: samples.lock().map(|s| s.clone()).unwrap_or_default(),
        warnings: Vec::new(),
    };
    report.warnings = warnings(&report, plan.rate, workload.publishes());
    Ok(report)
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
    fn parses_prometheus_text() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1.2e+07\n\
fanout_sockets_connected{namespace=\"/\"} 42\nfanout_sockets_connected{namespace=\"/chat\"} 1\n";
        assert_eq!(parse_metrics(text), (Some(12_000_000), Some(42.0)));
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
