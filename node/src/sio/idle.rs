//! The anonymous-socket bound of `/chat` and `/stream` (`FANOUT_ANONYMOUS_IDLE_MS`): these
//! namespaces need no token, so a socket that connects and never logs in to a chat room or
//! sets a stream term would otherwise stay as long as its client answers Engine.IO pings —
//! holding a descriptor, buffers and, for a client that starts a binary packet and never
//! finishes it, up to `FANOUT_MAX_PAYLOAD` of attachments. Such a socket is closed when the
//! bound passes.
//!
//! How: when the socket is the only namespace on its WebSocket connection, the connection is
//! closed at the transport level — the whole Engine.IO session (and any partial packet) goes
//! away, and a stock client reconnects by itself, so an idle browser tab only gets a fresh
//! socket. When it shares its connection with other namespaces (or runs on long-polling),
//! only the namespace is disconnected.

use std::time::Duration;

use socketioxide::extract::SocketRef;

use super::{chat, pubsub, stream, websocket_conn};
use crate::io::NodeAdapter;
use crate::state::AppState;

/// After `FANOUT_ANONYMOUS_IDLE_MS`, closes `socket` of `namespace` unless `engaged` says it
/// logged in (chat seat, stream term).
pub fn bound(
    socket: SocketRef<NodeAdapter>,
    state: AppState,
    namespace: &'static str,
    engaged: fn(&SocketRef<NodeAdapter>) -> bool,
) {
    let timeout = Duration::from_millis(state.cfg.anonymous_idle_ms);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if socket.connected() && !engaged(&socket) {
            close(&socket, &state, namespace);
        }
    });
}

fn close(socket: &SocketRef<NodeAdapter>, state: &AppState, namespace: &'static str) {
    state.metrics.socket_idle_closed(namespace);
    tracing::debug!(sid = %socket.id, namespace, "closing an anonymous idle socket");
    let shared = state.delivery.io().is_none_or(|io| {
        [pubsub::NAMESPACE, chat::NAMESPACE, stream::NAMESPACE]
            .into_iter()
            .filter(|ns| *ns != namespace)
            .any(|ns| io.of(ns).and_then(|op| op.get_socket(socket.id)).is_some())
    });
    match websocket_conn(socket) {
        Some(conn) if !shared => conn.close(),
        _ => {
            socket.clone().disconnect().ok();
        }
    }
}
