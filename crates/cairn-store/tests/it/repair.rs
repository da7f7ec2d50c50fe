//! Bad chunk blocks: a read names the block, a scrub finds it, and a repair from another copy of
//! the volume (a replica for a master, the master for a replica) rewrites it, and only it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_store::replication::{Block, REPAIR_BLOCKS_MAX, Replica, Replicator};
use cairn_store::{BadBlock, CreateHow, FailPoint, ScrubCursor, SetAttributes, Stability, Store, StoreError};
use cairn_types::Fid;

use crate::checksums::flip;
use crate::common::{Rng, read_all, root, write_all};
use crate::replication::{CHUNK, Threaded, config, replica};

const BLOCK: u64 = 8192;
/// A file of five chunks (the first 64 KiB are inline blocks, not chunk blocks).
const FILE_BYTES: usize = 600_000;
/// The byte to corrupt: chunk 1 (bytes 131_072..262_144), block 8 of the chunk.
const BAD_BYTE: u64 = 200_000;

/// A master with one live replica (records applied by a thread, as the file server would).
struct Pair {
    master: Store,
    replica: Arc<Replica>,
    replicator: Arc<Threaded>,
    applier: Option<std::thread::JoinHandle<()>>,
    dirs: Vec<tempfile::TempDir>,
}

impl Pair {
    fn new() -> Pair {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let replicator = Threaded::new();
        let replica = Arc::new(replica(dirs[1].path()));
        let (index, receiver) = replicator.attach();
        let applier = Some(replicator.start(index, replica.clone(), receiver));
        let master = Store::open_replicated(config(dirs[0].path()), replicator.clone()).unwrap();
        Pair { master, replica, replicator, applier, dirs }
    }

    /// Waits until the replica applied everything the master submitted.
    fn settle(&self) {
        self.replicator.wait(self.master.replication_position()).unwrap();
        assert_eq!(self.replica.position(), self.master.replication_position());
    }

    fn master_dir(&self) -> &Path {
        self.dirs[0].path()
    }

    fn replica_dir(&self) -> &Path {
        self.dirs[1].path()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.replicator.close();
        if let Some(applier) = self.applier.take() {
            let _ = applier.join();
        }
    }
}

/// A file of `FILE_BYTES` random bytes, written stably.
fn write_file(store: &Store, name: &str, seed: u64) -> (Fid, Vec<u8>) {
    let data = Rng(seed).bytes(FILE_BYTES);
    let fid = store
        .create(&root(), store.root(), name.as_bytes(), CreateHow::Guarded(SetAttributes::default()))
        .unwrap()
        .fid;
    write_all(store, fid, 0, &data, Stability::FileSync);
    (fid, data)
}

/// The data file of a chunk, and the data container it lives in.
fn chunk_file(data_dir: &Path, inode: u64, chunk: u64, extension: &str) -> (u32, PathBuf) {
    let name = format!("{inode:016x}.{chunk:08x}.{extension}");
    let mut found = Vec::new();
    for container in 2..20u32 {
        let path = data_dir
            .join("containers")
            .join(container.to_string())
            .join("chunks")
            .join(format!("{:02x}", inode & 0xff))
            .join(&name);
        if path.exists() {
            found.push((container, path));
        }
    }
    assert_eq!(found.len(), 1, "chunk {chunk} of inode {inode}: {found:?}");
    found.remove(0)
}

/// Flips a byte of the chunk block holding file byte `offset` in `data_dir`'s copy; returns that
/// block's name.
fn corrupt(data_dir: &Path, fid: Fid, offset: u64) -> BadBlock {
    let chunk = offset / CHUNK;
    let within = offset % CHUNK;
    let (container, path) = chunk_file(data_dir, fid.inode, chunk, "data");
    flip(&path, within);
    BadBlock { container, inode: fid.inode, chunk, block: within / BLOCK }
}

/// Sets the flag when dropped: a writer thread stops even if the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One scrub step's answer.
type Step = Result<(Vec<BadBlock>, Option<ScrubCursor>), StoreError>;

/// A whole scrub pass in steps of `step` blocks: the bad blocks found, and the number of steps.
fn scrub_pass(scrub: impl Fn(ScrubCursor, u64) -> Step, step: u64) -> (Vec<BadBlock>, u64) {
    let mut cursor = ScrubCursor::default();
    let mut found = Vec::new();
    let mut steps = 0;
    loop {
        let (bad, next) = scrub(cursor, step).unwrap();
        steps += 1;
        found.extend(bad);
        match next {
            Some(next) => {
                assert_ne!(next, cursor, "a scrub step made no progress");
                cursor = next;
            }
            None => return (found, steps),
        }
        assert!(steps < 10_000, "the scrub does not end");
    }
}

fn master_scrub(store: &Store) -> impl Fn(ScrubCursor, u64) -> Step + '_ {
    move |cursor, step| store.scrub(cursor, step)
}

fn replica_scrub(replica: &Replica) -> impl Fn(ScrubCursor, u64) -> Step + '_ {
    move |cursor, step| replica.scrub(cursor, step)
}

fn expect_bad<T: std::fmt::Debug>(result: Result<T, StoreError>) -> BadBlock {
    match result {
        Err(StoreError::BadBlock(bad)) => bad,
        other => panic!("expected a bad block: {other:?}"),
    }
}

#[test]
fn a_bad_block_on_the_master_is_named_found_and_repaired_from_a_replica() {
    let pair = Pair::new();
    let store = &pair.master;
    let (fid, data) = write_file(store, "f", 1);
    pair.settle();
    // A clean store: a full pass finds nothing, in one step or in many (every written chunk
    // block verified exactly once: the cursor ends the pass with `None`).
    let written_blocks = (FILE_BYTES as u64).div_ceil(BLOCK) - 8;
    assert_eq!(scrub_pass(master_scrub(store), 1 << 20), (Vec::new(), 1));
    assert_eq!(scrub_pass(master_scrub(store), 7), (Vec::new(), written_blocks.div_ceil(7)));
    assert_eq!(scrub_pass(replica_scrub(&pair.replica), 5).0, Vec::new());
    assert!(matches!(store.scrub(ScrubCursor::default(), 0), Err(StoreError::Invalid(_))));

    let bad = corrupt(pair.master_dir(), fid, BAD_BYTE);
    assert_eq!((bad.chunk, bad.block), (1, 8));
    // A read through the block fails and names exactly it; reads elsewhere work.
    assert_eq!(expect_bad(store.read(&root(), fid, BAD_BYTE - 1000, 4096)), bad);
    assert_eq!(store.read(&root(), fid, 300_000, 10_000).unwrap().data, &data[300_000..310_000]);
    assert_eq!(store.read(&root(), fid, 0, 1000).unwrap().data, &data[..1000]);
    // A partial write into it too (the read-modify-write), without poisoning the store.
    assert_eq!(expect_bad(store.write(&root(), fid, BAD_BYTE, b"x", Stability::Unstable)), bad);
    assert!(!store.is_poisoned());
    // So does reading the block for another copy.
    assert_eq!(expect_bad(store.read_blocks(bad.container, bad.inode, bad.chunk, 0, 16)), bad);
    // The scrub finds exactly it, in one step or many; the replica has no bad block.
    assert_eq!(scrub_pass(master_scrub(store), 1 << 20).0, vec![bad]);
    assert_eq!(scrub_pass(master_scrub(store), 3).0, vec![bad]);
    assert_eq!(scrub_pass(replica_scrub(&pair.replica), 1 << 20).0, Vec::new());

    // The replica's copy of the block.
    let blocks = pair.replica.read_blocks(bad.container, bad.inode, bad.chunk, bad.block, 1).unwrap();
    let start = (bad.chunk * CHUNK + bad.block * BLOCK) as usize;
    let good = blocks[0].clone().expect("the replica's block is written");
    assert_eq!(good.data, &data[start..start + BLOCK as usize]);
    assert_eq!(good.crc, crc32c::crc32c(&good.data));

    // Blocks that do not match their own checksum are refused, and change nothing.
    let position = store.replication_position();
    let wrong_crc = Block { data: good.data.clone(), crc: good.crc ^ 1 };
    let refused = store.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, vec![Some(wrong_crc)]);
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    let short = Block { data: vec![0; 100], crc: crc32c::crc32c(&[0; 100]) };
    let refused = store.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, vec![Some(short)]);
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    let other_container = 2 + (bad.container - 2 + 1) % 3;
    let refused =
        store.repair_blocks(other_container, bad.inode, bad.chunk, bad.block, vec![Some(good.clone())]);
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    let past_end = store.repair_blocks(bad.container, bad.inode, bad.chunk, CHUNK / BLOCK, vec![None]);
    assert!(matches!(past_end, Err(StoreError::Invalid(_))), "{past_end:?}");
    let too_many = store.read_blocks(bad.container, bad.inode, bad.chunk, 0, REPAIR_BLOCKS_MAX + 1);
    assert!(matches!(too_many, Err(StoreError::Invalid(_))), "{too_many:?}");
    assert_eq!(expect_bad(store.read(&root(), fid, BAD_BYTE, 10)), bad);
    assert_eq!(store.replication_position(), position);

    // The repair: the read succeeds with the right bytes, and the replicas stay identical.
    let repaired = store
        .repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, vec![Some(good.clone())])
        .unwrap();
    assert_eq!(repaired, 1);
    assert_eq!(
        store.read(&root(), fid, BAD_BYTE - 1000, 4096).unwrap().data,
        &data[BAD_BYTE as usize - 1000..][..4096]
    );
    assert_eq!(read_all(store, fid), data);
    assert_eq!(scrub_pass(master_scrub(store), 1 << 20).0, Vec::new());
    assert!(store.replication_position() > position, "the repair is replicated");
    pair.settle();
    let digest = store.digest().unwrap();
    assert_eq!(pair.replica.digest().unwrap(), digest);

    // Repairing good blocks changes nothing, even with other (self-consistent) bytes; holes
    // are not filled.
    let position = store.replication_position();
    assert_eq!(
        store.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, vec![Some(good)]).unwrap(),
        0
    );
    let other = Block { data: vec![0xab; BLOCK as usize], crc: crc32c::crc32c(&[0xab; BLOCK as usize]) };
    let whole_chunk = vec![Some(other.clone()); (CHUNK / BLOCK) as usize];
    assert_eq!(store.repair_blocks(bad.container, bad.inode, bad.chunk, 0, whole_chunk).unwrap(), 0);
    let (chunk0_container, _) = chunk_file(pair.master_dir(), fid.inode, 0, "data");
    // Chunk 0's first 8 blocks are holes (the file's first 64 KiB are inline).
    let holes = store.read_blocks(chunk0_container, fid.inode, 0, 0, 9).unwrap();
    assert!(
        holes[..8].iter().all(Option::is_none) && holes[8].is_some(),
        "{:?}",
        holes.iter().map(Option::is_some).collect::<Vec<_>>()
    );
    assert_eq!(store.repair_blocks(chunk0_container, fid.inode, 0, 0, vec![Some(other); 8]).unwrap(), 0);
    assert_eq!(store.replication_position(), position, "nothing repaired, nothing replicated");
    assert_eq!(store.digest().unwrap(), digest);
    assert_eq!(read_all(store, fid), data);
    // A chunk without files reads as holes; the chunk lives in one data container only.
    let answers: Vec<_> = (2..5).map(|container| store.read_blocks(container, fid.inode, 40, 0, 3)).collect();
    let holes: Vec<_> = answers.iter().filter_map(|answer| answer.as_ref().ok()).collect();
    assert_eq!(holes.len(), 1, "{answers:?}");
    assert_eq!(holes[0], &vec![None; 3]);
    let refused = answers.iter().filter(|answer| matches!(answer, Err(StoreError::Invalid(_)))).count();
    assert_eq!(refused, 2);
}

#[test]
fn a_bad_checksum_entry_is_repaired_too() {
    let pair = Pair::new();
    let store = &pair.master;
    let (fid, data) = write_file(store, "f", 2);
    pair.settle();
    // Flip a bit of the CRC of block 3 of chunk 2 (entries: 8 bytes each after a 64-byte
    // header): the bytes are right, their checksum entry is not.
    let (container, sums) = chunk_file(pair.master_dir(), fid.inode, 2, "crc");
    flip(&sums, 64 + 3 * 8 + 1);
    let bad = BadBlock { container, inode: fid.inode, chunk: 2, block: 3 };
    assert_eq!(expect_bad(store.read(&root(), fid, 2 * CHUNK + 3 * BLOCK, 100)), bad);
    assert_eq!(store.scrub(ScrubCursor::default(), 1 << 20).unwrap(), (vec![bad], None));
    let blocks = pair.replica.read_blocks(container, fid.inode, 2, 0, CHUNK / BLOCK).unwrap();
    assert_eq!(store.repair_blocks(container, fid.inode, 2, 0, blocks).unwrap(), 1);
    assert_eq!(read_all(store, fid), data);
    pair.settle();
    assert_eq!(pair.replica.digest().unwrap(), store.digest().unwrap());
}

#[test]
fn a_bad_block_on_a_replica_is_repaired_from_the_master() {
    let pair = Pair::new();
    let store = &pair.master;
    let (fid, data) = write_file(store, "f", 3);
    let (other, _) = write_file(store, "g", 4);
    pair.settle();
    let digest = store.digest().unwrap();
    assert_eq!(pair.replica.digest().unwrap(), digest);
    let bad = corrupt(pair.replica_dir(), fid, BAD_BYTE);
    let bad_other = corrupt(pair.replica_dir(), other, 4 * CHUNK + 100);
    assert_ne!(pair.replica.digest().unwrap(), digest);
    assert_eq!(expect_bad(pair.replica.read_blocks(bad.container, bad.inode, bad.chunk, bad.block, 1)), bad);
    let mut expected = vec![bad, bad_other];
    expected
        .sort_by_key(|block| (block.container, block.inode & 0xff, block.inode, block.chunk, block.block));
    assert_eq!(scrub_pass(replica_scrub(&pair.replica), 1 << 20).0, expected);
    assert_eq!(scrub_pass(replica_scrub(&pair.replica), 4).0, expected);
    assert_eq!(scrub_pass(master_scrub(store), 1 << 20).0, Vec::new());
    // The master's copy of the whole chunk: only the bad block is rewritten.
    for bad in &expected {
        let blocks = store.read_blocks(bad.container, bad.inode, bad.chunk, 0, CHUNK / BLOCK).unwrap();
        assert_eq!(
            pair.replica.repair_blocks(bad.container, bad.inode, bad.chunk, 0, blocks.clone()).unwrap(),
            1
        );
        assert_eq!(pair.replica.repair_blocks(bad.container, bad.inode, bad.chunk, 0, blocks).unwrap(), 0);
    }
    let mut wrong = store.read_blocks(bad.container, bad.inode, bad.chunk, bad.block, 1).unwrap();
    wrong[0].as_mut().unwrap().crc ^= 1;
    let refused = pair.replica.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, wrong);
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    assert_eq!(pair.replica.digest().unwrap(), digest);
    assert_eq!(scrub_pass(replica_scrub(&pair.replica), 1 << 20).0, Vec::new());
    // The replica goes on applying records, and ends identical.
    store.write(&root(), fid, BAD_BYTE, b"after the repair", Stability::FileSync).unwrap();
    pair.settle();
    assert_eq!(pair.replica.digest().unwrap(), store.digest().unwrap());
    let mut expected_data = data;
    expected_data[BAD_BYTE as usize..][..16].copy_from_slice(b"after the repair");
    assert_eq!(read_all(store, fid), expected_data);
}

/// A repair whose write or fdatasync fails poisons the store, like a failed write.
#[test]
fn a_failed_repair_poisons() {
    for point in [FailPoint::DataWrite, FailPoint::DataSync] {
        let pair = Pair::new();
        let store = &pair.master;
        let (fid, _) = write_file(store, "f", 7);
        pair.settle();
        let bad = corrupt(pair.master_dir(), fid, BAD_BYTE);
        let blocks = pair.replica.read_blocks(bad.container, bad.inode, bad.chunk, bad.block, 1).unwrap();
        store.inject_failure(point);
        let failed = store.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, blocks.clone());
        assert!(matches!(failed, Err(StoreError::Io(_))), "{point:?}: {failed:?}");
        assert!(store.is_poisoned());
        let refused = store.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, blocks);
        assert!(matches!(refused, Err(StoreError::Poisoned(_))), "{refused:?}");
    }
}

/// Writes racing a scrub are never reported: a torn read is checked again under the lock.
#[test]
fn scrubbing_while_writing_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(config(dir.path())).unwrap());
    let (fid, _) = write_file(&store, "f", 5);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(9);
            let mut writes = 0;
            while !stop.load(Ordering::SeqCst) || writes < 200 {
                let offset = rng.below(FILE_BYTES as u64 - 20_000);
                let length = 1 + rng.below(20_000) as usize;
                let bytes = rng.bytes(length);
                store.write(&root(), fid, offset, &bytes, Stability::Unstable).unwrap();
                writes += 1;
            }
        })
    };
    let guard = StopOnDrop(&stop);
    let mut passes = 0;
    while passes < 20 || !writer.is_finished() {
        assert_eq!(scrub_pass(master_scrub(&store), 3 + passes % 50).0, Vec::new());
        passes += 1;
        if passes >= 20 {
            stop.store(true, Ordering::SeqCst);
        }
    }
    drop(guard);
    writer.join().unwrap();
    store.commit(fid, 0, 0).unwrap();
    assert_eq!(scrub_pass(master_scrub(&store), 1 << 20).0, Vec::new());
}

/// The same on a replica: records applied while it scrubs are never reported.
#[test]
fn scrubbing_a_replica_while_it_applies_reports_nothing() {
    let pair = Pair::new();
    let store = &pair.master;
    let (fid, _) = write_file(store, "f", 6);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut rng = Rng(10);
            let mut writes = 0;
            while !stop.load(Ordering::SeqCst) || writes < 200 {
                let offset = rng.below(FILE_BYTES as u64 - 20_000);
                let length = 1 + rng.below(20_000) as usize;
                let bytes = rng.bytes(length);
                store.write(&root(), fid, offset, &bytes, Stability::Unstable).unwrap();
                writes += 1;
            }
        });
        let _stop = StopOnDrop(&stop);
        let mut passes = 0;
        while passes < 30 || !writer.is_finished() {
            assert_eq!(scrub_pass(replica_scrub(&pair.replica), 3 + passes % 50).0, Vec::new());
            passes += 1;
            if passes >= 30 {
                stop.store(true, Ordering::SeqCst);
            }
        }
    });
    store.commit(fid, 0, 0).unwrap();
    pair.settle();
    assert_eq!(scrub_pass(replica_scrub(&pair.replica), 1 << 20).0, Vec::new());
    assert_eq!(pair.replica.digest().unwrap(), store.digest().unwrap());
}
