//! Incremental parser for Server-Sent Events (`text/event-stream`).
//!
//! Lines and fields follow the WHATWG HTML event stream rules, with two differences that
//! suit a proxy. Every block that a blank line ends is returned, even one without a `data`
//! field, so that a caller forwarding [`SseEvent::raw`] loses no bytes. The `id` and `retry`
//! fields are kept in `raw` but not interpreted.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Default maximum size of one event in bytes (8 MiB), see
/// [`SseParser::with_max_event_bytes`]. A Responses `response.completed` event
/// carries the whole response, instructions and tools included, so it can
/// pass 1 MiB; its usage is lost if it passes this cap.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One event of a stream, ended by a blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Value of the last `event` field, or `None` when the event has no `event` field.
    pub event: Option<String>,

    /// Values of the `data` fields joined with `\n`. Empty when the event has no `data`
    /// field or was larger than the parser's maximum event size.
    pub data: String,

    /// Bytes of the event exactly as received, from the end of the previous event up to
    /// and including the blank line that ends this one. Comments and unknown fields are
    /// kept. For an oversized event, `raw` contains only the bytes that
    /// [`SseParser::take_partial`] has not already returned.
    pub raw: Bytes,
}

/// Incremental Server-Sent Events parser.
///
/// Feed the stream with [`push`](Self::push) in chunks split anywhere, then call
/// [`next_event`](Self::next_event) until it returns `None`. After draining, the parser
/// holds only the bytes of the event that is still incomplete. An event larger than the
/// maximum event size is not parsed: its fields are dropped, [`overflowed`](Self::overflowed)
/// reports it, and the caller takes its bytes with [`take_partial`](Self::take_partial) as
/// they arrive.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current event, plus any complete events not yet returned.
    buffer: BytesMut,

    /// Length of the prefix of `buffer` that is already split into lines and applied.
    scanned: usize,

    /// Offset in `buffer` up to which the current line has been searched for a line
    /// terminator, so that a long line arriving in small chunks is searched only once.
    searched: usize,

    /// `event` field of the current event.
    event: Option<String>,

    /// `data` fields of the current event, each followed by `\n`.
    data: String,

    max_event_bytes: usize,

    /// Whether the fields of the current event are ignored, because it is oversized or
    /// because part of it was taken with `take_partial`.
    skipping: bool,

    /// Whether the current event is larger than `max_event_bytes`.
    overflowed: bool,

    oversized_events: u64,

    /// Whether `buffer` starts in the middle of a line whose start was taken with
    /// `take_partial`. A line terminator at offset 0 then ends that line and is not a
    /// blank line.
    continues_line: bool,

    /// Whether the first line of the stream, which may start with a byte order mark, is
    /// still to come.
    at_stream_start: bool,

    /// Whether [`finish`](Self::finish) was called.
    input_ended: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// Creates a parser with the default maximum event size, [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// Creates a parser that skips the fields of any event larger than `max_event_bytes`,
    /// counting the event's line terminators and its blank line.
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            scanned: 0,
            searched: 0,
            event: None,
            data: String::new(),
            max_event_bytes,
            skipping: false,
            overflowed: false,
            oversized_events: 0,
            continues_line: false,
            at_stream_start: true,
            input_ended: false,
        }
    }

    /// Appends the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// Marks the end of the stream.
    ///
    /// A line that ends in CR at the end of the input is complete only when the next byte
    /// shows whether an LF follows. After `finish`, the CR alone ends it, so
    /// [`next_event`](Self::next_event) can return an event whose blank line is a lone CR.
    pub fn finish(&mut self) {
        self.input_ended = true;
    }

    /// Parses and removes the next complete event, or returns `None` when the buffered
    /// bytes do not end an event yet.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        while let Some((line_end, next_line)) = self.next_line() {
            let mut line_start = self.scanned;
            if self.at_stream_start {
                if self.buffer[line_start..line_end].starts_with(UTF8_BOM) {
                    line_start += UTF8_BOM.len();
                }
                self.at_stream_start = false;
            }

            let is_blank = line_start == line_end && !self.continues_line;
            self.continues_line = false;

            if !self.skipping && next_line > self.max_event_bytes {
                self.start_overflow();
            }

            if !is_blank && !self.skipping {
                let line = &self.buffer[line_start..line_end];
                apply_field(line, &mut self.event, &mut self.data);
            }

            self.scanned = next_line;
            self.searched = next_line;

            if is_blank {
                return Some(self.dispatch());
            }
        }

        if !self.skipping && self.buffer.len() > self.max_event_bytes {
            self.start_overflow();
        }
        None
    }

    /// Removes and returns the buffered bytes of the incomplete event.
    ///
    /// Call it after [`next_event`](Self::next_event) has returned `None`: at the end of
    /// the stream to get the unterminated remainder, and while
    /// [`overflowed`](Self::overflowed) is true to forward an oversized event's bytes
    /// without holding them. If more of the same event arrives later, its fields are
    /// skipped and `next_event` returns the rest of it with empty `data`. Before
    /// [`finish`](Self::finish), a final CR stays buffered, because it may be the blank
    /// line that ends the event.
    pub fn take_partial(&mut self) -> Bytes {
        let mut len = self.buffer.len();
        if !self.input_ended && self.buffer.last() == Some(&b'\r') {
            len -= 1;
        }

        let partial = self.buffer.split_to(len).freeze();
        if let Some(&last) = partial.last() {
            self.continues_line = last != b'\n' && last != b'\r';
            self.skipping = true;
            self.event = None;
            self.data = String::new();
            self.at_stream_start = false;
        }

        self.scanned = 0;
        self.searched = 0;
        partial
    }

    /// Returns whether the event being parsed is larger than the maximum event size.
    /// It becomes false again once `next_event` has returned the rest of that event.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Returns the number of events skipped since the start of the stream because they
    /// were larger than the maximum event size.
    pub fn oversized_events(&self) -> u64 {
        self.oversized_events
    }

    /// Finds the next complete line after `scanned` and returns the offsets of its end
    /// and of the start of the following line.
    fn next_line(&mut self) -> Option<(usize, usize)> {
        let from = self.searched.max(self.scanned);
        let Some(offset) = find_line_terminator(&self.buffer[from..]) else {
            self.searched = self.buffer.len();
            return None;
        };

        let line_end = from + offset;
        let next_line = match line_terminator_len(&self.buffer, line_end, self.input_ended) {
            Some(len) => line_end + len,
            None => {
                self.searched = line_end;
                return None;
            }
        };
        Some((line_end, next_line))
    }

    fn start_overflow(&mut self) {
        self.skipping = true;
        self.overflowed = true;
        self.oversized_events += 1;
        self.event = None;
        self.data = String::new();
    }

    fn dispatch(&mut self) -> SseEvent {
        let raw = self.buffer.split_to(self.scanned).freeze();
        self.scanned = 0;
        self.searched = 0;

        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }

        self.skipping = false;
        self.overflowed = false;
        SseEvent {
            event: self.event.take(),
            data,
            raw,
        }
    }
}

/// Returns the byte range of each `data` field's value in the raw bytes of one event, in
/// stream order. Joined with `\n`, the values give [`SseEvent::data`], unless the event
/// starts the stream with a byte order mark or is oversized.
pub(crate) fn data_value_ranges(raw: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut line_start = 0;

    while let Some(offset) = find_line_terminator(&raw[line_start..]) {
        let line_end = line_start + offset;
        let line = &raw[line_start..line_end];
        if let Some((b"data", value_offset)) = split_field(line) {
            ranges.push(line_start + value_offset..line_end);
        }

        let Some(len) = line_terminator_len(raw, line_end, true) else {
            break;
        };
        line_start = line_end + len;
    }
    ranges
}

fn find_line_terminator(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n' || b == b'\r')
}

/// Returns the length of the line terminator at `at`: 2 for CRLF, 1 for LF or a lone CR.
/// Returns `None` for a CR that ends `bytes` while more input may follow.
fn line_terminator_len(bytes: &[u8], at: usize, input_ended: bool) -> Option<usize> {
    if bytes.get(at) != Some(&b'\r') {
        return Some(1);
    }
    match bytes.get(at + 1) {
        Some(b'\n') => Some(2),
        Some(_) => Some(1),
        None if input_ended => Some(1),
        None => None,
    }
}

/// Splits a line into its field name and the offset of the value, with the single space
/// after the colon removed. Returns `None` for a comment line.
fn split_field(line: &[u8]) -> Option<(&[u8], usize)> {
    if line.first() == Some(&b':') {
        return None;
    }

    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Some((line, line.len()));
    };
    let mut value_offset = colon + 1;
    if line.get(value_offset) == Some(&b' ') {
        value_offset += 1;
    }
    Some((&line[..colon], value_offset))
}

fn apply_field(line: &[u8], event: &mut Option<String>, data: &mut String) {
    let Some((name, value_offset)) = split_field(line) else {
        return;
    };
    let value = String::from_utf8_lossy(&line[value_offset..]);

    match name {
        b"event" => *event = Some(value.into_owned()),
        b"data" => {
            data.push_str(&value);
            data.push('\n');
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to a fresh parser, then ends the stream, and returns the events and
    /// the unterminated remainder.
    fn parse_chunks(parser: &mut SseParser, chunks: &[&[u8]]) -> (Vec<SseEvent>, Bytes) {
        let mut events = Vec::new();
        for chunk in chunks {
            parser.push(chunk);
            while let Some(event) = parser.next_event() {
                events.push(event);
            }
        }

        parser.finish();
        while let Some(event) = parser.next_event() {
            events.push(event);
        }
        let partial = parser.take_partial();
        (events, partial)
    }

    fn parse(chunks: &[&[u8]]) -> (Vec<SseEvent>, Bytes) {
        parse_chunks(&mut SseParser::new(), chunks)
    }

    fn event(name: Option<&str>, data: &str, raw: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_owned),
            data: data.to_owned(),
            raw: Bytes::copy_from_slice(raw.as_bytes()),
        }
    }

    /// A stream with every line ending, comments, unknown fields, multi-line data,
    /// non-ASCII text and an unterminated final event.
    const MIXED_STREAM: &str = concat!(
        ": keep-alive\n",
        "\n",
        "event: greeting\r\n",
        "data: héllo 👋\r\n",
        "\r\n",
        "id: 7\r",
        "data: first\r",
        "data:second\r",
        "\r",
        "retry: 10\n",
        "data\n",
        "\n",
        "data: tail",
    );

    fn mixed_stream_events() -> Vec<SseEvent> {
        vec![
            event(None, "", ": keep-alive\n\n"),
            event(
                Some("greeting"),
                "héllo 👋",
                "event: greeting\r\ndata: héllo 👋\r\n\r\n",
            ),
            event(None, "first\nsecond", "id: 7\rdata: first\rdata:second\r\r"),
            event(None, "", "retry: 10\ndata\n\n"),
        ]
    }

    #[test]
    fn mixed_stream_in_one_chunk() {
        let (events, partial) = parse(&[MIXED_STREAM.as_bytes()]);

        assert_eq!(events, mixed_stream_events());
        assert_eq!(partial, Bytes::from_static(b"data: tail"));
    }

    #[test]
    fn mixed_stream_split_at_every_byte() {
        let stream = MIXED_STREAM.as_bytes();
        for split in 0..=stream.len() {
            let (events, partial) = parse(&[&stream[..split], &stream[split..]]);

            assert_eq!(events, mixed_stream_events(), "split at byte {split}");
            assert_eq!(
                partial,
                Bytes::from_static(b"data: tail"),
                "split at {split}"
            );
        }
    }

    #[test]
    fn mixed_stream_one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = MIXED_STREAM.as_bytes().chunks(1).collect();
        let (events, partial) = parse(&chunks);

        assert_eq!(events, mixed_stream_events());
        assert_eq!(partial, Bytes::from_static(b"data: tail"));
    }

    #[test]
    fn raw_bytes_rebuild_the_stream() {
        let (events, partial) = parse(&[MIXED_STREAM.as_bytes()]);

        let mut rebuilt = Vec::new();
        for event in &events {
            rebuilt.extend_from_slice(&event.raw);
        }
        rebuilt.extend_from_slice(&partial);
        assert_eq!(rebuilt, MIXED_STREAM.as_bytes());
    }

    #[test]
    fn crlf_split_between_cr_and_lf() {
        let mut parser = SseParser::new();

        parser.push(b"data: a\r");
        assert_eq!(parser.next_event(), None);
        parser.push(b"\n\r");
        assert_eq!(parser.next_event(), None, "the CR may start a CRLF pair");
        parser.push(b"\ndata: b\n\n");

        assert_eq!(
            parser.next_event(),
            Some(event(None, "a", "data: a\r\n\r\n"))
        );
        assert_eq!(parser.next_event(), Some(event(None, "b", "data: b\n\n")));
        assert_eq!(parser.next_event(), None);
    }

    #[test]
    fn lone_cr_blank_line_waits_for_next_byte() {
        let mut parser = SseParser::new();

        parser.push(b"data: a\r\r");
        assert_eq!(parser.next_event(), None);

        parser.push(b"data: b\r\r");
        assert_eq!(parser.next_event(), Some(event(None, "a", "data: a\r\r")));
        assert_eq!(parser.next_event(), None);

        parser.finish();
        assert_eq!(parser.next_event(), Some(event(None, "b", "data: b\r\r")));
        assert!(parser.take_partial().is_empty());
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let stream = ": comment\nfoo: bar\nevent: ping\n:data: no\nid: 3\ndata: yes\n\n";
        let (events, _) = parse(&[stream.as_bytes()]);

        assert_eq!(events, vec![event(Some("ping"), "yes", stream)]);
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        let (events, _) = parse(&[b"data: {\ndata:  \"a\": 1\ndata: }\n\n"]);

        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "{\n \"a\": 1\n}");
    }

    #[test]
    fn only_one_space_after_colon_is_removed() {
        let cases: [(&str, &str); 4] = [
            ("data:x\n\n", "x"),
            ("data: x\n\n", "x"),
            ("data:  x\n\n", " x"),
            ("data:\tx\n\n", "\tx"),
        ];
        for (stream, data) in cases {
            let (events, _) = parse(&[stream.as_bytes()]);

            assert_eq!(events.len(), 1, "{stream:?}");
            assert_eq!(events[0].data, data, "{stream:?}");
        }
    }

    #[test]
    fn last_event_field_wins() {
        let (events, _) = parse(&[b"event: a\nevent: b\ndata: x\n\n"]);

        assert_eq!(events[0].event.as_deref(), Some("b"));
    }

    #[test]
    fn empty_data_field_keeps_newlines() {
        let (events, _) = parse(&[b"data:\ndata:\ndata: x\n\n"]);

        assert_eq!(events[0].data, "\n\nx");
    }

    #[test]
    fn byte_order_mark_at_stream_start_is_skipped() {
        let (events, _) = parse(&[b"\xEF\xBB", b"\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]);

        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "a");
        assert_eq!(
            events[0].raw,
            Bytes::from_static(b"\xEF\xBB\xBFdata: a\n\n")
        );
        assert_eq!(
            events[1].data, "",
            "only the first line may start with a BOM"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (events, _) = parse(&[b"data: a\xFFb\n\n"]);

        assert_eq!(events[0].data, "a\u{FFFD}b");
    }

    #[test]
    fn unterminated_event_is_not_returned() {
        let (events, partial) = parse(&[b"data: a\n\ndata: b\n"]);

        assert_eq!(events, vec![event(None, "a", "data: a\n\n")]);
        assert_eq!(partial, Bytes::from_static(b"data: b\n"));
    }

    #[test]
    fn buffer_holds_only_partial_event() {
        let mut parser = SseParser::new();

        parser.push(b"data: a\n\ndata: b\n\ndata: c");
        while parser.next_event().is_some() {}

        assert_eq!(&parser.buffer[..], b"data: c");
    }

    #[test]
    fn oversized_event_is_skipped() {
        let big = format!("data: {}\n\n", "x".repeat(100));
        let stream = format!("data: a\n\n{big}event: b\ndata: b\n\n");
        let mut parser = SseParser::with_max_event_bytes(64);

        let (events, partial) = parse_chunks(&mut parser, &[stream.as_bytes()]);

        assert_eq!(
            events,
            vec![
                event(None, "a", "data: a\n\n"),
                event(None, "", &big),
                event(Some("b"), "b", "event: b\ndata: b\n\n"),
            ]
        );
        assert!(partial.is_empty());
        assert_eq!(parser.oversized_events(), 1);
        assert!(!parser.overflowed());
    }

    #[test]
    fn event_at_size_cap_is_parsed() {
        let stream = b"data: 12345\n\n";
        let mut parser = SseParser::with_max_event_bytes(stream.len());

        let (events, _) = parse_chunks(&mut parser, &[stream]);

        assert_eq!(events[0].data, "12345");
        assert_eq!(parser.oversized_events(), 0);

        let mut parser = SseParser::with_max_event_bytes(stream.len() - 1);
        let (events, _) = parse_chunks(&mut parser, &[stream]);

        assert_eq!(events[0].data, "");
        assert_eq!(parser.oversized_events(), 1);
    }

    #[test]
    fn oversized_event_bytes_are_taken_as_they_arrive() {
        let max_event_bytes = 64;
        let mut parser = SseParser::with_max_event_bytes(max_event_bytes);
        let big = format!("event: big\ndata: {}\r\n\r\n", "y".repeat(1000));
        let stream = format!("{big}data: after\r\n\r\n");

        let mut forwarded = Vec::new();
        let mut events = Vec::new();
        let mut saw_overflow = false;
        for chunk in stream.as_bytes().chunks(7) {
            parser.push(chunk);
            while let Some(event) = parser.next_event() {
                forwarded.extend_from_slice(&event.raw);
                events.push(event);
            }
            if parser.overflowed() {
                saw_overflow = true;
                forwarded.extend_from_slice(&parser.take_partial());
            }

            assert!(parser.buffer.len() <= max_event_bytes + chunk.len());
        }

        assert!(saw_overflow);
        assert_eq!(forwarded, stream.as_bytes());
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, None);
        assert_eq!(events[0].data, "");
        assert_eq!(events[1], event(None, "after", "data: after\r\n\r\n"));
        assert_eq!(parser.oversized_events(), 1);
    }

    #[test]
    fn line_continuing_after_take_is_no_blank_line() {
        let mut parser = SseParser::with_max_event_bytes(12);

        parser.push(b"data: 0123456789");
        assert_eq!(parser.next_event(), None);
        assert!(parser.overflowed());
        assert_eq!(
            parser.take_partial(),
            Bytes::from_static(b"data: 0123456789")
        );

        parser.push(b"\ndata: still the big event\n\ndata: ok\n\n");

        let rest = parser.next_event().expect("rest of the oversized event");
        assert_eq!(
            rest.raw,
            Bytes::from_static(b"\ndata: still the big event\n\n")
        );
        assert_eq!(rest.data, "");
        assert_eq!(parser.next_event(), Some(event(None, "ok", "data: ok\n\n")));
    }

    #[test]
    fn take_partial_keeps_final_cr() {
        let mut parser = SseParser::with_max_event_bytes(12);

        parser.push(b"data: 0123456789\r");
        assert_eq!(parser.next_event(), None);
        assert_eq!(
            parser.take_partial(),
            Bytes::from_static(b"data: 0123456789")
        );

        parser.push(b"\r\ndata: ok\n\n");

        let rest = parser.next_event().expect("rest of the oversized event");
        assert_eq!(rest.raw, Bytes::from_static(b"\r\r\n"));
        assert_eq!(parser.next_event(), Some(event(None, "ok", "data: ok\n\n")));
    }

    #[test]
    fn data_value_ranges_match_parsed_data() {
        let raw = b": c\r\ndata: {\"a\":\rdata:1}\nevent: x\n\n";
        let (events, _) = parse(&[raw]);

        let ranges = data_value_ranges(raw);
        let values: Vec<&[u8]> = ranges.iter().map(|range| &raw[range.clone()]).collect();

        assert_eq!(values, vec![&b"{\"a\":"[..], &b"1}"[..]]);
        assert_eq!(values.join(&b'\n'), events[0].data.as_bytes());
    }
}
