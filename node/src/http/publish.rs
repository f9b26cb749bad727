//! `POST /api/publish { topic, data }` → 202: the same publish path as a client's `publish`;
//! `POST /api/stream { name, screen_name, text, user_profile_image }` → 202: a `/stream` item.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::extract::{AppJson, Authed};
use crate::delivery::TopicMessage;
use crate::error::AppError;
use crate::metrics::PublishSource;
use crate::request::publish_request;
use crate::state::AppState;
use crate::topics::authorize_publish;

/// Publishes to a topic on behalf of the token's user (model topics: 403).
pub async fn publish_post(
    State(state): State<AppState>,
    Authed(session): Authed,
    AppJson(body): AppJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    let (topic, data) = publish_request(body)?;
    authorize_publish(&session, &topic)?;
    let msg = TopicMessage::new(topic, data)?;
    state.delivery.publish(&msg, PublishSource::Rest).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "ok": true }))))
}

/// Publishes a stream item to every node's `/stream` sockets.
pub async fn stream_post(
    State(state): State<AppState>,
    _auth: Authed,
    AppJson(item): AppJson<crate::sio::stream::StreamItem>,
) -> Result<impl IntoResponse, AppError> {
    item.validate()?;
    crate::sio::stream::publish_item(&state, &item).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "ok": true }))))
}
