//! Topic delivery. [`publish`] is the one entry point of client publishes (Socket.IO, `/ws`,
//! `POST /api/publish`): it broadcasts to the topic's room through the adapter, so every node
//! of the cluster — Node.js Socket.IO peers included — delivers it. [`deliver_local`] is
//! for messages every node receives anyway (the events channel): local subscribers only.

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
    record(state, recipients, started);
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
    record(state, recipients, received);
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
