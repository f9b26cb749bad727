//! The HTTP server loop. `axum::serve` offers no way to configure hyper (its header-read
//! timer stays off without a timer), so connections are served here with hyper's HTTP/1
//! connection builder:
//! - a request head must arrive within `FANOUT_HTTP_HEADER_TIMEOUT_MS` — on a new connection
//!   and between two requests of a kept-alive one (hyper starts the timer whenever it waits
//!   for a head);
//! - a connection with no request in flight, no upgrade and no byte moving for
//!   `FANOUT_HTTP_IDLE_TIMEOUT_MS` is closed (e.g. a response its client stopped reading);
//! - a request whose handler (body included: extractors read it) has not answered within
//!   `FANOUT_HTTP_REQUEST_TIMEOUT_MS` gets 408 and its connection is closed — a body
//!   trickled in a byte at a time is never idle, but it is late;
//! - upgrades (WebSocket, Socket.IO) are handed over by hyper and leave this loop: their
//!   liveness is the transports' business (pings), their close the [`ConnHandle`]'s;
//! - every request gets the connection's [`TrackedAddr`] as [`ConnectInfo`];
//! - on shutdown, the listener closes and every connection finishes its request in flight,
//!   then closes (graceful), while [`crate::serve`] drains the upgraded ones.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error::AppError;
use crate::listener::{ConnHandle, TrackedAddr, TrackedListener, TrackedStream};
use crate::metrics::{HttpClose, Metrics};

/// The HTTP timeouts.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Time to receive a complete request head.
    pub header: Duration,
    /// Time a connection may stay idle.
    pub idle: Duration,
    /// Time a request may take to be answered.
    pub request: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets every
/// connection finish the request it is serving and returns once all are closed.
pub async fn run(
    mut listener: TrackedListener,
    router: Router,
    timeouts: HttpTimeouts,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    // Every connection task holds a receiver: `closed()` resolves when all are gone.
    let (alive_tx, alive_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let task = Connection {
            router: router.clone(),
            timeouts,
            metrics: metrics.clone(),
            stop: stop.clone(),
            _alive: alive_rx.clone(),
        };
        tokio::spawn(task.serve(stream, addr));
    }
    drop(listener);
    drop(alive_rx);
    stop.cancel();
    alive_tx.closed().await;
}

/// One connection's serving task.
struct Connection {
    router: Router,
    timeouts: HttpTimeouts,
    metrics: Metrics,
    stop: CancellationToken,
    _alive: watch::Receiver<()>,
}

impl Connection {
    async fn serve(self, stream: TrackedStream, addr: TrackedAddr) {
        let handle = addr.conn.clone();
        let service = ConnService {
            router: self.router,
            addr,
            deadline: self.timeouts.request,
            metrics: self.metrics.clone(),
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.timeouts.header)
            .keep_alive(true);
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut conn = pin!(conn);
        let mut idle = IdleWatch::new(&handle, self.timeouts.idle);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        if err.is_timeout() {
                            self.metrics.http_connection_closed(HttpClose::HeaderTimeout);
                        }
                        tracing::debug!(%err, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(idle.next_check()) => {
                    if idle.expired(&handle) {
                        self.metrics.http_connection_closed(HttpClose::Idle);
                        tracing::debug!("closing an idle HTTP connection");
                        // Dropping the connection closes the socket.
                        return;
                    }
                }
            }
        }
    }
}

/// Tracks whether a connection made progress, checking four times per idle timeout.
struct IdleWatch {
    timeout: Duration,
    last_progress: u64,
    since: Instant,
    next: Instant,
}

impl IdleWatch {
    fn new(conn: &ConnHandle, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            timeout,
            last_progress: conn.progress(),
            since: now,
            next: now + timeout / 4,
        }
    }

    fn next_check(&self) -> Instant {
        self.next
    }

    /// True when the connection has been idle for the whole timeout; schedules the next check.
    fn expired(&mut self, conn: &ConnHandle) -> bool {
        let now = Instant::now();
        self.next = now + self.timeout / 4;
        let progress = conn.progress();
        if conn.busy() || progress != self.last_progress {
            self.last_progress = progress;
            self.since = now;
            return false;
        }
        now.duration_since(self.since) >= self.timeout
    }
}

/// The per-connection hyper service: the router, with the connection's connect info and
/// in-flight accounting.
#[derive(Clone)]
struct ConnService {
    router: Router,
    addr: TrackedAddr,
    deadline: Duration,
    metrics: Metrics,
}

/// 408 with the usual error body; `Connection: close`, since the request (its body) was not
/// read to its end.
fn request_timeout() -> Response<Body> {
    let err = AppError::bad_request("request not complete in time");
    let mut response = (StatusCode::REQUEST_TIMEOUT, axum::Json(err.body())).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// For a WebSocket upgrade outside the Socket.IO path (`/ws`): the request's URI and header
/// values copied into allocations of their own. hyper parses them as slices of the
/// connection's 8 KiB read buffer, and whatever the upgraded connection keeps of its request
/// would keep that buffer with it. Socket.IO requests are trimmed and copied later, after the
/// layers that read their headers ([`crate::sio::request`]); other requests are left alone.
fn own_parts(req: Request<Body>) -> Request<Body> {
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if !upgrade || req.uri().path().starts_with("/socket.io") {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    for value in parts.headers.values_mut() {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
    Request::from_parts(parts, body)
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.addr.conn.request_started();
        let mut req = own_parts(req.map(Body::new));
        req.extensions_mut().insert(ConnectInfo(self.addr.clone()));
        let router = self.router.clone();
        let (deadline, metrics) = (self.deadline, self.metrics.clone());
        Box::pin(async move {
            let response = tokio::time::timeout(deadline, router.oneshot(req)).await;
            drop(in_flight);
            match response {
                Ok(response) => response,
                Err(_) => {
                    metrics.http_connection_closed(HttpClose::RequestTimeout);
                    Ok(request_timeout())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `part` lies inside `buf`.
    fn inside(buf: &bytes::Bytes, part: &[u8]) -> bool {
        let range = buf.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    /// What hyper does: URI and header values as slices of the read buffer. After
    /// `own_parts`, nothing of a `/ws` upgrade points into it any more; Socket.IO requests
    /// are left to `sio::request`, anything else is left alone.
    #[test]
    fn ws_upgrades_let_go_of_the_read_buffer() {
        let buf = bytes::Bytes::from_static(b"/ws?token=abcdef_____________________ websocket abc");
        let shared = |from: usize, to: usize| buf.slice(from..to);
        let request = |path: bytes::Bytes| {
            let mut req = Request::new(Body::empty());
            *req.uri_mut() = Uri::from_maybe_shared(path).expect("uri");
            req.headers_mut().insert(
                header::UPGRADE,
                HeaderValue::from_maybe_shared(shared(38, 47)).expect("value"),
            );
            req.headers_mut().insert(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_maybe_shared(shared(48, 51)).expect("value"),
            );
            req
        };
        let before = request(shared(0, 16));
        assert!(
            inside(&buf, before.uri().path().as_bytes()),
            "the test's premise"
        );
        let after = own_parts(before);
        assert_eq!(after.uri().query(), Some("token=abcdef"));
        assert!(!inside(&buf, after.uri().path().as_bytes()));
        for value in after.headers().values() {
            assert!(!inside(&buf, value.as_bytes()));
        }
        assert_eq!(after.headers()[header::SEC_WEBSOCKET_KEY], "abc");

        // Socket.IO upgrades are trimmed later; other requests keep their parts as they are.
        for path in ["/socket.io/?EIO=4&transport=websocket", "/api/users"] {
            let mut other = request(shared(0, 10));
            *other.uri_mut() = Uri::from_static(path);
            if path == "/api/users" {
                other.headers_mut().remove(header::UPGRADE);
            }
            let other = own_parts(other);
            assert!(inside(
                &buf,
                other.headers()[header::SEC_WEBSOCKET_KEY].as_bytes()
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_nothing_in_flight_and_nothing_moving() {
        let conn = ConnHandle::new();
        let mut watch = IdleWatch::new(&conn, Duration::from_secs(4));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!watch.expired(&conn));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(watch.expired(&conn), "5 s without progress");

        conn.wrote(10);
        assert!(!watch.expired(&conn), "bytes moved");
        let in_flight = conn.request_started();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!watch.expired(&conn), "a request in flight is never idle");
        drop(in_flight);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!watch.expired(&conn));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(watch.expired(&conn));
    }
}
