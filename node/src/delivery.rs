//! Topic delivery. [`publish`] is the one entry point of client publishes (Socket.IO, `/ws`,
//! `POST /api/publish`): it broadcasts to the topic's room through the adapter, so every node
//! of the cluster — Node.js Socket.IO peers included — delivers it. [`deliver_local`] is
//! for messages every node receives anyway (the events channel): local subscribers only.
//! Both feed Socket.IO rooms and the `/ws` hub; a broadcast that arrives from another node
//! through the adapter reaches the `/ws` hub through [`deliver_remote_to_ws`].

use serde_json::Value;
use tokio::time::Instant;

use crate::error::{AppError, Code};
use crate::metrics::PublishSource;
use crate::state::AppState;
use crate::topics::Topic;

/// Publishes `data` to every subscriber of `topic` on every node, as event `topic`.
pub async fn publish(
    state: &AppState,
    topic: &Topic,
    data: &Value,
    source: PublishSource,
) -> Result<(), AppError> {
    let started = Instant::now();
    state.metrics.topic_published(source);
    let recipients = local_recipients(state, topic);
    state
        .io()
        .to(topic.as_str().to_owned())
        .emit(topic.as_str(), data)
        .await
        .map_err(|err| {
            tracing::warn!(%err, %topic, "broadcast failed");
            AppError::new(Code::Unavailable, "broadcast failed")
        })?;
    let ws = deliver_ws(state, topic.as_str(), data);
    record(state, recipients + ws, started);
    Ok(())
}

/// Emits `data` as event `topic` to this node's subscribers of `topic` only; `received` is
/// when the message reached this node (for the fan-out latency histogram).
pub async fn deliver_local(state: &AppState, topic: &Topic, data: &Value, received: Instant) {
    let recipients = local_recipients(state, topic);
    if recipients > 0 {
        let op = state.io().local().to(topic.as_str().to_owned());
        // Local broadcasts do not touch the network; an error lists sockets whose buffer was
        // full or closed, which the emit skipped.
        if let Err(err) = op.emit(topic.as_str(), data).await {
            tracing::debug!(%err, %topic, "local delivery skipped some sockets");
        }
    }
    let ws = deliver_ws(state, topic.as_str(), data);
    record(state, recipients + ws, received);
}

/// A broadcast from another node (fanout or Node.js) was applied to this node's Socket.IO
/// sockets: count what it delivered here, and hand topic messages among them (namespace `/`,
/// one room, event named after the room) to the `/ws` subscribers too.
pub fn on_remote_broadcast(state: &AppState, broadcast: &fanout_adapter::RemoteBroadcast) {
    let received = Instant::now();
    let socket_io = local_room_size(state, &broadcast.nsp, &broadcast.opts.rooms);
    state.metrics.events_sent(&broadcast.nsp, socket_io);
    let topic = match (
        broadcast.nsp.as_str(),
        broadcast.opts.rooms.as_slice(),
        broadcast.event(),
    ) {
        ("/", [room], Some(event)) if room == event => event,
        _ => return,
    };
    let data = broadcast
        .args_json()
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    let ws = deliver_ws(state, topic, &data);
    state.metrics.events_sent(crate::ws::NAMESPACE, ws);
    state
        .metrics
        .topic_delivered(socket_io + ws, received.elapsed());
}

/// Local sockets of namespace `nsp` in any of `rooms` (all of the namespace when empty).
pub fn local_room_size(state: &AppState, nsp: &str, rooms: &[impl AsRef<str>]) -> u64 {
    let Some(ns) = state.io().of(nsp) else {
        return 0;
    };
    let ops = ns.local();
    let ops = if rooms.is_empty() {
        ops
    } else {
        ops.to(rooms
            .iter()
            .map(|r| r.as_ref().to_owned())
            .collect::<Vec<String>>())
    };
    ops.sockets().len() as u64
}

fn deliver_ws(state: &AppState, topic: &str, data: &Value) -> u64 {
    let (delivered, dropped) = state.ws_hub.deliver(topic, data);
    if dropped > 0 {
        state.metrics.messages_dropped("slow_consumer", dropped);
    }
    delivered
}

fn local_recipients(state: &AppState, topic: &Topic) -> u64 {
    state
        .io()
        .local()
        .to(topic.as_str().to_owned())
        .sockets()
        .len() as u64
}

fn record(state: &AppState, recipients: u64, since: Instant) {
    state.metrics.topic_delivered(recipients, since.elapsed());
    state.metrics.events_sent("/", recipients);
}
