//! Drives the gateway with the Codex CLI (npm package `@openai/codex`,
//! installed in tests/clients/node_modules by scripts/test.sh), configured
//! with the `config.toml` that docs/clients.md gives, and replays the parts
//! of a Codex request that a gateway could break.
//!
//! Codex runs with its proxy variables set to a closed loopback port, so any
//! connection it opens to a host other than the gateway fails at once.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    client, config_for, doc_snippets, free_addr, node_module, recorded_header, sse_data, Gateway,
    Mock, DOCS_GATEWAY_ADDR, PROVIDER_KEY,
};
use serde_json::{json, Value};

/// Upper bound for one `codex exec`, in seconds. A run through the mock takes
/// about 2 s, and 7 s when Codex first tries a WebSocket.
const CODEX_TIMEOUT_SECONDS: &str = "60";

/// A `CODEX_HOME` with the documented configuration pointed at a gateway.
struct Codex {
    home: tempfile::TempDir,
    workdir: tempfile::TempDir,
}

impl Codex {
    /// Writes `config.toml` from the `toml` snippets of docs/clients.md, with
    /// `provider_extra` appended to the provider table, which the first
    /// snippet ends with.
    fn configure(gateway: &Gateway, provider_extra: &str) -> Codex {
        let snippets = doc_snippets("docs/clients.md", "toml");
        assert_eq!(
            snippets.len(),
            2,
            "docs/clients.md: expected two toml blocks"
        );
        let provider = snippets[0].replace(DOCS_GATEWAY_ADDR, &gateway.addr.to_string());
        assert!(provider.contains(&format!("http://{}/v1", gateway.addr)));
        let config = format!("{provider}{provider_extra}\n{}", snippets[1]);

        let home = tempfile::tempdir().expect("CODEX_HOME");
        std::fs::write(home.path().join("config.toml"), config).expect("write config.toml");
        let workdir = tempfile::tempdir().expect("working directory");
        Codex { home, workdir }
    }

    /// Runs `codex exec PROMPT` with `key` as the tollgate key.
    fn exec(&self, key: &str, prompt: &str) -> Output {
        let codex = node_module("@openai/codex/bin/codex.js");
        let closed_proxy = format!("http://{}", free_addr());
        let mut command = Command::new("timeout");
        command
            .arg(CODEX_TIMEOUT_SECONDS)
            .arg("node")
            .arg(codex)
            .args(["exec", "--skip-git-repo-check", prompt])
            .current_dir(self.workdir.path())
            .env("CODEX_HOME", self.home.path())
            .env("TOLLGATE_API_KEY", key)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .stdin(Stdio::null());
        for name in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"] {
            command.env(name, &closed_proxy);
            command.env(name.to_lowercase(), &closed_proxy);
        }
        command.env("NO_PROXY", "127.0.0.1,localhost");
        command.env("no_proxy", "127.0.0.1,localhost");
        command.output().expect("failed to run codex")
    }
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Parses the count that Codex prints after `tokens used` at the end of
/// `codex exec`.
fn tokens_used(output: &Output) -> u64 {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut lines = stderr
        .lines()
        .skip_while(|line| line.trim() != "tokens used");
    let count = lines
        .nth(1)
        .unwrap_or_else(|| panic!("no token count in {stderr}"));
    count
        .trim()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("token count {count:?}: {e}"))
}

fn responses_requests(mock: &Mock) -> Vec<Value> {
    mock.requests()
        .into_iter()
        .filter(|request| request["path"] == "/v1/responses")
        .collect()
}

fn body_json(request: &Value) -> Value {
    serde_json::from_str(request["body"].as_str().expect("recorded body")).expect("JSON body")
}

#[test]
fn codex_exec_completes_and_is_charged() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let codex = Codex::configure(&gateway, "");

    let output = codex.exec("bob-key", "Say hello.");
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("tok tok"), "{}", describe(&output));

    let requests = responses_requests(&mock);
    assert_eq!(requests.len(), 1, "one turn is one request");
    let authorization = recorded_header(&requests[0], "authorization");
    assert_eq!(authorization, vec![format!("Bearer {PROVIDER_KEY}")]);

    // The budget is charged what the provider reported, which is also the
    // count Codex shows the user.
    let usage = gateway.settled_usage("bob-key");
    let charged = usage["tokens_used"].as_u64().unwrap();
    assert_eq!(charged, tokens_used(&output));
    let log = gateway.wait_for_log_lines(1);
    let exchange = log
        .iter()
        .find(|line| line["route"] == "responses")
        .unwrap();
    assert_eq!(exchange["usage_source"], "reported");
    assert_eq!(exchange["total_tokens"], charged);
}

#[test]
fn codex_request_reaches_provider_intact() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let codex = Codex::configure(&gateway, "");

    let output = codex.exec("bob-key", "Say hello.");
    assert!(output.status.success(), "{}", describe(&output));
    let requests = responses_requests(&mock);
    assert_eq!(requests.len(), 1);
    let request = &requests[0];

    // Codex's own headers pass through with a value.
    for name in [
        "originator",
        "session-id",
        "thread-id",
        "x-client-request-id",
        "x-codex-turn-metadata",
        "x-codex-window-id",
    ] {
        let values = recorded_header(request, name);
        assert_eq!(values.len(), 1, "header {name}: {values:?}");
        assert!(!values[0].is_empty(), "header {name} is empty");
    }
    assert_eq!(recorded_header(request, "originator"), vec!["codex_exec"]);
    assert_eq!(
        recorded_header(request, "accept"),
        vec!["text/event-stream"]
    );
    let user_agent = recorded_header(request, "user-agent");
    assert!(user_agent[0].starts_with("codex_exec/"), "{user_agent:?}");
    let turn_metadata = recorded_header(request, "x-codex-turn-metadata")[0];
    assert!(serde_json::from_str::<Value>(turn_metadata).is_ok());

    // The body arrives whole: its length matches, and it is over 20 KB
    // from the first turn on.
    let body = request["body"].as_str().unwrap();
    assert!(body.len() > 20_000, "body of {} bytes", body.len());
    let content_length = body.len().to_string();
    assert_eq!(
        recorded_header(request, "content-length"),
        vec![content_length]
    );

    let body = body_json(request);
    assert_eq!(body["stream"], true);
    assert_eq!(body["store"], false);
    assert_eq!(body["parallel_tool_calls"], true);
    assert_eq!(body["include"], json!(["reasoning.encrypted_content"]));
    assert!(
        body["reasoning"].is_object(),
        "reasoning: {}",
        body["reasoning"]
    );
    let tools = body["tools"].as_array().expect("tools");
    assert!(tools.iter().any(|tool| tool["type"] == "function"));
    assert!(body["input"]
        .as_array()
        .is_some_and(|items| !items.is_empty()));
}

#[test]
fn codex_tool_call_round_trip_is_charged() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    // The mock answers the first request with a call of Codex's shell tool,
    // which runs `echo tool-call-output`, and the follow-up with text.
    let header = "http_headers = { \"x-mock-behavior\" = \"tool-call=exec_command\" }\n";
    let codex = Codex::configure(&gateway, header);

    let output = codex.exec("bob-key", "Run the command.");
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tool-call-output"), "{}", describe(&output));

    // The second request returns the call and its output under one call id.
    let requests = responses_requests(&mock);
    assert_eq!(requests.len(), 2, "a call and its follow-up");
    let input = body_json(&requests[1])["input"].clone();
    let items = input.as_array().expect("input items");
    let call = items
        .iter()
        .find(|item| item["type"] == "function_call")
        .expect("function_call item");
    assert_eq!(call["name"], "exec_command");
    let result = items
        .iter()
        .find(|item| item["type"] == "function_call_output")
        .expect("function_call_output item");
    assert_eq!(result["call_id"], call["call_id"]);
    assert!(result["output"].to_string().contains("tool-call-output"));

    // Both requests are charged, and the sum is what Codex reports.
    let log = gateway.wait_for_log_lines(2);
    let charged: u64 = log
        .iter()
        .filter_map(|line| line["total_tokens"].as_u64())
        .sum();
    assert_eq!(gateway.settled_usage("bob-key")["tokens_used"], charged);
    assert_eq!(tokens_used(&output), charged);
}

#[test]
fn codex_stops_on_spent_budget() {
    let mock = Mock::start();
    // alice gets room for one or two Codex turns of about 5,000 tokens: the
    // gateway admits a turn while her remaining budget covers its estimated
    // input.
    let config = config_for(&mock);
    let config_with_room = config.replace("tokens: 1000\n", "tokens: 12000\n");
    assert_ne!(config, config_with_room);
    let gateway = Gateway::start(&config_with_room);
    let codex = Codex::configure(&gateway, "");

    let mut completed_turns = 0;
    let rejected = loop {
        let output = codex.exec("alice-key", "Say hello.");
        if !output.status.success() {
            break output;
        }
        completed_turns += 1;
        assert!(completed_turns <= 3, "a 12,000-token budget never ran out");
    };
    assert!(completed_turns >= 1, "{}", describe(&rejected));
    assert_eq!(rejected.status.code(), Some(1), "{}", describe(&rejected));
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("Quota exceeded"), "{}", describe(&rejected));

    // One rejected request and no retries: the gateway logged one request
    // per completed turn plus one 429, and only the completed turns reached
    // the provider.
    std::thread::sleep(Duration::from_millis(200));
    let log = gateway.wait_for_log_lines(completed_turns + 1);
    assert_eq!(log.len(), completed_turns + 1, "{log:?}");
    let last = log.last().unwrap();
    assert_eq!(last["status"], 429);
    assert_eq!(last["rejection"], "budget");
    assert_eq!(responses_requests(&mock).len(), completed_turns);
    let usage = gateway.settled_usage("alice-key");
    let charged: u64 = log
        .iter()
        .filter_map(|line| line["total_tokens"].as_u64())
        .sum();
    assert_eq!(usage["tokens_used"], charged);
}

#[test]
fn codex_websocket_attempt_falls_back_to_http() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let codex = Codex::configure(&gateway, "supports_websockets = true\n");

    let output = codex.exec("bob-key", "Say hello.");
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Falling back from WebSockets"), "{stderr}");

    // The upgrade attempts end at the gateway; only the HTTP turn is forwarded.
    let log = gateway.wait_for_log_lines(2);
    let upgrades = log.iter().filter(|line| line["method"] == "GET").count();
    assert!(upgrades >= 1, "no WebSocket attempt logged: {log:?}");
    assert!(log
        .iter()
        .all(|line| line["method"] != "GET" || line["status"] == 405));
    let forwarded = mock.requests();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert_eq!(forwarded[0]["method"], "POST");
}

#[test]
fn websocket_upgrade_is_405_and_not_forwarded() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let upgrade = format!(
        "GET /v1/responses HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGVzdC1rZXktMTIzNDU2Nw==\r\n\
         Authorization: Bearer bob-key\r\n\r\n",
        gateway.addr
    );
    stream.write_all(upgrade.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let read = stream.read(&mut buffer).expect("read the answer");
        assert!(
            read > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);

    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: post"),
        "{answer}"
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let error: Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["code"], "method_not_allowed");
    assert_eq!(mock.request_count(), 0);
}

/// Builds a Responses request body shaped like a later Codex turn: reasoning replayed
/// with encrypted content, a tool call and its output, parallel tool calls
/// and `store: false`, with a user prompt of `prompt_bytes`.
fn codex_turn_body(prompt_bytes: usize) -> String {
    let prompt: String = "fn main() { println!(\"hello\"); }\n"
        .chars()
        .cycle()
        .take(prompt_bytes)
        .collect();
    let body = json!({
        "model": "gpt-5-codex",
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": prompt}]},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "encrypted_content": "gAAAAABo-opaque-reasoning-state=="},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1",
             "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"},
            {"type": "function_call", "id": "fc_2", "call_id": "call_2",
             "name": "exec_command", "arguments": "{\"cmd\":\"pwd\"}"},
            {"type": "function_call_output", "call_id": "call_1",
             "output": "Cargo.toml\nsrc\n"},
            {"type": "function_call_output", "call_id": "call_2", "output": "/work\n"},
        ],
        "tools": [{
            "type": "function", "name": "exec_command", "strict": false,
            "description": "Runs a shell command.",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                           "required": ["cmd"]},
        }],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a213-81c0-7800-8aa1-bbab2a035a53",
    });
    serde_json::to_string(&body).unwrap()
}

#[test]
fn codex_turn_is_forwarded_byte_for_byte() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));
    let codex_headers = [
        ("originator", "codex_exec"),
        ("session-id", "0199a213-81c0-7800-8aa1-bbab2a035a53"),
        (
            "x-codex-turn-metadata",
            "{\"turn_id\":\"t1\",\"sandbox\":\"none\"}",
        ),
        ("accept", "text/event-stream"),
    ];

    // 20 KB and 300 KB prompts: below and far above Pingora's 64 KiB
    // replay buffer.
    for prompt_bytes in [20_000, 300_000] {
        let sent = codex_turn_body(prompt_bytes);
        let mut request = client()
            .post(gateway.url("/v1/responses"))
            .bearer_auth("bob-key")
            .header("content-type", "application/json")
            .body(sent.clone());
        for (name, value) in codex_headers {
            request = request.header(name, value);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status(), 200, "prompt of {prompt_bytes} bytes");
        let events = sse_data(&response.text().unwrap());
        let last = events.last().expect("events");
        assert_eq!(last["type"], "response.completed");

        let recorded = mock.requests().pop().unwrap();
        assert_eq!(
            recorded["body"].as_str().unwrap(),
            sent,
            "{prompt_bytes} bytes"
        );
        for (name, value) in codex_headers {
            assert_eq!(
                recorded_header(&recorded, name),
                vec![value],
                "header {name}"
            );
        }
    }
    let usage = gateway.settled_usage("bob-key");
    assert!(usage["tokens_used"].as_u64().unwrap() > 0);
}
