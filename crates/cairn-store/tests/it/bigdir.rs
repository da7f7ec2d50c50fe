//! A directory of a million entries, listed page by page along one cookie chain while entries
//! are added and removed concurrently: every entry present throughout the listing is returned
//! exactly once, and nothing is returned twice. Runs on a tmpfs (fsync is free there, so the
//! test measures the store, not the disk). `CAIRN_BIGDIR_ENTRIES` changes the size.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cairn_store::{CreateHow, SetAttributes, Store, StoreConfig};

use crate::common::{self, root};
use crate::nospace::Tmpfs;

const THREADS: u64 = 128;
const PAGE_ENTRIES: usize = 1000;

#[test]
fn million_entries_stable_listing() {
    let entries: u64 =
        std::env::var("CAIRN_BIGDIR_ENTRIES").ok().and_then(|value| value.parse().ok()).unwrap_or(1_000_000);
    let tmpfs = Tmpfs::mount("4g");
    let mut config = StoreConfig::new(&tmpfs.path);
    config.chunk_size_bytes = common::TEST_CHUNK_BYTES;
    config.space_reserve_bytes = 4 << 20;
    let store = Arc::new(Store::open(config).expect("open"));
    let dir = store.mkdir(&root(), store.root(), b"big", SetAttributes::default()).expect("mkdir").fid;
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                for index in (thread..entries).step_by(THREADS as usize) {
                    let name = format!("entry-{index:07}");
                    store
                        .create(&root(), dir, name.as_bytes(), CreateHow::Guarded(SetAttributes::default()))
                        .expect("create");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("creator");
    }
    let (batches, operations) = store.group_commit_stats();
    eprintln!(
        "created {entries} entries in {:?} ({batches} batches, {:.1} operations per batch)",
        started.elapsed(),
        operations as f64 / batches as f64
    );

    // Churn while listing: remove every 7th original entry, add new ones.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let store = store.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut removed = HashSet::new();
            let mut index = 0u64;
            while !stop.load(Ordering::SeqCst) && index * 7 < entries {
                let victim = format!("entry-{:07}", index * 7);
                store.remove(&root(), dir, victim.as_bytes()).expect("remove");
                removed.insert(victim.into_bytes());
                let name = format!("new-{index:07}");
                store
                    .create(&root(), dir, name.as_bytes(), CreateHow::Guarded(SetAttributes::default()))
                    .expect("create new");
                index += 1;
            }
            removed
        })
    };
    let started = Instant::now();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut cookie = 0;
    let mut pages = 0;
    loop {
        let page = store.readdir(&root(), dir, cookie, PAGE_ENTRIES, false).expect("readdir");
        pages += 1;
        for entry in &page.entries {
            assert!(entry.cookie > cookie, "cookies go forward");
            assert!(
                seen.insert(entry.name.clone()),
                "{:?} returned twice",
                String::from_utf8_lossy(&entry.name)
            );
        }
        cookie = page.entries.last().map_or(cookie, |entry| entry.cookie);
        if page.eof {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let removed = churn.join().expect("churn");
    eprintln!(
        "listed {} entries in {pages} pages in {:?}; {} removed meanwhile",
        seen.len(),
        started.elapsed(),
        removed.len()
    );
    assert!(!removed.is_empty(), "no churn happened during the listing");
    for index in 0..entries {
        let name = format!("entry-{index:07}").into_bytes();
        if !removed.contains(&name) {
            assert!(seen.contains(&name), "entry-{index:07} present throughout but not listed");
        }
    }
    assert!(seen.contains(b".".as_slice()) && seen.contains(b"..".as_slice()));
}
