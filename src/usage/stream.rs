//! Metering of OpenAI responses streamed as Server-Sent Events.
//!
//! [`StreamMeter`] reads the reported usage, counts the UTF-8 bytes of generated output
//! for an estimate when no usage arrives, and detects terminal and error events. It can
//! also remove the usage chunk of a Chat Completions or Completions stream when the
//! gateway requested `stream_options.include_usage` and the client did not.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use super::Usage;
use crate::sse::{self, SseEvent, SseParser};

/// OpenAI API whose stream a [`StreamMeter`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamApi {
    /// `/v1/chat/completions`: `chat.completion.chunk` objects, then `data: [DONE]`.
    ChatCompletions,

    /// `/v1/completions`: `text_completion` objects, then `data: [DONE]`.
    Completions,

    /// `/v1/responses`: typed events, ending with `response.completed`,
    /// `response.incomplete` or `response.failed`.
    Responses,
}

/// Responses events whose `delta` field is generated output.
const RESPONSES_DELTA_EVENTS: [&str; 5] = [
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
];

/// Forwarding decision of strip mode for one Chat Completions or Completions chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkAction {
    /// Forward the event's bytes unchanged.
    Forward,

    /// Forward nothing: the chunk carries only the usage that the client did not request.
    Drop,

    /// Forward the event without its top-level `"usage":null` member.
    RemoveNullUsage,
}

/// Meter of one streamed response.
///
/// Feed each body chunk to [`push`](Self::push) and forward what it returns, then call
/// [`finish`](Self::finish) at the end of the stream and forward that too. The accessors
/// report what was metered so far, so read them after `finish` for the whole stream.
#[derive(Debug)]
pub struct StreamMeter {
    api: StreamApi,
    strip_usage_chunk: bool,
    parser: SseParser,
    usage: Option<Usage>,
    output_bytes: u64,
    saw_terminal_event: bool,
    terminal_status: Option<&'static str>,
    saw_error_event: bool,
}

impl StreamMeter {
    /// Creates a meter for a stream of `api`.
    ///
    /// With `strip_usage_chunk`, the forwarded stream is the one the API sends without
    /// `stream_options.include_usage`: the usage-only chunk is dropped and the
    /// `"usage":null` member is removed from the other chunks. Complete events are then
    /// forwarded as they complete. Responses streams always report usage, so the flag is
    /// ignored for [`StreamApi::Responses`].
    pub fn new(api: StreamApi, strip_usage_chunk: bool) -> Self {
        Self {
            api,
            strip_usage_chunk: strip_usage_chunk && api != StreamApi::Responses,
            parser: SseParser::new(),
            usage: None,
            output_bytes: 0,
            saw_terminal_event: false,
            terminal_status: None,
            saw_error_event: false,
        }
    }

    /// Meters the next chunk of the response body and returns the bytes to forward to
    /// the client now.
    ///
    /// Without strip mode, these are the chunk's bytes unchanged. In strip mode, they are
    /// the events that this chunk completes, after stripping, while the incomplete event
    /// is held back.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.parser.push(chunk);

        let mut forward = BytesMut::new();
        self.drain_events(&mut forward);

        if self.strip_usage_chunk {
            forward.freeze()
        } else {
            Bytes::copy_from_slice(chunk)
        }
    }

    /// Meters the events that the end of the stream completes and returns the bytes
    /// still to forward.
    ///
    /// An unterminated final event is forwarded unchanged but not metered, because an
    /// event without its blank line is incomplete. Without strip mode, everything was
    /// forwarded already and the result is empty.
    pub fn finish(&mut self) -> Bytes {
        self.parser.finish();

        let mut forward = BytesMut::new();
        self.drain_events(&mut forward);
        let partial = self.parser.take_partial();

        if self.strip_usage_chunk {
            forward.extend_from_slice(&partial);
            forward.freeze()
        } else {
            Bytes::new()
        }
    }

    /// Returns the usage reported by the stream, or `None` when no usage event arrived.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Returns the number of UTF-8 bytes of generated output seen
    /// in deltas: text, refusals, reasoning and tool call arguments.
    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }

    /// Returns whether the stream's normal end arrived: `data: [DONE]` for Chat
    /// Completions and Completions, or a `response.completed`, `response.incomplete` or
    /// `response.failed` event for Responses.
    pub fn saw_terminal_event(&self) -> bool {
        self.saw_terminal_event
    }

    /// Returns the status of the Responses terminal event: `"completed"`,
    /// `"incomplete"` or `"failed"`. `None` for other APIs or before that event.
    pub fn terminal_status(&self) -> Option<&str> {
        self.terminal_status
    }

    /// Returns whether the stream carried an error: an `error` event, or a data object
    /// with a non-null top-level `error` member.
    pub fn saw_error_event(&self) -> bool {
        self.saw_error_event
    }

    /// Meters every complete event held by the parser and, in strip mode, appends the
    /// bytes to forward for them to `forward`.
    fn drain_events(&mut self, forward: &mut BytesMut) {
        while let Some(event) = self.parser.next_event() {
            let action = self.meter_event(&event);
            if self.strip_usage_chunk {
                forward_event(&event, action, forward);
            }
        }

        // An event over the parser's size cap is not metered. Its bytes are forwarded as
        // they arrive, so the parser does not hold them.
        if self.parser.overflowed() {
            let partial = self.parser.take_partial();
            if self.strip_usage_chunk {
                forward.extend_from_slice(&partial);
            }
        }
    }

    fn meter_event(&mut self, event: &SseEvent) -> ChunkAction {
        if event.event.as_deref() == Some("error") {
            self.saw_error_event = true;
        }

        match self.api {
            StreamApi::ChatCompletions | StreamApi::Completions => {
                self.meter_completion_chunk(event)
            }
            StreamApi::Responses => {
                self.meter_responses_event(event);
                ChunkAction::Forward
            }
        }
    }

    fn meter_completion_chunk(&mut self, event: &SseEvent) -> ChunkAction {
        if event.data.trim() == "[DONE]" {
            self.saw_terminal_event = true;
            return ChunkAction::Forward;
        }

        let Some(chunk) = parse_object(&event.data) else {
            return ChunkAction::Forward;
        };
        self.note_error_member(&chunk);

        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            let chars = match self.api {
                StreamApi::Completions => str_bytes(choice.get("text")),
                _ => choice.get("delta").map_or(0, chat_delta_bytes),
            };
            self.output_bytes = self.output_bytes.saturating_add(chars);
        }

        match chunk.get("usage") {
            None => ChunkAction::Forward,
            Some(Value::Null) => ChunkAction::RemoveNullUsage,
            Some(usage) => {
                if let Some(usage) = Usage::from_json(usage) {
                    self.usage = Some(usage);
                }
                if choices.is_some_and(|choices| choices.is_empty()) {
                    ChunkAction::Drop
                } else {
                    ChunkAction::Forward
                }
            }
        }
    }

    fn meter_responses_event(&mut self, event: &SseEvent) {
        let Some(data) = parse_object(&event.data) else {
            return;
        };
        self.note_error_member(&data);

        // The `type` member repeats the SSE event name, and is read first because it is
        // part of the documented payload.
        let event_type = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();

        let terminal_status = match event_type {
            "response.completed" => "completed",
            "response.incomplete" => "incomplete",
            "response.failed" => "failed",
            "error" => {
                self.saw_error_event = true;
                return;
            }
            delta_event if RESPONSES_DELTA_EVENTS.contains(&delta_event) => {
                let chars = str_bytes(data.get("delta"));
                self.output_bytes = self.output_bytes.saturating_add(chars);
                return;
            }
            _ => return,
        };

        self.saw_terminal_event = true;
        self.terminal_status = Some(terminal_status);

        let usage = data
            .get("response")
            .and_then(|response| response.get("usage"));
        if let Some(usage) = usage.and_then(Usage::from_json) {
            self.usage = Some(usage);
        }
    }

    fn note_error_member(&mut self, data: &Map<String, Value>) {
        if data.get("error").is_some_and(|error| !error.is_null()) {
            self.saw_error_event = true;
        }
    }
}

fn parse_object(data: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(data) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    }
}

fn str_bytes(value: Option<&Value>) -> u64 {
    let text = value.and_then(Value::as_str).unwrap_or_default();
    text.len() as u64
}

/// Counts the generated bytes of one chat `delta`: content, reasoning, refusal and
/// the arguments of tool calls and of the legacy `function_call`.
fn chat_delta_bytes(delta: &Value) -> u64 {
    let mut chars = 0u64;
    for field in ["content", "reasoning_content", "refusal"] {
        chars = chars.saturating_add(str_bytes(delta.get(field)));
    }

    let tool_calls = delta.get("tool_calls").and_then(Value::as_array);
    for tool_call in tool_calls.into_iter().flatten() {
        let arguments = tool_call.get("function").and_then(|f| f.get("arguments"));
        chars = chars.saturating_add(str_bytes(arguments));
    }

    let function_call_arguments = delta.get("function_call").and_then(|f| f.get("arguments"));
    chars.saturating_add(str_bytes(function_call_arguments))
}

fn forward_event(event: &SseEvent, action: ChunkAction, forward: &mut BytesMut) {
    match action {
        ChunkAction::Forward => forward.extend_from_slice(&event.raw),
        ChunkAction::Drop => {}
        ChunkAction::RemoveNullUsage => match null_usage_in_raw(event) {
            Some(member) => {
                forward.extend_from_slice(&event.raw[..member.start]);
                forward.extend_from_slice(&event.raw[member.end..]);
            }
            None => forward.extend_from_slice(&event.raw),
        },
    }
}

/// Finds the bytes of the top-level `"usage":null` member, with one adjacent comma, in
/// the raw bytes of an event.
///
/// Returns `None` when the member cannot be cut out of a single `data` line, for example
/// when a comma and the member sit on different lines of multi-line data.
fn null_usage_in_raw(event: &SseEvent) -> Option<Range<usize>> {
    let value_ranges = sse::data_value_ranges(&event.raw);

    let mut data = Vec::with_capacity(event.data.len());
    for (index, range) in value_ranges.iter().enumerate() {
        if index > 0 {
            data.push(b'\n');
        }
        data.extend_from_slice(&event.raw[range.clone()]);
    }
    // The parser decodes invalid UTF-8 with replacement characters, which moves offsets.
    if data != event.data.as_bytes() {
        return None;
    }

    let member = null_usage_member(&data)?;
    let mut data_start = 0;
    for range in value_ranges {
        let data_end = data_start + range.len();
        if data_start <= member.start && member.end <= data_end {
            let raw_start = range.start + (member.start - data_start);
            return Some(raw_start..raw_start + member.len());
        }
        data_start = data_end + 1;
    }
    None
}

/// Finds the top-level `"usage":null` member of a JSON object and returns the byte range
/// that removes it with one adjacent comma, leaving a valid object.
///
/// The input is expected to be valid JSON, as checked by the caller's parse. A key
/// written with escapes, such as `"usag\u0065"`, is not recognized.
fn null_usage_member(json: &[u8]) -> Option<Range<usize>> {
    let mut depth = 0usize;
    let mut at = 0;

    while let Some(&byte) = json.get(at) {
        match byte {
            b'"' => {
                let string_end = end_of_string(json, at)?;
                if depth == 1 && &json[at + 1..string_end - 1] == b"usage" {
                    if let Some(null_end) = null_value_after_key(json, string_end) {
                        return Some(with_adjacent_comma(json, at, null_end));
                    }
                }
                at = string_end;
            }
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            _ => at += 1,
        }
    }
    None
}

/// Returns the offset after the closing quote of the string that starts at `start`.
fn end_of_string(json: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        match json.get(at)? {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
}

/// Returns the offset after `null` when a colon, `null` and the end of the value follow
/// the key that ends at `key_end`, so that the key is a member name whose value is null.
fn null_value_after_key(json: &[u8], key_end: usize) -> Option<usize> {
    let colon = skip_whitespace(json, key_end);
    if json.get(colon) != Some(&b':') {
        return None;
    }

    let value = skip_whitespace(json, colon + 1);
    let null_end = value + b"null".len();
    if json.get(value..null_end) != Some(&b"null"[..]) {
        return None;
    }

    let next = skip_whitespace(json, null_end);
    if !matches!(json.get(next), Some(b',' | b'}')) {
        return None;
    }
    Some(null_end)
}

/// Extends the member at `start..end` to the comma before it or, for a first member, to
/// the comma and whitespace after it.
fn with_adjacent_comma(json: &[u8], start: usize, end: usize) -> Range<usize> {
    let before = json[..start].iter().rposition(|&b| !is_json_whitespace(b));
    if let Some(comma) = before.filter(|&at| json[at] == b',') {
        return comma..end;
    }

    let after = skip_whitespace(json, end);
    if json.get(after) == Some(&b',') {
        return start..skip_whitespace(json, after + 1);
    }
    start..end
}

fn skip_whitespace(json: &[u8], mut at: usize) -> usize {
    while json.get(at).copied().is_some_and(is_json_whitespace) {
        at += 1;
    }
    at
}

fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat stream as the API sends it with `stream_options.include_usage`.
    const CHAT_WITH_USAGE: &str = concat!(
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{"content":"Grüße"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{"content":" 👋 \"usage\":null"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[],"usage":{"prompt_tokens":14,"completion_tokens":9,"total_tokens":23,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    /// The same stream as the API sends it without `stream_options.include_usage`.
    const CHAT_WITHOUT_USAGE: &str = concat!(
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{"content":"Grüße"},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{"content":" 👋 \"usage\":null"},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_9","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    /// UTF-8 bytes of "Grüße" and " 👋 \"usage\":null" as decoded from JSON.
    const CHAT_OUTPUT_BYTES: u64 = 7 + 18;

    fn chat_usage() -> Usage {
        Usage {
            input_tokens: 14,
            output_tokens: 9,
            total_tokens: 23,
            ..Usage::default()
        }
    }

    /// A Responses stream from `response.created` to `response.completed`.
    const RESPONSES_STREAM: &str = concat!(
        "event: response.created\n",
        r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_5","object":"response","created_at":1718000000,"status":"in_progress","model":"gpt-4.1-mini","output":[],"usage":null}}"#,
        "\n\n",
        "event: response.in_progress\n",
        r#"data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_5","object":"response","created_at":1718000000,"status":"in_progress","model":"gpt-4.1-mini","output":[],"usage":null}}"#,
        "\n\n",
        "event: response.output_item.added\n",
        r#"data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_5","type":"message","status":"in_progress","content":[],"role":"assistant"}}"#,
        "\n\n",
        "event: response.content_part.added\n",
        r#"data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_5","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":""}}"#,
        "\n\n",
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_5","output_index":0,"content_index":0,"delta":"Ça va"}"#,
        "\n\n",
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_5","output_index":0,"content_index":0,"delta":" 🙂"}"#,
        "\n\n",
        "event: response.output_text.done\n",
        r#"data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_5","output_index":0,"content_index":0,"text":"Ça va 🙂"}"#,
        "\n\n",
        "event: response.content_part.done\n",
        r#"data: {"type":"response.content_part.done","sequence_number":7,"item_id":"msg_5","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":"Ça va 🙂"}}"#,
        "\n\n",
        "event: response.output_item.done\n",
        r#"data: {"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"id":"msg_5","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"text":"Ça va 🙂"}],"role":"assistant"}}"#,
        "\n\n",
        "event: response.completed\n",
        r#"data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_5","object":"response","created_at":1718000000,"status":"completed","model":"gpt-4.1-mini","output":[{"id":"msg_5","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"text":"Ça va 🙂"}],"role":"assistant"}],"usage":{"input_tokens":21,"input_tokens_details":{"cached_tokens":16},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":25}}}"#,
        "\n\n",
    );

    fn responses_usage() -> Usage {
        Usage {
            input_tokens: 21,
            output_tokens: 4,
            total_tokens: 25,
            cached_input_tokens: 16,
            reasoning_tokens: 0,
        }
    }

    /// Pushes `chunks` through a new meter and returns it with the forwarded bytes.
    fn run(api: StreamApi, strip_usage_chunk: bool, chunks: &[&[u8]]) -> (StreamMeter, Vec<u8>) {
        let mut meter = StreamMeter::new(api, strip_usage_chunk);
        let mut forwarded = Vec::new();
        for chunk in chunks {
            forwarded.extend_from_slice(&meter.push(chunk));
        }
        forwarded.extend_from_slice(&meter.finish());
        (meter, forwarded)
    }

    /// Removes the top-level `"usage":null` member as strip mode does, or returns `None`.
    fn without_null_usage(json: &str) -> Option<String> {
        let member = null_usage_member(json.as_bytes())?;
        let mut stripped = json.to_owned();
        stripped.replace_range(member, "");
        Some(stripped)
    }

    #[test]
    fn chat_stream_usage_and_output() {
        let (meter, _) = run(
            StreamApi::ChatCompletions,
            false,
            &[CHAT_WITH_USAGE.as_bytes()],
        );

        assert_eq!(meter.usage(), Some(chat_usage()));
        assert_eq!(meter.output_bytes(), CHAT_OUTPUT_BYTES);
        assert!(meter.saw_terminal_event());
        assert_eq!(meter.terminal_status(), None);
        assert!(!meter.saw_error_event());
    }

    #[test]
    fn strip_mode_gives_stream_without_include_usage() {
        let (meter, forwarded) = run(
            StreamApi::ChatCompletions,
            true,
            &[CHAT_WITH_USAGE.as_bytes()],
        );

        assert_eq!(String::from_utf8_lossy(&forwarded), CHAT_WITHOUT_USAGE);
        assert_eq!(meter.usage(), Some(chat_usage()));
        assert_eq!(meter.output_bytes(), CHAT_OUTPUT_BYTES);
    }

    #[test]
    fn pass_through_forwards_each_chunk_unchanged() {
        let mut meter = StreamMeter::new(StreamApi::ChatCompletions, false);

        for chunk in CHAT_WITH_USAGE.as_bytes().chunks(37) {
            assert_eq!(&meter.push(chunk)[..], chunk);
        }
        assert!(meter.finish().is_empty());
        assert_eq!(meter.usage(), Some(chat_usage()));
    }

    #[test]
    fn chat_stream_split_at_every_byte() {
        let stream = CHAT_WITH_USAGE.as_bytes();
        for strip_usage_chunk in [false, true] {
            let (whole, whole_forwarded) =
                run(StreamApi::ChatCompletions, strip_usage_chunk, &[stream]);

            for split in 0..=stream.len() {
                let chunks = [&stream[..split], &stream[split..]];
                let (meter, forwarded) =
                    run(StreamApi::ChatCompletions, strip_usage_chunk, &chunks);

                let case = format!("strip {strip_usage_chunk}, split at byte {split}");
                assert_eq!(forwarded, whole_forwarded, "{case}");
                assert_eq!(meter.usage(), whole.usage(), "{case}");
                assert_eq!(meter.output_bytes(), whole.output_bytes(), "{case}");
                assert_eq!(
                    meter.saw_terminal_event(),
                    whole.saw_terminal_event(),
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn chat_stream_one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = CHAT_WITH_USAGE.as_bytes().chunks(1).collect();
        let (meter, forwarded) = run(StreamApi::ChatCompletions, true, &chunks);

        assert_eq!(String::from_utf8_lossy(&forwarded), CHAT_WITHOUT_USAGE);
        assert_eq!(meter.usage(), Some(chat_usage()));
        assert_eq!(meter.output_bytes(), CHAT_OUTPUT_BYTES);
    }

    #[test]
    fn strip_mode_with_crlf_line_ends() {
        let with_usage = CHAT_WITH_USAGE.replace('\n', "\r\n");
        let without_usage = CHAT_WITHOUT_USAGE.replace('\n', "\r\n");

        let (meter, forwarded) = run(StreamApi::ChatCompletions, true, &[with_usage.as_bytes()]);

        assert_eq!(String::from_utf8_lossy(&forwarded), without_usage);
        assert_eq!(meter.usage(), Some(chat_usage()));
    }

    #[test]
    fn strip_mode_passes_other_events_through() {
        let stream = concat!(
            ": keep-alive\n\n",
            "event: ping\ndata: {}\n\n",
            "id: 1\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
            "data: not json\n\n",
            "data: [DONE]\n\n",
        );
        let expected = concat!(
            ": keep-alive\n\n",
            "event: ping\ndata: {}\n\n",
            "id: 1\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: not json\n\n",
            "data: [DONE]\n\n",
        );

        let (meter, forwarded) = run(StreamApi::ChatCompletions, true, &[stream.as_bytes()]);

        assert_eq!(String::from_utf8_lossy(&forwarded), expected);
        assert_eq!(meter.output_bytes(), 1);
        assert!(meter.saw_terminal_event());
    }

    #[test]
    fn strip_mode_holds_only_the_partial_event() {
        let mut meter = StreamMeter::new(StreamApi::ChatCompletions, true);

        let forwarded = meter.push(b"data: [DONE]\n\ndata: {\"cho");

        assert_eq!(&forwarded[..], b"data: [DONE]\n\n");
        assert_eq!(&meter.finish()[..], b"data: {\"cho");
    }

    #[test]
    fn strip_mode_keeps_usage_on_chunk_with_choices() {
        let stream = "data: {\"choices\":[{\"index\":0,\"text\":\"hi\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n";

        let (meter, forwarded) = run(StreamApi::Completions, true, &[stream.as_bytes()]);

        assert_eq!(String::from_utf8_lossy(&forwarded), stream);
        assert_eq!(meter.usage().map(|usage| usage.total_tokens), Some(3));
    }

    #[test]
    fn null_usage_member_positions() {
        let cases = [
            (r#"{"a":1,"usage":null}"#, r#"{"a":1}"#),
            (r#"{"usage":null,"a":1}"#, r#"{"a":1}"#),
            (r#"{"a":1,"usage":null,"b":[2]}"#, r#"{"a":1,"b":[2]}"#),
            (r#"{"usage":null}"#, r#"{}"#),
            (r#"{ "a": 1, "usage" : null }"#, r#"{ "a": 1 }"#),
            (r#"{ "usage": null, "a": 1 }"#, r#"{ "a": 1 }"#),
            (
                r#"{"text":"\"usage\":null","usage":null}"#,
                r#"{"text":"\"usage\":null"}"#,
            ),
            (
                r#"{"nested":{"usage":null},"usage":null}"#,
                r#"{"nested":{"usage":null}}"#,
            ),
            (r#"{"a":"\\","usage":null}"#, r#"{"a":"\\"}"#),
            (r#"{"a":"\"","usage":null}"#, r#"{"a":"\""}"#),
        ];
        for (json, expected) in cases {
            assert_eq!(
                without_null_usage(json).as_deref(),
                Some(expected),
                "{json}"
            );
        }
    }

    #[test]
    fn null_usage_member_absent() {
        let cases = [
            r#"{"nested":{"usage":null}}"#,
            r#"{"usage":{"prompt_tokens":null}}"#,
            r#"{"type":"usage","x":null}"#,
            r#"{"list":["usage",null]}"#,
            r#"{"text":"\"usage\":null"}"#,
            r#"{"usage":nullish}"#,
        ];
        for json in cases {
            assert_eq!(without_null_usage(json), None, "{json}");
        }
    }

    #[test]
    fn strip_mode_with_multi_line_data() {
        let cases = [
            (
                "data: {\"a\":1\ndata: ,\"usage\":null}\n\n",
                "data: {\"a\":1\ndata: }\n\n",
            ),
            // The comma and the member are on different lines, so the event is kept whole.
            (
                "data: {\"a\":1,\ndata: \"usage\":null}\n\n",
                "data: {\"a\":1,\ndata: \"usage\":null}\n\n",
            ),
        ];
        for (stream, expected) in cases {
            let (_, forwarded) = run(StreamApi::ChatCompletions, true, &[stream.as_bytes()]);

            assert_eq!(String::from_utf8_lossy(&forwarded), expected, "{stream:?}");
        }
    }

    #[test]
    fn chat_output_bytes_count_every_generated_field() {
        let stream = concat!(
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"think"}}]}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{"refusal":"no"}},{"index":1,"delta":{"content":"yes"}}]}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}},{"index":1,"function":{"arguments":"{}"}}]}}]}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{"function_call":{"arguments":"xy"}}}]}"#,
            "\n\n",
            r#"data: {"choices":[{"index":0,"delta":{"content":null,"refusal":7}}]}"#,
            "\n\n",
        );

        let (meter, _) = run(StreamApi::ChatCompletions, false, &[stream.as_bytes()]);

        assert_eq!(meter.output_bytes(), 5 + 2 + 3 + 8 + 2 + 2);
        assert_eq!(meter.usage(), None);
        assert!(!meter.saw_terminal_event());
    }

    #[test]
    fn completions_output_bytes_and_usage() {
        let stream = concat!(
            r#"data: {"id":"cmpl-3","object":"text_completion","created":1718000000,"choices":[{"text":"Once","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","usage":null}"#,
            "\n\n",
            r#"data: {"id":"cmpl-3","object":"text_completion","created":1718000000,"choices":[{"text":" upon","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct","usage":null}"#,
            "\n\n",
            r#"data: {"id":"cmpl-3","object":"text_completion","created":1718000000,"choices":[],"model":"gpt-3.5-turbo-instruct","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            "\n\n",
            "data: [DONE]\n\n",
        );

        let (meter, _) = run(StreamApi::Completions, false, &[stream.as_bytes()]);

        assert_eq!(meter.output_bytes(), 9);
        assert_eq!(meter.usage().map(|usage| usage.charged_tokens()), Some(5));
        assert!(meter.saw_terminal_event());
    }

    #[test]
    fn responses_stream_usage_and_output() {
        let (meter, forwarded) = run(StreamApi::Responses, false, &[RESPONSES_STREAM.as_bytes()]);

        assert_eq!(forwarded, RESPONSES_STREAM.as_bytes());
        assert_eq!(meter.usage(), Some(responses_usage()));
        assert_eq!(meter.output_bytes(), 11);
        assert!(meter.saw_terminal_event());
        assert_eq!(meter.terminal_status(), Some("completed"));
        assert!(!meter.saw_error_event());
    }

    #[test]
    fn responses_stream_split_at_every_byte() {
        let stream = RESPONSES_STREAM.as_bytes();
        for split in 0..=stream.len() {
            let chunks = [&stream[..split], &stream[split..]];
            let (meter, forwarded) = run(StreamApi::Responses, false, &chunks);

            assert_eq!(forwarded, stream, "split at byte {split}");
            assert_eq!(
                meter.usage(),
                Some(responses_usage()),
                "split at byte {split}"
            );
            assert_eq!(meter.output_bytes(), 11, "split at byte {split}");
            assert_eq!(
                meter.terminal_status(),
                Some("completed"),
                "split at byte {split}"
            );
        }
    }

    #[test]
    fn responses_ignores_strip_flag() {
        let mut meter = StreamMeter::new(StreamApi::Responses, true);
        let partial = &RESPONSES_STREAM.as_bytes()[..40];

        assert_eq!(&meter.push(partial)[..], partial);
        assert!(meter.finish().is_empty());
    }

    fn responses_terminal_event(event_type: &str, status: &str) -> String {
        format!(
            "event: {event_type}\ndata: {{\"type\":\"{event_type}\",\"sequence_number\":3,\"response\":{{\"id\":\"resp_6\",\"status\":\"{status}\",\"usage\":{{\"input_tokens\":10,\"output_tokens\":2,\"total_tokens\":12}}}}}}\n\n"
        )
    }

    #[test]
    fn responses_terminal_events() {
        let cases = [
            ("response.completed", "completed"),
            ("response.incomplete", "incomplete"),
            ("response.failed", "failed"),
        ];
        for (event_type, status) in cases {
            let stream = responses_terminal_event(event_type, status);

            let (meter, _) = run(StreamApi::Responses, false, &[stream.as_bytes()]);

            assert!(meter.saw_terminal_event(), "{event_type}");
            assert_eq!(meter.terminal_status(), Some(status), "{event_type}");
            assert_eq!(
                meter.usage().map(|usage| usage.total_tokens),
                Some(12),
                "{event_type}"
            );
        }
    }

    #[test]
    fn responses_non_terminal_events() {
        let stream = responses_terminal_event("response.in_progress", "in_progress");

        let (meter, _) = run(StreamApi::Responses, false, &[stream.as_bytes()]);

        assert!(!meter.saw_terminal_event());
        assert_eq!(meter.terminal_status(), None);
        assert_eq!(meter.usage(), None);
    }

    #[test]
    fn responses_output_bytes_count_every_delta_event() {
        let stream = concat!(
            "event: response.reasoning_summary_text.delta\n",
            r#"data: {"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"summary_index":0,"delta":"plan"}"#,
            "\n\n",
            "event: response.reasoning_text.delta\n",
            r#"data: {"type":"response.reasoning_text.delta","item_id":"rs_1","output_index":0,"content_index":0,"delta":"steps"}"#,
            "\n\n",
            "event: response.function_call_arguments.delta\n",
            r#"data: {"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"{\"q\":1}"}"#,
            "\n\n",
            "event: response.function_call_arguments.done\n",
            r#"data: {"type":"response.function_call_arguments.done","item_id":"fc_1","output_index":1,"arguments":"{\"q\":1}"}"#,
            "\n\n",
            "event: response.refusal.delta\n",
            r#"data: {"type":"response.refusal.delta","item_id":"msg_1","output_index":2,"content_index":0,"delta":"no"}"#,
            "\n\n",
            "event: response.output_text.delta\n",
            r#"data: {"type":"response.output_text.delta","item_id":"msg_1","output_index":2,"content_index":1,"delta":"ok"}"#,
            "\n\n",
        );

        let (meter, _) = run(StreamApi::Responses, false, &[stream.as_bytes()]);

        assert_eq!(meter.output_bytes(), 4 + 5 + 7 + 2 + 2);
    }

    #[test]
    fn cut_chat_stream_has_no_usage() {
        let cut = CHAT_WITH_USAGE
            .find(r#""finish_reason":"stop""#)
            .expect("stop chunk");

        let (meter, forwarded) = run(
            StreamApi::ChatCompletions,
            true,
            &[&CHAT_WITH_USAGE.as_bytes()[..cut]],
        );

        assert_eq!(meter.usage(), None);
        assert_eq!(meter.output_bytes(), CHAT_OUTPUT_BYTES);
        assert!(!meter.saw_terminal_event());
        assert!(forwarded.ends_with(&CHAT_WITH_USAGE.as_bytes()[cut - 20..cut]));
    }

    #[test]
    fn cut_responses_stream_has_no_usage() {
        let cut = RESPONSES_STREAM
            .find("event: response.output_text.done")
            .expect("done event");

        let (meter, _) = run(
            StreamApi::Responses,
            false,
            &[&RESPONSES_STREAM.as_bytes()[..cut]],
        );

        assert_eq!(meter.usage(), None);
        assert_eq!(meter.output_bytes(), 11);
        assert!(!meter.saw_terminal_event());
        assert_eq!(meter.terminal_status(), None);
    }

    #[test]
    fn unterminated_usage_chunk_is_not_metered() {
        let stream = r#"data: {"choices":[],"usage":{"prompt_tokens":1,"total_tokens":1}}"#;

        let (meter, forwarded) = run(StreamApi::ChatCompletions, true, &[stream.as_bytes()]);

        assert_eq!(meter.usage(), None);
        assert_eq!(forwarded, stream.as_bytes());
    }

    #[test]
    fn chat_error_chunk() {
        let stream = concat!(
            r#"data: {"choices":[{"index":0,"delta":{"content":"par"}}]}"#,
            "\n\n",
            r#"data: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#,
            "\n\n",
        );

        let (meter, forwarded) = run(StreamApi::ChatCompletions, true, &[stream.as_bytes()]);

        assert!(meter.saw_error_event());
        assert!(!meter.saw_terminal_event());
        assert_eq!(forwarded, stream.as_bytes());
    }

    #[test]
    fn chat_null_error_member_is_no_error() {
        let stream = "data: {\"choices\":[],\"error\":null}\n\n";

        let (meter, _) = run(StreamApi::ChatCompletions, false, &[stream.as_bytes()]);

        assert!(!meter.saw_error_event());
    }

    #[test]
    fn responses_error_event() {
        let stream = concat!(
            "event: error\n",
            r#"data: {"type":"error","code":"server_error","message":"An error occurred.","param":null,"sequence_number":2}"#,
            "\n\n",
        );

        let (meter, _) = run(StreamApi::Responses, false, &[stream.as_bytes()]);

        assert!(meter.saw_error_event());
        assert!(!meter.saw_terminal_event());
    }

    #[test]
    fn error_event_name_without_json() {
        let (meter, _) = run(
            StreamApi::ChatCompletions,
            false,
            &[b"event: error\ndata: boom\n\n"],
        );

        assert!(meter.saw_error_event());
    }

    #[test]
    fn oversized_event_is_forwarded_unchanged() {
        let content = "z".repeat(3 * sse::DEFAULT_MAX_EVENT_BYTES);
        let big = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}],\"usage\":null}}\n\n"
        );
        let stream = format!("{big}{}", &CHAT_WITH_USAGE);
        let expected = format!("{big}{}", CHAT_WITHOUT_USAGE);

        let mut meter = StreamMeter::new(StreamApi::ChatCompletions, true);
        let mut pushed = 0;
        let mut forwarded = Vec::new();
        for chunk in stream.as_bytes().chunks(64 * 1024) {
            pushed += chunk.len();
            forwarded.extend_from_slice(&meter.push(chunk));

            let held_bytes = pushed - forwarded.len();
            assert!(
                held_bytes <= sse::DEFAULT_MAX_EVENT_BYTES + chunk.len(),
                "{held_bytes} bytes held"
            );
        }
        forwarded.extend_from_slice(&meter.finish());

        assert!(forwarded == expected.as_bytes(), "forwarded bytes differ");
        assert_eq!(meter.usage(), Some(chat_usage()));
        assert_eq!(meter.output_bytes(), CHAT_OUTPUT_BYTES);
    }
}
