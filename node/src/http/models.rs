//! `/api/models/{Model}[/{id}]`: a JSON record store. Every write publishes its LoopBack model
//! event on the events channel: `/Model/POST`, `/Model/<id>/PUT` (PUT and PATCH),
//! `/Model/<id>/DELETE`. All routes need an access token.
//!
//! Permissions follow the model's policy ([`crate::auth::acl`], `FANOUT_MODEL_ACL`): any
//! authenticated user reads; by default only a record's owner (its creator) updates or
//! deletes it (`403 forbidden` otherwise). The owner is kept by the store beside the record,
//! so answers and events carry the record exactly as written. Sizes and counts are limited
//! (`FANOUT_MODEL_*`): 413 for a record too large, 422 `quota_exceeded` for too many records
//! of one user in a model or too many models. Every refusal is counted in
//! `fanout_model_writes_refused_total`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AppJson, Authed};
use crate::auth::Session;
use crate::error::AppError;
use crate::events::publish_model_event;
use crate::methods::FIND_MAX_LIMIT;
use crate::state::AppState;
use crate::store::{Quota, Record, StoreError, WriteAccess};
use crate::topics::is_model_name;

/// Counts a refused write under its reason and turns it into the client's error.
fn refused(state: &AppState, err: StoreError) -> AppError {
    let reason = match &err {
        StoreError::Forbidden => Some("forbidden"),
        StoreError::TooLarge { .. } => Some("too_large"),
        StoreError::Quota(Quota::RecordsPerUser(_)) => Some("user_quota"),
        StoreError::Quota(Quota::Models(_)) => Some("model_quota"),
        _ => None,
    };
    if let Some(reason) = reason {
        state.metrics.model_write_refused(reason);
    }
    err.into()
}

fn read_only(state: &AppState) -> AppError {
    state.metrics.model_write_refused("readonly");
    AppError::forbidden("this model is read-only")
}

/// What an update or delete by `session` must satisfy under the model's policy.
fn write_access(state: &AppState, model: &str, session: &Session) -> Result<WriteAccess, AppError> {
    state
        .cfg
        .model_acl
        .policy(model)
        .write_access(&session.user_id)
        .ok_or_else(|| read_only(state))
}

fn model_name(model: &str) -> Result<&str, AppError> {
    if is_model_name(model) {
        Ok(model)
    } else {
        Err(AppError::invalid(
            "model name: a letter then up to 63 letters, digits or _ (not \"users\")",
        ))
    }
}

fn record_id(id: &str) -> Result<u64, AppError> {
    id.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::not_found("no such record"))
}

fn record_body(body: Value) -> Result<Record, AppError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(AppError::invalid("a record is a JSON object")),
    }
}

/// Query of `GET /api/models/{Model}`.
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /api/models/{Model}` → records in id order (`?limit`, default 100, max 1000).
pub async fn models_list(
    State(state): State<AppState>,
    _auth: Authed,
    Path(model): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    let limit = query.limit.unwrap_or(100).clamp(1, FIND_MAX_LIMIT);
    let records = state.stores.models.list(model_name(&model)?, limit).await?;
    Ok(axum::Json(records))
}

/// `POST /api/models/{Model}` → 201 with the record; publishes `/Model/POST`.
pub async fn models_create(
    State(state): State<AppState>,
    Authed(session): Authed,
    Path(model): Path<String>,
    AppJson(body): AppJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    let model = model_name(&model)?;
    let data = record_body(body)?;
    if !state.cfg.model_acl.policy(model).may_create() {
        return Err(read_only(&state));
    }
    let record = state
        .stores
        .models
        .create(model, &session.user_id, data, &state.cfg.model_limits())
        .await
        .map_err(|err| refused(&state, err))?;
    let id = record.get("id").and_then(Value::as_u64).unwrap_or(0);
    let record = Value::Object(record);
    publish_model_event(&state, model, "POST", id, &record).await?;
    Ok((StatusCode::CREATED, axum::Json(record)))
}

/// `GET /api/models/{Model}/{id}`.
pub async fn models_get(
    State(state): State<AppState>,
    _auth: Authed,
    Path((model, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, AppError> {
    let record = state
        .stores
        .models
        .get(model_name(&model)?, record_id(&id)?)
        .await?
        .ok_or_else(|| AppError::not_found("no such record"))?;
    Ok(axum::Json(record))
}

/// `PUT /api/models/{Model}/{id}`: replaces the record (kept owner); publishes `/Model/<id>/PUT`.
pub async fn models_replace(
    State(state): State<AppState>,
    Authed(session): Authed,
    Path((model, id)): Path<(String, String)>,
    AppJson(body): AppJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    let (model, id) = (model_name(&model)?, record_id(&id)?);
    let data = record_body(body)?;
    let access = write_access(&state, model, &session)?;
    let record = Value::Object(
        state
            .stores
            .models
            .replace(model, id, data, &access, &state.cfg.model_limits())
            .await
            .map_err(|err| refused(&state, err))?,
    );
    publish_model_event(&state, model, "PUT", id, &record).await?;
    Ok(axum::Json(record))
}

/// `PATCH /api/models/{Model}/{id}`: merges fields; publishes `/Model/<id>/PUT`.
pub async fn models_patch(
    State(state): State<AppState>,
    Authed(session): Authed,
    Path((model, id)): Path<(String, String)>,
    AppJson(body): AppJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    let (model, id) = (model_name(&model)?, record_id(&id)?);
    let data = record_body(body)?;
    let access = write_access(&state, model, &session)?;
    let record = Value::Object(
        state
            .stores
            .models
            .patch(model, id, data, &access, &state.cfg.model_limits())
            .await
            .map_err(|err| refused(&state, err))?,
    );
    publish_model_event(&state, model, "PUT", id, &record).await?;
    Ok(axum::Json(record))
}

/// `DELETE /api/models/{Model}/{id}` → `{ count: 1 }`; publishes `/Model/<id>/DELETE` with
/// the deleted record.
pub async fn models_delete(
    State(state): State<AppState>,
    Authed(session): Authed,
    Path((model, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, AppError> {
    let (model, id) = (model_name(&model)?, record_id(&id)?);
    let access = write_access(&state, model, &session)?;
    let record = Value::Object(
        state
            .stores
            .models
            .delete(model, id, &access)
            .await
            .map_err(|err| refused(&state, err))?,
    );
    publish_model_event(&state, model, "DELETE", id, &record).await?;
    Ok(axum::Json(json!({ "count": 1 })))
}
