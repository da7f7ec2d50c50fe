//! Per-block checksums: a flipped byte on disk, in a chunk file or in an inline block, makes the
//! read that touches it fail (`BadBlock` naming the chunk block, `Corrupt` for an inline block)
//! instead of returning wrong bytes.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_store::{SetAttributes, Stability, StoreError};
use cairn_types::limits::INLINE_DATA_BYTES_MAX;

use crate::common::{Rng, create_file, open, root, write_all};

pub(crate) fn files_with_extension(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_with_extension(&path, extension, out);
        } else if path.extension().is_some_and(|found| found == extension) {
            out.push(path);
        }
    }
}

pub(crate) fn flip(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open for flip");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= 0x01;
    file.write_all_at(&byte, offset).expect("write byte");
    file.sync_all().expect("sync");
}

#[test]
fn flipped_chunk_byte_reads_as_a_bad_block() {
    let dir = tempfile::tempdir().unwrap();
    let data = Rng(3).bytes(300_000);
    let fid = {
        let store = open(dir.path());
        let fid = create_file(&store, &root(), store.root(), "f");
        write_all(&store, fid, 0, &data, Stability::FileSync);
        store.sync_all().unwrap();
        fid
    };
    let mut chunks = Vec::new();
    files_with_extension(&dir.path().join("containers"), "data", &mut chunks);
    assert_eq!(chunks.len(), 1, "one chunk file: {chunks:?}");
    // Byte 100_000 of the file is in the first chunk at the same offset.
    flip(&chunks[0], 100_000);
    let store = open(dir.path());
    let result = store.read(&root(), fid, 99_000, 4096);
    // Byte 100_000 is in block 12 of chunk 0 (chunks of 1 MiB).
    let bad = match result {
        Err(StoreError::BadBlock(bad)) => bad,
        other => panic!("expected a bad block: {other:?}"),
    };
    assert_eq!((bad.inode, bad.chunk, bad.block), (fid.inode, 0, 12));
    assert!(chunks[0].starts_with(dir.path().join("containers").join(bad.container.to_string())));
    // Other blocks still read, and the inline part too.
    assert_eq!(store.read(&root(), fid, 200_000, 1000).unwrap().data, &data[200_000..201_000]);
    assert_eq!(store.read(&root(), fid, 0, 1000).unwrap().data, &data[..1000]);
    // A partial write into the corrupt block must not silently bless it either.
    let write = store.write(&root(), fid, 100_001, b"x", Stability::Unstable);
    assert!(matches!(write, Err(StoreError::BadBlock(block)) if block == bad), "{write:?}");
    // Nor a truncation that cuts through it.
    let cut = SetAttributes { size_bytes: Some(100_001), ..Default::default() };
    let truncate = store.setattr(&root(), fid, cut, None);
    assert!(matches!(truncate, Err(StoreError::BadBlock(block)) if block == bad), "{truncate:?}");
    assert!(!store.is_poisoned());
}

#[test]
fn flipped_inline_byte_reads_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let data = Rng(11).bytes(INLINE_DATA_BYTES_MAX as usize);
    let fid = {
        let store = open(dir.path());
        let fid = create_file(&store, &root(), store.root(), "small");
        write_all(&store, fid, 0, &data, Stability::FileSync);
        store.sync_all().unwrap();
        fid
    };
    // Find the third inline block's bytes in the name container's database file.
    let database = dir.path().join("containers/1/name.redb");
    let bytes = std::fs::read(&database).unwrap();
    let needle = &data[3 * 8192 + 100..3 * 8192 + 164];
    let mut found = 0;
    let mut position = 0;
    while let Some(at) = bytes[position..].windows(needle.len()).position(|window| window == needle) {
        flip(&database, (position + at + 10) as u64);
        found += 1;
        position += at + needle.len();
    }
    assert!(found > 0, "inline block not found in the database file");
    let store = open(dir.path());
    let result = store.read(&root(), fid, 3 * 8192, 8192);
    assert!(matches!(result, Err(StoreError::Corrupt { .. })), "{result:?}");
    assert_eq!(store.read(&root(), fid, 0, 8192).unwrap().data, &data[..8192]);
}
