//! Namespace `/`: authenticated pub/sub over Socket.IO, on the [`crate::client`] core.
//! Authentication either in the handshake (`auth: { token }`, refused with `connect_error`
//! "unauthorized") or with the socketio-auth `authentication` event within
//! `FANOUT_AUTH_TIMEOUT_MS`.
//!
//! Order: socketioxide runs every event handler in a task of its own, so handlers would race.
//! Instead the [`Queued`] extractor — which socketioxide runs synchronously, packet by packet,
//! in the order they were read — parses each event into a [`Request`] and queues it on the
//! socket's [`Client`]; the handler task only drains that queue when nobody else does.
//!
//! Handlers are registered in the connect middleware, which completes before the CONNECT
//! reply: events a client emits right after `connect` are never lost.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{FromMessageParts, Value as PacketValue};
use socketioxide::socket::{DisconnectReason, Sid, Socket};
use socketioxide::{SendError, SocketError};
use socketioxide_parser_common::event_json;
use tracing::Instrument;

use super::polling::PollingCloser;
use super::{conn_key, disconnect_label, websocket_conn};
use crate::auth::{Credentials, Session};
use crate::client::{Client, ClientKind, Reply, RequestLimiter, Responder, Transport};
use crate::delivery::close_socket;
use crate::delivery::outbound::{CloseReason, Outbound};
use crate::error::AppError;
use crate::io::{Io, NodeAdapter, NodeSocket};
use crate::metrics::{DropReason, DropTransport};
use crate::request::Request;
use crate::state::AppState;
use crate::topics::Topic;

/// The namespace path.
pub const NAMESPACE: &str = "/";

/// A Socket.IO socket as the client core's transport. It holds the socket's id, not the
/// socket: the socket owns its [`Client`] (extension), and this must not own it back.
struct SocketTransport {
    io: Io,
    sid: Sid,
    outbound: Arc<Outbound>,
    polling: Option<PollingCloser>,
}

impl SocketTransport {
    fn socket(&self) -> Option<NodeSocket> {
        self.io.get_socket(self.sid)
    }
}

impl Transport for SocketTransport {
    fn join(&self, topic: &Topic) {
        if let Some(socket) = self.socket() {
            socket.join(topic.as_str().to_owned());
        }
    }

    fn leave(&self, topic: &Topic) {
        if let Some(socket) = self.socket() {
            socket.leave(topic.as_str().to_owned());
        }
    }

    fn close(&self, reason: CloseReason) {
        if let Some(socket) = self.socket() {
            close_socket(&socket, &self.outbound, reason, self.polling.as_ref());
        }
    }

    fn authenticated(&self, outcome: &Result<Session, AppError>) {
        let Some(socket) = self.socket() else { return };
        match outcome {
            Ok(session) => {
                socket
                    .emit("authenticated", &json!({ "userId": session.user_id }))
                    .ok();
            }
            Err(err) => refuse(socket, &err.message),
        }
    }
}

/// How long a refused socket keeps its connection after `unauthorized`, so the event is
/// written before the session ends (a disconnect right away can end the Engine.IO session
/// while the event still waits in its queue).
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// socketio-auth's refusal: `unauthorized { message }`, then a disconnect.
fn refuse(socket: NodeSocket, message: &str) {
    socket
        .emit("unauthorized", &json!({ "message": message }))
        .ok();
    tokio::spawn(async move {
        tokio::time::sleep(REFUSAL_GRACE).await;
        socket.disconnect().ok();
    });
}

/// The `connect_error` a refused handshake gets: `{ message: "unauthorized" }`.
#[derive(Debug)]
pub struct Unauthorized;

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unauthorized")
    }
}

/// Connect middleware: creates the socket's client and budget, authenticates a handshake
/// token if one was sent, and registers the event handlers.
pub async fn on_connect_middleware(
    socket: SocketRef<NodeAdapter>,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Unauthorized> {
    let Some(io) = state.delivery.io().cloned() else {
        return Err(Unauthorized);
    };
    let outbound = state.delivery.new_outbound();
    if let Some(conn) = websocket_conn(&socket) {
        outbound.link(conn);
    }
    let transport = SocketTransport {
        io,
        sid: socket.id,
        outbound: outbound.clone(),
        polling: state.delivery.polling_closer().cloned(),
    };
    let client = Client::new(
        conn_key(&state, &socket),
        ClientKind::SocketIo,
        Box::new(transport),
        outbound.clone(),
        RequestLimiter::new(&state.cfg),
    );
    let auth = auth.unwrap_or(Value::Null);
    if Credentials::present_in(&auth)
        && client
            .authenticate(&state, &Credentials::from_value(&auth))
            .await
            .is_err()
    {
        return Err(Unauthorized);
    }
    socket.extensions.insert(outbound);
    socket.extensions.insert(client);
    socket.on_fallback(on_event);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Connect handler: counts the socket and, if it is not authenticated yet, disconnects it
/// when the authentication timeout passes.
pub async fn on_connect(socket: SocketRef<NodeAdapter>, State(state): State<AppState>) {
    state.metrics.socket_connected(NAMESPACE);
    let Some(client) = socket.extensions.get::<Arc<Client>>() else {
        return;
    };
    if client.session().is_some() {
        return;
    }
    let span = tracing::info_span!("socket", sid = %socket.id, node = %state.node_id);
    let timeout = state.cfg.auth_timeout();
    tokio::spawn(
        async move {
            tokio::time::sleep(timeout).await;
            if socket.connected() && client.session().is_none() {
                state.metrics.auth_failed("timeout");
                tracing::info!("authentication timeout");
                super::idle::close_orphan_later(&socket, &state);
                refuse(socket, "authentication timeout");
            }
        }
        .instrument(span),
    );
}

/// Every event of namespace `/`: already queued by [`Queued`]; drain if asked to.
async fn on_event(socket: SocketRef<NodeAdapter>, queued: Queued) {
    let drain = queued.0.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(drain) = drain {
        // The queue's replies include events (`authenticated`, `unauthorized`).
        super::until_connected(&socket).await;
        drain.await;
    }
}

type DrainFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Extractor that parses an event into a [`Request`] and queues it on the socket's client,
/// in arrival order. Holds the queue's drain future when this event must run it (in a
/// mutex only because socketioxide wants extractors `Sync`).
pub struct Queued(Mutex<Option<DrainFuture>>);

impl FromMessageParts<NodeAdapter> for Queued {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<NodeAdapter>>,
        v: &mut PacketValue,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let socket = SocketRef::from(s.clone());
        let Ok(State(state)) = State::<AppState>::from_message_parts(s, v, ack_id) else {
            return Ok(Queued(Mutex::new(None)));
        };
        let Ok(ack) = AckSender::from_message_parts(s, v, ack_id);
        let (Some(client), Some(outbound)) = (
            socket.extensions.get::<Arc<Client>>(),
            socket.extensions.get::<Arc<Outbound>>(),
        ) else {
            return Ok(Queued(Mutex::new(None)));
        };
        // The packet's JSON `["name", arg, …]` as the client sent it, decoded here into owned
        // values (see Request::from_socketio_event).
        let size = match v {
            PacketValue::Str(raw, bins) => {
                raw.len() + bins.iter().flatten().map(|b| b.len()).sum::<usize>()
            }
            PacketValue::Bytes(bytes) => bytes.len(),
        };
        let request = match v {
            PacketValue::Str(raw, None) => Request::from_socketio_event(event_json(raw)),
            PacketValue::Str(raw, Some(bins)) if bins.is_empty() => {
                Request::from_socketio_event(event_json(raw))
            }
            _ => Err(AppError::bad_request(
                "binary data is not supported on namespace /: topic messages are JSON",
            )),
        };
        let reply = ack_responder(&state, socket, outbound, ack);
        let drain = client.submit(&state, request, size, reply);
        Ok(Queued(Mutex::new(
            drain.map(|d| Box::pin(d) as DrainFuture),
        )))
    }
}

/// Answers through the event's ack; an ack that cannot be queued is a dropped message and
/// marks the socket a slow consumer.
fn ack_responder(
    state: &AppState,
    socket: NodeSocket,
    outbound: Arc<Outbound>,
    ack: AckSender<NodeAdapter>,
) -> Responder {
    let state = state.clone();
    Box::new(move |outcome: Result<Reply, AppError>| {
        let body = match outcome {
            Ok(reply) => reply.into_ack(),
            Err(err) => err.body(),
        };
        let metrics = &state.metrics;
        match ack.send(&body) {
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                metrics.messages_dropped(DropTransport::SocketIo, DropReason::SlowConsumer, 1);
                let polling = state.delivery.polling_closer();
                close_socket(&socket, &outbound, CloseReason::SlowConsumer, polling);
            }
            Err(SendError::Socket(SocketError::Closed)) => {
                metrics.messages_dropped(DropTransport::SocketIo, DropReason::Closed, 1);
            }
            _ => {}
        }
    })
}

async fn on_disconnect(
    socket: SocketRef<NodeAdapter>,
    reason: DisconnectReason,
    State(state): State<AppState>,
) {
    let outbound = socket.extensions.get::<Arc<Outbound>>();
    let closing = outbound.as_ref().and_then(|o| o.closing());
    let label = closing.map_or_else(|| disconnect_label(reason), CloseReason::as_str);
    state.metrics.socket_disconnected(NAMESPACE, label);
    tracing::debug!(sid = %socket.id, node = %state.node_id, ?reason, label, "disconnected");
    // The session is gone; a WebSocket writer may still be stuck on a client that stopped
    // reading (engineioxide's heartbeat closes the session, not the TCP connection).
    if matches!(
        reason,
        DisconnectReason::HeartbeatTimeout | DisconnectReason::TransportError
    ) && let Some(conn) = outbound.as_ref().and_then(|o| o.conn())
    {
        conn.close();
    }
    if let Some(client) = socket.extensions.get::<Arc<Client>>() {
        client.closed(&state).await;
    }
}
