//! The node's TCP listener. [`TrackedListener`] wraps the TCP listener: it enforces
//! `FANOUT_MAX_CONNECTIONS` and registers every connection in a [`ConnTracker`]. Each
//! connection gets a [`ConnHandle`], handed to every HTTP request as connect info
//! ([`TrackedAddr`]): it counts the bytes written to the connection and closes it at the
//! *transport* level (reads report end-of-file, writes fail, a write stuck on a full TCP
//! window wakes up). That close serves three jobs: the graceful drain
//! ([`ConnTracker::drain`]), dropping a slow consumer, and kicking a revoked session whose
//! queue cannot take a polite close. Stock Socket.IO clients see a transport close and
//! reconnect — through the load balancer, possibly to another node; a Socket.IO DISCONNECT
//! packet would stop them from reconnecting.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::Metrics;

/// One TCP connection, shared by the listener and whoever may need to close it.
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<ConnShared>);

#[derive(Debug)]
struct ConnShared {
    close: CancellationToken,
    written: AtomicU64,
    gone: AtomicBool,
}

impl ConnHandle {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ConnShared {
            close: CancellationToken::new(),
            written: AtomicU64::new(0),
            gone: AtomicBool::new(false),
        }))
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

/// The connect info of every request: the peer address and the connection's handle.
#[derive(Debug, Clone)]
pub struct TrackedAddr {
    /// The peer.
    pub peer: SocketAddr,
    /// The TCP connection the request came on.
    pub conn: ConnHandle,
}

impl Connected<IncomingStream<'_, TrackedListener>> for TrackedAddr {
    fn connect_info(stream: IncomingStream<'_, TrackedListener>) -> Self {
        stream.remote_addr().clone()
    }
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

/// A TCP listener that tracks and limits connections.
pub struct TrackedListener {
    inner: TcpListener,
    tracker: Arc<ConnTracker>,
    metrics: Metrics,
    max_connections: usize,
}

impl TrackedListener {
    /// Wraps `inner`; `max_connections` 0 means no limit.
    pub fn new(
        inner: TcpListener,
        tracker: Arc<ConnTracker>,
        metrics: Metrics,
        max_connections: usize,
    ) -> Self {
        Self {
            inner,
            tracker,
            metrics,
            max_connections,
        }
    }
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = TrackedAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
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
            if self.max_connections > 0 && self.tracker.len() >= self.max_connections {
                self.metrics.tcp_rejected();
                tracing::warn!(%peer, limit = self.max_connections, "connection limit reached");
                drop(stream);
                continue;
            }
            stream.set_nodelay(true).ok();
            let (id, conn) = self.tracker.add();
            self.metrics.tcp_connection(true);
            let stream = TrackedStream {
                inner: stream,
                closed: Box::pin(conn.0.close.clone().cancelled_owned()),
                is_closed: false,
                conn: conn.clone(),
                _guard: Guard {
                    id,
                    tracker: self.tracker.clone(),
                    metrics: self.metrics.clone(),
                },
            };
            return (stream, TrackedAddr { peer, conn });
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(TrackedAddr {
            peer: self.inner.local_addr()?,
            conn: ConnHandle::new(),
        })
    }
}

struct Guard {
    id: u64,
    tracker: Arc<ConnTracker>,
    metrics: Metrics,
}

impl Drop for Guard {
    fn drop(&mut self) {
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
