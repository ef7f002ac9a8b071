//! Mock OpenAI upstream for tollgate's tests, quickstart and load tests.
//!
//! Serves chat completions, Responses, legacy completions, embeddings and models over plain
//! HTTP/1.1, with JSON and SSE bodies shaped like the OpenAI API and deterministic token counts
//! (see "Token counting" below), so tests can predict the usage that the gateway records.
//! The request header `x-mock-behavior` injects errors, delays and broken streams (see
//! [`Behavior`]). Every request except those to `/mock/*` is stored in memory and returned by
//! `GET /mock/requests`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Sleep;

const MAX_RECORDED_REQUESTS: usize = 10_000;

/// Request bodies larger than this get a 413. The limit is the mock's own, not OpenAI's.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const DEFAULT_OUTPUT_TOKENS: u64 = 16;
const MAX_OUTPUT_TOKENS: u64 = 4096;

/// Text of one generated output token. A response with N output tokens has N of these.
const OUTPUT_TOKEN: &str = "tok ";

const DEFAULT_MODEL: &str = "gpt-4o-mini";
const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "o4-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
];

/// `created` timestamp of every entry of `GET /v1/models`.
const MODEL_CREATED: u64 = 1_700_000_000;
const SYSTEM_FINGERPRINT: &str = "fp_mock";

const DEFAULT_EMBEDDING_DIMENSIONS: u64 = 8;
const MAX_EMBEDDING_DIMENSIONS: u64 = 4096;

/// Upper bound for `slow-first-byte` and `delay-ms`, so a typo cannot hang a test for days.
const MAX_INJECTED_DELAY_MS: u64 = 3_600_000;

/// Pause before a `cut` stream aborts, so hyper flushes the events already written first.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(20);

const RETRY_AFTER_SECONDS: &str = "7";
const BEHAVIOR_HEADER: &str = "x-mock-behavior";
const USAGE_TOTAL_HEADER: HeaderName = HeaderName::from_static("x-mock-usage-total");
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

#[derive(Parser, Debug)]
#[command(
    name = "mock-upstream",
    about = "Mock OpenAI API server (plain HTTP/1.1) for tollgate tests and load tests"
)]
struct Args {
    /// Address to listen on. Port 0 picks a free port, and the bound address is printed on
    /// stdout as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();

    // Installed before the listening line is printed, so a test that sends SIGTERM as soon as
    // it reads the port still gets a clean exit.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            log::error!("failed to install the SIGTERM and SIGINT handlers: {error}");
            return ExitCode::FAILURE;
        }
    };

    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            log::error!("failed to bind {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let local_addr = match listener.local_addr() {
        Ok(address) => address,
        Err(error) => {
            log::error!(
                "failed to read the bound address of {}: {error}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };

    if let Err(error) = print_listening_line(local_addr) {
        log::error!("failed to write the listening address to stdout: {error}");
        return ExitCode::FAILURE;
    }
    log::info!("mock upstream listening on {local_addr}");

    tokio::select! {
        () = serve(listener, Arc::new(MockState::default())) => {}
        name = shutdown => log::info!("received {name}, shutting down"),
    }
    ExitCode::SUCCESS
}

/// Prints `listening on ADDR` to stdout and flushes it at once, because tests read this line to
/// learn the port.
fn print_listening_line(address: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}")?;
    stdout.flush()
}

/// Resolves with the signal's name on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

/// Accepts connections forever and serves each on its own task.
async fn serve(listener: TcpListener, state: Arc<MockState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE under load. The pause bounds the log rate while it lasts.
                log::warn!("failed to accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            log::debug!("failed to set TCP_NODELAY for {peer}: {error}");
        }

        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle_request(Arc::clone(&state), request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);

            // Debug level because `cut` streams and clients that hang up end connections with
            // errors routinely, and load tests would flood the log.
            if let Err(error) = connection.await {
                log::debug!("connection from {peer} ended with an error: {error}");
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct MockState {
    request_log: Mutex<RequestLog>,

    /// Sequence number for response ids, so ids are unique within one run.
    next_id: AtomicU64,
}

impl MockState {
    fn lock_log(&self) -> MutexGuard<'_, RequestLog> {
        // No code panics while holding the lock, and the log stays usable even if one did.
        self.request_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: RecordedRequest) {
        let mut log = self.lock_log();
        if log.entries.len() >= MAX_RECORDED_REQUESTS {
            log.entries.pop_front();
        }
        log.entries.push_back(request);
        log.received += 1;
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[derive(Default)]
struct RequestLog {
    /// Newest last, at most `MAX_RECORDED_REQUESTS`.
    entries: VecDeque<RecordedRequest>,

    /// Requests received since start or the last `DELETE /mock/requests`, including the ones
    /// dropped from `entries` by the cap.
    received: u64,
}

struct RecordedRequest {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    received_at_ms: u64,
}

impl RecordedRequest {
    fn to_json(&self) -> Value {
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(name, value)| json!([name, value]))
            .collect();
        json!({
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": self.body,
            "received_at_ms": self.received_at_ms,
        })
    }
}

type MockBody = Either<Full<Bytes>, EventStream>;

async fn handle_request(
    state: Arc<MockState>,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let received_at_ms = unix_time().as_millis() as u64;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path == "/mock" || path.starts_with("/mock/") {
        return Ok(control_response(&state, &parts.method, path));
    }

    // NOTE: requests whose body cannot be read (over the size limit, or the client hung up)
    // get an error response but are not recorded.
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return Ok(ApiError::invalid_request(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!("Request body exceeds the mock's limit of {MAX_BODY_BYTES} bytes."),
            )
            .into_response());
        }
        Err(error) => {
            log::debug!(
                "failed to read the request body of {} {path}: {error}",
                parts.method
            );
            return Ok(ApiError::invalid_request(
                StatusCode::BAD_REQUEST,
                None,
                format!("Failed to read the request body: {error}."),
            )
            .into_response());
        }
    };

    state.record(RecordedRequest {
        method: parts.method.to_string(),
        path: path.to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at_ms,
    });

    let behavior = match Behavior::from_headers(&parts.headers) {
        Ok(behavior) => behavior,
        Err(error) => return Ok(error.into_response()),
    };

    if let Some(delay) = behavior.slow_first_byte {
        tokio::time::sleep(delay).await;
    }

    let mut response = match route(&state, &parts.method, path, &body, &behavior) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };

    if behavior.close {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    ListModels,
    RetrieveModel,
}

fn route(
    state: &MockState,
    method: &Method,
    path: &str,
    body: &[u8],
    behavior: &Behavior,
) -> Result<Response<MockBody>, ApiError> {
    let endpoint = match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Endpoint::ChatCompletions,
        (&Method::POST, "/v1/responses") => Endpoint::Responses,
        (&Method::POST, "/v1/completions") => Endpoint::Completions,
        (&Method::POST, "/v1/embeddings") => Endpoint::Embeddings,
        (&Method::GET, "/v1/models") => Endpoint::ListModels,
        (&Method::GET, _) if path.starts_with("/v1/models/") => Endpoint::RetrieveModel,
        _ => return Err(ApiError::unknown_url(method, path)),
    };

    if let Some(error) = behavior.error {
        return Err(error.api_error());
    }

    match endpoint {
        Endpoint::ChatCompletions => chat_completions(state, &parse_json_body(body)?, behavior),
        Endpoint::Responses => responses(state, &parse_json_body(body)?, behavior),
        Endpoint::Completions => completions(state, &parse_json_body(body)?, behavior),
        Endpoint::Embeddings => embeddings(&parse_json_body(body)?),
        Endpoint::ListModels => Ok(list_models()),
        Endpoint::RetrieveModel => retrieve_model(&path["/v1/models/".len()..]),
    }
}

fn parse_json_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::invalid_request(
            StatusCode::BAD_REQUEST,
            None,
            format!("Invalid JSON in the request body: {error}. Send a JSON object."),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid_request(
            StatusCode::BAD_REQUEST,
            None,
            "Invalid request body: expected a JSON object.".to_string(),
        ));
    }
    Ok(value)
}

/// Serves the `/mock/*` control endpoints, which are never recorded.
fn control_response(state: &MockState, method: &Method, path: &str) -> Response<MockBody> {
    match (method, path) {
        (&Method::GET, "/mock/requests") => {
            let entries: Vec<Value> = state
                .lock_log()
                .entries
                .iter()
                .map(RecordedRequest::to_json)
                .collect();
            json_response(StatusCode::OK, &Value::Array(entries))
        }
        (&Method::DELETE, "/mock/requests") => {
            let mut log = state.lock_log();
            let cleared = log.entries.len();
            log.entries.clear();
            log.received = 0;
            drop(log);
            json_response(StatusCode::OK, &json!({ "cleared": cleared }))
        }
        (&Method::GET, "/mock/stats") => {
            let log = state.lock_log();
            let stats = json!({ "requests": log.received, "stored": log.entries.len() });
            drop(log);
            json_response(StatusCode::OK, &stats)
        }
        _ => ApiError::unknown_url(method, path).into_response(),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(value.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_response_with_usage(value: &Value, usage_total: u64) -> Response<MockBody> {
    let mut response = json_response(StatusCode::OK, value);
    let headers = response.headers_mut();
    headers.insert(USAGE_TOTAL_HEADER, HeaderValue::from(usage_total));
    // The real API names each response with its own request id.
    headers.insert(
        "x-request-id",
        HeaderValue::from_static("req_mock_upstream"),
    );
    response
}

/// Builds a chunked SSE response. `x-mock-usage-total` carries the usage that the stream
/// reports, or would report if the request or `no-usage` had not left usage out.
fn sse_response(
    events: Vec<Bytes>,
    behavior: &Behavior,
    cut_after_events: usize,
    usage_total: u64,
) -> Response<MockBody> {
    let stream = EventStream {
        events: events.into_iter(),
        delay: behavior.event_delay,
        sleep: None,
        abort_after: behavior.cut.then_some(cut_after_events),
        sent: 0,
        abort_paused: false,
    };
    let mut response = Response::new(Either::Right(stream));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert(USAGE_TOTAL_HEADER, HeaderValue::from(usage_total));
    response
}

fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error_type: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
    message: String,
}

impl ApiError {
    fn invalid_request(status: StatusCode, param: Option<&str>, message: String) -> Self {
        Self {
            status,
            error_type: "invalid_request_error",
            code: None,
            param: param.map(str::to_string),
            message,
        }
    }

    fn missing_parameter(param: &str) -> Self {
        let mut error = Self::invalid_request(
            StatusCode::BAD_REQUEST,
            Some(param),
            format!("Missing required parameter: '{param}'."),
        );
        error.code = Some("missing_required_parameter");
        error
    }

    fn invalid_parameter(param: &str, expected: &str, value: &Value) -> Self {
        let mut error = Self::invalid_request(
            StatusCode::BAD_REQUEST,
            Some(param),
            format!("Invalid value for '{param}': expected {expected}, got {value}."),
        );
        error.code = Some("invalid_value");
        error
    }

    fn unknown_url(method: &Method, path: &str) -> Self {
        let mut error = Self::invalid_request(
            StatusCode::NOT_FOUND,
            None,
            format!("Unknown request URL: {method} {path} is not served by the mock upstream."),
        );
        error.code = Some("unknown_url");
        error
    }

    fn into_response(self) -> Response<MockBody> {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviours selected by `x-mock-behavior`
// ---------------------------------------------------------------------------------------------

/// Test behaviour parsed from the comma-separated `x-mock-behavior` request header:
///
/// - `error-429`, `error-500`, `error-400`: respond with that status and an OpenAI error body
///   (429 also sends `retry-after: 7`). The first error listed wins.
/// - `slow-first-byte=MS`: wait MS milliseconds before sending the response headers, error
///   responses included.
/// - `delay-ms=MS`: wait MS milliseconds between stream events. JSON responses ignore it.
/// - `cut`: in a stream, send about half the output deltas, then abort the connection without
///   the terminating chunk. JSON responses ignore it.
/// - `no-usage`: leave usage out of chat and legacy streams even with `include_usage`, set it to
///   null in Responses objects, and omit it from chat and legacy JSON.
/// - `incomplete`, `failed`: give a Responses request, streamed or not, the status
///   `incomplete` or `failed`.
/// - `close`: send `connection: close` and close the connection after the response.
/// - `cached-tokens=N`: report min(N, input tokens) as cached input tokens.
/// - `reasoning-tokens=N`: report N reasoning tokens, which count as output tokens on top of
///   the generated deltas.
/// - `tool-call=NAME`: answer a Responses request, streamed or not, with one call of the
///   function NAME (see [`TOOL_CALL_ARGUMENTS`]) in place of text, unless the last input item
///   is a `function_call_output`, which gets text as usual. Usage is that of a text reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Behavior {
    error: Option<InjectedError>,
    slow_first_byte: Option<Duration>,
    event_delay: Option<Duration>,
    cut: bool,
    no_usage: bool,
    ending: ResponseStatus,
    close: bool,
    cached_tokens: u64,
    reasoning_tokens: u64,
    tool_call: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InjectedError {
    RateLimit,
    Server,
    InvalidRequest,
}

impl InjectedError {
    fn api_error(self) -> ApiError {
        let reason = "because x-mock-behavior requested it";
        match self {
            Self::RateLimit => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error_type: "requests",
                code: Some("rate_limit_exceeded"),
                param: None,
                message: format!("Rate limit reached (mock error {reason})."),
            },
            Self::Server => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error_type: "server_error",
                code: None,
                param: None,
                message: format!("The server had an error (mock error {reason})."),
            },
            Self::InvalidRequest => ApiError::invalid_request(
                StatusCode::BAD_REQUEST,
                None,
                format!("Invalid request (mock error {reason})."),
            ),
        }
    }
}

impl Behavior {
    fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut behavior = Self::default();
        for value in headers.get_all(BEHAVIOR_HEADER) {
            let value = value.to_str().map_err(|_| {
                behavior_error(format!("Invalid {BEHAVIOR_HEADER} header: not ASCII text."))
            })?;
            behavior.apply(value)?;
        }
        Ok(behavior)
    }

    fn apply(&mut self, header_value: &str) -> Result<(), ApiError> {
        for item in header_value.split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (name, argument) = match item.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument.trim())),
                None => (item, None),
            };
            match (name, argument) {
                ("error-429", None) => {
                    self.error.get_or_insert(InjectedError::RateLimit);
                }
                ("error-500", None) => {
                    self.error.get_or_insert(InjectedError::Server);
                }
                ("error-400", None) => {
                    self.error.get_or_insert(InjectedError::InvalidRequest);
                }
                ("slow-first-byte", Some(argument)) => {
                    self.slow_first_byte = Some(parse_delay(name, argument)?);
                }
                ("delay-ms", Some(argument)) => {
                    self.event_delay = Some(parse_delay(name, argument)?);
                }
                ("cut", None) => self.cut = true,
                ("no-usage", None) => self.no_usage = true,
                ("incomplete", None) => self.ending = ResponseStatus::Incomplete,
                ("failed", None) => self.ending = ResponseStatus::Failed,
                ("close", None) => self.close = true,
                ("cached-tokens", Some(argument)) => {
                    self.cached_tokens = parse_count(name, argument)?;
                }
                ("reasoning-tokens", Some(argument)) => {
                    self.reasoning_tokens = parse_count(name, argument)?;
                }
                ("tool-call", Some(argument)) if !argument.is_empty() => {
                    self.tool_call = Some(argument.to_string());
                }
                _ => {
                    return Err(behavior_error(format!(
                        "Unknown {BEHAVIOR_HEADER} item '{item}'. Expected error-429, \
                         error-500, error-400, slow-first-byte=MS, delay-ms=MS, cut, no-usage, \
                         incomplete, failed, close, cached-tokens=N, reasoning-tokens=N or \
                         tool-call=NAME."
                    )));
                }
            }
        }
        Ok(())
    }
}

fn parse_count(name: &str, argument: &str) -> Result<u64, ApiError> {
    argument.parse().map_err(|_| {
        behavior_error(format!(
            "Invalid {BEHAVIOR_HEADER} item '{name}={argument}': expected a non-negative integer."
        ))
    })
}

fn parse_delay(name: &str, argument: &str) -> Result<Duration, ApiError> {
    let millis = parse_count(name, argument)?;
    if millis > MAX_INJECTED_DELAY_MS {
        return Err(behavior_error(format!(
            "Invalid {BEHAVIOR_HEADER} item '{name}={argument}': \
             the maximum is {MAX_INJECTED_DELAY_MS} ms."
        )));
    }
    Ok(Duration::from_millis(millis))
}

fn behavior_error(message: String) -> ApiError {
    let mut error = ApiError::invalid_request(StatusCode::BAD_REQUEST, None, message);
    error.code = Some("invalid_mock_behavior");
    error
}

// ---------------------------------------------------------------------------------------------
// Token counting
//
// The mock imitates a tokenizer with a fixed rule, so tests can compute the expected usage:
// - Text costs one token per 4 bytes of UTF-8, rounded up once per message or prompt, so ""
//   is 0 tokens and "hello" is 2.
// - Chat messages and Responses input items cost 3 tokens each on top of their text, and each
//   chat or Responses request costs 3 more for priming the reply. Responses `instructions`
//   count as one more message, and a string `input` as one message.
// - The text of a message is its `content` string, or the `text` of each content part, plus
//   the `output` and `arguments` strings of Responses function-call items. Images, tool
//   definitions and other fields cost nothing.
// - A legacy `prompt` or embeddings `input` costs only its text tokens, summed over an array
//   of strings, and an array of token ids costs one token per id.
// - Output tokens are the generated "tok " deltas: `max_completion_tokens`, `max_tokens` or
//   `max_output_tokens` from the request, else 16, capped at 4096.
// ---------------------------------------------------------------------------------------------

const MESSAGE_OVERHEAD_TOKENS: u64 = 3;
const REPLY_PRIMING_TOKENS: u64 = 3;

fn text_tokens(text_bytes: usize) -> u64 {
    text_bytes.div_ceil(4) as u64
}

/// Returns the byte length of a string, or of the `text` fields of an array of content parts.
fn content_bytes(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(text)) => text.len(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part {
                Value::String(text) => text.len(),
                _ => part.get("text").and_then(Value::as_str).map_or(0, str::len),
            })
            .sum(),
        _ => 0,
    }
}

fn message_text_bytes(message: &Value) -> usize {
    let arguments = message.get("arguments").and_then(Value::as_str);
    content_bytes(message.get("content"))
        + content_bytes(message.get("output"))
        + arguments.map_or(0, str::len)
}

/// Returns the input tokens of a conversation whose messages have these text byte lengths.
fn conversation_tokens(message_bytes: impl IntoIterator<Item = usize>) -> u64 {
    let messages: u64 = message_bytes
        .into_iter()
        .map(|bytes| MESSAGE_OVERHEAD_TOKENS + text_tokens(bytes))
        .sum();
    REPLY_PRIMING_TOKENS + messages
}

fn chat_input_tokens(messages: &[Value]) -> u64 {
    conversation_tokens(messages.iter().map(message_text_bytes))
}

fn responses_input_tokens(request: &Value) -> u64 {
    let instructions = request
        .get("instructions")
        .and_then(Value::as_str)
        .map(str::len);
    let input: Vec<usize> = match request.get("input") {
        Some(Value::String(text)) => vec![text.len()],
        Some(Value::Array(items)) => items.iter().map(message_text_bytes).collect(),
        _ => Vec::new(),
    };
    conversation_tokens(instructions.into_iter().chain(input))
}

/// One prompt of a legacy completion or one embeddings input.
#[derive(Debug, PartialEq, Eq)]
struct PromptInput {
    tokens: u64,

    /// FNV-1a hash of the text or token ids, which seeds the embedding vector.
    seed: u64,
}

impl PromptInput {
    fn from_text(text: &str) -> Self {
        Self {
            tokens: text_tokens(text.len()),
            seed: fnv1a(text.as_bytes().iter().copied()),
        }
    }

    fn from_token_ids(ids: &[Value]) -> Option<Self> {
        let ids: Option<Vec<u64>> = ids.iter().map(Value::as_u64).collect();
        let ids = ids?;
        Some(Self {
            tokens: ids.len() as u64,
            seed: fnv1a(ids.iter().flat_map(|id| id.to_le_bytes())),
        })
    }
}

/// Parses a legacy `prompt` or embeddings `input`: a string, an array of strings, an array of
/// token ids, or an array of arrays of token ids.
fn parse_prompt_inputs(param: &str, value: &Value) -> Result<Vec<PromptInput>, ApiError> {
    let expected = "a string, an array of strings, or an array of token ids";
    let invalid = || ApiError::invalid_parameter(param, expected, value);
    match value {
        Value::String(text) => Ok(vec![PromptInput::from_text(text)]),
        Value::Array(items) if items.is_empty() => Err(invalid()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            Ok(vec![PromptInput::from_token_ids(items).ok_or_else(invalid)?])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(PromptInput::from_text(text)),
                Value::Array(ids) => PromptInput::from_token_ids(ids),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Returns how many output tokens to generate, and whether that count is the request's own
/// limit (the reply then stops with finish_reason `length`). The first field present wins.
fn output_token_count(
    request: &Value,
    limit_fields: &[&'static str],
) -> Result<(u64, bool), ApiError> {
    for &field in limit_fields {
        let value = match request.get(field) {
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        let Some(limit) = value.as_u64() else {
            return Err(ApiError::invalid_parameter(
                field,
                "a non-negative integer",
                value,
            ));
        };
        if limit > MAX_OUTPUT_TOKENS {
            return Ok((MAX_OUTPUT_TOKENS, false));
        }
        return Ok((limit, true));
    }
    Ok((DEFAULT_OUTPUT_TOKENS, false))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    input_tokens: u64,
    cached_tokens: u64,

    /// Generated deltas plus reasoning tokens, as OpenAI counts reasoning into output.
    output_tokens: u64,
    reasoning_tokens: u64,
}

impl Usage {
    fn new(input_tokens: u64, deltas: u64, behavior: &Behavior) -> Self {
        Self {
            input_tokens,
            cached_tokens: behavior.cached_tokens.min(input_tokens),
            output_tokens: deltas + behavior.reasoning_tokens,
            reasoning_tokens: behavior.reasoning_tokens,
        }
    }

    fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Usage in the chat and legacy completions shape.
    fn to_completions_json(self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens(),
            "prompt_tokens_details": {
                "cached_tokens": self.cached_tokens,
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }

    fn to_responses_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": { "cached_tokens": self.cached_tokens },
            "output_tokens": self.output_tokens,
            "output_tokens_details": { "reasoning_tokens": self.reasoning_tokens },
            "total_tokens": self.total_tokens(),
        })
    }
}

/// The reply the mock generates for one request: `deltas` copies of `OUTPUT_TOKEN`.
#[derive(Debug)]
struct Generation {
    sequence: u64,
    created: u64,
    model: String,
    deltas: u64,
    finish_reason: &'static str,
    usage: Usage,
}

impl Generation {
    fn new(
        state: &MockState,
        request: &Value,
        input_tokens: u64,
        limit_fields: &[&'static str],
        behavior: &Behavior,
    ) -> Result<Self, ApiError> {
        let (deltas, limited) = output_token_count(request, limit_fields)?;
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_MODEL);
        Ok(Self {
            sequence: state.next_id(),
            created: unix_time().as_secs(),
            model: model.to_string(),
            deltas,
            finish_reason: if limited { "length" } else { "stop" },
            usage: Usage::new(input_tokens, deltas, behavior),
        })
    }

    fn text(&self) -> String {
        OUTPUT_TOKEN.repeat(self.deltas as usize)
    }

    /// Number of deltas a `cut` stream sends before it aborts.
    fn cut_deltas(&self) -> usize {
        self.deltas.div_ceil(2) as usize
    }
}

fn is_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool) == Some(true)
}

fn include_usage(request: &Value) -> bool {
    let include_usage = request.pointer("/stream_options/include_usage");
    include_usage.and_then(Value::as_bool) == Some(true)
}

fn data_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

// ---------------------------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------------------------

fn chat_completions(
    state: &MockState,
    request: &Value,
    behavior: &Behavior,
) -> Result<Response<MockBody>, ApiError> {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::missing_parameter("messages"));
    };
    let input_tokens = chat_input_tokens(messages);
    let limit_fields = ["max_completion_tokens", "max_tokens"];
    let generation = Generation::new(state, request, input_tokens, &limit_fields, behavior)?;
    let usage_total = generation.usage.total_tokens();

    if is_stream(request) {
        let include_usage = include_usage(request) && !behavior.no_usage;
        let events = chat_stream_events(&generation, include_usage);
        let cut_after = 1 + generation.cut_deltas();
        return Ok(sse_response(events, behavior, cut_after, usage_total));
    }

    let completion = chat_completion_object(&generation, !behavior.no_usage);
    Ok(json_response_with_usage(&completion, usage_total))
}

fn chat_completion_object(generation: &Generation, report_usage: bool) -> Value {
    let mut completion = json!({
        "id": format!("chatcmpl-mock{:012}", generation.sequence),
        "object": "chat.completion",
        "created": generation.created,
        "model": generation.model,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": generation.text(),
                "refusal": null,
                "annotations": [],
            },
            "logprobs": null,
            "finish_reason": generation.finish_reason,
        }],
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    if report_usage {
        completion["usage"] = generation.usage.to_completions_json();
    }
    completion
}

/// Builds the SSE events of a streamed chat completion. As in the OpenAI API, only with
/// `include_usage` does every chunk carry `"usage": null` and a final chunk with empty
/// `choices` carry the usage.
fn chat_stream_events(generation: &Generation, include_usage: bool) -> Vec<Bytes> {
    let id = format!("chatcmpl-mock{:012}", generation.sequence);
    let chunk = |choice: Option<Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": generation.created,
            "model": generation.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choice.into_iter().collect::<Vec<_>>(),
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let choice = |delta: Value, finish_reason: Option<&str>| {
        json!({
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        })
    };

    let deltas = generation.deltas as usize;
    let mut events = Vec::with_capacity(deltas + 4);
    let role = json!({ "role": "assistant", "content": "", "refusal": null });
    events.push(data_event(&chunk(Some(choice(role, None)))));

    // Every content chunk is identical, so one encoded event is shared by reference count.
    let content = json!({ "content": OUTPUT_TOKEN });
    let content_event = data_event(&chunk(Some(choice(content, None))));
    events.extend(std::iter::repeat_n(content_event, deltas));

    let finish = choice(json!({}), Some(generation.finish_reason));
    events.push(data_event(&chunk(Some(finish))));

    if include_usage {
        let mut usage_chunk = chunk(None);
        usage_chunk["usage"] = generation.usage.to_completions_json();
        events.push(data_event(&usage_chunk));
    }
    events.push(Bytes::from_static(DONE_EVENT));
    events
}

// ---------------------------------------------------------------------------------------------
// Legacy completions
// ---------------------------------------------------------------------------------------------

fn completions(
    state: &MockState,
    request: &Value,
    behavior: &Behavior,
) -> Result<Response<MockBody>, ApiError> {
    // NOTE: an array of prompts is counted as input but still gets a single choice, where
    // the OpenAI API returns one choice per prompt.
    let input_tokens = match request.get("prompt") {
        None | Some(Value::Null) => 0,
        Some(prompt) => parse_prompt_inputs("prompt", prompt)?
            .iter()
            .map(|input| input.tokens)
            .sum(),
    };
    let generation = Generation::new(state, request, input_tokens, &["max_tokens"], behavior)?;
    let usage_total = generation.usage.total_tokens();

    if is_stream(request) {
        let include_usage = include_usage(request) && !behavior.no_usage;
        let events = completion_stream_events(&generation, include_usage);
        let cut_after = generation.cut_deltas();
        return Ok(sse_response(events, behavior, cut_after, usage_total));
    }

    let mut completion = completion_chunk(&generation, Some(generation.finish_reason));
    completion["choices"][0]["text"] = Value::String(generation.text());
    if !behavior.no_usage {
        completion["usage"] = generation.usage.to_completions_json();
    }
    Ok(json_response_with_usage(&completion, usage_total))
}

/// Builds a `text_completion` object with one choice whose text is `OUTPUT_TOKEN`.
fn completion_chunk(generation: &Generation, finish_reason: Option<&str>) -> Value {
    json!({
        "id": format!("cmpl-mock{:012}", generation.sequence),
        "object": "text_completion",
        "created": generation.created,
        "model": generation.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{
            "text": OUTPUT_TOKEN,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
    })
}

/// Builds the SSE events of a streamed legacy completion, with the same usage rule as chat.
fn completion_stream_events(generation: &Generation, include_usage: bool) -> Vec<Bytes> {
    let with_usage_field = |mut chunk: Value| {
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };

    let deltas = generation.deltas as usize;
    let mut events = Vec::with_capacity(deltas + 3);
    let content_event = data_event(&with_usage_field(completion_chunk(generation, None)));
    events.extend(std::iter::repeat_n(content_event, deltas));

    let mut finish = completion_chunk(generation, Some(generation.finish_reason));
    finish["choices"][0]["text"] = Value::String(String::new());
    events.push(data_event(&with_usage_field(finish)));

    if include_usage {
        let mut usage_chunk = completion_chunk(generation, None);
        usage_chunk["choices"] = json!([]);
        usage_chunk["usage"] = generation.usage.to_completions_json();
        events.push(data_event(&usage_chunk));
    }
    events.push(Bytes::from_static(DONE_EVENT));
    events
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ResponseStatus {
    InProgress,
    #[default]
    Completed,
    Incomplete,
    Failed,
}

impl ResponseStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Incomplete => "incomplete",
            Self::Failed => "failed",
        }
    }

    /// Status of the output message once the response has ended with `self`.
    fn item_status(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            _ => "incomplete",
        }
    }
}

fn responses(
    state: &MockState,
    request: &Value,
    behavior: &Behavior,
) -> Result<Response<MockBody>, ApiError> {
    let input_tokens = responses_input_tokens(request);
    let limit_fields = ["max_output_tokens"];
    let generation = Generation::new(state, request, input_tokens, &limit_fields, behavior)?;
    let usage_total = generation.usage.total_tokens();
    let report_usage = !behavior.no_usage;

    if let Some(name) = tool_call_name(request, behavior) {
        return Ok(function_call_response(&generation, request, name, behavior));
    }

    if is_stream(request) {
        let events = responses_stream_events(&generation, request, behavior.ending, report_usage);
        // created, in_progress, output_item.added and content_part.added come before deltas.
        let cut_after = 4 + generation.cut_deltas();
        return Ok(sse_response(events, behavior, cut_after, usage_total));
    }

    let item = message_item(&generation, behavior.ending.item_status(), true);
    let usage = responses_usage(&generation, report_usage);
    let response = response_object(&generation, request, behavior.ending, vec![item], usage);
    Ok(json_response_with_usage(&response, usage_total))
}

fn responses_usage(generation: &Generation, report_usage: bool) -> Value {
    if report_usage {
        generation.usage.to_responses_json()
    } else {
        Value::Null
    }
}

fn message_id(generation: &Generation) -> String {
    format!("msg_mock{:012}", generation.sequence)
}

fn output_text_part(text: String) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

fn message_item(generation: &Generation, status: &str, with_text: bool) -> Value {
    let content = if with_text {
        vec![output_text_part(generation.text())]
    } else {
        Vec::new()
    };
    json!({
        "id": message_id(generation),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

/// Builds a Responses API `response` object. Request fields that the mock ignores are echoed
/// back as the real API does.
fn response_object(
    generation: &Generation,
    request: &Value,
    status: ResponseStatus,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let echo = |field: &str, default: Value| request.get(field).cloned().unwrap_or(default);
    let error = match status {
        ResponseStatus::Failed => json!({
            "code": "server_error",
            "message": "The response failed because x-mock-behavior requested it.",
        }),
        _ => Value::Null,
    };
    let incomplete_details = match status {
        ResponseStatus::Incomplete => json!({ "reason": "max_output_tokens" }),
        _ => Value::Null,
    };
    json!({
        "id": format!("resp_mock{:012}", generation.sequence),
        "object": "response",
        "created_at": generation.created,
        "status": status.as_str(),
        "background": false,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "model": generation.model,
        "output": output,
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": echo("previous_response_id", Value::Null),
        "reasoning": echo("reasoning", json!({ "effort": null, "summary": null })),
        "store": echo("store", json!(true)),
        "temperature": echo("temperature", json!(1.0)),
        "text": echo("text", json!({ "format": { "type": "text" } })),
        "tool_choice": echo("tool_choice", json!("auto")),
        "tools": echo("tools", json!([])),
        "top_p": echo("top_p", json!(1.0)),
        "truncation": echo("truncation", json!("disabled")),
        "usage": usage,
        "user": echo("user", Value::Null),
        "metadata": echo("metadata", json!({})),
    })
}

/// Collects named SSE events whose payloads carry `type` and an increasing `sequence_number`.
struct ResponsesEventWriter {
    events: Vec<Bytes>,
    sequence_number: u64,
}

impl ResponsesEventWriter {
    /// Appends an event whose payload is `type`, `sequence_number`, then the fields of `fields`.
    fn push(&mut self, event_type: &str, fields: Value) {
        let mut payload = json!({
            "type": event_type,
            "sequence_number": self.sequence_number,
        });
        if let (Some(payload), Value::Object(fields)) = (payload.as_object_mut(), fields) {
            payload.extend(fields);
        }
        self.sequence_number += 1;

        let event = format!("event: {event_type}\ndata: {payload}\n\n");
        self.events.push(Bytes::from(event));
    }
}

/// Builds the SSE events of a streamed response with one text message, in the OpenAI API's
/// order, ending with `response.completed`, `response.incomplete` or `response.failed`.
/// Clients such as the Codex CLI report a stream that ends before that final event as failed.
fn responses_stream_events(
    generation: &Generation,
    request: &Value,
    ending: ResponseStatus,
    report_usage: bool,
) -> Vec<Bytes> {
    let deltas = generation.deltas as usize;
    let mut writer = ResponsesEventWriter {
        events: Vec::with_capacity(deltas + 9),
        sequence_number: 0,
    };
    let in_progress = ResponseStatus::InProgress;
    let started = response_object(generation, request, in_progress, Vec::new(), Value::Null);
    writer.push("response.created", json!({ "response": started }));
    writer.push("response.in_progress", json!({ "response": started }));

    let item_id = message_id(generation);
    let item = message_item(generation, "in_progress", false);
    let position = json!({ "item_id": item_id, "output_index": 0, "content_index": 0 });
    let at_position = |fields: Value| {
        let mut payload = position.clone();
        if let (Some(payload), Value::Object(fields)) = (payload.as_object_mut(), fields) {
            payload.extend(fields);
        }
        payload
    };
    writer.push(
        "response.output_item.added",
        json!({ "output_index": 0, "item": item }),
    );
    writer.push(
        "response.content_part.added",
        at_position(json!({ "part": output_text_part(String::new()) })),
    );

    for _ in 0..deltas {
        let delta = json!({ "delta": OUTPUT_TOKEN, "logprobs": [] });
        writer.push("response.output_text.delta", at_position(delta));
    }

    let text = generation.text();
    writer.push(
        "response.output_text.done",
        at_position(json!({ "text": text, "logprobs": [] })),
    );
    writer.push(
        "response.content_part.done",
        at_position(json!({ "part": output_text_part(text) })),
    );
    let item = message_item(generation, ending.item_status(), true);
    writer.push(
        "response.output_item.done",
        json!({ "output_index": 0, "item": item }),
    );

    let usage = responses_usage(generation, report_usage);
    let finished = response_object(generation, request, ending, vec![item], usage);
    let final_event = match ending {
        ResponseStatus::Incomplete => "response.incomplete",
        ResponseStatus::Failed => "response.failed",
        ResponseStatus::InProgress | ResponseStatus::Completed => "response.completed",
    };
    writer.push(final_event, json!({ "response": finished }));
    writer.events
}

/// Arguments of every function call that `tool-call=NAME` makes: a command for the Codex CLI's
/// `exec_command` tool, which prints a fixed line.
const TOOL_CALL_ARGUMENTS: &str = r#"{"cmd":"echo tool-call-output"}"#;

/// The function a `tool-call=NAME` request should call, or `None` when the request already
/// returns a call's output, so a client that runs the call gets a text answer next.
fn tool_call_name<'a>(request: &Value, behavior: &'a Behavior) -> Option<&'a str> {
    let name = behavior.tool_call.as_deref()?;
    let last_item = request.get("input")?.as_array()?.last();
    let answered = last_item.is_some_and(|item| item["type"] == "function_call_output");
    (!answered).then_some(name)
}

fn function_call_item(generation: &Generation, name: &str, status: &str, arguments: &str) -> Value {
    json!({
        "id": format!("fc_mock{:012}", generation.sequence),
        "type": "function_call",
        "status": status,
        "name": name,
        "call_id": format!("call_mock{:012}", generation.sequence),
        "arguments": arguments,
    })
}

/// Builds a completed response whose only output is a call of `name`, as JSON or as the SSE
/// events of a streamed function call. A `cut` stream aborts after `output_item.added`.
fn function_call_response(
    generation: &Generation,
    request: &Value,
    name: &str,
    behavior: &Behavior,
) -> Response<MockBody> {
    let usage_total = generation.usage.total_tokens();
    let report_usage = !behavior.no_usage;
    let completed = ResponseStatus::Completed;
    let item = function_call_item(generation, name, "completed", TOOL_CALL_ARGUMENTS);
    let usage = responses_usage(generation, report_usage);
    let finished = response_object(generation, request, completed, vec![item.clone()], usage);
    if !is_stream(request) {
        return json_response_with_usage(&finished, usage_total);
    }

    let mut writer = ResponsesEventWriter {
        events: Vec::with_capacity(7),
        sequence_number: 0,
    };
    let in_progress = ResponseStatus::InProgress;
    let started = response_object(generation, request, in_progress, Vec::new(), Value::Null);
    writer.push("response.created", json!({ "response": started }));
    writer.push("response.in_progress", json!({ "response": started }));

    let added = function_call_item(generation, name, "in_progress", "");
    writer.push(
        "response.output_item.added",
        json!({ "output_index": 0, "item": added }),
    );
    let item_id = item["id"].clone();
    writer.push(
        "response.function_call_arguments.delta",
        json!({ "item_id": item_id, "output_index": 0, "delta": TOOL_CALL_ARGUMENTS }),
    );
    writer.push(
        "response.function_call_arguments.done",
        json!({ "item_id": item_id, "output_index": 0, "arguments": TOOL_CALL_ARGUMENTS }),
    );
    writer.push(
        "response.output_item.done",
        json!({ "output_index": 0, "item": item }),
    );
    writer.push("response.completed", json!({ "response": finished }));

    sse_response(writer.events, behavior, 3, usage_total)
}

// ---------------------------------------------------------------------------------------------
// Embeddings and models
// ---------------------------------------------------------------------------------------------

fn embeddings(request: &Value) -> Result<Response<MockBody>, ApiError> {
    let Some(input) = request.get("input") else {
        return Err(ApiError::missing_parameter("input"));
    };
    let inputs = parse_prompt_inputs("input", input)?;

    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIMENSIONS,
        Some(value) => match value.as_u64() {
            Some(count @ 1..=MAX_EMBEDDING_DIMENSIONS) => count,
            _ => {
                let expected = format!("an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}");
                return Err(ApiError::invalid_parameter("dimensions", &expected, value));
            }
        },
    };
    let base64 = match request.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(value) => {
            let expected = "'float' or 'base64'";
            return Err(ApiError::invalid_parameter(
                "encoding_format",
                expected,
                value,
            ));
        }
    };

    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input.seed, dimensions as usize);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(encode_base64(&bytes))
            } else {
                // Six decimals keep the JSON short. Base64 carries the exact f32 values.
                let rounded = vector.iter().map(|&x| (f64::from(x) * 1e6).round() / 1e6);
                Value::from(rounded.collect::<Vec<f64>>())
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();

    let prompt_tokens: u64 = inputs.iter().map(|input| input.tokens).sum();
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("text-embedding-3-small");
    let list = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    });
    Ok(json_response_with_usage(&list, prompt_tokens))
}

/// Returns a unit-length vector derived from `seed` (SplitMix64), so equal inputs get equal
/// embeddings.
fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next_component = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits as a fraction in [0, 1), mapped to [-1, 1).
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let components: Vec<f64> = (0..dimensions).map(|_| next_component()).collect();
    let norm = components.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    components.iter().map(|x| (x * scale) as f32).collect()
}

/// Encodes bytes as standard base64 with padding (RFC 4648, section 4).
fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b0 = u32::from(group[0]);
        let b1 = group.get(1).copied().map_or(0, u32::from);
        let b2 = group.get(2).copied().map_or(0, u32::from);
        let triple = (b0 << 16) | (b1 << 8) | b2;

        let sextet = |shift: u32| char::from(ALPHABET[((triple >> shift) & 0x3f) as usize]);
        encoded.push(sextet(18));
        encoded.push(sextet(12));
        encoded.push(if group.len() > 1 { sextet(6) } else { '=' });
        encoded.push(if group.len() > 2 { sextet(0) } else { '=' });
    }
    encoded
}

fn model_object(id: &str) -> Value {
    json!({ "id": id, "object": "model", "created": MODEL_CREATED, "owned_by": "openai" })
}

fn list_models() -> Response<MockBody> {
    let data: Vec<Value> = MODELS.iter().map(|id| model_object(id)).collect();
    json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

fn retrieve_model(id: &str) -> Result<Response<MockBody>, ApiError> {
    if !MODELS.contains(&id) {
        let mut error = ApiError::invalid_request(
            StatusCode::NOT_FOUND,
            Some("model"),
            format!("The model '{id}' does not exist on the mock upstream."),
        );
        error.code = Some("model_not_found");
        return Err(error);
    }
    Ok(json_response(StatusCode::OK, &model_object(id)))
}

// ---------------------------------------------------------------------------------------------
// Streaming body
// ---------------------------------------------------------------------------------------------

/// Response body that sends prebuilt SSE events one frame each. It has no known length, so
/// hyper sends it chunked. It can pause between events and abort the connection part-way.
struct EventStream {
    events: std::vec::IntoIter<Bytes>,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,

    /// Number of events to send before failing the body, which makes hyper drop the
    /// connection without the terminating chunk.
    abort_after: Option<usize>,
    sent: usize,
    abort_paused: bool,
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }

            if this.abort_after == Some(this.sent) {
                // hyper discards buffered output when a body fails, so pause once to let it
                // flush the events sent so far.
                if !this.abort_paused {
                    this.abort_paused = true;
                    this.sleep = Some(Box::pin(tokio::time::sleep(CUT_FLUSH_PAUSE)));
                    continue;
                }
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "stream cut because x-mock-behavior contains 'cut'",
                ))));
            }

            let Some(event) = this.events.next() else {
                return Poll::Ready(None);
            };
            this.sent += 1;
            let more_events = this.events.len() > 0;
            if let Some(delay) = this.delay.filter(|delay| more_events && !delay.is_zero()) {
                this.sleep = Some(Box::pin(tokio::time::sleep(delay)));
            }
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn generation(deltas: u64, usage: Usage) -> Generation {
        Generation {
            sequence: 1,
            created: 1_700_000_000,
            model: "gpt-4o-mini".to_string(),
            deltas,
            finish_reason: "stop",
            usage,
        }
    }

    /// Parses `data:` payloads of SSE events, skipping `[DONE]`.
    fn data_payloads(events: &[Bytes]) -> Vec<Value> {
        events
            .iter()
            .filter_map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let data = text.lines().find_map(|line| line.strip_prefix("data: "))?;
                (data != "[DONE]").then(|| serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    #[test]
    fn text_tokens_round_up() {
        assert_eq!(text_tokens(0), 0);
        assert_eq!(text_tokens(1), 1);
        assert_eq!(text_tokens(4), 1);
        assert_eq!(text_tokens(5), 2);
        assert_eq!(text_tokens(400), 100);
    }

    #[test]
    fn chat_input_tokens_add_message_overhead() {
        let messages = json!([
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": [{ "type": "text", "text": "hello" }] },
        ]);
        let messages = messages.as_array().unwrap();

        // 3 priming + (3 + ceil(14 / 4) = 4) + (3 + ceil(5 / 4) = 2).
        assert_eq!(chat_input_tokens(messages), 3 + 7 + 5);
        assert_eq!(chat_input_tokens(&[]), 3);
    }

    #[test]
    fn responses_input_tokens_count_instructions() {
        let string_input = json!({ "instructions": "Be brief.", "input": "hi" });
        // 3 priming + (3 + ceil(9 / 4) = 3) + (3 + ceil(2 / 4) = 1).
        assert_eq!(responses_input_tokens(&string_input), 3 + 6 + 4);

        let item_input = json!({
            "input": [
                { "role": "user", "content": [{ "type": "input_text", "text": "12345678" }] },
                { "type": "function_call_output", "call_id": "c1", "output": "abcd" },
            ]
        });
        assert_eq!(responses_input_tokens(&item_input), 3 + 5 + 4);
    }

    #[test]
    fn prompt_inputs_accept_text_and_token_ids() {
        let text = parse_prompt_inputs("prompt", &json!("hello")).unwrap();
        assert_eq!(text.len(), 1);
        assert_eq!(text[0].tokens, 2);

        let ids = parse_prompt_inputs("prompt", &json!([1, 2, 3])).unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].tokens, 3);

        let batch = parse_prompt_inputs("input", &json!(["abcd", [7, 8]])).unwrap();
        assert_eq!(
            batch.iter().map(|input| input.tokens).collect::<Vec<_>>(),
            [1, 2]
        );

        assert!(parse_prompt_inputs("input", &json!(42)).is_err());
        assert!(parse_prompt_inputs("input", &json!([])).is_err());
        assert!(parse_prompt_inputs("input", &json!([1, "a"])).is_err());
    }

    #[test]
    fn output_token_count_uses_request_limit() {
        let fields = ["max_completion_tokens", "max_tokens"];
        assert_eq!(
            output_token_count(&json!({}), &fields).unwrap(),
            (16, false)
        );
        let both = json!({ "max_completion_tokens": 5, "max_tokens": 9 });
        assert_eq!(output_token_count(&both, &fields).unwrap(), (5, true));
        let null_first = json!({ "max_completion_tokens": null, "max_tokens": 9 });
        assert_eq!(output_token_count(&null_first, &fields).unwrap(), (9, true));
        let huge = json!({ "max_tokens": 100_000 });
        assert_eq!(output_token_count(&huge, &fields).unwrap(), (4096, false));
        assert!(output_token_count(&json!({ "max_tokens": -1 }), &fields).is_err());
    }

    #[test]
    fn behavior_parses_comma_separated_items() {
        let mut behavior = Behavior::default();
        behavior
            .apply("error-500, slow-first-byte=250,cut,error-429,close")
            .unwrap();
        assert_eq!(behavior.error, Some(InjectedError::Server));
        assert_eq!(behavior.slow_first_byte, Some(Duration::from_millis(250)));
        assert!(behavior.cut);
        assert!(behavior.close);
        assert!(Behavior::default().apply("explode").is_err());
        assert!(Behavior::default().apply("delay-ms=abc").is_err());
    }

    #[test]
    fn tool_call_is_made_until_output_returns() {
        let mut behavior = Behavior::default();
        behavior.apply("tool-call=exec_command").unwrap();
        assert!(Behavior::default().apply("tool-call=").is_err());

        let first = json!({"input": [{"type": "message", "role": "user", "content": "hi"}]});
        assert_eq!(tool_call_name(&first, &behavior), Some("exec_command"));
        let follow_up = json!({"input": [
            {"type": "function_call", "call_id": "call_1", "name": "exec_command"},
            {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        ]});
        assert_eq!(tool_call_name(&follow_up, &behavior), None);
        assert_eq!(tool_call_name(&first, &Behavior::default()), None);
    }

    #[test]
    fn function_call_stream_event_order() {
        let generation = generation(4, Usage::default());
        let request = json!({"stream": true});
        let behavior = Behavior::default();
        let response = function_call_response(&generation, &request, "exec_command", &behavior);
        let Either::Right(stream) = response.into_body() else {
            panic!("expected a stream");
        };
        let events: Vec<Bytes> = stream.events.collect();
        let payloads = data_payloads(&events);

        let types: Vec<&str> = payloads
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (index, payload) in payloads.iter().enumerate() {
            assert_eq!(payload["sequence_number"], index as u64);
        }
        let item = &payloads[6]["response"]["output"][0];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["name"], "exec_command");
        assert_eq!(item["arguments"], TOOL_CALL_ARGUMENTS);
    }

    #[test]
    fn chat_stream_without_include_usage_has_no_usage() {
        let usage = Usage::new(10, 3, &Behavior::default());
        let events = chat_stream_events(&generation(3, usage), false);
        let chunks = data_payloads(&events);

        assert_eq!(events.last().unwrap().as_ref(), DONE_EVENT);
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        for chunk in &chunks[1..4] {
            assert_eq!(chunk["choices"][0]["delta"]["content"], OUTPUT_TOKEN);
        }
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert!(chunk.get("usage").is_none(), "unexpected usage in {chunk}");
        }
    }

    #[test]
    fn chat_stream_with_include_usage_ends_with_usage() {
        let usage = Usage::new(10, 3, &Behavior::default());
        let events = chat_stream_events(&generation(3, usage), true);
        let chunks = data_payloads(&events);

        assert_eq!(events.last().unwrap().as_ref(), DONE_EVENT);
        assert_eq!(chunks.len(), 6);
        for chunk in &chunks[..5] {
            assert_eq!(chunk["usage"], Value::Null);
            assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
        }
        let last = &chunks[5];
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 10);
        assert_eq!(last["usage"]["completion_tokens"], 3);
        assert_eq!(last["usage"]["total_tokens"], 13);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let details = &last["usage"]["completion_tokens_details"];
        assert_eq!(details["reasoning_tokens"], 0);
    }

    #[test]
    fn completion_stream_follows_chat_usage_rule() {
        let usage = Usage::new(4, 2, &Behavior::default());
        let without = data_payloads(&completion_stream_events(&generation(2, usage), false));
        assert_eq!(without.len(), 3);
        assert!(without.iter().all(|chunk| chunk.get("usage").is_none()));

        let with = data_payloads(&completion_stream_events(&generation(2, usage), true));
        assert_eq!(with.len(), 4);
        assert_eq!(with[3]["choices"], json!([]));
        assert_eq!(with[3]["usage"]["total_tokens"], 6);
    }

    #[test]
    fn responses_stream_event_order() {
        let usage = Usage::new(7, 3, &Behavior::default());
        let request = json!({ "model": "gpt-4o-mini", "input": "hi" });
        let events = responses_stream_events(
            &generation(3, usage),
            &request,
            ResponseStatus::Completed,
            true,
        );

        let mut names = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let text = std::str::from_utf8(event).unwrap();
            let (name_line, data_line) = text.trim_end().split_once('\n').unwrap();
            let name = name_line.strip_prefix("event: ").unwrap();
            let payload: Value = serde_json::from_str(data_line.strip_prefix("data: ").unwrap())
                .expect("data line is JSON");
            assert_eq!(payload["type"], name);
            assert_eq!(payload["sequence_number"], index as u64);
            names.push(name.to_string());
        }
        let expected = [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ];
        assert_eq!(names, expected);

        let payloads = data_payloads(&events);
        let completed = &payloads[10]["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["usage"]["input_tokens"], 7);
        assert_eq!(completed["usage"]["output_tokens"], 3);
        assert_eq!(completed["usage"]["total_tokens"], 10);
        let text = &completed["output"][0]["content"][0]["text"];
        assert_eq!(text, "tok tok tok ");
    }

    #[test]
    fn responses_stream_ends_incomplete() {
        let usage = Usage::new(7, 3, &Behavior::default());
        let request = json!({ "input": "hi" });
        let events = responses_stream_events(
            &generation(3, usage),
            &request,
            ResponseStatus::Incomplete,
            true,
        );
        let last = data_payloads(&events).pop().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(last["response"]["status"], "incomplete");
        let reason = &last["response"]["incomplete_details"]["reason"];
        assert_eq!(reason, "max_output_tokens");
        assert_eq!(last["response"]["usage"]["total_tokens"], 10);
    }

    #[test]
    fn base64_matches_rfc_vectors() {
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"f"), "Zg==");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn embedding_vector_is_unit_length() {
        let vector = embedding_vector(42, 8);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert_eq!(vector.len(), 8);
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert_eq!(embedding_vector(42, 8), vector);
    }

    async fn start_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(MockState::default())));
        address
    }

    /// Sends one request with `connection: close` and returns everything the server wrote
    /// until it closed the connection.
    async fn send_raw(address: SocketAddr, head: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = format!(
            "{head}\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        // A cut stream ends with a reset or an early EOF. Both end the read.
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn cut_stream_drops_connection_mid_body() {
        let address = start_server().await;
        let body = r#"{"model":"m","messages":[],"stream":true,"max_tokens":8,
            "stream_options":{"include_usage":true}}"#;
        let head = "POST /v1/chat/completions HTTP/1.1\r\nx-mock-behavior: cut";
        let response = send_raw(address, head, body).await;

        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(
            response.contains("transfer-encoding: chunked"),
            "{response}"
        );
        assert_eq!(response.matches(r#""content":"tok ""#).count(), 4);
        assert!(!response.contains("[DONE]"));
        assert!(!response.contains("finish_reason\":\"length"));
        assert!(!response.ends_with("0\r\n\r\n"));
    }

    #[tokio::test]
    async fn recording_endpoints_skip_mock_paths() {
        let address = start_server().await;
        let head = "POST /v1/embeddings?trace=1 HTTP/1.1\r\nx-test: yes";
        let response = send_raw(address, head, r#"{"input":"abc"}"#).await;
        assert!(response.contains("x-mock-usage-total: 1"), "{response}");
        send_raw(address, "POST /v1/chat/completions HTTP/1.1", "{not json").await;

        let listing = send_raw(address, "GET /mock/requests HTTP/1.1", "").await;
        let (_, json_body) = listing.split_once("\r\n\r\n").unwrap();
        let recorded: Value = serde_json::from_str(json_body).unwrap();
        let recorded = recorded.as_array().unwrap();
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0]["path"], "/v1/embeddings");
        assert_eq!(recorded[0]["query"], "trace=1");
        assert_eq!(recorded[0]["body"], r#"{"input":"abc"}"#);
        assert!(recorded[0]["headers"]
            .as_array()
            .unwrap()
            .contains(&json!(["x-test", "yes"])));
        assert_eq!(recorded[1]["body"], "{not json");

        let stats = send_raw(address, "GET /mock/stats HTTP/1.1", "").await;
        assert!(stats.ends_with(r#"{"requests":2,"stored":2}"#), "{stats}");
        send_raw(address, "DELETE /mock/requests HTTP/1.1", "").await;
        let stats = send_raw(address, "GET /mock/stats HTTP/1.1", "").await;
        assert!(stats.ends_with(r#"{"requests":0,"stored":0}"#), "{stats}");
    }
}
