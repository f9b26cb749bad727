//! Sharded mode: Redis Cluster with sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`).
//!
//! Two redis-rs `ClusterConnection`s (RESP3): one for commands (`SPUBLISH`,
//! `PUBSUB SHARDNUMSUB`), one that only (un)subscribes and whose pushes (messages and
//! subscription confirmations) are handled synchronously in [`ShardedInner::on_push`], on
//! redis-rs's reader, like the classic reader task: `try_send` into bounded queues only.
//! They are separate because redis-rs pairs replies with requests in order, so a push the
//! server sends on its own (a `sunsubscribe` after a slot migration) must not land on a
//! connection with `SPUBLISH`es in flight.
//!
//! # Desired vs live
//! *Desired* = every channel with a route (the routing table's keys). *Live* = desired
//! channels whose `SSUBSCRIBE` Redis confirmed (a `ssubscribe` push), kept current from the
//! pushes:
//! * a `sunsubscribe` push we did not ask for (the slot moved away: migration or failover)
//!   makes the channel un-live, counts a gap and re-issues `SSUBSCRIBE`, which redis-rs
//!   routes by slot and so follows `MOVED` to the new owner (redis-rs itself forgets such a
//!   channel);
//! * a `Disconnection` push (some shard connection dropped; the push does not say which)
//!   marks every live channel *suspect* and re-issues `SSUBSCRIBE` for all of them: those on
//!   healthy shards are confirmed again at once; those whose command fails count as gaps;
//! * every `health_check_interval` a reconcile re-issues `SSUBSCRIBE` for every desired
//!   channel that is not live, and otherwise checks with `CLIENT INFO` (`ssub`) that Redis
//!   holds as many subscriptions as we hold live ([`ShardedInner::verify`]), so any drift is
//!   repaired.
//!
//! Ready = desired ⊆ live (and nothing suspect). Gauges
//! `fanout_adapter_subscription_channels{state="expected"|"live"}`, counter
//! `fanout_adapter_subscription_gaps_total`.
//!
//! (Un)subscribe commands of one channel are serialized (striped async locks) and each
//! re-checks, under the state lock, that it still matches what is desired, so a
//! `SUNSUBSCRIBE` racing a new `SSUBSCRIBE` of the same channel always ends subscribed.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route as SlotRoute, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::DriverConfig;
use super::routes::{Route, Routes, SubId, SubKey};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::target::ClusterTarget;

/// Number of striped locks serializing per-channel (un)subscribe commands.
const STRIPES: usize = 64;
/// Most `SSUBSCRIBE`s in flight during a resubscription of everything.
const RESUBSCRIBE_CONCURRENCY: usize = 32;

/// Sharded mode: the cluster connections and the control task.
#[derive(Clone)]
pub(crate) struct ShardedDriver {
    pub(super) inner: Arc<ShardedInner>,
}

impl std::fmt::Debug for ShardedDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedDriver")
            .field("ready", &*self.inner.ready.borrow())
            .finish()
    }
}

/// What the push handler asks the control task to do.
enum Control {
    /// Re-issue `SSUBSCRIBE` for one channel.
    Resubscribe(String),
    /// Re-issue `SSUBSCRIBE` for every desired channel.
    ResubscribeAll,
}

pub(super) struct ShardedInner {
    /// A weak handle on itself, for tasks spawned from the push handler.
    me: Weak<ShardedInner>,
    commands: ClusterConnection,
    subscriber: ClusterConnection,
    state: Mutex<ShardState>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    pub(super) ready: watch::Sender<bool>,
    /// Bumped whenever the live set grows, for [`ShardedDriver::wait_live`].
    live_version: watch::Sender<u64>,
    control: mpsc::UnboundedSender<Control>,
    metrics: Metrics,
    cfg: DriverConfig,
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct ShardState {
    /// Desired channels = the keys; where their messages go.
    routes: Routes,
    /// Desired channels confirmed by Redis.
    live: HashSet<String>,
    /// Channels that were live when a shard connection dropped, not re-confirmed yet.
    suspect: HashSet<String>,
    /// `SUNSUBSCRIBE`s we sent whose confirmation has not arrived, by channel.
    unsub_pending: HashMap<String, u32>,
}

impl Drop for ShardedInner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl ShardedDriver {
    /// Connects both cluster connections (the seeds must answer once), then spawns the
    /// control task.
    pub(crate) async fn connect(
        target: &ClusterTarget,
        cfg: DriverConfig,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let client = ClusterClientBuilder::new(target.seed_urls())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(cfg.connect_timeout)
            .response_timeout(cfg.command_timeout)
            .build()?;
        // The push handler needs the driver, which needs the connection: late-bound.
        let slot: Arc<OnceLock<Weak<ShardedInner>>> = Arc::new(OnceLock::new());
        let push_slot = slot.clone();
        let on_push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            if let Some(inner) = push_slot.get().and_then(Weak::upgrade) {
                inner.on_push(info);
            }
            Ok(())
        };
        let connect = async {
            let commands = client.get_async_connection().await?;
            let sub_cfg = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(cfg.connect_timeout)
                .set_response_timeout(cfg.command_timeout)
                .set_push_sender(on_push);
            let subscriber = client.get_async_connection_with_config(sub_cfg).await?;
            Ok::<_, redis::RedisError>((commands, subscriber))
        };
        let (commands, subscriber) = tokio::time::timeout(cfg.connect_timeout * 2, connect)
            .await
            .map_err(|_| Error::CommandTimeout("connect"))??;
        let (control, control_rx) = mpsc::unbounded_channel();
        let inner = Arc::new_cyclic(|me| ShardedInner {
            me: me.clone(),
            commands,
            subscriber,
            state: Mutex::new(ShardState::default()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            ready: watch::Sender::new(true),
            live_version: watch::Sender::new(0),
            control,
            metrics,
            cfg,
            task: Mutex::new(None),
        });
        let _ = slot.set(Arc::downgrade(&inner));
        inner.update_gauges(&lock(&inner.state));
        let task = tokio::spawn(control_loop(Arc::downgrade(&inner), control_rx));
        *lock(&inner.task) = Some(task.abort_handle());
        Ok(Self { inner })
    }

    pub(super) async fn subscribe(&self, key: SubKey, route: Route) -> Result<SubId, Error> {
        let SubKey::Channel(channel) = &key else {
            return Err(Error::Unsupported("pattern subscriptions in sharded mode"));
        };
        let channel = channel.clone();
        let (sub, first) = self.add_route(channel.clone(), route);
        if first {
            self.ssubscribe(&channel).await;
        }
        Ok(sub)
    }

    pub(super) async fn unsubscribe(&self, sub: &SubId) {
        if let (true, SubKey::Channel(c)) = (self.remove_route(sub), &sub.key) {
            self.sunsubscribe(c).await;
        }
    }

    /// Adds a route to `channel` without any command; true when it is the first one (the
    /// caller then calls [`ssubscribe`](Self::ssubscribe)). Synchronous, so a caller can do
    /// it under its own lock.
    pub(crate) fn add_route(&self, channel: String, route: Route) -> (SubId, bool) {
        let mut state = lock(&self.inner.state);
        let res = state.routes.add(SubKey::Channel(channel), route);
        self.inner.update_gauges(&state);
        res
    }

    /// Removes a route without any command; true when it was the last one of its channel
    /// (the caller then calls [`sunsubscribe`](Self::sunsubscribe)).
    pub(crate) fn remove_route(&self, sub: &SubId) -> bool {
        let mut state = lock(&self.inner.state);
        let last = state.routes.remove(sub);
        if let (true, SubKey::Channel(c)) = (last, &sub.key) {
            state.live.remove(c);
            state.suspect.remove(c);
        }
        self.inner.update_gauges(&state);
        last
    }

    /// `SSUBSCRIBE channel` if it is still desired; true when it went through.
    pub(crate) async fn ssubscribe(&self, channel: &str) -> bool {
        self.inner.ssubscribe(channel).await
    }

    /// `SUNSUBSCRIBE channel` unless it is desired again.
    pub(crate) async fn sunsubscribe(&self, channel: &str) {
        self.inner.sunsubscribe(channel).await
    }

    /// Waits until `channel` is live (confirmed), at most `command_timeout`.
    pub(crate) async fn wait_live(&self, channel: &str) -> Result<(), Error> {
        let mut version = self.inner.live_version.subscribe();
        let wait = async {
            loop {
                if lock(&self.inner.state).live.contains(channel) {
                    return;
                }
                if version.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(self.inner.cfg.command_timeout, wait)
            .await
            .map_err(|_| Error::NotReady)
    }

    pub(super) async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), Error> {
        let cmd = redis::cmd("SPUBLISH").arg(channel).arg(payload).clone();
        let mut conn = self.inner.commands.clone();
        let res = tokio::time::timeout(
            self.inner.cfg.command_timeout,
            cmd.query_async::<i64>(&mut conn),
        )
        .await;
        let err = match res {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => Error::Redis(e),
            Err(_) => Error::CommandTimeout("SPUBLISH"),
        };
        self.inner.metrics.publish_failed(channel, &err);
        Err(err)
    }

    /// `PUBSUB SHARDNUMSUB channel` summed over every master (a master that does not own the
    /// slot answers 0), like Node's `serverCount()`.
    pub(super) async fn shard_numsub(&self, channel: &str) -> Result<u64, Error> {
        let cmd = redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).clone();
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let mut conn = self.inner.commands.clone();
        let value = tokio::time::timeout(
            self.inner.cfg.command_timeout,
            conn.route_command(cmd, routing),
        )
        .await
        .map_err(|_| Error::CommandTimeout("PUBSUB SHARDNUMSUB"))??;
        sum_numsub(value)
    }
}

/// Sums the counts of a multi-node `PUBSUB SHARDNUMSUB` answer (`{addr: reply}`, each reply
/// `[channel, count]` or `{channel: count}`). A node's error fails the whole count.
fn sum_numsub(value: Value) -> Result<u64, Error> {
    let bad = || {
        Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected PUBSUB SHARDNUMSUB reply",
        )))
    };
    let Value::Map(nodes) = value else {
        return Err(bad());
    };
    let mut total = 0u64;
    for (_, reply) in nodes {
        let count = match reply {
            Value::Array(items) if items.len() == 2 => items.into_iter().nth(1),
            Value::Map(pairs) if pairs.len() == 1 => pairs.into_iter().next().map(|(_, v)| v),
            Value::ServerError(e) => return Err(Error::Redis(e.into())),
            _ => None,
        };
        match count {
            Some(Value::Int(n)) => total += u64::try_from(n).unwrap_or(0),
            _ => return Err(bad()),
        }
    }
    Ok(total)
}

impl ShardedInner {
    fn stripe(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Sends `SSUBSCRIBE channel` if it is still desired; true when Redis confirmed it.
    /// A failure leaves it un-live for the reconcile to retry.
    async fn ssubscribe(&self, channel: &str) -> bool {
        let _serial = self.stripe(channel).lock().await;
        {
            let state = lock(&self.state);
            if !state.routes.contains(&SubKey::Channel(channel.to_owned())) {
                return true;
            }
        }
        match self.on_master("SSUBSCRIBE", channel).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(channel, "SSUBSCRIBE failed, will retry: {e}");
                false
            }
        }
    }

    /// Runs `SSUBSCRIBE`/`SUNSUBSCRIBE channel` on the master of the channel's slot, within
    /// the command timeout. Explicitly the master: redis-rs routes subscriptions like reads,
    /// and while the master's connection is being repaired it falls back to a replica — a
    /// replica accepts `SSUBSCRIBE` and forwards the shard's messages, but `PUBSUB
    /// SHARDNUMSUB` on the masters (the server count) no longer sees us, and a later
    /// subscription on the master would deliver every message twice. The confirmation push
    /// updates the live set and redis-rs's own resubscription list.
    async fn on_master(&self, command: &'static str, channel: &str) -> Result<(), Error> {
        let cmd = redis::cmd(command).arg(channel).clone();
        let route = SlotRoute::with_key(channel, SlotAddr::Master);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        let mut conn = self.subscriber.clone();
        let res = tokio::time::timeout(self.cfg.command_timeout, conn.route_command(cmd, routing))
            .await
            .map_err(|_| Error::CommandTimeout(command))?;
        match res? {
            Value::ServerError(e) => Err(Error::Redis(e.into())),
            _ => Ok(()),
        }
    }

    /// Sends `SUNSUBSCRIBE channel` unless it became desired again meanwhile.
    async fn sunsubscribe(&self, channel: &str) {
        let _serial = self.stripe(channel).lock().await;
        {
            let mut state = lock(&self.state);
            if state.routes.contains(&SubKey::Channel(channel.to_owned())) {
                return;
            }
            *state.unsub_pending.entry(channel.to_owned()).or_default() += 1;
        }
        if let Err(e) = self.on_master("SUNSUBSCRIBE", channel).await {
            tracing::debug!(channel, "SUNSUBSCRIBE failed (connection down?): {e}");
        }
    }

    /// Handles one push of the subscriber connection (runs on redis-rs's reader: no waiting).
    fn on_push(&self, info: PushInfo) {
        match info.kind {
            PushKind::SMessage => {
                let mut data = info.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    return;
                };
                if let Ok(channel) = String::from_utf8(channel) {
                    self.dispatch(channel, payload);
                }
            }
            PushKind::SSubscribe => {
                let Some(channel) = info.data.first().and_then(as_text) else {
                    return;
                };
                let mut state = lock(&self.state);
                state.suspect.remove(&channel);
                if state.routes.contains(&SubKey::Channel(channel.clone())) {
                    state.live.insert(channel);
                    self.live_version.send_modify(|v| *v += 1);
                }
                self.update_gauges(&state);
            }
            PushKind::SUnsubscribe => {
                let Some(channel) = info.data.first().and_then(as_text) else {
                    return;
                };
                let mut state = lock(&self.state);
                let ours = match state.unsub_pending.get_mut(&channel) {
                    Some(n) => {
                        *n -= 1;
                        if *n == 0 {
                            state.unsub_pending.remove(&channel);
                        }
                        true
                    }
                    None => false,
                };
                let was_live = state.live.remove(&channel) | state.suspect.remove(&channel);
                let desired = state.routes.contains(&SubKey::Channel(channel.clone()));
                if desired {
                    if was_live && !ours {
                        self.metrics.subscription_gap(&channel, "moved");
                    }
                    let _ = self.control.send(Control::Resubscribe(channel));
                }
                self.update_gauges(&state);
            }
            PushKind::Disconnection => {
                let mut state = lock(&self.state);
                let live = std::mem::take(&mut state.live);
                state.suspect.extend(live);
                // Confirmations still owed by the lost connection never come.
                state.unsub_pending.clear();
                self.update_gauges(&state);
                drop(state);
                self.metrics.reconnects.inc();
                tracing::warn!("redis cluster connection lost, verifying every subscription");
                let _ = self.control.send(Control::ResubscribeAll);
            }
            _ => {}
        }
    }

    /// Routes one message (same bounds and counting as the classic reader).
    /// Takes the payload as read (no copy). Oversize kinds: `message` (an adapter channel:
    /// main, response or room) or `channel` (a plain one).
    fn dispatch(&self, channel: String, payload: Vec<u8>) {
        let key = SubKey::Channel(channel);
        let SubKey::Channel(channel) = &key else {
            return;
        };
        let channel = channel.as_str();
        if payload.len() > self.cfg.max_message_bytes {
            let kind = match lock(&self.state).routes.kind_of(&key, channel) {
                "channel" => "channel",
                _ => "message",
            };
            self.metrics
                .too_large(kind, channel, payload.len(), self.cfg.max_message_bytes);
            return;
        }
        let payload = Bytes::from(payload);
        let orphaned = {
            let mut state = lock(&self.state);
            let orphaned = state
                .routes
                .dispatch(&key, channel, &payload, &self.metrics);
            if orphaned {
                state.live.remove(channel);
                state.suspect.remove(channel);
                self.update_gauges(&state);
            }
            orphaned
        };
        // Every receiver of this channel is gone: stop receiving it.
        if orphaned && let Some(inner) = self.me() {
            let channel = channel.to_owned();
            tokio::spawn(async move { inner.sunsubscribe(&channel).await });
        }
    }

    fn me(&self) -> Option<Arc<ShardedInner>> {
        self.me.upgrade()
    }

    /// Publishes the gauges and readiness from `state`.
    fn update_gauges(&self, state: &ShardState) {
        let expected = state.routes.len();
        let live = state.live.len();
        self.metrics.set_channels(expected, live);
        let ready = live >= expected && state.suspect.is_empty();
        self.metrics.set_live(ready);
        self.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    /// Re-issues `SSUBSCRIBE` for `channels`; a suspect channel whose command fails was
    /// really lost: a gap.
    async fn resubscribe(&self, channels: Vec<String>) {
        futures_util::stream::iter(channels)
            .for_each_concurrent(RESUBSCRIBE_CONCURRENCY, |channel| async move {
                if !self.ssubscribe(&channel).await {
                    let mut state = lock(&self.state);
                    if state.suspect.remove(&channel) {
                        self.metrics.subscription_gap(&channel, "connection");
                        self.update_gauges(&state);
                    }
                }
            })
            .await;
    }

    /// Desired channels that are not live (suspect ones included).
    fn missing(&self) -> Vec<String> {
        let state = lock(&self.state);
        state
            .routes
            .keys()
            .filter_map(|k| match k {
                SubKey::Channel(c) if !state.live.contains(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

impl ShardedInner {
    /// Checks with Redis that the live channels really are subscribed: `CLIENT INFO` on every
    /// node over the subscriber connection itself gives its `ssub` count there. Fewer in
    /// total than we hold live means a subscription vanished without a push (a connection
    /// redis-rs replaced during a topology change): every live channel is then suspect and
    /// re-issued (idempotent for the ones still there), and the difference counted as gaps.
    /// Returns the channels to resubscribe. A node that does not answer skips the check.
    async fn verify(&self) -> Vec<String> {
        // Only channels live before and after the check are expected to be counted: one
        // confirmed meanwhile may or may not be, one removed meanwhile may still be.
        let before = lock(&self.state).live.clone();
        let cmd = redis::cmd("CLIENT").arg("INFO").clone();
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
        let mut conn = self.subscriber.clone();
        let Ok(Ok(Value::Map(nodes))) =
            tokio::time::timeout(self.cfg.command_timeout, conn.route_command(cmd, routing)).await
        else {
            return Vec::new();
        };
        let mut total = 0usize;
        for (_, info) in &nodes {
            let text = match info {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::VerbatimString { text, .. } => text.clone(),
                Value::SimpleString(s) => s.clone(),
                _ => return Vec::new(),
            };
            total += client_info_field(&text, "ssub").unwrap_or(0);
        }
        let mut state = lock(&self.state);
        let live = state.live.intersection(&before).count();
        if total >= live {
            return Vec::new();
        }
        for _ in total..live {
            self.metrics.subscription_gap("(unknown)", "silent");
        }
        let all = std::mem::take(&mut state.live);
        state.suspect.extend(all.iter().cloned());
        self.update_gauges(&state);
        all.into_iter().collect()
    }
}

/// A numeric `field=` of a `CLIENT INFO` line.
fn client_info_field(info: &str, field: &str) -> Option<usize> {
    info.split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The control task: resubscriptions asked by the push handler, and the periodic reconcile.
async fn control_loop(weak: Weak<ShardedInner>, mut rx: mpsc::UnboundedReceiver<Control>) {
    let Some(interval) = weak.upgrade().map(|i| i.cfg.health_check_interval) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let channels = tokio::select! {
            msg = rx.recv() => {
                let Some(first) = msg else { return };
                // Coalesce a burst (a migrated slot unsubscribes all its channels at once,
                // a failover drops several connections) into one concurrent pass.
                let mut channels = HashSet::new();
                let mut all = false;
                let mut next = Some(first);
                while let Some(msg) = next {
                    match msg {
                        Control::Resubscribe(channel) => {
                            channels.insert(channel);
                        }
                        Control::ResubscribeAll => all = true,
                    }
                    next = rx.try_recv().ok();
                }
                let Some(inner) = weak.upgrade() else { return };
                if all {
                    inner.missing()
                } else {
                    channels.into_iter().collect()
                }
            }
            _ = ticker.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                let missing = inner.missing();
                if missing.is_empty() {
                    inner.verify().await
                } else {
                    missing
                }
            }
        };
        if channels.is_empty() {
            continue;
        }
        let Some(inner) = weak.upgrade() else { return };
        inner.resubscribe(channels).await;
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_ssub() {
        let info = "id=7 addr=127.0.0.1:5 laddr=x fd=9 name= sub=0 psub=0 ssub=12 multi=-1";
        assert_eq!(client_info_field(info, "ssub"), Some(12));
        assert_eq!(client_info_field(info, "sub"), Some(0));
        assert_eq!(client_info_field("id=1", "ssub"), None);
        assert_eq!(client_info_field("ssub=x", "ssub"), None);
    }

    #[test]
    fn numsub_sums_every_master() {
        let reply = |n| Value::Array(vec![Value::BulkString(b"c".to_vec()), Value::Int(n)]);
        let map = Value::Map(vec![
            (Value::BulkString(b"a:1".to_vec()), reply(1)),
            (Value::BulkString(b"b:2".to_vec()), reply(0)),
            (
                Value::BulkString(b"c:3".to_vec()),
                Value::Map(vec![(Value::BulkString(b"c".to_vec()), Value::Int(2))]),
            ),
        ]);
        assert_eq!(sum_numsub(map).unwrap(), 3);
        assert!(sum_numsub(Value::Int(1)).is_err());
        assert!(sum_numsub(Value::Map(vec![(Value::Nil, Value::Nil)])).is_err());
    }
}
