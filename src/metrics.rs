//! Prometheus metrics: every series tollgate exports and the calls that
//! update them.
//!
//! The series live in the `prometheus` crate's default registry, the one
//! pingora-prometheus 0.9.1 serves too, so metrics that other Pingora
//! components register there appear in the same scrape. Label
//! values come only from the configuration (user names, configured model
//! names) or from fixed sets in the code (routes, statuses, reasons), never
//! from raw request input, so the number of series stays bounded whatever
//! clients send.

use std::collections::HashSet;
use std::time::Duration;

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter_vec, Encoder, GaugeVec,
    HistogramVec, IntCounterVec, TextEncoder,
};

use crate::api::Route;
use crate::budget::BudgetStatus;
use crate::metering::Charge;

/// `user` label of a request whose key was not resolved to a user.
// NOTE: a configured user named `unknown` shares these series with requests
// that carried no valid key; the configuration does not reject that name.
pub const UNKNOWN_USER: &str = "unknown";

/// `model` label of a model name the configuration does not name.
pub const OTHER_MODEL: &str = "other";

/// `model` label of a request that names no model, such as `GET /v1/models`
/// or a request rejected before its body was read.
pub const NO_MODEL: &str = "none";

/// `route` label of a request that matched no route.
pub const NO_ROUTE: &str = "other";

/// Buckets of the request duration histogram, in seconds. Streams of coding
/// agents run for minutes, so the buckets reach one hour.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Buckets of the time to first token histogram, in seconds. A reasoning
/// model can take minutes before its first token.
const FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of `gen_ai_client_token_usage`, in tokens: powers of 4 from 1 to
/// 4^13, the boundaries the OpenTelemetry GenAI semantic conventions
/// recommend.
const GEN_AI_TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Buckets of `gen_ai_client_operation_duration_seconds`: the doubling
/// series from 10 ms to 81.92 s that the GenAI conventions recommend,
/// continued to about 11 minutes for long streams.
const GEN_AI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68, 655.36,
];

static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "tollgate_requests_total",
        "Requests answered, by user, model, route and HTTP status sent to the client.",
        &["user", "model", "route", "status"]
    )
    .expect("tollgate_requests_total registers once")
});

static TOKENS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "tollgate_tokens_total",
        "Tokens the provider reported, by user, model and type: input, output, cached_input \
         (part of input) and reasoning (part of output).",
        &["user", "model", "type"]
    )
    .expect("tollgate_tokens_total registers once")
});

static CHARGED_TOKENS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "tollgate_charged_tokens_total",
        "Tokens charged to budgets, by user, model and usage source (reported or estimated).",
        &["user", "model", "source"]
    )
    .expect("tollgate_charged_tokens_total registers once")
});

static REJECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "tollgate_rejections_total",
        "Requests the gateway answered itself without forwarding, by reason.",
        &["reason"]
    )
    .expect("tollgate_rejections_total registers once")
});

static UPSTREAM_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "tollgate_upstream_errors_total",
        "Failed exchanges with the provider, by kind: connect, timeout, closed, http_429, \
         http_5xx.",
        &["kind"]
    )
    .expect("tollgate_upstream_errors_total registers once")
});

static REQUEST_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "tollgate_request_duration_seconds",
        "Time from the request header to the last byte of the response, by route and model.",
        &["route", "model"],
        DURATION_BUCKETS.to_vec()
    )
    .expect("tollgate_request_duration_seconds registers once")
});

static FIRST_TOKEN: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "tollgate_time_to_first_token_seconds",
        "Time from the request header to the first body bytes of a successful provider \
         response (the first event of a stream), by route and model.",
        &["route", "model"],
        FIRST_TOKEN_BUCKETS.to_vec()
    )
    .expect("tollgate_time_to_first_token_seconds registers once")
});

static BUDGET_LIMIT: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!(
        "tollgate_budget_limit_tokens",
        "Tokens per budget window, +Inf for an unlimited user.",
        &["user"]
    )
    .expect("tollgate_budget_limit_tokens registers once")
});

static BUDGET_USED: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!(
        "tollgate_budget_used_tokens",
        "Tokens charged in the current budget window.",
        &["user"]
    )
    .expect("tollgate_budget_used_tokens registers once")
});

static BUDGET_RESERVED: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!(
        "tollgate_budget_reserved_tokens",
        "Tokens held by requests in flight in the current budget window.",
        &["user"]
    )
    .expect("tollgate_budget_reserved_tokens registers once")
});

static BUDGET_REMAINING: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!(
        "tollgate_budget_remaining_tokens",
        "Tokens left in the current budget window (limit - used - reserved), +Inf for an \
         unlimited user.",
        &["user"]
    )
    .expect("tollgate_budget_remaining_tokens registers once")
});

static BUDGET_RESET: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!(
        "tollgate_budget_reset_timestamp_seconds",
        "Unix time at which the current budget window ends and the budget resets.",
        &["user"]
    )
    .expect("tollgate_budget_reset_timestamp_seconds registers once")
});

static GEN_AI_TOKENS: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "gen_ai_client_token_usage",
        "OpenTelemetry gen_ai.client.token.usage: tokens per request, by token type (input or \
         output), requested model and operation.",
        &[
            "gen_ai_token_type",
            "gen_ai_request_model",
            "gen_ai_operation_name"
        ],
        GEN_AI_TOKEN_BUCKETS.to_vec()
    )
    .expect("gen_ai_client_token_usage registers once")
});

static GEN_AI_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "gen_ai_client_operation_duration_seconds",
        "OpenTelemetry gen_ai.client.operation.duration: seconds per request, by requested \
         model, operation and error type (empty on success).",
        &[
            "gen_ai_request_model",
            "gen_ai_operation_name",
            "error_type"
        ],
        GEN_AI_DURATION_BUCKETS.to_vec()
    )
    .expect("gen_ai_client_operation_duration_seconds registers once")
});

/// The label values the gateway may use, taken from the configuration.
pub struct Labels {
    models: HashSet<String>,
}

/// Everything the metrics need about one finished request.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    /// Configured user name, or `None` before the key was resolved.
    pub user: Option<&'a str>,
    /// Model named in the request body, as the client sent it.
    pub model: Option<&'a str>,
    pub route: Option<Route>,
    /// HTTP status sent to the client; 0 when no response was written.
    pub status: u16,
    /// Status of the provider's response, when one arrived.
    pub upstream_status: Option<u16>,
    pub duration: Duration,
    pub first_token: Option<Duration>,
    pub charge: Option<Charge>,
}

impl Labels {
    /// Collects the model names the configuration names.
    pub fn new(known_models: Vec<String>) -> Self {
        Labels {
            models: known_models.into_iter().collect(),
        }
    }

    /// Returns the `model` label of a model named in a request: the name
    /// itself when the configuration names it, else `other`.
    pub fn model<'a>(&'a self, model: Option<&'a str>) -> &'a str {
        match model {
            None => NO_MODEL,
            Some(name) if self.models.contains(name) => name,
            Some(_) => OTHER_MODEL,
        }
    }

    /// Updates every request series once the request has finished, from
    /// Pingora's `logging` phase.
    pub fn record_request(&self, record: &RequestRecord<'_>) {
        let user = record.user.unwrap_or(UNKNOWN_USER);
        let model = self.model(record.model);
        let route = record.route.map_or(NO_ROUTE, Route::as_str);

        REQUESTS
            .with_label_values(&[user, model, route, status_label(record.status)])
            .inc();
        REQUEST_DURATION
            .with_label_values(&[route, model])
            .observe(record.duration.as_secs_f64());

        let succeeded = record
            .upstream_status
            .is_some_and(|status| (200..300).contains(&status));
        if let (Some(first_token), true) = (record.first_token, succeeded) {
            FIRST_TOKEN
                .with_label_values(&[route, model])
                .observe(first_token.as_secs_f64());
        }

        if let Some(charge) = record.charge {
            CHARGED_TOKENS
                .with_label_values(&[user, model, charge.source.as_str()])
                .inc_by(charge.tokens);
        }
        if let Some(usage) = record.charge.and_then(|charge| charge.usage) {
            let counts = [
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cached_input", usage.cached_input_tokens),
                ("reasoning", usage.reasoning_tokens),
            ];
            for (token_type, tokens) in counts {
                TOKENS
                    .with_label_values(&[user, model, token_type])
                    .inc_by(tokens);
            }
        }

        self.record_gen_ai(record, model);
    }

    /// Updates the OpenTelemetry GenAI histograms for requests that reached
    /// the provider on a generation or embedding route.
    fn record_gen_ai(&self, record: &RequestRecord<'_>, model: &str) {
        let Some(operation) = record.route.and_then(gen_ai_operation) else {
            return;
        };
        let Some(upstream_status) = record.upstream_status else {
            return;
        };

        let error_type = if (200..300).contains(&upstream_status) {
            ""
        } else {
            status_label(upstream_status)
        };
        GEN_AI_DURATION
            .with_label_values(&[model, operation, error_type])
            .observe(record.duration.as_secs_f64());

        if let Some(usage) = record.charge.and_then(|charge| charge.usage) {
            for (token_type, tokens) in [
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
            ] {
                GEN_AI_TOKENS
                    .with_label_values(&[token_type, model, operation])
                    .observe(tokens as f64);
            }
        }
    }
}

/// Counts a request the gateway rejected without forwarding it, from
/// `request_filter`.
/// `reason` is one of [`crate::errors::GatewayError::reason`].
pub fn record_rejection(reason: &'static str) {
    REJECTIONS.with_label_values(&[reason]).inc();
}

/// Counts a failed exchange with the provider. `kind` is one of `connect`,
/// `timeout`, `closed`, `http_429` and `http_5xx`.
pub fn record_upstream_error(kind: &'static str) {
    UPSTREAM_ERRORS.with_label_values(&[kind]).inc();
}

/// Returns the upstream error kind of a provider response status, or `None`
/// when the status is no provider failure.
pub fn upstream_status_error(status: u16) -> Option<&'static str> {
    match status {
        429 => Some("http_429"),
        500..=599 => Some("http_5xx"),
        _ => None,
    }
}

/// Sets the budget gauges of one user. An unlimited limit and remaining
/// count are +Inf, which the prometheus crate 0.14 prints as `inf` and
/// Prometheus parses as +Inf. The admin listener calls it for every
/// configured user at scrape time, so users without traffic have series too.
pub fn set_budget(user: &str, status: &BudgetStatus) {
    let limit = status.limit.map_or(f64::INFINITY, |limit| limit as f64);
    let remaining = status
        .remaining()
        .map_or(f64::INFINITY, |remaining| remaining as f64);

    BUDGET_LIMIT.with_label_values(&[user]).set(limit);
    BUDGET_USED
        .with_label_values(&[user])
        .set(status.used as f64);
    BUDGET_RESERVED
        .with_label_values(&[user])
        .set(status.reserved as f64);
    BUDGET_REMAINING.with_label_values(&[user]).set(remaining);
    BUDGET_RESET
        .with_label_values(&[user])
        .set(status.window.end as f64);
}

/// Rejection reasons, as [`crate::errors::GatewayError::reason`] returns them
/// for failures answered before forwarding.
const REJECTION_REASONS: &[&str] = &[
    "invalid_key",
    "not_found",
    "bad_request",
    "policy",
    "budget",
    "rate_limit",
];

/// Kinds of `tollgate_upstream_errors_total`.
const UPSTREAM_ERROR_KINDS: &[&str] = &["connect", "timeout", "closed", "http_429", "http_5xx"];

/// Registers every metric at start-up, so a name clash in the registry
/// panics there rather than on the first request. The rejection and
/// upstream error counters start at 0 for each known label value, so
/// `rate()` and `increase()` see their first increment.
pub fn register_all() {
    for reason in REJECTION_REASONS {
        REJECTIONS.with_label_values(&[reason]);
    }
    for kind in UPSTREAM_ERROR_KINDS {
        UPSTREAM_ERRORS.with_label_values(&[kind]);
    }

    Lazy::force(&REQUESTS);
    Lazy::force(&TOKENS);
    Lazy::force(&CHARGED_TOKENS);
    Lazy::force(&REJECTIONS);
    Lazy::force(&UPSTREAM_ERRORS);
    Lazy::force(&REQUEST_DURATION);
    Lazy::force(&FIRST_TOKEN);
    Lazy::force(&BUDGET_LIMIT);
    Lazy::force(&BUDGET_USED);
    Lazy::force(&BUDGET_RESERVED);
    Lazy::force(&BUDGET_REMAINING);
    Lazy::force(&BUDGET_RESET);
    Lazy::force(&GEN_AI_TOKENS);
    Lazy::force(&GEN_AI_DURATION);
}

/// Encodes every metric of the default registry in the Prometheus text
/// format. Returns the body and its content type.
pub fn encode() -> (Vec<u8>, String) {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
        log::error!("failed to encode the metrics: {e}");
    }
    (body, encoder.format_type().to_string())
}

/// Returns the `status` label: the HTTP status as text, or `0` when no
/// response was written because the client went away.
fn status_label(status: u16) -> &'static str {
    // A table of every value from 0 to 999 keeps the label set bounded and
    // spares an allocation per request.
    static LABELS: Lazy<Vec<String>> = Lazy::new(|| (0..1000).map(|s| s.to_string()).collect());
    LABELS.get(status as usize).map_or("0", String::as_str)
}

/// Returns the OpenTelemetry `gen_ai.operation.name` of a route, or `None`
/// for routes that generate nothing. Responses API requests count as `chat`,
/// the conversational operation.
fn gen_ai_operation(route: Route) -> Option<&'static str> {
    match route {
        Route::ChatCompletions | Route::Responses => Some("chat"),
        Route::Completions => Some("text_completion"),
        Route::Embeddings => Some("embeddings"),
        Route::Models | Route::GatewayUsage => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Window;
    use crate::usage::{Usage, UsageSource};

    fn scrape() -> String {
        String::from_utf8(encode().0).unwrap()
    }

    #[test]
    fn unknown_models_are_other() {
        let labels = Labels::new(vec!["gpt-4o".to_string()]);
        assert_eq!(labels.model(Some("gpt-4o")), "gpt-4o");
        assert_eq!(labels.model(Some("gpt-4o-evil\"}")), OTHER_MODEL);
        assert_eq!(labels.model(None), NO_MODEL);
    }

    #[test]
    fn status_labels_cover_every_status() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(0), "0");
        assert_eq!(status_label(999), "999");
        assert_eq!(status_label(1000), "0");
    }

    #[test]
    fn upstream_statuses_map_to_kinds() {
        assert_eq!(upstream_status_error(200), None);
        assert_eq!(upstream_status_error(400), None);
        assert_eq!(upstream_status_error(429), Some("http_429"));
        assert_eq!(upstream_status_error(503), Some("http_5xx"));
    }

    #[test]
    fn request_counts_tokens_by_type() {
        let labels = Labels::new(vec!["unit-model".to_string()]);
        let usage = Usage {
            input_tokens: 30,
            output_tokens: 12,
            total_tokens: 42,
            cached_input_tokens: 8,
            reasoning_tokens: 5,
        };
        labels.record_request(&RequestRecord {
            user: Some("unit-user"),
            model: Some("unit-model"),
            route: Some(Route::ChatCompletions),
            status: 200,
            upstream_status: Some(200),
            duration: Duration::from_millis(250),
            first_token: Some(Duration::from_millis(40)),
            charge: Some(Charge {
                tokens: 42,
                usage: Some(usage),
                source: UsageSource::Reported,
            }),
        });

        let text = scrape();
        for line in [
            r#"tollgate_requests_total{model="unit-model",route="chat_completions",status="200",user="unit-user"} 1"#,
            r#"tollgate_tokens_total{model="unit-model",type="input",user="unit-user"} 30"#,
            r#"tollgate_tokens_total{model="unit-model",type="output",user="unit-user"} 12"#,
            r#"tollgate_tokens_total{model="unit-model",type="cached_input",user="unit-user"} 8"#,
            r#"tollgate_tokens_total{model="unit-model",type="reasoning",user="unit-user"} 5"#,
            r#"tollgate_charged_tokens_total{model="unit-model",source="reported",user="unit-user"} 42"#,
            r#"gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_request_model="unit-model",gen_ai_token_type="input"} 30"#,
            r#"gen_ai_client_operation_duration_seconds_count{error_type="",gen_ai_operation_name="chat",gen_ai_request_model="unit-model"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }

    #[test]
    fn unlimited_budget_is_infinite() {
        let status = BudgetStatus {
            limit: None,
            used: 7,
            reserved: 3,
            window: Window {
                start: 3_600,
                end: 7_200,
            },
        };
        set_budget("unit-unlimited", &status);

        let text = scrape();
        assert!(text.contains(r#"tollgate_budget_limit_tokens{user="unit-unlimited"} inf"#));
        assert!(text.contains(r#"tollgate_budget_remaining_tokens{user="unit-unlimited"} inf"#));
        assert!(text.contains(r#"tollgate_budget_used_tokens{user="unit-unlimited"} 7"#));
        assert!(text.contains(r#"tollgate_budget_reserved_tokens{user="unit-unlimited"} 3"#));
        assert!(
            text.contains(r#"tollgate_budget_reset_timestamp_seconds{user="unit-unlimited"} 7200"#)
        );
    }
}
