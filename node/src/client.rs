//! The client protocol of namespace `/`, independent of the transport: `subscribe`,
//! `unsubscribe`, `unsubscribeAll`, `publish` and method calls. Socket.IO ([`crate::pubsub`])
//! and plain WebSocket connections implement [`Subscriptions`] and call [`handle_request`],
//! so the rules live here once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::auth::Session;
use crate::delivery;
use crate::error::AppError;
use crate::methods::MethodCtx;
use crate::metrics::PublishSource;
use crate::state::AppState;
use crate::store::ConnKey;
use crate::topics::{Topic, authorize_publish, authorize_subscribe, topic_from_request};

/// The topics one connection subscribed to, shared by the transport's handlers. Each
/// transport keeps one beside its own delivery structure (socketioxide rooms, the `/ws` hub)
/// so that cleanup on disconnect never depends on that structure still being intact.
#[derive(Debug, Clone, Default)]
pub struct TopicSet(Arc<Mutex<BTreeSet<Topic>>>);

impl TopicSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<Topic>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Adds a topic.
    pub fn insert(&self, topic: &Topic) {
        self.lock().insert(topic.clone());
    }
    /// Removes a topic.
    pub fn remove(&self, topic: &Topic) {
        self.lock().remove(topic);
    }
    /// The topics, sorted.
    pub fn to_vec(&self) -> Vec<Topic> {
        self.lock().iter().cloned().collect()
    }
}

/// Most topics one connection may be subscribed to.
pub const MAX_TOPICS_PER_CONNECTION: usize = 1024;

/// The topic subscriptions of one client connection.
pub trait Subscriptions: Send + Sync {
    /// Identifies the connection cluster-wide (presence).
    fn key(&self) -> ConnKey;
    /// Adds a subscription.
    fn join(&self, topic: &Topic);
    /// Removes a subscription.
    fn leave(&self, topic: &Topic);
    /// The current subscriptions.
    fn topics(&self) -> Vec<Topic>;
}

/// A successful reply, before the transport shapes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A protocol request's reply (`{ ok: true, … }`).
    Done(Value),
    /// A method's result.
    Result(Value),
}

impl Reply {
    /// The Socket.IO ack: `{ ok: true, … }` or `{ result }`.
    pub fn into_ack(self) -> Value {
        match self {
            Reply::Done(body) => body,
            Reply::Result(result) => json!({ "result": result }),
        }
    }

    /// The `/ws` reply's `data`: the body, or the method's result itself.
    pub fn into_data(self) -> Value {
        match self {
            Reply::Done(body) | Reply::Result(body) => body,
        }
    }
}

/// Handles one request of an authenticated client; the error is sent as `{ error }`.
pub async fn handle_request(
    state: &AppState,
    session: &Session,
    conn: &dyn Subscriptions,
    name: &str,
    arg: Value,
    source: PublishSource,
) -> Result<Reply, AppError> {
    match name {
        "subscribe" => subscribe(state, session, conn, &arg).await.map(Reply::Done),
        "unsubscribe" => unsubscribe(state, conn, &arg).await.map(Reply::Done),
        "unsubscribeAll" => {
            let count = leave_all(state, conn).await;
            Ok(Reply::Done(json!({ "ok": true, "count": count })))
        }
        "publish" => publish(state, session, &arg, source).await.map(Reply::Done),
        _ => {
            let ctx = MethodCtx {
                state: state.clone(),
                session: session.clone(),
            };
            state.methods.call(name, ctx, arg).await.map(Reply::Result)
        }
    }
}

async fn subscribe(
    state: &AppState,
    session: &Session,
    conn: &dyn Subscriptions,
    arg: &Value,
) -> Result<Value, AppError> {
    let topic = topic_from_request(arg)?;
    authorize_subscribe(session, &topic)?;
    let current = conn.topics();
    if !current.contains(&topic) {
        if current.len() >= MAX_TOPICS_PER_CONNECTION {
            return Err(AppError::invalid(format!(
                "at most {MAX_TOPICS_PER_CONNECTION} subscriptions per connection"
            )));
        }
        conn.join(&topic);
        state
            .stores
            .presence
            .join(topic.as_str(), &conn.key(), &session.user_id)
            .await?;
    }
    Ok(json!({ "ok": true, "topic": topic.as_str() }))
}

async fn unsubscribe(
    state: &AppState,
    conn: &dyn Subscriptions,
    arg: &Value,
) -> Result<Value, AppError> {
    let topic = topic_from_request(arg)?;
    conn.leave(&topic);
    state
        .stores
        .presence
        .leave(topic.as_str(), &conn.key())
        .await?;
    Ok(json!({ "ok": true, "topic": topic.as_str() }))
}

/// Leaves every topic (`unsubscribeAll`, and on disconnect); returns how many.
pub async fn leave_all(state: &AppState, conn: &dyn Subscriptions) -> usize {
    let topics = conn.topics();
    let key = conn.key();
    for topic in &topics {
        conn.leave(topic);
        if let Err(err) = state.stores.presence.leave(topic.as_str(), &key).await {
            tracing::warn!(%err, %topic, "presence cleanup failed");
        }
    }
    topics.len()
}

async fn publish(
    state: &AppState,
    session: &Session,
    arg: &Value,
    source: PublishSource,
) -> Result<Value, AppError> {
    let (topic, data) = publish_request(arg)?;
    authorize_publish(session, &topic)?;
    delivery::publish(state, &topic, data, source).await?;
    Ok(json!({ "ok": true }))
}

/// Reads `{ topic, data }` (REST and sockets share it).
pub fn publish_request(arg: &Value) -> Result<(Topic, &Value), AppError> {
    let Value::Object(map) = arg else {
        return Err(AppError::bad_request("expected { topic, data }"));
    };
    let topic = match map.get("topic") {
        Some(Value::String(s)) => Topic::parse(s)?,
        _ => {
            return Err(AppError::bad_request(
                "expected { topic, data } with a string topic",
            ));
        }
    };
    Ok((topic, map.get("data").unwrap_or(&Value::Null)))
}
