//! The diagnostic log on stderr: its level, a cap on other crates' records,
//! and rate-limited lines for failed requests.
//!
//! Records of other crates (Pingora, rustls, ...) are kept to `info` and
//! above whatever level is set. At `debug` and `trace`, Pingora 0.9 prints
//! whole request and response headers and bodies, which carry the provider
//! key, internal keys, prompts and generated text.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};
use once_cell::sync::Lazy;
use parking_lot::Mutex;

use crate::config::LogSettings;

/// Most records of other crates that pass, whatever level is set.
const OTHER_CRATES_MAX_LEVEL: LevelFilter = LevelFilter::Info;

/// Failed-request lines logged per kind and interval before repeats are
/// only counted.
const FAILURES_PER_INTERVAL: u32 = 10;

/// Interval of the failed-request rate limit.
const FAILURE_INTERVAL: Duration = Duration::from_secs(60);

static FAILURES: Lazy<RepeatLimiter> =
    Lazy::new(|| RepeatLimiter::new(FAILURES_PER_INTERVAL, FAILURE_INTERVAL));

/// Installs the logger. The level comes from `RUST_LOG` when it is not empty (in
/// `env_logger` syntax, such as `tollgate=debug`), else from `settings`.
/// Runs once at start-up, after the configuration loaded.
pub fn init(settings: &LogSettings) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(settings.level);
    if let Some(spec) = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.trim().is_empty())
    {
        builder.parse_filters(&spec);
    }
    builder.target(env_logger::Target::Stderr);
    let inner = builder.build();

    log::set_max_level(inner.filter());
    // set_boxed_logger fails only when a logger is already installed, and
    // then that one stays in place.
    let _ = log::set_boxed_logger(Box::new(CappedLogger { inner }));
}

/// Logs one failed request at error level, with its request id. Past
/// [`FAILURES_PER_INTERVAL`] lines of one `kind` a minute, further failures
/// are only counted, and the next line logged states how many were left out.
pub fn failed_request(kind: &'static str, request_id: &str, message: &dyn std::fmt::Display) {
    let Some(suppressed) = FAILURES.admit(kind, Instant::now()) else {
        return;
    };
    if suppressed == 0 {
        log::error!("request {request_id}: {kind}: {message}");
    } else {
        log::error!(
            "request {request_id}: {kind}: {message} ({suppressed} more {kind} failures were \
             not logged)"
        );
    }
}

/// Logs a request to the admin listener without a valid admin token, at
/// warn level with the client address, rate-limited like failed requests.
pub fn rejected_admin_request(client: &str, path: &str) {
    let Some(suppressed) = FAILURES.admit("admin_token", Instant::now()) else {
        return;
    };
    let reason = "missing or invalid admin token";
    if suppressed == 0 {
        log::warn!("admin request for {path} from {client} rejected: {reason}");
    } else {
        log::warn!(
            "admin request for {path} from {client} rejected: {reason} ({suppressed} more \
             rejected admin requests were not logged)"
        );
    }
}

/// Passes records to `env_logger`, except other crates' records below
/// [`OTHER_CRATES_MAX_LEVEL`].
struct CappedLogger {
    inner: env_logger::Logger,
}

impl Log for CappedLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let own = metadata.target() == "tollgate" || metadata.target().starts_with("tollgate::");
        (own || metadata.level() <= OTHER_CRATES_MAX_LEVEL) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Counts repeats of each kind of event and admits a fixed number per
/// interval.
struct RepeatLimiter {
    per_interval: u32,
    interval: Duration,
    kinds: Mutex<HashMap<&'static str, Slot>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    interval_start: Instant,
    admitted: u32,
    /// Events left out since the last admitted one.
    suppressed: u64,
}

impl RepeatLimiter {
    fn new(per_interval: u32, interval: Duration) -> Self {
        RepeatLimiter {
            per_interval,
            interval,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Decides whether one more event of `kind` at `now` is logged. Returns
    /// the number of events left out before it, or `None` to leave this one
    /// out too.
    fn admit(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock();
        let slot = kinds.entry(kind).or_insert(Slot {
            interval_start: now,
            admitted: 0,
            suppressed: 0,
        });

        if now.duration_since(slot.interval_start) >= self.interval {
            slot.interval_start = now;
            slot.admitted = 0;
        }
        if slot.admitted >= self.per_interval {
            slot.suppressed += 1;
            return None;
        }

        slot.admitted += 1;
        Some(std::mem::take(&mut slot.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_admits_per_interval() {
        let limiter = RepeatLimiter::new(2, Duration::from_secs(60));
        let start = Instant::now();

        assert_eq!(limiter.admit("timeout", start), Some(0));
        assert_eq!(limiter.admit("timeout", start), Some(0));
        assert_eq!(limiter.admit("timeout", start), None);
        assert_eq!(limiter.admit("timeout", start), None);
        assert_eq!(
            limiter.admit("connect", start),
            Some(0),
            "kinds are limited separately"
        );

        let next_interval = start + Duration::from_secs(60);
        assert_eq!(
            limiter.admit("timeout", next_interval),
            Some(2),
            "the first line of an interval counts what was left out"
        );
        assert_eq!(limiter.admit("timeout", next_interval), Some(0));
        assert_eq!(limiter.admit("timeout", next_interval), None);
    }
}
