//! `/healthz` (the process is alive), `/readyz` (ready for traffic: backend reachable and not
//! draining) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::state::AppState;

/// Always 200 while the process serves HTTP.
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(json!({ "status": "ok", "node": state.node_id }))
}

/// 200 when ready; 503 while draining or while the backend is unreachable.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let draining = state.readiness.is_draining();
    let backend = state.readiness.backend_ready();
    let ready = !draining && backend;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "draining": draining,
        "backend": if backend { "up" } else { "down" },
        "node": state.node_id,
    });
    (status, axum::Json(body))
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
