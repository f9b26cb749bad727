//! Where the clients' access tokens come from: the REST API (create users, log in), a token
//! file, or tokens written straight into Redis (for servers without a REST API, such as
//! the Node.js reference peer).

use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use redis::RedisResult;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{AuthError, chain};
use crate::redis_conn;

/// How to obtain tokens.
#[derive(Debug, Clone)]
pub enum AuthSource {
    /// Create users `{prefix}{i}` through `POST /api/users` (an existing user is fine) and log
    /// them in through `POST /api/users/login`.
    Rest {
        /// Base URL of a node with the REST API.
        base: String,
        /// Number of distinct users (tokens are shared round-robin by the clients).
        users: usize,
        /// Username prefix.
        prefix: String,
        /// Password (≥ 6 characters).
        password: String,
    },
    /// One token per line.
    File(String),
    /// Random tokens written as `{key_prefix}:token:<sha256 hex>` into Redis.
    SeedRedis {
        /// Redis URL.
        url: String,
        /// Number of tokens.
        count: usize,
        /// Key prefix (`FANOUT_PREFIX`, default `fanout`).
        key_prefix: String,
        /// Token time to live, seconds.
        ttl: u64,
    },
}

/// Tokens plus the number of failed logins / seeds.
#[derive(Debug, Default)]
pub struct Tokens {
    /// Usable tokens (clients take them round-robin).
    pub tokens: Vec<String>,
    /// Logins that failed.
    pub failures: u64,
    /// A few failure messages.
    pub samples: Vec<String>,
}

/// Obtains tokens; an error means none could be had at all.
pub async fn obtain(src: &AuthSource) -> Result<Tokens, AuthError> {
    let out = match src {
        AuthSource::Rest {
            base,
            users,
            prefix,
            password,
        } => rest_tokens(base, *users, prefix, password).await,
        AuthSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::TokenFile {
                path: path.clone(),
                source,
            })?;
            Tokens {
                tokens: text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
                ..Tokens::default()
            }
        }
        AuthSource::SeedRedis {
            url,
            count,
            key_prefix,
            ttl,
        } => seed_redis(url, *count, key_prefix, *ttl).await?,
    };
    if out.tokens.is_empty() {
        return Err(AuthError::NoToken {
            failures: out.failures,
            samples: out.samples.join("; "),
        });
    }
    Ok(out)
}

/// An HTTP client for the REST API and `/metrics` (no TLS; loopback targets).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

async fn rest_tokens(base: &str, users: usize, prefix: &str, password: &str) -> Tokens {
    let http = http_client();
    let base = base.trim_end_matches('/').to_owned();
    let mut set = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    for i in 0..users.max(1) {
        let (http, base, sem) = (http.clone(), base.clone(), sem.clone());
        let username = format!("{prefix}{i}");
        let password = password.to_owned();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            login_one(&http, &base, &username, &password).await
        });
    }
    let mut out = Tokens::default();
    while let Some(res) = set.join_next().await {
        match res {
            Ok(Ok(token)) => out.tokens.push(token),
            Ok(Err(e)) => {
                out.failures += 1;
                if out.samples.len() < 3 {
                    out.samples.push(chain(&e));
                }
            }
            Err(e) => {
                out.failures += 1;
                if out.samples.len() < 3 {
                    out.samples.push(e.to_string());
                }
            }
        }
    }
    out
}

/// Creates `username` (ignoring "already exists") and logs in; returns the token.
pub async fn login_one(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> Result<String, AuthError> {
    let email = format!("{username}@loadtest.invalid");
    // An existing user (409) is fine; any other failure shows up in the login error.
    let created = match http
        .post(format!("{base}/api/users"))
        .json(&json!({ "username": username, "email": email, "password": password }))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT => {
            String::new()
        }
        Ok(r) => {
            let st = r.status();
            format!(
                " (create user: {st} {})",
                r.text().await.unwrap_or_default()
            )
        }
        Err(e) => format!(" (create user: {e})"),
    };
    let login_err = |source| AuthError::Login {
        username: username.to_owned(),
        source,
    };
    let resp = http
        .post(format!("{base}/api/users/login"))
        .json(&json!({ "username": username, "password": password, "ttl": 86_400 }))
        .send()
        .await
        .map_err(login_err)?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(login_err)?;
    body.get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| AuthError::Refused {
            username: username.to_owned(),
            status,
            body: body.to_string(),
            create: created,
        })
}

/// `sha256(token)` as lowercase hex: the Redis key suffix of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

async fn seed_redis(
    url: &str,
    count: usize,
    key_prefix: &str,
    ttl: u64,
) -> Result<Tokens, AuthError> {
    let seed_err = |source| AuthError::Seed {
        url: url.to_owned(),
        source,
    };
    let mut conn = redis_conn::connect(url).await.map_err(seed_err)?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut tokens = Vec::with_capacity(count.max(1));
    let mut sets = Vec::with_capacity(count.max(1));
    let mut rng = rand::rng();
    for i in 0..count.max(1) {
        let bytes: [u8; 24] = rng.random();
        let token = hex::encode(bytes);
        let key = format!("{key_prefix}:token:{}", token_hash(&token));
        let rec = json!({
            "userId": format!("loadtest-u{i}"),
            "ttl": ttl,
            "created": created.to_string(),
            "scopes": [],
        });
        let mut set = redis::cmd("SET");
        set.arg(key).arg(rec.to_string()).arg("EX").arg(ttl);
        sets.push(set);
        tokens.push(token);
    }
    if conn.is_cluster() {
        // Every token key has its own slot: no pipeline spans them; 64 in flight instead.
        let results: Vec<RedisResult<()>> = futures_util::stream::iter(sets)
            .map(|set| {
                let mut conn = conn.clone();
                async move { set.query_async::<()>(&mut conn).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        results
            .into_iter()
            .collect::<RedisResult<()>>()
            .map_err(seed_err)?;
    } else {
        let mut pipe = redis::pipe();
        for set in sets {
            pipe.add_command(set).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(seed_err)?;
    }
    Ok(Tokens {
        tokens,
        ..Tokens::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_tokens_like_the_server() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
