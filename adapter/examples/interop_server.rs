//! A tiny socketioxide server using `FanoutAdapter`, for the Node.js interop suite
//! (`adapter/interop/`). Env: `PORT` (default 3100), `REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Prints `listening on <port>` when ready.
//!
//! Namespaces `/` and `/admin`. On connect a socket joins the rooms listed in its auth
//! payload (`{ rooms: [...] }`); it does NOT join its own id room, so the suite also checks
//! that Node's `to(socketId)` reaches socketioxide sockets anyway.
//!
//! Events (each answers through its ack):
//! * `rust:emit` `{ room?, event, data }` → `io.to(room).emit(event, data)` (or `io.emit`)
//! * `rust:rooms` → `io.rooms()` (cluster-wide)
//! * `rust:fetch` → `{ ids, unmappable }` from `io.fetch_sockets()`
//! * `rust:emit-with-ack` `{ event, data, timeout }` → the collected acks
//! * `rust:join` `{ room }` → `io.join(room)` (cluster-wide socketsJoin)
//! * `rust:sync` → answers once the channels of the socket's rooms are subscribed
//!   (`ensure_room`; sharded mode, a no-op otherwise)
//!
//! A `REDIS_URL` of `redis+cluster://h:p,…` runs the sharded mode (Redis Cluster).

use std::time::Duration;

use fanout_adapter::{FanoutAdapter, FanoutAdapterCtr, RedisAdapterConfig};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Emitter;
use socketioxide::extract::{AckSender, Data, SocketRef};

type Adapter = FanoutAdapter<Emitter>;
type Sock = SocketRef<Adapter>;
type Io = SocketIo<Adapter>;

#[derive(Debug, Deserialize, Default)]
struct Auth {
    #[serde(default)]
    rooms: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct EmitReq {
    room: Option<String>,
    event: String,
    data: Value,
    #[serde(default)]
    timeout: Option<u64>,
}

/// The adapter state, for `ensure_room`.
static CTR: std::sync::OnceLock<FanoutAdapterCtr> = std::sync::OnceLock::new();

async fn on_connect(s: Sock, Data(auth): Data<Auth>) {
    s.join(auth.rooms);
    s.on("rust:sync", on_sync);
    s.on("rust:emit", on_emit);
    s.on("rust:rooms", on_rooms);
    s.on("rust:fetch", on_fetch);
    s.on("rust:emit-with-ack", on_emit_with_ack);
    s.on("rust:join", on_join);
    s.on(
        "echo-ack",
        async |Data(v): Data<Value>, ack: AckSender<Adapter>| {
            let _ = ack.send(&v);
        },
    );
}

async fn on_emit(io: Io, Data(req): Data<EmitReq>, ack: AckSender<Adapter>) {
    let res = match req.room {
        Some(room) => io.to(room).emit(&req.event, &req.data).await,
        None => io.emit(&req.event, &req.data).await,
    };
    let _ = ack.send(&json!({ "ok": res.is_ok() }));
}

async fn on_rooms(io: Io, ack: AckSender<Adapter>) {
    let rooms: Vec<String> = match io.rooms().await {
        Ok(r) => r.into_iter().map(|r| r.to_string()).collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    let _ = ack.send(&rooms);
}

async fn on_fetch(io: Io, ack: AckSender<Adapter>) {
    let ids: Vec<String> = match io.fetch_sockets().await {
        Ok(socks) => socks.iter().map(|s| s.data().id.to_string()).collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    let _ = ack.send(&ids);
}

async fn on_emit_with_ack(io: Io, Data(req): Data<EmitReq>, ack: AckSender<Adapter>) {
    let timeout = Duration::from_millis(req.timeout.unwrap_or(1000));
    let acks: Vec<Value> = match io
        .timeout(timeout)
        .emit_with_ack::<_, Value>(&req.event, &req.data)
        .await
    {
        Ok(stream) => {
            stream
                .filter_map(|(_, r)| std::future::ready(r.ok()))
                .collect()
                .await
        }
        Err(e) => vec![json!({ "error": e.to_string() })],
    };
    let _ = ack.send(&acks);
}

async fn on_sync(s: Sock, ack: AckSender<Adapter>) {
    let mut ok = true;
    if let Some(ctr) = CTR.get() {
        for room in s.rooms() {
            ok &= ctr.ensure_room(s.ns(), &room).await.is_ok();
        }
    }
    let _ = ack.send(&json!({ "ok": ok }));
}

async fn on_join(io: Io, Data(room): Data<String>, ack: AckSender<Adapter>) {
    let res = io.join(room).await;
    let _ = ack.send(&json!({ "ok": res.is_ok() }));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3100);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    let ctr = FanoutAdapterCtr::redis(RedisAdapterConfig::new(url)).await?;
    let _ = CTR.set(ctr.clone());
    let (layer, io) = SocketIo::builder()
        .with_adapter::<Adapter>(ctr)
        .build_layer();
    io.ns("/", on_connect).await?;
    io.ns("/admin", on_connect).await?;

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {port}");
    axum::serve(listener, app).await?;
    Ok(())
}
