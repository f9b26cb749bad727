//! Namespace `/`: authenticated pub/sub over Socket.IO. Authentication either in the
//! handshake (`auth: { token }`, refused with `connect_error` "unauthorized") or with the
//! socketio-auth `authentication` event within `FANOUT_AUTH_TIMEOUT_MS`. Every event goes
//! through one handler, [`on_event`], which hands authenticated requests to
//! [`crate::client::handle_request`].
//!
//! Handlers are registered in the connect middleware, which completes before the CONNECT
//! reply: events a client emits right after `connect` are never lost.

use std::fmt;

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;
use tracing::Instrument;

use crate::auth::{Credentials, Session};
use crate::client::{Subscriptions, TopicSet, handle_request, leave_all};
use crate::error::AppError;
use crate::metrics::PublishSource;
use crate::state::{AppState, NodeAdapter};
use crate::store::ConnKey;
use crate::topics::Topic;

/// The namespace path.
pub const NAMESPACE: &str = "/";

/// The topics a socket subscribed to (socket extension): socketioxide may clear the rooms
/// before the disconnect handler runs, and presence must still be cleaned up then.
fn topic_set(socket: &SocketRef<NodeAdapter>) -> TopicSet {
    if let Some(set) = socket.extensions.get::<TopicSet>() {
        return set;
    }
    let set = TopicSet::default();
    socket.extensions.insert(set.clone());
    set
}

/// A Socket.IO socket of namespace `/`, as topic subscriptions.
struct SocketSubscriptions<'a> {
    socket: &'a SocketRef<NodeAdapter>,
    node_id: &'a str,
    topics: TopicSet,
}

impl<'a> SocketSubscriptions<'a> {
    fn new(socket: &'a SocketRef<NodeAdapter>, node_id: &'a str) -> Self {
        Self {
            socket,
            node_id,
            topics: topic_set(socket),
        }
    }
}

impl Subscriptions for SocketSubscriptions<'_> {
    fn key(&self) -> ConnKey {
        conn_key(self.node_id, self.socket)
    }
    fn join(&self, topic: &Topic) {
        self.topics.insert(topic);
        self.socket.join(topic.as_str().to_owned());
    }
    fn leave(&self, topic: &Topic) {
        self.topics.remove(topic);
        self.socket.leave(topic.as_str().to_owned());
    }
    fn topics(&self) -> Vec<Topic> {
        self.topics.to_vec()
    }
}

fn conn_key(node_id: &str, socket: &SocketRef<NodeAdapter>) -> ConnKey {
    ConnKey(format!("{node_id}/sio/{}", socket.id))
}

/// The `connect_error` a refused handshake gets: `{ message: "unauthorized" }`.
#[derive(Debug)]
pub struct Unauthorized;

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unauthorized")
    }
}

/// Connect middleware: authenticates a handshake token if one was sent, registers the event
/// handlers, and starts the authentication timer for sockets that connected without a token.
pub async fn on_connect_middleware(
    socket: SocketRef<NodeAdapter>,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Unauthorized> {
    let auth = auth.unwrap_or(Value::Null);
    if Credentials::present_in(&auth) {
        match state.auth.check(&Credentials::from_value(&auth)).await {
            Ok(session) => attach_session(&state, &socket, session),
            Err(failure) => {
                state.metrics.auth_failed(failure.as_str());
                tracing::info!(sid = %socket.id, node = %state.node_id, reason = failure.as_str(), "handshake refused");
                return Err(Unauthorized);
            }
        }
    }
    socket.extensions.insert(TopicSet::default());
    socket.on_fallback(on_event);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Connect handler: counts the socket and, if it is not authenticated yet, disconnects it
/// when the authentication timeout passes.
pub async fn on_connect(socket: SocketRef<NodeAdapter>, State(state): State<AppState>) {
    state.metrics.socket_connected(NAMESPACE);
    let span = tracing::info_span!("socket", sid = %socket.id, node = %state.node_id);
    let authenticated = socket.extensions.get::<Session>().is_some();
    tracing::debug!(parent: &span, authenticated, "connected");
    if !authenticated {
        let timeout = state.cfg.auth_timeout();
        tokio::spawn(
            async move {
                tokio::time::sleep(timeout).await;
                if socket.connected() && socket.extensions.get::<Session>().is_none() {
                    state.metrics.auth_failed("timeout");
                    tracing::info!("authentication timeout");
                    socket
                        .emit(
                            "unauthorized",
                            &json!({ "message": "authentication timeout" }),
                        )
                        .ok();
                    socket.disconnect().ok();
                }
            }
            .instrument(span),
        );
    }
}

fn attach_session(state: &AppState, socket: &SocketRef<NodeAdapter>, session: Session) {
    let kick = {
        let io = state.io().clone();
        let sid = socket.id;
        std::sync::Arc::new(move || {
            if let Some(socket) = io.get_socket(sid) {
                socket.disconnect().ok();
            }
        })
    };
    state
        .connections
        .register(&session.token_hash, conn_key(&state.node_id, socket), kick);
    socket.extensions.insert(session);
}

/// Every event of namespace `/`.
async fn on_event(
    socket: SocketRef<NodeAdapter>,
    Event(name): Event,
    TryData(data): TryData<Value>,
    ack: AckSender<NodeAdapter>,
    State(state): State<AppState>,
) {
    state.metrics.event_received(NAMESPACE);
    let span =
        tracing::debug_span!("event", sid = %socket.id, node = %state.node_id, event = %name);
    let arg = data.unwrap_or(Value::Null);
    if name == "authentication" || name == "authenticate" {
        on_authentication(&state, &socket, &arg, ack)
            .instrument(span)
            .await;
        return;
    }
    let Some(session) = socket.extensions.get::<Session>() else {
        state.metrics.bad_input("socket", "unauthorized");
        ack.send(&AppError::unauthorized("authenticate first").body())
            .ok();
        return;
    };
    let conn = SocketSubscriptions::new(&socket, &state.node_id);
    let reply = handle_request(&state, &session, &conn, &name, arg, PublishSource::Socket)
        .instrument(span)
        .await;
    let body = match reply {
        Ok(reply) => reply.into_ack(),
        Err(err) => {
            state.metrics.bad_input("socket", err.code.as_str());
            err.body()
        }
    };
    ack.send(&body).ok();
}

/// socketio-auth: `authentication` `{ token }` or `{ id, userId }` → `authenticated`
/// `{ userId }`, or `unauthorized` `{ message }` followed by a disconnect.
async fn on_authentication(
    state: &AppState,
    socket: &SocketRef<NodeAdapter>,
    arg: &Value,
    ack: AckSender<NodeAdapter>,
) {
    if let Some(session) = socket.extensions.get::<Session>() {
        let body = json!({ "userId": session.user_id });
        socket.emit("authenticated", &body).ok();
        ack.send(&body).ok();
        return;
    }
    match state.auth.check(&Credentials::from_value(arg)).await {
        Ok(session) => {
            let body = json!({ "userId": session.user_id });
            attach_session(state, socket, session);
            tracing::debug!("authenticated");
            socket.emit("authenticated", &body).ok();
            ack.send(&body).ok();
        }
        Err(failure) => {
            state.metrics.auth_failed(failure.as_str());
            tracing::info!(reason = failure.as_str(), "authentication refused");
            let err = failure.to_app_error();
            socket
                .emit("unauthorized", &json!({ "message": err.message }))
                .ok();
            ack.send(&err.body()).ok();
            socket.clone().disconnect().ok();
        }
    }
}

async fn on_disconnect(
    socket: SocketRef<NodeAdapter>,
    reason: DisconnectReason,
    State(state): State<AppState>,
) {
    state
        .metrics
        .socket_disconnected(NAMESPACE, disconnect_label(reason));
    tracing::debug!(sid = %socket.id, node = %state.node_id, ?reason, "disconnected");
    if let Some(session) = socket.extensions.get::<Session>() {
        state
            .connections
            .unregister(&session.token_hash, &conn_key(&state.node_id, &socket));
    }
    let conn = SocketSubscriptions::new(&socket, &state.node_id);
    leave_all(&state, &conn).await;
}

/// A bounded label for a disconnect reason.
pub fn disconnect_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "packet_parsing_error",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    }
}
