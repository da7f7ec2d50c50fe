//! The public vocabulary of the store: attributes, credentials, results and errors.
//!
//! These types are what the NFS gateway (and later the fileserver RPCs) speak. They are plain
//! data; nothing here does I/O.

use cairn_types::Fid;

/// A point in time, as seconds and nanoseconds since the Unix epoch. Always taken from the
/// store's clock (the cluster's), never a gateway's.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Timestamp {
    pub seconds: u32,
    pub nanoseconds: u32,
}

/// The kind of a file system object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    BlockDevice,
    CharDevice,
    Socket,
    Fifo,
}

/// Attributes of an object, as NFSv3's fattr3 needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attributes {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    /// Never 0 for a live object.
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// Major and minor device numbers for block and character devices.
    pub rdev: (u32, u32),
    /// Stable file system id of the volume: the same on every gateway, forever.
    pub fsid: u64,
    /// Stable file id (the inode number).
    pub fileid: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

/// The attributes NFSv3 calls wcc_attr: taken immediately before an operation, atomically with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreOpAttributes {
    pub size_bytes: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

/// Weak cache consistency data of one object for one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WccData {
    pub before: Option<PreOpAttributes>,
    pub after: Option<Attributes>,
}

/// How to set a time in [`SetAttributes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SetTime {
    #[default]
    DontChange,
    /// The store's current time.
    ServerTime,
    ClientTime(Timestamp),
}

/// Attribute changes requested by SETATTR, CREATE, MKDIR, SYMLINK and MKNOD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetAttributes {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size_bytes: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

/// Who asks, after the gateway applied the export's squash rules.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (AUTH_UNIX allows at most 16).
    pub groups: Vec<u32>,
}

impl Caller {
    pub fn root() -> Caller {
        Caller { uid: 0, gid: 0, groups: Vec::new() }
    }

    pub fn is_member_of(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// ACCESS bits, with the values of RFC 1813 section 3.3.4.
pub mod access {
    pub const READ: u32 = 0x0001;
    pub const LOOKUP: u32 = 0x0002;
    pub const MODIFY: u32 = 0x0004;
    pub const EXTEND: u32 = 0x0008;
    pub const DELETE: u32 = 0x0010;
    pub const EXECUTE: u32 = 0x0020;
}

/// How durable a write must be before it returns, with the order of RFC 1813's stable_how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Stability {
    /// May sit in memory; made durable by a later [`crate::Store::commit`].
    Unstable,
    /// The data and the metadata needed to read it back are on stable storage.
    DataSync,
    /// The data and all metadata are on stable storage.
    FileSync,
}

/// The write verifier of RFC 1813 section 3.3.7: random per store incarnation, and changed
/// whenever acknowledged unstable data could have been lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct WriteVerifier(pub [u8; 8]);

/// How CREATE treats an existing name (RFC 1813 section 3.3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CreateHow {
    Unchecked(SetAttributes),
    Guarded(SetAttributes),
    /// The verifier is kept on the inode, so a retransmitted create succeeds.
    Exclusive([u8; 8]),
}

/// The kind of special file MKNOD makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SpecialKind {
    BlockDevice { major: u32, minor: u32 },
    CharDevice { major: u32, minor: u32 },
    Socket,
    Fifo,
}

/// Result of LOOKUP.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lookup {
    pub fid: Fid,
    pub attributes: Attributes,
    pub directory: Attributes,
}

/// Result of CREATE, MKDIR, SYMLINK and MKNOD.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Created {
    pub fid: Fid,
    pub attributes: Attributes,
    pub directory: WccData,
}

/// Result of READ.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadResult {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub eof: bool,
    pub attributes: Attributes,
}

/// Result of WRITE.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteResult {
    pub count_bytes: u32,
    pub committed: Stability,
    pub verifier: WriteVerifier,
    pub file: WccData,
}

/// Result of COMMIT.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitResult {
    pub verifier: WriteVerifier,
    pub file: WccData,
}

/// Result of RENAME.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Renamed {
    pub from_directory: WccData,
    pub to_directory: WccData,
}

/// Result of LINK.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Linked {
    pub file: Attributes,
    pub directory: WccData,
}

/// A change to a volume's namespace or attributes: one group-commit operation (see
/// [`crate::FileSystem::start_change`]). Also what the file servers' protocol carries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    Create {
        caller: Caller,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        how: CreateHow,
    },
    Mkdir {
        caller: Caller,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        attributes: SetAttributes,
    },
    Symlink {
        caller: Caller,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        attributes: SetAttributes,
    },
    Mknod {
        caller: Caller,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        kind: SpecialKind,
        attributes: SetAttributes,
    },
    /// REMOVE of a non-directory.
    Remove {
        caller: Caller,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Rmdir {
        caller: Caller,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Atomic, also over an existing target (a file over a file, or a directory over an empty
    /// directory).
    Rename {
        caller: Caller,
        from_directory: Fid,
        #[serde(with = "serde_bytes")]
        from_name: Vec<u8>,
        to_directory: Fid,
        #[serde(with = "serde_bytes")]
        to_name: Vec<u8>,
    },
    Link {
        caller: Caller,
        fid: Fid,
        directory: Fid,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Setattr {
        caller: Caller,
        fid: Fid,
        changes: SetAttributes,
        guard_ctime: Option<Timestamp>,
    },
}

/// What a [`Change`] answers: `Created` for the creations, `Wcc` for REMOVE, RMDIR and SETATTR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    Created(Created),
    Wcc(WccData),
    Renamed(Renamed),
    Linked(Linked),
}

/// Receives a started change's result (see [`crate::FileSystem::start_change`]).
pub type ChangeDone = Box<dyn FnOnce(StoreResult<Changed>) + Send>;

/// One directory entry of a listing. Cookies are stable: an entry keeps its cookie for as long as
/// it exists, whatever else changes in the directory, and a cookie means the same on every
/// gateway. Cookies 1 and 2 are `.` and `..`; cookie 0 means "from the start".
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectoryEntry {
    pub cookie: u64,
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub fid: Fid,
    pub fileid: u64,
    /// Filled in when the listing asked for attributes (READDIRPLUS).
    pub attributes: Option<Attributes>,
}

/// One page of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectoryPage {
    pub entries: Vec<DirectoryEntry>,
    /// True when no entry follows the last one returned.
    pub eof: bool,
    pub directory: Attributes,
}

/// File system statistics (FSSTAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
    pub available_files: u64,
}

/// A chunk block whose bytes do not match their checksum entry: `block` is the 8 KiB block's
/// index within chunk `chunk` of inode `inode`, whose files live in data container `container`.
/// The same coordinates name the block on every replica of the volume (see
/// [`crate::Store::read_blocks`] and [`crate::Store::repair_blocks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct BadBlock {
    pub container: u32,
    pub inode: u64,
    pub chunk: u64,
    pub block: u64,
}

impl std::fmt::Display for BadBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block {} of chunk {} of inode {} in data container {}",
            self.block, self.chunk, self.inode, self.container
        )
    }
}

/// Where a scrub ([`crate::Store::scrub`]) goes on: an opaque position in the walk over the chunk
/// files (`docs/format.md`, "Repair and scrub"). [`ScrubCursor::default`] starts a pass; keep
/// the cursor a step returns (serde: the file server may persist it) to go on. The position
/// need not exist any more (files come and go between steps): the walk goes on from the first
/// block after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ScrubCursor {
    pub(crate) container: u32,
    pub(crate) inode: u64,
    pub(crate) chunk: u64,
    pub(crate) block: u64,
}

/// Everything that can go wrong in the store. Each front end maps these to its own codes in one
/// place (the NFS gateway: `cairn-nfs`'s status mapping).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such file or directory")]
    NotFound,
    /// The object a FID names no longer exists (or never did): NFS3ERR_STALE.
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
    /// Permission bits deny the caller: NFS3ERR_ACCES.
    #[error("permission denied")]
    AccessDenied,
    /// Only the owner (or root) may do this: NFS3ERR_PERM.
    #[error("operation not permitted")]
    NotOwner,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file too large")]
    FileTooLarge,
    #[error("no space left on device")]
    NoSpace,
    /// SETATTR's guard ctime did not match: NFS3ERR_NOT_SYNC.
    #[error("guard ctime does not match")]
    NotSync,
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// A rename or link across volumes: NFS3ERR_XDEV.
    #[error("cross-volume link or rename")]
    CrossVolume,
    /// A block's checksum did not match: the bytes on disk are not what was written. Chunk
    /// blocks answer [`StoreError::BadBlock`] instead; this is for everything else (inline
    /// blocks, metadata, the journal).
    #[error("checksum mismatch in {what} at byte {offset}")]
    Corrupt { what: String, offset: u64 },
    /// A chunk block's bytes do not match its checksum: a read or a partial write met it. Another
    /// replica's copy can repair it ([`crate::Store::read_blocks`] there,
    /// [`crate::Store::repair_blocks`] here).
    #[error("checksum mismatch in {0}")]
    BadBlock(BadBlock),
    /// A failed fsync or write earlier: the container refuses writes until it is recovered.
    #[error("container is poisoned after an earlier I/O failure: {0}")]
    Poisoned(String),
    /// A write past the volume's hard quota: NFS3ERR_DQUOT.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// This store is no longer its volume's master (a replica knows a newer epoch).
    #[error("not the volume's master any more")]
    NotMaster,
    /// The volume's replicas (or its master) cannot be reached for now: worth retrying later
    /// (NFS3ERR_JUKEBOX).
    #[error("volume unavailable: {0}")]
    Unavailable(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;
