//! [`SqliteStore`]: budget counters in memory, made durable by the writer
//! thread, and [`StateWriter`], which runs that thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use log::{error, info};
use parking_lot::{Condvar, Mutex};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::database::Database;
use super::queue::{Entry, WriteQueue, QUEUE_CAPACITY};
use super::writer::Writer;
use super::UsageRecord;
use crate::budget::{
    Admission, BudgetStatus, BudgetStore, Counters, Reservation, ReserveRequest, UserBudget, Window,
};
use crate::config::User;
use crate::keys::UserId;

/// One user's counters and the part of `used` not yet written.
pub(super) struct UserCounters {
    pub counters: Counters,
    /// Tokens charged in `counters.window` that are queued or being written,
    /// so not yet in the database.
    pub unflushed: u64,
}

impl UserCounters {
    fn roll(&mut self, budget: UserBudget, now: SystemTime) {
        let before = self.counters.window;
        self.counters.roll(budget, now);
        if self.counters.window != before {
            self.unflushed = 0;
        }
    }
}

/// State shared by the store and the writer thread.
pub(super) struct Shared {
    pub users: Vec<Mutex<UserCounters>>,
    /// User names, the key of counters and usage rows in the database.
    pub names: Vec<String>,
    pub queue: WriteQueue,
    /// Why the last flush failed; `None` after a successful one.
    pub write_error: Mutex<Option<String>>,
}

/// Budget counters kept in memory and written to a SQLite database behind
/// the request path.
///
/// `used` is the database total read back at the last flush plus this
/// process's charges since then. `reserved` belongs to this process only and
/// is not stored, so a crash releases it.
pub struct SqliteStore {
    shared: Arc<Shared>,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, checks it and loads the
    /// counters of every user's current window. Returns the store and the
    /// writer service that must run beside it.
    ///
    /// The connection is closed again before returning: the writer opens its
    /// own once the server has started, because a SQLite connection must not
    /// cross the fork of `--daemon`.
    pub fn open(
        path: PathBuf,
        flush_interval: Duration,
        users: &[User],
        now: SystemTime,
    ) -> Result<(SqliteStore, StateWriter), String> {
        let database = Database::open(&path)?;
        let now_seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let stored = database.current_windows(now_seconds).map_err(|e| {
            format!(
                "cannot read the budget counters from the state database {}: {e}",
                path.display()
            )
        })?;
        drop(database);

        let users_counters = users
            .iter()
            .map(|user| {
                let window = Window::containing(now, user.reset_period);
                let used = stored
                    .iter()
                    .find(|total| total.user == user.name && total.window == window)
                    .map_or(0, |total| total.used);
                Mutex::new(UserCounters {
                    counters: Counters {
                        window,
                        used,
                        reserved: 0,
                    },
                    unflushed: 0,
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            users: users_counters,
            names: users.iter().map(|user| user.name.clone()).collect(),
            queue: WriteQueue::new(QUEUE_CAPACITY),
            write_error: Mutex::new(None),
        });
        info!(
            "state database {}: loaded {} counters of current windows",
            path.display(),
            stored.len()
        );

        let writer = StateWriter {
            control: Arc::new(Control {
                shared: shared.clone(),
                path,
                flush_interval,
                stop: Mutex::new(false),
                wake: Condvar::new(),
                thread: Mutex::new(None),
            }),
        };
        Ok((SqliteStore { shared }, writer))
    }

    fn counters(&self, user: UserId) -> &Mutex<UserCounters> {
        // User ids come from the key ring built from the same user list.
        &self.shared.users[user]
    }
}

#[async_trait]
impl BudgetStore for SqliteStore {
    async fn reserve(
        &self,
        user: UserId,
        budget: UserBudget,
        request: ReserveRequest,
        now: SystemTime,
    ) -> Admission {
        let mut state = self.counters(user).lock();
        state.roll(budget, now);
        state.counters.reserve(user, budget, request)
    }

    async fn settle(
        &self,
        reservation: Reservation,
        budget: UserBudget,
        charged: u64,
        now: SystemTime,
    ) -> BudgetStatus {
        let (status, window) = {
            let mut state = self.counters(reservation.user).lock();
            state.roll(budget, now);
            state.counters.settle(reservation, charged);
            state.unflushed = state.unflushed.saturating_add(charged);
            (state.counters.status(budget), state.counters.window)
        };
        if charged > 0 {
            self.shared.queue.push(Entry::Charge {
                user: reservation.user,
                window,
                tokens: charged,
            });
        }
        status
    }

    async fn status(&self, user: UserId, budget: UserBudget, now: SystemTime) -> BudgetStatus {
        let mut state = self.counters(user).lock();
        state.roll(budget, now);
        state.counters.status(budget)
    }

    /// Fails while the database cannot be written, so `/readyz` shows that
    /// charges pile up in memory.
    async fn check(&self) -> Result<(), String> {
        match &*self.shared.write_error.lock() {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn record(&self, record: UsageRecord) {
        self.shared.queue.push(Entry::Record(record));
    }
}

/// The writer thread's settings and its stop signal.
struct Control {
    shared: Arc<Shared>,
    path: PathBuf,
    flush_interval: Duration,
    /// Set once, when the process is about to exit.
    stop: Mutex<bool>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Runs the writer thread: a Pingora background service starts it, and
/// [`StateWriter::shutdown`] makes it write everything left and stop.
#[derive(Clone)]
pub struct StateWriter {
    control: Arc<Control>,
}

impl StateWriter {
    /// Starts the writer thread unless it runs already.
    fn start_thread(&self) {
        let mut thread = self.control.thread.lock();
        if thread.is_some() {
            return;
        }
        let control = self.control.clone();
        let spawned = std::thread::Builder::new()
            .name("tollgate state writer".to_string())
            .spawn(move || write_until_stopped(&control));
        match spawned {
            Ok(handle) => *thread = Some(handle),
            Err(e) => error!("failed to start the state writer thread: {e}"),
        }
    }

    /// Writes every queued charge and usage row, then stops the writer. Runs
    /// once, after the server's runtimes have exited, so no request can
    /// queue anything afterwards.
    pub fn shutdown(&self) {
        *self.control.stop.lock() = true;
        self.control.wake.notify_all();

        let thread = self.control.thread.lock().take();
        match thread {
            Some(handle) => {
                if handle.join().is_err() {
                    error!("the state writer thread panicked; queued usage may be lost");
                }
            }
            // The server stopped before the writer started: write here.
            None => write_until_stopped(&self.control),
        }
    }
}

#[async_trait]
impl BackgroundService for StateWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Started here rather than before the server runs, so the thread
        // exists in the process that serves even after `--daemon` forks.
        self.start_thread();

        // The final flush must wait until the runtimes have finished their
        // requests, which is after this service stops, so `shutdown` runs it.
        let _ = shutdown.changed().await;
    }
}

/// Runs the writer thread: one flush per interval until stopped, then a
/// last flush and a checkpoint.
fn write_until_stopped(control: &Control) {
    let mut writer = Writer::new(&control.path, control.shared.clone());
    loop {
        let stopping = {
            let mut stop = control.stop.lock();
            if !*stop {
                control.wake.wait_for(&mut stop, control.flush_interval);
            }
            *stop
        };

        writer.flush();
        if stopping {
            writer.finish();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOURLY: UserBudget = UserBudget {
        limit: Some(10_000),
        period: Duration::from_secs(3_600),
    };

    fn users() -> Vec<User> {
        let config = "upstream: {url: 'http://127.0.0.1:9', api_key: k}\n\
                      users: [{name: alice, api_key: alice-key}]";
        crate::config::Config::parse(config)
            .expect("test config")
            .0
            .users
    }

    async fn charge(store: &SqliteStore, tokens: u64, now: SystemTime) {
        let request = ReserveRequest {
            input_tokens: 1,
            max_output_tokens: 10,
        };
        let Admission::Admitted(reservation, _) = store.reserve(0, HOURLY, request, now).await
        else {
            panic!("expected admission");
        };
        store.settle(reservation, HOURLY, tokens, now).await;
    }

    #[tokio::test]
    async fn two_processes_see_each_others_charges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let now = SystemTime::now();
        let (old, old_writer) = SqliteStore::open(path.clone(), HOURLY.period, &users(), now)
            .expect("open the first store");
        charge(&old, 100, now).await;
        let mut old_flush = Writer::new(&path, old_writer.control.shared.clone());
        old_flush.flush();

        // The second store starts from what the first one wrote.
        let (new, new_writer) =
            SqliteStore::open(path.clone(), HOURLY.period, &users(), now).expect("open again");
        assert_eq!(new.status(0, HOURLY, now).await.used, 100);

        charge(&old, 20, now).await;
        charge(&new, 3, now).await;
        let mut new_flush = Writer::new(&path, new_writer.control.shared.clone());
        new_flush.flush();
        assert_eq!(new.status(0, HOURLY, now).await.used, 103);
        old_flush.flush();
        assert_eq!(old.status(0, HOURLY, now).await.used, 123);
        new_flush.flush();
        assert_eq!(new.status(0, HOURLY, now).await.used, 123);
    }

    #[tokio::test]
    async fn unwritten_charges_stay_in_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let now = SystemTime::now();
        let (store, writer) =
            SqliteStore::open(path.clone(), HOURLY.period, &users(), now).unwrap();
        let mut flush = Writer::new(&path, writer.control.shared.clone());

        charge(&store, 40, now).await;
        flush.flush();
        // Queued after the flush took the queue: counted, not yet stored.
        charge(&store, 2, now).await;
        flush.flush();
        charge(&store, 5, now).await;
        assert_eq!(store.status(0, HOURLY, now).await.used, 47);

        writer.shutdown();
        let (reopened, _) = SqliteStore::open(path, HOURLY.period, &users(), now).unwrap();
        assert_eq!(reopened.status(0, HOURLY, now).await.used, 47);
    }

    #[tokio::test]
    async fn unwritable_database_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let now = SystemTime::now();
        let (store, writer) =
            SqliteStore::open(path.clone(), HOURLY.period, &users(), now).unwrap();
        charge(&store, 9, now).await;
        assert_eq!(store.check().await, Ok(()));

        // A path below a regular file can never be opened.
        let blocked = dir.path().join("state.db").join("nested.db");
        let mut failing = Writer::new(&blocked, writer.control.shared.clone());
        failing.flush();
        let error = store.check().await.expect_err("the write failed");
        assert!(error.contains("cannot create the directory"), "{error}");
        assert_eq!(store.status(0, HOURLY, now).await.used, 9);

        let mut working = Writer::new(&path, writer.control.shared.clone());
        working.flush();
        assert_eq!(store.check().await, Ok(()));
        assert_eq!(store.status(0, HOURLY, now).await.used, 9);
    }
}
