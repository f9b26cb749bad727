//! The node's message bus: named channels carrying bytes between nodes, for the events,
//! stream and revocations channels. It is the adapter's plain-channel facility: Redis pub/sub
//! in cluster mode (the adapter's connections, resubscribed after a reconnect, bounded queues
//! with counted overflow), an in-process loopback in embedded mode — so reconnect logic exists
//! once, in `fanout-adapter`. The trait keeps handlers independent of the adapter type.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{AppError, Code};

/// Publish and subscribe on named channels.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Publishes `payload` on `channel` to every node (this one included).
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), AppError>;
    /// Receives every message published on `channel` from now on.
    async fn subscribe(&self, channel: &str) -> Result<mpsc::Receiver<Bytes>, AppError>;
}

/// The adapter's plain channels: Redis pub/sub in cluster mode (the adapter's connections,
/// resubscribed after a reconnect), an in-process loopback in embedded mode.
pub struct AdapterBus(pub fanout_adapter::FanoutAdapterCtr);

#[async_trait]
impl Bus for AdapterBus {
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), AppError> {
        self.0
            .publish_channel(channel.to_string(), payload)
            .await
            .map_err(|err| {
                tracing::warn!(%err, channel, "bus publish failed");
                AppError::new(Code::Unavailable, "message bus unavailable")
            })
    }

    async fn subscribe(&self, channel: &str) -> Result<mpsc::Receiver<Bytes>, AppError> {
        self.0
            .subscribe_channel(channel.to_string())
            .await
            .map_err(|err| {
                tracing::warn!(%err, channel, "bus subscribe failed");
                AppError::new(Code::Unavailable, "message bus unavailable")
            })
    }
}
