//! fanout-node: a Socket.IO / WebSocket pub/sub node with REST API, auth, topics and metrics.
//!
//! # Layout
//! - [`config`]: flags and `FANOUT_*` variables.
//! - [`state`]: [`state::AppState`], shared by every handler.
//! - [`error`]: error codes and the `{ error: { code, message } }` shape.
//! - [`auth`]: tokens, password hashes, sessions.
//! - [`store`]: store traits and their in-memory implementations; Redis keys.
//! - [`topics`]: topic validation and access rules.
//! - [`client`]: the transport-neutral client protocol (subscribe, publish, methods).
//! - [`delivery`]: publishing to topics and delivering to local subscribers.
//! - [`events`]: the events and revocations channels.
//! - [`bus`]: cross-node channels (loopback when embedded).
//! - [`methods`]: the RPC method registry and built-ins.
//! - [`connections`]: local connections by token (logout).
//! - [`pubsub`]: Socket.IO namespace `/`.
//! - [`chat`]: Socket.IO namespace `/chat` (two-person rooms).
//! - [`stream`]: Socket.IO namespace `/stream` (term-filtered stream).
//! - [`http`]: REST API and operations routes.
//! - [`metrics`]: Prometheus metrics.
//! - [`ws`]: the plain-WebSocket endpoint `/ws`.
//! - [`shutdown`]: signals, connection tracking, graceful drain.
//!
//! [`run`] starts a node on a listener and returns after a graceful shutdown.

pub mod auth;
pub mod bus;
pub mod chat;
pub mod client;
pub mod config;
pub mod connections;
pub mod delivery;
pub mod error;
pub mod events;
pub mod http;
pub mod methods;
pub mod metrics;
pub mod pubsub;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod stream;
pub mod topics;
pub mod ws;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use tokio::net::TcpListener;

use fanout_adapter::{FanoutAdapterCtr, RedisAdapterConfig};

use crate::bus::{AdapterBus, Bus};
use crate::config::Config;
use crate::methods::MethodRegistry;
use crate::metrics::Metrics;
use crate::shutdown::{ConnTracker, TrackedListener};
use crate::state::{AppState, Readiness, StateParts, Stores};
use crate::store::cache::CachedTokenStore;
use crate::store::keys;
use crate::store::memory::{
    MemoryChatStore, MemoryModelStore, MemoryPresenceStore, MemoryTokenStore, MemoryUserStore,
};
use crate::store::redis::{
    RedisBackend, RedisChatStore, RedisModelStore, RedisPresenceStore, RedisTokenStore,
    RedisUserStore,
};

/// A node that failed to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A backend could not be set up.
    #[error("backend: {0}")]
    Backend(String),
    /// The HTTP server failed.
    #[error("server: {0}")]
    Server(#[from] std::io::Error),
}

/// A built node: its router and state, ready to serve.
pub struct Node {
    /// Shared state.
    pub state: AppState,
    /// The whole HTTP application (REST + Socket.IO).
    pub router: axum::Router,
}

/// Builds a node from its configuration and method registry (no listener yet).
pub async fn build(cfg: Config, methods: MethodRegistry) -> Result<Node, StartError> {
    cfg.validate()?;
    let node_id = cfg.resolved_node_id();
    let metrics = Metrics::new(&node_id);
    let adapter = connect_adapter(&cfg, &metrics).await;
    let stores = match &cfg.redis_url {
        None => Stores {
            tokens: Arc::new(MemoryTokenStore::default()),
            users: Arc::new(MemoryUserStore::default()),
            models: Arc::new(MemoryModelStore::default()),
            presence: Arc::new(MemoryPresenceStore::default()),
            chat: Arc::new(MemoryChatStore::default()),
        },
        Some(url) => {
            let backend = RedisBackend::new(url, &cfg.prefix, metrics.clone())
                .map_err(|err| StartError::Backend(err.to_string()))?;
            tokio::spawn(RedisPresenceStore::run_heartbeat(
                backend.clone(),
                node_id.clone(),
            ));
            Stores {
                tokens: Arc::new(CachedTokenStore::new(Arc::new(RedisTokenStore(
                    backend.clone(),
                )))),
                users: Arc::new(RedisUserStore(backend.clone())),
                models: Arc::new(RedisModelStore(backend.clone())),
                presence: Arc::new(RedisPresenceStore(backend.clone())),
                chat: Arc::new(RedisChatStore(backend)),
            }
        }
    };
    let bus: Arc<dyn Bus> = Arc::new(AdapterBus(adapter.clone()));
    let readiness = {
        let adapter = adapter.clone();
        Readiness::new(move || adapter.is_ready())
    };
    let state = AppState::new(StateParts {
        cfg: cfg.clone(),
        node_id,
        stores,
        bus,
        metrics,
        methods,
        readiness,
    });

    let (sio_layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(cfg.ping_interval_ms))
        .ping_timeout(Duration::from_millis(cfg.ping_timeout_ms))
        .max_payload(cfg.max_payload as u64)
        .ws_max_message_size(cfg.max_payload)
        .ws_max_frame_size(cfg.max_payload)
        .with_state(state.clone())
        .with_adapter::<state::NodeAdapter>(adapter.clone())
        .build_layer();
    state.set_io(io.clone());
    {
        let state = state.clone();
        adapter.set_remote_broadcast_hook(Arc::new(move |broadcast| {
            delivery::on_remote_broadcast(&state, broadcast);
        }));
    }
    let ns_error = |ns: &str, err: fanout_adapter::Error| {
        StartError::Backend(format!("namespace {ns}: {err}"))
    };
    io.ns(
        pubsub::NAMESPACE,
        pubsub::on_connect.with(pubsub::on_connect_middleware),
    )
    .await
    .map_err(|err| ns_error(pubsub::NAMESPACE, err))?;
    io.ns(
        chat::NAMESPACE,
        chat::on_connect.with(chat::on_connect_middleware),
    )
    .await
    .map_err(|err| ns_error(chat::NAMESPACE, err))?;
    io.ns(
        stream::NAMESPACE,
        stream::on_connect.with(stream::on_connect_middleware),
    )
    .await
    .map_err(|err| ns_error(stream::NAMESPACE, err))?;

    let events = state
        .bus
        .subscribe(&keys::events_channel(&cfg.prefix))
        .await?;
    tokio::spawn(events::run_events_listener(state.clone(), events));
    let revocations = state
        .bus
        .subscribe(&keys::revocations_channel(&cfg.prefix))
        .await?;
    tokio::spawn(events::run_revocations_listener(state.clone(), revocations));
    let items = state
        .bus
        .subscribe(&keys::stream_channel(&cfg.prefix))
        .await?;
    tokio::spawn(stream::run_listener(state.clone(), items));

    let router = http::router(state.clone()).layer(sio_layer);
    let router = http::outer_layers(router, &state);
    Ok(Node { state, router })
}

/// The adapter for the configured mode. In cluster mode the first connection to Redis is
/// retried with backoff (logged) until it succeeds: a node started before its Redis waits for
/// it instead of exiting; once connected, the adapter reconnects by itself.
async fn connect_adapter(cfg: &Config, metrics: &Metrics) -> FanoutAdapterCtr {
    let Some(url) = &cfg.redis_url else {
        return FanoutAdapterCtr::local();
    };
    let config = RedisAdapterConfig::new(url.clone())
        .with_key(cfg.adapter_key.clone())
        .with_registry(metrics.registry().clone());
    let mut delay = Duration::from_millis(200);
    loop {
        match FanoutAdapterCtr::redis(config.clone()).await {
            Ok(ctr) => return ctr,
            Err(err) => {
                tracing::warn!(%err, retry_in_ms = delay.as_millis() as u64, "cannot reach Redis");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl From<error::AppError> for StartError {
    fn from(err: error::AppError) -> Self {
        StartError::Backend(err.to_string())
    }
}

/// Serves `node` on `listener` until `shutdown` resolves, then drains: `/readyz` turns 503,
/// new sessions are refused, connections are closed in batches, and the function returns.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let Node { state, router } = node;
    let cfg = &state.cfg;
    let tracker = Arc::new(ConnTracker::default());
    let listener = TrackedListener::new(
        listener,
        tracker.clone(),
        state.metrics.clone(),
        cfg.max_connections,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        stop_rx.await.ok();
    });
    let mut server = tokio::spawn(server.into_future());

    tokio::select! {
        _ = shutdown => {}
        result = &mut server => {
            return match result {
                Ok(result) => result.map_err(StartError::from),
                Err(err) => Err(StartError::Backend(format!("server task: {err}"))),
            };
        }
    }

    tracing::info!(node = %state.node_id, connections = tracker.len(), "draining");
    state.readiness.start_draining();
    let drain = async {
        let pause = Duration::from_millis(cfg.drain_interval_ms);
        let told = state.ws_hub.drain(cfg.drain_batch, pause).await;
        if told > 0 {
            tracing::info!(told, "drain: sent 1001 to /ws connections");
        }
        let closed = tracker
            .drain(
                cfg.drain_batch,
                Duration::from_millis(cfg.drain_interval_ms),
            )
            .await;
        tracing::info!(closed, "drain: all connections closed");
        state.io().close().await;
    };
    if tokio::time::timeout(Duration::from_millis(cfg.drain_timeout_ms), drain)
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; exiting with connections still open");
    }
    stop_tx.send(()).ok();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(err)) => return Err(StartError::Backend(format!("server task: {err}"))),
        Err(_) => tracing::warn!("HTTP server did not stop within 5 s"),
    }
    tracing::info!(node = %state.node_id, "stopped");
    Ok(())
}
