//! Extractors that answer in fanout's error shape: [`AppJson`] (JSON bodies; malformed,
//! oversized or wrongly typed ones become `{ error }` with 400/413/415/422), [`Authed`]
//! (a valid access token from `Authorization: <token>`, `Authorization: Bearer <token>` or
//! `?access_token=`, as LoopBack accepts) and [`ClientIp`] (the client's address, for
//! throttles).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::Session;
use crate::error::{AppError, Code};
use crate::listener::TrackedAddr;
use crate::peer::TrustedProxies;
use crate::state::AppState;

/// The address of the client that sent a request, as throttles see it.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let proxies = TrustedProxies::new(state.cfg.trusted_proxies.0.clone());
        Ok(ClientIp(client_ip(parts, &proxies)))
    }
}

/// The client's address: the TCP peer of the connection the request came on, or — when that
/// peer is one of `FANOUT_TRUSTED_PROXIES` — the client it forwarded for (the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy; see [`TrustedProxies::client_ip`]).
/// `X-Forwarded-For` from any other peer is ignored: any client can set it. IPv4-mapped IPv6
/// peers count as their IPv4 address. Without connect info (a router served without it, in
/// tests) every request counts as `0.0.0.0`.
pub fn client_ip(parts: &Parts, proxies: &TrustedProxies) -> IpAddr {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<TrackedAddr>>()
        .map(|info| info.0.peer.ip());
    let Some(peer) = peer else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    };
    proxies.client_ip(peer, &parts.headers).unwrap_or(peer)
}

/// A JSON body whose rejection is an [`AppError`].
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(AppJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    let code = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
        StatusCode::UNPROCESSABLE_ENTITY => Code::ValidationFailed,
        _ => Code::BadRequest,
    };
    AppError::new(code, rejection.body_text())
}

/// The caller's session, from a valid access token.
pub struct Authed(pub Session);

impl FromRequestParts<AppState> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = token_from_parts(parts)
            .ok_or_else(|| AppError::unauthorized("an access token is required"))?;
        match state.auth.authenticate(Some(&token), None).await {
            Ok(session) => Ok(Authed(session)),
            Err(failure) => {
                state.metrics.auth_failed(failure.as_str());
                Err(failure.to_app_error())
            }
        }
    }
}

/// Reads the token from `Authorization` (raw or `Bearer`) or the `access_token` query.
fn token_from_parts(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let mut words = value.to_str().ok()?.split_whitespace();
        let first = words.next().unwrap_or("");
        let token = if first.eq_ignore_ascii_case("bearer") {
            words.next().unwrap_or("")
        } else {
            first
        };
        return (!token.is_empty()).then(|| token.to_string());
    }
    parts.uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "access_token" && !value.is_empty()).then(|| value.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: Option<&str>, uri: &str) -> Parts {
        let mut builder = axum::http::Request::builder().uri(uri);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn token_sources() {
        assert_eq!(
            token_from_parts(&parts(Some("abc"), "/")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_parts(&parts(Some("Bearer abc"), "/")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_parts(&parts(None, "/x?a=1&access_token=t")).as_deref(),
            Some("t")
        );
        assert_eq!(token_from_parts(&parts(Some("Bearer "), "/")), None);
        assert_eq!(token_from_parts(&parts(None, "/x")), None);
    }

    #[test]
    fn client_ip_is_the_tcp_peer_unless_a_trusted_proxy_forwarded() {
        let none = TrustedProxies::new(vec![]);
        let client_ip = |p: &Parts| super::client_ip(p, &none);
        let mut p = parts(None, "/");
        assert_eq!(client_ip(&p), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let peer = |addr: &str| {
            axum::extract::ConnectInfo(TrackedAddr {
                peer: addr.parse().unwrap(),
                conn: crate::listener::ConnHandle::new(),
            })
        };
        p.extensions.insert(peer("127.0.0.2:5000"));
        p.headers
            .insert("x-forwarded-for", "10.9.9.9".parse().unwrap());
        assert_eq!(client_ip(&p), "127.0.0.2".parse::<IpAddr>().unwrap());
        p.extensions.insert(peer("[::ffff:10.0.0.7]:5000"));
        assert_eq!(client_ip(&p), "10.0.0.7".parse::<IpAddr>().unwrap());
        p.extensions.insert(peer("[2001:db8::1]:5000"));
        assert_eq!(client_ip(&p), "2001:db8::1".parse::<IpAddr>().unwrap());
        // From a trusted proxy, the client it forwarded for.
        let lb = TrustedProxies::new(vec!["127.0.0.2/32".parse().unwrap()]);
        p.extensions.insert(peer("127.0.0.2:5000"));
        assert_eq!(
            super::client_ip(&p, &lb),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }
}
