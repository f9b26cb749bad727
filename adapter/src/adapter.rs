//! [`FanoutAdapter`]: the `CoreAdapter` implementation (the sending side).
//!
//! One instance per namespace. In embedded mode every method is the `CoreLocalAdapter`
//! call socketioxide's `LocalAdapter` makes. In cluster mode:
//! * `broadcast`, `add_sockets`, `del_sockets`, `disconnect_socket`: apply locally first,
//!   then publish (best effort). A failed publish is counted and returned as an error —
//!   the local part has already happened.
//! * `rooms`, `fetch_sockets`, `broadcast_with_ack`, `server_count`: need answers from
//!   peers; they fail fast with [`Error::NotReady`] while the subscriber is reconnecting,
//!   and with [`Error::Timeout`] when a counted peer does not answer in time (never a
//!   partial `Ok`).
//!
//! The receiving side lives in `crate::remote`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use socketioxide_core::adapter::errors::BroadcastError;
use socketioxide_core::adapter::remote_packet::{Response, ResponseType};
use socketioxide_core::adapter::stream::{AckStream, ChanStream, ResponseHandlers};
use socketioxide_core::adapter::{
    BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter,
    RemoteSocketData, Room, RoomParam, SocketEmitter, Spawnable,
};
use socketioxide_core::packet::Packet;
use socketioxide_core::{Sid, Uid, Value};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::convert::{opts_to_wire, packet_to_wire};
use crate::ctr::FanoutAdapterCtr;
use crate::driver::{Driver, Route, SubId};
use crate::error::Error;
use crate::protocol::{
    BroadcastMessage, RequestType, SocketEntry, WireOpts, WireRequest, WireResponse,
};
use crate::rooms::{LocalRooms, NsEntry};
use crate::sync::lock;
use crate::wire::Wire;

/// Extra time the remote part of an ack stream waits after the ack timeout, for acks
/// that were sent in time but are still in flight.
const ACK_GRACE: Duration = Duration::from_millis(500);

/// A response routed to a pending request (an implementation detail of
/// [`FanoutAckStream`], public only because the stream type names it).
#[derive(Debug)]
pub enum Reply {
    /// Type 8: number of acks a node will send.
    AckCount(u32),
    /// Type 9: one client ack, already converted to a socketioxide payload.
    Ack(Value),
    /// Any other response (0, 1, 5, 6).
    Response(WireResponse),
}

/// The stream of acks returned by [`FanoutAdapter::broadcast_with_ack`]: local only, or
/// local merged with the remote acks.
pub type FanoutAckStream<E> =
    Either<<E as SocketEmitter>::AckStream, AckStream<E, ChanStream<Reply>, Reply>>;

/// The socketioxide adapter. Use it as `SocketIo::builder().with_adapter::<FanoutAdapter<_>>(ctr)`.
pub struct FanoutAdapter<E> {
    pub(crate) local: CoreLocalAdapter<E>,
    pub(crate) ctr: FanoutAdapterCtr,
    /// Cluster state of this namespace; None in embedded mode.
    pub(crate) remote: Option<RemoteNs>,
}

/// Per-namespace cluster state.
pub(crate) struct RemoteNs {
    /// Our uid on the wire: socketioxide's server id (16 chars, shared by all namespaces).
    pub uid: String,
    /// The protocol (classic or sharded) and its channel names.
    pub wire: Wire,
    /// Pending requests by request id.
    pub handlers: Arc<Mutex<ResponseHandlers<Reply>>>,
    /// Subscriptions to drop on close.
    subs: Mutex<Vec<SubId>>,
    /// The receive loop.
    task: Mutex<Option<AbortHandle>>,
}

/// The result of [`CoreAdapter::init`]: a future resolving when the namespace's
/// subscriptions are in place (immediately in embedded mode). Await it:
/// `io.ns("/", handler).await?`.
#[must_use = "await the init future (io.ns(..).await?) so the namespace gets its subscriptions"]
pub struct InitRes(Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>);

impl Future for InitRes {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl Spawnable for InitRes {
    fn spawn(self) {
        tokio::spawn(async move {
            if let Err(e) = self.await {
                tracing::error!("fanout adapter namespace init failed: {e}");
            }
        });
    }
}

impl std::fmt::Debug for InitRes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitRes")
    }
}

/// Removes a pending request's handler when dropped (also on cancellation).
struct HandlerGuard<'a> {
    handlers: &'a Mutex<ResponseHandlers<Reply>>,
    id: Sid,
}
impl Drop for HandlerGuard<'_> {
    fn drop(&mut self) {
        lock(self.handlers).remove(&self.id);
    }
}

impl<E: SocketEmitter> FanoutAdapter<E> {
    fn remote_ns(&self) -> Result<&RemoteNs, Error> {
        self.remote.as_ref().ok_or(Error::NotCluster)
    }

    /// True when an operation stays on this node (embedded mode, `local()` flag, or a
    /// single socket of this node).
    fn stays_local(&self, opts: &BroadcastOptions) -> bool {
        self.remote.is_none() || opts.is_local(self.local.server_id())
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), Error> {
        self.ctr.inner.driver.publish(channel, payload).await
    }

    /// Publishes a request that expects no answer (2, 3, 4).
    async fn send_req(&self, req: WireRequest, kind: RequestType) -> Result<(), Error> {
        let remote = self.remote_ns()?;
        let payload = remote.wire.encode_request(&req)?;
        self.publish(remote.wire.request_channel(), payload)
            .await
            .inspect_err(|_| {
                self.ctr
                    .inner
                    .metrics
                    .request_failed(kind.label(), "publish")
            })?;
        self.ctr.inner.metrics.request_sent(kind.label());
        Ok(())
    }

    /// Number of remote peers expected to answer a request (NUMSUB - 1), failing fast when
    /// the subscriber connection is down.
    async fn remote_peers(&self, kind: RequestType) -> Result<usize, Error> {
        let remote = self.remote_ns()?;
        let metrics = &self.ctr.inner.metrics;
        if !self.ctr.is_ready() {
            metrics.request_failed(kind.label(), "not_ready");
            return Err(Error::NotReady);
        }
        let n = self
            .ctr
            .inner
            .driver
            .numsub(remote.wire.request_channel())
            .await
            .inspect_err(|_| metrics.request_failed(kind.label(), "numsub"))?;
        Ok(n.saturating_sub(1) as usize)
    }

    /// Sends a request and waits for one response per remote peer (`get_res`).
    async fn get_res(
        &self,
        kind: RequestType,
        opts: Option<WireOpts>,
        what: &'static str,
    ) -> Result<Vec<WireResponse>, Error> {
        let remote = self.remote_ns()?;
        let metrics = &self.ctr.inner.metrics;
        let expected = self.remote_peers(kind).await?;
        if expected == 0 {
            return Ok(Vec::new());
        }
        let id = Sid::new();
        let (tx, mut rx) = mpsc::channel(expected.clamp(1, self.ctr.inner.inbound_buffer));
        // Registered before publishing: a fast peer may answer before we start waiting.
        lock(&remote.handlers).insert(id, tx);
        let _guard = HandlerGuard {
            handlers: &remote.handlers,
            id,
        };
        let req = WireRequest {
            uid: Some(remote.uid.clone()),
            request_id: Some(id.to_string()),
            kind: kind as u8,
            opts,
            ..Default::default()
        };
        let payload = remote.wire.encode_request(&req)?;
        self.publish(remote.wire.request_channel(), payload)
            .await
            .inspect_err(|_| metrics.request_failed(kind.label(), "publish"))?;
        metrics.request_sent(kind.label());

        let mut ready = self.ctr.ready_watch();
        let deadline = tokio::time::sleep(self.ctr.inner.request_timeout);
        tokio::pin!(deadline);
        let mut out = Vec::with_capacity(expected);
        loop {
            tokio::select! {
                reply = rx.recv() => match reply {
                    Some(Reply::Response(res)) => {
                        out.push(res);
                        if out.len() >= expected {
                            return Ok(out);
                        }
                    }
                    Some(_) => {}
                    None => return Err(Error::NotReady),
                },
                _ = &mut deadline => {
                    metrics.request_timeout(kind.label());
                    return Err(Error::Timeout { what, received: out.len(), expected });
                }
                _ = ready.wait_for(|r| !*r) => {
                    metrics.request_failed(kind.label(), "not_ready");
                    return Err(Error::NotReady);
                }
            }
        }
    }
}

/// Is this "every socket of the namespace" (what `io.rooms()` asks)?
fn selects_all(opts: &BroadcastOptions) -> bool {
    opts.has_flag(BroadcastFlags::Broadcast)
        && opts.rooms.is_empty()
        && opts.except.is_empty()
        && opts.sid.is_none()
}

impl<E: SocketEmitter> CoreAdapter<E> for FanoutAdapter<E> {
    type Error = Error;
    type State = FanoutAdapterCtr;
    type AckStream = FanoutAckStream<E>;
    type InitRes = InitRes;

    fn new(state: &Self::State, local: CoreLocalAdapter<E>) -> Self {
        let remote = state.is_cluster().then(|| {
            let uid = local.server_id().to_string();
            state.inner.uid.get_or_init(|| uid.clone());
            RemoteNs {
                wire: Wire::new(state.is_sharded(), &state.inner.key, local.path(), &uid),
                uid,
                handlers: Arc::new(Mutex::new(HashMap::new())),
                subs: Mutex::new(Vec::new()),
                task: Mutex::new(None),
            }
        });
        Self {
            local,
            ctr: state.clone(),
            remote,
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        if self.remote.is_none() {
            on_success();
            return InitRes(Box::pin(std::future::ready(Ok(()))));
        }
        InitRes(Box::pin(async move {
            let remote = self.remote_ns()?;
            let driver = &self.ctr.inner.driver;
            let (tx, rx) = mpsc::channel(self.ctr.inner.inbound_buffer);
            for key in remote.wire.subscriptions() {
                let sub = driver.subscribe(key, Route::Adapter(tx.clone())).await?;
                lock(&remote.subs).push(sub);
            }
            if let Wire::Sharded { channels, .. } = &remote.wire {
                let weak = Arc::downgrade(&self);
                let local_rooms: LocalRooms =
                    Arc::new(move || weak.upgrade().map(|a| a.local_room_names()));
                self.ctr.inner.rooms.register(
                    self.local.path(),
                    NsEntry {
                        channels: channels.clone(),
                        tx: tx.clone(),
                        local_rooms,
                    },
                );
            }
            let task = tokio::spawn(crate::remote::recv_loop(Arc::downgrade(&self), rx));
            *lock(&remote.task) = Some(task.abort_handle());
            tracing::debug!(ns = %self.local.path(), uid = %remote.uid, "fanout adapter namespace ready");
            on_success();
            Ok(())
        }))
    }

    async fn close(&self) -> Result<(), Self::Error> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        if let Some(task) = lock(&remote.task).take() {
            task.abort();
        }
        let subs = std::mem::take(&mut *lock(&remote.subs));
        for sub in &subs {
            self.ctr.inner.driver.unsubscribe(sub).await;
        }
        if let Driver::Sharded(driver) = &self.ctr.inner.driver {
            for channel in self.ctr.inner.rooms.unregister(driver, self.local.path()) {
                driver.sunsubscribe(&channel).await;
            }
        }
        Ok(())
    }

    async fn server_count(&self) -> Result<u16, Self::Error> {
        if self.remote.is_none() {
            return Ok(1);
        }
        let peers = self.remote_peers(RequestType::AllRooms).await?;
        Ok(u16::try_from(peers + 1).unwrap_or(u16::MAX))
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        if self.stays_local(&opts) {
            return self
                .local
                .broadcast(packet, opts)
                .map_err(BroadcastError::from);
        }
        let remote = self.remote_ns()?;
        // Encode before delivering locally (delivery consumes the packet).
        let wire = opts_to_wire(&opts, true, None).map(|wire_opts| -> Result<_, Error> {
            let wire_packet = packet_to_wire(self.local.parser(), &packet)?;
            let msg = BroadcastMessage(remote.uid.clone(), wire_packet, wire_opts);
            Ok(remote.wire.broadcast(&msg)?)
        });
        // Local delivery never depends on Redis.
        let local_res = self.local.broadcast(packet, opts);
        match wire {
            Some(Ok((channel, bytes))) => self.publish(&channel, bytes).await?,
            Some(Err(e)) => {
                tracing::warn!("broadcast not published: {e}");
                return Err(e.into());
            }
            None => {}
        }
        local_res.map_err(BroadcastError::from)
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, Self::Error> {
        if self.stays_local(&opts) {
            let (stream, _) = self.local.broadcast_with_ack(packet, opts, timeout);
            return Ok(Either::Left(stream));
        }
        let remote = self.remote_ns()?;
        let kind = RequestType::Broadcast;
        let peers = self.remote_peers(kind).await?;
        let ack_timeout = timeout.unwrap_or_else(|| self.local.ack_timeout());
        let wire_opts = opts_to_wire(&opts, true, Some(ack_timeout.as_millis() as u64));
        if peers == 0 || wire_opts.is_none() {
            // Nobody else to ask (or nothing selected remotely): local acks only.
            let (stream, _) = self.local.broadcast_with_ack(packet, opts, timeout);
            return Ok(Either::Left(stream));
        }
        self.remote_broadcast_with_ack(remote, packet, opts, wire_opts, peers, ack_timeout)
            .await
    }

    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        let res = self
            .remote_rooms_op(opts, rooms.clone(), RequestType::RemoteJoin)
            .await;
        self.track_joined(&rooms);
        res
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        self.remote_rooms_op(opts, rooms, RequestType::RemoteLeave)
            .await
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        if self.stays_local(&opts) {
            return self
                .local
                .disconnect_socket(opts)
                .map_err(BroadcastError::Socket);
        }
        let wire = opts_to_wire(&opts, false, None);
        let local_res = self.local.disconnect_socket(opts);
        if let Some(wire_opts) = wire {
            let req = WireRequest {
                uid: Some(self.remote_ns()?.uid.clone()),
                kind: RequestType::RemoteDisconnect as u8,
                opts: Some(wire_opts),
                close: Some(false),
                ..Default::default()
            };
            self.send_req(req, RequestType::RemoteDisconnect).await?;
        }
        local_res.map_err(BroadcastError::Socket)
    }

    async fn rooms(&self, opts: BroadcastOptions) -> Result<Vec<Room>, Self::Error> {
        if self.stays_local(&opts) {
            return Ok(self.local.rooms(opts).into_iter().collect());
        }
        let mut rooms: HashSet<Room> = self.local.rooms(opts.clone());
        // The sharded protocol has no all-rooms request: it is a fetch of every socket.
        if selects_all(&opts) && !self.remote_ns()?.wire.is_sharded() {
            let responses = self
                .get_res(RequestType::AllRooms, None, "allRooms")
                .await?;
            for res in responses {
                rooms.extend(res.rooms.unwrap_or_default().into_iter().map(Room::from));
            }
        } else if let Some(wire_opts) = opts_to_wire(&opts, false, None) {
            // Node's ALL_ROOMS cannot filter: ask for the matching sockets and union their rooms.
            let responses = self
                .get_res(RequestType::RemoteFetch, Some(wire_opts), "fetchSockets")
                .await?;
            for entry in responses
                .into_iter()
                .flat_map(|r| r.sockets.unwrap_or_default())
            {
                if let SocketEntry::Full(socket) = entry {
                    rooms.extend(socket.rooms.into_iter().map(Room::from));
                }
            }
        }
        Ok(rooms.into_iter().collect())
    }

    async fn fetch_sockets(
        &self,
        opts: BroadcastOptions,
    ) -> Result<Vec<RemoteSocketData>, Self::Error> {
        if self.stays_local(&opts) {
            return Ok(self.local.fetch_sockets(opts));
        }
        let wire = opts_to_wire(&opts, false, None);
        let mut sockets = self.local.fetch_sockets(opts);
        let Some(wire_opts) = wire else {
            return Ok(sockets);
        };
        let responses = self
            .get_res(RequestType::RemoteFetch, Some(wire_opts), "fetchSockets")
            .await?;
        let ns = self.local.path().clone();
        for res in responses {
            let server_id = res
                .uid
                .as_deref()
                .and_then(|u| Uid::from_str(u).ok())
                .unwrap_or(Uid::ZERO);
            for entry in res.sockets.unwrap_or_default() {
                let SocketEntry::Full(socket) = entry else {
                    continue;
                };
                match Sid::from_str(&socket.id) {
                    Ok(id) => sockets.push(RemoteSocketData {
                        id,
                        server_id,
                        ns: ns.clone(),
                    }),
                    Err(_) => {
                        self.ctr.inner.metrics.unmappable_sockets.inc();
                        tracing::debug!(id = %socket.id, "remote socket id is not a socketioxide Sid, skipped");
                    }
                }
            }
        }
        Ok(sockets)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        &self.local
    }
}

impl<E> DefinedAdapter for FanoutAdapter<E> {}

impl<E: SocketEmitter> FanoutAdapter<E> {
    /// Sharded mode: subscribes (in the background) the channels of those of `rooms` that
    /// now have a local socket, after a join this node did not get through `ensure_room`.
    pub(crate) fn track_joined(&self, rooms: &[Room]) {
        if !self.ctr.is_sharded() {
            return;
        }
        let local = self.local_room_names();
        let joined: Vec<Room> = rooms
            .iter()
            .filter(|r| local.contains(r.as_ref()))
            .cloned()
            .collect();
        self.ctr.track_rooms(self.local.path(), &joined);
    }

    /// Every room with a local socket in this namespace.
    fn local_room_names(&self) -> HashSet<String> {
        let mut all = BroadcastOptions::default();
        all.add_flag(BroadcastFlags::Broadcast);
        self.local
            .rooms(all)
            .into_iter()
            .map(|r| r.to_string())
            .collect()
    }
}

impl<E: SocketEmitter> FanoutAdapter<E> {
    async fn remote_rooms_op(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
        kind: RequestType,
    ) -> Result<(), Error> {
        let apply = |opts: BroadcastOptions, rooms: Vec<Room>| match kind {
            RequestType::RemoteJoin => self.local.add_sockets(opts, rooms),
            _ => self.local.del_sockets(opts, rooms),
        };
        if self.stays_local(&opts) {
            apply(opts, rooms);
            return Ok(());
        }
        let wire = opts_to_wire(&opts, false, None);
        let names: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
        apply(opts, rooms);
        if let Some(wire_opts) = wire {
            let req = WireRequest {
                uid: Some(self.remote_ns()?.uid.clone()),
                kind: kind as u8,
                opts: Some(wire_opts),
                rooms: Some(names),
                ..Default::default()
            };
            self.send_req(req, kind).await?;
        }
        Ok(())
    }

    async fn remote_broadcast_with_ack(
        &self,
        remote: &RemoteNs,
        packet: Packet,
        opts: BroadcastOptions,
        wire_opts: Option<WireOpts>,
        peers: usize,
        ack_timeout: Duration,
    ) -> Result<FanoutAckStream<E>, Error> {
        let kind = RequestType::Broadcast;
        let wire_packet = packet_to_wire(self.local.parser(), &packet)?;
        let id = Sid::new();
        let req = WireRequest {
            uid: Some(remote.uid.clone()),
            request_id: Some(id.to_string()),
            kind: kind as u8,
            packet: Some(wire_packet),
            opts: wire_opts,
            ..Default::default()
        };
        let payload = remote.wire.encode_request(&req)?;
        let (tx, rx) = mpsc::channel(self.ctr.inner.inbound_buffer + peers);
        lock(&remote.handlers).insert(id, tx);
        if let Err(e) = self.publish(remote.wire.request_channel(), payload).await {
            lock(&remote.handlers).remove(&id);
            self.ctr
                .inner
                .metrics
                .request_failed(kind.label(), "publish");
            return Err(e);
        }
        self.ctr.inner.metrics.request_sent(kind.label());
        let (local, _) = self
            .local
            .broadcast_with_ack(packet, opts, Some(ack_timeout));
        Ok(Either::Right(AckStream::new(
            local,
            ChanStream::new(rx),
            decode_reply::<E::AckError>,
            ack_timeout + ACK_GRACE,
            u16::try_from(peers).unwrap_or(u16::MAX),
            id,
            remote.handlers.clone(),
        )))
    }
}

/// Turns a routed [`Reply`] into the core `Response` the shared `AckStream` understands.
/// Node acks carry no socket id: remote acks are reported with `Sid::ZERO`.
fn decode_reply<D>(reply: Reply) -> Result<Response<D>, Box<dyn std::error::Error + Send>> {
    let r#type = match reply {
        Reply::AckCount(n) => ResponseType::BroadcastAckCount(n),
        Reply::Ack(value) => ResponseType::BroadcastAck((Sid::ZERO, Ok(value))),
        Reply::Response(_) => return Err(Box::new(Error::UnexpectedResponse)),
    };
    Ok(Response {
        node_id: Uid::ZERO,
        r#type,
    })
}
