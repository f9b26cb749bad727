//! In-memory stores for embedded mode. Same semantics as the Redis stores: tokens expire
//! exactly `ttl` seconds after they are stored; ids come from increasing counters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    ChatMember, ChatStore, ConnKey, ModelLimits, ModelStore, NewUser, PresenceStore, Quota, Record,
    SeatClaim, StoreError, StoreResult, TokenHash, TokenRecord, TokenStore, User, UserId,
    UserStore, WriteAccess, merge_record,
};

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the maps stay
/// consistent: every critical section below is a handful of map operations).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct TokenMaps {
    by_hash: HashMap<TokenHash, (TokenRecord, Instant)>,
    by_user: HashMap<UserId, HashSet<TokenHash>>,
    inserts_since_sweep: usize,
}

impl TokenMaps {
    fn remove(&mut self, hash: &TokenHash) -> Option<(TokenRecord, Instant)> {
        let entry = self.by_hash.remove(hash)?;
        if let Some(set) = self.by_user.get_mut(&entry.0.user_id) {
            set.remove(hash);
            if set.is_empty() {
                self.by_user.remove(&entry.0.user_id);
            }
        }
        Some(entry)
    }

    /// Drops expired tokens so memory does not grow with dead logins.
    fn sweep(&mut self, now: Instant) {
        let dead: Vec<TokenHash> = self
            .by_hash
            .iter()
            .filter(|(_, (_, expires))| *expires <= now)
            .map(|(hash, _)| hash.clone())
            .collect();
        for hash in dead {
            self.remove(&hash);
        }
        self.inserts_since_sweep = 0;
    }
}

/// Access tokens in memory.
#[derive(Default)]
pub struct MemoryTokenStore {
    maps: Mutex<TokenMaps>,
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn insert(&self, hash: &TokenHash, record: &TokenRecord) -> StoreResult<()> {
        let now = Instant::now();
        let mut maps = lock(&self.maps);
        maps.inserts_since_sweep += 1;
        if maps.inserts_since_sweep >= 1024 {
            maps.sweep(now);
        }
        let expires = now + Duration::from_secs(record.ttl);
        maps.by_hash.insert(hash.clone(), (record.clone(), expires));
        maps.by_user
            .entry(record.user_id.clone())
            .or_default()
            .insert(hash.clone());
        Ok(())
    }

    async fn get(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        let now = Instant::now();
        let mut maps = lock(&self.maps);
        match maps.by_hash.get(hash) {
            Some((record, expires)) if *expires > now => Ok(Some(record.clone())),
            Some(_) => {
                maps.remove(hash);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn revoke(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        let now = Instant::now();
        let removed = lock(&self.maps).remove(hash);
        Ok(removed
            .filter(|(_, expires)| *expires > now)
            .map(|(record, _)| record))
    }

    async fn user_tokens(&self, user: &UserId) -> StoreResult<Vec<TokenHash>> {
        let now = Instant::now();
        let maps = lock(&self.maps);
        let Some(set) = maps.by_user.get(user) else {
            return Ok(Vec::new());
        };
        Ok(set
            .iter()
            .filter(|hash| maps.by_hash.get(*hash).is_some_and(|(_, exp)| *exp > now))
            .cloned()
            .collect())
    }
}

#[derive(Default)]
struct UserMaps {
    next_id: u64,
    by_id: HashMap<UserId, User>,
    by_username: HashMap<String, UserId>,
    by_email: HashMap<String, UserId>,
}

/// Users in memory.
#[derive(Default)]
pub struct MemoryUserStore {
    maps: Mutex<UserMaps>,
}

#[async_trait]
impl UserStore for MemoryUserStore {
    async fn create(&self, new: NewUser) -> StoreResult<User> {
        let mut maps = lock(&self.maps);
        if maps.by_username.contains_key(&new.username) {
            return Err(StoreError::Conflict("username is taken".into()));
        }
        if maps.by_email.contains_key(&new.email) {
            return Err(StoreError::Conflict("email is taken".into()));
        }
        maps.next_id += 1;
        let user = User {
            id: UserId::new(maps.next_id.to_string()),
            username: new.username,
            email: new.email,
            password_hash: new.password_hash,
        };
        maps.by_username
            .insert(user.username.clone(), user.id.clone());
        maps.by_email.insert(user.email.clone(), user.id.clone());
        maps.by_id.insert(user.id.clone(), user.clone());
        Ok(user)
    }

    async fn get(&self, id: &UserId) -> StoreResult<Option<User>> {
        Ok(lock(&self.maps).by_id.get(id).cloned())
    }

    async fn find_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let maps = lock(&self.maps);
        Ok(maps
            .by_username
            .get(username)
            .and_then(|id| maps.by_id.get(id))
            .cloned())
    }

    async fn find_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let maps = lock(&self.maps);
        Ok(maps
            .by_email
            .get(email)
            .and_then(|id| maps.by_id.get(id))
            .cloned())
    }
}

#[derive(Default)]
struct Model {
    next_id: u64,
    records: BTreeMap<u64, Record>,
    /// Owner of each record (records from before owners were kept have none).
    owners: HashMap<u64, UserId>,
    /// Records each user owns.
    owned: HashMap<UserId, u64>,
}

impl Model {
    /// The record `id`, if `access` may change it: `NotFound` first, then `Forbidden`.
    fn writable(&mut self, id: u64, access: &WriteAccess) -> StoreResult<&mut Record> {
        let owner = self.owners.get(&id);
        let record = self.records.get_mut(&id).ok_or(StoreError::NotFound)?;
        if access.allows(owner) {
            Ok(record)
        } else {
            Err(StoreError::Forbidden)
        }
    }
}

/// Model records in memory, with their owners and per-user counts.
#[derive(Default)]
pub struct MemoryModelStore {
    models: Mutex<HashMap<String, Model>>,
}

#[async_trait]
impl ModelStore for MemoryModelStore {
    async fn create(
        &self,
        model: &str,
        owner: &UserId,
        mut data: Record,
        limits: &ModelLimits,
    ) -> StoreResult<Record> {
        limits.check_size(&data)?;
        let mut models = lock(&self.models);
        if !models.contains_key(model)
            && limits.max_models > 0
            && models.len() as u64 >= limits.max_models
        {
            return Err(StoreError::Quota(Quota::Models(limits.max_models)));
        }
        let entry = models.entry(model.to_string()).or_default();
        let owned = entry.owned.get(owner).copied().unwrap_or(0);
        if limits.records_per_user > 0 && owned >= limits.records_per_user {
            return Err(StoreError::Quota(Quota::RecordsPerUser(
                limits.records_per_user,
            )));
        }
        entry.next_id += 1;
        let id = entry.next_id;
        data.insert("id".into(), id.into());
        entry.records.insert(id, data.clone());
        entry.owners.insert(id, owner.clone());
        entry.owned.insert(owner.clone(), owned + 1);
        Ok(data)
    }

    async fn list(&self, model: &str, limit: usize) -> StoreResult<Vec<Record>> {
        let models = lock(&self.models);
        Ok(models
            .get(model)
            .map(|m| m.records.values().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn get(&self, model: &str, id: u64) -> StoreResult<Option<Record>> {
        let models = lock(&self.models);
        Ok(models.get(model).and_then(|m| m.records.get(&id)).cloned())
    }

    async fn replace(
        &self,
        model: &str,
        id: u64,
        mut data: Record,
        access: &WriteAccess,
        limits: &ModelLimits,
    ) -> StoreResult<Record> {
        limits.check_size(&data)?;
        let mut models = lock(&self.models);
        let record = models
            .get_mut(model)
            .ok_or(StoreError::NotFound)?
            .writable(id, access)?;
        data.insert("id".into(), id.into());
        *record = data.clone();
        Ok(data)
    }

    async fn patch(
        &self,
        model: &str,
        id: u64,
        data: Record,
        access: &WriteAccess,
        limits: &ModelLimits,
    ) -> StoreResult<Record> {
        let mut models = lock(&self.models);
        let record = models
            .get_mut(model)
            .ok_or(StoreError::NotFound)?
            .writable(id, access)?;
        let mut merged = record.clone();
        merge_record(&mut merged, data);
        limits.check_size(&merged)?;
        *record = merged.clone();
        Ok(merged)
    }

    async fn delete(&self, model: &str, id: u64, access: &WriteAccess) -> StoreResult<Record> {
        let mut models = lock(&self.models);
        let entry = models.get_mut(model).ok_or(StoreError::NotFound)?;
        entry.writable(id, access)?;
        let record = entry.records.remove(&id).ok_or(StoreError::NotFound)?;
        if let Some(owner) = entry.owners.remove(&id)
            && let Some(count) = entry.owned.get_mut(&owner)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                entry.owned.remove(&owner);
            }
        }
        Ok(record)
    }
}

/// Topic presence in memory: topic → connection → user.
#[derive(Default)]
pub struct MemoryPresenceStore {
    topics: Mutex<HashMap<String, HashMap<ConnKey, UserId>>>,
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn join(&self, topic: &str, conn: &ConnKey, user: &UserId) -> StoreResult<()> {
        lock(&self.topics)
            .entry(topic.to_string())
            .or_default()
            .insert(conn.clone(), user.clone());
        Ok(())
    }

    async fn leave(&self, topic: &str, conn: &ConnKey) -> StoreResult<()> {
        let mut topics = lock(&self.topics);
        if let Some(members) = topics.get_mut(topic) {
            members.remove(conn);
            if members.is_empty() {
                topics.remove(topic);
            }
        }
        Ok(())
    }

    async fn members(&self, topic: &str) -> StoreResult<Vec<UserId>> {
        let topics = lock(&self.topics);
        let users: BTreeSet<UserId> = topics
            .get(topic)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        Ok(users.into_iter().collect())
    }
}

/// `/chat` seats in memory.
#[derive(Default)]
pub struct MemoryChatStore {
    rooms: Mutex<HashMap<String, Vec<ChatMember>>>,
}

#[async_trait]
impl ChatStore for MemoryChatStore {
    async fn claim_seat(
        &self,
        room: &str,
        member: &ChatMember,
        capacity: u32,
    ) -> StoreResult<SeatClaim> {
        let mut rooms = lock(&self.rooms);
        let members = rooms.entry(room.to_string()).or_default();
        members.retain(|m| m.conn != member.conn);
        if members.len() >= capacity as usize {
            return Ok(SeatClaim::Full);
        }
        members.push(member.clone());
        Ok(SeatClaim::Claimed(members.clone()))
    }

    async fn release_seat(&self, room: &str, conn: &ConnKey) -> StoreResult<()> {
        let mut rooms = lock(&self.rooms);
        if let Some(members) = rooms.get_mut(room) {
            members.retain(|m| &m.conn != conn);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
        Ok(())
    }

    async fn members(&self, room: &str) -> StoreResult<Vec<ChatMember>> {
        Ok(lock(&self.rooms).get(room).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, ttl: u64) -> TokenRecord {
        TokenRecord {
            user_id: UserId::new(user),
            ttl,
            created: "2026-01-01T00:00:00Z".into(),
            scopes: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_expires_exactly_at_ttl() {
        let store = MemoryTokenStore::default();
        let hash = TokenHash("h1".into());
        store.insert(&hash, &record("1", 10)).await.unwrap();
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(store.get(&hash).await.unwrap().is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(store.get(&hash).await.unwrap().is_none());
        assert!(
            store
                .user_tokens(&UserId::new("1"))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn revoke_removes_token_and_index() {
        let store = MemoryTokenStore::default();
        let (a, b) = (TokenHash("a".into()), TokenHash("b".into()));
        store.insert(&a, &record("7", 100)).await.unwrap();
        store.insert(&b, &record("7", 100)).await.unwrap();
        assert_eq!(store.user_tokens(&UserId::new("7")).await.unwrap().len(), 2);
        assert!(store.revoke(&a).await.unwrap().is_some());
        assert!(store.revoke(&a).await.unwrap().is_none());
        assert_eq!(store.user_tokens(&UserId::new("7")).await.unwrap(), vec![b]);
    }

    #[tokio::test]
    async fn users_are_unique_by_name_and_email() {
        let store = MemoryUserStore::default();
        let new = |u: &str, e: &str| NewUser {
            username: u.into(),
            email: e.into(),
            password_hash: "x".into(),
        };
        let alice = store.create(new("alice", "a@x.io")).await.unwrap();
        assert_eq!(alice.id.to_json(), serde_json::json!(1));
        assert!(matches!(
            store.create(new("alice", "b@x.io")).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.create(new("bob", "a@x.io")).await,
            Err(StoreError::Conflict(_))
        ));
        let bob = store.create(new("bob", "b@x.io")).await.unwrap();
        assert_eq!(bob.id.as_str(), "2");
        assert_eq!(store.find_by_email("b@x.io").await.unwrap(), Some(bob));
    }

    #[tokio::test]
    async fn model_crud_with_increasing_ids() {
        let store = MemoryModelStore::default();
        let (owner, any, none) = (UserId::new("1"), WriteAccess::Anyone, &ModelLimits::NONE);
        let mut data = Record::new();
        data.insert("item".into(), "tea".into());
        data.insert("id".into(), 99.into());
        let first = store
            .create("Order", &owner, data.clone(), none)
            .await
            .unwrap();
        let second = store.create("Order", &owner, data, none).await.unwrap();
        assert_eq!(first["id"], 1);
        assert_eq!(second["id"], 2);
        let mut patch = Record::new();
        patch.insert("qty".into(), 3.into());
        patch.insert("id".into(), 5.into());
        let patched = store.patch("Order", 1, patch, &any, none).await.unwrap();
        assert_eq!(patched["id"], 1);
        assert_eq!(patched["qty"], 3);
        assert_eq!(patched["item"], "tea");
        let replaced = store
            .replace("Order", 1, Record::new(), &any, none)
            .await
            .unwrap();
        assert_eq!(replaced.len(), 1);
        assert!(matches!(
            store.replace("Order", 9, Record::new(), &any, none).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.delete("Order", 2, &any).await.unwrap()["id"], 2);
        assert_eq!(store.list("Order", 10).await.unwrap().len(), 1);
        assert!(store.list("Other", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_owner_changes_a_record() {
        let store = MemoryModelStore::default();
        let (alice, bob) = (UserId::new("1"), UserId::new("2"));
        let none = &ModelLimits::NONE;
        let created = store
            .create("Order", &alice, Record::new(), none)
            .await
            .unwrap();
        assert_eq!(created.len(), 1, "the owner is not inside the record");
        let as_bob = WriteAccess::Owner(bob.clone());
        let as_alice = WriteAccess::Owner(alice.clone());
        let mut data = Record::new();
        data.insert("x".into(), 1.into());
        assert!(matches!(
            store.replace("Order", 1, data.clone(), &as_bob, none).await,
            Err(StoreError::Forbidden)
        ));
        assert!(matches!(
            store.patch("Order", 1, data.clone(), &as_bob, none).await,
            Err(StoreError::Forbidden)
        ));
        assert!(matches!(
            store.delete("Order", 1, &as_bob).await,
            Err(StoreError::Forbidden)
        ));
        assert!(matches!(
            store.delete("Order", 7, &as_bob).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store.get("Order", 1).await.unwrap().unwrap().len(),
            1,
            "refused writes change nothing"
        );
        assert!(store.patch("Order", 1, data, &as_alice, none).await.is_ok());
        assert!(store.delete("Order", 1, &as_alice).await.is_ok());
    }

    #[tokio::test]
    async fn quotas_and_size_limit() {
        let store = MemoryModelStore::default();
        let (alice, bob) = (UserId::new("1"), UserId::new("2"));
        let limits = ModelLimits {
            record_max_bytes: 16,
            records_per_user: 2,
            max_models: 2,
        };
        let small = Record::new();
        let mut big = Record::new();
        big.insert("text".into(), "0123456789".into()); // {"text":"0123456789"}: 21 bytes
        assert!(matches!(
            store.create("A", &alice, big.clone(), &limits).await,
            Err(StoreError::TooLarge { max: 16 })
        ));
        for _ in 0..2 {
            store
                .create("A", &alice, small.clone(), &limits)
                .await
                .unwrap();
        }
        assert!(matches!(
            store.create("A", &alice, small.clone(), &limits).await,
            Err(StoreError::Quota(Quota::RecordsPerUser(2)))
        ));
        // Another user has a quota of their own; a delete frees one.
        store
            .create("A", &bob, small.clone(), &limits)
            .await
            .unwrap();
        store
            .delete("A", 1, &WriteAccess::Owner(alice.clone()))
            .await
            .unwrap();
        let again = store
            .create("A", &alice, small.clone(), &limits)
            .await
            .unwrap();
        assert_eq!(again["id"], 4, "no id was used up by refused creates");
        // A patch may not grow a record past the limit.
        assert!(matches!(
            store
                .patch("A", 4, big, &WriteAccess::Anyone, &limits)
                .await,
            Err(StoreError::TooLarge { .. })
        ));
        store
            .create("B", &alice, small.clone(), &limits)
            .await
            .unwrap();
        assert!(matches!(
            store.create("C", &alice, small.clone(), &limits).await,
            Err(StoreError::Quota(Quota::Models(2)))
        ));
        store.create("B", &bob, small, &limits).await.unwrap();
    }

    #[tokio::test]
    async fn chat_seats_are_capped() {
        let store = MemoryChatStore::default();
        let member = |c: &str| ChatMember {
            conn: ConnKey(c.into()),
            user: c.into(),
            avatar: String::new(),
        };
        assert!(
            matches!(store.claim_seat("r", &member("a"), 2).await.unwrap(), SeatClaim::Claimed(m) if m.len() == 1)
        );
        assert!(
            matches!(store.claim_seat("r", &member("b"), 2).await.unwrap(), SeatClaim::Claimed(m) if m.len() == 2)
        );
        assert_eq!(
            store.claim_seat("r", &member("c"), 2).await.unwrap(),
            SeatClaim::Full
        );
        store.release_seat("r", &ConnKey("a".into())).await.unwrap();
        assert!(
            matches!(store.claim_seat("r", &member("c"), 2).await.unwrap(), SeatClaim::Claimed(m) if m[1].user == "c")
        );
        assert_eq!(store.members("r").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn presence_lists_distinct_users() {
        let store = MemoryPresenceStore::default();
        let (c1, c2, c3) = (
            ConnKey("c1".into()),
            ConnKey("c2".into()),
            ConnKey("c3".into()),
        );
        store.join("t", &c1, &UserId::new("2")).await.unwrap();
        store.join("t", &c2, &UserId::new("2")).await.unwrap();
        store.join("t", &c3, &UserId::new("1")).await.unwrap();
        assert_eq!(
            store.members("t").await.unwrap(),
            vec![UserId::new("1"), UserId::new("2")]
        );
        store.leave("t", &c3).await.unwrap();
        assert_eq!(store.members("t").await.unwrap(), vec![UserId::new("2")]);
    }
}
