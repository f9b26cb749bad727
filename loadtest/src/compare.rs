//! Side-by-side table of several runs of the same workload, with ratios to a baseline run
//! (the `compare` subcommand reads the runs' `--json` reports).

use std::fmt::Write;

use crate::report::Report;

fn ratio(v: f64, base: f64) -> String {
    if base > 0.0 && v.is_finite() {
        format!("{:.2}x", v / base)
    } else {
        "-".to_owned()
    }
}

/// How many rows, from the top, are about published messages.
const PUBLISHING_ROWS: usize = 9;

/// Renders one table: rows = metrics, columns = runs, and a ratio to `baseline` (index
/// into `runs`) next to every other run's value. Lower is better for latencies, higher
/// for throughput.
pub fn table(runs: &[Report], baseline: usize, note: Option<&str>) -> String {
    let mut o = String::new();
    if runs.is_empty() {
        return o;
    }
    let base = &runs[baseline.min(runs.len() - 1)];
    let _ = writeln!(
        o,
        "workload: {}   baseline: {}   ratios = run / baseline",
        base.workload, base.label
    );
    if let Some(n) = note {
        let _ = writeln!(o, "note: {n}");
    }
    type Getter = fn(&Report) -> f64;
    let rows: Vec<(&str, Getter)> = vec![
        ("latency p50 ms", |r| r.latency_ms.p50),
        ("latency p90 ms", |r| r.latency_ms.p90),
        ("latency p99 ms", |r| r.latency_ms.p99),
        ("latency p99.9 ms", |r| r.latency_ms.p999),
        ("latency max ms", |r| r.latency_ms.max),
        ("deliveries/s", |r| r.deliveries_per_sec),
        ("lost", |r| r.deliveries.lost as f64),
        ("duplicates", |r| r.deliveries.duplicates as f64),
        ("reordered", |r| r.deliveries.reordered as f64),
        ("connect p50 ms", |r| r.connect_ms.p50),
        ("connect p99 ms", |r| r.connect_ms.p99),
        ("connects/s", |r| r.connects_per_sec),
        ("connected", |r| r.connected as f64),
        ("connect failures", |r| {
            (r.connect_failures + r.auth_failures) as f64
        }),
        ("subscribe ack p99", |r| {
            if r.subscribe_ack_ms.count > 0 {
                r.subscribe_ack_ms.p99
            } else {
                f64::NAN
            }
        }),
        ("targets RSS MiB", |r| {
            r.targets_mem
                .iter()
                .filter(|t| t.target.starts_with("pid:"))
                .filter_map(|t| t.rss_after)
                .sum::<u64>() as f64
                / 1_048_576.0
        }),
        ("RSS/conn KB", |r| {
            r.rss_per_connection.map_or(f64::NAN, |b| b / 1000.0)
        }),
        ("allocated/conn KB", |r| {
            r.allocated_per_connection.map_or(f64::NAN, |b| b / 1000.0)
        }),
        ("storm peak MiB", |r| {
            r.storm
                .as_ref()
                .map_or(f64::NAN, |s| s.rss_peak as f64 / 1_048_576.0)
        }),
        ("storm settled %", |r| {
            r.storm.as_ref().map_or(f64::NAN, |s| s.excess() * 100.0)
        }),
        ("generator cores", |r| r.generator.cpu_cores),
        ("machine busy %", |r| r.generator.machine_busy * 100.0),
    ];
    let w = 22;
    let _ = write!(o, "{:<18}", "metric");
    for r in runs {
        let _ = write!(o, "{:>w$}", r.label);
    }
    let _ = writeln!(o);
    // Latency and delivery rows mean nothing when no run published (connect).
    let published = runs
        .iter()
        .any(|r| r.deliveries.published > 0 || r.deliveries.expected > 0);
    for (i, (name, get)) in rows.into_iter().enumerate() {
        if !published && i < PUBLISHING_ROWS {
            continue;
        }
        let b = get(base);
        let vals: Vec<f64> = runs.iter().map(get).collect();
        if vals.iter().all(|v| v.is_nan()) {
            continue;
        }
        let _ = write!(o, "{name:<18}");
        for (i, v) in vals.iter().enumerate() {
            let cell = if v.is_nan() {
                "-".to_owned()
            } else if i == baseline {
                format!("{v:.2}")
            } else {
                format!("{v:.2} ({})", ratio(*v, b))
            };
            let _ = write!(o, "{cell:>w$}");
        }
        let _ = writeln!(o);
    }
    for r in runs {
        for warning in &r.warnings {
            let _ = writeln!(o, "warning [{}]: {warning}", r.label);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_against_baseline() {
        let mut a = Report {
            label: "node-ref".into(),
            workload: "rooms".into(),
            ..Report::default()
        };
        a.latency_ms.p50 = 2.0;
        a.deliveries.published = 10;
        let mut b = a.clone();
        b.label = "fanout".into();
        b.latency_ms.p50 = 1.0;
        let t = table(&[a, b], 0, Some("1 node each"));
        assert!(t.contains("1.00 (0.50x)"), "{t}");
        assert!(t.contains("note: 1 node each"));
    }

    #[test]
    fn connect_runs_show_no_latency_rows() {
        let mut a = Report {
            label: "sioxide-ref".into(),
            workload: "connect".into(),
            rss_per_connection: Some(20_000.0),
            ..Report::default()
        };
        a.subscribe_ack_ms.count = 5;
        a.subscribe_ack_ms.p99 = 4.0;
        let mut b = a.clone();
        b.label = "fanout".into();
        b.rss_per_connection = Some(10_000.0);
        let t = table(&[a, b], 0, None);
        assert!(!t.contains("latency p50"), "{t}");
        assert!(t.contains("RSS/conn KB"), "{t}");
        assert!(t.contains("10.00 (0.50x)"), "{t}");
        assert!(t.contains("subscribe ack p99"), "{t}");
    }
}
