//! Value types shared by both file formats: durations, secrets and
//! `${VAR}` expansion.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as whole seconds (`3600`) or with a unit suffix
/// (`"90s"`, `"30m"`, `"1h"`, `"7d"`, `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration: whole seconds or a string such as \"30s\", \"5m\", \"1h\", \"1d\"",
                )
            }

            fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Self::Value, E> {
                Ok(ConfigDuration(Duration::from_secs(seconds)))
            }

            fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Self::Value, E> {
                u64::try_from(seconds)
                    .map(|s| ConfigDuration(Duration::from_secs(s)))
                    .map_err(|_| {
                        E::custom(format!("invalid duration {seconds}: must not be negative"))
                    })
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text).map(ConfigDuration).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"` or a bare number of
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        format!(
            "invalid duration \"{text}\": use whole seconds or a number with one of the units \
             ms, s, m, h, d (for example \"30s\" or \"1h\")"
        )
    };

    let value: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit: u64 = match unit.trim() {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

/// A secret value whose `Debug` and `Display` never show the content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Expands every `${VAR}` in `value` from the environment, and
/// `${VAR:-default}` to `default` when `VAR` is unset or empty.
///
/// `key_path` names the setting in errors. `$$` is a literal `$`; a `$` not
/// followed by `{` is kept as it is.
pub fn expand_env(value: &str, key_path: &str) -> Result<String, String> {
    expand_with(value, key_path, |name| std::env::var(name).ok())
}

fn expand_with(
    value: &str,
    key_path: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut expanded = String::with_capacity(value.len());
    let mut rest = value;

    while let Some(start) = rest.find('$') {
        expanded.push_str(&rest[..start]);
        let after = &rest[start + 1..];

        if let Some(tail) = after.strip_prefix('$') {
            expanded.push('$');
            rest = tail;
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            expanded.push('$');
            rest = after;
            continue;
        };
        let Some(end) = inner.find('}') else {
            return Err(format!(
                "{key_path}: unterminated \"${{\" in the value: write ${{NAME}}, or $$ for a literal $"
            ));
        };

        let (name, default) = match inner[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&inner[..end], None),
        };
        let valid_name =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!(
                "{key_path}: invalid environment variable name \"{name}\" in ${{...}}: \
                 use letters, digits and underscores"
            ));
        }
        match (lookup(name).filter(|found| !found.is_empty()), default) {
            (Some(found), _) => expanded.push_str(&found),
            (None, Some(default)) => expanded.push_str(default),
            (None, None) => {
                return Err(format!(
                    "{key_path}: environment variable {name} is not set or empty: export it before \
                     starting tollgate, or put the value in the file"
                ))
            }
        }
        rest = &inner[end + 1..];
    }

    expanded.push_str(rest);
    Ok(expanded)
}

/// Rejects a template placeholder such as `<<Replace with your API_KEY>>`
/// left in a secret.
pub fn reject_placeholder(value: &str, key_path: &str) -> Result<(), String> {
    let trimmed = value.trim();
    if trimmed.starts_with("<<") && trimmed.ends_with(">>") {
        return Err(format!(
            "{key_path} still contains the placeholder \"{trimmed}\": replace it with the real \
             key, for example ${{OPENAI_API_KEY}} to read it from the environment"
        ));
    }
    Ok(())
}

/// Rejects an internal key that an HTTP header cannot carry as it is:
/// anything but printable ASCII without spaces.
pub fn check_key_characters(key: &str, key_path: &str) -> Result<(), String> {
    if key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Ok(());
    }
    Err(format!(
        "{key_path}: the key contains spaces, control characters or non-ASCII characters, \
         which clients cannot send in an HTTP header; use printable ASCII only"
    ))
}

/// Reads a secret from a file, for `*_file` settings and systemd credentials.
/// Surrounding whitespace, such as a trailing newline, is removed.
pub fn read_secret_file(path: &str, key_path: &str) -> Result<String, String> {
    let content = std::fs::read_to_string(path)
        .map_err(|e| format!("{key_path}: cannot read the file \"{path}\": {e}"))?;
    let secret = content.trim().to_string();
    if secret.is_empty() {
        return Err(format!("{key_path}: the file \"{path}\" is empty"));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_units() {
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn duration_rejects_bad_text() {
        for text in ["", "h", "1x", "-5s", "1.5h", "99999999999999999999d"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("invalid duration"), "{text}: {error}");
        }
    }

    #[test]
    fn expansion_replaces_variables() {
        let lookup = |name: &str| (name == "KEY").then(|| "sk-test".to_string());
        assert_eq!(expand_with("${KEY}", "k", lookup), Ok("sk-test".into()));
        assert_eq!(
            expand_with("Bearer ${KEY}!", "k", lookup),
            Ok("Bearer sk-test!".into())
        );
        assert_eq!(expand_with("a$$b$c", "k", lookup), Ok("a$b$c".into()));
        assert_eq!(expand_with("${KEY:-x}", "k", lookup), Ok("sk-test".into()));
        assert_eq!(expand_with("${NOPE:-mock}", "k", lookup), Ok("mock".into()));
    }

    #[test]
    fn expansion_errors_name_the_variable() {
        let lookup = |_: &str| None;
        let missing = expand_with("${NOPE}", "upstream.api_key", lookup).unwrap_err();
        assert!(missing.contains("upstream.api_key"));
        assert!(missing.contains("NOPE is not set"));
        assert!(expand_with("${OPEN", "k", lookup)
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_with("${A-B}", "k", lookup)
            .unwrap_err()
            .contains("invalid environment variable name"));
    }

    #[test]
    fn placeholder_is_rejected() {
        let error = reject_placeholder("<<Replace with your API_KEY>>", "apiKey").unwrap_err();
        assert!(error.contains("apiKey still contains the placeholder"));
        assert!(reject_placeholder("sk-real", "apiKey").is_ok());
    }

    #[test]
    fn key_characters_must_fit_a_header() {
        assert!(check_key_characters("sk-abc_123.XYZ", "k").is_ok());
        for key in ["schlüssel", "two words", "tab\tkey"] {
            let error = check_key_characters(key, "users[0].api_key").unwrap_err();
            assert!(error.starts_with("users[0].api_key"), "{error}");
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("sk-canary".into());
        assert!(!format!("{secret:?}").contains("canary"));
    }
}
