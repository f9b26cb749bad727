//! The Redis stores over a real `redis-server` (classic `redis://`) and over a real Redis
//! Cluster of 3 masters + 3 replicas (`redis+cluster://`, started by deploy/local/redis-cluster
//! on free loopback ports): the same checks on both, so one store code path is proven on both,
//! including the races its Lua scripts exist for. Servers are stopped by their PIDs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_adapter::{RedisTarget, parse_redis_target};
use fanout_node::metrics::Metrics;
use fanout_node::store::redis::{
    RedisBackend, RedisChatStore, RedisModelStore, RedisPresenceStore, RedisTokenStore,
    RedisUserStore,
};
use fanout_node::store::{
    ChatMember, ChatStore, ConnKey, ModelLimits, ModelStore, NewUser, PresenceStore, Quota, Record,
    SeatClaim, StoreError, TokenHash, TokenRecord, TokenStore, UserId, UserStore, WriteAccess,
};
use serde_json::json;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server`, killed by PID on drop.
struct Single {
    child: Child,
    port: u16,
}

impl Single {
    fn start() -> Self {
        Self::on(free_port())
    }

    /// A `redis-server` on `port` (again, after one there was stopped).
    fn on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)");
        wait_for_port(port);
        Self { child, port }
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 3 + 3 Redis Cluster from deploy/local/redis-cluster in a temporary run dir; `down` (which
/// stops exactly the recorded PIDs) on drop.
struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
}

impl Cluster {
    fn script(dir: &PathBuf, args: &[&str]) -> std::process::Output {
        Command::new(format!("{REPO}/deploy/local/redis-cluster"))
            .args(args)
            .env("REDIS_CLUSTER_DIR", dir)
            .env("REDIS_CLUSTER_PORTS", "free")
            .output()
            .expect("deploy/local/redis-cluster")
    }

    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fanout-store-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        let up = Self::script(&dir, &["up"]);
        // Constructed before the check, so a half-started cluster is brought down too.
        let mut cluster = Self {
            dir: dir.clone(),
            ports: Vec::new(),
        };
        assert!(
            up.status.success(),
            "redis-cluster up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let ports = std::fs::read_to_string(dir.join("ports")).unwrap();
        cluster.ports = ports.lines().filter_map(|l| l.parse().ok()).collect();
        cluster
    }

    fn url(&self) -> String {
        let seeds: Vec<String> = self.ports[..2]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `redis-cli -p port args…` → stdout.
    fn cli(port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| Self::cli(*p, &["ROLE"]).starts_with("master"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let down = Self::script(&self.dir, &["down"]);
        if down.status.success() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Stores {
    backend: RedisBackend,
    tokens: RedisTokenStore,
    users: Arc<RedisUserStore>,
    models: Arc<RedisModelStore>,
    presence: RedisPresenceStore,
    chat: Arc<RedisChatStore>,
}

fn stores(url: &str, prefix: &str) -> Stores {
    let target = parse_redis_target(url).unwrap();
    let backend = RedisBackend::new(&target, prefix, Metrics::new("test")).unwrap();
    Stores {
        tokens: RedisTokenStore(backend.clone()),
        users: Arc::new(RedisUserStore(backend.clone())),
        models: Arc::new(RedisModelStore(backend.clone())),
        presence: RedisPresenceStore::new(backend.clone()),
        chat: Arc::new(RedisChatStore(backend.clone())),
        backend,
    }
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        username: name.into(),
        email: format!("{name}@example.com"),
        password_hash: "$argon2id$x".into(),
    }
}

fn record(value: serde_json::Value) -> Record {
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!(),
    }
}

async fn users(s: &Stores) {
    let ann = s.users.create(new_user("ann")).await.unwrap();
    assert_eq!(ann.id, UserId::new("1"));
    let err = s.users.create(new_user("ann")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("username")),
        "{err}"
    );
    let mut other = new_user("bob");
    other.email = "ann@example.com".into();
    let err = s.users.create(other).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("email")),
        "{err}"
    );
    // A refused signup uses no id.
    let bob = s.users.create(new_user("bob")).await.unwrap();
    assert_eq!(bob.id, UserId::new("2"));
    assert_eq!(
        s.users.find_by_username("bob").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        s.users.find_by_email("ann@example.com").await.unwrap(),
        Some(ann)
    );
    assert_eq!(s.users.get(&UserId::new("2")).await.unwrap(), Some(bob));
    assert_eq!(s.users.find_by_username("nobody").await.unwrap(), None);

    // Ten signups race for one name: one wins, and no loser leaves a record behind.
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let users = s.users.clone();
            tokio::spawn(async move {
                let mut user = new_user("racer");
                user.email = format!("racer{i}@example.com");
                users.create(user).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(user) => winners.push(user),
            Err(StoreError::Conflict(_)) => {}
            Err(err) => panic!("{err}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let last = s.users.create(new_user("last")).await.unwrap();
    let last_id: u64 = last.id.as_str().parse().unwrap();
    for id in 3..last_id {
        let user = s.users.get(&UserId::new(id.to_string())).await.unwrap();
        if user.as_ref().map(|u| &u.id) != Some(&winners[0].id) {
            assert_eq!(user, None, "a losing signup left user {id} behind");
        }
    }
}

async fn tokens(s: &Stores) -> Vec<String> {
    let user = UserId::new("7");
    let rec = |ttl| TokenRecord {
        user_id: user.clone(),
        ttl,
        created: "2026-01-01T00:00:00Z".into(),
        scopes: vec![],
    };
    let hashes: Vec<TokenHash> = (0..40).map(|i| TokenHash(format!("{i:064x}"))).collect();
    for hash in &hashes {
        s.tokens.insert(hash, &rec(600)).await.unwrap();
    }
    let short = TokenHash("f".repeat(64));
    s.tokens.insert(&short, &rec(1)).await.unwrap();
    assert_eq!(s.tokens.get(&hashes[3]).await.unwrap(), Some(rec(600)));
    let listed: BTreeSet<String> = s
        .tokens
        .user_tokens(&user)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.0)
        .collect();
    assert_eq!(listed.len(), 41);
    assert_eq!(s.tokens.revoke(&hashes[0]).await.unwrap(), Some(rec(600)));
    assert_eq!(s.tokens.revoke(&hashes[0]).await.unwrap(), None);
    assert_eq!(s.tokens.get(&hashes[0]).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let listed = s.tokens.user_tokens(&user).await.unwrap();
    assert_eq!(
        listed.len(),
        39,
        "revoked and expired tokens leave the index"
    );
    hashes.iter().map(|h| h.0.clone()).collect()
}

async fn models(s: &Stores) {
    let (alice, bob) = (UserId::new("1"), UserId::new("2"));
    let limits = ModelLimits {
        record_max_bytes: 10_000,
        records_per_user: 3,
        max_models: 2,
    };
    let first = s
        .models
        .create("Order", &alice, record(json!({"n": 1})), &limits)
        .await
        .unwrap();
    assert_eq!(first, record(json!({"id": 1, "n": 1})));
    s.models
        .create("Invoice", &alice, record(json!({})), &limits)
        .await
        .unwrap();
    let err = s
        .models
        .create("Third", &alice, record(json!({})), &limits)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Quota(Quota::Models(2))), "{err}");
    for _ in 0..2 {
        s.models
            .create("Order", &alice, record(json!({})), &limits)
            .await
            .unwrap();
    }
    let err = s
        .models
        .create("Order", &alice, record(json!({})), &limits)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Quota(Quota::RecordsPerUser(3))),
        "{err}"
    );
    s.models
        .create("Order", &bob, record(json!({"by": "bob"})), &limits)
        .await
        .unwrap();
    assert_eq!(s.models.list("Order", 100).await.unwrap().len(), 4);

    let owner = WriteAccess::Owner(alice.clone());
    let err = s
        .models
        .patch(
            "Order",
            1,
            record(json!({"x": 1})),
            &WriteAccess::Owner(bob.clone()),
            &limits,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Forbidden), "{err}");
    let err = s
        .models
        .patch("Order", 99, record(json!({"x": 1})), &owner, &limits)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err}");
    let tiny = ModelLimits {
        record_max_bytes: 8,
        ..limits
    };
    let err = s
        .models
        .patch(
            "Order",
            1,
            record(json!({"long": "xxxxxxxx"})),
            &owner,
            &tiny,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { max: 8 }), "{err}");

    // Twenty concurrent patches of one record, each adding its own field: the compare-and-set
    // loses none of them.
    let patches: Vec<_> = (0..20)
        .map(|i| {
            let models = s.models.clone();
            let owner = owner.clone();
            tokio::spawn(async move {
                let patch = record(json!({ format!("f{i}"): i }));
                models.patch("Order", 1, patch, &owner, &limits).await
            })
        })
        .collect();
    for patch in patches {
        patch.await.unwrap().unwrap();
    }
    let merged = s.models.get("Order", 1).await.unwrap().unwrap();
    for i in 0..20 {
        assert_eq!(merged.get(&format!("f{i}")), Some(&json!(i)), "{merged:?}");
    }
    assert_eq!(merged.get("id"), Some(&json!(1)));

    let replaced = s
        .models
        .replace("Order", 1, record(json!({"n": 2})), &owner, &limits)
        .await
        .unwrap();
    assert_eq!(replaced, record(json!({"n": 2, "id": 1})));
    let err = s
        .models
        .delete("Order", 1, &WriteAccess::Owner(bob))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Forbidden), "{err}");
    s.models.delete("Order", 1, &owner).await.unwrap();
    assert_eq!(s.models.get("Order", 1).await.unwrap(), None);
    // Deleting frees a slot of alice's quota.
    s.models
        .create("Order", &alice, record(json!({})), &limits)
        .await
        .unwrap();
}

async fn presence_and_chat(s: &Stores) {
    let heartbeat = tokio::spawn(RedisPresenceStore::run_heartbeat(
        s.backend.clone(),
        "live".into(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, b, dead) = (
        ConnKey("live/sio/a".into()),
        ConnKey("live/ws/b".into()),
        ConnKey("gone/sio/c".into()),
    );
    s.presence.join("t", &a, &UserId::new("1")).await.unwrap();
    s.presence.join("t", &b, &UserId::new("2")).await.unwrap();
    s.presence
        .join("t", &dead, &UserId::new("3"))
        .await
        .unwrap();
    let members = s.presence.members("t").await.unwrap();
    assert_eq!(members, vec![UserId::new("1"), UserId::new("2")]);
    s.presence.leave("t", &b).await.unwrap();
    assert_eq!(
        s.presence.members("t").await.unwrap(),
        vec![UserId::new("1")]
    );
    // Concurrent joins on many topics go out as one batch: on a cluster its writes land on
    // many slots, which one pipeline cannot carry (CROSSSLOT).
    let joins = (0..64).map(|i| {
        let conn = ConnKey(format!("live/sio/burst{i}"));
        async move {
            s.presence
                .join(&format!("burst-{i}"), &conn, &UserId::new("9"))
                .await
        }
    });
    for result in futures_util::future::join_all(joins).await {
        result.expect("a join of the burst");
    }
    for i in [0, 17, 63] {
        assert_eq!(
            s.presence.members(&format!("burst-{i}")).await.unwrap(),
            vec![UserId::new("9")]
        );
    }

    let member = |conn: &str, user: &str| ChatMember {
        conn: ConnKey(conn.into()),
        user: user.into(),
        avatar: String::new(),
    };
    // A room id with braces still keeps its two keys in one slot.
    for room in ["42", "a}b{c"] {
        let ghost = member("gone/sio/1", "ghost");
        assert!(matches!(
            s.chat.claim_seat(room, &ghost, 2).await.unwrap(),
            SeatClaim::Claimed(_)
        ));
        let ann = member("live/sio/2", "ann");
        let bob = member("live/sio/3", "bob");
        assert!(matches!(
            s.chat.claim_seat(room, &ann, 2).await.unwrap(),
            SeatClaim::Claimed(_)
        ));
        // The dead node's seat is freed by the claim: bob fits.
        match s.chat.claim_seat(room, &bob, 2).await.unwrap() {
            SeatClaim::Claimed(members) => assert_eq!(members, vec![ann.clone(), bob.clone()]),
            SeatClaim::Full => panic!("the ghost's seat should have been freed"),
        }
        let cid = member("live/sio/4", "cid");
        assert_eq!(
            s.chat.claim_seat(room, &cid, 2).await.unwrap(),
            SeatClaim::Full
        );
        s.chat.release_seat(room, &ann.conn).await.unwrap();
        assert_eq!(s.chat.members(room).await.unwrap(), vec![bob]);
    }
    // Ten claims race for two seats: exactly two win.
    let claims: Vec<_> = (0..10)
        .map(|i| {
            let chat = s.chat.clone();
            tokio::spawn(async move {
                chat.claim_seat("race", &member(&format!("live/sio/r{i}"), "r"), 2)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for claim in claims {
        if let SeatClaim::Claimed(_) = claim.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 2);
    heartbeat.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_one_redis() {
    let redis = Single::start();
    let s = stores(&format!("redis://127.0.0.1:{}", redis.port), "fanout");
    users(&s).await;
    tokens(&s).await;
    models(&s).await;
    presence_and_chat(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_a_redis_cluster() {
    let cluster = Cluster::start();
    let s = stores(&cluster.url(), "fanout");
    users(&s).await;
    let hashes = tokens(&s).await;
    models(&s).await;
    presence_and_chat(&s).await;
    // Tokens are spread over the shards (no tag), not piled on one.
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let holding: Vec<usize> = masters
        .iter()
        .map(|port| {
            hashes[1..]
                .iter()
                .filter(|h| Cluster::cli(*port, &["EXISTS", &format!("fanout:token:{h}")]) == "1")
                .count()
        })
        .collect();
    assert_eq!(holding.iter().sum::<usize>(), 39, "{holding:?}");
    assert!(
        holding.iter().all(|n| *n > 0),
        "tokens on every master: {holding:?}"
    );
}

#[tokio::test]
async fn unreachable_cluster_fails_fast_and_typed() {
    let (a, b) = (free_port(), free_port());
    let target =
        parse_redis_target(&format!("redis+cluster://127.0.0.1:{a},127.0.0.1:{b}")).unwrap();
    assert!(matches!(target, RedisTarget::Cluster(ref c) if c.seeds.len() == 2));
    let backend = RedisBackend::new(&target, "fanout", Metrics::new("test")).unwrap();
    let tokens = RedisTokenStore(backend);
    for _ in 0..2 {
        let started = Instant::now();
        let err = tokens.get(&TokenHash("ab".into())).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    }
}

/// How long one operation may take while Redis is gone: one connect or reply bound (2 s) and
/// some slack for a loaded test machine.
const OUTAGE_BOUND: Duration = Duration::from_secs(3);

fn token_record() -> TokenRecord {
    TokenRecord {
        user_id: UserId::new("7"),
        ttl: 600,
        created: "2026-01-01T00:00:00Z".into(),
        scopes: vec![],
    }
}

/// A token write and read, as one check that the stores reach Redis.
async fn token_round_trip(s: &Stores, name: &str) -> Result<(), StoreError> {
    let hash = TokenHash(name.into());
    s.tokens.insert(&hash, &token_record()).await?;
    assert_eq!(s.tokens.get(&hash).await?, Some(token_record()));
    Ok(())
}

/// Every operation (a token read, a script, a presence pipeline) fails as `Unavailable`
/// within [`OUTAGE_BOUND`], also when many run at once.
async fn fails_fast(s: &Stores) {
    for _ in 0..3 {
        let started = Instant::now();
        let err = s.tokens.get(&TokenHash("ab".into())).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
        let started = Instant::now();
        let err = s.users.create(new_user("outage")).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
        let started = Instant::now();
        let err = s
            .presence
            .join("t", &ConnKey("n/sio/1".into()), &UserId::new("7"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
    }
    let started = Instant::now();
    let hashes: Vec<TokenHash> = (0..200).map(|i| TokenHash(format!("{i}"))).collect();
    let gets = hashes.iter().map(|hash| s.tokens.get(hash));
    for result in futures_util::future::join_all(gets).await {
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
}

/// The number of clients connected to the Redis on `port`, not counting the asking redis-cli.
fn clients(port: u16) -> usize {
    let info = Cluster::cli(port, &["INFO", "clients"]);
    let line = info
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .unwrap();
    line.trim().parse::<usize>().unwrap() - 1
}

/// One Redis killed under the stores: operations fail fast and typed, none hangs; the same
/// Redis restarted on the same port: the same stores work again, from the first operation on,
/// over one connection however many operations run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_lost_and_back() {
    let redis = Single::start();
    let port = redis.port;
    let s = stores(&format!("redis://127.0.0.1:{port}"), "fanout");
    token_round_trip(&s, "before").await.unwrap();
    let hashes: Vec<TokenHash> = (0..500).map(|i| TokenHash(format!("{i}"))).collect();
    let gets = hashes.iter().map(|hash| s.tokens.get(hash));
    for result in futures_util::future::join_all(gets).await {
        assert_eq!(result.unwrap(), None);
    }
    assert_eq!(clients(port), 1, "every store shares one connection");

    drop(redis);
    fails_fast(&s).await;

    let redis = Single::on(port);
    token_round_trip(&s, "after").await.unwrap();
    s.presence
        .join("t", &ConnKey("n/sio/1".into()), &UserId::new("7"))
        .await
        .unwrap();
    s.users.create(new_user("after")).await.unwrap();
    assert_eq!(clients(port), 1, "one connection after the reconnect");

    // Lost again while idle, back again.
    drop(redis);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _redis = Single::on(port);
    // The first operation may meet the connection Redis closed (already gone, or cut while
    // in flight — which may not be sent again): it fails fast; the next one reconnects.
    let started = Instant::now();
    if let Err(err) = token_round_trip(&s, "again").await {
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
        token_round_trip(&s, "again").await.unwrap();
    }
}

/// A Redis that stops answering (SIGSTOP, as a hung server looks): every operation gives up
/// after the reply bound instead of hanging; once it answers again (SIGCONT) the stores work,
/// on one connection again (the one that timed out was replaced, see below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_hung_then_answering() {
    let redis = Single::start();
    let s = stores(&format!("redis://127.0.0.1:{}", redis.port), "fanout");
    token_round_trip(&s, "before").await.unwrap();
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &redis.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let result = std::panic::AssertUnwindSafe(fails_fast(&s));
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    signal("-CONT");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    token_round_trip(&s, "after").await.unwrap();
    // Connects made while it was stopped were queued by the kernel and are let go now.
    let deadline = Instant::now() + Duration::from_secs(5);
    while clients(redis.port) != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(clients(redis.port), 1);
}

/// A TCP relay to `upstream` whose existing connections can be frozen: bytes stop moving both
/// ways while the sockets stay open, as with a host that vanished or a partition. Connections
/// made after a freeze relay normally.
struct Relay {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(upstream: u16) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let (count, frozen) = (accepted.clone(), frozen_below.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let id = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                let pipes: [(
                    tokio::net::tcp::OwnedReadHalf,
                    tokio::net::tcp::OwnedWriteHalf,
                ); 2] = [(client_rx, server_tx), (server_rx, client_tx)];
                for (mut from, mut to) in pipes {
                    let frozen = frozen.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let Ok(n) = from.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            if id < frozen.load(Ordering::SeqCst) {
                                // Keep the sockets open and move nothing, ever.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            port,
            accepted,
            frozen_below,
        }
    }

    /// Freezes every connection made so far; later ones relay.
    fn freeze_existing(&self) {
        use std::sync::atomic::Ordering;
        let made = self.accepted.load(Ordering::SeqCst);
        self.frozen_below.store(made, Ordering::SeqCst);
    }
}

/// A connection that stops answering while its socket stays open (nothing tells redis-rs it is
/// broken): the operations on it time out within the reply bound, and the stores move to a new
/// connection instead of timing out on the dead one until the kernel gives up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_connection_gone_silent_is_replaced() {
    let redis = Single::start();
    let relay = Relay::start(redis.port).await;
    let s = stores(&format!("redis://127.0.0.1:{}", relay.port), "fanout");
    token_round_trip(&s, "before").await.unwrap();
    assert_eq!(clients(redis.port), 1);

    relay.freeze_existing();
    let started = Instant::now();
    let err = s.tokens.get(&TokenHash("ab".into())).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());

    // The next operations run on a fresh connection.
    let started = Instant::now();
    token_round_trip(&s, "after").await.unwrap();
    s.presence
        .join("t", &ConnKey("n/sio/1".into()), &UserId::new("7"))
        .await
        .unwrap();
    assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
    assert_eq!(
        clients(redis.port),
        2,
        "the frozen connection and the new one"
    );
}

/// Stores made while nothing listens (a node started before its Redis): operations fail fast
/// and typed; once Redis starts, the same stores work, from the first operation on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_not_there_yet() {
    let port = free_port();
    let s = stores(&format!("redis://127.0.0.1:{port}"), "fanout");
    fails_fast(&s).await;
    let _redis = Single::on(port);
    token_round_trip(&s, "first").await.unwrap();
    s.users.create(new_user("first")).await.unwrap();
    assert_eq!(clients(port), 1);
}
