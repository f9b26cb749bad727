//! Errors at the client boundaries. One list of codes serves HTTP responses, Socket.IO acks
//! and `/ws` replies alike: `{ "error": { "code", "message" } }`. Codes are a bounded set
//! (they are also metric labels).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::store::StoreError;

/// The error codes fanout answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Malformed request (not JSON, wrong shape).
    BadRequest,
    /// Well-formed request whose values are invalid.
    ValidationFailed,
    /// Missing, bad or expired credentials.
    Unauthorized,
    /// Authenticated, but not allowed.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The resource exists already.
    Conflict,
    /// Body or message larger than the configured maximum.
    PayloadTooLarge,
    /// The topic string is not a valid topic.
    InvalidTopic,
    /// No method of that name.
    UnknownMethod,
    /// A backend (Redis) cannot be reached, or the node is draining.
    Unavailable,
    /// A bug or an unexpected backend answer; details are in the logs only.
    Internal,
    /// Too many requests: a connection over its command rate, or too many logins or signups
    /// from this address or for this account (HTTP answers carry `Retry-After`).
    RateLimited,
    /// A count limit of the model store was reached (records per user, models).
    QuotaExceeded,
    /// The client's address holds as many connections as FANOUT_MAX_CONNECTIONS_PER_IP allows.
    TooManyConnections,
}

impl Code {
    /// The code as it appears on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::ValidationFailed => "validation_failed",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::PayloadTooLarge => "payload_too_large",
            Code::InvalidTopic => "invalid_topic",
            Code::UnknownMethod => "unknown_method",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
            Code::RateLimited => "rate_limited",
            Code::QuotaExceeded => "quota_exceeded",
            Code::TooManyConnections => "too_many_connections",
        }
    }

    /// The HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::ValidationFailed | Code::InvalidTopic => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound | Code::UnknownMethod => StatusCode::NOT_FOUND,
            Code::Conflict => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::QuotaExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            Code::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// An error a client sees: a code and a human message. Used for HTTP, acks and `/ws`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    /// What kind of error.
    pub code: Code,
    /// A message for humans; never contains internals.
    pub message: String,
}

impl AppError {
    /// An error with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }
    /// `validation_failed`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::ValidationFailed, message)
    }
    /// `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }
    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }
    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// The `{ "error": { "code", "message" } }` body.
    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code.as_str(), "message": self.message } })
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for AppError {}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => AppError::new(Code::Conflict, what),
            StoreError::NotFound => AppError::not_found("not found"),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                AppError::new(Code::Unavailable, "storage backend unavailable")
            }
            StoreError::Corrupt(cause) => {
                tracing::error!(%cause, "corrupt record in store");
                AppError::new(Code::Internal, "internal error")
            }
            StoreError::Forbidden => {
                AppError::forbidden("only the record's owner may change or delete it")
            }
            StoreError::TooLarge { max } => AppError::new(
                Code::PayloadTooLarge,
                format!("a record is at most {max} bytes of JSON"),
            ),
            StoreError::Quota(crate::store::Quota::RecordsPerUser(max)) => AppError::new(
                Code::QuotaExceeded,
                format!("you own {max} records of this model already, the most allowed"),
            ),
            StoreError::Quota(crate::store::Quota::Models(max)) => AppError::new(
                Code::QuotaExceeded,
                format!("the store holds {max} models already, the most allowed"),
            ),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self.body())).into_response()
    }
}
