//! The queue between the request path and the writer thread.
//!
//! Pushing takes a mutex held only for a `Vec::push`, and the writer swaps the
//! whole vector out once per flush, so a request never waits on the disk.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::UsageRecord;
use crate::budget::Window;
use crate::keys::UserId;

/// Entries the queue holds before it counts as full: about 30 s of traffic
/// at 3,000 requests per second, two entries each.
pub(super) const QUEUE_CAPACITY: usize = 200_000;

/// One change waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// Tokens to add to a user's counter in `window`.
    Charge {
        user: UserId,
        window: Window,
        tokens: u64,
    },
    Record(UsageRecord),
}

/// Entries waiting for the next flush.
pub(super) struct WriteQueue {
    entries: Mutex<Vec<Entry>>,
    capacity: usize,
    /// Entries pushed while the queue was full, since the process started.
    overflowed: AtomicU64,
}

impl WriteQueue {
    pub fn new(capacity: usize) -> Self {
        WriteQueue {
            entries: Mutex::new(Vec::new()),
            capacity,
            overflowed: AtomicU64::new(0),
        }
    }

    /// Appends an entry. A full queue keeps the entry too, so nothing is
    /// lost and the request goes on; the writer logs the overflow.
    pub fn push(&self, entry: Entry) {
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
        }
        entries.push(entry);
    }

    /// Removes and returns every queued entry, oldest first.
    pub fn take(&self) -> Vec<Entry> {
        std::mem::take(&mut *self.entries.lock())
    }

    /// Entries pushed beyond the capacity since the process started.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(tokens: u64) -> Entry {
        Entry::Charge {
            user: 0,
            window: Window { start: 0, end: 60 },
            tokens,
        }
    }

    #[test]
    fn full_queue_keeps_every_entry() {
        let queue = WriteQueue::new(2);
        for tokens in 1..=5 {
            queue.push(charge(tokens));
        }
        assert_eq!(queue.overflowed(), 3);

        let taken = queue.take();
        assert_eq!(taken, (1..=5).map(charge).collect::<Vec<_>>());
        assert!(queue.take().is_empty());
    }
}
