//! Small synchronization helper shared by the modules.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex, recovering from poisoning: every value guarded in this crate (routing
/// tables, pending-request maps, task handles) stays consistent after a panicking holder —
/// at worst one message was routed or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
