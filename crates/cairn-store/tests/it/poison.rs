//! A failed fsync is never retried: the store is poisoned, every later change fails with
//! `Poisoned`, and the write verifier changes (acknowledged unstable data may be lost).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_store::{CreateHow, FailPoint, SetAttributes, Stability, StoreError};

use crate::common::{create_file, open, read_all, root, write_all};

#[test]
fn failed_data_fsync_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let fid = create_file(&store, &root(), store.root(), "f");
    write_all(&store, fid, 0, &vec![1u8; 200_000], Stability::FileSync);
    let verifier = store.write_verifier();
    write_all(&store, fid, 200_000, &vec![2u8; 100_000], Stability::Unstable);
    store.inject_failure(FailPoint::DataSync);
    assert!(store.commit(fid, 0, 0).is_err());
    assert!(store.is_poisoned());
    assert_ne!(store.write_verifier(), verifier);
    assert!(matches!(store.write(&root(), fid, 0, b"x", Stability::Unstable), Err(StoreError::Poisoned(_))));
    assert!(matches!(store.commit(fid, 0, 0), Err(StoreError::Poisoned(_))));
    assert!(matches!(
        store.create(&root(), store.root(), b"g", CreateHow::Unchecked(SetAttributes::default())),
        Err(StoreError::Poisoned(_))
    ));
    assert!(matches!(store.remove(&root(), store.root(), b"f"), Err(StoreError::Poisoned(_))));
    assert!(matches!(store.sync_all(), Err(StoreError::Poisoned(_))));
    // Reads still work.
    assert_eq!(store.getattr(fid).unwrap().size_bytes, 300_000);
    drop(store);
    // A new incarnation recovers from disk with a new verifier; what was durable is there.
    let store = open(dir.path());
    assert!(!store.is_poisoned());
    let data = read_all(&store, fid);
    assert!(data[..200_000].iter().all(|&byte| byte == 1));
}

#[test]
fn failed_metadata_fsync_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let verifier = store.write_verifier();
    let fid = create_file(&store, &root(), store.root(), "f");
    store.inject_failure(FailPoint::MetadataSync);
    let result = store.create(&root(), store.root(), b"g", CreateHow::Unchecked(SetAttributes::default()));
    assert!(matches!(result, Err(StoreError::Poisoned(_))), "{result:?}");
    assert_ne!(store.write_verifier(), verifier);
    // Never retried: the next change fails too, without touching the disk.
    assert!(matches!(
        store.mkdir(&root(), store.root(), b"d", SetAttributes::default()),
        Err(StoreError::Poisoned(_))
    ));
    assert!(matches!(store.write(&root(), fid, 0, b"x", Stability::FileSync), Err(StoreError::Poisoned(_))));
    drop(store);
    let store = open(dir.path());
    assert!(store.lookup(&root(), store.root(), b"f").is_ok());
}

/// Pipelined group commit: batches are applied while an earlier one's fdatasync runs. With many
/// creators in flight, a failed metadata fdatasync fails every batch it did not make durable, and
/// no later one is acknowledged; every create acknowledged survives a reopen.
#[test]
fn failed_metadata_fsync_under_concurrent_creates() {
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let acknowledged = AtomicUsize::new(0);
    let started = Instant::now();
    // Per thread: (name, call started, call returned, succeeded).
    let calls: Vec<Vec<(String, Duration, Duration, bool)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (store, acknowledged) = (&store, &acknowledged);
                scope.spawn(move || {
                    let mut calls = Vec::new();
                    for n in 0.. {
                        let name = format!("t{thread}-{n}");
                        let call_started = started.elapsed();
                        let how = CreateHow::Unchecked(SetAttributes::default());
                        let result = store.create(&root(), store.root(), name.as_bytes(), how);
                        let ok = match result {
                            Ok(_) => true,
                            Err(StoreError::Poisoned(_)) => false,
                            Err(error) => panic!("create {name}: {error:?}"),
                        };
                        calls.push((name, call_started, started.elapsed(), ok));
                        if !ok {
                            break;
                        }
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    calls
                })
            })
            .collect();
        while acknowledged.load(Ordering::SeqCst) < 400 {
            std::thread::sleep(Duration::from_millis(1));
        }
        store.inject_failure(FailPoint::MetadataSync);
        workers.into_iter().map(|worker| worker.join().unwrap()).collect()
    });
    let (batches, operations) = store.group_commit_stats();
    assert!(batches < operations, "{THREADS} creators never shared a batch: {batches} batches");
    let first_failure = calls.iter().flatten().filter(|call| !call.3).map(|call| call.2).min();
    let first_failure = first_failure.expect("the failed fdatasync failed no create");
    for (name, call_started, _, ok) in calls.iter().flatten() {
        assert!(
            !(*ok && *call_started > first_failure),
            "{name} was acknowledged though it started after a create had failed"
        );
    }
    drop(store);
    let store = open(dir.path());
    let mut survivors = 0;
    for (name, _, _, ok) in calls.iter().flatten() {
        if *ok {
            assert!(store.lookup(&root(), store.root(), name.as_bytes()).is_ok(), "{name} was lost");
            survivors += 1;
        }
    }
    assert!(survivors >= 400, "{survivors} acknowledged creates");
}

#[test]
fn failed_data_write_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let fid = create_file(&store, &root(), store.root(), "f");
    let verifier = store.write_verifier();
    store.inject_failure(FailPoint::DataWrite);
    assert!(store.write(&root(), fid, 100_000, &[3u8; 10_000], Stability::Unstable).is_err());
    assert!(store.is_poisoned());
    assert_ne!(store.write_verifier(), verifier);
    assert!(matches!(store.write(&root(), fid, 0, b"x", Stability::Unstable), Err(StoreError::Poisoned(_))));
}
