//! Helpers shared by the test modules.

use cairn_store::{Caller, CreateHow, SetAttributes, Stability, Store, StoreConfig};
use cairn_types::Fid;

/// Chunk size used by tests: small, so that chunk boundaries are exercised.
pub const TEST_CHUNK_BYTES: u64 = 1024 * 1024;

pub fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.chunk_size_bytes = TEST_CHUNK_BYTES;
    config.space_reserve_bytes = 4 * 1024 * 1024;
    config.journal_bytes = 4 * 1024 * 1024;
    config
}

pub fn open(dir: &std::path::Path) -> Store {
    Store::open(config(dir)).expect("open store")
}

pub fn root() -> Caller {
    Caller::root()
}

pub fn user(uid: u32, gid: u32) -> Caller {
    Caller { uid, gid, groups: Vec::new() }
}

pub fn create_file(store: &Store, caller: &Caller, dir: Fid, name: &str) -> Fid {
    store
        .create(caller, dir, name.as_bytes(), CreateHow::Guarded(SetAttributes::default()))
        .unwrap_or_else(|error| panic!("create {name}: {error}"))
        .fid
}

pub fn write_all(store: &Store, fid: Fid, offset: u64, data: &[u8], stability: Stability) {
    let result = store.write(&root(), fid, offset, data, stability).expect("write");
    assert_eq!(result.count_bytes as usize, data.len());
}

pub fn read_all(store: &Store, fid: Fid) -> Vec<u8> {
    let size = store.getattr(fid).expect("getattr").size_bytes;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let result = store.read(&root(), fid, out.len() as u64, 1 << 20).expect("read");
        assert!(!result.data.is_empty() || result.eof);
        if result.data.is_empty() {
            break;
        }
        out.extend_from_slice(&result.data);
    }
    out
}

/// A deterministic pseudo-random generator (splitmix64), so failures replay from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, count: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(count + 8);
        while out.len() < count {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(count);
        out
    }
}

/// The seed for a randomized test: `CAIRN_STORE_SEED` if set, else a fresh one. Printed, so
/// that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed =
        std::env::var("CAIRN_STORE_SEED").ok().and_then(|value| value.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with CAIRN_STORE_SEED={seed})");
    seed
}

/// The sum of the sizes of the regular files reachable from the root, each inode once (hard
/// links): what [`Store::used_bytes`] must be.
pub fn walk_used_bytes(store: &Store) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    let mut directories = vec![store.root()];
    while let Some(directory) = directories.pop() {
        let mut cookie = 0;
        loop {
            let page = store.readdir(&root(), directory, cookie, 1000, true).expect("readdir");
            for entry in &page.entries {
                cookie = entry.cookie;
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                let attributes = entry.attributes.as_ref().expect("attributes");
                match attributes.kind {
                    cairn_store::FileKind::Directory => directories.push(entry.fid),
                    cairn_store::FileKind::Regular if seen.insert(entry.fileid) => {
                        total += attributes.size_bytes;
                    }
                    _ => {}
                }
            }
            if page.eof {
                break;
            }
        }
    }
    total
}
