//! `connect` with `--storm-rounds N`: once the memory per idle connection is measured, a
//! burst of large messages (`--payload` bytes, N per topic) is published on the Redis events
//! channel (`SPUBLISH` on a Redis Cluster) to every topic the idle clients hold, then the targets' summed RSS is followed:
//! before, at the peak and after `--storm-settle`. Does a node give back what a burst took?

use std::time::Duration;

use serde_json::json;

use super::Plan;
use crate::error::RunError;
use crate::redis_conn::RedisConn;
use crate::report::StormFigures;
use crate::sys;

/// How often RSS is sampled while the storm and the settling run.
const SAMPLE: Duration = Duration::from_millis(200);

/// Sum of the targets' RSS from `/proc` (the storm needs `--target-pid`).
fn rss(pids: &[u32]) -> Option<u64> {
    let v: Vec<u64> = pids.iter().filter_map(|p| sys::pid_rss(*p)).collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Publishes the storm and follows the targets' RSS; None without target PIDs.
pub(super) async fn run(plan: &Plan, names: &[String]) -> Result<Option<StormFigures>, RunError> {
    let Some(before) = rss(&plan.target_pids) else {
        return Ok(None);
    };
    let url = plan.redis_url.clone().ok_or(RunError::NoRedisUrl)?;
    let redis_err = |source| RunError::Redis {
        url: url.clone(),
        source,
    };
    let mut conn = RedisConn::connect(&url).await.map_err(redis_err)?;
    let publish = conn.publish_command();
    let data = "x".repeat(plan.payload);
    let mut peak = before;
    let mut published = 0u64;
    for _ in 0..plan.storm_rounds {
        // One command at a time: a pipeline of large publishes can outlast redis-rs's reply
        // timeout, and on a cluster a pipeline must stay within one slot.
        for topic in names {
            let body = json!({ "topic": topic, "data": data }).to_string();
            redis::cmd(publish)
                .arg(&plan.events_channel)
                .arg(body)
                .query_async::<()>(&mut conn)
                .await
                .map_err(redis_err)?;
            published += 1;
        }
        peak = peak.max(rss(&plan.target_pids).unwrap_or(0));
    }
    let settle_until = tokio::time::Instant::now() + plan.storm_settle;
    while tokio::time::Instant::now() < settle_until {
        tokio::time::sleep(SAMPLE).await;
        peak = peak.max(rss(&plan.target_pids).unwrap_or(0));
    }
    let after = rss(&plan.target_pids).unwrap_or(0);
    Ok(Some(StormFigures {
        messages: published,
        payload: plan.payload as u64,
        settle_secs: plan.storm_settle.as_secs_f64(),
        rss_before: before,
        rss_peak: peak,
        rss_after: after,
    }))
}
