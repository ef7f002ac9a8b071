//! Durable accounting in a SQLite database: the budget window counters and a
//! usage log of one row per request.
//!
//! The request path never touches the disk. [`SqliteStore`] keeps every
//! user's counters in memory and queues charges and usage rows; the writer
//! thread applies them in one transaction per flush interval and reads the
//! window totals back, so two processes sharing the file during a graceful
//! upgrade both see every charge.

mod database;
mod metrics;
mod queue;
pub mod report;
mod store;
mod writer;

pub use database::Database;
pub use store::{SqliteStore, StateWriter};

/// One request as the usage log stores it, built in the proxy's `logging`
/// phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// End of the request, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub request_id: String,
    pub user: crate::keys::UserId,
    /// The `model` of the request body; `None` for requests without one.
    pub model: Option<String>,
    /// Route name, such as `chat_completions`.
    pub route: &'static str,
    /// Provider-reported counts; `None` when the provider reported no usage.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// Tokens charged to the budget: the reported total, or the estimate.
    pub total_tokens: u64,
    /// `reported`, `estimated`, or `None` when nothing was charged.
    pub usage_source: Option<&'static str>,
    /// HTTP status sent to the client; 0 when no response was sent.
    pub status: u16,
}
