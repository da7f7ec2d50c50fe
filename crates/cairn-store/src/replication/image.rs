//! Reading a whole volume's state the same way on a master and on a replica: every table row in
//! the journal's encoding, every chunk file's checksum entries and written blocks. Used by the
//! digest, the full copy ([`crate::Store::snapshot`]) and a fresh master's first record.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use redb::{ReadTransaction, ReadableTable};

use super::{RowChange, SnapshotPiece};
use crate::api::{StoreError, StoreResult};
use crate::data;
use crate::format::{BLOCK, BlockSum, CHECKSUM_ENTRY_BYTES, CHECKSUM_HEADER_BYTES};
use crate::journal::{Change, TableId, keys};
use crate::tables::{self, Db};

/// Meta keys that describe one node's copy, not the volume: never replicated, copied or
/// digested. `journal_generation` (the local journal), `replication_position` (how far this
/// copy has applied or submitted), `resync_incomplete` (a full copy into it did not finish).
pub(crate) const LOCAL_META_KEYS: [&str; 3] =
    ["journal_generation", "replication_position", "resync_incomplete"];

/// Blocks per chunk piece of a full copy (and per recovery image record): 4 MiB of data.
pub(crate) const BLOCKS_PER_PIECE: u64 = (super::PIECE_DATA_BYTES_MAX / BLOCK) as u64;

/// Row bytes after which a `Rows` piece is sent.
const ROWS_PIECE_BYTES: usize = 2 * 1024 * 1024;

/// Calls `each` with every row of every table (puts, in table then key order), except the local
/// meta keys.
pub(crate) fn for_each_row(
    read: &ReadTransaction,
    each: &mut dyn FnMut(Change) -> StoreResult<()>,
) -> StoreResult<()> {
    let put = |table: TableId, key: Vec<u8>, value: Vec<u8>| Change { table, key, value: Some(value) };
    for row in read.open_table(tables::META).db()?.iter().db()? {
        let (key, value) = row.db()?;
        let name = key.value();
        if LOCAL_META_KEYS.contains(&name) {
            continue;
        }
        each(put(TableId::Meta, name.as_bytes().to_vec(), value.value().to_le_bytes().to_vec()))?;
    }
    for row in read.open_table(tables::INODES).db()?.iter().db()? {
        let (key, value) = row.db()?;
        each(put(TableId::Inodes, keys::inode(key.value()), value.value().to_vec()))?;
    }
    for row in read.open_table(tables::DIRENTS).db()?.iter().db()? {
        let (key, value) = row.db()?;
        let (directory, name) = key.value();
        each(put(TableId::Dirents, keys::dirent(directory, name), value.value().to_vec()))?;
    }
    for row in read.open_table(tables::COOKIES).db()?.iter().db()? {
        let (key, value) = row.db()?;
        let (directory, cookie) = key.value();
        each(put(TableId::Cookies, keys::pair(directory, cookie), value.value().to_vec()))?;
    }
    for row in read.open_table(tables::INLINE).db()?.iter().db()? {
        let (key, value) = row.db()?;
        let (inode, index) = key.value();
        each(put(TableId::Inline, keys::inline(inode, index), value.value().to_vec()))?;
    }
    for row in read.open_table(tables::CHUNKS).db()?.iter().db()? {
        let (key, value) = row.db()?;
        let (inode, chunk) = key.value();
        each(put(TableId::Chunks, keys::pair(inode, chunk), value.value().to_le_bytes().to_vec()))?;
    }
    for row in read.open_table(tables::DIRTY).db()?.iter().db()? {
        let (key, _) = row.db()?;
        let (inode, chunk, region) = key.value();
        each(put(TableId::Dirty, keys::dirty(inode, chunk, region), Vec::new()))?;
    }
    for row in read.open_table(tables::PENDING_DELETE).db()?.iter().db()? {
        let (key, value) = row.db()?;
        each(put(TableId::PendingDelete, keys::inode(key.value()), value.value().to_vec()))?;
    }
    Ok(())
}

pub(crate) fn container_dir(data_dir: &Path, container: u32) -> PathBuf {
    data_dir.join("containers").join(container.to_string())
}

/// `<inode:016x>.<chunk:08x>.{data,crc}` → (inode, chunk).
fn parse_chunk_file_name(name: &str) -> Option<(u64, u64)> {
    let (stem, extension) = name.rsplit_once('.')?;
    if extension != "data" && extension != "crc" {
        return None;
    }
    let (inode, chunk) = stem.split_once('.')?;
    Some((u64::from_str_radix(inode, 16).ok()?, u64::from_str_radix(chunk, 16).ok()?))
}

/// Every chunk that has a file in a data container, as (container, inode, chunk), sorted.
pub(crate) fn list_chunks(data_dir: &Path, data_containers: u32) -> StoreResult<Vec<(u32, u64, u64)>> {
    let mut found = BTreeSet::new();
    for container in 2..2 + data_containers {
        let dir = container_dir(data_dir, container);
        for fanout in 0..FANOUT_DIRS {
            for (inode, chunk) in list_fanout(&dir, fanout)? {
                found.insert((container, inode, chunk));
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// Number of fan-out directories of a data container (`chunks/00` … `chunks/ff`).
pub(crate) const FANOUT_DIRS: u64 = 256;

/// The chunks that have a file in one fan-out directory of a data container, as (inode, chunk),
/// sorted.
pub(crate) fn list_fanout(container_dir: &Path, fanout: u64) -> StoreResult<Vec<(u64, u64)>> {
    let entries = match std::fs::read_dir(data::fanout_dir(container_dir, fanout)) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StoreError::Io(error)),
    };
    let mut found = BTreeSet::new();
    for entry in entries {
        let entry = entry?;
        if let Some((inode, chunk)) = entry.file_name().to_str().and_then(parse_chunk_file_name) {
            found.insert((inode, chunk));
        }
    }
    Ok(found.into_iter().collect())
}

/// Read-only access to one chunk's files.
pub(crate) struct ChunkReader {
    sums: File,
    data: Option<File>,
    /// Checksum entries the sidecar holds (entries past them are holes).
    pub entries: u64,
}

impl ChunkReader {
    /// `None` when the chunk has no checksum sidecar (then it has no written block).
    pub fn open(container_dir: &Path, inode: u64, chunk: u64) -> StoreResult<Option<ChunkReader>> {
        let (data_path, sums_path, _) = data::chunk_paths(container_dir, inode, chunk);
        let sums = match File::open(&sums_path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::Io(error)),
        };
        let data = match File::open(&data_path) {
            Ok(file) => Some(file),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(StoreError::Io(error)),
        };
        let length = sums.metadata()?.len();
        let entries = length.saturating_sub(CHECKSUM_HEADER_BYTES) / CHECKSUM_ENTRY_BYTES;
        Ok(Some(ChunkReader { sums, data, entries }))
    }

    pub fn sums(&self, first_block: u64, count: u64) -> io::Result<Vec<BlockSum>> {
        data::read_sums(&self.sums, first_block, count)
    }

    /// `count` blocks from `first_block` (zeros past the end of the data file).
    pub fn blocks(&self, first_block: u64, count: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; (count as usize) * BLOCK];
        if let Some(data) = &self.data {
            data::read_full_at(data, &mut out, first_block * BLOCK as u64)?;
        }
        Ok(out)
    }
}

/// FNV-1a over a stream of fields (64 bits).
struct Digest(u64);

impl Digest {
    fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.bytes(bytes);
    }
}

/// A hash of a volume's logical state: every table row but the local meta keys, and the
/// position, checksum and bytes of every written chunk block (file lengths, holes and blocks
/// whose entry says "hole" do not count). Not a snapshot: call it when nothing changes.
pub(crate) fn digest(db: &redb::Database, data_dir: &Path, data_containers: u32) -> StoreResult<u64> {
    let mut digest = Digest(0xcbf2_9ce4_8422_2325);
    let read = tables::begin_read(db)?;
    for_each_row(&read, &mut |change| {
        digest.u64(change.table as u64);
        digest.field(&change.key);
        digest.field(change.value.as_deref().unwrap_or_default());
        Ok(())
    })?;
    drop(read);
    for (container, inode, chunk) in list_chunks(data_dir, data_containers)? {
        let Some(reader) = ChunkReader::open(&container_dir(data_dir, container), inode, chunk)? else {
            continue;
        };
        let mut first = 0;
        while first < reader.entries {
            let count = BLOCKS_PER_PIECE.min(reader.entries - first);
            let sums = reader.sums(first, count)?;
            if sums.iter().any(|sum| sum.written) {
                let bytes = reader.blocks(first, count)?;
                for (index, sum) in sums.iter().enumerate() {
                    if !sum.written {
                        continue;
                    }
                    let block = &bytes[index * BLOCK..(index + 1) * BLOCK];
                    digest.u64(u64::from(container));
                    digest.u64(inode);
                    digest.u64(chunk);
                    digest.u64(first + index as u64);
                    digest.u64(u64::from(sum.crc));
                    // Two hardware CRCs of the bytes: 64 bits, much faster than FNV per byte.
                    digest.u64(
                        u64::from(crc32c::crc32c(block)) << 32
                            | u64::from(crc32c::crc32c_append(0x9e37_79b9, block)),
                    );
                }
            }
            first += count;
        }
    }
    Ok(digest.0)
}

/// Sends every row of `read` as `Rows` pieces.
pub(crate) fn send_rows(
    read: &ReadTransaction,
    sink: &mut dyn FnMut(SnapshotPiece) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut rows: Vec<RowChange> = Vec::new();
    let mut bytes = 0usize;
    for_each_row(read, &mut |change| {
        bytes += 16 + change.key.len() + change.value.as_ref().map_or(0, Vec::len);
        rows.push(change.into());
        if bytes >= ROWS_PIECE_BYTES {
            bytes = 0;
            sink(SnapshotPiece::Rows { rows: std::mem::take(&mut rows) })?;
        }
        Ok(())
    })?;
    if !rows.is_empty() {
        sink(SnapshotPiece::Rows { rows })?;
    }
    Ok(())
}

/// Sends the written blocks of every chunk file as `Chunk` pieces, reading while writes go on
/// (a block changed meanwhile is changed again by a record after the copy's sequence number).
pub(crate) fn send_chunks(
    data_dir: &Path,
    data_containers: u32,
    sink: &mut dyn FnMut(SnapshotPiece) -> StoreResult<()>,
) -> StoreResult<()> {
    for (container, inode, chunk) in list_chunks(data_dir, data_containers)? {
        // A file deleted since the listing was deleted by a later record.
        let reader = match ChunkReader::open(&container_dir(data_dir, container), inode, chunk) {
            Ok(Some(reader)) => reader,
            Ok(None) => continue,
            Err(StoreError::Io(error)) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let mut first = 0;
        while first < reader.entries {
            let count = BLOCKS_PER_PIECE.min(reader.entries - first);
            let sums = reader.sums(first, count)?;
            if sums.iter().any(|sum| sum.written) {
                let bytes = reader.blocks(first, count)?;
                let mut data = Vec::new();
                let mut blocks = Vec::with_capacity(sums.len());
                for (index, sum) in sums.iter().enumerate() {
                    if sum.written {
                        blocks.push(Some(sum.crc));
                        data.extend_from_slice(&bytes[index * BLOCK..(index + 1) * BLOCK]);
                    } else {
                        blocks.push(None);
                    }
                }
                sink(SnapshotPiece::Chunk { container, inode, chunk, first_block: first, blocks, data })?;
            }
            first += count;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_file_names() {
        assert_eq!(parse_chunk_file_name("00000000000000ff.0000000a.crc"), Some((255, 10)));
        assert_eq!(parse_chunk_file_name("00000000000000ff.10000000a.data"), Some((255, 0x1_0000_000a)));
        assert_eq!(parse_chunk_file_name("container.meta"), None);
        assert_eq!(parse_chunk_file_name("x.y.crc"), None);
        assert_eq!(parse_chunk_file_name("00000000000000ff.0000000a.tmp"), None);
    }
}
