//! Holds detached from their guards, kept per space so that a handle's `release()`
//! gives back only those and never a hold a live guard still owns.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::owner::pid;

/// Who may give back a detached hold through a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The thread with this number ([`crate::owner::thread_number`]).
    Thread(u64),
    /// Any thread of this process (a Lock owned by the acquisition, an async hold).
    Process,
}

/// One detached hold (one level of an RLock's).
#[derive(Debug)]
struct Entry {
    token: u64,
    claim: Claim,
    /// The process that detached it: a forked child must not give back its parent's.
    pid: u32,
}

/// The holds detached in this process, by primitive name.
#[derive(Debug, Default)]
pub(crate) struct Detached(Mutex<HashMap<String, Vec<Entry>>>);

impl Detached {
    pub(crate) fn add(&self, name: &str, token: u64, claim: Claim) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_owned()).or_default().push(Entry {
            token,
            claim,
            pid: pid(),
        });
    }

    /// Takes the most recently detached hold of `name` that `thread` may give back (any
    /// of this process's with `any_thread`), and returns its token.
    pub(crate) fn take(&self, name: &str, thread: u64, any_thread: bool) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entries = map.get_mut(name)?;
        let me = pid();
        entries.retain(|e| e.pid == me);
        let i = entries
            .iter()
            .rposition(|e| any_thread || e.claim == Claim::Thread(thread))?;
        let token = entries.remove(i).token;
        if entries.is_empty() {
            map.remove(name);
        }
        Some(token)
    }
}
