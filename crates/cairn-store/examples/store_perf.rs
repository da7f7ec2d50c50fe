//! Throughput and latency of the store alone, without the network: they measure, they do not
//! judge. Run in release: `cargo run --release -p cairn-store --example store_perf`.
//! `CAIRN_PERF_DIR` chooses the file system (default: the system temp dir).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use cairn_store::{CreateHow, SetAttributes, Stability, Store};

use cairn_store::Caller;
use cairn_types::Fid;

fn root() -> Caller {
    Caller::root()
}

fn create_file(store: &Store, caller: &Caller, directory: Fid, name: &str) -> Fid {
    store
        .create(caller, directory, name.as_bytes(), CreateHow::Guarded(SetAttributes::default()))
        .unwrap()
        .fid
}

/// xorshift64: enough randomness for offsets.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn main() {
    perf_metadata();
    perf_data();
}

fn perf_dir() -> tempfile::TempDir {
    match std::env::var("CAIRN_PERF_DIR") {
        Ok(path) => tempfile::tempdir_in(path).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn open(dir: &std::path::Path) -> Store {
    let mut config = cairn_store::StoreConfig::new(dir);
    config.space_reserve_bytes = 16 * 1024 * 1024;
    Store::open(config).unwrap()
}

fn perf_metadata() {
    let dir = perf_dir();
    let store = Arc::new(open(dir.path()));
    // One call in flight: every create waits for its own journal fdatasync.
    let single = 2000;
    let started = Instant::now();
    for index in 0..single {
        create_file(&store, &root(), store.root(), &format!("single-{index}"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("creates: {:.0}/s with 1 thread", f64::from(single) / elapsed);
    let started = Instant::now();
    for index in 0..single {
        store.remove(&root(), store.root(), format!("single-{index}").as_bytes()).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("removes: {:.0}/s with 1 thread", f64::from(single) / elapsed);

    let threads = 16;
    let per_thread = 2000;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let top = store.root();
                for index in 0..per_thread {
                    let name = format!("t{thread}-{index}");
                    store
                        .create(&root(), top, name.as_bytes(), CreateHow::Guarded(SetAttributes::default()))
                        .unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("creates: {:.0}/s with {threads} threads", f64::from(threads * per_thread) / elapsed);

    let fid = store.lookup(&root(), store.root(), b"t0-0").unwrap().fid;
    let rounds = 200_000;
    let started = Instant::now();
    for _ in 0..rounds {
        store.getattr(fid).unwrap();
    }
    println!("getattr: {:.2} us", started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds));
    let started = Instant::now();
    for _ in 0..rounds {
        store.lookup(&root(), store.root(), b"t3-17").unwrap();
    }
    println!("lookup: {:.2} us", started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds));

    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let top = store.root();
                for index in 0..per_thread {
                    let name = format!("t{thread}-{index}");
                    store.remove(&root(), top, name.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("removes: {:.0}/s with {threads} threads", f64::from(threads * per_thread) / elapsed);
}

fn perf_data() {
    let dir = perf_dir();
    let store = open(dir.path());
    let fid = create_file(&store, &root(), store.root(), "seq");
    let block = vec![0x5au8; 1 << 20];
    let total_mib = 1024u64;
    let started = Instant::now();
    for index in 0..total_mib {
        store.write(&root(), fid, index << 20, &block, Stability::Unstable).unwrap();
    }
    let written = started.elapsed().as_secs_f64();
    store.commit(fid, 0, 0).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "sequential 1 MiB writes + commit: {:.0} MB/s (writes {:.2} s, commit {:.2} s per GiB)",
        (total_mib << 20) as f64 / elapsed / 1e6,
        written,
        elapsed - written
    );

    let started = Instant::now();
    for index in 0..total_mib {
        let result = store.read(&root(), fid, index << 20, 1 << 20).unwrap();
        assert_eq!(result.data.len(), 1 << 20);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("1 MiB reads (page cache): {:.2} GB/s", (total_mib << 20) as f64 / elapsed / 1e9);

    let random = create_file(&store, &root(), store.root(), "random");
    let size = 256u64 << 20;
    store
        .setattr(&root(), random, SetAttributes { size_bytes: Some(size), ..Default::default() }, None)
        .unwrap();
    let small = vec![0xa5u8; 4096];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let count = 50_000;
    let started = Instant::now();
    for _ in 0..count {
        let offset = rng.below(size / 4096) * 4096;
        store.write(&root(), random, offset, &small, Stability::Unstable).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("random 4 KiB unstable writes: {:.0}/s", f64::from(count) / elapsed);
    let started = Instant::now();
    store.commit(random, 0, 0).unwrap();
    println!("commit after them: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
}
