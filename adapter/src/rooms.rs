//! Sharded mode: which room channels (`key#nsp#room#`) this node subscribes.
//!
//! Node's sharded adapter (dynamic mode) publishes a one-room broadcast only on the room's
//! channel, so a node must be subscribed there while it has a socket in the room.
//! socketioxide tells the adapter nothing about joins, hence:
//! * [`RoomSubs::ensure`] (`FanoutAdapterCtr::ensure_room`): the node calls it after a join;
//!   it returns once the channel is confirmed. The adapter calls it itself (without waiting)
//!   for remote joins and `socketsJoin`.
//! * [`RoomSubs::sweep`], every `room_sweep_interval`: subscribes local rooms nobody ensured
//!   (a plain `socket.join` without `ensure_room`: a delivery gap until the sweep), and drops
//!   channels no longer needed — no local socket in the room and the [`RoomKeeper`] does not
//!   keep it.
//!
//! # Race-freeness
//! The registry and the driver's routes change together under one lock (routes are added and
//! removed synchronously; only the Redis commands run outside it, and the driver serializes
//! and re-checks those per channel). Every `ensure` stamps its room with a fresh generation;
//! a sweep takes a generation *before* listing the local rooms and never drops a room stamped
//! at or after it, so a room ensured while the sweep was deciding is kept.
//!
//! [`RoomKeeper`]: crate::RoomKeeper

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::driver::{Inbound, Route, ShardedDriver, SubId};
use crate::error::Error;
use crate::protocol::sharded::{ShardedChannels, has_room_channel};
use crate::sync::lock;

/// Lists the rooms that have a local socket in one namespace (None: the namespace is gone).
pub(crate) type LocalRooms = Arc<dyn Fn() -> Option<HashSet<String>> + Send + Sync>;

/// A namespace with a sharded adapter.
pub(crate) struct NsEntry {
    /// Its channel names.
    pub channels: ShardedChannels,
    /// Its inbound queue (room channels are routed there).
    pub tx: mpsc::Sender<Inbound>,
    /// Its local rooms.
    pub local_rooms: LocalRooms,
}

/// The room-channel registry of one adapter state.
#[derive(Default)]
pub(crate) struct RoomSubs {
    state: Mutex<RoomState>,
}

#[derive(Default)]
struct RoomState {
    namespaces: HashMap<String, NsEntry>,
    /// Subscribed room channels by (nsp, room): the route and the generation of the last
    /// `ensure`.
    rooms: HashMap<(String, String), (SubId, u64)>,
    generation: u64,
}

/// What [`RoomSubs::sweep`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepResult {
    /// Room channels added because a local socket is in the room.
    pub added: usize,
    /// Room channels dropped.
    pub dropped: usize,
}

impl RoomSubs {
    /// Registers a namespace (at its adapter's init).
    pub(crate) fn register(&self, nsp: &str, entry: NsEntry) {
        lock(&self.state).namespaces.insert(nsp.to_owned(), entry);
    }

    /// Forgets a namespace and drops its room routes (at its adapter's close); returns the
    /// channels to `SUNSUBSCRIBE`.
    pub(crate) fn unregister(&self, driver: &ShardedDriver, nsp: &str) -> Vec<String> {
        let mut state = lock(&self.state);
        state.namespaces.remove(nsp);
        let mut unsubscribe = Vec::new();
        state.rooms.retain(|(n, _), (sub, _)| {
            if n != nsp {
                return true;
            }
            if driver.remove_route(sub) {
                unsubscribe.push(sub.channel().to_owned());
            }
            false
        });
        unsubscribe
    }

    /// Makes sure room `room` of `nsp` is subscribed; with `wait`, returns once Redis
    /// confirmed it (or fails with [`Error::NotReady`] after the command timeout; the
    /// reconcile keeps retrying). Private rooms (20 chars, socket ids) have no channel.
    pub(crate) async fn ensure(
        &self,
        driver: &ShardedDriver,
        nsp: &str,
        room: &str,
        wait: bool,
    ) -> Result<(), Error> {
        if !has_room_channel(room) {
            return Ok(());
        }
        let (channel, first) = {
            let mut state = lock(&self.state);
            state.generation += 1;
            let generation = state.generation;
            let state = &mut *state;
            let Some(ns) = state.namespaces.get(nsp) else {
                return Err(Error::UnknownNamespace(nsp.to_owned()));
            };
            let channel = ns.channels.room(room);
            let key = (nsp.to_owned(), room.to_owned());
            match state.rooms.get_mut(&key) {
                Some((_, stamp)) => {
                    *stamp = generation;
                    (channel, false)
                }
                None => {
                    let route = Route::Adapter(ns.tx.clone());
                    let (sub, first) = driver.add_route(channel.clone(), route);
                    state.rooms.insert(key, (sub, generation));
                    (channel, first)
                }
            }
        };
        if first {
            driver.ssubscribe(&channel).await;
        }
        if wait {
            driver.wait_live(&channel).await?;
        }
        Ok(())
    }

    /// One sweep: subscribe local rooms that have no channel yet, drop channels not needed
    /// (no local socket, not kept by `keep(nsp, room)`). Returns what it changed.
    pub(crate) async fn sweep(
        &self,
        driver: &ShardedDriver,
        keep: &(dyn Fn(&str, &str) -> bool + Sync),
    ) -> SweepResult {
        let (since, listers) = {
            let mut state = lock(&self.state);
            state.generation += 1;
            let listers: Vec<(String, LocalRooms)> = state
                .namespaces
                .iter()
                .map(|(nsp, ns)| (nsp.clone(), ns.local_rooms.clone()))
                .collect();
            (state.generation, listers)
        };
        // Listed outside the lock: it walks the namespace's room map.
        let local: HashMap<String, HashSet<String>> = listers
            .into_iter()
            .filter_map(|(nsp, list)| list().map(|rooms| (nsp, rooms)))
            .collect();
        let mut unsubscribe = Vec::new();
        let mut result = SweepResult::default();
        {
            let mut state = lock(&self.state);
            state.rooms.retain(|(nsp, room), (sub, stamp)| {
                let needed = *stamp >= since
                    || local.get(nsp).is_some_and(|rooms| rooms.contains(room))
                    || keep(nsp, room);
                if !needed {
                    result.dropped += 1;
                    if driver.remove_route(sub) {
                        unsubscribe.push(sub.channel().to_owned());
                    }
                }
                needed
            });
        }
        for channel in unsubscribe {
            driver.sunsubscribe(&channel).await;
        }
        for (nsp, rooms) in &local {
            for room in rooms {
                let known = lock(&self.state)
                    .rooms
                    .contains_key(&(nsp.clone(), room.clone()));
                if !known && has_room_channel(room) {
                    result.added += 1;
                    // Failures are retried by the driver's reconcile.
                    let _ = self.ensure(driver, nsp, room, false).await;
                }
            }
        }
        result
    }

    /// Number of subscribed room channels (for tests and diagnostics).
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).rooms.len()
    }
}
