//! Credentials: access tokens (32 random bytes, hex, stored only as SHA-256), and
//! [`Session`], what an authenticated connection carries. Password hashing is in
//! [`hashing`], the login and signup throttles in [`throttle`], model write policies in
//! [`acl`].

pub mod acl;
pub mod hashing;
pub mod throttle;

use std::sync::Arc;
use std::time::SystemTime;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{AppError, Code};
use crate::store::{TokenHash, TokenRecord, TokenStore, UserId};

/// An authenticated identity: who, and with which token (so logout can find the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user_id: UserId,
    /// Hash of the token the connection authenticated with.
    pub token_hash: TokenHash,
    /// When the token expires (`created` + `ttl`); None when its record cannot tell.
    pub expires: Option<SystemTime>,
}

/// A new random access token: 32 bytes from the OS generator, hex-encoded (64 URL-safe chars).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// SHA-256 hex of a token, the only form stores keep.
pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(hex::encode(Sha256::digest(token.as_bytes())))
}

/// The current time as RFC 3339 with milliseconds (LoopBack's `created`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Token fields a client sends, in the Socket.IO handshake, with `authentication`, or with a
/// `/ws` `authenticate` request: `{ token }` or LoopBack's `{ id, userId }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The access token.
    pub token: Option<String>,
    /// The user the client claims to be (LoopBack form); must match the token's.
    pub claim: Claim,
}

/// The `userId` a client sent next to its token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Claim {
    /// No `userId` (or `null`): the token alone decides.
    #[default]
    None,
    /// A well-formed user id; it must be the token's user.
    User(UserId),
    /// A `userId` that cannot be any user's id (wrong type, negative, empty…): refused.
    Invalid,
}

impl Credentials {
    /// Reads `{ token }` or `{ id, userId }`; anything else yields no token.
    pub fn from_value(value: &serde_json::Value) -> Credentials {
        let token = value
            .get("token")
            .or_else(|| value.get("id"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let claim = match value.get("userId") {
            None | Some(serde_json::Value::Null) => Claim::None,
            Some(raw) => UserId::from_json(raw).map_or(Claim::Invalid, Claim::User),
        };
        Credentials { token, claim }
    }

    /// True when the value carries a token field at all.
    pub fn present_in(value: &serde_json::Value) -> bool {
        value.get("token").is_some() || value.get("id").is_some()
    }
}

/// Why a token was refused (a bounded set: metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token given, or not a string.
    Missing,
    /// Unknown, revoked or expired token.
    Invalid,
    /// The token belongs to another user than the one claimed.
    UserMismatch,
    /// The token store could not be reached.
    Unavailable,
}

impl AuthFailure {
    /// The error a client sees: `unavailable` when the store is down, else `unauthorized`.
    pub fn to_app_error(self) -> AppError {
        match self {
            AuthFailure::Unavailable => {
                AppError::new(Code::Unavailable, "authentication backend unavailable")
            }
            _ => AppError::unauthorized("invalid or expired access token"),
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_token",
            AuthFailure::Invalid => "invalid_token",
            AuthFailure::UserMismatch => "user_mismatch",
            AuthFailure::Unavailable => "unavailable",
        }
    }
}

/// Checks tokens against the token store.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<dyn TokenStore>,
}

impl Authenticator {
    /// An authenticator over a token store.
    pub fn new(tokens: Arc<dyn TokenStore>) -> Self {
        Self { tokens }
    }

    /// Checks client credentials.
    pub async fn check(&self, creds: &Credentials) -> Result<Session, AuthFailure> {
        let claimed = match &creds.claim {
            Claim::None => None,
            Claim::User(user) => Some(user),
            Claim::Invalid => {
                // Still look the token up first, so a bad token is reported as such.
                self.authenticate(creds.token.as_deref(), None).await?;
                return Err(AuthFailure::UserMismatch);
            }
        };
        self.authenticate(creds.token.as_deref(), claimed).await
    }

    /// Turns a raw token (and optionally the user it claims to belong to, as in the LoopBack
    /// `{ id, userId }` form) into a session.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        claimed_user: Option<&UserId>,
    ) -> Result<Session, AuthFailure> {
        let token = token
            .filter(|t| !t.is_empty() && t.len() <= 512)
            .ok_or(AuthFailure::Missing)?;
        let token_hash = hash_token(token);
        let record: TokenRecord = match self.tokens.get(&token_hash).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(AuthFailure::Invalid),
            Err(err) => {
                tracing::warn!(%err, "token lookup failed");
                return Err(AuthFailure::Unavailable);
            }
        };
        if claimed_user.is_some_and(|claimed| *claimed != record.user_id) {
            return Err(AuthFailure::UserMismatch);
        }
        Ok(Session {
            expires: crate::store::cache::expires_at(&record),
            user_id: record.user_id,
            token_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryTokenStore;
    use serde_json::json;

    #[test]
    fn tokens_are_random_hex_and_hash_is_sha256() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        // sha256("abc")
        assert_eq!(
            hash_token("abc").0,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn authenticate_checks_token_and_claimed_user() {
        let store = Arc::new(MemoryTokenStore::default());
        let token = new_token();
        let record = TokenRecord {
            user_id: UserId::new("5"),
            ttl: 60,
            created: now_rfc3339(),
            scopes: vec![],
        };
        store.insert(&hash_token(&token), &record).await.unwrap();
        let auth = Authenticator::new(store);
        let session = auth.authenticate(Some(&token), None).await.unwrap();
        assert_eq!(session.user_id, UserId::new("5"));
        assert!(
            auth.authenticate(Some(&token), Some(&UserId::new("5")))
                .await
                .is_ok()
        );
        assert_eq!(
            auth.authenticate(Some(&token), Some(&UserId::new("6")))
                .await,
            Err(AuthFailure::UserMismatch)
        );
        assert_eq!(
            auth.authenticate(Some("nope"), None).await,
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            auth.authenticate(None, None).await,
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            auth.authenticate(Some(""), None).await,
            Err(AuthFailure::Missing)
        );
        for bad_claim in [
            json!(-1),
            json!(1.5),
            json!(true),
            json!({"x": 1}),
            json!(["5"]),
            json!(""),
        ] {
            let creds = Credentials::from_value(&json!({ "id": token, "userId": bad_claim }));
            assert_eq!(
                auth.check(&creds).await,
                Err(AuthFailure::UserMismatch),
                "{bad_claim}"
            );
        }
        let creds = Credentials::from_value(&json!({ "id": token, "userId": 5 }));
        assert!(auth.check(&creds).await.is_ok());
        let creds = Credentials::from_value(&json!({ "token": token, "userId": null }));
        assert!(auth.check(&creds).await.is_ok());
    }
}
