//! [`FanoutAdapterCtr`]: the adapter state shared by every namespace (socketioxide's
//! `CoreAdapter::State`), and the facilities the node uses beside the adapter: readiness,
//! plain pub/sub channels and the remote-broadcast hook.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use socketioxide_core::adapter::BroadcastOptions;
use socketioxide_core::packet::Packet;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::RedisAdapterConfig;
use crate::convert::{ConvertError, EVENT, rmpv_to_json};
use crate::driver::{Driver, LocalBus, RedisDriver, Route, ShardedDriver, SubKey};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::protocol::{BroadcastMessage, WireFlags, WireOpts, WirePacket};
use crate::rooms::RoomSubs;
use crate::target::RedisTarget;
use crate::wire::Wire;

/// Capacity of plain-channel queues and of per-request queues in embedded mode.
const LOCAL_BUFFER: usize = 4096;

/// A broadcast that came from another node (Rust, Node.js or an emitter) and was just
/// applied to this node's sockets.
#[derive(Debug, Clone)]
pub struct RemoteBroadcast {
    /// Namespace path, e.g. `/`.
    pub nsp: String,
    /// Target selection as received (rooms, except, `Volatile` flag; `Broadcast` is set).
    pub opts: BroadcastOptions,
    /// The packet as delivered to local Socket.IO sockets (encoded by the namespace parser).
    pub packet: Packet,
    /// The raw `[event, ...args]` array from the wire.
    pub data: Vec<rmpv::Value>,
    /// uid of the sending node (`"emitter"` for @socket.io/redis-emitter).
    pub origin: String,
}

impl RemoteBroadcast {
    /// The event name (first element of the data array).
    pub fn event(&self) -> Option<&str> {
        self.data.first().and_then(|v| v.as_str())
    }

    /// The event arguments (everything after the event name) as JSON. Binary becomes an
    /// array of byte values, msgpack timestamps become ISO-8601 strings.
    pub fn args_json(&self) -> Vec<serde_json::Value> {
        self.data.iter().skip(1).map(rmpv_to_json).collect()
    }
}

/// The hook called for every [`RemoteBroadcast`] before it is applied locally; must be quick
/// and must not block. Returning `true` means the hook delivered it itself: the adapter then
/// does not apply it to the local sockets.
pub type RemoteBroadcastHook = Arc<dyn Fn(&RemoteBroadcast) -> bool + Send + Sync>;

/// Decides whether a room channel stays subscribed in sharded mode although no local
/// socket is in the room: called as `keeper(nsp, room)` by the room sweep for each such
/// room (and must be quick and must not call back into the adapter: it runs under the room
/// registry's lock). The node answers "a `/ws` client is
/// subscribed to this topic".
pub type RoomKeeper = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The adapter state: pass it to `SocketIo::builder().with_adapter::<FanoutAdapter<_>>(ctr)`.
/// Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct FanoutAdapterCtr {
    pub(crate) inner: Arc<CtrInner>,
}

pub(crate) struct CtrInner {
    pub driver: Driver,
    pub key: String,
    pub request_timeout: Duration,
    pub inbound_buffer: usize,
    pub publish_on_specific_response_channel: bool,
    /// Remote broadcast-with-ack requests in flight (`remote_ack_requests_max` permits).
    pub remote_acks: Arc<Semaphore>,
    /// `remote_ack_requests_max`, for the log line of a refusal.
    pub remote_ack_requests_max: usize,
    /// Longest ack timeout a remote broadcast-with-ack request gets.
    pub remote_ack_timeout_max: Duration,
    pub metrics: Metrics,
    hook: RwLock<Option<RemoteBroadcastHook>>,
    /// Sharded mode: keeps room channels subscribed beyond the local sockets.
    pub room_keeper: RwLock<Option<RoomKeeper>>,
    /// Sharded mode: the room channels subscribed, and the namespaces.
    pub rooms: RoomSubs,
    /// The room sweep task (sharded mode), aborted with the last handle.
    sweep_task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// This server's uid on the wire, known once the first namespace exists.
    pub uid: OnceLock<String>,
}

impl std::fmt::Debug for FanoutAdapterCtr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutAdapterCtr")
            .field("driver", &self.inner.driver)
            .field("key", &self.inner.key)
            .finish()
    }
}

impl FanoutAdapterCtr {
    /// Embedded mode: no Redis; the adapter behaves exactly like socketioxide's
    /// `LocalAdapter` and plain channels are an in-process loopback.
    pub fn local() -> Self {
        // `unregistered` only fails on invalid metric names, which are constants checked
        // by the unit tests, so this cannot fail at run time.
        let metrics = Metrics::unregistered().expect("static metric names are valid");
        Self::from_parts(
            Driver::Local(LocalBus::new(metrics.clone())),
            RedisAdapterConfig::default(),
            metrics,
        )
    }

    /// Cluster mode: connects to Redis (publisher and subscriber must both connect once;
    /// an unreachable Redis is an error here), then keeps the subscriber connected,
    /// reconnecting with backoff and resubscribing everything.
    ///
    /// A `redis+cluster://` / `rediss+cluster://` URL selects the sharded mode (Redis
    /// Cluster, Node's `createShardedAdapter` protocol, see [`is_sharded`](Self::is_sharded));
    /// the seed nodes must answer here.
    pub async fn redis(config: RedisAdapterConfig) -> Result<Self, Error> {
        config.validate()?;
        let metrics = Metrics::unregistered()?.with_node_dropped(config.dropped_counter.clone());
        let driver = match config.target()? {
            RedisTarget::Single(_) => {
                Driver::Redis(RedisDriver::connect(config.driver_config(), metrics.clone()).await?)
            }
            RedisTarget::Cluster(target) => Driver::Sharded(
                ShardedDriver::connect(&target, config.driver_config(), metrics.clone()).await?,
            ),
        };
        // Registered only once connected, so a caller may retry a failed start with the same
        // registry.
        if let Some(registry) = &config.registry {
            metrics.register(registry)?;
        }
        let sweep_interval = config.room_sweep_interval;
        let ctr = Self::from_parts(driver, config, metrics);
        if ctr.is_sharded() {
            let task = tokio::spawn(sweep_loop(Arc::downgrade(&ctr.inner), sweep_interval));
            *crate::sync::lock(&ctr.inner.sweep_task) = Some(task.abort_handle());
        }
        Ok(ctr)
    }

    fn from_parts(driver: Driver, config: RedisAdapterConfig, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(CtrInner {
                driver,
                key: config.key,
                request_timeout: config.request_timeout,
                inbound_buffer: config.inbound_buffer,
                publish_on_specific_response_channel: config.publish_on_specific_response_channel,
                remote_acks: Arc::new(Semaphore::new(config.remote_ack_requests_max)),
                remote_ack_requests_max: config.remote_ack_requests_max,
                remote_ack_timeout_max: config.remote_ack_timeout_max,
                metrics,
                hook: RwLock::new(None),
                room_keeper: RwLock::new(None),
                rooms: RoomSubs::default(),
                sweep_task: std::sync::Mutex::new(None),
                uid: OnceLock::new(),
            }),
        }
    }

    /// True in cluster mode (classic or sharded).
    pub fn is_cluster(&self) -> bool {
        !matches!(self.inner.driver, Driver::Local(_))
    }

    /// True in sharded mode (a `redis+cluster://` / `rediss+cluster://` URL: Redis Cluster,
    /// `SPUBLISH`/`SSUBSCRIBE`, the protocol of Node's `createShardedAdapter`).
    pub fn is_sharded(&self) -> bool {
        matches!(self.inner.driver, Driver::Sharded(_))
    }

    /// Makes sure this node receives the broadcasts to `room` of namespace `nsp`: in sharded
    /// mode, returns once the room's channel `key#nsp#room#` is `SSUBSCRIBE`d and confirmed
    /// (at once when it already is). Call it right after every `socket.join(room)` of a room
    /// others may broadcast to, before acknowledging the join to the client. The channel is
    /// dropped lazily by the room sweep once no local socket is in the room and the
    /// [`RoomKeeper`] does not keep it. No-op in classic and embedded mode (they receive
    /// every room), and for private rooms (exactly 20 characters, the length of a Node socket
    /// id: those travel on the main channel). Fails with [`Error::NotReady`] when the
    /// subscription cannot be confirmed within the command timeout (the subscription stays
    /// wanted and is retried by the reconcile loop), and with [`Error::UnknownNamespace`]
    /// when `nsp` has no adapter (not created yet, or closed).
    pub async fn ensure_room(&self, nsp: &str, room: &str) -> Result<(), Error> {
        match &self.inner.driver {
            Driver::Sharded(driver) => self.inner.rooms.ensure(driver, nsp, room, true).await,
            _ => Ok(()),
        }
    }

    /// Sharded mode: subscribes the channels of `rooms` in the background (remote joins,
    /// `socketsJoin`); failures are retried by the reconcile and the sweep.
    pub(crate) fn track_rooms(&self, nsp: &str, rooms: &[socketioxide_core::adapter::Room]) {
        if !self.is_sharded() {
            return;
        }
        for room in rooms {
            let (ctr, nsp, room) = (self.clone(), nsp.to_owned(), room.to_string());
            tokio::spawn(async move {
                if let Driver::Sharded(driver) = &ctr.inner.driver
                    && let Err(e) = ctr.inner.rooms.ensure(driver, &nsp, &room, false).await
                {
                    tracing::debug!(nsp, room, "room channel not subscribed: {e}");
                }
            });
        }
    }

    /// Runs one room sweep now (sharded mode; the sweep task does it every
    /// `room_sweep_interval`): `(added, dropped)` room channels.
    #[doc(hidden)]
    pub async fn sweep_rooms(&self) -> (usize, usize) {
        let Driver::Sharded(driver) = &self.inner.driver else {
            return (0, 0);
        };
        let keeper = self
            .inner
            .room_keeper
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let keep = |nsp: &str, room: &str| keeper.as_ref().is_some_and(|k| k(nsp, room));
        let res = self.inner.rooms.sweep(driver, &keep).await;
        (res.added, res.dropped)
    }

    /// Number of room channels subscribed (sharded mode; 0 otherwise).
    pub fn room_channels(&self) -> usize {
        self.inner.rooms.len()
    }

    /// Sets the [`RoomKeeper`] the sharded room sweep asks before dropping a room channel
    /// that has no local socket. Without one, only local sockets keep a room subscribed.
    pub fn set_room_keeper(&self, keeper: RoomKeeper) {
        *self
            .inner
            .room_keeper
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(keeper);
    }

    /// True when embedded, or when the Redis subscriber connection is up and every
    /// subscription is confirmed (false while reconnecting).
    pub fn is_ready(&self) -> bool {
        self.inner.driver.is_ready()
    }

    /// A watch of [`is_ready`](Self::is_ready).
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.inner.driver.ready_watch()
    }

    /// The adapter's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Subscribes to a plain Redis channel over the adapter's subscriber connection
    /// (resubscribed after every reconnect; `SSUBSCRIBE` in sharded mode). Each message payload arrives as `Bytes`; the
    /// queue holds `inbound_buffer` messages, a full queue drops (and counts) messages.
    /// Dropping the receiver ends the subscription at the next message.
    /// In embedded mode this is an in-process loopback fed by [`publish_channel`](Self::publish_channel).
    pub async fn subscribe_channel(&self, channel: String) -> Result<mpsc::Receiver<Bytes>, Error> {
        let size = match self.inner.driver {
            Driver::Local(_) => LOCAL_BUFFER,
            Driver::Redis(_) | Driver::Sharded(_) => self.inner.inbound_buffer,
        };
        let (tx, rx) = mpsc::channel(size);
        self.inner
            .driver
            .subscribe(SubKey::Channel(channel), Route::Plain(tx))
            .await?;
        Ok(rx)
    }

    /// Publishes a payload on a plain channel (`PUBLISH`, `SPUBLISH` in sharded mode; bounded
    /// by the command timeout; failures are counted in `fanout_adapter_publish_errors_total`).
    pub async fn publish_channel(&self, channel: String, payload: Vec<u8>) -> Result<(), Error> {
        self.inner.driver.publish(&channel, payload).await
    }

    /// Publishes `[event, data]` to `room` of namespace `nsp` for the **other** servers only:
    /// the caller delivered to its local sockets itself. The message is the protocol's
    /// broadcast (classic: `[uid, {type: 2, data, nsp}, {rooms: [room], except: [], flags}]`
    /// on `key#nsp#room#`; sharded: `{type: 3, data: {packet, opts}, uid, nsp}` on the room's
    /// channel `key#nsp#room#`), so fanout and Node.js servers apply it like any
    /// `io.to(room).emit(event, data)`. Nothing to do in embedded mode.
    pub async fn broadcast_remote(
        &self,
        nsp: &str,
        room: &str,
        event: &str,
        data: &serde_json::Value,
    ) -> Result<(), Error> {
        if !self.is_cluster() {
            return Ok(());
        }
        let uid = self.inner.uid.get().ok_or(Error::NotReady)?;
        let data = rmpv::ext::to_value(data).map_err(ConvertError::from)?;
        let packet = WirePacket {
            kind: EVENT,
            data: rmpv::Value::Array(vec![rmpv::Value::from(event), data]),
            nsp: Some(nsp.to_owned()),
        };
        let opts = WireOpts {
            rooms: vec![room.to_owned()],
            except: Vec::new(),
            flags: Some(WireFlags::default()),
        };
        let wire = Wire::new(self.is_sharded(), &self.inner.key, nsp, uid);
        let (channel, payload) = wire.broadcast(&BroadcastMessage(uid.clone(), packet, opts))?;
        self.inner.driver.publish(&channel, payload).await
    }

    /// Sets the hook called whenever a broadcast from another node arrives.
    pub fn set_remote_broadcast_hook(&self, hook: RemoteBroadcastHook) {
        *self.inner.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Calls the hook; true when it delivered the broadcast itself.
    pub(crate) fn call_hook(&self, bc: &RemoteBroadcast) -> bool {
        let hook = self
            .inner
            .hook
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        hook.is_some_and(|hook| hook(bc))
    }
}

/// Sharded mode: runs the room sweep every `interval` until the adapter state is dropped.
async fn sweep_loop(weak: std::sync::Weak<CtrInner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let ctr = FanoutAdapterCtr { inner };
        let (added, dropped) = ctr.sweep_rooms().await;
        if added + dropped > 0 {
            tracing::debug!(added, dropped, "room sweep");
        }
    }
}

impl Drop for CtrInner {
    fn drop(&mut self) {
        if let Some(task) = crate::sync::lock(&self.sweep_task).take() {
            task.abort();
        }
    }
}
