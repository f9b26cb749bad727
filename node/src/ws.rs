//! `/ws`: the plain-WebSocket protocol for clients without Socket.IO (the AngularJS
//! `callback_id` service pattern). JSON text frames:
//! request `{ "type", "callback_id", "data" }` → reply `{ "callback_id", "result": true, "data" }`
//! or `{ "callback_id", "result": false, "error": { code, message } }`; pushes
//! `{ "type": "event", "topic", "data" }`. Requests run through the same
//! [`crate::client::handle_request`] as Socket.IO events, and several may be in flight: each
//! is answered when it completes, matched by its `callback_id`.
//!
//! [`WsHub`] holds the local `/ws` subscriptions; [`crate::delivery`] feeds it for every topic
//! message that reaches this node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{Credentials, Session};
use crate::client::{Subscriptions, TopicSet, handle_request, leave_all};
use crate::error::AppError;
use crate::metrics::PublishSource;
use crate::state::AppState;
use crate::store::ConnKey;
use crate::topics::Topic;

/// Metric namespace label of `/ws` connections.
pub const NAMESPACE: &str = "/ws";
/// Frames queued for one connection before pushes to it are dropped (slow consumer).
pub const OUTBOUND_QUEUE: usize = 1024;
/// Read buffer of a `/ws` connection (grows for larger frames, up to `FANOUT_MAX_PAYLOAD`).
pub const READ_BUFFER: usize = 4096;
/// Requests of one connection processed at once.
pub const MAX_IN_FLIGHT: usize = 32;

/// Close codes.
mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// Close reason sent while the node drains.
const DRAINING: &str = "server draining";

/// What the connection task writes.
enum Outbound {
    Frame(Utf8Bytes),
    Close(u16, &'static str),
}

/// Local `/ws` subscriptions: topic → connection id → outbound queue.
#[derive(Default)]
pub struct WsHub {
    next_id: AtomicU64,
    topics: RwLock<HashMap<String, HashMap<u64, mpsc::Sender<Outbound>>>>,
    /// Every open `/ws` connection, so a drain can send each a 1001 close frame.
    open: Mutex<HashMap<u64, mpsc::Sender<Outbound>>>,
}

impl WsHub {
    fn add(&self, topic: &Topic, id: u64, tx: mpsc::Sender<Outbound>) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.as_str().to_owned())
            .or_default()
            .insert(id, tx);
    }

    fn remove(&self, topic: &Topic, id: u64) {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = topics.get_mut(topic.as_str()) {
            conns.remove(&id);
            if conns.is_empty() {
                topics.remove(topic.as_str());
            }
        }
    }

    fn open_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Outbound>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends every open `/ws` connection a close frame 1001 ("server draining"), `batch` at a
    /// time with `pause` between batches, so clients reconnect elsewhere gradually and see a
    /// clean close instead of a dropped TCP connection. Returns how many were told.
    pub async fn drain(&self, batch: usize, pause: std::time::Duration) -> usize {
        let conns: Vec<mpsc::Sender<Outbound>> = self.open_conns().values().cloned().collect();
        let mut told = 0;
        for chunk in conns.chunks(batch.max(1)) {
            for tx in chunk {
                if tx
                    .try_send(Outbound::Close(close::GOING_AWAY, DRAINING))
                    .is_ok()
                {
                    told += 1;
                }
            }
            tokio::time::sleep(pause).await;
        }
        told
    }

    /// Pushes `data` to every local `/ws` subscriber of `topic`; the frame is serialized once.
    /// Returns (delivered, dropped because the subscriber's queue was full).
    pub fn deliver(&self, topic: &str, data: &Value) -> (u64, u64) {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = topics.get(topic) else {
            return (0, 0);
        };
        let frame =
            Utf8Bytes::from(json!({ "type": "event", "topic": topic, "data": data }).to_string());
        let (mut delivered, mut dropped) = (0, 0);
        for tx in conns.values() {
            match tx.try_send(Outbound::Frame(frame.clone())) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        (delivered, dropped)
    }
}

/// One `/ws` connection.
struct WsConn {
    id: u64,
    key: ConnKey,
    state: AppState,
    tx: mpsc::Sender<Outbound>,
    topics: TopicSet,
    session: Mutex<Option<Session>>,
}

impl WsConn {
    fn session(&self) -> Option<Session> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Subscriptions for WsConn {
    fn key(&self) -> ConnKey {
        self.key.clone()
    }
    fn join(&self, topic: &Topic) {
        self.topics.insert(topic);
        self.state.ws_hub.add(topic, self.id, self.tx.clone());
    }
    fn leave(&self, topic: &Topic) {
        self.topics.remove(topic);
        self.state.ws_hub.remove(topic, self.id);
    }
    fn topics(&self) -> Vec<Topic> {
        self.topics.to_vec()
    }
}

/// `GET /ws`: upgrades to the plain-WebSocket protocol.
pub async fn ws_upgrade(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let max = state.cfg.max_payload;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite's defaults (128 KiB read buffer, 128 KiB write batching) cost ~100 KB
        // per idle connection; frames here are small JSON, and every push is flushed anyway.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| run_connection(state, socket))
}

async fn run_connection(state: AppState, socket: WebSocket) {
    let id = state.ws_hub.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
    let conn = Arc::new(WsConn {
        id,
        key: ConnKey(format!("{}/ws/{id}", state.node_id)),
        state: state.clone(),
        tx,
        topics: TopicSet::default(),
        session: Mutex::new(None),
    });
    let span = tracing::info_span!("ws", conn = id, node = %state.node_id);
    state.metrics.socket_connected(NAMESPACE);
    state.ws_hub.open_conns().insert(id, conn.tx.clone());
    let reason = serve(&state, &conn, socket, &mut rx)
        .instrument(span.clone())
        .await;
    state.ws_hub.open_conns().remove(&id);
    span.in_scope(|| tracing::debug!(reason, "closed"));
    state.metrics.socket_disconnected(NAMESPACE, reason);
    if let Some(session) = conn.session() {
        state.connections.unregister(&session.token_hash, &conn.key);
    }
    leave_all(&state, conn.as_ref()).await;
}

/// Runs one connection until it closes; returns the close reason (metric label).
async fn serve(
    state: &AppState,
    conn: &Arc<WsConn>,
    socket: WebSocket,
    rx: &mut mpsc::Receiver<Outbound>,
) -> &'static str {
    let (mut sink, mut stream) = socket.split();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let ping_every = Duration::from_millis(state.cfg.ping_interval_ms);
    let silence_limit = ping_every + Duration::from_millis(state.cfg.ping_timeout_ms);
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    let auth_deadline = Instant::now() + state.cfg.auth_timeout();
    let mut last_seen = Instant::now();

    let close_with = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    };

    loop {
        tokio::select! {
            incoming = stream.next() => {
                last_seen = Instant::now();
                let message = match incoming {
                    None => return "transport_close",
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        // tungstenite reports "Space limit exceeded: Message too long: …".
                        let text = err.to_string().to_lowercase();
                        if text.contains("too long") || text.contains("too big") {
                            state.metrics.bad_input("ws", "payload_too_large");
                            sink.send(close_with(close::TOO_BIG, "message too big")).await.ok();
                            return "message_too_big";
                        }
                        return "transport_error";
                    }
                };
                match message {
                    Message::Text(text) => {
                        let Ok(permit) = in_flight.clone().acquire_owned().await else {
                            return "internal";
                        };
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            let (reply, then_close) = handle_frame(&conn, text.as_str()).await;
                            conn.tx.send(Outbound::Frame(Utf8Bytes::from(reply.to_string()))).await.ok();
                            if then_close {
                                conn.tx.send(Outbound::Close(close::POLICY, "unauthorized")).await.ok();
                            }
                            drop(permit);
                        }.in_current_span());
                    }
                    Message::Binary(_) => {
                        state.metrics.bad_input("ws", "bad_request");
                        let err = AppError::bad_request("binary frames are not supported: send JSON text");
                        let reply = error_reply(Value::Null, &err);
                        if sink.send(Message::Text(Utf8Bytes::from(reply.to_string()))).await.is_err() {
                            return "transport_error";
                        }
                    }
                    Message::Close(_) => return "client_close",
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            outbound = rx.recv() => {
                let Some(outbound) = outbound else { return "internal" };
                let (message, end) = match outbound {
                    Outbound::Frame(frame) => (Message::Text(frame), None),
                    Outbound::Close(code, reason) => (close_with(code, reason), Some(reason)),
                };
                if sink.send(message).await.is_err() {
                    return "transport_error";
                }
                if let Some(reason) = end {
                    return match reason {
                        "token revoked" => "server_disconnect",
                        DRAINING => "closing_server",
                        _ => "unauthorized",
                    };
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > silence_limit {
                    sink.send(close_with(close::GOING_AWAY, "ping timeout")).await.ok();
                    return "heartbeat_timeout";
                }
                if sink.send(Message::Ping(bytes::Bytes::from_static(b"fanout"))).await.is_err() {
                    return "transport_error";
                }
            }
            _ = tokio::time::sleep_until(auth_deadline), if conn.session().is_none() => {
                state.metrics.auth_failed("timeout");
                sink.send(close_with(close::POLICY, "authentication timeout")).await.ok();
                return "auth_timeout";
            }
        }
    }
}

/// Parses and answers one request frame; `true` when the connection must close after the
/// reply (failed authentication).
async fn handle_frame(conn: &WsConn, text: &str) -> (Value, bool) {
    let state = &conn.state;
    state.metrics.event_received(NAMESPACE);
    let request: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            state.metrics.bad_input("ws", "bad_request");
            return (
                error_reply(
                    Value::Null,
                    &AppError::bad_request(format!("not JSON: {err}")),
                ),
                false,
            );
        }
    };
    let callback_id = match request.get("callback_id") {
        Some(id @ (Value::Number(_) | Value::String(_))) => id.clone(),
        _ => Value::Null,
    };
    let Some(kind) = request.get("type").and_then(Value::as_str) else {
        state.metrics.bad_input("ws", "bad_request");
        let err = AppError::bad_request("expected { type, callback_id, data }");
        return (error_reply(callback_id, &err), false);
    };
    let data = request.get("data").cloned().unwrap_or(Value::Null);
    if kind == "authenticate" || kind == "authentication" {
        return match authenticate(conn, &data).await {
            Ok(session) => (
                ok_reply(callback_id, json!({ "userId": session.user_id })),
                false,
            ),
            Err(err) => (error_reply(callback_id, &err), true),
        };
    }
    let Some(session) = conn.session() else {
        state.metrics.bad_input("ws", "unauthorized");
        return (
            error_reply(callback_id, &AppError::unauthorized("authenticate first")),
            false,
        );
    };
    let reply =
        match handle_request(state, &session, conn, kind, data, PublishSource::WebSocket).await {
            Ok(reply) => ok_reply(callback_id, reply.into_data()),
            Err(err) => {
                state.metrics.bad_input("ws", err.code.as_str());
                error_reply(callback_id, &err)
            }
        };
    (reply, false)
}

async fn authenticate(conn: &WsConn, data: &Value) -> Result<Session, AppError> {
    let state = &conn.state;
    if let Some(session) = conn.session() {
        return Ok(session);
    }
    match state.auth.check(&Credentials::from_value(data)).await {
        Ok(session) => {
            let tx = conn.tx.clone();
            let kick = Arc::new(move || {
                tx.try_send(Outbound::Close(close::POLICY, "token revoked"))
                    .ok();
            });
            state
                .connections
                .register(&session.token_hash, conn.key.clone(), kick);
            *conn.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
            Ok(session)
        }
        Err(failure) => {
            state.metrics.auth_failed(failure.as_str());
            Err(failure.to_app_error())
        }
    }
}

fn ok_reply(callback_id: Value, data: Value) -> Value {
    json!({ "callback_id": callback_id, "result": true, "data": data })
}

fn error_reply(callback_id: Value, err: &AppError) -> Value {
    let mut body = err.body();
    json!({ "callback_id": callback_id, "result": false, "error": body["error"].take() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_serializes_once_and_counts_full_queues() {
        let hub = WsHub::default();
        let topic = Topic::parse("t").unwrap();
        let (tx1, mut rx1) = mpsc::channel(1);
        let (tx2, _rx2) = mpsc::channel(1);
        hub.add(&topic, 1, tx1);
        hub.add(&topic, 2, tx2);
        assert_eq!(hub.deliver("t", &json!({"a": 1})), (2, 0));
        let Some(Outbound::Frame(frame)) = rx1.try_recv().ok() else {
            panic!("no frame")
        };
        assert_eq!(
            serde_json::from_str::<Value>(frame.as_str()).unwrap(),
            json!({"type": "event", "topic": "t", "data": {"a": 1}})
        );
        assert_eq!(hub.deliver("t", &json!(2)), (1, 1)); // rx1 has room again, rx2 is full
        hub.remove(&topic, 1);
        hub.remove(&topic, 2);
        assert_eq!(hub.deliver("t", &json!(3)), (0, 0));
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(
            ok_reply(json!(7), json!({"x": 1})),
            json!({"callback_id": 7, "result": true, "data": {"x": 1}})
        );
        let err = AppError::bad_request("nope");
        assert_eq!(
            error_reply(json!("a"), &err),
            json!({"callback_id": "a", "result": false, "error": {"code": "bad_request", "message": "nope"}})
        );
    }
}
