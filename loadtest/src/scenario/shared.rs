//! State shared by every task of a run, and how topics and source addresses are assigned.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use super::{Plan, Workload};
use crate::report::{self, ShardedHistogram};

/// State shared by every task of a run.
pub(super) struct Shared {
    pub(super) start: Instant,
    pub(super) warmup_end_us: AtomicU64,
    pub(super) measuring: AtomicBool,
    pub(super) connected: AtomicU64,
    pub(super) connect_failed: AtomicU64,
    pub(super) auth_failed: AtomicU64,
    pub(super) disconnects: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) expected_live: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) subs_per_topic: Vec<AtomicU64>,
    pub(super) latency: ShardedHistogram,
    pub(super) acks: ShardedHistogram,
    pub(super) connect_hist: Mutex<Histogram<u64>>,
    pub(super) subscribe_hist: Mutex<Histogram<u64>>,
    pub(super) lag_hist: Mutex<Histogram<u64>>,
    pub(super) failures: Mutex<Vec<String>>,
    pub(super) last_connect_ok: Mutex<Option<Instant>>,
}

impl Shared {
    pub(super) fn new(topics: usize, failures: Vec<String>) -> Self {
        Self {
            start: Instant::now(),
            warmup_end_us: AtomicU64::new(u64::MAX),
            measuring: AtomicBool::new(false),
            connected: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            auth_failed: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            received: AtomicU64::new(0),
            expected_live: AtomicU64::new(0),
            published: AtomicU64::new(0),
            subs_per_topic: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            latency: ShardedHistogram::new(64),
            acks: ShardedHistogram::new(16),
            connect_hist: Mutex::new(report::new_histogram()),
            subscribe_hist: Mutex::new(report::new_histogram()),
            lag_hist: Mutex::new(report::new_histogram()),
            failures: Mutex::new(failures),
            last_connect_ok: Mutex::new(None),
        }
    }

    pub(super) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records one accepted subscription to `topic` and its acknowledgement's round trip.
    pub(super) fn subscribed(&self, topic: u32, took: std::time::Duration) {
        if let Ok(mut h) = self.subscribe_hist.lock() {
            h.saturating_record((took.as_micros() as u64).max(1));
        }
        self.subs_per_topic[topic as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client that finished connecting and subscribing.
    pub(super) fn client_ready(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_connect_ok.lock() {
            *last = Some(Instant::now());
        }
    }

    pub(super) fn failure(&self, msg: String) {
        if let Ok(mut f) = self.failures.lock()
            && f.len() < 5
        {
            f.push(msg);
        }
    }
}

pub(super) fn topic_names(plan: &Plan) -> Vec<String> {
    (0..plan.topics.max(1))
        .map(|k| match plan.workload {
            Workload::Models => format!("/{}{k}/POST", plan.model_prefix),
            _ => format!("{}.{k}", plan.topic_prefix),
        })
        .collect()
}

/// Topics publisher `j` of `p` publishes to (round-robin over them).
pub fn publisher_topics(j: usize, p: usize, topics: usize) -> Vec<u32> {
    let topics = topics.max(1);
    if p <= topics {
        (0..topics)
            .filter(|k| k % p == j)
            .map(|k| k as u32)
            .collect()
    } else {
        vec![(j % topics) as u32]
    }
}

pub(super) fn source_ip(i: usize, n: usize) -> Option<IpAddr> {
    if n == 0 {
        return None;
    }
    let k = (i % n) as u32 + 1;
    Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | k)))
}
