//! Repairing chunk blocks from another copy of the volume, and scrubbing (verifying every
//! written block in the background). The same rules on a master ([`Store`]) and on a replica
//! ([`super::Replica`], whose methods call the helpers here).
//!
//! The store never touches the network: the file server carries blocks between nodes. The flow
//! when a read meets [`StoreError::BadBlock`] on the master: `read_blocks` of that block on a
//! replica whose position is at least the master's [`Store::replication_position`] taken after
//! the bad block was met (so the replica holds every write the master made to it), then
//! `repair_blocks` on the master with what it returned. The other way round (a replica's scrub
//! found a bad block): `read_blocks` on the master, note the master's position, wait until the
//! replica has applied that far, then `repair_blocks` on the replica. A repair only ever
//! rewrites a local block that is bad (its bytes do not match its checksum entry), so a stale or
//! racing copy can never overwrite a good block. `docs/format.md`, "Repair and scrub".

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::image::{self, BLOCKS_PER_PIECE, ChunkReader, FANOUT_DIRS};
use super::{Block, RecordBody};
use crate::Store;
use crate::api::{BadBlock, ScrubCursor, StoreError, StoreResult};
use crate::data::{self, ChunkFiles};
use crate::faults::Faults;
use crate::format::{BLOCK, BlockSum};

const BLOCK_U64: u64 = BLOCK as u64;

/// Most blocks one `read_blocks` or `repair_blocks` call takes (4 MiB, one record's worth).
pub const REPAIR_BLOCKS_MAX: u64 = BLOCKS_PER_PIECE;

/// Checks the coordinates of a block range: an existing data container, at most
/// [`REPAIR_BLOCKS_MAX`] blocks, inside the chunk.
pub(crate) fn check_request(
    data_containers: u32,
    blocks_per_chunk: u64,
    container: u32,
    first_block: u64,
    count: u64,
) -> StoreResult<()> {
    if container < 2 || container - 2 >= data_containers {
        return Err(StoreError::Invalid("no such data container"));
    }
    if count > REPAIR_BLOCKS_MAX {
        return Err(StoreError::Invalid("too many blocks at once (at most 512)"));
    }
    match first_block.checked_add(count) {
        Some(end) if end <= blocks_per_chunk => Ok(()),
        _ => Err(StoreError::Invalid("blocks past the end of the chunk")),
    }
}

/// Checks blocks given for a repair: each one 8 KiB and matching its own CRC.
pub(crate) fn check_given(blocks: &[Option<Block>]) -> StoreResult<()> {
    for block in blocks.iter().flatten() {
        if block.data.len() != BLOCK {
            return Err(StoreError::Invalid("a repair block is not 8 KiB"));
        }
        if crc32c::crc32c(&block.data) != block.crc {
            return Err(StoreError::Invalid("a repair block does not match its own checksum"));
        }
    }
    Ok(())
}

/// `count` blocks of a chunk from `first_block` on, each verified against its checksum entry:
/// `None` for a hole, [`StoreError::BadBlock`] for the first one that does not match.
pub(crate) fn read_verified(
    files: &ChunkFiles,
    (container, inode, chunk): (u32, u64, u64),
    first_block: u64,
    count: u64,
) -> StoreResult<Vec<Option<Block>>> {
    let sums = data::read_sums(&files.sums, first_block, count)?;
    if sums.iter().all(|sum| !sum.written) {
        return Ok(vec![None; sums.len()]);
    }
    let mut bytes = vec![0u8; sums.len() * BLOCK];
    data::read_full_at(&files.data, &mut bytes, first_block * BLOCK_U64)?;
    let mut blocks = Vec::with_capacity(sums.len());
    for (index, (sum, block)) in sums.iter().zip(bytes.chunks_exact(BLOCK)).enumerate() {
        if !sum.written {
            blocks.push(None);
            continue;
        }
        if crc32c::crc32c(block) != sum.crc {
            return Err(data::block_mismatch(inode, chunk, container, first_block + index as u64));
        }
        blocks.push(Some(Block { data: block.to_vec(), crc: sum.crc }));
    }
    Ok(blocks)
}

/// The indexes (into `given`) of the blocks to repair: given, and bad here (written, and the
/// bytes do not match the checksum entry). Holes and good blocks are never touched.
pub(crate) fn find_bad_local(
    files: &ChunkFiles,
    first_block: u64,
    given: &[Option<Block>],
) -> StoreResult<Vec<usize>> {
    let sums = data::read_sums(&files.sums, first_block, given.len() as u64)?;
    let candidates: Vec<usize> =
        (0..given.len()).filter(|&index| given[index].is_some() && sums[index].written).collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut bytes = vec![0u8; given.len() * BLOCK];
    data::read_full_at(&files.data, &mut bytes, first_block * BLOCK_U64)?;
    Ok(candidates
        .into_iter()
        .filter(|&index| crc32c::crc32c(&bytes[index * BLOCK..(index + 1) * BLOCK]) != sums[index].crc)
        .collect())
}

/// A run of consecutive rewritten blocks: (first block, bytes, CRCs), as a `ChunkWrite` carries
/// them.
pub(crate) type Run = (u64, Vec<u8>, Vec<u32>);

/// Writes the given blocks at `indexes` (bytes, then checksum entries; to the page cache) and
/// returns them as runs of consecutive blocks.
pub(crate) fn write_blocks(
    files: &ChunkFiles,
    first_block: u64,
    given: &[Option<Block>],
    indexes: &[usize],
    faults: &Faults,
) -> io::Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    for &index in indexes {
        let Some(block) = &given[index] else {
            continue;
        };
        let at = first_block + index as u64;
        faults.check_data_write()?;
        files.data.write_all_at(&block.data, at * BLOCK_U64)?;
        data::write_sums(&files.sums, at, &[BlockSum { crc: block.crc, written: true }])?;
        match runs.last_mut() {
            Some((run_first, bytes, crcs)) if *run_first + crcs.len() as u64 == at => {
                bytes.extend_from_slice(&block.data);
                crcs.push(block.crc);
            }
            _ => runs.push((at, block.data.clone(), vec![block.crc])),
        }
    }
    Ok(runs)
}

/// Whether a block is bad on disk now (its chunk's files opened afresh): written, and its bytes
/// do not match its checksum entry. Called under the lock that orders the chunk's writers, to
/// rule out a write in progress.
pub(crate) fn block_is_bad(data_dir: &Path, bad: BadBlock) -> StoreResult<bool> {
    let dir = image::container_dir(data_dir, bad.container);
    let reader = match ChunkReader::open(&dir, bad.inode, bad.chunk) {
        Ok(Some(reader)) => reader,
        Ok(None) => return Ok(false),
        Err(StoreError::Io(error)) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    if bad.block >= reader.entries {
        return Ok(false);
    }
    let sum = reader.sums(bad.block, 1)?[0];
    if !sum.written {
        return Ok(false);
    }
    Ok(crc32c::crc32c(&reader.blocks(bad.block, 1)?) != sum.crc)
}

/// One scrub step over the chunk files of `data_dir` (see [`Store::scrub`]). Reads without any
/// lock; `recheck` is called for each mismatch it sees and says, under the chunk's lock, whether
/// the block is still bad (a concurrent write can tear what an unlocked read sees).
///
/// Walk order: data container, fan-out directory (`inode & 0xff`), inode, chunk, block. Only
/// one fan-out directory is listed at a time, so a step costs what it verifies.
pub(crate) fn scrub_walk(
    data_dir: &Path,
    data_containers: u32,
    cursor: ScrubCursor,
    blocks_max: u64,
    recheck: &mut dyn FnMut(BadBlock) -> StoreResult<bool>,
) -> StoreResult<(Vec<BadBlock>, Option<ScrubCursor>)> {
    if blocks_max == 0 {
        return Err(StoreError::Invalid("a scrub step verifies at least one block"));
    }
    // (container, fan-out, inode, chunk, block) of the first block to verify.
    let start = if cursor.container < 2 {
        (2, 0, 0, 0, 0)
    } else {
        (cursor.container, cursor.inode & 0xff, cursor.inode, cursor.chunk, cursor.block)
    };
    let mut bad = Vec::new();
    let mut verified = 0u64;
    for container in start.0..2 + data_containers {
        let dir = image::container_dir(data_dir, container);
        let first_fanout = if container == start.0 { start.1 } else { 0 };
        for fanout in first_fanout..FANOUT_DIRS {
            let from_cursor = container == start.0 && fanout == start.1;
            for (inode, chunk) in image::list_fanout(&dir, fanout)? {
                let mut block = 0;
                if from_cursor {
                    if (inode, chunk) < (start.2, start.3) {
                        continue;
                    }
                    if (inode, chunk) == (start.2, start.3) {
                        block = start.4;
                    }
                }
                // Deleted since the listing: nothing to verify.
                let reader = match ChunkReader::open(&dir, inode, chunk) {
                    Ok(Some(reader)) => reader,
                    Ok(None) => continue,
                    Err(StoreError::Io(error)) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                };
                while block < reader.entries {
                    if verified >= blocks_max {
                        let next = ScrubCursor { container, inode, chunk, block };
                        return Ok((bad, Some(next)));
                    }
                    let sums = reader.sums(block, BLOCKS_PER_PIECE.min(reader.entries - block))?;
                    // Up to the budget: `end` entries, `written` of them written.
                    let budget = blocks_max - verified;
                    let mut end = sums.len();
                    let mut written = 0;
                    for (index, sum) in sums.iter().enumerate() {
                        if sum.written {
                            written += 1;
                            if written == budget {
                                end = index + 1;
                                break;
                            }
                        }
                    }
                    if written > 0 {
                        let bytes = reader.blocks(block, end as u64)?;
                        for (index, sum) in sums[..end].iter().enumerate() {
                            if sum.written
                                && crc32c::crc32c(&bytes[index * BLOCK..(index + 1) * BLOCK]) != sum.crc
                            {
                                let found = BadBlock { container, inode, chunk, block: block + index as u64 };
                                if recheck(found)? {
                                    bad.push(found);
                                }
                            }
                        }
                    }
                    verified += written;
                    block += end as u64;
                }
            }
        }
    }
    Ok((bad, None))
}

impl Store {
    /// `count` (at most [`REPAIR_BLOCKS_MAX`]) blocks of chunk `chunk` of inode `inode`, whose
    /// files live in data container `container`, from block `first_block` of the chunk on: the
    /// bytes and CRC of each written block, `None` for a hole (never written, or past the end
    /// of the chunk's files; also when the chunk has no files here). Every block is verified
    /// against its checksum entry: [`StoreError::BadBlock`] if one does not match. Takes the
    /// file's stripe lock for reading, like reads. For the file server: read here what repairs
    /// a bad block on another copy of the volume ([`Store::repair_blocks`],
    /// [`super::Replica::repair_blocks`]).
    pub fn read_blocks(
        &self,
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        count: u64,
    ) -> StoreResult<Vec<Option<Block>>> {
        self.check_chunk_request(container, inode, chunk, first_block, count)?;
        let _stripe = self.stripe(inode).read();
        let Some((files, _)) = data::open_chunk(self, container, inode, chunk, false)? else {
            return Ok(vec![None; count as usize]);
        };
        read_verified(&files, (container, inode, chunk), first_block, count)
    }

    /// Repairs bad blocks of chunk `chunk` of inode `inode` (data container `container`) from
    /// another copy: `blocks[i]` is block `first_block + i` as another replica holds it (what
    /// its `read_blocks` returned; at most [`REPAIR_BLOCKS_MAX`]). Every given block must match
    /// its own CRC ([`StoreError::Invalid`] otherwise, before anything changes). A local block
    /// is rewritten (bytes and checksum entry) only if it is bad, i.e. written and not matching
    /// its checksum entry; good blocks, holes and `None` entries are never touched. Under the
    /// file's stripe lock for writing; the rewritten blocks are fdatasynced, then replicated as
    /// [`RecordBody::ChunkWrite`]s followed by a [`RecordBody::Sync`] (the replicas end
    /// identical; for them it rewrites a block with the bytes it should hold anyway), and
    /// acknowledged like a stable write before this returns. Returns the number of blocks
    /// repaired. A failed write or fdatasync poisons the store, as for writes.
    ///
    /// The caller makes sure the copy is not older than this store's block: a replica whose
    /// position is at least [`Store::replication_position`] as it was after the bad block was
    /// met.
    pub fn repair_blocks(
        &self,
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        blocks: Vec<Option<Block>>,
    ) -> StoreResult<u64> {
        self.check_poisoned()?;
        self.check_chunk_request(container, inode, chunk, first_block, blocks.len() as u64)?;
        check_given(&blocks)?;
        let repaired = {
            let _stripe = self.stripe(inode).write();
            let Some((files, _)) = data::open_chunk(self, container, inode, chunk, false)? else {
                return Ok(0);
            };
            let bad = find_bad_local(&files, first_block, &blocks)?;
            if bad.is_empty() {
                return Ok(0);
            }
            let runs = match write_blocks(&files, first_block, &blocks, &bad, &self.faults) {
                Ok(runs) => runs,
                Err(error) => {
                    self.poison(format!("repairing a chunk block failed: {error}"));
                    return Err(data::io_error(error));
                }
            };
            data::sync_file(self, &files.data)?;
            data::sync_file(self, &files.sums)?;
            data::data_container(self, container)?.next_txn(&self.faults)?;
            tracing::warn!(
                container,
                inode,
                chunk,
                first_block,
                blocks = bad.len(),
                "repaired bad chunk blocks"
            );
            // Under the file's stripe lock, after the effect, like every chunk record.
            for (first_block, data, crcs) in runs {
                self.replicate(RecordBody::ChunkWrite { container, inode, chunk, first_block, data, crcs })?;
            }
            self.replicate(RecordBody::Sync)?;
            bad.len() as u64
        };
        self.wait_replicated()?;
        Ok(repaired)
    }

    /// One step of a scrub: verifies up to `blocks_max` (at least 1) written chunk blocks from
    /// `cursor` on, in a stable order over every chunk file of every data container
    /// ([`ScrubCursor::default`] starts a pass), and returns the bad ones (written, bytes not
    /// matching their checksum entry) and where to go on, or `None` when the pass is complete.
    /// Reads without holding any lock; a mismatch is read again under the file's stripe lock, so
    /// a write in progress is never reported. Repair what it finds with
    /// [`Store::repair_blocks`]. Inline blocks (the first 64 KiB of files, in the name
    /// container) are not scrubbed.
    pub fn scrub(
        &self,
        cursor: ScrubCursor,
        blocks_max: u64,
    ) -> StoreResult<(Vec<BadBlock>, Option<ScrubCursor>)> {
        scrub_walk(&self.config.data_dir, self.config.data_containers, cursor, blocks_max, &mut |bad| {
            let _stripe = self.stripe(bad.inode).read();
            block_is_bad(&self.config.data_dir, bad)
        })
    }

    /// Checks a block range of `read_blocks` / `repair_blocks`: an existing data container,
    /// the one the chunk lives in, at most [`REPAIR_BLOCKS_MAX`] blocks inside the chunk.
    fn check_chunk_request(
        &self,
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        count: u64,
    ) -> StoreResult<()> {
        let blocks_per_chunk = self.config.chunk_size_bytes / BLOCK_U64;
        check_request(self.config.data_containers, blocks_per_chunk, container, first_block, count)?;
        if data::chunk_container(self, inode, chunk) != container {
            return Err(StoreError::Invalid("the chunk does not live in that data container"));
        }
        Ok(())
    }
}
