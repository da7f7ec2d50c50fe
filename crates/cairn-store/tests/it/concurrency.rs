//! Many threads on the same few files and directories at once: writes (unstable and stable),
//! commits, truncations, reads, creates, renames, links and removes. Nothing may deadlock, fail
//! with an unexpected error or read as corrupt, and after `sync_all` a reopened store has exactly
//! the contents the live one showed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::{CreateHow, SetAttributes, Stability, Store, StoreError};

use crate::common::{self, Rng, root};

const THREADS: u64 = 8;
const NAMES: [&[u8]; 6] = [b"a", b"b", b"c", b"d", b"e", b"f"];

fn expected_error(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::NotFound
            | StoreError::Exists
            | StoreError::Stale(_)
            | StoreError::NotEmpty
            | StoreError::IsDirectory
            | StoreError::NotDirectory
            | StoreError::Invalid(_)
    )
}

fn worker(store: &Store, seed: u64, deadline: Instant) -> u64 {
    let mut rng = Rng(seed);
    let top = store.root();
    let dirs: Vec<_> = ["x", "y"]
        .iter()
        .map(|name| match store.mkdir(&root(), top, name.as_bytes(), SetAttributes::default()) {
            Ok(created) => created.fid,
            Err(_) => store.lookup(&root(), top, name.as_bytes()).expect("lookup dir").fid,
        })
        .collect();
    let mut operations = 0;
    while Instant::now() < deadline {
        operations += 1;
        let dir = dirs[rng.below(2) as usize];
        let name = NAMES[rng.below(NAMES.len() as u64) as usize];
        let target = store
            .lookup(&root(), dir, name)
            .ok()
            .filter(|found| found.attributes.kind == cairn_store::FileKind::Regular);
        let result: Result<(), StoreError> = match rng.below(12) {
            0 => store.create(&root(), dir, name, CreateHow::Unchecked(SetAttributes::default())).map(|_| ()),
            1 => store.remove(&root(), dir, name).map(|_| ()),
            2 => {
                let to = dirs[rng.below(2) as usize];
                let to_name = NAMES[rng.below(NAMES.len() as u64) as usize];
                store.rename(&root(), dir, name, to, to_name).map(|_| ())
            }
            3 => match target {
                Some(found) => store
                    .link(&root(), found.fid, dirs[rng.below(2) as usize], NAMES[rng.below(6) as usize])
                    .map(|_| ()),
                None => Ok(()),
            },
            4 => match target {
                Some(found) => store
                    .setattr(
                        &root(),
                        found.fid,
                        SetAttributes { size_bytes: Some(rng.below(3 << 20)), ..Default::default() },
                        None,
                    )
                    .map(|_| ()),
                None => Ok(()),
            },
            5 => match target {
                Some(found) => store.commit(found.fid, 0, 0).map(|_| ()),
                None => Ok(()),
            },
            6..=8 => match target {
                Some(found) => {
                    let length = (rng.below(150_000) + 1) as usize;
                    let data = rng.bytes(length);
                    let stability = if rng.chance(20) { Stability::FileSync } else { Stability::Unstable };
                    store.write(&root(), found.fid, rng.below(3 << 20), &data, stability).map(|_| ())
                }
                None => Ok(()),
            },
            _ => match target {
                Some(found) => store.read(&root(), found.fid, rng.below(3 << 20), 200_000).map(|_| ()),
                None => Ok(()),
            },
        };
        if let Err(error) = result {
            assert!(expected_error(&error), "unexpected error: {error}");
        }
    }
    operations
}

fn snapshot(store: &Store) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for dir_name in [b"x".as_slice(), b"y"] {
        let dir = store.lookup(&root(), store.root(), dir_name).expect("dir").fid;
        let page = store.readdir(&root(), dir, 0, 1000, true).expect("readdir");
        for entry in page.entries.iter().filter(|entry| entry.name != b"." && entry.name != b"..") {
            let contents = match entry.attributes.expect("attributes").kind {
                cairn_store::FileKind::Regular => common::read_all(store, entry.fid),
                _ => Vec::new(),
            };
            out.push((dir_name.to_vec(), entry.name.clone(), contents));
        }
    }
    out
}

#[test]
fn concurrent_mixed_operations() {
    let seed = common::seed("concurrent_mixed_operations");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(common::open(dir.path()));
    let deadline = Instant::now() + Duration::from_secs(4);
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || worker(&store, seed.wrapping_add(thread), deadline))
        })
        .collect();
    let operations: u64 = handles.into_iter().map(|handle| handle.join().expect("worker")).sum();
    eprintln!("concurrent_mixed_operations: {operations} operations");
    let before = snapshot(&store);
    store.sync_all().expect("sync_all");
    let store = Arc::into_inner(store).expect("only owner");
    drop(store);
    let store = common::open(dir.path());
    let after = snapshot(&store);
    assert_eq!(before.len(), after.len());
    for (left, right) in before.iter().zip(&after) {
        assert!(
            left == right,
            "{:?}/{:?} differs after a clean reopen",
            String::from_utf8_lossy(&left.0),
            String::from_utf8_lossy(&left.1)
        );
    }
}
