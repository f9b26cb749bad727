//! The node's live sessions: which local connections authenticated with which token, and
//! when each token expires. A logout (on any node, through the revocations channel), a
//! token found dead by re-validation, or the token's expiry ends every connection of the
//! token through [`ConnRegistry::kick`]; see [`crate::sessions`] for the tasks that drive it.
//!
//! A connection stays registered until it is actually gone ([`ConnRegistry::unregister`],
//! called when it closes), not merely until it was told to go: a kick whose close could not
//! be delivered is repeated by the next re-validation, and the connection refuses every
//! request from the first kick on ([`Endable::end`]).
//!
//! Memory per connection: one map entry (its key and a weak pointer). Expiry costs nothing
//! per connection: one [`ExpiryQueue`] entry per *token*, drained by one task per node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::delivery::outbound::CloseReason;
use crate::sessions::{ExpiryKey, ExpiryQueue};
use crate::store::{ConnKey, TokenHash};

/// A connection whose session can be ended (the client core's [`crate::client::Client`]).
pub trait Endable: Send + Sync {
    /// Ends the session for `reason`: refuse every request from now on and close the
    /// connection. Called again, it retries the close.
    fn end(&self, reason: CloseReason);
}

struct TokenConns {
    expiry: Option<(Instant, ExpiryKey)>,
    conns: Conns,
}

/// The connections of one token. Most tokens have one connection: it is kept inline, where
/// a map would allocate room for four (~190 bytes per connection).
enum Conns {
    Empty,
    One(ConnKey, Weak<dyn Endable>),
    Many(HashMap<ConnKey, Weak<dyn Endable>>),
}

impl Conns {
    fn insert(&mut self, conn: ConnKey, client: Weak<dyn Endable>) {
        match std::mem::replace(self, Conns::Empty) {
            Conns::Empty => *self = Conns::One(conn, client),
            Conns::One(key, _) if key == conn => *self = Conns::One(conn, client),
            Conns::One(key, weak) => {
                let mut map = HashMap::with_capacity(2);
                map.insert(key, weak);
                map.insert(conn, client);
                *self = Conns::Many(map);
            }
            Conns::Many(mut map) => {
                map.insert(conn, client);
                *self = Conns::Many(map);
            }
        }
    }

    /// Removes `conn`; true when none is left.
    fn remove(&mut self, conn: &ConnKey) -> bool {
        match self {
            Conns::Empty => true,
            Conns::One(key, _) if key == conn => {
                *self = Conns::Empty;
                true
            }
            Conns::One(..) => false,
            Conns::Many(map) => {
                map.remove(conn);
                map.is_empty()
            }
        }
    }

    /// The connections still alive.
    fn live(&self) -> Vec<Arc<dyn Endable>> {
        match self {
            Conns::Empty => Vec::new(),
            Conns::One(_, weak) => weak.upgrade().into_iter().collect(),
            Conns::Many(map) => map.values().filter_map(Weak::upgrade).collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Conns::Empty => 0,
            Conns::One(..) => 1,
            Conns::Many(map) => map.len(),
        }
    }
}

#[derive(Default)]
struct Inner {
    by_token: HashMap<TokenHash, TokenConns>,
    expiries: ExpiryQueue<TokenHash>,
}

/// Local connections by token hash, and the tokens' expiry instants.
#[derive(Default)]
pub struct ConnRegistry {
    inner: Mutex<Inner>,
    /// Wakes the expiry task when a token expiring sooner than any other is registered.
    sooner: Notify,
    /// Logouts waiting for their revocation to be applied on this node
    /// ([`ConnRegistry::revocation_applied`]).
    revocation_waiters: Mutex<HashMap<TokenHash, Vec<oneshot::Sender<()>>>>,
}

/// A wall-clock instant as a monotonic one (now, if it is past).
fn instant_of(at: SystemTime) -> Instant {
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(left) => now + left,
        Err(_) => now,
    }
}

impl ConnRegistry {
    /// Records that `conn` authenticated with `token`, which expires at `expires` (if known).
    pub fn register(
        &self,
        token: &TokenHash,
        expires: Option<SystemTime>,
        conn: ConnKey,
        client: Weak<dyn Endable>,
    ) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut sooner = false;
        let entry = inner.by_token.entry(token.clone()).or_insert_with(|| {
            let expiry = expires.map(instant_of).map(|at| {
                sooner = inner.expiries.next().is_none_or(|next| at < next);
                (at, inner.expiries.insert(at, token.clone()))
            });
            TokenConns {
                expiry,
                conns: Conns::Empty,
            }
        });
        entry.conns.insert(conn, client);
        if sooner {
            self.sooner.notify_one();
        }
    }

    /// Forgets `conn` (it is gone).
    pub fn unregister(&self, token: &TokenHash, conn: &ConnKey) {
        let mut inner = self.lock();
        let Some(entry) = inner.by_token.get_mut(token) else {
            return;
        };
        if entry.conns.remove(conn)
            && let Some(entry) = inner.by_token.remove(token)
            && let Some((_, key)) = entry.expiry
        {
            inner.expiries.remove(key);
        }
    }

    /// Ends every local connection of `token` for `reason`; returns how many. The
    /// connections stay registered until they are gone, so a kick can be repeated.
    pub fn kick(&self, token: &TokenHash, reason: CloseReason) -> usize {
        let clients: Vec<_> = {
            let inner = self.lock();
            let Some(entry) = inner.by_token.get(token) else {
                return 0;
            };
            entry.conns.live()
        };
        for client in &clients {
            client.end(reason);
        }
        clients.len()
    }

    /// Ends the connections of a token the store no longer knows: `token_expired` when its
    /// expiry has passed, `token_revoked` otherwise. Returns how many.
    pub fn kick_dead(&self, token: &TokenHash) -> usize {
        let expired = self
            .lock()
            .by_token
            .get(token)
            .and_then(|entry| entry.expiry)
            .is_some_and(|(at, _)| at <= Instant::now());
        let reason = if expired {
            CloseReason::Expired
        } else {
            CloseReason::Revoked
        };
        self.kick(token, reason)
    }

    /// Resolves once a revocation of `token` has been applied on this node (its sessions
    /// ended) by [`ConnRegistry::revocation_applied`]. A logout takes it before publishing
    /// the revocation and answers once it resolved: a client that hears the answer finds the
    /// token's sessions on this node ended, and every other node read the same message from
    /// Redis at the same moment. [`ConnRegistry::forget_revocation_waiters`] after giving up.
    pub fn revocation_waiter(&self, token: &TokenHash) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock_waiters()
            .entry(token.clone())
            .or_default()
            .push(tx);
        rx
    }

    /// A revocation of `token` was applied here: wakes the logouts waiting for it.
    pub fn revocation_applied(&self, token: &TokenHash) {
        let waiters = self.lock_waiters().remove(token).unwrap_or_default();
        for waiter in waiters {
            waiter.send(()).ok();
        }
    }

    /// Drops the waiters of `token` nobody waits for any more (their logout gave up: the
    /// message was lost, which re-validation heals).
    pub fn forget_revocation_waiters(&self, token: &TokenHash) {
        let mut waiters = self.lock_waiters();
        if let Some(list) = waiters.get_mut(token) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(token);
            }
        }
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Vec<oneshot::Sender<()>>>> {
        self.revocation_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The tokens with at least one live local connection.
    pub fn tokens(&self) -> Vec<TokenHash> {
        self.lock().by_token.keys().cloned().collect()
    }

    /// Number of local connections registered.
    pub fn len(&self) -> usize {
        self.lock().by_token.values().map(|e| e.conns.len()).sum()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().by_token.is_empty()
    }

    /// Ends the connections of every token whose expiry is due at `now`; returns how many
    /// connections. Each token is taken off the expiry queue once; its connections stay
    /// registered until gone (re-validation repeats the kick if one lingers).
    pub fn expire_due(&self, now: Instant) -> usize {
        let due = self.lock().expiries.pop_due(now);
        due.iter()
            .map(|token| self.kick(token, CloseReason::Expired))
            .sum()
    }

    /// Ends sessions at their tokens' expiry, until the process stops: sleeps until the
    /// earliest expiry (or until a sooner one is registered), then kicks what is due.
    pub async fn run_expiry(&self) {
        loop {
            let next = self.lock().expiries.next();
            let sooner = self.sooner.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = sooner => {}
                    }
                }
                None => sooner.await,
            }
            let ended = self.expire_due(Instant::now());
            if ended > 0 {
                tracing::info!(ended, "ended the sessions of expired tokens");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Default)]
    struct Probe(Mutex<Vec<CloseReason>>);

    impl Endable for Probe {
        fn end(&self, reason: CloseReason) {
            self.0.lock().unwrap().push(reason);
        }
    }

    impl Probe {
        fn ends(&self) -> Vec<CloseReason> {
            self.0.lock().unwrap().clone()
        }
    }

    fn weak(probe: &Arc<Probe>) -> Weak<dyn Endable> {
        let probe: Arc<dyn Endable> = probe.clone();
        Arc::downgrade(&probe)
    }

    #[test]
    fn kick_reaches_every_connection_of_the_token_until_it_is_gone() {
        let registry = ConnRegistry::default();
        let (a, b, c) = (
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
        );
        let t1 = TokenHash("t1".into());
        registry.register(&t1, None, ConnKey("a".into()), weak(&a));
        registry.register(&t1, None, ConnKey("b".into()), weak(&b));
        registry.register(&TokenHash("t2".into()), None, ConnKey("c".into()), weak(&c));
        registry.unregister(&t1, &ConnKey("b".into()));
        assert_eq!(registry.kick(&t1, CloseReason::Revoked), 1);
        // Not forgotten by the kick: a lingering connection is kicked again.
        assert_eq!(registry.kick(&t1, CloseReason::Revoked), 1);
        assert_eq!(a.ends(), vec![CloseReason::Revoked, CloseReason::Revoked]);
        assert!(b.ends().is_empty() && c.ends().is_empty());
        registry.unregister(&t1, &ConnKey("a".into()));
        assert_eq!(registry.kick(&t1, CloseReason::Revoked), 0);
        assert_eq!(registry.tokens(), vec![TokenHash("t2".into())]);
    }

    #[tokio::test]
    async fn a_logout_waits_for_its_revocation_to_be_applied_here() {
        let registry = ConnRegistry::default();
        let token = TokenHash("t".into());
        let waiter = registry.revocation_waiter(&token);
        let other = registry.revocation_waiter(&TokenHash("u".into()));
        registry.revocation_applied(&token);
        waiter.await.expect("woken");
        // A waiter that gave up is forgotten; one still waiting is kept.
        let gave_up = registry.revocation_waiter(&TokenHash("u".into()));
        drop(gave_up);
        registry.forget_revocation_waiters(&TokenHash("u".into()));
        assert_eq!(
            registry
                .lock_waiters()
                .get(&TokenHash("u".into()))
                .map(Vec::len),
            Some(1)
        );
        drop(other);
        registry.forget_revocation_waiters(&TokenHash("u".into()));
        assert!(registry.lock_waiters().is_empty());
    }

    #[test]
    fn one_connection_is_kept_inline_and_more_in_a_map() {
        let (a, b) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
        let key = |k: &str| ConnKey(k.into());
        let mut conns = Conns::Empty;
        conns.insert(key("a"), weak(&a));
        conns.insert(key("a"), weak(&a));
        assert!(
            matches!(conns, Conns::One(..)),
            "the same connection twice is one"
        );
        assert!(
            !conns.remove(&key("b")),
            "an unknown connection leaves it as it is"
        );
        conns.insert(key("b"), weak(&b));
        assert!(matches!(conns, Conns::Many(_)));
        assert_eq!((conns.len(), conns.live().len()), (2, 2));
        drop(b);
        assert_eq!(conns.live().len(), 1, "a dropped client is not live");
        assert!(!conns.remove(&key("a")));
        assert!(conns.remove(&key("b")), "none left");
        let mut one = Conns::Empty;
        one.insert(key("a"), weak(&a));
        assert!(one.remove(&key("a")));
        assert!(matches!(one, Conns::Empty));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_ends_sessions_at_their_token_deadline_only() {
        let registry = Arc::new(ConnRegistry::default());
        let (soon, later, gone) = (
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
        );
        let now = SystemTime::now();
        let t_soon = TokenHash("soon".into());
        let t_later = TokenHash("later".into());
        let t_gone = TokenHash("gone".into());
        registry.register(
            &t_later,
            Some(now + Duration::from_secs(10)),
            ConnKey("l".into()),
            weak(&later),
        );
        let task = tokio::spawn({
            let registry = registry.clone();
            async move { registry.run_expiry().await }
        });
        tokio::task::yield_now().await;
        // Registered after the task went to sleep until t_later: it must wake up sooner.
        registry.register(
            &t_soon,
            Some(now + Duration::from_secs(2)),
            ConnKey("s".into()),
            weak(&soon),
        );
        registry.register(
            &t_gone,
            Some(now + Duration::from_secs(3)),
            ConnKey("g".into()),
            weak(&gone),
        );
        registry.unregister(&t_gone, &ConnKey("g".into()));
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert!(soon.ends().is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(soon.ends(), vec![CloseReason::Expired]);
        assert!(later.ends().is_empty());
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(later.ends(), vec![CloseReason::Expired]);
        assert!(
            gone.ends().is_empty(),
            "an unregistered token leaves the queue"
        );
        // Dead in the store after its expiry: token_expired; before: token_revoked.
        assert_eq!(registry.kick_dead(&t_later), 1);
        assert_eq!(later.ends()[1], CloseReason::Expired);
        let fresh = Arc::new(Probe::default());
        let t_fresh = TokenHash("fresh".into());
        registry.register(
            &t_fresh,
            Some(SystemTime::now() + Duration::from_secs(60)),
            ConnKey("f".into()),
            weak(&fresh),
        );
        assert_eq!(registry.kick_dead(&t_fresh), 1);
        assert_eq!(fresh.ends(), vec![CloseReason::Revoked]);
        task.abort();
    }
}
