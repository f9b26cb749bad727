//! [`AppState`]: everything handlers share, behind one cheap-to-clone `Arc`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use socketioxide::SocketIo;

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::Config;
use crate::connections::ConnRegistry;
use crate::methods::MethodRegistry;
use crate::metrics::Metrics;
use crate::store::{ChatStore, ModelStore, PresenceStore, TokenStore, UserStore};

/// The socketioxide adapter type of every namespace: one concrete type in both modes
/// (`FanoutAdapterCtr::local()` embedded, `FanoutAdapterCtr::redis(…)` in a cluster), so
/// handlers are not generic.
pub type NodeAdapter = fanout_adapter::FanoutAdapter<socketioxide::adapter::Emitter>;

/// The Socket.IO server handle.
pub type Io = SocketIo<NodeAdapter>;

/// The stores a node runs on (memory in embedded mode, Redis in cluster mode).
#[derive(Clone)]
pub struct Stores {
    /// Access tokens.
    pub tokens: Arc<dyn TokenStore>,
    /// Users.
    pub users: Arc<dyn UserStore>,
    /// Model records.
    pub models: Arc<dyn ModelStore>,
    /// Topic presence.
    pub presence: Arc<dyn PresenceStore>,
    /// `/chat` seats.
    pub chat: Arc<dyn ChatStore>,
}

/// Whether the node should receive traffic: not draining and its backend reachable.
pub struct Readiness {
    draining: AtomicBool,
    backend: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Readiness {
    /// Readiness that also asks `backend` (e.g. "the Redis subscription is live").
    pub fn new(backend: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            draining: AtomicBool::new(false),
            backend: Box::new(backend),
        }
    }
    /// Starts draining: from now on the node reports not-ready and refuses new connections.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    /// True when the backend is reachable.
    pub fn backend_ready(&self) -> bool {
        (self.backend)()
    }
}

/// Shared state of a node.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The fields of [`AppState`].
pub struct Inner {
    /// The configuration the node started with.
    pub cfg: Config,
    /// This node's id (logs, metrics, `whoami`).
    pub node_id: String,
    /// Stores.
    pub stores: Stores,
    /// Token checks.
    pub auth: Authenticator,
    /// Cross-node channels (events, revocations).
    pub bus: Arc<dyn Bus>,
    /// Metrics registry and recorders.
    pub metrics: Metrics,
    /// Methods callable by clients (RPC).
    pub methods: MethodRegistry,
    /// Local connections by token, for logout.
    pub connections: ConnRegistry,
    /// Draining flag and backend health, for `/readyz` and the drain.
    pub readiness: Readiness,
    /// Local `/ws` subscriptions.
    pub ws_hub: crate::ws::WsHub,
    /// The Socket.IO server, set once at startup (it needs the state to be built first).
    io: OnceLock<Io>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The parts an [`AppState`] is made of.
pub struct StateParts {
    /// The configuration.
    pub cfg: Config,
    /// This node's id.
    pub node_id: String,
    /// Stores.
    pub stores: Stores,
    /// Cross-node channels.
    pub bus: Arc<dyn Bus>,
    /// Metrics.
    pub metrics: Metrics,
    /// Methods.
    pub methods: MethodRegistry,
    /// Readiness.
    pub readiness: Readiness,
}

impl AppState {
    /// Assembles the state; the Socket.IO handle is attached later with [`AppState::set_io`].
    pub fn new(parts: StateParts) -> Self {
        let auth = Authenticator::new(parts.stores.tokens.clone());
        Self(Arc::new(Inner {
            cfg: parts.cfg,
            node_id: parts.node_id,
            stores: parts.stores,
            auth,
            bus: parts.bus,
            metrics: parts.metrics,
            methods: parts.methods,
            connections: ConnRegistry::default(),
            readiness: parts.readiness,
            ws_hub: crate::ws::WsHub::default(),
            io: OnceLock::new(),
        }))
    }

    /// Attaches the Socket.IO handle (once, at startup).
    pub fn set_io(&self, io: Io) {
        if self.0.io.set(io).is_err() {
            tracing::error!("Socket.IO handle attached twice; keeping the first");
        }
    }

    /// The Socket.IO handle.
    pub fn io(&self) -> &Io {
        // Invariant: `lib::build` attaches the handle before any request is served.
        self.0
            .io
            .get()
            .expect("Socket.IO handle is attached at startup")
    }
}
