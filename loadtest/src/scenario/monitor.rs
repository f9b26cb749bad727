//! Watching a run from the side: the targets' memory (`/metrics` and `/proc`), the
//! generator's event-loop lag, and the once-a-second sampler behind the progress line and
//! the periodic samples.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Plan;
use super::shared::Shared;
use crate::report::{Sample, ServerDelivery, TargetMem};
use crate::sys;

/// One target's memory facts: name (`pid:N` or URL), RSS bytes, sockets on `/`.
pub(super) type Target = (String, Option<u64>, Option<f64>);
/// Every target at one moment.
pub(super) type Snapshot = Vec<Target>;

/// Reads memory facts of the targets: `/metrics` of each URL and `/proc/<pid>` of each PID.
#[derive(Clone)]
pub(super) struct TargetProbe {
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

/// Sums `fanout_topic_messages_delivered_total` and every `fanout_messages_dropped_total`
/// series from Prometheus text; None when the target exports neither (not a fanout node).
pub fn parse_delivery(text: &str) -> Option<ServerDelivery> {
    let mut out = ServerDelivery::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, val)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(val) = val.parse::<f64>() else {
            continue;
        };
        if name == "fanout_topic_messages_delivered_total" {
            out.delivered += val as u64;
            seen = true;
        } else if name.starts_with("fanout_messages_dropped_total") {
            out.dropped += val as u64;
            seen = true;
        }
    }
    seen.then_some(out)
}

/// `fanout_allocator_bytes{kind="allocated"}` (bytes in live objects, jemalloc) from
/// Prometheus text; None for a server that does not export it.
pub fn parse_allocated(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("fanout_allocator_bytes{kind=\"allocated\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

impl TargetProbe {
    /// The targets' allocated bytes (allocator figure), summed; None when none exports it.
    pub(super) async fn allocated(&self) -> Option<u64> {
        let mut sum = None;
        for url in &self.urls {
            if let Some(v) = self
                .metrics_text(url)
                .await
                .as_deref()
                .and_then(parse_allocated)
            {
                *sum.get_or_insert(0) += v;
            }
        }
        sum
    }

    /// The targets' delivery counters, summed; None when no target exports them.
    pub(super) async fn delivery(&self) -> Option<ServerDelivery> {
        let mut sum: Option<ServerDelivery> = None;
        for url in &self.urls {
            let Some(text) = self.metrics_text(url).await else {
                continue;
            };
            if let Some(d) = parse_delivery(&text) {
                let acc = sum.get_or_insert_with(ServerDelivery::default);
                acc.delivered += d.delivered;
                acc.dropped += d.dropped;
            }
        }
        sum
    }

    /// `GET <url>/metrics` as text (None when unreachable or not 2xx).
    async fn metrics_text(&self, url: &str) -> Option<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    pub(super) fn new(http: reqwest::Client, plan: &Plan) -> Self {
        Self {
            http,
            urls: plan.urls.clone(),
            pids: plan.target_pids.clone(),
        }
    }

    pub(super) async fn snapshot(&self) -> Snapshot {
        let mut out = Vec::new();
        for pid in &self.pids {
            out.push((format!("pid:{pid}"), sys::pid_rss(*pid), None));
        }
        for url in &self.urls {
            let Some(text) = self.metrics_text(url).await else {
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

fn merge_mem(mem: &mut Vec<TargetMem>, snap: &[Target], before: bool) {
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

pub(super) fn sum_rss(snap: &[Target]) -> Option<u64> {
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

/// Target memory over the run: `before` as the start, the periodic samples for the maxima,
/// `after` as the end.
pub(super) fn target_memory(
    before: &[Target],
    samples: &[Snapshot],
    after: &[Target],
) -> Vec<TargetMem> {
    let mut mem = Vec::new();
    merge_mem(&mut mem, before, true);
    merge_mem(&mut mem, after, false);
    for s in samples {
        merge_mem(&mut mem, s, false);
    }
    // rss_after must be the end snapshot, not the last periodic sample.
    merge_mem(&mut mem, after, false);
    mem
}

/// Event-loop lag probe: a 10 ms timer; its overshoot is time the generator's tasks
/// waited for a worker thread. Recorded only while measuring.
pub(super) fn spawn_lag_probe(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
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
}

/// The sampler task and what it gathers.
pub(super) struct Sampler {
    task: JoinHandle<()>,
    /// Largest unread receive queue of the generator's sockets while measuring.
    pub recvq_max: Arc<AtomicU64>,
    /// The periodic samples.
    pub samples: Arc<Mutex<Vec<Sample>>>,
    /// The targets' memory at each sample.
    pub snapshots: Arc<Mutex<Vec<Snapshot>>>,
}

impl Sampler {
    /// Waits for the task (it ends with the run's stop signal).
    pub(super) async fn join(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Once a second: updates the progress line and the receive-queue maximum; every
/// `sample_interval`: records a [`Sample`] and a memory snapshot of the targets.
pub(super) fn spawn_sampler(
    plan: &Plan,
    sh: Arc<Shared>,
    pb: ProgressBar,
    probe: TargetProbe,
    mut stop: watch::Receiver<bool>,
) -> Sampler {
    let ports: HashSet<u16> = plan
        .urls
        .iter()
        .filter_map(|u| u.rsplit(':').next()?.split('/').next()?.parse().ok())
        .collect();
    let recvq_max = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let snapshots = Arc::new(Mutex::new(Vec::<Snapshot>::new()));
    let clients = plan.clients;
    let sample_every = plan.sample_interval.max(Duration::from_secs(1));
    let task = {
        let (recvq_max, samples, snapshots) =
            (recvq_max.clone(), samples.clone(), snapshots.clone());
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
                    if let Ok(mut v) = snapshots.lock() {
                        v.push(snap);
                    }
                }
            }
        })
    };
    Sampler {
        task,
        recvq_max,
        samples,
        snapshots,
    }
}
