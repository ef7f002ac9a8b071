//! Configuration: the runtime model the gateway runs on, and loading it from
//! either file format (the native YAML or the Membrane `llmGateway` shape).

mod file;
mod membrane;
pub mod values;

use std::path::Path;
use std::time::Duration;

use crate::keys::KeyDigest;
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
    pub users: Vec<User>,
    pub server: ServerSettings,
}

/// The provider the gateway forwards to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: UpstreamUrl,
    /// The provider key sent upstream in place of the client's credentials.
    pub api_key: Secret,
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest gap between two reads from the upstream, such as between two
    /// events of a stream.
    pub read_timeout: Duration,
    /// Deadline for the whole exchange, from admission to the last byte.
    pub request_timeout: Duration,
    /// How long an idle pooled connection is kept for reuse.
    pub pool_idle_timeout: Duration,
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

    /// The value of the `Host` header: the port is left out when it is the
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
}

/// Process settings handed to Pingora.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub error_log: Option<String>,
    /// Time between SIGTERM and the start of the shutdown, during which the
    /// listeners stay open.
    pub grace_period: Duration,
    /// Time the runtimes get to finish in-flight requests after the grace
    /// period.
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

/// Which file shape a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Native,
    Membrane,
}

impl Config {
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
        Ok(())
    }
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

/// Deserializes with the key path of any error, such as
/// `users[1].tokens: invalid type: string "lots", expected u64`.
fn deserialize_with_path<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_yaml names the path itself for some errors.
        if path == "." || message.starts_with(&path) {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

#[cfg(test)]
mod tests;
