//! `POST /api/users`, `POST /api/users/login`, `POST /api/users/logout` (LoopBack shapes).
//!
//! Signups and logins pass their throttles ([`crate::auth::throttle`]) before any lookup or
//! password work, then queue their argon2 job fairly ([`crate::auth::hashing`]); refusals are
//! 429 (or 503 when the whole hashing queue is full) with `Retry-After`, counted in
//! `fanout_credentials_throttled_total`. A login for an unknown account checks the password
//! against a dummy hash, so it takes as long as a wrong password.

use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AppJson, Authed, ClientIp};
use crate::auth::hashing::HashError;
use crate::auth::throttle::Throttled;
use crate::auth::{hash_token, new_token, now_rfc3339};
use crate::error::{AppError, Code};
use crate::events::publish_revocation;
use crate::state::AppState;
use crate::store::{NewUser, TokenRecord, User};

/// A refused signup or login: an [`AppError`], plus `Retry-After` (seconds) for throttles.
pub struct CredentialError {
    error: AppError,
    retry_after: Option<u64>,
}

impl From<AppError> for CredentialError {
    fn from(error: AppError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl IntoResponse for CredentialError {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Which endpoint a refusal is counted under.
#[derive(Clone, Copy)]
enum Route {
    Signup,
    Login,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::Signup => "signup",
            Route::Login => "login",
        }
    }
}

fn throttled(state: &AppState, route: Route, refusal: Throttled) -> CredentialError {
    state
        .metrics
        .credentials_throttled(route.as_str(), refusal.limit.as_str());
    let secs = refusal.retry_after_secs();
    CredentialError {
        error: AppError::new(
            Code::RateLimited,
            format!("too many attempts, retry in {secs} s"),
        ),
        retry_after: Some(secs),
    }
}

fn hash_refused(state: &AppState, route: Route, err: HashError) -> CredentialError {
    let (limit, code, message) = match err {
        HashError::Failed(error) => return error.into(),
        HashError::SourceBusy => (
            "hash_per_ip",
            Code::RateLimited,
            "too many logins in progress from your address, retry shortly",
        ),
        HashError::QueueFull => (
            "hash_queue",
            Code::Unavailable,
            "too many logins in progress, retry shortly",
        ),
    };
    state.metrics.credentials_throttled(route.as_str(), limit);
    CredentialError {
        error: AppError::new(code, message),
        retry_after: Some(1),
    }
}

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

/// Creates a user → 201 `{ id, username, email }`. Invalid bodies are refused before the
/// throttle counts them (they cost no password work).
pub async fn users_create(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<CreateUser>,
) -> Result<impl IntoResponse, CredentialError> {
    validate_username(&body.username)?;
    let email = body.email.trim().to_lowercase();
    crate::email::validate_email(&email)?;
    let len = body.password.chars().count();
    if !(MIN_PASSWORD_LEN..=1024).contains(&len) {
        return Err(
            AppError::invalid(format!("password: {MIN_PASSWORD_LEN} to 1024 characters")).into(),
        );
    }
    let accounts = &state.accounts;
    accounts
        .throttle
        .check_signup(ip)
        .map_err(|refusal| throttled(&state, Route::Signup, refusal))?;
    let password_hash = accounts
        .hasher
        .hash(ip, body.password)
        .await
        .map_err(|err| hash_refused(&state, Route::Signup, err))?;
    let user = state
        .stores
        .users
        .create(NewUser {
            username: body.username,
            email,
            password_hash,
        })
        .await
        .map_err(AppError::from)?;
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

/// Longest password a login checks; longer ones fail like a wrong password, without hashing.
const MAX_LOGIN_PASSWORD_BYTES: usize = 4096;

/// Logs in → 200 `{ id: <token>, ttl, created, userId }`.
pub async fn users_login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<Login>,
) -> Result<impl IntoResponse, CredentialError> {
    let ttl = match &body.ttl {
        None | Some(Value::Null) => state.cfg.token_ttl,
        Some(v) => v
            .as_u64()
            .filter(|ttl| *ttl > 0)
            .ok_or_else(|| AppError::invalid("ttl must be a positive number of seconds"))?
            .min(state.cfg.token_max_ttl),
    };
    // The throttle key names the account as given: `username:<name>` or `email:<address>`.
    let (account, email) = match (&body.username, &body.email) {
        (Some(username), _) => (format!("username:{username}"), None),
        (None, Some(email)) => {
            let email = email.trim().to_lowercase();
            (format!("email:{email}"), Some(email))
        }
        (None, None) => return Err(AppError::invalid("username or email is required").into()),
    };
    let accounts = &state.accounts;
    accounts
        .throttle
        .check_login(ip, &account)
        .map_err(|refusal| throttled(&state, Route::Login, refusal))?;
    let users = &state.stores.users;
    let user = match (&body.username, email) {
        (Some(username), _) => users.find_by_username(username).await,
        (None, Some(email)) => users.find_by_email(&email).await,
        (None, None) => Ok(None),
    }
    .map_err(AppError::from)?;
    let login_failed = || {
        state.metrics.auth_failed("login_failed");
        CredentialError::from(AppError::unauthorized("login failed"))
    };
    if body.password.len() > MAX_LOGIN_PASSWORD_BYTES {
        return Err(login_failed());
    }
    // An unknown account is checked against the dummy hash: the same work, always false.
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    let matches = accounts
        .hasher
        .verify(ip, body.password, stored)
        .await
        .map_err(|err| hash_refused(&state, Route::Login, err))?;
    let Some(user) = user.filter(|_| matches) else {
        return Err(login_failed());
    };
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
        .await
        .map_err(AppError::from)?;
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
/// the delete (best effort), for a client that re-authenticated in between. The answer waits
/// (at most [`REVOCATION_WAIT`]) until this node has applied the revocation.
pub async fn users_logout(
    State(state): State<AppState>,
    Authed(session): Authed,
) -> Result<impl IntoResponse, AppError> {
    let hash = &session.token_hash;
    let applied = state.connections.revocation_waiter(hash);
    let revoked = async {
        publish_revocation(&state, hash).await?;
        state.stores.tokens.revoke(hash).await?;
        Ok::<_, AppError>(())
    };
    if let Err(err) = revoked.await {
        drop(applied);
        state.connections.forget_revocation_waiters(hash);
        return Err(err);
    }
    if let Err(err) = publish_revocation(&state, hash).await {
        tracing::warn!(%err, "second revocation message not sent; re-validation covers it");
    }
    // Answer once this node has applied the revocation (every node read it from Redis at the
    // same moment), so a request sent after the answer finds the sessions ended.
    if tokio::time::timeout(REVOCATION_WAIT, applied)
        .await
        .is_err()
    {
        state.connections.forget_revocation_waiters(hash);
        tracing::warn!("revocation not back from the bus in time; re-validation covers it");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// How long a logout waits for its own revocation message before it answers anyway.
const REVOCATION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
