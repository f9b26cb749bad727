//! Cluster mode: the publisher connection (a [`ConnectionManager`]), the subscriber
//! connection's sink and routes, readiness, and the commands (`PUBLISH`, `PUBSUB NUMSUB`,
//! `SUBSCRIBE`...), each bounded by the command timeout. The subscriber's message stream
//! is read by [`super::reader`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::DriverConfig;
use super::reader;
use super::routes::{Route, Routes, SubId, SubKey};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::sync::lock;

/// Cluster mode: the Redis connections and the reader task.
#[derive(Clone)]
pub(crate) struct RedisDriver {
    pub(super) inner: Arc<RedisInner>,
}

impl std::fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDriver")
            .field("ready", &*self.inner.ready.borrow())
            .finish()
    }
}

pub(super) struct RedisInner {
    /// `PUBLISH` / `PUBSUB NUMSUB`; reconnects by itself.
    pub(super) publisher: ConnectionManager,
    /// Routes and the sink of the current subscriber connection (None while disconnected).
    /// One lock for both, so a subscription added during a resubscription is never lost.
    pub(super) state: Mutex<SubState>,
    /// true = connected and every subscription confirmed.
    pub(super) ready: watch::Sender<bool>,
    pub(super) metrics: Metrics,
    pub(super) cfg: DriverConfig,
    /// The reader task, aborted when the last handle is dropped.
    pub(super) task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
pub(super) struct SubState {
    pub(super) sink: Option<PubSubSink>,
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
    pub(crate) async fn connect(cfg: DriverConfig, metrics: Metrics) -> Result<Self, Error> {
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
        let task = tokio::spawn(reader::run(
            Arc::downgrade(&inner),
            client,
            Some((sink, stream)),
        ));
        *lock(&inner.task) = Some(task.abort_handle());
        Ok(Self { inner })
    }

    pub(super) async fn subscribe(&self, key: SubKey, route: Route) -> Result<SubId, Error> {
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

    pub(super) async fn unsubscribe(&self, sub: &SubId) {
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

    pub(super) async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), Error> {
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

    pub(super) async fn numsub(&self, channel: &str) -> Result<u64, Error> {
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
    pub(super) fn set_ready(&self, ready: bool) {
        self.metrics.set_live(ready);
        self.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    /// Stores the new sink and subscribes everything currently routed. Returns when every
    /// confirmation has arrived.
    pub(super) async fn resubscribe(&self, mut sink: PubSubSink) -> Result<(), Error> {
        let (channels, patterns) = {
            let mut state = lock(&self.state);
            state.sink = Some(sink.clone());
            let mut channels = Vec::new();
            let mut patterns = Vec::new();
            for key in state.routes.keys() {
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

    /// Routes one inbound message. A payload over `max_message_bytes` is skipped here,
    /// before it is copied, queued or decoded, and counted by kind.
    pub(super) fn dispatch(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let key = match msg.get_pattern::<Option<String>>() {
            Ok(Some(p)) => SubKey::Pattern(p),
            _ => SubKey::Channel(channel.to_owned()),
        };
        let len = msg.get_payload_bytes().len();
        if len > self.cfg.max_message_bytes {
            let kind = lock(&self.state).routes.kind_of(&key, channel);
            self.metrics
                .too_large(kind, channel, len, self.cfg.max_message_bytes);
            return;
        }
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
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
