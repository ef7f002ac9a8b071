//! One JSON line per request on stdout, for journald. It never contains a
//! key, a prompt or generated text.

use std::io::Write;

use serde::Serialize;

/// The fields of one access-log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client: Option<String>,
    pub user: Option<&'a str>,
    pub method: &'a str,
    pub route: &'a str,
    pub model: Option<&'a str>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub charged_tokens: u64,
    pub usage_source: Option<&'static str>,
    pub rejection: Option<&'static str>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Time from the request header to the first body bytes of the
    /// upstream response, such as the first event of a stream.
    pub ttft_ms: Option<u64>,
}

/// Writes the record as one line; a failed write is dropped, since logging
/// must never fail a request.
pub fn write(record: &AccessRecord<'_>) {
    let Ok(mut line) = serde_json::to_vec(record) else {
        return;
    };
    line.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&line);
}
