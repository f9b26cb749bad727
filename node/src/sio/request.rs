//! What a Socket.IO session keeps of the request that opened it, and the WebSocket
//! handshakes fanout answers itself.
//!
//! engineioxide keeps the `Parts` of a session's first request for the session's whole life
//! (and, when it answers a WebSocket handshake itself, the upgrade request inside the task
//! that runs the WebSocket). As hyper parsed them, their URI and header values are slices of
//! the connection's 8 KiB read buffer, and their extensions hold axum's clone of the URI and
//! hyper's pending upgrade: kept whole, they pin that buffer and every header a browser sent
//! (cookies, user agent, …) — kilobytes per idle connection that nothing reads again.
//! [`SocketIoEntry`] runs in front of the Socket.IO service, after the layers that look at the
//! request (CORS, drain guard, per-address limits, the upgrade link):
//! - every request to the Socket.IO path is trimmed ([`slim_request`]) to its own small copy
//!   of what the Engine.IO layer reads: the URI (`EIO`, `transport`, `sid` are in its query),
//!   `Sec-WebSocket-Key` and `Content-Type` (long-polling bodies), and the extensions hyper
//!   and fanout need later — the pending upgrade and the connection's [`TrackedAddr`]
//!   ([`crate::sio::websocket_conn`]);
//! - a well-formed WebSocket handshake that opens a session (`GET`, first `EIO` is `4`, first
//!   `transport` is `websocket`, no `sid`) is answered here ([`crate::upgrade::accept`], as
//!   for `/ws`) and its connection handed to the Socket.IO service once upgraded, with
//!   nothing but the URI and the [`TrackedAddr`]: no task of engineioxide waits for the
//!   upgrade holding the request. The upgrade of a long-polling session (with `sid`) goes to
//!   engineioxide's own path, which closes the session when the upgrade fails (the raw-socket
//!   entry would leave it stuck "upgrading"); so does anything else, which it answers as
//!   before, errors included. Parameters are read as engineioxide reads them: first
//!   occurrence, and the path is `/socket.io` or under `/socket.io/`.
//!
//! Everything else is dropped, so the Socket.IO handlers see no request header: anything that
//! must look at headers does it in a layer before this one.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use futures_util::future::Either;
use hyper::upgrade::OnUpgrade;
use tower::{Service, ServiceExt};

use super::polling::NodeService;
use crate::listener::TrackedAddr;
use crate::upgrade::{self, Accepted};

/// The request headers the Engine.IO layer reads.
const KEPT_HEADERS: [header::HeaderName; 2] = [header::SEC_WEBSOCKET_KEY, header::CONTENT_TYPE];

/// For a request to the Socket.IO path: the same request with fresh, owned copies of only
/// what the Engine.IO layer reads (see the module doc). Other requests pass unchanged.
pub fn slim_request(req: Request<Body>) -> Request<Body> {
    if !is_socket_io(&req) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(KEPT_HEADERS.len());
    for name in KEPT_HEADERS {
        if let Some(value) = parts.headers.get(&name)
            && let Ok(copy) = HeaderValue::from_bytes(value.as_bytes())
        {
            headers.insert(name, copy);
        }
    }
    parts.headers = headers;
    let mut extensions = Extensions::new();
    if let Some(upgrade) = parts.extensions.remove::<OnUpgrade>() {
        extensions.insert(upgrade);
    }
    if let Some(addr) = parts.extensions.remove::<ConnectInfo<TrackedAddr>>() {
        extensions.insert(addr);
    }
    parts.extensions = extensions;
    Request::from_parts(parts, body)
}

/// Whether `req` is for the Socket.IO path: `/socket.io` or under `/socket.io/` (the rule
/// engineioxide routes by; `/socket.io-admin` is not).
fn is_socket_io<B>(req: &Request<B>) -> bool {
    req.uri()
        .path()
        .strip_prefix("/socket.io")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The first value of query parameter `name`, the one engineioxide reads.
fn first_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Whether a Socket.IO request opens a new session over WebSocket, as engineioxide would
/// read it (see the module doc); anything else is the Engine.IO service's to answer.
fn opens_websocket_session<B>(req: &Request<B>) -> bool {
    if req.method() != Method::GET || !is_socket_io(req) {
        return false;
    }
    let query = req.uri().query().unwrap_or("");
    first_param(query, "EIO") == Some("4")
        && first_param(query, "transport") == Some("websocket")
        && first_param(query, "sid").is_none()
}

/// The entry to the node's Socket.IO service (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct SocketIoEntry {
    service: NodeService,
}

impl SocketIoEntry {
    /// An entry in front of `service`.
    pub fn new(service: NodeService) -> Self {
        Self { service }
    }

    /// Answers a WebSocket handshake and hands the connection to the Socket.IO service once
    /// upgraded. `None`, with `req` untouched, when it is not a handshake fanout answers.
    fn accept_websocket(&self, req: &mut Request<Body>) -> Option<Response<Body>> {
        if !opens_websocket_session(req) {
            return None;
        }
        let accepted = upgrade::accept(req).ok()?;
        let mut session_req = Request::new(());
        if let Ok(uri) = Uri::try_from(req.uri().to_string()) {
            *session_req.uri_mut() = uri;
        }
        if let Some(addr) = req.extensions().get::<ConnectInfo<TrackedAddr>>() {
            session_req.extensions_mut().insert(addr.clone());
        }
        let service = self.service.clone();
        tokio::spawn(async move {
            let Some(conn) = Accepted::connection(accepted.upgrade).await else {
                return;
            };
            // Starts the session's tasks and returns (the query was checked above).
            if let Err(err) = hyper::service::Service::call(&service, (conn, session_req)).await {
                tracing::debug!(%err, "Socket.IO WebSocket refused after its upgrade");
            }
        });
        Some(accepted.response)
    }
}

type EntryFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl Service<Request<Body>> for SocketIoEntry {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<Body>, Infallible>>, EntryFuture>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every call goes to a clone of the service (`oneshot`), which waits for readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let mut req = req;
        if let Some(response) = self.accept_websocket(&mut req) {
            return Either::Left(ready(Ok(response)));
        }
        let req = slim_request(req);
        let service = self.service.clone();
        Either::Right(Box::pin(async move {
            let response = service.oneshot(req).await?;
            Ok(response.map(Body::new))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::ConnHandle;

    /// Whether `part` lies inside `buf`.
    fn inside(buf: &bytes::Bytes, part: &[u8]) -> bool {
        buf.as_ptr_range().contains(&part.as_ptr())
    }

    /// A request as hyper hands it over: URI and header values are slices of one buffer.
    fn parsed(buf: &bytes::Bytes, path: std::ops::Range<usize>) -> Request<Body> {
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = Uri::from_maybe_shared(buf.slice(path)).expect("uri");
        let value = |from: usize, to: usize| {
            HeaderValue::from_maybe_shared(buf.slice(from..to)).expect("header value")
        };
        let headers = req.headers_mut();
        headers.insert(header::UPGRADE, value(38, 47));
        headers.insert(header::SEC_WEBSOCKET_KEY, value(48, 51));
        headers.insert(header::COOKIE, value(52, 61));
        headers.insert(header::USER_AGENT, value(62, 69));
        let uri = req.uri().clone();
        req.extensions_mut().insert(axum::extract::OriginalUri(uri));
        req.extensions_mut().insert(ConnectInfo(TrackedAddr {
            peer: "127.0.0.1:9".parse().expect("addr"),
            conn: ConnHandle::new(),
        }));
        req
    }

    const RAW: &[u8] = b"/socket.io/?EIO=4&transport=websocket websocket abc session=1 agent/1";

    #[test]
    fn a_socket_io_request_keeps_its_own_copy_of_what_engine_io_reads() {
        let buf = bytes::Bytes::from_static(RAW);
        let before = parsed(&buf, 0..37);
        assert!(inside(&buf, before.uri().path().as_bytes()), "the premise");

        let after = slim_request(before);
        assert_eq!(after.uri().path(), "/socket.io/");
        assert_eq!(after.uri().query(), Some("EIO=4&transport=websocket"));
        assert!(!inside(&buf, after.uri().path().as_bytes()));
        let names: Vec<_> = after.headers().keys().cloned().collect();
        assert_eq!(names, [header::SEC_WEBSOCKET_KEY]);
        let key = &after.headers()[header::SEC_WEBSOCKET_KEY];
        assert_eq!(key, "abc");
        assert!(!inside(&buf, key.as_bytes()));
        assert!(
            after
                .extensions()
                .get::<ConnectInfo<TrackedAddr>>()
                .is_some()
        );
        assert!(
            after
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .is_none(),
            "axum's URI clone points into the buffer"
        );
    }

    #[test]
    fn only_handshakes_that_open_a_websocket_session_are_answered_here() {
        let get = |uri: &str| Request::get(uri).body(()).expect("request");
        for ours in [
            "/socket.io/?EIO=4&transport=websocket",
            "/socket.io/?transport=websocket&t=x&EIO=4",
            "/socket.io?EIO=4&transport=websocket",
            "/socket.io/?EIO=4&transport=websocket&EIO=3",
        ] {
            assert!(opens_websocket_session(&get(ours)), "{ours}");
        }
        for theirs in [
            // A long-polling session's upgrade: engineioxide closes the session if it fails.
            "/socket.io/?EIO=4&transport=websocket&sid=ZzK3Gd9pUbr3ljPA",
            "/socket.io/?EIO=4&transport=websocket&sid=not-a-sid",
            "/socket.io/?EIO=4&transport=polling",
            "/socket.io/?EIO=3&transport=websocket",
            "/socket.io/?EIO=3&EIO=4&transport=websocket",
            "/socket.io/?EIO=4&transport=polling&transport=websocket",
            "/socket.io/?transport=websocket",
            "/socket.io/?EIO=4",
            "/socket.io-admin/?EIO=4&transport=websocket",
            "/ws?EIO=4&transport=websocket",
        ] {
            assert!(!opens_websocket_session(&get(theirs)), "{theirs}");
        }
        let mut post = get("/socket.io/?EIO=4&transport=websocket");
        *post.method_mut() = Method::POST;
        assert!(!opens_websocket_session(&post));
    }

    #[test]
    fn other_requests_pass_unchanged() {
        let buf = bytes::Bytes::from_static(RAW);
        let mut other = parsed(&buf, 0..10);
        *other.uri_mut() = Uri::from_static("/api/users");
        let other = slim_request(other);
        assert_eq!(other.headers().len(), 4);
        assert!(inside(&buf, other.headers()[header::COOKIE].as_bytes()));
        assert!(
            other
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .is_some()
        );
    }

    /// A node in process, serving on a free port until the returned sender is dropped.
    async fn serve_node() -> (
        crate::state::AppState,
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let node = crate::build(
            crate::config::Config::for_tests(),
            crate::methods::MethodRegistry::with_builtins(),
        )
        .await
        .expect("node");
        let state = node.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::serve(node, listener, async move {
            stopped.await.ok();
        }));
        (state, addr, stop)
    }

    /// What the sockets of `/chat` kept of their opening requests, once `count` are there.
    async fn kept_parts(
        state: &crate::state::AppState,
        count: usize,
    ) -> Vec<axum::http::request::Parts> {
        let io = state.delivery.io().expect("io").clone();
        for _ in 0..200 {
            let sockets = io.of(crate::sio::chat::NAMESPACE).expect("ns").sockets();
            if sockets.len() >= count {
                return sockets.iter().map(|s| s.req_parts().clone()).collect();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no {count} sockets on /chat");
    }

    /// Sends one raw HTTP/1.1 request on a new connection; the whole answer (the request
    /// must say `Connection: close`), or `None` when none came within `within`.
    async fn http(addr: std::net::SocketAddr, request: String) -> String {
        http_within(addr, request, std::time::Duration::from_secs(10))
            .await
            .expect("an answer in time")
    }

    async fn http_within(
        addr: std::net::SocketAddr,
        request: String,
        within: std::time::Duration,
    ) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(request.as_bytes()).await.expect("write");
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await.expect("read");
            String::from_utf8_lossy(&answer).into_owned()
        };
        tokio::time::timeout(within, exchange).await.ok()
    }

    /// Opens a long-polling session (with a cookie and a user agent); its id.
    async fn open_polling_session(addr: std::net::SocketAddr) -> String {
        let open = http(addr, format!(
            "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {addr}\r\nCookie: a=b\r\nUser-Agent: agent/1\r\nConnection: close\r\n\r\n"
        ))
        .await;
        open.split("\"sid\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a session id")
            .to_string()
    }

    fn assert_slim(parts: &axum::http::request::Parts) {
        assert!(
            parts.headers.get(header::COOKIE).is_none(),
            "{:?}",
            parts.headers
        );
        assert!(parts.headers.get(header::USER_AGENT).is_none());
        assert!(parts.extensions.get::<ConnectInfo<TrackedAddr>>().is_some());
        assert!(
            parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .is_none()
        );
        assert_eq!(parts.uri.path(), "/socket.io/");
    }

    /// Real clients over the node's real HTTP stack: a WebSocket session (answered by
    /// `SocketIoEntry`) and a long-polling one (trimmed, answered by engineioxide) keep their
    /// URI and TCP connection but not the cookie and user agent they sent.
    #[tokio::test]
    async fn sessions_keep_no_headers_of_their_opening_requests() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;

        let (state, addr, _stop) = serve_node().await;
        let mut ws_req = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
            .into_client_request()
            .expect("request");
        ws_req.headers_mut().insert(
            header::COOKIE,
            HeaderValue::from_static("session=a-long-cookie"),
        );
        ws_req
            .headers_mut()
            .insert(header::USER_AGENT, HeaderValue::from_static("agent/1"));
        let (mut ws, response) = tokio_tungstenite::connect_async(ws_req)
            .await
            .expect("upgrade");
        assert_eq!(response.status(), 101);
        let open = ws.next().await.expect("open").expect("frame");
        assert!(open.to_text().expect("text").starts_with('0'), "{open:?}");
        ws.send(Message::text("40/chat,")).await.expect("send");
        // The answer to the namespace connect (pings answered on the way).
        let connected = loop {
            let frame = ws.next().await.expect("connect").expect("frame");
            let text = frame.to_text().expect("text").to_string();
            if text == "2" {
                ws.send(Message::text("3")).await.expect("pong");
                continue;
            }
            break text;
        };
        assert!(connected.starts_with("40/chat,"), "{connected}");
        let parts = kept_parts(&state, 1).await;
        assert_slim(&parts[0]);
        assert!(
            parts[0]
                .uri
                .query()
                .is_some_and(|q| q.contains("transport=websocket"))
        );
        assert!(
            parts[0].extensions.get::<OnUpgrade>().is_none(),
            "the upgrade is spent"
        );

        // Long-polling: open, then connect to /chat in a POST, over plain HTTP/1.1.
        let sid = open_polling_session(addr).await;
        let body = "40/chat,";
        let posted = http(addr, format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");
        let parts = kept_parts(&state, 2).await;
        let polling = parts
            .iter()
            .find(|p| {
                p.uri
                    .query()
                    .is_some_and(|q| q.contains("transport=polling"))
            })
            .expect("the polling session");
        assert_slim(polling);
    }

    /// A long-polling session whose WebSocket upgrade fails (the client hangs up before the
    /// probe) is closed, as engineioxide does on its own path: answering that handshake here
    /// would leave the session "upgrading" for good, its polls answered at once and never
    /// timed out.
    #[tokio::test]
    async fn a_failed_upgrade_closes_its_polling_session() {
        let (_state, addr, _stop) = serve_node().await;
        let sid = open_polling_session(addr).await;
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let (ws, response) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        assert_eq!(response.status(), 101);
        drop(ws);
        let poll = format!(
            "GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            last = http_within(addr, poll.clone(), std::time::Duration::from_millis(500)).await;
            if last
                .as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 400"))
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the session outlived its failed upgrade; last poll answer: {last:?}");
    }
}
