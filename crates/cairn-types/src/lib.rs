//! Identifiers, units and limits shared by every Cairn crate.
//!
//! Key types: [`ClusterId`], [`VolumeId`], [`ContainerId`], [`Fid`], [`Epoch`], [`TxnId`] and
//! [`FileHandle`], the globally valid NFS file handle built from them.
//!
//! This crate does no I/O and depends on nothing of Cairn's: every other crate may use it.

mod handle;
pub mod text;

pub use handle::{FILE_HANDLE_LEN, FILE_HANDLE_VERSION, FileHandle, HandleError};

/// The id of one Cairn cluster, chosen at random when the cluster is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ClusterId(pub u64);

/// The id of a volume, unique within its cluster and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct VolumeId(pub u32);

/// The id of a container (the unit of replication), unique within its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ContainerId(pub u32);

/// A container's epoch: increases whenever its replica set or master changes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Epoch(pub u64);

/// A transaction id, ordered within one container and one epoch.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize,
)]
pub struct TxnId(pub u64);

/// A file id: `<name container>.<inode>.<uniquifier>`.
///
/// The uniquifier is drawn when the inode number is (re)used, so a handle to a deleted file never
/// resolves to a newer file that got the same inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Fid {
    pub container: ContainerId,
    pub inode: u64,
    pub uniquifier: u32,
}

impl std::fmt::Display for Fid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.container.0, self.inode, self.uniquifier)
    }
}

/// Units and limits. Named with the unit last.
pub mod limits {
    /// Size of a block inside a container: the unit of allocation and of checksums.
    pub const BLOCK_SIZE_BYTES: u64 = 8 * 1024;
    /// Default size of a chunk, the part of a file that lives in one data container.
    pub const CHUNK_SIZE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
    /// The first bytes of every file live in its volume's name container.
    pub const INLINE_DATA_BYTES_MAX: u64 = 64 * 1024;
    /// Largest READ or WRITE payload the gateway accepts and advertises.
    pub const IO_SIZE_BYTES_MAX: u32 = 1024 * 1024;
    /// Longest file name component, in bytes.
    pub const NAME_LENGTH_BYTES_MAX: usize = 255;
    /// Longest symbolic link target, in bytes.
    pub const SYMLINK_TARGET_BYTES_MAX: usize = 4096;
    /// Largest file size: 2^63 - 1 bytes.
    pub const FILE_SIZE_BYTES_MAX: u64 = i64::MAX as u64;
}
