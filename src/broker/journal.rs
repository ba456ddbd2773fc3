//! The embedded broker's durable journal: the retained messages and the QoS 1/2 messages owed
//! to persistent sessions, in one SQLite file (`journal.db` under `broker.embedded.data_dir`,
//! WAL, `synchronous=FULL`).
//!
//! The broker's own stores write in the background and reach the disk later; this journal is
//! what an acknowledgement waits for. Each write is handed to one writer thread, which commits
//! everything queued in one transaction (group commit) and only then answers, so the cost of an
//! fsync is shared by all concurrent writers.
//!
//! Once a write fails (e.g. the disk is full) the journal answers every later write with an
//! error and reports the failure once through [`Journal::failed`]: nothing more can be
//! acknowledged durably, and the gateway stops.
//!
//! This module knows nothing of the broker crate: records are opaque bytes, keyed by topic or
//! by ClientId and a message key (see [`message_key`]).
//! Owns: `journal.db` and its writer thread. Must never: acknowledge a write before its commit,
//! or name the broker crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

/// Most operations committed in one transaction.
const BATCH: usize = 1024;
/// Operations waiting for the writer; senders wait when it is full.
const DEPTH: usize = 4096;

/// Why a journal write failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker.embedded.data_dir: cannot write the broker journal `{}`: {reason}", .path.display())]
pub struct JournalError {
    /// The journal file.
    pub path: PathBuf,
    /// What SQLite said.
    pub reason: String,
}

/// A retained message as stored.
pub struct RetainedRow {
    /// The topic name.
    pub topic: String,
    /// Unix time in ms after which it is gone, if it expires.
    pub expires_at: Option<i64>,
    /// The encoded message.
    pub record: Vec<u8>,
}

/// A message owed to a persistent session, in the order it was journaled.
pub struct QueuedRow {
    /// The encoded message.
    pub record: Vec<u8>,
}

/// One message to journal for one persistent session.
pub struct Queued {
    /// The session's ClientId.
    pub client_id: String,
    /// [`message_key`] of the message, to find it again when it is acknowledged.
    pub key: i64,
    /// The encoded message.
    pub record: Vec<u8>,
}

type Reply = oneshot::Sender<Result<(), JournalError>>;

enum Op {
    /// Set (`record` Some) or clear the retained message of `topic`.
    Retain {
        topic: String,
        expires_at: Option<i64>,
        record: Option<Vec<u8>>,
        done: Reply,
    },
    Queue {
        rows: Vec<Queued>,
        done: oneshot::Sender<Result<Vec<usize>, JournalError>>,
    },
    /// The oldest row of `client_id` with `key` is no longer owed.
    Ack { client_id: String, key: i64 },
    /// Nothing is owed to `client_id` any more (its session ended).
    Forget { client_id: String },
    /// Everything owed to `client_id`, oldest first.
    Load {
        client_id: String,
        done: oneshot::Sender<Result<Vec<QueuedRow>, JournalError>>,
    },
}

/// A handle on the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Op>,
    failed: watch::Receiver<Option<JournalError>>,
    path: PathBuf,
}

/// What the journal held when it was opened.
pub struct Contents {
    /// Every retained message.
    pub retained: Vec<RetainedRow>,
    /// The ClientIds that are owed messages.
    pub owed: Vec<String>,
}

/// A stable 63-bit FNV-1a hash of a message's topic and payload: the key an acknowledgement
/// finds the journaled message by. (Two messages with the same topic and payload are
/// interchangeable, so a collision between them is harmless.)
pub fn message_key(topic: &str, payload: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes().chain([0xff]).chain(payload.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

impl Journal {
    /// Opens (or creates) `path` and starts the writer thread.
    /// At most `max_per_client` messages are kept per ClientId.
    pub fn open(path: &Path, max_per_client: usize) -> Result<(Journal, Contents), JournalError> {
        let fail = |e: rusqlite::Error| JournalError {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS retained (
                 topic TEXT PRIMARY KEY, expires_at INTEGER, record BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS queued (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL,
                 key INTEGER NOT NULL, record BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS queued_by_key ON queued (client_id, key);",
        )
        .map_err(fail)?;
        let retained = {
            let mut stmt = conn
                .prepare("SELECT topic, expires_at, record FROM retained")
                .map_err(fail)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(RetainedRow {
                        topic: r.get(0)?,
                        expires_at: r.get(1)?,
                        record: r.get(2)?,
                    })
                })
                .map_err(fail)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(fail)?
        };
        let counts = {
            let mut stmt = conn
                .prepare("SELECT client_id, COUNT(*) FROM queued GROUP BY client_id")
                .map_err(fail)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(fail)?;
            rows.map(|r| r.map(|(c, n)| (c, usize::try_from(n).unwrap_or(0))))
                .collect::<Result<HashMap<String, usize>, _>>()
                .map_err(fail)?
        };
        let mut owed: Vec<String> = counts.keys().cloned().collect();
        owed.sort();
        let (tx, rx) = mpsc::channel(DEPTH);
        let (failed_tx, failed) = watch::channel(None);
        let owned = path.to_owned();
        std::thread::Builder::new()
            .name("broker-journal".into())
            .spawn(move || {
                let mut w = Writer {
                    conn,
                    counts,
                    max_per_client,
                };
                w.run(owned, rx, failed_tx)
            })
            .map_err(|e| JournalError {
                path: path.to_owned(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let journal = Journal {
            tx,
            failed,
            path: path.to_owned(),
        };
        Ok((journal, Contents { retained, owed }))
    }

    fn gone(&self) -> JournalError {
        self.failed
            .borrow()
            .clone()
            .unwrap_or_else(|| JournalError {
                path: self.path.clone(),
                reason: "the writer has stopped".into(),
            })
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Op,
    ) -> Result<T, JournalError> {
        let (done, rx) = oneshot::channel();
        if self.tx.send(op(done)).await.is_err() {
            return Err(self.gone());
        }
        rx.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Stores (or with `record: None` clears) `topic`'s retained message; returns once it is
    /// on disk.
    pub async fn retain(
        &self,
        topic: String,
        expires_at: Option<i64>,
        record: Option<Vec<u8>>,
    ) -> Result<(), JournalError> {
        self.call(|done| Op::Retain {
            topic,
            expires_at,
            record,
            done,
        })
        .await
    }

    /// Hands messages owed to persistent sessions to the writer; the returned future resolves
    /// once they are on disk, with the indices of the rows that pushed their session's
    /// oldest row out because it already held `max_per_client` rows.
    pub async fn queue(
        &self,
        rows: Vec<Queued>,
    ) -> impl std::future::Future<Output = Result<Vec<usize>, JournalError>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let empty = rows.is_empty();
        let sent = empty || self.tx.send(Op::Queue { rows, done }).await.is_ok();
        let gone = self.gone();
        async move {
            if empty {
                return Ok(Vec::new());
            }
            if !sent {
                return Err(gone);
            }
            rx.await.unwrap_or(Err(gone))
        }
    }

    /// Everything owed to `client_id`, oldest first (after every write queued before).
    pub async fn load(&self, client_id: String) -> Result<Vec<QueuedRow>, JournalError> {
        self.call(|done| Op::Load { client_id, done }).await
    }

    /// The message `key` was delivered to `client_id` (or dropped): no longer owed.
    pub async fn ack(&self, client_id: String, key: i64) {
        let _ = self.tx.send(Op::Ack { client_id, key }).await;
    }

    /// `client_id`'s session ended: nothing is owed to it any more.
    pub async fn forget(&self, client_id: String) {
        let _ = self.tx.send(Op::Forget { client_id }).await;
    }

    /// Resolves with the first write failure.
    pub async fn failed(&self) -> JournalError {
        let mut rx = self.failed.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A reply to send once the batch it belongs to is committed.
enum Pending {
    Done(Reply),
    Queued(
        oneshot::Sender<Result<Vec<usize>, JournalError>>,
        Vec<usize>,
    ),
    Loaded(
        oneshot::Sender<Result<Vec<QueuedRow>, JournalError>>,
        Vec<QueuedRow>,
    ),
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// Rows per ClientId, as committed.
    counts: HashMap<String, usize>,
    max_per_client: usize,
}

impl Writer {
    fn run(
        &mut self,
        path: PathBuf,
        mut rx: mpsc::Receiver<Op>,
        failed: watch::Sender<Option<JournalError>>,
    ) {
        let mut broken: Option<JournalError> = None;
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if let Some(e) = &broken {
                Self::refuse(batch, e);
                continue;
            }
            let mut pending = Vec::with_capacity(batch.len());
            let before = self.counts.clone();
            let result = self.apply(batch, &mut pending);
            match result {
                Ok(()) => {
                    for p in pending {
                        match p {
                            Pending::Done(done) => {
                                let _ = done.send(Ok(()));
                            }
                            Pending::Queued(done, refused) => {
                                let _ = done.send(Ok(refused));
                            }
                            Pending::Loaded(done, rows) => {
                                let _ = done.send(Ok(rows));
                            }
                        }
                    }
                }
                Err(e) => {
                    let e = JournalError {
                        path: path.clone(),
                        reason: e.to_string(),
                    };
                    tracing::error!(error = %e, "broker journal write failed; acknowledgements stop");
                    self.counts = before;
                    for p in pending {
                        match p {
                            Pending::Done(done) => {
                                let _ = done.send(Err(e.clone()));
                            }
                            Pending::Queued(done, _) => {
                                let _ = done.send(Err(e.clone()));
                            }
                            Pending::Loaded(done, _) => {
                                let _ = done.send(Err(e.clone()));
                            }
                        }
                    }
                    failed.send_replace(Some(e.clone()));
                    broken = Some(e);
                }
            }
        }
    }

    /// Answers every operation of `batch` with `e`.
    fn refuse(batch: Vec<Op>, e: &JournalError) {
        for op in batch {
            match op {
                Op::Retain { done, .. } => {
                    let _ = done.send(Err(e.clone()));
                }
                Op::Queue { done, .. } => {
                    let _ = done.send(Err(e.clone()));
                }
                Op::Load { done, .. } => {
                    let _ = done.send(Err(e.clone()));
                }
                Op::Ack { .. } | Op::Forget { .. } => {}
            }
        }
    }

    /// Applies `batch` in one transaction; the replies go to `pending`, to be sent after the
    /// commit (or with the error).
    fn apply(&mut self, batch: Vec<Op>, pending: &mut Vec<Pending>) -> rusqlite::Result<()> {
        let counts = &mut self.counts;
        let max = self.max_per_client;
        let tx = self.conn.transaction()?;
        let mut first_err = None;
        for op in batch {
            let step = (|| -> rusqlite::Result<()> {
                match op {
                    Op::Retain {
                        topic,
                        expires_at,
                        record,
                        done,
                    } => {
                        pending.push(Pending::Done(done));
                        match record {
                            Some(record) => tx
                                .prepare_cached(
                                    "INSERT OR REPLACE INTO retained (topic, expires_at, record) \
                                 VALUES (?1, ?2, ?3)",
                                )?
                                .execute(params![topic, expires_at, record])?,
                            None => tx
                                .prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                                .execute(params![topic])?,
                        };
                    }
                    Op::Queue { rows, done } => {
                        let mut stmt = tx.prepare_cached(
                            "INSERT INTO queued (client_id, key, record) VALUES (?1, ?2, ?3)",
                        )?;
                        let mut evicted = Vec::new();
                        for (i, row) in rows.into_iter().enumerate() {
                            let n = counts.entry(row.client_id.clone()).or_default();
                            if *n >= max {
                                // Full: the oldest goes, as in the broker's own queue.
                                tx.prepare_cached(
                                    "DELETE FROM queued WHERE seq = \
                                     (SELECT MIN(seq) FROM queued WHERE client_id = ?1)",
                                )?
                                .execute(params![row.client_id])?;
                                *n -= 1;
                                evicted.push(i);
                            }
                            stmt.execute(params![row.client_id, row.key, row.record])?;
                            *n += 1;
                        }
                        pending.push(Pending::Queued(done, evicted));
                    }
                    Op::Ack { client_id, key } => {
                        let seq: Option<i64> = tx
                            .prepare_cached(
                                "SELECT MIN(seq) FROM queued WHERE client_id = ?1 AND key = ?2",
                            )?
                            .query_row(params![client_id, key], |r| r.get(0))
                            .optional()?
                            .flatten();
                        if let Some(seq) = seq {
                            tx.prepare_cached("DELETE FROM queued WHERE seq = ?1")?
                                .execute(params![seq])?;
                            if let Some(n) = counts.get_mut(&client_id) {
                                *n = n.saturating_sub(1);
                            }
                        }
                    }
                    Op::Forget { client_id } => {
                        if counts.remove(&client_id).is_some() {
                            tx.prepare_cached("DELETE FROM queued WHERE client_id = ?1")?
                                .execute(params![client_id])?;
                        }
                    }
                    Op::Load { client_id, done } => {
                        let mut stmt = tx.prepare_cached(
                            "SELECT record FROM queued WHERE client_id = ?1 ORDER BY seq",
                        )?;
                        let rows = stmt
                            .query_map(params![client_id], |r| Ok(QueuedRow { record: r.get(0)? }))?
                            .collect::<rusqlite::Result<Vec<_>>>()?;
                        pending.push(Pending::Loaded(done, rows));
                    }
                }
                Ok(())
            })();
            if let Err(e) = step {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn rows_survive_reopen_in_order_and_acks_remove_one() {
        let dir = std::env::temp_dir().join(format!("journal-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.db");
        rt().block_on(async {
            let (j, c) = Journal::open(&path, 4).unwrap();
            assert!(c.retained.is_empty() && c.owed.is_empty());
            j.retain("a/b".into(), None, Some(b"x".to_vec()))
                .await
                .unwrap();
            let rows = (0..5)
                .map(|i| Queued {
                    client_id: "dev".into(),
                    key: message_key("t", &[i]),
                    record: vec![i],
                })
                .collect();
            let evicted = j.queue(rows).await.await.unwrap();
            assert_eq!(evicted, [4], "the fifth row pushes the first out (cap 4)");
            j.ack("dev".into(), message_key("t", &[2])).await;
            let loaded = j.load("dev".into()).await.unwrap();
            let got: Vec<u8> = loaded.iter().map(|r| r.record[0]).collect();
            assert_eq!(got, [1, 3, 4]);
        });
        rt().block_on(async {
            let (j, c) = Journal::open(&path, 4).unwrap();
            assert_eq!(c.retained.len(), 1);
            assert_eq!(c.retained[0].record, b"x");
            assert_eq!(c.owed, ["dev"]);
            j.forget("dev".into()).await;
            assert!(j.load("dev".into()).await.unwrap().is_empty());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
