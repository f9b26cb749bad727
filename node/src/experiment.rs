//! TEMPORARY (branch `memory`, removed before merge): A/B switches for the memory
//! measurements, read from `FANOUT_EXPERIMENT` (comma-separated `name` or `name=value`).

use std::sync::OnceLock;

fn all() -> &'static Vec<(String, String)> {
    static ALL: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ALL.get_or_init(|| {
        std::env::var("FANOUT_EXPERIMENT")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s.to_owned(), String::new()),
            })
            .collect()
    })
}

/// Whether switch `name` is on.
pub fn on(name: &str) -> bool {
    all().iter().any(|(k, _)| k == name)
}

/// The value of switch `name`, parsed.
pub fn value<T: std::str::FromStr>(name: &str) -> Option<T> {
    all().iter().find(|(k, _)| k == name)?.1.parse().ok()
}
