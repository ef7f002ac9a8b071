//! Request-rate and concurrency limits per user, and the throttle on failed
//! key attempts per client address, on pingora-limits' counters.
//!
//! `Rate` counts events in fixed one-minute intervals that start when the
//! counter is first used, not on the minute; `Inflight` counts requests in
//! progress and is decremented when the returned guard is dropped. Both are
//! count-min sketches: a hash collision between two keys can only make a
//! count higher, never lower, so a limit is never exceeded because of one.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;

use crate::errors::{GatewayError, RateLimit};
use crate::keys::UserId;
use crate::policy::Policies;

const INTERVAL: Duration = Duration::from_secs(60);

/// The counters shared by every request.
pub struct RequestLimits {
    requests: Rate,
    in_flight: Inflight,
    failed_keys: Rate,
    /// Requests with an invalid key allowed per client address per minute.
    failed_keys_per_minute: u32,
}

/// Holds one of the user's concurrent-request slots until dropped.
pub struct InFlightSlot {
    _guard: Guard,
}

impl RequestLimits {
    pub fn new(failed_keys_per_minute: u32) -> Self {
        RequestLimits {
            requests: Rate::new(INTERVAL),
            in_flight: Inflight::new(),
            failed_keys: Rate::new(INTERVAL),
            failed_keys_per_minute,
        }
    }

    /// Rejects every request from an address that sent too many invalid keys
    /// this minute, valid keys included, so the throttle cannot be used to
    /// tell a valid key from an invalid one.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), GatewayError> {
        let (Some(client), max) = (client, self.failed_keys_per_minute) else {
            return Ok(());
        };
        if max == 0 {
            return Ok(());
        }
        let failures = self.failed_keys.observe(&client, 0);
        if failures > max as isize {
            return Err(GatewayError::RateLimited {
                limit: RateLimit::FailedKeys(max),
                retry_after: seconds_left(&self.failed_keys, &client),
            });
        }
        Ok(())
    }

    /// Counts a request whose key was missing or invalid.
    pub fn record_failed_key(&self, client: Option<IpAddr>) {
        if let Some(client) = client {
            self.failed_keys.observe(&client, 1);
        }
    }

    /// Applies the user's `requests_per_minute` and
    /// `max_concurrent_requests`, before the body is read. A request this
    /// rejects is not counted; one a policy rejects later still is. The
    /// returned slot must live as long as the request.
    pub fn admit(
        &self,
        user: UserId,
        policies: &Policies,
    ) -> Result<Option<InFlightSlot>, GatewayError> {
        let slot = match policies.max_concurrent_requests {
            Some(max) => {
                let (guard, count) = self.in_flight.incr(user, 1);
                if count > max as isize {
                    return Err(GatewayError::RateLimited {
                        limit: RateLimit::ConcurrentRequests(max),
                        retry_after: 1,
                    });
                }
                Some(InFlightSlot { _guard: guard })
            }
            None => None,
        };

        if let Some(max) = policies.requests_per_minute {
            let count = self.requests.observe(&user, 1);
            if count > max as isize {
                self.requests.observe(&user, -1);
                return Err(GatewayError::RateLimited {
                    limit: RateLimit::RequestsPerMinute(max),
                    retry_after: seconds_left(&self.requests, &user),
                });
            }
        }
        Ok(slot)
    }
}

/// Whole seconds until the counter's current interval ends, at least 1.
fn seconds_left<K: std::hash::Hash>(rate: &Rate, key: &K) -> u64 {
    let fraction = rate.rate_with(key, |components| components.current_interval_fraction);
    let left = (1.0 - fraction) * INTERVAL.as_secs_f64();
    (left.ceil() as u64).clamp(1, INTERVAL.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(rpm: Option<u32>, concurrent: Option<u32>) -> Policies {
        Policies {
            requests_per_minute: rpm,
            max_concurrent_requests: concurrent,
            ..Policies::default()
        }
    }

    #[test]
    fn requests_per_minute_admits_exactly_the_limit() {
        let limits = RequestLimits::new(0);
        let rpm = policies(Some(3), None);
        for _ in 0..3 {
            assert!(limits.admit(0, &rpm).is_ok());
        }
        let error = limits.admit(0, &rpm).err().unwrap();
        match error {
            GatewayError::RateLimited {
                limit: RateLimit::RequestsPerMinute(3),
                retry_after,
            } => assert!((1..=60).contains(&retry_after)),
            other => panic!("expected a rate limit, got {other:?}"),
        }
        // Rejected requests are not counted, and other users are unaffected.
        assert!(limits.admit(0, &rpm).is_err());
        assert!(limits.admit(1, &rpm).is_ok());
    }

    #[test]
    fn concurrency_slot_is_released_on_drop() {
        let limits = RequestLimits::new(0);
        let two = policies(None, Some(2));
        let first = limits.admit(7, &two).unwrap();
        let second = limits.admit(7, &two).unwrap();
        assert!(limits.admit(7, &two).is_err());
        drop(first);
        let third = limits.admit(7, &two).unwrap();
        assert!(third.is_some());
        drop((second, third));
    }

    #[test]
    fn failed_keys_block_the_address() {
        let limits = RequestLimits::new(2);
        let client: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let other: Option<IpAddr> = Some("192.0.2.8".parse().unwrap());
        for _ in 0..2 {
            assert!(limits.check_client(client).is_ok());
            limits.record_failed_key(client);
        }
        assert!(limits.check_client(client).is_ok());
        limits.record_failed_key(client);
        assert!(limits.check_client(client).is_err());
        assert!(limits.check_client(other).is_ok());
    }

    #[test]
    fn no_policies_means_no_limits() {
        let limits = RequestLimits::new(0);
        for _ in 0..1000 {
            assert!(limits.admit(0, &Policies::default()).unwrap().is_none());
        }
    }
}
