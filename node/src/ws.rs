//! `/ws`: the plain-WebSocket transport for clients without Socket.IO (the AngularJS
//! `callback_id` service pattern). JSON text frames:
//! request `{ "type", "callback_id", "data" }` → reply `{ "callback_id", "result": true, "data" }`
//! or `{ "callback_id", "result": false, "error": { code, message } }`; pushes
//! `{ "type": "event", "topic", "data" }`.
//!
//! Each frame is parsed into a [`crate::request::Request`] and queued on the connection's
//! [`Client`], exactly like a Socket.IO event: same rules, same order. Replies and pushes
//! share one outbound queue, bounded by the connection's budget
//! ([`crate::delivery::outbound`]); the subscriptions live in the [`WsHub`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::Instrument;

use crate::auth::Session;
use crate::client::{Client, ClientKind, Reply, RequestLimiter, Responder, Transport};
use crate::delivery::WS_NAMESPACE;
use crate::delivery::hub::{DRAINING, Outbox, SLOW_CONSUMER_CODE, WsHub, WsOut};
use crate::delivery::outbound::{Admission, CloseReason};
use crate::error::AppError;
use crate::listener::TrackedAddr;
use crate::metrics::{DropReason, DropTransport};
use crate::request::WsFrame;
use crate::state::AppState;
use crate::store::ConnKey;
use crate::topics::Topic;
use crate::upgrade::{self, Accepted};

/// Largest WebSocket frame written: a bigger text message goes out in fragments of this
/// size. tungstenite copies every frame into a write buffer that keeps, for the connection's
/// whole life, the capacity of the largest frame it ever held; fragments bound it (with 4 KiB
/// fragments, 10,000 idle connections still held 49 MB after a storm of 32 KiB messages;
/// the price is a write call per fragment for large messages).
pub const FRAGMENT: usize = 512;

/// A `/ws` connection's WebSocket.
type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Close codes.
mod close {
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A `/ws` connection as the client core's transport.
struct WsTransport {
    id: u64,
    outbox: Outbox,
    hub: Arc<WsHub>,
}

impl Transport for WsTransport {
    fn join(&self, topic: &Topic) {
        self.hub.add(topic, self.id, self.outbox.clone());
    }

    fn leave(&self, topic: &Topic) {
        self.hub.remove(topic, self.id);
    }

    fn close(&self, reason: CloseReason) {
        let text = match reason {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Revoked => "token revoked",
            CloseReason::Expired => "token expired",
            CloseReason::RateLimited => "rate limited",
        };
        self.outbox.close(reason, close_code(reason), text);
    }

    fn authenticated(&self, outcome: &Result<Session, AppError>) {
        if outcome.is_err() {
            // After the error reply, which is already queued.
            self.outbox
                .tx
                .try_send(WsOut::Close(close::POLICY, "unauthorized"))
                .ok();
        }
    }
}

fn close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::SlowConsumer => SLOW_CONSUMER_CODE,
        CloseReason::Revoked | CloseReason::Expired | CloseReason::RateLimited => close::POLICY,
    }
}

/// `GET /ws`: upgrades to the plain-WebSocket protocol. The upgrade is done here on
/// tokio-tungstenite rather than through axum's extractor, to own the WebSocket's
/// configuration and how frames are written ([`FRAGMENT`]).
pub async fn ws_upgrade(
    State(state): State<AppState>,
    tcp: Option<Extension<ConnectInfo<TrackedAddr>>>,
    mut req: Request,
) -> Response {
    let accepted = match upgrade::accept(&mut req) {
        Ok(accepted) => accepted,
        Err(err) => return err.into_response(),
    };
    drop(req);
    let conn = tcp.map(|Extension(ConnectInfo(addr))| addr.conn);
    let (max, read_buffer) = (state.cfg.max_payload, state.cfg.ws_read_buffer);
    tokio::spawn(async move {
        let Some(upgraded) = Accepted::connection(accepted.upgrade).await else {
            return;
        };
        // tungstenite's defaults (128 KiB read buffer, 128 KiB write batching) cost ~100 KB
        // per idle connection; frames here are small JSON, and every push is flushed anyway.
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let socket = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config)).await;
        run_connection(state, socket, conn).await;
    });
    accepted.response
}

async fn run_connection(
    state: AppState,
    socket: Socket,
    conn: Option<crate::listener::ConnHandle>,
) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let outbound = state.delivery.new_outbound();
    let (tx, mut rx) = mpsc::channel(outbound.budget().messages.max(1));
    let outbox = Outbox { tx, outbound, conn };
    let hub = state.delivery.hub().clone();
    let transport = WsTransport {
        id,
        outbox: outbox.clone(),
        hub: hub.clone(),
    };
    let client = Client::new(
        ConnKey(format!("{}/ws/{id}", state.node_id)),
        ClientKind::Ws,
        Box::new(transport),
        outbox.outbound.clone(),
        RequestLimiter::new(&state.cfg),
    );
    let span = tracing::info_span!("ws", conn = id, node = %state.node_id);
    state.metrics.socket_connected(WS_NAMESPACE);
    hub.open(id, outbox.clone());
    let ended = serve(&state, &client, &outbox, socket, &mut rx)
        .instrument(span.clone())
        .await;
    hub.closed(id);
    let reason = outbox.outbound.closing().map_or(ended, CloseReason::as_str);
    span.in_scope(|| tracing::debug!(reason, "closed"));
    state.metrics.socket_disconnected(WS_NAMESPACE, reason);
    client.closed(&state).await;
}

/// Runs one connection until it closes; returns the close reason (metric label).
async fn serve(
    state: &AppState,
    client: &Arc<Client>,
    outbox: &Outbox,
    socket: Socket,
    rx: &mut mpsc::Receiver<WsOut>,
) -> &'static str {
    let (mut sink, mut stream) = socket.split();
    let ping_every = Duration::from_millis(state.cfg.ping_interval_ms);
    let silence_limit = ping_every + Duration::from_millis(state.cfg.ping_timeout_ms);
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    let auth_deadline = Instant::now() + state.cfg.auth_timeout();
    let mut last_seen = Instant::now();

    let close_with = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
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
                        let frame = WsFrame::parse(text.as_str());
                        let reply = responder(state, outbox.clone(), frame.callback_id);
                        if let Some(drain) = client.submit(state, frame.request, text.len(), reply) {
                            tokio::spawn(drain.in_current_span());
                        }
                    }
                    Message::Binary(_) => {
                        let err = AppError::bad_request("binary frames are not supported: send JSON text");
                        let reply = responder(state, outbox.clone(), Value::Null);
                        if let Some(drain) = client.submit(state, Err(err), 0, reply) {
                            tokio::spawn(drain.in_current_span());
                        }
                    }
                    Message::Close(_) => return "client_close",
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            outbound = rx.recv() => {
                let Some(outbound) = outbound else { return "internal" };
                let (message, end) = match outbound {
                    WsOut::Frame(frame) => {
                        outbox.outbound.written(frame.len());
                        (Message::Text(frame), None)
                    }
                    WsOut::Close(code, reason) => (close_with(code, reason), Some(reason)),
                };
                // A client that stopped reading blocks this write; it gets as long as a silent
                // client gets, then its connection is dropped whatever its queue holds.
                match tokio::time::timeout(silence_limit, send(&mut sink, message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "transport_error",
                    Err(_) => {
                        if let Some(conn) = &outbox.conn {
                            conn.close();
                        }
                        return "heartbeat_timeout";
                    }
                }
                if let Some(reason) = end {
                    return if reason == DRAINING { "closing_server" } else { "unauthorized" };
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > silence_limit {
                    sink.send(close_with(crate::delivery::hub::GOING_AWAY, "ping timeout")).await.ok();
                    return "heartbeat_timeout";
                }
                let ping = sink.send(Message::Ping(bytes::Bytes::from_static(b"fanout")));
                if !matches!(tokio::time::timeout(silence_limit, ping).await, Ok(Ok(()))) {
                    if let Some(conn) = &outbox.conn {
                        conn.close();
                    }
                    return "transport_error";
                }
            }
            _ = tokio::time::sleep_until(auth_deadline), if client.session().is_none() => {
                state.metrics.auth_failed("timeout");
                sink.send(close_with(close::POLICY, "authentication timeout")).await.ok();
                return "auth_timeout";
            }
        }
    }
}

/// Sends `message`; a text message longer than [`FRAGMENT`] goes out as a fragmented message
/// (RFC 6455 5.4), which every client reassembles.
async fn send<S>(sink: &mut S, message: Message) -> Result<(), tungstenite::Error>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let text = match message {
        Message::Text(text) if text.len() > FRAGMENT => text,
        other => return sink.send(other).await,
    };
    let bytes = Bytes::from(text);
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + FRAGMENT).min(bytes.len());
        let opcode = if start == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fragment = Frame::message(bytes.slice(start..end), opcode, end == bytes.len());
        sink.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    sink.flush().await
}

/// Answers a request with a reply frame, queued within the connection's budget.
fn responder(state: &AppState, outbox: Outbox, callback_id: Value) -> Responder {
    let state = state.clone();
    Box::new(move |outcome: Result<Reply, AppError>| {
        let metrics = &state.metrics;
        let reply = match outcome {
            Ok(reply) => ok_reply(callback_id, reply.into_data()),
            Err(err) => error_reply(callback_id, &err),
        };
        match outbox.push(Utf8Bytes::from(reply.to_string())) {
            Admission::Admitted => {}
            Admission::OverBudget => {
                metrics.messages_dropped(DropTransport::Ws, DropReason::SlowConsumer, 1);
                outbox.close(
                    CloseReason::SlowConsumer,
                    SLOW_CONSUMER_CODE,
                    "slow consumer",
                );
            }
            Admission::Closing => {
                metrics.messages_dropped(DropTransport::Ws, DropReason::Closed, 1);
            }
            Admission::TooLarge => {
                metrics.messages_dropped(DropTransport::Ws, DropReason::TooLarge, 1);
            }
        }
    })
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

    /// A message longer than FRAGMENT leaves as fragments (the first frame has FIN unset)
    /// and arrives whole; a short one is one frame.
    #[tokio::test]
    async fn long_messages_are_fragmented() {
        use tokio::io::AsyncReadExt;
        let (server_io, mut client_io) = tokio::io::duplex(1 << 20);
        let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        // 2 × FRAGMENT + 1 bytes: three fragments, the first border inside a character.
        let long = format!("a{}", "é".repeat(FRAGMENT));
        send(&mut server, Message::Text(Utf8Bytes::from(long.clone())))
            .await
            .expect("send");
        send(&mut server, Message::text("short"))
            .await
            .expect("send");
        let header = |len: usize| if len < 126 { 2 } else { 4 };
        let expected = 2 * (FRAGMENT + header(FRAGMENT)) + (1 + header(1)) + (5 + header(5));
        let mut raw = vec![0u8; expected];
        let mut got = 0;
        while got < expected {
            got += client_io.read(&mut raw[got..]).await.expect("read");
        }
        assert_eq!(raw[0], 0x01, "first fragment: text, FIN unset");
        let mut client = WebSocketStream::from_partially_read(
            client_io,
            raw[..got].to_vec(),
            Role::Client,
            None,
        )
        .await;
        let whole = client.next().await.expect("a message").expect("valid");
        assert_eq!(whole, Message::Text(Utf8Bytes::from(long)));
        let short = client.next().await.expect("a message").expect("valid");
        assert_eq!(short, Message::text("short"));
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
