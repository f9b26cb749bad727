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
//!
//! # Limits
//! Every request, well-formed or not, first passes the connection's token bucket
//! ([`RequestLimiter`], `FANOUT_CLIENT_RATE` / `FANOUT_CLIENT_BURST`): over it the request is
//! answered `rate_limited` (counted in `fanout_bad_input_total{code="rate_limited"}`), and a
//! connection refused `FANOUT_CLIENT_MAX_REFUSALS` times in a row is closed at the transport
//! level (reason `rate_limited`).
//!
//! # End of a session
//! When its token is revoked or expires ([`crate::sessions`]), [`Client::end`] marks the
//! session ended — every request from then on, queued or new, is answered `unauthorized` —
//! and asks the transport to close.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use serde_json::{Value, json};

use crate::auth::{Credentials, Session};
use crate::config::Config;
use crate::connections::Endable;
use crate::delivery::outbound::{CloseReason, Outbound};
use crate::delivery::{TOPIC_NAMESPACE, TopicMessage};
use crate::error::{AppError, Code};
use crate::methods::MethodCtx;
use crate::metrics::PublishSource;
use crate::request::Request;
use crate::state::AppState;
use crate::store::ConnKey;
use crate::topics::{Topic, TopicSet, authorize_publish, authorize_subscribe};

/// Most topics one connection may be subscribed to.
pub const MAX_TOPICS_PER_CONNECTION: usize = 1024;
/// Most requests of one connection waiting to be applied; further ones are refused.
pub const MAX_PENDING_REQUESTS: usize = 4096;
/// Bytes of requests of one connection waiting to be applied, in units of
/// `FANOUT_MAX_PAYLOAD`: what a connection can make the node hold while its requests wait
/// (on a slow Redis, say) is bounded by size too, not only by count.
pub const MAX_PENDING_PAYLOADS: usize = 2;

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
    /// Size of the request as received (bytes).
    size: usize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Sum of the waiting jobs' sizes.
    bytes: usize,
    draining: bool,
}

/// A direct (one-connection) governor rate limiter: its state is one `AtomicU64`, and with
/// the std monotonic clock (zero-sized) the whole limiter is a few tens of bytes inside the
/// [`Client`], with nothing to clean up when the connection goes (a keyed limiter would keep
/// a map entry per connection, keyed by a string, and need sweeping).
type Bucket =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

/// Whether a request may be applied ([`RequestLimiter::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the rate.
    Yes,
    /// Over the rate: refuse this request.
    Refused,
    /// Over the rate once too often in a row: refuse it and close the connection.
    Close,
}

/// One connection's request rate: a token bucket of `FANOUT_CLIENT_BURST` requests refilled
/// at `FANOUT_CLIENT_RATE` per second, and the count of refusals in a row.
pub struct RequestLimiter {
    bucket: Option<Bucket>,
    refused_in_a_row: AtomicU32,
    max_refusals: u32,
}

impl RequestLimiter {
    /// The limiter the configuration asks for (no bucket when the rate is 0).
    pub fn new(cfg: &Config) -> Self {
        let bucket = NonZeroU32::new(cfg.client_rate).map(|rate| {
            let burst = NonZeroU32::new(cfg.client_burst).unwrap_or(rate);
            RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                MonotonicClock,
            )
        });
        Self {
            bucket,
            refused_in_a_row: AtomicU32::new(0),
            max_refusals: cfg.client_max_refusals.max(1),
        }
    }

    /// Takes one request out of the bucket.
    pub fn check(&self) -> Admit {
        let Some(bucket) = &self.bucket else {
            return Admit::Yes;
        };
        if bucket.check().is_ok() {
            self.refused_in_a_row.store(0, Ordering::Relaxed);
            return Admit::Yes;
        }
        let refused = self.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if refused >= self.max_refusals {
            Admit::Close
        } else {
            Admit::Refused
        }
    }
}

/// `Client::ended` of a session that did not end (a [`CloseReason`] is never 0).
const LIVE: u8 = 0;

/// One client connection.
pub struct Client {
    key: ConnKey,
    kind: ClientKind,
    transport: Box<dyn Transport>,
    outbound: Arc<Outbound>,
    limiter: RequestLimiter,
    session: Mutex<Option<Session>>,
    /// [`LIVE`], or the [`CloseReason`] its session ended for.
    ended: AtomicU8,
    topics: Mutex<TopicSet>,
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
        limiter: RequestLimiter,
    ) -> Arc<Client> {
        Arc::new(Client {
            key,
            kind,
            transport,
            outbound,
            limiter,
            session: Mutex::new(None),
            ended: AtomicU8::new(LIVE),
            topics: Mutex::new(TopicSet::default()),
            queue: Mutex::new(Queue::default()),
            gone: AtomicBool::new(false),
        })
    }

    /// Why the session ended, once it did.
    pub fn ended(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.ended.load(Ordering::Acquire))
    }

    /// The session, once authenticated.
    pub fn session(&self) -> Option<Session> {
        lock(&self.session).clone()
    }

    /// Queues a request of `size` bytes as received; it is applied after every request queued
    /// before it. Returns the
    /// future that drains the queue when nobody is draining it yet: the caller runs it (the
    /// Socket.IO handler task) or spawns it.
    #[must_use = "run or spawn the drain future, or the request is never applied"]
    pub fn submit(
        self: &Arc<Self>,
        state: &AppState,
        request: Result<Request, AppError>,
        size: usize,
        reply: Responder,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        state.metrics.event_received(match self.kind {
            ClientKind::SocketIo => "/",
            ClientKind::Ws => crate::delivery::WS_NAMESPACE,
        });
        // Once closing for its rate, nothing more is applied while the close is under way.
        let admit = if self.outbound.closing() == Some(CloseReason::RateLimited) {
            Admit::Refused
        } else {
            self.limiter.check()
        };
        match admit {
            Admit::Yes => {}
            admit => {
                let err = AppError::new(
                    Code::RateLimited,
                    format!(
                        "more than {} requests per second (burst {}): slow down",
                        state.cfg.client_rate, state.cfg.client_burst
                    ),
                );
                self.answer(state, reply, Err(err));
                if admit == Admit::Close && self.outbound.closing().is_none() {
                    tracing::info!(conn = %self.key.0, "closing a connection that kept going over its request rate");
                    self.transport.close(CloseReason::RateLimited);
                }
                return None;
            }
        }
        let request = match request {
            Ok(request) => request,
            Err(err) => {
                self.answer(state, reply, Err(err));
                return None;
            }
        };
        let max_bytes = MAX_PENDING_PAYLOADS * state.cfg.max_payload;
        let mut queue = lock(&self.queue);
        if queue.jobs.len() >= MAX_PENDING_REQUESTS || queue.bytes + size > max_bytes {
            drop(queue);
            let err = AppError::new(
                Code::Unavailable,
                format!(
                    "too many requests pending on this connection (at most {MAX_PENDING_REQUESTS}, {max_bytes} bytes): wait for replies"
                ),
            );
            self.answer(state, reply, Err(err));
            return None;
        }
        queue.bytes += size;
        queue.jobs.push_back(Job {
            request,
            reply,
            size,
        });
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
                    Some(job) => {
                        queue.bytes -= job.size;
                        job
                    }
                    None => {
                        queue.draining = false;
                        // An idle connection keeps no queue capacity (a few hundred bytes
                        // each, once it had a request waiting).
                        queue.jobs = VecDeque::new();
                        return;
                    }
                }
            };
            self.apply(&state, job).await;
        }
    }

    async fn apply(self: &Arc<Self>, state: &AppState, Job { request, reply, .. }: Job) {
        if self.gone.load(Ordering::Acquire) {
            return;
        }
        if let Some(reason) = self.ended() {
            let why = match reason {
                CloseReason::Expired => "session ended: the access token expired",
                _ => "session ended: the access token was revoked",
            };
            self.answer(state, reply, Err(AppError::unauthorized(why)));
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
                *lock(&self.session) = Some(session.clone());
                let this: Arc<dyn Endable> = self.clone();
                let weak: Weak<dyn Endable> = Arc::downgrade(&this);
                state.connections.register(
                    &session.token_hash,
                    session.expires,
                    self.key.clone(),
                    weak,
                );
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
            // Only once this node receives the topic from the others is the client told it
            // is subscribed; else it is not subscribed at all.
            if let Err(err) = state
                .delivery
                .ensure_room(TOPIC_NAMESPACE, topic.as_str())
                .await
            {
                lock(&self.topics).remove(&topic);
                self.transport.leave(&topic);
                return Err(err);
            }
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

    /// Ends the session for `reason` (its token was revoked or expired): from now on every
    /// request is answered `unauthorized`, whatever the transport still does; the transport
    /// is asked to close (again, on a repeated call: the close may not have got through).
    pub fn end(&self, reason: CloseReason) {
        if self
            .ended
            .compare_exchange(LIVE, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::info!(conn = %self.key.0, reason = reason.as_str(), "session ended");
        }
        self.transport.close(reason);
    }

    /// The connection is gone: forget its session and subscriptions (presence included).
    pub async fn closed(&self, state: &AppState) {
        self.gone.store(true, Ordering::Release);
        if let Some(session) = self.session() {
            state.connections.unregister(&session.token_hash, &self.key);
        }
        {
            let mut queue = lock(&self.queue);
            queue.jobs.clear();
            queue.bytes = 0;
        }
        self.leave_all(state).await;
    }
}

impl Endable for Client {
    fn end(&self, reason: CloseReason) {
        Client::end(self, reason);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed part of a connection's state in fanout's own structs (docs/BENCHMARKS.md
    /// quotes these; `cargo test -p fanout-node per_connection_sizes -- --nocapture`).
    #[test]
    fn per_connection_sizes() {
        use std::mem::size_of;
        let sizes = [
            ("Client", size_of::<Client>()),
            ("Outbound", size_of::<crate::delivery::outbound::Outbound>()),
            ("Session", size_of::<Session>()),
            ("RequestLimiter", size_of::<RequestLimiter>()),
            ("Queue", size_of::<Queue>()),
            (
                "socketioxide Socket",
                size_of::<socketioxide::socket::Socket<crate::io::NodeAdapter>>(),
            ),
        ];
        for (name, size) in sizes {
            println!("{name:<20} {size:>5} B");
        }
        assert!(
            size_of::<Client>() <= 512,
            "Client grew: {}",
            size_of::<Client>()
        );
        assert!(size_of::<crate::delivery::outbound::Outbound>() <= 256);
    }
    use crate::auth::{hash_token, new_token, now_rfc3339};
    use crate::methods::MethodRegistry;
    use crate::store::{TokenRecord, UserId};
    use std::time::Duration;

    /// A transport that records what the client core asked of it.
    struct Recorder(Arc<Mutex<Vec<CloseReason>>>);

    impl Transport for Recorder {
        fn join(&self, _: &Topic) {}
        fn leave(&self, _: &Topic) {}
        fn close(&self, reason: CloseReason) {
            lock(&self.0).push(reason);
        }
        fn authenticated(&self, _: &Result<Session, AppError>) {}
    }

    async fn state(rate: u32, burst: u32, max_refusals: u32) -> AppState {
        let mut cfg = Config::for_tests();
        cfg.client_rate = rate;
        cfg.client_burst = burst;
        cfg.client_max_refusals = max_refusals;
        crate::build(cfg, MethodRegistry::with_builtins())
            .await
            .expect("node builds")
            .state
    }

    fn client(state: &AppState) -> (Arc<Client>, Arc<Mutex<Vec<CloseReason>>>) {
        let closes = Arc::new(Mutex::new(Vec::new()));
        let client = Client::new(
            ConnKey("test/1".into()),
            ClientKind::Ws,
            Box::new(Recorder(closes.clone())),
            state.delivery.new_outbound(),
            RequestLimiter::new(&state.cfg),
        );
        (client, closes)
    }

    /// Submits `request` and waits (1 s at most) for its outcome.
    async fn request(
        client: &Arc<Client>,
        state: &AppState,
        request: Request,
    ) -> Result<Reply, AppError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: Responder = Box::new(move |outcome| {
            tx.send(outcome).ok();
        });
        if let Some(drain) = client.submit(state, Ok(request), 64, reply) {
            drain.await;
        }
        tokio::time::timeout(Duration::from_secs(1), rx)
            .await
            .expect("answered within 1 s")
            .expect("answered")
    }

    async fn login(state: &AppState, ttl: u64) -> Credentials {
        let token = new_token();
        let record = TokenRecord {
            user_id: UserId::new("7"),
            ttl,
            created: now_rfc3339(),
            scopes: vec![],
        };
        state
            .stores
            .tokens
            .insert(&hash_token(&token), &record)
            .await
            .unwrap();
        Credentials {
            token: Some(token),
            ..Credentials::default()
        }
    }

    fn whoami() -> Request {
        Request::Call {
            method: "whoami".into(),
            args: Value::Null,
        }
    }

    #[test]
    fn a_connections_limiter_is_small() {
        // Lives inline in every Client: keep it a few words.
        assert!(std::mem::size_of::<RequestLimiter>() <= 64);
    }

    #[tokio::test]
    async fn requests_past_the_burst_are_refused_and_a_client_that_keeps_going_is_closed() {
        let state = state(1, 5, 10).await;
        let (client, closes) = client(&state);
        for i in 0..5 {
            let outcome = request(&client, &state, Request::UnsubscribeAll).await;
            // Not authenticated: refused by the core, but within the rate.
            assert_eq!(outcome.unwrap_err().code, Code::Unauthorized, "request {i}");
        }
        for i in 0..9 {
            let outcome = request(&client, &state, Request::UnsubscribeAll).await;
            assert_eq!(outcome.unwrap_err().code, Code::RateLimited, "request {i}");
            assert!(lock(&closes).is_empty(), "closed after {} refusals", i + 1);
        }
        let outcome = request(&client, &state, Request::UnsubscribeAll).await;
        assert_eq!(outcome.unwrap_err().code, Code::RateLimited);
        assert_eq!(*lock(&closes), vec![CloseReason::RateLimited]);
        assert!(
            state
                .metrics
                .render()
                .contains(r#"fanout_bad_input_total{code="rate_limited",origin="ws"} 10"#)
        );
    }

    #[tokio::test]
    async fn waiting_requests_are_bounded_in_bytes_not_only_in_count() {
        let state = state(0, 0, 1).await;
        let (client, _) = client(&state);
        let max = MAX_PENDING_PAYLOADS * state.cfg.max_payload;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reply = || -> Responder {
            let tx = tx.clone();
            Box::new(move |outcome| {
                tx.send(outcome.map_err(|e| e.code)).ok();
            })
        };
        // Nobody drains yet (the drain future is held back): requests wait in the queue.
        let drain = client.submit(&state, Ok(Request::UnsubscribeAll), max - 10, reply());
        assert!(drain.is_some());
        assert!(
            client
                .submit(&state, Ok(Request::UnsubscribeAll), 10, reply())
                .is_none()
        );
        assert!(rx.try_recv().is_err(), "both fit: nothing answered yet");
        assert!(
            client
                .submit(&state, Ok(Request::UnsubscribeAll), 1, reply())
                .is_none()
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(Code::Unavailable),
            "one byte too many"
        );
        if let Some(drain) = drain {
            drain.await;
        }
        // Drained: the two waiting requests were applied and their bytes given back.
        assert_eq!(rx.try_recv().unwrap(), Err(Code::Unauthorized));
        assert_eq!(rx.try_recv().unwrap(), Err(Code::Unauthorized));
        assert_eq!(lock(&client.queue).bytes, 0);
        let outcome = request(&client, &state, Request::UnsubscribeAll).await;
        assert_eq!(outcome.unwrap_err().code, Code::Unauthorized, "room again");
    }

    #[tokio::test]
    async fn rate_zero_means_no_limit() {
        let state = state(0, 0, 1).await;
        let (client, closes) = client(&state);
        for _ in 0..1000 {
            let outcome = request(&client, &state, Request::UnsubscribeAll).await;
            assert_eq!(outcome.unwrap_err().code, Code::Unauthorized);
        }
        assert!(lock(&closes).is_empty());
    }

    #[tokio::test]
    async fn an_ended_session_refuses_everything_before_its_transport_is_gone() {
        let state = state(100, 200, 100).await;
        let (client, closes) = client(&state);
        let creds = login(&state, 60).await;
        let session = client.authenticate(&state, &creds).await.unwrap();
        assert!(request(&client, &state, whoami()).await.is_ok());
        // The revocations listener's kick (the transport does not close: a stalled one).
        assert_eq!(
            state
                .connections
                .kick(&session.token_hash, CloseReason::Revoked),
            1
        );
        assert_eq!(client.ended(), Some(CloseReason::Revoked));
        assert_eq!(*lock(&closes), vec![CloseReason::Revoked]);
        for req in [
            whoami(),
            Request::UnsubscribeAll,
            Request::Publish {
                topic: Topic::parse("/users/7").unwrap(),
                data: Value::Null,
            },
            Request::Authenticate(creds.clone()),
        ] {
            let outcome = request(&client, &state, req).await;
            assert_eq!(outcome.unwrap_err().code, Code::Unauthorized);
        }
        // Still registered: a repeated kick (re-validation) retries the close.
        state
            .connections
            .kick(&session.token_hash, CloseReason::Revoked);
        assert_eq!(lock(&closes).len(), 2);
        client.closed(&state).await;
        assert!(state.connections.is_empty());
    }

    #[tokio::test]
    async fn a_session_ends_at_its_token_expiry_and_a_lost_revocation_is_healed() {
        let state = state(100, 200, 100).await;
        let (expiring, expiring_closes) = client(&state);
        let creds = login(&state, 1).await;
        expiring.authenticate(&state, &creds).await.unwrap();
        let (revoked, revoked_closes) = client(&state);
        let creds = login(&state, 60).await;
        let session = revoked.authenticate(&state, &creds).await.unwrap();
        // Deleted behind the node's back: no revocation message.
        state
            .stores
            .tokens
            .revoke(&session.token_hash)
            .await
            .unwrap();
        let round = crate::sessions::revalidate(&state).await;
        assert_eq!((round.live, round.dead), (1, 1));
        assert_eq!(revoked.ended(), Some(CloseReason::Revoked));
        assert_eq!(*lock(&revoked_closes), vec![CloseReason::Revoked]);
        // `created` has millisecond precision: the token dies within 1 s from now.
        tokio::time::timeout(Duration::from_millis(1500), async {
            while expiring.ended().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("expired within its ttl");
        assert_eq!(*lock(&expiring_closes), vec![CloseReason::Expired]);
        let outcome = request(&expiring, &state, whoami()).await;
        assert_eq!(outcome.unwrap_err().code, Code::Unauthorized);
    }
}
