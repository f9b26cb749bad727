//! Resolving Node `opts` to local sockets, and applying an operation to them.
//!
//! # Socket-id rooms
//! Node sockets are members of a room named after their id; socketioxide sockets are not
//! (unless the application calls `socket.join(socket.id)`). So that `io.to(id)` and
//! `except(id)` sent by Node peers or emitters reach socketioxide sockets anyway, a room
//! (or except) entry that is the id of a local socket which did not join its own room is
//! resolved to that socket ([`Targets::Sids`]).

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use socketioxide_core::Sid;
use socketioxide_core::adapter::errors::SocketError;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room, SocketEmitter};
use socketioxide_core::packet::Packet;

use crate::adapter::FanoutAdapter;
use crate::convert::wire_to_opts;
use crate::protocol::{SocketEntry, WireOpts, WireSocket};

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

    /// A room/except name that is the id of a local socket which is not in a room of that name.
    fn unjoined_local_sid(&self, name: &str) -> Option<Sid> {
        let sid = self.local_sid(name)?;
        let in_own_room = self.local.socket_rooms(sid).iter().any(|r| r == name);
        (!in_own_room).then_some(sid)
    }

    /// Parses `id` and returns it if a socket with that id is connected here.
    pub(crate) fn local_sid(&self, id: &str) -> Option<Sid> {
        let sid = Sid::from_str(id).ok()?;
        let exists = !self
            .local
            .fetch_sockets(BroadcastOptions::new(sid))
            .is_empty();
        exists.then_some(sid)
    }

    pub(crate) fn target_sids(&self, targets: Targets) -> Vec<Sid> {
        match targets {
            Targets::Opts(o) => self.local.sockets(o),
            Targets::Sids(s) => s,
        }
    }

    pub(crate) fn apply_broadcast(&self, packet: Packet, targets: Targets, volatile: bool) {
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
            let full = errs
                .iter()
                .filter(|e| matches!(e, SocketError::InternalChannelFull))
                .count() as u64;
            self.metrics()
                .local_sockets_skipped(full, errs.len() as u64 - full);
            tracing::debug!(
                count = errs.len(),
                "remote broadcast: some local sockets failed: {errs:?}"
            );
        }
    }

    pub(crate) fn apply_rooms(&self, targets: Targets, rooms: Vec<Room>, join: bool) {
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

    pub(crate) fn apply_disconnect(&self, targets: Targets) {
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
    pub(crate) fn fetch_local(&self, targets: Targets) -> Vec<SocketEntry> {
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
