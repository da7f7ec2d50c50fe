//! A full file system: writes and creates fail with `NoSpace`, what was written stays intact,
//! deleting frees space and writing works again, and the store reopens. Runs on a 32 MiB tmpfs
//! mounted for the test (needs root; fails loudly if it cannot mount).

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_store::{CreateHow, SetAttributes, Stability, Store, StoreError};

use crate::common::{self, Rng, root};

pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("mount point");
        let path = dir.path().to_path_buf();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test needs to mount a tmpfs (run as root): mount failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn open(path: &Path) -> Store {
    Store::open(common::config(path)).expect("open on tmpfs")
}

#[test]
fn full_disk_then_recover_space() {
    let tmpfs = Tmpfs::mount("32m");
    let store = open(&tmpfs.path);
    let top = store.root();
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Rng(5);
    // Fill with large files until a write or create says NoSpace.
    let mut full = false;
    for index in 0..100 {
        let name = format!("big{index}");
        let fid =
            match store.create(&root(), top, name.as_bytes(), CreateHow::Guarded(SetAttributes::default())) {
                Ok(created) => created.fid,
                Err(StoreError::NoSpace) => {
                    full = true;
                    break;
                }
                Err(error) => panic!("create {name}: {error}"),
            };
        let mut contents = Vec::new();
        for piece in 0..4u64 {
            let data = rng.bytes(1 << 20);
            match store.write(&root(), fid, piece << 20, &data, Stability::FileSync) {
                Ok(_) => contents.extend_from_slice(&data),
                Err(StoreError::NoSpace) => {
                    full = true;
                    break;
                }
                Err(error) => panic!("write {name}: {error}"),
            }
        }
        written.push((name, contents));
        if full {
            break;
        }
    }
    assert!(full, "never ran out of space");
    // Small files until creates or their writes fail too.
    let mut small_failed = false;
    for index in 0..20_000 {
        let name = format!("small{index}");
        match store.create(&root(), top, name.as_bytes(), CreateHow::Guarded(SetAttributes::default())) {
            Ok(created) => match store.write(&root(), created.fid, 0, &[7u8; 20_000], Stability::FileSync) {
                Ok(_) => written.push((name, vec![7u8; 20_000])),
                Err(StoreError::NoSpace) => {
                    small_failed = true;
                    break;
                }
                Err(error) => panic!("small write: {error}"),
            },
            Err(StoreError::NoSpace) => {
                small_failed = true;
                break;
            }
            Err(error) => panic!("small create: {error}"),
        }
    }
    assert!(small_failed, "small files never ran out of space");
    assert!(!store.is_poisoned());
    let bytes: usize = written.iter().map(|(_, contents)| contents.len()).sum();
    eprintln!("full after {} files, {bytes} bytes", written.len());
    assert!(bytes > 16 << 20, "a 32 MiB file system should hold more than 16 MiB of data");
    let check = |store: &Store, written: &[(String, Vec<u8>)]| {
        for (name, contents) in written {
            let fid = store.lookup(&root(), store.root(), name.as_bytes()).expect("lookup").fid;
            assert!(common::read_all(store, fid) == *contents, "{name} differs");
        }
    };
    check(&store, &written);
    // Free space by removing the first big file; writing works again.
    let (victim, _) = written.remove(0);
    store.remove(&root(), top, victim.as_bytes()).expect("remove on a full disk");
    let fid = store
        .create(&root(), top, b"after", CreateHow::Guarded(SetAttributes::default()))
        .expect("create after freeing")
        .fid;
    let data = rng.bytes(2 << 20);
    store.write(&root(), fid, 0, &data, Stability::FileSync).expect("write after freeing");
    written.push(("after".to_string(), data));
    check(&store, &written);
    drop(store);
    let store = open(&tmpfs.path);
    check(&store, &written);
    store.sync_all().unwrap();
}
