//! Redis connections: one dedicated RESP2 subscriber connection, one publisher connection,
//! reconnect with capped exponential backoff, resubscription, readiness, and routing of
//! inbound messages into bounded queues. Plus the in-process loopback used in embedded mode.
//!
//! # Why a dedicated RESP2 pub/sub connection
//! A RESP2 connection in subscribe mode makes the subscription state explicit: the
//! connection is either up with every `SUBSCRIBE`/`PSUBSCRIBE` confirmed (we set
//! `ready = true` only after the confirmations of the full resubscription arrive) or gone
//! (the message stream ends, we set `ready = false` and reconnect). It works with every
//! Redis/Valkey version and with a plain `redis://` URL (no `?protocol=resp3`), and since a
//! subscribed connection carries nothing else, `PUBSUB NUMSUB` counts exactly one
//! connection per process — what the Node adapter's peer counting assumes.
//! Commands (`PUBLISH`, `PUBSUB NUMSUB`) go through a separate [`ConnectionManager`],
//! which reconnects by itself; every command is bounded by a timeout.
//!
//! # Routing
//! Every subscription (a channel or a pattern) has one or more [`Route`]s: a bounded
//! `mpsc` sender. The reader task only does `try_send`: a full queue drops the message
//! and counts it (`fanout_adapter_dropped_messages_total`), a closed queue removes the
//! route. The reader therefore never blocks on a slow consumer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::error::Error;
use crate::metrics::Metrics;

/// A message read from a subscription.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    /// The channel it was published to.
    pub channel: String,
    /// The raw payload.
    pub payload: Bytes,
}

/// Where the messages of one subscription go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// An adapter namespace queue (needs the channel name to dispatch).
    Adapter(mpsc::Sender<Inbound>),
    /// A plain channel subscriber (`FanoutAdapterCtr::subscribe_channel`).
    Plain(mpsc::Sender<Bytes>),
}

/// Outcome of a delivery attempt.
enum Delivery {
    Sent,
    Full,
    Closed,
}

impl Route {
    fn deliver(&self, channel: &str, payload: &Bytes) -> Delivery {
        use mpsc::error::TrySendError;
        let res = match self {
            Route::Adapter(tx) => tx
                .try_send(Inbound {
                    channel: channel.to_owned(),
                    payload: payload.clone(),
                })
                .map_err(|e| matches!(e, TrySendError::Full(_))),
            Route::Plain(tx) => tx
                .try_send(payload.clone())
                .map_err(|e| matches!(e, TrySendError::Full(_))),
        };
        match res {
            Ok(()) => Delivery::Sent,
            Err(true) => Delivery::Full,
            Err(false) => Delivery::Closed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Route::Adapter(_) => "adapter",
            Route::Plain(_) => "channel",
        }
    }
}

/// What is subscribed: a channel (`SUBSCRIBE`) or a pattern (`PSUBSCRIBE`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SubKey {
    Channel(String),
    Pattern(String),
}

/// Identifies one route, to remove it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubId {
    key: SubKey,
    id: u64,
}

/// The routing table, shared by both drivers.
#[derive(Debug, Default)]
struct Routes {
    map: HashMap<SubKey, Vec<(u64, Route)>>,
    next_id: u64,
}

impl Routes {
    fn add(&mut self, key: SubKey, route: Route) -> (SubId, bool) {
        self.next_id += 1;
        let id = self.next_id;
        let entry = self.map.entry(key.clone()).or_default();
        let first = entry.is_empty();
        entry.push((id, route));
        (SubId { key, id }, first)
    }

    /// Removes a route; returns true when it was the last one of its key.
    fn remove(&mut self, sub: &SubId) -> bool {
        let Some(routes) = self.map.get_mut(&sub.key) else {
            return false;
        };
        routes.retain(|(id, _)| *id != sub.id);
        if routes.is_empty() {
            self.map.remove(&sub.key);
            true
        } else {
            false
        }
    }

    /// Delivers to every route of `key`, dropping closed routes and counting overflows.
    /// Returns true when the last route of `key` was closed (the key is then removed).
    fn dispatch(
        &mut self,
        key: &SubKey,
        channel: &str,
        payload: &Bytes,
        metrics: &Metrics,
    ) -> bool {
        let Some(routes) = self.map.get_mut(key) else {
            return false;
        };
        routes.retain(|(_, route)| match route.deliver(channel, payload) {
            Delivery::Sent => {
                // Adapter routes are counted by kind in the namespace loop.
                if let Route::Plain(_) = route {
                    metrics.received("channel");
                }
                true
            }
            Delivery::Full => {
                metrics.dropped(route.kind(), channel);
                true
            }
            Delivery::Closed => false,
        });
        if routes.is_empty() {
            self.map.remove(key);
            true
        } else {
            false
        }
    }
}

/// Timing knobs of the Redis driver.
#[derive(Debug, Clone)]
pub(crate) struct DriverConfig {
    pub url: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    pub health_check_interval: Duration,
}

/// The message bus behind the adapter: Redis, or an in-process loopback.
#[derive(Debug, Clone)]
pub(crate) enum Driver {
    /// Embedded mode.
    Local(LocalBus),
    /// Cluster mode.
    Redis(RedisDriver),
}

impl Driver {
    pub fn is_ready(&self) -> bool {
        match self {
            Driver::Local(_) => true,
            Driver::Redis(r) => *r.inner.ready.borrow(),
        }
    }

    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        match self {
            Driver::Local(l) => l.ready.subscribe(),
            Driver::Redis(r) => r.inner.ready.subscribe(),
        }
    }

    pub async fn subscribe(&self, key: SubKey, route: Route) -> Result<SubId, Error> {
        match self {
            Driver::Local(l) => Ok(l.subscribe(key, route)),
            Driver::Redis(r) => r.subscribe(key, route).await,
        }
    }

    pub async fn unsubscribe(&self, sub: &SubId) {
        match self {
            Driver::Local(l) => l.unsubscribe(sub),
            Driver::Redis(r) => r.unsubscribe(sub).await,
        }
    }

    pub async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), Error> {
        match self {
            Driver::Local(l) => {
                l.publish(channel, payload);
                Ok(())
            }
            Driver::Redis(r) => r.publish(channel, payload).await,
        }
    }

    /// `PUBSUB NUMSUB channel`.
    pub async fn numsub(&self, channel: &str) -> Result<u64, Error> {
        match self {
            Driver::Local(_) => Ok(1),
            Driver::Redis(r) => r.numsub(channel).await,
        }
    }
}

/// Embedded mode: publish delivers to the local subscribers of that channel.
#[derive(Debug, Clone)]
pub(crate) struct LocalBus {
    routes: Arc<Mutex<Routes>>,
    ready: Arc<watch::Sender<bool>>,
    metrics: Metrics,
}

impl LocalBus {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            routes: Default::default(),
            ready: Arc::new(watch::Sender::new(true)),
            metrics,
        }
    }

    fn subscribe(&self, key: SubKey, route: Route) -> SubId {
        lock(&self.routes).add(key, route).0
    }

    fn unsubscribe(&self, sub: &SubId) {
        lock(&self.routes).remove(sub);
    }

    fn publish(&self, channel: &str, payload: Vec<u8>) {
        let payload = Bytes::from(payload);
        lock(&self.routes).dispatch(
            &SubKey::Channel(channel.to_owned()),
            channel,
            &payload,
            &self.metrics,
        );
    }
}

/// Cluster mode: the Redis connections and the reader task.
#[derive(Clone)]
pub(crate) struct RedisDriver {
    inner: Arc<RedisInner>,
}

impl std::fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDriver")
            .field("ready", &*self.inner.ready.borrow())
            .finish()
    }
}

struct RedisInner {
    /// `PUBLISH` / `PUBSUB NUMSUB`; reconnects by itself.
    publisher: ConnectionManager,
    /// Routes and the sink of the current subscriber connection (None while disconnected).
    /// One lock for both, so a subscription added during a resubscription is never lost.
    state: Mutex<SubState>,
    /// true = connected and every subscription confirmed.
    ready: watch::Sender<bool>,
    metrics: Metrics,
    cfg: DriverConfig,
    /// The reader task, aborted when the last handle is dropped.
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct SubState {
    sink: Option<PubSubSink>,
    routes: Routes,
}

impl Drop for RedisInner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl RedisDriver {
    /// Connects the publisher and the subscriber (both must succeed once), then spawns
    /// the reader task that keeps the subscriber connected.
    pub async fn connect(cfg: DriverConfig, metrics: Metrics) -> Result<Self, Error> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(cfg.reconnect_max_delay);
        let publisher = tokio::time::timeout(
            cfg.connect_timeout * 2,
            ConnectionManager::new_with_config(client.clone(), mgr_cfg),
        )
        .await
        .map_err(|_| Error::CommandTimeout("connect"))??;
        let pubsub = tokio::time::timeout(cfg.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| Error::CommandTimeout("connect"))??;

        let inner = Arc::new(RedisInner {
            publisher,
            state: Mutex::new(SubState::default()),
            ready: watch::Sender::new(false),
            metrics,
            cfg,
            task: Mutex::new(None),
        });
        // The first connection has no subscriptions yet: it is live as soon as the sink is set.
        let (sink, stream) = pubsub.split();
        lock(&inner.state).sink = Some(sink.clone());
        inner.set_ready(true);
        let task = tokio::spawn(run(Arc::downgrade(&inner), client, Some((sink, stream))));
        *lock(&inner.task) = Some(task.abort_handle());
        Ok(Self { inner })
    }

    async fn subscribe(&self, key: SubKey, route: Route) -> Result<SubId, Error> {
        let (sub, first, sink) = {
            let mut state = lock(&self.inner.state);
            let (sub, first) = state.routes.add(key.clone(), route);
            (sub, first, state.sink.clone())
        };
        // Not connected: the reader task subscribes everything when it reconnects.
        let (true, Some(mut sink)) = (first, sink) else {
            return Ok(sub);
        };
        let timeout = self.inner.cfg.command_timeout;
        let res = match &key {
            SubKey::Channel(c) => tokio::time::timeout(timeout, sink.subscribe(c)).await,
            SubKey::Pattern(p) => tokio::time::timeout(timeout, sink.psubscribe(p)).await,
        };
        match res {
            Ok(Ok(())) => {}
            // The connection is failing: the reader task will notice, reconnect and
            // resubscribe this route with the others. Not an error for the caller.
            Ok(Err(e)) => tracing::warn!(?key, "subscribe failed, will retry on reconnect: {e}"),
            Err(_) => tracing::warn!(?key, "subscribe timed out, will retry on reconnect"),
        }
        Ok(sub)
    }

    async fn unsubscribe(&self, sub: &SubId) {
        let (last, sink) = {
            let mut state = lock(&self.inner.state);
            (state.routes.remove(sub), state.sink.clone())
        };
        let (true, Some(mut sink)) = (last, sink) else {
            return;
        };
        let timeout = self.inner.cfg.command_timeout;
        let res = match &sub.key {
            SubKey::Channel(c) => tokio::time::timeout(timeout, sink.unsubscribe(c)).await,
            SubKey::Pattern(p) => tokio::time::timeout(timeout, sink.punsubscribe(p)).await,
        };
        if !matches!(res, Ok(Ok(()))) {
            tracing::debug!(key = ?sub.key, "unsubscribe failed (connection down?)");
        }
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), Error> {
        // While the subscriber is reconnecting Redis is most likely unreachable: fail at
        // once instead of stalling every caller for `command_timeout` (a black-holed host
        // does not refuse connections). Pub/sub is at-most-once anyway.
        if !*self.inner.ready.borrow() {
            let err = Error::NotReady;
            self.inner.metrics.publish_failed(channel, &err);
            return Err(err);
        }
        let cmd = redis::cmd("PUBLISH").arg(channel).arg(payload).clone();
        match self.query::<i64>(&cmd, "PUBLISH").await {
            Ok(_) => Ok(()),
            Err(err) => {
                self.inner.metrics.publish_failed(channel, &err);
                Err(err)
            }
        }
    }

    async fn numsub(&self, channel: &str) -> Result<u64, Error> {
        let cmd = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).clone();
        let (_, n): (String, u64) = self.query(&cmd, "PUBSUB NUMSUB").await?;
        Ok(n)
    }

    /// Runs a command on the publisher connection within `command_timeout`. A connection
    /// error is retried once: the `ConnectionManager` starts reconnecting on the first
    /// failure, so right after Redis comes back the retry succeeds instead of losing the
    /// first message.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        name: &'static str,
    ) -> Result<T, Error> {
        let mut conn = self.inner.publisher.clone();
        let attempt = async {
            let mut retried = false;
            loop {
                match cmd.query_async::<T>(&mut conn).await {
                    Ok(v) => return Ok(v),
                    Err(e)
                        if !retried
                            && (e.is_io_error()
                                || e.is_connection_dropped()
                                || e.is_connection_refusal()) =>
                    {
                        retried = true;
                    }
                    Err(e) => return Err(Error::Redis(e)),
                }
            }
        };
        tokio::time::timeout(self.inner.cfg.command_timeout, attempt)
            .await
            .map_err(|_| Error::CommandTimeout(name))?
    }
}

impl RedisInner {
    fn set_ready(&self, ready: bool) {
        self.metrics.set_live(ready);
        self.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    /// Stores the new sink and subscribes everything currently routed. Returns when every
    /// confirmation has arrived.
    async fn resubscribe(&self, mut sink: PubSubSink) -> Result<(), Error> {
        let (channels, patterns) = {
            let mut state = lock(&self.state);
            state.sink = Some(sink.clone());
            let mut channels = Vec::new();
            let mut patterns = Vec::new();
            for key in state.routes.map.keys() {
                match key {
                    SubKey::Channel(c) => channels.push(c.clone()),
                    SubKey::Pattern(p) => patterns.push(p.clone()),
                }
            }
            (channels, patterns)
        };
        let timeout = self.cfg.command_timeout;
        if !channels.is_empty() {
            tokio::time::timeout(timeout, sink.subscribe(&channels))
                .await
                .map_err(|_| Error::CommandTimeout("SUBSCRIBE"))??;
        }
        if !patterns.is_empty() {
            tokio::time::timeout(timeout, sink.psubscribe(&patterns))
                .await
                .map_err(|_| Error::CommandTimeout("PSUBSCRIBE"))??;
        }
        tracing::debug!(
            channels = channels.len(),
            patterns = patterns.len(),
            "redis subscriptions live"
        );
        Ok(())
    }

    fn dispatch(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
        let key = match msg.get_pattern::<Option<String>>() {
            Ok(Some(p)) => SubKey::Pattern(p),
            _ => SubKey::Channel(channel.to_owned()),
        };
        let (orphaned, sink) = {
            let mut state = lock(&self.state);
            let orphaned = state
                .routes
                .dispatch(&key, channel, &payload, &self.metrics);
            (orphaned, state.sink.clone())
        };
        // Every receiver of this subscription is gone: stop receiving it from Redis.
        if let (true, Some(mut sink)) = (orphaned, sink) {
            let timeout = self.cfg.command_timeout;
            tokio::spawn(async move {
                let _ = match key {
                    SubKey::Channel(c) => tokio::time::timeout(timeout, sink.unsubscribe(c)).await,
                    SubKey::Pattern(p) => tokio::time::timeout(timeout, sink.punsubscribe(p)).await,
                };
            });
        }
    }
}

/// The reader task: pump messages while connected; on loss, mark not-ready, back off
/// (capped exponential with jitter), reconnect and resubscribe everything.
async fn run(
    weak: Weak<RedisInner>,
    client: redis::Client,
    mut first: Option<(PubSubSink, PubSubStream)>,
) {
    let mut attempt: u32 = 0;
    loop {
        let conn = match first.take() {
            Some(conn) => Ok(conn),
            None => {
                let Some(cfg) = weak.upgrade().map(|i| i.cfg.clone()) else {
                    return;
                };
                match tokio::time::timeout(cfg.connect_timeout, client.get_async_pubsub()).await {
                    Ok(Ok(pubsub)) => Ok(pubsub.split()),
                    Ok(Err(e)) => Err(Error::Redis(e)),
                    Err(_) => Err(Error::CommandTimeout("connect")),
                }
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        match conn {
            Ok((sink, stream)) => match inner.resubscribe(sink.clone()).await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::info!("redis subscriber reconnected, subscriptions restored");
                    }
                    attempt = 0;
                    inner.set_ready(true);
                    let interval = inner.cfg.health_check_interval;
                    let cmd_timeout = inner.cfg.command_timeout;
                    drop(inner);
                    pump(&weak, sink, stream, interval, cmd_timeout).await;
                    let Some(inner) = weak.upgrade() else { return };
                    lock(&inner.state).sink = None;
                    inner.set_ready(false);
                    inner.metrics.reconnects.inc();
                    tracing::warn!("redis subscriber connection lost, reconnecting");
                }
                Err(e) => {
                    lock(&inner.state).sink = None;
                    inner.metrics.connect_failed(&e);
                }
            },
            Err(e) => inner.metrics.connect_failed(&e),
        }
        let Some(inner) = weak.upgrade() else { return };
        let delay = backoff(
            attempt,
            inner.cfg.reconnect_min_delay,
            inner.cfg.reconnect_max_delay,
        );
        drop(inner);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// Reads messages until the connection ends or a health-check PING fails.
async fn pump(
    weak: &Weak<RedisInner>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    interval: Duration,
    cmd_timeout: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let Some(inner) = weak.upgrade() else { return };
                inner.dispatch(&msg);
            }
            _ = ticker.tick() => {
                let ping = tokio::time::timeout(cmd_timeout, sink.ping::<redis::Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    tracing::warn!("redis subscriber health check failed");
                    return;
                }
            }
        }
    }
}

/// `min * 2^attempt`, capped at `max`, with ±20 % jitter.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter).min(max)
}

/// Locks a std mutex, recovering from poisoning (a panicking holder cannot leave the
/// routing table in a state worse than "one message routed or not").
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert!(backoff(0, min, max) <= Duration::from_millis(120));
        assert!(backoff(30, min, max) <= max);
        assert!(backoff(3, min, max) >= Duration::from_millis(640));
    }

    #[tokio::test]
    async fn local_bus_loopback_and_overflow() {
        let metrics = Metrics::unregistered().unwrap();
        let bus = Driver::Local(LocalBus::new(metrics.clone()));
        let (tx, mut rx) = mpsc::channel(1);
        bus.subscribe(SubKey::Channel("c".into()), Route::Plain(tx))
            .await
            .unwrap();
        bus.publish("c", b"one".to_vec()).await.unwrap();
        bus.publish("c", b"two".to_vec()).await.unwrap(); // queue of 1: dropped
        bus.publish("other", b"x".to_vec()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"one"));
        assert!(rx.try_recv().is_err());
        assert_eq!(Metrics::get(&metrics.dropped, &["channel"]), 1);
        assert!(bus.is_ready());
    }
}
