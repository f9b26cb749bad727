//! The receiving side: one loop per namespace reads the namespace's bounded inbound queue
//! and dispatches by channel (`recv_broadcast`, `recv_request`, `recv_response`).
//!
//! A message that cannot be decoded, has the wrong shape or targets another namespace is
//! counted and skipped; nothing here panics or ends the loop. Anything that needs Redis
//! (publishing a response, waiting for client acks) runs in its own task so the loop
//! never waits on the network.
//!
//! # Socket-id rooms
//! Node sockets are members of a room named after their id; socketioxide sockets are not
//! (unless the application calls `socket.join(socket.id)`). So that `io.to(id)` and
//! `except(id)` sent by Node peers or emitters reach socketioxide sockets anyway, a room
//! (or except) entry that is the id of a local socket which did not join its own room is
//! resolved to that socket ([`Targets::Sids`]).

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use socketioxide_core::Sid;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room, SocketEmitter};
use socketioxide_core::packet::Packet;
use tokio::sync::mpsc;

use crate::adapter::{FanoutAdapter, RemoteNs, Reply, lock};
use crate::convert::{ack_to_wire, wire_to_ack, wire_to_opts, wire_to_packet};
use crate::ctr::RemoteBroadcast;
use crate::driver::Inbound;
use crate::protocol::{
    BroadcastMessage, RequestType, SocketEntry, WireOpts, WireRequest, WireResponse, WireSocket,
    decode_sniff,
};

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

/// The local sockets selected by Node `opts`.
// Short-lived stack value, built and consumed in the same call: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Targets {
    /// Plain room selection: `CoreLocalAdapter` applies it in one go.
    Opts(BroadcastOptions),
    /// Selection involving socket-id rooms: explicit list of sockets.
    Sids(Vec<Sid>),
}

impl<E: SocketEmitter> FanoutAdapter<E> {
    fn recv(self: &Arc<Self>, msg: Inbound) {
        let Some(remote) = &self.remote else { return };
        let ch = &remote.channels;
        if msg.channel == ch.request {
            self.recv_request(remote, &msg);
        } else if msg.channel == ch.response || msg.channel == ch.own_response {
            self.recv_response(remote, &msg);
        } else if ch.is_broadcast(&msg.channel) {
            self.recv_broadcast(remote, &msg);
        }
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.ctr.inner.metrics
    }

    /// `[uid, packet, opts]` on `key#nsp#[room#]`.
    fn recv_broadcast(&self, remote: &RemoteNs, msg: &Inbound) {
        self.metrics().received("broadcast");
        let BroadcastMessage(uid, wire_packet, opts) = match BroadcastMessage::decode(&msg.payload)
        {
            Ok(m) => m,
            Err(e) => return self.metrics().malformed("broadcast", &msg.channel, &e),
        };
        if uid == remote.uid {
            return;
        }
        let nsp = wire_packet.nsp.as_deref().unwrap_or("/");
        if nsp != self.local.path().as_str() {
            tracing::debug!(nsp, channel = %msg.channel, "broadcast for another namespace ignored");
            return;
        }
        let packet = match wire_to_packet(self.local.parser(), &wire_packet, nsp) {
            Ok(p) => p,
            Err(e) => return self.metrics().malformed("broadcast", &msg.channel, &e),
        };
        let volatile = opts.flags.as_ref().and_then(|f| f.volatile) == Some(true);
        let targets = self.resolve(&opts, volatile);
        self.apply_broadcast(packet.clone(), targets, volatile);
        let data = match wire_packet.data {
            rmpv::Value::Array(a) => a,
            _ => Vec::new(),
        };
        self.ctr.call_hook(&RemoteBroadcast {
            nsp: nsp.to_owned(),
            opts: wire_to_opts(&opts, true),
            packet,
            data,
            origin: uid,
        });
    }

    fn recv_request(self: &Arc<Self>, remote: &RemoteNs, msg: &Inbound) {
        self.metrics().received("request");
        let req: WireRequest = match decode_sniff(&msg.payload) {
            Ok(r) => r,
            Err(e) => return self.metrics().malformed("request", &msg.channel, &e),
        };
        let Some(kind) = RequestType::from_u8(req.kind) else {
            let err = format!("unknown request type {}", req.kind);
            return self.metrics().malformed("request", &msg.channel, &err);
        };
        // Node applies join/leave/disconnect for its own uid too (it does not apply them
        // locally when sending); we apply locally when sending, so our own are skipped.
        if req.uid.as_deref() == Some(remote.uid.as_str()) {
            return;
        }
        let missing = |what: &str| {
            let err = format!("{} request without {what}", kind.label());
            self.metrics().malformed("request", &msg.channel, &err);
        };
        match kind {
            RequestType::Sockets => {
                let Some(request_id) = req.request_id.clone() else {
                    return missing("requestId");
                };
                let opts = WireOpts {
                    rooms: req.rooms.clone().unwrap_or_default(),
                    ..Default::default()
                };
                let sockets = self
                    .target_sids(self.resolve(&opts, false))
                    .into_iter()
                    .map(|sid| SocketEntry::Id(sid.to_string()))
                    .collect();
                self.respond(
                    remote,
                    &req,
                    WireResponse {
                        request_id,
                        sockets: Some(sockets),
                        ..Default::default()
                    },
                );
            }
            RequestType::AllRooms => {
                let Some(request_id) = req.request_id.clone() else {
                    return missing("requestId");
                };
                let mut all = BroadcastOptions::default();
                all.add_flag(BroadcastFlags::Broadcast);
                let rooms = self
                    .local
                    .rooms(all)
                    .into_iter()
                    .map(|r| r.to_string())
                    .collect();
                self.respond(
                    remote,
                    &req,
                    WireResponse {
                        request_id,
                        rooms: Some(rooms),
                        ..Default::default()
                    },
                );
            }
            RequestType::RemoteJoin | RequestType::RemoteLeave => {
                let join = kind == RequestType::RemoteJoin;
                if let Some(opts) = &req.opts {
                    let rooms: Vec<Room> = req
                        .rooms
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(Room::from)
                        .collect();
                    self.apply_rooms(self.resolve(opts, false), rooms, join);
                } else if let (Some(sid), Some(room)) = (&req.sid, &req.room) {
                    // Legacy (≤7.x) single-socket form: answer only if the socket is ours.
                    let Some(sid) = self.local_sid(sid) else {
                        return;
                    };
                    let rooms = vec![Room::from(room.clone())];
                    self.apply_rooms(Targets::Sids(vec![sid]), rooms, join);
                    self.ack_legacy(remote, &req);
                } else {
                    missing("opts")
                }
            }
            RequestType::RemoteDisconnect => {
                if let Some(opts) = &req.opts {
                    self.apply_disconnect(self.resolve(opts, false));
                } else if let Some(sid) = &req.sid {
                    let Some(sid) = self.local_sid(sid) else {
                        return;
                    };
                    self.apply_disconnect(Targets::Sids(vec![sid]));
                    self.ack_legacy(remote, &req);
                } else {
                    missing("opts")
                }
            }
            RequestType::RemoteFetch => {
                let Some(request_id) = req.request_id.clone() else {
                    return missing("requestId");
                };
                let opts = req.opts.clone().unwrap_or_default();
                let sockets = self.fetch_local(self.resolve(&opts, false));
                self.respond(
                    remote,
                    &req,
                    WireResponse {
                        request_id,
                        sockets: Some(sockets),
                        uid: Some(remote.uid.clone()),
                        ..Default::default()
                    },
                );
            }
            RequestType::ServerSideEmit => {
                // socketioxide has no serverSideEmit. A requester waiting for acks counts
                // us (NUMSUB), so answer `null` instead of letting it time out.
                tracing::debug!("serverSideEmit received; not supported by socketioxide, ignored");
                if let Some(request_id) = req.request_id.clone() {
                    let res = WireResponse {
                        kind: Some(RequestType::ServerSideEmit as u8),
                        request_id,
                        data: Some(rmpv::Value::Nil),
                        ..Default::default()
                    };
                    // Node always answers 6 on the shared channel.
                    self.publish_response(remote.channels.response.clone(), res);
                }
            }
            RequestType::Broadcast => self.recv_broadcast_with_ack(remote, req, &msg.channel),
            RequestType::BroadcastClientCount | RequestType::BroadcastAck => {
                tracing::debug!("response type {} on the request channel ignored", req.kind);
            }
        }
    }

    /// Type 7: broadcast locally with acks; answer 8 (count) once, then 9 per client ack.
    fn recv_broadcast_with_ack(
        self: &Arc<Self>,
        remote: &RemoteNs,
        req: WireRequest,
        channel: &str,
    ) {
        let (Some(request_id), Some(wire_packet), Some(opts)) =
            (req.request_id.clone(), req.packet.clone(), req.opts.clone())
        else {
            let err = "broadcast_ack request without requestId, packet or opts";
            return self.metrics().malformed("request", channel, &err);
        };
        let nsp = self.local.path().to_string();
        let packet = match wire_to_packet(self.local.parser(), &wire_packet, &nsp) {
            Ok(p) => p,
            Err(e) => return self.metrics().malformed("request", channel, &e),
        };
        let timeout = opts
            .flags
            .as_ref()
            .and_then(|f| f.timeout)
            .map(Duration::from_millis);
        // Node drops the flags of an ack broadcast (only rooms/except count).
        let targets = self.resolve(&opts, false);
        let streams: Vec<_> = match targets {
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
        let channel = self.response_channel(remote, &req);
        let driver = self.ctr.inner.driver.clone();
        let weak = Arc::downgrade(self);
        let metrics = self.metrics().clone();
        let data = match &wire_packet.data {
            rmpv::Value::Array(a) => a.clone(),
            _ => Vec::new(),
        };
        self.ctr.call_hook(&RemoteBroadcast {
            nsp,
            opts: wire_to_opts(&opts, false),
            packet,
            data,
            origin: req.uid.clone().unwrap_or_default(),
        });
        let acks = futures_util::stream::select_all(streams.into_iter().map(|(s, _)| Box::pin(s)));
        tokio::spawn(async move {
            let count_res = WireResponse {
                kind: Some(RequestType::BroadcastClientCount as u8),
                request_id: request_id.clone(),
                client_count: Some(u64::from(count)),
                ..Default::default()
            };
            if let Ok(bytes) = count_res.encode() {
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
                        metrics.malformed("ack", &channel, &e);
                        continue;
                    }
                };
                let res = WireResponse {
                    kind: Some(RequestType::BroadcastAck as u8),
                    request_id: request_id.clone(),
                    packet: Some(packet),
                    ..Default::default()
                };
                match res.encode() {
                    Ok(bytes) => {
                        let _ = driver.publish(&channel, bytes).await;
                    }
                    Err(e) => tracing::warn!("ack response not encodable: {e}"),
                }
            }
        });
    }

    fn recv_response(&self, remote: &RemoteNs, msg: &Inbound) {
        self.metrics().received("response");
        let res: WireResponse = match decode_sniff(&msg.payload) {
            Ok(r) => r,
            Err(e) => return self.metrics().malformed("response", &msg.channel, &e),
        };
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
                    Err(e) => return self.metrics().malformed("response", &msg.channel, &e),
                }
            }
            _ => Reply::Response(res),
        };
        match tx.try_send(reply) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics().dropped("response", &msg.channel)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The channel a response to `req` goes to.
    fn response_channel(&self, remote: &RemoteNs, req: &WireRequest) -> String {
        match (
            &req.uid,
            self.ctr.inner.publish_on_specific_response_channel,
        ) {
            (Some(uid), true) => remote.channels.response_for(uid),
            _ => remote.channels.response.clone(),
        }
    }

    fn respond(&self, remote: &RemoteNs, req: &WireRequest, res: WireResponse) {
        self.publish_response(self.response_channel(remote, req), res);
    }

    /// Legacy (≤7.x) single-socket requests expect an empty `{ requestId }` answer.
    fn ack_legacy(&self, remote: &RemoteNs, req: &WireRequest) {
        if let Some(request_id) = req.request_id.clone() {
            let res = WireResponse {
                request_id,
                ..Default::default()
            };
            self.respond(remote, req, res);
        }
    }

    fn publish_response(&self, channel: String, res: WireResponse) {
        let bytes = match res.encode() {
            Ok(b) => b,
            Err(e) => return tracing::warn!("response not encodable: {e}"),
        };
        let driver = self.ctr.inner.driver.clone();
        tokio::spawn(async move {
            // Failures are counted by the driver.
            let _ = driver.publish(&channel, bytes).await;
        });
    }

    /// A room/except name that is the id of a local socket which is not in a room of that name.
    fn unjoined_local_sid(&self, name: &str) -> Option<Sid> {
        let sid = self.local_sid(name)?;
        let in_own_room = self.local.socket_rooms(sid).iter().any(|r| r == name);
        (!in_own_room).then_some(sid)
    }

    /// Parses `id` and returns it if a socket with that id is connected here.
    fn local_sid(&self, id: &str) -> Option<Sid> {
        let sid = Sid::from_str(id).ok()?;
        let exists = !self
            .local
            .fetch_sockets(BroadcastOptions::new(sid))
            .is_empty();
        exists.then_some(sid)
    }

    /// Node `opts` → the local sockets they select (see the module docs).
    pub(crate) fn resolve(&self, opts: &WireOpts, volatile: bool) -> Targets {
        let base = wire_to_opts(opts, volatile);
        let sid_rooms: Vec<Sid> = opts
            .rooms
            .iter()
            .filter_map(|r| self.unjoined_local_sid(r))
            .collect();
        let sid_except: Vec<Sid> = opts
            .except
            .iter()
            .filter_map(|r| self.unjoined_local_sid(r))
            .collect();
        if sid_rooms.is_empty() && sid_except.is_empty() {
            return Targets::Opts(base);
        }
        let mut sids = self.local.sockets(base);
        for sid in sid_rooms {
            let excluded = self
                .local
                .socket_rooms(sid)
                .iter()
                .any(|r| opts.except.iter().any(|e| e == r));
            if !excluded && !sids.contains(&sid) {
                sids.push(sid);
            }
        }
        sids.retain(|s| !sid_except.contains(s));
        Targets::Sids(sids)
    }

    fn target_sids(&self, targets: Targets) -> Vec<Sid> {
        match targets {
            Targets::Opts(o) => self.local.sockets(o),
            Targets::Sids(s) => s,
        }
    }

    fn apply_broadcast(&self, packet: Packet, targets: Targets, volatile: bool) {
        let res = match targets {
            Targets::Opts(o) => self.local.broadcast(packet, o),
            Targets::Sids(sids) => {
                let mut errs = Vec::new();
                for sid in sids {
                    let mut o = BroadcastOptions::new(sid);
                    if volatile {
                        o.add_flag(BroadcastFlags::Volatile);
                    }
                    if let Err(e) = self.local.broadcast(packet.clone(), o) {
                        errs.extend(e);
                    }
                }
                if errs.is_empty() { Ok(()) } else { Err(errs) }
            }
        };
        if let Err(errs) = res {
            tracing::debug!(
                count = errs.len(),
                "remote broadcast: some local sockets failed: {errs:?}"
            );
        }
    }

    fn apply_rooms(&self, targets: Targets, rooms: Vec<Room>, join: bool) {
        match (targets, join) {
            (Targets::Opts(o), true) => self.local.add_sockets(o, rooms),
            (Targets::Opts(o), false) => self.local.del_sockets(o, rooms),
            (Targets::Sids(sids), join) => {
                for sid in sids {
                    if join {
                        self.local.add_all(sid, rooms.clone());
                    } else {
                        self.local.del(sid, rooms.clone());
                    }
                }
            }
        }
    }

    fn apply_disconnect(&self, targets: Targets) {
        let res = match targets {
            Targets::Opts(o) => self.local.disconnect_socket(o),
            Targets::Sids(sids) => {
                let mut errs = Vec::new();
                for sid in sids {
                    if let Err(e) = self.local.disconnect_socket(BroadcastOptions::new(sid)) {
                        errs.extend(e);
                    }
                }
                if errs.is_empty() { Ok(()) } else { Err(errs) }
            }
        };
        if let Err(errs) = res {
            tracing::debug!("remote disconnect: some sockets failed: {errs:?}");
        }
    }

    /// Our sockets as Node's `RemoteSocket` JSON: `{id, handshake, rooms, data}`.
    fn fetch_local(&self, targets: Targets) -> Vec<SocketEntry> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.target_sids(targets)
            .into_iter()
            .map(|sid| {
                let id = sid.to_string();
                let mut rooms: Vec<String> = self
                    .local
                    .socket_rooms(sid)
                    .into_iter()
                    .map(|r| r.to_string())
                    .collect();
                rooms.sort();
                if !rooms.contains(&id) {
                    rooms.insert(0, id.clone());
                }
                SocketEntry::Full(WireSocket {
                    id,
                    handshake: minimal_handshake(now),
                    rooms,
                    data: rmpv::Value::Map(Vec::new()),
                })
            })
            .collect()
    }
}

/// socketioxide does not expose the handshake to adapters: send Node's shape with empty values.
fn minimal_handshake(now_ms: u64) -> rmpv::Value {
    use rmpv::Value as V;
    let empty = || V::Map(Vec::new());
    V::Map(vec![
        (V::from("headers"), empty()),
        (V::from("time"), V::from("")),
        (V::from("address"), V::from("")),
        (V::from("xdomain"), V::from(false)),
        (V::from("secure"), V::from(false)),
        (V::from("issued"), V::from(now_ms)),
        (V::from("url"), V::from("")),
        (V::from("query"), empty()),
        (V::from("auth"), empty()),
    ])
}
