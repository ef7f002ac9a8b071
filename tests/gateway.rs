//! End-to-end tests: the real gateway binary in front of the real mock
//! upstream, over HTTP on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    client, config_for, recorded_header, repo_path, sse_data, Gateway, Mock, PROVIDER_KEY,
};
use serde_json::{json, Value};

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "max_completion_tokens": 20,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
}

fn post_chat(gateway: &Gateway, key: &str, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .expect("POST /v1/chat/completions")
}

#[test]
fn missing_key_is_401_and_not_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn unknown_key_is_401_and_not_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    for key in ["wrong-key", "alice-ke", "ALICE-KEY"] {
        let response = post_chat(&gateway, key, &chat_body(false));
        assert_eq!(response.status(), 401, "key {key:?}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn key_accepted_in_both_headers() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let lower_bearer = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("authorization", "bearer bob-key")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(lower_bearer.status(), 200);

    let x_api_key = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("x-api-key", "bob-key")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(x_api_key.status(), 200);
}

#[test]
fn provider_key_replaces_client_credentials() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-api-key", "bob-key")
        .header("api-key", "client-azure-key")
        .header("openai-organization", "org-client")
        .header("openai-project", "proj-client")
        .header("x-goog-api-key", "client-google-key")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let forwarded = &requests[0];
    assert_eq!(
        recorded_header(forwarded, "authorization"),
        vec![format!("Bearer {PROVIDER_KEY}").as_str()]
    );
    for name in [
        "x-api-key",
        "api-key",
        "openai-organization",
        "openai-project",
        "x-goog-api-key",
    ] {
        assert!(
            recorded_header(forwarded, name).is_empty(),
            "{name} reached the upstream"
        );
    }
    assert!(!forwarded.to_string().contains("bob-key"));
}

#[test]
fn unlisted_paths_are_404_and_not_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    for (method, path) in [
        ("GET", "/v1/files"),
        ("POST", "/v1/files"),
        ("GET", "/v1/organization/users"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/"),
        ("POST", "/v1/chat/completions/../../files"),
    ] {
        let response = client()
            .request(method.parse().unwrap(), gateway.url(path))
            .bearer_auth("bob-key")
            .send()
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: Value = response.json().unwrap();
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{method} {path}"
        );
    }
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn models_list_is_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .get(gateway.url("/v1/models"))
        .bearer_auth("bob-key")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    assert_eq!(body["object"], "list");

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["path"], "/v1/models");
}

#[test]
fn chat_json_usage_is_charged() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = post_chat(&gateway, "bob-key", &chat_body(false));
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(request_id.starts_with("req_"), "{request_id}");
    assert_ne!(request_id, "req_mock_upstream");
    assert_eq!(
        response.headers()["x-upstream-request-id"],
        "req_mock_upstream"
    );
    assert_eq!(response.headers()["x-ratelimit-limit-tokens"], "100000");
    let body: Value = response.json().unwrap();
    let total = body["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total > 20);

    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], total);
    assert_eq!(usage["tokens_reserved"], 0);
    assert_eq!(usage["tokens_remaining"], 100_000 - total);
}

#[test]
fn chat_stream_hides_added_usage_chunk() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = post_chat(&gateway, "bob-key", &chat_body(true));
    assert_eq!(response.status(), 200);
    let reported: u64 = response.headers()["x-mock-usage-total"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = response.text().unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("usage"),
        "the client did not ask for usage: {text}"
    );
    let chunks = sse_data(&text);
    assert!(chunks.len() > 3);
    assert!(chunks
        .iter()
        .all(|chunk| !chunk["choices"].as_array().unwrap().is_empty()));

    let forwarded: Value =
        serde_json::from_str(mock.requests()[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(forwarded["stream_options"]["include_usage"], true);

    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], reported);
}

#[test]
fn chat_stream_keeps_requested_usage_chunk() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = post_chat(&gateway, "bob-key", &body);
    assert_eq!(response.status(), 200);
    let chunks = sse_data(&response.text().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let total = last["usage"]["total_tokens"].as_u64().unwrap();

    assert_eq!(gateway.settled_usage("bob-key")["tokens_used"], total);
}

#[test]
fn responses_json_and_stream_are_charged() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let request = |stream: bool| {
        client()
            .post(gateway.url("/v1/responses"))
            .bearer_auth("bob-key")
            .json(&json!({"model": "gpt-5-codex", "input": "Write a haiku.", "stream": stream}))
            .send()
            .unwrap()
    };

    let json_response: Value = request(false).json().unwrap();
    let json_total = json_response["usage"]["total_tokens"].as_u64().unwrap();

    let stream_text = request(true).text().unwrap();
    let completed = sse_data(&stream_text)
        .into_iter()
        .find(|event| event["type"] == "response.completed")
        .expect("response.completed event");
    let stream_total = completed["response"]["usage"]["total_tokens"]
        .as_u64()
        .unwrap();

    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], json_total + stream_total);
}

#[test]
fn exhausted_budget_is_429_for_that_user_only() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response = post_chat(&gateway, "alice-key", &chat_body(false));
        let status = response.status().as_u16();
        statuses.push(status);
        if status == 429 {
            let headers = response.headers().clone();
            let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(
                (1..=3600).contains(&retry_after),
                "retry-after {retry_after}"
            );
            assert_eq!(headers["x-ratelimit-limit-tokens"], "1000");
            assert!(headers.contains_key("x-ratelimit-remaining-tokens"));
            assert!(headers.contains_key("x-ratelimit-reset-tokens"));
            let body: Value = response.json().unwrap();
            assert_eq!(body["error"]["code"], "insufficient_quota");
            assert_eq!(body["error"]["type"], "insufficient_quota");
            break;
        }
        assert_eq!(status, 200);
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "alice was never limited: {statuses:?}"
    );

    let forwarded_before = mock.request_count();
    let again = post_chat(&gateway, "alice-key", &chat_body(false));
    assert_eq!(again.status(), 429);
    assert_eq!(
        mock.request_count(),
        forwarded_before,
        "a rejected request was forwarded"
    );

    // Admission needs only the input estimate to fit, so the last admitted
    // request may overshoot by its own usage (29 tokens at the mock's count).
    let usage = gateway.settled_usage("alice-key");
    let used = usage["tokens_used"].as_u64().unwrap();
    assert!(used <= 1000 + 29, "alice used {used} of 1000");
    assert!(used > 1000 - 29, "alice was limited at {used} of 1000");

    let bob = post_chat(&gateway, "bob-key", &chat_body(false));
    assert_eq!(bob.status(), 200);
}

#[test]
fn usage_endpoint_reports_own_budget() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let usage = gateway.usage("alice-key");
    assert_eq!(usage["user"], "alice");
    assert_eq!(usage["tokens_limit"], 1000);
    assert_eq!(usage["tokens_used"], 0);
    assert_eq!(usage["tokens_reserved"], 0);
    assert_eq!(usage["tokens_remaining"], 1000);
    let reset_in = usage["reset_in_seconds"].as_u64().unwrap();
    assert!((1..=3600).contains(&reset_in));
    let reset_at = usage["reset_at"].as_str().unwrap();
    assert!(
        reset_at.ends_with('Z') && reset_at.contains(":00:00"),
        "{reset_at}"
    );

    let unlimited = gateway.usage("carol-key");
    assert_eq!(unlimited["user"], "carol");
    assert!(unlimited["tokens_limit"].is_null());
    assert!(unlimited["tokens_remaining"].is_null());

    let anonymous = client()
        .get(gateway.url("/v1/gateway/usage"))
        .send()
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn provider_errors_pass_through_and_release() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", "error-429")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let server_error = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", "error-500")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(server_error.status(), 500);

    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], 0);
    assert_eq!(usage["tokens_reserved"], 0);
}

#[test]
fn unreachable_upstream_is_502_and_released() {
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
    tokens: 5000
server:
  pid_file: "{{dir}}/tollgate.pid"
  upgrade_sock: "{{dir}}/upgrade.sock"
"#
    );
    let gateway = Gateway::start(&config);

    let response = post_chat(&gateway, "bob-key", &chat_body(false));
    assert_eq!(response.status(), 502);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert!(!body.to_string().contains(PROVIDER_KEY));

    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], 0);
    assert_eq!(usage["tokens_reserved"], 0);
}

#[test]
fn silent_upstream_is_504() {
    let mock = Mock::start();
    let config = config_for(&mock).replace("read_timeout: 5s", "read_timeout: 1s");
    let gateway = Gateway::start(&config);

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", "slow-first-byte=3000")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(gateway.settled_usage("bob-key")["tokens_used"], 0);
}

#[test]
fn large_body_is_forwarded_intact() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    // Far above Pingora's 64 KiB replay buffer, as coding agents send.
    let prompt: String = (0..60_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt.repeat(5)}],
    });
    let sent = serde_json::to_string(&body).unwrap();
    assert!(sent.len() > 290_000);

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    let requests = mock.requests();
    assert_eq!(requests[0]["body"].as_str().unwrap(), sent);
    assert_eq!(
        recorded_header(&requests[0], "content-length"),
        vec![sent.len().to_string().as_str()]
    );
}

#[test]
fn small_chunked_body_is_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let sent = serde_json::to_vec(&chat_body(false)).unwrap();
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            sent.clone(),
        )))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.requests()[0]["body"].as_str().unwrap().as_bytes(),
        &sent[..]
    );
}

#[test]
fn oversized_body_is_413() {
    let mock = Mock::start();
    let config = config_for(&mock).replace(
        "budgets:",
        "limits:\n  max_request_body_bytes: 1000\nbudgets:",
    );
    let gateway = Gateway::start(&config);

    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2000)}]});
    let response = post_chat(&gateway, "bob-key", &body);
    assert_eq!(response.status(), 413);
    let error: Value = response.json().unwrap();
    assert_eq!(error["error"]["code"], "request_too_large");
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn malformed_bodies_are_400_and_not_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let cases = [
        ("{not json", None),
        ("[1, 2]", None),
        (r#"{"model": 42, "messages": []}"#, Some("model")),
        (r#"{"model": "m", "stream": "yes"}"#, Some("stream")),
        (r#"{"model": "m", "max_tokens": -1}"#, Some("max_tokens")),
    ];
    for (text, param) in cases {
        let response = client()
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth("bob-key")
            .header("content-type", "application/json")
            .body(text)
            .send()
            .unwrap();
        assert_eq!(response.status(), 400, "{text}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{text}");
        match param {
            Some(param) => assert_eq!(body["error"]["param"], param, "{text}"),
            None => assert!(body["error"]["param"].is_null(), "{text}"),
        }
    }
    assert_eq!(mock.request_count(), 0);
    assert_eq!(gateway.settled_usage("bob-key")["tokens_used"], 0);
}

#[test]
fn cut_stream_is_charged_an_estimate() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", "cut")
        .json(&chat_body(true))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    // The body ends in an error when the upstream drops the connection.
    let _ = response.text();

    let usage = gateway.settled_usage("bob-key");
    assert!(usage["tokens_used"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["tokens_reserved"], 0);
    let log = gateway.wait_for_log_lines(1);
    let line = log
        .iter()
        .find(|line| line["route"] == "chat_completions")
        .unwrap();
    assert_eq!(line["usage_source"], "estimated");
}

#[test]
fn target_url_with_trailing_slash_keeps_single_slash() {
    let mock = Mock::start();
    let config = config_for(&mock).replace(
        &format!("url: {}", mock.url()),
        &format!("url: {}/", mock.url()),
    );
    let gateway = Gateway::start(&config);

    assert_eq!(
        post_chat(&gateway, "bob-key", &chat_body(false)).status(),
        200
    );
    assert_eq!(mock.requests()[0]["path"], "/v1/chat/completions");
}

#[test]
fn membrane_config_limits_alice_not_bob() {
    let mock = Mock::start();
    let membrane = std::fs::read_to_string(repo_path("conf/membrane-example.yaml"))
        .unwrap()
        .replace("<<Replace with your API_KEY>>", PROVIDER_KEY)
        .replace("tokens: 100000", "tokens: 100")
        .replace("https://api.openai.com/", &format!("{}/", mock.url()));
    let port = common::free_addr().port();
    let membrane = membrane.replace("port: 2000", &format!("port: {port}"));
    // The Membrane format has no pid_file setting, and tests may run at the
    // same time, so each gateway gets its own working directory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("membrane.yaml");
    std::fs::write(&path, membrane).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let send = |key: &str| {
        client()
            .post(url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body(false))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let alice: Vec<u16> = (0..10).map(|_| send("secret")).collect();
    let bob: Vec<u16> = (0..10).map(|_| send("changeme")).collect();
    let _ = child.kill();
    let _ = child.wait();

    assert!(alice.contains(&429), "alice was never limited: {alice:?}");
    assert_eq!(alice[0], 200);
    assert!(bob.iter().all(|&status| status == 200), "bob: {bob:?}");
}

#[test]
fn config_check_flag() {
    let ok = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["-t", "-c"])
        .arg(repo_path("conf/tollgate.yaml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("is valid"));

    let placeholder = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["-t", "-c"])
        .arg(repo_path("conf/membrane-example.yaml"))
        .output()
        .unwrap();
    assert!(!placeholder.status.success());
    let stderr = String::from_utf8_lossy(&placeholder.stderr);
    assert!(
        stderr.contains("still contains the placeholder"),
        "{stderr}"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["-t", "-c", "/nonexistent/tollgate.yaml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tollgate.yaml"));
}

#[test]
fn hash_key_matches_digest_lookup() {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["hash-key", "secret"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
}

#[test]
fn request_deadline_cuts_long_streams_only() {
    let mock = Mock::start();
    let config = config_for(&mock).replace("request_timeout: 30s", "request_timeout: 1s");
    let gateway = Gateway::start(&config);

    // A whole JSON body that arrives after the deadline is still delivered.
    let late = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", "slow-first-byte=1500")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(late.status(), 200);
    let body: Value = late.json().unwrap();
    let reported = body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(gateway.settled_usage("bob-key")["tokens_used"], reported);

    // A stream still running at the deadline is cut and charged an estimate.
    let stream = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", "delay-ms=300")
        .json(&chat_body(true))
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    let text = stream.text().unwrap_or_default();
    assert!(
        !text.contains("[DONE]"),
        "the stream outlived the deadline: {text}"
    );
    let usage = gateway.settled_usage("bob-key");
    assert!(usage["tokens_used"].as_u64().unwrap() > reported);
    assert_eq!(usage["tokens_reserved"], 0);
}

#[test]
fn duplicate_keys_are_400_and_not_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o","model":"gpt-4o-mini","messages":[]}"#)
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn upgrade_headers_do_not_reach_upstream() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let response = client()
        .post(gateway.url("/v1/responses"))
        .bearer_auth("bob-key")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .json(&json!({"model": "m", "input": "hi"}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = &mock.requests()[0];
    assert!(
        recorded_header(forwarded, "upgrade").is_empty(),
        "{forwarded}"
    );
    assert!(
        recorded_header(forwarded, "connection")
            .iter()
            .all(|value| !value.to_ascii_lowercase().contains("upgrade")),
        "{forwarded}"
    );
}

#[test]
fn taken_port_is_a_startup_error() {
    let mock = Mock::start();
    let first = Gateway::start(&config_for(&mock));

    let taken = config_for(&mock).replace(
        "listen: \"{listen}\"",
        &format!("listen: \"{}\"", first.addr),
    );
    let started = std::time::Instant::now();
    let error = match Gateway::try_start(&taken) {
        Ok(_) => panic!("a second gateway started on {}", first.addr),
        Err(error) => error,
    };
    assert!(
        error.contains(&format!("listen: cannot listen on {}", first.addr)),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
