//! The crate's error types: [`AuthError`] (obtaining tokens), [`RunError`] (a workload run)
//! and [`Error`] (everything the CLI reports). Wrapped errors are kept as `source()`.

use crate::client::ClientError;

/// Why no usable token could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read.
    #[error("token file {path}")]
    TokenFile {
        /// The file.
        path: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// Seeding tokens into Redis failed.
    #[error("seeding tokens into redis {url}")]
    Seed {
        /// The Redis URL.
        url: String,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// A login request failed at the HTTP level.
    #[error("login {username}")]
    Login {
        /// The user.
        username: String,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// A login answered without a token.
    #[error("login {username}: {status}: {body}{create}")]
    Refused {
        /// The user.
        username: String,
        /// The login status.
        status: reqwest::StatusCode,
        /// The login answer.
        body: String,
        /// What creating the user answered, when that failed too.
        create: String,
    },
    /// Every attempt failed.
    #[error("no token obtained ({failures} failures: {samples})")]
    NoToken {
        /// Failed attempts.
        failures: u64,
        /// A few failure messages, `; `-separated.
        samples: String,
    },
}

/// Why a workload could not run (its results are never partial: a run either yields a
/// report or one of these).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No target URL was given.
    #[error("no target URL")]
    NoTarget,
    /// The process may not open enough files for the connections.
    #[error(
        "{needed} connections need more open files than this process may have ({nofile}); \
         split the run over several loadtest processes"
    )]
    TooManyConnections {
        /// Connections of the run.
        needed: usize,
        /// The open-files limit.
        nofile: u64,
    },
    /// Tokens could not be obtained.
    #[error("tokens")]
    Auth(#[from] AuthError),
    /// `--transport ws` was asked for a workload other than `connect`.
    #[error("--transport ws is only supported by the connect workload")]
    TransportNotSupported,
    /// The `redis` workload was started without a Redis URL.
    #[error("the redis workload needs --redis-url")]
    NoRedisUrl,
    /// The `redis` workload's connection failed.
    #[error("redis {url}")]
    Redis {
        /// The Redis URL.
        url: String,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// A publisher could not connect.
    #[error("publisher {id} could not connect")]
    Publisher {
        /// The publisher index.
        id: usize,
        /// The connection error.
        #[source]
        source: ClientError,
    },
}

/// Everything the `fanout-loadtest` CLI can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run failed.
    #[error("run")]
    Run(#[from] RunError),
    /// A file could not be read or written.
    #[error("{path}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A report file is not a report.
    #[error("{path}: not a fanout-loadtest report")]
    Report {
        /// The file.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A report could not be serialized.
    #[error("report JSON")]
    Json(#[from] serde_json::Error),
    /// The tokio runtime could not start.
    #[error("tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// Drawing a plot failed (plotters' errors are generic over the backend, so the
    /// message is kept).
    #[error("plot {path}: {message}")]
    Plot {
        /// The SVG file.
        path: String,
        /// What plotters reported.
        message: String,
    },
}

/// `err: source: source…` on one line, for the CLI's last word and failure samples.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
