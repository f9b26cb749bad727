//! The HTTP side: every route in one place ([`router`]), JSON errors for unknown routes and
//! methods, body size limit, CORS, request metrics, the drain guard that refuses new
//! Socket.IO sessions and WebSocket upgrades while the node drains, and the per-client
//! connection cap for WebSocket upgrades that come through a trusted proxy.

pub mod extract;
pub mod models;
pub mod ops;
pub mod pages;
pub mod publish;
pub mod users;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::error::{AppError, Code};
use crate::listener::TrackedAddr;
use crate::metrics::Refusal;
use crate::peer::ClientLimits;
use crate::state::AppState;

/// The REST API and operations routes (the Socket.IO layer is added by the caller).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/users", post(users::users_create))
        .route("/api/users/login", post(users::users_login))
        .route("/api/users/logout", post(users::users_logout))
        .route(
            "/api/models/{model}",
            get(models::models_list).post(models::models_create),
        )
        .route(
            "/api/models/{model}/{id}",
            get(models::models_get)
                .put(models::models_replace)
                .patch(models::models_patch)
                .delete(models::models_delete),
        )
        .route("/api/publish", post(publish::publish_post))
        .route("/api/stream", post(publish::stream_post))
        .route("/ws", get(crate::ws::ws_upgrade))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(pages::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.cfg.max_payload))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ));
    api.with_state(state)
}

/// Layers that wrap the Socket.IO service too: CORS, the drain guard and the per-client cap
/// on proxied WebSocket upgrades.
pub fn outer_layers(router: Router, state: &AppState, limits: &ClientLimits) -> Router {
    let mut router = router.layer(middleware::from_fn_with_state(state.clone(), drain_guard));
    if limits.per_ip.enabled() {
        router = router.layer(middleware::from_fn_with_state(
            (state.clone(), limits.clone()),
            forwarded_ip_limit,
        ));
    }
    router.layer(cors(&state.cfg.cors_origins))
}

/// `FANOUT_MAX_CONNECTIONS_PER_IP` for clients behind a trusted proxy. The listener counts
/// direct peers at accept; a proxy's connection carries many clients, so here a WebSocket
/// upgrade from a trusted proxy takes a slot for the client address of `X-Forwarded-For`
/// and its connection holds it until it closes (a proxy tunnels one WebSocket per backend
/// connection). Other proxied requests (REST, long-polling) are not counted: they hold no
/// connection of their own. A trusted proxy that sends no usable header is not limited.
async fn forwarded_ip_limit(
    State((state, limits)): State<(AppState, ClientLimits)>,
    req: Request,
    next: Next,
) -> Response {
    let Some(addr) = req
        .extensions()
        .get::<ConnectInfo<TrackedAddr>>()
        .map(|info| info.0.clone())
    else {
        return next.run(req).await;
    };
    let peer = addr.peer.ip();
    if !is_upgrade(&req) || !limits.proxies.contains(peer) || addr.conn.holds_ip_slot() {
        return next.run(req).await;
    }
    let Some(client) = limits.proxies.client_ip(peer, req.headers()) else {
        return next.run(req).await;
    };
    match limits.per_ip.try_acquire(client) {
        Some(slot) => {
            addr.conn.hold_ip_slot(slot);
            next.run(req).await
        }
        None => {
            state.metrics.connection_refused(Refusal::PerIpForwarded);
            tracing::debug!(%client, "per-address connection cap reached (forwarded)");
            AppError::new(
                Code::TooManyConnections,
                "too many connections from this address",
            )
            .into_response()
        }
    }
}

fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
        ]);
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(Any);
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    layer
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
}

async fn not_found() -> AppError {
    AppError::not_found("no such route")
}

async fn method_not_allowed() -> Response {
    let err = AppError::new(Code::BadRequest, "method not allowed on this route");
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(err.body())).into_response()
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    state
        .metrics
        .http_request(&route, response.status().as_u16());
    response
}

/// While draining: new Socket.IO sessions (no `sid`) and `/ws` upgrades get 503, so load
/// balancers and clients go to another node; existing sessions keep working until closed.
/// Every Socket.IO upgrade request passes by here too and gets its session linked to its
/// TCP connection ([`crate::sio::link_upgrade`]).
async fn drain_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.readiness.is_draining() && is_new_session(&req) {
        return AppError::new(Code::Unavailable, "node is draining").into_response();
    }
    let (parts, body) = req.into_parts();
    crate::sio::link_upgrade(&state, &parts);
    next.run(Request::from_parts(parts, body)).await
}

fn is_new_session(req: &Request) -> bool {
    let path = req.uri().path();
    if path == "/ws" {
        return true;
    }
    path.starts_with("/socket.io")
        && !req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|pair| pair.starts_with("sid="))
}
