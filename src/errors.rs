//! Every failure a client can see, with its HTTP status and OpenAI-style JSON
//! body, decided in this one place.

use bytes::Bytes;
use serde_json::json;

use crate::budget::BudgetStatus;

/// A failure the gateway responds to itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No internal key in `Authorization` or `x-api-key`.
    MissingApiKey,
    /// A key that belongs to no user.
    InvalidApiKey,
    /// A path the gateway does not forward.
    NotFound { method: String, path: String },
    /// A known path with the wrong method.
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: String,
    },
    /// A body over the configured size limit, in bytes.
    BodyTooLarge { limit: usize },
    /// A chunked body too large to be replayed to the upstream.
    LengthRequired { limit: usize },
    /// A body that is not the JSON the API expects; `param` names the field.
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// The user may not call this model.
    ModelNotAllowed { model: String, allowed: Vec<String> },
    /// The input is over the user's `max_input_tokens`.
    ContextLengthExceeded { tokens: u64, limit: u64 },
    /// The user's token budget cannot cover the request.
    BudgetExhausted {
        status: BudgetStatus,
        retry_after: u64,
    },
    /// A request-rate, concurrency or failed-key limit was hit.
    RateLimited { limit: RateLimit, retry_after: u64 },
    /// The upstream could not be reached or broke the exchange.
    UpstreamUnavailable,
    /// The upstream did not respond in time.
    UpstreamTimeout,
    /// A fault in the gateway.
    Internal,
}

/// The request limit a [`GatewayError::RateLimited`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// The user's `requests_per_minute`.
    RequestsPerMinute(u32),
    /// The user's `max_concurrent_requests`.
    ConcurrentRequests(u32),
    /// Too many requests with invalid keys from one client address.
    FailedKeys(u32),
}

/// A rendered error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::MissingApiKey | GatewayError::InvalidApiKey => 401,
            GatewayError::NotFound { .. } => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::LengthRequired { .. } => 411,
            GatewayError::InvalidRequest { .. } => 400,
            GatewayError::ModelNotAllowed { .. } => 403,
            GatewayError::ContextLengthExceeded { .. } => 400,
            GatewayError::BudgetExhausted { .. } => 429,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::UpstreamUnavailable => 502,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::Internal => 500,
        }
    }

    /// Returns the reason used in logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::MissingApiKey | GatewayError::InvalidApiKey => "invalid_key",
            GatewayError::NotFound { .. } | GatewayError::MethodNotAllowed { .. } => "not_found",
            GatewayError::BodyTooLarge { .. }
            | GatewayError::LengthRequired { .. }
            | GatewayError::InvalidRequest { .. } => "bad_request",
            GatewayError::ModelNotAllowed { .. } | GatewayError::ContextLengthExceeded { .. } => {
                "policy"
            }
            GatewayError::BudgetExhausted { .. } => "budget",
            GatewayError::RateLimited { .. } => "rate_limit",
            GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout => "upstream",
            GatewayError::Internal => "internal",
        }
    }

    /// OpenAI's error `type` and `code` for this failure.
    fn type_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            GatewayError::MissingApiKey | GatewayError::InvalidApiKey => {
                ("invalid_request_error", Some("invalid_api_key"))
            }
            GatewayError::NotFound { .. } => ("invalid_request_error", Some("unknown_url")),
            GatewayError::MethodNotAllowed { .. } => {
                ("invalid_request_error", Some("method_not_allowed"))
            }
            GatewayError::BodyTooLarge { .. } => {
                ("invalid_request_error", Some("request_too_large"))
            }
            GatewayError::LengthRequired { .. } => {
                ("invalid_request_error", Some("length_required"))
            }
            GatewayError::InvalidRequest { .. } => ("invalid_request_error", None),
            GatewayError::ModelNotAllowed { .. } => {
                ("invalid_request_error", Some("model_not_allowed"))
            }
            GatewayError::ContextLengthExceeded { .. } => {
                ("invalid_request_error", Some("context_length_exceeded"))
            }
            GatewayError::BudgetExhausted { .. } => {
                ("insufficient_quota", Some("insufficient_quota"))
            }
            GatewayError::RateLimited { .. } => ("requests", Some("rate_limit_exceeded")),
            GatewayError::UpstreamUnavailable => ("api_error", Some("upstream_unavailable")),
            GatewayError::UpstreamTimeout => ("api_error", Some("upstream_timeout")),
            GatewayError::Internal => ("api_error", Some("internal_error")),
        }
    }

    fn message(&self) -> String {
        match self {
            GatewayError::MissingApiKey => "Missing API key. Send your tollgate key as \
                 'Authorization: Bearer KEY' or 'x-api-key: KEY'."
                .to_string(),
            GatewayError::InvalidApiKey => "Invalid API key. Check the tollgate key you were \
                 given, or ask the gateway operator for a new one."
                .to_string(),
            GatewayError::NotFound { method, path } => format!(
                "Invalid URL ({method} {path}): this gateway forwards only /v1/chat/completions, \
                 /v1/responses, /v1/completions, /v1/embeddings and /v1/models."
            ),
            GatewayError::MethodNotAllowed {
                method,
                path,
                allowed,
            } => format!("Method {method} is not allowed on {path}: use {allowed}."),
            GatewayError::BodyTooLarge { limit } => {
                format!("Request body is larger than the gateway limit of {limit} bytes.")
            }
            GatewayError::LengthRequired { limit } => format!(
                "Chunked request bodies over {limit} bytes are not supported: send the body \
                 with a Content-Length header."
            ),
            GatewayError::InvalidRequest { message, .. } => message.clone(),
            GatewayError::ModelNotAllowed { model, allowed } => format!(
                "Model '{model}' is not allowed for this key. Allowed models: {}.",
                allowed.join(", ")
            ),
            GatewayError::ContextLengthExceeded { tokens, limit } => format!(
                "This request has {tokens} input tokens, over this key's limit of {limit}. \
                 Shorten the messages or the instructions."
            ),
            GatewayError::RateLimited { limit, retry_after } => match limit {
                RateLimit::RequestsPerMinute(max) => format!(
                    "Rate limit reached: {max} requests per minute for this key. \
                     Try again in {retry_after} seconds."
                ),
                RateLimit::ConcurrentRequests(max) => format!(
                    "Too many requests in progress: {max} at a time for this key. \
                     Try again when one has finished."
                ),
                RateLimit::FailedKeys(max) => format!(
                    "Too many requests with invalid API keys from this address (over {max} \
                     per minute). Try again in {retry_after} seconds."
                ),
            },
            GatewayError::BudgetExhausted {
                status,
                retry_after,
            } => format!(
                "Token budget exhausted: {} of {} tokens used in this window, {} held by \
                 requests in progress. The budget resets in {retry_after} seconds.",
                status.used,
                status.limit.unwrap_or(0),
                status.reserved
            ),
            GatewayError::UpstreamUnavailable => {
                "The upstream provider could not be reached or closed the connection.".to_string()
            }
            GatewayError::UpstreamTimeout => {
                "The upstream provider did not respond in time.".to_string()
            }
            GatewayError::Internal => "Internal gateway error.".to_string(),
        }
    }

    /// Renders the status, headers and JSON body.
    pub fn to_response(&self) -> ErrorResponse {
        let (error_type, code) = self.type_and_code();
        let param = match self {
            GatewayError::InvalidRequest { param, .. } => param.clone(),
            GatewayError::ModelNotAllowed { .. } => Some("model".to_string()),
            GatewayError::ContextLengthExceeded { .. } => Some("messages".to_string()),
            _ => None,
        };
        let body = json!({
            "error": {
                "message": self.message(),
                "type": error_type,
                "param": param,
                "code": code,
            }
        });

        let mut headers = Vec::new();
        match self {
            GatewayError::BudgetExhausted {
                status,
                retry_after,
            } => {
                headers.push(("retry-after", retry_after.to_string()));
                // The OpenAI SDKs read this and do not retry into a spent budget.
                headers.push(("x-should-retry", "false".to_string()));
                headers.extend(rate_limit_headers(status, *retry_after));
            }
            GatewayError::RateLimited { retry_after, .. } => {
                headers.push(("retry-after", retry_after.to_string()));
            }
            GatewayError::MethodNotAllowed { allowed, .. } => {
                headers.push(("allow", allowed.clone()));
            }
            _ => {}
        }

        ErrorResponse {
            status: self.status(),
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}

/// OpenAI-style `x-ratelimit-*-tokens` headers for a budget; none for an
/// unlimited one.
pub fn rate_limit_headers(
    status: &BudgetStatus,
    reset_seconds: u64,
) -> Vec<(&'static str, String)> {
    let (Some(limit), Some(remaining)) = (status.limit, status.remaining()) else {
        return Vec::new();
    };
    vec![
        ("x-ratelimit-limit-tokens", limit.to_string()),
        ("x-ratelimit-remaining-tokens", remaining.to_string()),
        ("x-ratelimit-reset-tokens", format_reset(reset_seconds)),
    ]
}

/// Formats seconds the way OpenAI's reset headers do: `59s`, `6m0s`, `1h2m3s`.
pub fn format_reset(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Window;

    fn body(error: &GatewayError) -> serde_json::Value {
        serde_json::from_slice(&error.to_response().body).unwrap()
    }

    #[test]
    fn invalid_key_is_401_openai_shape() {
        let response = GatewayError::InvalidApiKey.to_response();
        assert_eq!(response.status, 401);
        let json = body(&GatewayError::InvalidApiKey);
        assert_eq!(json["error"]["code"], "invalid_api_key");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert!(json["error"]["param"].is_null());
    }

    #[test]
    fn exhausted_budget_sets_retry_and_rate_limit_headers() {
        let status = BudgetStatus {
            limit: Some(1000),
            used: 990,
            reserved: 10,
            window: Window {
                start: 0,
                end: 3600,
            },
        };
        let error = GatewayError::BudgetExhausted {
            status,
            retry_after: 125,
        };
        let response = error.to_response();
        assert_eq!(response.status, 429);
        let header = |name| {
            response
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("retry-after").as_deref(), Some("125"));
        assert_eq!(header("x-ratelimit-limit-tokens").as_deref(), Some("1000"));
        assert_eq!(header("x-ratelimit-remaining-tokens").as_deref(), Some("0"));
        assert_eq!(header("x-ratelimit-reset-tokens").as_deref(), Some("2m5s"));
        assert_eq!(body(&error)["error"]["code"], "insufficient_quota");
    }

    #[test]
    fn invalid_request_names_param() {
        let error = GatewayError::InvalidRequest {
            message: "'stream' must be a boolean".into(),
            param: Some("stream".into()),
        };
        assert_eq!(body(&error)["error"]["param"], "stream");
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn policy_errors_have_openai_codes() {
        let model = GatewayError::ModelNotAllowed {
            model: "o3".into(),
            allowed: vec!["gpt-4o-mini".into(), "gpt-5*".into()],
        };
        assert_eq!(model.status(), 403);
        let json = body(&model);
        assert_eq!(json["error"]["code"], "model_not_allowed");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains("'o3'"), "{message}");
        assert!(message.contains("gpt-4o-mini, gpt-5*"), "{message}");

        let context = GatewayError::ContextLengthExceeded {
            tokens: 1200,
            limit: 1000,
        };
        assert_eq!(context.status(), 400);
        assert_eq!(body(&context)["error"]["code"], "context_length_exceeded");
    }

    #[test]
    fn rate_limit_is_429_with_retry_after() {
        let error = GatewayError::RateLimited {
            limit: RateLimit::RequestsPerMinute(10),
            retry_after: 42,
        };
        let response = error.to_response();
        assert_eq!(response.status, 429);
        assert!(response
            .headers
            .contains(&("retry-after", "42".to_string())));
        assert_eq!(body(&error)["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(0), "0s");
        assert_eq!(format_reset(59), "59s");
        assert_eq!(format_reset(360), "6m0s");
        assert_eq!(format_reset(3723), "1h2m3s");
    }
}
