//! Budget invariants with the real binary: concurrent bursts cannot
//! overspend, settled usage adds up exactly, and every way a response can
//! end (cut, incomplete, failed, no usage, client gone) is charged.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{client, config_for, Gateway, Mock, PROVIDER_KEY};
use serde_json::{json, Value};

/// Starts a gateway whose user `burst` has `tokens` per hour.
fn gateway_with_budget(mock: &Mock, tokens: u64) -> Gateway {
    let config = config_for(mock).replace(
        "  - name: carol\n",
        &format!(
            "  - name: burst\n    api_key: burst-key\n    tokens: {tokens}\n  - name: carol\n"
        ),
    );
    Gateway::start(&config)
}

/// 400 bytes of text in one message: the mock counts 3 + 3 + 100 = 106
/// input tokens, the gateway estimates 100 + 4 = 104.
fn burst_body(max_output: u64) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "max_completion_tokens": max_output,
        "messages": [{"role": "user", "content": "abcd".repeat(100)}],
    })
}

#[test]
fn burst_cannot_overspend_budget() {
    const LIMIT: u64 = 2_000;
    const MAX_OUTPUT: u64 = 90;
    // Each request costs 106 + 90 = 196 tokens, so about ten fit.
    const COST: u64 = 196;
    // The gateway underestimates each request's input by 2 tokens, and the
    // last admitted request may have reserved less than its output.
    const INPUT_ERROR: u64 = 2;

    let mock = Mock::start();
    let gateway = gateway_with_budget(&mock, LIMIT);

    let url = gateway.url("/v1/chat/completions");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(40));
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let http = client();
                barrier.wait();
                let response = http
                    .post(url)
                    .bearer_auth("burst-key")
                    .header("x-mock-behavior", "slow-first-byte=300")
                    .json(&burst_body(MAX_OUTPUT))
                    .send()
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().unwrap();
                (status, body)
            })
        })
        .collect();

    let mut admitted = 0;
    let mut reported = 0;
    for handle in handles {
        let (status, body) = handle.join().unwrap();
        match status {
            200 => {
                admitted += 1;
                reported += body["usage"]["total_tokens"].as_u64().unwrap();
            }
            429 => assert_eq!(body["error"]["code"], "insufficient_quota"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }

    let usage = gateway.settled_usage("burst-key");
    let used = usage["tokens_used"].as_u64().unwrap();
    let bound = LIMIT + MAX_OUTPUT + admitted * INPUT_ERROR;
    assert!(
        used <= bound,
        "used {used} > bound {bound} with {admitted} admitted"
    );
    assert!(admitted >= LIMIT / COST - 1, "only {admitted} admitted");
    assert!(admitted <= LIMIT / COST + 1, "{admitted} admitted");
    assert_eq!(used, reported, "charged usage differs from reported usage");
    assert_eq!(usage["tokens_reserved"], 0);
    assert_eq!(mock.request_count() as u64, admitted);
}

#[test]
fn idle_counter_equals_reported_usage() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let mut reported = 0;

    for max_output in [5, 17, 40] {
        let chat: Value = client()
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth("bob-key")
            .json(&burst_body(max_output))
            .send()
            .unwrap()
            .json()
            .unwrap();
        reported += chat["usage"]["total_tokens"].as_u64().unwrap();
    }
    let stream = client()
        .post(gateway.url("/v1/responses"))
        .bearer_auth("bob-key")
        .json(&json!({"model": "m", "input": "a haiku", "stream": true}))
        .send()
        .unwrap();
    let text = stream.text().unwrap();
    let completed = common::sse_data(&text)
        .into_iter()
        .find(|event| event["type"] == "response.completed")
        .unwrap();
    reported += completed["response"]["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    let embeddings: Value = client()
        .post(gateway.url("/v1/embeddings"))
        .bearer_auth("bob-key")
        .json(&json!({"model": "text-embedding-3-small", "input": ["one", "two"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    reported += embeddings["usage"]["total_tokens"].as_u64().unwrap();

    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], reported);
    assert_eq!(usage["tokens_reserved"], 0);
}

/// Sends a streaming request with `behavior` and returns what the client
/// read, tolerating a body cut short.
fn stream_with_behavior(gateway: &Gateway, path: &str, body: &Value, behavior: &str) -> String {
    let response = client()
        .post(gateway.url(path))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", behavior)
        .json(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{behavior}");
    let mut text = Vec::new();
    let mut reader = BufReader::new(response);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => text.push(line),
        }
    }
    text.concat()
}

/// The access-log line of the newest request on `route`.
///
/// Polls, because a budget settles just before its access-log line is
/// written, and the lines of the usage requests that waited for the
/// settlement can already be there.
fn last_log_line(gateway: &Gateway, route: &str, count: usize) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines = gateway.wait_for_log_lines(count);
        if let Some(line) = lines.into_iter().rev().find(|line| line["route"] == route) {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line for {route}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn every_stream_ending_is_charged() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let chat = json!({"model": "m", "stream": true, "max_completion_tokens": 30,
                      "messages": [{"role": "user", "content": "count"}]});
    let responses =
        json!({"model": "m", "stream": true, "max_output_tokens": 30, "input": "count"});

    let cases = [
        (
            "/v1/chat/completions",
            &chat,
            "cut",
            "chat_completions",
            "estimated",
        ),
        (
            "/v1/chat/completions",
            &chat,
            "no-usage",
            "chat_completions",
            "estimated",
        ),
        ("/v1/responses", &responses, "cut", "responses", "estimated"),
        (
            "/v1/responses",
            &responses,
            "incomplete",
            "responses",
            "reported",
        ),
        (
            "/v1/responses",
            &responses,
            "failed",
            "responses",
            "reported",
        ),
    ];
    let mut before = 0;
    for (index, (path, body, behavior, route, source)) in cases.into_iter().enumerate() {
        stream_with_behavior(&gateway, path, body, behavior);
        let usage = gateway.settled_usage("bob-key");
        let used = usage["tokens_used"].as_u64().unwrap();
        assert!(used > before, "{behavior} on {path} was charged nothing");
        before = used;

        let line = last_log_line(&gateway, route, index + 1);
        assert_eq!(line["usage_source"], source, "{behavior} on {path}");
        assert!(
            line["charged_tokens"].as_u64().unwrap() > 0,
            "{behavior} on {path}"
        );
    }
}

#[test]
fn no_usage_stream_estimate_counts_streamed_output() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let body = json!({"model": "m", "stream": true, "max_completion_tokens": 40,
                      "messages": [{"role": "user", "content": "abcd".repeat(10)}]});

    let text = stream_with_behavior(&gateway, "/v1/chat/completions", &body, "no-usage");
    assert!(!text.contains("\"usage\""), "{text}");
    // 40 deltas of "tok " are 160 bytes, estimated as 40 output tokens; the
    // input estimate is 10 + 4.
    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], 54);
}

/// Opens a raw connection and sends a streaming request.
fn raw_stream_request(
    gateway: &Gateway,
    path: &str,
    body: &Value,
    behavior: &str,
) -> BufReader<TcpStream> {
    let body = body.to_string();
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer bob-key\r\n\
         Content-Type: application/json\r\nx-mock-behavior: {behavior}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    BufReader::new(stream)
}

#[test]
fn client_disconnect_mid_stream_is_charged() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let body = json!({"model": "m", "stream": true, "max_completion_tokens": 200,
                      "messages": [{"role": "user", "content": "count slowly"}]});

    let mut reader = raw_stream_request(&gateway, "/v1/chat/completions", &body, "delay-ms=50");
    let mut deltas = 0;
    while deltas < 5 {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
        if line.contains("\"content\":\"tok ") {
            deltas += 1;
        }
    }
    drop(reader);

    let usage = gateway.settled_usage("bob-key");
    let used = usage["tokens_used"].as_u64().unwrap();
    assert_eq!(usage["tokens_reserved"], 0);
    // At least the input estimate and the five deltas read; far less than
    // the 200 output tokens a complete stream would cost.
    assert!(used >= 3 + 5, "charged {used}");
    assert!(
        used < 150,
        "charged {used} for a stream cut after a few deltas"
    );
    let line = last_log_line(&gateway, "chat_completions", 1);
    assert_eq!(line["usage_source"], "estimated");
}

#[test]
fn disconnect_after_terminal_event_charges_exact_usage() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let body = json!({"model": "m", "stream": true, "max_output_tokens": 25, "input": "a haiku"});

    let mut reader = raw_stream_request(&gateway, "/v1/responses", &body, "delay-ms=5");
    let mut reported = None;
    while reported.is_none() {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
        if let Some(data) = line.strip_prefix("data: ") {
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            if event["type"] == "response.completed" {
                reported = event["response"]["usage"]["total_tokens"].as_u64();
            }
        }
    }
    drop(reader);

    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"].as_u64(), reported);
    assert_eq!(usage["tokens_reserved"], 0);
    assert!(!mock.requests()[0].to_string().contains("bob-key"));
    assert!(mock.requests()[0].to_string().contains(PROVIDER_KEY));
}

#[test]
fn client_gone_before_answer_is_charged_reservation() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let body = json!({"model": "m", "max_completion_tokens": 60,
                      "messages": [{"role": "user", "content": "abcd".repeat(100)}]});

    let reader = raw_stream_request(
        &gateway,
        "/v1/chat/completions",
        &body,
        "slow-first-byte=1500",
    );
    // Wait until the request reached the upstream, then leave.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mock.request_count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the mock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(reader);

    // The provider goes on generating, so the whole reservation is charged:
    // the input estimate (100 + 4) plus the 60 output tokens asked for.
    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], 164);
    assert_eq!(usage["tokens_reserved"], 0);
}

#[test]
fn json_without_usage_is_charged_reservation() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let body = json!({"model": "m", "max_completion_tokens": 500,
                      "messages": [{"role": "user", "content": "abcd".repeat(10)}]});

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .header("x-mock-behavior", "no-usage")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().unwrap();
    assert!(answer.get("usage").is_none_or(Value::is_null), "{answer}");

    // Input estimate 10 + 4, plus the 500 output tokens the request allowed.
    let usage = gateway.settled_usage("bob-key");
    assert_eq!(usage["tokens_used"], 514);
}

#[test]
fn choices_multiply_the_reservation() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let body = json!({"model": "m", "n": 4, "max_completion_tokens": 50,
                      "messages": [{"role": "user", "content": "abcd".repeat(10)}]});

    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    // After admission: 100,000 less the input estimate (14) and 4 x 50.
    assert_eq!(response.headers()["x-ratelimit-remaining-tokens"], "99786");
}
