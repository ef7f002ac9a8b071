//! In-process budget counters, for throwaway runs and tests. Restarting the
//! process starts every budget again at zero.

use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    Admission, BudgetStatus, BudgetStore, Counters, Reservation, ReserveRequest, UserBudget, Window,
};
use crate::keys::UserId;

/// One mutex per user, so users never contend with each other.
pub struct MemoryStore {
    users: Vec<Mutex<Counters>>,
}

impl MemoryStore {
    pub fn new(user_count: usize) -> Self {
        let empty = Window { start: 0, end: 0 };
        MemoryStore {
            users: (0..user_count)
                .map(|_| Mutex::new(Counters::new(empty)))
                .collect(),
        }
    }

    fn counters(&self, user: UserId) -> &Mutex<Counters> {
        // User ids come from the key ring built from the same user list.
        &self.users[user]
    }
}

#[async_trait]
impl BudgetStore for MemoryStore {
    async fn reserve(
        &self,
        user: UserId,
        budget: UserBudget,
        request: ReserveRequest,
        now: SystemTime,
    ) -> Admission {
        let mut counters = self.counters(user).lock();
        counters.roll(budget, now);
        counters.reserve(user, budget, request)
    }

    async fn settle(
        &self,
        reservation: Reservation,
        budget: UserBudget,
        charged: u64,
        now: SystemTime,
    ) -> BudgetStatus {
        let mut counters = self.counters(reservation.user).lock();
        counters.roll(budget, now);
        counters.settle(reservation, charged);
        counters.status(budget)
    }

    async fn status(&self, user: UserId, budget: UserBudget, now: SystemTime) -> BudgetStatus {
        let mut counters = self.counters(user).lock();
        counters.roll(budget, now);
        counters.status(budget)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const HOURLY_1000: UserBudget = UserBudget {
        limit: Some(1_000),
        period: Duration::from_secs(3_600),
    };

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn request(input_tokens: u64, max_output_tokens: u64) -> ReserveRequest {
        ReserveRequest {
            input_tokens,
            max_output_tokens,
        }
    }

    fn admitted(admission: Admission) -> Reservation {
        match admission {
            Admission::Admitted(reservation, _) => reservation,
            Admission::Exhausted(status) => panic!("expected admission, got {status:?}"),
        }
    }

    #[tokio::test]
    async fn reservation_is_clipped_to_remaining() {
        let store = MemoryStore::new(1);
        let reservation = admitted(
            store
                .reserve(0, HOURLY_1000, request(100, 128_000), at(10))
                .await,
        );
        assert_eq!(reservation.tokens, 1_000);

        let status = store.status(0, HOURLY_1000, at(11)).await;
        assert_eq!(status.reserved, 1_000);
        assert_eq!(status.remaining(), Some(0));
    }

    #[tokio::test]
    async fn settle_replaces_reservation_with_usage() {
        let store = MemoryStore::new(1);
        let reservation = admitted(
            store
                .reserve(0, HOURLY_1000, request(50, 200), at(10))
                .await,
        );
        let status = store.settle(reservation, HOURLY_1000, 120, at(20)).await;
        assert_eq!(status.used, 120);
        assert_eq!(status.reserved, 0);
        assert_eq!(status.remaining(), Some(880));
    }

    #[tokio::test]
    async fn whole_budget_can_be_spent_in_small_requests() {
        let store = MemoryStore::new(1);
        for _ in 0..10 {
            let reservation = admitted(
                store
                    .reserve(0, HOURLY_1000, request(10, 4_096), at(10))
                    .await,
            );
            store.settle(reservation, HOURLY_1000, 100, at(10)).await;
        }
        let status = store.status(0, HOURLY_1000, at(10)).await;
        assert_eq!(status.used, 1_000);
        let exhausted = store.reserve(0, HOURLY_1000, request(1, 1), at(10)).await;
        assert!(matches!(exhausted, Admission::Exhausted(_)));
    }

    #[tokio::test]
    async fn input_estimate_over_remaining_is_rejected() {
        let store = MemoryStore::new(1);
        let first = admitted(store.reserve(0, HOURLY_1000, request(10, 10), at(10)).await);
        store.settle(first, HOURLY_1000, 950, at(10)).await;
        let admission = store.reserve(0, HOURLY_1000, request(51, 0), at(10)).await;
        let Admission::Exhausted(status) = admission else {
            panic!("expected exhaustion, got {admission:?}");
        };
        assert_eq!(status.remaining(), Some(50));
        admitted(store.reserve(0, HOURLY_1000, request(50, 0), at(10)).await);
    }

    #[tokio::test]
    async fn new_window_starts_at_zero() {
        let store = MemoryStore::new(1);
        let reservation = admitted(
            store
                .reserve(0, HOURLY_1000, request(10, 10), at(3_000))
                .await,
        );
        store
            .settle(reservation, HOURLY_1000, 1_000, at(3_100))
            .await;
        assert!(matches!(
            store
                .reserve(0, HOURLY_1000, request(1, 1), at(3_599))
                .await,
            Admission::Exhausted(_)
        ));

        let status = store.status(0, HOURLY_1000, at(3_600)).await;
        assert_eq!((status.used, status.reserved), (0, 0));
        assert_eq!(status.window.start, 3_600);
    }

    #[tokio::test]
    async fn settlement_after_window_end_charges_new_window() {
        let store = MemoryStore::new(1);
        let reservation = admitted(
            store
                .reserve(0, HOURLY_1000, request(10, 90), at(3_590))
                .await,
        );
        let status = store.settle(reservation, HOURLY_1000, 70, at(3_610)).await;
        assert_eq!(status.window.start, 3_600);
        assert_eq!(status.used, 70);
        assert_eq!(status.reserved, 0);
    }

    #[tokio::test]
    async fn unlimited_budget_always_admits() {
        let store = MemoryStore::new(1);
        let unlimited = UserBudget {
            limit: None,
            period: Duration::from_secs(60),
        };
        let reservation = admitted(
            store
                .reserve(0, unlimited, request(1 << 40, 1 << 40), at(1))
                .await,
        );
        let status = store.settle(reservation, unlimited, 5, at(2)).await;
        assert_eq!(status.used, 5);
        assert_eq!(status.remaining(), None);
    }

    #[test]
    fn concurrent_reservations_never_overcommit() {
        let store = Arc::new(MemoryStore::new(1));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let admitted_tokens: u64 = runtime.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        match store.reserve(0, HOURLY_1000, request(30, 70), at(10)).await {
                            Admission::Admitted(reservation, _) => reservation.tokens,
                            Admission::Exhausted(_) => 0,
                        }
                    })
                })
                .collect();
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap();
            }
            total
        });
        assert_eq!(admitted_tokens, 1_000);
        assert_eq!(
            runtime
                .block_on(store.status(0, HOURLY_1000, at(10)))
                .reserved,
            1_000
        );
    }
}
