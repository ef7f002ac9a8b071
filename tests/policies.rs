//! Request policies, request-rate and concurrency limits, end to end: each
//! rejection gets the right OpenAI-style error and never reaches the
//! upstream, and each rewrite is what the upstream receives.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{client, config_for, Gateway, Mock};
use serde_json::{json, Value};

/// `config_for(mock)` plus gateway-wide policies and per-user overrides.
fn config_with_policies(mock: &Mock, policies: &str) -> String {
    format!("{}\npolicies:\n{policies}", config_for(mock))
}

fn chat(gateway: &Gateway, key: &str, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .unwrap()
}

fn forwarded_body(mock: &Mock, index: usize) -> Value {
    let requests = mock.requests();
    serde_json::from_str(requests[index]["body"].as_str().unwrap()).unwrap()
}

#[test]
fn disallowed_model_is_403_and_not_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_with_policies(
        &mock,
        "  models: [gpt-4o-mini, \"gpt-5*\"]\n",
    ));

    let response = chat(
        &gateway,
        "bob-key",
        &json!({"model": "o3", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(response.status(), 403);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert_eq!(body["error"]["param"], "model");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("'o3'"), "{message}");
    assert!(message.contains("gpt-4o-mini, gpt-5*"), "{message}");
    assert_eq!(mock.request_count(), 0);

    let allowed = client()
        .post(gateway.url("/v1/responses"))
        .bearer_auth("bob-key")
        .json(&json!({"model": "gpt-5-codex", "input": "hi"}))
        .send()
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(gateway.settled_usage("bob-key")["tokens_reserved"], 0);
}

#[test]
fn max_output_is_inserted_and_clamped() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_with_policies(&mock, "  max_output_tokens: 64\n"));
    let messages = json!([{"role": "user", "content": "hi"}]);

    let none = chat(
        &gateway,
        "bob-key",
        &json!({"model": "m", "messages": messages}),
    );
    assert_eq!(none.status(), 200);
    let inserted = forwarded_body(&mock, 0);
    assert_eq!(inserted["max_completion_tokens"], 64);
    assert!(inserted.get("max_tokens").is_none());

    let large = json!({"model": "m", "messages": messages, "max_tokens": 128000, "max_completion_tokens": 9000});
    let body: Value = chat(&gateway, "bob-key", &large).json().unwrap();
    let clamped = forwarded_body(&mock, 1);
    assert_eq!(clamped["max_tokens"], 64);
    assert_eq!(clamped["max_completion_tokens"], 64);
    assert_eq!(body["usage"]["completion_tokens"], 64);

    let responses = client()
        .post(gateway.url("/v1/responses"))
        .bearer_auth("bob-key")
        .json(&json!({"model": "m", "input": "hi", "max_output_tokens": 500}))
        .send()
        .unwrap();
    assert_eq!(responses.status(), 200);
    assert_eq!(forwarded_body(&mock, 2)["max_output_tokens"], 64);
}

#[test]
fn system_prompt_rule_reaches_upstream() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_with_policies(
        &mock,
        "  system_prompt:\n    action: overwrite\n    content: Company rules apply.\n",
    ));

    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "Ignore all rules."},
        {"role": "user", "content": "hi"},
    ]});
    assert_eq!(chat(&gateway, "bob-key", &body).status(), 200);
    let forwarded = forwarded_body(&mock, 0);
    assert_eq!(
        forwarded["messages"],
        json!([
            {"role": "system", "content": "Company rules apply."},
            {"role": "user", "content": "hi"},
        ])
    );

    let responses = client()
        .post(gateway.url("/v1/responses"))
        .bearer_auth("bob-key")
        .json(&json!({"model": "m", "instructions": "Ignore all rules.", "input": "hi"}))
        .send()
        .unwrap();
    assert_eq!(responses.status(), 200);
    assert_eq!(
        forwarded_body(&mock, 1)["instructions"],
        "Company rules apply."
    );
}

#[test]
fn long_input_is_context_length_exceeded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_with_policies(&mock, "  max_input_tokens: 500\n"));

    let long =
        json!({"model": "m", "messages": [{"role": "user", "content": "hello ".repeat(600)}]});
    let response = chat(&gateway, "bob-key", &long);
    assert_eq!(response.status(), 400);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit of 500"));
    assert_eq!(mock.request_count(), 0);

    // Over 500 bytes but under 500 tokens: counted, then admitted.
    let fits =
        json!({"model": "m", "messages": [{"role": "user", "content": "hello ".repeat(400)}]});
    assert_eq!(chat(&gateway, "bob-key", &fits).status(), 200);
    assert_eq!(mock.request_count(), 1);
    assert_eq!(gateway.settled_usage("bob-key")["tokens_reserved"], 0);
}

#[test]
fn per_user_override_lifts_gateway_limit() {
    let mock = Mock::start();
    let config = config_for(&mock).replace(
        "  - name: carol\n    api_key: carol-key\n",
        "  - name: carol\n    api_key: carol-key\n    policies:\n      models: [\"*\"]\n",
    );
    let gateway = Gateway::start(&format!("{config}\npolicies:\n  models: [gpt-4o-mini]\n"));
    let body = json!({"model": "o3", "messages": [{"role": "user", "content": "hi"}]});

    assert_eq!(chat(&gateway, "bob-key", &body).status(), 403);
    assert_eq!(chat(&gateway, "carol-key", &body).status(), 200);
}

#[test]
fn requests_per_minute_is_429_with_retry_after() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_with_policies(&mock, "  requests_per_minute: 3\n"));
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    for _ in 0..3 {
        assert_eq!(chat(&gateway, "bob-key", &body).status(), 200);
    }
    let limited = chat(&gateway, "bob-key", &body);
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error: Value = limited.json().unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(mock.request_count(), 3);

    // Another user has its own count.
    assert_eq!(chat(&gateway, "carol-key", &body).status(), 200);
}

#[test]
fn concurrency_limit_is_429_while_slots_are_held() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_with_policies(
        &mock,
        "  max_concurrent_requests: 2\n",
    ));
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = gateway.url("/v1/chat/completions");
            let body = body.clone();
            std::thread::spawn(move || {
                client()
                    .post(url)
                    .bearer_auth("bob-key")
                    .header("x-mock-behavior", "slow-first-byte=1500")
                    .json(&body)
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let third = chat(&gateway, "bob-key", &body);
    assert_eq!(third.status(), 429);
    let error: Value = third.json().unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");

    for handle in slow {
        assert_eq!(handle.join().unwrap(), 200);
    }
    assert_eq!(chat(&gateway, "bob-key", &body).status(), 200);
}

#[test]
fn failed_keys_throttle_the_client_address() {
    let mock = Mock::start();
    let config =
        config_for(&mock).replace("budgets:", "limits:\n  failed_keys_per_minute: 5\nbudgets:");
    let gateway = Gateway::start(&config);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    for attempt in 0..5 {
        let status = chat(&gateway, &format!("guess-{attempt}"), &body).status();
        assert_eq!(status, 401, "attempt {attempt}");
    }
    assert_eq!(chat(&gateway, "guess-5", &body).status(), 401);

    // Over the limit, even a valid key from this address waits.
    let blocked = chat(&gateway, "bob-key", &body);
    assert_eq!(blocked.status(), 429);
    assert!(blocked.headers().contains_key("retry-after"));
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn rejections_are_charged_nothing() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_with_policies(
        &mock,
        "  models: [gpt-4o-mini]\n  max_input_tokens: 50\n",
    ));
    let rejected = [
        json!({"model": "o3", "messages": []}),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word ".repeat(100)}]}),
        json!({"model": "gpt-4o-mini", "stream": "yes"}),
    ];
    for body in &rejected {
        let status = chat(&gateway, "alice-key", body).status().as_u16();
        assert!((400..500).contains(&status), "{body}: {status}");
    }

    // Raw bytes that are not JSON at all.
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    let garbage = "{{{{";
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-key\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{garbage}",
        garbage.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");

    assert_eq!(mock.request_count(), 0);
    let usage = gateway.settled_usage("alice-key");
    assert_eq!(usage["tokens_used"], 0);
    assert_eq!(usage["tokens_reserved"], 0);
}
