//! Storage behind traits: access tokens, users, model records and topic presence. Embedded mode
//! uses [`memory`]; cluster mode uses Redis with the keys of `docs/REDIS.md`. Handlers only see
//! `Arc<dyn …Store>`, so both modes run the same code.

mod batch;
pub mod cache;
pub mod keys;
pub mod memory;
pub mod redis;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record exists already (duplicate username or e-mail).
    #[error("conflict: {0}")]
    Conflict(String),
    /// No such record.
    #[error("not found")]
    NotFound,
    /// The backend cannot be reached.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend returned something that does not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The writer may not change this record (it is not the record's owner).
    #[error("forbidden")]
    Forbidden,
    /// The record would be larger than [`ModelLimits::record_max_bytes`].
    #[error("record larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A count limit of the model store was reached.
    #[error("quota reached: {0:?}")]
    Quota(Quota),
}

/// Which count limit refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// The user holds [`ModelLimits::records_per_user`] records of this model already.
    RecordsPerUser(u64),
    /// The store holds [`ModelLimits::max_models`] models already; this would be a new one.
    Models(u64),
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A user id. Users created by fanout get increasing integers (JSON numbers, as LoopBack
/// returns them); tokens written by other producers may carry string ids. Numeric ids
/// serialize as numbers, others as strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Wraps an id string.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
    /// The id as a string (topic paths, keys).
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The id as a JSON value: a number when it is one.
    pub fn to_json(&self) -> Value {
        match self.0.parse::<u64>() {
            Ok(n) if n.to_string() == self.0 => Value::from(n),
            _ => Value::from(self.0.clone()),
        }
    }
    /// Reads an id from JSON: a non-negative integer or a non-empty string.
    pub fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n.as_u64().map(|n| Self(n.to_string())),
            Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(Self(s.clone())),
            _ => None,
        }
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        UserId::from_json(&value).ok_or_else(|| {
            serde::de::Error::custom("userId must be a non-negative integer or a string")
        })
    }
}

/// SHA-256 hex of an access token: what stores keep instead of the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(pub String);

/// What a store keeps about an access token (`fanout:token:<hash>` in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Whose token it is.
    pub user_id: UserId,
    /// Lifetime in seconds from `created`.
    pub ttl: u64,
    /// Creation time, RFC 3339 (LoopBack's `created`).
    pub created: String,
    /// Scopes (LoopBack's `scopes`); unused by fanout itself.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The user id.
    pub id: UserId,
    /// Unique user name.
    pub username: String,
    /// Unique e-mail address (stored lower-case).
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// A user to create; the store assigns the id.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique user name.
    pub username: String,
    /// Unique e-mail address, lower-case.
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// Access tokens, stored by hash with a TTL, indexed per user.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a token record that expires `record.ttl` seconds from now.
    async fn insert(&self, hash: &TokenHash, record: &TokenRecord) -> StoreResult<()>;
    /// The record of a live token; `None` when unknown or expired.
    async fn get(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>>;
    /// Deletes a token; returns its record when it was live.
    async fn revoke(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>>;
    /// Hashes of a user's live tokens.
    async fn user_tokens(&self, user: &UserId) -> StoreResult<Vec<TokenHash>>;
    /// Forgets any locally cached state of `hash` (another node revoked it).
    fn invalidate(&self, _hash: &TokenHash) {}
}

/// Registered users, unique by username and by e-mail.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user; `Conflict` when the username or e-mail is taken.
    async fn create(&self, user: NewUser) -> StoreResult<User>;
    /// Looks a user up by id.
    async fn get(&self, id: &UserId) -> StoreResult<Option<User>>;
    /// Looks a user up by username.
    async fn find_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    /// Looks a user up by e-mail (lower-case).
    async fn find_by_email(&self, email: &str) -> StoreResult<Option<User>>;
}

/// A model record: a JSON object whose `id` is set by the store.
pub type Record = Map<String, Value>;

/// Who may change an existing record: checked by the store atomically with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAccess {
    /// Any writer.
    Anyone,
    /// Only this user, and only when the record's stored owner is this user (a record
    /// without an owner, written before owners were kept, matches nobody).
    Owner(UserId),
}

impl WriteAccess {
    /// True when a record owned by `owner` may be changed.
    pub fn allows(&self, owner: Option<&UserId>) -> bool {
        match self {
            WriteAccess::Anyone => true,
            WriteAccess::Owner(user) => owner == Some(user),
        }
    }
}

/// Size and count limits of the model store (`FANOUT_MODEL_*`); 0 counts mean no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Largest record: bytes of its JSON without the `id` field.
    pub record_max_bytes: usize,
    /// Most records one user may own in one model.
    pub records_per_user: u64,
    /// Most models the store holds (a model exists from its first record on).
    pub max_models: u64,
}

impl ModelLimits {
    /// No limits (tests, tools).
    pub const NONE: ModelLimits = ModelLimits {
        record_max_bytes: usize::MAX,
        records_per_user: 0,
        max_models: 0,
    };

    /// `TooLarge` when `record` is over the size limit. The size is that of the record's
    /// JSON without its `id`, so it does not depend on the id or the store.
    pub fn check_size(&self, record: &Record) -> StoreResult<()> {
        if record_size(record) > self.record_max_bytes {
            Err(StoreError::TooLarge {
                max: self.record_max_bytes,
            })
        } else {
            Ok(())
        }
    }
}

/// Bytes of a record's JSON serialization, its `id` field left out.
pub fn record_size(record: &Record) -> usize {
    // `{` + `}` + one `,` between fields + each `"key":value`.
    let fields = record.iter().filter(|(key, _)| key.as_str() != "id");
    let mut size = 2;
    let mut count = 0usize;
    for (key, value) in fields {
        count += 1;
        size += json_len(&Value::String(key.clone())) + 1 + json_len(value);
    }
    size + count.saturating_sub(1)
}

fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing JSON into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// JSON records per model, ids from an increasing per-model counter. Each record has an
/// owner (the user who created it), kept beside the record, never inside its JSON: REST
/// answers and model events carry exactly the fields clients wrote, plus `id`.
#[async_trait]
pub trait ModelStore: Send + Sync {
    /// Creates a record owned by `owner` with the next id; returns it with `id` set.
    /// `TooLarge` or `Quota` when `limits` refuse it (no id is used up then).
    async fn create(
        &self,
        model: &str,
        owner: &UserId,
        data: Record,
        limits: &ModelLimits,
    ) -> StoreResult<Record>;
    /// Records of a model in id order, at most `limit`.
    async fn list(&self, model: &str, limit: usize) -> StoreResult<Vec<Record>>;
    /// One record.
    async fn get(&self, model: &str, id: u64) -> StoreResult<Option<Record>>;
    /// Replaces a record; returns the new record. `NotFound` when missing, `Forbidden` when
    /// `access` does not allow it, `TooLarge` over the size limit.
    async fn replace(
        &self,
        model: &str,
        id: u64,
        data: Record,
        access: &WriteAccess,
        limits: &ModelLimits,
    ) -> StoreResult<Record>;
    /// Merges fields into a record; returns the new record. Errors as [`ModelStore::replace`]
    /// (the size limit applies to the merged record).
    async fn patch(
        &self,
        model: &str,
        id: u64,
        data: Record,
        access: &WriteAccess,
        limits: &ModelLimits,
    ) -> StoreResult<Record>;
    /// Deletes a record; returns the deleted record. `NotFound` when missing, `Forbidden`
    /// when `access` does not allow it.
    async fn delete(&self, model: &str, id: u64, access: &WriteAccess) -> StoreResult<Record>;
}

/// Identifies one subscription holder (a Socket.IO socket or a `/ws` connection) cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnKey(pub String);

/// Which users are subscribed to which topics, across the cluster (the `presence` method).
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Records that `conn` (of `user`) subscribed to `topic`.
    async fn join(&self, topic: &str, conn: &ConnKey, user: &UserId) -> StoreResult<()>;
    /// Records that `conn` left `topic`.
    async fn leave(&self, topic: &str, conn: &ConnKey) -> StoreResult<()>;
    /// Distinct user ids subscribed to `topic`, sorted.
    async fn members(&self, topic: &str) -> StoreResult<Vec<UserId>>;
}

/// A person sitting in a `/chat` room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMember {
    /// The seat holder's connection (`<node>/sio/<sid>`): cluster-unique, names its node.
    pub conn: ConnKey,
    /// Display name.
    pub user: String,
    /// Gravatar URL.
    pub avatar: String,
}

/// Outcome of a seat claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatClaim {
    /// The seat is taken; the room's members now, the claimer last.
    Claimed(Vec<ChatMember>),
    /// The room was full.
    Full,
}

/// `/chat` room seats, claimed atomically cluster-wide; seats of a dead node do not count.
#[async_trait]
pub trait ChatStore: Send + Sync {
    /// Takes a seat in `room` unless it already holds `capacity` members.
    async fn claim_seat(
        &self,
        room: &str,
        member: &ChatMember,
        capacity: u32,
    ) -> StoreResult<SeatClaim>;
    /// Frees the seat of `conn` in `room`.
    async fn release_seat(&self, room: &str, conn: &ConnKey) -> StoreResult<()>;
    /// The members of `room`, in the order they sat down.
    async fn members(&self, room: &str) -> StoreResult<Vec<ChatMember>>;
}

/// Merges `patch` into `record`, keeping `id` as the store set it.
pub fn merge_record(record: &mut Record, patch: Record) {
    for (key, value) in patch {
        if key != "id" {
            record.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_size_is_the_json_without_id() {
        for value in [
            json!({}),
            json!({"a": 1}),
            json!({"a": 1, "b": "x\"é", "c": [1, {"d": null}]}),
            json!({"prénom": "Zoé", "n": 1.5e300}),
        ] {
            let Value::Object(record) = value else {
                unreachable!()
            };
            let expected = serde_json::to_string(&record).map(|s| s.len()).unwrap_or(0);
            assert_eq!(record_size(&record), expected, "{record:?}");
            let mut with_id = record.clone();
            with_id.insert("id".into(), json!(12345));
            assert_eq!(record_size(&with_id), expected);
        }
    }

    #[test]
    fn size_limit_and_access() {
        let limits = ModelLimits {
            record_max_bytes: 9,
            ..ModelLimits::NONE
        };
        let mut record = Record::new();
        record.insert("a".into(), json!("xyz")); // {"a":"xyz"} = 11 bytes
        assert!(matches!(
            limits.check_size(&record),
            Err(StoreError::TooLarge { max: 9 })
        ));
        record.insert("a".into(), json!(1)); // {"a":1} = 7 bytes
        assert!(limits.check_size(&record).is_ok());
        let (alice, bob) = (UserId::new("1"), UserId::new("2"));
        assert!(WriteAccess::Anyone.allows(None));
        assert!(WriteAccess::Owner(alice.clone()).allows(Some(&alice)));
        assert!(!WriteAccess::Owner(alice.clone()).allows(Some(&bob)));
        assert!(!WriteAccess::Owner(alice).allows(None));
    }
}
