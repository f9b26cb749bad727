//! Phase 2: connect and subscribe the clients; each then records its deliveries until the
//! run stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::shared::{Shared, source_ip};
use super::{ClientTransport, Plan};
use crate::auth::Tokens;
use crate::client::{ClientError, ConnectOptions, Connection, Incoming, Timings, connect};
use crate::report::{self, Stamped, Tracker};
use crate::sys;
use crate::wsclient::connect_ws;

/// What the connect phase leaves: the running clients and how connecting went.
pub(super) struct Connected {
    /// The client tasks; each yields its tracker when the run stops.
    pub clients: JoinSet<Option<Tracker>>,
    /// Clients connected and subscribed when the phase ended.
    pub count: u64,
    /// From the first handshake to the last successful one.
    pub elapsed: Duration,
    /// `count / elapsed`.
    pub per_sec: f64,
    /// CPU seconds the generator spent connecting.
    pub cpu_secs: f64,
    /// Busy fraction of the whole machine while connecting (generator and targets).
    pub machine_busy: f64,
}

/// Connects and subscribes every client, at most `connect_concurrency` handshakes in
/// flight and `connect_rate` new ones per second; returns when every handshake is over.
pub(super) async fn connect_all(
    plan: &Plan,
    names: &Arc<Vec<String>>,
    tokens: &Tokens,
    source_ips: usize,
    sh: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Connected {
    let connect_start = Instant::now();
    let cpu0 = sys::self_cpu_secs();
    let m0 = sys::machine_cpu();
    let sem = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let mut clients = JoinSet::new();
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
        // Every client subscribes one topic; `connect` clients then sit idle.
        let topics = vec![(i % topics_n) as u32];
        match plan.transport {
            ClientTransport::Socketio => clients.spawn(client_task(
                i,
                opts,
                topics,
                names.clone(),
                sh.clone(),
                permit,
                stop.clone(),
            )),
            ClientTransport::Ws => clients.spawn(ws_client_task(
                i,
                opts,
                topics,
                names.clone(),
                sh.clone(),
                permit,
                stop.clone(),
            )),
        };
    }
    // All handshakes done when every permit is back.
    let all = sem
        .acquire_many(plan.connect_concurrency.max(1) as u32)
        .await;
    drop(all);
    let cpu_secs = sys::self_cpu_secs() - cpu0;
    let m1 = sys::machine_cpu();
    let count = sh.connected.load(Ordering::Relaxed);
    let elapsed = sh
        .last_connect_ok
        .lock()
        .ok()
        .and_then(|l| *l)
        .map_or(Duration::ZERO, |l| l.duration_since(connect_start));
    let per_sec = if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    };
    Connected {
        clients,
        count,
        elapsed,
        per_sec,
        cpu_secs,
        machine_busy: (m1.0 - m0.0) as f64 / ((m1.1 - m0.1) as f64).max(1.0),
    }
}

/// Waits for every client task (they end once the run's stop signal is sent).
pub(super) async fn collect(
    mut clients: JoinSet<Option<Tracker>>,
    capacity: usize,
) -> Vec<Tracker> {
    let mut trackers = Vec::with_capacity(capacity);
    while let Some(r) = clients.join_next().await {
        if let Ok(Some(t)) = r {
            trackers.push(t);
        }
    }
    trackers
}

/// Waits for the ack `id` on `conn`, answering pings; returns the ack's JSON array text.
pub(super) async fn wait_ack(
    conn: &mut Connection,
    id: u64,
    timeout: Duration,
) -> Result<String, String> {
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

pub(super) fn ack_ok(args: &str) -> bool {
    args.contains("\"ok\":true")
}

/// Counts a client whose handshake failed (auth refusals apart) and keeps the reason.
fn connect_failed(sh: &Shared, i: usize, target: &str, e: ClientError) -> Option<Tracker> {
    if e.is_auth() {
        sh.auth_failed.fetch_add(1, Ordering::Relaxed);
    } else {
        sh.connect_failed.fetch_add(1, Ordering::Relaxed);
    }
    sh.failure(format!("client {i} → {target}: {e}"));
    None
}

/// Records a finished handshake's duration.
fn record_connect(sh: &Shared, timings: &Timings) {
    if let Ok(mut h) = sh.connect_hist.lock() {
        h.saturating_record((timings.total.as_micros() as u64).max(1));
    }
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
        Err(e) => return connect_failed(&sh, i, &opts.url, e),
    };
    record_connect(&sh, &timings);
    let mut tracker = Tracker::new(Vec::with_capacity(topics.len()));
    for t in topics {
        let name = &names[t as usize];
        let asked = Instant::now();
        let res = match conn.writer.emit_with_ack("subscribe", &json!([name])).await {
            Ok(id) => wait_ack(&mut conn, id, opts.timeout).await,
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(args) if ack_ok(&args) => {
                sh.subscribed(t, asked.elapsed());
                tracker.topics.push(t);
            }
            Ok(args) => sh.failure(format!("client {i}: subscribe {name} refused: {args}")),
            Err(e) => sh.failure(format!("client {i}: subscribe {name}: {e}")),
        }
    }
    sh.client_ready();
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

/// One idle `/ws` client (connect workload): connect, authenticate, subscribe, then read
/// until stop.
async fn ws_client_task(
    i: usize,
    opts: ConnectOptions,
    topics: Vec<u32>,
    names: Arc<Vec<String>>,
    sh: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) -> Option<Tracker> {
    let (mut conn, timings) = match connect_ws(&opts).await {
        Ok(c) => c,
        Err(e) => return connect_failed(&sh, i, &format!("{}/ws", opts.url), e),
    };
    record_connect(&sh, &timings);
    let mut tracker = Tracker::new(Vec::with_capacity(topics.len()));
    for t in topics {
        let name = &names[t as usize];
        let asked = Instant::now();
        let res = tokio::time::timeout(
            opts.timeout,
            conn.request("subscribe", json!({ "topic": name })),
        )
        .await;
        match res {
            Ok(Ok(_)) => {
                sh.subscribed(t, asked.elapsed());
                tracker.topics.push(t);
            }
            Ok(Err(e)) => sh.failure(format!("client {i}: subscribe {name}: {e}")),
            Err(_) => sh.failure(format!("client {i}: subscribe {name}: ack timeout")),
        }
    }
    sh.client_ready();
    drop(permit);
    tokio::select! {
        biased;
        _ = stop.changed() => {}
        _ = conn.idle() => {
            sh.disconnects.fetch_add(1, Ordering::Relaxed);
            sh.connected.fetch_sub(1, Ordering::Relaxed);
            return Some(tracker);
        }
    }
    let _ = conn.close().await;
    Some(tracker)
}
