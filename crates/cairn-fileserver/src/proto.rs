//! The file server's messages (over `cairn-rpc`): file system calls from gateways and tools
//! (through `cairn-client`), and the volume administration the node itself uses.
//!
//! Every call names its volume and the epoch the caller believes current; a file server that is
//! not the volume's master at that epoch answers [`WireError::NotMaster`], and the caller looks
//! the volume up again (in the CLDB) and retries.

use cairn_store::replication::{Block, Record, SnapshotPiece};
use cairn_store::{
    Attributes, BadBlock, Caller, Change, CommitResult, Created, DirectoryPage, FsStat, Linked, Lookup,
    ReadResult, Renamed, Stability, StoreError, WccData, WriteResult,
};
use cairn_types::{ClusterId, Fid, VolumeId};
use serde::{Deserialize, Serialize};

/// A request to a file server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// One file system operation on a volume this server masters.
    Fs {
        volume: u32,
        /// The epoch the caller looked up; 0: whatever is current.
        #[serde(default)]
        epoch: u64,
        /// Chosen by the caller, the same on every retry of one operation: a retried change that
        /// was already applied gets its first answer again instead of a wrong error.
        #[serde(default)]
        request_id: u128,
        op: FsOp,
    },
    /// What this server holds, for tools and tests.
    Status,
    /// From a volume's master to one of its replicas (see `crate::replica`).
    Repl(ReplRequest),
}

/// A response from a file server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Fs(Result<FsReply, WireError>),
    Status(ServerStatus),
    Repl(Result<ReplReply, ReplError>),
}

/// A master's call to a replica of its volume. Every call carries the master's epoch: a replica
/// that knows a newer one refuses it ([`ReplError::Fenced`]), and one that sees a newer one
/// follows it from then on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReplRequest {
    /// The master introduces itself; the replica answers where its copy stands
    /// ([`ReplReply::Position`]) and stops following any older master.
    Hello {
        volume: u32,
        epoch: u64,
        master: String,
        /// Where the master serves (the replica asks it for blocks its scrub finds bad).
        #[serde(default)]
        master_address: String,
    },
    /// The replica follows from its position on: the master checked that the replica's copy is
    /// a prefix of its own history.
    Follow { volume: u32, epoch: u64 },
    /// Records to apply, consecutive, starting at most at the replica's position + 1 (the
    /// ones at or below it are skipped). Chain replication: the replica also sends them on to
    /// the first of `forward` (node, address), with the rest of the list, and answers
    /// [`ReplReply::Chain`].
    Records {
        volume: u32,
        epoch: u64,
        records: Vec<Record>,
        #[serde(default)]
        forward: Vec<(String, String)>,
    },
    /// A full copy starts: the replica empties its copy.
    SnapshotBegin { volume: u32, epoch: u64 },
    /// Pieces of the full copy, in order.
    SnapshotPieces { volume: u32, epoch: u64, pieces: Vec<SnapshotPiece> },
    /// The full copy is complete and consistent with record `seq`; records after it follow.
    SnapshotEnd { volume: u32, epoch: u64, seq: u64 },
    /// Records after `after` that the replica still keeps in memory (at most `bytes_max`):
    /// a newly promoted master catching up from a replica that got further than it.
    Fetch { volume: u32, epoch: u64, after: u64, bytes_max: u64 },
    /// Verified chunk blocks ([`ReplReply::Blocks`]), to repair a bad block on another copy:
    /// from a master to a replica, or from a replica to its master.
    ReadBlocks {
        volume: u32,
        epoch: u64,
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        count: u64,
    },
}

impl ReplRequest {
    pub fn volume(&self) -> u32 {
        match self {
            ReplRequest::Hello { volume, .. }
            | ReplRequest::Follow { volume, .. }
            | ReplRequest::Records { volume, .. }
            | ReplRequest::SnapshotBegin { volume, .. }
            | ReplRequest::SnapshotPieces { volume, .. }
            | ReplRequest::SnapshotEnd { volume, .. }
            | ReplRequest::Fetch { volume, .. }
            | ReplRequest::ReadBlocks { volume, .. } => *volume,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            ReplRequest::Hello { epoch, .. }
            | ReplRequest::Follow { epoch, .. }
            | ReplRequest::Records { epoch, .. }
            | ReplRequest::SnapshotBegin { epoch, .. }
            | ReplRequest::SnapshotPieces { epoch, .. }
            | ReplRequest::SnapshotEnd { epoch, .. }
            | ReplRequest::Fetch { epoch, .. }
            | ReplRequest::ReadBlocks { epoch, .. } => *epoch,
        }
    }
}

/// A replica's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReplReply {
    /// Where the copy stands: the last record applied, and the epoch of the master whose
    /// history the copy is a prefix of (0: unknown, e.g. a copy that was itself a master).
    Position { history_epoch: u64, position: u64 },
    /// Answer to `Fetch`: the copy's history epoch and the records (consecutive from the
    /// asked-for one, or none if they are no longer kept).
    Records { history_epoch: u64, records: Vec<Record> },
    /// Answer to `Records` along a chain: the position of each node that applied them (this
    /// one first, then downstream), and the nodes further down that failed.
    Chain { positions: Vec<(String, u64)>, failed: Vec<(String, ReplError)> },
    /// Answer to `ReadBlocks` (`None`: a hole), and the replication position of the copy that
    /// read them, after reading: a replica repairs its copy with them only once it has applied
    /// that far (never with a block newer than its copy).
    Blocks { blocks: Vec<Option<Block>>, position: u64 },
}

/// Why a replica refused a master's call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ReplError {
    /// The replica knows a newer epoch: the caller is no longer master.
    #[error("fenced: epoch {epoch} has taken over")]
    Fenced { epoch: u64 },
    /// This node holds no replica of the volume (yet: it opens one when the CLDB assigns it).
    #[error("volume {0} has no replica here")]
    NoReplica(u32),
    /// The records do not continue the copy, or it could not apply them: it needs a full copy.
    #[error("the replica needs a full resync: {0}")]
    NeedResync(String),
    /// The next replica of a chain could not be reached or did not answer.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The replica could not do what was asked (e.g. its own block is bad too).
    #[error("failed: {0}")]
    Failed(String),
}

/// What a file server holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerStatus {
    pub node: String,
    pub volumes: Vec<VolumeStatus>,
}

/// One volume on one file server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub volume: u32,
    /// "master", "replica", "resyncing" or "stale".
    pub role: String,
    pub epoch: u64,
    pub position: u64,
    /// Bytes the volume's files use (for quotas).
    #[serde(default)]
    pub size_bytes: u64,
    /// On the master: the replicas that follow it (receive every record).
    #[serde(default)]
    pub in_sync: Vec<String>,
}

/// The file system operations, one per [`cairn_store::FileSystem`] method.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FsOp {
    /// The volume's identity and root directory.
    Identity,
    Getattr {
        fid: Fid,
    },
    Lookup {
        caller: Caller,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Access {
        caller: Caller,
        fid: Fid,
        requested: u32,
    },
    Readlink {
        caller: Caller,
        fid: Fid,
    },
    Read {
        caller: Caller,
        fid: Fid,
        offset: u64,
        count: u32,
    },
    Write {
        caller: Caller,
        fid: Fid,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        stability: Stability,
    },
    Commit {
        fid: Fid,
        offset: u64,
        count_bytes: u32,
    },
    /// CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK and SETATTR.
    Change(Change),
    Readdir {
        caller: Caller,
        directory: Fid,
        cookie: u64,
        entries_max: u32,
        with_attributes: bool,
    },
    Fsstat,
}

impl FsOp {
    /// Whether the operation changes the volume (and so is remembered for retries).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            FsOp::Identity
                | FsOp::Getattr { .. }
                | FsOp::Lookup { .. }
                | FsOp::Access { .. }
                | FsOp::Readlink { .. }
                | FsOp::Read { .. }
                | FsOp::Readdir { .. }
                | FsOp::Fsstat
        )
    }
}

/// The answer to an [`FsOp`], one variant per result type.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FsReply {
    Identity {
        cluster: ClusterId,
        volume: VolumeId,
        root: Fid,
    },
    Attributes(Attributes),
    Wcc(WccData),
    Lookup(Lookup),
    Access {
        granted: u32,
        attributes: Attributes,
    },
    Readlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        attributes: Attributes,
    },
    Read(ReadResult),
    Write(WriteResult),
    Commit(CommitResult),
    Created(Created),
    Renamed(Renamed),
    Linked(Linked),
    Directory(DirectoryPage),
    Fsstat(FsStat),
}

/// Errors on the wire: the store's, plus the cluster's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// This server is not the volume's master at the caller's epoch (or at all): look it up again.
    #[error("not the master of volume {volume} (epoch here {epoch})")]
    NotMaster { volume: u32, epoch: u64 },
    /// This server holds nothing of the volume.
    #[error("volume {0} is not served here")]
    NoSuchVolume(u32),
    /// The volume's replicas cannot be reached; worth retrying.
    #[error("volume unavailable: {0}")]
    Unavailable(String),
    /// A write past the volume's hard quota.
    #[error("quota exceeded")]
    QuotaExceeded,
    #[error("no such file or directory")]
    NotFound,
    #[error("stale file id {0}")]
    Stale(Fid),
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("permission denied")]
    AccessDenied,
    #[error("operation not permitted")]
    NotOwner,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("file too large")]
    FileTooLarge,
    #[error("no space left on device")]
    NoSpace,
    #[error("guard ctime does not match")]
    NotSync,
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("cross-volume link or rename")]
    CrossVolume,
    #[error("checksum mismatch in {what} at byte {offset}")]
    Corrupt { what: String, offset: u64 },
    /// A chunk block does not match its checksum (not retryable as such: repair it first).
    #[error("checksum mismatch in {0}")]
    BadBlock(BadBlock),
    #[error("container is poisoned: {0}")]
    Poisoned(String),
    #[error("I/O error: {0}")]
    Io(String),
}

impl WireError {
    /// Whether the caller should look the volume up again and retry elsewhere.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WireError::NotMaster { .. } | WireError::NoSuchVolume(_) | WireError::Unavailable(_))
    }

    /// The error as the store's vocabulary, for the gateway's status mapping. Messages of
    /// `Invalid`/`NotSupported` become fixed texts (the store's type holds static strings).
    pub fn into_store_error(self) -> StoreError {
        match self {
            WireError::NotMaster { .. } | WireError::NoSuchVolume(_) | WireError::Unavailable(_) => {
                StoreError::Unavailable(self.to_string())
            }
            WireError::QuotaExceeded => StoreError::QuotaExceeded,
            WireError::NotFound => StoreError::NotFound,
            WireError::Stale(fid) => StoreError::Stale(fid),
            WireError::Exists => StoreError::Exists,
            WireError::NotDirectory => StoreError::NotDirectory,
            WireError::IsDirectory => StoreError::IsDirectory,
            WireError::NotEmpty => StoreError::NotEmpty,
            WireError::AccessDenied => StoreError::AccessDenied,
            WireError::NotOwner => StoreError::NotOwner,
            WireError::NameTooLong => StoreError::NameTooLong,
            WireError::Invalid(_) => StoreError::Invalid("rejected by the file server"),
            WireError::FileTooLarge => StoreError::FileTooLarge,
            WireError::NoSpace => StoreError::NoSpace,
            WireError::NotSync => StoreError::NotSync,
            WireError::NotSupported(_) => StoreError::NotSupported("not supported by the file server"),
            WireError::CrossVolume => StoreError::CrossVolume,
            WireError::Corrupt { what, offset } => StoreError::Corrupt { what, offset },
            WireError::BadBlock(block) => StoreError::BadBlock(block),
            WireError::Poisoned(message) => StoreError::Poisoned(message),
            WireError::Io(message) => StoreError::Io(std::io::Error::other(message)),
        }
    }
}

impl From<StoreError> for WireError {
    fn from(error: StoreError) -> WireError {
        match error {
            StoreError::NotFound => WireError::NotFound,
            StoreError::Stale(fid) => WireError::Stale(fid),
            StoreError::Exists => WireError::Exists,
            StoreError::NotDirectory => WireError::NotDirectory,
            StoreError::IsDirectory => WireError::IsDirectory,
            StoreError::NotEmpty => WireError::NotEmpty,
            StoreError::AccessDenied => WireError::AccessDenied,
            StoreError::NotOwner => WireError::NotOwner,
            StoreError::NameTooLong => WireError::NameTooLong,
            StoreError::Invalid(message) => WireError::Invalid(message.to_owned()),
            StoreError::FileTooLarge => WireError::FileTooLarge,
            StoreError::NoSpace => WireError::NoSpace,
            StoreError::NotSync => WireError::NotSync,
            StoreError::NotSupported(message) => WireError::NotSupported(message.to_owned()),
            StoreError::CrossVolume => WireError::CrossVolume,
            StoreError::Corrupt { what, offset } => WireError::Corrupt { what, offset },
            StoreError::BadBlock(block) => WireError::BadBlock(block),
            StoreError::Poisoned(message) => WireError::Poisoned(message),
            StoreError::QuotaExceeded => WireError::QuotaExceeded,
            StoreError::Unavailable(message) => WireError::Unavailable(message),
            StoreError::NotMaster => WireError::NotMaster { volume: 0, epoch: 0 },
            StoreError::Io(error) => WireError::Io(error.to_string()),
        }
    }
}
