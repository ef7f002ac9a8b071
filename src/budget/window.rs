//! Fixed budget windows aligned to the Unix epoch: an hourly window starts on
//! the hour (UTC), a daily one at midnight UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One budget window, in whole seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First second of the window.
    pub start: u64,
    /// First second of the next window.
    pub end: u64,
}

impl Window {
    /// Returns the window of length `period` that contains `now`.
    ///
    /// Periods are counted in whole seconds; a period under one second is
    /// treated as one second.
    pub fn containing(now: SystemTime, period: Duration) -> Window {
        let period = period.as_secs().max(1);
        let seconds = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since_epoch| since_epoch.as_secs());
        let start = seconds - seconds % period;
        Window {
            start,
            end: start.saturating_add(period),
        }
    }

    /// Whole seconds from `now` until the window ends, at least 1 so a
    /// `Retry-After` never requests an immediate retry into the same window.
    pub fn seconds_until_end(&self, now: SystemTime) -> u64 {
        let end = UNIX_EPOCH + Duration::from_secs(self.end);
        match end.duration_since(now) {
            Ok(left) => left.as_secs_f64().ceil().max(1.0) as u64,
            Err(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn hourly_windows_start_on_the_hour() {
        let window = Window::containing(at(7_200 + 1_234), Duration::from_secs(3_600));
        assert_eq!(window.start, 7_200);
        assert_eq!(window.end, 10_800);
    }

    #[test]
    fn window_boundary_belongs_to_next_window() {
        let period = Duration::from_secs(60);
        assert_eq!(Window::containing(at(119), period).start, 60);
        assert_eq!(Window::containing(at(120), period).start, 120);
    }

    #[test]
    fn daily_window_starts_at_midnight_utc() {
        // 2026-12-04T15:41:00Z
        let window = Window::containing(at(1_796_398_860), Duration::from_secs(86_400));
        assert_eq!(window.start, 1_796_342_400);
        assert_eq!(window.end - window.start, 86_400);
    }

    #[test]
    fn seconds_until_end_rounds_up() {
        let window = Window::containing(at(100), Duration::from_secs(60));
        assert_eq!(window.seconds_until_end(at(100)), 20);
        let almost = UNIX_EPOCH + Duration::from_millis(119_500);
        assert_eq!(window.seconds_until_end(almost), 1);
        assert_eq!(window.seconds_until_end(at(500)), 1);
    }

    #[test]
    fn sub_second_period_is_one_second() {
        let window = Window::containing(at(5), Duration::from_millis(10));
        assert_eq!((window.start, window.end), (5, 6));
    }
}
