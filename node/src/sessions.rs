//! How a session (an authenticated connection) ends without its client asking:
//!
//! - **Revocation**: a logout publishes the token's hash on the revocations channel; every
//!   node ends that token's local sessions at once ([`crate::events`]).
//! - **Expiry**: every session ends at its token's expiry (`created` + `ttl`), without any
//!   message: one [`ExpiryQueue`] per node (one entry per token, not per connection) and one
//!   task ([`crate::connections::ConnRegistry::run_expiry`]) that sleeps until the earliest
//!   deadline.
//! - **Re-validation** ([`run_revalidation`]): every `FANOUT_SESSION_REVALIDATE_MS` each
//!   token with a live local session is looked up again through the token cache; a token the
//!   store no longer knows ends its sessions. This heals a lost revocation message (Redis
//!   pub/sub is at-most-once) within that interval plus the cache's positive TTL
//!   ([`crate::store::cache::POSITIVE_TTL`]), and repeats the kick of a connection that is
//!   still registered.
//!
//! A session that ended refuses every request from that moment (`unauthorized`), even while
//! its transport is still being closed ([`crate::client::Client::end`]).

use std::collections::BTreeMap;

use futures_util::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};

use crate::state::AppState;
use crate::store::TokenHash;

/// Token lookups of one re-validation round in flight at once.
pub const REVALIDATE_CONCURRENCY: usize = 16;

/// Identifies an entry of an [`ExpiryQueue`] (to remove it before it is due).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExpiryKey(Instant, u64);

/// Items ordered by the instant they expire: insert, remove by key, pop what is due. A
/// B-tree keyed by (instant, sequence number), so equal instants stay distinct.
#[derive(Debug)]
pub struct ExpiryQueue<T> {
    next_seq: u64,
    entries: BTreeMap<ExpiryKey, T>,
}

impl<T> Default for ExpiryQueue<T> {
    fn default() -> Self {
        Self {
            next_seq: 0,
            entries: BTreeMap::new(),
        }
    }
}

impl<T> ExpiryQueue<T> {
    /// Adds `item`, due at `at`.
    pub fn insert(&mut self, at: Instant, item: T) -> ExpiryKey {
        let key = ExpiryKey(at, self.next_seq);
        self.next_seq += 1;
        self.entries.insert(key, item);
        key
    }

    /// Takes an entry out before it is due.
    pub fn remove(&mut self, key: ExpiryKey) -> Option<T> {
        self.entries.remove(&key)
    }

    /// The earliest instant in the queue.
    pub fn next(&self) -> Option<Instant> {
        self.entries.keys().next().map(|key| key.0)
    }

    /// Takes out every item due at `now` (its instant ≤ `now`), earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Vec<T> {
        let later = self.entries.split_off(&ExpiryKey(now, u64::MAX));
        let due = std::mem::replace(&mut self.entries, later);
        due.into_values().collect()
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What one re-validation round found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revalidation {
    /// Tokens still valid.
    pub live: usize,
    /// Tokens the store no longer knows: their sessions were ended.
    pub dead: usize,
    /// Lookups that failed (store unreachable): those sessions are kept until the next round.
    pub failed: usize,
}

/// Looks every token with a live local session up again (through the token cache) and ends
/// the sessions of the dead ones.
pub async fn revalidate(state: &AppState) -> Revalidation {
    let tokens = state.connections.tokens();
    let mut lookups = futures_util::stream::iter(tokens)
        .map(|token: TokenHash| async move {
            let found = state.stores.tokens.get(&token).await;
            (token, found)
        })
        .buffer_unordered(REVALIDATE_CONCURRENCY);
    let mut round = Revalidation::default();
    while let Some((token, found)) = lookups.next().await {
        match found {
            Ok(Some(_)) => round.live += 1,
            Ok(None) => {
                round.dead += 1;
                state.connections.kick_dead(&token);
            }
            Err(err) => {
                round.failed += 1;
                tracing::debug!(%err, "session re-validation: token lookup failed");
            }
        }
    }
    state
        .metrics
        .session_checks(round.live as u64, round.dead as u64, round.failed as u64);
    round
}

/// Re-validates the node's sessions every `FANOUT_SESSION_REVALIDATE_MS`, until the process
/// stops.
pub async fn run_revalidation(state: AppState) {
    let mut tick = tokio::time::interval(state.cfg.session_revalidate());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let round = revalidate(&state).await;
        if round.dead > 0 {
            tracing::info!(
                dead = round.dead,
                live = round.live,
                "re-validation ended the sessions of dead tokens"
            );
        }
        if round.failed > 0 {
            tracing::warn!(
                failed = round.failed,
                "re-validation could not look tokens up; their sessions are kept"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_queue_pops_what_is_due_in_order() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut queue = ExpiryQueue::default();
        assert_eq!(queue.next(), None);
        queue.insert(at(30), "c");
        let b = queue.insert(at(20), "b");
        queue.insert(at(10), "a");
        queue.insert(at(10), "a2");
        queue.insert(at(40), "d");
        assert_eq!(queue.next(), Some(at(10)));
        assert_eq!(queue.remove(b), Some("b"));
        assert_eq!(queue.remove(b), None);
        assert!(queue.pop_due(at(9)).is_empty());
        assert_eq!(queue.pop_due(at(10)), vec!["a", "a2"]);
        assert_eq!(queue.pop_due(at(35)), vec!["c"]);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next(), Some(at(40)));
        assert_eq!(queue.pop_due(at(100)), vec!["d"]);
        assert!(queue.is_empty());
    }
}
