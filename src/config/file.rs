//! The native YAML format: snake_case keys, unknown keys rejected.

use serde::Deserialize;

use super::operations;
use super::state::StateFile;
use super::values::ConfigDuration;
use super::{
    deserialize_with_path, policies_from_parts, resolve_secret, without_zero_limits, Budgets,
    Config, Limits, PolicyParts, ServerSettings, Upstream, UpstreamUrl, User, DEFAULT_LISTEN,
};
use crate::keys::KeyDigest;
use crate::policy::Policies;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    listen: Option<Listen>,
    upstream: UpstreamFile,
    #[serde(default)]
    budgets: BudgetsFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    policies: PoliciesFile,
    #[serde(default)]
    users: Vec<UserFile>,
    #[serde(default)]
    server: ServerFile,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<String>,
    #[serde(default)]
    log: operations::LogFile,
    #[serde(default)]
    state: StateFile,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Listen {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    url: String,
    api_key: Option<String>,
    api_key_file: Option<String>,
    connect_timeout: Option<ConfigDuration>,
    read_timeout: Option<ConfigDuration>,
    request_timeout: Option<ConfigDuration>,
    pool_idle_timeout: Option<ConfigDuration>,
    ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BudgetsFile {
    reset_period: Option<ConfigDuration>,
    default_max_output_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_request_body_bytes: Option<usize>,
    failed_keys_per_minute: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PoliciesFile {
    models: Option<Vec<String>>,
    max_input_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    system_prompt: Option<SystemPromptFile>,
    requests_per_minute: Option<u32>,
    max_concurrent_requests: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemPromptFile {
    action: String,
    content: Option<String>,
}

impl PoliciesFile {
    fn to_policies(&self, key_path: &str) -> Result<Policies, String> {
        let parts = PolicyParts {
            models: self.models.as_deref(),
            max_input_tokens: self.max_input_tokens,
            max_output_tokens: self.max_output_tokens,
            system_prompt: self
                .system_prompt
                .as_ref()
                .map(|rule| (rule.action.as_str(), rule.content.as_deref())),
            requests_per_minute: self.requests_per_minute,
            max_concurrent_requests: self.max_concurrent_requests,
        };
        policies_from_parts(parts, key_path)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    name: String,
    api_key: Option<String>,
    api_key_sha256: Option<String>,
    tokens: Option<u64>,
    reset_period: Option<ConfigDuration>,
    #[serde(default)]
    policies: PoliciesFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    threads: Option<usize>,
    pid_file: Option<String>,
    upgrade_sock: Option<String>,
    error_log: Option<String>,
    grace_period: Option<ConfigDuration>,
    graceful_shutdown_timeout: Option<ConfigDuration>,
}

/// Defaults shared with the Membrane format.
pub(super) mod defaults {
    use std::time::Duration;

    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const READ_TIMEOUT: Duration = Duration::from_secs(300);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Below the idle timeouts of the providers' load balancers, so a pooled
    /// connection is dropped here before the provider closes it.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const RESET_PERIOD: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
    pub const MAX_REQUEST_BODY_BYTES: usize = 32 * 1024 * 1024;
    pub const FAILED_KEYS_PER_MINUTE: u32 = 30;
}

pub(super) fn parse(text: &str) -> Result<Config, String> {
    let file: File = deserialize_with_path(text)?;
    let default_server = ServerSettings::default();

    let reset_period = file
        .budgets
        .reset_period
        .map_or(defaults::RESET_PERIOD, |d| d.0);
    let policies = file.policies.to_policies("policies")?;
    let users = file
        .users
        .iter()
        .enumerate()
        .map(|(index, user)| user_from_file(user, index, reset_period, &policies))
        .collect::<Result<Vec<_>, _>>()?;

    let listen = match file.listen {
        None => vec![DEFAULT_LISTEN.to_string()],
        Some(Listen::One(address)) => vec![address],
        Some(Listen::Many(addresses)) => addresses,
    };

    Ok(Config {
        listen,
        upstream: upstream_from_file(&file.upstream)?,
        budgets: Budgets {
            reset_period,
            default_max_output_tokens: file
                .budgets
                .default_max_output_tokens
                .unwrap_or(defaults::DEFAULT_MAX_OUTPUT_TOKENS),
        },
        limits: Limits {
            max_request_body_bytes: file
                .limits
                .max_request_body_bytes
                .unwrap_or(defaults::MAX_REQUEST_BODY_BYTES),
            failed_keys_per_minute: file
                .limits
                .failed_keys_per_minute
                .unwrap_or(defaults::FAILED_KEYS_PER_MINUTE),
        },
        policies: without_zero_limits(policies),
        users,
        server: ServerSettings {
            threads: file.server.threads.unwrap_or(default_server.threads),
            pid_file: file.server.pid_file.unwrap_or(default_server.pid_file),
            upgrade_sock: file
                .server
                .upgrade_sock
                .unwrap_or(default_server.upgrade_sock),
            error_log: file.server.error_log,
            grace_period: file
                .server
                .grace_period
                .map_or(default_server.grace_period, |d| d.0),
            graceful_shutdown_timeout: file
                .server
                .graceful_shutdown_timeout
                .map_or(default_server.graceful_shutdown_timeout, |d| d.0),
        },
        admin: operations::admin_from_file(
            file.admin_listen,
            file.admin_token.as_deref(),
            file.admin_token_file.as_deref(),
        )?,
        log: operations::log_from_file(&file.log)?,
        state: file.state.into_settings()?,
    })
}

fn upstream_from_file(upstream: &UpstreamFile) -> Result<Upstream, String> {
    let url = super::values::expand_env(&upstream.url, "upstream.url")?;
    Ok(Upstream {
        url: UpstreamUrl::parse(&url, "upstream.url")?,
        api_key: resolve_secret(
            upstream.api_key.as_deref(),
            upstream.api_key_file.as_deref(),
            "upstream.api_key",
            "upstream.api_key_file",
        )?,
        connect_timeout: upstream
            .connect_timeout
            .map_or(defaults::CONNECT_TIMEOUT, |d| d.0),
        read_timeout: upstream
            .read_timeout
            .map_or(defaults::READ_TIMEOUT, |d| d.0),
        request_timeout: upstream
            .request_timeout
            .map_or(defaults::REQUEST_TIMEOUT, |d| d.0),
        pool_idle_timeout: upstream
            .pool_idle_timeout
            .map_or(defaults::POOL_IDLE_TIMEOUT, |d| d.0),
        ca_file: match &upstream.ca_file {
            Some(path) => Some(readable_file(path, "upstream.ca_file")?),
            None => None,
        },
    })
}

/// Expands `${VAR}` in a file path and checks the file can be read.
fn readable_file(path: &str, key_path: &str) -> Result<String, String> {
    let path = super::values::expand_env(path, key_path)?;
    std::fs::File::open(&path)
        .map_err(|e| format!("{key_path}: cannot read the file \"{path}\": {e}"))?;
    Ok(path)
}

fn user_from_file(
    user: &UserFile,
    index: usize,
    default_reset_period: std::time::Duration,
    gateway_policies: &Policies,
) -> Result<User, String> {
    let key_path = format!("users[{index}]");
    let key_digest = match (&user.api_key, &user.api_key_sha256) {
        (Some(_), Some(_)) => {
            let name = &user.name;
            return Err(format!(
                "{key_path}: api_key and api_key_sha256 are both set for user \"{name}\": \
                 keep only one"
            ));
        }
        (Some(key), None) => {
            let key_path = format!("{key_path}.api_key");
            super::values::reject_placeholder(key, &key_path)?;
            let key = super::values::expand_env(key, &key_path)?;
            if key.is_empty() {
                return Err(format!("{key_path}: the key is empty"));
            }
            super::values::check_key_characters(&key, &key_path)?;
            KeyDigest::of(&key)
        }
        (None, Some(hex)) => KeyDigest::from_hex(hex).map_err(|e| {
            format!("{key_path}.api_key_sha256: {e}; print the digest with `tollgate hash-key`")
        })?,
        (None, None) => {
            return Err(format!(
                "{key_path}: user \"{}\" has no key: set api_key, or api_key_sha256 from \
                 `tollgate hash-key`",
                user.name
            ))
        }
    };

    Ok(User {
        name: user.name.clone(),
        key_digest,
        tokens: user.tokens.filter(|&tokens| tokens > 0),
        reset_period: user.reset_period.map_or(default_reset_period, |d| d.0),
        policies: without_zero_limits(
            gateway_policies
                .overridden_by(&user.policies.to_policies(&format!("{key_path}.policies"))?),
        ),
    })
}
