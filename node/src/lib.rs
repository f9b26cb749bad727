//! fanout-node: a Socket.IO / WebSocket pub/sub node with REST API, auth, topics and metrics.
//!
//! # Layout
//! The library's API is [`build`], [`serve`], [`config`], [`methods`] (your RPC methods),
//! [`state`], [`error`], [`auth`], [`store`], [`metrics`] and [`shutdown`]; the other modules
//! are private to the node.
//!
//! - [`config`]: flags and `FANOUT_*` variables.
//! - [`state`]: [`state::AppState`], shared by every handler.
//! - [`error`]: error codes and the `{ error: { code, message } }` shape.
//! - [`auth`]: tokens, password hashes, sessions.
//! - [`email`]: e-mail address validation.
//! - [`store`]: store traits and their in-memory implementations; Redis keys.
//! - [`topics`]: topic validation and access rules.
//! - [`request`]: client requests, parsed once into a typed [`request::Request`].
//! - [`client`]: the client core both transports share: authentication, ordered requests,
//!   subscriptions, publishing, methods.
//! - [`delivery`]: topic messages to local subscribers (budgets, drops) and to the cluster.
//! - [`sio`]: the Socket.IO namespaces `/` (pub/sub), `/chat` and `/stream`.
//! - [`ws`]: the plain-WebSocket transport `/ws`.
//! - [`events`]: the events and revocations channels.
//! - [`bus`]: cross-node channels (loopback when embedded).
//! - [`methods`]: the RPC method registry and built-ins.
//! - [`connections`]: local sessions by token, and their tokens' expiry (logout, expiry).
//! - [`sessions`]: how sessions end: revocation, expiry, periodic re-validation.
//! - [`http`]: REST API and operations routes.
//! - [`metrics`]: Prometheus metrics.
//! - [`io`]: the Socket.IO server types.
//! - [`listener`]: the TCP listener: connection limits, transport-level close, drain.
//! - [`server`]: the HTTP server loop: header, idle and request timeouts, upgrades, graceful
//!   stop.
//! - [`peer`]: client addresses behind trusted proxies; per-address connection counts.
//! - [`shutdown`]: the signals that start a graceful drain.
//! - [`starting`]: the 503 answers while the first connection to Redis is pending.
//!
//! A publish, followed end to end: a Socket.IO `publish` event →
//! [`sio::pubsub::Queued`] parses it into a [`request::Request`] and queues it on the
//! socket's [`client::Client`] → the client applies it in order and calls
//! [`delivery::Delivery::publish`] → [`delivery::Delivery::deliver_local`] hands it to this
//! node's subscribers within their budgets, and the adapter publishes it to Redis → on
//! every other node the adapter hands it to [`delivery::Delivery::on_remote_broadcast`] →
//! `deliver_local` there.
//!
//! [`serve`] runs a node on a listener and returns after a graceful shutdown.

pub mod alloc;
pub mod auth;
mod bus;
mod client;
pub mod config;
mod connections;
mod delivery;
mod email;
pub mod error;
mod events;
mod http;
mod io;
mod listener;
pub mod methods;
pub mod metrics;
mod peer;
mod request;
mod server;
mod sessions;
pub mod shutdown;
mod sio;
pub mod starting;
pub mod state;
pub mod store;
mod topics;
mod upgrade;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use socketioxide::{ParserConfig, SocketIo};
use tokio::net::TcpListener;

use fanout_adapter::{FanoutAdapterCtr, RedisAdapterConfig};

use crate::bus::{AdapterBus, Bus};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::delivery::outbound::Budget;
use crate::listener::{AcceptLimits, ConnTracker, TrackedListener};
use crate::methods::MethodRegistry;
use crate::metrics::Metrics;
use crate::peer::ClientLimits;
use crate::server::HttpTimeouts;
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
    /// Per-client connection limits, shared by the listener and the upgrade check.
    pub client_limits: ClientLimits,
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
            let target = fanout_adapter::parse_redis_target(url)
                .map_err(|err| StartError::Backend(err.to_string()))?;
            let backend = RedisBackend::new(&target, &cfg.prefix, metrics.clone())
                .map_err(|err| StartError::Backend(err.to_string()))?;
            tokio::spawn(RedisPresenceStore::run_heartbeat(
                backend.clone(),
                node_id.clone(),
            ));
            // Presence writes come in bursts of pipelines (a connect storm's subscribes): on
            // a connection of their own they never queue token look-ups behind them.
            let presence_backend = RedisBackend::new(&target, &cfg.prefix, metrics.clone())
                .map_err(|err| StartError::Backend(err.to_string()))?;
            Stores {
                tokens: Arc::new(CachedTokenStore::new(Arc::new(RedisTokenStore(
                    backend.clone(),
                )))),
                users: Arc::new(RedisUserStore(backend.clone())),
                models: Arc::new(RedisModelStore(backend.clone())),
                presence: Arc::new(RedisPresenceStore::new(presence_backend)),
                chat: Arc::new(RedisChatStore(backend)),
            }
        }
    };
    let bus: Arc<dyn Bus> = Arc::new(AdapterBus(adapter.clone()));
    let readiness = {
        let adapter = adapter.clone();
        Readiness::new(move || adapter.is_ready())
    };
    let budget = Budget {
        bytes: cfg.client_queue_bytes,
        messages: cfg.client_queue_messages,
    };
    let delivery = Delivery::new(adapter.clone(), metrics.clone(), budget);
    let state = AppState::new(StateParts {
        cfg: cfg.clone(),
        node_id,
        stores,
        bus,
        metrics,
        methods,
        readiness,
        delivery,
    });

    let (sio_layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(cfg.ping_interval_ms))
        .ping_timeout(Duration::from_millis(cfg.ping_timeout_ms))
        .max_payload(cfg.max_payload as u64)
        .max_buffer_size(cfg.client_queue_messages)
        .ws_read_buffer_size(cfg.ws_read_buffer)
        .ws_max_message_size(cfg.max_payload)
        .ws_max_frame_size(cfg.max_payload)
        // A binary packet is buffered until its last attachment: bound its count, its total
        // size (one payload) and the time the rest may take.
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(cfg.max_attachments)
                .max_incoming_binary_buf_size(cfg.max_payload)
                .packet_completion_timeout(Duration::from_millis(cfg.attachment_timeout_ms)),
        )
        .with_state(state.clone())
        .with_adapter::<io::NodeAdapter>(adapter.clone())
        .build_layer();
    state.delivery.set_io(io.clone());
    state.delivery.install_room_keeper();
    {
        let state = state.clone();
        adapter.set_remote_broadcast_hook(Arc::new(move |broadcast| {
            state.delivery.on_remote_broadcast(broadcast)
        }));
    }
    sio::register(&io)
        .await
        .map_err(|(ns, err)| StartError::Backend(format!("namespace {ns}: {err}")))?;

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
    {
        let state = state.clone();
        tokio::spawn(async move { state.connections.run_expiry().await });
    }
    tokio::spawn(sessions::run_revalidation(state.clone()));
    let items = state
        .bus
        .subscribe(&keys::stream_channel(&cfg.prefix))
        .await?;
    tokio::spawn(sio::stream::run_listener(state.clone(), items));

    // The Socket.IO service is built once and shared: the polling closer must reach the very
    // Engine.IO sessions the router serves (see sio::polling).
    let sio_service = tower::Layer::layer(&sio_layer, http::router(state.clone()));
    state
        .delivery
        .set_polling_closer(sio::polling::PollingCloser::new(sio_service.clone()));
    let client_limits = ClientLimits::from_config(&cfg);
    // In front of it: trimmed requests and fanout's own WebSocket handshakes (sio::request).
    let sio_service = sio::request::SocketIoEntry::new(sio_service);
    let router = axum::Router::new().fallback_service(sio_service);
    let router = http::outer_layers(router, &state, &client_limits);
    Ok(Node {
        state,
        router,
        client_limits,
    })
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
        .with_registry(metrics.registry().clone())
        .with_max_message_bytes(cfg.redis_max_message_bytes)
        .with_remote_ack_requests_max(cfg.remote_ack_requests_max)
        .with_remote_ack_timeout_max(Duration::from_millis(cfg.remote_ack_timeout_max_ms))
        .with_dropped_counter(metrics.dropped_counter().clone());
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
    let Node {
        state,
        router,
        client_limits,
    } = node;
    let cfg = &state.cfg;
    let tracker = Arc::new(ConnTracker::default());
    let limits = AcceptLimits {
        max_connections: cfg.max_connections,
        per_ip: client_limits.per_ip,
        proxies: client_limits.proxies,
    };
    let listener = TrackedListener::new(listener, tracker.clone(), state.metrics.clone(), limits);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let timeouts = HttpTimeouts {
        header: cfg.http_header_timeout(),
        idle: cfg.http_idle_timeout(),
        request: Duration::from_millis(cfg.http_request_timeout_ms),
    };
    let server = server::run(
        listener,
        router,
        timeouts,
        state.metrics.clone(),
        async move {
            stop_rx.await.ok();
        },
    );
    let mut server = tokio::spawn(server);

    tokio::select! {
        _ = shutdown => {}
        result = &mut server => {
            return match result {
                Ok(()) => Ok(()),
                Err(err) => Err(StartError::Backend(format!("server task: {err}"))),
            };
        }
    }

    tracing::info!(node = %state.node_id, connections = tracker.len(), "draining");
    state.readiness.start_draining();
    let drain = async {
        let pause = Duration::from_millis(cfg.drain_interval_ms);
        let told = state.delivery.hub().drain(cfg.drain_batch, pause).await;
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
        if let Some(io) = state.delivery.io() {
            io.close().await;
        }
    };
    if tokio::time::timeout(Duration::from_millis(cfg.drain_timeout_ms), drain)
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; exiting with connections still open");
    }
    stop_tx.send(()).ok();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(StartError::Backend(format!("server task: {err}"))),
        Err(_) => tracing::warn!("HTTP server did not stop within 5 s"),
    }
    tracing::info!(node = %state.node_id, "stopped");
    Ok(())
}
