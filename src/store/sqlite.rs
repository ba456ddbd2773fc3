//! The SQLite store: one file, one table `kv`, WAL journal, `synchronous=FULL`.
//!
//! Owns: the on-disk schema, its version (`PRAGMA user_version`) and the forward migrations.
//! This is the only file in the crate that names `rusqlite`.
//!
//! Must never: reset or rewrite a file it cannot read (that is [`StoreError::Corrupt`], and the
//! user moves the file aside), or write to a file from a newer schema.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{BoxError, Op, Record, Store, StoreError, Table};

/// Forward migrations: `MIGRATIONS[v]` takes a file from schema version `v` to `v + 1`.
/// Version 0 is a new (empty) file. Append only; never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: one generic table. WITHOUT ROWID: the primary key is the row, so a record is stored
    // once (no separate rowid b-tree plus index).
    "CREATE TABLE kv (
        tbl   TEXT NOT NULL,
        key   BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (tbl, key)
    ) WITHOUT ROWID;",
    // 1 -> 2: rows of the new table `subscription` (one per device subscription) may appear;
    // the layout is unchanged. The bump makes an older gateway refuse the file (NewerSchema)
    // rather than call those rows corrupt.
    "",
];

/// The schema version this gateway writes and the newest it can read.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for a lock held by another connection (e.g. someone inspecting the
/// file with `sqlite3`) before failing with [`StoreError::Io`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Store`] in one SQLite file.
///
/// Opening sets `journal_mode=WAL` (a commit appends to the `-wal` file; readers never block the
/// writer) and `synchronous=FULL` (the WAL is fsynced at every commit, so a commit that returned
/// survives power loss).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file and its parent directories if missing, and
    /// migrating an older schema forward.
    ///
    /// Errors: [`StoreError::Open`] if the location cannot be created or written,
    /// [`StoreError::Corrupt`] if the file is not a readable gateway store (garbage, a damaged
    /// page, or some other SQLite database), [`StoreError::NewerSchema`] if a newer gateway wrote it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source: BoxError| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| open_err(e.into()))?;
        }
        // No URI parsing: the path is a plain file name, whatever characters it holds.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(path, flags).map_err(|e| classify(path, e, Phase::Open))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(path, e, Phase::Open))?;

        // The first read of the file: garbage fails here with "file is not a database".
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| classify(path, e, Phase::Open))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < 0 {
            return Err(corrupt(path, format!("negative schema version {found}")));
        }
        quick_check(&conn, path)?;

        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| classify(path, e, Phase::Open))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(
                format!("the file system does not support WAL (journal_mode is {mode})").into(),
            ));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| classify(path, e, Phase::Open))?;

        migrate(&mut conn, path)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e, Phase::Use)
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tbl, key, value FROM kv ORDER BY tbl, key")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| classify(&self.path, e, Phase::Use))?;
        let mut records = Vec::new();
        for row in rows {
            // A row of the wrong type (e.g. TEXT where a BLOB belongs) was not written by us.
            let (name, key, value) = row.map_err(|e| match e {
                rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::FromSqlConversionFailure(..) => {
                    corrupt(&self.path, format!("a kv row has the wrong type: {e}"))
                }
                e => classify(&self.path, e, Phase::Use),
            })?;
            let table = Table::from_name(&name)
                .ok_or_else(|| corrupt(&self.path, format!("unknown table name {name:?}")))?;
            records.push((table, key, value));
        }
        // SQL sorted by table *name*; the contract is table declaration order, then key. The sort
        // is stable, so keys stay in order within each table.
        records.sort_by_key(|(table, _, _)| *table);
        Ok(records)
    }

    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let path = &self.path;
        let err = |e| classify(path, e, Phase::Use);
        // IMMEDIATE takes the write lock now, so a busy file fails before any op runs.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        for op in ops {
            match op {
                Op::Put { table, key, value } => tx
                    .prepare_cached(
                        "INSERT INTO kv (tbl, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                    )
                    .and_then(|mut s| s.execute((table.name(), key, value))),
                Op::Delete { table, key } => tx
                    .prepare_cached("DELETE FROM kv WHERE tbl = ?1 AND key = ?2")
                    .and_then(|mut s| s.execute((table.name(), key))),
                Op::DeletePrefix { table, prefix } => match prefix_successor(prefix) {
                    Some(end) => tx
                        .prepare_cached("DELETE FROM kv WHERE tbl = ?1 AND key >= ?2 AND key < ?3")
                        .and_then(|mut s| s.execute((table.name(), prefix, end))),
                    // Empty or all-0xFF prefix: no upper bound.
                    None => tx
                        .prepare_cached("DELETE FROM kv WHERE tbl = ?1 AND key >= ?2")
                        .and_then(|mut s| s.execute((table.name(), prefix))),
                },
            }
            .map_err(err)?; // dropping `tx` rolls back everything before this op
        }
        tx.commit().map_err(err)
    }
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None` if
/// there is none (`prefix` is empty or all 0xFF). Keys starting with `prefix` are exactly the
/// range `prefix <= key < successor`.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |e| classify(path, e, Phase::Open);
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        // Read again under the write lock: another process may have migrated meanwhile.
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(err)?;
        if version >= SCHEMA_VERSION {
            return Ok(()); // `tx` rolls back: nothing was written
        }
        if version == 0 {
            // Version 0 must be an empty file; a database with tables is someone else's.
            let tables: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
                .map_err(err)?;
            if tables > 0 {
                return Err(corrupt(
                    path,
                    format!("an SQLite database with {tables} schema objects but no gateway schema version"),
                ));
            }
        }
        tx.execute_batch(MIGRATIONS[version as usize])
            .map_err(err)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
}

fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| classify(path, e, Phase::Open))?;
    let problems = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| classify(path, e, Phase::Open))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    let shown: Vec<_> = problems.iter().take(3).map(String::as_str).collect();
    Err(corrupt(
        path,
        format!("quick_check failed: {}", shown.join("; ")),
    ))
}

/// Where an SQLite error happened: while opening it means "cannot open", later it means I/O.
#[derive(Clone, Copy)]
enum Phase {
    Open,
    Use,
}

fn classify(path: &Path, e: rusqlite::Error, phase: Phase) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => corrupt(path, e.to_string()),
        _ => match phase {
            Phase::Open => StoreError::Open {
                path: path.to_path_buf(),
                source: e.into(),
            },
            Phase::Use => StoreError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            },
        },
    }
}

fn corrupt(path: &Path, reason: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::TempDir;
    use super::*;

    fn put(key: &[u8], value: &[u8]) -> Op {
        Op::Put {
            table: Table::Device,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn records_survive_close_and_reopen() {
        let dir = TempDir::new("reopen");
        let path = dir.path().join("gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store.commit(&[put(b"a", b"1"), put(b"b", b"2")]).unwrap();
        store.commit(&[put(b"a", b"3")]).unwrap();
        drop(store);
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.load().unwrap(),
            vec![
                (Table::Device, b"a".to_vec(), b"3".to_vec()),
                (Table::Device, b"b".to_vec(), b"2".to_vec()),
            ]
        );
    }

    /// Child half of `committed_data_survives_process_exit_without_close`; a no-op unless the
    /// parent set the variable.
    #[test]
    #[ignore = "run by committed_data_survives_process_exit_without_close as a child process"]
    fn child_commits_then_exits_without_closing() {
        let Some(path) = std::env::var_os("MQTTSN_STORE_CHILD_DB") else {
            return;
        };
        let mut store = SqliteStore::open(Path::new(&path)).unwrap();
        store.commit(&[put(b"durable", b"yes")]).unwrap();
        // No destructors: the connection is never closed, the WAL never checkpointed.
        std::process::exit(7);
    }

    #[test]
    fn committed_data_survives_process_exit_without_close() {
        let dir = TempDir::new("exit");
        let path = dir.path().join("gw.db");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sqlite::tests::child_commits_then_exits_without_closing",
                "--ignored",
                "--quiet",
            ])
            .env("MQTTSN_STORE_CHILD_DB", &path)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(7), "child did not reach its exit");
        // The record lives only in the WAL, which the next open recovers.
        assert!(dir.path().join("gw.db-wal").exists());
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.load().unwrap(),
            vec![(Table::Device, b"durable".to_vec(), b"yes".to_vec())]
        );
    }

    #[test]
    fn a_failing_op_rolls_back_the_whole_commit() {
        let dir = TempDir::new("atomic");
        let path = dir.path().join("gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store.commit(&[put(b"before", b"1")]).unwrap();
        // Make the third op of the next commit fail inside SQLite.
        store
            .conn
            .execute_batch(
                "CREATE TEMP TRIGGER boom BEFORE INSERT ON main.kv WHEN NEW.key = x'dead'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        let err = store
            .commit(&[
                put(b"x", b"1"),
                Op::Delete {
                    table: Table::Device,
                    key: b"before".to_vec(),
                },
                put(b"\xde\xad", b"fails"),
                put(b"y", b"never reached"),
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert!(err.to_string().contains("injected failure"), "{err}");
        let expected = vec![(Table::Device, b"before".to_vec(), b"1".to_vec())];
        assert_eq!(store.load().unwrap(), expected);
        // The connection is usable again, and a reopened file agrees.
        store.commit(&[put(b"after", b"2")]).unwrap();
        drop(store);
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap().len(), 2);
    }

    #[test]
    fn schema_version_and_wal_are_written() {
        let dir = TempDir::new("version");
        let path = dir.path().join("gw.db");
        drop(SqliteStore::open(&path).unwrap());
        assert_eq!(SCHEMA_VERSION, 2);
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        let mode: String = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal"); // WAL mode is a property of the file
        let store = SqliteStore::open(&path).unwrap(); // reopening a current file migrates nothing
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn a_version_1_file_is_migrated_and_keeps_its_rows() {
        let dir = TempDir::new("v1");
        let path = dir.path().join("gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store.commit(&[put(b"k", b"v")]).unwrap();
        store.conn.pragma_update(None, "user_version", 1).unwrap();
        drop(store);
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        assert_eq!(
            store.load().unwrap(),
            vec![(Table::Device, b"k".to_vec(), b"v".to_vec())]
        );
        store
            .commit(&[Op::Put {
                table: Table::Subscription,
                key: b"k".to_vec(),
                value: b"{}".to_vec(),
            }])
            .unwrap();
        assert_eq!(store.load().unwrap().len(), 2);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let dir = TempDir::new("newer");
        let path = dir.path().join("gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store.commit(&[put(b"k", b"v")]).unwrap();
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        match SqliteStore::open(&path).unwrap_err() {
            StoreError::NewerSchema {
                path: p,
                found,
                supported,
            } => {
                assert_eq!((p.as_path(), found, supported), (path.as_path(), 3, 2));
            }
            other => panic!("expected NewerSchema, got {other}"),
        }
        assert_eq!(user_version(&path), SCHEMA_VERSION + 1);
    }

    #[test]
    fn a_garbage_file_is_corrupt_and_the_message_says_how_to_move_it_aside() {
        for garbage in [&b"not a database"[..], &[0xA5; 8192][..]] {
            let dir = TempDir::new("garbage");
            let path = dir.path().join("gw.db");
            std::fs::write(&path, garbage).unwrap();
            let err = SqliteStore::open(&path).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { path: p, .. } if *p == path),
                "{err:?}"
            );
            let shown = err.to_string();
            let p = path.display();
            assert!(shown.contains(&format!("mv {p} {p}.corrupt")), "{shown}");
            // Never reset: the bytes are untouched.
            assert_eq!(std::fs::read(&path).unwrap(), garbage);
        }
    }

    #[test]
    fn a_damaged_page_is_corrupt() {
        let dir = TempDir::new("damaged");
        let path = dir.path().join("gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        let ops: Vec<Op> = (0u32..2000)
            .map(|i| put(&i.to_be_bytes(), &[0x42; 64]))
            .collect();
        store.commit(&ops).unwrap();
        drop(store); // the last close checkpoints the WAL into the main file
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8 * 4096);
        // Overwrite pages 3..5 (b-tree pages of kv) with garbage; page 1 (the header) stays.
        bytes[2 * 4096..5 * 4096].fill(0x5A);
        std::fs::write(&path, &bytes).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn another_sqlite_database_is_not_taken_over() {
        let dir = TempDir::new("foreign");
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY);")
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert_eq!(user_version(&path), 0);
    }

    #[test]
    fn an_unknown_table_name_in_the_file_is_corrupt() {
        let dir = TempDir::new("unknown");
        let path = dir.path().join("gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store
            .conn
            .execute("INSERT INTO kv VALUES ('future', x'01', x'02')", [])
            .unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("\"future\""), "{err}");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn missing_parent_directories_are_created() {
        let dir = TempDir::new("parents");
        let path = dir.path().join("a/b/c/gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store.commit(&[put(b"k", b"v")]).unwrap();
        assert_eq!(store.path(), path);
        assert!(path.is_file());
    }

    #[test]
    fn an_unusable_location_is_an_open_error() {
        let dir = TempDir::new("unusable");
        // A parent that is a regular file (refused even for root, unlike permissions).
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let under_file = file.join("gw.db");
        let err = SqliteStore::open(&under_file).unwrap_err();
        assert!(
            matches!(&err, StoreError::Open { path, .. } if *path == under_file),
            "{err:?}"
        );
        assert!(err.to_string().contains(&under_file.display().to_string()));
        // A path that is a directory.
        let err = SqliteStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    }

    #[test]
    fn prefix_successor_is_the_end_of_the_prefix_range() {
        assert_eq!(prefix_successor(b""), None);
        assert_eq!(prefix_successor(b"\xff"), None);
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b"\x00"), Some(b"\x01".to_vec()));
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"\x01\xff"), Some(b"\x02".to_vec()));
        assert_eq!(
            prefix_successor(b"\x01\xfe\xff\xff"),
            Some(b"\x01\xff".to_vec())
        );
    }

    /// Disk bytes per KiB of committed values: 1,000 puts of 100-byte values (8-byte keys) in
    /// commits of 10. Run alone (it reads this process's I/O counters):
    /// `cargo test store::sqlite::tests::measure_write_amplification -- --ignored --nocapture --exact`
    ///
    /// Measured (ext4, 4 KiB pages; bytes written per KiB of values, before the close checkpoint,
    /// `wchar` / `write_bytes`): 10 puts per commit 18.8 KiB / 22.9 KiB (the WAL gets ~4.5 page
    /// frames per commit: leaf, siblings rebalanced by the index b-tree, parent); 1 put per commit
    /// 62 KiB / 104 KiB; 100 puts per commit 3.4 KiB / 3.8 KiB. The close checkpoint adds ~140 KiB
    /// (the 35-page file) once. Batching is what keeps SD-card wear down.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn measure_write_amplification() {
        fn io_counters() -> (u64, u64) {
            let io = std::fs::read_to_string("/proc/self/io").unwrap();
            let field = |name: &str| {
                io.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().parse::<u64>().unwrap())
                    .unwrap()
            };
            (field("wchar:"), field("write_bytes:"))
        }
        let dir = TempDir::new("measure");
        let path = dir.path().join("gw.db");
        let mut store = SqliteStore::open(&path).unwrap();
        let (wchar0, disk0) = io_counters();
        let start = std::time::Instant::now();
        for batch in 0u64..100 {
            let ops: Vec<Op> = (0..10)
                .map(|i| put(&(batch * 10 + i).to_be_bytes(), &[0x42; 100]))
                .collect();
            store.commit(&ops).unwrap();
        }
        let elapsed = start.elapsed();
        let (wchar1, disk1) = io_counters();
        let wal = std::fs::metadata(dir.path().join("gw.db-wal"))
            .unwrap()
            .len();
        let db = std::fs::metadata(&path).unwrap().len();
        drop(store); // checkpoint into the main file
        let (wchar2, disk2) = io_counters();
        let db_closed = std::fs::metadata(&path).unwrap().len();
        let kib = 1000.0 * 100.0 / 1024.0;
        println!("100 commits x 10 puts x 100 B = {kib:.1} KiB of values in {elapsed:?}");
        println!(
            "before close: wchar {} B ({:.1} B/KiB), write_bytes {} B ({:.1} B/KiB), wal file {wal} B, db file {db} B",
            wchar1 - wchar0,
            (wchar1 - wchar0) as f64 / kib,
            disk1 - disk0,
            (disk1 - disk0) as f64 / kib
        );
        println!(
            "incl. close checkpoint: wchar {} B ({:.1} B/KiB), write_bytes {} B ({:.1} B/KiB), db file {db_closed} B",
            wchar2 - wchar0,
            (wchar2 - wchar0) as f64 / kib,
            disk2 - disk0,
            (disk2 - disk0) as f64 / kib
        );
    }
}
