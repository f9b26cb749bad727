//! The Socket.IO namespaces of a node and what they share.
//! - [`pubsub`]: namespace `/`, authenticated topic pub/sub on the [`crate::client`] core.
//! - [`chat`]: namespace `/chat`, the classic two-person chat.
//! - [`stream`]: namespace `/stream`, a term-filtered live stream.
//! - [`idle`]: the bound on anonymous `/chat` and `/stream` sockets.
//!
//! Shared here: disconnect labels, connection keys, the link between a socket and the TCP
//! connection its WebSocket runs on ([`link_upgrade`]), and [`register`], which mounts the
//! three namespaces. [`request`] trims what a session keeps of its opening request.

pub mod chat;
pub mod idle;
pub mod polling;
pub mod pubsub;
pub mod request;
pub mod stream;

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::socket::Sid;
use socketioxide::{BroadcastError, SocketError};

use crate::delivery::outbound::Outbound;
use crate::io::{Io, NodeSocket};
use crate::listener::{ConnHandle, TrackedAddr};
use crate::metrics::{DropReason, DropTransport, Metrics};
use crate::state::AppState;
use crate::store::ConnKey;

/// Mounts the three namespaces on `io`; fails when the adapter cannot subscribe for one.
pub async fn register(io: &Io) -> Result<(), (&'static str, fanout_adapter::Error)> {
    io.ns(
        pubsub::NAMESPACE,
        pubsub::on_connect.with(pubsub::on_connect_middleware),
    )
    .await
    .map_err(|err| (pubsub::NAMESPACE, err))?;
    io.ns(
        chat::NAMESPACE,
        chat::on_connect.with(chat::on_connect_middleware),
    )
    .await
    .map_err(|err| (chat::NAMESPACE, err))?;
    io.ns(
        stream::NAMESPACE,
        stream::on_connect.with(stream::on_connect_middleware),
    )
    .await
    .map_err(|err| (stream::NAMESPACE, err))?;
    Ok(())
}

/// How long an event handler waits for socketioxide to mark its socket connected.
const CONNECTED_MARK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until socketioxide has marked `socket` connected (at once, almost always).
/// socketioxide sends a namespace's CONNECT packet and only then marks the socket connected,
/// and its `emit` refuses a socket not marked yet. A client that answers the CONNECT at once
/// (a `load`, an `authentication`) can have its event handled in between when the connecting
/// task is descheduled — seen under CPU contention — and the handler's reply was then lost.
/// Event handlers that may emit wait for the mark first; a socket that never gets it (its
/// CONNECT could not be sent) is given up on after [`CONNECTED_MARK_WAIT`].
pub async fn until_connected(socket: &NodeSocket) {
    let deadline = tokio::time::Instant::now() + CONNECTED_MARK_WAIT;
    while !socket.connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Counts the local sockets a broadcast skipped (full buffer or closed) as dropped; returns
/// how many.
pub fn count_broadcast_drops(metrics: &Metrics, err: &BroadcastError) -> u64 {
    let BroadcastError::Socket(errors) = err else {
        return 0;
    };
    let full = errors
        .iter()
        .filter(|e| matches!(e, SocketError::InternalChannelFull))
        .count() as u64;
    let closed = errors.len() as u64 - full;
    metrics.messages_dropped(DropTransport::SocketIo, DropReason::SlowConsumer, full);
    metrics.messages_dropped(DropTransport::SocketIo, DropReason::Closed, closed);
    full + closed
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

/// Identifies a Socket.IO socket cluster-wide (presence, chat seats).
pub fn conn_key(state: &AppState, socket: &NodeSocket) -> ConnKey {
    ConnKey(format!("{}/sio/{}", state.node_id, socket.id))
}

/// The TCP connection a handshake came on, when it is a WebSocket handshake (a long-polling
/// session has no connection of its own).
pub fn websocket_conn(socket: &NodeSocket) -> Option<ConnHandle> {
    if socket.transport_type() != socketioxide::TransportType::Websocket {
        return None;
    }
    tcp_conn(socket.req_parts())
}

fn tcp_conn(parts: &Parts) -> Option<ConnHandle> {
    parts
        .extensions
        .get::<ConnectInfo<TrackedAddr>>()
        .map(|info| info.0.conn.clone())
}

/// For a request that upgrades a long-polling session to WebSocket
/// (`/socket.io/?…&transport=websocket&sid=…`): links the session's sockets to the TCP
/// connection the WebSocket will run on, so their outbound bytes are accounted and a slow
/// consumer can be closed at the transport level.
pub fn link_upgrade(state: &AppState, parts: &Parts) {
    if !parts.uri.path().starts_with("/socket.io") {
        return;
    }
    let query = parts.uri.query().unwrap_or("");
    let mut sid = None;
    let mut websocket = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sid", value)) => sid = Sid::from_str(value).ok(),
            Some(("transport", "websocket")) => websocket = true,
            _ => {}
        }
    }
    let (Some(sid), true, Some(conn), Some(io)) =
        (sid, websocket, tcp_conn(parts), state.delivery.io())
    else {
        return;
    };
    // The namespace socket ids of an Engine.IO session are its session id.
    if let Some(socket) = io.get_socket(sid)
        && let Some(outbound) = socket.extensions.get::<Arc<Outbound>>()
    {
        outbound.link(conn);
    }
}
