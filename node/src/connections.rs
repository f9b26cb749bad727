//! Which local connections authenticated with which token, so that a logout (on any node)
//! disconnects every socket that used the token. Socket.IO sockets and `/ws` connections
//! register a [`Kick`] closure; [`ConnRegistry::kick`] runs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::{ConnKey, TokenHash};

/// Disconnects one connection.
pub type Kick = Arc<dyn Fn() + Send + Sync>;

/// Local connections by token hash.
#[derive(Default)]
pub struct ConnRegistry {
    by_token: Mutex<HashMap<TokenHash, HashMap<ConnKey, Kick>>>,
}

impl ConnRegistry {
    /// Records that `conn` authenticated with `token`.
    pub fn register(&self, token: &TokenHash, conn: ConnKey, kick: Kick) {
        self.lock()
            .entry(token.clone())
            .or_default()
            .insert(conn, kick);
    }

    /// Forgets `conn` (it disconnected).
    pub fn unregister(&self, token: &TokenHash, conn: &ConnKey) {
        let mut map = self.lock();
        if let Some(conns) = map.get_mut(token) {
            conns.remove(conn);
            if conns.is_empty() {
                map.remove(token);
            }
        }
    }

    /// Disconnects every local connection of `token`; returns how many.
    pub fn kick(&self, token: &TokenHash) -> usize {
        let conns = self.lock().remove(token).unwrap_or_default();
        for kick in conns.values() {
            kick();
        }
        conns.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, HashMap<ConnKey, Kick>>> {
        self.by_token.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn kick_runs_every_connection_of_the_token_once() {
        let registry = ConnRegistry::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let kick: Kick = {
            let hits = hits.clone();
            Arc::new(move || {
                hits.fetch_add(1, Ordering::SeqCst);
            })
        };
        let t1 = TokenHash("t1".into());
        registry.register(&t1, ConnKey("a".into()), kick.clone());
        registry.register(&t1, ConnKey("b".into()), kick.clone());
        registry.register(&TokenHash("t2".into()), ConnKey("c".into()), kick.clone());
        registry.unregister(&t1, &ConnKey("b".into()));
        assert_eq!(registry.kick(&t1), 1);
        assert_eq!(registry.kick(&t1), 0);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
