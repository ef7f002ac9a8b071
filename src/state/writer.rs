//! The writer: applies queued charges and usage rows to the database in one
//! transaction, then reads the window totals back into memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{error, info, warn};

use super::database::{Database, WindowCharge};
use super::metrics;
use super::queue::Entry;
use super::store::Shared;
use crate::budget::Window;
use crate::keys::UserId;

pub(super) struct Writer {
    path: PathBuf,
    /// `None` until opened, and again after the connection failed.
    database: Option<Database>,
    shared: Arc<Shared>,
    /// Entries of a batch whose transaction failed, written first next time.
    retry: Vec<Entry>,
    /// Queue overflow count already logged.
    overflow_logged: u64,
}

impl Writer {
    pub fn new(path: &Path, shared: Arc<Shared>) -> Self {
        metrics::register();
        Writer {
            path: path.to_path_buf(),
            database: None,
            shared,
            retry: Vec::new(),
            overflow_logged: 0,
        }
    }

    /// Writes everything queued since the last flush, then refreshes the
    /// in-memory `used` of every user from the database. A failed write is
    /// logged and its entries are kept for the next flush.
    pub fn flush(&mut self) {
        self.log_overflow();

        let mut entries = std::mem::take(&mut self.retry);
        entries.append(&mut self.shared.queue.take());

        if self.database.is_none() {
            match Database::open(&self.path) {
                Ok(database) => self.database = Some(database),
                Err(message) => {
                    error!(
                        "state writer: {message}; keeping {} entries in memory and trying \
                         again at the next flush",
                        entries.len()
                    );
                    *self.shared.write_error.lock() = Some(message);
                    metrics::record_flush(false);
                    self.retry = entries;
                    return;
                }
            }
        }

        let charged = sum_charges(&entries);
        if let Err(e) = self.write(&entries, &charged) {
            error!(
                "state writer: writing {} entries to {} failed: {e}; trying again at the next \
                 flush",
                entries.len(),
                self.path.display()
            );
            *self.shared.write_error.lock() = Some(format!(
                "writing to the state database {} failed: {e}",
                self.path.display()
            ));
            metrics::record_flush(false);
            self.retry = entries;
            self.database = None;
            return;
        }
        *self.shared.write_error.lock() = None;
        metrics::record_flush(true);
        self.read_back(&charged);
    }

    /// Writes the last entries and copies the WAL into the main file.
    pub fn finish(&mut self) {
        if !self.retry.is_empty() {
            self.flush();
        }
        if !self.retry.is_empty() {
            error!(
                "state writer: {} charges and usage rows could not be written to {} before \
                 exit and are lost",
                self.retry.len(),
                self.path.display()
            );
        }
        if let Some(database) = &self.database {
            if let Err(e) = database.checkpoint() {
                warn!(
                    "state writer: checkpoint of {} failed: {e}; the WAL file keeps the data",
                    self.path.display()
                );
            }
        }
        info!(
            "state writer: all accounting written to {}",
            self.path.display()
        );
    }

    fn write(
        &mut self,
        entries: &[Entry],
        charged: &HashMap<(UserId, Window), u64>,
    ) -> rusqlite::Result<()> {
        let Some(database) = self.database.as_mut() else {
            return Ok(());
        };
        if entries.is_empty() {
            return Ok(());
        }
        let names = &self.shared.names;
        let charges: Vec<WindowCharge<'_>> = charged
            .iter()
            .map(|(&(user, window), &tokens)| WindowCharge {
                user: &names[user],
                window,
                tokens,
            })
            .collect();
        let records = entries.iter().filter_map(|entry| match entry {
            Entry::Record(record) => Some((names[record.user].as_str(), record)),
            Entry::Charge { .. } => None,
        });
        database.write_batch(&charges, records)
    }

    /// Marks the written charges as stored and sets each user's `used` to
    /// the database total plus the charges still unwritten. The total
    /// includes charges of any other process writing the same file.
    fn read_back(&self, charged: &HashMap<(UserId, Window), u64>) {
        let now_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let totals = self
            .database
            .as_ref()
            .map(|database| database.current_windows(now_seconds));
        let totals: Option<HashMap<(&str, Window), u64>> = match &totals {
            Some(Ok(rows)) => Some(
                rows.iter()
                    .map(|row| ((row.user.as_str(), row.window), row.used))
                    .collect(),
            ),
            Some(Err(e)) => {
                warn!("state writer: reading the window totals back failed: {e}");
                None
            }
            None => None,
        };

        for (user, counters) in self.shared.users.iter().enumerate() {
            let mut state = counters.lock();
            let window = state.counters.window;
            if let Some(written) = charged.get(&(user, window)) {
                state.unflushed = state.unflushed.saturating_sub(*written);
            }
            // A window that has ended is rolled over at its next use anyway.
            if let Some(totals) = &totals {
                if window.end > now_seconds {
                    let stored = totals
                        .get(&(self.shared.names[user].as_str(), window))
                        .copied()
                        .unwrap_or(0);
                    state.counters.used = stored.saturating_add(state.unflushed);
                }
            }
        }
    }

    fn log_overflow(&mut self) {
        let overflowed = self.shared.queue.overflowed();
        if overflowed > self.overflow_logged {
            warn!(
                "state writer: {} entries arrived while the write queue was full; they are kept \
                 in memory and written late, because the database is slower than the request \
                 rate",
                overflowed - self.overflow_logged
            );
            metrics::record_overflow(overflowed - self.overflow_logged);
            self.overflow_logged = overflowed;
        }
    }
}

/// Adds up the charges per user and window.
fn sum_charges(entries: &[Entry]) -> HashMap<(UserId, Window), u64> {
    let mut charged = HashMap::new();
    for entry in entries {
        if let Entry::Charge {
            user,
            window,
            tokens,
        } = entry
        {
            let sum: &mut u64 = charged.entry((*user, *window)).or_default();
            *sum = sum.saturating_add(*tokens);
        }
    }
    charged
}
