//! The routing table: which bounded queues the messages of each subscription go to.
//!
//! Delivery is `try_send` only: a full queue drops the message and counts it, a closed
//! queue removes its route, so the reader never blocks on a slow consumer.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::mpsc;

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
    pub(super) key: SubKey,
    id: u64,
}

impl SubId {
    /// A route id for fake drivers in unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(channel: &str, id: u64) -> Self {
        Self {
            key: SubKey::Channel(channel.to_owned()),
            id,
        }
    }

    /// The channel (or pattern) of this route.
    pub(crate) fn channel(&self) -> &str {
        match &self.key {
            SubKey::Channel(c) | SubKey::Pattern(c) => c,
        }
    }
}

/// The routing table, shared by both drivers.
#[derive(Debug, Default)]
pub(super) struct Routes {
    map: HashMap<SubKey, Vec<(u64, Route)>>,
    next_id: u64,
}

impl Routes {
    pub(super) fn add(&mut self, key: SubKey, route: Route) -> (SubId, bool) {
        self.next_id += 1;
        let id = self.next_id;
        let entry = self.map.entry(key.clone()).or_default();
        let first = entry.is_empty();
        entry.push((id, route));
        (SubId { key, id }, first)
    }

    /// Every subscribed key (what a new connection must subscribe).
    pub(super) fn keys(&self) -> impl Iterator<Item = &SubKey> {
        self.map.keys()
    }

    /// Whether `key` has a route.
    pub(super) fn contains(&self, key: &SubKey) -> bool {
        self.map.contains_key(key)
    }

    /// Number of subscribed keys.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Removes a route; returns true when it was the last one of its key.
    pub(super) fn remove(&mut self, sub: &SubId) -> bool {
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

    /// What kind of message arrives on `channel` of `key`, for metric labels: `broadcast`
    /// (adapter patterns), `request` / `response` (adapter channels), `channel` (plain).
    pub(super) fn kind_of(&self, key: &SubKey, channel: &str) -> &'static str {
        let adapter = self
            .map
            .get(key)
            .and_then(|routes| routes.first())
            .is_some_and(|(_, route)| matches!(route, Route::Adapter(_)));
        match key {
            _ if !adapter => "channel",
            SubKey::Pattern(_) => "broadcast",
            SubKey::Channel(_) if channel.contains("-request#") => "request",
            SubKey::Channel(_) => "response",
        }
    }

    /// Delivers to every route of `key`, dropping closed routes and counting overflows.
    /// Returns true when the last route of `key` was closed (the key is then removed).
    pub(super) fn dispatch(
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
