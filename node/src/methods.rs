//! Remote procedures (loopback-socket's `defineMethod`): a registry of async methods, called
//! the same way from Socket.IO (event with an ack) and `/ws` (`type`). Built-ins: `whoami`,
//! `time`, `presence`, `find`. An application adds its own with [`MethodRegistry::define`]:
//!
//! ```
//! use fanout_node::methods::MethodRegistry;
//! let mut methods = MethodRegistry::with_builtins();
//! methods.define("echo", |_ctx, args| async move { Ok(args) });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::auth::Session;
use crate::error::{AppError, Code};
use crate::state::AppState;
use crate::topics::{authorize_subscribe, is_model_name, topic_from_request};

/// What a method gets besides its arguments.
#[derive(Clone)]
pub struct MethodCtx {
    /// The node's shared state.
    pub state: AppState,
    /// The caller.
    pub session: Session,
}

/// An error a method returns: code + message, sent as `{ error: { code, message } }`.
pub type MethodError = AppError;

type BoxedMethod = Arc<
    dyn Fn(MethodCtx, Value) -> Pin<Box<dyn Future<Output = Result<Value, MethodError>> + Send>>
        + Send
        + Sync,
>;

/// Names clients cannot use for methods: the protocol's own events.
pub const RESERVED_NAMES: &[&str] = &[
    "authentication",
    "authenticate",
    "subscribe",
    "unsubscribe",
    "unsubscribeAll",
    "publish",
];

/// Methods by name.
#[derive(Clone, Default)]
pub struct MethodRegistry {
    methods: HashMap<String, BoxedMethod>,
}

impl MethodRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with `whoami`, `time`, `presence` and `find`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        registry.define("whoami", |ctx, _| async move { whoami(ctx) });
        registry.define("time", |_, _| async move { Ok(json!(now_millis())) });
        registry.define("presence", presence);
        registry.define("find", find);
        registry
    }

    /// Defines (or replaces) a method. Panics on a reserved name: that is a programming error.
    pub fn define<F, Fut>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(MethodCtx, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, MethodError>> + Send + 'static,
    {
        assert!(
            !RESERVED_NAMES.contains(&name),
            "method name {name:?} is reserved"
        );
        let boxed: BoxedMethod = Arc::new(move |ctx, args| Box::pin(method(ctx, args)));
        self.methods.insert(name.to_string(), boxed);
        self
    }

    /// True when `name` is a defined method.
    pub fn contains(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// Calls a method; `unknown_method` when there is none of that name.
    pub async fn call(
        &self,
        name: &str,
        ctx: MethodCtx,
        args: Value,
    ) -> Result<Value, MethodError> {
        match self.methods.get(name) {
            Some(method) => method(ctx, args).await,
            None => Err(AppError::new(
                Code::UnknownMethod,
                format!("no method {name:?}"),
            )),
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn whoami(ctx: MethodCtx) -> Result<Value, MethodError> {
    Ok(json!({ "userId": ctx.session.user_id, "node": ctx.state.node_id }))
}

/// `presence { topic }`: user ids subscribed to the topic, cluster-wide. The caller must be
/// allowed to subscribe to the topic itself.
async fn presence(ctx: MethodCtx, args: Value) -> Result<Value, MethodError> {
    let topic = topic_from_request(&args)?;
    authorize_subscribe(&ctx.session, &topic)?;
    let members = ctx.state.stores.presence.members(topic.as_str()).await?;
    Ok(json!(members))
}

/// Largest `limit` of `find`.
pub const FIND_MAX_LIMIT: usize = 1000;

/// `find { model, limit? }`: records of a model, in id order.
async fn find(ctx: MethodCtx, args: Value) -> Result<Value, MethodError> {
    let model = args
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| AppError::bad_request("expected { model, limit? }"))?;
    if !is_model_name(model) {
        return Err(AppError::invalid("invalid model name"));
    }
    let limit = match args.get("limit") {
        None | Some(Value::Null) => 100,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=FIND_MAX_LIMIT as u64).contains(n))
            .ok_or_else(|| AppError::invalid(format!("limit must be 1..={FIND_MAX_LIMIT}")))?
            as usize,
    };
    let records = ctx.state.stores.models.list(model, limit).await?;
    Ok(json!(records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "reserved")]
    fn reserved_names_cannot_be_defined() {
        MethodRegistry::new().define("publish", |_, a| async move { Ok(a) });
    }

    #[test]
    fn builtins_are_defined() {
        let registry = MethodRegistry::with_builtins();
        for name in ["whoami", "time", "presence", "find"] {
            assert!(registry.contains(name), "{name}");
        }
        assert!(!registry.contains("nope"));
    }
}
