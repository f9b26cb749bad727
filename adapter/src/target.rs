//! [`RedisTarget`]: what a Redis URL points at — one Redis (classic mode) or a Redis Cluster
//! (sharded mode) — parsed once, shared by the adapter and the node's stores.
//!
//! * `redis://…`, `rediss://…`, `unix://…`, `redis+unix://…`: one server, kept as given and
//!   handed to `redis::Client::open` (classic mode, unchanged).
//! * `redis+cluster://[user[:password]@]host1[:port1],host2[:port2],…[/0]` and
//!   `rediss+cluster://…` (TLS): seed nodes of a Redis Cluster. The port defaults to 6379,
//!   IPv6 hosts are bracketed (`[::1]:7000`). The credentials apply to every node. A
//!   database other than 0 and query parameters are refused (Redis Cluster has only db 0).

use std::fmt;

use crate::config::ConfigError;

/// Default Redis port when a seed omits it.
const DEFAULT_PORT: u16 = 6379;

/// What a Redis URL points at.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server (classic mode): the URL as given.
    Single(String),
    /// A Redis Cluster (sharded mode).
    Cluster(ClusterTarget),
}

/// The seed nodes and connection settings of a Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTarget {
    /// `host:port` of each seed node (IPv6 hosts without brackets), in URL order, non-empty.
    pub seeds: Vec<(String, u16)>,
    /// `rediss+cluster://`: connect with TLS.
    pub tls: bool,
    /// Username (percent-decoded), if any.
    pub username: Option<String>,
    /// Password (percent-decoded), if any.
    pub password: Option<String>,
    /// The userinfo exactly as written (still percent-encoded), reused in [`seed_urls`](Self::seed_urls).
    userinfo: Option<String>,
}

// Never print passwords.
impl fmt::Debug for ClusterTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTarget")
            .field("seeds", &self.seeds)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Single(url) => f.debug_tuple("Single").field(&redact(url)).finish(),
            RedisTarget::Cluster(c) => f.debug_tuple("Cluster").field(c).finish(),
        }
    }
}

impl RedisTarget {
    /// True for a Redis Cluster target (sharded mode).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }
}

impl ClusterTarget {
    /// One `redis://[userinfo@]host:port` URL per seed (`rediss://` with TLS), credentials
    /// included: the input of `redis::cluster::ClusterClient::new` /
    /// `ClusterClientBuilder::new`, which takes credentials and TLS from the first URL.
    pub fn seed_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = self
            .userinfo
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        self.seeds
            .iter()
            .map(|(host, port)| {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                format!("{scheme}://{auth}{host}:{port}")
            })
            .collect()
    }
}

/// Parses a Redis URL into a [`RedisTarget`]. `redis+cluster://` / `rediss+cluster://`
/// select a cluster; `redis://`, `rediss://`, `unix://`, `redis+unix://` one server (not
/// validated further here: `redis::Client::open` does that); any other scheme is refused.
pub fn parse_redis_target(url: &str) -> Result<RedisTarget, ConfigError> {
    let bad = |why: &str| ConfigError::InvalidUrl(format!("{}: {why}", redact(url)));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "no scheme (expected redis://, rediss://, redis+cluster://…)",
        ));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" | "rediss" | "unix" | "redis+unix" => {
            return Ok(RedisTarget::Single(url.to_owned()));
        }
        "redis+cluster" => false,
        "rediss+cluster" => true,
        _ => return Err(bad("unsupported scheme")),
    };
    if rest.contains(['?', '#']) {
        return Err(bad("query parameters are not supported in cluster URLs"));
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "0") {
        return Err(bad("Redis Cluster has only database 0"));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            let user = percent_decode(user).ok_or_else(|| bad("bad percent-encoding"))?;
            let pass = pass
                .map(|p| percent_decode(p).ok_or_else(|| bad("bad percent-encoding")))
                .transpose()?;
            ((!user.is_empty()).then_some(user), pass)
        }
    };
    let seeds = hosts
        .split(',')
        .map(|h| parse_host_port(h).ok_or_else(|| bad(&format!("bad seed {h:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RedisTarget::Cluster(ClusterTarget {
        seeds,
        tls,
        username,
        password,
        userinfo: userinfo.filter(|u| !u.is_empty()).map(str::to_owned),
    }))
}

/// `host[:port]` or `[v6][:port]`; None when empty or malformed.
fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !valid_host {
        return None;
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
    };
    Some((host.to_owned(), port))
}

/// Decodes `%XX` escapes; None on a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with its password replaced by `***` (for errors and logs).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            let at = rest[..authority_end].rfind('@').unwrap_or(0);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(url: &str) -> ClusterTarget {
        match parse_redis_target(url).unwrap() {
            RedisTarget::Cluster(c) => c,
            other => panic!("not a cluster: {other:?}"),
        }
    }

    #[test]
    fn classic_urls_stay_single() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://u:p@host:6380",
            "unix:///tmp/r.sock",
            "redis+unix:///tmp/r.sock",
            "REDIS://h",
        ] {
            assert_eq!(
                parse_redis_target(url).unwrap(),
                RedisTarget::Single(url.into())
            );
        }
    }

    #[test]
    fn cluster_urls() {
        let c = cluster("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,[::1]:7002,host");
        assert!(!c.tls);
        assert_eq!(
            c.seeds,
            vec![
                ("127.0.0.1".into(), 7000),
                ("127.0.0.1".into(), 7001),
                ("::1".into(), 7002),
                ("host".into(), 6379)
            ]
        );
        assert_eq!(
            c.seed_urls(),
            vec![
                "redis://127.0.0.1:7000",
                "redis://127.0.0.1:7001",
                "redis://[::1]:7002",
                "redis://host:6379"
            ]
        );
        let c = cluster("rediss+cluster://alice:p%40ss@h1:1,h2:2/0");
        assert!(c.tls);
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(
            c.seed_urls(),
            vec!["rediss://alice:p%40ss@h1:1", "rediss://alice:p%40ss@h2:2"]
        );
        assert!(!format!("{c:?}").contains("p@ss"));
        let c = cluster("redis+cluster://:secret@h:1/");
        assert_eq!(c.username, None);
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert_eq!(c.seed_urls(), vec!["redis://:secret@h:1"]);
    }

    #[test]
    fn bad_urls_are_errors() {
        for url in [
            "",
            "127.0.0.1:6379",
            "http://h:1",
            "redis+cluster://",
            "redis+cluster://h:1,",
            "redis+cluster://h:0",
            "redis+cluster://h:99999",
            "redis+cluster://h:x",
            "redis+cluster://h:1/1",
            "redis+cluster://h:1?protocol=resp3",
            "redis+cluster://[::1:7000",
            "redis+cluster://h h:1",
            "redis+cluster://u:%zz@h:1",
        ] {
            assert!(
                matches!(parse_redis_target(url), Err(ConfigError::InvalidUrl(_))),
                "{url:?} accepted"
            );
        }
        let err = parse_redis_target("redis+cluster://u:hunter2@h:1/5").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
