use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text).map(|(config, _)| config)
}

const NATIVE: &str = r#"
listen: 127.0.0.1:2000
upstream:
  url: http://127.0.0.1:8081/
  api_key: sk-test
  read_timeout: 2m
budgets:
  reset_period: 1h
users:
  - name: alice
    api_key: secret
    tokens: 100000
  - name: bob
    api_key_sha256: 2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25c
    tokens: 0
    reset_period: 1d
"#;

#[test]
fn native_file_loads() {
    let (config, format) = Config::parse(NATIVE).unwrap();
    assert_eq!(format, Format::Native);
    assert_eq!(config.listen, vec!["127.0.0.1:2000".to_string()]);
    assert_eq!(config.upstream.url.base_path, "");
    assert_eq!(config.upstream.read_timeout, Duration::from_secs(120));
    assert_eq!(config.users[0].tokens, Some(100_000));
    assert_eq!(config.users[0].key_digest, KeyDigest::of("secret"));
    assert_eq!(config.users[1].tokens, None, "0 tokens means unlimited");
    assert_eq!(config.users[1].reset_period, Duration::from_secs(86_400));
}

#[test]
fn unknown_key_names_its_path() {
    let text = NATIVE.replace("    tokens: 100000", "    tokenz: 100000");
    let error = parse(&text).unwrap_err();
    assert!(error.starts_with("users[0]"), "{error}");
    assert!(error.contains("unknown field `tokenz`"), "{error}");
}

#[test]
fn bad_value_names_path_and_value() {
    let text = NATIVE.replace("read_timeout: 2m", "read_timeout: soon");
    let error = parse(&text).unwrap_err();
    assert!(error.starts_with("upstream.read_timeout"), "{error}");
    assert!(error.contains("\"soon\""), "{error}");
}

#[test]
fn duplicate_user_key_is_rejected() {
    let text = NATIVE.replace(
        "api_key_sha256: 2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25c",
        "api_key: secret",
    );
    let error = parse(&text).unwrap_err();
    assert!(error.contains("same API key"), "{error}");
}

#[test]
fn env_expansion_in_provider_key() {
    std::env::set_var("TOLLGATE_CONFIG_TEST_KEY", "sk-from-env");
    let text = NATIVE.replace("api_key: sk-test", "api_key: ${TOLLGATE_CONFIG_TEST_KEY}");
    let config = parse(&text).unwrap();
    assert_eq!(config.upstream.api_key.expose(), "sk-from-env");

    let missing = NATIVE.replace("api_key: sk-test", "api_key: ${TOLLGATE_CONFIG_TEST_UNSET}");
    let error = parse(&missing).unwrap_err();
    assert!(
        error.contains("TOLLGATE_CONFIG_TEST_UNSET is not set"),
        "{error}"
    );
}

#[test]
fn provider_key_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openai-key");
    std::fs::write(&path, "sk-from-file\n").unwrap();
    let text = NATIVE.replace(
        "api_key: sk-test",
        &format!("api_key_file: {}", path.display()),
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.upstream.api_key.expose(), "sk-from-file");
}

#[test]
fn upstream_url_forms() {
    let cases = [
        ("https://api.openai.com/", true, "api.openai.com", 443, ""),
        ("https://api.openai.com/v1", true, "api.openai.com", 443, ""),
        ("http://127.0.0.1:8081", false, "127.0.0.1", 8081, ""),
        ("http://[::1]:9000/proxy/v1/", false, "::1", 9000, "/proxy"),
    ];
    for (text, tls, host, port, base_path) in cases {
        let url = UpstreamUrl::parse(text, "url").unwrap();
        assert_eq!(url.tls, tls, "{text}");
        assert_eq!(url.host, host, "{text}");
        assert_eq!(url.port, port, "{text}");
        assert_eq!(url.base_path, base_path, "{text}");
    }
    assert_eq!(
        UpstreamUrl::parse("http://[::1]:9000", "url")
            .unwrap()
            .authority(),
        "[::1]:9000"
    );
    assert!(UpstreamUrl::parse("ftp://x", "url").is_err());
    assert!(UpstreamUrl::parse("https://user:pw@x", "url").is_err());
}

const MEMBRANE: &str = r#"
api:
  port: 2000
  flow:
  - llmGateway:
      apiKey: <<Replace with your API_KEY>>
      openai: {}
      simpleStore:
        # User-facing API keys for the LLM Gateway
        users:
        - name: alice
          apiKey: secret
          tokens: 100000 # Token limit
        - name: bob
          apiKey: changeme
          tokens: 50000
        limitResetPeriod: 3600
  target:
    url: https://api.openai.com/
"#;

#[test]
fn membrane_placeholder_is_a_clear_error() {
    let error = parse(MEMBRANE).unwrap_err();
    assert!(
        error.contains("api.flow[0].llmGateway.apiKey still contains the placeholder"),
        "{error}"
    );
}

#[test]
fn membrane_example_loads_with_key() {
    let text = MEMBRANE.replace("<<Replace with your API_KEY>>", "sk-real");
    let (config, format) = Config::parse(&text).unwrap();
    assert_eq!(format, Format::Membrane);
    assert_eq!(config.listen, vec!["0.0.0.0:2000".to_string()]);
    assert_eq!(config.upstream.url.host, "api.openai.com");
    assert!(config.upstream.url.tls);
    assert_eq!(config.upstream.url.base_path, "");
    assert_eq!(config.upstream.api_key.expose(), "sk-real");
    assert_eq!(config.users.len(), 2);
    assert_eq!(config.users[0].name, "alice");
    assert_eq!(config.users[0].tokens, Some(100_000));
    assert_eq!(config.users[1].key_digest, KeyDigest::of("changeme"));
    assert_eq!(config.users[1].reset_period, Duration::from_secs(3600));
}

#[test]
fn membrane_unknown_key_names_path() {
    let text = MEMBRANE
        .replace("<<Replace with your API_KEY>>", "sk-real")
        .replace("limitResetPeriod", "limitResetPeriode");
    let error = parse(&text).unwrap_err();
    assert!(
        error.starts_with("api.flow[0].llmGateway.simpleStore.limitResetPeriode: unknown field"),
        "{error}"
    );
    assert_eq!(error.matches("api.flow").count(), 1, "{error}");
}

#[test]
fn every_file_in_conf_loads() {
    std::env::set_var("OPENAI_API_KEY", "sk-conf-test");
    // The systemd example reads the provider key from its credentials
    // directory.
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(credentials.path().join("openai-api-key"), "sk-conf-test\n").unwrap();
    std::env::set_var("CREDENTIALS_DIRECTORY", credentials.path());
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("<<Replace with your API_KEY>>", "${OPENAI_API_KEY}");
        if let Err(error) = Config::parse(&text) {
            panic!("{}: {error}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the example files in {}",
        conf.display()
    );
}

const POLICIES: &str = r#"
upstream:
  url: http://127.0.0.1:8081
  api_key: sk-test
policies:
  models: [gpt-4o-mini, "gpt-5*"]
  max_input_tokens: 50000
  max_output_tokens: 2000
  requests_per_minute: 60
  system_prompt:
    action: prepend
    content: Follow the company rules.
users:
  - name: alice
    api_key: a
  - name: bob
    api_key: b
    policies:
      models: ["*"]
      max_output_tokens: 8000
      max_input_tokens: 0
      max_concurrent_requests: 2
"#;

#[test]
fn user_policies_override_gateway_fields() {
    let config = parse(POLICIES).unwrap();
    let alice = &config.users[0].policies;
    assert_eq!(alice.max_output_tokens, Some(2000));
    assert_eq!(alice.max_input_tokens, Some(50_000));
    assert!(alice.models.as_ref().unwrap().allows("gpt-5-codex"));
    assert!(!alice.models.as_ref().unwrap().allows("o3"));
    assert_eq!(alice.requests_per_minute, Some(60));
    assert_eq!(
        alice.system_prompt.as_ref().unwrap().content,
        "Follow the company rules."
    );

    let bob = &config.users[1].policies;
    assert!(bob.models.as_ref().unwrap().allows("o3"));
    assert_eq!(bob.max_output_tokens, Some(8000));
    assert_eq!(bob.max_input_tokens, None, "0 lifts the gateway limit");
    assert_eq!(bob.max_concurrent_requests, Some(2));
    assert_eq!(bob.requests_per_minute, Some(60));

    assert_eq!(config.known_models(), vec!["gpt-4o-mini".to_string()]);
}

#[test]
fn invalid_policies_name_the_key() {
    let cases = [
        (
            "action: prepend",
            "action: shout",
            "policies.system_prompt.action",
        ),
        (
            "    content: Follow the company rules.\n",
            "",
            "policies.system_prompt.content",
        ),
        (
            "models: [gpt-4o-mini, \"gpt-5*\"]",
            "models: []",
            "policies.models",
        ),
        (
            "max_output_tokens: 8000",
            "max_output_tokenz: 8000",
            "users[1].policies",
        ),
    ];
    for (from, to, path) in cases {
        let text = POLICIES.replacen(from, to, 1);
        let error = parse(&text).unwrap_err();
        assert!(error.contains(path), "{path}: {error}");
    }
}

#[test]
fn membrane_policies_map_onto_native() {
    let text = MEMBRANE.replace("<<Replace with your API_KEY>>", "sk-real").replace(
        "      simpleStore:",
        "      policies:\n        models: [gpt-4o-mini]\n        maxInputTokens: 1000\n        \
         maxOutputTokens: 200\n      systemPrompt:\n        action: overwrite\n        \
         content: Be brief.\n      simpleStore:",
    );
    let config = parse(&text).unwrap();
    for user in &config.users {
        assert_eq!(user.policies.max_input_tokens, Some(1000));
        assert_eq!(user.policies.max_output_tokens, Some(200));
        assert!(user.policies.models.as_ref().unwrap().allows("gpt-4o-mini"));
        let rule = user.policies.system_prompt.as_ref().unwrap();
        assert_eq!(rule.content, "Be brief.");
    }
}
