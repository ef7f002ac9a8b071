//! Settings for operating the gateway: the admin listener and logging.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{resolve_optional_secret, Secret};

/// Default admin listener: loopback only, so no token is needed.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// The admin listener that serves `/metrics`, `/healthz`, `/readyz` and
/// `/admin/usage`.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Address such as `127.0.0.1:9464`.
    pub listen: String,
    /// Bearer token required on `/metrics` and `/admin/usage`. It is
    /// mandatory when `listen` is not a loopback address.
    pub token: Option<Secret>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: DEFAULT_ADMIN_LISTEN.to_string(),
            token: None,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Maximum level of the diagnostic log on stderr, unless `RUST_LOG` is
    /// set: `off`, `error`, `warn`, `info`, `debug` or `trace`.
    pub level: log::LevelFilter,
    pub access_log: AccessLogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: log::LevelFilter::Info,
            access_log: AccessLogFormat::Json,
        }
    }
}

/// Format of the access log on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per request and line.
    Json,
    /// No access log.
    Off,
}

/// The `log:` section of the native format.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LogFile {
    level: Option<String>,
    access_log: Option<AccessLogFormat>,
}

/// Builds the admin settings from the native format's top-level keys.
pub(super) fn admin_from_file(
    listen: Option<String>,
    token: Option<&str>,
    token_file: Option<&str>,
) -> Result<AdminSettings, String> {
    Ok(AdminSettings {
        listen: listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string()),
        token: resolve_optional_secret(token, token_file, "admin_token", "admin_token_file")?,
    })
}

/// Builds the log settings from the native format's `log:` section.
pub(super) fn log_from_file(file: &LogFile) -> Result<LogSettings, String> {
    let default = LogSettings::default();
    let level = match &file.level {
        None => default.level,
        Some(text) => text.parse().map_err(|_| {
            format!(
                "log.level: invalid level \"{text}\": expected off, error, warn, info, debug \
                 or trace"
            )
        })?,
    };
    Ok(LogSettings {
        level,
        access_log: file.access_log.unwrap_or(default.access_log),
    })
}

impl AdminSettings {
    /// Checks the address, that it differs from every API listener, and that
    /// a token protects a listener reachable from other hosts.
    pub(super) fn validate(&self, api_listen: &[String]) -> Result<(), String> {
        let address: SocketAddr = self.listen.parse().map_err(|_| {
            format!(
                "admin_listen: invalid address \"{}\": expected IP:PORT such as {}",
                self.listen, DEFAULT_ADMIN_LISTEN
            )
        })?;

        if api_listen
            .iter()
            .filter_map(|api| api.parse::<SocketAddr>().ok())
            .any(|api| api.port() == address.port() && overlaps(api, address))
        {
            return Err(format!(
                "admin_listen: {} is also an API listener address in listen; give each \
                 listener its own port, for example admin_listen: {}:{}",
                self.listen,
                address.ip(),
                address.port().wrapping_add(1)
            ));
        }

        if !address.ip().is_loopback() && self.token.is_none() {
            return Err(format!(
                "admin_listen: {} is reachable from other hosts, so admin_token (or \
                 admin_token_file) is required; set one, or listen on {}",
                self.listen, DEFAULT_ADMIN_LISTEN
            ));
        }
        Ok(())
    }
}

/// Returns whether two listeners on one port would bind overlapping
/// addresses.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const BASE: &str = "listen: 127.0.0.1:2000\nupstream:\n  url: http://127.0.0.1:8081\n  \
                        api_key: sk-test\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}")).map(|(config, _)| config)
    }

    #[test]
    fn defaults_are_loopback_and_json() {
        let config = parse("").unwrap();
        assert_eq!(config.admin.listen, DEFAULT_ADMIN_LISTEN);
        assert!(config.admin.token.is_none());
        assert_eq!(config.log, LogSettings::default());
    }

    #[test]
    fn log_section_is_read() {
        let config = parse("log:\n  level: debug\n  access_log: off\n").unwrap();
        assert_eq!(config.log.level, log::LevelFilter::Debug);
        assert_eq!(config.log.access_log, AccessLogFormat::Off);
    }

    #[test]
    fn invalid_log_level_names_choices() {
        let error = parse("log:\n  level: loud\n").unwrap_err();
        assert!(
            error.contains("log.level: invalid level \"loud\""),
            "{error}"
        );
        assert!(error.contains("trace"), "{error}");
    }

    #[test]
    fn invalid_access_log_format_is_rejected() {
        let error = parse("log:\n  access_log: text\n").unwrap_err();
        assert!(error.contains("log.access_log"), "{error}");
    }

    #[test]
    fn open_admin_listener_needs_token() {
        let error = parse("admin_listen: 0.0.0.0:9464\n").unwrap_err();
        assert!(error.contains("admin_listen: 0.0.0.0:9464"), "{error}");
        assert!(error.contains("admin_token"), "{error}");

        let config = parse("admin_listen: 0.0.0.0:9464\nadmin_token: t0ken\n").unwrap();
        assert_eq!(config.admin.token.unwrap().expose(), "t0ken");
    }

    #[test]
    fn admin_listener_needs_own_port() {
        let error = parse("admin_listen: 127.0.0.1:2000\n").unwrap_err();
        assert!(error.contains("also an API listener"), "{error}");
        assert!(parse("admin_listen: 127.0.0.1:2001\n").is_ok());
    }

    #[test]
    fn invalid_admin_address_is_named() {
        let error = parse("admin_listen: localhost\n").unwrap_err();
        assert!(
            error.contains("admin_listen: invalid address \"localhost\""),
            "{error}"
        );
    }

    #[test]
    fn empty_admin_token_is_rejected() {
        let error = parse("admin_token: \"\"\n").unwrap_err();
        assert!(error.contains("admin_token"), "{error}");
    }
}
