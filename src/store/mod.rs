//! Durable key-value storage for the gateway's own state: device sessions, topic tables, sleep
//! buffers and in-flight QoS flows.
//!
//! Owns: the [`Store`] trait (load everything at start, commit batches of [`Op`]s atomically and
//! durably), its SQLite implementation [`SqliteStore`], an in-memory [`MemoryStore`] for tests,
//! and the [`Writer`] loop that batches commits on one plain thread.
//!
//! Must never: interpret the bytes it stores (the core serialises its own records), name
//! `rusqlite` outside `sqlite.rs`, use tokio, or reset a store it cannot read. An unreadable file
//! is a [`StoreError::Corrupt`] that tells the user how to move it aside.
//!
//! Durability contract: when [`Store::commit`] returns `Ok`, every op in the slice is on disk
//! (SQLite: WAL with `synchronous=FULL`, so the WAL is fsynced before the commit returns) and a
//! crash at any point leaves either all of the slice or none of it.

mod memory;
mod sqlite;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use memory::MemoryStore;
pub use sqlite::{SqliteStore, SCHEMA_VERSION};
pub use writer::{Batch, Writer, WriterFailed, WriterLimits};

/// The tables and the changes the store keeps: defined once, by the core, which says what is
/// durable ([`Table`], and [`Op`] = the core's `PersistOp`).
pub use crate::core::{PersistOp as Op, Table};

/// One record as returned by [`Store::load`]: table, key, value.
pub type Record = (Table, Vec<u8>, Vec<u8>);

/// Durable storage of opaque records. Implementations: [`SqliteStore`], [`MemoryStore`].
///
/// `Send` so the store can be moved onto the [`Writer`]'s thread; it is used by one owner only.
pub trait Store: Send {
    /// Every record, for the restore at start, ordered by [`Table`] (declaration order), then by
    /// key (bytewise).
    fn load(&mut self) -> Result<Vec<Record>, StoreError>;

    /// Applies `ops` in order, atomically (one transaction: all or nothing) and durably (returns
    /// only after the data reached the disk per the configured synchronous mode). On `Err`,
    /// nothing in `ops` was applied.
    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError>;
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn load(&mut self) -> Result<Vec<Record>, StoreError> {
        (**self).load()
    }

    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        (**self).commit(ops)
    }
}

/// The underlying error of a [`StoreError`], boxed so the SQLite crate's types stay inside
/// `store/sqlite.rs`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the store could not be opened, read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file (or its directory) could not be created or opened, e.g. no permission, a
    /// read-only file system, or a path component that is not a directory.
    #[error("cannot open the store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// The file exists but is not a readable gateway store. Never reset silently: the user decides.
    #[error(
        "the store at {p} is corrupt or not a gateway store ({reason}); \
         move it aside (mv {p} {p}.corrupt) to start with an empty store",
        p = path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    /// The file was written by a newer gateway whose schema this version cannot read.
    #[error(
        "the store at {} has schema version {found}, but this gateway supports up to \
         {supported}; run a newer gateway, or move the file aside to start empty",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// Reading or writing failed after the store was opened (disk full, I/O error, locked).
    #[error("store I/O failed on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
}
