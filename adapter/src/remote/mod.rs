//! The receiving side: one loop per namespace reads the namespace's bounded inbound queue
//! and dispatches by channel ([`recv_broadcast`], [`recv_request`], [`recv_response`]);
//! a request is decoded once into a typed [`Request`] and handed to the `recv_*` function
//! of its type.
//!
//! A message that cannot be decoded, has the wrong shape or targets another namespace is
//! counted and skipped; nothing here panics or ends the loop. Anything that needs Redis
//! (publishing a response, waiting for client acks) runs in its own task so the loop
//! never waits on the network.
//!
//! [`recv_broadcast`]: FanoutAdapter::recv_broadcast
//! [`recv_request`]: FanoutAdapter::recv_request
//! [`recv_response`]: FanoutAdapter::recv_response

mod request;
mod targets;

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide_core::Sid;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room, SocketEmitter};
use tokio::sync::mpsc;

use crate::adapter::{FanoutAdapter, RemoteNs, Reply};
use crate::convert::{ack_to_wire, wire_to_ack, wire_to_opts, wire_to_packet};
use crate::ctr::RemoteBroadcast;
use crate::driver::Inbound;
use crate::metrics::Metrics;
use crate::protocol::{
    BroadcastMessage, RequestType, SocketEntry, WireOpts, WirePacket, WireRequest, WireResponse,
};
use crate::sync::lock;
use crate::wire::Incoming;

use request::{Request, RequestError, RequestKind, Selection};
pub(crate) use targets::Targets;

/// Reads the namespace queue until the adapter is dropped or closed.
pub(crate) async fn recv_loop<E: SocketEmitter>(
    adapter: Weak<FanoutAdapter<E>>,
    mut rx: mpsc::Receiver<Inbound>,
) {
    while let Some(msg) = rx.recv().await {
        let Some(adapter) = adapter.upgrade() else {
            return;
        };
        adapter.recv(msg);
    }
}

/// Where a request came from, for the answer.
struct Origin<'a> {
    remote: &'a RemoteNs,
    /// Sender uid (absent for emitters).
    uid: Option<&'a str>,
}

impl<E: SocketEmitter> FanoutAdapter<E> {
    fn recv(self: &Arc<Self>, msg: Inbound) {
        let Some(remote) = &self.remote else { return };
        match remote.wire.decode(&msg, &remote.uid) {
            Ok(Incoming::Broadcast(b)) => self.recv_broadcast(remote, b, &msg.channel),
            Ok(Incoming::Request(r)) => self.recv_request(remote, r, &msg.channel),
            Ok(Incoming::Response(r)) => self.recv_response(remote, r, &msg.channel),
            Ok(Incoming::Skip) => {}
            Err(e) => {
                self.metrics().received(e.kind);
                self.metrics().malformed(e.kind, &msg.channel, &*e.err);
            }
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.ctr.inner.metrics
    }

    /// A broadcast without acks (classic `[uid, packet, opts]` on `key#nsp#[room#]`).
    fn recv_broadcast(&self, remote: &RemoteNs, msg: BroadcastMessage, channel: &str) {
        self.metrics().received("broadcast");
        let BroadcastMessage(uid, wire_packet, opts) = msg;
        if uid == remote.uid {
            return;
        }
        let nsp = wire_packet.nsp.as_deref().unwrap_or("/");
        if nsp != self.local.path().as_str() {
            tracing::debug!(nsp, channel, "broadcast for another namespace ignored");
            return;
        }
        let packet = match wire_to_packet(self.local.parser(), &wire_packet, nsp) {
            Ok(p) => p,
            Err(e) => return self.metrics().malformed("broadcast", channel, &e),
        };
        let volatile = opts.flags.as_ref().and_then(|f| f.volatile) == Some(true);
        let broadcast = RemoteBroadcast {
            nsp: nsp.to_owned(),
            opts: wire_to_opts(&opts, true),
            packet,
            data: into_args(wire_packet),
            origin: uid,
        };
        if self.ctr.call_hook(&broadcast) {
            return;
        }
        let targets = self.resolve(&opts, volatile);
        self.apply_broadcast(broadcast.packet, targets, volatile);
    }

    /// A request (classic: on `key-request#nsp#`): check, dispatch by type.
    fn recv_request(self: &Arc<Self>, remote: &RemoteNs, wire: WireRequest, channel: &str) {
        self.metrics().received("request");
        // Node applies join/leave/disconnect for its own uid too (it does not apply them
        // locally when sending); we apply locally when sending, so our own are skipped.
        if wire.uid.as_deref() == Some(remote.uid.as_str()) {
            return;
        }
        let Request { uid, kind } = match Request::try_from(wire) {
            Ok(r) => r,
            Err(RequestError::ResponseType(t)) => {
                return tracing::debug!("response type {t} on the request channel ignored");
            }
            Err(e) => return self.metrics().malformed("request", channel, &e),
        };
        let from = Origin {
            remote,
            uid: uid.as_deref(),
        };
        match kind {
            RequestKind::Sockets { request_id, rooms } => {
                self.recv_sockets(&from, request_id, rooms)
            }
            RequestKind::AllRooms { request_id } => self.recv_all_rooms(&from, request_id),
            RequestKind::Rooms {
                join,
                selection,
                rooms,
            } => self.recv_rooms(&from, selection, rooms, join),
            RequestKind::Disconnect { selection } => self.recv_disconnect(&from, selection),
            RequestKind::Fetch { request_id, opts } => self.recv_fetch(&from, request_id, &opts),
            RequestKind::ServerSideEmit { request_id } => {
                self.recv_server_side_emit(&from, request_id)
            }
            RequestKind::BroadcastWithAck {
                request_id,
                packet,
                opts,
            } => self.recv_broadcast_with_ack(&from, request_id, packet, &opts, channel),
        }
    }

    /// Type 0 (legacy `sockets()`): the ids of our sockets in `rooms`.
    fn recv_sockets(&self, from: &Origin<'_>, request_id: String, rooms: Vec<String>) {
        let opts = WireOpts {
            rooms,
            ..Default::default()
        };
        let sockets = self
            .target_sids(self.resolve(&opts, false))
            .into_iter()
            .map(|sid| SocketEntry::Id(sid.to_string()))
            .collect();
        self.respond(
            from,
            WireResponse {
                request_id,
                sockets: Some(sockets),
                ..Default::default()
            },
        );
    }

    /// Type 1: every room of this namespace on this node.
    fn recv_all_rooms(&self, from: &Origin<'_>, request_id: String) {
        let mut all = BroadcastOptions::default();
        all.add_flag(BroadcastFlags::Broadcast);
        let rooms = self
            .local
            .rooms(all)
            .into_iter()
            .map(|r| r.to_string())
            .collect();
        self.respond(
            from,
            WireResponse {
                request_id,
                rooms: Some(rooms),
                ..Default::default()
            },
        );
    }

    /// Types 2 and 3: add the selected sockets to `rooms`, or remove them.
    fn recv_rooms(&self, from: &Origin<'_>, selection: Selection, rooms: Vec<String>, join: bool) {
        let rooms: Vec<Room> = rooms.into_iter().map(Room::from).collect();
        let joined = join.then(|| rooms.clone());
        match selection {
            Selection::Opts(opts) => self.apply_rooms(self.resolve(&opts, false), rooms, join),
            Selection::Socket { sid, request_id } => {
                // Legacy single-socket form: act and answer only if the socket is ours.
                let Some(sid) = self.local_sid(&sid) else {
                    return;
                };
                self.apply_rooms(Targets::Sids(vec![sid]), rooms, join);
                self.ack_legacy(from, request_id);
            }
        }
        if let Some(rooms) = joined {
            self.track_joined(&rooms);
        }
    }

    /// Type 4: disconnect the selected sockets.
    fn recv_disconnect(&self, from: &Origin<'_>, selection: Selection) {
        match selection {
            Selection::Opts(opts) => self.apply_disconnect(self.resolve(&opts, false)),
            Selection::Socket { sid, request_id } => {
                let Some(sid) = self.local_sid(&sid) else {
                    return;
                };
                self.apply_disconnect(Targets::Sids(vec![sid]));
                self.ack_legacy(from, request_id);
            }
        }
    }

    /// Type 5: details of the selected sockets.
    fn recv_fetch(&self, from: &Origin<'_>, request_id: String, opts: &WireOpts) {
        let sockets = self.fetch_local(self.resolve(opts, false));
        self.respond(
            from,
            WireResponse {
                request_id,
                sockets: Some(sockets),
                uid: Some(from.remote.uid.clone()),
                ..Default::default()
            },
        );
    }

    /// Type 6: socketioxide has no serverSideEmit. A requester waiting for acks counts us
    /// (NUMSUB), so answer `null` instead of letting it time out.
    fn recv_server_side_emit(&self, from: &Origin<'_>, request_id: Option<String>) {
        tracing::debug!("serverSideEmit received; not supported by socketioxide, ignored");
        if let Some(request_id) = request_id {
            let res = WireResponse {
                kind: Some(RequestType::ServerSideEmit as u8),
                request_id,
                data: Some(rmpv::Value::Nil),
                ..Default::default()
            };
            // Classic Node always answers 6 on the shared channel.
            self.publish_response(from, res, false);
        }
    }

    /// Type 7: broadcast locally with acks; answer 8 (count) once, then 9 per client ack.
    fn recv_broadcast_with_ack(
        self: &Arc<Self>,
        from: &Origin<'_>,
        request_id: String,
        wire_packet: WirePacket,
        opts: &WireOpts,
        channel: &str,
    ) {
        let nsp = self.local.path().to_string();
        let packet = match wire_to_packet(self.local.parser(), &wire_packet, &nsp) {
            Ok(p) => p,
            Err(e) => return self.metrics().malformed("request", channel, &e),
        };
        // Each request in flight holds its packet and a task until its timeout: both are
        // capped, so a peer (or anyone who can PUBLISH) cannot pile them up. A refused
        // request gets no answer, like a request to a node that is down.
        let inner = &self.ctr.inner;
        let Ok(permit) = inner.remote_acks.clone().try_acquire_owned() else {
            return self
                .metrics()
                .remote_refused("broadcast_ack", inner.remote_ack_requests_max);
        };
        let timeout = Some(self.capped_ack_timeout(opts));
        // Node drops the flags of an ack broadcast (only rooms/except count).
        let streams: Vec<_> = match self.resolve(opts, false) {
            Targets::Opts(o) => vec![self.local.broadcast_with_ack(packet.clone(), o, timeout)],
            Targets::Sids(sids) => sids
                .into_iter()
                .map(|sid| {
                    self.local.broadcast_with_ack(
                        packet.clone(),
                        BroadcastOptions::new(sid),
                        timeout,
                    )
                })
                .collect(),
        };
        let count: u32 = streams.iter().map(|(_, n)| *n).sum();
        self.ctr.call_hook(&RemoteBroadcast {
            nsp,
            opts: wire_to_opts(opts, false),
            packet,
            data: into_args(wire_packet),
            origin: from.uid.unwrap_or_default().to_owned(),
        });
        let acks = futures_util::stream::select_all(streams.into_iter().map(|(s, _)| Box::pin(s)));
        let to = from.uid.map(str::to_owned);
        let wire = from.remote.wire.clone();
        let specific = self.ctr.inner.publish_on_specific_response_channel;
        let driver = self.ctr.inner.driver.clone();
        let weak = Arc::downgrade(self);
        let metrics = self.metrics().clone();
        tokio::spawn(async move {
            let _permit = permit;
            let count_res = WireResponse {
                kind: Some(RequestType::BroadcastClientCount as u8),
                request_id: request_id.clone(),
                client_count: Some(u64::from(count)),
                ..Default::default()
            };
            if let Ok((channel, bytes)) = wire.response(&count_res, to.as_deref(), specific) {
                let _ = driver.publish(&channel, bytes).await;
            }
            if count == 0 {
                return;
            }
            let mut acks = acks.take(count as usize);
            while let Some((_, ack)) = acks.next().await {
                // Node only ever sends successful acks; timeouts are simply missing.
                let Ok(value) = ack else { continue };
                // The parser is not Send: borrow it from the adapter for the conversion only.
                let Some(adapter) = weak.upgrade() else {
                    return;
                };
                let converted = ack_to_wire(adapter.local.parser(), &value);
                drop(adapter);
                let packet = match converted {
                    Ok(p) => p,
                    Err(e) => {
                        metrics.malformed("ack", wire.request_channel(), &e);
                        continue;
                    }
                };
                let res = WireResponse {
                    kind: Some(RequestType::BroadcastAck as u8),
                    request_id: request_id.clone(),
                    packet: Some(packet),
                    ..Default::default()
                };
                match wire.response(&res, to.as_deref(), specific) {
                    Ok((channel, bytes)) => {
                        let _ = driver.publish(&channel, bytes).await;
                    }
                    Err(e) => tracing::warn!("ack response not encodable: {e}"),
                }
            }
        });
    }

    /// The ack timeout of a remote broadcast-with-ack request: the one it asks for (our own
    /// default when absent), at most `remote_ack_timeout_max` (counted when lowered).
    fn capped_ack_timeout(&self, opts: &WireOpts) -> Duration {
        let max = self.ctr.inner.remote_ack_timeout_max;
        let asked = opts
            .flags
            .as_ref()
            .and_then(|f| f.timeout)
            .map_or_else(|| self.local.ack_timeout(), Duration::from_millis);
        if asked > max {
            self.metrics().ack_timeout_capped();
            max
        } else {
            asked
        }
    }

    /// A response (classic: on `key-response#nsp#[uid#]`): route it to the pending request.
    fn recv_response(&self, remote: &RemoteNs, res: WireResponse, channel: &str) {
        self.metrics().received("response");
        // Our request ids are Sids; anything else answers another node's request.
        let Ok(id) = Sid::from_str(&res.request_id) else {
            return;
        };
        let Some(tx) = lock(&remote.handlers).get(&id).cloned() else {
            return;
        };
        let reply = match res.kind {
            Some(k) if k == RequestType::BroadcastClientCount as u8 => {
                let count = res.client_count.unwrap_or(0);
                Reply::AckCount(u32::try_from(count).unwrap_or(u32::MAX))
            }
            Some(k) if k == RequestType::BroadcastAck as u8 => {
                let arg = res.packet.unwrap_or(rmpv::Value::Nil);
                match wire_to_ack(self.local.parser(), &arg) {
                    Ok(v) => Reply::Ack(v),
                    Err(e) => return self.metrics().malformed("response", channel, &e),
                }
            }
            _ => Reply::Response(res),
        };
        match tx.try_send(reply) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics().dropped("response", channel),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn respond(&self, from: &Origin<'_>, res: WireResponse) {
        let specific = self.ctr.inner.publish_on_specific_response_channel;
        self.publish_response(from, res, specific);
    }

    /// Legacy (≤7.x) single-socket requests expect an empty `{ requestId }` answer.
    fn ack_legacy(&self, from: &Origin<'_>, request_id: Option<String>) {
        if let Some(request_id) = request_id {
            let res = WireResponse {
                request_id,
                ..Default::default()
            };
            self.respond(from, res);
        }
    }

    /// Publishes a response to `from` (classic: on its own channel iff `specific`).
    fn publish_response(&self, from: &Origin<'_>, res: WireResponse, specific: bool) {
        let (channel, bytes) = match from.remote.wire.response(&res, from.uid, specific) {
            Ok(r) => r,
            Err(e) => return tracing::warn!("response not encodable: {e}"),
        };
        let driver = self.ctr.inner.driver.clone();
        tokio::spawn(async move {
            // Failures are counted by the driver.
            let _ = driver.publish(&channel, bytes).await;
        });
    }
}

/// The `[event, ...args]` array of a wire packet.
fn into_args(packet: WirePacket) -> Vec<rmpv::Value> {
    match packet.data {
        rmpv::Value::Array(a) => a,
        _ => Vec::new(),
    }
}
