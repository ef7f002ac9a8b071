//! Token budgets: admission against a user's remaining tokens, reservations
//! for requests in flight, and settlement with the real usage.
//!
//! A request is admitted when the remaining budget (limit - used - reserved)
//! covers its estimated input. It then reserves that estimate plus the output
//! it may produce, clipped to what remains, so concurrent requests cannot all
//! pass on the same tokens, while a large max output never locks a budget by
//! itself. Settlement replaces the reservation with the tokens charged.

mod memory;
pub mod window;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use window::Window;

use crate::keys::UserId;
use crate::state::UsageRecord;

/// A user's budget settings.
#[derive(Debug, Clone, Copy)]
pub struct UserBudget {
    /// Tokens per window; `None` is unlimited.
    pub limit: Option<u64>,
    pub period: Duration,
}

/// The estimated cost of a request, taken before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Estimated input tokens; admission requires this much remaining.
    pub input_tokens: u64,
    /// Output tokens the request may produce.
    pub max_output_tokens: u64,
}

/// Tokens held for one admitted request until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub user: UserId,
    /// The window the tokens were reserved in.
    pub window: Window,
    pub tokens: u64,
}

/// A user's counters in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    pub limit: Option<u64>,
    /// Tokens charged by settled requests.
    pub used: u64,
    /// Tokens held by requests in flight.
    pub reserved: u64,
    pub window: Window,
}

impl BudgetStatus {
    /// Tokens still available; `None` when the budget is unlimited.
    pub fn remaining(&self) -> Option<u64> {
        self.limit.map(|limit| {
            limit
                .saturating_sub(self.used)
                .saturating_sub(self.reserved)
        })
    }
}

/// The outcome of a reservation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(Reservation, BudgetStatus),
    Exhausted(BudgetStatus),
}

/// Where window counters live. Implementations make each call atomic per
/// user, so reserve and settle from many worker threads never lose an update.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Admits and reserves, or reports the budget as exhausted.
    async fn reserve(
        &self,
        user: UserId,
        budget: UserBudget,
        request: ReserveRequest,
        now: SystemTime,
    ) -> Admission;

    /// Replaces `reservation` with `charged` tokens of real usage (0 releases
    /// it). Usage is charged to the window current at `now`.
    async fn settle(
        &self,
        reservation: Reservation,
        budget: UserBudget,
        charged: u64,
        now: SystemTime,
    ) -> BudgetStatus;

    /// The user's counters in the window current at `now`.
    async fn status(&self, user: UserId, budget: UserBudget, now: SystemTime) -> BudgetStatus;

    /// Checks that the store can serve requests, for the readiness probe.
    /// Returns why it cannot. An in-process store is always ready.
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Hands over one finished request for the usage log, from the proxy's
    /// `logging` phase. Must not block; stores without a log drop it.
    fn record(&self, _record: UsageRecord) {}
}

/// Counters of one user, as every store keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub window: Window,
    pub used: u64,
    pub reserved: u64,
}

impl Counters {
    pub fn new(window: Window) -> Self {
        Counters {
            window,
            used: 0,
            reserved: 0,
        }
    }

    /// Moves to the window of `now`, starting it at zero if it is new.
    pub fn roll(&mut self, budget: UserBudget, now: SystemTime) {
        let current = Window::containing(now, budget.period);
        if current != self.window {
            *self = Counters::new(current);
        }
    }

    pub fn status(&self, budget: UserBudget) -> BudgetStatus {
        BudgetStatus {
            limit: budget.limit,
            used: self.used,
            reserved: self.reserved,
            window: self.window,
        }
    }

    /// Applies the admission rule shared by all stores.
    pub fn reserve(
        &mut self,
        user: UserId,
        budget: UserBudget,
        request: ReserveRequest,
    ) -> Admission {
        let wanted = request
            .input_tokens
            .saturating_add(request.max_output_tokens);
        let tokens = match self.status(budget).remaining() {
            None => wanted,
            Some(remaining) if remaining == 0 || remaining < request.input_tokens => {
                return Admission::Exhausted(self.status(budget));
            }
            Some(remaining) => wanted.min(remaining),
        };

        self.reserved += tokens;
        let reservation = Reservation {
            user,
            window: self.window,
            tokens,
        };
        Admission::Admitted(reservation, self.status(budget))
    }

    /// Applies the settlement rule shared by all stores. A reservation from an
    /// earlier window was dropped with that window, so only the charge lands.
    pub fn settle(&mut self, reservation: Reservation, charged: u64) {
        if reservation.window == self.window {
            self.reserved = self.reserved.saturating_sub(reservation.tokens);
        }
        self.used = self.used.saturating_add(charged);
    }
}
