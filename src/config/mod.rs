//! Configuration: the runtime model the gateway runs on, and loading it from
//! either file format (the native YAML or the Membrane `llmGateway` shape).

mod file;
mod membrane;
mod operations;
mod state;
pub mod values;

use std::path::Path;
use std::time::Duration;

use crate::keys::KeyDigest;
use crate::policy::{ModelList, Policies, SystemPrompt, SystemPromptAction};
pub use operations::{AccessLogFormat, AdminSettings, LogSettings, DEFAULT_ADMIN_LISTEN};
pub use state::{StateSettings, StoreKind};
pub use values::Secret;

/// Default API listener, the port the Membrane format also defaults to.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:2000";

/// The validated settings of one gateway process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses of the API listener, such as `0.0.0.0:2000`.
    pub listen: Vec<String>,
    pub upstream: Upstream,
    pub budgets: Budgets,
    pub limits: Limits,
    /// Gateway-wide policies; each user's effective policies are in
    /// [`User::policies`].
    pub policies: Policies,
    pub users: Vec<User>,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub state: StateSettings,
}

/// The provider the gateway forwards to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: UpstreamUrl,
    /// The provider key sent upstream in place of the client's credentials.
    pub api_key: Secret,
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Maximum gap between two reads from the upstream, such as between two
    /// events of a stream.
    pub read_timeout: Duration,
    /// Deadline for the whole exchange, from admission to the last byte.
    pub request_timeout: Duration,
    /// How long an idle pooled connection is kept for reuse.
    pub pool_idle_timeout: Duration,
    /// PEM file of the certificate authorities trusted for an https
    /// upstream, in place of the system's; for providers behind a private CA.
    pub ca_file: Option<String>,
}

/// A parsed upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    /// Host name or IP literal (without brackets), also used for SNI and `Host`.
    pub host: String,
    pub port: u16,
    /// Path prefix put before `/v1/...`; empty or starting with `/`, never
    /// ending with `/`.
    pub base_path: String,
}

impl UpstreamUrl {
    /// Parses an `http` or `https` base URL such as `https://api.openai.com/`.
    ///
    /// A trailing `/v1` is dropped because the forwarded path already starts
    /// with it, so both `https://api.openai.com` and the SDK-style
    /// `https://api.openai.com/v1` work.
    pub fn parse(text: &str, key_path: &str) -> Result<Self, String> {
        let invalid = |reason: &str| {
            format!(
                "{key_path}: invalid upstream URL \"{text}\": {reason} \
                 (expected for example https://api.openai.com or http://127.0.0.1:8081)"
            )
        };
        let parsed = url::Url::parse(text).map_err(|e| invalid(&e.to_string()))?;

        let tls = match parsed.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(invalid(&format!("scheme \"{other}\" is not http or https"))),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "credentials in the URL are not allowed, use api_key",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) => name.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(invalid("the host is missing")),
        };
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| invalid("the port is missing"))?;

        let mut base_path = parsed.path().trim_end_matches('/').to_string();
        if base_path.ends_with("/v1") {
            base_path.truncate(base_path.len() - "/v1".len());
        }

        Ok(UpstreamUrl {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// `host:port`, with brackets around an IPv6 literal.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Returns the value of the `Host` header: the port is left out when it is the
    /// scheme's default.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            if self.host.contains(':') {
                format!("[{}]", self.host)
            } else {
                self.host.clone()
            }
        } else {
            self.authority()
        }
    }
}

/// Budget settings that apply to every user unless the user overrides them.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// Length of a budget window; windows are aligned to the Unix epoch.
    pub reset_period: Duration,
    /// Output tokens reserved for a request that names no max output field.
    pub default_max_output_tokens: u64,
}

/// Limits on what clients may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body read, in bytes; larger bodies get 413.
    pub max_request_body_bytes: usize,
    /// Requests with a missing or invalid key allowed per client address
    /// per minute before every request from it gets 429; 0 turns this off.
    pub failed_keys_per_minute: u32,
}

/// One holder of an internal key.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// SHA-256 digest of the internal key; the key itself is not kept.
    pub key_digest: KeyDigest,
    /// Tokens per window; `None` is unlimited.
    pub tokens: Option<u64>,
    /// This user's window length.
    pub reset_period: Duration,
    /// The gateway-wide policies with this user's overrides applied.
    pub policies: Policies,
}

/// Process settings handed to Pingora.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub error_log: Option<String>,
    /// Time in-flight requests get to finish after SIGTERM. The listeners
    /// stop accepting at once, the process always waits this long, and
    /// requests still running afterwards are cut.
    pub grace_period: Duration,
    /// Time the runtimes get to stop after the grace period, for work that
    /// is not a request, such as a final write of state.
    pub graceful_shutdown_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            pid_file: "/tmp/tollgate.pid".to_string(),
            upgrade_sock: "/tmp/tollgate_upgrade.sock".to_string(),
            error_log: None,
            grace_period: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// The file format a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Native,
    Membrane,
}

impl Config {
    /// Lists every model name the configuration names in an allow-list, without
    /// prefix patterns: the model label values of metrics.
    pub fn known_models(&self) -> Vec<String> {
        let lists = std::iter::once(&self.policies)
            .chain(self.users.iter().map(|user| &user.policies))
            .filter_map(|policies| policies.models.as_ref());
        let mut names: Vec<String> = lists
            .flat_map(|list| list.0.iter())
            .filter(|name| !name.ends_with('*'))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Reads, parses and validates a configuration file of either format.
    pub fn load(path: &Path) -> Result<(Config, Format), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates configuration text; the format is chosen by the
    /// top-level keys (`api:` is the Membrane shape).
    pub fn parse(text: &str) -> Result<(Config, Format), String> {
        let top: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        let is_membrane = top.as_mapping().is_some_and(|map| map.contains_key("api"));

        let config = if is_membrane {
            (membrane::parse(text)?, Format::Membrane)
        } else {
            (file::parse(text)?, Format::Native)
        };
        config.0.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("listen: at least one address is required, such as 0.0.0.0:2000".into());
        }
        for address in &self.listen {
            address.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("listen: invalid address \"{address}\": expected IP:PORT such as 0.0.0.0:2000 or [::1]:2000")
            })?;
        }

        for (index, user) in self.users.iter().enumerate() {
            if user.name.trim().is_empty() {
                return Err(format!("users[{index}].name: the name must not be empty"));
            }
            for earlier in &self.users[..index] {
                if earlier.name == user.name {
                    return Err(format!(
                        "users[{index}].name: the name \"{}\" is used twice; user names must be unique",
                        user.name
                    ));
                }
                if earlier.key_digest == user.key_digest {
                    return Err(format!(
                        "users[{index}]: user \"{}\" has the same API key as \"{}\"; give each user its own key",
                        user.name, earlier.name
                    ));
                }
            }
            if user.reset_period.is_zero() {
                return Err(format!(
                    "users[{index}].reset_period: must be longer than 0 seconds"
                ));
            }
        }

        if self.budgets.reset_period.is_zero() {
            return Err("budgets.reset_period: must be longer than 0 seconds".into());
        }
        if self.limits.max_request_body_bytes == 0 {
            return Err("limits.max_request_body_bytes: must be at least 1".into());
        }
        if self.server.threads == 0 {
            return Err("server.threads: must be at least 1".into());
        }
        self.admin.validate(&self.listen)
    }
}

/// Policy settings as either file format writes them, before validation.
#[derive(Debug, Default)]
struct PolicyParts<'a> {
    models: Option<&'a [String]>,
    max_input_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    /// The action and the content of the system prompt rule.
    system_prompt: Option<(&'a str, Option<&'a str>)>,
    requests_per_minute: Option<u32>,
    max_concurrent_requests: Option<u32>,
}

/// Validates policy settings. A limit of 0 means no limit, which lets a
/// user's override lift a gateway-wide limit.
fn policies_from_parts(parts: PolicyParts<'_>, key_path: &str) -> Result<Policies, String> {
    let models = match parts.models {
        None => None,
        Some([]) => {
            return Err(format!(
                "{key_path}.models: the list is empty, so no model could be called; list the \
                 allowed models, or use \"*\" to allow every model"
            ))
        }
        Some(names) => {
            if let Some(index) = names.iter().position(|name| name.trim().is_empty()) {
                return Err(format!(
                    "{key_path}.models[{index}]: the model name is empty"
                ));
            }
            Some(ModelList(names.to_vec()))
        }
    };

    let system_prompt = match parts.system_prompt {
        None => None,
        Some((action_text, content)) => {
            let key = format!("{key_path}.system_prompt");
            let action = SystemPromptAction::parse(action_text).ok_or_else(|| {
                format!(
                    "{key}.action: invalid value \"{action_text}\": use remove, overwrite, \
                     append or prepend"
                )
            })?;
            let content = match (action, content) {
                (SystemPromptAction::Remove, None) => String::new(),
                (SystemPromptAction::Remove, Some(_)) => {
                    return Err(format!(
                        "{key}.content: remove takes no content; delete the content setting"
                    ))
                }
                (_, Some(text)) if !text.trim().is_empty() => text.to_string(),
                (_, _) => {
                    return Err(format!(
                        "{key}.content is missing or empty: {action_text} needs the text to put \
                         in the system prompt"
                    ))
                }
            };
            Some(SystemPrompt { action, content })
        }
    };

    Ok(Policies {
        models,
        max_input_tokens: parts.max_input_tokens,
        max_output_tokens: parts.max_output_tokens,
        system_prompt,
        requests_per_minute: parts.requests_per_minute,
        max_concurrent_requests: parts.max_concurrent_requests,
    })
}

/// Drops limits set to 0, which mean "no limit", once overrides are merged.
fn without_zero_limits(mut policies: Policies) -> Policies {
    policies.max_input_tokens = policies.max_input_tokens.filter(|&limit| limit > 0);
    policies.max_output_tokens = policies.max_output_tokens.filter(|&limit| limit > 0);
    policies.requests_per_minute = policies.requests_per_minute.filter(|&limit| limit > 0);
    policies.max_concurrent_requests = policies.max_concurrent_requests.filter(|&limit| limit > 0);
    policies
}

/// Resolves a secret given inline (with `${VAR}` expansion) or in a file.
fn resolve_secret(
    inline: Option<&str>,
    file: Option<&str>,
    key_path: &str,
    file_key_path: &str,
) -> Result<Secret, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "{key_path} and {file_key_path} are both set: keep only one"
        )),
        (Some(value), None) => {
            values::reject_placeholder(value, key_path)?;
            let expanded = values::expand_env(value, key_path)?;
            if expanded.trim().is_empty() {
                return Err(format!("{key_path}: the key is empty"));
            }
            Ok(Secret::new(expanded))
        }
        (None, Some(path)) => {
            let path = values::expand_env(path, file_key_path)?;
            values::read_secret_file(&path, file_key_path).map(Secret::new)
        }
        (None, None) => Err(format!(
            "{key_path} is missing: set it to the provider key, for example ${{OPENAI_API_KEY}}, \
             or set {file_key_path} to a file that contains it"
        )),
    }
}

/// Resolves a secret that may be left out entirely.
fn resolve_optional_secret(
    inline: Option<&str>,
    file: Option<&str>,
    key_path: &str,
    file_key_path: &str,
) -> Result<Option<Secret>, String> {
    if inline.is_none() && file.is_none() {
        return Ok(None);
    }
    resolve_secret(inline, file, key_path, file_key_path).map(Some)
}

/// Deserializes with the key path of any error, such as
/// `users[1].tokens: invalid type: string "lots", expected u64`.
fn deserialize_with_path<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_yaml starts some messages with the path of the enclosing
        // map; the full path replaces it.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => {
                rest.to_string()
            }
            _ => message,
        };
        if path == "." {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

#[cfg(test)]
mod tests;
