//! [`AppState`]: everything handlers share, behind one cheap-to-clone `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::Authenticator;
use crate::auth::hashing::HashPool;
use crate::auth::throttle::CredentialThrottle;
use crate::bus::Bus;
use crate::config::Config;
use crate::connections::ConnRegistry;
use crate::delivery::Delivery;
use crate::methods::MethodRegistry;
use crate::metrics::Metrics;
use crate::store::{ChatStore, ModelStore, PresenceStore, TokenStore, UserStore};

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
    /// Topic delivery to local subscribers and to the cluster.
    pub delivery: Delivery,
    /// Password hashing and login throttles.
    pub accounts: Accounts,
}

/// What logins and signups share: the password hashing pool and the throttles in front of it.
pub struct Accounts {
    /// Password hashing threads.
    pub hasher: HashPool,
    /// Login and signup throttles.
    pub throttle: CredentialThrottle,
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
    /// Delivery.
    pub delivery: Delivery,
}

impl AppState {
    /// Assembles the state; the Socket.IO handle is attached later with
    /// [`Delivery::set_io`].
    pub fn new(parts: StateParts) -> Self {
        let auth = Authenticator::new(parts.stores.tokens.clone());
        let accounts = Accounts {
            hasher: HashPool::new(parts.cfg.hash_settings(), parts.metrics.clone()),
            throttle: CredentialThrottle::new(parts.cfg.throttle_settings()),
        };
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
            delivery: parts.delivery,
            accounts,
        }))
    }
}
