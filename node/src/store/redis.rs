//! Redis stores for cluster mode (deadpool-redis), with the keys of [`super::keys`]. Writes
//! that must be atomic (user creation, record replace/delete) are Lua scripts; record patches
//! use WATCH/MULTI. Every command is timed into `fanout_redis_command_duration_seconds`.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncCommands, Script};
use deadpool_redis::{Config as PoolSettings, Pool, PoolConfig, Runtime, Timeouts};
use tokio::time::Instant;

use super::batch::PresenceBatcher;
use super::{
    ChatMember, ChatStore, ConnKey, ModelLimits, ModelStore, NewUser, PresenceStore, Quota, Record,
    SeatClaim, StoreError, StoreResult, TokenHash, TokenRecord, TokenStore, User, UserId,
    UserStore, WriteAccess, keys, merge_record,
};
use crate::metrics::Metrics;

/// A Redis connection pool plus what every store needs: key prefix and metrics.
#[derive(Clone)]
pub struct RedisBackend {
    pool: Pool,
    prefix: String,
    metrics: Metrics,
}

impl RedisBackend {
    /// A pool for `url` whose waits and connects are bounded, so a lost Redis turns into fast
    /// `unavailable` errors instead of hanging requests.
    pub fn new(url: &str, prefix: &str, metrics: Metrics) -> Result<Self, StoreError> {
        let timeout = Some(Duration::from_secs(2));
        let mut settings = PoolSettings::from_url(url);
        settings.pool = Some(PoolConfig {
            max_size: 32,
            timeouts: Timeouts {
                wait: timeout,
                create: timeout,
                recycle: timeout,
            },
            ..PoolConfig::default()
        });
        let pool = settings
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|err| StoreError::Unavailable(format!("redis pool: {err}")))?;
        Ok(Self {
            pool,
            prefix: prefix.to_string(),
            metrics,
        })
    }

    /// Runs one store operation on a pooled connection, timing it and mapping errors.
    pub(super) async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let result = match self.pool.get().await {
            Ok(conn) => f(conn).await,
            Err(err) => Err(StoreError::Unavailable(format!("redis connection: {err}"))),
        };
        let ok = !matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Corrupt(_))
        );
        self.metrics.redis_command(op, started.elapsed(), ok);
        result
    }

    /// A pooled connection to keep across operations: the pool checks a connection with a
    /// round trip (`UNWATCH` + `PING`) every time it hands one out.
    pub(super) async fn connection(&self) -> StoreResult<deadpool_redis::Connection> {
        self.pool
            .get()
            .await
            .map_err(|err| StoreError::Unavailable(format!("redis connection: {err}")))
    }

    /// Records one operation's duration and outcome (for operations not run through `run`).
    pub(super) fn record(&self, op: &'static str, took: Duration, ok: bool) {
        self.metrics.redis_command(op, took, ok);
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, raw: &str) -> StoreResult<T> {
    serde_json::from_str(raw).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))
}

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// Tokens: `SET <prefix>:token:<hash> <json> EX ttl` + `SADD <prefix>:user-tokens:<user>`.
pub struct RedisTokenStore(pub RedisBackend);

#[async_trait]
impl TokenStore for RedisTokenStore {
    async fn insert(&self, hash: &TokenHash, record: &TokenRecord) -> StoreResult<()> {
        let key = keys::token(self.0.prefix(), hash);
        let index = keys::user_tokens(self.0.prefix(), &record.user_id);
        let json = encode(record)?;
        let ttl = record.ttl;
        let member = hash.0.clone();
        self.0
            .run("token_insert", |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .arg("EX")
                    .arg(ttl)
                    .ignore()
                    .sadd(&index, &member)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await
    }

    async fn get(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        let key = keys::token(self.0.prefix(), hash);
        let raw: Option<String> = self
            .0
            .run("token_get", |mut conn| async move {
                conn.get(&key).await.map_err(unavailable)
            })
            .await?;
        raw.map(|raw| decode("token", &raw)).transpose()
    }

    async fn revoke(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        let key = keys::token(self.0.prefix(), hash);
        let raw: Option<String> = self
            .0
            .run("token_revoke", |mut conn| async move {
                redis::cmd("GETDEL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let record: TokenRecord = decode("token", &raw)?;
        let index = keys::user_tokens(self.0.prefix(), &record.user_id);
        let member = hash.0.clone();
        self.0
            .run("token_unindex", |mut conn| async move {
                conn.srem::<_, _, ()>(&index, &member)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(Some(record))
    }

    async fn user_tokens(&self, user: &UserId) -> StoreResult<Vec<TokenHash>> {
        let index = keys::user_tokens(self.0.prefix(), user);
        let prefix = self.0.prefix().to_string();
        self.0
            .run("token_list", |mut conn| async move {
                let members: Vec<String> = conn.smembers(&index).await.map_err(unavailable)?;
                let mut live = Vec::new();
                for member in members {
                    let hash = TokenHash(member);
                    let exists: bool = conn
                        .exists(keys::token(&prefix, &hash))
                        .await
                        .map_err(unavailable)?;
                    if exists {
                        live.push(hash);
                    } else {
                        // Expired by Redis: drop it from the index too.
                        conn.srem::<_, _, ()>(&index, &hash.0)
                            .await
                            .map_err(unavailable)?;
                    }
                }
                Ok(live)
            })
            .await
    }
}

/// Users: `<prefix>:user:<id>` JSON, unique indexes by username and e-mail.
pub struct RedisUserStore(pub RedisBackend);

/// Creates a user atomically: both indexes checked and written with the record.
/// KEYS: by-username, by-email, next-id; ARGV: username, email, user-key prefix, json-without-id.
const CREATE_USER: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {err = 'username'} end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {err = 'email'} end
local id = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], id)
redis.call('HSET', KEYS[2], ARGV[2], id)
-- gsub returns (string, count): the parentheses keep only the string.
redis.call('SET', ARGV[3] .. id, (string.gsub(ARGV[4], '"id":"__ID__"', '"id":' .. id, 1)))
return id
"#;

#[async_trait]
impl UserStore for RedisUserStore {
    async fn create(&self, new: NewUser) -> StoreResult<User> {
        let prefix = self.0.prefix().to_string();
        let mut user = User {
            id: UserId::new("__ID__"),
            username: new.username,
            email: new.email,
            password_hash: new.password_hash,
        };
        // The placeholder id serializes as the string "__ID__"; the script swaps in the number.
        let json = encode(&user)?;
        let user_key_prefix = keys::user(&prefix, &UserId::new(""));
        let (name, email) = (user.username.clone(), user.email.clone());
        let id: u64 = self
            .0
            .run("user_create", |mut conn| async move {
                Script::new(CREATE_USER)
                    .key(keys::users_by_username(&prefix))
                    .key(keys::users_by_email(&prefix))
                    .key(keys::users_next_id(&prefix))
                    .arg(&name)
                    .arg(&email)
                    .arg(&user_key_prefix)
                    .arg(&json)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|err| {
                        // The script's own errors name the taken field.
                        let text = err.to_string();
                        if text.contains("username") {
                            StoreError::Conflict("username is taken".into())
                        } else if text.contains("email") {
                            StoreError::Conflict("email is taken".into())
                        } else {
                            unavailable(err)
                        }
                    })
            })
            .await?;
        user.id = UserId::new(id.to_string());
        Ok(user)
    }

    async fn get(&self, id: &UserId) -> StoreResult<Option<User>> {
        let key = keys::user(self.0.prefix(), id);
        let raw: Option<String> = self
            .0
            .run("user_get", |mut conn| async move {
                conn.get(&key).await.map_err(unavailable)
            })
            .await?;
        raw.map(|raw| decode("user", &raw)).transpose()
    }

    async fn find_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let index = keys::users_by_username(self.0.prefix());
        let username = username.to_string();
        let id: Option<String> = self
            .0
            .run("user_find", |mut conn| async move {
                conn.hget(&index, &username).await.map_err(unavailable)
            })
            .await?;
        match id {
            Some(id) => self.get(&UserId::new(id)).await,
            None => Ok(None),
        }
    }

    async fn find_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let index = keys::users_by_email(self.0.prefix());
        let email = email.to_string();
        let id: Option<String> = self
            .0
            .run("user_find", |mut conn| async move {
                conn.hget(&index, &email).await.map_err(unavailable)
            })
            .await?;
        match id {
            Some(id) => self.get(&UserId::new(id)).await,
            None => Ok(None),
        }
    }
}

/// Models: one hash per model (`<prefix>:model:<Model>`, field = id, value = the record's
/// JSON exactly as clients see it), ids from `<prefix>:model-ids:<Model>`, owners beside the
/// records in `<prefix>:model-owners:<Model>`, per-user counts in
/// `<prefix>:model-owned:<Model>`, model names in `<prefix>:models`. Every write that checks
/// an owner or a quota does it in the same Lua script (or WATCH transaction) as the write.
pub struct RedisModelStore(pub RedisBackend);

/// Creates a record within the quotas. KEYS: models set, id counter, records, owners, owned
/// counts. ARGV: model, owner, record JSON without id, max models, max records per user
/// (0 = no limit). Returns the id, -1 over the model quota, -2 over the user's quota.
const CREATE_RECORD: &str = r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  local max = tonumber(ARGV[4])
  if max > 0 and redis.call('SCARD', KEYS[1]) >= max then return -1 end
end
local limit = tonumber(ARGV[5])
if limit > 0 and tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0') >= limit then return -2 end
redis.call('SADD', KEYS[1], ARGV[1])
local id = redis.call('INCR', KEYS[2])
local body = ARGV[3]
local record
if body == '{}' then
  record = '{"id":' .. id .. '}'
else
  record = '{"id":' .. id .. ',' .. string.sub(body, 2)
end
redis.call('HSET', KEYS[3], id, record)
redis.call('HSET', KEYS[4], id, ARGV[2])
redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
return id
"#;

/// Replaces a record if it exists and the writer may. KEYS: records, owners. ARGV: id, JSON,
/// "1" to require the owner, owner. Returns 1, 0 (no record) or -1 (not the owner).
const REPLACE_RECORD: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] == '1' and redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[4] then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Deletes a record if the writer may and returns it. KEYS: records, owners, owned counts.
/// ARGV: id, "1" to require the owner, owner. Returns the record, 0 (none) or -1 (not the
/// owner).
const DELETE_RECORD: &str = r#"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[2] == '1' and owner ~= ARGV[3] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
if owner then
  redis.call('HDEL', KEYS[2], ARGV[1])
  if redis.call('HINCRBY', KEYS[3], owner, -1) <= 0 then redis.call('HDEL', KEYS[3], owner) end
end
return value
"#;

fn decode_record(raw: &str) -> StoreResult<Record> {
    decode("record", raw)
}

/// `"1"` and the owner when `access` requires one, else `"0"` and nothing.
fn owner_args(access: &WriteAccess) -> (&'static str, String) {
    match access {
        WriteAccess::Anyone => ("0", String::new()),
        WriteAccess::Owner(user) => ("1", user.as_str().to_string()),
    }
}

async fn unwatch(conn: &mut deadpool_redis::Connection) -> StoreResult<()> {
    redis::cmd("UNWATCH")
        .query_async::<()>(conn)
        .await
        .map_err(unavailable)
}

#[async_trait]
impl ModelStore for RedisModelStore {
    async fn create(
        &self,
        model: &str,
        owner: &UserId,
        mut data: Record,
        limits: &ModelLimits,
    ) -> StoreResult<Record> {
        data.remove("id");
        limits.check_size(&data)?;
        let prefix = self.0.prefix();
        let names = [
            keys::models(prefix),
            keys::model_next_id(prefix, model),
            keys::model(prefix, model),
            keys::model_owners(prefix, model),
            keys::model_owned(prefix, model),
        ];
        let json = encode(&data)?;
        let (name, owner_arg) = (model.to_string(), owner.as_str().to_string());
        let (max_models, per_user) = (limits.max_models, limits.records_per_user);
        let id: i64 = self
            .0
            .run("model_create", |mut conn| async move {
                let [set, counter, records, owners, owned] = &names;
                Script::new(CREATE_RECORD)
                    .key(set)
                    .key(counter)
                    .key(records)
                    .key(owners)
                    .key(owned)
                    .arg(&name)
                    .arg(&owner_arg)
                    .arg(&json)
                    .arg(max_models)
                    .arg(per_user)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        match id {
            -1 => Err(StoreError::Quota(Quota::Models(max_models))),
            -2 => Err(StoreError::Quota(Quota::RecordsPerUser(per_user))),
            id if id > 0 => {
                data.insert("id".into(), id.into());
                Ok(data)
            }
            other => Err(StoreError::Corrupt(format!(
                "record create returned {other}"
            ))),
        }
    }

    async fn list(&self, model: &str, limit: usize) -> StoreResult<Vec<Record>> {
        let hash = keys::model(self.0.prefix(), model);
        let all: Vec<(u64, String)> = self
            .0
            .run("model_list", |mut conn| async move {
                conn.hgetall(&hash).await.map_err(unavailable)
            })
            .await?;
        let mut all = all;
        all.sort_by_key(|(id, _)| *id);
        all.iter()
            .take(limit)
            .map(|(_, raw)| decode_record(raw))
            .collect()
    }

    async fn get(&self, model: &str, id: u64) -> StoreResult<Option<Record>> {
        let hash = keys::model(self.0.prefix(), model);
        let raw: Option<String> = self
            .0
            .run("model_get", |mut conn| async move {
                conn.hget(&hash, id).await.map_err(unavailable)
            })
            .await?;
        raw.map(|raw| decode_record(&raw)).transpose()
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
        let (hash, owners) = (
            keys::model(self.0.prefix(), model),
            keys::model_owners(self.0.prefix(), model),
        );
        data.insert("id".into(), id.into());
        let json = encode(&data)?;
        let (check, owner) = owner_args(access);
        let replaced: i64 = self
            .0
            .run("model_replace", |mut conn| async move {
                Script::new(REPLACE_RECORD)
                    .key(&hash)
                    .key(&owners)
                    .arg(id)
                    .arg(&json)
                    .arg(check)
                    .arg(&owner)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        match replaced {
            1 => Ok(data),
            -1 => Err(StoreError::Forbidden),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn patch(
        &self,
        model: &str,
        id: u64,
        patch: Record,
        access: &WriteAccess,
        limits: &ModelLimits,
    ) -> StoreResult<Record> {
        let (hash, owners) = (
            keys::model(self.0.prefix(), model),
            keys::model_owners(self.0.prefix(), model),
        );
        let access = access.clone();
        let limits = *limits;
        self.0
            .run("model_patch", |mut conn| async move {
                // Optimistic transaction: retry when another writer changed the hash meanwhile.
                // A record's owner never changes while the record exists, so watching the
                // records hash covers the owner check too.
                for _ in 0..16 {
                    redis::cmd("WATCH")
                        .arg(&hash)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    let raw: Option<String> = conn.hget(&hash, id).await.map_err(unavailable)?;
                    let Some(raw) = raw else {
                        unwatch(&mut conn).await?;
                        return Err(StoreError::NotFound);
                    };
                    if let WriteAccess::Owner(_) = access {
                        let owner: Option<String> =
                            conn.hget(&owners, id).await.map_err(unavailable)?;
                        if !access.allows(owner.map(UserId::new).as_ref()) {
                            unwatch(&mut conn).await?;
                            return Err(StoreError::Forbidden);
                        }
                    }
                    let mut record = decode_record(&raw)?;
                    merge_record(&mut record, patch.clone());
                    if let Err(err) = limits.check_size(&record) {
                        unwatch(&mut conn).await?;
                        return Err(err);
                    }
                    let json = encode(&record)?;
                    let done: Option<()> = redis::pipe()
                        .atomic()
                        .hset(&hash, id, &json)
                        .ignore()
                        .query_async(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    if done.is_some() {
                        return Ok(record);
                    }
                }
                Err(StoreError::Unavailable("record too contended".into()))
            })
            .await
    }

    async fn delete(&self, model: &str, id: u64, access: &WriteAccess) -> StoreResult<Record> {
        let prefix = self.0.prefix();
        let (hash, owners, owned) = (
            keys::model(prefix, model),
            keys::model_owners(prefix, model),
            keys::model_owned(prefix, model),
        );
        let (check, owner) = owner_args(access);
        let reply: redis::Value = self
            .0
            .run("model_delete", |mut conn| async move {
                Script::new(DELETE_RECORD)
                    .key(&hash)
                    .key(&owners)
                    .key(&owned)
                    .arg(id)
                    .arg(check)
                    .arg(&owner)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        match reply {
            redis::Value::BulkString(raw) => decode_record(&String::from_utf8_lossy(&raw)),
            redis::Value::Int(-1) => Err(StoreError::Forbidden),
            _ => Err(StoreError::NotFound),
        }
    }
}

/// Presence: `<prefix>:presence:<topic>` hash, field `<node>/<transport>/<id>` → user id.
/// Entries of nodes whose heartbeat key expired are ignored and cleaned up on read, so a
/// crashed node does not keep users present forever. Joins and leaves go through a
/// [`PresenceBatcher`] (pipelined).
pub struct RedisPresenceStore {
    backend: RedisBackend,
    writes: PresenceBatcher,
}

/// How often a node refreshes its heartbeat key, and how long the key lives.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Lifetime of a node heartbeat key.
pub const HEARTBEAT_TTL_SECS: u64 = 15;

impl RedisPresenceStore {
    /// The store on `backend`; starts its writer task.
    pub fn new(backend: RedisBackend) -> Self {
        let writes = PresenceBatcher::start(backend.clone());
        Self { backend, writes }
    }

    /// Refreshes this node's heartbeat key forever (spawn it).
    pub async fn run_heartbeat(backend: RedisBackend, node_id: String) {
        let key = keys::node_alive(backend.prefix(), &node_id);
        loop {
            let key = key.clone();
            let result = backend
                .run("heartbeat", |mut conn| async move {
                    conn.set_ex::<_, _, ()>(&key, 1, HEARTBEAT_TTL_SECS)
                        .await
                        .map_err(unavailable)
                })
                .await;
            if let Err(err) = result {
                tracing::debug!(%err, "heartbeat failed");
            }
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        }
    }
}

fn node_of(conn: &str) -> &str {
    conn.split('/').next().unwrap_or(conn)
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn join(&self, topic: &str, conn: &ConnKey, user: &UserId) -> StoreResult<()> {
        let key = keys::presence(self.backend.prefix(), topic);
        self.writes
            .hset(key, conn.0.clone(), user.as_str().to_string())
            .await
    }

    async fn leave(&self, topic: &str, conn: &ConnKey) -> StoreResult<()> {
        let key = keys::presence(self.backend.prefix(), topic);
        self.writes.hdel(key, conn.0.clone()).await
    }

    async fn members(&self, topic: &str) -> StoreResult<Vec<UserId>> {
        let key = keys::presence(self.backend.prefix(), topic);
        let prefix = self.backend.prefix().to_string();
        let live = self
            .backend
            .run("presence_members", |mut c| async move {
                live_entries(&mut c, &prefix, &key).await
            })
            .await?;
        let users: BTreeSet<UserId> = live
            .into_iter()
            .map(|(_, user)| UserId::new(user))
            .collect();
        Ok(users.into_iter().collect())
    }
}

/// The entries of a hash whose fields are connection keys (`<node>/<transport>/<id>`), minus
/// those of nodes whose heartbeat key expired — which are deleted on the way, so a crashed
/// node's presence and seats do not outlive it. One `EXISTS` per distinct node.
async fn live_entries(
    c: &mut deadpool_redis::Connection,
    prefix: &str,
    key: &str,
) -> StoreResult<Vec<(String, String)>> {
    let entries: Vec<(String, String)> = c.hgetall(key).await.map_err(unavailable)?;
    let nodes: BTreeSet<&str> = entries.iter().map(|(conn, _)| node_of(conn)).collect();
    let mut alive = BTreeSet::new();
    for node in nodes {
        let exists: bool = c
            .exists(keys::node_alive(prefix, node))
            .await
            .map_err(unavailable)?;
        if exists {
            alive.insert(node.to_string());
        }
    }
    let (live, dead): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(conn, _)| alive.contains(node_of(conn)));
    for (conn, _) in &dead {
        c.hdel::<_, _, ()>(key, conn).await.map_err(unavailable)?;
    }
    Ok(live)
}

/// `/chat` seats: `<prefix>:chat:<room>` hash, field = connection key (`<node>/sio/<sid>`),
/// value = `<order>|<member json>`. The claim is one Lua script: seats whose node heartbeat
/// key (`<prefix>:node:<id>`) expired are removed first, then the seat is taken only while the
/// room holds fewer than `capacity` — never check-then-act across round trips.
pub struct RedisChatStore(pub RedisBackend);

/// KEYS: room hash, order counter. ARGV: node-key prefix, field, member json, capacity.
/// Returns the room's entries after the claim, or `false` when full.
const CLAIM_SEAT: &str = r#"
local entries = redis.call('HGETALL', KEYS[1])
local alive = 0
for i = 1, #entries, 2 do
  local field = entries[i]
  local node = string.match(field, '^([^/]*)/')
  if field ~= ARGV[2] and node and redis.call('EXISTS', ARGV[1] .. node) == 0 then
    redis.call('HDEL', KEYS[1], field)
  elseif field ~= ARGV[2] then
    alive = alive + 1
  end
end
if alive >= tonumber(ARGV[4]) then return false end
local order = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[2], string.format('%020d', order) .. '|' .. ARGV[3])
return redis.call('HVALS', KEYS[1])
"#;

fn decode_members(values: Vec<String>) -> StoreResult<Vec<ChatMember>> {
    let mut values = values;
    values.sort();
    values
        .iter()
        .map(|value| {
            let json = value.split_once('|').map(|(_, json)| json).unwrap_or(value);
            decode("chat member", json)
        })
        .collect()
}

#[async_trait]
impl ChatStore for RedisChatStore {
    async fn claim_seat(
        &self,
        room: &str,
        member: &ChatMember,
        capacity: u32,
    ) -> StoreResult<SeatClaim> {
        let prefix = self.0.prefix().to_string();
        let (hash, order) = (
            keys::chat_room(&prefix, room),
            keys::chat_order(&prefix, room),
        );
        let node_prefix = keys::node_alive(&prefix, "");
        let (field, json) = (member.conn.0.clone(), encode(member)?);
        let values: Option<Vec<String>> = self
            .0
            .run("chat_claim", |mut conn| async move {
                Script::new(CLAIM_SEAT)
                    .key(&hash)
                    .key(&order)
                    .arg(&node_prefix)
                    .arg(&field)
                    .arg(&json)
                    .arg(capacity)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        match values {
            Some(values) => Ok(SeatClaim::Claimed(decode_members(values)?)),
            None => Ok(SeatClaim::Full),
        }
    }

    async fn release_seat(&self, room: &str, conn: &ConnKey) -> StoreResult<()> {
        let hash = keys::chat_room(self.0.prefix(), room);
        let field = conn.0.clone();
        self.0
            .run("chat_release", |mut c| async move {
                c.hdel::<_, _, ()>(&hash, &field).await.map_err(unavailable)
            })
            .await
    }

    async fn members(&self, room: &str) -> StoreResult<Vec<ChatMember>> {
        let hash = keys::chat_room(self.0.prefix(), room);
        let prefix = self.0.prefix().to_string();
        let live = self
            .0
            .run("chat_members", |mut c| async move {
                live_entries(&mut c, &prefix, &hash).await
            })
            .await?;
        decode_members(live.into_iter().map(|(_, value)| value).collect())
    }
}
