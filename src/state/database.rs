//! The state database file: opening and checking it, its schema, and the
//! statements the writer and the usage report run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::UsageRecord;
use crate::budget::Window;

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for a lock held by another connection, such
/// as the other process during a graceful upgrade.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS window_counters (
    user TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (user, window_start, window_end)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS window_counters_end ON window_counters (window_end);
CREATE TABLE IF NOT EXISTS usage_log (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    model TEXT,
    route TEXT NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    reasoning_tokens INTEGER,
    total_tokens INTEGER NOT NULL,
    usage_source TEXT,
    status INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_log_time ON usage_log (time_ms);
";

/// A user's tokens used in one window, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTotal {
    pub user: String,
    pub window: Window,
    pub used: u64,
}

/// A charge to add to a user's window counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCharge<'a> {
    pub user: &'a str,
    pub window: Window,
    pub tokens: u64,
}

/// An open connection to the state database.
pub struct Database {
    connection: Connection,
    path: PathBuf,
}

impl Database {
    /// Opens the database for the gateway, creating the file and its parent
    /// directory when missing, in WAL mode with the current schema.
    ///
    /// A file that is not a tollgate state database, is damaged or cannot be
    /// opened for writing is an error that names the file and the fix; it is
    /// never replaced.
    pub fn open(path: &Path) -> Result<Database, String> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                format!(
                    "cannot create the directory {} for the state database: {e}; create it and \
                     give the tollgate user write access, or set state.path",
                    parent.display()
                )
            })?;
        }

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection =
            Connection::open_with_flags(path, flags).map_err(|e| unusable(path, &e))?;
        let database = Database {
            connection,
            path: path.to_path_buf(),
        };
        database
            .prepare_for_writing()
            .map_err(|e| unusable(path, &e))?;
        database.check_version()?;
        Ok(database)
    }

    /// Opens an existing database read-only, for reports taken while the
    /// gateway runs.
    pub fn open_read_only(path: &Path) -> Result<Database, String> {
        if !path.exists() {
            return Err(format!(
                "the state database {} does not exist; the gateway creates it when it starts \
                 with this configuration",
                path.display()
            ));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection =
            Connection::open_with_flags(path, flags).map_err(|e| unusable(path, &e))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| unusable(path, &e))?;
        let database = Database {
            connection,
            path: path.to_path_buf(),
        };
        database.check_version()?;
        Ok(database)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn connection(&self) -> &Connection {
        &self.connection
    }

    fn prepare_for_writing(&self) -> rusqlite::Result<()> {
        self.connection.busy_timeout(BUSY_TIMEOUT)?;
        // Reading the journal mode is the first access to the file, so a
        // file that is not a database fails here.
        let mode: String = self
            .connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal mode {mode} instead of WAL"
            )));
        }
        // In WAL mode, NORMAL syncs at checkpoints only: a power loss may
        // lose the last transactions, but a crash of the process does not.
        self.connection
            .pragma_update(None, "synchronous", "NORMAL")?;

        let version: i64 = self
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version == 0 {
            self.connection.execute_batch(SCHEMA)?;
            self.connection
                .pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(())
    }

    fn check_version(&self) -> Result<(), String> {
        let version: i64 = self
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| unusable(&self.path, &e))?;
        if version != SCHEMA_VERSION {
            return Err(format!(
                "the state database {} has schema version {version}, and this tollgate reads \
                 version {SCHEMA_VERSION}; run the tollgate version that wrote it, or set \
                 state.path to another file",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Returns every counter of a window that has not ended at `now_seconds`
    /// (seconds since the Unix epoch).
    pub fn current_windows(&self, now_seconds: u64) -> rusqlite::Result<Vec<WindowTotal>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT user, window_start, window_end, used FROM window_counters \
             WHERE window_end > ?1",
        )?;
        let rows = statement.query_map(params![to_sql(now_seconds)], |row| {
            Ok(WindowTotal {
                user: row.get(0)?,
                window: Window {
                    start: from_sql(row.get(1)?),
                    end: from_sql(row.get(2)?),
                },
                used: from_sql(row.get(3)?),
            })
        })?;
        rows.collect()
    }

    /// Adds the charges to their window counters and appends the usage rows,
    /// in one transaction: either all of them are stored or none.
    pub fn write_batch<'a>(
        &mut self,
        charges: &[WindowCharge<'_>],
        records: impl Iterator<Item = (&'a str, &'a UsageRecord)>,
    ) -> rusqlite::Result<()> {
        let transaction = self.connection.transaction()?;
        {
            let mut add = transaction.prepare_cached(
                "INSERT INTO window_counters (user, window_start, window_end, used) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (user, window_start, window_end) \
                 DO UPDATE SET used = used + excluded.used",
            )?;
            for charge in charges {
                add.execute(params![
                    charge.user,
                    to_sql(charge.window.start),
                    to_sql(charge.window.end),
                    to_sql(charge.tokens),
                ])?;
            }

            let mut append = transaction.prepare_cached(
                "INSERT INTO usage_log (time_ms, request_id, user, model, route, input_tokens, \
                 output_tokens, cached_tokens, reasoning_tokens, total_tokens, usage_source, \
                 status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for (user, record) in records {
                append.execute(params![
                    record.time_ms,
                    record.request_id,
                    user,
                    record.model,
                    record.route,
                    record.input_tokens.map(to_sql),
                    record.output_tokens.map(to_sql),
                    record.cached_tokens.map(to_sql),
                    record.reasoning_tokens.map(to_sql),
                    to_sql(record.total_tokens),
                    record.usage_source,
                    record.status,
                ])?;
            }
        }
        transaction.commit()
    }

    /// Copies everything written to the WAL back into the main file, so the
    /// file alone holds the state after a clean shutdown.
    pub fn checkpoint(&self) -> rusqlite::Result<()> {
        self.connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    }
}

/// The error for a database file that cannot be used, with the fix.
fn unusable(path: &Path, error: &rusqlite::Error) -> String {
    format!(
        "cannot use the state database {}: {error}. tollgate does not replace it: if the file \
         is damaged or not a tollgate database, restore it from a backup or move it away (a new \
         file starts every budget at zero); if access is denied, give the tollgate user read and \
         write access to the file and its directory",
        path.display()
    )
}

/// Token counts and seconds are stored as SQLite's signed 64-bit integers.
pub(super) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: crate::keys::UserId, total_tokens: u64) -> UsageRecord {
        UsageRecord {
            time_ms: 1_000,
            request_id: "req-1".to_string(),
            user,
            model: Some("gpt-4o-mini".to_string()),
            route: "chat_completions",
            input_tokens: Some(10),
            output_tokens: Some(5),
            cached_tokens: Some(0),
            reasoning_tokens: None,
            total_tokens,
            usage_source: Some("reported"),
            status: 200,
        }
    }

    #[test]
    fn charges_add_up_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut database = Database::open(&dir.path().join("state.db")).unwrap();
        let window = Window {
            start: 3_600,
            end: 7_200,
        };
        let charge = WindowCharge {
            user: "alice",
            window,
            tokens: 40,
        };
        database
            .write_batch(std::slice::from_ref(&charge), std::iter::empty())
            .unwrap();
        let row = record(0, 15);
        database
            .write_batch(&[charge], std::iter::once(("alice", &row)))
            .unwrap();

        let totals = database.current_windows(3_700).unwrap();
        assert_eq!(
            totals,
            vec![WindowTotal {
                user: "alice".to_string(),
                window,
                used: 80
            }]
        );
        assert!(database.current_windows(7_200).unwrap().is_empty());

        let logged: i64 = database
            .connection()
            .query_row("SELECT count(*) FROM usage_log", [], |row| row.get(0))
            .unwrap();
        assert_eq!(logged, 1);
    }

    #[test]
    fn garbage_file_is_rejected_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let garbage = vec![0x5a_u8; 8_192];
        std::fs::write(&path, &garbage).unwrap();

        let error = Database::open(&path).err().expect("garbage must not open");
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("restore it from a backup"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }

    #[test]
    fn newer_schema_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Database::open(&path)
            .unwrap()
            .connection()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = Database::open(&path).err().expect("version 99 must fail");
        assert!(error.contains("schema version 99"), "{error}");
    }
}
