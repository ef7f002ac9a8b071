//! tollgate: an LLM gateway on Pingora that gives every user an internal API
//! key and a token budget, and forwards their requests with the
//! organisation's provider key.

pub mod access_log;
pub mod admin;
pub mod api;
pub mod budget;
pub mod config;
pub mod errors;
pub mod estimate;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod metering;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod server;
pub mod sse;
pub mod state;
pub mod upstream;
pub mod usage;
