//! [`FileSystem`]: the operations of one volume, as the NFS gateway calls them.
//!
//! [`Store`] implements it on local disk (a one-node cluster); the cluster client implements it by
//! calling the volume's master file server over the network. The gateway only knows this trait.

use std::cell::Cell;
use std::sync::Arc;

use cairn_types::{ClusterId, Fid, VolumeId};

use crate::{
    Attributes, Caller, Change, ChangeDone, Changed, CommitResult, CreateHow, Created, DirectoryPage, FsStat,
    Linked, Lookup, ReadResult, Renamed, SetAttributes, SpecialKind, Stability, Store, StoreResult,
    Timestamp, WccData, WriteResult,
};

/// One volume's file system operations. Every method may block (on disk or network I/O); call
/// them from blocking threads unless [`FileSystem::calls_are_cheap`] says otherwise.
pub trait FileSystem: Send + Sync + 'static {
    fn cluster_id(&self) -> ClusterId;
    fn volume_id(&self) -> VolumeId;
    /// The root directory of the volume.
    fn root(&self) -> Fid;
    /// Whether attribute reads (GETATTR, ACCESS, LOOKUP, READLINK) are quick enough to answer on
    /// an async task: true for a local store, false when they cross the network.
    fn calls_are_cheap(&self) -> bool;
    /// Whether changes take their ids from the client request being served
    /// ([`serving_request`]): true when they cross the network to a master that remembers
    /// answers by id. The gateway derives a request's key only then.
    fn uses_request_ids(&self) -> bool {
        false
    }

    fn getattr(&self, fid: Fid) -> StoreResult<Attributes>;
    fn setattr(
        &self,
        caller: &Caller,
        fid: Fid,
        changes: SetAttributes,
        guard_ctime: Option<Timestamp>,
    ) -> StoreResult<WccData>;
    fn lookup(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<Lookup>;
    fn access(&self, caller: &Caller, fid: Fid, requested: u32) -> StoreResult<(u32, Attributes)>;
    fn readlink(&self, caller: &Caller, fid: Fid) -> StoreResult<(Vec<u8>, Attributes)>;
    fn read(&self, caller: &Caller, fid: Fid, offset: u64, count: u32) -> StoreResult<ReadResult>;
    fn write(
        &self,
        caller: &Caller,
        fid: Fid,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> StoreResult<WriteResult>;
    fn commit(&self, fid: Fid, offset: u64, count_bytes: u32) -> StoreResult<CommitResult>;
    fn create(&self, caller: &Caller, directory: Fid, name: &[u8], how: CreateHow) -> StoreResult<Created>;
    fn mkdir(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created>;
    fn symlink(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        target: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created>;
    fn mknod(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        kind: SpecialKind,
        attributes: SetAttributes,
    ) -> StoreResult<Created>;
    fn remove(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData>;
    fn rmdir(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData>;
    fn rename(
        &self,
        caller: &Caller,
        from_directory: Fid,
        from_name: &[u8],
        to_directory: Fid,
        to_name: &[u8],
    ) -> StoreResult<Renamed>;
    fn link(&self, caller: &Caller, fid: Fid, directory: Fid, name: &[u8]) -> StoreResult<Linked>;
    fn readdir(
        &self,
        caller: &Caller,
        directory: Fid,
        cookie: u64,
        entries_max: usize,
        with_attributes: bool,
    ) -> StoreResult<DirectoryPage>;
    fn fsstat(&self) -> StoreResult<FsStat>;

    /// Makes a change and waits until it is durable: one of the changing methods above.
    fn change(&self, change: Change) -> StoreResult<Changed> {
        match change {
            Change::Create { caller, directory, name, how } => {
                self.create(&caller, directory, &name, how).map(Changed::Created)
            }
            Change::Mkdir { caller, directory, name, attributes } => {
                self.mkdir(&caller, directory, &name, attributes).map(Changed::Created)
            }
            Change::Symlink { caller, directory, name, target, attributes } => {
                self.symlink(&caller, directory, &name, &target, attributes).map(Changed::Created)
            }
            Change::Mknod { caller, directory, name, kind, attributes } => {
                self.mknod(&caller, directory, &name, kind, attributes).map(Changed::Created)
            }
            Change::Remove { caller, directory, name } => {
                self.remove(&caller, directory, &name).map(Changed::Wcc)
            }
            Change::Rmdir { caller, directory, name } => {
                self.rmdir(&caller, directory, &name).map(Changed::Wcc)
            }
            Change::Rename { caller, from_directory, from_name, to_directory, to_name } => {
                self.rename(&caller, from_directory, &from_name, to_directory, &to_name).map(Changed::Renamed)
            }
            Change::Link { caller, fid, directory, name } => {
                self.link(&caller, fid, directory, &name).map(Changed::Linked)
            }
            Change::Setattr { caller, fid, changes, guard_ctime } => {
                self.setattr(&caller, fid, changes, guard_ctime).map(Changed::Wcc)
            }
        }
    }

    /// Starts a change without blocking the calling thread, when this file system can: `done`
    /// then gets the result once the change is durable, on a thread of the file system's
    /// (`done` must not wait long: it holds up the results of other changes). Otherwise, the
    /// default, it gives the change back, for the caller to make with [`FileSystem::change`] on
    /// a blocking thread.
    ///
    /// Why: the gateway's connection task can hand a change over without a thread hop per call;
    /// the store's group commit answers a whole batch from the thread that made it durable.
    fn start_change(
        self: Arc<Self>,
        change: Change,
        done: ChangeDone,
    ) -> Result<(), Box<(Change, ChangeDone)>> {
        Err(Box::new((change, done)))
    }
}

impl FileSystem for Store {
    fn cluster_id(&self) -> ClusterId {
        Store::cluster_id(self)
    }
    fn volume_id(&self) -> VolumeId {
        Store::volume_id(self)
    }
    fn root(&self) -> Fid {
        Store::root(self)
    }
    fn calls_are_cheap(&self) -> bool {
        true
    }
    fn getattr(&self, fid: Fid) -> StoreResult<Attributes> {
        Store::getattr(self, fid)
    }
    fn setattr(
        &self,
        caller: &Caller,
        fid: Fid,
        changes: SetAttributes,
        guard_ctime: Option<Timestamp>,
    ) -> StoreResult<WccData> {
        Store::setattr(self, caller, fid, changes, guard_ctime)
    }
    fn lookup(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<Lookup> {
        Store::lookup(self, caller, directory, name)
    }
    fn access(&self, caller: &Caller, fid: Fid, requested: u32) -> StoreResult<(u32, Attributes)> {
        Store::access(self, caller, fid, requested)
    }
    fn readlink(&self, caller: &Caller, fid: Fid) -> StoreResult<(Vec<u8>, Attributes)> {
        Store::readlink(self, caller, fid)
    }
    fn read(&self, caller: &Caller, fid: Fid, offset: u64, count: u32) -> StoreResult<ReadResult> {
        Store::read(self, caller, fid, offset, count)
    }
    fn write(
        &self,
        caller: &Caller,
        fid: Fid,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> StoreResult<WriteResult> {
        Store::write(self, caller, fid, offset, data, stability)
    }
    fn commit(&self, fid: Fid, offset: u64, count_bytes: u32) -> StoreResult<CommitResult> {
        Store::commit(self, fid, offset, count_bytes)
    }
    fn create(&self, caller: &Caller, directory: Fid, name: &[u8], how: CreateHow) -> StoreResult<Created> {
        Store::create(self, caller, directory, name, how)
    }
    fn mkdir(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        Store::mkdir(self, caller, directory, name, attributes)
    }
    fn symlink(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        target: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        Store::symlink(self, caller, directory, name, target, attributes)
    }
    fn mknod(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        kind: SpecialKind,
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        Store::mknod(self, caller, directory, name, kind, attributes)
    }
    fn remove(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        Store::remove(self, caller, directory, name)
    }
    fn rmdir(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        Store::rmdir(self, caller, directory, name)
    }
    fn rename(
        &self,
        caller: &Caller,
        from_directory: Fid,
        from_name: &[u8],
        to_directory: Fid,
        to_name: &[u8],
    ) -> StoreResult<Renamed> {
        Store::rename(self, caller, from_directory, from_name, to_directory, to_name)
    }
    fn link(&self, caller: &Caller, fid: Fid, directory: Fid, name: &[u8]) -> StoreResult<Linked> {
        Store::link(self, caller, fid, directory, name)
    }
    fn readdir(
        &self,
        caller: &Caller,
        directory: Fid,
        cookie: u64,
        entries_max: usize,
        with_attributes: bool,
    ) -> StoreResult<DirectoryPage> {
        Store::readdir(self, caller, directory, cookie, entries_max, with_attributes)
    }
    fn fsstat(&self) -> StoreResult<FsStat> {
        Store::fsstat(self)
    }
    fn change(&self, change: Change) -> StoreResult<Changed> {
        Store::change(self, change)
    }
    fn start_change(
        self: Arc<Self>,
        change: Change,
        done: ChangeDone,
    ) -> Result<(), Box<(Change, ChangeDone)>> {
        Store::start_change(&self, change, done)
    }
}

thread_local! {
    /// The client request this thread is serving: its key and the changes made for it so far.
    static REQUEST: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

/// Runs `work` as the handling of one client request identified by `key` (the gateway derives it
/// from the client's address, the RPC xid and the call's arguments, so a retransmission has the
/// same key whichever gateway it reaches). Changes made through a [`FileSystem`] that crosses the
/// network take their request ids from it ([`next_change_id`]): the volume's master then answers a
/// retransmission with the first answer instead of running the change again.
pub fn serving_request<T>(key: u128, work: impl FnOnce() -> T) -> T {
    struct Restore(Option<(u128, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            REQUEST.set(self.0);
        }
    }
    let _restore = Restore(REQUEST.replace(Some((key, 0))));
    work()
}

/// The id of the next change made for the request being served (`None` outside
/// [`serving_request`]): the request's key mixed with the number of changes made for it so far,
/// so each change of one request gets its own id, and a retransmission of the request gives its
/// changes the same ids again.
pub fn next_change_id() -> Option<u128> {
    REQUEST.with(|cell| {
        let (key, count) = cell.get()?;
        cell.set(Some((key, count + 1)));
        // A multiplicative mix of the count into both halves (nonzero: 0 means "no id").
        let mixed = key ^ u128::from(count).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        Some(mixed | 1)
    })
}
