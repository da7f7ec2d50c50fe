//! Opening a store: creating containers on first use, checking format versions, and recovery
//! after a crash (dirty-region checksums, removals whose files were not yet deleted).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use cairn_types::limits::{BLOCK_SIZE_BYTES, INLINE_DATA_BYTES_MAX};
use cairn_types::{ClusterId, Epoch, Fid, VolumeId};
use parking_lot::{Mutex, RwLock};
use redb::{ReadableDatabase, ReadableTable};

use crate::api::{FileKind, StoreError, StoreResult};
use crate::data::{self, DataContainer, REGION_SIZE_BYTES_MAX};
use crate::faults::{DatabaseBackend, Faults};
use crate::format::{
    self, BLOCK, BlockSum, CHECKSUM_ENTRY_BYTES, CHECKSUM_HEADER_BYTES, ContainerKind, ContainerMeta,
    DATABASE_FORMAT_VERSION, Inode,
};
use crate::group::GroupCommit;
use crate::hot::HotTable;
use crate::journal::{Change, Journal, TableId, keys};
use crate::replication::{self, RecordBody, Replicator, RowChange};
use crate::tables::{self, Db};
use crate::{DATA_STRIPES, NAME_CONTAINER_ID, Store, StoreConfig, now, random_nonzero_u32, stable_hash};

const ROOT_INODE: u64 = 1;
const VOLUME_ID: u32 = 1;

pub(crate) fn statvfs(path: &Path) -> StoreResult<libc::statvfs> {
    let path =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| StoreError::Invalid("path contains NUL"))?;
    let mut stat = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory of
    // the right type; statvfs initialises it on success.
    let result = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if result != 0 {
        return Err(StoreError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    Ok(unsafe { stat.assume_init() })
}

/// Total and available bytes (`f_blocks`, `f_bavail`) of the file system holding `path`.
pub fn disk_space(path: &Path) -> StoreResult<(u64, u64)> {
    let stat = statvfs(path)?;
    let fragment = stat.f_frsize as u64;
    Ok(((stat.f_blocks as u64).saturating_mul(fragment), (stat.f_bavail as u64).saturating_mul(fragment)))
}

pub(crate) fn available_bytes(path: &Path) -> StoreResult<u64> {
    let stat = statvfs(path)?;
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn read_or_create_meta(dir: &Path, fresh: ContainerMeta, faults: &Faults) -> StoreResult<ContainerMeta> {
    let path = dir.join("container.meta");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta = ContainerMeta::decode(&bytes, &path)?;
            if meta.kind != fresh.kind || meta.container != fresh.container {
                return Err(StoreError::Corrupt {
                    what: format!("container metadata {}", path.display()),
                    offset: 0,
                });
            }
            Ok(meta)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            data::write_file_atomically(&path, &fresh.encode(), faults)?;
            Ok(fresh)
        }
        Err(error) => Err(StoreError::Io(error)),
    }
}

fn create_dir_durably(path: &Path) -> StoreResult<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(data::io_error)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Checks the settings a store and a replica both need.
pub(crate) fn check_config(config: &StoreConfig) -> StoreResult<()> {
    if !config.chunk_size_bytes.is_multiple_of(BLOCK_SIZE_BYTES)
        || config.chunk_size_bytes < INLINE_DATA_BYTES_MAX
    {
        return Err(StoreError::Invalid("chunk size must be a multiple of 8 KiB and at least 64 KiB"));
    }
    if config.data_containers == 0 || config.data_containers > 1024 {
        return Err(StoreError::Invalid("between 1 and 1024 data containers"));
    }
    Ok(())
}

/// The name container: its directory and `container.meta`, its database and its journal
/// (created on first use).
pub(crate) fn open_name_database(
    config: &StoreConfig,
    faults: &Arc<Faults>,
    volume: VolumeId,
) -> StoreResult<(ContainerMeta, redb::Database, Journal)> {
    let name_dir = config.data_dir.join("containers").join(NAME_CONTAINER_ID.0.to_string());
    create_dir_durably(&name_dir)?;
    let name_meta = read_or_create_meta(
        &name_dir,
        ContainerMeta {
            container: NAME_CONTAINER_ID.0,
            kind: ContainerKind::Name,
            volume: volume.0,
            epoch: 1,
            txn_reserved_until: 0,
        },
        faults,
    )?;
    let db_path = name_dir.join("name.redb");
    let existed = db_path.exists();
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&db_path)?;
    if !existed {
        File::open(&name_dir)?.sync_all()?;
    }
    let backend = DatabaseBackend::new(file, faults.clone()).db()?;
    let db = redb::Database::builder().create_with_backend(backend).db()?;
    let journal = Journal::open(&name_dir.join("journal"), config.journal_bytes.max(1 << 20))?;
    Ok((name_meta, db, journal))
}

/// Replays the journal: the batches of `generation`, committed after redb's last durable
/// commit. Then starts a new generation, so that no record of this one is ever replayed again.
pub(crate) fn replay_journal(
    write: &redb::WriteTransaction,
    journal: &mut Journal,
    generation: u64,
) -> StoreResult<()> {
    let records = journal.replay(generation)?;
    if !records.is_empty() {
        tracing::info!(records = records.len(), "replaying the metadata journal");
    }
    for change in records.iter().flatten() {
        replay_change(write, change)?;
    }
    journal.restart(generation + 1);
    write.open_table(tables::META).db()?.insert("journal_generation", generation + 1).db()?;
    Ok(())
}

/// Creates every table, so that readers never meet a missing one.
pub(crate) fn create_tables(write: &redb::WriteTransaction) -> StoreResult<()> {
    write.open_table(tables::INODES).db()?;
    write.open_table(tables::DIRENTS).db()?;
    write.open_table(tables::COOKIES).db()?;
    write.open_table(tables::INLINE).db()?;
    write.open_table(tables::CHUNKS).db()?;
    write.open_table(tables::DIRTY).db()?;
    write.open_table(tables::PENDING_DELETE).db()?;
    Ok(())
}

/// The data containers: directories (with their fan-out directories) and `container.meta`,
/// created on first use.
pub(crate) fn open_data_containers(
    config: &StoreConfig,
    faults: &Faults,
    volume: VolumeId,
) -> StoreResult<Vec<DataContainer>> {
    let containers_dir = config.data_dir.join("containers");
    let mut containers = Vec::new();
    for id in 2..2 + config.data_containers {
        let dir = containers_dir.join(id.to_string());
        create_dir_durably(&dir)?;
        let chunks_dir = dir.join("chunks");
        if !chunks_dir.join("ff").is_dir() {
            for fanout in 0..256u64 {
                std::fs::create_dir_all(data::fanout_dir(&dir, fanout)).map_err(data::io_error)?;
            }
            File::open(&chunks_dir)?.sync_all()?;
            File::open(&dir)?.sync_all()?;
        }
        let meta = read_or_create_meta(
            &dir,
            ContainerMeta {
                container: id,
                kind: ContainerKind::Data,
                volume: volume.0,
                epoch: 1,
                txn_reserved_until: 1,
            },
            faults,
        )?;
        containers.push(DataContainer::new(dir, meta));
    }
    Ok(containers)
}

pub(crate) fn open(config: StoreConfig) -> StoreResult<Store> {
    open_with(config, None)
}

/// Opens a store; with a replicator, as its volume's master (see [`crate::replication`]): a new
/// volume's rows are its first record, recovery's changes are replicated, and the store is
/// returned once they are acknowledged.
pub(crate) fn open_with(
    mut config: StoreConfig,
    replicator: Option<Arc<dyn Replicator>>,
) -> StoreResult<Store> {
    check_config(&config)?;
    let identity_volume = config.identity.map_or(VolumeId(VOLUME_ID), |(_, volume)| volume);
    let faults = Arc::new(Faults::default());
    let (name_meta, db, mut journal) = open_name_database(&config, &faults, identity_volume)?;

    // First use: identity, counters and the root directory.
    let write = db.begin_write().db()?;
    let (generation, created) = {
        let mut meta = write.open_table(tables::META).db()?;
        let version = meta.get("format_version").db()?.map(|value| value.value());
        match version {
            Some(DATABASE_FORMAT_VERSION) => {}
            Some(_) => return Err(StoreError::Invalid("unknown name container format version")),
            None => {
                meta.insert("format_version", DATABASE_FORMAT_VERSION).db()?;
                let cluster_id = match config.identity {
                    Some((cluster, _)) => cluster.0,
                    None => u64::from(random_nonzero_u32()) << 32 | u64::from(random_nonzero_u32()),
                };
                meta.insert("cluster_id", cluster_id).db()?;
                meta.insert("volume_id", u64::from(identity_volume.0)).db()?;
                meta.insert("next_inode", ROOT_INODE + 1).db()?;
                meta.insert("txn_id", 0).db()?;
                meta.insert("used_bytes", 0).db()?;
                meta.insert("data_containers", u64::from(config.data_containers)).db()?;
                meta.insert("journal_generation", 1).db()?;
                let time = now();
                let root = Inode {
                    kind: FileKind::Directory,
                    mode: 0o755,
                    nlink: 2,
                    uid: 0,
                    gid: 0,
                    size_bytes: 0,
                    blocks_used: 0,
                    rdev: (0, 0),
                    atime: time,
                    mtime: time,
                    ctime: time,
                    uniquifier: random_nonzero_u32(),
                    parent: ROOT_INODE,
                    next_cookie: 3,
                    entries: 0,
                    create_verifier: None,
                    target: Vec::new(),
                };
                let mut inodes = write.open_table(tables::INODES).db()?;
                inodes.insert(ROOT_INODE, root.encode().as_slice()).db()?;
            }
        }
        let get = |key: &str| -> StoreResult<u64> {
            meta.get(key)
                .db()?
                .map(|value| value.value())
                .ok_or_else(|| StoreError::Corrupt { what: format!("meta key {key}"), offset: 0 })
        };
        config.data_containers = get("data_containers")? as u32;
        (get("journal_generation")?, version.is_none())
    };
    replay_journal(&write, &mut journal, generation)?;
    let (cluster, volume, next_inode, txn_id, position, used_bytes) = {
        let meta = write.open_table(tables::META).db()?;
        let optional =
            |key: &str| -> StoreResult<Option<u64>> { Ok(meta.get(key).db()?.map(|value| value.value())) };
        // A replica's directory: it may hold no volume (yet).
        if optional("resync_incomplete")?.unwrap_or(0) != 0 {
            return Err(StoreError::Invalid(
                "a full resync into this directory did not finish: no volume to open",
            ));
        }
        if optional("next_inode")?.is_none() {
            return Err(StoreError::Invalid("this directory holds an empty replica: no volume to open"));
        }
        let get = |key: &str| -> StoreResult<u64> {
            optional(key)?.ok_or_else(|| StoreError::Corrupt { what: format!("meta key {key}"), offset: 0 })
        };
        let volume = u32::try_from(get("volume_id")?)
            .map_err(|_| StoreError::Corrupt { what: "meta key volume_id".to_string(), offset: 0 })?;
        (
            ClusterId(get("cluster_id")?),
            VolumeId(volume),
            get("next_inode")?,
            get("txn_id")?,
            optional("replication_position")?.unwrap_or(0),
            optional("used_bytes")?,
        )
    };
    // A store made before the row existed: counted once here; its first batch writes the row
    // (and replicates it), so that replicas, which hold the same rows, get it at the same point.
    let used_bytes = match used_bytes {
        Some(bytes) => bytes,
        None => {
            let bytes = count_used_bytes(&write.open_table(tables::INODES).db()?)?;
            tracing::info!(used_bytes = bytes, "counted the volume's used bytes");
            bytes
        }
    };
    create_tables(&write)?;
    write.commit().db()?;

    let containers = open_data_containers(&config, &faults, volume)?;

    let root_inode = {
        let read = db.begin_read().db()?;
        tables::read_inode(&read, ROOT_INODE)?
            .ok_or_else(|| StoreError::Corrupt { what: "root directory".to_string(), offset: 0 })?
    };
    let mut identity = Vec::new();
    identity.extend_from_slice(&cluster.0.to_le_bytes());
    identity.extend_from_slice(&volume.0.to_le_bytes());
    let region_size_bytes = config.chunk_size_bytes.min(REGION_SIZE_BYTES_MAX);
    let store = Store {
        db,
        faults,
        cluster,
        volume,
        fsid: stable_hash(&identity),
        root: Fid { container: NAME_CONTAINER_ID, inode: ROOT_INODE, uniquifier: root_inode.uniquifier },
        epoch: Epoch(name_meta.epoch),
        verifier: Mutex::new(rand::random()),
        poisoned: AtomicBool::new(false),
        poison_reason: Mutex::new(String::new()),
        hot: HotTable::new(),
        stripes: (0..DATA_STRIPES).map(|_| RwLock::new(())).collect(),
        group: GroupCommit::new(next_inode, txn_id, used_bytes),
        journal: Mutex::new(journal),
        files: Mutex::new(HashMap::new()),
        containers,
        inline_dirty_bytes: AtomicU64::new(0),
        region_size_bytes,
        finished_deletes: Mutex::new(Vec::new()),
        repl: replication::Link::new(replicator, position),
        used_bytes: AtomicU64::new(used_bytes),
        quota_bytes: AtomicU64::new(config.quota_bytes.unwrap_or(u64::MAX)),
        config,
    };
    if created && store.is_replicated() {
        replication::send_initial_state(&store)?;
    }
    recover(&store)?;
    store.wait_replicated()?;
    Ok(store)
}

/// The sum of the sizes of the regular files in an inode table (the `used_bytes` row).
pub(crate) fn count_used_bytes(inodes: &impl ReadableTable<u64, &'static [u8]>) -> StoreResult<u64> {
    let mut total = 0u64;
    for row in inodes.iter().db()? {
        let (_, value) = row.db()?;
        total = total.wrapping_add(Inode::used_bytes_of(value.value())?);
    }
    Ok(total)
}

fn bad_record() -> StoreError {
    StoreError::Corrupt { what: "metadata journal change".to_string(), offset: 0 }
}

fn u64_at(bytes: &[u8], at: usize) -> StoreResult<u64> {
    let slice = bytes.get(at..at + 8).ok_or_else(bad_record)?;
    Ok(u64::from_le_bytes(slice.try_into().map_err(|_| bad_record())?))
}

fn u32_at(bytes: &[u8], at: usize) -> StoreResult<u32> {
    let slice = bytes.get(at..at + 4).ok_or_else(bad_record)?;
    Ok(u32::from_le_bytes(slice.try_into().map_err(|_| bad_record())?))
}

/// Applies one journaled change (keys as `journal::keys` encodes them).
pub(crate) fn replay_change(write: &redb::WriteTransaction, change: &Change) -> StoreResult<()> {
    let key = change.key.as_slice();
    let value = change.value.as_deref();
    match change.table {
        TableId::Meta => {
            let name = std::str::from_utf8(key).map_err(|_| bad_record())?;
            let mut table = write.open_table(tables::META).db()?;
            match value {
                Some(value) => table.insert(name, u64_at(value, 0)?).db()?,
                None => table.remove(name).db()?,
            };
        }
        TableId::Inodes | TableId::PendingDelete => {
            let definition =
                if change.table == TableId::Inodes { tables::INODES } else { tables::PENDING_DELETE };
            let mut table = write.open_table(definition).db()?;
            match value {
                Some(value) => table.insert(u64_at(key, 0)?, value).db()?,
                None => table.remove(u64_at(key, 0)?).db()?,
            };
        }
        TableId::Dirents => {
            let mut table = write.open_table(tables::DIRENTS).db()?;
            let name = key.get(8..).ok_or_else(bad_record)?;
            match value {
                Some(value) => table.insert((u64_at(key, 0)?, name), value).db()?,
                None => table.remove((u64_at(key, 0)?, name)).db()?,
            };
        }
        TableId::Cookies => {
            let mut table = write.open_table(tables::COOKIES).db()?;
            let pair = (u64_at(key, 0)?, u64_at(key, 8)?);
            match value {
                Some(value) => table.insert(pair, value).db()?,
                None => table.remove(pair).db()?,
            };
        }
        TableId::Inline => {
            let mut table = write.open_table(tables::INLINE).db()?;
            let pair = (u64_at(key, 0)?, u32_at(key, 8)?);
            match value {
                Some(value) => table.insert(pair, value).db()?,
                None => table.remove(pair).db()?,
            };
        }
        TableId::Chunks => {
            let mut table = write.open_table(tables::CHUNKS).db()?;
            let pair = (u64_at(key, 0)?, u64_at(key, 8)?);
            match value {
                Some(value) => table.insert(pair, u32_at(value, 0)?).db()?,
                None => table.remove(pair).db()?,
            };
        }
        TableId::Dirty => {
            let mut table = write.open_table(tables::DIRTY).db()?;
            let triple = (u64_at(key, 0)?, u64_at(key, 8)?, u32_at(key, 16)?);
            match value {
                Some(_) => table.insert(triple, ()).db()?,
                None => table.remove(triple).db()?,
            };
        }
    }
    Ok(())
}

/// Recovery after a crash: re-derive the checksums of regions that had unstable writes (the
/// data there was never acknowledged as stable, so old or new bytes are both acceptable, but the
/// checksums must match what is on disk), make blocks past the durable end of file holes again,
/// recount used blocks, and delete the files of removed inodes.
///
/// A replicated store replicates all of it: the deletions, then for every dirty region its
/// image as recovery leaves it (a replica's copy of the region may differ: writes that were
/// not synced before a crash), a sync, and the rows of the final commit.
fn recover(store: &Store) -> StoreResult<()> {
    let read = store.db.begin_read().db()?;
    let mut dirty: BTreeMap<(u64, u64), BTreeSet<u32>> = BTreeMap::new();
    for row in read.open_table(tables::DIRTY).db()?.iter().db()? {
        let (key, _) = row.db()?;
        let (inode, chunk, region) = key.value();
        dirty.entry((inode, chunk)).or_default().insert(region);
    }
    let mut pending = Vec::new();
    for row in read.open_table(tables::PENDING_DELETE).db()?.iter().db()? {
        let (key, value) = row.db()?;
        pending.push((key.value(), format::decode_chunk_list(value.value())?));
    }
    if dirty.is_empty() && pending.is_empty() {
        return Ok(());
    }
    tracing::info!(regions = dirty.len(), removals = pending.len(), "recovering after an unclean shutdown");
    for (number, chunks) in &pending {
        data::delete_chunk_files(store, *number, chunks);
    }
    let chunk_size = store.config.chunk_size_bytes;
    let block = BLOCK_SIZE_BYTES;
    let chunks_table = read.open_table(tables::CHUNKS).db()?;
    let mut affected: BTreeMap<u64, Inode> = BTreeMap::new();
    for ((number, chunk), regions) in &dirty {
        let Some(inode) = tables::read_inode(&read, *number)? else {
            continue;
        };
        let container = match chunks_table.get((*number, *chunk)).db()? {
            Some(value) => value.value(),
            None => data::chunk_container(store, *number, *chunk),
        };
        affected.insert(*number, inode.clone());
        // (first block, number of blocks) of a region; `None` past the end of the chunk.
        let region_blocks = |region: u32| -> Option<(u64, u64)> {
            let region_start = u64::from(region) * store.region_size_bytes;
            let region_end = (region_start + store.region_size_bytes).min(chunk_size);
            (region_start < region_end)
                .then(|| (region_start / block, (region_end - region_start).div_ceil(block)))
        };
        let Some((files, _)) = data::open_chunk(store, container, *number, *chunk, false)? else {
            if store.is_replicated() {
                for (first, count) in regions.iter().filter_map(|&region| region_blocks(region)) {
                    replication::send_region_image(store, (container, *number, *chunk), None, first, count)?;
                }
            }
            continue;
        };
        let size = inode.size_bytes;
        for &region in regions {
            let Some((first, count)) = region_blocks(region) else {
                continue;
            };
            let mut sums = data::read_sums(&files.sums, first, count)?;
            let mut buffer = vec![0u8; BLOCK];
            for (index, sum) in sums.iter_mut().enumerate() {
                if !sum.written {
                    continue;
                }
                let block_offset = (first + index as u64) * block;
                let absolute = chunk * chunk_size + block_offset;
                if absolute >= size {
                    *sum = BlockSum::default();
                    data::punch_hole(&files.data, block_offset, block);
                    continue;
                }
                files.data.read_exact_at(&mut buffer, block_offset).or_else(|_| {
                    buffer.fill(0);
                    files.data.read_at(&mut buffer, block_offset).map(|_| ())
                })?;
                if absolute + block > size {
                    buffer[(size - absolute) as usize..].fill(0);
                    files.data.write_all_at(&buffer, block_offset)?;
                }
                *sum = BlockSum { crc: crc32c::crc32c(&buffer), written: true };
            }
            let mut bytes = Vec::with_capacity(sums.len() * CHECKSUM_ENTRY_BYTES as usize);
            for sum in &sums {
                bytes.extend_from_slice(&sum.encode());
            }
            files.sums.write_all_at(&bytes, CHECKSUM_HEADER_BYTES + first * CHECKSUM_ENTRY_BYTES)?;
        }
        data::sync_file(store, &files.data)?;
        data::sync_file(store, &files.sums)?;
        if store.is_replicated() {
            for (first, count) in regions.iter().filter_map(|&region| region_blocks(region)) {
                replication::send_region_image(
                    store,
                    (container, *number, *chunk),
                    Some(&files),
                    first,
                    count,
                )?;
            }
        }
    }
    if !dirty.is_empty() {
        store.replicate(RecordBody::Sync)?;
    }
    // Recount used blocks of the inodes whose chunks changed.
    let inline_table = read.open_table(tables::INLINE).db()?;
    for (number, inode) in affected.iter_mut() {
        let mut blocks = 0u64;
        for row in inline_table.range((*number, 0)..=(*number, u32::MAX)).db()? {
            row.db()?;
            blocks += 1;
        }
        for row in chunks_table.range((*number, 0)..=(*number, u64::MAX)).db()? {
            let (key, value) = row.db()?;
            if let Some((files, _)) = data::open_chunk(store, value.value(), *number, key.value().1, false)? {
                blocks += data::count_written(&files.sums, 0)?;
            }
        }
        inode.blocks_used = blocks;
    }
    drop(inline_table);
    drop(chunks_table);
    drop(read);
    let write = store.db.begin_write().db()?;
    // The same changes, for the replicas.
    let mut changes: Vec<RowChange> = Vec::new();
    {
        let mut dirty_table = write.open_table(tables::DIRTY).db()?;
        for ((number, chunk), regions) in &dirty {
            for &region in regions {
                dirty_table.remove((*number, *chunk, region)).db()?;
                let key = keys::dirty(*number, *chunk, region);
                changes.push(Change { table: TableId::Dirty, key, value: None }.into());
            }
        }
        let mut pending_table = write.open_table(tables::PENDING_DELETE).db()?;
        for (number, _) in &pending {
            pending_table.remove(*number).db()?;
            changes.push(
                Change { table: TableId::PendingDelete, key: keys::inode(*number), value: None }.into(),
            );
        }
        // Only `blocks used` changes here, never a size: the `used_bytes` row stays exact.
        let mut inodes = write.open_table(tables::INODES).db()?;
        for (number, inode) in &affected {
            let value = inode.encode();
            inodes.insert(*number, value.as_slice()).db()?;
            changes.push(
                Change { table: TableId::Inodes, key: keys::inode(*number), value: Some(value) }.into(),
            );
        }
    }
    if let Some(seq) = store.replicate(RecordBody::Name { changes })? {
        write.open_table(tables::META).db()?.insert("replication_position", seq).db()?;
    }
    write.commit().db()?;
    let _ = BLOCK;
    Ok(())
}
