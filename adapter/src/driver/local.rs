//! Embedded mode: an in-process loopback with the same routing as Redis.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::routes::{Route, Routes, SubId, SubKey};
use crate::metrics::Metrics;
use crate::sync::lock;

/// Embedded mode: publish delivers to the local subscribers of that channel.
#[derive(Debug, Clone)]
pub(crate) struct LocalBus {
    routes: Arc<Mutex<Routes>>,
    pub(super) ready: Arc<watch::Sender<bool>>,
    metrics: Metrics,
}

impl LocalBus {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self {
            routes: Default::default(),
            ready: Arc::new(watch::Sender::new(true)),
            metrics,
        }
    }

    pub(super) fn subscribe(&self, key: SubKey, route: Route) -> SubId {
        lock(&self.routes).add(key, route).0
    }

    pub(super) fn unsubscribe(&self, sub: &SubId) {
        lock(&self.routes).remove(sub);
    }

    pub(super) fn publish(&self, channel: &str, payload: Vec<u8>) {
        let payload = Bytes::from(payload);
        lock(&self.routes).dispatch(
            &SubKey::Channel(channel.to_owned()),
            channel,
            &payload,
            &self.metrics,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Driver;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn local_bus_loopback_and_overflow() {
        let metrics = Metrics::unregistered().unwrap();
        let bus = Driver::Local(LocalBus::new(metrics.clone()));
        let (tx, mut rx) = mpsc::channel(1);
        bus.subscribe(SubKey::Channel("c".into()), Route::Plain(tx))
            .await
            .unwrap();
        bus.publish("c", b"one".to_vec()).await.unwrap();
        bus.publish("c", b"two".to_vec()).await.unwrap(); // queue of 1: dropped
        bus.publish("other", b"x".to_vec()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"one"));
        assert!(rx.try_recv().is_err());
        assert_eq!(Metrics::get(&metrics.dropped, &["channel"]), 1);
        assert!(bus.is_ready());
    }
}
