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
        ("generator cores", |r| r.generator.cpu_cores),
        ("machine busy %", |r| r.generator.machine_busy * 100.0),
    ];
    let w = 22;
    let _ = write!(o, "{:<18}", "metric");
    for r in runs {
        let _ = write!(o, "{:>w$}", r.label);
    }
    let _ = writeln!(o);
    for (name, get) in rows {
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
        let mut b = a.clone();
        b.label = "fanout".into();
        b.latency_ms.p50 = 1.0;
        let t = table(&[a, b], 0, Some("1 node each"));
        assert!(t.contains("1.00 (0.50x)"), "{t}");
        assert!(t.contains("note: 1 node each"));
    }
}
