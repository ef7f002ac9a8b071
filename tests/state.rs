//! The SQLite state store with the real binary: budgets and the usage log
//! across SIGTERM, `kill -9`, graceful upgrades and window boundaries, and
//! the `tollgate usage` report.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client, config_for, free_addr, Gateway, Mock};
use serde_json::{json, Value};

/// Builds the configuration of a gateway in front of `mock` that stops at
/// once on SIGTERM and flushes state every `flush_interval`, with the users
/// of [`config_for`].
fn state_config(mock: &Mock, flush_interval: &str, reset_period: &str) -> String {
    // The grace period lets requests in flight at shutdown finish; with 0 s
    // Pingora cuts them, forwarded but unanswered.
    config_for(mock)
        .replace(
            "server:\n",
            "server:\n  grace_period: 1s\n  graceful_shutdown_timeout: 5s\n",
        )
        .replace("reset_period: 1h", &format!("reset_period: {reset_period}"))
        + &format!("state:\n  store: sqlite\n  flush_interval: {flush_interval}\n")
}

/// Sends one chat request and returns the tokens the mock reported.
fn spend(gateway_addr: std::net::SocketAddr, key: &str, model: &str) -> u64 {
    let response = client()
        .post(format!("http://{gateway_addr}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({
            "model": model,
            "max_completion_tokens": 20,
            "messages": [{"role": "user", "content": "Say hello."}],
        }))
        .send()
        .expect("POST /v1/chat/completions");
    assert_eq!(response.status(), 200, "chat status");
    let body: Value = response.json().expect("chat JSON");
    body["usage"]["total_tokens"]
        .as_u64()
        .expect("total_tokens")
}

/// Runs `tollgate usage -c FILE` with `args` in the gateway's directory and
/// returns its standard output.
fn usage_report(gateway: &Gateway, args: &[&str]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-c")
        .arg(gateway.dir().path().join("tollgate.yaml"))
        .arg("usage")
        .args(args)
        .env("STATE_DIRECTORY", gateway.dir().path())
        .output()
        .expect("run tollgate usage");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("UTF-8 report"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Waits until `check` holds for the report rows, up to 10 s.
fn report_rows(gateway: &Gateway, args: &[&str], check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = usage_report(gateway, args).expect("tollgate usage");
        let rows: Vec<Value> = serde_json::from_str(&text).expect("report JSON");
        if check(&rows) || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a chat request as carol and returns the tokens charged, or why it
/// failed.
fn send_chat(
    client: &reqwest::blocking::Client,
    addr: std::net::SocketAddr,
) -> Result<u64, String> {
    let response = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth("carol-key")
        .json(&json!({
            "model": "gpt-4o-mini",
            "max_completion_tokens": 20,
            "messages": [{"role": "user", "content": "Say hello."}],
        }))
        .send()
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body: Value = response.json().map_err(|e| format!("{status}: {e}"))?;
    match body["usage"]["total_tokens"].as_u64() {
        Some(tokens) if status == 200 => Ok(tokens),
        _ => Err(format!("{status}: {body}")),
    }
}

fn sigterm_and_wait(gateway: &mut Gateway) {
    gateway.signal("TERM");
    let status = gateway
        .wait_for_exit(Duration::from_secs(20))
        .expect("tollgate did not exit within 20 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn budget_survives_sigterm_restart() {
    let mock = Mock::start();
    // A long flush interval: only the flush at shutdown can save the counts.
    let config = state_config(&mock, "1h", "1h");
    let mut gateway = Gateway::start(&config);

    let mut alice = 0;
    for _ in 0..3 {
        alice += spend(gateway.addr, "alice-key", "gpt-4o-mini");
    }
    let bob = spend(gateway.addr, "bob-key", "gpt-4o");
    let before_alice = gateway.settled_usage("alice-key");
    let before_bob = gateway.settled_usage("bob-key");
    assert_eq!(before_alice["tokens_used"], alice);
    assert_eq!(before_bob["tokens_used"], bob);

    sigterm_and_wait(&mut gateway);
    let restarted =
        Gateway::try_start_in(&config, gateway.dir(), (free_addr(), free_addr()), &[]).unwrap();

    let after_alice = restarted.usage("alice-key");
    let after_bob = restarted.usage("bob-key");
    for field in ["tokens_used", "tokens_remaining", "reset_at"] {
        assert_eq!(after_alice[field], before_alice[field], "alice {field}");
        assert_eq!(after_bob[field], before_bob[field], "bob {field}");
    }
    assert_eq!(restarted.usage("carol-key")["tokens_used"], 0);

    let text = usage_report(&restarted, &["--format", "json"]).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[0]["user"], "alice");
    assert_eq!(rows[0]["model"], "gpt-4o-mini");
    assert_eq!(rows[0]["requests"], 3);
    assert_eq!(rows[0]["total_tokens"], alice);
    assert_eq!(rows[1]["user"], "bob");
    assert_eq!(rows[1]["total_tokens"], bob);
}

#[test]
fn usage_report_while_gateway_runs() {
    let mock = Mock::start();
    let gateway = Gateway::start(&state_config(&mock, "100ms", "1h"));

    let alice_mini = spend(gateway.addr, "alice-key", "gpt-4o-mini");
    let alice_4o = spend(gateway.addr, "alice-key", "gpt-4o");
    let bob_mini = spend(gateway.addr, "bob-key", "gpt-4o-mini")
        + spend(gateway.addr, "bob-key", "gpt-4o-mini");
    let rejected = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth("bob-key")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(rejected.status(), 400);

    let by_user = report_rows(&gateway, &["--by", "user", "--format", "json"], |rows| {
        rows.len() == 2 && rows[1]["requests"] == 3
    });
    assert_eq!(by_user[0]["user"], "alice");
    assert_eq!(by_user[0]["requests"], 2);
    assert_eq!(by_user[0]["total_tokens"], alice_mini + alice_4o);
    assert_eq!(by_user[1]["user"], "bob");
    assert_eq!(by_user[1]["requests"], 3, "the 400 is logged too");
    assert_eq!(by_user[1]["total_tokens"], bob_mini);

    let by_model = report_rows(&gateway, &["--by", "model", "--format", "json"], |_| true);
    let models: Vec<&str> = by_model
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["-", "gpt-4o", "gpt-4o-mini"]);
    assert_eq!(by_model[2]["total_tokens"], alice_mini + bob_mini);

    let today = time::OffsetDateTime::now_utc().date().to_string();
    let by_day = report_rows(&gateway, &["--by", "day", "--format", "json"], |_| true);
    assert_eq!(by_day.len(), 1);
    assert_eq!(by_day[0]["day"], today);
    assert_eq!(by_day[0]["requests"], 5);

    let csv = usage_report(&gateway, &["--by", "user", "--format", "csv"]).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("user,requests,input_tokens,output_tokens,cached_tokens,reasoning_tokens,total_tokens,estimated_requests")
    );
    assert!(lines.next().unwrap().starts_with("alice,2,"), "{csv}");

    let table = usage_report(&gateway, &[]).unwrap();
    let total_line = table.lines().last().unwrap();
    assert!(total_line.starts_with("total"), "{table}");
    assert!(
        total_line.contains(&format!(" {} ", alice_mini + alice_4o + bob_mini)),
        "{table}"
    );

    let future = usage_report(
        &gateway,
        &[
            "--since",
            "2999-01-01",
            "--until",
            "2999-01-02",
            "--format",
            "json",
        ],
    )
    .unwrap();
    assert_eq!(future.trim(), "[]");
    // The report needs the state section only, not the provider key.
    let dir = gateway.dir();
    let config = std::fs::read_to_string(dir.path().join("tollgate.yaml")).unwrap();
    let keyless = dir.path().join("keyless.yaml");
    std::fs::write(
        &keyless,
        config.replace(common::PROVIDER_KEY, "${TOLLGATE_TEST_UNSET_KEY}"),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-c")
        .arg(&keyless)
        .args(["usage", "--by", "user", "--format", "csv"])
        .env("STATE_DIRECTORY", dir.path())
        .env_remove("TOLLGATE_TEST_UNSET_KEY")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), csv);

    let metrics = gateway.metrics();
    let flushed = common::metric_value(&metrics, r#"tollgate_state_flushes_total{result="ok"}"#);
    assert!(flushed.is_some_and(|count| count >= 1.0), "{metrics}");
    assert_eq!(
        common::metric_value(&metrics, r#"tollgate_state_flushes_total{result="failed"}"#),
        Some(0.0)
    );
    assert_eq!(
        common::metric_value(&metrics, "tollgate_state_queue_overflow_total"),
        Some(0.0)
    );

    let error = usage_report(&gateway, &["--since", "last week"]).unwrap_err();
    assert!(
        error.contains("--since: invalid time \"last week\""),
        "{error}"
    );
}

#[test]
fn kill_9_loses_at_most_one_flush_interval() {
    let mock = Mock::start();
    let config = state_config(&mock, "1s", "1h");
    let mut gateway = Gateway::start(&config);
    let addr = gateway.addr;

    // Four clients spend carol's unlimited budget until the gateway dies; each success
    // is kept with the time it completed.
    let completed: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let completed = completed.clone();
            std::thread::spawn(move || {
                let client = client();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    let sent = client
                        .post(format!("http://{addr}/v1/chat/completions"))
                        .bearer_auth("carol-key")
                        .json(&json!({
                            "model": "gpt-4o-mini",
                            "max_completion_tokens": 20,
                            "messages": [{"role": "user", "content": "Say hello."}],
                        }))
                        .send();
                    let Ok(response) = sent else { return };
                    let Ok(body) = response.json::<Value>() else {
                        return;
                    };
                    if let Some(tokens) = body["usage"]["total_tokens"].as_u64() {
                        completed.lock().unwrap().push((Instant::now(), tokens));
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(3_500));
    let killed_at = Instant::now();
    gateway.kill();
    for client in clients {
        client.join().unwrap();
    }

    let completed = completed.lock().unwrap().clone();
    let delivered: u64 = completed.iter().map(|(_, tokens)| tokens).sum();
    // Responses of the last flush interval, with slack for a flush that was
    // running when the process died.
    let window = Duration::from_millis(1_500);
    let recent: u64 = completed
        .iter()
        .filter(|(at, _)| killed_at.duration_since(*at) <= window)
        .map(|(_, tokens)| tokens)
        .sum();
    assert!(
        completed.len() > 20,
        "too little load: {} requests",
        completed.len()
    );

    let restarted =
        Gateway::try_start_in(&config, gateway.dir(), (free_addr(), free_addr()), &[]).unwrap();
    let stored = restarted.usage("carol-key")["tokens_used"]
        .as_u64()
        .unwrap();
    let lost = delivered.saturating_sub(stored);
    eprintln!(
        "kill -9 after {} requests: {delivered} tokens delivered, {stored} stored, {lost} lost \
         ({recent} tokens completed in the last 1.5 s)",
        completed.len()
    );
    assert!(stored > 0, "nothing was stored before the kill");
    assert!(
        lost <= recent,
        "lost {lost} tokens, more than the last interval's {recent}"
    );
    // A request settled by the gateway whose response the client never read
    // may be stored; no more than one per client.
    assert!(
        stored <= delivered + 4 * 40,
        "stored {stored} of {delivered} delivered"
    );
}

#[test]
fn graceful_upgrade_under_load_keeps_counters() {
    let mock = Mock::start();
    let config = state_config(&mock, "200ms", "1h");
    let mut old = Gateway::start(&config);
    let addr = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let spent: Arc<Mutex<(u64, u64)>> = Arc::default();
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, spent) = (stop.clone(), failures.clone(), spent.clone());
            let retries = retries.clone();
            std::thread::spawn(move || {
                let client = client();
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    // Pingora closes idle keep-alive connections when it
                    // shuts down; a request sent on one at that moment fails
                    // before the gateway reads it. SDKs retry those, and so
                    // does this client, once; the mock's request count below
                    // proves no retried request had been forwarded.
                    let mut outcome = send_chat(&client, addr);
                    if outcome.is_err() {
                        retries.fetch_add(1, Ordering::Relaxed);
                        outcome = send_chat(&client, addr);
                    }
                    match outcome {
                        Ok(tokens) => {
                            let mut spent = spent.lock().unwrap();
                            spent.0 += 1;
                            spent.1 += tokens;
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1_000));
    let new = Gateway::try_start_in(&config, old.dir(), (addr, old.admin), &["-u"]).unwrap();
    // The new process waits for the sockets; the old one hands them over on
    // SIGQUIT and then drains its requests.
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let status = old
        .wait_for_exit(Duration::from_secs(30))
        .expect("the old process did not exit within 30 s of SIGQUIT");
    assert!(status.success(), "old process exit status: {status}");
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let (requests, tokens) = *spent.lock().unwrap();
    assert!(requests > 20, "too little load: {requests} requests");
    let retried = retries.load(Ordering::Relaxed);
    eprintln!("graceful upgrade: {requests} requests, {retried} retried after a closed connection");
    assert!(retried <= 8, "{retried} retries, more than two per client");
    assert_eq!(
        mock.request_count() as u64,
        requests,
        "every forwarded request got its response"
    );

    // The new process reads back what the old one wrote at exit.
    let deadline = Instant::now() + Duration::from_secs(5);
    let used = loop {
        let used = new.settled_usage("carol-key")["tokens_used"]
            .as_u64()
            .unwrap();
        if used == tokens || Instant::now() > deadline {
            break used;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        used, tokens,
        "counter after the upgrade, {requests} requests"
    );
    // carol is the only user with traffic, so the report has one row.
    let rows = report_rows(&new, &["--by", "user", "--format", "json"], |rows| {
        rows.first().is_some_and(|row| row["requests"] == requests)
    });
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["user"], "carol");
    assert_eq!(rows[0]["requests"], requests);
    assert_eq!(rows[0]["total_tokens"], tokens);
}

#[test]
fn window_passing_while_down_starts_at_zero() {
    let mock = Mock::start();
    let config = state_config(&mock, "1h", "4s");

    // Start just after a window boundary, so spending and the shutdown fit
    // in one 4 s window.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into_window = now.as_millis() % 4_000;
    if into_window > 200 {
        std::thread::sleep(Duration::from_millis(4_000 - into_window as u64 + 50));
    }
    let mut gateway = Gateway::start(&config);
    let spent = spend(gateway.addr, "alice-key", "gpt-4o-mini");
    let before = gateway.settled_usage("alice-key");
    assert_eq!(before["tokens_used"], spent);
    sigterm_and_wait(&mut gateway);

    let reset_in = before["reset_in_seconds"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(reset_in) + Duration::from_millis(200));
    let restarted =
        Gateway::try_start_in(&config, gateway.dir(), (free_addr(), free_addr()), &[]).unwrap();
    let after = restarted.usage("alice-key");
    assert_eq!(after["tokens_used"], 0, "{after}");
    assert_eq!(after["tokens_remaining"], 1000);
    assert_ne!(after["reset_at"], before["reset_at"]);

    let rows = report_rows(&restarted, &["--by", "user", "--format", "json"], |_| true);
    assert_eq!(
        rows[0]["total_tokens"], spent,
        "the usage log keeps the request"
    );
}

#[test]
fn corrupt_database_is_startup_error() {
    let mock = Mock::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("tollgate.db");
    let garbage =
        b"this is not a SQLite database, but it is long enough to look like one. ".repeat(100);
    std::fs::write(&path, &garbage).unwrap();

    let error = Gateway::try_start_in(
        &state_config(&mock, "1s", "1h"),
        dir.clone(),
        (free_addr(), free_addr()),
        &[],
    )
    .err()
    .expect("a corrupt database must stop the start");
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("restore it from a backup"), "{error}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file was changed"
    );

    // A directory in place of the file is refused the same way.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::create_dir(dir.path().join("tollgate.db")).unwrap();
    let error = Gateway::try_start_in(
        &state_config(&mock, "1s", "1h"),
        dir.clone(),
        (free_addr(), free_addr()),
        &[],
    )
    .err()
    .expect("a directory must stop the start");
    assert!(error.contains("tollgate.db"), "{error}");
}
