//! Physical replication of one volume's store: a **master** [`crate::Store`] streams every change
//! it makes to disk as a [`Record`]; **replicas** ([`Replica`]) apply them in sequence order and
//! end byte-identical (table rows, chunk blocks and their checksums) to the master.
//!
//! The network is not here (this crate never touches it): the file server implements
//! [`Replicator`], carries records to the replicas and calls [`Replica::apply`] there.
//!
//! Master side ([`crate::Store::open_replicated`]):
//! - Every change that reaches disk becomes one record, submitted with [`Replicator::submit`]
//!   while the store still holds the lock that orders it against conflicting changes: a
//!   group-commit batch of the name container ([`RecordBody::Name`]: the physical row changes of
//!   its journal record, including dirty-region intents) under the group-commit applier lock;
//!   chunk writes, truncations and deletions under the file's data stripe lock; the fdatasync of
//!   a COMMIT or stable write ([`RecordBody::Sync`]) after the data it covers and before the
//!   batch that clears the dirty-region intents. Records that touch different files or tables
//!   commute, so replicas apply them in sequence order without any other lock.
//! - A public operation does not return `Ok` before [`Replicator::wait`] succeeded for the last
//!   record submitted by the time the operation finished (its own and anything it may have
//!   observed). The master has applied a change locally before its replicas acknowledge it: an
//!   operation that fails with [`crate::StoreError::NotMaster`] or
//!   [`crate::StoreError::Unavailable`] may still have happened on the master (and on some
//!   replicas). A fenced master refuses every later change and must be resynced in full before
//!   it serves again, as a replica.
//! - Reads do not wait: they may see a change that no replica has yet (and that a failover can
//!   lose, like any unacknowledged change).
//! - Sequence numbers are consecutive: the first record after opening is
//!   [`crate::Store::replication_position`]` + 1` (the store tells the replicator with
//!   [`Replicator::resume`]). A replicator that returns another number poisons the store.
//!
//! Replica side ([`Replica`]): name records go through the replica's own metadata journal and
//! redb (same checkpoints as a master), chunk writes to the page cache; a replica's **durable
//! position** is a sequence number P such that every record up to P is on its stable storage.
//! `docs/format.md` ("Replication") defines what may lie past P after a crash and why rolling
//! forward from P, or promoting the replica, is exact.
//!
//! Full resync: [`crate::Store::snapshot`] streams [`SnapshotPiece`]s (a consistent copy of the
//! tables, a fuzzy copy of the chunk files) and returns the sequence number S the table copy is
//! consistent with; a replica applies [`Replica::begin_snapshot`], every piece,
//! [`Replica::finish_snapshot`]`(S)`, then every record after S.
//!
//! Promotion: [`Replica::close`], then [`crate::Store::open_replicated`] on the same directory.
//! Normal recovery runs (journal replay, removal of deleted files, dirty-region recovery) and is
//! itself replicated: for every dirty region the new master sends the region's final image
//! (every block's bytes and checksum, or a hole), so that a replica at the same position ends
//! identical even if its own unsynced writes differed.

mod image;
mod master;
mod repair;
mod replica;

pub(crate) use master::{Link, send_initial_state, send_region_image};
pub use repair::REPAIR_BLOCKS_MAX;
pub use replica::Replica;

use serde::{Deserialize, Serialize};

use crate::journal::{Change, TableId};

/// Most bytes of chunk data in one record or snapshot piece (512 blocks).
pub const PIECE_DATA_BYTES_MAX: usize = 4 * 1024 * 1024;

/// One change, in the master's apply order. Physical: applying the same records in sequence
/// order to a replica that starts from the same state yields the same state (identical table
/// rows and chunk contents), and re-applying a suffix is harmless (each record sets rows and
/// blocks to given values), so rolling forward after a crash works.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub body: RecordBody,
}

/// One row change of the name container, in the metadata journal's encoding (`docs/format.md`,
/// "Write path and fsync ordering"): `table` is the journal's table code (1 meta … 8
/// pending_delete), `key` the journal's key encoding, `value` the row's value for a put and
/// `None` for a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowChange {
    pub table: u8,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// One whole 8 KiB block and its CRC-32C.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub crc: u32,
}

/// What a record changes. Chunk records name the data container, inode and chunk index of a
/// chunk; blocks are 8 KiB, counted from the start of the chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RecordBody {
    /// One group-commit batch of the name container: its row changes, in order (the payload of
    /// the batch's journal record, without keys that are local to a node).
    Name { changes: Vec<RowChange> },
    /// Whole blocks written from `first_block` on: `data` holds `crcs.len()` blocks, and each
    /// block's checksum entry becomes (crc, written).
    ChunkWrite {
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        crcs: Vec<u32>,
    },
    /// `count` blocks from `first_block` on become holes (checksum entries cleared, data
    /// punched). Sent by recovery, as part of a dirty region's image.
    ChunkClear { container: u32, inode: u64, chunk: u64, first_block: u64, count: u64 },
    /// The chunk keeps its first `blocks` blocks; `tail`, when present, is the new content of
    /// the last one (zero-filled past the new end of file). `blocks` 0 removes the chunk's
    /// files. A truncation is durable before the batch that shrinks the size.
    ChunkTruncate { container: u32, inode: u64, chunk: u64, blocks: u64, tail: Option<Block> },
    /// The chunk files of a removed inode are deleted: (chunk index, data container) pairs.
    ChunkDelete { inode: u64, chunks: Vec<(u64, u32)> },
    /// fdatasync every chunk file changed since the last durable record (a COMMIT or a stable
    /// write): after it, the data of every earlier record is on the replica's stable storage.
    Sync,
}

impl RecordBody {
    /// The replica must make this record (and everything before it) durable before
    /// acknowledging. [`Replica::apply`] does so before it returns for these records.
    pub fn is_durable(&self) -> bool {
        matches!(self, RecordBody::Name { .. } | RecordBody::ChunkTruncate { .. } | RecordBody::Sync)
    }

    /// Approximate size in bytes (for window accounting).
    pub fn size_bytes(&self) -> usize {
        const HEADER: usize = 32;
        HEADER
            + match self {
                RecordBody::Name { changes } => changes
                    .iter()
                    .map(|change| 8 + change.key.len() + change.value.as_ref().map_or(0, Vec::len))
                    .sum(),
                RecordBody::ChunkWrite { data, crcs, .. } => data.len() + 4 * crcs.len(),
                RecordBody::ChunkClear { .. } | RecordBody::Sync => 0,
                RecordBody::ChunkTruncate { tail, .. } => tail.as_ref().map_or(0, |tail| tail.data.len()),
                RecordBody::ChunkDelete { chunks, .. } => 12 * chunks.len(),
            }
    }
}

/// Why a master's change could not be replicated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// A replica knows a newer epoch: this store is no longer master.
    #[error("fenced: a newer epoch has taken over")]
    Fenced,
    /// The replicas could not be reached / did not acknowledge in time.
    #[error("replication unavailable: {0}")]
    Unavailable(String),
}

/// Implemented by the fileserver. The store calls `submit` for every change, in its apply order,
/// while still holding whatever lock orders that change against conflicting ones (so submit
/// must be quick and never block on the network); it assigns and returns the record's seq.
/// Then, after releasing its locks, the store calls `wait(seq)` before the operation returns to
/// its caller: it blocks until every replica has applied (for durable records: and fsynced)
/// every record up to seq.
pub trait Replicator: Send + Sync + 'static {
    /// Queues a record and returns its sequence number: the previous one plus 1 (the first one
    /// after [`Replicator::resume`]`(p)` is `p + 1`). Another number poisons the store.
    fn submit(&self, body: RecordBody) -> u64;
    /// Blocks until every replica has applied every record up to `seq`.
    fn wait(&self, seq: u64) -> Result<(), ReplicationError>;
    /// Called once by [`crate::Store::open_replicated`], before any `submit`: the store's
    /// position, so the next record is `position + 1`.
    fn resume(&self, position: u64) {
        let _ = position;
    }
}

/// One piece of a full copy of a volume ([`crate::Store::snapshot`]), at most about
/// [`PIECE_DATA_BYTES_MAX`] bytes. Pieces come in this order: one `Start`, the `Rows`, then the
/// `Chunk`s.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SnapshotPiece {
    /// The copy's identity and the sequence number its tables are consistent with.
    Start { seq: u64, cluster: u64, volume: u32, data_containers: u32, chunk_size_bytes: u64 },
    /// Table rows (puts only, in the journal's encoding).
    Rows { rows: Vec<RowChange> },
    /// Checksum entries of `blocks.len()` blocks from `first_block` on (`None`: a hole;
    /// `Some(crc)`: written) and, in `data`, the bytes of the written ones, in order.
    Chunk {
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        blocks: Vec<Option<u32>>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

impl From<Change> for RowChange {
    fn from(change: Change) -> RowChange {
        RowChange { table: change.table as u8, key: change.key, value: change.value }
    }
}

impl RowChange {
    /// The journal's change, if the table code is known.
    pub(crate) fn to_change(&self) -> Option<Change> {
        Some(Change {
            table: TableId::from_code(self.table)?,
            key: self.key.clone(),
            value: self.value.clone(),
        })
    }
}
