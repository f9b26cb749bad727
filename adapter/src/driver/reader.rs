//! The subscriber's reader task: pumps messages into the routing table while connected,
//! health-checks the connection with PING, and on loss marks the driver not ready, backs
//! off, reconnects and resubscribes everything.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use super::connection::RedisInner;
use crate::error::Error;
use crate::sync::lock;

/// The reader task: pump messages while connected; on loss, mark not-ready, back off
/// (capped exponential with jitter), reconnect and resubscribe everything.
pub(super) async fn run(
    weak: Weak<RedisInner>,
    client: redis::Client,
    mut first: Option<(PubSubSink, PubSubStream)>,
) {
    let mut attempt: u32 = 0;
    loop {
        let conn = match first.take() {
            Some(conn) => Ok(conn),
            None => {
                let Some(cfg) = weak.upgrade().map(|i| i.cfg.clone()) else {
                    return;
                };
                match tokio::time::timeout(cfg.connect_timeout, client.get_async_pubsub()).await {
                    Ok(Ok(pubsub)) => Ok(pubsub.split()),
                    Ok(Err(e)) => Err(Error::Redis(e)),
                    Err(_) => Err(Error::CommandTimeout("connect")),
                }
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        match conn {
            Ok((sink, stream)) => match inner.resubscribe(sink.clone()).await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::info!("redis subscriber reconnected, subscriptions restored");
                    }
                    attempt = 0;
                    inner.set_ready(true);
                    let interval = inner.cfg.health_check_interval;
                    let cmd_timeout = inner.cfg.command_timeout;
                    drop(inner);
                    pump(&weak, sink, stream, interval, cmd_timeout).await;
                    let Some(inner) = weak.upgrade() else { return };
                    lock(&inner.state).sink = None;
                    inner.set_ready(false);
                    inner.metrics.reconnects.inc();
                    tracing::warn!("redis subscriber connection lost, reconnecting");
                }
                Err(e) => {
                    lock(&inner.state).sink = None;
                    inner.metrics.connect_failed(&e);
                }
            },
            Err(e) => inner.metrics.connect_failed(&e),
        }
        let Some(inner) = weak.upgrade() else { return };
        let delay = backoff(
            attempt,
            inner.cfg.reconnect_min_delay,
            inner.cfg.reconnect_max_delay,
        );
        drop(inner);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// Reads messages until the connection ends or a health-check PING fails.
async fn pump(
    weak: &Weak<RedisInner>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    interval: Duration,
    cmd_timeout: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let Some(inner) = weak.upgrade() else { return };
                inner.dispatch(&msg);
            }
            _ = ticker.tick() => {
                let ping = tokio::time::timeout(cmd_timeout, sink.ping::<redis::Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    tracing::warn!("redis subscriber health check failed");
                    return;
                }
            }
        }
    }
}

/// `min * 2^attempt`, capped at `max`, with ±20 % jitter.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert!(backoff(0, min, max) <= Duration::from_millis(120));
        assert!(backoff(30, min, max) <= max);
        assert!(backoff(3, min, max) >= Duration::from_millis(640));
    }
}
