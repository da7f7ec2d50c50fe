//! One node's container engine: a volume's name container (directories, inodes, attributes,
//! chunk maps and the first 64 KiB of every file) and its data containers (file chunks in 8 KiB
//! checksummed blocks), on local disk.
//!
//! Key types: [`Store`] (open a data directory, then call one method per file system
//! operation), [`Caller`] (who asks; the store checks POSIX permissions itself, atomically with
//! the operation), [`StoreError`], [`replication::Replica`] (a replica of a master's store).
//!
//! Layout (details, byte layouts and fsync ordering in `docs/format.md`):
//! - `<data_dir>/containers/1/`: the name container, a redb database `name.redb` holding inodes,
//!   directory entries (each with a stable per-directory cookie), inline blocks (the first
//!   64 KiB of each file, each 8 KiB block with its CRC-32C), chunk maps, dirty-region intents
//!   and the container's transaction id; and `journal`, the metadata redo log.
//! - `<data_dir>/containers/2..`: data containers. Each chunk of a file is a sparse data file
//!   plus a checksum sidecar (CRC-32C and a written/hole flag per 8 KiB block).
//! - Every container has `container.meta` (format version, kind, epoch, transaction ids).
//!
//! Durability contract (DESIGN.md section 4): every namespace or attribute change is on stable
//! storage when its method returns (concurrent changes share one redb transaction, made durable
//! by one append to the metadata journal and one fdatasync: group commit; redb itself commits
//! durably at checkpoints, and `open` replays the journal);
//! a write with [`Stability::Unstable`] may be lost by a crash until [`Store::commit`] returns,
//! and the [`WriteVerifier`] changes whenever that can have happened (it is random per
//! [`Store::open`] and re-rolled on poisoning). Unstable writes keep their metadata in memory (the
//! hot inode table) and their bytes in the page cache; before the first unstable write into a
//! 64 MiB region of a chunk, a durable dirty-region intent is recorded, so that recovery
//! recomputes those checksums instead of reporting corruption. A failed fsync or write-back is
//! never retried: the store is poisoned and refuses every later change.
//!
//! Reads (`getattr`, `lookup`, `readdir`, `read`) take no write lock: they read the hot inode
//! table, then a redb read transaction. A batch's changes to an inode are visible in the hot
//! table a moment before the batch's commit returns; names appear in lookups once it committed.
//!
//! Permissions: POSIX mode bits, owner/group/other, root bypassing read/write/search (but
//! executing a file needs some execute bit); READ and WRITE allow the file's owner whatever the
//! bits (knfsd's owner override) and READ is allowed to whoever may execute; ACCESS answers the
//! plain mode bits. See `perm.rs`.
//!
//! Replication ([`replication`]): the same volume's store lives on several nodes.
//! [`Store::open_replicated`] opens it as the volume's master: every change that reaches its disk
//! (group-commit batches, chunk writes, truncations, deletions, the fsyncs of COMMIT and stable
//! writes) also becomes a physical [`replication::Record`], handed to the file server's
//! [`replication::Replicator`] in apply order, and no change is acknowledged before the replicas
//! have it. A [`replication::Replica`] applies those records (its own journal, same crash
//! recovery) and ends identical to the master; it can be copied in full while the master works
//! ([`Store::snapshot`]) and promoted (close it, open it with `open_replicated`). Durable
//! positions, roll-forward and resync rules: `docs/format.md`, "Replication".
//!
//! Bad blocks: a chunk block that does not match its checksum fails reads with
//! [`StoreError::BadBlock`], which names it; [`Store::read_blocks`] / [`Store::repair_blocks`]
//! (and the same on a [`replication::Replica`]) let the file server rewrite it from another copy
//! (only ever over a bad block), and [`Store::scrub`] verifies every written block, a step at a
//! time. `docs/format.md`, "Repair and scrub".
//!
//! Space accounting and quota: [`Store::used_bytes`] is the sum of the logical sizes of the
//! regular files, kept in memory (unstable writes included) and persisted as a meta row that
//! every batch writes together with the inode records it sums, so it is crash-consistent and
//! replicated; growth past the hard quota ([`Store::set_quota`]) fails with
//! [`StoreError::QuotaExceeded`], exactly.
//!
//! Test hooks (`#[doc(hidden)]`): [`Store::inject_failure`] makes the next fsync or data write
//! fail, [`Store::simulate_crash`] drops the store as a crash would; [`replication::Replica`]
//! has its own crash and power-failure hooks.
//!
//! Architecture invariant: this crate never touches the network and knows nothing of NFS.

mod api;
mod data;
mod faults;
mod format;
mod fs;
mod group;
mod hot;
mod journal;
mod namespace;
mod open;
mod perm;
pub mod replication;
mod tables;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use api::*;
use cairn_types::{ClusterId, ContainerId, Epoch, Fid, TxnId, VolumeId};
#[doc(hidden)]
pub use faults::FailPoint;
pub use fs::{FileSystem, next_change_id, serving_request};
pub use open::disk_space;
use parking_lot::{Mutex, RwLock};

use crate::data::{ChunkFiles, DataContainer};
use crate::faults::Faults;
use crate::format::Inode;
use crate::group::{GroupCommit, Op, Output};
use crate::hot::HotTable;

/// The name container's id: every FID of the volume names it.
pub const NAME_CONTAINER_ID: ContainerId = ContainerId(1);
/// Number of data stripe locks (readers and writers of file data take one per inode).
const DATA_STRIPES: usize = 1024;

/// Settings of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Where containers live. Created if absent.
    pub data_dir: PathBuf,
    /// Size of a chunk (the part of a file kept in one data container). A multiple of 8 KiB, at
    /// least 64 KiB.
    pub chunk_size_bytes: u64,
    /// Number of data containers (ids 2..=N+1). Fixed when the store is created.
    pub data_containers: u32,
    /// Most bytes of unstable inline data and metadata kept in memory before the store writes
    /// them to the name container on its own (they stay "unstable" until a COMMIT).
    pub unstable_memory_bytes_max: u64,
    /// Free space the store keeps for itself: data writes fail with [`StoreError::NoSpace`]
    /// below it, creations below half of it, and removals (which free space) below an eighth,
    /// so that a full disk never makes a database commit fail.
    pub space_reserve_bytes: u64,
    /// Most open chunk files kept in the file cache.
    pub open_chunk_files_max: usize,
    /// Size of the metadata journal (preallocated). A batch that does not fit commits durably
    /// to the database instead and empties the journal.
    pub journal_bytes: u64,
    /// The cluster and volume a new store belongs to (a file server creating a replica of a
    /// volume the CLDB made). `None`: a new random cluster id and volume 1 (a one-node cluster).
    /// Ignored when the store exists: its own identity is kept.
    pub identity: Option<(ClusterId, VolumeId)>,
    /// The volume's hard quota at opening (see [`Store::set_quota`]); `None`: no quota.
    pub quota_bytes: Option<u64>,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            chunk_size_bytes: cairn_types::limits::CHUNK_SIZE_BYTES_DEFAULT,
            data_containers: 4,
            unstable_memory_bytes_max: 64 * 1024 * 1024,
            space_reserve_bytes: 64 * 1024 * 1024,
            open_chunk_files_max: 512,
            journal_bytes: 64 * 1024 * 1024,
            identity: None,
            quota_bytes: None,
        }
    }
}

/// One node's store. `Send + Sync`: call it from many threads at once. Every method blocks on
/// disk I/O, so async callers run it on a blocking thread.
pub struct Store {
    config: StoreConfig,
    db: redb::Database,
    faults: Arc<Faults>,
    cluster: ClusterId,
    volume: VolumeId,
    fsid: u64,
    root: Fid,
    epoch: Epoch,
    verifier: Mutex<[u8; 8]>,
    poisoned: AtomicBool,
    poison_reason: Mutex<String>,
    hot: HotTable,
    /// Invariant: whoever changes the bytes or size of a regular file holds its stripe for
    /// writing; readers of file bytes hold it for reading.
    stripes: Box<[RwLock<()>]>,
    group: GroupCommit,
    /// Only the group-commit leader locks it.
    journal: Mutex<journal::Journal>,
    files: Mutex<HashMap<(u64, u64), Arc<ChunkFiles>>>,
    containers: Vec<DataContainer>,
    /// Bytes of unstable inline blocks held in hot entries.
    inline_dirty_bytes: AtomicU64,
    /// Size of a dirty region: min(64 MiB, chunk size).
    region_size_bytes: u64,
    /// Inodes whose files were deleted after their removal committed; their `pending_delete`
    /// rows go in the next batch.
    finished_deletes: Mutex<Vec<u64>>,
    /// The replicator of a master store (none for a single-node store), and where its sequence
    /// stands.
    repl: replication::Link,
    /// The sum of the current sizes of the regular files (hot entries included: unstable writes
    /// count at once). Invariant: changed only together with a regular file's size in its hot
    /// entry (under the entry's lock), or reserved just before (see [`Store::reserve_growth`]).
    used_bytes: AtomicU64,
    /// The hard quota; `u64::MAX`: none.
    quota_bytes: AtomicU64,
}

fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as u32, nanoseconds: since.subsec_nanos() }
}

/// A ctime later than `previous`: ctime never goes back, even if the clock does.
fn next_ctime(previous: Timestamp) -> Timestamp {
    let current = now();
    if current > previous {
        return current;
    }
    if previous.nanoseconds < 999_999_999 {
        Timestamp { seconds: previous.seconds, nanoseconds: previous.nanoseconds + 1 }
    } else {
        Timestamp { seconds: previous.seconds.saturating_add(1), nanoseconds: 0 }
    }
}

fn random_nonzero_u32() -> u32 {
    loop {
        let value: u32 = rand::random();
        if value != 0 {
            return value;
        }
    }
}

/// FNV-1a: a stable hash, the same in every build and on every node.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Store {
    /// Opens the store in `config.data_dir`, creating a new cluster id, volume and root directory
    /// (mode 0755, owner root) on first use, and recovering after a crash.
    pub fn open(config: StoreConfig) -> StoreResult<Store> {
        open::open(config)
    }

    /// Makes everything durable, for a clean shutdown.
    pub fn sync_all(&self) -> StoreResult<()> {
        self.check_poisoned()?;
        let mut unstable = Vec::new();
        for entry in self.hot.all() {
            let guard = entry.lock();
            if guard.has_unstable() && !guard.deleted {
                unstable.push(guard.number);
            }
        }
        data::commit_inodes(self, &unstable)?;
        for container in &self.containers {
            container.persist_txn(&self.faults)?;
        }
        // Not needed for durability (the journal is durable); makes the next open quick.
        self.submit(Op::Checkpoint)?;
        Ok(())
    }

    pub fn cluster_id(&self) -> ClusterId {
        self.cluster
    }

    /// The one volume of a single-node cluster.
    pub fn volume_id(&self) -> VolumeId {
        self.volume
    }

    /// The root directory of the volume.
    pub fn root(&self) -> Fid {
        self.root
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Bytes the volume uses: the sum of the logical sizes of its regular files (each inode
    /// once, whatever its number of links; a sparse file counts its whole size). Includes
    /// writes not yet committed. Persisted as the `used_bytes` row of the name container's meta
    /// table, which every batch writes together with the inode records it sums, so that it is
    /// crash-consistent (after a crash: the sum of the sizes that survived) and replicates with
    /// the rows; a replica's [`replication::Replica::used_bytes`] equals this value once the
    /// master's writes are committed.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::SeqCst)
    }

    /// Sets the volume's hard quota (`None`: none). Not persisted: the file server sets it from
    /// the CLDB's assignment; [`StoreConfig::quota_bytes`] is the value at opening.
    ///
    /// A write, a SETATTR or a CREATE that would make a regular file larger and take
    /// [`Store::used_bytes`] past the quota fails with [`StoreError::QuotaExceeded`] and
    /// changes nothing. Everything else works at or over the quota (writes inside a file's
    /// size, truncations, removals, metadata changes), so space can always be freed. The bound
    /// is exact: each growth is reserved in one atomic step against the quota before the
    /// operation changes anything (and given back if it fails), so concurrent writers never
    /// take `used_bytes` past the quota; it is above only if the quota was lowered below it.
    pub fn set_quota(&self, hard: Option<u64>) {
        self.quota_bytes.store(hard.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The hard quota ([`Store::set_quota`]).
    pub fn quota(&self) -> Option<u64> {
        let quota = self.quota_bytes.load(Ordering::SeqCst);
        (quota != u64::MAX).then_some(quota)
    }

    /// The current write verifier.
    pub fn write_verifier(&self) -> WriteVerifier {
        WriteVerifier(*self.verifier.lock())
    }

    pub fn getattr(&self, fid: Fid) -> StoreResult<Attributes> {
        let (number, inode) = self.current(fid)?;
        Ok(self.attributes(number, &inode))
    }

    /// SETATTR. `guard_ctime`: fail with [`StoreError::NotSync`] unless the ctime matches.
    pub fn setattr(
        &self,
        caller: &Caller,
        fid: Fid,
        changes: SetAttributes,
        guard_ctime: Option<Timestamp>,
    ) -> StoreResult<WccData> {
        wcc(self.change(Change::Setattr { caller: caller.clone(), fid, changes, guard_ctime }))
    }

    /// LOOKUP, including `.` and `..` (`..` of the root is the root).
    pub fn lookup(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<Lookup> {
        namespace::lookup(self, caller, directory, name)
    }

    /// ACCESS: which of the `requested` bits ([`access`]) the caller holds, and the attributes.
    pub fn access(&self, caller: &Caller, fid: Fid, requested: u32) -> StoreResult<(u32, Attributes)> {
        let (number, inode) = self.current(fid)?;
        Ok((perm::access_bits(caller, &inode, requested), self.attributes(number, &inode)))
    }

    pub fn readlink(&self, caller: &Caller, fid: Fid) -> StoreResult<(Vec<u8>, Attributes)> {
        let _ = caller;
        let (number, inode) = self.current(fid)?;
        if inode.kind != FileKind::Symlink {
            return Err(StoreError::Invalid("not a symbolic link"));
        }
        let attributes = self.attributes(number, &inode);
        Ok((inode.target, attributes))
    }

    pub fn read(&self, caller: &Caller, fid: Fid, offset: u64, count: u32) -> StoreResult<ReadResult> {
        data::read(self, caller, fid, offset, count)
    }

    pub fn write(
        &self,
        caller: &Caller,
        fid: Fid,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> StoreResult<WriteResult> {
        data::write(self, caller, fid, offset, data, stability)
    }

    /// COMMIT: makes every earlier write to the file durable. `count_bytes` 0 means to the end.
    /// The whole file is committed whatever the range.
    pub fn commit(&self, fid: Fid, offset: u64, count_bytes: u32) -> StoreResult<CommitResult> {
        let _ = (offset, count_bytes);
        let (number, before) = self.current(fid)?;
        self.check_poisoned()?;
        self.commit_inode(number)?;
        // Also when there was nothing left to commit here: a concurrent COMMIT may have synced
        // this file's data, and its records must be acknowledged before this one answers.
        self.wait_replicated()?;
        let (_, after) = self.current(fid)?;
        Ok(CommitResult {
            verifier: self.write_verifier(),
            file: WccData { before: Some(pre_op(&before)), after: Some(self.attributes(number, &after)) },
        })
    }

    pub fn create(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        how: CreateHow,
    ) -> StoreResult<Created> {
        created(self.change(Change::Create { caller: caller.clone(), directory, name: name.to_vec(), how }))
    }

    pub fn mkdir(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        created(self.change(Change::Mkdir {
            caller: caller.clone(),
            directory,
            name: name.to_vec(),
            attributes,
        }))
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        target: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        created(self.change(Change::Symlink {
            caller: caller.clone(),
            directory,
            name: name.to_vec(),
            target: target.to_vec(),
            attributes,
        }))
    }

    pub fn mknod(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        kind: SpecialKind,
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        created(self.change(Change::Mknod {
            caller: caller.clone(),
            directory,
            name: name.to_vec(),
            kind,
            attributes,
        }))
    }

    /// REMOVE of a non-directory.
    pub fn remove(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        wcc(self.change(Change::Remove { caller: caller.clone(), directory, name: name.to_vec() }))
    }

    pub fn rmdir(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        wcc(self.change(Change::Rmdir { caller: caller.clone(), directory, name: name.to_vec() }))
    }

    /// RENAME, atomic, also over an existing target (a file over a file, or a directory over an
    /// empty directory).
    pub fn rename(
        &self,
        caller: &Caller,
        from_directory: Fid,
        from_name: &[u8],
        to_directory: Fid,
        to_name: &[u8],
    ) -> StoreResult<Renamed> {
        match self.change(Change::Rename {
            caller: caller.clone(),
            from_directory,
            from_name: from_name.to_vec(),
            to_directory,
            to_name: to_name.to_vec(),
        })? {
            Changed::Renamed(renamed) => Ok(renamed),
            _ => unreachable!("rename answers with two wcc data"),
        }
    }

    pub fn link(&self, caller: &Caller, fid: Fid, directory: Fid, name: &[u8]) -> StoreResult<Linked> {
        match self.change(Change::Link { caller: caller.clone(), fid, directory, name: name.to_vec() })? {
            Changed::Linked(linked) => Ok(linked),
            _ => unreachable!("link answers with linked"),
        }
    }

    /// Makes a change through group commit and waits until it is durable (and, on a master,
    /// replicated).
    pub fn change(&self, change: Change) -> StoreResult<Changed> {
        match self.submit(Op::Change(change))? {
            Output::Changed(changed) => Ok(changed),
            Output::Done => unreachable!("a change answers with what it changed"),
        }
    }

    /// Starts a change without blocking: `done` gets the result once it is durable, on a
    /// thread of the store's (see [`FileSystem::start_change`]). A replicated store gives the
    /// change back: it waits for its replicas after each batch, so its changes are made with
    /// [`Store::change`] on a blocking thread.
    pub fn start_change(
        self: &Arc<Self>,
        change: Change,
        done: ChangeDone,
    ) -> Result<(), Box<(Change, ChangeDone)>> {
        if self.is_replicated() {
            return Err(Box::new((change, done)));
        }
        group::start(self, change, done);
        Ok(())
    }

    /// READDIR / READDIRPLUS: up to `entries_max` entries after `cookie` (0: from the start).
    /// `with_attributes` fills [`DirectoryEntry::attributes`].
    pub fn readdir(
        &self,
        caller: &Caller,
        directory: Fid,
        cookie: u64,
        entries_max: usize,
        with_attributes: bool,
    ) -> StoreResult<DirectoryPage> {
        namespace::readdir(self, caller, directory, cookie, entries_max, with_attributes)
    }

    pub fn fsstat(&self) -> StoreResult<FsStat> {
        let stat = open::statvfs(&self.config.data_dir)?;
        let fragment = stat.f_frsize as u64;
        let (total_files, free_files, available_files) = if stat.f_files == 0 {
            (1 << 40, 1 << 40, 1 << 40)
        } else {
            (stat.f_files as u64, stat.f_ffree as u64, stat.f_favail as u64)
        };
        Ok(FsStat {
            total_bytes: stat.f_blocks as u64 * fragment,
            free_bytes: stat.f_bfree as u64 * fragment,
            available_bytes: stat.f_bavail as u64 * fragment,
            total_files,
            free_files,
            available_files,
        })
    }

    /// The epoch and last transaction id of a container (name container: id 1; data
    /// containers: 2 and up).
    pub fn container_state(&self, container: ContainerId) -> Option<(Epoch, TxnId)> {
        if container == NAME_CONTAINER_ID {
            return Some((self.epoch, self.group.last_txn()));
        }
        self.containers.iter().find(|data| data.id == container.0).map(|data| (data.epoch, data.last_txn()))
    }

    /// Makes the next I/O at `point` fail, for tests of poisoning.
    #[doc(hidden)]
    pub fn inject_failure(&self, point: FailPoint) {
        self.faults.arm(point);
    }

    /// Simulates a crash: from now on no I/O of this store reaches the disk (every write and
    /// sync fails), then drops it. Unstable state in memory is lost, as in a real crash.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.faults.crash();
        self.poison("simulated crash".to_string());
        drop(self);
    }

    /// Group commit statistics: (batches committed, operations in them).
    #[doc(hidden)]
    pub fn group_commit_stats(&self) -> (u64, u64) {
        (self.group.batches.load(Ordering::Relaxed), self.group.batched_operations.load(Ordering::Relaxed))
    }

    /// Whether the store is poisoned.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    // ---- shared helpers ----

    fn check_poisoned(&self) -> StoreResult<()> {
        if self.repl.is_fenced() {
            return Err(StoreError::NotMaster);
        }
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned(self.poison_reason.lock().clone()));
        }
        Ok(())
    }

    /// Poisons the store after a failed fsync or write-back: acknowledged unstable data may be
    /// lost, so the verifier changes, and no change is accepted any more.
    fn poison(&self, reason: String) {
        let mut stored = self.poison_reason.lock();
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            tracing::error!(%reason, "store poisoned");
            *stored = reason;
        }
        drop(stored);
        self.reroll_verifier();
    }

    fn reroll_verifier(&self) {
        let mut verifier = self.verifier.lock();
        let old = *verifier;
        while *verifier == old {
            *verifier = rand::random();
        }
    }

    fn poisoned_error(&self) -> StoreError {
        StoreError::Poisoned(self.poison_reason.lock().clone())
    }

    /// Reserves `bytes` of growth of a regular file against the quota, before the operation
    /// changes anything: [`StoreError::QuotaExceeded`] if `used_bytes` would pass it. The
    /// caller gives the bytes back ([`Store::release_bytes`]) if the operation then fails.
    fn reserve_growth(&self, bytes: u64) -> StoreResult<()> {
        if bytes == 0 {
            return Ok(());
        }
        let quota = self.quota_bytes.load(Ordering::SeqCst);
        self.used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let grown = used.saturating_add(bytes);
                (quota == u64::MAX || grown <= quota).then_some(grown)
            })
            .map(|_| ())
            .map_err(|_| StoreError::QuotaExceeded)
    }

    /// Bytes that no regular file uses any more (a shrink, a deletion, a failed growth).
    fn release_bytes(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self.used_bytes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            debug_assert!(used >= bytes, "used_bytes would go below zero");
            Some(used.saturating_sub(bytes))
        });
    }

    fn stripe(&self, number: u64) -> &RwLock<()> {
        &self.stripes[(number as usize) % DATA_STRIPES]
    }

    fn fid(&self, number: u64, inode: &Inode) -> Fid {
        Fid { container: NAME_CONTAINER_ID, inode: number, uniquifier: inode.uniquifier }
    }

    fn attributes(&self, number: u64, inode: &Inode) -> Attributes {
        let size_bytes = match inode.kind {
            FileKind::Directory => 4096,
            FileKind::Symlink => inode.target.len() as u64,
            _ => inode.size_bytes,
        };
        Attributes {
            kind: inode.kind,
            mode: inode.mode & perm::MODE_MASK,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            size_bytes,
            used_bytes: inode.blocks_used * cairn_types::limits::BLOCK_SIZE_BYTES,
            rdev: inode.rdev,
            fsid: self.fsid,
            fileid: number,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
        }
    }

    /// The current state of a file: its hot entry if it has one, else its committed record.
    fn current(&self, fid: Fid) -> StoreResult<(u64, Inode)> {
        let inode = self.current_by_number(fid.inode, None)?.ok_or(StoreError::Stale(fid))?;
        if fid.container != NAME_CONTAINER_ID || inode.uniquifier != fid.uniquifier {
            return Err(StoreError::Stale(fid));
        }
        Ok((fid.inode, inode))
    }

    fn current_by_number(
        &self,
        number: u64,
        read: Option<&redb::ReadTransaction>,
    ) -> StoreResult<Option<Inode>> {
        if let Some(entry) = self.hot.get(number) {
            let guard = entry.lock();
            if !guard.evicted {
                return Ok((!guard.deleted).then(|| guard.inode.clone()));
            }
        }
        match read {
            Some(read) => tables::read_inode(read, number),
            None => {
                let read = tables::begin_read(&self.db)?;
                tables::read_inode(&read, number)
            }
        }
    }

    fn commit_inode(&self, number: u64) -> StoreResult<()> {
        data::commit_inode(self, number)
    }

    /// Runs a metadata operation through group commit; once it succeeded, waits until the
    /// replicas have it.
    fn submit(&self, op: Op) -> StoreResult<Output> {
        self.check_poisoned()?;
        let output = group::submit(self, op)?;
        self.wait_replicated()?;
        Ok(output)
    }
}

fn created(changed: StoreResult<Changed>) -> StoreResult<Created> {
    match changed? {
        Changed::Created(created) => Ok(created),
        _ => unreachable!("creations answer with created"),
    }
}

fn wcc(changed: StoreResult<Changed>) -> StoreResult<WccData> {
    match changed? {
        Changed::Wcc(wcc) => Ok(wcc),
        _ => unreachable!("remove, rmdir and setattr answer with wcc data"),
    }
}

pub(crate) fn pre_op(inode: &Inode) -> PreOpAttributes {
    let size_bytes = match inode.kind {
        FileKind::Directory => 4096,
        FileKind::Symlink => inode.target.len() as u64,
        _ => inode.size_bytes,
    };
    PreOpAttributes { size_bytes, mtime: inode.mtime, ctime: inode.ctime }
}
