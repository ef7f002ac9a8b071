//! Runs the `python`, `js` and `sh` snippets of docs/clients.md as written,
//! against a gateway in front of the mock upstream. The Codex `toml`
//! snippets run in tests/codex_cli.rs.

mod common;

use std::process::{Command, Output};

use common::{
    config_for, doc_snippets, node_module, python_with_openai, repo_path, Gateway, Mock,
    DOCS_GATEWAY_ADDR,
};
use serde_json::Value;

const DOC: &str = "docs/clients.md";

/// Returns the snippets of `language` in docs/clients.md, pointed at `gateway`.
fn snippets(language: &str, gateway: &Gateway) -> Vec<String> {
    let snippets = doc_snippets(DOC, language);
    assert!(!snippets.is_empty(), "{DOC} has no ```{language} block");
    snippets
        .iter()
        .map(|snippet| {
            assert!(snippet.contains(DOCS_GATEWAY_ADDR), "{snippet}");
            snippet.replace(DOCS_GATEWAY_ADDR, &gateway.addr.to_string())
        })
        .collect()
}

/// Runs `command` with bob's key in `TOLLGATE_API_KEY` and no OpenAI
/// variables, and returns its stdout after checking that it succeeded.
fn run(command: &mut Command) -> String {
    let output: Output = command
        .env("TOLLGATE_API_KEY", "bob-key")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("failed to run the snippet");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn python_snippet_runs_as_written() {
    let python = python_with_openai();
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    for snippet in snippets("python", &gateway) {
        let stdout = run(Command::new(&python).args(["-c", &snippet]));
        assert!(stdout.contains("tok"), "{stdout}");
    }
    assert_eq!(mock.request_count(), 1);
    assert!(
        gateway.settled_usage("bob-key")["tokens_used"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn node_snippet_runs_as_written() {
    node_module("openai/package.json");
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    // With `-e`, node resolves imports from the working directory, so the
    // snippet finds tests/clients/node_modules.
    for snippet in snippets("js", &gateway) {
        let stdout = run(Command::new("node")
            .args(["--input-type=module", "-e", &snippet])
            .current_dir(repo_path("tests/clients")));
        assert!(stdout.contains("tok"), "{stdout}");
    }
    assert_eq!(mock.request_count(), 1);
}

#[test]
fn curl_snippets_run_as_written() {
    let mock = Mock::start();
    let gateway = Gateway::start(&config_for(&mock));

    let run_json = |snippet: &str| -> Value {
        let stdout = run(Command::new("bash").args(["-c", snippet]));
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let snippets = snippets("sh", &gateway);
    assert_eq!(snippets.len(), 2, "a chat request, then the usage request");

    let completion = run_json(&snippets[0]);
    assert_eq!(completion["object"], "chat.completion");
    let charged = completion["usage"]["total_tokens"].clone();

    // The request settles once its access-log line is written.
    gateway.wait_for_log_lines(1);
    let usage = run_json(&snippets[1]);
    assert_eq!(usage["user"], "bob");
    assert_eq!(usage["tokens_reserved"], 0);
    assert_eq!(usage["tokens_used"], charged);
}
