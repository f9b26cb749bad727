//! Connection tracking and graceful drain. [`TrackedListener`] wraps the TCP listener: it
//! enforces `FANOUT_MAX_CONNECTIONS` and registers every connection in a [`ConnTracker`].
//! [`ConnTracker::drain`] closes the connections in batches at the *transport* level (the
//! TCP stream reports end-of-file), so stock Socket.IO clients see a transport close and
//! reconnect — through the load balancer, to another node. A Socket.IO DISCONNECT packet
//! would stop them from reconnecting.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::Metrics;

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Open connections, each with a token that closes it.
#[derive(Default)]
pub struct ConnTracker {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, CancellationToken>>,
}

impl ConnTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CancellationToken>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&self) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock().insert(id, token.clone());
        (id, token)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes every open connection, `batch` at a time with `pause` between batches, and
    /// returns how many were closed. Connections opened meanwhile are closed too.
    pub async fn drain(&self, batch: usize, pause: Duration) -> usize {
        let mut closed = 0;
        loop {
            let tokens: Vec<CancellationToken> = {
                let open = self.lock();
                open.values()
                    .filter(|t| !t.is_cancelled())
                    .take(batch)
                    .cloned()
                    .collect()
            };
            if tokens.is_empty() {
                return closed;
            }
            closed += tokens.len();
            for token in tokens {
                token.cancel();
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
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
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
                tracing::warn!(%addr, limit = self.max_connections, "connection limit reached");
                drop(stream);
                continue;
            }
            stream.set_nodelay(true).ok();
            let (id, token) = self.tracker.add();
            self.metrics.tcp_connection(true);
            let stream = TrackedStream {
                inner: stream,
                closed: Box::pin(token.cancelled_owned()),
                is_closed: false,
                _guard: Guard {
                    id,
                    tracker: self.tracker.clone(),
                    metrics: self.metrics.clone(),
                },
            };
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
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

/// A TCP stream that reads end-of-file (and refuses writes) once its token is cancelled.
pub struct TrackedStream {
    inner: TcpStream,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    is_closed: bool,
    _guard: Guard,
}

impl TrackedStream {
    fn check_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_closed && self.closed.as_mut().poll(cx).is_ready() {
            self.is_closed = true;
        }
        self.is_closed
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
