//! `connect` with `--storm-rounds N`: once the memory per idle connection is measured, a
//! burst of large messages (`--payload` bytes, N per topic) is published on the Redis events
//! channel to every topic the idle clients hold, then the targets' summed RSS is followed:
//! before, at the peak and after `--storm-settle`. Does a node give back what a burst took?

use std::time::Duration;

use serde_json::json;

use super::Plan;
use crate::error::RunError;
use crate::redis_conn;
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
    // A pipeline of large PUBLISHes to busy subscribers can take seconds to be answered;
    // redis-rs gives up after 500 ms by default. On a cluster: SPUBLISH (sharded mode).
    let mut conn = redis_conn::connect_with_timeout(&url, Some(Duration::from_secs(60)))
        .await
        .map_err(redis_err)?;
    let publish = redis_conn::publish_command(&conn);
    let data = "x".repeat(plan.payload);
    let mut peak = before;
    let mut published = 0u64;
    for _ in 0..plan.storm_rounds {
        let mut pipe = redis::pipe();
        for topic in names {
            let body = json!({ "topic": topic, "data": data }).to_string();
            pipe.cmd(publish)
                .arg(&plan.events_channel)
                .arg(body)
                .ignore();
            published += 1;
        }
        pipe.query_async::<()>(&mut conn).await.map_err(redis_err)?;
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
