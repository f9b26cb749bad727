//! Namespace `/stream`: a term-filtered live stream. `updateTerm` (term) → `updatedTerm`
//! (term), after which the socket receives `tweets` for every stream item whose text contains
//! the term (case-insensitive); `stopStream` / `startStream` pause and resume. Items come from
//! `POST /api/stream` or the `<prefix>:stream` Redis channel, from any node; each node filters
//! for its own sockets, so an item reaches each matching socket once.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::extract::{Event, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;
use socketioxide::{SendError, SocketError};
use tokio::sync::mpsc;

use super::disconnect_label;
use crate::error::AppError;
use crate::io::NodeAdapter;
use crate::metrics::{DropReason, DropTransport};
use crate::state::AppState;
use crate::store::keys;

/// The namespace path.
pub const NAMESPACE: &str = "/stream";
/// Longest search term in characters.
pub const MAX_TERM_CHARS: usize = 128;

/// One stream item (the shape of the classic Twitter stream demo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamItem {
    /// Author display name.
    #[serde(default)]
    pub name: String,
    /// Author handle.
    #[serde(default)]
    pub screen_name: String,
    /// The text the terms are matched against.
    pub text: String,
    /// Author picture URL.
    #[serde(default)]
    pub user_profile_image: String,
}

impl StreamItem {
    /// Decodes and validates an item: `text` 1–1000 characters, other fields ≤ 256.
    pub fn decode(payload: &[u8]) -> Result<StreamItem, AppError> {
        let item: StreamItem = serde_json::from_slice(payload)
            .map_err(|err| AppError::bad_request(format!("not a stream item: {err}")))?;
        item.validate()?;
        Ok(item)
    }

    /// Checks field lengths.
    pub fn validate(&self) -> Result<(), AppError> {
        let text = self.text.chars().count();
        if !(1..=1000).contains(&text) {
            return Err(AppError::invalid("text: 1 to 1000 characters"));
        }
        for field in [&self.name, &self.screen_name, &self.user_profile_image] {
            if field.chars().count() > 256 {
                return Err(AppError::invalid(
                    "name, screen_name, user_profile_image: at most 256 characters",
                ));
            }
        }
        Ok(())
    }
}

/// What a socket is listening for (socket extension, shared).
#[derive(Debug, Default)]
struct Filter {
    term: Option<String>,
    paused: bool,
}

type SharedFilter = Arc<Mutex<Filter>>;

fn filter_of(socket: &SocketRef<NodeAdapter>) -> SharedFilter {
    if let Some(filter) = socket.extensions.get::<SharedFilter>() {
        return filter;
    }
    let filter = SharedFilter::default();
    socket.extensions.insert(filter.clone());
    filter
}

/// Connect middleware: registers the handlers before the CONNECT reply.
pub async fn on_connect_middleware(socket: SocketRef<NodeAdapter>) -> Result<(), AppError> {
    socket.extensions.insert(SharedFilter::default());
    socket.on("updateTerm", on_update_term);
    socket.on("stopStream", on_stop_stream);
    socket.on("startStream", on_start_stream);
    socket.on_fallback(on_unknown);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Connect handler: counts the socket and bounds how long it may stay without a term.
pub async fn on_connect(socket: SocketRef<NodeAdapter>, State(state): State<AppState>) {
    state.metrics.socket_connected(NAMESPACE);
    super::idle::bound(socket, state, NAMESPACE, has_term);
}

/// True once the socket set a term (it is a listener, not an anonymous idler).
fn has_term(socket: &SocketRef<NodeAdapter>) -> bool {
    let filter = filter_of(socket);
    let filter = filter.lock().unwrap_or_else(|p| p.into_inner());
    filter.term.is_some()
}

async fn on_update_term(
    socket: SocketRef<NodeAdapter>,
    TryData(term): TryData<Value>,
    State(state): State<AppState>,
) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    let term = match term.ok().as_ref().and_then(Value::as_str).map(str::trim) {
        Some(term) if (1..=MAX_TERM_CHARS).contains(&term.chars().count()) => term.to_string(),
        _ => {
            let err = AppError::invalid(format!("term: 1 to {MAX_TERM_CHARS} characters"));
            state.metrics.bad_input("stream", err.code.as_str());
            socket.emit("error", &err.body()["error"]).ok();
            return;
        }
    };
    {
        let filter = filter_of(&socket);
        let mut filter = filter.lock().unwrap_or_else(|p| p.into_inner());
        filter.term = Some(term.to_lowercase());
        filter.paused = false;
    }
    socket.emit("updatedTerm", &term).ok();
}

async fn on_stop_stream(socket: SocketRef<NodeAdapter>, State(state): State<AppState>) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    filter_of(&socket)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .paused = true;
}

async fn on_start_stream(socket: SocketRef<NodeAdapter>, State(state): State<AppState>) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    filter_of(&socket)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .paused = false;
}

async fn on_unknown(
    socket: SocketRef<NodeAdapter>,
    Event(name): Event,
    State(state): State<AppState>,
) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    state.metrics.bad_input("stream", "bad_request");
    socket
        .emit(
            "error",
            &AppError::bad_request(format!("unknown event {name:?}")).body()["error"],
        )
        .ok();
}

async fn on_disconnect(reason: DisconnectReason, State(state): State<AppState>) {
    state
        .metrics
        .socket_disconnected(NAMESPACE, disconnect_label(reason));
}

/// Publishes an item to every node's `/stream` sockets.
pub async fn publish_item(state: &AppState, item: &StreamItem) -> Result<(), AppError> {
    let payload = serde_json::to_vec(item).map_err(|err| AppError::bad_request(err.to_string()))?;
    state
        .bus
        .publish(&keys::stream_channel(&state.cfg.prefix), payload)
        .await
}

/// Emits `tweets` to this node's `/stream` sockets whose term the item's text contains.
pub fn deliver_local(state: &AppState, item: &StreamItem) -> u64 {
    let Some(ns) = state.delivery.io().and_then(|io| io.of(NAMESPACE)) else {
        return 0;
    };
    let text = item.text.to_lowercase();
    let (mut sent, mut full, mut closed) = (0, 0, 0);
    for socket in ns.sockets() {
        let matches = socket
            .extensions
            .get::<SharedFilter>()
            .is_some_and(|filter| {
                let filter = filter.lock().unwrap_or_else(|p| p.into_inner());
                !filter.paused
                    && filter
                        .term
                        .as_ref()
                        .is_some_and(|term| text.contains(term.as_str()))
            });
        if !matches {
            continue;
        }
        match socket.emit("tweets", item) {
            Ok(()) => sent += 1,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => full += 1,
            Err(_) => closed += 1,
        }
    }
    state.metrics.events_sent(NAMESPACE, sent);
    let metrics = &state.metrics;
    metrics.messages_dropped(DropTransport::SocketIo, DropReason::SlowConsumer, full);
    metrics.messages_dropped(DropTransport::SocketIo, DropReason::Closed, closed);
    sent
}

/// Delivers every item of the stream channel locally, until the bus closes.
pub async fn run_listener(state: AppState, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(payload) = rx.recv().await {
        match StreamItem::decode(&payload) {
            Ok(item) => {
                deliver_local(&state, &item);
            }
            Err(err) => {
                state.metrics.bad_input("stream_channel", err.code.as_str());
                tracing::warn!(%err, bytes = payload.len(), "malformed message on the stream channel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_validation() {
        let ok = StreamItem::decode(br#"{"text":"hello","name":"a"}"#).unwrap();
        assert_eq!(ok.screen_name, "");
        assert!(StreamItem::decode(br#"{"text":""}"#).is_err());
        assert!(StreamItem::decode(br#"{"name":"x"}"#).is_err());
        assert!(StreamItem::decode(b"[]").is_err());
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(1001));
        assert!(StreamItem::decode(long.as_bytes()).is_err());
    }
}
