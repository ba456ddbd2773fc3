//! The store's single writer: a loop on a plain std thread that turns queued [`Batch`]es into as
//! few commits as it can.
//!
//! Owns: batching (block for one batch, then drain what is already queued, up to
//! [`WriterLimits`]), retry with back-off, and reporting the highest committed sequence number.
//! Must never: split a [`Batch`] across commits, reorder batches, drop a batch without returning
//! it, panic, or use an async runtime (the shell spawns it with `std::thread::spawn`).
//!
//! Why batch: with `synchronous=FULL` every commit costs an fsync. Under load, many small batches
//! from the core share one fsync; when idle, a lone batch is committed at once (no added latency).

use std::sync::mpsc::Receiver;
use std::thread;
use std::time::Duration;

use super::{Op, Store, StoreError};

/// Ops the core wants durable, tagged with a sequence number the core chose. The core may
/// acknowledge anything whose `seq` is at most the one the writer reported as committed.
/// Sequence numbers should increase; the writer reports the highest it committed either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub seq: u64,
    pub ops: Vec<Op>,
}

impl Batch {
    fn size(&self) -> (usize, usize) {
        (self.ops.len(), self.ops.iter().map(Op::payload_len).sum())
    }
}

/// Bounds on one commit and on retrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterLimits {
    /// Stop draining the queue once a commit holds this many ops. A single batch larger than
    /// this is still committed whole, on its own.
    pub max_ops: usize,
    /// Stop draining once a commit holds this many key+value bytes (same single-batch rule).
    pub max_bytes: usize,
    /// Extra attempts after a failed commit before the writer gives up.
    pub retries: u32,
    /// Sleep before the first retry; doubled before each further one.
    pub first_backoff: Duration,
}

impl Default for WriterLimits {
    /// 1,000 ops or 1 MiB per commit; 4 retries after 50, 100, 200, 400 ms (0.75 s in all).
    fn default() -> Self {
        WriterLimits {
            max_ops: 1_000,
            max_bytes: 1 << 20,
            retries: 4,
            first_backoff: Duration::from_millis(50),
        }
    }
}

/// The writer gave up: a commit failed `attempts` times. Nothing in `unwritten` is on disk (a
/// failed commit applies nothing), and it holds every batch the writer received but did not
/// commit, in order: the failed group, then whatever was still queued.
#[derive(Debug, thiserror::Error)]
#[error(
    "store writer gave up after {attempts} failed commits ({} batches unwritten): {error}",
    unwritten.len()
)]
pub struct WriterFailed {
    #[source]
    pub error: StoreError,
    pub attempts: u32,
    pub unwritten: Vec<Batch>,
}

/// Owns a [`Store`] and commits what arrives on a channel. See [`Writer::run`].
#[derive(Debug)]
pub struct Writer<S: Store> {
    store: S,
    limits: WriterLimits,
}

impl<S: Store> Writer<S> {
    /// A writer with [`WriterLimits::default`].
    pub fn new(store: S) -> Self {
        Self::with_limits(store, WriterLimits::default())
    }

    pub fn with_limits(store: S, limits: WriterLimits) -> Self {
        Writer { store, limits }
    }

    /// Runs until every sender of `rx` is dropped and the queue is empty (`Ok`), or a commit fails
    /// after all retries (`Err`, carrying the unwritten batches). Blocks the calling thread.
    ///
    /// Each round: block for one batch, take whatever else is queued without waiting (up to the
    /// limits), commit it all in one transaction, then call `done` with the highest `seq`
    /// committed. `done` runs on this thread; keep it short (e.g. send on a channel).
    pub fn run(
        mut self,
        rx: Receiver<Batch>,
        mut done: impl FnMut(u64),
    ) -> Result<(), WriterFailed> {
        // A batch taken off the queue that did not fit in the previous commit.
        let mut carried: Option<Batch> = None;
        loop {
            let first = match carried.take() {
                Some(batch) => batch,
                None => match rx.recv() {
                    Ok(batch) => batch,
                    Err(_) => return Ok(()), // all senders gone, queue empty
                },
            };
            let (mut n_ops, mut n_bytes) = first.size();
            let mut group = vec![first];
            while n_ops < self.limits.max_ops && n_bytes < self.limits.max_bytes {
                // Empty or disconnected: commit what we have; the next recv() sees a disconnect.
                let Ok(batch) = rx.try_recv() else { break };
                let (ops, bytes) = batch.size();
                if n_ops + ops > self.limits.max_ops || n_bytes + bytes > self.limits.max_bytes {
                    carried = Some(batch);
                    break;
                }
                n_ops += ops;
                n_bytes += bytes;
                group.push(batch);
            }

            // Move the ops out (no copies); remember each batch's seq and length to give them
            // back unchanged if the commit fails for good.
            let mut shape = Vec::with_capacity(group.len());
            let mut ops = Vec::with_capacity(n_ops);
            for batch in group {
                shape.push((batch.seq, batch.ops.len()));
                ops.extend(batch.ops);
            }
            let highest = shape.iter().map(|&(seq, _)| seq).max().unwrap_or(0);

            if let Err((error, attempts)) = self.commit_with_retries(&ops) {
                let mut ops = ops.into_iter();
                let mut unwritten: Vec<Batch> = shape
                    .into_iter()
                    .map(|(seq, len)| Batch {
                        seq,
                        ops: ops.by_ref().take(len).collect(),
                    })
                    .collect();
                unwritten.extend(carried);
                unwritten.extend(rx.try_iter());
                return Err(WriterFailed {
                    error,
                    attempts,
                    unwritten,
                });
            }
            done(highest);
        }
    }

    fn commit_with_retries(&mut self, ops: &[Op]) -> Result<(), (StoreError, u32)> {
        let mut backoff = self.limits.first_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.store.commit(ops) {
                Ok(()) => return Ok(()),
                Err(error) if attempts > self.limits.retries => return Err((error, attempts)),
                Err(error) => {
                    tracing::warn!(%error, attempt = attempts, retry_in = ?backoff, "store commit failed");
                    thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    use super::super::{MemoryStore, Table};
    use super::*;

    /// What a [`CountingStore`] saw: the op count of every commit attempt and whether it failed.
    #[derive(Debug, Default)]
    struct Log {
        attempts: Vec<(usize, bool)>,
    }

    impl Log {
        fn committed_sizes(&self) -> Vec<usize> {
            self.attempts
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(n, _)| *n)
                .collect()
        }
    }

    /// A [`MemoryStore`] that logs every commit attempt where the test can still see it.
    struct CountingStore {
        inner: MemoryStore,
        log: Arc<Mutex<Log>>,
    }

    impl CountingStore {
        fn new(failures: u32) -> (Self, Arc<Mutex<Log>>) {
            let mut inner = MemoryStore::new();
            inner.fail_next_commits(failures);
            let log = Arc::new(Mutex::new(Log::default()));
            (
                CountingStore {
                    inner,
                    log: Arc::clone(&log),
                },
                log,
            )
        }
    }

    impl Store for CountingStore {
        fn load(&mut self) -> Result<Vec<super::super::Record>, StoreError> {
            self.inner.load()
        }

        fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError> {
            let result = self.inner.commit(ops);
            self.log
                .lock()
                .unwrap()
                .attempts
                .push((ops.len(), result.is_ok()));
            result
        }
    }

    fn batch(seq: u64, n_ops: usize) -> Batch {
        Batch {
            seq,
            ops: (0..n_ops)
                .map(|i| Op::Put {
                    table: Table::Buffer,
                    key: format!("{seq}/{i}").into_bytes(),
                    value: vec![0; 10],
                })
                .collect(),
        }
    }

    fn fast_limits() -> WriterLimits {
        WriterLimits {
            first_backoff: Duration::from_millis(1),
            ..WriterLimits::default()
        }
    }

    #[test]
    fn queued_batches_share_one_commit_and_report_the_highest_seq() {
        let (store, log) = CountingStore::new(0);
        let (tx, rx) = mpsc::channel();
        for seq in 1..=5 {
            tx.send(batch(seq, 2)).unwrap();
        }
        drop(tx);
        let mut done = Vec::new();
        Writer::with_limits(store, fast_limits())
            .run(rx, |seq| done.push(seq))
            .unwrap();
        assert_eq!(done, vec![5]);
        assert_eq!(log.lock().unwrap().committed_sizes(), vec![10]);
    }

    #[test]
    fn limits_split_the_queue_into_commits_but_never_split_a_batch() {
        let (store, log) = CountingStore::new(0);
        let (tx, rx) = mpsc::channel();
        // max_ops 4 gives commits [1 2] [3] [4 5] [6] [7]: batch 4 does not fit after 3, and
        // batch 6 does not fit after 5.
        for (seq, n) in [(1, 2), (2, 2), (3, 3), (4, 2), (5, 1), (6, 9), (7, 1)] {
            tx.send(batch(seq, n)).unwrap();
        }
        drop(tx);
        let mut done = Vec::new();
        let limits = WriterLimits {
            max_ops: 4,
            ..fast_limits()
        };
        Writer::with_limits(store, limits)
            .run(rx, |seq| done.push(seq))
            .unwrap();
        // Batch 6 (9 ops) is larger than max_ops: committed whole, alone.
        assert_eq!(done, vec![2, 3, 5, 6, 7]);
        assert_eq!(log.lock().unwrap().committed_sizes(), vec![4, 3, 3, 9, 1]);
    }

    #[test]
    fn the_byte_limit_also_closes_a_commit() {
        let (store, log) = CountingStore::new(0);
        let (tx, rx) = mpsc::channel();
        for seq in 1..=4 {
            tx.send(batch(seq, 1)).unwrap(); // 3-byte key + 10-byte value = 13 bytes
        }
        drop(tx);
        let limits = WriterLimits {
            max_bytes: 26,
            ..fast_limits()
        };
        Writer::with_limits(store, limits).run(rx, |_| {}).unwrap();
        assert_eq!(log.lock().unwrap().committed_sizes(), vec![2, 2]);
    }

    #[test]
    fn an_idle_writer_commits_a_lone_batch_without_waiting_for_more() {
        let (store, log) = CountingStore::new(0);
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            Writer::with_limits(store, fast_limits()).run(rx, |seq| done_tx.send(seq).unwrap())
        });
        for seq in 1..=3 {
            tx.send(batch(seq, 1)).unwrap();
            // Each batch is confirmed before the next is sent: three commits of one.
            assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(seq));
        }
        drop(tx);
        thread.join().unwrap().unwrap();
        assert_eq!(log.lock().unwrap().committed_sizes(), vec![1, 1, 1]);
    }

    #[test]
    fn a_failed_commit_is_retried_then_confirmed() {
        let (store, log) = CountingStore::new(2);
        let (tx, rx) = mpsc::channel();
        tx.send(batch(1, 3)).unwrap();
        drop(tx);
        let mut done = Vec::new();
        Writer::with_limits(store, fast_limits())
            .run(rx, |seq| done.push(seq))
            .unwrap();
        assert_eq!(done, vec![1]);
        let log = log.lock().unwrap();
        assert_eq!(log.attempts, vec![(3, false), (3, false), (3, true)]);
    }

    #[test]
    fn the_writer_gives_up_after_its_retries_and_returns_every_unwritten_batch() {
        let (store, log) = CountingStore::new(u32::MAX);
        let (tx, rx) = mpsc::channel();
        let sent = [batch(1, 2), batch(2, 1), batch(3, 3), batch(4, 1)];
        for b in &sent {
            tx.send(b.clone()).unwrap();
        }
        let limits = WriterLimits {
            max_ops: 3,
            retries: 3,
            ..fast_limits()
        };
        let mut done = Vec::new();
        let failed = Writer::with_limits(store, limits)
            .run(rx, |seq| done.push(seq))
            .unwrap_err();
        assert!(done.is_empty(), "nothing was confirmed");
        assert_eq!(failed.attempts, 4);
        assert!(matches!(failed.error, StoreError::Io { .. }));
        // The failed group [1, 2], then batch 3 (taken but not fitting), then the queued 4.
        assert_eq!(failed.unwritten, sent.to_vec());
        assert_eq!(log.lock().unwrap().attempts, vec![(3, false); 4]);
        assert!(failed.to_string().contains("4 failed commits"), "{failed}");
        // The senders learn that the writer is gone.
        assert!(tx.send(batch(5, 1)).is_err());
    }

    #[test]
    fn the_writer_stops_cleanly_when_every_sender_is_gone() {
        let (store, log) = CountingStore::new(0);
        let (tx, rx) = mpsc::channel::<Batch>();
        drop(tx);
        Writer::new(store)
            .run(rx, |_| panic!("nothing to confirm"))
            .unwrap();
        assert!(log.lock().unwrap().attempts.is_empty());
    }
}
