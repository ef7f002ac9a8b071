//! Token usage reported by OpenAI API responses.
//!
//! [`Usage::from_json`] reads the `usage` object of both response shapes: Chat
//! Completions, Completions and Embeddings (`prompt_tokens`, `completion_tokens`) and
//! Responses (`input_tokens`, `output_tokens`). [`JsonUsageScanner`] finds it in a
//! non-streaming response body, and [`stream::StreamMeter`] in an SSE stream.

pub mod stream;

pub use stream::{StreamApi, StreamMeter};

use serde::Deserialize;
use serde_json::{Map, Value};

/// Token counts of one request, as reported by the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens (`prompt_tokens` or `input_tokens`), cached ones included.
    pub input_tokens: u64,

    /// Generated tokens (`completion_tokens` or `output_tokens`), reasoning tokens
    /// included.
    pub output_tokens: u64,

    /// Total tokens as reported by the provider, or 0 when the response has none.
    pub total_tokens: u64,

    /// Input tokens served from the provider's prompt cache, a subset of `input_tokens`.
    pub cached_input_tokens: u64,

    /// Output tokens spent on hidden reasoning, a subset of `output_tokens`.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Parses a `usage` object of either OpenAI shape.
    ///
    /// Returns `None` when `usage` is not an object or has none of the input, output and
    /// total counts. A count that is missing, negative or not an integer reads as 0.
    pub fn from_json(usage: &Value) -> Option<Usage> {
        let usage = usage.as_object()?;

        let input_tokens = count(usage, "prompt_tokens").or_else(|| count(usage, "input_tokens"));
        let output_tokens =
            count(usage, "completion_tokens").or_else(|| count(usage, "output_tokens"));
        let total_tokens = count(usage, "total_tokens");
        if input_tokens.is_none() && output_tokens.is_none() && total_tokens.is_none() {
            return None;
        }

        let cached_input_tokens = detail_count(usage, "prompt_tokens_details", "cached_tokens")
            .or_else(|| detail_count(usage, "input_tokens_details", "cached_tokens"));
        let reasoning_tokens = detail_count(usage, "completion_tokens_details", "reasoning_tokens")
            .or_else(|| detail_count(usage, "output_tokens_details", "reasoning_tokens"));

        Some(Usage {
            input_tokens: input_tokens.unwrap_or(0),
            output_tokens: output_tokens.unwrap_or(0),
            total_tokens: total_tokens.unwrap_or(0),
            cached_input_tokens: cached_input_tokens.unwrap_or(0),
            reasoning_tokens: reasoning_tokens.unwrap_or(0),
        })
    }

    /// Returns the tokens to charge against a budget: the provider's `total_tokens` when
    /// it is reported (non-zero), otherwise input plus output tokens.
    pub fn charged_tokens(&self) -> u64 {
        if self.total_tokens > 0 {
            self.total_tokens
        } else {
            self.input_tokens.saturating_add(self.output_tokens)
        }
    }
}

fn count(object: &Map<String, Value>, key: &str) -> Option<u64> {
    object.get(key).and_then(Value::as_u64)
}

fn detail_count(object: &Map<String, Value>, details: &str, key: &str) -> Option<u64> {
    object.get(details)?.as_object().and_then(|d| count(d, key))
}

/// Origin of the token counts charged for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// Counts from the provider's `usage` object.
    Reported,

    /// Counts estimated by the gateway, for example from a stream that ended before its
    /// usage event.
    Estimated,
}

impl UsageSource {
    /// Returns the lowercase name used in logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// Default maximum size in bytes (4 MiB) of a body that [`JsonUsageScanner`] copies whole.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Number of final body bytes (64 KiB) that [`JsonUsageScanner`] keeps for a body over
/// its maximum size.
pub const TAIL_BYTES: usize = 64 * 1024;

/// Reader of the top-level `usage` of a non-streaming JSON response body.
///
/// The body is fed in chunks as it is forwarded, and must be decoded (not compressed). A
/// body up to the maximum size is copied and parsed whole at [`finish`](Self::finish).
/// For a larger one, such as an embeddings response of tens of MB, only the last
/// [`TAIL_BYTES`] are kept, and `finish` parses the object after the last `"usage":` key
/// in them.
#[derive(Debug)]
pub struct JsonUsageScanner {
    /// Copy of the whole body, while it is not larger than `max_body_bytes`.
    body: Vec<u8>,

    /// Last bytes of the body once it is larger than `max_body_bytes`. It grows to twice
    /// [`TAIL_BYTES`] before it is cut back, so that the memmove of a cut happens once per
    /// [`TAIL_BYTES`] of input instead of on every chunk.
    tail: Vec<u8>,

    max_body_bytes: usize,
    over_max: bool,
}

impl Default for JsonUsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonUsageScanner {
    /// Creates a scanner that copies bodies up to [`DEFAULT_MAX_BODY_BYTES`].
    pub fn new() -> Self {
        Self::with_max_body_bytes(DEFAULT_MAX_BODY_BYTES)
    }

    /// Creates a scanner that copies bodies up to `max_body_bytes` and keeps only the
    /// tail of larger ones.
    pub fn with_max_body_bytes(max_body_bytes: usize) -> Self {
        Self {
            body: Vec::new(),
            tail: Vec::new(),
            max_body_bytes,
            over_max: false,
        }
    }

    /// Appends the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        if !self.over_max && self.body.len() + chunk.len() <= self.max_body_bytes {
            self.body.extend_from_slice(chunk);
            return;
        }

        if !self.over_max {
            self.over_max = true;
            self.tail = std::mem::take(&mut self.body);
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 2 * TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
        }
    }

    /// Parses the buffered body and returns its top-level `usage`, or `None` when the
    /// body is not a JSON object or its `usage` is missing, null or has no counts.
    ///
    /// This consumes the buffered bytes, so a second call returns `None`.
    pub fn finish(&mut self) -> Option<Usage> {
        if self.over_max {
            let tail = std::mem::take(&mut self.tail);
            let start = tail.len().saturating_sub(TAIL_BYTES);
            return usage_after_last_key(&tail[start..]);
        }

        let body = std::mem::take(&mut self.body);
        let top_level: TopLevel = serde_json::from_slice(&body).ok()?;
        Usage::from_json(&top_level.usage?)
    }
}

/// Top-level members of a response body that usage parsing needs. The others are
/// skipped without being built.
#[derive(Deserialize)]
struct TopLevel {
    #[serde(default)]
    usage: Option<Value>,
}

/// Parses the JSON value after the last `"usage":` key in `tail`.
///
/// Occurrences with an escaped quote lie inside a string and are skipped.
// NOTE: The nesting depth in the tail is unknown, so a nested `usage` key after the
// top-level one would be read instead. This relies on the top-level `usage` following the
// `data`, `choices` or `output` array, which holds all nested objects.
fn usage_after_last_key(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";

    let mut search_end = tail.len();
    while let Some(key_start) = rfind(&tail[..search_end], KEY) {
        search_end = key_start;
        if is_escaped(tail, key_start) {
            continue;
        }

        let Some(value_start) = value_after_colon(tail, key_start + KEY.len()) else {
            continue;
        };
        let mut values =
            serde_json::Deserializer::from_slice(&tail[value_start..]).into_iter::<Value>();
        let value = values.next()?.ok()?;
        return Usage::from_json(&value);
    }
    None
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle)
}

/// Returns whether the byte at `at` is preceded by an odd number of backslashes.
fn is_escaped(bytes: &[u8], at: usize) -> bool {
    let backslashes = bytes[..at]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    backslashes % 2 == 1
}

/// Skips JSON whitespace, a colon and more whitespace from `at`, and returns the offset
/// of the value that follows, or `None` when no colon follows.
fn value_after_colon(bytes: &[u8], at: usize) -> Option<usize> {
    let colon = skip_whitespace(bytes, at);
    if bytes.get(colon) != Some(&b':') {
        return None;
    }
    Some(skip_whitespace(bytes, colon + 1))
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_json_chat_completions() {
        let usage = json!({
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 192,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        });

        let expected = Usage {
            input_tokens: 1200,
            output_tokens: 300,
            total_tokens: 1500,
            cached_input_tokens: 1024,
            reasoning_tokens: 192,
        };
        assert_eq!(Usage::from_json(&usage), Some(expected));
    }

    #[test]
    fn from_json_responses() {
        let usage = json!({
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 123
        });

        let expected = Usage {
            input_tokens: 36,
            output_tokens: 87,
            total_tokens: 123,
            cached_input_tokens: 4,
            reasoning_tokens: 64,
        };
        assert_eq!(Usage::from_json(&usage), Some(expected));
    }

    #[test]
    fn from_json_embeddings() {
        let usage = json!({"prompt_tokens": 8, "total_tokens": 8});

        let expected = Usage {
            input_tokens: 8,
            total_tokens: 8,
            ..Usage::default()
        };
        assert_eq!(Usage::from_json(&usage), Some(expected));
    }

    #[test]
    fn from_json_completions_without_details() {
        let usage = json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12});

        let parsed = Usage::from_json(&usage).expect("usage");

        assert_eq!(parsed.input_tokens, 5);
        assert_eq!(parsed.output_tokens, 7);
        assert_eq!(parsed.cached_input_tokens, 0);
        assert_eq!(parsed.reasoning_tokens, 0);
    }

    #[test]
    fn from_json_without_counts_is_none() {
        let cases = [
            json!(null),
            json!({}),
            json!({"prompt_tokens_details": {"cached_tokens": 3}}),
            json!({"prompt_tokens": "12"}),
            json!({"prompt_tokens": -1}),
            json!([1, 2]),
            json!(15),
        ];
        for usage in cases {
            assert_eq!(Usage::from_json(&usage), None, "{usage}");
        }
    }

    #[test]
    fn from_json_ignores_malformed_details() {
        let usage = json!({
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "prompt_tokens_details": null,
            "completion_tokens_details": {"reasoning_tokens": 1.5}
        });

        let parsed = Usage::from_json(&usage).expect("usage");

        assert_eq!(parsed.cached_input_tokens, 0);
        assert_eq!(parsed.reasoning_tokens, 0);
    }

    #[test]
    fn charged_tokens_prefers_total() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            total_tokens: 17,
            ..Usage::default()
        };

        assert_eq!(usage.charged_tokens(), 17);
    }

    #[test]
    fn charged_tokens_without_total() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        };

        assert_eq!(usage.charged_tokens(), 15);
    }

    #[test]
    fn charged_tokens_saturates() {
        let usage = Usage {
            input_tokens: u64::MAX,
            output_tokens: 1,
            ..Usage::default()
        };

        assert_eq!(usage.charged_tokens(), u64::MAX);
    }

    #[test]
    fn usage_source_names() {
        assert_eq!(UsageSource::Reported.as_str(), "reported");
        assert_eq!(UsageSource::Estimated.as_str(), "estimated");
    }

    const CHAT_BODY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"The key \"usage\": {\"prompt_tokens\": 99} is quoted here.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_1"}"#;

    fn scan(scanner: &mut JsonUsageScanner, body: &[u8], chunk_len: usize) -> Option<Usage> {
        for chunk in body.chunks(chunk_len) {
            scanner.push(chunk);
        }
        scanner.finish()
    }

    fn chat_body_usage() -> Usage {
        Usage {
            input_tokens: 19,
            output_tokens: 10,
            total_tokens: 29,
            ..Usage::default()
        }
    }

    #[test]
    fn scanner_reads_chat_body() {
        let usage = scan(&mut JsonUsageScanner::new(), CHAT_BODY.as_bytes(), 13);

        assert_eq!(usage, Some(chat_body_usage()));
    }

    #[test]
    fn scanner_reads_responses_body() {
        let body = json!({
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [{
                "type": "message",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}]
            }],
            "usage": {
                "input_tokens": 11,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 2,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 13
            }
        })
        .to_string();

        let usage = scan(&mut JsonUsageScanner::new(), body.as_bytes(), 5).expect("usage");

        assert_eq!(usage.input_tokens, 11);
        assert_eq!(usage.output_tokens, 2);
        assert_eq!(usage.total_tokens, 13);
    }

    #[test]
    fn scanner_ignores_nested_usage_in_small_body() {
        let body = br#"{"data":{"usage":{"prompt_tokens":5}},"usage":null}"#;

        assert_eq!(scan(&mut JsonUsageScanner::new(), body, 4), None);
    }

    #[test]
    fn scanner_without_usage_is_none() {
        let bodies: [&[u8]; 4] = [
            br#"{"error":{"message":"Invalid API key","type":"invalid_request_error"}}"#,
            br#"{"usage":null}"#,
            b"not json",
            br#"{"usage":{"prompt_tokens":1}"#,
        ];
        for body in bodies {
            let usage = scan(&mut JsonUsageScanner::new(), body, 3);

            assert_eq!(usage, None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn scanner_finish_twice() {
        let mut scanner = JsonUsageScanner::new();

        assert_eq!(
            scan(&mut scanner, CHAT_BODY.as_bytes(), 64),
            Some(chat_body_usage())
        );
        assert_eq!(scanner.finish(), None);
    }

    /// Builds an embeddings response body with `embeddings` vectors of 1536 dimensions
    /// (about 21 KB each) and `usage` as the last member.
    fn embeddings_body(embeddings: usize) -> String {
        let vector = vec!["-0.0123456789"; 1536].join(",");
        let data: Vec<String> = (0..embeddings)
            .map(|index| {
                format!(r#"{{"object":"embedding","index":{index},"embedding":[{vector}]}}"#)
            })
            .collect();

        format!(
            r#"{{"object":"list","data":[{}],"model":"text-embedding-3-small","usage": {{"prompt_tokens": {embeddings}, "total_tokens": {embeddings}}}}}"#,
            data.join(",")
        )
    }

    #[test]
    fn scanner_reads_usage_from_tail_over_max() {
        let body = embeddings_body(200);
        assert!(body.len() > DEFAULT_MAX_BODY_BYTES);

        let mut scanner = JsonUsageScanner::new();
        for chunk in body.as_bytes().chunks(16 * 1024) {
            scanner.push(chunk);

            assert!(scanner.body.len() <= DEFAULT_MAX_BODY_BYTES);
            assert!(scanner.tail.len() <= 2 * TAIL_BYTES + 16 * 1024);
        }

        assert!(scanner.over_max);
        let expected = Usage {
            input_tokens: 200,
            total_tokens: 200,
            ..Usage::default()
        };
        assert_eq!(scanner.finish(), Some(expected));
    }

    #[test]
    fn scanner_over_max_skips_quoted_key() {
        let body = format!(
            r#"{{"filler":"{}","usage":{{"prompt_tokens":3}},"quoted \"usage":{{"prompt_tokens":99}}}}"#,
            "x".repeat(4096)
        );
        let mut scanner = JsonUsageScanner::with_max_body_bytes(1024);

        let usage = scan(&mut scanner, body.as_bytes(), 100).expect("usage");

        assert!(scanner.over_max);
        assert_eq!(usage.input_tokens, 3);
    }

    #[test]
    fn scanner_over_max_in_one_chunk() {
        let mut scanner = JsonUsageScanner::with_max_body_bytes(100);

        let usage = scan(&mut scanner, CHAT_BODY.as_bytes(), CHAT_BODY.len());

        assert!(scanner.over_max);
        assert_eq!(usage, Some(chat_body_usage()));
    }

    #[test]
    fn scanner_usage_before_tail_is_lost() {
        let body = format!(
            r#"{{"usage":{{"prompt_tokens":3}},"filler":"{}"}}"#,
            "x".repeat(3 * TAIL_BYTES)
        );
        let mut scanner = JsonUsageScanner::with_max_body_bytes(1024);

        assert_eq!(scan(&mut scanner, body.as_bytes(), 1000), None);
    }

    #[test]
    fn scanner_over_max_with_null_usage_is_none() {
        let body = format!(r#"{{"filler":"{}","usage" : null}}"#, "x".repeat(2048));
        let mut scanner = JsonUsageScanner::with_max_body_bytes(1024);

        assert_eq!(scan(&mut scanner, body.as_bytes(), 300), None);
    }

    #[test]
    fn escaped_quote_detection() {
        assert!(!is_escaped(br#"a"b"#, 1));
        assert!(is_escaped(br#"a\"b"#, 2));
        assert!(!is_escaped(br#"a\\"b"#, 3));
        assert!(is_escaped(br#"a\\\"b"#, 4));
    }
}
