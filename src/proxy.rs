//! The Pingora `ProxyHttp` implementation. Each phase only calls the modules
//! that hold the rules: keys, request inspection, budgets, usage metering.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use log::warn;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::{self, AccessRecord};
use crate::api::{Route, RouteError};
use crate::budget::{
    Admission, BudgetStatus, BudgetStore, Reservation, ReserveRequest, UserBudget,
};
use crate::config::AccessLogFormat;
use crate::config::{Config, User};
use crate::errors::{rate_limit_headers, GatewayError};
use crate::keys::{self, KeyRing, UserId};
use crate::limits::{InFlightSlot, RequestLimits};
use crate::metering::{self, Charge, Exchange, ResponseMeter};
use crate::metrics::{self, RequestRecord};
use crate::request::{self, InspectedRequest};
use crate::state::UsageRecord;
use crate::upstream::UpstreamTarget;

/// Headers that carry a client's credentials; none of them reaches the
/// provider.
const CLIENT_CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "openai-organization",
    "openai-project",
];

/// Pingora replays at most this many body bytes to the upstream (its retry
/// buffer, 64 KiB in pingora-core 0.9). See [`read_body`].
const REPLAY_BUFFER_BYTES: usize = 64 * 1024;

/// Time a client gets to send each piece of its request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway: shared state behind every request.
pub struct Gateway {
    config: Arc<Config>,
    keys: KeyRing,
    store: Arc<dyn BudgetStore>,
    limits: RequestLimits,
    upstream: Arc<UpstreamTarget>,
    /// `Bearer <provider key>`, built once.
    provider_authorization: String,
    labels: metrics::Labels,
}

/// The state of one request, carried from phase to phase.
pub struct RequestCtx {
    request_id: String,
    started: Instant,
    route: Option<Route>,
    user: Option<UserId>,
    request: Option<InspectedRequest>,
    reservation: Option<Reservation>,
    /// Whether the whole request body was handed to the upstream.
    request_sent: bool,
    /// The user's concurrent-request slot, released when the context drops.
    in_flight: Option<InFlightSlot>,
    /// The user's budget right after admission, for the rate-limit headers.
    budget: Option<BudgetStatus>,
    upstream_status: Option<u16>,
    meter: ResponseMeter,
    /// When the first body bytes of the upstream response arrived.
    first_token_at: Option<Instant>,
    deadline: Option<Instant>,
    rejection: Option<&'static str>,
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn BudgetStore>,
        upstream: Arc<UpstreamTarget>,
    ) -> Self {
        let keys = KeyRing::new(config.users.iter().map(|user| user.key_digest));
        let provider_authorization = format!("Bearer {}", config.upstream.api_key.expose());
        let limits = RequestLimits::new(config.limits.failed_keys_per_minute);
        Gateway {
            config: config.clone(),
            keys,
            store,
            limits,
            upstream,
            provider_authorization,
            labels: metrics::Labels::new(config.known_models()),
        }
    }

    fn user(&self, id: UserId) -> &User {
        &self.config.users[id]
    }

    fn budget_of(&self, id: UserId) -> UserBudget {
        let user = self.user(id);
        UserBudget {
            limit: user.tokens,
            period: user.reset_period,
        }
    }

    /// Runs every check that happens before the upstream is contacted.
    /// Returns `Ok(true)` when the gateway sent the response itself.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool, GatewayError> {
        let header = session.req_header();
        let route = Route::classify(&header.method, header.uri.path()).map_err(|e| match e {
            RouteError::NotFound => GatewayError::NotFound {
                method: header.method.to_string(),
                path: header.uri.path().to_string(),
            },
            RouteError::MethodNotAllowed(allowed) => GatewayError::MethodNotAllowed {
                method: header.method.to_string(),
                path: header.uri.path().to_string(),
                allowed: allowed.to_string(),
            },
        })?;
        ctx.route = Some(route);

        let client = session
            .client_addr()
            .and_then(|address| address.as_inet())
            .map(|address| address.ip());
        self.limits.check_client(client)?;
        let user = match keys::key_from_headers(&header.headers) {
            None => Err(GatewayError::MissingApiKey),
            Some(key) => self.keys.lookup(key).ok_or(GatewayError::InvalidApiKey),
        }
        .inspect_err(|_| self.limits.record_failed_key(client))?;
        ctx.user = Some(user);

        if route == Route::GatewayUsage {
            self.respond_usage(session, ctx, user).await;
            return Ok(true);
        }
        let policies = &self.user(user).policies;
        ctx.in_flight = self.limits.admit(user, policies)?;
        if !route.is_metered() {
            return Ok(false);
        }

        let body = read_body(session, self.config.limits.max_request_body_bytes).await?;
        let inspected = if request::needs_token_count(&body, policies) {
            let policies = policies.clone();
            tokio::task::spawn_blocking(move || request::inspect(route, body, &policies))
                .await
                .map_err(|_| GatewayError::Internal)??
        } else {
            request::inspect(route, body, policies)?
        };
        let reserve = ReserveRequest {
            input_tokens: inspected.input_tokens,
            max_output_tokens: inspected
                .max_output_tokens
                .unwrap_or(self.config.budgets.default_max_output_tokens)
                .saturating_mul(inspected.choices),
        };
        ctx.request = Some(inspected);

        let now = SystemTime::now();
        match self
            .store
            .reserve(user, self.budget_of(user), reserve, now)
            .await
        {
            Admission::Admitted(reservation, status) => {
                ctx.reservation = Some(reservation);
                ctx.budget = Some(status);
                ctx.deadline = Some(Instant::now() + self.config.upstream.request_timeout);
                Ok(false)
            }
            Admission::Exhausted(status) => Err(GatewayError::BudgetExhausted {
                retry_after: status.window.seconds_until_end(now),
                status,
            }),
        }
    }

    /// Responds to `GET /v1/gateway/usage` with the caller's own budget.
    async fn respond_usage(&self, session: &mut Session, ctx: &RequestCtx, user: UserId) {
        let now = SystemTime::now();
        let status = self.store.status(user, self.budget_of(user), now).await;
        let reset_at = time::OffsetDateTime::from_unix_timestamp(status.window.end as i64)
            .ok()
            .and_then(|at| {
                at.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
        let body = serde_json::json!({
            "user": self.user(user).name,
            "tokens_limit": status.limit,
            "tokens_used": status.used,
            "tokens_reserved": status.reserved,
            "tokens_remaining": status.remaining(),
            "reset_at": reset_at,
            "reset_in_seconds": status.window.seconds_until_end(now),
        });
        let body = Bytes::from(body.to_string());
        if let Err(e) = respond(session, ctx, 200, &[], body).await {
            warn!(
                "request {}: failed to send the usage response: {e}",
                ctx.request_id
            );
        }
    }

    /// Settles the reservation with what the exchange cost; `error` is the
    /// failure that ended it, if any.
    async fn settle(&self, ctx: &mut RequestCtx, error: Option<&Error>) -> Option<Charge> {
        let reservation = ctx.reservation.take()?;
        let exchange = Exchange {
            upstream_status: ctx.upstream_status,
            input_estimate: ctx.request.as_ref().map_or(0, |r| r.input_tokens),
            reserved: reservation.tokens,
            request_sent: ctx.request_sent,
            client_gone: error.is_some_and(|e| e.esource() == &ErrorSource::Downstream),
        };
        let charge = metering::settle_charge(exchange, &mut ctx.meter);
        let tokens = charge.map_or(0, |c| c.tokens);
        let budget = self.budget_of(reservation.user);
        self.store
            .settle(reservation, budget, tokens, SystemTime::now())
            .await;
        charge
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: String::new(),
            started: Instant::now(),
            route: None,
            user: None,
            request: None,
            reservation: None,
            request_sent: false,
            in_flight: None,
            budget: None,
            upstream_status: None,
            meter: ResponseMeter::Off,
            first_token_at: None,
            deadline: None,
            rejection: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = request_id(session.req_header());
        if session.is_process_shutting_down() {
            // Pingora keeps serving a busy keep-alive connection until the
            // grace period ends and then cuts it mid-request. Closing it
            // after this response sends the client to the new process.
            session.set_keepalive(None);
        }
        session.set_read_timeout(Some(BODY_READ_TIMEOUT));

        match self.admit(session, ctx).await {
            Ok(answered) => Ok(answered),
            Err(error) => {
                ctx.rejection = Some(error.reason());
                metrics::record_rejection(error.reason());
                if !session.is_body_done() {
                    // The unread body would be parsed as the next request.
                    session.set_keepalive(None);
                }
                let response = error.to_response();
                respond(
                    session,
                    ctx,
                    response.status,
                    &response.headers,
                    response.body,
                )
                .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        match self.upstream.peer() {
            Some(peer) => Ok(Box::new(peer)),
            None => Error::e_explain(
                ErrorType::ConnectNoRoute,
                "the upstream host has no resolved address",
            ),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in CLIENT_CREDENTIAL_HEADERS {
            upstream_request.remove_header(*name);
        }
        upstream_request.insert_header("authorization", &self.provider_authorization)?;
        upstream_request.insert_header("host", self.upstream.url.host_header())?;
        // Usage is read from the body, so it must arrive uncompressed.
        upstream_request.insert_header("accept-encoding", "identity")?;
        // A protocol upgrade would turn the exchange into a tunnel that is
        // neither metered nor checked.
        upstream_request.remove_header("upgrade");
        upstream_request.remove_header("connection");
        upstream_request.remove_header("expect");

        let uri = &session.req_header().uri;
        let mut path = format!("{}{}", self.upstream.url.base_path, uri.path());
        if let Some(query) = uri.query() {
            path.push('?');
            path.push_str(query);
        }
        upstream_request.set_uri(path.parse().map_err(|e| {
            Error::because(ErrorType::InternalError, "building the upstream URI", e)
        })?);

        if let Some(request) = &ctx.request {
            upstream_request.remove_header("transfer-encoding");
            upstream_request.insert_header("content-length", request.body.len().to_string())?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The body was read and checked in request_filter; Pingora calls this
        // once with its replay buffer, which is swapped for the whole body.
        if let Some(request) = &ctx.request {
            *body = Some(if end_of_stream {
                request.body.clone()
            } else {
                Bytes::new()
            });
        }
        ctx.request_sent |= end_of_stream;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);

        if let (Some(route), Some(request)) = (ctx.route, &ctx.request) {
            if (200..300).contains(&status) {
                let header = |name| {
                    upstream_response
                        .headers
                        .get(name)
                        .and_then(|value: &http::HeaderValue| value.to_str().ok())
                        .map(str::to_ascii_lowercase)
                };
                let event_stream = header("content-type")
                    .is_some_and(|value| value.starts_with("text/event-stream"));
                let encoded = header("content-encoding").is_some_and(|value| value != "identity");
                let strip = event_stream && request.strip_usage_chunk && !encoded;
                ctx.meter = if encoded {
                    ResponseMeter::Unreadable
                } else {
                    ResponseMeter::for_response(route, event_stream, strip)
                };
                if strip {
                    upstream_response.remove_header("content-length");
                }
            }
        }

        // The provider's own id stays available for its support requests.
        if let Some(provider_id) = upstream_response.remove_header("x-request-id") {
            upstream_response.insert_header("x-upstream-request-id", provider_id)?;
        }
        upstream_response.insert_header("x-request-id", &ctx.request_id)?;
        if let Some(budget) = &ctx.budget {
            let reset = budget.window.seconds_until_end(SystemTime::now());
            for (name, value) in rate_limit_headers(budget, reset) {
                upstream_response.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if body.as_ref().is_some_and(|chunk| !chunk.is_empty()) {
            ctx.first_token_at.get_or_insert_with(Instant::now);
        }

        match &mut ctx.meter {
            ResponseMeter::Off | ResponseMeter::Unreadable => {}
            ResponseMeter::Json(scanner) => {
                if let Some(chunk) = body.as_ref() {
                    scanner.push(chunk);
                }
            }
            ResponseMeter::Stream(stream) => {
                let mut forward = match body.take() {
                    Some(chunk) => stream.push(&chunk),
                    None => Bytes::new(),
                };
                if end_of_stream {
                    let rest = stream.finish();
                    if !rest.is_empty() {
                        let mut joined = BytesMut::from(&forward[..]);
                        joined.extend_from_slice(&rest);
                        forward = joined.freeze();
                    }
                }
                *body = Some(forward);
            }
        }

        // The last chunk is delivered even when late: the exchange is done.
        let late = ctx
            .deadline
            .is_some_and(|deadline| Instant::now() > deadline);
        if late && !end_of_stream {
            return Error::e_explain(
                ErrorType::ReadTimedout,
                format!(
                    "the request ran past its deadline of {:?}",
                    self.config.upstream.request_timeout
                ),
            );
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // The whole body is held in the context, so a POST can be replayed
        // too; Pingora marks an error retryable only when a reused pooled
        // connection failed before the request could have been processed.
        let mut e = e.more_context(format!("Peer: {peer}"));
        e.retry.decide_reuse(client_reused);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) if *code >= 500 => GatewayError::UpstreamUnavailable,
            (ErrorSource::Downstream, _) => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                }
            }
            (
                _,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => GatewayError::UpstreamTimeout,
            (ErrorSource::Upstream, _) => GatewayError::UpstreamUnavailable,
            (
                _,
                ErrorType::ConnectNoRoute | ErrorType::ConnectRefused | ErrorType::ConnectError,
            ) => GatewayError::UpstreamUnavailable,
            _ => GatewayError::Internal,
        };
        if let Some(kind) = upstream_error_kind(e) {
            metrics::record_upstream_error(kind);
        }
        crate::logging::failed_request(error.reason(), &ctx.request_id, e);

        if session.response_written().is_some() {
            // Headers already went out; all that is left is to end the stream.
            return FailToProxy {
                error_code: error.status(),
                can_reuse_downstream: false,
            };
        }
        let response = error.to_response();
        if let Err(write_error) = respond(
            session,
            ctx,
            response.status,
            &response.headers,
            response.body,
        )
        .await
        {
            warn!(
                "request {}: failed to send the error response: {write_error}",
                ctx.request_id
            );
        }
        FailToProxy {
            error_code: response.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let charge = self.settle(ctx, e).await;
        if let Some(kind) = ctx.upstream_status.and_then(metrics::upstream_status_error) {
            metrics::record_upstream_error(kind);
        }

        let header = session.req_header();
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        let usage = charge.and_then(|c| c.usage);
        let record = AccessRecord {
            time: now_rfc3339(),
            request_id: &ctx.request_id,
            client: session.client_addr().map(|address| address.to_string()),
            user: ctx.user.map(|id| self.user(id).name.as_str()),
            method: header.method.as_str(),
            route: ctx.route.map_or("other", Route::as_str),
            model: ctx.request.as_ref().map(|r| r.model.as_str()),
            status,
            upstream_status: ctx.upstream_status,
            input_tokens: usage.map(|u| u.input_tokens),
            output_tokens: usage.map(|u| u.output_tokens),
            total_tokens: usage.map(|u| u.total_tokens),
            charged_tokens: charge.map_or(0, |c| c.tokens),
            usage_source: charge.map(|c| c.source.as_str()),
            rejection: ctx.rejection,
            error: e.map(|e| e.to_string()),
            duration_ms: ctx.started.elapsed().as_millis() as u64,
            ttft_ms: ctx
                .first_token_at
                .map(|at| at.duration_since(ctx.started).as_millis() as u64),
        };
        if self.config.log.access_log == AccessLogFormat::Json {
            access_log::write(&record);
        }

        // Requests of known users, except their budget lookups, go to the
        // usage log.
        if let Some(user) = ctx.user.filter(|_| ctx.route != Some(Route::GatewayUsage)) {
            self.store.record(UsageRecord {
                time_ms: unix_millis(),
                request_id: ctx.request_id.clone(),
                user,
                model: ctx.request.as_ref().map(|r| r.model.clone()),
                route: ctx.route.map_or("other", Route::as_str),
                input_tokens: usage.map(|u| u.input_tokens),
                output_tokens: usage.map(|u| u.output_tokens),
                cached_tokens: usage.map(|u| u.cached_input_tokens),
                reasoning_tokens: usage.map(|u| u.reasoning_tokens),
                total_tokens: charge.map_or(0, |c| c.tokens),
                usage_source: charge.map(|c| c.source.as_str()),
                status,
            });
        }

        self.labels.record_request(&RequestRecord {
            user: record.user,
            model: record.model,
            route: ctx.route,
            status,
            upstream_status: ctx.upstream_status,
            duration: ctx.started.elapsed(),
            first_token: ctx.first_token_at.map(|at| at.duration_since(ctx.started)),
            charge,
        });
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // fail_to_proxy logs each failure once, with its request id, and
        // rate-limits repeats.
        true
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        // Pingora's default names the path with its query string, which is
        // client input; the route and request id are enough to find the
        // access-log line.
        format!(
            "request {}, {} {}",
            ctx.request_id,
            session.req_header().method,
            ctx.route.map_or(metrics::NO_ROUTE, Route::as_str)
        )
    }
}

/// Returns the `tollgate_upstream_errors_total` kind of a proxy failure, or `None`
/// when the provider is not at fault (a client disconnect, an internal
/// error).
fn upstream_error_kind(e: &Error) -> Option<&'static str> {
    match (e.esource(), e.etype()) {
        (_, ErrorType::ConnectTimedout | ErrorType::ConnectNoRoute)
        | (_, ErrorType::ConnectRefused | ErrorType::ConnectError) => Some("connect"),
        (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => Some("timeout"),
        (ErrorSource::Downstream, _) => None,
        (ErrorSource::Upstream, _) => Some("closed"),
        _ => None,
    }
}

/// Reads the whole request body, up to `limit` bytes.
///
/// Pingora 0.9 sends the request header upstream before any body filter
/// runs, and a body consumed here is not read again by the proxy. It does
/// replay its retry buffer, through `request_body_filter`, when that buffer
/// holds data. So the buffer is enabled just before the last 64 KiB are read:
/// it then ends up non-empty and untruncated, and `request_body_filter`
/// replaces its content with the whole body.
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, GatewayError> {
    let content_length = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<usize>().ok());
    match content_length {
        Some(length) if length > limit => return Err(GatewayError::BodyTooLarge { limit }),
        // A chunked body of unknown length must fit the buffer whole.
        None => session.enable_retry_buffering(),
        Some(_) => {}
    }

    let mut body = BytesMut::new();
    loop {
        if content_length
            .is_some_and(|length| length - body.len().min(length) <= REPLAY_BUFFER_BYTES)
        {
            session.enable_retry_buffering();
        }
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(GatewayError::BodyTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(GatewayError::InvalidRequest {
                    message: format!("Failed to read the request body: {}.", e.etype().as_str()),
                    param: None,
                })
            }
        }
    }

    if session.retry_buffer_truncated() {
        return Err(GatewayError::LengthRequired {
            limit: REPLAY_BUFFER_BYTES,
        });
    }
    Ok(body.freeze())
}

/// Writes a complete JSON response from the gateway itself.
async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<()> {
    let mut response = ResponseHeader::build(status, Some(headers.len() + 3))?;
    response.insert_header("content-type", "application/json")?;
    response.insert_header("content-length", body.len().to_string())?;
    response.insert_header("x-request-id", &ctx.request_id)?;
    for (name, value) in headers {
        response.insert_header(*name, value)?;
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Returns the client's `x-request-id` when it is short and plain, else a new one.
fn request_id(header: &RequestHeader) -> String {
    let from_client = header
        .headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        });
    match from_client {
        Some(id) => id.to_string(),
        None => format!("req_{:032x}", rand::random::<u128>()),
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_millis() as i64)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
