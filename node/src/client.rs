//! The client core: what one connection of namespace `/` or `/ws` is, whatever its
//! transport. A transport (Socket.IO in [`crate::sio::pubsub`], plain WebSocket in
//! [`crate::ws`]) parses each request once into a [`Request`], hands it to
//! [`Client::submit`] in the order it arrived, and answers with the [`Reply`] it gets back.
//! The rules — authentication, topics, access, publishing, methods — live here once.
//!
//! # Order
//! A connection's requests are applied strictly in the order received: a per-connection
//! queue is drained by one task at a time (started when the queue goes from empty to
//! non-empty, so an idle connection costs no task). `authenticate`, `subscribe`,
//! `unsubscribe`, `unsubscribeAll` and `publish` complete before the next request starts, so
//! a publish that follows a subscribe on the same connection is seen by it, and one
//! connection's publishes leave the node in order. Method calls start in order and then run
//! concurrently (a slow method does not hold up the connection). Different connections never
//! wait for each other.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};

use crate::auth::{Credentials, Session};
use crate::delivery::TopicMessage;
use crate::delivery::outbound::{CloseReason, Outbound};
use crate::error::{AppError, Code};
use crate::methods::MethodCtx;
use crate::metrics::PublishSource;
use crate::request::Request;
use crate::state::AppState;
use crate::store::ConnKey;
use crate::topics::{Topic, authorize_publish, authorize_subscribe};

/// Most topics one connection may be subscribed to.
pub const MAX_TOPICS_PER_CONNECTION: usize = 1024;
/// Most requests of one connection waiting to be applied; further ones are refused.
pub const MAX_PENDING_REQUESTS: usize = 4096;

/// What the client core needs from a transport.
pub trait Transport: Send + Sync + 'static {
    /// Starts delivering `topic` to this connection.
    fn join(&self, topic: &Topic);
    /// Stops delivering `topic` to this connection.
    fn leave(&self, topic: &Topic);
    /// Closes the connection for `reason`.
    fn close(&self, reason: CloseReason);
    /// Tells the client the outcome of an authentication, after its reply (Socket.IO emits
    /// `authenticated` / `unauthorized` and disconnects on failure; `/ws` closes on failure).
    fn authenticated(&self, outcome: &Result<Session, AppError>);
}

/// Which transport a client uses (metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Socket.IO, namespace `/`.
    SocketIo,
    /// Plain WebSocket, `/ws`.
    Ws,
}

impl ClientKind {
    fn origin(self) -> &'static str {
        match self {
            ClientKind::SocketIo => "socket",
            ClientKind::Ws => "ws",
        }
    }

    fn source(self) -> PublishSource {
        match self {
            ClientKind::SocketIo => PublishSource::Socket,
            ClientKind::Ws => PublishSource::WebSocket,
        }
    }
}

/// A successful reply, before the transport shapes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A protocol request's reply (`{ ok: true, … }`, or `{ userId }` for authentication).
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

/// Sends a request's outcome back to the client.
pub type Responder = Box<dyn FnOnce(Result<Reply, AppError>) + Send>;

struct Job {
    request: Request,
    reply: Responder,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    draining: bool,
}

/// One client connection.
pub struct Client {
    key: ConnKey,
    kind: ClientKind,
    transport: Box<dyn Transport>,
    outbound: Arc<Outbound>,
    session: Mutex<Option<Session>>,
    topics: Mutex<BTreeSet<Topic>>,
    queue: Mutex<Queue>,
    gone: AtomicBool,
}

impl Client {
    /// A new, unauthenticated client.
    pub fn new(
        key: ConnKey,
        kind: ClientKind,
        transport: Box<dyn Transport>,
        outbound: Arc<Outbound>,
    ) -> Arc<Client> {
        Arc::new(Client {
            key,
            kind,
            transport,
            outbound,
            session: Mutex::new(None),
            topics: Mutex::new(BTreeSet::new()),
            queue: Mutex::new(Queue::default()),
            gone: AtomicBool::new(false),
        })
    }

    /// Identifies the connection cluster-wide (presence).
    pub fn key(&self) -> &ConnKey {
        &self.key
    }

    /// The connection's outbound budget.
    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// The session, once authenticated.
    pub fn session(&self) -> Option<Session> {
        lock(&self.session).clone()
    }

    /// The topics subscribed to, sorted.
    pub fn topics(&self) -> Vec<Topic> {
        lock(&self.topics).iter().cloned().collect()
    }

    /// Queues a request; it is applied after every request queued before it. Returns the
    /// future that drains the queue when nobody is draining it yet: the caller runs it (the
    /// Socket.IO handler task) or spawns it.
    #[must_use = "run or spawn the drain future, or the request is never applied"]
    pub fn submit(
        self: &Arc<Self>,
        state: &AppState,
        request: Result<Request, AppError>,
        reply: Responder,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        state.metrics.event_received(match self.kind {
            ClientKind::SocketIo => "/",
            ClientKind::Ws => crate::delivery::WS_NAMESPACE,
        });
        let request = match request {
            Ok(request) => request,
            Err(err) => {
                self.answer(state, reply, Err(err));
                return None;
            }
        };
        let mut queue = lock(&self.queue);
        if queue.jobs.len() >= MAX_PENDING_REQUESTS {
            drop(queue);
            let err = AppError::new(
                Code::Unavailable,
                format!("more than {MAX_PENDING_REQUESTS} requests pending on this connection"),
            );
            self.answer(state, reply, Err(err));
            return None;
        }
        queue.jobs.push_back(Job { request, reply });
        if queue.draining {
            return None;
        }
        queue.draining = true;
        drop(queue);
        Some(self.clone().drain(state.clone()))
    }

    async fn drain(self: Arc<Self>, state: AppState) {
        loop {
            let job = {
                let mut queue = lock(&self.queue);
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.draining = false;
                        return;
                    }
                }
            };
            self.apply(&state, job).await;
        }
    }

    async fn apply(self: &Arc<Self>, state: &AppState, Job { request, reply }: Job) {
        if self.gone.load(Ordering::Acquire) {
            return;
        }
        if let Request::Authenticate(creds) = request {
            let outcome = self.authenticate(state, &creds).await;
            let body = outcome
                .as_ref()
                .map(|session| Reply::Done(json!({ "userId": session.user_id })))
                .map_err(Clone::clone);
            self.answer(state, reply, body);
            self.transport.authenticated(&outcome);
            return;
        }
        let Some(session) = self.session() else {
            self.answer(
                state,
                reply,
                Err(AppError::unauthorized("authenticate first")),
            );
            return;
        };
        let outcome = match request {
            Request::Authenticate(_) => return,
            Request::Subscribe(topic) => self.subscribe(state, &session, topic).await,
            Request::Unsubscribe(topic) => self.unsubscribe(state, &topic).await,
            Request::UnsubscribeAll => {
                let count = self.leave_all(state).await;
                Ok(Reply::Done(json!({ "ok": true, "count": count })))
            }
            Request::Publish { topic, data } => self.publish(state, &session, topic, data).await,
            Request::Call { method, args } => {
                let ctx = MethodCtx {
                    state: state.clone(),
                    session,
                };
                let state = state.clone();
                let client = self.clone();
                tokio::spawn(async move {
                    let outcome = state.methods.call(&method, ctx, args).await;
                    client.answer(&state, reply, outcome.map(Reply::Result));
                });
                return;
            }
        };
        self.answer(state, reply, outcome);
    }

    fn answer(&self, state: &AppState, reply: Responder, outcome: Result<Reply, AppError>) {
        if let Err(err) = &outcome {
            state
                .metrics
                .bad_input(self.kind.origin(), err.code.as_str());
        }
        reply(outcome);
    }

    /// Checks credentials and, on success, makes this connection that session's: it is
    /// registered for logout, and its requests are served from now on. An already
    /// authenticated connection keeps its session.
    pub async fn authenticate(
        self: &Arc<Self>,
        state: &AppState,
        creds: &Credentials,
    ) -> Result<Session, AppError> {
        if let Some(session) = self.session() {
            return Ok(session);
        }
        match state.auth.check(creds).await {
            Ok(session) => {
                let weak: Weak<Client> = Arc::downgrade(self);
                let kick = Arc::new(move || {
                    if let Some(client) = weak.upgrade() {
                        client.transport.close(CloseReason::Revoked);
                    }
                });
                state
                    .connections
                    .register(&session.token_hash, self.key.clone(), kick);
                *lock(&self.session) = Some(session.clone());
                Ok(session)
            }
            Err(failure) => {
                state.metrics.auth_failed(failure.as_str());
                tracing::info!(conn = %self.key.0, reason = failure.as_str(), "authentication refused");
                Err(failure.to_app_error())
            }
        }
    }

    async fn subscribe(
        &self,
        state: &AppState,
        session: &Session,
        topic: Topic,
    ) -> Result<Reply, AppError> {
        authorize_subscribe(session, &topic)?;
        let added = {
            let mut topics = lock(&self.topics);
            if topics.contains(&topic) {
                false
            } else if topics.len() >= MAX_TOPICS_PER_CONNECTION {
                return Err(AppError::invalid(format!(
                    "at most {MAX_TOPICS_PER_CONNECTION} subscriptions per connection"
                )));
            } else {
                topics.insert(topic.clone())
            }
        };
        if added {
            self.transport.join(&topic);
            state
                .stores
                .presence
                .join(topic.as_str(), &self.key, &session.user_id)
                .await?;
            if self.gone.load(Ordering::Acquire) {
                // The connection closed meanwhile and its cleanup may have run already.
                self.leave_all(state).await;
            }
        }
        Ok(Reply::Done(json!({ "ok": true, "topic": topic.as_str() })))
    }

    async fn unsubscribe(&self, state: &AppState, topic: &Topic) -> Result<Reply, AppError> {
        lock(&self.topics).remove(topic);
        self.transport.leave(topic);
        state
            .stores
            .presence
            .leave(topic.as_str(), &self.key)
            .await?;
        Ok(Reply::Done(json!({ "ok": true, "topic": topic.as_str() })))
    }

    /// Leaves every topic; returns how many.
    async fn leave_all(&self, state: &AppState) -> usize {
        let topics = std::mem::take(&mut *lock(&self.topics));
        for topic in &topics {
            self.transport.leave(topic);
            if let Err(err) = state.stores.presence.leave(topic.as_str(), &self.key).await {
                tracing::warn!(%err, %topic, "presence cleanup failed");
            }
        }
        topics.len()
    }

    async fn publish(
        &self,
        state: &AppState,
        session: &Session,
        topic: Topic,
        data: Value,
    ) -> Result<Reply, AppError> {
        authorize_publish(session, &topic)?;
        let msg = TopicMessage::new(topic, data)?;
        state.delivery.publish(&msg, self.kind.source()).await?;
        Ok(Reply::Done(json!({ "ok": true })))
    }

    /// Closes the connection for `reason` (the transport decides how).
    pub fn close(&self, reason: CloseReason) {
        self.transport.close(reason);
    }

    /// The connection is gone: forget its session and subscriptions (presence included).
    pub async fn closed(&self, state: &AppState) {
        self.gone.store(true, Ordering::Release);
        if let Some(session) = self.session() {
            state.connections.unregister(&session.token_hash, &self.key);
        }
        lock(&self.queue).jobs.clear();
        self.leave_all(state).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
