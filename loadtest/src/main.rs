//! fanout-loadtest (work in progress).
fn main() {}
