//! Drives the gateway with the OpenAI Node SDK (npm package `openai`,
//! installed in tests/clients/node_modules by scripts/test.sh) through
//! tests/clients/test_openai_node.mjs and node's built-in test runner.

mod common;

use std::process::Command;

use common::{client_suite_config_for, node_module, repo_path, Gateway, Mock};

/// Test cases in tests/clients/test_openai_node.mjs.
const NODE_TEST_COUNT: usize = 10;

#[test]
fn openai_node_sdk_through_gateway() {
    node_module("openai/package.json");
    let mock = Mock::start();
    let gateway = Gateway::start(&client_suite_config_for(&mock));

    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "test_openai_node.mjs"])
        .current_dir(repo_path("tests/clients"))
        .env("TOLLGATE_BASE_URL", format!("http://{}", gateway.addr))
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("failed to run node");

    let report = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Node SDK tests failed:\n{report}\n{errors}"
    );
    let passed = format!("pass {NODE_TEST_COUNT}");
    assert!(
        report.contains(&passed),
        "expected {passed:?} in:\n{report}"
    );
    assert!(report.contains("fail 0"), "{report}");
}
