//! sioxide-ref: what a team would build on plain socketioxide 0.18 + socketioxide-redis 0.4
//! (the library fanout is built on), serving the part of fanout's client protocol that
//! fanout-loadtest drives, with the same rules as deploy/bench/node-ref:
//!
//!   handshake  auth { token }: GET <prefix>:token:<sha256 hex> must hold a JSON record with
//!              a userId, else connect_error "unauthorized"
//!   subscribe / unsubscribe  "topic" | { topic } -> join/leave the room, ack { ok, topic }
//!   publish    { topic, data } -> event <topic> with data to every subscriber (through
//!              the adapter), ack { ok: true }
//!   <prefix>:events { topic, data } on Redis -> each node delivers to its own subscribers
//!   GET /healthz -> 200 "ok"
//!
//! Default socketioxide settings and the system allocator, on purpose: this is the baseline.
//! Env: PORT (3000), BIND_HOST (127.0.0.1), REDIS_URL (redis://127.0.0.1:6379),
//!      FANOUT_PREFIX (fanout).

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use socketioxide::SocketIo;
use socketioxide::adapter::Emitter;
use socketioxide::extract::{AckSender, Data, SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

/// The adapter type: socketioxide-redis with the `redis` crate driver.
type Adapter = RedisAdapter<Emitter>;
type Sock = SocketRef<Adapter>;

#[derive(Clone)]
struct Ctx {
    redis: ConnectionManager,
    prefix: String,
}

const RESERVED: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// fanout's topic rule: 1–256 bytes, no control characters, not a reserved event name.
fn parse_topic(value: &Value) -> Option<String> {
    let topic = match value {
        Value::Object(map) => map.get("topic")?.as_str()?,
        Value::String(s) => s.as_str(),
        _ => return None,
    };
    let ok = (1..=256).contains(&topic.len())
        && !topic.chars().any(char::is_control)
        && !RESERVED.contains(&topic);
    ok.then(|| topic.to_owned())
}

fn invalid_topic() -> Value {
    json!({ "error": { "code": "invalid_topic", "message": "invalid topic" } })
}

#[derive(Debug)]
struct Unauthorized;
impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unauthorized")
    }
}

async fn authenticate(
    socket: Sock,
    Data(auth): Data<Value>,
    State(ctx): State<Ctx>,
) -> Result<(), Unauthorized> {
    let token = auth.get("token").and_then(Value::as_str).unwrap_or("");
    if token.is_empty() {
        return Err(Unauthorized);
    }
    let key = format!(
        "{}:token:{}",
        ctx.prefix,
        hex::encode(Sha256::digest(token))
    );
    let mut redis = ctx.redis.clone();
    let record: Option<String> = redis.get(key).await.map_err(|_| Unauthorized)?;
    let user = record
        .and_then(|r| serde_json::from_str::<Value>(&r).ok())
        .and_then(|r| r.get("userId").cloned())
        .filter(|u| !u.is_null())
        .ok_or(Unauthorized)?;
    socket.extensions.insert(user);
    // Handlers are registered here, in the middleware, and not in the connect handler:
    // socketioxide answers CONNECT before it runs the connect handler, so an event a client
    // sends right after `connect` could find no handler and be lost (ack never sent).
    register(&socket);
    Ok(())
}

async fn on_connect(_socket: Sock) {}

fn register(socket: &Sock) {
    socket.on(
        "subscribe",
        async |s: Sock, Data(arg): Data<Value>, ack: AckSender<_>| {
            let reply = match parse_topic(&arg) {
                Some(topic) => {
                    s.join(topic.clone());
                    json!({ "ok": true, "topic": topic })
                }
                None => invalid_topic(),
            };
            ack.send(&reply).ok();
        },
    );
    socket.on(
        "unsubscribe",
        async |s: Sock, Data(arg): Data<Value>, ack: AckSender<_>| {
            let reply = match parse_topic(&arg) {
                Some(topic) => {
                    s.leave(topic.clone());
                    json!({ "ok": true, "topic": topic })
                }
                None => invalid_topic(),
            };
            ack.send(&reply).ok();
        },
    );
    socket.on(
        "publish",
        async |io: SocketIo<_>, Data(arg): Data<Value>, ack: AckSender<_>| {
            let Some(topic) = arg.get("topic").and_then(parse_topic) else {
                ack.send(&invalid_topic()).ok();
                return;
            };
            let data = arg.get("data").cloned().unwrap_or(Value::Null);
            io.to(topic.clone()).emit(&topic, &data).await.ok();
            ack.send(&json!({ "ok": true })).ok();
        },
    );
}

/// Every node receives the events channel and delivers to its own subscribers.
async fn events(client: redis::Client, channel: String, io: SocketIo<Adapter>) {
    let Ok(mut pubsub) = client.get_async_pubsub().await else {
        eprintln!("sioxide-ref: cannot subscribe to {channel}");
        return;
    };
    if pubsub.subscribe(&channel).await.is_err() {
        eprintln!("sioxide-ref: cannot subscribe to {channel}");
        return;
    }
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Ok(text) = msg.get_payload::<String>() else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let Some(topic) = event.get("topic").and_then(parse_topic) else {
            continue;
        };
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        io.local().to(topic.clone()).emit(&topic, &data).await.ok();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let host = std::env::var("BIND_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = std::env::var("FANOUT_PREFIX").unwrap_or_else(|_| "fanout".into());

    // The adapter's drivers speak RESP3.
    let adapter_url = if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    };
    let adapter_client = redis::Client::open(adapter_url)?;
    let adapter = RedisAdapterCtr::new_with_redis(&adapter_client).await?;
    let cmd = ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
    let ctx = Ctx {
        redis: cmd,
        prefix: prefix.clone(),
    };

    let (layer, io) = SocketIo::builder()
        .with_state(ctx)
        .with_adapter::<Adapter>(adapter)
        .build_layer();
    io.ns("/", on_connect.with(authenticate)).await?;
    tokio::spawn(events(
        redis::Client::open(url.as_str())?,
        format!("{prefix}:events"),
        io.clone(),
    ));

    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    eprintln!("sioxide-ref listening on {host}:{port}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        })
        .await?;
    Ok(())
}
