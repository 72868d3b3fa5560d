//! A cross-process limit on how many whole-system tests run at once.
//!
//! `cargo test --workspace` runs test binaries one after another but the
//! tests of one binary in parallel threads, and a developer may run several
//! `cargo test` commands at once. A test that starts a whole system —
//! coordinator, services, gateway, often a database and etcd of its own —
//! needs a share of the machine to meet its deadlines; nine of them at once
//! on two cores is how start-up gaps and timeouts turn into flakes. So such
//! tests first take a [`SystemSlot`]: one of N lock files in a shared
//! folder, held with an advisory lock ([`std::fs::File::try_lock`]) for the
//! test's lifetime.
//!
//! * N is `QUICKORDER_TEST_SYSTEMS` (default 2), the folder
//!   `$TMPDIR/quickorder-test-slots`.
//! * The lock belongs to the open file, which is opened close-on-exec: a
//!   child process never inherits it, and the kernel releases it when the
//!   test process ends, however it ends (no stale slots).
//! * Within one process the same lock file opened twice is two locks, so
//!   threads of one test binary compete for slots like processes do.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The variable that sets how many whole-system tests may run at once.
pub const SYSTEMS_VAR: &str = "QUICKORDER_TEST_SYSTEMS";

/// How many whole-system tests run at once unless [`SYSTEMS_VAR`] says.
pub const DEFAULT_SYSTEMS: usize = 2;

/// One of the N slots, held until dropped.
#[derive(Debug)]
pub struct SystemSlot {
    /// Locked; closing it releases the slot.
    _file: File,
    /// Which slot (for messages).
    index: usize,
    /// How long the test waited for it.
    waited: Duration,
}

impl SystemSlot {
    /// Which of the N slots this is.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How long taking it took (time other system tests held every slot).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// The slot limit: [`SYSTEMS_VAR`] if it is a positive number, else
/// [`DEFAULT_SYSTEMS`].
pub fn system_slots() -> usize {
    parse_limit(std::env::var(SYSTEMS_VAR).ok().as_deref())
}

fn parse_limit(value: Option<&str>) -> usize {
    match value.map(str::trim).map(str::parse::<usize>) {
        Some(Ok(n)) if n > 0 => n,
        Some(_) => panic!("{SYSTEMS_VAR} must be a positive number, got {value:?}"),
        None => DEFAULT_SYSTEMS,
    }
}

fn slot_dir() -> PathBuf {
    std::env::temp_dir().join("quickorder-test-slots")
}

/// Waits for a free slot and takes it. Call it first thing in a test that
/// starts a whole system, and keep the guard until the system is gone.
pub fn system_slot() -> SystemSlot {
    take(&slot_dir(), system_slots())
}

fn take(dir: &std::path::Path, limit: usize) -> SystemSlot {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let started = Instant::now();
    loop {
        for index in 0..limit {
            let path = dir.join(format!("slot-{index}"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            match file.try_lock() {
                Ok(()) => return SystemSlot { _file: file, index, waited: started.elapsed() },
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => panic!("cannot lock {}: {e}", path.display()),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_defaults_to_two_and_rejects_nonsense() {
        assert_eq!(parse_limit(None), DEFAULT_SYSTEMS);
        assert_eq!(parse_limit(Some("3")), 3);
        assert!(std::panic::catch_unwind(|| parse_limit(Some("0"))).is_err());
        assert!(std::panic::catch_unwind(|| parse_limit(Some("many"))).is_err());
    }

    #[test]
    fn a_third_taker_waits_until_one_of_two_slots_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = take(dir.path(), 2);
        let second = take(dir.path(), 2);
        assert_ne!(first.index(), second.index());
        let (sender, receiver) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let third = std::thread::spawn(move || {
            let slot = take(&path, 2);
            sender.send(slot.index()).unwrap();
            slot
        });
        assert!(receiver.recv_timeout(Duration::from_millis(300)).is_err(), "a third slot was handed out");
        let freed = second.index();
        drop(second);
        assert_eq!(receiver.recv_timeout(Duration::from_secs(5)).unwrap(), freed);
        drop(third.join().unwrap());
        drop(first);
    }
}
