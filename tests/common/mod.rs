//! Test harness: starts the real `mock-upstream` and `tollgate` binaries on
//! free loopback ports and talks HTTP to them.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The provider key configured in every test gateway; tests check that it,
/// and only it, reaches the mock.
pub const PROVIDER_KEY: &str = "sk-provider-canary-7f3a";

/// A running mock OpenAI upstream.
pub struct Mock {
    child: Child,
    pub addr: SocketAddr,
}

impl Mock {
    pub fn start() -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("failed to start mock-upstream");

        let stdout = child.stdout.take().expect("mock stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("failed to read the mock's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the mock: {line:?}"))
            .parse()
            .expect("mock address");
        Mock { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns every request the mock received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        let response = client()
            .get(format!("{}/mock/requests", self.url()))
            .send()
            .expect("GET /mock/requests");
        response.json::<Vec<Value>>().expect("mock request list")
    }

    /// Requests the mock received; unlike [`Mock::requests`], not capped at
    /// the 10,000 it stores.
    pub fn request_count(&self) -> usize {
        let stats: Value = client()
            .get(format!("{}/mock/stats", self.url()))
            .send()
            .expect("GET /mock/stats")
            .json()
            .expect("mock stats");
        stats["requests"].as_u64().expect("request count") as usize
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// Address of the admin listener.
    pub admin: SocketAddr,
    dir: Arc<tempfile::TempDir>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `tollgate -c FILE` with `config`, where `{listen}` is replaced by
    /// a free loopback address and `{dir}` by a fresh temporary directory.
    /// A native configuration without `admin_listen` gets one on another
    /// free loopback port, so gateways of parallel tests never share one.
    pub fn start(config: &str) -> Gateway {
        Gateway::try_start(config).unwrap_or_else(|message| panic!("{message}"))
    }

    pub fn try_start(config: &str) -> Result<Gateway, String> {
        Gateway::try_start_with_log(config, "warn")
    }

    /// Starts the gateway with `RUST_LOG` set to `rust_log`.
    pub fn start_with_log(config: &str, rust_log: &str) -> Gateway {
        Gateway::try_start_with_log(config, rust_log).unwrap_or_else(|message| panic!("{message}"))
    }

    pub fn try_start_with_log(config: &str, rust_log: &str) -> Result<Gateway, String> {
        let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
        Gateway::launch(config, dir, (free_addr(), free_addr()), &[], rust_log)
    }

    /// Starts a gateway whose `{dir}` is `dir`, on the API and admin
    /// addresses `listen`, with `args` after `-c FILE`. A restart keeps the
    /// state directory of the gateway before, and `-u` with the same
    /// addresses takes over its listening sockets. `$STATE_DIRECTORY` is
    /// `dir` too, so the default state database lies there.
    pub fn try_start_in(
        config: &str,
        dir: Arc<tempfile::TempDir>,
        listen: (SocketAddr, SocketAddr),
        args: &[&str],
    ) -> Result<Gateway, String> {
        Gateway::launch(config, dir, listen, args, "warn")
    }

    fn launch(
        config: &str,
        dir: Arc<tempfile::TempDir>,
        (addr, admin): (SocketAddr, SocketAddr),
        args: &[&str],
        rust_log: &str,
    ) -> Result<Gateway, String> {
        let mut config = config
            .replace("{listen}", &addr.to_string())
            .replace("{admin}", &admin.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let native = !config.lines().any(|line| line.starts_with("api:"));
        if native && !config.contains("admin_listen:") {
            config.push_str(&format!("\nadmin_listen: \"{admin}\"\n"));
        }
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, config).expect("write config");

        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("-c")
            .arg(&path)
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("STATE_DIRECTORY", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start tollgate");

        // Both pipes are drained all the time: a full pipe would block the
        // gateway's next log write.
        let stdout = collect_lines(child.stdout.take().expect("tollgate stdout"));
        let stderr = collect_lines(child.stderr.take().expect("tollgate stderr"));

        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() || TcpStream::connect(admin).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                // Give the reader thread a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let stderr = stderr.lock().unwrap().join("\n");
                return Err(format!("tollgate exited with {status}: {stderr}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("tollgate did not start listening within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        Ok(Gateway {
            child,
            addr,
            admin,
            dir,
            stdout,
            stderr,
        })
    }

    /// URL of `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The text of `GET /metrics` on the admin listener.
    pub fn metrics(&self) -> String {
        let response = client()
            .get(self.admin_url("/metrics"))
            .send()
            .expect("GET /metrics");
        assert_eq!(response.status(), 200, "metrics status");
        response.text().expect("metrics text")
    }

    /// Every line written to stdout and stderr so far.
    pub fn output(&self) -> String {
        let stdout = self.stdout.lock().unwrap().join("\n");
        let stderr = self.stderr.lock().unwrap().join("\n");
        format!("{stdout}\n{stderr}")
    }

    /// Lines written to stderr (the diagnostic log) so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Access-log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until the access log has at least `count` lines.
    pub fn wait_for_log_lines(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.access_log();
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /v1/gateway/usage` with `key`.
    pub fn usage(&self, key: &str) -> Value {
        let response = client()
            .get(self.url("/v1/gateway/usage"))
            .bearer_auth(key)
            .send()
            .expect("GET /v1/gateway/usage");
        assert_eq!(response.status(), 200, "usage endpoint status");
        response.json().expect("usage JSON")
    }

    /// Waits until the user has no tokens reserved, that is until every
    /// request of theirs has settled, and returns the usage then.
    pub fn settled_usage(&self, key: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let usage = self.usage(key);
            if usage["tokens_reserved"] == 0 || Instant::now() > deadline {
                return usage;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory `{dir}` stands for; it lives as long as a gateway or a
    /// clone of it does.
    pub fn dir(&self) -> Arc<tempfile::TempDir> {
        self.dir.clone()
    }

    /// Sends `signal` (such as `TERM` or `QUIT`) to the gateway.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit and returns its exit
    /// status, or `None` when it still runs.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL, as a crash would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a native configuration for a gateway in front of `mock`, with users
/// alice (`alice-key`, 1,000 tokens), bob (`bob-key`, 100,000 tokens) and
/// carol (`carol-key`, unlimited).
pub fn config_for(mock: &Mock) -> String {
    format!(
        r#"
listen: "{{listen}}"
upstream:
  url: {url}
  api_key: {PROVIDER_KEY}
  connect_timeout: 2s
  read_timeout: 5s
  request_timeout: 30s
budgets:
  reset_period: 1h
  default_max_output_tokens: 100
users:
  - name: alice
    api_key: alice-key
    tokens: 1000
  - name: bob
    api_key: bob-key
    tokens: 100000
  - name: carol
    api_key: carol-key
server:
  threads: 2
  pid_file: "{{dir}}/tollgate.pid"
  upgrade_sock: "{{dir}}/upgrade.sock"
"#,
        url = mock.url()
    )
}

/// Reads `pipe` line by line on a thread of its own, into the returned list.
fn collect_lines(pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The value of the series `series` (name and labels exactly as Prometheus
/// prints them) in a metrics text, or `None` when it is absent.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        match value {
            "inf" | "+Inf" => Some(f64::INFINITY),
            _ => value.parse().ok(),
        }
    })
}

/// Finds a free loopback port by binding port 0 and closing it again.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address")
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Path of a file in the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Splits an SSE body into the JSON of its `data:` lines, skipping `[DONE]`.
pub fn sse_data(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("SSE data is JSON"))
        .collect()
}

/// Values of header `name` in a request recorded by the mock, in order.
pub fn recorded_header<'a>(request: &'a Value, name: &str) -> Vec<&'a str> {
    request["headers"]
        .as_array()
        .expect("headers list")
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .filter_map(|pair| pair[1].as_str())
        .collect()
}

/// The gateway address that the snippets in docs/ use, replaced by the test
/// gateway's address before a snippet runs.
pub const DOCS_GATEWAY_ADDR: &str = "127.0.0.1:2000";

/// Returns the fenced code blocks of the Markdown file `relative` whose info
/// string is exactly `language`, in the order they appear.
pub fn doc_snippets(relative: &str, language: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("failed to read {relative}: {e}"));
    let mut snippets = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match current.as_mut() {
            None if line == format!("```{language}") => current = Some(String::new()),
            None => {}
            Some(_) if line == "```" => snippets.extend(current.take()),
            Some(snippet) => {
                snippet.push_str(line);
                snippet.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "{relative}: unclosed ```{language} block"
    );
    snippets
}

/// Path of a file of the npm packages installed in tests/clients/node_modules
/// by scripts/test.sh (`npm ci`); panics with the fix when it is missing.
pub fn node_module(relative: &str) -> PathBuf {
    let path = repo_path("tests/clients/node_modules").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which installs the Node clients with \
         `npm ci` in tests/clients",
        path.display()
    );
    path
}

/// Returns the configuration of the SDK suites in tests/clients:
/// `config_for(mock)` plus a model allow-list and an input limit, which their
/// policy cases exceed with the model `o3` and a prompt of over 8,000 tokens.
pub fn client_suite_config_for(mock: &Mock) -> String {
    format!(
        "{}\npolicies:\n  models: [gpt-4o-mini, \"gpt-5*\", text-embedding-3-small]\n  \
         max_input_tokens: 8000\n",
        config_for(mock)
    )
}

/// Finds the Python interpreter of the SDK tests: `$TOLLGATE_TEST_PYTHON`, which
/// scripts/test.sh points at its virtualenv, else `python3`. Panics with the
/// fix when that interpreter cannot import the `openai` package.
pub fn python_with_openai() -> String {
    let python = std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .unwrap_or_else(|e| panic!("failed to run {python}: {e}"));
    assert!(
        probe.status.success(),
        "the openai package is missing for {python}: run scripts/test.sh, which installs it \
         into target/python-venv ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    python
}
