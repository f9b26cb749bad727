//! Redis stores for cluster mode, with the keys of [`super::keys`], over one Redis
//! (`redis://`, one multiplexed connection kept by redis-rs's `ConnectionManager`, which
//! replaces it when it breaks) or a Redis Cluster (`redis+cluster://`, redis-rs's multiplexed
//! cluster connection, which routes every command to its slot's master and follows
//! redirections and failovers). Either way every operation shares one connection per server:
//! concurrent commands are pipelined on it, and no command waits for a connection of its own.
//! The store code is the same for both: every command touches one key, or is a Lua script over
//! keys of one hash slot; no WATCH and no MULTI (a multiplexed connection cannot hold a
//! transaction). Writes that must be atomic (user creation, record create/replace/patch/delete,
//! seat claims) are scripts; a patch is a compare-and-set script retried when the record
//! changed meanwhile. Every operation is timed into `fanout_redis_command_duration_seconds`.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fanout_adapter::{EitherConnection, RedisTarget};
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::time::Instant;

use super::batch::PresenceBatcher;
use super::{
    ChatMember, ChatStore, ConnKey, ModelLimits, ModelStore, NewUser, PresenceStore, Quota, Record,
    SeatClaim, StoreError, StoreResult, TokenHash, TokenRecord, TokenStore, User, UserId,
    UserStore, WriteAccess, keys, merge_record,
};
use crate::metrics::Metrics;

/// How long a store operation waits for a connect or one reply.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One store operation's connection: a handle on the multiplexed single-server connection or
/// on the multiplexed cluster connection (cheap clones: a handle on one multiplexer each).
/// Both speak `ConnectionLike`, so the store code is written once.
pub(super) type Conn = EitherConnection<SingleConnection, ClusterConnection>;

/// A Redis connection (single server or cluster) plus what every store needs: key prefix and
/// metrics.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    prefix: String,
    metrics: Metrics,
}

impl RedisBackend {
    /// A backend for `target` whose connects and replies are bounded, so a lost Redis turns
    /// into fast `unavailable` errors instead of hanging requests. Nothing is connected yet:
    /// the first operation connects (and fails with `unavailable` while no server or no seed
    /// answers; a later one connects again).
    pub fn new(target: &RedisTarget, prefix: &str, metrics: Metrics) -> Result<Self, StoreError> {
        let conn = match target {
            RedisTarget::Single(url) => Conn::Single(SingleConnection::new(url)?),
            RedisTarget::Cluster(cluster) => {
                let client = ClusterClientBuilder::new(cluster.seed_urls())
                    .connection_timeout(TIMEOUT)
                    .response_timeout(TIMEOUT)
                    // Retries (MOVED, a failover in progress) may take this long in all.
                    .overall_response_timeout(Some(TIMEOUT * 2))
                    .build()
                    .map_err(|err| StoreError::Unavailable(format!("redis cluster: {err}")))?;
                Conn::Cluster(client.get_pending_async_connection_with_config(Default::default()))
            }
        };
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            metrics,
        })
    }

    /// Runs one store operation on a connection, timing it and mapping errors.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let result = f(self.connection()).await;
        let ok = !matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Corrupt(_))
        );
        self.metrics.redis_command(op, started.elapsed(), ok);
        result
    }

    /// A handle on the shared connection, which may be kept across operations (it connects,
    /// and reconnects after a failure, by itself).
    pub(super) fn connection(&self) -> Conn {
        self.conn.clone()
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

/// The connection to one Redis server: one multiplexed connection shared by every operation,
/// kept by redis-rs's [`ConnectionManager`]. It connects on first use (so a node starts while
/// Redis is down), one connect at a time however many operations wait for it; a connection
/// that breaks is replaced, and a failed connect is tried again on the next use. Every wait is
/// bounded by [`TIMEOUT`] and a connect is tried once per use, never retried with a backoff
/// inside the manager: while Redis is down an operation fails within about [`TIMEOUT`].
///
/// A connection that stops answering is replaced too: the manager only replaces one whose
/// socket failed, and a dead peer whose socket stays open (a host gone, a partition) would
/// time every operation out until the kernel gives up on the socket, many minutes later. So
/// the first operation that times out on a connection swaps the manager for a fresh one (the
/// next operation connects anew); operations already waiting on the old one still time out.
#[derive(Clone)]
pub struct SingleConnection(Arc<SingleShared>);

struct SingleShared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The manager in use, and how many were made before it.
    current: std::sync::Mutex<(u64, ConnectionManager)>,
}

impl SingleConnection {
    /// The (not yet connected) connection to the server at `url`.
    fn new(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|err| StoreError::Unavailable(format!("redis url: {err}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(0);
        let manager = Self::manager(&client, &config)?;
        Ok(Self(Arc::new(SingleShared {
            client,
            config,
            current: std::sync::Mutex::new((0, manager)),
        })))
    }

    fn manager(
        client: &redis::Client,
        config: &ConnectionManagerConfig,
    ) -> Result<ConnectionManager, StoreError> {
        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|err| StoreError::Unavailable(format!("redis connection: {err}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, ConnectionManager)> {
        self.0.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manager in use (a cheap handle) and its generation.
    fn current(&self) -> (u64, ConnectionManager) {
        self.lock().clone()
    }

    /// After an operation timed out on generation `generation`: replaces that manager, unless
    /// another operation did already.
    fn replace(&self, generation: u64) {
        let mut current = self.lock();
        if current.0 != generation {
            return;
        }
        match Self::manager(&self.0.client, &self.0.config) {
            Ok(fresh) => *current = (generation + 1, fresh),
            Err(err) => tracing::warn!(%err, "cannot replace an unanswering Redis connection"),
        }
    }

    /// After an operation on generation `generation`: replaces that manager if the operation
    /// timed out.
    fn after<T>(&self, generation: u64, result: &redis::RedisResult<T>) {
        if result.as_ref().is_err_and(redis::RedisError::is_timeout) {
            self.replace(generation);
        }
    }
}

/// True when `result` failed because a connect was refused, so the command was never sent.
/// The manager keeps a failed connect until the next use, which then fails with that old
/// error while it starts a new connect: after Redis came back, that first use would fail for
/// nothing. Such a command is sent once more, on the new connect, which is safe for writes
/// too (nothing reached Redis).
fn refused<T>(result: &redis::RedisResult<T>) -> bool {
    result
        .as_ref()
        .is_err_and(redis::RedisError::is_connection_refusal)
}

impl ConnectionLike for SingleConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let (generation, mut manager) = self.current();
            let mut result = manager.req_packed_command(cmd).await;
            if refused(&result) {
                result = manager.req_packed_command(cmd).await;
            }
            self.after(generation, &result);
            result
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let (generation, mut manager) = self.current();
            let mut result = manager.req_packed_commands(pipeline, offset, count).await;
            if refused(&result) {
                result = manager.req_packed_commands(pipeline, offset, count).await;
            }
            self.after(generation, &result);
            result
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.lock().1.get_db()
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
/// The two keys live in different slots, so they are written one after the other: index first,
/// so a live token is always indexed (an index entry whose token expired or never got written
/// is dropped when [`TokenStore::user_tokens`] meets it).
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
                conn.sadd::<_, _, ()>(&index, &member)
                    .await
                    .map_err(unavailable)?;
                conn.set_ex::<_, _, ()>(&key, &json, ttl)
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

/// Users: `<prefix>:user:<id>` JSON, unique indexes by username and e-mail and the id counter
/// under the `{users}` tag. Creation: a script checks both indexes and takes an id, the record
/// is written, then a second script checks again and writes both indexes (or, when another
/// signup won the name meanwhile, the record is deleted). So an indexed user always has its
/// record; a node dying halfway leaves at most an unreachable record, never a taken name
/// without a user.
pub struct RedisUserStore(pub RedisBackend);

/// Takes a user id unless the username or e-mail is taken.
/// KEYS: by-username, by-email, next-id; ARGV: username, email.
const RESERVE_USER: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {err = 'username'} end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {err = 'email'} end
return redis.call('INCR', KEYS[3])
"#;

/// Indexes a user whose record is written, unless the username or e-mail was taken meanwhile.
/// KEYS: by-username, by-email; ARGV: username, email, id.
const INDEX_USER: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {err = 'username'} end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {err = 'email'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"#;

/// A user script's error: the taken field as a conflict, anything else `unavailable`.
fn user_conflict(err: redis::RedisError) -> StoreError {
    let text = err.to_string();
    if text.contains("username") {
        StoreError::Conflict("username is taken".into())
    } else if text.contains("email") {
        StoreError::Conflict("email is taken".into())
    } else {
        unavailable(err)
    }
}

impl RedisUserStore {
    /// Takes the next user id unless the username or e-mail is taken (`Conflict`).
    async fn reserve_id(&self, name: &str, email: &str) -> StoreResult<u64> {
        let prefix = self.0.prefix();
        let keys = [
            keys::users_by_username(prefix),
            keys::users_by_email(prefix),
            keys::users_next_id(prefix),
        ];
        let (name, email) = (name.to_string(), email.to_string());
        self.0
            .run("user_reserve", |mut conn| async move {
                Script::new(RESERVE_USER)
                    .key(&keys[..])
                    .arg(&name)
                    .arg(&email)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(user_conflict)
            })
            .await
    }

    /// Writes `user`'s record (not findable until indexed).
    async fn write(&self, user: &User) -> StoreResult<()> {
        let (key, json) = (keys::user(self.0.prefix(), &user.id), encode(user)?);
        self.0
            .run("user_write", |mut conn| async move {
                conn.set::<_, _, ()>(&key, &json).await.map_err(unavailable)
            })
            .await
    }

    /// Indexes `user` by name and e-mail unless another signup took either meanwhile
    /// (`Conflict`).
    async fn index(&self, user: &User) -> StoreResult<()> {
        let prefix = self.0.prefix();
        let keys = [
            keys::users_by_username(prefix),
            keys::users_by_email(prefix),
        ];
        let args = [
            user.username.clone(),
            user.email.clone(),
            user.id.as_str().to_string(),
        ];
        self.0
            .run("user_index", |mut conn| async move {
                Script::new(INDEX_USER)
                    .key(&keys[..])
                    .arg(&args[..])
                    .invoke_async::<()>(&mut conn)
                    .await
                    .map_err(user_conflict)
            })
            .await
    }

    /// Deletes the record of a signup that lost the race for its name (best effort).
    async fn unwrite(&self, user: &User) {
        let key = keys::user(self.0.prefix(), &user.id);
        let result = self
            .0
            .run("user_unwrite", |mut conn| async move {
                // GETDEL, not DEL: the ACL grants no DEL (docs/OPERATIONS.md).
                conn.get_del::<_, ()>(&key).await.map_err(unavailable)
            })
            .await;
        if let Err(err) = result {
            tracing::warn!(%err, user = %user.id, "unindexed user record left behind");
        }
    }
}

#[async_trait]
impl UserStore for RedisUserStore {
    async fn create(&self, new: NewUser) -> StoreResult<User> {
        let id = self.reserve_id(&new.username, &new.email).await?;
        let user = User {
            id: UserId::new(id.to_string()),
            username: new.username,
            email: new.email,
            password_hash: new.password_hash,
        };
        self.write(&user).await?;
        match self.index(&user).await {
            Ok(()) => Ok(user),
            Err(err @ StoreError::Conflict(_)) => {
                self.unwrite(&user).await;
                Err(err)
            }
            // Maybe indexed, maybe not: the record stays (unreachable when not indexed).
            Err(err) => Err(err),
        }
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

/// Models: one hash per model (`<prefix>:model:{<Model>}`, field = id, value = the record's
/// JSON exactly as clients see it), ids from `<prefix>:model-ids:{<Model>}`, owners beside the
/// records in `<prefix>:model-owners:{<Model>}`, per-user counts in
/// `<prefix>:model-owned:{<Model>}` — one slot per model — and model names in
/// `<prefix>:models`. Every write that checks an owner or a quota does it in the same Lua
/// script as the write. The model-count quota is checked and the name registered by its own
/// script on `<prefix>:models` before the record's script runs (different slots): a new model
/// has no records yet, so the per-user quota cannot refuse its first record afterwards.
pub struct RedisModelStore(pub RedisBackend);

/// Registers a model name within the model quota. KEYS: models set. ARGV: model, max models
/// (0 = no limit). Returns 1, or -1 when the model is new and the quota is reached.
const REGISTER_MODEL: &str = r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
local max = tonumber(ARGV[2])
if max > 0 and redis.call('SCARD', KEYS[1]) >= max then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"#;

/// Creates a record within the user's quota. KEYS: id counter, records, owners, owned counts.
/// ARGV: owner, record JSON without id, max records per user (0 = no limit). Returns the id,
/// or -2 over the user's quota.
const CREATE_RECORD: &str = r#"
local limit = tonumber(ARGV[3])
if limit > 0 and tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0') >= limit then return -2 end
local id = redis.call('INCR', KEYS[1])
local body = ARGV[2]
local record
if body == '{}' then
  record = '{"id":' .. id .. '}'
else
  record = '{"id":' .. id .. ',' .. string.sub(body, 2)
end
redis.call('HSET', KEYS[2], id, record)
redis.call('HSET', KEYS[3], id, ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
return id
"#;

/// Replaces a record if it exists and the writer may. KEYS: records, owners. ARGV: id, JSON,
/// "1" to require the owner, owner, and optionally the JSON the record must still hold (a
/// patch's compare-and-set). Returns 1, 0 (no record), -1 (not the owner) or -2 (the record
/// changed since it was read).
const REPLACE_RECORD: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if ARGV[3] == '1' and redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[4] then return -1 end
if ARGV[5] and current ~= ARGV[5] then return -2 end
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

/// How often a patch tries its compare-and-set when other writers keep changing the record.
const PATCH_ATTEMPTS: u32 = 32;

/// The pause before a patch's next attempt: random, up to 2^attempt ms (at most 64 ms), so
/// writers that collided spread out instead of colliding again.
fn patch_backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let max = 1u64 << attempt.min(6);
    Duration::from_millis(rand::rng().random_range(0..=max))
}

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
        let max_models = limits.max_models;
        let (set, name) = (keys::models(prefix), model.to_string());
        let registered: i64 = self
            .0
            .run("model_register", |mut conn| async move {
                Script::new(REGISTER_MODEL)
                    .key(&set)
                    .arg(&name)
                    .arg(max_models)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        if registered != 1 {
            return Err(StoreError::Quota(Quota::Models(max_models)));
        }
        let names = [
            keys::model_next_id(prefix, model),
            keys::model(prefix, model),
            keys::model_owners(prefix, model),
            keys::model_owned(prefix, model),
        ];
        let json = encode(&data)?;
        let owner_arg = owner.as_str().to_string();
        let per_user = limits.records_per_user;
        let id: i64 = self
            .0
            .run("model_create", |mut conn| async move {
                let [counter, records, owners, owned] = &names;
                Script::new(CREATE_RECORD)
                    .key(counter)
                    .key(records)
                    .key(owners)
                    .key(owned)
                    .arg(&owner_arg)
                    .arg(&json)
                    .arg(per_user)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        match id {
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
        let (check, owner) = owner_args(&access);
        self.0
            .run("model_patch", |mut conn| async move {
                // Optimistic: read, merge here (serde_json, not Lua's cjson, so the JSON stays
                // exactly what clients wrote), then write only if the record is unchanged.
                for attempt in 0..PATCH_ATTEMPTS {
                    if attempt > 0 {
                        tokio::time::sleep(patch_backoff(attempt)).await;
                    }
                    let raw: Option<String> = conn.hget(&hash, id).await.map_err(unavailable)?;
                    let Some(raw) = raw else {
                        return Err(StoreError::NotFound);
                    };
                    if let WriteAccess::Owner(_) = access {
                        let owner: Option<String> =
                            conn.hget(&owners, id).await.map_err(unavailable)?;
                        if !access.allows(owner.map(UserId::new).as_ref()) {
                            return Err(StoreError::Forbidden);
                        }
                    }
                    let mut record = decode_record(&raw)?;
                    merge_record(&mut record, patch.clone());
                    limits.check_size(&record)?;
                    let json = encode(&record)?;
                    let written: i64 = Script::new(REPLACE_RECORD)
                        .key(&hash)
                        .key(&owners)
                        .arg(id)
                        .arg(&json)
                        .arg(check)
                        .arg(&owner)
                        .arg(&raw)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    match written {
                        1 => return Ok(record),
                        0 => return Err(StoreError::NotFound),
                        -1 => return Err(StoreError::Forbidden),
                        _ => continue, // changed meanwhile: read again
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

/// The nodes among `nodes` whose heartbeat key expired. One `EXISTS` per node (each its own
/// slot on a cluster).
async fn dead_nodes<'a>(
    c: &mut Conn,
    prefix: &str,
    nodes: BTreeSet<&'a str>,
) -> StoreResult<Vec<&'a str>> {
    let mut dead = Vec::new();
    for node in nodes {
        let exists: bool = c
            .exists(keys::node_alive(prefix, node))
            .await
            .map_err(unavailable)?;
        if !exists {
            dead.push(node);
        }
    }
    Ok(dead)
}

/// The entries of a hash whose fields are connection keys (`<node>/<transport>/<id>`), minus
/// those of nodes whose heartbeat key expired — which are deleted on the way, so a crashed
/// node's presence and seats do not outlive it.
async fn live_entries(c: &mut Conn, prefix: &str, key: &str) -> StoreResult<Vec<(String, String)>> {
    let entries: Vec<(String, String)> = c.hgetall(key).await.map_err(unavailable)?;
    let nodes: BTreeSet<&str> = entries.iter().map(|(conn, _)| node_of(conn)).collect();
    let dead: BTreeSet<String> = dead_nodes(c, prefix, nodes)
        .await?
        .into_iter()
        .map(str::to_string)
        .collect();
    let (dead, live): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(conn, _)| dead.contains(node_of(conn)));
    for (conn, _) in &dead {
        c.hdel::<_, _, ()>(key, conn).await.map_err(unavailable)?;
    }
    Ok(live)
}

/// `/chat` seats: `<prefix>:{chat:<room>}` hash, field = connection key (`<node>/sio/<sid>`),
/// value = `<order>|<member json>`. The claim is one Lua script: the seats of nodes found dead
/// just before (heartbeat key `<prefix>:node:<id>` expired: read first, since those keys live
/// in other slots) are removed, then the seat is taken only while the room holds fewer than
/// `capacity` — the count and the write are one atomic step. A seat of a node that appeared
/// after the liveness read counts as alive.
pub struct RedisChatStore(pub RedisBackend);

/// KEYS: room hash, order counter. ARGV: field, member json, capacity, then the dead nodes.
/// Returns the room's entries after the claim, or `false` when full.
const CLAIM_SEAT: &str = r#"
local dead = {}
for i = 4, #ARGV do dead[ARGV[i]] = true end
local fields = redis.call('HKEYS', KEYS[1])
local alive = 0
for _, field in ipairs(fields) do
  if field ~= ARGV[1] then
    local node = string.match(field, '^([^/]*)/')
    if node and dead[node] then
      redis.call('HDEL', KEYS[1], field)
    else
      alive = alive + 1
    end
  end
end
if alive >= tonumber(ARGV[3]) then return false end
local order = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%020d', order) .. '|' .. ARGV[2])
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
        let (field, json) = (member.conn.0.clone(), encode(member)?);
        let values: Option<Vec<String>> = self
            .0
            .run("chat_claim", |mut conn| async move {
                let fields: Vec<String> = conn.hkeys(&hash).await.map_err(unavailable)?;
                let nodes = fields
                    .iter()
                    .filter(|field| field.contains('/'))
                    .map(|field| node_of(field))
                    .collect();
                let dead = dead_nodes(&mut conn, &prefix, nodes).await?;
                Script::new(CLAIM_SEAT)
                    .key(&hash)
                    .key(&order)
                    .arg(&field)
                    .arg(&json)
                    .arg(capacity)
                    .arg(dead)
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
