//! Drives the gateway with the OpenAI Python SDK (pip package `openai`).
//!
//! The interpreter is `$TOLLGATE_TEST_PYTHON` (scripts/test.sh points it at
//! a virtualenv with the SDK), else `python3`.

mod common;

use std::process::Command;

use common::{client_suite_config_for, python_with_openai, repo_path, Gateway, Mock};

#[test]
fn openai_python_sdk_through_gateway() {
    let python = python_with_openai();
    let mock = Mock::start();
    let gateway = Gateway::start(&client_suite_config_for(&mock));
    let output = Command::new(&python)
        .args(["-m", "unittest", "-v", "test_openai_python"])
        .current_dir(repo_path("tests/clients"))
        .env("TOLLGATE_BASE_URL", format!("http://{}", gateway.addr))
        .output()
        .unwrap();

    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Python SDK tests failed:\n{report}"
    );
    assert!(report.contains("Ran 16 tests"), "{report}");
}
