//! [`Outbound`]: one connection's outbound budget, the same rule for both transports. A
//! connection may have at most `FANOUT_CLIENT_QUEUE_BYTES` bytes and
//! `FANOUT_CLIENT_QUEUE_MESSAGES` messages handed to it and not yet written to its socket.
//! A delivery that would exceed the budget is refused; the caller drops the message (counted)
//! and closes the connection as a slow consumer, so one stalled reader costs the node at most
//! its budget and never delays anyone else.
//!
//! How "not yet written" is known differs per transport:
//! - `/ws`: the connection's own writer reports every frame it takes off the queue
//!   ([`Outbound::written`]).
//! - Socket.IO over WebSocket: the TCP connection counts the bytes written to it
//!   ([`ConnHandle::written`]); once the socket is linked to it ([`Outbound::link`]), bytes
//!   handed over minus bytes written is what waits in socketioxide's queue.
//! - Socket.IO over HTTP long-polling: the poll requests come on any connection, so only the
//!   message cap applies (socketioxide's per-socket buffer); a poller over it has its
//!   Engine.IO session closed in process (`crate::sio::polling`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::listener::ConnHandle;

/// Why a connection is being closed by the server (also the `fanout_disconnections_total`
/// reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Over its outbound budget.
    SlowConsumer = 1,
    /// Its token was revoked (logout, or found dead when re-validated).
    Revoked = 2,
    /// Its token reached its expiry.
    Expired = 3,
    /// It kept sending requests over its command rate.
    RateLimited = 4,
}

impl CloseReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Revoked => "token_revoked",
            CloseReason::Expired => "token_expired",
            CloseReason::RateLimited => "rate_limited",
        }
    }

    /// True when the session itself ended (its token is dead): the client is told when that
    /// can still be queued, and must not reconnect with the same token.
    pub fn ends_session(self) -> bool {
        matches!(self, CloseReason::Revoked | CloseReason::Expired)
    }

    /// The reason stored as `raw` (`reason as u8`); None for 0 or an unknown value.
    pub fn from_u8(raw: u8) -> Option<CloseReason> {
        match raw {
            1 => Some(CloseReason::SlowConsumer),
            2 => Some(CloseReason::Revoked),
            3 => Some(CloseReason::Expired),
            4 => Some(CloseReason::RateLimited),
            _ => None,
        }
    }
}

/// How long a connection closed for a reason the client may still learn about (a session
/// that ended, a request rate exceeded) has to take what was queued for it before its TCP
/// connection is closed.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Closes `conn` at the transport level after [`CLOSE_GRACE`] (a no-op if it is gone by then).
pub fn close_after_grace(conn: &ConnHandle) {
    let conn = conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(CLOSE_GRACE).await;
        conn.close();
    });
}

/// The limits of one connection's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes handed over and not yet written.
    pub bytes: u64,
    /// Messages queued (enforced by the transport's bounded queue).
    pub messages: usize,
}

/// Whether a message may be handed to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes; its bytes are now counted against the budget.
    Admitted,
    /// The connection is closing (slow consumer, revoked): drop the message.
    Closing,
    /// The message would exceed the budget: drop it and close the connection.
    OverBudget,
    /// The message alone exceeds the whole budget: drop it, keep the connection.
    TooLarge,
}

/// A TCP connection a Socket.IO socket writes to, and the counters when it was linked.
#[derive(Debug)]
struct Link {
    conn: ConnHandle,
    written_at_link: u64,
    queued_at_link: u64,
}

/// One connection's outbound budget.
#[derive(Debug)]
pub struct Outbound {
    budget: Budget,
    queued: AtomicU64,
    written: AtomicU64,
    link: OnceLock<Link>,
    closing: AtomicU8,
}

impl Outbound {
    /// A budget for a new connection.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            queued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            link: OnceLock::new(),
            closing: AtomicU8::new(0),
        }
    }

    /// The limits.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Links a Socket.IO socket to the TCP connection its WebSocket runs on (once).
    pub fn link(&self, conn: ConnHandle) {
        let link = Link {
            written_at_link: conn.written(),
            queued_at_link: self.queued.load(Ordering::Relaxed),
            conn,
        };
        self.link.set(link).ok();
    }

    /// The TCP connection this connection writes to, when known and still open.
    pub fn conn(&self) -> Option<&ConnHandle> {
        self.link
            .get()
            .map(|link| &link.conn)
            .filter(|conn| !conn.is_closed())
    }

    /// The frame writer of a `/ws` connection took `bytes` off its queue.
    pub fn written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes handed over and not yet written (as far as this transport can tell).
    pub fn in_flight(&self) -> u64 {
        let queued = self.queued.load(Ordering::Relaxed);
        match self.link.get() {
            Some(link) if !link.conn.is_closed() => {
                let written = link.conn.written().saturating_sub(link.written_at_link);
                queued
                    .saturating_sub(link.queued_at_link)
                    .saturating_sub(written)
            }
            // A Socket.IO socket on long-polling (or whose WebSocket is gone): no byte
            // accounting, the message cap alone applies.
            Some(_) => 0,
            None => queued.saturating_sub(self.written.load(Ordering::Relaxed)),
        }
    }

    /// Asks to hand `bytes` to the connection; counts them when admitted. Refused once the
    /// connection is closing (except for its request rate, see [`CLOSE_GRACE`]).
    pub fn admit(&self, bytes: usize) -> Admission {
        let bytes = bytes as u64;
        // A connection closed for its request rate still gets what comes during its grace
        // (the replies to the requests it had queued, within its budget).
        if self
            .closing()
            .is_some_and(|reason| reason != CloseReason::RateLimited)
        {
            return Admission::Closing;
        }
        if bytes > self.budget.bytes {
            return Admission::TooLarge;
        }
        if self.in_flight() + bytes > self.budget.bytes {
            return Admission::OverBudget;
        }
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        Admission::Admitted
    }

    /// Takes back an admission whose message could not be queued after all.
    pub fn unadmit(&self, bytes: usize) {
        self.queued.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Marks the connection as closing for `reason`; true for the first caller only.
    pub fn start_closing(&self, reason: CloseReason) -> bool {
        self.closing
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Why the server is closing this connection, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.closing.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: u64) -> Outbound {
        Outbound::new(Budget {
            bytes,
            messages: 16,
        })
    }

    #[test]
    fn queue_budget_counts_until_written() {
        let out = budget(100);
        assert_eq!(out.admit(60), Admission::Admitted);
        assert_eq!(out.admit(60), Admission::OverBudget);
        assert_eq!(out.in_flight(), 60);
        out.written(60);
        assert_eq!(out.admit(60), Admission::Admitted);
        assert_eq!(out.admit(101), Admission::TooLarge);
        out.unadmit(60);
        assert_eq!(out.in_flight(), 0);
    }

    #[test]
    fn linked_socket_counts_bytes_written_to_its_connection() {
        let out = budget(100);
        assert_eq!(out.admit(30), Admission::Admitted); // before the upgrade: polling
        let conn = ConnHandle::new();
        conn.wrote(500); // the handshake and whatever came before
        out.link(conn.clone());
        assert_eq!(out.in_flight(), 0);
        assert_eq!(out.admit(80), Admission::Admitted);
        assert_eq!(out.admit(30), Admission::OverBudget);
        conn.wrote(50);
        assert_eq!(out.in_flight(), 30);
        assert_eq!(out.admit(30), Admission::Admitted);
        conn.close();
        assert_eq!(out.in_flight(), 0, "a closed link no longer counts");
        assert!(out.conn().is_none());
    }

    #[test]
    fn closing_is_decided_once_and_refuses_everything() {
        let out = budget(100);
        assert!(out.start_closing(CloseReason::SlowConsumer));
        assert!(!out.start_closing(CloseReason::Revoked));
        assert_eq!(out.closing(), Some(CloseReason::SlowConsumer));
        assert_eq!(out.admit(1), Admission::Closing);
        // Closed for its request rate: what comes during the grace is still handed over.
        let out = budget(100);
        assert!(out.start_closing(CloseReason::RateLimited));
        assert_eq!(out.admit(1), Admission::Admitted);
    }
}
