//! Topic delivery: one path from a published message to every subscriber.
//!
//! A topic message is a [`TopicMessage`]: a topic and its data, serialized once. It enters
//! through one of two doors, and both end in [`Delivery::deliver_local`]:
//! - [`Delivery::publish`] — a client's `publish` (Socket.IO or `/ws`) or `POST /api/publish`:
//!   delivered to this node's subscribers, then sent to the other nodes as a classic
//!   @socket.io/redis-adapter broadcast to the topic's room (so Node.js peers deliver it too).
//! - [`Delivery::deliver_local`] directly — a message every node receives anyway: the events
//!   channel ([`crate::events`]) and broadcasts from other nodes ([`Delivery::on_remote_broadcast`]).
//!
//! `deliver_local` hands the message to the topic's Socket.IO sockets (the socketioxide room
//! named after the topic, namespace `/`) and `/ws` connections ([`hub::WsHub`]), each within
//! its outbound budget ([`outbound::Outbound`]). A subscriber over budget loses the message
//! and is closed as a slow consumer; nobody else waits or loses anything because of it, and
//! the publisher's ack does not depend on it. Every message handed over or dropped is counted
//! here, the same way on every path: `fanout_events_sent_total{namespace}`,
//! `fanout_topic_messages_delivered_total`, `fanout_messages_dropped_total{transport, reason}`
//! and the fan-out latency (from the message reaching this node to the last local hand-over).

pub mod hub;
pub mod outbound;

use std::sync::{Arc, OnceLock};

use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::{SendError, SocketError};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::{AppError, Code};
use crate::io::{Io, NodeSocket};
use crate::metrics::{DropReason, DropTransport, Metrics, PublishSource};
use crate::sio::polling::PollingCloser;
use crate::topics::Topic;
use hub::WsHub;
use outbound::{Admission, Budget, CloseReason, Outbound};

/// Metric namespace label of `/ws` connections.
pub const WS_NAMESPACE: &str = "/ws";
/// The Socket.IO namespace of topic subscriptions.
pub const TOPIC_NAMESPACE: &str = "/";

/// A message for a topic's subscribers: delivered as event `topic` with argument `data`.
#[derive(Debug)]
pub struct TopicMessage {
    topic: Topic,
    data: Value,
    json: Box<RawValue>,
    ws_frame: OnceLock<Utf8Bytes>,
}

impl TopicMessage {
    /// A message; `data` is serialized here, once for every subscriber.
    pub fn new(topic: Topic, data: Value) -> Result<Self, AppError> {
        let json = serde_json::value::to_raw_value(&data)
            .map_err(|err| AppError::bad_request(format!("data cannot be serialized: {err}")))?;
        Ok(Self {
            topic,
            data,
            json,
            ws_frame: OnceLock::new(),
        })
    }

    /// A broadcast from another node that is a topic message: namespace `/`, exactly one
    /// room, no exceptions, the event named after the room, at most one argument. That is
    /// what [`Delivery::publish`] sends, and what a Node.js peer sends for
    /// `io.to(topic).emit(topic, data)`. Anything else is not a topic message and is applied
    /// by the adapter as a plain Socket.IO broadcast.
    pub fn from_remote(broadcast: &fanout_adapter::RemoteBroadcast) -> Option<Self> {
        let opts = &broadcast.opts;
        let [room] = opts.rooms.as_slice() else {
            return None;
        };
        let event = broadcast.event()?;
        if broadcast.nsp != TOPIC_NAMESPACE
            || !opts.except.is_empty()
            || opts.sid.is_some()
            || room.as_ref() != event
            || broadcast.data.len() > 2
        {
            return None;
        }
        let topic = Topic::parse(event).ok()?;
        let data = broadcast
            .args_json()
            .into_iter()
            .next()
            .unwrap_or(Value::Null);
        Self::new(topic, data).ok()
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The data.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// Bytes a Socket.IO subscriber is charged for: event name and data (framing aside).
    fn socketio_size(&self) -> usize {
        self.topic.as_str().len() + self.json.get().len() + 8
    }

    /// The `/ws` push frame `{ "type": "event", "topic", "data" }`, built on first use.
    fn ws_frame(&self) -> &Utf8Bytes {
        self.ws_frame.get_or_init(|| {
            let topic = Value::String(self.topic.as_str().to_owned());
            Utf8Bytes::from(format!(
                r#"{{"type":"event","topic":{topic},"data":{}}}"#,
                self.json.get()
            ))
        })
    }
}

/// What one delivery did, per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Handed to a connection.
    pub delivered: u64,
    /// Dropped: the connection went over budget (and is being closed).
    pub slow_consumer: u64,
    /// Dropped: the connection was closed or closing.
    pub closed: u64,
    /// Dropped: the message alone exceeds a connection's budget.
    pub too_large: u64,
}

impl Tally {
    /// Counts one admission outcome.
    pub fn count(&mut self, admission: Admission) {
        match admission {
            Admission::Admitted => self.delivered += 1,
            Admission::OverBudget => self.slow_consumer += 1,
            Admission::Closing => self.closed += 1,
            Admission::TooLarge => self.too_large += 1,
        }
    }

    fn record(&self, metrics: &Metrics, transport: DropTransport) {
        metrics.messages_dropped(transport, DropReason::SlowConsumer, self.slow_consumer);
        metrics.messages_dropped(transport, DropReason::Closed, self.closed);
        metrics.messages_dropped(transport, DropReason::TooLarge, self.too_large);
    }
}

/// The delivery service of a node.
pub struct Delivery {
    io: OnceLock<Io>,
    polling: OnceLock<PollingCloser>,
    hub: Arc<WsHub>,
    adapter: fanout_adapter::FanoutAdapterCtr,
    metrics: Metrics,
    budget: Budget,
}

impl Delivery {
    /// A delivery service; the Socket.IO handle is attached with [`Delivery::set_io`].
    pub fn new(
        adapter: fanout_adapter::FanoutAdapterCtr,
        metrics: Metrics,
        budget: Budget,
    ) -> Self {
        Self {
            io: OnceLock::new(),
            polling: OnceLock::new(),
            hub: Arc::new(WsHub::default()),
            adapter,
            metrics,
            budget,
        }
    }

    /// Attaches the Socket.IO handle (once, at startup).
    pub fn set_io(&self, io: Io) {
        if self.io.set(io).is_err() {
            tracing::error!("Socket.IO handle attached twice; keeping the first");
        }
    }

    /// Attaches the closer of long-polling sessions (once, at startup).
    pub fn set_polling_closer(&self, closer: PollingCloser) {
        if self.polling.set(closer).is_err() {
            tracing::error!("polling closer attached twice; keeping the first");
        }
    }

    /// The closer of long-polling sessions (None only before startup completed).
    pub fn polling_closer(&self) -> Option<&PollingCloser> {
        self.polling.get()
    }

    /// The Socket.IO handle (None only before startup completed).
    pub fn io(&self) -> Option<&Io> {
        self.io.get()
    }

    /// The local `/ws` subscriptions.
    pub fn hub(&self) -> &Arc<WsHub> {
        &self.hub
    }

    /// A fresh outbound budget for a new connection.
    pub fn new_outbound(&self) -> Arc<Outbound> {
        Arc::new(Outbound::new(self.budget))
    }

    /// The per-connection limits.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Makes sure this node receives other nodes' broadcasts to `room` of namespace `nsp`: on
    /// a Redis Cluster (sharded mode) the node subscribes to the room's channel only while it
    /// has subscribers there, so every join of a topic or chat room calls this after joining
    /// and before acknowledging. A no-op in classic and embedded mode (every node receives
    /// every room). `unavailable` when the subscription is not confirmed in time.
    pub async fn ensure_room(&self, nsp: &str, room: &str) -> Result<(), AppError> {
        self.adapter.ensure_room(nsp, room).await.map_err(|err| {
            tracing::warn!(%err, nsp, room, "room subscription not confirmed");
            AppError::new(
                Code::Unavailable,
                "cannot subscribe across the cluster now (Redis unavailable)",
            )
        })
    }

    /// Keeps a topic's room channel subscribed (sharded mode) while a local `/ws` client is
    /// subscribed to it: the adapter's sweep only sees Socket.IO sockets in rooms.
    pub fn install_room_keeper(&self) {
        let hub = self.hub.clone();
        self.adapter.set_room_keeper(Arc::new(move |nsp, room| {
            nsp == TOPIC_NAMESPACE && hub.has_subscribers(room)
        }));
    }

    /// Publishes `msg` to every subscriber on every node: this node's first, then the others
    /// through Redis. Slow subscribers never fail it; an unreachable Redis does (`unavailable`,
    /// the local subscribers have it, the other nodes' are counted as dropped).
    pub async fn publish(&self, msg: &TopicMessage, source: PublishSource) -> Result<(), AppError> {
        let received = Instant::now();
        self.metrics.topic_published(source);
        self.deliver_local(msg, received);
        if !self.adapter.is_cluster() {
            return Ok(());
        }
        let topic = msg.topic.as_str();
        self.adapter
            .broadcast_remote(TOPIC_NAMESPACE, topic, topic, &msg.data)
            .await
            .map_err(|err| {
                self.metrics
                    .messages_dropped(DropTransport::Redis, DropReason::RedisDown, 1);
                tracing::warn!(%err, %topic, "publish reached this node only");
                AppError::new(
                    Code::Unavailable,
                    "delivered on this node only: the cluster bus (Redis) is unavailable",
                )
            })
    }

    /// Hands `msg` to this node's subscribers (Socket.IO and `/ws`); `received` is when it
    /// reached the node.
    pub fn deliver_local(&self, msg: &TopicMessage, received: Instant) -> Tally {
        let socketio = self.deliver_socketio(msg);
        let ws = self.hub.deliver(&msg.topic, msg.ws_frame());
        socketio.record(&self.metrics, DropTransport::SocketIo);
        ws.record(&self.metrics, DropTransport::Ws);
        self.metrics
            .events_sent(TOPIC_NAMESPACE, socketio.delivered);
        self.metrics.events_sent(WS_NAMESPACE, ws.delivered);
        self.metrics
            .topic_delivered(socketio.delivered + ws.delivered, received.elapsed());
        Tally {
            delivered: socketio.delivered + ws.delivered,
            slow_consumer: socketio.slow_consumer + ws.slow_consumer,
            closed: socketio.closed + ws.closed,
            too_large: socketio.too_large + ws.too_large,
        }
    }

    /// The adapter's hook for broadcasts from other nodes: topic messages take the same path
    /// as local ones (true: handled here); anything else is left to the adapter (false).
    pub fn on_remote_broadcast(&self, broadcast: &fanout_adapter::RemoteBroadcast) -> bool {
        let received = Instant::now();
        match TopicMessage::from_remote(broadcast) {
            Some(msg) => {
                self.metrics.topic_published(PublishSource::Remote);
                self.deliver_local(&msg, received);
                true
            }
            None => false,
        }
    }

    fn deliver_socketio(&self, msg: &TopicMessage) -> Tally {
        let mut tally = Tally::default();
        let Some(io) = self.io.get() else {
            return tally;
        };
        let sockets = io.local().to(msg.topic.as_str().to_owned()).sockets();
        if sockets.is_empty() {
            return tally;
        }
        let size = msg.socketio_size();
        let polling = self.polling.get();
        for socket in sockets {
            tally.count(emit_within_budget(&socket, msg, size, polling));
        }
        tally
    }
}

/// Emits a topic message to one socket within its budget; closes it when over.
fn emit_within_budget(
    socket: &NodeSocket,
    msg: &TopicMessage,
    size: usize,
    polling: Option<&PollingCloser>,
) -> Admission {
    let Some(outbound) = socket.extensions.get::<Arc<Outbound>>() else {
        // Every socket of namespace `/` gets a budget when it connects; one without is
        // still connecting: nothing to deliver yet.
        return Admission::Closing;
    };
    match outbound.admit(size) {
        Admission::Admitted => {}
        Admission::OverBudget => {
            close_socket(socket, &outbound, CloseReason::SlowConsumer, polling);
            return Admission::OverBudget;
        }
        other => return other,
    }
    match socket.emit(msg.topic.as_str(), msg.json.as_ref()) {
        Ok(()) => {
            if socket.transport_type() == socketioxide::TransportType::Polling {
                // No connection of its own to count written bytes on: the message cap alone
                // bounds a long-polling socket, so its bytes must not pile up as in flight.
                outbound.written(size);
            }
            Admission::Admitted
        }
        Err(SendError::Socket(SocketError::InternalChannelFull)) => {
            outbound.unadmit(size);
            close_socket(socket, &outbound, CloseReason::SlowConsumer, polling);
            Admission::OverBudget
        }
        Err(err) => {
            outbound.unadmit(size);
            tracing::debug!(%err, sid = %socket.id, "emit failed");
            Admission::Closing
        }
    }
}

/// Closes a Socket.IO socket for `reason`.
///
/// - A slow consumer is closed at the transport level (its TCP connection, or its Engine.IO
///   session on long-polling), so the stock client reconnects and resubscribes.
/// - A session that ended (token revoked or expired) gets a Socket.IO DISCONNECT, so the
///   client does not reconnect with its dead token — but only when nothing unread is waiting
///   ahead of it; a client that stopped reading, or whose buffer cannot take the packet, is
///   closed at the transport level instead. Calling this again for an ended session retries
///   (the registry re-kicks until the socket is gone).
/// - A connection over its request rate is closed at the transport level after
///   [`outbound::CLOSE_GRACE`], so the `rate_limited` errors already queued can reach it.
///
/// A long-polling socket has no connection of its own: a slow consumer, or a session whose
/// DISCONNECT cannot be queued (a client that stopped polling), leaves every room at once and
/// its Engine.IO session is closed through `polling` ([`PollingCloser`]); without one, the
/// next Engine.IO heartbeat ends it. Whatever the transport does, the client core refuses
/// every request of an ended session from the moment it ended
/// ([`crate::client::Client::end`]).
pub fn close_socket(
    socket: &NodeSocket,
    outbound: &Outbound,
    reason: CloseReason,
    polling: Option<&PollingCloser>,
) {
    let first = outbound.start_closing(reason);
    // A session that ended is closed even if an earlier close (a slow consumer on
    // long-polling, which has no connection to cut) left the socket connected.
    let retry = !first && reason.ends_session() && socket.connected();
    if !first && !retry {
        return;
    }
    if first {
        tracing::info!(sid = %socket.id, reason = reason.as_str(), "closing socket");
    }
    if reason.ends_session() && outbound.in_flight() == 0 && socket.clone().disconnect().is_ok() {
        return;
    }
    if let Some(conn) = outbound.conn() {
        if reason == CloseReason::RateLimited {
            outbound::close_after_grace(conn);
        } else {
            conn.close();
        }
        return;
    }
    let told = reason != CloseReason::SlowConsumer && socket.clone().disconnect().is_ok();
    if !told {
        socket.leave_all();
        if let Some(polling) = polling {
            polling.close(socket);
        }
    }
}
