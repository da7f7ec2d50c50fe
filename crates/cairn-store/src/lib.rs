//! One node's container engine: a volume's name container (directories, inodes, attributes,
//! chunk maps and the first 64 KiB of every file) and its data containers (file chunks in 8 KiB
//! checksummed blocks), on local disk.
//!
//! Key types: [`Store`] (open a data directory, then call one method per file system
//! operation), [`Caller`] (who asks; the store checks POSIX permissions itself, atomically with
//! the operation), [`StoreError`].
//!
//! Durability contract (DESIGN.md section 4): every namespace or attribute change is on stable
//! storage when its method returns; a write with [`Stability::Unstable`] may be lost by a crash
//! until [`Store::commit`] returns, and the [`WriteVerifier`] changes whenever that can have
//! happened. A failed fsync is never retried: the container is poisoned.
//!
//! Architecture invariant: this crate never touches the network and knows nothing of NFS.

mod api;

use std::path::{Path, PathBuf};

pub use api::*;
use cairn_types::{ClusterId, Fid, VolumeId};

/// Settings of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Where containers live. Created if absent.
    pub data_dir: PathBuf,
    /// Size of a chunk (the part of a file kept in one data container).
    pub chunk_size_bytes: u64,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            chunk_size_bytes: cairn_types::limits::CHUNK_SIZE_BYTES_DEFAULT,
        }
    }
}

/// One node's store. `Send + Sync`: call it from many threads at once. Every method blocks on
/// disk I/O, so async callers run it on a blocking thread.
pub struct Store {
    _private: (),
}

impl Store {
    /// Opens the store in `config.data_dir`, creating a new cluster id, volume and root directory
    /// (mode 0755, owner root) on first use, and recovering after a crash.
    pub fn open(config: StoreConfig) -> StoreResult<Store> {
        let _ = config;
        todo!()
    }

    /// Makes everything durable, for a clean shutdown.
    pub fn sync_all(&self) -> StoreResult<()> {
        todo!()
    }

    pub fn cluster_id(&self) -> ClusterId {
        todo!()
    }

    /// The one volume of a single-node cluster.
    pub fn volume_id(&self) -> VolumeId {
        todo!()
    }

    /// The root directory of the volume.
    pub fn root(&self) -> Fid {
        todo!()
    }

    pub fn data_dir(&self) -> &Path {
        todo!()
    }

    /// The current write verifier.
    pub fn write_verifier(&self) -> WriteVerifier {
        todo!()
    }

    pub fn getattr(&self, fid: Fid) -> StoreResult<Attributes> {
        let _ = fid;
        todo!()
    }

    /// SETATTR. `guard_ctime`: fail with [`StoreError::NotSync`] unless the ctime matches.
    pub fn setattr(
        &self,
        caller: &Caller,
        fid: Fid,
        changes: SetAttributes,
        guard_ctime: Option<Timestamp>,
    ) -> StoreResult<WccData> {
        let _ = (caller, fid, changes, guard_ctime);
        todo!()
    }

    /// LOOKUP, including `.` and `..` (`..` of the root is the root).
    pub fn lookup(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<Lookup> {
        let _ = (caller, directory, name);
        todo!()
    }

    /// ACCESS: which of the `requested` bits ([`access`]) the caller holds, and the attributes.
    pub fn access(&self, caller: &Caller, fid: Fid, requested: u32) -> StoreResult<(u32, Attributes)> {
        let _ = (caller, fid, requested);
        todo!()
    }

    pub fn readlink(&self, caller: &Caller, fid: Fid) -> StoreResult<(Vec<u8>, Attributes)> {
        let _ = (caller, fid);
        todo!()
    }

    pub fn read(&self, caller: &Caller, fid: Fid, offset: u64, count: u32) -> StoreResult<ReadResult> {
        let _ = (caller, fid, offset, count);
        todo!()
    }

    pub fn write(
        &self,
        caller: &Caller,
        fid: Fid,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> StoreResult<WriteResult> {
        let _ = (caller, fid, offset, data, stability);
        todo!()
    }

    /// COMMIT: makes every earlier write to the file durable. `count_bytes` 0 means to the end.
    pub fn commit(&self, fid: Fid, offset: u64, count_bytes: u32) -> StoreResult<CommitResult> {
        let _ = (fid, offset, count_bytes);
        todo!()
    }

    pub fn create(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        how: CreateHow,
    ) -> StoreResult<Created> {
        let _ = (caller, directory, name, how);
        todo!()
    }

    pub fn mkdir(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        let _ = (caller, directory, name, attributes);
        todo!()
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        target: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        let _ = (caller, directory, name, target, attributes);
        todo!()
    }

    pub fn mknod(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        kind: SpecialKind,
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        let _ = (caller, directory, name, kind, attributes);
        todo!()
    }

    /// REMOVE of a non-directory.
    pub fn remove(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        let _ = (caller, directory, name);
        todo!()
    }

    pub fn rmdir(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        let _ = (caller, directory, name);
        todo!()
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
        let _ = (caller, from_directory, from_name, to_directory, to_name);
        todo!()
    }

    pub fn link(&self, caller: &Caller, fid: Fid, directory: Fid, name: &[u8]) -> StoreResult<Linked> {
        let _ = (caller, fid, directory, name);
        todo!()
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
        let _ = (caller, directory, cookie, entries_max, with_attributes);
        todo!()
    }

    pub fn fsstat(&self) -> StoreResult<FsStat> {
        todo!()
    }
}
