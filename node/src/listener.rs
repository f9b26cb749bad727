//! The node's TCP listener. [`TrackedListener`] wraps the TCP listener: it enforces
//! `FANOUT_MAX_CONNECTIONS` and, for peers that are not trusted proxies,
//! `FANOUT_MAX_CONNECTIONS_PER_IP`, and registers every connection in a [`ConnTracker`]. Each
//! connection gets a [`ConnHandle`], handed to every HTTP request as connect info
//! ([`TrackedAddr`]): it counts the bytes written to the connection and closes it at the
//! *transport* level (reads report end-of-file, writes fail, a write stuck on a full TCP
//! window wakes up). That close serves three jobs: the graceful drain
//! ([`ConnTracker::drain`]), dropping a slow consumer, and kicking a revoked session whose
//! queue cannot take a polite close. Stock Socket.IO clients see a transport close and
//! reconnect — through the load balancer, possibly to another node; a Socket.IO DISCONNECT
//! packet would stop them from reconnecting. The handle also tells [`crate::server`] whether
//! the connection is idle: requests in flight and bytes moved.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::{Metrics, Refusal};
use crate::peer::{IpLimiter, IpSlot, TrustedProxies};

/// One TCP connection, shared by the listener and whoever may need to close it.
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<ConnShared>);

#[derive(Debug)]
struct ConnShared {
    close: CancellationToken,
    written: AtomicU64,
    read: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    gone: AtomicBool,
    /// The per-client-address slot this connection holds, released when it closes.
    ip_slot: Mutex<Option<IpSlot>>,
}

impl ConnHandle {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ConnShared {
            close: CancellationToken::new(),
            written: AtomicU64::new(0),
            read: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            gone: AtomicBool::new(false),
            ip_slot: Mutex::new(None),
        }))
    }

    fn ip_slot(&self) -> MutexGuard<'_, Option<IpSlot>> {
        self.0
            .ip_slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the connection hold `slot` until it closes.
    pub fn hold_ip_slot(&self, slot: IpSlot) {
        *self.ip_slot() = Some(slot);
    }

    /// True when the connection holds a per-client-address slot.
    pub fn holds_ip_slot(&self) -> bool {
        self.ip_slot().is_some()
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(crate) fn request_started(&self) -> InFlight {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// True while a request is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.0.in_flight.load(Ordering::Relaxed) > 0
    }

    /// A number that changes whenever the connection makes progress: bytes read or written,
    /// requests started.
    pub(crate) fn progress(&self) -> u64 {
        self.0
            .written
            .load(Ordering::Relaxed)
            .wrapping_add(self.0.read.load(Ordering::Relaxed))
            .wrapping_add(self.0.requests.load(Ordering::Relaxed))
    }

    /// Closes the connection at the transport level (idempotent).
    pub fn close(&self) {
        self.0.close.cancel();
    }

    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// Counts `bytes` written to the socket.
    pub(crate) fn wrote(&self, bytes: u64) {
        self.0.written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// True once the connection was closed or dropped.
    pub fn is_closed(&self) -> bool {
        self.0.close.is_cancelled() || self.0.gone.load(Ordering::Relaxed)
    }
}

/// A request in flight on a connection (see [`ConnHandle::request_started`]).
pub(crate) struct InFlight(ConnHandle);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connect info of every request: the peer address and the connection's handle.
#[derive(Debug, Clone)]
pub struct TrackedAddr {
    /// The peer.
    pub peer: SocketAddr,
    /// The TCP connection the request came on.
    pub conn: ConnHandle,
}

/// Open connections.
#[derive(Default)]
pub struct ConnTracker {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, ConnHandle>>,
}

impl ConnTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnHandle>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self) -> (u64, ConnHandle) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = ConnHandle::new();
        self.lock().insert(id, handle.clone());
        (id, handle)
    }

    fn remove(&self, id: u64) {
        if let Some(handle) = self.lock().remove(&id) {
            handle.0.gone.store(true, Ordering::Relaxed);
        }
    }

    /// Closes every open connection, `batch` at a time with `pause` between batches, and
    /// returns how many were closed. Connections opened meanwhile are closed too.
    pub async fn drain(&self, batch: usize, pause: Duration) -> usize {
        let mut closed = 0;
        loop {
            let handles: Vec<ConnHandle> = {
                let open = self.lock();
                open.values()
                    .filter(|h| !h.0.close.is_cancelled())
                    .take(batch)
                    .cloned()
                    .collect()
            };
            if handles.is_empty() {
                return closed;
            }
            closed += handles.len();
            for handle in handles {
                handle.close();
            }
            tracing::info!(
                closed,
                remaining = self.len(),
                "drain: closed a batch of connections"
            );
            tokio::time::sleep(pause).await;
        }
    }
}

/// The limits a [`TrackedListener`] applies at accept.
pub struct AcceptLimits {
    /// Most open connections; 0 = no limit.
    pub max_connections: usize,
    /// Connections per client address (not applied to trusted proxies).
    pub per_ip: Arc<IpLimiter>,
    /// Peers whose connections carry many clients.
    pub proxies: TrustedProxies,
}

/// A TCP listener that tracks and limits connections.
pub struct TrackedListener {
    inner: TcpListener,
    tracker: Arc<ConnTracker>,
    metrics: Metrics,
    limits: AcceptLimits,
    /// Refusals are client-triggered: at most one warning a second.
    refusal_logs: DefaultDirectRateLimiter,
}

impl TrackedListener {
    /// Wraps `inner`.
    pub fn new(
        inner: TcpListener,
        tracker: Arc<ConnTracker>,
        metrics: Metrics,
        limits: AcceptLimits,
    ) -> Self {
        Self {
            inner,
            tracker,
            metrics,
            limits,
            refusal_logs: RateLimiter::direct(Quota::per_second(std::num::NonZeroU32::MIN)),
        }
    }

    fn refuse(&self, peer: SocketAddr, refusal: Refusal) {
        self.metrics.connection_refused(refusal);
        if self.refusal_logs.check().is_ok() {
            tracing::warn!(%peer, reason = refusal.as_str(), "connection refused (logged at most once a second)");
        }
    }

    /// Admits `peer` or says why not; an admitted peer may hold a per-address slot.
    fn admit(&self, peer: SocketAddr) -> Result<Option<IpSlot>, Refusal> {
        let max = self.limits.max_connections;
        if max > 0 && self.tracker.len() >= max {
            return Err(Refusal::MaxConnections);
        }
        if !self.limits.per_ip.enabled() || self.limits.proxies.contains(peer.ip()) {
            return Ok(None);
        }
        match self.limits.per_ip.try_acquire(peer.ip()) {
            Some(slot) => Ok(Some(slot)),
            None => Err(Refusal::PerIp),
        }
    }
}

impl TrackedListener {
    /// Waits for the next connection within the limits; refused ones are closed and counted.
    pub async fn accept(&mut self) -> (TrackedStream, TrackedAddr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match self.admit(peer) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.refuse(peer, refusal);
                    drop(stream);
                    continue;
                }
            };
            stream.set_nodelay(true).ok();
            let (id, conn) = self.tracker.add();
            if let Some(slot) = slot {
                conn.hold_ip_slot(slot);
            }
            self.metrics.tcp_connection(true);
            let stream = TrackedStream {
                inner: stream,
                closed: Box::pin(conn.0.close.clone().cancelled_owned()),
                is_closed: false,
                conn: conn.clone(),
                _guard: Guard {
                    id,
                    conn: conn.clone(),
                    tracker: self.tracker.clone(),
                    metrics: self.metrics.clone(),
                },
            };
            return (stream, TrackedAddr { peer, conn });
        }
    }
}

struct Guard {
    id: u64,
    conn: ConnHandle,
    tracker: Arc<ConnTracker>,
    metrics: Metrics,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Other clones of the handle may outlive the connection; its slot must not.
        self.conn.ip_slot().take();
        self.tracker.remove(self.id);
        self.metrics.tcp_connection(false);
    }
}

/// A TCP stream that counts written bytes and reads end-of-file (and refuses writes) once its
/// handle is closed.
pub struct TrackedStream {
    inner: TcpStream,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    is_closed: bool,
    conn: ConnHandle,
    _guard: Guard,
}

impl TrackedStream {
    fn check_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_closed && self.closed.as_mut().poll(cx).is_ready() {
            self.is_closed = true;
        }
        self.is_closed
    }

    fn count(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.conn.wrote(*n as u64);
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.check_closed(cx) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.conn.0.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.check_closed(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&written);
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.check_closed(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.check_closed(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
