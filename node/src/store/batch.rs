//! Presence writes in pipelines. A subscribe (or unsubscribe) records presence in Redis
//! before it is acknowledged; one round trip each made presence most of a subscribe's latency
//! during a connect storm. Writes now queue here, and one task sends everything queued while
//! the previous pipeline was in flight as the next pipeline: one round trip per batch, in
//! arrival order, and every caller still gets its own result before its ack. The pipelines go
//! over the backend's shared multiplexed connection (which reconnects by itself), interleaved
//! with the other stores' commands.

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::redis::{Conn, RedisBackend};
use super::{StoreError, StoreResult};

/// Most writes in one pipeline.
const MAX_BATCH: usize = 512;
/// Writes waiting for a pipeline at most; a caller beyond it waits for room.
const QUEUE: usize = 8192;

/// One presence write: `HSET key field value`, or `HDEL key field` without a value.
struct Write {
    key: String,
    field: String,
    value: Option<String>,
    done: oneshot::Sender<StoreResult<()>>,
}

/// The sending side of the presence writer task.
#[derive(Clone)]
pub struct PresenceBatcher {
    tx: mpsc::Sender<Write>,
}

impl PresenceBatcher {
    /// Starts the writer task on `backend`.
    pub fn start(backend: RedisBackend) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(backend, rx));
        Self { tx }
    }

    /// `HSET key field value` in the next pipeline.
    pub async fn hset(&self, key: String, field: String, value: String) -> StoreResult<()> {
        self.write(key, field, Some(value)).await
    }

    /// `HDEL key field` in the next pipeline.
    pub async fn hdel(&self, key: String, field: String) -> StoreResult<()> {
        self.write(key, field, None).await
    }

    async fn write(&self, key: String, field: String, value: Option<String>) -> StoreResult<()> {
        let stopped = || StoreError::Unavailable("presence writer stopped".into());
        let (done, result) = oneshot::channel();
        let write = Write {
            key,
            field,
            value,
            done,
        };
        self.tx.send(write).await.map_err(|_| stopped())?;
        result.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Sends the queued writes, a pipeline at a time, until every sender is gone.
async fn run(backend: RedisBackend, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut conn = backend.connection();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = Instant::now();
        let result = send(&mut conn, &batch).await;
        backend.record("presence_batch", started.elapsed(), result.is_ok());
        for w in batch.drain(..) {
            let own = match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(StoreError::Unavailable(err.to_string())),
            };
            // A caller that gave up (its connection closed) does not read its result.
            let _ = w.done.send(own);
        }
    }
}

/// One pipeline of `batch`. On a Redis Cluster a pipeline must stay in one slot and a batch
/// spans many topics: the writes are sent as concurrent commands instead, which the
/// multiplexed cluster connection pipelines per shard by itself.
async fn send(conn: &mut Conn, batch: &[Write]) -> StoreResult<()> {
    let result = match conn {
        Conn::Cluster(cluster) => {
            let sends = batch.iter().map(|w| {
                let mut cluster = cluster.clone();
                let cmd = command(w);
                async move { cmd.query_async::<()>(&mut cluster).await }
            });
            futures_util::future::try_join_all(sends).await.map(|_| ())
        }
        Conn::Single(_) => {
            let mut pipe = redis::pipe();
            for w in batch {
                pipe.add_command(command(w)).ignore();
            }
            pipe.query_async::<()>(conn).await
        }
    };
    result.map_err(|err| StoreError::Unavailable(err.to_string()))
}

/// `HSET key field value`, or `HDEL key field` without a value.
fn command(w: &Write) -> redis::Cmd {
    match &w.value {
        Some(value) => redis::Cmd::hset(&w.key, &w.field, value),
        None => redis::Cmd::hdel(&w.key, &w.field),
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use redis::AsyncCommands;

    use super::*;
    use crate::metrics::Metrics;

    /// A real redis-server on a free loopback port, stopped by its PID on drop.
    struct Redis(Child, u16);

    impl Redis {
        fn start(port: u16) -> Redis {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Redis(child, port)
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.1)
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Writes land in order in one pipeline; with Redis gone every caller gets an error (none
    /// hangs); with Redis back, the broken connection is replaced.
    #[tokio::test]
    async fn writes_land_fail_and_recover() {
        let port = free_port();
        let redis = Redis::start(port);
        let backend = RedisBackend::new(
            &fanout_adapter::parse_redis_target(&redis.url()).expect("url"),
            "t",
            Metrics::new("n"),
        )
        .expect("backend");
        let batcher = PresenceBatcher::start(backend.clone());
        let writes = (0..50).map(|i| batcher.hset("t:p".into(), format!("c{i}"), format!("u{i}")));
        for result in futures_util::future::join_all(writes).await {
            assert!(result.is_ok(), "{result:?}");
        }
        batcher.hdel("t:p".into(), "c0".into()).await.expect("hdel");
        let mut conn = backend.connection();
        let len: usize = conn.hlen("t:p").await.expect("hlen");
        assert_eq!(len, 49);
        drop(conn);

        drop(redis);
        let failed = tokio::time::timeout(
            Duration::from_secs(10),
            batcher.hset("t:p".into(), "c1".into(), "u1".into()),
        )
        .await
        .expect("an answer, not a hang");
        assert!(
            matches!(failed, Err(StoreError::Unavailable(_))),
            "{failed:?}"
        );

        let _redis = Redis::start(port);
        let mut recovered = Err(StoreError::Unavailable("not tried".into()));
        for _ in 0..20 {
            recovered = batcher.hset("t:p".into(), "c2".into(), "u2".into()).await;
            if recovered.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(recovered.is_ok(), "{recovered:?}");
    }
}
