//! Volume quotas: `used_bytes` counts the logical sizes of the regular files exactly (across
//! removals, hard links, renames over files, truncations, reopening, crashes, stores made
//! before the counter existed), and growth past the hard quota fails with `QuotaExceeded`
//! without changing anything, while everything that does not grow a file still works.

use std::sync::Arc;

use cairn_store::{CreateHow, SetAttributes, Stability, Store, StoreConfig, StoreError};
use cairn_types::Fid;

use crate::common::{self, Rng, create_file, read_all, root, walk_used_bytes, write_all};

fn config_with_quota(dir: &std::path::Path, quota: Option<u64>) -> StoreConfig {
    let mut config = common::config(dir);
    config.quota_bytes = quota;
    config
}

fn set_size(store: &Store, fid: Fid, size: u64) -> Result<(), StoreError> {
    store
        .setattr(&root(), fid, SetAttributes { size_bytes: Some(size), ..Default::default() }, None)
        .map(|_| ())
}

fn assert_quota_exceeded<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::QuotaExceeded) => {}
        other => panic!("{what}: expected QuotaExceeded, got {other:?}"),
    }
}

/// Writes up to the quota succeed, the one that would cross fails and changes nothing, what
/// does not grow a file works at the quota, and freeing space lets writes in again.
#[test]
fn writes_stop_exactly_at_the_quota() {
    // Chunks are 1 MiB in these tests: the file spans the inline part and three chunks.
    const QUOTA: u64 = 2_500_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config_with_quota(dir.path(), Some(QUOTA))).unwrap();
    assert_eq!(store.quota(), Some(QUOTA));
    assert_eq!(store.used_bytes(), 0);
    let top = store.root();
    let a = create_file(&store, &root(), top, "a");
    let mut rng = Rng(11);
    let mut expected = rng.bytes(QUOTA as usize);
    for (index, piece) in expected.chunks(500_000).enumerate() {
        let stability = if index % 2 == 0 { Stability::FileSync } else { Stability::Unstable };
        write_all(&store, a, index as u64 * 500_000, piece, stability);
        assert_eq!(store.used_bytes(), (index as u64 + 1) * 500_000);
    }
    assert_eq!(store.used_bytes(), QUOTA, "exactly at the quota");

    // Crossing it: by one byte past the end, by a write that starts inside the file, by a
    // sparse write, by SETATTR.
    let before = store.getattr(a).unwrap();
    assert_quota_exceeded(store.write(&root(), a, QUOTA, b"x", Stability::FileSync), "append");
    assert_quota_exceeded(
        store.write(&root(), a, QUOTA - 5_000, &[0xee; 10_000], Stability::Unstable),
        "overlapping write",
    );
    assert_quota_exceeded(store.write(&root(), a, 10 * QUOTA, b"x", Stability::Unstable), "sparse write");
    assert_quota_exceeded(set_size(&store, a, QUOTA + 1), "setattr growth");
    assert_eq!(store.getattr(a).unwrap(), before, "a refused growth changed the attributes");
    assert!(read_all(&store, a) == expected, "a refused growth changed the content");
    assert_eq!(store.used_bytes(), QUOTA);

    // At the quota: overwrites, metadata, creations of empty files, renames, links.
    let overwrite = rng.bytes(300_000);
    write_all(&store, a, 1_000_000, &overwrite, Stability::Unstable);
    expected[1_000_000..1_300_000].copy_from_slice(&overwrite);
    write_all(&store, a, QUOTA - 10, &[7; 10], Stability::FileSync);
    expected[QUOTA as usize - 10..].fill(7);
    store.commit(a, 0, 0).unwrap();
    assert!(read_all(&store, a) == expected);
    set_size(&store, a, QUOTA).unwrap();
    store.setattr(&root(), a, SetAttributes { mode: Some(0o600), ..Default::default() }, None).unwrap();
    let b = create_file(&store, &root(), top, "b");
    store.mkdir(&root(), top, b"d", SetAttributes::default()).unwrap();
    store.symlink(&root(), top, b"s", b"a", SetAttributes::default()).unwrap();
    store.rename(&root(), top, b"a", top, b"a2").unwrap();
    store.link(&root(), a, top, b"a3").unwrap();
    assert_eq!(store.used_bytes(), QUOTA, "a second link counts nothing");
    assert_quota_exceeded(store.write(&root(), b, 0, b"y", Stability::Unstable), "write to an empty file");
    let sized = SetAttributes { size_bytes: Some(1), ..Default::default() };
    assert_quota_exceeded(store.create(&root(), top, b"c", CreateHow::Guarded(sized)), "create with a size");
    assert!(
        matches!(store.lookup(&root(), top, b"c"), Err(StoreError::NotFound)),
        "a refused create left a file"
    );
    assert_eq!(store.getattr(b).unwrap().size_bytes, 0);

    // Shrinking frees bytes for another file.
    set_size(&store, a, QUOTA - 100_000).unwrap();
    expected.truncate((QUOTA - 100_000) as usize);
    assert_eq!(store.used_bytes(), QUOTA - 100_000);
    write_all(&store, b, 0, &[1; 100_000], Stability::Unstable);
    assert_quota_exceeded(
        store.write(&root(), b, 100_000, b"z", Stability::Unstable),
        "write past the quota",
    );
    assert_eq!(store.used_bytes(), QUOTA);

    // Removing one of two links frees nothing; removing the last one frees the file's bytes.
    store.remove(&root(), top, b"a2").unwrap();
    assert_eq!(store.used_bytes(), QUOTA);
    assert!(read_all(&store, a) == expected);
    store.remove(&root(), top, b"a3").unwrap();
    assert_eq!(store.used_bytes(), 100_000);
    let c = create_file(&store, &root(), top, "c");
    write_all(&store, c, 0, &[2; 1_000_000], Stability::FileSync);
    assert_eq!(store.used_bytes(), 1_100_000);
    // A rename over a file frees the replaced file's bytes.
    store.rename(&root(), top, b"b", top, b"c").unwrap();
    assert_eq!(store.used_bytes(), 100_000);
    assert_eq!(walk_used_bytes(&store), 100_000);

    // The quota is a runtime setting: lifted, lowered below the usage.
    let big = create_file(&store, &root(), top, "big");
    assert_quota_exceeded(set_size(&store, big, QUOTA), "growth past the quota");
    store.set_quota(None);
    assert_eq!(store.quota(), None);
    set_size(&store, big, 10 * QUOTA).unwrap();
    store.set_quota(Some(QUOTA));
    assert_quota_exceeded(store.write(&root(), b, 100_000, b"z", Stability::Unstable), "over the quota");
    write_all(&store, b, 0, b"overwrite over the quota", Stability::FileSync);
    set_size(&store, big, 1).unwrap();
    assert_eq!(store.used_bytes(), 100_001);
    store.write(&root(), b, 100_000, b"z", Stability::FileSync).unwrap();
    assert_eq!(store.used_bytes(), walk_used_bytes(&store));
}

/// Concurrent writers against one quota: none passes it, and the bytes written add up.
#[test]
fn concurrent_writers_never_pass_the_quota() {
    const QUOTA: u64 = 6_000_000;
    const PIECE: usize = 70_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(config_with_quota(dir.path(), Some(QUOTA))).unwrap());
    let threads: Vec<_> = (0..6)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let top = store.root();
                let fid = create_file(&store, &root(), top, &format!("w{thread}"));
                let mut size = 0u64;
                loop {
                    // Appends, and now and then a SETATTR that grows the file.
                    let result = if size % 3 == 1 {
                        set_size(&store, fid, size + PIECE as u64)
                    } else {
                        let stability =
                            if thread % 2 == 0 { Stability::Unstable } else { Stability::FileSync };
                        store.write(&root(), fid, size, &[thread as u8; PIECE], stability).map(|_| ())
                    };
                    match result {
                        Ok(()) => size += PIECE as u64,
                        Err(StoreError::QuotaExceeded) => break,
                        Err(error) => panic!("writer {thread}: {error}"),
                    }
                    assert!(store.used_bytes() <= QUOTA);
                }
                store.commit(fid, 0, 0).unwrap();
                size
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|thread| thread.join().unwrap()).sum();
    let used = store.used_bytes();
    assert_eq!(used, total, "used bytes are the bytes the writers were told they wrote");
    assert!(used <= QUOTA, "used {used} past the quota {QUOTA}");
    // Every writer stopped because its next piece did not fit.
    assert!(used + PIECE as u64 > QUOTA, "writers stopped early: {used}");
    assert_eq!(walk_used_bytes(&store), used);
}

/// The counter is persisted with the inode records: a clean reopen and a crash (with
/// uncommitted writes, truncations, removals, renames over files in flight) leave it equal to
/// the sum of the sizes that survived.
#[test]
fn used_bytes_survive_reopen_and_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(common::seed("used_bytes_survive_reopen_and_crash"));
    let mut store = common::open(dir.path());
    let mut files: Vec<(String, Fid)> = Vec::new();
    for round in 0..6 {
        for step in 0..60 {
            let top = store.root();
            match rng.below(10) {
                0..=1 => {
                    let name = format!("f{round}-{step}");
                    let fid = create_file(&store, &root(), top, &name);
                    files.push((name, fid));
                }
                2..=5 if !files.is_empty() => {
                    let (_, fid) = &files[rng.below(files.len() as u64) as usize];
                    let offset = rng.below(3_000_000);
                    let length = rng.below(200_000) as usize + 1;
                    let data = rng.bytes(length);
                    let stability = if rng.chance(50) { Stability::Unstable } else { Stability::FileSync };
                    write_all(&store, *fid, offset, &data, stability);
                    if rng.chance(30) {
                        store.commit(*fid, 0, 0).unwrap();
                    }
                }
                6 if !files.is_empty() => {
                    let (_, fid) = &files[rng.below(files.len() as u64) as usize];
                    set_size(&store, *fid, rng.below(2_000_000)).unwrap();
                }
                7 if files.len() > 1 => {
                    let (name, _) = files.swap_remove(rng.below(files.len() as u64) as usize);
                    store.remove(&root(), top, name.as_bytes()).unwrap();
                }
                8 if files.len() > 1 => {
                    // Rename over another file: the replaced one goes.
                    let (from, _) = files.swap_remove(rng.below(files.len() as u64) as usize);
                    let index = rng.below(files.len() as u64) as usize;
                    let to = files[index].0.clone();
                    store.rename(&root(), top, from.as_bytes(), top, to.as_bytes()).unwrap();
                    files[index].1 = store.lookup(&root(), top, to.as_bytes()).unwrap().fid;
                }
                _ => {}
            }
            assert_eq!(store.used_bytes(), walk_used_bytes(&store), "round {round} step {step}");
        }
        let before = store.used_bytes();
        let crash = round % 2 == 1;
        if crash {
            store.simulate_crash();
        } else {
            store.sync_all().unwrap();
            drop(store);
        }
        store = common::open(dir.path());
        let after = store.used_bytes();
        assert_eq!(
            after,
            walk_used_bytes(&store),
            "round {round}: after a {}",
            if crash { "crash" } else { "reopen" }
        );
        if !crash {
            assert_eq!(after, before, "round {round}: a clean reopen changed the count");
        }
        eprintln!("round {round}: {before} bytes used before, {after} after");
    }
}

/// A store made before the counter existed has no `used_bytes` row: it counts once at opening,
/// and its next batch writes the row.
#[test]
fn a_store_without_the_row_counts_at_opening() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let store = common::open(dir.path());
        let top = store.root();
        let a = create_file(&store, &root(), top, "a");
        write_all(&store, a, 0, &[1; 300_000], Stability::FileSync);
        let b = create_file(&store, &root(), top, "b");
        set_size(&store, b, 5_000_000).unwrap();
        store.link(&root(), b, top, b"b2").unwrap();
        store.symlink(&root(), top, b"s", b"a-rather-long-target", SetAttributes::default()).unwrap();
        store.sync_all().unwrap();
        store.used_bytes()
    };
    assert_eq!(expected, 5_300_000);
    let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let db_path = dir.path().join("containers/1/name.redb");
    let remove_row = || {
        let db = redb::Database::open(&db_path).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut table = write.open_table(meta).unwrap();
            assert_eq!(table.remove("used_bytes").unwrap().map(|value| value.value()), Some(expected));
        }
        write.commit().unwrap();
    };
    let has_row = || {
        use redb::ReadableDatabase;
        let db = redb::Database::open(&db_path).unwrap();
        let read = db.begin_read().unwrap();
        read.open_table(meta).unwrap().get("used_bytes").unwrap().map(|value| value.value())
    };
    remove_row();
    assert_eq!(has_row(), None);
    {
        let store = common::open(dir.path());
        assert_eq!(store.used_bytes(), expected, "counted at opening");
        // Not written by the opening: a crash before any batch counts again.
        store.simulate_crash();
    }
    let store = common::open(dir.path());
    assert_eq!(store.used_bytes(), expected);
    let c = create_file(&store, &root(), store.root(), "c");
    write_all(&store, c, 0, &[3; 1000], Stability::FileSync);
    store.sync_all().unwrap();
    drop(store);
    assert_eq!(has_row(), Some(expected + 1000), "the first batches wrote the row");
}
