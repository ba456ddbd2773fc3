//! An in-memory [`Store`] for tests: same contract as the SQLite store, no file.
//!
//! Owns: a sorted map of committed records, a crash simulation ([`MemoryStore::crash_copy`]) and
//! injected commit failures ([`MemoryStore::fail_next_commits`]). Must never: be used where data
//! has to survive the process.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Op, Record, Store, StoreError, Table};

/// A [`Store`] in a `BTreeMap`. A commit is applied to a copy that replaces the committed map only
/// when every op succeeded, so a failed commit leaves nothing behind, as in SQLite.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    committed: BTreeMap<(Table, Vec<u8>), Vec<u8>>,
    /// How many of the next commits fail (without applying anything).
    failures_left: u32,
    /// Commits that returned `Ok`.
    commits: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a restart after a crash would find: only what committed successfully. The copy has
    /// no injected failures pending and its commit count starts at zero.
    pub fn crash_copy(&self) -> MemoryStore {
        MemoryStore {
            committed: self.committed.clone(),
            failures_left: 0,
            commits: 0,
        }
    }

    /// Makes the next `n` commits fail with [`StoreError::Io`] and apply nothing, as a full disk
    /// would.
    pub fn fail_next_commits(&mut self, n: u32) {
        self.failures_left = n;
    }

    /// How many commits succeeded on this store.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The committed value of `key` in `table`.
    pub fn get(&self, table: Table, key: &[u8]) -> Option<&[u8]> {
        self.committed
            .get(&(table, key.to_vec()))
            .map(Vec::as_slice)
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Vec<Record>, StoreError> {
        // The map's order, (Table, key), is the order the contract asks for.
        Ok(self
            .committed
            .iter()
            .map(|((table, key), value)| (*table, key.clone(), value.clone()))
            .collect())
    }

    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(StoreError::Io {
                path: PathBuf::from(":memory:"),
                source: "injected commit failure".into(),
            });
        }
        let mut next = self.committed.clone();
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    next.insert((*table, key.clone()), value.clone());
                }
                Op::Delete { table, key } => {
                    next.remove(&(*table, key.clone()));
                }
                Op::DeletePrefix { table, prefix } => {
                    next.retain(|(t, key), _| !(t == table && key.starts_with(prefix)));
                }
            }
        }
        self.committed = next;
        self.commits += 1;
        Ok(())
    }
}
