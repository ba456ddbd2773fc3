//! The store thread: opens the store, hands its records to the core at start, then commits the
//! core's `Output::Persist` batches on one std thread (the store's `Writer` batches what queues
//! up into one transaction) and reports the highest durable sequence back.
//!
//! Owns the channel to the writer thread and the confirmation watch. The confirmation is a
//! `watch` of the highest committed sequence, so the writer never blocks on the driver (and the
//! driver, waiting for room in the writer's bounded queue, can never deadlock with it). Must
//! never decide what is written: the core's batches are committed as they come.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info};

use super::status::StoreCounters;
use crate::core::PersistOp;
use crate::store::{Batch, Record, SqliteStore, Store, StoreError, Writer};

/// A store whose commits are counted and timed for `/metrics` (two clock reads and a few
/// relaxed additions per commit, which costs an fsync anyway).
struct Counted<S> {
    store: S,
    counters: Arc<StoreCounters>,
}

impl<S: Store> Store for Counted<S> {
    fn load(&mut self) -> Result<Vec<Record>, StoreError> {
        self.store.load()
    }

    fn commit(&mut self, ops: &[PersistOp]) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let result = self.store.commit(ops);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let c = &self.counters;
        c.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
        if result.is_ok() {
            c.commits.fetch_add(1, Ordering::Relaxed);
            c.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
        } else {
            c.failed_commits.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Records as the core's restore wants them.
pub type Records = Vec<crate::store::Record>;

pub struct Persistence {
    tx: Option<std_mpsc::SyncSender<Batch>>,
    confirmed: watch::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    counters: Arc<StoreCounters>,
}

impl Persistence {
    /// Opens the store at `path` and reads every record. Fails with the store's own error
    /// (it names the path and, for a corrupt file, how to move it aside).
    pub fn open(path: &Path, depth: usize) -> Result<(Persistence, Records), StoreError> {
        let store = SqliteStore::open(path)?;
        Self::start(store, path, depth)
    }

    /// Reads every record from `store`, then hands it to the writer thread. `path` only names
    /// the store in logs and errors.
    pub fn start<S: Store + 'static>(
        mut store: S,
        path: &Path,
        depth: usize,
    ) -> Result<(Persistence, Records), StoreError> {
        let records: Records = store.load()?;
        let counters = Arc::new(StoreCounters::default());
        let store = Counted {
            store,
            counters: counters.clone(),
        };
        info!(path = %path.display(), records = records.len(), "store opened");
        let (tx, rx) = std_mpsc::sync_channel::<Batch>(depth);
        let (confirmed_tx, confirmed) = watch::channel(0u64);
        let shown = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let writer = Writer::new(store);
                let result = writer.run(rx, |seq| {
                    confirmed_tx.send_replace(seq);
                });
                if let Err(failed) = result {
                    // Dropping `confirmed_tx` tells the driver: acknowledgements that need the
                    // store stay withheld, and the gateway stops rather than pile them up.
                    error!(path = %shown.display(), error = %failed.error, unwritten = failed.unwritten.len(), "store writer gave up");
                }
            })
            .map_err(|e| StoreError::Io {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
        Ok((
            Persistence {
                tx: Some(tx),
                confirmed,
                thread: Some(thread),
                path: path.to_path_buf(),
                counters,
            },
            records,
        ))
    }

    /// The writer's commit counters.
    pub fn counters(&self) -> Arc<StoreCounters> {
        self.counters.clone()
    }

    /// Queues a batch for the writer; waits (without blocking the runtime) while its queue
    /// is full.
    pub async fn submit(&self, seq: u64, ops: Vec<PersistOp>) {
        let Some(tx) = &self.tx else { return };
        let batch = Batch { seq, ops };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(std_mpsc::TrySendError::Full(batch)) => {
                let tx = tx.clone();
                let _ = tokio::task::spawn_blocking(move || tx.send(batch)).await;
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => {
                error!(path = %self.path.display(), "store writer is gone; batch not written");
            }
        }
    }

    /// Resolves when the writer confirmed a new sequence with the highest durable one, or
    /// with `None` once the writer has stopped (it gave up after its retries).
    pub async fn confirmed(&mut self) -> Option<u64> {
        match self.confirmed.changed().await {
            Ok(()) => Some(*self.confirmed.borrow_and_update()),
            Err(_) => None,
        }
    }

    /// Lets the writer finish what is queued and waits for it (the store is flushed).
    pub async fn close(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Table;
    use crate::store::MemoryStore;

    fn put(n: u8) -> PersistOp {
        PersistOp::Put {
            table: Table::Device,
            key: vec![n],
            value: vec![n],
        }
    }

    #[tokio::test]
    async fn batches_are_confirmed_and_a_dead_writer_is_reported() {
        let (mut p, records) =
            Persistence::start(MemoryStore::new(), Path::new("memory"), 4).unwrap();
        assert!(records.is_empty());
        p.submit(1, vec![put(1)]).await;
        assert_eq!(p.confirmed().await, Some(1));
        let c = p.counters().read();
        assert_eq!((c.commits, c.ops, c.failed_commits), (1, 1, 0));

        let mut failing = MemoryStore::new();
        failing.fail_next_commits(u32::MAX);
        let (mut p, _) = Persistence::start(failing, Path::new("memory"), 4).unwrap();
        p.submit(1, vec![put(1)]).await;
        // The writer retries, gives up, and the driver hears it: `None`, never a confirmation.
        assert_eq!(p.confirmed().await, None);
        p.close().await;
    }
}
