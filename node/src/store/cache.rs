//! A short local cache in front of the token store, so a reconnect storm of sockets sharing
//! tokens does not become a Redis storm. Entries live at most [`POSITIVE_TTL`] (never past
//! the token's own expiry); unknown tokens are remembered for [`NEGATIVE_TTL`]. A logout
//! invalidates the entry on every node through the revocations channel
//! ([`TokenStore::invalidate`]), so a dead token is refused cluster-wide at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{StoreResult, TokenHash, TokenRecord, TokenStore, UserId};

/// How long a valid token is trusted without asking the store.
pub const POSITIVE_TTL: Duration = Duration::from_secs(5);
/// How long an unknown token is remembered as unknown.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Entries kept at most; past this, the cache is emptied (it is only a cache).
pub const MAX_ENTRIES: usize = 100_000;

/// Caches `get` of an inner token store.
pub struct CachedTokenStore {
    inner: Arc<dyn TokenStore>,
    entries: Mutex<HashMap<TokenHash, (Option<TokenRecord>, Instant)>>,
}

impl CachedTokenStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn TokenStore>) -> Self {
        Self {
            inner,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<TokenHash, (Option<TokenRecord>, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When a token expires: its `created` plus `ttl` (None when `created` does not parse).
pub fn expires_at(record: &TokenRecord) -> Option<SystemTime> {
    let created = humantime::parse_rfc3339_weak(&record.created).ok()?;
    created.checked_add(Duration::from_secs(record.ttl))
}

/// Time left before a token expires, from its `created` and `ttl`.
fn remaining(record: &TokenRecord) -> Option<Duration> {
    expires_at(record)?.duration_since(SystemTime::now()).ok()
}

#[async_trait]
impl TokenStore for CachedTokenStore {
    async fn insert(&self, hash: &TokenHash, record: &TokenRecord) -> StoreResult<()> {
        self.lock().remove(hash);
        self.inner.insert(hash, record).await
    }

    async fn get(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        let now = Instant::now();
        if let Some((record, until)) = self.lock().get(hash)
            && *until > now
        {
            return Ok(record.clone());
        }
        let record = self.inner.get(hash).await?;
        let ttl = match &record {
            Some(record) => remaining(record).unwrap_or_default().min(POSITIVE_TTL),
            None => NEGATIVE_TTL,
        };
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(hash.clone(), (record.clone(), now + ttl));
        Ok(record)
    }

    async fn revoke(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        self.lock().remove(hash);
        self.inner.revoke(hash).await
    }

    async fn user_tokens(&self, user: &UserId) -> StoreResult<Vec<TokenHash>> {
        self.inner.user_tokens(user).await
    }

    fn invalidate(&self, hash: &TokenHash) {
        self.lock().remove(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryTokenStore;

    fn record(ttl: u64) -> TokenRecord {
        TokenRecord {
            user_id: UserId::new("1"),
            ttl,
            created: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            scopes: vec![],
        }
    }

    #[tokio::test]
    async fn cached_until_invalidated() {
        let inner = Arc::new(MemoryTokenStore::default());
        let cache = CachedTokenStore::new(inner.clone());
        let hash = TokenHash("h".into());
        cache.insert(&hash, &record(60)).await.unwrap();
        assert!(cache.get(&hash).await.unwrap().is_some());
        // Revoked behind the cache's back (another node): still cached…
        inner.revoke(&hash).await.unwrap();
        assert!(cache.get(&hash).await.unwrap().is_some());
        // …until the revocation message invalidates it.
        cache.invalidate(&hash);
        assert!(cache.get(&hash).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_tokens_are_remembered_briefly() {
        let inner = Arc::new(MemoryTokenStore::default());
        let cache = CachedTokenStore::new(inner.clone());
        let hash = TokenHash("h".into());
        assert!(cache.get(&hash).await.unwrap().is_none());
        inner.insert(&hash, &record(60)).await.unwrap();
        assert!(cache.get(&hash).await.unwrap().is_none());
        tokio::time::advance(NEGATIVE_TTL).await;
        assert!(cache.get(&hash).await.unwrap().is_some());
    }
}
