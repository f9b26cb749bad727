//! The node's message bus: named channels carrying bytes between nodes. Cluster mode runs it
//! over Redis pub/sub (the adapter's connections, resubscribed after a reconnect); embedded
//! mode loops back in process. Used for the events channel and token revocations.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{AppError, Code};

/// Messages a subscriber may have queued before further ones are dropped (and counted).
pub const SUBSCRIBER_QUEUE: usize = 4096;

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

/// An in-process loopback bus (tests and tools; the node uses [`AdapterBus`] in both modes).
#[derive(Default)]
pub struct LocalBus {
    subscribers: Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>,
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), AppError> {
        let payload = Bytes::from(payload);
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(senders) = subscribers.get_mut(channel) else {
            return Ok(());
        };
        senders.retain(|tx| !tx.is_closed());
        for tx in senders.iter() {
            if tx.try_send(payload.clone()).is_err() {
                tracing::warn!(channel, "bus subscriber queue full: message dropped");
                return Err(AppError::new(Code::Unavailable, "node overloaded"));
            }
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<mpsc::Receiver<Bytes>, AppError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(channel.to_string())
            .or_default()
            .push(tx);
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_reaches_every_subscriber_of_the_channel_only() {
        let bus = LocalBus::default();
        let mut a = bus.subscribe("x").await.unwrap();
        let mut b = bus.subscribe("x").await.unwrap();
        let mut other = bus.subscribe("y").await.unwrap();
        bus.publish("x", b"hi".to_vec()).await.unwrap();
        assert_eq!(a.recv().await.unwrap(), Bytes::from_static(b"hi"));
        assert_eq!(b.recv().await.unwrap(), Bytes::from_static(b"hi"));
        assert!(other.try_recv().is_err());
    }
}
