//! Prometheus metrics of the state writer, in the default registry that
//! `/metrics` serves.

use once_cell::sync::Lazy;
use prometheus::{register_int_counter, register_int_counter_vec, IntCounter, IntCounterVec};

/// Flushes by result: `ok` or `failed`.
static FLUSHES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "tollgate_state_flushes_total",
        "Flushes of queued charges and usage rows to the state database, by result.",
        &["result"]
    )
    .expect("the metric is registered once")
});

/// Entries appended while the write queue was full.
static QUEUE_OVERFLOW: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "tollgate_state_queue_overflow_total",
        "Charges and usage rows queued while the state write queue was full; none is dropped."
    )
    .expect("the metric is registered once")
});

/// Registers the metrics at zero, so they are scraped before the first
/// flush.
pub(super) fn register() {
    for result in ["ok", "failed"] {
        FLUSHES.with_label_values(&[result]);
    }
    Lazy::force(&QUEUE_OVERFLOW);
}

pub(super) fn record_flush(ok: bool) {
    FLUSHES
        .with_label_values(&[if ok { "ok" } else { "failed" }])
        .inc();
}

pub(super) fn record_overflow(entries: u64) {
    QUEUE_OVERFLOW.inc_by(entries);
}
