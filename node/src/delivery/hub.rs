//! [`WsHub`]: the local `/ws` subscriptions (topic → connection → [`Outbox`]). Socket.IO
//! subscriptions live in socketioxide rooms instead, so that Node.js peers see them; both are
//! fed by [`super::Delivery::deliver_local`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Tally;
use super::outbound::{Admission, CloseReason, Outbound, close_after_grace};
use crate::listener::ConnHandle;
use crate::topics::Topic;

/// What a `/ws` connection's writer sends.
#[derive(Debug)]
pub enum WsOut {
    /// A text frame (a reply or a pushed event).
    Frame(Utf8Bytes),
    /// A close frame with code and reason; the connection ends after it.
    Close(u16, &'static str),
}

/// The sending side of one `/ws` connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The writer's queue (bounded by the message cap).
    pub tx: mpsc::Sender<WsOut>,
    /// The byte budget.
    pub outbound: Arc<Outbound>,
    /// The TCP connection, to close it when a close frame cannot be queued.
    pub conn: Option<ConnHandle>,
}

impl Outbox {
    /// Queues a frame within the budget.
    pub fn push(&self, frame: Utf8Bytes) -> Admission {
        let len = frame.len();
        match self.outbound.admit(len) {
            Admission::Admitted => match self.tx.try_send(WsOut::Frame(frame)) {
                Ok(()) => Admission::Admitted,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.outbound.unadmit(len);
                    Admission::OverBudget
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outbound.unadmit(len);
                    Admission::Closing
                }
            },
            other => other,
        }
    }

    /// Closes the connection for `reason`. A session that ended (token revoked or expired)
    /// gets a close frame when nothing unread waits ahead of it and the queue can take it,
    /// and its TCP connection is closed anyway after [`super::outbound::CLOSE_GRACE`]: a writer stuck on a
    /// client that stopped reading would never send that frame. A connection over its request
    /// rate gets no close frame; its TCP connection is closed after the same grace, so the
    /// replies already queued (its `rate_limited` errors) can still reach it. Anything else,
    /// or an ended session whose frame cannot be queued, is closed at the transport level at
    /// once.
    pub fn close(&self, reason: CloseReason, code: u16, text: &'static str) {
        if !self.outbound.start_closing(reason) {
            return;
        }
        let polite = reason.ends_session()
            && self.outbound.in_flight() == 0
            && self.tx.try_send(WsOut::Close(code, text)).is_ok();
        match &self.conn {
            Some(conn) if polite || reason == CloseReason::RateLimited => close_after_grace(conn),
            Some(conn) => conn.close(),
            // No TCP handle (a router served without the tracked listener): the writer
            // ends at the next frame it fails to queue.
            None => {
                if !polite {
                    self.tx.try_send(WsOut::Close(code, text)).ok();
                }
            }
        }
    }
}

/// Close code of a slow consumer (RFC 6455 1008: policy violation).
pub const SLOW_CONSUMER_CODE: u16 = 1008;

/// Local `/ws` subscriptions.
#[derive(Default)]
pub struct WsHub {
    topics: RwLock<HashMap<Topic, HashMap<u64, Outbox>>>,
    /// Every open `/ws` connection, so a drain can send each a 1001 close frame.
    open: Mutex<HashMap<u64, Outbox>>,
}

impl WsHub {
    /// Registers an open connection.
    pub fn open(&self, id: u64, outbox: Outbox) {
        self.open_conns().insert(id, outbox);
    }

    /// Forgets a closed connection (its topics are left by the client core).
    pub fn closed(&self, id: u64) {
        self.open_conns().remove(&id);
    }

    /// Subscribes connection `id` to `topic`.
    pub fn add(&self, topic: &Topic, id: u64, outbox: Outbox) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.clone())
            .or_default()
            .insert(id, outbox);
    }

    /// Unsubscribes connection `id` from `topic`.
    pub fn remove(&self, topic: &Topic, id: u64) {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = topics.get_mut(topic) {
            conns.remove(&id);
            if conns.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// True while a local `/ws` connection is subscribed to `topic`.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(topic)
    }

    fn open_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Outbox>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends every open `/ws` connection a close frame 1001 ("server draining"), `batch` at a
    /// time with `pause` between batches, so clients reconnect elsewhere gradually and see a
    /// clean close instead of a dropped TCP connection. Returns how many were told.
    pub async fn drain(&self, batch: usize, pause: std::time::Duration) -> usize {
        let conns: Vec<Outbox> = self.open_conns().values().cloned().collect();
        let mut told = 0;
        for chunk in conns.chunks(batch.max(1)) {
            for outbox in chunk {
                if outbox
                    .tx
                    .try_send(WsOut::Close(GOING_AWAY, DRAINING))
                    .is_ok()
                {
                    told += 1;
                }
            }
            tokio::time::sleep(pause).await;
        }
        told
    }

    /// Pushes `frame` (built once) to every local `/ws` subscriber of `topic`; a subscriber
    /// over its budget is closed as a slow consumer.
    pub fn deliver(&self, topic: &Topic, frame: &Utf8Bytes) -> Tally {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let mut tally = Tally::default();
        let Some(conns) = topics.get(topic) else {
            return tally;
        };
        for outbox in conns.values() {
            let admission = outbox.push(frame.clone());
            if admission == Admission::OverBudget {
                outbox.close(
                    CloseReason::SlowConsumer,
                    SLOW_CONSUMER_CODE,
                    "slow consumer",
                );
            }
            tally.count(admission);
        }
        tally
    }
}

/// Close code sent while the node drains.
pub const GOING_AWAY: u16 = 1001;
/// Close reason sent while the node drains.
pub const DRAINING: &str = "server draining";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outbound::Budget;

    fn outbox(messages: usize, bytes: u64) -> (Outbox, mpsc::Receiver<WsOut>) {
        let (tx, rx) = mpsc::channel(messages);
        let outbound = Arc::new(Outbound::new(Budget { bytes, messages }));
        (
            Outbox {
                tx,
                outbound,
                conn: Some(ConnHandle::new()),
            },
            rx,
        )
    }

    #[test]
    fn delivers_within_budget_and_closes_the_slow_one() {
        let hub = WsHub::default();
        let topic = Topic::parse("t").unwrap();
        let (fast, mut fast_rx) = outbox(4, 1000);
        let (slow, _slow_rx) = outbox(1, 1000);
        hub.add(&topic, 1, fast.clone());
        hub.add(&topic, 2, slow.clone());
        let frame = Utf8Bytes::from("x".repeat(10));
        assert_eq!(hub.deliver(&topic, &frame).delivered, 2);
        let tally = hub.deliver(&topic, &frame);
        assert_eq!((tally.delivered, tally.slow_consumer), (1, 1));
        assert_eq!(slow.outbound.closing(), Some(CloseReason::SlowConsumer));
        assert!(slow.conn.as_ref().is_some_and(ConnHandle::is_closed));
        let tally = hub.deliver(&topic, &frame);
        assert_eq!((tally.delivered, tally.closed), (1, 1));
        assert!(matches!(fast_rx.try_recv(), Ok(WsOut::Frame(_))));
        // Bytes: a frame larger than the whole budget is dropped, the connection stays.
        let huge = Utf8Bytes::from("y".repeat(2000));
        let tally = hub.deliver(&topic, &huge);
        assert_eq!((tally.too_large, tally.closed), (1, 1));
        assert_eq!(fast.outbound.closing(), None);
        hub.remove(&topic, 1);
        hub.remove(&topic, 2);
        assert_eq!(hub.deliver(&topic, &frame), Tally::default());
    }
}
