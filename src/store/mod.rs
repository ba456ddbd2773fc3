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

use std::fmt;
use std::path::PathBuf;

pub use memory::MemoryStore;
pub use sqlite::{SqliteStore, SCHEMA_VERSION};
pub use writer::{Batch, Writer, WriterFailed, WriterLimits};

/// The tables the store keeps. A closed set: each is one kind of record the core persists (the
/// same four, with the same on-disk names, as the core's own `Table`; the shell maps one to the
/// other).
///
/// An enum rather than a free-form name so a typo cannot create a table, and so [`Store::load`]
/// can reject a row whose table this version does not know (a [`StoreError::Corrupt`]).
/// Adding a variant therefore means bumping [`SCHEMA_VERSION`], so that an older gateway refuses
/// the file with [`StoreError::NewerSchema`] instead of calling it corrupt.
///
/// The derived order (declaration order) is the order [`Store::load`] returns tables in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// One record per persistent device session.
    Device,
    /// Messages buffered for a sleeping device.
    Buffer,
    /// In-flight uplink QoS state and parked uplink messages.
    Uplink,
    /// One row per subscription of a persistent device session.
    Subscription,
}

impl Table {
    /// Every table, in load order.
    pub const ALL: [Table; 4] = [
        Table::Device,
        Table::Buffer,
        Table::Uplink,
        Table::Subscription,
    ];

    /// The name stored on disk. Stable: changing one is a schema change.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Device => "device",
            Table::Buffer => "buffer",
            Table::Uplink => "uplink",
            Table::Subscription => "subscription",
        }
    }

    /// The table stored under `name`, if this version knows it.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One change to the store. A slice of these is committed as one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert `key`, or replace its value.
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove `key`; nothing happens if it is absent.
    Delete { table: Table, key: Vec<u8> },
    /// Remove every key that starts with `prefix` (an empty prefix empties the table).
    DeletePrefix { table: Table, prefix: Vec<u8> },
}

impl Op {
    /// The bytes this op carries (key or prefix plus value), used to bound a batch's size.
    pub fn payload_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
            Op::DeletePrefix { prefix, .. } => prefix.len(),
        }
    }
}

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
