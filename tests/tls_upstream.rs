//! An https upstream: TLS with SNI and certificate verification, against a
//! local TLS server whose certificate authority the test creates.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{client, repo_path, Gateway};
use serde_json::{json, Value};

/// Creates a CA and a certificate for `host` signed by it, with openssl.
fn make_certificates(dir: &Path, host: &str) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS tests (Debian package openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tollgate test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={host}"),
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), format!("subjectAltName=DNS:{host}\n")).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

struct TlsUpstream {
    child: Child,
    port: u16,
}

impl TlsUpstream {
    fn start(dir: &Path) -> TlsUpstream {
        let mut child = Command::new("python3")
            .arg(repo_path("tests/support/tls_upstream.py"))
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected output from the TLS upstream: {line:?}"))
            .parse()
            .unwrap();
        TlsUpstream { child, port }
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_for(url: &str, ca_file: Option<&Path>) -> Gateway {
    let ca_line = ca_file.map_or(String::new(), |path| {
        format!("  ca_file: {}\n", path.display())
    });
    Gateway::start(&format!(
        r#"
listen: "{{listen}}"
upstream:
  url: {url}
  api_key: sk-tls-test
  connect_timeout: 2s
{ca_line}users:
  - name: bob
    api_key: bob-key
    tokens: 10000
server:
  pid_file: "{{dir}}/tollgate.pid"
  upgrade_sock: "{{dir}}/upgrade.sock"
"#
    ))
}

fn chat(gateway: &Gateway) -> reqwest::blocking::Response {
    client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap()
}

#[test]
fn trusted_certificate_with_sni_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path(), "localhost");
    let upstream = TlsUpstream::start(dir.path());
    let gateway = gateway_for(
        &format!("https://localhost:{}", upstream.port),
        Some(&dir.path().join("ca.pem")),
    );

    let response = chat(&gateway);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tls-sni"], "localhost");
    let body: Value = response.json().unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "over TLS");
    assert_eq!(gateway.settled_usage("bob-key")["tokens_used"], 12);
}

#[test]
fn unknown_certificate_authority_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path(), "localhost");
    let upstream = TlsUpstream::start(dir.path());
    // The system's roots do not include the test CA.
    let gateway = gateway_for(&format!("https://localhost:{}", upstream.port), None);

    let response = chat(&gateway);
    assert_eq!(response.status(), 502);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert_eq!(gateway.settled_usage("bob-key")["tokens_used"], 0);
}

#[test]
fn certificate_for_other_host_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path(), "api.example.test");
    let upstream = TlsUpstream::start(dir.path());
    let gateway = gateway_for(
        &format!("https://localhost:{}", upstream.port),
        Some(&dir.path().join("ca.pem")),
    );

    assert_eq!(chat(&gateway).status(), 502);
}
