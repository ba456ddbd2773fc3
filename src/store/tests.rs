//! The [`Store`] contract, run against every implementation, plus helpers the other store tests
//! share (unique temporary directories).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A fresh directory under `std::env::temp_dir()`, removed with everything in it on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mqttsn-store-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `test` once on a [`MemoryStore`] and once on a fresh [`SqliteStore`].
fn each_store(test: impl Fn(&mut dyn Store)) {
    test(&mut MemoryStore::new());
    let dir = TempDir::new("contract");
    let mut sqlite = SqliteStore::open(&dir.path().join("gw.db")).expect("open");
    test(&mut sqlite);
}

fn put(table: Table, key: &[u8], value: &[u8]) -> Op {
    Op::Put {
        table,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn delete_prefix(table: Table, prefix: &[u8]) -> Op {
    Op::DeletePrefix {
        table,
        prefix: prefix.to_vec(),
    }
}

fn keys(store: &mut dyn Store, table: Table) -> Vec<Vec<u8>> {
    store
        .load()
        .expect("load")
        .into_iter()
        .filter(|(t, _, _)| *t == table)
        .map(|(_, key, _)| key)
        .collect()
}

#[test]
fn load_returns_puts_ordered_by_table_then_key() {
    each_store(|store| {
        assert_eq!(store.load().unwrap(), vec![]);
        store
            .commit(&[
                put(Table::Uplink, b"b", b"3"),
                put(Table::Device, b"b", b"2"),
                put(Table::Device, b"a", b"1"),
                put(Table::Buffer, b"\xff", b"0"),
                put(Table::Device, b"", b"empty key"),
            ])
            .unwrap();
        assert_eq!(
            store.load().unwrap(),
            vec![
                // Table order is declaration order, not name order ("buffer" < "device").
                (Table::Device, b"".to_vec(), b"empty key".to_vec()),
                (Table::Device, b"a".to_vec(), b"1".to_vec()),
                (Table::Device, b"b".to_vec(), b"2".to_vec()),
                (Table::Buffer, b"\xff".to_vec(), b"0".to_vec()),
                (Table::Uplink, b"b".to_vec(), b"3".to_vec()),
            ]
        );
    });
}

#[test]
fn put_replaces_the_value_of_an_existing_key() {
    each_store(|store| {
        store.commit(&[put(Table::Device, b"k", b"old")]).unwrap();
        store.commit(&[put(Table::Device, b"k", b"new")]).unwrap();
        assert_eq!(
            store.load().unwrap(),
            vec![(Table::Device, b"k".to_vec(), b"new".to_vec())]
        );
    });
}

#[test]
fn delete_removes_one_key_of_one_table() {
    each_store(|store| {
        store
            .commit(&[
                put(Table::Device, b"a", b"1"),
                put(Table::Device, b"b", b"2"),
                put(Table::Buffer, b"a", b"3"),
            ])
            .unwrap();
        let delete = |key: &[u8]| Op::Delete {
            table: Table::Device,
            key: key.to_vec(),
        };
        // Deleting an absent key is not an error.
        store.commit(&[delete(b"a"), delete(b"absent")]).unwrap();
        assert_eq!(keys(store, Table::Device), vec![b"b".to_vec()]);
        assert_eq!(keys(store, Table::Buffer), vec![b"a".to_vec()]);
    });
}

#[test]
fn delete_prefix_removes_exactly_the_keys_that_start_with_it() {
    each_store(|store| {
        let all: &[&[u8]] = &[
            b"",
            b"\x01",
            b"\x01\x00",
            b"\x01\x7f\xff",
            b"\x01\xff",
            b"\x02",
            b"\x00\x01",
        ];
        let ops: Vec<Op> = all.iter().map(|k| put(Table::Buffer, k, b"v")).collect();
        store.commit(&ops).unwrap();
        store
            .commit(&[put(Table::Uplink, b"\x01", b"other table")])
            .unwrap();

        store
            .commit(&[delete_prefix(Table::Buffer, b"\x01")])
            .unwrap();
        assert_eq!(
            keys(store, Table::Buffer),
            vec![b"".to_vec(), b"\x00\x01".to_vec(), b"\x02".to_vec()]
        );
        assert_eq!(keys(store, Table::Uplink), vec![b"\x01".to_vec()]);
    });
}

#[test]
fn delete_prefix_handles_edge_prefixes() {
    // (prefix, keys that must survive); the keys put are the same each time.
    let all: &[&[u8]] = &[
        b"",
        b"\x00",
        b"\x01",
        b"\x01\xfe\xff",
        b"\x01\xff",
        b"\x01\xff\x00",
        b"\x01\xff\xff",
        b"\x02",
        b"\xfe\xff",
        b"\xff",
        b"\xff\x00",
        b"\xff\xff",
        b"\xff\xff\xff",
    ];
    let cases: &[(&[u8], &[&[u8]])] = &[
        // Empty prefix: the whole table (but no other table).
        (b"", &[]),
        // All-0xFF prefixes have no successor: the range is open-ended.
        (
            b"\xff",
            &[
                b"",
                b"\x00",
                b"\x01",
                b"\x01\xfe\xff",
                b"\x01\xff",
                b"\x01\xff\x00",
                b"\x01\xff\xff",
                b"\x02",
                b"\xfe\xff",
            ],
        ),
        (
            b"\xff\xff",
            &[
                b"",
                b"\x00",
                b"\x01",
                b"\x01\xfe\xff",
                b"\x01\xff",
                b"\x01\xff\x00",
                b"\x01\xff\xff",
                b"\x02",
                b"\xfe\xff",
                b"\xff",
                b"\xff\x00",
            ],
        ),
        // A trailing 0xFF carries into the byte before it: [01 ff] ends before [02].
        (
            b"\x01\xff",
            &[
                b"",
                b"\x00",
                b"\x01",
                b"\x01\xfe\xff",
                b"\x02",
                b"\xfe\xff",
                b"\xff",
                b"\xff\x00",
                b"\xff\xff",
                b"\xff\xff\xff",
            ],
        ),
        // A 0x00 prefix: the lowest byte.
        (
            b"\x00",
            &[
                b"",
                b"\x01",
                b"\x01\xfe\xff",
                b"\x01\xff",
                b"\x01\xff\x00",
                b"\x01\xff\xff",
                b"\x02",
                b"\xfe\xff",
                b"\xff",
                b"\xff\x00",
                b"\xff\xff",
                b"\xff\xff\xff",
            ],
        ),
        // A prefix longer than every key removes nothing.
        (b"\x01\xff\xff\xff", all),
    ];
    for (prefix, survivors) in cases {
        each_store(|store| {
            let ops: Vec<Op> = all.iter().map(|k| put(Table::Uplink, k, b"v")).collect();
            store.commit(&ops).unwrap();
            store
                .commit(&[put(Table::Device, b"\xff", b"other table")])
                .unwrap();
            store
                .commit(&[delete_prefix(Table::Uplink, prefix)])
                .unwrap();
            let expected: Vec<Vec<u8>> = survivors.iter().map(|k| k.to_vec()).collect();
            assert_eq!(keys(store, Table::Uplink), expected, "prefix {prefix:02x?}");
            assert_eq!(keys(store, Table::Device), vec![b"\xff".to_vec()]);
        });
    }
}

#[test]
fn ops_apply_in_order_within_one_commit() {
    each_store(|store| {
        store
            .commit(&[
                put(Table::Device, b"gone", b"1"),
                Op::Delete {
                    table: Table::Device,
                    key: b"gone".to_vec(),
                },
                delete_prefix(Table::Device, b"kept"),
                put(Table::Device, b"kept", b"2"),
            ])
            .unwrap();
        assert_eq!(keys(store, Table::Device), vec![b"kept".to_vec()]);
        store.commit(&[]).unwrap(); // an empty commit is fine
    });
}

#[test]
fn memory_crash_copy_keeps_only_committed_data() {
    let mut store = MemoryStore::new();
    store.commit(&[put(Table::Device, b"a", b"1")]).unwrap();
    store.fail_next_commits(1);
    let err = store
        .commit(&[
            put(Table::Device, b"b", b"2"),
            delete_prefix(Table::Device, b""),
        ])
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");

    let mut after_crash = store.crash_copy();
    assert_eq!(
        after_crash.load().unwrap(),
        vec![(Table::Device, b"a".to_vec(), b"1".to_vec())]
    );
    assert_eq!(store.commits(), 1);
    // The copy is independent of the original.
    after_crash
        .commit(&[put(Table::Device, b"c", b"3")])
        .unwrap();
    assert_eq!(store.get(Table::Device, b"c"), None);
    assert_eq!(after_crash.get(Table::Device, b"c"), Some(&b"3"[..]));
}

#[test]
fn table_names_round_trip_and_are_distinct() {
    for table in Table::ALL {
        assert_eq!(Table::from_name(table.name()), Some(table));
    }
    assert_eq!(Table::from_name("nope"), None);
    let mut sorted = Table::ALL;
    sorted.sort();
    assert_eq!(sorted, Table::ALL, "ALL is in load order");
}
