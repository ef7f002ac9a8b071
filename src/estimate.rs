//! Fast token estimates, used to reserve budget before the provider reports
//! the real usage, and to charge streams that end without a usage event.
//!
//! The input estimate counts the bytes of the request's text (every string
//! value except a few known non-text fields), divides by 4 (rounded up) and
//! adds 4 tokens per message for the chat format's framing. English prose
//! and code average 3.5 to 4.5 bytes per token in OpenAI's tokenizers, so
//! this is close for English and overestimates text in scripts that need
//! several bytes per character.

use serde_json::Value;

/// Bytes of text per token assumed by the estimates.
pub const BYTES_PER_TOKEN: u64 = 4;

/// Tokens assumed for an inline image or file (a `data:` URL), whose base64
/// size says little about its token cost.
// NOTE: an estimate; real image cost depends on size and detail level, so a
// request with many large images can be admitted on too small an estimate.
pub const INLINE_DATA_TOKENS: u64 = 1_000;

/// Framing tokens per chat message or Responses input item.
const TOKENS_PER_MESSAGE: u64 = 4;

/// Keys whose string values are settings, not text sent to the model.
const NON_TEXT_KEYS: &[&str] = &[
    "model",
    "role",
    "type",
    "id",
    "call_id",
    "user",
    "service_tier",
    "reasoning_effort",
    "previous_response_id",
    "encoding_format",
    "detail",
];

/// Estimates the input tokens of a request body.
pub fn input_tokens(body: &Value) -> u64 {
    let mut bytes = 0;
    let mut inline_data = 0;
    count_text(body, &mut bytes, &mut inline_data);

    let messages = ["messages", "input"]
        .iter()
        .filter_map(|key| body.get(key)?.as_array())
        .map(|items| items.len() as u64)
        .sum::<u64>();

    bytes.div_ceil(BYTES_PER_TOKEN)
        + inline_data * INLINE_DATA_TOKENS
        + messages * TOKENS_PER_MESSAGE
}

/// Estimates the tokens of generated text from its length in bytes.
pub fn output_tokens(text_bytes: u64) -> u64 {
    text_bytes.div_ceil(BYTES_PER_TOKEN)
}

fn count_text(value: &Value, bytes: &mut u64, inline_data: &mut u64) {
    match value {
        Value::String(text) if text.starts_with("data:") => *inline_data += 1,
        Value::String(text) => *bytes += text.len() as u64,
        Value::Array(items) => {
            for item in items {
                count_text(item, bytes, inline_data);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                if !NON_TEXT_KEYS.contains(&key.as_str()) {
                    count_text(item, bytes, inline_data);
                }
            }
        }
        Value::Number(_) | Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_estimate_counts_text_and_framing() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "12345678"},
                {"role": "user", "content": "1234"},
            ]
        });
        // 12 bytes of text -> 3 tokens, plus 2 messages * 4.
        assert_eq!(input_tokens(&body), 11);
    }

    #[test]
    fn responses_estimate_counts_instructions_and_input() {
        let body = json!({
            "model": "gpt-5-codex",
            "instructions": "a".repeat(400),
            "input": "b".repeat(40),
        });
        assert_eq!(input_tokens(&body), 110);
    }

    #[test]
    fn inline_images_count_fixed_tokens() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(100_000))}}
            ]}]
        });
        assert_eq!(input_tokens(&body), INLINE_DATA_TOKENS + 4);
    }

    #[test]
    fn output_estimate_rounds_up() {
        assert_eq!(output_tokens(0), 0);
        assert_eq!(output_tokens(1), 1);
        assert_eq!(output_tokens(8), 2);
        assert_eq!(output_tokens(9), 3);
    }
}
