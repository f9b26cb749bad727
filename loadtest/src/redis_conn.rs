//! The loadtest's own Redis connection (token seeding, the `redis` workload's publishes, the
//! connect workload's storm): one server for `redis://…`, a Redis Cluster for
//! `redis+cluster://…` — the URL forms of `FANOUT_REDIS_URL`, parsed by the same parser the
//! nodes use, and the same two-kinds connection type as the nodes' stores (`fanout_adapter`).

use std::time::Duration;

use fanout_adapter::{EitherConnection, RedisTarget};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, RedisResult};

/// A multiplexed connection to one Redis or to a Redis Cluster (commands routed by slot).
pub type RedisConn = EitherConnection<MultiplexedConnection, ClusterConnection>;

/// Connects to what `url` names (redis-rs's default reply timeouts).
pub async fn connect(url: &str) -> RedisResult<RedisConn> {
    connect_with_timeout(url, None).await
}

/// Connects to what `url` names; every reply may take up to `response_timeout` (a pipeline
/// of large publishes to busy subscribers can take seconds).
pub async fn connect_with_timeout(
    url: &str,
    response_timeout: Option<Duration>,
) -> RedisResult<RedisConn> {
    let target = fanout_adapter::parse_redis_target(url).map_err(|err| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "bad Redis URL",
            err.to_string(),
        ))
    })?;
    match target {
        RedisTarget::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            let mut config = redis::AsyncConnectionConfig::new();
            if let Some(timeout) = response_timeout {
                config = config.set_response_timeout(Some(timeout));
            }
            Ok(RedisConn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ))
        }
        RedisTarget::Cluster(cluster) => {
            let mut builder = ClusterClientBuilder::new(cluster.seed_urls());
            if let Some(timeout) = response_timeout {
                builder = builder.response_timeout(timeout);
            }
            Ok(RedisConn::Cluster(
                builder.build()?.get_async_connection().await?,
            ))
        }
    }
}

/// The publish command the nodes listen to: `PUBLISH` on one Redis, `SPUBLISH` (sharded
/// pub/sub) on a cluster.
pub fn publish_command(conn: &RedisConn) -> &'static str {
    if conn.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}
