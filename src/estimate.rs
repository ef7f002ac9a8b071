//! Token counts of requests: a fast estimate, used to reserve budget before
//! the provider reports the real usage and to charge streams that end without
//! a usage event, and an exact count with OpenAI's `o200k_base` tokenizer for
//! `max_input_tokens` checks the fast bound cannot decide.
//!
//! The input estimate counts the bytes of the request's text (every string
//! value except a few known non-text fields), divides by 4 (rounded up) and
//! adds 4 tokens per message for the chat format's framing. English prose
//! and code average 3.5 to 4.5 bytes per token in OpenAI's tokenizers, so
//! this is close for English and overestimates text in scripts that need
//! several bytes per character. On the request corpus in
//! `tests/data/requests` (chat, code review, Responses with tools, a 20 KB
//! Codex turn) the estimate is 0.96 to 1.15 times the `o200k_base` count.

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
    visit_text(body, &mut |text| match text {
        Text::Plain(text) => bytes += text.len() as u64,
        Text::InlineData => inline_data += 1,
    });

    bytes.div_ceil(BYTES_PER_TOKEN)
        + inline_data * INLINE_DATA_TOKENS
        + message_count(body) * TOKENS_PER_MESSAGE
}

/// Counts the input tokens of a request body with `o200k_base`, the
/// tokenizer of OpenAI's GPT-4o, GPT-4.1, GPT-5 and o-series models.
///
/// The text is tokenized exactly; the chat framing (4 tokens per message)
/// and inline data ([`INLINE_DATA_TOKENS`] each) are the same assumptions as
/// in [`input_tokens`]. Tokenizing costs roughly a millisecond per 10 KB of
/// text, so callers run it off the request threads for large bodies.
pub fn exact_input_tokens(body: &Value) -> u64 {
    let tokenizer = tiktoken_rs::o200k_base_singleton();
    let mut tokens = 0;
    visit_text(body, &mut |text| match text {
        Text::Plain(text) => tokens += tokenizer.encode_ordinary(text).len() as u64,
        Text::InlineData => tokens += INLINE_DATA_TOKENS,
    });
    tokens + message_count(body) * TOKENS_PER_MESSAGE
}

/// Chat messages plus Responses input items.
fn message_count(body: &Value) -> u64 {
    ["messages", "input"]
        .iter()
        .filter_map(|key| body.get(key)?.as_array())
        .map(|items| items.len() as u64)
        .sum()
}

/// Estimates the tokens of generated text from its length in bytes.
pub fn output_tokens(text_bytes: u64) -> u64 {
    text_bytes.div_ceil(BYTES_PER_TOKEN)
}

/// A piece of a request that the model reads.
enum Text<'a> {
    Plain(&'a str),
    /// An inline image or file as a `data:` URL.
    InlineData,
}

/// Keys whose `data:` URL values are inline images or files.
const INLINE_DATA_KEYS: &[&str] = &["url", "image_url", "file_data"];

fn visit_text<'a>(value: &'a Value, visit: &mut impl FnMut(Text<'a>)) {
    visit_value(value, None, visit);
}

/// `key` is the key `value` sits under, if it is an object member.
fn visit_value<'a>(value: &'a Value, key: Option<&str>, visit: &mut impl FnMut(Text<'a>)) {
    match value {
        Value::String(text)
            if text.starts_with("data:") && key.is_some_and(|k| INLINE_DATA_KEYS.contains(&k)) =>
        {
            visit(Text::InlineData)
        }
        Value::String(text) => visit(Text::Plain(text)),
        Value::Array(items) => {
            for item in items {
                visit_value(item, None, visit);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                if !NON_TEXT_KEYS.contains(&key.as_str()) {
                    visit_value(item, Some(key), visit);
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
    fn data_prefix_in_text_is_counted_as_text() {
        let text = format!("data:{}", "word ".repeat(1000));
        let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        assert!(input_tokens(&body) > 1_200);
        assert!(exact_input_tokens(&body) > 1_000);

        let image = json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": format!("data:image/png;base64,{}", "A".repeat(9000))}
        ]}]});
        assert_eq!(input_tokens(&image), INLINE_DATA_TOKENS + 4);
    }

    #[test]
    fn exact_count_uses_o200k() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello world"}],
        });
        // "hello world" is 2 tokens in o200k_base, plus 4 for the message.
        assert_eq!(exact_input_tokens(&body), 6);
    }

    #[test]
    fn output_estimate_rounds_up() {
        assert_eq!(output_tokens(0), 0);
        assert_eq!(output_tokens(1), 1);
        assert_eq!(output_tokens(8), 2);
        assert_eq!(output_tokens(9), 3);
    }

    /// Real-looking requests: a chat conversation, a code review, a
    /// Responses turn with tool calls, and a 20 KB Codex agent turn.
    const CORPUS: &[(&str, &str)] = &[
        (
            "chat_conversation",
            include_str!("../tests/data/requests/chat_conversation.json"),
        ),
        (
            "chat_code_review",
            include_str!("../tests/data/requests/chat_code_review.json"),
        ),
        (
            "responses_tools",
            include_str!("../tests/data/requests/responses_tools.json"),
        ),
        (
            "codex_agent_turn",
            include_str!("../tests/data/requests/codex_agent_turn.json"),
        ),
    ];

    /// The fast estimate against o200k_base on the corpus. Measured: the
    /// estimate is 0.96 to 1.15 times the tokenizer's count (run with
    /// `--nocapture` to see each); the bounds leave room for other English
    /// and code, not for text in other scripts.
    #[test]
    fn estimate_error_against_o200k() {
        for (name, text) in CORPUS {
            let body: Value = serde_json::from_str(text).unwrap();
            let estimated = input_tokens(&body) as f64;
            let counted = exact_input_tokens(&body) as f64;
            let ratio = estimated / counted;
            println!("{name}: estimated {estimated}, o200k_base {counted}, ratio {ratio:.3}");
            assert!(
                (0.85..=1.35).contains(&ratio),
                "{name}: estimate {estimated} vs o200k_base {counted} (ratio {ratio:.3})"
            );
        }
    }

    #[test]
    fn corpus_codex_turn_is_codex_sized() {
        let (_, text) = CORPUS[3];
        assert!(text.len() > 20_000);
    }
}
