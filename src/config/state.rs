//! The `state:` section: where budget counters and the usage log are kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{self, ConfigDuration};

/// The database file used when `state.path` is not set: `tollgate.db` in
/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else in
/// `/var/lib/tollgate`.
pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/tollgate";

/// Time between two writes of the state database.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Where window counters and the usage log live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// A SQLite database file, kept across restarts.
    Sqlite { path: PathBuf },
    /// Process memory only: a restart starts every budget at zero and no
    /// usage log is kept.
    Memory,
}

/// The validated `state:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    pub store: StoreKind,
    /// Longest time a charge or usage row waits in memory before it is
    /// written; also how often counters written by another process (during a
    /// graceful upgrade) are read back.
    pub flush_interval: Duration,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            store: StoreKind::Sqlite {
                path: default_path(),
            },
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        }
    }
}

/// `state:` as written in the native format.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct StateFile {
    store: Option<String>,
    path: Option<String>,
    flush_interval: Option<ConfigDuration>,
}

impl StateFile {
    /// Validates the section and fills in the defaults.
    pub(super) fn into_settings(self) -> Result<StateSettings, String> {
        let flush_interval = self
            .flush_interval
            .map_or(DEFAULT_FLUSH_INTERVAL, |interval| interval.0);
        if flush_interval.is_zero() {
            return Err(
                "state.flush_interval: must be longer than 0 seconds, such as 1s".to_string(),
            );
        }

        let store = match self.store.as_deref().unwrap_or("sqlite") {
            "sqlite" => match self.path {
                None => StoreKind::Sqlite {
                    path: default_path(),
                },
                Some(path) => {
                    let path = values::expand_env(&path, "state.path")?;
                    if path.trim().is_empty() {
                        return Err("state.path: the path is empty; set a database file such \
                                    as /var/lib/tollgate/tollgate.db, or leave it out for the \
                                    default"
                            .to_string());
                    }
                    StoreKind::Sqlite {
                        path: PathBuf::from(path),
                    }
                }
            },
            "memory" => {
                if self.path.is_some() {
                    return Err("state.path: is set but state.store is memory, which keeps \
                                nothing on disk; remove the path or set store: sqlite"
                        .to_string());
                }
                StoreKind::Memory
            }
            other => {
                return Err(format!(
                    "state.store: unknown store \"{other}\"; expected sqlite or memory"
                ))
            }
        };
        Ok(StateSettings {
            store,
            flush_interval,
        })
    }
}

impl StateSettings {
    /// Reads only the `state:` settings of a configuration file of either
    /// format, for tools such as `tollgate usage` that need the database but
    /// not the provider key the rest of the file may take from systemd
    /// credentials.
    pub fn load(path: &Path) -> Result<StateSettings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
        let top: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| format!("{}: invalid YAML: {e}", path.display()))?;
        let section = top
            .as_mapping()
            .and_then(|map| map.get("state"))
            .cloned()
            .unwrap_or_default();
        let file: StateFile = if section.is_null() {
            StateFile::default()
        } else {
            serde_yaml::from_value(section)
                .map_err(|e| format!("{}: state: {e}", path.display()))?
        };
        file.into_settings()
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// `tollgate.db` in `$STATE_DIRECTORY` when systemd set it, else in
/// [`DEFAULT_STATE_DIRECTORY`].
fn default_path() -> PathBuf {
    // systemd may pass several directories separated by colons; the first one
    // is the unit's own.
    let directory = std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|dirs| dirs.split(':').next().map(str::to_string))
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| DEFAULT_STATE_DIRECTORY.to_string());
    PathBuf::from(directory).join("tollgate.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<StateSettings, String> {
        let file: StateFile = serde_yaml::from_str(yaml).expect("state YAML");
        file.into_settings()
    }

    #[test]
    fn sqlite_is_the_default_store() {
        let settings = parse("{}").unwrap();
        assert!(matches!(settings.store, StoreKind::Sqlite { .. }));
        assert_eq!(settings.flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn explicit_path_and_interval_are_kept() {
        let settings = parse("{store: sqlite, path: /tmp/x.db, flush_interval: 250ms}").unwrap();
        assert_eq!(
            settings.store,
            StoreKind::Sqlite {
                path: PathBuf::from("/tmp/x.db")
            }
        );
        assert_eq!(settings.flush_interval, Duration::from_millis(250));
    }

    #[test]
    fn memory_store_rejects_a_path() {
        let error = parse("{store: memory, path: /tmp/x.db}").unwrap_err();
        assert!(error.starts_with("state.path:"), "{error}");
        assert_eq!(parse("{store: memory}").unwrap().store, StoreKind::Memory);
    }

    #[test]
    fn unknown_store_and_zero_interval_are_rejected() {
        let error = parse("{store: redis}").unwrap_err();
        assert!(error.contains("\"redis\""), "{error}");
        let error = parse("{flush_interval: 0s}").unwrap_err();
        assert!(error.starts_with("state.flush_interval:"), "{error}");
        let error = parse("{path: \"\"}").unwrap_err();
        assert!(error.starts_with("state.path:"), "{error}");
    }
}
