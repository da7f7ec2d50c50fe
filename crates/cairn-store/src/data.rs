//! File data: inline blocks (the first 64 KiB, in the name container) and chunks (sparse data
//! files with checksum sidecars, in data containers); READ, WRITE, COMMIT, truncation and
//! deletion.
//!
//! Write ordering for a chunk (see docs/format.md): the region's dirty intent is durable before
//! any byte of the write reaches the data file; data and checksums are written to the page
//! cache; COMMIT fdatasyncs data and checksum files, then persists the inode and clears the
//! intents in one metadata commit.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_types::limits::{FILE_SIZE_BYTES_MAX, INLINE_DATA_BYTES_MAX};
use cairn_types::{Epoch, Fid, TxnId};
use parking_lot::Mutex;
use redb::ReadableTable;

use crate::api::{
    BadBlock, Caller, FileKind, ReadResult, Stability, StoreError, StoreResult, WccData, WriteResult,
};
use crate::faults::Faults;
use crate::format::{
    self, BLOCK, BlockSum, CHECKSUM_ENTRY_BYTES, CHECKSUM_HEADER_BYTES, ContainerKind, ContainerMeta,
};
use crate::group::{self, Batch, Op, Post, SpaceUse};
use crate::hot::{Entry, EntryRef, InlineBlock};
use crate::replication::{Block, RecordBody};
use crate::tables::{self, Db};
use crate::{Store, next_ctime, perm, pre_op};

const BLOCK_U64: u64 = BLOCK as u64;
/// Number of inline blocks.
const INLINE_BLOCKS: u32 = (INLINE_DATA_BYTES_MAX / BLOCK_U64) as u32;
/// Data container transaction ids reserved (durably) at a time.
const TXN_RESERVATION: u64 = 1 << 20;
/// Largest dirty region.
pub(crate) const REGION_SIZE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Maps an I/O error to the store's error: ENOSPC (and EDQUOT) become [`StoreError::NoSpace`].
pub(crate) fn io_error(error: io::Error) -> StoreError {
    match error.raw_os_error() {
        Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => StoreError::NoSpace,
        _ => StoreError::Io(error),
    }
}

/// One data container: a directory of chunk files and its metadata.
pub(crate) struct DataContainer {
    pub id: u32,
    pub epoch: Epoch,
    pub volume: u32,
    pub dir: PathBuf,
    /// The next transaction id to hand out.
    next_txn: AtomicU64,
    /// Invariant: every id handed out is below this value, and this value is durable.
    reserved_until: Mutex<u64>,
}

impl DataContainer {
    pub fn new(dir: PathBuf, meta: ContainerMeta) -> DataContainer {
        DataContainer {
            id: meta.container,
            epoch: Epoch(meta.epoch),
            volume: meta.volume,
            dir,
            next_txn: AtomicU64::new(meta.txn_reserved_until),
            reserved_until: Mutex::new(meta.txn_reserved_until),
        }
    }

    pub fn last_txn(&self) -> TxnId {
        TxnId(self.next_txn.load(Ordering::SeqCst).saturating_sub(1))
    }

    /// The next transaction id of this container; reserves more, durably, when needed.
    pub fn next_txn(&self, faults: &Faults) -> StoreResult<TxnId> {
        let id = self.next_txn.fetch_add(1, Ordering::SeqCst);
        let mut reserved = self.reserved_until.lock();
        if id >= *reserved {
            let until = id + TXN_RESERVATION;
            self.write_meta(until, faults)?;
            *reserved = until;
        }
        Ok(TxnId(id))
    }

    /// Rewrites `container.meta` with the current reservation.
    pub fn persist_txn(&self, faults: &Faults) -> StoreResult<()> {
        let reserved = self.reserved_until.lock();
        self.write_meta(*reserved, faults)
    }

    fn write_meta(&self, reserved_until: u64, faults: &Faults) -> StoreResult<()> {
        let meta = ContainerMeta {
            container: self.id,
            kind: ContainerKind::Data,
            volume: self.volume,
            epoch: self.epoch.0,
            txn_reserved_until: reserved_until,
        };
        write_file_atomically(&self.dir.join("container.meta"), &meta.encode(), faults)
    }
}

/// The data container with this id (read from disk: checked, never trusted).
pub(crate) fn data_container(store: &Store, container: u32) -> StoreResult<&DataContainer> {
    store.containers.iter().find(|data| data.id == container).ok_or_else(|| StoreError::Corrupt {
        what: format!("chunk map names data container {container}, which does not exist"),
        offset: 0,
    })
}

/// Writes a small file so that a crash leaves either the old or the new contents: temporary
/// file, fsync, rename, fsync of the directory.
pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8], faults: &Faults) -> StoreResult<()> {
    let temporary = path.with_extension("tmp");
    let file = File::create(&temporary).map_err(io_error)?;
    file.write_all_at(bytes, 0).map_err(io_error)?;
    faults.check_data_sync()?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    let parent = path.parent().unwrap_or(Path::new("."));
    faults.check_data_sync()?;
    File::open(parent)?.sync_all()?;
    Ok(())
}

/// The open files of one chunk.
pub(crate) struct ChunkFiles {
    pub data: File,
    pub sums: File,
    pub dir: PathBuf,
    /// Where the last large read of the data file ended, and how far read-ahead was asked
    /// for (see [`ChunkFiles::read_ahead`]).
    read_end: AtomicU64,
    advised_until: AtomicU64,
}

impl ChunkFiles {
    pub fn new(data: File, sums: File, dir: PathBuf) -> ChunkFiles {
        ChunkFiles { data, sums, dir, read_end: AtomicU64::new(u64::MAX), advised_until: AtomicU64::new(0) }
    }

    /// Asks the kernel to start reading the data file beyond a large read that continues the
    /// previous one (or starts the chunk). The kernel's own read-ahead restarts small in every
    /// chunk file and, with several reads of one stream in flight at once, often takes them
    /// for random reads; a sequential 1 MiB stream then waits on the disk for every read.
    fn read_ahead(&self, offset: u64, length: u64) {
        if length < READ_AHEAD_MIN_BYTES {
            return;
        }
        let previous = self.read_end.swap(offset + length, Ordering::Relaxed);
        let advised = self.advised_until.load(Ordering::Relaxed);
        let Some((from, until)) = read_ahead_range(previous, advised, offset, length) else {
            return;
        };
        self.advised_until.store(until, Ordering::Relaxed);
        // SAFETY: posix_fadvise on a valid open descriptor with plain integer arguments.
        let result = unsafe {
            libc::posix_fadvise(
                self.data.as_raw_fd(),
                from as libc::off_t,
                (until - from) as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        if result != 0 {
            tracing::debug!(error = %io::Error::from_raw_os_error(result), "read-ahead advice failed");
        }
    }
}

/// The range to ask the kernel to read ahead after a large read of `length` bytes at `offset`,
/// if any: `previous` is where the last large read ended (`u64::MAX`: none yet), `advised` how
/// far read-ahead was asked for already. A read continues the stream when it starts within
/// [`READ_AHEAD_BYTES`] of the previous end (reads of one stream arrive a little out of order
/// when several are in flight), or at the start of the chunk.
fn read_ahead_range(previous: u64, advised: u64, offset: u64, length: u64) -> Option<(u64, u64)> {
    let sequential =
        if previous == u64::MAX { offset == 0 } else { offset.abs_diff(previous) <= READ_AHEAD_BYTES };
    if !sequential {
        return None;
    }
    let end = offset + length;
    let until = end + READ_AHEAD_BYTES;
    // What an earlier read of this stream asked for is not asked for again (an `advised` far
    // beyond is from an earlier pass over the chunk).
    let from = if (offset..=until.saturating_add(READ_AHEAD_BYTES)).contains(&advised) {
        advised.max(end)
    } else {
        end
    };
    (from < until).then_some((from, until))
}

/// Reads at least this large count as streaming, for read-ahead.
const READ_AHEAD_MIN_BYTES: u64 = 128 * 1024;
/// How far beyond a sequential read the kernel is asked to read ahead.
const READ_AHEAD_BYTES: u64 = 8 * 1024 * 1024;

/// Which data container holds a chunk: a stable hash of (inode, chunk) over the containers.
pub(crate) fn chunk_container(store: &Store, number: u64, chunk: u64) -> u32 {
    let mut mixed = number.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ chunk.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    mixed ^= mixed >> 31;
    mixed = mixed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed ^= mixed >> 29;
    2 + (mixed % u64::from(store.config.data_containers)) as u32
}

pub(crate) fn fanout_dir(container_dir: &Path, number: u64) -> PathBuf {
    container_dir.join("chunks").join(format!("{:02x}", number & 0xff))
}

pub(crate) fn chunk_paths(container_dir: &Path, number: u64, chunk: u64) -> (PathBuf, PathBuf, PathBuf) {
    let dir = fanout_dir(container_dir, number);
    let stem = format!("{number:016x}.{chunk:08x}");
    (dir.join(format!("{stem}.data")), dir.join(format!("{stem}.crc")), dir)
}

fn container_dir(store: &Store, container: u32) -> PathBuf {
    store.config.data_dir.join("containers").join(container.to_string())
}

/// The chunk's files, from the cache or opened (and created, when `create`). `None` when they
/// do not exist and `create` is false. The flag says whether this call created them.
pub(crate) fn open_chunk(
    store: &Store,
    container: u32,
    number: u64,
    chunk: u64,
    create: bool,
) -> StoreResult<Option<(Arc<ChunkFiles>, bool)>> {
    if let Some(files) = store.files.lock().get(&(number, chunk)) {
        return Ok(Some((files.clone(), false)));
    }
    let (data_path, sums_path, dir) = chunk_paths(&container_dir(store, container), number, chunk);
    let mut created = false;
    let open = |path: &Path| OpenOptions::new().read(true).write(true).open(path);
    let (data, sums) = match (open(&data_path), open(&sums_path)) {
        (Ok(data), Ok(sums)) => (data, sums),
        (data, sums) => {
            let missing = |result: &io::Result<File>| matches!(result, Err(error) if error.kind() == io::ErrorKind::NotFound);
            if !missing(&data) && !missing(&sums) {
                return Err(StoreError::Io(
                    data.err().or(sums.err()).unwrap_or_else(|| io::Error::other("open")),
                ));
            }
            if !create {
                // A chunk with only one of its files (a crash between creating them) has no
                // written block.
                return Ok(None);
            }
            let make = |path: &Path| {
                OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
            };
            if !dir.is_dir() {
                // Lost by a crash while the container was being created.
                std::fs::create_dir_all(&dir).map_err(io_error)?;
            }
            let data = make(&data_path).map_err(io_error)?;
            let sums = make(&sums_path).map_err(io_error)?;
            if sums.metadata()?.len() < CHECKSUM_HEADER_BYTES {
                sums.write_all_at(&format::checksum_header(container, number, chunk), 0).map_err(io_error)?;
            }
            created = true;
            (data, sums)
        }
    };
    let files = Arc::new(ChunkFiles::new(data, sums, dir));
    let mut cache = store.files.lock();
    if cache.len() >= store.config.open_chunk_files_max {
        // Bounded cache: forget an arbitrary half (files still in use stay open until their
        // users drop them).
        let keys: Vec<(u64, u64)> = cache.keys().take(cache.len() / 2 + 1).copied().collect();
        for key in keys {
            cache.remove(&key);
        }
    }
    cache.insert((number, chunk), files.clone());
    Ok(Some((files, created)))
}

/// Reads as much as the file has at `offset`; the rest of `out` is zero.
pub(crate) fn read_full_at(file: &File, out: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        match file.read_at(&mut out[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(count) => done += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    out[done..].fill(0);
    Ok(())
}

pub(crate) fn read_sums(sums: &File, first_block: u64, count: u64) -> io::Result<Vec<BlockSum>> {
    let mut bytes = vec![0u8; (count * CHECKSUM_ENTRY_BYTES) as usize];
    read_full_at(sums, &mut bytes, CHECKSUM_HEADER_BYTES + first_block * CHECKSUM_ENTRY_BYTES)?;
    Ok(bytes.chunks_exact(CHECKSUM_ENTRY_BYTES as usize).map(BlockSum::decode).collect())
}

pub(crate) fn write_sums(sums: &File, first_block: u64, entries: &[BlockSum]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(entries.len() * CHECKSUM_ENTRY_BYTES as usize);
    for entry in entries {
        bytes.extend_from_slice(&entry.encode());
    }
    sums.write_all_at(&bytes, CHECKSUM_HEADER_BYTES + first_block * CHECKSUM_ENTRY_BYTES)
}

/// Number of written blocks from `first_block` to the end of the chunk.
pub(crate) fn count_written(sums: &File, first_block: u64) -> io::Result<u64> {
    let length = sums.metadata()?.len();
    let start = CHECKSUM_HEADER_BYTES + first_block * CHECKSUM_ENTRY_BYTES;
    if length <= start {
        return Ok(0);
    }
    let entries = read_sums(sums, first_block, (length - start) / CHECKSUM_ENTRY_BYTES)?;
    Ok(entries.iter().filter(|entry| entry.written).count() as u64)
}

/// Allocates the range, so that ENOSPC shows here and not at write-back.
fn reserve(file: &File, offset: u64, length: u64) -> StoreResult<()> {
    // SAFETY: fallocate on a valid open descriptor with plain integer arguments.
    let result =
        unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as libc::off_t, length as libc::off_t) };
    if result != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Ok(());
        }
        return Err(io_error(error));
    }
    Ok(())
}

/// Frees the range's space (keeps the size). Best effort.
pub(crate) fn punch_hole(file: &File, offset: u64, length: u64) {
    // SAFETY: fallocate on a valid open descriptor with plain integer arguments.
    let result = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            length as libc::off_t,
        )
    };
    if result != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "punching a hole failed");
    }
}

/// A chunk block that does not match its checksum entry (`block`: its index in the chunk).
pub(crate) fn block_mismatch(number: u64, chunk: u64, container: u32, block: u64) -> StoreError {
    StoreError::BadBlock(BadBlock { container, inode: number, chunk, block })
}

/// fdatasync, through the failure points. A failure poisons the store.
pub(crate) fn sync_file(store: &Store, file: &File) -> StoreResult<()> {
    let result = store.faults.check_data_sync().and_then(|()| file.sync_data());
    if let Err(error) = result {
        store.poison(format!("fdatasync failed: {error}"));
        return Err(StoreError::Io(error));
    }
    Ok(())
}

/// Runs `sync` (an fdatasync) on every file, up to [`SYNC_THREADS_MAX`] at once on threads of
/// their own, so that the disk gets several files' write-back at once instead of one file after
/// the other (an fdatasync blocks while it submits; measured: a COMMIT of a 1 GiB file, 4 chunks,
/// went from about 0.5x to 0.8x of Ganesha's single-file fsync). The first error is returned,
/// after every sync ended.
pub(crate) fn sync_together(
    files: &[&File],
    sync: impl Fn(&File) -> StoreResult<()> + Sync,
) -> StoreResult<()> {
    if files.len() <= 1 {
        return files.iter().try_for_each(|file| sync(file));
    }
    let sync = &sync;
    let mut results: Vec<StoreResult<()>> = Vec::with_capacity(files.len());
    for group in files.chunks(SYNC_THREADS_MAX) {
        std::thread::scope(|scope| {
            let running: Vec<_> = group.iter().map(|file| scope.spawn(move || sync(file))).collect();
            results.extend(running.into_iter().map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(StoreError::Io(io::Error::other("a sync thread panicked"))))
            }));
        });
    }
    results.into_iter().collect()
}

/// Most fdatasyncs [`sync_together`] runs at once.
const SYNC_THREADS_MAX: usize = 8;

pub(crate) fn sync_dir(store: &Store, dir: &Path) -> StoreResult<()> {
    let result = store.faults.check_data_sync().and_then(|()| File::open(dir)?.sync_all());
    if let Err(error) = result {
        store.poison(format!("directory fsync failed: {error}"));
        return Err(StoreError::Io(error));
    }
    Ok(())
}

/// Part of a request that falls into one chunk.
struct ChunkPart {
    chunk: u64,
    /// Offset inside the chunk.
    offset: u64,
    /// Range of the request's bytes.
    start: usize,
    end: usize,
}

fn chunk_parts(chunk_size: u64, offset: u64, length: usize) -> Vec<ChunkPart> {
    let mut parts = Vec::new();
    let end = offset + length as u64;
    let mut position = offset.max(INLINE_DATA_BYTES_MAX);
    while position < end {
        let chunk = position / chunk_size;
        let chunk_end = ((chunk + 1) * chunk_size).min(end);
        parts.push(ChunkPart {
            chunk,
            offset: position - chunk * chunk_size,
            start: (position - offset) as usize,
            end: (chunk_end - offset) as usize,
        });
        position = chunk_end;
    }
    parts
}

// ---- READ ----

pub(crate) fn read(
    store: &Store,
    caller: &Caller,
    fid: Fid,
    offset: u64,
    count: u32,
) -> StoreResult<ReadResult> {
    let number = fid.inode;
    let _stripe = store.stripe(number).read();
    let (_, inode) = store.current(fid)?;
    match inode.kind {
        FileKind::Regular => {}
        FileKind::Directory => return Err(StoreError::IsDirectory),
        _ => return Err(StoreError::Invalid("read of a special file")),
    }
    if !perm::may_read_data(caller, &inode) {
        return Err(StoreError::AccessDenied);
    }
    let size = inode.size_bytes;
    let end = offset.saturating_add(u64::from(count)).min(size);
    let mut out = vec![0u8; end.saturating_sub(offset) as usize];
    if !out.is_empty() {
        let read = tables::begin_read(&store.db)?;
        if offset < INLINE_DATA_BYTES_MAX {
            read_inline(store, &read, number, offset, &mut out)?;
        }
        let chunks = read.open_table(tables::CHUNKS).db()?;
        for part in chunk_parts(store.config.chunk_size_bytes, offset, out.len()) {
            let Some(container) = chunks.get((number, part.chunk)).db()?.map(|value| value.value()) else {
                continue;
            };
            let Some((files, _)) = open_chunk(store, container, number, part.chunk, false)? else {
                continue;
            };
            read_chunk_part(
                &files,
                number,
                part.chunk,
                container,
                part.offset,
                &mut out[part.start..part.end],
            )?;
        }
    }
    Ok(ReadResult { eof: end >= size, attributes: store.attributes(number, &inode), data: out })
}

fn read_inline(
    store: &Store,
    read: &redb::ReadTransaction,
    number: u64,
    offset: u64,
    out: &mut [u8],
) -> StoreResult<()> {
    let end = (offset + out.len() as u64).min(INLINE_DATA_BYTES_MAX);
    let first = (offset / BLOCK_U64) as u32;
    let last = ((end - 1) / BLOCK_U64) as u32;
    let mut dirty: Vec<(u32, Vec<u8>)> = Vec::new();
    if let Some(entry) = store.hot.get(number) {
        let guard = entry.lock();
        for (&index, block) in guard.inline_dirty.range(first..=last) {
            dirty.push((index, block.data.clone()));
        }
    }
    let table = read.open_table(tables::INLINE).db()?;
    for index in first..=last {
        let block = match dirty.iter().find(|(dirty_index, _)| *dirty_index == index) {
            Some((_, data)) => data.clone(),
            None => match table.get((number, index)).db()? {
                Some(bytes) => format::decode_inline(bytes.value(), number, index)?,
                None => continue,
            },
        };
        let block_start = u64::from(index) * BLOCK_U64;
        let from = offset.max(block_start);
        let to = end.min(block_start + BLOCK_U64);
        out[(from - offset) as usize..(to - offset) as usize]
            .copy_from_slice(&block[(from - block_start) as usize..(to - block_start) as usize]);
    }
    Ok(())
}

fn read_chunk_part(
    files: &ChunkFiles,
    number: u64,
    chunk: u64,
    container: u32,
    offset: u64,
    out: &mut [u8],
) -> StoreResult<()> {
    let first = offset / BLOCK_U64;
    let last = (offset + out.len() as u64 - 1) / BLOCK_U64;
    let count = last - first + 1;
    let sums = read_sums(&files.sums, first, count)?;
    if sums.iter().all(|sum| !sum.written) {
        return Ok(());
    }
    files.read_ahead(offset, out.len() as u64);
    // Whole blocks are read straight into `out`; a partial block at either end goes through a
    // buffer of whole blocks, since a checksum covers a whole block.
    let aligned = offset.is_multiple_of(BLOCK_U64) && out.len().is_multiple_of(BLOCK);
    let mut buffer = if aligned { Vec::new() } else { vec![0u8; (count * BLOCK_U64) as usize] };
    let blocks: &mut [u8] = if aligned { out } else { &mut buffer };
    read_full_at(&files.data, blocks, first * BLOCK_U64)?;
    for (index, sum) in sums.iter().enumerate() {
        let block = &mut blocks[index * BLOCK..(index + 1) * BLOCK];
        if !sum.written {
            block.fill(0);
        } else if crc32c::crc32c(block) != sum.crc {
            return Err(block_mismatch(number, chunk, container, first + index as u64));
        }
    }
    if !aligned {
        let skip = (offset - first * BLOCK_U64) as usize;
        out.copy_from_slice(&buffer[skip..skip + out.len()]);
    }
    Ok(())
}

// ---- WRITE ----

fn entry_for_write(store: &Store, fid: Fid) -> StoreResult<EntryRef> {
    if fid.container != crate::NAME_CONTAINER_ID {
        return Err(StoreError::Stale(fid));
    }
    let entry = store
        .hot
        .get_or_load(fid.inode, || {
            let read = tables::begin_read(&store.db)?;
            tables::read_inode(&read, fid.inode)
        })?
        .ok_or(StoreError::Stale(fid))?;
    Ok(entry)
}

fn check_writable(caller: &Caller, fid: Fid, entry: &Entry) -> StoreResult<()> {
    if entry.deleted || entry.inode.uniquifier != fid.uniquifier {
        return Err(StoreError::Stale(fid));
    }
    match entry.inode.kind {
        FileKind::Regular => {}
        FileKind::Directory => return Err(StoreError::IsDirectory),
        _ => return Err(StoreError::Invalid("write to a special file")),
    }
    if !perm::may_write_data(caller, &entry.inode) {
        return Err(StoreError::AccessDenied);
    }
    Ok(())
}

pub(crate) fn write(
    store: &Store,
    caller: &Caller,
    fid: Fid,
    offset: u64,
    data: &[u8],
    stability: Stability,
) -> StoreResult<WriteResult> {
    store.check_poisoned()?;
    let number = fid.inode;
    let end = offset.checked_add(data.len() as u64).ok_or(StoreError::FileTooLarge)?;
    if end > FILE_SIZE_BYTES_MAX {
        return Err(StoreError::FileTooLarge);
    }
    if data.is_empty() {
        let entry = entry_for_write(store, fid)?;
        let guard = entry.lock();
        check_writable(caller, fid, &guard)?;
        let attributes = store.attributes(number, &guard.inode);
        return Ok(WriteResult {
            count_bytes: 0,
            committed: stability,
            verifier: store.write_verifier(),
            file: WccData { before: Some(pre_op(&guard.inode)), after: Some(attributes) },
        });
    }
    let chunk_size = store.config.chunk_size_bytes;
    let parts = chunk_parts(chunk_size, offset, data.len());
    let mut needed: Vec<(u64, u32, u32)> = Vec::new();
    for part in &parts {
        let container = chunk_container(store, number, part.chunk);
        let first = (part.offset / store.region_size_bytes) as u32;
        let last = ((part.offset + (part.end - part.start) as u64 - 1) / store.region_size_bytes) as u32;
        for region in first..=last {
            needed.push((part.chunk, container, region));
        }
    }
    let (before, after) = loop {
        let entry = entry_for_write(store, fid)?;
        let missing: Vec<(u64, u32, u32)> = {
            let guard = entry.lock();
            if guard.evicted {
                continue;
            }
            check_writable(caller, fid, &guard)?;
            needed
                .iter()
                .filter(|(chunk, _, region)| {
                    !guard.chunks.get(chunk).is_some_and(|state| state.marked.contains(region))
                })
                .copied()
                .collect()
        };
        if !missing.is_empty() {
            match group::submit(store, Op::MarkDirty { inode: number, regions: missing }) {
                Ok(_) => continue,
                Err(StoreError::NotFound) => return Err(StoreError::Stale(fid)),
                Err(error) => return Err(error),
            }
        }
        let stripe = store.stripe(number).write();
        let Some(entry) = store.hot.get(number) else {
            continue;
        };
        let (before, growth) = {
            let mut guard = entry.lock();
            if guard.evicted {
                continue;
            }
            check_writable(caller, fid, &guard)?;
            let all_marked = needed.iter().all(|(chunk, _, region)| {
                guard.chunks.get(chunk).is_some_and(|state| state.marked.contains(region))
            });
            if !all_marked {
                continue;
            }
            // Nothing has changed yet. The size cannot change until this write updates it:
            // size changes hold the stripe (a removal only marks the entry deleted).
            let growth = end.saturating_sub(guard.inode.size_bytes);
            store.reserve_growth(growth)?;
            for part in &parts {
                if let Some(state) = guard.chunks.get_mut(&part.chunk) {
                    state.sequence += 1;
                }
            }
            guard.pins += 1;
            (pre_op(&guard.inode), growth)
        };
        let result = write_locked(store, &entry, number, offset, data, &parts);
        let mut guard = entry.lock();
        guard.pins -= 1;
        let new_blocks = match result {
            Ok(new_blocks) => new_blocks,
            Err(error) => {
                store.release_bytes(growth);
                drop(guard);
                drop(stripe);
                return Err(error);
            }
        };
        if guard.deleted {
            // Removed meanwhile: the removal gave back the size it saw, not this growth.
            store.release_bytes(growth);
        }
        guard.inode.size_bytes = guard.inode.size_bytes.max(end);
        let time = next_ctime(guard.inode.ctime);
        guard.inode.mtime = time;
        guard.inode.ctime = time;
        guard.inode.blocks_used += new_blocks;
        guard.inode.mode = perm::mode_after_write(caller, &guard.inode);
        guard.touch();
        let after = store.attributes(number, &guard.inode);
        break (before, after);
    };
    if store.inline_dirty_bytes.load(Ordering::SeqCst) > store.config.unstable_memory_bytes_max {
        // The write itself succeeded; a full disk only keeps the unstable state in memory
        // longer (COMMIT will report it).
        match group::submit(store, Op::FlushAll) {
            Ok(_) | Err(StoreError::NoSpace) => {}
            Err(error) => return Err(error),
        }
    }
    let mut result = WriteResult {
        count_bytes: data.len() as u32,
        committed: Stability::Unstable,
        verifier: store.write_verifier(),
        file: WccData { before: Some(before), after: Some(after) },
    };
    if stability != Stability::Unstable {
        commit_inode(store, number)?;
        result.committed = Stability::FileSync;
        result.verifier = store.write_verifier();
    }
    store.wait_replicated()?;
    Ok(result)
}

/// The write itself, with the stripe held and the entry pinned. Returns the number of blocks
/// that were holes before.
fn write_locked(
    store: &Store,
    entry: &EntryRef,
    number: u64,
    offset: u64,
    data: &[u8],
    parts: &[ChunkPart],
) -> StoreResult<u64> {
    let available = crate::open::available_bytes(&store.config.data_dir)?;
    if available < store.config.space_reserve_bytes.saturating_add(data.len() as u64) {
        return Err(StoreError::NoSpace);
    }
    // Open and allocate first, so that a full disk fails the write before it changes anything.
    let mut opened = Vec::with_capacity(parts.len());
    for part in parts {
        let container = chunk_container(store, number, part.chunk);
        let (files, created) = open_chunk(store, container, number, part.chunk, true)?
            .ok_or_else(|| StoreError::Io(io::Error::other("chunk files missing after creation")))?;
        if created && let Some(state) = entry.lock().chunks.get_mut(&part.chunk) {
            state.created = true;
        }
        let first = part.offset / BLOCK_U64;
        let last = (part.offset + (part.end - part.start) as u64 - 1) / BLOCK_U64;
        reserve(&files.data, first * BLOCK_U64, (last - first + 1) * BLOCK_U64)?;
        reserve(
            &files.sums,
            CHECKSUM_HEADER_BYTES + first * CHECKSUM_ENTRY_BYTES,
            (last - first + 1) * CHECKSUM_ENTRY_BYTES,
        )?;
        opened.push((files, container));
    }
    let mut new_blocks = 0;
    if offset < INLINE_DATA_BYTES_MAX {
        let inline_end = (offset + data.len() as u64).min(INLINE_DATA_BYTES_MAX);
        new_blocks += write_inline(store, entry, number, offset, &data[..(inline_end - offset) as usize])?;
    }
    for (part, (files, container)) in parts.iter().zip(opened) {
        let written = write_chunk_part(
            store,
            &files,
            number,
            part.chunk,
            container,
            part.offset,
            &data[part.start..part.end],
        );
        match written {
            Ok(count) => new_blocks += count,
            Err(error @ (StoreError::BadBlock(_) | StoreError::Corrupt { .. } | StoreError::NoSpace)) => {
                return Err(error);
            }
            Err(error) => {
                store.poison(format!("write to a chunk file failed: {error}"));
                return Err(error);
            }
        }
        data_container(store, container)?.next_txn(&store.faults)?;
    }
    Ok(new_blocks)
}

fn write_inline(store: &Store, entry: &EntryRef, number: u64, offset: u64, data: &[u8]) -> StoreResult<u64> {
    let end = offset + data.len() as u64;
    let first = (offset / BLOCK_U64) as u32;
    let last = ((end - 1) / BLOCK_U64) as u32;
    let read = tables::begin_read(&store.db)?;
    let table = read.open_table(tables::INLINE).db()?;
    let mut guard = entry.lock();
    guard.touch();
    let generation = guard.generation;
    let mut new_blocks = 0;
    for index in first..=last {
        let block_start = u64::from(index) * BLOCK_U64;
        let from = offset.max(block_start);
        let to = end.min(block_start + BLOCK_U64);
        let whole = from == block_start && to == block_start + BLOCK_U64;
        let mut block = match guard.inline_dirty.remove(&index) {
            Some(block) => {
                store.inline_dirty_bytes.fetch_sub(BLOCK_U64, Ordering::SeqCst);
                block.data
            }
            None => match table.get((number, index)).db()? {
                Some(bytes) if whole => {
                    drop(bytes);
                    vec![0u8; BLOCK]
                }
                Some(bytes) => format::decode_inline(bytes.value(), number, index)?,
                None => {
                    new_blocks += 1;
                    vec![0u8; BLOCK]
                }
            },
        };
        block[(from - block_start) as usize..(to - block_start) as usize]
            .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        guard.inline_dirty.insert(index, InlineBlock { data: block, generation });
        store.inline_dirty_bytes.fetch_add(BLOCK_U64, Ordering::SeqCst);
    }
    Ok(new_blocks)
}

fn write_chunk_part(
    store: &Store,
    files: &ChunkFiles,
    number: u64,
    chunk: u64,
    container: u32,
    offset: u64,
    data: &[u8],
) -> StoreResult<u64> {
    let end = offset + data.len() as u64;
    let first = offset / BLOCK_U64;
    let last = (end - 1) / BLOCK_U64;
    let count = last - first + 1;
    let old = read_sums(&files.sums, first, count)?;
    let head_partial = !offset.is_multiple_of(BLOCK_U64) || (count == 1 && !end.is_multiple_of(BLOCK_U64));
    let tail_partial = !end.is_multiple_of(BLOCK_U64);
    if !head_partial && !tail_partial {
        // Whole blocks: written as they came, without a copy.
        return write_blocks(store, files, (number, chunk, container), first, data, &old);
    }
    let mut buffer = vec![0u8; (count * BLOCK_U64) as usize];
    let load = |index: u64, buffer: &mut [u8]| -> StoreResult<()> {
        let sum = old[index as usize];
        if !sum.written {
            return Ok(());
        }
        let block = &mut buffer[(index * BLOCK_U64) as usize..((index + 1) * BLOCK_U64) as usize];
        read_full_at(&files.data, block, (first + index) * BLOCK_U64)?;
        if crc32c::crc32c(block) != sum.crc {
            return Err(block_mismatch(number, chunk, container, first + index));
        }
        Ok(())
    };
    if head_partial {
        load(0, &mut buffer)?;
    }
    if tail_partial && count > 1 {
        load(count - 1, &mut buffer)?;
    }
    let skip = (offset - first * BLOCK_U64) as usize;
    buffer[skip..skip + data.len()].copy_from_slice(data);
    write_blocks(store, files, (number, chunk, container), first, &buffer, &old)
}

/// Writes whole blocks and their checksum entries from block `first` of a chunk, and
/// replicates them. Returns how many of them were holes (`old`: their entries before).
fn write_blocks(
    store: &Store,
    files: &ChunkFiles,
    (number, chunk, container): (u64, u64, u32),
    first: u64,
    blocks: &[u8],
    old: &[BlockSum],
) -> StoreResult<u64> {
    let sums: Vec<BlockSum> = blocks
        .chunks_exact(BLOCK)
        .map(|block| BlockSum { crc: crc32c::crc32c(block), written: true })
        .collect();
    store.faults.check_data_write()?;
    files.data.write_all_at(blocks, first * BLOCK_U64)?;
    write_sums(&files.sums, first, &sums)?;
    let new_blocks = old.iter().filter(|sum| !sum.written).count() as u64;
    if store.is_replicated() {
        // Under the file's stripe lock (held by the writer): ordered with truncations.
        store.replicate(RecordBody::ChunkWrite {
            container,
            inode: number,
            chunk,
            first_block: first,
            data: blocks.to_vec(),
            crcs: sums.iter().map(|sum| sum.crc).collect(),
        })?;
    }
    Ok(new_blocks)
}

// ---- COMMIT ----

/// Makes every earlier write to the inode durable.
pub(crate) fn commit_inode(store: &Store, number: u64) -> StoreResult<()> {
    commit_inodes(store, &[number])
}

/// Makes every earlier write to these inodes durable: fdatasync of their chunk files, then one
/// metadata commit for all of them.
pub(crate) fn commit_inodes(store: &Store, numbers: &[u64]) -> StoreResult<()> {
    store.check_poisoned()?;
    let mut items = Vec::new();
    let mut opened: Vec<(Arc<ChunkFiles>, bool)> = Vec::new();
    let mut synced_chunks = false;
    for &number in numbers {
        let Some(entry) = store.hot.get(number) else {
            continue;
        };
        let snapshot: Vec<(u64, u64, u32, bool)> = {
            let _stripe = store.stripe(number).read();
            let guard = entry.lock();
            if guard.deleted || guard.evicted || !guard.has_unstable() {
                continue;
            }
            guard
                .chunks
                .iter()
                .map(|(&chunk, state)| (chunk, state.sequence, state.container, state.created))
                .collect()
        };
        let mut clear = Vec::with_capacity(snapshot.len());
        for (chunk, sequence, container, created) in snapshot {
            if let Some((files, _)) = open_chunk(store, container, number, chunk, false)? {
                opened.push((files, created));
            }
            clear.push((chunk, sequence));
        }
        items.push((number, clear));
    }
    let all: Vec<&File> = opened.iter().flat_map(|(files, _)| [&files.data, &files.sums]).collect();
    let started = std::time::Instant::now();
    sync_together(&all, |file| sync_file(store, file))?;
    tracing::debug!(
        inodes = items.len(),
        files = all.len(),
        sync_us = started.elapsed().as_micros() as u64,
        "commit synced chunk files"
    );
    for (files, created) in &opened {
        if *created {
            sync_dir(store, &files.dir)?;
        }
        synced_chunks = true;
    }
    // The replicas sync too, after the writes synced here and before the batch that clears the
    // dirty-region intents.
    if synced_chunks {
        store.replicate(RecordBody::Sync)?;
    }
    if !items.is_empty() {
        group::submit(store, Op::Flush { items })?;
    }
    Ok(())
}

// ---- inside a batch ----

pub(crate) fn apply_mark_dirty(
    store: &Store,
    b: &mut Batch<'_>,
    number: u64,
    regions: &[(u64, u32, u32)],
) -> StoreResult<()> {
    let entry = b.entry(store, number)?.ok_or(StoreError::NotFound)?;
    if entry.lock().inode.kind != FileKind::Regular {
        return Err(StoreError::NotFound);
    }
    b.need_space(SpaceUse::Consume, 0)?;
    b.begin_mutation();
    let mut by_chunk: std::collections::BTreeMap<(u64, u32), Vec<u32>> = std::collections::BTreeMap::new();
    for &(chunk, container, region) in regions {
        if b.chunks.get((number, chunk)).db()?.is_none() {
            b.put_chunk(number, chunk, container)?;
        }
        b.put_dirty(number, chunk, region)?;
        by_chunk.entry((chunk, container)).or_default().push(region);
    }
    for ((chunk, container), regions) in by_chunk {
        b.post.push(Post::SetMarks { entry: entry.clone(), chunk, container, regions });
    }
    Ok(())
}

pub(crate) fn apply_flush(
    store: &Store,
    b: &mut Batch<'_>,
    items: &[(u64, Vec<(u64, u64)>)],
) -> StoreResult<()> {
    let mut entries = Vec::with_capacity(items.len());
    let mut inline_bytes = 0;
    for (number, clear) in items {
        let Some(entry) = store.hot.get(*number) else {
            continue;
        };
        let guard = entry.lock();
        if guard.deleted || guard.evicted {
            continue;
        }
        inline_bytes += guard.inline_dirty.len() as u64 * BLOCK_U64;
        drop(guard);
        entries.push((*number, entry, clear));
    }
    b.need_space(SpaceUse::Consume, inline_bytes)?;
    b.begin_mutation();
    for (number, entry, clear) in entries {
        for &(chunk, sequence) in clear {
            let regions = {
                let mut guard = entry.lock();
                match guard.chunks.get(&chunk) {
                    // Invariant: marks leave memory before their rows leave the database.
                    Some(state) if state.sequence == sequence => {
                        guard.chunks.remove(&chunk).map(|state| state.marked).unwrap_or_default()
                    }
                    _ => continue,
                }
            };
            for region in regions {
                b.del_dirty(number, chunk, region)?;
            }
        }
        b.flush_inline_of(&entry);
    }
    Ok(())
}

/// Deletes an inode (its last link is gone) inside a batch; its chunk files go after the
/// commit.
pub(crate) fn delete_inode(store: &Store, b: &mut Batch<'_>, entry: &EntryRef) -> StoreResult<()> {
    let number = {
        let mut guard = entry.lock();
        guard.deleted = true;
        if guard.inode.kind == FileKind::Regular {
            store.release_bytes(guard.inode.size_bytes);
        }
        let dirty_blocks = guard.inline_dirty.len() as u64;
        guard.inline_dirty.clear();
        store.inline_dirty_bytes.fetch_sub(dirty_blocks * BLOCK_U64, Ordering::SeqCst);
        guard.chunks.clear();
        guard.number
    };
    b.del_inode(number)?;
    let mut inline_blocks = Vec::new();
    for row in b.inline.range((number, 0)..=(number, INLINE_BLOCKS)).db()? {
        inline_blocks.push(row.db()?.0.value().1);
    }
    for index in inline_blocks {
        b.take_inline(number, index)?;
    }
    let chunks = group::chunk_rows(b, number)?;
    for &(chunk, _) in &chunks {
        b.del_chunk(number, chunk)?;
    }
    group::remove_dirty_rows(b, number, None)?;
    if !chunks.is_empty() {
        b.put_pending_delete(number, format::encode_chunk_list(&chunks).as_slice())?;
    }
    b.post.push(Post::DeleteFiles { number, chunks });
    Ok(())
}

/// Removes the chunk files of a deleted inode (after its removal committed; or at recovery,
/// when its `pending_delete` row is still there).
pub(crate) fn delete_chunk_files(store: &Store, number: u64, chunks: &[(u64, u32)]) {
    let _stripe = store.stripe(number).write();
    for &(chunk, container) in chunks {
        store.files.lock().remove(&(number, chunk));
        let (data, sums, _) = chunk_paths(&container_dir(store, container), number, chunk);
        for path in [data, sums] {
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "removing a chunk file failed");
            }
        }
    }
    // After the effect, like every chunk record: a full copy whose sequence number is this
    // record's or later must not find the files any more.
    if store.is_replicated()
        && let Err(error) =
            store.replicate(RecordBody::ChunkDelete { inode: number, chunks: chunks.to_vec() })
    {
        tracing::warn!(inode = number, %error, "replicating a deletion failed");
    }
}

/// Checks, before a truncation changes anything, that the block the new end falls into is
/// intact: truncation rewrites that block, and must not turn corrupt bytes into valid ones.
pub(crate) fn check_truncate(
    store: &Store,
    b: &Batch<'_>,
    entry: &EntryRef,
    new_size: u64,
) -> StoreResult<()> {
    if new_size.is_multiple_of(BLOCK_U64) {
        return Ok(());
    }
    let number = entry.lock().number;
    if new_size < INLINE_DATA_BYTES_MAX {
        let index = (new_size / BLOCK_U64) as u32;
        if entry.lock().inline_dirty.contains_key(&index) {
            return Ok(());
        }
        if let Some(bytes) = b.inline.get((number, index)).db()? {
            format::decode_inline(bytes.value(), number, index)?;
        }
        return Ok(());
    }
    let chunk_size = store.config.chunk_size_bytes;
    let chunk = new_size / chunk_size;
    let Some(container) = b.chunks.get((number, chunk)).db()?.map(|value| value.value()) else {
        return Ok(());
    };
    data_container(store, container)?;
    let Some((files, _)) = open_chunk(store, container, number, chunk, false)? else {
        return Ok(());
    };
    let index = (new_size - chunk * chunk_size) / BLOCK_U64;
    let sum = read_sums(&files.sums, index, 1)?[0];
    if sum.written {
        let mut block = vec![0u8; BLOCK];
        read_full_at(&files.data, &mut block, index * BLOCK_U64)?;
        if crc32c::crc32c(&block) != sum.crc {
            return Err(block_mismatch(number, chunk, container, index));
        }
    }
    Ok(())
}

/// Shrinks a file's data from `old_size` to `new_size` inside a batch, durably before the
/// batch commits: inline blocks past the end go (the partial one is zero-filled), chunk files
/// past the end are removed, the last chunk is cut and its partial block zero-filled. Later
/// growth then reads zeros. The caller holds the file's stripe.
pub(crate) fn truncate_down(
    store: &Store,
    b: &mut Batch<'_>,
    entry: &EntryRef,
    old_size: u64,
    new_size: u64,
) -> StoreResult<()> {
    let _ = old_size;
    let number = entry.lock().number;
    let mut freed_blocks = 0u64;
    // Inline blocks.
    if new_size < INLINE_DATA_BYTES_MAX {
        let partial_index = (new_size / BLOCK_U64) as u32;
        let keep_in_partial = (new_size % BLOCK_U64) as usize;
        let mut guard = entry.lock();
        guard.touch();
        let generation = guard.generation;
        for index in partial_index..INLINE_BLOCKS {
            let dirty = guard.inline_dirty.remove(&index);
            if dirty.is_some() {
                store.inline_dirty_bytes.fetch_sub(BLOCK_U64, Ordering::SeqCst);
            }
            let stored = b.take_inline(number, index)?;
            let current = match (dirty, stored) {
                (Some(block), _) => Some(block.data),
                // `check_truncate` verified the partial block; the others are being dropped, so
                // their contents do not matter.
                (None, Some(bytes)) => {
                    Some(format::decode_inline(&bytes, number, index).unwrap_or_else(|_| vec![0; BLOCK]))
                }
                (None, None) => None,
            };
            let Some(mut block) = current else {
                continue;
            };
            if index == partial_index && keep_in_partial > 0 {
                block[keep_in_partial..].fill(0);
                guard.inline_dirty.insert(index, InlineBlock { data: block, generation });
                store.inline_dirty_bytes.fetch_add(BLOCK_U64, Ordering::SeqCst);
            } else {
                freed_blocks += 1;
            }
        }
        drop(guard);
        b.flush_inline_of(entry);
    }
    // Chunks.
    let chunk_size = store.config.chunk_size_bytes;
    let mut dirs_to_sync: Vec<PathBuf> = Vec::new();
    for (chunk, container) in group::chunk_rows(b, number)? {
        let chunk_start = chunk * chunk_size;
        if chunk_start + chunk_size <= new_size {
            continue;
        }
        let keep = new_size.saturating_sub(chunk_start);
        let files = open_chunk(store, container, number, chunk, false)?;
        data_container(store, container)?.next_txn(&store.faults)?;
        if keep == 0 {
            if let Some((files, _)) = &files {
                freed_blocks += count_written(&files.sums, 0)?;
            }
            drop(files);
            store.files.lock().remove(&(number, chunk));
            let (data, sums, dir) = chunk_paths(&container_dir(store, container), number, chunk);
            for path in [data, sums] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(StoreError::Io(error)),
                }
            }
            if !dirs_to_sync.contains(&dir) {
                dirs_to_sync.push(dir);
            }
            b.del_chunk(number, chunk)?;
            group::remove_dirty_rows(b, number, Some(chunk))?;
            entry.lock().chunks.remove(&chunk);
            store.replicate(RecordBody::ChunkTruncate {
                container,
                inode: number,
                chunk,
                blocks: 0,
                tail: None,
            })?;
            continue;
        }
        let Some((files, _)) = files else {
            continue;
        };
        let first_gone = keep.div_ceil(BLOCK_U64);
        freed_blocks += count_written(&files.sums, first_gone)?;
        let mut tail = None;
        if !keep.is_multiple_of(BLOCK_U64) {
            let index = keep / BLOCK_U64;
            let sum = read_sums(&files.sums, index, 1)?[0];
            if sum.written {
                let mut block = vec![0u8; BLOCK];
                read_full_at(&files.data, &mut block, index * BLOCK_U64)?;
                block[(keep % BLOCK_U64) as usize..].fill(0);
                files.data.write_all_at(&block, index * BLOCK_U64)?;
                let crc = crc32c::crc32c(&block);
                write_sums(&files.sums, index, &[BlockSum { crc, written: true }])?;
                tail = Some(Block { data: block, crc });
            }
        }
        files.sums.set_len(CHECKSUM_HEADER_BYTES + first_gone * CHECKSUM_ENTRY_BYTES)?;
        files.data.set_len(first_gone * BLOCK_U64)?;
        sync_file(store, &files.data)?;
        sync_file(store, &files.sums)?;
        // Under the file's stripe lock (held by the setattr), before the batch's own record.
        store.replicate(RecordBody::ChunkTruncate {
            container,
            inode: number,
            chunk,
            blocks: first_gone,
            tail,
        })?;
    }
    for dir in dirs_to_sync {
        sync_dir(store, &dir)?;
    }
    let mut guard = entry.lock();
    guard.inode.blocks_used = guard.inode.blocks_used.saturating_sub(freed_blocks);
    guard.touch();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{READ_AHEAD_BYTES, read_ahead_range};

    const MIB: u64 = 1 << 20;
    const AHEAD: u64 = READ_AHEAD_BYTES;

    #[test]
    fn a_stream_is_read_ahead_once_and_only_beyond_what_was_asked() {
        // The first read of a chunk at its start asks for the whole window.
        assert_eq!(read_ahead_range(u64::MAX, 0, 0, MIB), Some((MIB, MIB + AHEAD)));
        // The next read asks only for the new megabyte at the far end.
        assert_eq!(read_ahead_range(MIB, MIB + AHEAD, MIB, MIB), Some((MIB + AHEAD, 2 * MIB + AHEAD)));
        // A read that arrives after a later one of the same stream asks for nothing.
        assert_eq!(read_ahead_range(4 * MIB, 4 * MIB + AHEAD, 2 * MIB, MIB), None);
    }

    #[test]
    fn random_reads_are_not_read_ahead() {
        // The first read of a chunk elsewhere than its start.
        assert_eq!(read_ahead_range(u64::MAX, 0, 100 * MIB, MIB), None);
        // A jump further than the window from the previous read.
        assert_eq!(read_ahead_range(MIB, MIB + AHEAD, 2 * MIB + AHEAD, MIB), None);
        assert_eq!(read_ahead_range(100 * MIB, 0, MIB, MIB), None);
    }

    #[test]
    fn a_second_pass_over_a_chunk_is_read_ahead_again() {
        // The stream restarts at 1 MiB while `advised` still says 264 MiB from the first pass.
        assert_eq!(read_ahead_range(MIB, 256 * MIB + AHEAD, MIB, MIB), Some((2 * MIB, 2 * MIB + AHEAD)));
    }
}
