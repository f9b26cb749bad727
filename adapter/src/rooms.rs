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
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::driver::{Inbound, Route, ShardedDriver, SubId};
use crate::error::Error;
use crate::protocol::sharded::{ShardedChannels, has_room_channel};
use crate::sync::lock;

/// Lists the rooms that have a local socket in one namespace (None: the namespace is gone).
pub(crate) type LocalRooms = Arc<dyn Fn() -> Option<HashSet<String>> + Send + Sync>;

/// What the registry needs from the driver ([`ShardedDriver`]; a fake in the unit tests).
pub(crate) trait RoomDriver: Sync {
    /// Adds a route without any command; true when it is the channel's first.
    fn add_route(&self, channel: String, route: Route) -> (SubId, bool);
    /// Removes a route without any command; true when it was the channel's last.
    fn remove_route(&self, sub: &SubId) -> bool;
    /// `SSUBSCRIBE` if still desired.
    fn ssubscribe(&self, channel: &str) -> impl Future<Output = bool> + Send;
    /// `SUNSUBSCRIBE` unless desired again.
    fn sunsubscribe(&self, channel: &str) -> impl Future<Output = ()> + Send;
    /// Waits until the channel is confirmed (bounded).
    fn wait_live(&self, channel: &str) -> impl Future<Output = Result<(), Error>> + Send;
}

impl RoomDriver for ShardedDriver {
    fn add_route(&self, channel: String, route: Route) -> (SubId, bool) {
        ShardedDriver::add_route(self, channel, route)
    }
    fn remove_route(&self, sub: &SubId) -> bool {
        ShardedDriver::remove_route(self, sub)
    }
    fn ssubscribe(&self, channel: &str) -> impl Future<Output = bool> + Send {
        ShardedDriver::ssubscribe(self, channel)
    }
    fn sunsubscribe(&self, channel: &str) -> impl Future<Output = ()> + Send {
        ShardedDriver::sunsubscribe(self, channel)
    }
    fn wait_live(&self, channel: &str) -> impl Future<Output = Result<(), Error>> + Send {
        ShardedDriver::wait_live(self, channel)
    }
}

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
    pub(crate) fn unregister(&self, driver: &impl RoomDriver, nsp: &str) -> Vec<String> {
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
        driver: &impl RoomDriver,
        nsp: &str,
        room: &str,
        wait: bool,
    ) -> Result<(), Error> {
        if !has_room_channel(room) {
            return Ok(());
        }
        let (channel, first) = self.reserve(driver, nsp, room)?;
        if first {
            driver.ssubscribe(&channel).await;
        }
        if wait {
            driver.wait_live(&channel).await?;
        }
        Ok(())
    }

    /// The synchronous part of [`ensure`](Self::ensure): registers the room (adding its
    /// route) or stamps it; returns its channel and whether the route is the channel's first.
    fn reserve(
        &self,
        driver: &impl RoomDriver,
        nsp: &str,
        room: &str,
    ) -> Result<(String, bool), Error> {
        Ok({
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
        })
    }

    /// One sweep: subscribe local rooms that have no channel yet, drop channels not needed
    /// (no local socket, not kept by `keep(nsp, room)`). Returns what it changed.
    pub(crate) async fn sweep(
        &self,
        driver: &impl RoomDriver,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::lock;

    /// Routes in a map, commands in a log.
    #[derive(Default)]
    struct Fake {
        routes: Mutex<HashMap<String, Vec<u64>>>,
        next: std::sync::atomic::AtomicU64,
        log: Mutex<Vec<String>>,
    }

    impl RoomDriver for Fake {
        fn add_route(&self, channel: String, _route: Route) -> (SubId, bool) {
            let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut routes = lock(&self.routes);
            let ids = routes.entry(channel.clone()).or_default();
            ids.push(id);
            (SubId::for_test(&channel, id), ids.len() == 1)
        }
        fn remove_route(&self, sub: &SubId) -> bool {
            let mut routes = lock(&self.routes);
            let Some(ids) = routes.get_mut(sub.channel()) else {
                return false;
            };
            ids.pop();
            let last = ids.is_empty();
            if last {
                routes.remove(sub.channel());
            }
            last
        }
        async fn ssubscribe(&self, channel: &str) -> bool {
            lock(&self.log).push(format!("SSUBSCRIBE {channel}"));
            true
        }
        async fn sunsubscribe(&self, channel: &str) {
            lock(&self.log).push(format!("SUNSUBSCRIBE {channel}"));
        }
        async fn wait_live(&self, _channel: &str) -> Result<(), Error> {
            Ok(())
        }
    }

    fn ns(local_rooms: LocalRooms) -> NsEntry {
        NsEntry {
            channels: ShardedChannels::new("k", "/", "uid"),
            tx: mpsc::channel(1).0,
            local_rooms,
        }
    }

    #[tokio::test]
    async fn a_room_ensured_while_the_sweep_decides_is_kept() {
        let subs = Arc::new(RoomSubs::default());
        let fake = Arc::new(Fake::default());
        let (s, f) = (subs.clone(), fake.clone());
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        // The local rooms are listed before the join; the ensure_room of that join runs
        // while the sweep is between listing and deciding.
        subs.register(
            "/",
            ns(Arc::new(move || {
                if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    s.reserve(&*f, "/", "late").unwrap();
                }
                Some(HashSet::new())
            })),
        );
        let never = |_: &str, _: &str| false;
        assert_eq!(subs.sweep(&*fake, &never).await, SweepResult::default());
        assert_eq!(
            subs.len(),
            1,
            "the room ensured during the sweep was dropped"
        );
        assert!(lock(&fake.routes).contains_key("k#/#late#"));
        // The next sweep, which started after that ensure, drops it (not local, not kept).
        assert_eq!(subs.sweep(&*fake, &never).await.dropped, 1);
        assert_eq!(subs.len(), 0);
        assert!(lock(&fake.routes).is_empty());
        assert_eq!(lock(&fake.log).last().unwrap(), "SUNSUBSCRIBE k#/#late#");
    }

    #[tokio::test]
    async fn keeper_local_rooms_private_rooms_and_unregister() {
        let subs = RoomSubs::default();
        let fake = Fake::default();
        let local: HashSet<String> = ["here".to_owned(), "AAAAAAAAAAAAAAAAAAAA".to_owned()].into();
        subs.register("/", ns(Arc::new(move || Some(local.clone()))));
        // 20-char rooms have no channel; unknown namespaces are an error.
        subs.ensure(&fake, "/", "KZIwqrVp75cAhUSIAAAB", true)
            .await
            .unwrap();
        assert_eq!(subs.len(), 0);
        assert!(matches!(
            subs.ensure(&fake, "/x", "r", true).await,
            Err(Error::UnknownNamespace(_))
        ));
        subs.ensure(&fake, "/", "kept", true).await.unwrap();
        subs.ensure(&fake, "/", "gone", true).await.unwrap();
        subs.ensure(&fake, "/", "gone", true).await.unwrap(); // once per channel
        let keep = |_: &str, room: &str| room == "kept";
        // a sweep that starts after the ensures: "here" is added (local), "gone" dropped
        let res = subs.sweep(&fake, &keep).await;
        assert_eq!(
            res,
            SweepResult {
                added: 1,
                dropped: 1
            }
        );
        let mut channels: Vec<String> = lock(&fake.routes).keys().cloned().collect();
        channels.sort();
        assert_eq!(channels, ["k#/#here#", "k#/#kept#"]);
        assert_eq!(
            lock(&fake.log)
                .iter()
                .filter(|l| l.starts_with("SSUBSCRIBE"))
                .count(),
            3
        );
        let unsubscribe = subs.unregister(&fake, "/");
        assert_eq!(unsubscribe.len(), 2);
        assert!(lock(&fake.routes).is_empty());
        assert!(subs.ensure(&fake, "/", "r", false).await.is_err());
    }
}
