//! WebSocket handshakes answered by fanout itself, for both transports: `/ws` and Socket.IO's
//! `transport=websocket`. [`accept`] checks the handshake (RFC 6455 4.2.1), takes the pending
//! upgrade out of the request and builds the `101 Switching Protocols` answer; the caller
//! spawns what runs on the connection once hyper hands it over ([`Accepted::connection`]).
//! Answering here rather than in axum's extractor or engineioxide lets fanout own what each
//! transport keeps per connection (see `crate::sio::request`).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Why a request is not a WebSocket handshake (the statuses axum's extractor answers).
#[derive(Debug, thiserror::Error)]
pub enum NotWebSocket {
    /// No `Connection: upgrade`.
    #[error("Connection header did not include 'upgrade'")]
    Connection,
    /// No `Upgrade: websocket`.
    #[error("`Upgrade` header did not include 'websocket'")]
    Upgrade,
    /// A WebSocket version other than 13.
    #[error("`Sec-WebSocket-Version` header did not include '13'")]
    Version,
    /// No key to answer.
    #[error("`Sec-WebSocket-Key` header missing")]
    Key,
    /// The connection cannot be upgraded (no pending upgrade: HTTP/2, or a test request).
    #[error("WebSocket request couldn't be upgraded since no upgrade state was present")]
    NotUpgradable,
}

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        let status = match self {
            NotWebSocket::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

/// An accepted handshake: the `101` to answer and the connection to come.
pub struct Accepted {
    /// The `101 Switching Protocols` response.
    pub response: Response,
    /// Resolves to the connection once hyper has sent the response.
    pub upgrade: OnUpgrade,
}

impl Accepted {
    /// The upgraded connection, or `None` when the client went away before the switch.
    pub async fn connection(upgrade: OnUpgrade) -> Option<TokioIo<Upgraded>> {
        upgrade.await.ok().map(TokioIo::new)
    }
}

/// True when header `name` lists `token` (comma-separated, case-insensitive).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Checks the handshake headers (RFC 6455 4.2.1); returns the key to answer.
fn handshake_key(headers: &HeaderMap) -> Result<&HeaderValue, NotWebSocket> {
    if !lists(headers, header::CONNECTION, "upgrade") {
        return Err(NotWebSocket::Connection);
    }
    if !lists(headers, header::UPGRADE, "websocket") {
        return Err(NotWebSocket::Upgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(NotWebSocket::Version);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(NotWebSocket::Key)
}

/// Accepts a WebSocket handshake: checks it, takes the pending upgrade out of `req` (nothing
/// else is taken) and builds the `101`.
pub fn accept<B>(req: &mut Request<B>) -> Result<Accepted, NotWebSocket> {
    let accept = derive_accept_key(handshake_key(req.headers())?.as_bytes());
    let upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or(NotWebSocket::NotUpgradable)?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(Accepted { response, upgrade })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> Request<()> {
        Request::get("/ws")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .expect("request")
    }

    #[test]
    fn handshake_headers_are_checked() {
        let mut headers = HeaderMap::new();
        assert!(matches!(
            handshake_key(&headers),
            Err(NotWebSocket::Connection)
        ));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(matches!(
            handshake_key(&headers),
            Err(NotWebSocket::Upgrade)
        ));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(matches!(
            handshake_key(&headers),
            Err(NotWebSocket::Version)
        ));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(matches!(handshake_key(&headers), Err(NotWebSocket::Key)));
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(
            handshake_key(&headers).ok(),
            Some(&HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
        );
        assert_eq!(
            NotWebSocket::Key.into_response().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_request_that_cannot_be_upgraded_is_refused() {
        // No pending upgrade in a request built by hand.
        let err = accept(&mut handshake()).err();
        assert!(matches!(err, Some(NotWebSocket::NotUpgradable)));
        assert_eq!(
            NotWebSocket::NotUpgradable.into_response().status(),
            StatusCode::UPGRADE_REQUIRED
        );
        // RFC 6455's own example key and answer.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
