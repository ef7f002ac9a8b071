//! The admin listener, the metrics it serves, the access log and the
//! Grafana dashboard, checked against the real gateway and mock upstream.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::{client, config_for, metric_value, repo_path, Gateway, Mock, PROVIDER_KEY};

fn chat(gateway: &Gateway, key: &str, body: &Value, behavior: &str) -> reqwest::blocking::Response {
    let mut request = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    if !behavior.is_empty() {
        request = request.header("x-mock-behavior", behavior);
    }
    request.send().expect("POST /v1/chat/completions")
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "max_completion_tokens": 20,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
}

/// Asserts that `series` has `expected` as its value in `metrics`.
fn assert_metric(metrics: &str, series: &str, expected: f64) {
    match metric_value(metrics, series) {
        Some(value) => assert_eq!(value, expected, "value of {series}"),
        None => panic!("{series} is missing from /metrics:\n{metrics}"),
    }
}

/// Returns every sample line of a metrics text (no comments), for counting
/// series.
fn sample_lines(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .collect()
}

/// Sends traffic of every kind the metrics distinguish: two successful chat
/// requests of bob (JSON and stream), an unknown key, an unknown path, a
/// request over alice's budget and an upstream 500. Returns bob's usage as
/// the two responses reported it, summed: (input, output, cached, reasoning).
fn known_traffic(gateway: &Gateway) -> (u64, u64, u64, u64) {
    let response = chat(
        gateway,
        "bob-key",
        &chat_body("gpt-4o-mini", false),
        "cached-tokens=4,reasoning-tokens=3",
    );
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    let usage = &body["usage"];
    let mut input = usage["prompt_tokens"].as_u64().unwrap();
    let mut output = usage["completion_tokens"].as_u64().unwrap();
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(cached, 4);
    assert_eq!(reasoning, 3);

    let mut streamed = chat_body("gpt-4o-mini", true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response = chat(gateway, "bob-key", &streamed, "");
    assert_eq!(response.status(), 200);
    let text = response.text().unwrap();
    let usage = common::sse_data(&text)
        .into_iter()
        .find(|event| event["usage"].is_object())
        .expect("a usage chunk")["usage"]
        .clone();
    input += usage["prompt_tokens"].as_u64().unwrap();
    output += usage["completion_tokens"].as_u64().unwrap();

    let response = chat(gateway, "wrong-key", &chat_body("gpt-4o-mini", false), "");
    assert_eq!(response.status(), 401);

    let response = client()
        .get(gateway.url("/v1/files"))
        .bearer_auth("bob-key")
        .send()
        .unwrap();
    assert_eq!(response.status(), 404);

    let huge = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "word ".repeat(2000)}],
    });
    let response = chat(gateway, "alice-key", &huge, "");
    assert_eq!(response.status(), 429);

    let response = chat(
        gateway,
        "carol-key",
        &chat_body("gpt-4o", false),
        "error-500",
    );
    assert_eq!(response.status(), 500);

    gateway.settled_usage("bob-key");
    gateway.wait_for_log_lines(6);
    (input, output, cached, reasoning)
}

#[test]
fn metrics_after_known_traffic() {
    let mock = Mock::start();
    let config = format!(
        "{}\npolicies:\n  models: [gpt-4o-mini, gpt-4o]\n",
        config_for(&mock)
    );
    let gateway = Gateway::start(&config);

    let (input, output, cached, reasoning) = known_traffic(&gateway);
    let response = chat(&gateway, "bob-key", &chat_body("gpt-3.5-secret", false), "");
    assert!(response.status().is_client_error());
    let policy_status = response.status().as_u16();
    let bob_used = gateway.settled_usage("bob-key")["tokens_used"]
        .as_u64()
        .unwrap();
    let metrics = gateway.metrics();

    // Requests, by user, model, route and status. The allow-list names the
    // models, so they are label values. A request rejected before its body
    // was inspected, the disallowed model included, has the model `none`.
    let policy_series = format!(
        r#"tollgate_requests_total{{model="none",route="chat_completions",status="{policy_status}",user="bob"}}"#
    );
    assert_metric(&metrics, &policy_series, 1.0);
    assert!(!metrics.contains("gpt-3.5-secret"));
    for (series, count) in [
        (
            r#"tollgate_requests_total{model="gpt-4o-mini",route="chat_completions",status="200",user="bob"}"#,
            2.0,
        ),
        (
            r#"tollgate_requests_total{model="none",route="chat_completions",status="401",user="unknown"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{model="none",route="other",status="404",user="unknown"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{model="gpt-4o-mini",route="chat_completions",status="429",user="alice"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{model="gpt-4o",route="chat_completions",status="500",user="carol"}"#,
            1.0,
        ),
    ] {
        assert_metric(&metrics, series, count);
    }

    // Tokens by type, as the provider reported them.
    assert_metric(
        &metrics,
        r#"tollgate_tokens_total{model="gpt-4o-mini",type="input",user="bob"}"#,
        input as f64,
    );
    assert_metric(
        &metrics,
        r#"tollgate_tokens_total{model="gpt-4o-mini",type="output",user="bob"}"#,
        output as f64,
    );
    assert_metric(
        &metrics,
        r#"tollgate_tokens_total{model="gpt-4o-mini",type="cached_input",user="bob"}"#,
        cached as f64,
    );
    assert_metric(
        &metrics,
        r#"tollgate_tokens_total{model="gpt-4o-mini",type="reasoning",user="bob"}"#,
        reasoning as f64,
    );
    assert_metric(
        &metrics,
        r#"tollgate_charged_tokens_total{model="gpt-4o-mini",source="reported",user="bob"}"#,
        bob_used as f64,
    );

    // Rejections by reason.
    assert_metric(
        &metrics,
        r#"tollgate_rejections_total{reason="invalid_key"}"#,
        1.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_rejections_total{reason="not_found"}"#,
        1.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_rejections_total{reason="budget"}"#,
        1.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_rejections_total{reason="policy"}"#,
        1.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_upstream_errors_total{kind="http_5xx"}"#,
        1.0,
    );

    // Budget gauges, including carol's (unlimited) and alice's (no usage).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let next_hour = (now / 3600 + 1) * 3600;
    assert_metric(
        &metrics,
        r#"tollgate_budget_limit_tokens{user="alice"}"#,
        1000.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_budget_used_tokens{user="alice"}"#,
        0.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_budget_limit_tokens{user="bob"}"#,
        100_000.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_budget_used_tokens{user="bob"}"#,
        bob_used as f64,
    );
    assert_metric(
        &metrics,
        r#"tollgate_budget_reserved_tokens{user="bob"}"#,
        0.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_budget_remaining_tokens{user="bob"}"#,
        (100_000 - bob_used) as f64,
    );
    assert_metric(
        &metrics,
        r#"tollgate_budget_limit_tokens{user="carol"}"#,
        f64::INFINITY,
    );
    assert_metric(
        &metrics,
        r#"tollgate_budget_used_tokens{user="carol"}"#,
        0.0,
    );
    for user in ["alice", "bob", "carol"] {
        let series = format!(r#"tollgate_budget_reset_timestamp_seconds{{user="{user}"}}"#);
        let reset = metric_value(&metrics, &series).expect("reset gauge");
        // The scrape may fall on the other side of an hour boundary.
        assert!(
            reset == next_hour as f64 || reset == (next_hour + 3600) as f64,
            "{series} is {reset}, expected {next_hour}"
        );
    }

    // Latency histograms: every finished request has a duration; only the
    // two successful provider responses have a time to first token.
    assert_metric(
        &metrics,
        r#"tollgate_request_duration_seconds_count{model="gpt-4o-mini",route="chat_completions"}"#,
        3.0,
    );
    assert_metric(
        &metrics,
        r#"tollgate_time_to_first_token_seconds_count{model="gpt-4o-mini",route="chat_completions"}"#,
        2.0,
    );
    assert!(metrics.contains(r#"tollgate_request_duration_seconds_bucket{model="gpt-4o-mini",route="chat_completions",le="3600"} 3"#));
    assert_metric(
        &metrics,
        r#"tollgate_request_duration_seconds_count{model="gpt-4o",route="chat_completions"}"#,
        1.0,
    );

    // OpenTelemetry GenAI names: the upstream 500 counts as an operation
    // with an error type, and only reported usage counts as tokens.
    assert_metric(
        &metrics,
        r#"gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_token_type="input"}"#,
        input as f64,
    );
    assert_metric(
        &metrics,
        r#"gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_token_type="output"}"#,
        2.0,
    );
    assert_metric(
        &metrics,
        r#"gen_ai_client_operation_duration_seconds_count{error_type="",gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini"}"#,
        2.0,
    );
    assert_metric(
        &metrics,
        r#"gen_ai_client_operation_duration_seconds_count{error_type="500",gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o"}"#,
        1.0,
    );
}

#[test]
fn random_models_keep_series_bounded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    // Every request names a model, a path and a request id never seen
    // before; only configuration may add label values.
    let send = |from: usize, to: usize| {
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let url = gateway.url("");
                std::thread::spawn(move || {
                    let client = client();
                    for i in (from..to).filter(|i| i % 4 == thread) {
                        let model = format!("random-model-{i}-{:x}", rand_u64(i));
                        let response = client
                            .post(format!("{url}/v1/chat/completions"))
                            .bearer_auth("carol-key")
                            .header("x-request-id", format!("random-id-{i}"))
                            .json(&chat_body(&model, i % 2 == 0))
                            .send()
                            .unwrap();
                        assert_eq!(response.status(), 200, "request {i}");
                        response.bytes().unwrap();
                        let path = format!("{url}/v1/random-path-{i}");
                        let response = client.get(path).bearer_auth("carol-key").send().unwrap();
                        assert_eq!(response.status(), 404, "request {i}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("request thread");
        }
    };

    send(0, 20);
    gateway.wait_for_log_lines(40);
    let early = gateway.metrics();
    send(20, 1000);
    let lines = gateway.wait_for_log_lines(2000);
    assert_eq!(lines.len(), 2000, "access-log lines");
    let late = gateway.metrics();

    assert_eq!(
        sample_lines(&early).len(),
        sample_lines(&late).len(),
        "series count after 40 requests and after 2000"
    );
    assert!(!late.contains("random-"), "a request value became a label");
    assert_metric(
        &late,
        r#"tollgate_requests_total{model="other",route="chat_completions",status="200",user="carol"}"#,
        1000.0,
    );
    assert_metric(
        &late,
        r#"tollgate_requests_total{model="none",route="other",status="404",user="unknown"}"#,
        1000.0,
    );
}

/// Mixes `seed` into a deterministic number, so model names differ in more
/// than their counter.
fn rand_u64(seed: usize) -> u64 {
    (seed as u64 ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

#[test]
fn admin_endpoints_answer() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let response = chat(&gateway, "bob-key", &chat_body("gpt-4o-mini", false), "");
    assert_eq!(response.status(), 200);
    gateway.settled_usage("bob-key");

    let healthz = client().get(gateway.admin_url("/healthz")).send().unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = client().get(gateway.admin_url("/readyz")).send().unwrap();
    assert_eq!(readyz.status(), 200);
    let readyz: Value = readyz.json().unwrap();
    assert_eq!(readyz["budget_store"], "reachable");

    let usage: Value = client()
        .get(gateway.admin_url("/admin/usage"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let users = usage["users"].as_array().expect("users list");
    let names: Vec<&str> = users.iter().map(|u| u["user"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    let bob = &users[1];
    assert_eq!(bob["tokens_limit"], 100_000);
    assert!(bob["tokens_used"].as_u64().unwrap() > 0);
    assert_eq!(bob["tokens_reserved"], 0);
    assert_eq!(
        bob["tokens_remaining"].as_u64().unwrap(),
        100_000 - bob["tokens_used"].as_u64().unwrap()
    );
    assert!(bob["reset_at"].as_str().unwrap().ends_with(":00:00Z"));
    assert_eq!(users[2]["tokens_limit"], Value::Null, "carol is unlimited");
    assert_eq!(users[2]["tokens_remaining"], Value::Null);

    // /metrics is served on that path only, and only to GET.
    for path in ["/", "/metric", "/metrics/", "/v1/chat/completions"] {
        let response = client().get(gateway.admin_url(path)).send().unwrap();
        assert_eq!(response.status(), 404, "GET {path}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "not_found", "GET {path}");
    }
    let response = client().post(gateway.admin_url("/metrics")).send().unwrap();
    assert_eq!(response.status(), 405);

    // The API listener does not serve the admin paths.
    let response = client().get(gateway.url("/metrics")).send().unwrap();
    assert_eq!(response.status(), 404);
}

#[test]
fn admin_token_guards_metrics_and_usage() {
    let mock = Mock::start();
    let config = format!(
        "{}\nadmin_listen: \"{{admin}}\"\nadmin_token: admin-canary-3b1d\n",
        config_for(&mock)
    );
    let gateway = Gateway::start(&config);

    for path in ["/metrics", "/admin/usage"] {
        let response = client().get(gateway.admin_url(path)).send().unwrap();
        assert_eq!(response.status(), 401, "{path} without a token");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "invalid_admin_token");

        let response = client()
            .get(gateway.admin_url(path))
            .bearer_auth("admin-canary-wrong")
            .send()
            .unwrap();
        assert_eq!(response.status(), 401, "{path} with a wrong token");

        let response = client()
            .get(gateway.admin_url(path))
            .bearer_auth("admin-canary-3b1d")
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{path} with the token");
    }

    for path in ["/healthz", "/readyz"] {
        let response = client().get(gateway.admin_url(path)).send().unwrap();
        assert_eq!(response.status(), 200, "{path} stays open");
    }
    assert!(!gateway.output().contains("admin-canary"));
    let warnings = gateway.stderr_lines();
    assert!(
        warnings
            .iter()
            .any(|line| line.contains("admin request for /metrics from 127.0.0.1:")),
        "no warning for the rejected admin request: {warnings:?}"
    );
}

#[test]
fn non_loopback_admin_needs_token() {
    let mock = Mock::start();
    let config = format!("{}\nadmin_listen: \"0.0.0.0:9464\"\n", config_for(&mock));
    // Validation fails before anything binds the address.
    let error = match Gateway::try_start(&config) {
        Ok(_) => panic!("the gateway started with an open admin listener"),
        Err(error) => error,
    };
    assert!(error.contains("admin_listen: 0.0.0.0:9464"), "{error}");
    assert!(error.contains("admin_token"), "{error}");
}

#[test]
fn access_log_line_has_every_field() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-request-id", "client-id-42")
        .json(&chat_body("gpt-4o-mini", true))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "client-id-42");
    response.text().unwrap();

    // An id with characters outside the allowed set is replaced.
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("wrong-key")
        .header("x-request-id", "bad id\"{")
        .json(&chat_body("gpt-4o-mini", false))
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);
    let replaced = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(replaced.starts_with("req_"), "{replaced}");

    let lines = gateway.wait_for_log_lines(2);
    let line = lines
        .iter()
        .find(|line| line["request_id"] == "client-id-42")
        .expect("the access-log line of the streamed request");
    for field in [
        "time",
        "request_id",
        "client",
        "user",
        "method",
        "route",
        "model",
        "status",
        "upstream_status",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "charged_tokens",
        "usage_source",
        "duration_ms",
        "ttft_ms",
    ] {
        assert!(!line[field].is_null(), "{field} is missing from {line}");
    }
    assert_eq!(line["user"], "bob");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "chat_completions");
    assert_eq!(line["model"], "gpt-4o-mini");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["usage_source"], "reported");
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["ttft_ms"].as_u64().unwrap() <= line["duration_ms"].as_u64().unwrap());

    let rejected = lines
        .iter()
        .find(|line| line["request_id"] == replaced.as_str())
        .expect("the access-log line of the rejected request");
    assert_eq!(rejected["status"], 401);
    assert_eq!(rejected["rejection"], "invalid_key");
}

#[test]
fn access_log_off_writes_nothing() {
    let mock = Mock::start();
    let config = format!("{}\nlog:\n  access_log: off\n", config_for(&mock));
    let gateway = Gateway::start(&config);

    let response = chat(&gateway, "bob-key", &chat_body("gpt-4o-mini", false), "");
    assert_eq!(response.status(), 200);
    gateway.settled_usage("bob-key");

    // The metrics show the request finished, so its log line would exist.
    let metrics = gateway.metrics();
    assert_metric(
        &metrics,
        r#"tollgate_requests_total{model="other",route="chat_completions",status="200",user="bob"}"#,
        1.0,
    );
    assert!(gateway.access_log().is_empty());
}

/// Keys that must never appear in any output of the gateway.
const INTERNAL_KEY: &str = "tg-internal-canary-5e21";
const WRONG_KEY: &str = "tg-wrong-canary-a90c";
const PROMPT: &str = "prompt-canary-c4f7 tell me a secret";

#[test]
fn canary_keys_never_logged() {
    let mock = Mock::start();
    let config = config_for(&mock).replace(
        "server:\n",
        &format!("  - name: dave\n    api_key: {INTERNAL_KEY}\n    tokens: 100000\nserver:\n"),
    );
    assert!(config.contains("  - name: dave\n    api_key"), "{config}");

    // RUST_LOG at every level, then the level from the configuration alone.
    let mut runs: Vec<(String, String)> = ["error", "warn", "info", "debug", "trace"]
        .iter()
        .map(|level| (config.clone(), level.to_string()))
        .collect();
    runs.push((format!("{config}log:\n  level: trace\n"), String::new()));

    for (config, rust_log) in runs {
        let gateway = Gateway::start_with_log(&config, &rust_log);
        let prompt = json!({
            "model": "gpt-4o-mini",
            "stream": false,
            "messages": [{"role": "user", "content": PROMPT}],
        });
        let mut streamed = prompt.clone();
        streamed["stream"] = json!(true);

        assert_eq!(chat(&gateway, INTERNAL_KEY, &prompt, "").status(), 200);
        assert_eq!(chat(&gateway, INTERNAL_KEY, &streamed, "").status(), 200);
        assert_eq!(
            chat(&gateway, INTERNAL_KEY, &prompt, "error-500").status(),
            500
        );
        assert_eq!(chat(&gateway, INTERNAL_KEY, &streamed, "cut").status(), 200);
        assert_eq!(chat(&gateway, WRONG_KEY, &prompt, "").status(), 401);
        let response = client()
            .get(gateway.url("/v1/models"))
            .header("x-api-key", INTERNAL_KEY)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        gateway.metrics();
        gateway.wait_for_log_lines(6);
        // Give the stderr reader a moment to take the last lines.
        std::thread::sleep(std::time::Duration::from_millis(200));

        let output = gateway.output();
        let level = if rust_log.is_empty() {
            "log.level trace"
        } else {
            &rust_log
        };
        assert!(
            output.contains("\"user\":\"dave\""),
            "{level}: no access log"
        );
        if !matches!(level, "error" | "warn") {
            assert!(
                output.contains("tollgate starting"),
                "{level}: no diagnostic log"
            );
        }
        for canary in [PROVIDER_KEY, INTERNAL_KEY, WRONG_KEY, "prompt-canary"] {
            assert!(
                !output.contains(canary),
                "{level}: {canary} appears in the output:\n{}",
                output
                    .lines()
                    .filter(|line| line.contains(canary))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[test]
fn dashboard_queries_use_exported_metrics() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    known_traffic(&gateway);
    let metrics = gateway.metrics();

    let path = repo_path("conf/grafana/tollgate.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 8, "only {} queries", expressions.len());

    let mut names = Vec::new();
    for expression in &expressions {
        let found: Vec<&str> = expression
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|token| token.starts_with("tollgate_") || token.starts_with("gen_ai_client_"))
            .collect();
        assert!(
            !found.is_empty(),
            "a query uses no tollgate metric: {expression}"
        );
        names.extend(found);
    }
    for name in names {
        let exported = sample_lines(&metrics).iter().any(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        });
        assert!(
            exported,
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}

/// Collects every `expr` string of the dashboard's panel targets.
fn collect_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr", Value::String(expression)) => out.push(expression.clone()),
                    _ => collect_expressions(item, out),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_expressions(item, out);
            }
        }
        _ => {}
    }
}

#[test]
fn upstream_failures_counted_and_logged_once() {
    let closed = common::free_addr();
    let config = format!(
        r#"
listen: "{{listen}}"
upstream:
  url: http://{closed}
  api_key: {PROVIDER_KEY}
  connect_timeout: 1s
users:
  - name: bob
    api_key: bob-key
server:
  pid_file: "{{dir}}/tollgate.pid"
  upgrade_sock: "{{dir}}/upgrade.sock"
"#
    );
    let gateway = Gateway::start(&config);

    // Past 10 failures of one kind a minute, lines are only counted.
    let mut request_ids = Vec::new();
    for _ in 0..12 {
        let response = chat(&gateway, "bob-key", &chat_body("gpt-4o-mini", false), "");
        assert_eq!(response.status(), 502);
        request_ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    gateway.wait_for_log_lines(12);
    let metrics = gateway.metrics();
    assert_metric(
        &metrics,
        r#"tollgate_upstream_errors_total{kind="connect"}"#,
        12.0,
    );

    std::thread::sleep(std::time::Duration::from_millis(200));
    let errors: Vec<String> = gateway
        .stderr_lines()
        .into_iter()
        .filter(|line| line.contains("ERROR"))
        .collect();
    assert_eq!(errors.len(), 10, "error lines: {errors:#?}");
    for (request_id, line) in request_ids.iter().zip(&errors) {
        assert!(line.contains(request_id), "{line} lacks {request_id}");
        assert!(line.contains(": upstream: "), "{line}");
    }
}

#[test]
fn silent_upstream_counts_timeout() {
    let mock = Mock::start();
    let config = config_for(&mock).replace("read_timeout: 5s", "read_timeout: 1s");
    let gateway = Gateway::start(&config);

    let response = chat(
        &gateway,
        "bob-key",
        &chat_body("gpt-4o-mini", false),
        "slow-first-byte=1500",
    );
    assert_eq!(response.status(), 504);
    gateway.wait_for_log_lines(1);

    let metrics = gateway.metrics();
    assert_metric(
        &metrics,
        r#"tollgate_upstream_errors_total{kind="timeout"}"#,
        1.0,
    );
    // Every kind starts at 0, so rate() sees the first failure of each.
    for kind in ["connect", "closed", "http_429", "http_5xx"] {
        let series = format!(r#"tollgate_upstream_errors_total{{kind="{kind}"}}"#);
        assert_metric(&metrics, &series, 0.0);
    }
    for reason in [
        "invalid_key",
        "not_found",
        "bad_request",
        "policy",
        "budget",
        "rate_limit",
    ] {
        let series = format!(r#"tollgate_rejections_total{{reason="{reason}"}}"#);
        assert_metric(&metrics, &series, 0.0);
    }
}
