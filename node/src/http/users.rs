//! `POST /api/users`, `POST /api/users/login`, `POST /api/users/logout` (LoopBack shapes).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AppJson, Authed};
use crate::auth::{hash_password, hash_token, new_token, now_rfc3339, verify_password};
use crate::error::AppError;
use crate::events::publish_revocation;
use crate::state::AppState;
use crate::store::{NewUser, TokenRecord, User};

/// `POST /api/users` body.
#[derive(Deserialize)]
pub struct CreateUser {
    username: String,
    email: String,
    password: String,
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 6;

fn validate_username(username: &str) -> Result<(), AppError> {
    let len = username.chars().count();
    if !(1..=64).contains(&len)
        || username
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AppError::invalid("username: 1 to 64 characters, no spaces"));
    }
    Ok(())
}

/// Creates a user → 201 `{ id, username, email }`.
pub async fn users_create(
    State(state): State<AppState>,
    AppJson(body): AppJson<CreateUser>,
) -> Result<impl IntoResponse, AppError> {
    validate_username(&body.username)?;
    let email = body.email.trim().to_lowercase();
    crate::email::validate_email(&email)?;
    let len = body.password.chars().count();
    if !(MIN_PASSWORD_LEN..=1024).contains(&len) {
        return Err(AppError::invalid(format!(
            "password: {MIN_PASSWORD_LEN} to 1024 characters"
        )));
    }
    let password_hash = hash_password(body.password).await?;
    let user = state
        .stores
        .users
        .create(NewUser {
            username: body.username,
            email,
            password_hash,
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(public_user(&user))))
}

fn public_user(user: &User) -> Value {
    json!({ "id": user.id, "username": user.username, "email": user.email })
}

/// `POST /api/users/login` body.
#[derive(Deserialize)]
pub struct Login {
    username: Option<String>,
    email: Option<String>,
    password: String,
    ttl: Option<Value>,
}

/// Logs in → 200 `{ id: <token>, ttl, created, userId }`.
pub async fn users_login(
    State(state): State<AppState>,
    AppJson(body): AppJson<Login>,
) -> Result<impl IntoResponse, AppError> {
    let ttl = match &body.ttl {
        None | Some(Value::Null) => state.cfg.token_ttl,
        Some(v) => v
            .as_u64()
            .filter(|ttl| *ttl > 0)
            .ok_or_else(|| AppError::invalid("ttl must be a positive number of seconds"))?
            .min(state.cfg.token_max_ttl),
    };
    let user = match (&body.username, &body.email) {
        (Some(username), _) => state.stores.users.find_by_username(username).await?,
        (None, Some(email)) => {
            state
                .stores
                .users
                .find_by_email(&email.trim().to_lowercase())
                .await?
        }
        (None, None) => return Err(AppError::invalid("username or email is required")),
    };
    let login_failed = || AppError::unauthorized("login failed");
    let Some(user) = user else {
        state.metrics.auth_failed("login_failed");
        return Err(login_failed());
    };
    if body.password.len() > 4096
        || !verify_password(body.password, user.password_hash.clone()).await?
    {
        state.metrics.auth_failed("login_failed");
        return Err(login_failed());
    }
    let token = new_token();
    let record = TokenRecord {
        user_id: user.id,
        ttl,
        created: now_rfc3339(),
        scopes: Vec::new(),
    };
    state
        .stores
        .tokens
        .insert(&hash_token(&token), &record)
        .await?;
    Ok(axum::Json(json!({
        "id": token,
        "ttl": record.ttl,
        "created": record.created,
        "userId": record.user_id,
    })))
}

/// Logs out → 204; the token dies and its sessions end on every node. Safe to retry: the
/// revocation is published *before* the token is deleted, so when either step fails (503)
/// the token is still valid and a retry does both again; it is published once more after
/// the delete (best effort), for a client that re-authenticated in between.
pub async fn users_logout(
    State(state): State<AppState>,
    Authed(session, _token): Authed,
) -> Result<impl IntoResponse, AppError> {
    publish_revocation(&state, &session.token_hash).await?;
    state.stores.tokens.revoke(&session.token_hash).await?;
    if let Err(err) = publish_revocation(&state, &session.token_hash).await {
        tracing::warn!(%err, "second revocation message not sent; re-validation covers it");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_validation() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username(&"x".repeat(65)).is_err());
    }
}
