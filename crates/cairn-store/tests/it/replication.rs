//! Replication: a master store streams physical records to replicas, which end identical
//! (digests equal), survive crashes of the master and of replicas, get promoted, roll forward
//! or resync in full. Every record and snapshot piece goes through MessagePack on its way, as it
//! would over the network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use cairn_store::replication::{
    Record, RecordBody, Replica, ReplicationError, Replicator, RowChange, SnapshotPiece,
};
use cairn_store::{
    CreateHow, FileKind, SetAttributes, Stability, Store, StoreConfig, StoreError, StoreResult,
};
use cairn_types::{ClusterId, Fid, VolumeId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{Rng, read_all, root, walk_used_bytes};

/// Small chunks (one dirty region each), so that writes cross chunks.
pub(crate) const CHUNK: u64 = 128 * 1024;
const CLUSTER: ClusterId = ClusterId(0x00c0_ffee_0000_0001);
const VOLUME: VolumeId = VolumeId(1);
/// Seeds of the crash simulation (`CAIRN_REPL_SEED` replays one).
const SIM_SEEDS: [u64; 6] = [1, 2, 3, 4, 5, 6];

pub(crate) fn config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.chunk_size_bytes = CHUNK;
    config.data_containers = 3;
    config.space_reserve_bytes = 4 * 1024 * 1024;
    // The smallest journal: checkpoints happen on masters and replicas alike.
    config.journal_bytes = 1 << 20;
    config.identity = Some((CLUSTER, VOLUME));
    config
}

/// Through MessagePack and back, as the file server would carry it.
fn wire<T: Serialize + DeserializeOwned>(value: &T) -> T {
    rmp_serde::from_slice(&rmp_serde::to_vec_named(value).unwrap()).unwrap()
}

pub(crate) fn replica(dir: &Path) -> Replica {
    Replica::open(config(dir), CLUSTER, VOLUME).unwrap()
}

/// A full resync of `replica` from `store` (nothing else writes meanwhile).
fn resync(store: &Store, replica: &Replica) -> u64 {
    replica.begin_snapshot().unwrap();
    let seq = store.snapshot(&mut |piece| replica.apply_snapshot_piece(wire(&piece))).unwrap();
    replica.finish_snapshot(seq).unwrap();
    assert_eq!(replica.position(), seq);
    seq
}

/// Errors an operation may meet in these tests without anything being wrong.
fn benign<T>(result: StoreResult<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(
            error @ (StoreError::Poisoned(_)
            | StoreError::Corrupt { .. }
            | StoreError::BadBlock(_)
            | StoreError::Io(_)
            | StoreError::NotMaster
            | StoreError::Unavailable(_)),
        ) => panic!("unexpected error: {error}"),
        Err(_) => None,
    }
}

// ---- a replicator over threads and channels ----

#[derive(Default)]
struct Progress {
    applied: u64,
    /// `wait` waits for this replica (false while it is being copied).
    counted: bool,
    error: Option<String>,
}

/// Each replica has a channel and an applier thread; `wait` waits for every counted replica.
pub(crate) struct Threaded {
    sending: Mutex<(u64, Vec<mpsc::Sender<Record>>)>,
    progress: Mutex<Vec<Progress>>,
    changed: Condvar,
}

impl Threaded {
    pub(crate) fn new() -> Arc<Threaded> {
        Arc::new(Threaded {
            sending: Mutex::new((0, Vec::new())),
            progress: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        })
    }

    /// A new replica's channel: records queue in it from now on.
    pub(crate) fn attach(&self) -> (usize, mpsc::Receiver<Record>) {
        let (sender, receiver) = mpsc::channel();
        let mut sending = self.sending.lock().unwrap();
        sending.1.push(sender);
        self.progress.lock().unwrap().push(Progress::default());
        (sending.1.len() - 1, receiver)
    }

    /// Starts applying the queued records to `replica`; from now on `wait` waits for it.
    pub(crate) fn start(
        self: &Arc<Self>,
        index: usize,
        replica: Arc<Replica>,
        receiver: mpsc::Receiver<Record>,
    ) -> std::thread::JoinHandle<()> {
        {
            let mut progress = self.progress.lock().unwrap();
            progress[index].applied = replica.position();
            progress[index].counted = true;
        }
        let this = self.clone();
        std::thread::spawn(move || {
            for record in receiver {
                let result = replica.apply(&wire(&record));
                let mut progress = this.progress.lock().unwrap();
                match result {
                    Ok(()) => progress[index].applied = progress[index].applied.max(record.seq),
                    Err(error) => {
                        progress[index].error.get_or_insert(format!("record {}: {error}", record.seq));
                    }
                }
                this.changed.notify_all();
            }
        })
    }

    /// Ends the applier threads (once their channels are drained).
    pub(crate) fn close(&self) {
        self.sending.lock().unwrap().1.clear();
    }
}

impl Replicator for Threaded {
    fn resume(&self, position: u64) {
        self.sending.lock().unwrap().0 = position;
    }

    fn submit(&self, body: RecordBody) -> u64 {
        let mut sending = self.sending.lock().unwrap();
        sending.0 += 1;
        let record = Record { seq: sending.0, body };
        for channel in &sending.1 {
            let _ = channel.send(record.clone());
        }
        record.seq
    }

    fn wait(&self, seq: u64) -> Result<(), ReplicationError> {
        let mut progress = self.progress.lock().unwrap();
        loop {
            if let Some(error) = progress.iter().find_map(|replica| replica.error.clone()) {
                return Err(ReplicationError::Unavailable(error));
            }
            if progress.iter().all(|replica| !replica.counted || replica.applied >= seq) {
                return Ok(());
            }
            let (guard, timeout) = self.changed.wait_timeout(progress, Duration::from_secs(60)).unwrap();
            progress = guard;
            if timeout.timed_out() {
                return Err(ReplicationError::Unavailable(format!("record {seq} not applied in time")));
            }
        }
    }
}

/// One thread's random operations in its own directory and in the shared root.
fn random_operations(store: &Store, thread: u64, operations: usize, stop: Option<&AtomicBool>) {
    let mut rng = Rng(thread * 7919 + 17);
    let top = store.root();
    let own =
        store.mkdir(&root(), top, format!("t{thread}").as_bytes(), SetAttributes::default()).unwrap().fid;
    let mut dirs = vec![top, own];
    let mut names: Vec<(Fid, Vec<u8>)> = Vec::new();
    let mut files: Vec<Fid> = Vec::new();
    let mut count = 0;
    loop {
        count += 1;
        if count > operations && stop.is_none_or(|stop| stop.load(Ordering::SeqCst)) {
            break;
        }
        let dir = dirs[rng.below(dirs.len() as u64) as usize];
        let name = format!("n{}", rng.below(30)).into_bytes();
        let file = (!files.is_empty()).then(|| files[rng.below(files.len() as u64) as usize]);
        match rng.below(100) {
            0..=14 => {
                if let Some(created) =
                    benign(store.create(&root(), dir, &name, CreateHow::Guarded(SetAttributes::default())))
                {
                    files.push(created.fid);
                    names.push((dir, name));
                }
            }
            15..=17 => {
                if let Some(created) = benign(store.mkdir(&root(), own, &name, SetAttributes::default())) {
                    dirs.push(created.fid);
                }
            }
            18..=49 => {
                let Some(fid) = file else { continue };
                let offset = if rng.chance(30) { rng.below(64 * 1024) } else { rng.below(3 * CHUNK) };
                let length = rng.below(40_000) as usize + 1;
                let data = rng.bytes(length);
                let stability = match rng.below(4) {
                    0 => Stability::FileSync,
                    1 => Stability::DataSync,
                    _ => Stability::Unstable,
                };
                benign(store.write(&root(), fid, offset, &data, stability));
            }
            50..=57 => {
                if let Some(fid) = file {
                    benign(store.commit(fid, 0, 0));
                }
            }
            58..=65 => {
                let Some(fid) = file else { continue };
                let size = rng.below(3 * CHUNK);
                benign(store.setattr(
                    &root(),
                    fid,
                    SetAttributes { size_bytes: Some(size), ..Default::default() },
                    None,
                ));
            }
            66..=73 => {
                if names.is_empty() {
                    continue;
                }
                let (dir, name) = names.swap_remove(rng.below(names.len() as u64) as usize);
                benign(store.remove(&root(), dir, &name));
            }
            74..=83 => {
                if names.is_empty() {
                    continue;
                }
                let index = rng.below(names.len() as u64) as usize;
                let (from, from_name) = names[index].clone();
                if benign(store.rename(&root(), from, &from_name, dir, &name)).is_some() {
                    names[index] = (dir, name);
                }
            }
            84..=90 => {
                if let Some(fid) = file
                    && benign(store.link(&root(), fid, dir, &name)).is_some()
                {
                    names.push((dir, name));
                }
            }
            91..=95 => {
                if benign(store.symlink(&root(), dir, &name, b"target/of/link", SetAttributes::default()))
                    .is_some()
                {
                    names.push((dir, name));
                }
            }
            _ => {
                if let Some(fid) = file {
                    benign(store.read(&root(), fid, rng.below(3 * CHUNK), 50_000));
                }
            }
        }
    }
}

/// The whole tree under `dir`: path → (attributes, content or symlink target).
fn tree(
    store: &Store,
    dir: Fid,
    prefix: &str,
    out: &mut BTreeMap<String, (cairn_store::Attributes, Vec<u8>)>,
) {
    let mut cookie = 0;
    loop {
        let page = store.readdir(&root(), dir, cookie, 100, true).unwrap();
        for entry in &page.entries {
            cookie = entry.cookie;
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&entry.name));
            let attributes = store.getattr(entry.fid).unwrap();
            let content = match attributes.kind {
                FileKind::Regular => read_all(store, entry.fid),
                FileKind::Symlink => store.readlink(&root(), entry.fid).unwrap().0,
                FileKind::Directory => {
                    tree(store, entry.fid, &path, out);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            out.insert(path, (attributes, content));
        }
        if page.eof {
            break;
        }
    }
}

#[test]
fn concurrent_operations_converge() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicator = Threaded::new();
    let mut appliers = Vec::new();
    let mut replicas = Vec::new();
    for dir in &dirs[1..] {
        let replica = Arc::new(replica(dir.path()));
        assert_eq!(replica.position(), 0);
        let (index, receiver) = replicator.attach();
        appliers.push(replicator.start(index, replica.clone(), receiver));
        replicas.push(replica);
    }
    let store = Arc::new(Store::open_replicated(config(dirs[0].path()), replicator.clone()).unwrap());
    assert_eq!(store.replication_position(), 1, "a new volume's rows are its first record");
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || random_operations(&store, thread, 300, None))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // A batch whose operations all failed is replicated but nobody waits for it.
    replicator.wait(store.replication_position()).unwrap();
    let digest = store.digest().unwrap();
    for replica in &replicas {
        assert_eq!(replica.position(), store.replication_position());
        assert_eq!(replica.digest().unwrap(), digest, "a replica differs from the master");
    }
    // After a clean shutdown of the master, still identical; a promoted replica serves the
    // same tree, bytes and attributes.
    store.sync_all().unwrap();
    let digest = store.digest().unwrap();
    for replica in &replicas {
        assert_eq!(replica.digest().unwrap(), digest, "a replica differs after sync_all");
        assert_eq!(replica.used_bytes().unwrap(), store.used_bytes(), "a replica's used bytes differ");
    }
    assert_eq!(store.used_bytes(), walk_used_bytes(&store));
    let mut expected = BTreeMap::new();
    tree(&store, store.root(), "", &mut expected);
    assert!(expected.len() > 20, "the operations made a tree");
    replicator.close();
    for applier in appliers {
        applier.join().unwrap();
    }
    let promoted = Arc::try_unwrap(replicas.remove(0)).ok().unwrap();
    promoted.close().unwrap();
    let store_b = Store::open(config(dirs[1].path())).unwrap();
    assert_eq!(store_b.root(), store.root());
    assert_eq!(store_b.used_bytes(), store.used_bytes(), "the promoted replica's used bytes differ");
    let mut actual = BTreeMap::new();
    tree(&store_b, store_b.root(), "", &mut actual);
    assert_eq!(actual.len(), expected.len());
    for (
        (path, (expected_attributes, expected_content)),
        (actual_path, (actual_attributes, actual_content)),
    ) in expected.iter().zip(&actual)
    {
        assert_eq!(path, actual_path);
        assert_eq!(expected_attributes, actual_attributes, "attributes of {path}");
        assert!(expected_content == actual_content, "content of {path}");
    }
}

/// The used-bytes row travels with the batches that change it: after every committed change a
/// replica counts what the master counts, quota refusals change nothing on either side, and a
/// full copy carries the row.
#[test]
fn replicas_count_the_same_used_bytes() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicator = Threaded::new();
    let first = Arc::new(replica(dirs[1].path()));
    let (index, receiver) = replicator.attach();
    let appliers = vec![replicator.start(index, first.clone(), receiver)];
    let mut master_config = config(dirs[0].path());
    master_config.quota_bytes = Some(1_000_000);
    let store = Store::open_replicated(master_config, replicator.clone()).unwrap();
    let same = |what: &str| {
        assert_eq!(first.used_bytes().unwrap(), store.used_bytes(), "after {what}");
    };
    same("creation");
    let top = store.root();
    let create = |name: &[u8]| {
        store.create(&root(), top, name, CreateHow::Guarded(SetAttributes::default())).unwrap().fid
    };
    let a = create(b"a");
    store.write(&root(), a, 0, &[1; 300_000], Stability::FileSync).unwrap();
    same("a stable write");
    let b = create(b"b");
    store.write(&root(), b, 100_000, &[2; 400_000], Stability::Unstable).unwrap();
    assert_eq!(store.used_bytes(), 800_000, "an unstable write counts on the master at once");
    store.commit(b, 0, 0).unwrap();
    same("a commit");
    assert!(matches!(
        store.write(&root(), b, 500_000, &[3; 300_000], Stability::FileSync),
        Err(StoreError::QuotaExceeded)
    ));
    same("a refused write");
    store.setattr(&root(), a, SetAttributes { size_bytes: Some(1000), ..Default::default() }, None).unwrap();
    same("a truncation");
    store.link(&root(), b, top, b"b2").unwrap();
    store.rename(&root(), top, b"a", top, b"b").unwrap();
    same("a rename over a linked file");
    store.remove(&root(), top, b"b2").unwrap();
    same("the removal of the last link");
    assert_eq!(store.used_bytes(), 1000);
    store.sync_all().unwrap();
    same("sync_all");
    assert_eq!(first.digest().unwrap(), store.digest().unwrap());
    // A full copy carries the row.
    let second = replica(dirs[2].path());
    resync(&store, &second);
    assert_eq!(second.used_bytes().unwrap(), store.used_bytes());
    replicator.close();
    for applier in appliers {
        applier.join().unwrap();
    }
}

#[test]
fn snapshot_while_writing_converges() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicator = Threaded::new();
    let first = Arc::new(replica(dirs[1].path()));
    let (index, receiver) = replicator.attach();
    let mut appliers = vec![replicator.start(index, first.clone(), receiver)];
    let store = Arc::new(Store::open_replicated(config(dirs[0].path()), replicator.clone()).unwrap());
    // Some state first, then a writer that keeps going during the copy.
    random_operations(&store, 100, 150, None);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || random_operations(&store, 101, 100, Some(&stop)))
    };
    std::thread::sleep(Duration::from_millis(50));
    // The new replica's records queue from before the copy starts; it applies them after.
    let second = Arc::new(replica(dirs[2].path()));
    let (index, receiver) = replicator.attach();
    second.begin_snapshot().unwrap();
    let mut pieces = 0;
    let seq = store
        .snapshot(&mut |piece| {
            pieces += 1;
            std::thread::sleep(Duration::from_millis(5));
            second.apply_snapshot_piece(wire(&piece))
        })
        .unwrap();
    second.finish_snapshot(seq).unwrap();
    let during = store.replication_position() - seq;
    appliers.push(replicator.start(index, second.clone(), receiver));
    eprintln!("snapshot: {pieces} pieces at seq {seq}; {during} records submitted during the copy");
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    store.sync_all().unwrap();
    // A batch whose operations all failed is replicated but nobody waits for it.
    replicator.wait(store.replication_position()).unwrap();
    let digest = store.digest().unwrap();
    assert_eq!(first.digest().unwrap(), digest, "the live replica differs");
    assert_eq!(second.digest().unwrap(), digest, "the copied replica differs");
    assert_eq!(second.position(), store.replication_position());
    replicator.close();
    for applier in appliers {
        applier.join().unwrap();
    }
}

// ---- malformed input ----

fn write_record(seq: u64, data: Vec<u8>, crcs: Vec<u32>) -> Record {
    Record {
        seq,
        body: RecordBody::ChunkWrite { container: 2, inode: 9, chunk: 1, first_block: 0, data, crcs },
    }
}

#[test]
fn malformed_records_are_refused() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // A master whose records we keep.
    struct Keep(Mutex<Vec<Record>>);
    impl Replicator for Keep {
        fn submit(&self, body: RecordBody) -> u64 {
            let mut records = self.0.lock().unwrap();
            let seq = records.len() as u64 + 1;
            records.push(Record { seq, body });
            seq
        }
        fn wait(&self, _seq: u64) -> Result<(), ReplicationError> {
            Ok(())
        }
    }
    let keep = Arc::new(Keep(Mutex::new(Vec::new())));
    let store = Store::open_replicated(config(dirs[0].path()), keep.clone()).unwrap();
    let fid =
        store.create(&root(), store.root(), b"f", CreateHow::Guarded(SetAttributes::default())).unwrap().fid;
    store.write(&root(), fid, CHUNK, &[7u8; 20_000], Stability::FileSync).unwrap();
    let records: Vec<Record> = keep.0.lock().unwrap().clone();
    let replica = replica(dirs[1].path());

    // An empty replica takes only a new volume's first record.
    assert!(matches!(replica.apply(&records[1]), Err(StoreError::Invalid(_))));
    let block = vec![1u8; 8192];
    assert!(replica.apply(&write_record(1, block.clone(), vec![crc32c::crc32c(&block)])).is_err());
    replica.apply(&records[0]).unwrap();
    assert_eq!(replica.position(), 1);
    // A gap, and a resent record (skipped).
    assert!(matches!(replica.apply(&records[2]), Err(StoreError::Invalid(_))));
    replica.apply(&records[0]).unwrap();
    // Malformed bodies: refused, nothing changes, the replica goes on.
    let bad = [
        write_record(2, block.clone(), vec![crc32c::crc32c(&block) ^ 1]),
        write_record(2, vec![1u8; 100], vec![0]),
        write_record(2, Vec::new(), Vec::new()),
        Record {
            seq: 2,
            body: RecordBody::ChunkWrite {
                container: 99,
                inode: 9,
                chunk: 0,
                first_block: 0,
                data: block.clone(),
                crcs: vec![crc32c::crc32c(&block)],
            },
        },
        Record {
            seq: 2,
            body: RecordBody::ChunkWrite {
                container: 2,
                inode: 9,
                chunk: 0,
                first_block: CHUNK / 8192,
                data: block.clone(),
                crcs: vec![crc32c::crc32c(&block)],
            },
        },
        Record {
            seq: 2,
            body: RecordBody::ChunkClear {
                container: 2,
                inode: 9,
                chunk: 0,
                first_block: 0,
                count: u64::MAX,
            },
        },
        Record {
            seq: 2,
            body: RecordBody::ChunkTruncate {
                container: 2,
                inode: 9,
                chunk: 0,
                blocks: 0,
                tail: Some(cairn_store::replication::Block { data: block.clone(), crc: 0 }),
            },
        },
        Record {
            seq: 2,
            body: RecordBody::Name { changes: vec![RowChange { table: 42, key: vec![1], value: None }] },
        },
        Record {
            seq: 2,
            body: RecordBody::Name {
                changes: vec![RowChange { table: 2, key: vec![1, 2, 3], value: Some(vec![]) }],
            },
        },
        Record {
            seq: 2,
            body: RecordBody::Name {
                changes: vec![RowChange {
                    table: 1,
                    key: b"journal_generation".to_vec(),
                    value: Some(9u64.to_le_bytes().to_vec()),
                }],
            },
        },
        Record {
            seq: 2,
            body: RecordBody::Name {
                changes: vec![RowChange {
                    table: 1,
                    key: b"cluster_id".to_vec(),
                    value: Some(5u64.to_le_bytes().to_vec()),
                }],
            },
        },
        Record {
            seq: 2,
            body: RecordBody::Name {
                changes: vec![RowChange { table: 1, key: b"next_inode".to_vec(), value: Some(vec![1, 2]) }],
            },
        },
    ];
    let digest = replica.digest().unwrap();
    for record in &bad {
        let result = replica.apply(record);
        assert!(matches!(result, Err(StoreError::Invalid(_))), "{record:?}: {result:?}");
        assert_eq!(replica.position(), 1);
    }
    assert_eq!(replica.digest().unwrap(), digest);
    // Bytes that are not a record at all do not decode.
    assert!(rmp_serde::from_slice::<Record>(&[0xc1, 0x00, 0xff]).is_err());
    for record in &records[1..] {
        replica.apply(&wire(record)).unwrap();
    }
    assert_eq!(replica.digest().unwrap(), store.digest().unwrap());
    // Snapshot pieces out of order or of another volume.
    assert!(replica.apply_snapshot_piece(SnapshotPiece::Rows { rows: Vec::new() }).is_err());
    replica.begin_snapshot().unwrap();
    assert!(replica.apply_snapshot_piece(SnapshotPiece::Rows { rows: Vec::new() }).is_err());
    let other =
        SnapshotPiece::Start { seq: 5, cluster: 1, volume: 1, data_containers: 3, chunk_size_bytes: CHUNK };
    assert!(replica.apply_snapshot_piece(other).is_err());
    assert!(replica.apply(&records[0]).is_err(), "no records during a resync");
    assert!(replica.finish_snapshot(5).is_err());
    drop(replica);
    // An interrupted resync leaves an empty replica that says so, and a store refuses it.
    let replica = self::replica(dirs[1].path());
    assert_eq!(replica.position(), 0);
    assert!(replica.apply(&records[0]).is_err());
    drop(replica);
    assert!(matches!(Store::open(config(dirs[1].path())), Err(StoreError::Invalid(_))));
    // Another cluster's directory.
    assert!(Replica::open(config(dirs[1].path()), ClusterId(3), VOLUME).is_err());
    let replica = self::replica(dirs[1].path());
    resync(&store, &replica);
    assert_eq!(replica.digest().unwrap(), store.digest().unwrap());
}

// ---- the crash simulation ----

/// The single-threaded replicator of the simulation: records queue per replica and are applied
/// in `wait`; a crash, armed to strike at the n-th record, delivers a random prefix of the
/// queued records to each replica and drops every later one.
struct Sim {
    inner: Mutex<SimInner>,
}

struct SimInner {
    next: u64,
    /// Every record delivered or queued, for replicas that restart and need a suffix again.
    log: Vec<Record>,
    targets: Vec<(Arc<Replica>, VecDeque<Record>)>,
    crash_in: Option<u64>,
    dead: bool,
    rng: Rng,
    failure: Option<String>,
}

impl Sim {
    fn new(seed: u64, targets: Vec<Arc<Replica>>) -> Arc<Sim> {
        Arc::new(Sim {
            inner: Mutex::new(SimInner {
                next: 0,
                log: Vec::new(),
                targets: targets.into_iter().map(|replica| (replica, VecDeque::new())).collect(),
                crash_in: None,
                dead: false,
                rng: Rng(seed),
                failure: None,
            }),
        })
    }

    fn add_target(&self, replica: Arc<Replica>) {
        self.inner.lock().unwrap().targets.push((replica, VecDeque::new()));
    }

    fn detach(&self, replica: &Arc<Replica>) {
        self.inner.lock().unwrap().targets.retain(|(target, _)| !Arc::ptr_eq(target, replica));
    }

    /// A restarted replica: it gets again every record after its (durable) position.
    fn attach_resending(&self, replica: Arc<Replica>) {
        let mut inner = self.inner.lock().unwrap();
        let position = replica.position();
        let queue = inner.log.iter().filter(|record| record.seq > position).cloned().collect();
        inner.targets.push((replica, queue));
    }

    fn arm_crash(&self, records: u64) {
        self.inner.lock().unwrap().crash_in = Some(records);
    }

    /// The master dies now: each replica gets a random prefix of what it has not applied.
    fn crash_now(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.dead {
            return;
        }
        inner.dead = true;
        let same = inner.rng.chance(50);
        let shared_cut = inner.rng.next();
        let SimInner { targets, rng, failure, .. } = &mut *inner;
        for (replica, queue) in targets.iter_mut() {
            let cut = if same { shared_cut } else { rng.next() } % (queue.len() as u64 + 1);
            for record in queue.drain(..).take(cut as usize) {
                if let Err(error) = replica.apply(&record) {
                    failure.get_or_insert(format!("record {} at the crash: {error}", record.seq));
                }
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.inner.lock().unwrap().failure.clone()
    }
}

impl Replicator for Sim {
    fn resume(&self, position: u64) {
        self.inner.lock().unwrap().next = position;
    }

    fn submit(&self, body: RecordBody) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        inner.next += 1;
        let seq = inner.next;
        if inner.dead {
            return seq;
        }
        let record = wire(&Record { seq, body });
        inner.log.push(record.clone());
        for (_, queue) in &mut inner.targets {
            queue.push_back(record.clone());
        }
        let strike = match &mut inner.crash_in {
            Some(0) => true,
            Some(count) => {
                *count -= 1;
                false
            }
            None => false,
        };
        drop(inner);
        if strike {
            self.crash_now();
        }
        seq
    }

    fn wait(&self, seq: u64) -> Result<(), ReplicationError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.dead {
            return Err(ReplicationError::Unavailable("the master crashed".to_string()));
        }
        let SimInner { targets, failure, .. } = &mut *inner;
        for (replica, queue) in targets.iter_mut() {
            while queue.front().is_some_and(|record| record.seq <= seq) {
                let record = queue.pop_front().unwrap();
                if let Err(error) = replica.apply(&record) {
                    failure.get_or_insert(format!("record {}: {error}", record.seq));
                    return Err(ReplicationError::Unavailable(format!("replica failed: {error}")));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    File(u64),
    Dir(Fid),
    Symlink(u64, Vec<u8>),
}

/// What the simulation expects of a regular file.
struct FileModel {
    fid: Fid,
    /// Its content as the master returned it.
    known: Vec<u8>,
    /// Bytes of unstable writes since the file's last commit: they may be lost.
    uncertain: Vec<bool>,
    /// The size is at least this after a failover (acknowledged durable).
    certain_size: u64,
}

/// The acknowledged state of the volume, and what the operation interrupted by the crash
/// touched (unknown until the failover shows it).
#[derive(Default)]
struct Model {
    dirs: Vec<Fid>,
    names: BTreeMap<(u64, Vec<u8>), Node>,
    files: BTreeMap<u64, FileModel>,
    uncertain_names: BTreeSet<(u64, Vec<u8>)>,
    uncertain_files: BTreeSet<u64>,
}

enum Outcome<T> {
    Done(T),
    Refused,
    Crashed,
}

fn outcome<T>(result: StoreResult<T>) -> Outcome<T> {
    match result {
        Ok(value) => Outcome::Done(value),
        Err(StoreError::Unavailable(_)) => Outcome::Crashed,
        Err(error) => match benign(Err::<T, _>(error)) {
            Some(_) => unreachable!(),
            None => Outcome::Refused,
        },
    }
}

impl Model {
    fn forget_unnamed(&mut self) {
        let named: BTreeSet<u64> = self
            .names
            .values()
            .filter_map(|node| match node {
                Node::File(inode) => Some(*inode),
                _ => None,
            })
            .collect();
        self.files.retain(|inode, _| named.contains(inode));
    }
}

/// One random operation on the master. Returns false when the master crashed during it.
fn sim_step(store: &Store, rng: &mut Rng, model: &mut Model) -> bool {
    let dir = model.dirs[rng.below(model.dirs.len() as u64) as usize];
    let name = format!("n{}", rng.below(25)).into_bytes();
    let files: Vec<u64> = model.files.keys().copied().collect();
    let file = (!files.is_empty()).then(|| files[rng.below(files.len() as u64) as usize]);
    let file_names: Vec<(u64, Vec<u8>)> = model
        .names
        .iter()
        .filter(|(_, node)| !matches!(node, Node::Dir(_)))
        .map(|(key, _)| key.clone())
        .collect();
    let key = (dir.inode, name.clone());
    match rng.below(100) {
        0..=14 => {
            match outcome(store.create(&root(), dir, &name, CreateHow::Guarded(SetAttributes::default()))) {
                Outcome::Done(created) => {
                    model.names.insert(key, Node::File(created.fid.inode));
                    let file = FileModel {
                        fid: created.fid,
                        known: Vec::new(),
                        uncertain: Vec::new(),
                        certain_size: 0,
                    };
                    model.files.insert(created.fid.inode, file);
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    model.uncertain_names.insert(key);
                    return false;
                }
            }
        }
        15..=17 => match outcome(store.mkdir(&root(), dir, &name, SetAttributes::default())) {
            Outcome::Done(created) => {
                model.names.insert(key, Node::Dir(created.fid));
                model.dirs.push(created.fid);
            }
            Outcome::Refused => {}
            Outcome::Crashed => {
                model.uncertain_names.insert(key);
                return false;
            }
        },
        18..=21 => {
            let target = format!("target-{}", rng.below(1000)).into_bytes();
            match outcome(store.symlink(&root(), dir, &name, &target, SetAttributes::default())) {
                Outcome::Done(created) => {
                    model.names.insert(key, Node::Symlink(created.fid.inode, target));
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    model.uncertain_names.insert(key);
                    return false;
                }
            }
        }
        22..=54 => {
            let Some(inode) = file else { return true };
            let offset = if rng.chance(30) { rng.below(64 * 1024) } else { rng.below(3 * CHUNK) };
            let length = rng.below(30_000) as usize + 1;
            let data = rng.bytes(length);
            let stability = match rng.below(4) {
                0 => Stability::FileSync,
                1 => Stability::DataSync,
                _ => Stability::Unstable,
            };
            let fid = model.files[&inode].fid;
            match outcome(store.write(&root(), fid, offset, &data, stability)) {
                Outcome::Done(_) => {
                    let model_file = model.files.get_mut(&inode).unwrap();
                    let end = offset as usize + data.len();
                    if model_file.known.len() < end {
                        model_file.known.resize(end, 0);
                        model_file.uncertain.resize(end, false);
                    }
                    model_file.known[offset as usize..end].copy_from_slice(&data);
                    if stability == Stability::Unstable {
                        model_file.uncertain[offset as usize..end].fill(true);
                    } else {
                        model_file.uncertain.fill(false);
                        model_file.certain_size = model_file.known.len() as u64;
                    }
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    model.uncertain_files.insert(inode);
                    return false;
                }
            }
        }
        55..=62 => {
            let Some(inode) = file else { return true };
            match outcome(store.commit(model.files[&inode].fid, 0, 0)) {
                Outcome::Done(_) => {
                    let model_file = model.files.get_mut(&inode).unwrap();
                    model_file.uncertain.fill(false);
                    model_file.certain_size = model_file.known.len() as u64;
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    model.uncertain_files.insert(inode);
                    return false;
                }
            }
        }
        63..=70 => {
            let Some(inode) = file else { return true };
            let size = rng.below(3 * CHUNK);
            let changes = SetAttributes { size_bytes: Some(size), ..Default::default() };
            match outcome(store.setattr(&root(), model.files[&inode].fid, changes, None)) {
                Outcome::Done(_) => {
                    let model_file = model.files.get_mut(&inode).unwrap();
                    model_file.known.resize(size as usize, 0);
                    model_file.uncertain.resize(size as usize, false);
                    model_file.certain_size = size;
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    model.uncertain_files.insert(inode);
                    return false;
                }
            }
        }
        71..=78 => {
            if file_names.is_empty() {
                return true;
            }
            let (dir_inode, name) = file_names[rng.below(file_names.len() as u64) as usize].clone();
            let dir = *model.dirs.iter().find(|dir| dir.inode == dir_inode).unwrap();
            match outcome(store.remove(&root(), dir, &name)) {
                Outcome::Done(_) => {
                    model.names.remove(&(dir_inode, name));
                    model.forget_unnamed();
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    if let Some(Node::File(inode)) = model.names.get(&(dir_inode, name.clone())) {
                        model.uncertain_files.insert(*inode);
                    }
                    model.uncertain_names.insert((dir_inode, name));
                    return false;
                }
            }
        }
        79..=88 => {
            if file_names.is_empty() {
                return true;
            }
            let from = file_names[rng.below(file_names.len() as u64) as usize].clone();
            let from_dir = *model.dirs.iter().find(|dir| dir.inode == from.0).unwrap();
            match outcome(store.rename(&root(), from_dir, &from.1, dir, &name)) {
                Outcome::Done(_) => {
                    let node = model.names[&from].clone();
                    if model.names.get(&key) != Some(&node) {
                        model.names.remove(&from);
                        model.names.insert(key, node);
                        model.forget_unnamed();
                    }
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    for name in [&from, &key] {
                        if let Some(Node::File(inode)) = model.names.get(name) {
                            model.uncertain_files.insert(*inode);
                        }
                    }
                    model.uncertain_names.insert(from);
                    model.uncertain_names.insert(key);
                    return false;
                }
            }
        }
        89..=95 => {
            let Some(inode) = file else { return true };
            match outcome(store.link(&root(), model.files[&inode].fid, dir, &name)) {
                Outcome::Done(_) => {
                    model.names.insert(key, Node::File(inode));
                }
                Outcome::Refused => {}
                Outcome::Crashed => {
                    model.uncertain_names.insert(key);
                    model.uncertain_files.insert(inode);
                    return false;
                }
            }
        }
        _ => match outcome(store.sync_all()) {
            Outcome::Done(()) => {
                for model_file in model.files.values_mut() {
                    model_file.uncertain.fill(false);
                    model_file.certain_size = model_file.known.len() as u64;
                }
            }
            Outcome::Refused => {}
            Outcome::Crashed => {
                model.uncertain_files.extend(model.files.keys().copied());
                return false;
            }
        },
    }
    true
}

fn list(store: &Store, dir: Fid) -> BTreeMap<Vec<u8>, Fid> {
    let mut out = BTreeMap::new();
    let mut cookie = 0;
    loop {
        let page = store.readdir(&root(), dir, cookie, 100, false).unwrap();
        for entry in page.entries {
            cookie = entry.cookie;
            if entry.name != b"." && entry.name != b".." {
                out.insert(entry.name, entry.fid);
            }
        }
        if page.eof {
            return out;
        }
    }
}

/// Checks that everything acknowledged is on the (new) master.
fn check_model(store: &Store, model: &Model, context: &str) {
    for dir in &model.dirs {
        let actual = list(store, *dir);
        for (name, fid) in &actual {
            let key = (dir.inode, name.clone());
            if model.uncertain_names.contains(&key) {
                continue;
            }
            let expected = model.names.get(&key).unwrap_or_else(|| {
                panic!(
                    "{context}: unexpected name {} in directory {}",
                    String::from_utf8_lossy(name),
                    dir.inode
                )
            });
            match expected {
                Node::File(inode) => assert_eq!(fid.inode, *inode, "{context}: {key:?} names another file"),
                Node::Dir(expected) => assert_eq!(fid, expected, "{context}: {key:?}"),
                Node::Symlink(inode, target) => {
                    assert_eq!(fid.inode, *inode, "{context}: {key:?} names another symlink");
                    assert_eq!(
                        &store.readlink(&root(), *fid).unwrap().0,
                        target,
                        "{context}: symlink {key:?}"
                    )
                }
            }
        }
        for (key, _) in model.names.range((dir.inode, Vec::new())..(dir.inode + 1, Vec::new())) {
            if !model.uncertain_names.contains(key) {
                assert!(actual.contains_key(&key.1), "{context}: acknowledged name {key:?} is missing");
            }
        }
    }
    for (inode, file) in &model.files {
        if model.uncertain_files.contains(inode) {
            continue;
        }
        let content = read_all(store, file.fid);
        let size = content.len() as u64;
        assert!(
            size >= file.certain_size && size <= file.known.len() as u64,
            "{context}: inode {inode} has size {size}, expected {}..={}",
            file.certain_size,
            file.known.len()
        );
        let checked = file.certain_size.min(size) as usize;
        let differs =
            (0..checked).find(|&index| !file.uncertain[index] && content[index] != file.known[index]);
        if let Some(index) = differs {
            panic!("{context}: inode {inode}: acknowledged byte {index} differs");
        }
    }
}

/// After a failover: whatever the interrupted operation and the lost unstable writes left is
/// now the expected state.
fn adopt(store: &Store, model: &mut Model) {
    for key in std::mem::take(&mut model.uncertain_names) {
        let dir = *model.dirs.iter().find(|dir| dir.inode == key.0).unwrap();
        match store.lookup(&root(), dir, &key.1) {
            Err(StoreError::NotFound) => {
                model.names.remove(&key);
            }
            Err(error) => panic!("lookup: {error}"),
            Ok(found) => {
                let node = match found.attributes.kind {
                    FileKind::Regular => {
                        model.files.entry(found.fid.inode).or_insert(FileModel {
                            fid: found.fid,
                            known: Vec::new(),
                            uncertain: Vec::new(),
                            certain_size: 0,
                        });
                        Node::File(found.fid.inode)
                    }
                    FileKind::Directory => {
                        if !model.dirs.contains(&found.fid) {
                            model.dirs.push(found.fid);
                        }
                        Node::Dir(found.fid)
                    }
                    FileKind::Symlink => {
                        Node::Symlink(found.fid.inode, store.readlink(&root(), found.fid).unwrap().0)
                    }
                    kind => panic!("unexpected kind {kind:?}"),
                };
                model.names.insert(key, node);
            }
        }
    }
    model.uncertain_files.clear();
    model.forget_unnamed();
    for file in model.files.values_mut() {
        file.known = read_all(store, file.fid);
        file.uncertain = vec![false; file.known.len()];
        file.certain_size = file.known.len() as u64;
    }
}

fn sim_seeds() -> Vec<u64> {
    match std::env::var("CAIRN_REPL_SEED").ok().and_then(|value| value.parse().ok()) {
        Some(seed) => vec![seed],
        None => SIM_SEEDS.to_vec(),
    }
}

#[test]
fn crashes_failovers_and_resyncs() {
    for seed in sim_seeds() {
        eprintln!("replication simulation: seed {seed} (replay with CAIRN_REPL_SEED={seed})");
        simulate(seed);
    }
}

fn open_replica(dir: &Path) -> Arc<Replica> {
    let replica = replica(dir);
    replica.keep_undo_for_tests();
    Arc::new(replica)
}

/// A replica crashes (or loses power) while the master goes on, and restarts: the master sends
/// it again every record after its durable position.
fn restart_replica(
    sim: &Sim,
    replicas: &mut BTreeMap<usize, Arc<Replica>>,
    node: usize,
    dir: &Path,
    rng: &mut Rng,
) {
    let replica = replicas.remove(&node).unwrap();
    sim.detach(&replica);
    let replica = Arc::try_unwrap(replica).ok().unwrap();
    if rng.chance(50) {
        replica.simulate_crash();
    } else {
        replica.simulate_power_failure(rng.next(), 50);
    }
    let reopened = open_replica(dir);
    sim.attach_resending(reopened.clone());
    replicas.insert(node, reopened);
}

fn simulate(seed: u64) {
    const ROUNDS: usize = 4;
    let mut rng = Rng(seed);
    let nodes: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas: BTreeMap<usize, Arc<Replica>> =
        (1..3).map(|node| (node, open_replica(nodes[node].path()))).collect();
    let mut sim = Sim::new(rng.next(), replicas.values().cloned().collect());
    let mut master_node = 0;
    let mut store = Store::open_replicated(config(nodes[0].path()), sim.clone()).unwrap();
    let mut model = Model { dirs: vec![store.root()], ..Model::default() };
    for round in 0..ROUNDS {
        let context = format!("seed {seed} round {round}");
        sim.arm_crash(rng.below(80) + 1);
        let mut operations = 0;
        let mut restarts = 0;
        while operations < 300 && sim_step(&store, &mut rng, &mut model) {
            assert_eq!(sim.failure(), None, "{context}");
            operations += 1;
            if rng.chance(4) {
                let node = *replicas.keys().nth(rng.below(2) as usize).unwrap();
                restart_replica(&sim, &mut replicas, node, nodes[node].path(), &mut rng);
                restarts += 1;
            }
        }
        sim.crash_now();
        assert_eq!(sim.failure(), None, "{context}");
        let verifier = store.write_verifier();
        store.simulate_crash();
        drop(sim);

        // Maybe a replica dies too: a process crash, or a power failure that loses unsynced
        // chunk writes.
        if rng.chance(40) {
            let node = *replicas.keys().nth(rng.below(2) as usize).unwrap();
            let replica = Arc::try_unwrap(replicas.remove(&node).unwrap()).ok().unwrap();
            if rng.chance(50) {
                replica.simulate_crash();
            } else {
                replica.simulate_power_failure(rng.next(), 50);
            }
            replicas.insert(node, open_replica(nodes[node].path()));
        }
        // Promote the replica that applied the most records.
        let positions: Vec<(usize, u64)> =
            replicas.iter().map(|(&node, replica)| (node, replica.position())).collect();
        let &(promoted, position) =
            positions.iter().max_by_key(|(node, position)| (*position, usize::MAX - node)).unwrap();
        let &(other, other_position) = positions.iter().find(|(node, _)| *node != promoted).unwrap();
        eprintln!(
            "{context}: master {master_node} crashed after {operations} operations ({restarts} replica restarts); \
             promoting {promoted} at {position}, replica {other} at {other_position} {}",
            if other_position == position { "rolls forward" } else { "resyncs" }
        );
        Arc::try_unwrap(replicas.remove(&promoted).unwrap()).ok().unwrap().close().unwrap();
        let other_replica = replicas.remove(&other).unwrap();
        let rolls_forward = other_position == position;
        sim = Sim::new(rng.next(), if rolls_forward { vec![other_replica.clone()] } else { Vec::new() });
        store = Store::open_replicated(config(nodes[promoted].path()), sim.clone())
            .unwrap_or_else(|error| panic!("{context}: promotion failed: {error}"));
        assert!(store.replication_position() >= position);
        assert_ne!(store.write_verifier(), verifier);
        if !rolls_forward {
            resync(&store, &other_replica);
            sim.add_target(other_replica.clone());
        }
        // The old master comes back as a replica, by a full resync.
        let old = open_replica(nodes[master_node].path());
        resync(&store, &old);
        sim.add_target(old.clone());
        replicas.insert(other, other_replica);
        replicas.insert(master_node, old);
        master_node = promoted;
        assert_eq!(sim.failure(), None, "{context}");

        check_model(&store, &model, &context);
        adopt(&store, &mut model);
        assert_eq!(store.used_bytes(), walk_used_bytes(&store), "{context}: the new master's used bytes");
        // The replicas are identical to the new master (nothing is unacknowledged now).
        let digest = store.digest().unwrap();
        for (node, replica) in &replicas {
            assert_eq!(
                replica.digest().unwrap(),
                digest,
                "{context}: replica {node} differs from the new master"
            );
            assert_eq!(
                replica.used_bytes().unwrap(),
                store.used_bytes(),
                "{context}: replica {node}'s used bytes"
            );
        }
    }
    // A last stretch of work without a crash, then everything converges.
    for _ in 0..100 {
        assert!(sim_step(&store, &mut rng, &mut model));
    }
    store.sync_all().unwrap();
    assert_eq!(sim.failure(), None);
    let digest = store.digest().unwrap();
    for (node, replica) in &replicas {
        assert_eq!(replica.position(), store.replication_position());
        assert_eq!(replica.digest().unwrap(), digest, "seed {seed}: replica {node} differs at the end");
        assert_eq!(
            replica.used_bytes().unwrap(),
            store.used_bytes(),
            "seed {seed}: replica {node}'s used bytes"
        );
    }
    assert_eq!(store.used_bytes(), walk_used_bytes(&store));
    check_model(&store, &model, &format!("seed {seed} end"));
}
