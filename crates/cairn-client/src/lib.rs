//! The one way gateways and tools reach the cluster's file servers.
//!
//! Key types: [`ClusterFs`] (one volume as a [`cairn_store::FileSystem`], over the network),
//! [`Locator`] (where a volume's master is: the CLDB in a cluster, a fixed address in tests),
//! [`Location`].
//!
//! Every call goes to the volume's master file server. The location is cached; when the server
//! answers that it is not the master (a stale epoch, a moved master), does not know the volume, or
//! cannot be reached, the client forgets the location, asks the locator again and retries, with
//! a short backoff, for up to [`RETRY_WINDOW`]. A change keeps one request id across its retries,
//! so a retry of a change that was applied gets the first answer back (see `cairn-fileserver`).
//! Only when the window runs out does the caller see [`StoreError::Unavailable`] (NFS3ERR_JUKEBOX:
//! the NFS client tries again later).

pub mod namespace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_fileserver::proto::{FsOp, FsReply, Request, Response};
use cairn_store::{
    Attributes, Caller, Change, Changed, CommitResult, CreateHow, Created, DirectoryPage, FileSystem, FsStat,
    Linked, Lookup, ReadResult, Renamed, SetAttributes, SpecialKind, Stability, StoreError, StoreResult,
    Timestamp, WccData, WriteResult,
};
use cairn_types::{ClusterId, Fid, VolumeId};
use parking_lot::Mutex;
use tokio::runtime::Handle;

/// How long one operation is retried before the caller sees [`StoreError::Unavailable`].
pub const RETRY_WINDOW: Duration = Duration::from_secs(90);
/// Longest wait for one answer. A change may wait for a failover of its replicas, which the CLDB
/// settles within a node timeout (6 s by default); a call that times out is retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub use cairn_fileserver::CONNECT_TIMEOUT;
/// First and last pause between retries (doubling in between).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Short: after a failover the new master is usually ready within a second, and a retry costs
/// one round trip.
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Where a volume's master is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The master file server's `cairn-rpc` address.
    pub address: String,
    /// The epoch of the volume's placement; calls carry it, so a deposed master refuses them.
    pub epoch: u64,
}

pub type LocateFuture<'a> = Pin<Box<dyn Future<Output = Result<Location, String>> + Send + 'a>>;

/// Finds a volume's master.
pub trait Locator: Send + Sync + 'static {
    fn locate(&self, volume: u32) -> LocateFuture<'_>;
}

/// A locator that always answers the same address (one file server, tests).
pub struct FixedLocator(pub String);

impl Locator for FixedLocator {
    fn locate(&self, _volume: u32) -> LocateFuture<'_> {
        let location = Location { address: self.0.clone(), epoch: 0 };
        Box::pin(async move { Ok(location) })
    }
}

/// The cluster's locator: asks the CLDBs (any of them answers lookups).
pub struct CldbLocator(pub cairn_cldb::CldbClient);

impl Locator for CldbLocator {
    fn locate(&self, volume: u32) -> LocateFuture<'_> {
        Box::pin(async move {
            let location = self.0.lookup_volume(volume).await.map_err(|error| error.to_string())?;
            if location.master_address.is_empty() {
                return Err(format!("volume {volume} has no master yet"));
            }
            Ok(Location { address: location.master_address, epoch: location.epoch })
        })
    }
}

/// Connections to file servers, one per address, shared by every [`ClusterFs`] of a process.
pub use cairn_fileserver::Connections;

/// One volume of the cluster as a [`FileSystem`]. Its methods block: call them from blocking
/// threads (never from an async task of `runtime`).
pub struct ClusterFs {
    runtime: Handle,
    locator: Arc<dyn Locator>,
    connections: Arc<Connections>,
    volume: u32,
    cluster: ClusterId,
    root: Fid,
    location: Mutex<Option<Location>>,
}

impl ClusterFs {
    /// Finds the volume and learns its identity and root (retrying like any call).
    pub async fn open(
        locator: Arc<dyn Locator>,
        connections: Arc<Connections>,
        volume: u32,
    ) -> StoreResult<ClusterFs> {
        let mut fs = ClusterFs {
            runtime: Handle::current(),
            locator,
            connections,
            volume,
            cluster: ClusterId(0),
            root: Fid { container: cairn_types::ContainerId(1), inode: 1, uniquifier: 0 },
            location: Mutex::new(None),
        };
        match fs.call_async(FsOp::Identity).await? {
            FsReply::Identity { cluster, volume: reported, root } if reported.0 == volume => {
                fs.cluster = cluster;
                fs.root = root;
                Ok(fs)
            }
            other => Err(unexpected(&other)),
        }
    }

    fn call(&self, op: FsOp) -> StoreResult<FsReply> {
        self.runtime.block_on(self.call_async(op))
    }

    async fn call_async(&self, op: FsOp) -> StoreResult<FsReply> {
        // A change served for a client request takes its id from the request (retransmissions
        // through any gateway get the same one); others get a random one.
        let request_id = if op.is_change() {
            cairn_store::next_change_id().unwrap_or_else(|| rand::random::<u128>() | 1)
        } else {
            0
        };
        let deadline = Instant::now() + RETRY_WINDOW;
        let mut backoff = BACKOFF_MIN;
        loop {
            let problem = match self.attempt(&op, request_id).await {
                Ok(reply) => return Ok(reply),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Retry(problem)) => problem,
            };
            if Instant::now() + backoff > deadline {
                return Err(StoreError::Unavailable(format!("volume {}: {problem}", self.volume)));
            }
            tracing::debug!(volume = self.volume, %problem, "retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn attempt(&self, op: &FsOp, request_id: u128) -> Result<FsReply, Attempt> {
        let cached = self.location.lock().clone();
        let location = match cached {
            Some(location) => location,
            None => {
                let location = self.locator.locate(self.volume).await.map_err(Attempt::Retry)?;
                *self.location.lock() = Some(location.clone());
                location
            }
        };
        let forget_location = || {
            let mut slot = self.location.lock();
            if slot.as_ref() == Some(&location) {
                *slot = None;
            }
        };
        let client = match self.connections.get(&location.address).await {
            Ok(client) => client,
            Err(problem) => {
                forget_location();
                return Err(Attempt::Retry(problem));
            }
        };
        let request = Request::Fs { volume: self.volume, epoch: location.epoch, request_id, op: op.clone() };
        match client.call(request, CALL_TIMEOUT).await {
            Ok(Response::Fs(Ok(reply))) => Ok(reply),
            Ok(Response::Fs(Err(error))) if error.is_retryable() => {
                forget_location();
                Err(Attempt::Retry(error.to_string()))
            }
            Ok(Response::Fs(Err(error))) => Err(Attempt::Final(error.into_store_error())),
            Ok(other) => Err(Attempt::Final(StoreError::Io(std::io::Error::other(format!(
                "unexpected answer from {}: {other:?}",
                location.address
            ))))),
            Err(error) => {
                self.connections.forget(&location.address);
                forget_location();
                Err(Attempt::Retry(format!("file server {}: {error}", location.address)))
            }
        }
    }
}

enum Attempt {
    Retry(String),
    Final(StoreError),
}

fn unexpected(reply: &FsReply) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("unexpected answer from the file server: {reply:?}")))
}

macro_rules! expect {
    ($reply:expr, $pattern:pat => $value:expr) => {
        match $reply {
            $pattern => Ok($value),
            other => Err(unexpected(&other)),
        }
    };
}

impl FileSystem for ClusterFs {
    fn cluster_id(&self) -> ClusterId {
        self.cluster
    }
    fn volume_id(&self) -> VolumeId {
        VolumeId(self.volume)
    }
    fn root(&self) -> Fid {
        self.root
    }
    fn calls_are_cheap(&self) -> bool {
        false
    }
    fn change(&self, change: Change) -> StoreResult<Changed> {
        match self.call(FsOp::Change(change))? {
            FsReply::Created(created) => Ok(Changed::Created(created)),
            FsReply::Wcc(wcc) => Ok(Changed::Wcc(wcc)),
            FsReply::Renamed(renamed) => Ok(Changed::Renamed(renamed)),
            FsReply::Linked(linked) => Ok(Changed::Linked(linked)),
            other => Err(unexpected(&other)),
        }
    }
    fn uses_request_ids(&self) -> bool {
        true
    }
    fn getattr(&self, fid: Fid) -> StoreResult<Attributes> {
        expect!(self.call(FsOp::Getattr { fid })?, FsReply::Attributes(attributes) => attributes)
    }
    fn setattr(
        &self,
        caller: &Caller,
        fid: Fid,
        changes: SetAttributes,
        guard_ctime: Option<Timestamp>,
    ) -> StoreResult<WccData> {
        let op = FsOp::Change(Change::Setattr { caller: caller.clone(), fid, changes, guard_ctime });
        expect!(self.call(op)?, FsReply::Wcc(wcc) => wcc)
    }
    fn lookup(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<Lookup> {
        let op = FsOp::Lookup { caller: caller.clone(), directory, name: name.to_vec() };
        expect!(self.call(op)?, FsReply::Lookup(lookup) => lookup)
    }
    fn access(&self, caller: &Caller, fid: Fid, requested: u32) -> StoreResult<(u32, Attributes)> {
        let op = FsOp::Access { caller: caller.clone(), fid, requested };
        expect!(self.call(op)?, FsReply::Access { granted, attributes } => (granted, attributes))
    }
    fn readlink(&self, caller: &Caller, fid: Fid) -> StoreResult<(Vec<u8>, Attributes)> {
        let op = FsOp::Readlink { caller: caller.clone(), fid };
        expect!(self.call(op)?, FsReply::Readlink { target, attributes } => (target, attributes))
    }
    fn read(&self, caller: &Caller, fid: Fid, offset: u64, count: u32) -> StoreResult<ReadResult> {
        let op = FsOp::Read { caller: caller.clone(), fid, offset, count };
        expect!(self.call(op)?, FsReply::Read(result) => result)
    }
    fn write(
        &self,
        caller: &Caller,
        fid: Fid,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> StoreResult<WriteResult> {
        let op = FsOp::Write { caller: caller.clone(), fid, offset, data: data.to_vec(), stability };
        expect!(self.call(op)?, FsReply::Write(result) => result)
    }
    fn commit(&self, fid: Fid, offset: u64, count_bytes: u32) -> StoreResult<CommitResult> {
        expect!(self.call(FsOp::Commit { fid, offset, count_bytes })?, FsReply::Commit(result) => result)
    }
    fn create(&self, caller: &Caller, directory: Fid, name: &[u8], how: CreateHow) -> StoreResult<Created> {
        let op = FsOp::Change(Change::Create { caller: caller.clone(), directory, name: name.to_vec(), how });
        expect!(self.call(op)?, FsReply::Created(created) => created)
    }
    fn mkdir(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        let op = FsOp::Change(Change::Mkdir {
            caller: caller.clone(),
            directory,
            name: name.to_vec(),
            attributes,
        });
        expect!(self.call(op)?, FsReply::Created(created) => created)
    }
    fn symlink(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        target: &[u8],
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        let op = FsOp::Change(Change::Symlink {
            caller: caller.clone(),
            directory,
            name: name.to_vec(),
            target: target.to_vec(),
            attributes,
        });
        expect!(self.call(op)?, FsReply::Created(created) => created)
    }
    fn mknod(
        &self,
        caller: &Caller,
        directory: Fid,
        name: &[u8],
        kind: SpecialKind,
        attributes: SetAttributes,
    ) -> StoreResult<Created> {
        let op = FsOp::Change(Change::Mknod {
            caller: caller.clone(),
            directory,
            name: name.to_vec(),
            kind,
            attributes,
        });
        expect!(self.call(op)?, FsReply::Created(created) => created)
    }
    fn remove(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        let op = FsOp::Change(Change::Remove { caller: caller.clone(), directory, name: name.to_vec() });
        expect!(self.call(op)?, FsReply::Wcc(wcc) => wcc)
    }
    fn rmdir(&self, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<WccData> {
        let op = FsOp::Change(Change::Rmdir { caller: caller.clone(), directory, name: name.to_vec() });
        expect!(self.call(op)?, FsReply::Wcc(wcc) => wcc)
    }
    fn rename(
        &self,
        caller: &Caller,
        from_directory: Fid,
        from_name: &[u8],
        to_directory: Fid,
        to_name: &[u8],
    ) -> StoreResult<Renamed> {
        let op = FsOp::Change(Change::Rename {
            caller: caller.clone(),
            from_directory,
            from_name: from_name.to_vec(),
            to_directory,
            to_name: to_name.to_vec(),
        });
        expect!(self.call(op)?, FsReply::Renamed(renamed) => renamed)
    }
    fn link(&self, caller: &Caller, fid: Fid, directory: Fid, name: &[u8]) -> StoreResult<Linked> {
        let op = FsOp::Change(Change::Link { caller: caller.clone(), fid, directory, name: name.to_vec() });
        expect!(self.call(op)?, FsReply::Linked(linked) => linked)
    }
    fn readdir(
        &self,
        caller: &Caller,
        directory: Fid,
        cookie: u64,
        entries_max: usize,
        with_attributes: bool,
    ) -> StoreResult<DirectoryPage> {
        let entries_max = u32::try_from(entries_max).unwrap_or(u32::MAX);
        let op = FsOp::Readdir { caller: caller.clone(), directory, cookie, entries_max, with_attributes };
        expect!(self.call(op)?, FsReply::Directory(page) => page)
    }
    fn fsstat(&self) -> StoreResult<FsStat> {
        expect!(self.call(FsOp::Fsstat)?, FsReply::Fsstat(stat) => stat)
    }
}
