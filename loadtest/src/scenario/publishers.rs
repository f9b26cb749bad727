//! Phase 3 of a publishing workload: publishers send stamped messages at the planned
//! rate for `warmup + duration` (over Socket.IO, the REST API or Redis), then wait `drain`
//! for deliveries in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::json;
use tokio::time::MissedTickBehavior;

use super::clients::ack_ok;
use super::monitor::{Snapshot, TargetProbe};
use super::shared::{Shared, publisher_topics, source_ip};
use super::{Measured, Plan, Workload};
use crate::auth::Tokens;
use crate::client::{ConnectOptions, Connection, Incoming, connect};
use crate::error::RunError;
use crate::redis_conn::{self, RedisConn};
use crate::report::{self, PublisherLedger, Stamp};
use crate::sys;

/// Connects the publishers, publishes through the warm-up and the measured window, waits
/// for the drain, and snapshots the targets.
#[allow(clippy::too_many_arguments)]
pub(super) async fn publish_all(
    plan: &Plan,
    names: &Arc<Vec<String>>,
    tokens: &Tokens,
    source_ips: usize,
    sh: &Arc<Shared>,
    http: &reqwest::Client,
    probe: &TargetProbe,
    pb: &ProgressBar,
) -> Result<Measured, RunError> {
    pb.set_message("starting publishers");
    let p = plan.publishers.max(1);
    let period = Duration::from_secs_f64(p as f64 / plan.rate.max(0.001));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let warm_end = t0 + plan.warmup;
    let end = warm_end + plan.duration;
    let sinks = sinks(plan, tokens, source_ips, sh, http).await?;
    let mut pubs = tokio::task::JoinSet::new();
    for (j, sink) in sinks.into_iter().enumerate() {
        let ctx = PubCtx {
            id: j as u32,
            topics: publisher_topics(j, p, names.len()),
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
    let window = w0.elapsed();
    let cpu_secs = sys::self_cpu_secs() - cpu0;
    let m1 = sys::machine_cpu();
    let machine_busy = (m1.0 - m0.0) as f64 / ((m1.1 - m0.1) as f64).max(1.0);
    sh.measuring.store(false, Ordering::Relaxed);
    pb.set_message("draining");
    let mut got: Vec<(usize, PublisherLedger)> = Vec::new();
    while let Some(r) = pubs.join_next().await {
        if let Ok(x) = r {
            got.push(x);
        }
    }
    got.sort_by_key(|x| x.0);
    tokio::time::sleep_until(end + plan.drain).await;
    let after: Snapshot = probe.snapshot().await;
    Ok(Measured {
        ledgers: got.into_iter().map(|x| x.1).collect(),
        window,
        cpu_secs,
        machine_busy,
        after,
        rss_per_connection: None,
        allocated_per_connection: None,
        storm: None,
    })
}

/// One sink per publisher: a Socket.IO connection (rooms, storm, soak), an HTTP client
/// (models) or a shared Redis connection (redis).
async fn sinks(
    plan: &Plan,
    tokens: &Tokens,
    source_ips: usize,
    sh: &Shared,
    http: &reqwest::Client,
) -> Result<Vec<PubSink>, RunError> {
    let redis_conn = if plan.workload == Workload::Redis {
        let url = plan.redis_url.clone().ok_or(RunError::NoRedisUrl)?;
        let redis_err = |source| RunError::Redis {
            url: url.clone(),
            source,
        };
        Some(redis_conn::connect(&url).await.map_err(redis_err)?)
    } else {
        None
    };
    let p = plan.publishers.max(1);
    let mut sinks = Vec::with_capacity(p);
    for j in 0..p {
        let token = tokens.tokens[j % tokens.tokens.len()].clone();
        let url = plan.urls[j % plan.urls.len()].clone();
        let sink = match (plan.workload, &redis_conn) {
            (Workload::Models, _) => PubSink::Http {
                http: http.clone(),
                base: url.trim_end_matches('/').to_owned(),
                token,
            },
            (Workload::Redis, Some(c)) => PubSink::Redis {
                conn: c.clone(),
                channel: plan.events_channel.clone(),
            },
            _ => {
                let mut o = ConnectOptions::new(url).with_auth(json!({ "token": token }));
                o.local_ip = source_ip(plan.clients + j, source_ips);
                o.timeout = plan.connect_timeout;
                match connect(&o).await {
                    Ok((c, _)) => PubSink::SocketIo(Box::new(c)),
                    Err(source) => {
                        if source.is_auth() {
                            sh.auth_failed.fetch_add(1, Ordering::Relaxed);
                        }
                        return Err(RunError::Publisher { id: j, source });
                    }
                }
            }
        };
        sinks.push(sink);
    }
    Ok(sinks)
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
        conn: RedisConn,
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
                        let res: redis::RedisResult<i64> = redis::cmd(redis_conn::publish_command(conn))
                            .arg(channel.as_str())
                            .arg(msg)
                            .query_async(conn)
                            .await;
                        sh.acks.record(ctx.id as usize, sh.now_us().saturating_sub(t));
                        match res {
                            Ok(_) => None,
                            Err(e) => Some(format!("publisher {}: {}: {e}", ctx.id, redis_conn::publish_command(conn))),
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
