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
//!
//! [`close_orphan_later`] serves the other server-side disconnects (namespace `/`'s
//! authentication timeout): a namespace DISCONNECT leaves the Engine.IO session open, and a
//! client that is not a stock one keeps it — with whatever partial packet it parked.

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

/// How long a disconnected socket's last packets get to reach its client before
/// [`close_orphan_later`] closes the connection.
const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// After `socket` was disconnected from its namespace by the server: once the last packets
/// had time to go out, closes its WebSocket connection if no namespace uses it any more
/// (a stock client has closed it by then; anything else has no business keeping it).
pub fn close_orphan_later(socket: &SocketRef<NodeAdapter>, state: &AppState) {
    let Some(conn) = websocket_conn(socket) else {
        return;
    };
    let (sid, state) = (socket.id, state.clone());
    tokio::spawn(async move {
        tokio::time::sleep(FLUSH_GRACE).await;
        let in_use = state.delivery.io().is_none_or(|io| {
            [pubsub::NAMESPACE, chat::NAMESPACE, stream::NAMESPACE]
                .into_iter()
                .any(|ns| io.of(ns).and_then(|op| op.get_socket(sid)).is_some())
        });
        if !in_use {
            conn.close();
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
