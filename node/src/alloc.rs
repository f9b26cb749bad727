//! The allocator (jemalloc, set in `main.rs`): its tuning at start and its figures on
//! `/metrics`.
//!
//! Tuning ([`tune`]): jemalloc hands freed pages back to the OS only as its decay clock runs,
//! and without background threads that clock only advances when the arena owning the pages
//! allocates again — a node that goes idle after a connection burst or a message storm would
//! keep the peak resident. [`AllocTuning::background_threads`] purges from a background
//! thread; the decay times say how long freed pages stay resident for reuse. All of it goes
//! through `mallctl` at run time (no `malloc_conf` symbol: the workspace forbids `unsafe`).
//!
//! Figures ([`AllocatorCollector`]): `fanout_allocator_bytes{kind}` — `allocated` (live
//! objects), `active` (their pages), `resident` (what jemalloc holds in RAM, dirty pages
//! included), `metadata`, `retained` (address space kept, not in RAM). `resident` minus
//! `allocated` is what the allocator keeps on top of what the node uses.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use tikv_jemalloc_ctl::{Access, AsName, background_thread, epoch, stats};

/// How jemalloc is tuned at start.
#[derive(Debug, Clone, Copy)]
pub struct AllocTuning {
    /// Purge freed pages from background threads (also when the node is idle).
    pub background_threads: bool,
    /// How long freed pages stay dirty (resident, reusable at once) before being purged, ms;
    /// -1 = never purge.
    pub dirty_decay_ms: i64,
    /// How long purged-lazily ("muzzy") pages stay mapped before being released, ms.
    pub muzzy_decay_ms: i64,
}

/// A `mallctl` that failed: its name and jemalloc's error.
#[derive(Debug, thiserror::Error)]
#[error("jemalloc {name}: {err}")]
pub struct AllocError {
    name: &'static str,
    err: tikv_jemalloc_ctl::Error,
}

fn ctl<T>(name: &'static str, result: tikv_jemalloc_ctl::Result<T>) -> Result<T, AllocError> {
    result.map_err(|err| AllocError { name, err })
}

/// Applies `tuning`. Call it first thing in `main`, before threads allocate: the decay times
/// are set for arenas created from now on and for the arenas that exist already.
pub fn tune(tuning: &AllocTuning) -> Result<(), AllocError> {
    let dirty = tuning.dirty_decay_ms as isize;
    let muzzy = tuning.muzzy_decay_ms as isize;
    ctl(
        "arenas.dirty_decay_ms",
        b"arenas.dirty_decay_ms\0".name().write(dirty),
    )?;
    ctl(
        "arenas.muzzy_decay_ms",
        b"arenas.muzzy_decay_ms\0".name().write(muzzy),
    )?;
    let existing: u32 = ctl("arenas.narenas", tikv_jemalloc_ctl::arenas::narenas::read())?;
    for arena in 0..existing {
        // An arena index that is not initialized yet answers an error: it will be created
        // with the defaults set above.
        let name = format!("arena.{arena}.dirty_decay_ms\0");
        let _ = name.as_str().name().write(dirty);
        let name = format!("arena.{arena}.muzzy_decay_ms\0");
        let _ = name.as_str().name().write(muzzy);
    }
    ctl(
        "background_thread",
        background_thread::write(tuning.background_threads),
    )?;
    Ok(())
}

/// jemalloc's figures as `fanout_allocator_bytes{kind}`, read at every scrape.
pub struct AllocatorCollector {
    bytes: IntGaugeVec,
}

impl AllocatorCollector {
    /// The collector (register it once).
    pub fn new() -> Result<Self, prometheus::Error> {
        let bytes = IntGaugeVec::new(
            Opts::new(
                "fanout_allocator_bytes",
                "jemalloc: allocated (live objects), active (their pages), resident (held in RAM, dirty pages included), metadata, retained (address space kept, not in RAM)",
            ),
            &["kind"],
        )?;
        Ok(Self { bytes })
    }
}

impl Collector for AllocatorCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.bytes.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The statistics are cached until the epoch advances.
        if epoch::advance().is_ok() {
            let figures = [
                ("allocated", stats::allocated::read()),
                ("active", stats::active::read()),
                ("resident", stats::resident::read()),
                ("metadata", stats::metadata::read()),
                ("retained", stats::retained::read()),
            ];
            for (kind, value) in figures {
                if let Ok(value) = value {
                    self.bytes
                        .with_label_values(&[kind])
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                }
            }
        }
        self.bytes.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_applies_and_figures_are_exported() {
        let tuning = AllocTuning {
            background_threads: true,
            dirty_decay_ms: 5_000,
            muzzy_decay_ms: 0,
        };
        assert!(tune(&tuning).is_ok());
        let set: isize = b"arenas.dirty_decay_ms\0".name().read().expect("readable");
        assert_eq!(set, 5_000);
        assert_eq!(background_thread::read().ok(), Some(true));
        let collector = AllocatorCollector::new().expect("collector");
        let families = collector.collect();
        let kinds: Vec<String> = families
            .iter()
            .flat_map(|f| f.get_metric())
            .flat_map(|m| m.get_label())
            .map(|l| l.value().to_owned())
            .collect();
        for kind in ["allocated", "active", "resident", "metadata", "retained"] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
        }
        // And off again.
        assert!(
            tune(&AllocTuning {
                background_threads: false,
                ..tuning
            })
            .is_ok()
        );
        assert_eq!(background_thread::read().ok(), Some(false));
    }
}
