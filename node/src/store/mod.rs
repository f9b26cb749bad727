//! Storage behind traits: access tokens, users, model records and topic presence. Embedded mode
//! uses [`memory`]; cluster mode uses Redis with the keys of `docs/REDIS.md`. Handlers only see
//! `Arc<dyn …Store>`, so both modes run the same code.

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

/// JSON records per model, ids from an increasing per-model counter.
#[async_trait]
pub trait ModelStore: Send + Sync {
    /// Creates a record with the next id; returns it with `id` set.
    async fn create(&self, model: &str, data: Record) -> StoreResult<Record>;
    /// Records of a model in id order, at most `limit`.
    async fn list(&self, model: &str, limit: usize) -> StoreResult<Vec<Record>>;
    /// One record.
    async fn get(&self, model: &str, id: u64) -> StoreResult<Option<Record>>;
    /// Replaces a record (`NotFound` when missing); returns the new record.
    async fn replace(&self, model: &str, id: u64, data: Record) -> StoreResult<Record>;
    /// Merges fields into a record (`NotFound` when missing); returns the new record.
    async fn patch(&self, model: &str, id: u64, data: Record) -> StoreResult<Record>;
    /// Deletes a record (`NotFound` when missing); returns the deleted record.
    async fn delete(&self, model: &str, id: u64) -> StoreResult<Record>;
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
