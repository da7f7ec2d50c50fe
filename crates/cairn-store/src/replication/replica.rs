//! The replica side: a volume's store that only applies records (and full copies) from its
//! master. No file system operation runs here.
//!
//! Durable position P (persisted as meta `replication_position`): every record up to P is on
//! stable storage. Durable points are name records, truncations, full copies and `close`; each
//! first fdatasyncs every chunk file (and directory) changed since the previous one, then
//! persists its sequence number with its rows through the replica's own metadata journal (same
//! group-commit journal and checkpoints as a master, so a crashed replica recovers the same
//! way). Chunk writes, clears, deletions and syncs are not durable points: after a crash, only
//! their effects can lie past P, and only inside regions that are dirty at P (writes) or in
//! files of inodes pending deletion at P (deletions). `docs/format.md` explains why rolling
//! forward from P, or promoting the replica, is then exact.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_types::{ClusterId, VolumeId};
use parking_lot::Mutex;
use redb::{Durability, ReadableTable};

use super::image::{self, LOCAL_META_KEYS};
use super::{Block, Record, RecordBody, RowChange, SnapshotPiece, repair};
use crate::api::{BadBlock, ScrubCursor, StoreError, StoreResult};
use crate::data::{self, ChunkFiles};
use crate::faults::Faults;
use crate::format::{
    self, BLOCK, BlockSum, CHECKSUM_ENTRY_BYTES, CHECKSUM_HEADER_BYTES, DATABASE_FORMAT_VERSION,
};
use crate::journal::{CHECKPOINT_BATCHES, Change, Journal, TableId, encode_changes};
use crate::tables::{self, Db};
use crate::{StoreConfig, open};

const BLOCK_U64: u64 = BLOCK as u64;
/// Meta keys that say which volume this is: a record may write them only with this replica's
/// values.
const IDENTITY_KEYS: [&str; 4] = ["format_version", "cluster_id", "volume_id", "data_containers"];

fn malformed(what: &'static str) -> StoreError {
    StoreError::Invalid(what)
}

/// One volume's replica on this node. `Send + Sync`; records are applied one at a time.
pub struct Replica {
    config: StoreConfig,
    cluster: ClusterId,
    volume: VolumeId,
    db: redb::Database,
    faults: Arc<Faults>,
    blocks_per_chunk: u64,
    state: Mutex<State>,
    /// A copy of `State::position` for readers.
    position: AtomicU64,
}

/// A block's content before an unsynced write (test hook, see `keep_undo_for_tests`).
struct Undo {
    key: (u32, u64, u64),
    first_block: u64,
    data: Vec<u8>,
    sums: Vec<BlockSum>,
}

struct State {
    journal: Journal,
    /// The last record applied; after opening, the durable position.
    position: u64,
    /// No volume yet (meta has no `next_inode`): only a new volume's first record or a full
    /// copy may come.
    empty: bool,
    /// Chunks whose files changed since the last durable point.
    unsynced_chunks: BTreeSet<(u32, u64, u64)>,
    /// Directories whose entries changed since the last durable point.
    unsynced_dirs: BTreeSet<PathBuf>,
    /// Open chunk files, by (container, inode, chunk).
    files: HashMap<(u32, u64, u64), Arc<ChunkFiles>>,
    /// A full copy is being applied: `Some(S)` once its `Start` piece came.
    resync: Option<Option<u64>>,
    /// An I/O failure while applying: the replica's state is unknown; it refuses everything.
    broken: Option<String>,
    /// Test hook: old contents of the blocks written since the last durable point.
    undo: Option<Vec<Undo>>,
}

impl Replica {
    /// Opens the replica in `config.data_dir`, creating it empty (the container layout a master
    /// would have: the name container and `config.data_containers` data containers, with this
    /// cluster and volume id, and no volume yet) on first use. After a crash, the metadata
    /// journal is replayed; nothing else runs (recovery is the master's job: it runs when a
    /// replica is promoted). Fails if the directory belongs to another cluster or volume.
    pub fn open(mut config: StoreConfig, cluster: ClusterId, volume: VolumeId) -> StoreResult<Replica> {
        open::check_config(&config)?;
        config.identity = Some((cluster, volume));
        let faults = Arc::new(Faults::default());
        let (_, db, mut journal) = open::open_name_database(&config, &faults, volume)?;
        let write = db.begin_write().db()?;
        let generation = {
            let mut meta = write.open_table(tables::META).db()?;
            let version = meta.get("format_version").db()?.map(|value| value.value());
            match version {
                Some(DATABASE_FORMAT_VERSION) => {}
                Some(_) => return Err(StoreError::Invalid("unknown name container format version")),
                None => {
                    meta.insert("format_version", DATABASE_FORMAT_VERSION).db()?;
                    meta.insert("cluster_id", cluster.0).db()?;
                    meta.insert("volume_id", u64::from(volume.0)).db()?;
                    meta.insert("data_containers", u64::from(config.data_containers)).db()?;
                    meta.insert("journal_generation", 1).db()?;
                    meta.insert("replication_position", 0).db()?;
                }
            }
            let get = |key: &str| -> StoreResult<Option<u64>> {
                Ok(meta.get(key).db()?.map(|value| value.value()))
            };
            if get("cluster_id")? != Some(cluster.0) || get("volume_id")? != Some(u64::from(volume.0)) {
                return Err(StoreError::Invalid("the directory holds another cluster's or volume's store"));
            }
            config.data_containers =
                get("data_containers")?.and_then(|count| u32::try_from(count).ok()).ok_or_else(|| {
                    StoreError::Corrupt { what: "meta key data_containers".to_string(), offset: 0 }
                })?;
            get("journal_generation")?.ok_or_else(|| StoreError::Corrupt {
                what: "meta key journal_generation".to_string(),
                offset: 0,
            })?
        };
        open::replay_journal(&write, &mut journal, generation)?;
        let (position, incomplete, empty) = {
            let meta = write.open_table(tables::META).db()?;
            let get = |key: &str| -> StoreResult<Option<u64>> {
                Ok(meta.get(key).db()?.map(|value| value.value()))
            };
            (
                get("replication_position")?.unwrap_or(0),
                get("resync_incomplete")?.unwrap_or(0) != 0,
                get("next_inode")?.is_none(),
            )
        };
        open::create_tables(&write)?;
        write.commit().db()?;
        open::open_data_containers(&config, &faults, volume)?;
        // A full copy that did not finish: the tables and files are a fragment of the volume.
        let position = if incomplete { 0 } else { position };
        if incomplete {
            tracing::warn!("a full resync of this replica did not finish: it needs a new one");
        }
        let blocks_per_chunk = config.chunk_size_bytes / BLOCK_U64;
        Ok(Replica {
            cluster,
            volume,
            db,
            faults,
            blocks_per_chunk,
            state: Mutex::new(State {
                journal,
                position,
                empty: empty || incomplete,
                unsynced_chunks: BTreeSet::new(),
                unsynced_dirs: BTreeSet::new(),
                files: HashMap::new(),
                resync: None,
                broken: incomplete.then(|| "an interrupted full resync".to_string()),
                undo: None,
            }),
            position: AtomicU64::new(position),
            config,
        })
    }

    /// The last record applied: while running, the latest one; after opening, the durable
    /// position (0 for an empty replica or one whose full copy did not finish).
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }

    pub fn cluster_id(&self) -> ClusterId {
        self.cluster
    }

    pub fn volume_id(&self) -> VolumeId {
        self.volume
    }

    /// Applies one record. Records come in sequence order: one at or below the position is
    /// skipped (a resent suffix), one past `position + 1` is refused (a gap). A malformed record
    /// is refused before it changes anything. Durable records ([`RecordBody::is_durable`]) are
    /// on stable storage, with everything before them, when this returns. A failed write or
    /// fsync leaves the replica refusing everything (its state is unknown): reopen it and
    /// resync it in full.
    pub fn apply(&self, record: &Record) -> StoreResult<()> {
        let mut state = self.state.lock();
        Self::check_usable(&state)?;
        if state.resync.is_some() {
            return Err(StoreError::Invalid(
                "a full resync is in progress: records come after finish_snapshot",
            ));
        }
        if record.seq <= state.position {
            return Ok(());
        }
        if record.seq != state.position + 1 {
            return Err(StoreError::Invalid("replication record out of sequence (a gap)"));
        }
        let changes = match &record.body {
            RecordBody::Name { changes } => {
                let changes = self.check_rows(changes)?;
                if state.empty && !creates_volume(&changes) {
                    return Err(StoreError::Invalid(
                        "this replica holds no volume yet: it needs a full resync",
                    ));
                }
                changes
            }
            body => {
                if state.empty {
                    return Err(StoreError::Invalid(
                        "this replica holds no volume yet: it needs a full resync",
                    ));
                }
                self.check_chunk_record(body)?;
                Vec::new()
            }
        };
        if let Err(error) = self.execute(&mut state, record.seq, &record.body, changes) {
            tracing::error!(seq = record.seq, %error, "applying a replication record failed; the replica needs a full resync");
            state.broken = Some(error.to_string());
            return Err(error);
        }
        if matches!(record.body, RecordBody::Name { .. }) {
            state.empty = false;
        }
        state.position = record.seq;
        self.position.store(record.seq, Ordering::SeqCst);
        Ok(())
    }

    /// Starts a full resync: empties the replica (durably: a crash from now until
    /// [`Replica::finish_snapshot`] leaves it empty, needing a new resync). Clears an earlier
    /// failure to apply.
    pub fn begin_snapshot(&self) -> StoreResult<()> {
        let mut state = self.state.lock();
        if self.faults.crashed() {
            return Err(StoreError::Poisoned("simulated crash".to_string()));
        }
        let result = self.wipe(&mut state);
        if let Err(error) = &result {
            state.broken = Some(error.to_string());
            return result;
        }
        state.broken = None;
        state.resync = Some(None);
        state.position = 0;
        state.empty = true;
        self.position.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// Applies one piece of a full copy ([`crate::Store::snapshot`]), in the order they were
    /// made. Chunk blocks are not checked against their checksums: the copy is fuzzy, and a block
    /// torn by a concurrent write is rewritten by a record after the copy's sequence number.
    pub fn apply_snapshot_piece(&self, piece: SnapshotPiece) -> StoreResult<()> {
        let mut state = self.state.lock();
        Self::check_usable(&state)?;
        let Some(started) = state.resync else {
            return Err(StoreError::Invalid("no full resync in progress: call begin_snapshot first"));
        };
        let result = match piece {
            SnapshotPiece::Start { seq, cluster, volume, data_containers, chunk_size_bytes } => {
                if started.is_some() {
                    return Err(malformed("snapshot: a second Start piece"));
                }
                if cluster != self.cluster.0
                    || volume != self.volume.0
                    || data_containers != self.config.data_containers
                    || chunk_size_bytes != self.config.chunk_size_bytes
                {
                    return Err(StoreError::Invalid(
                        "snapshot of another volume, or with another container layout or chunk size",
                    ));
                }
                state.resync = Some(Some(seq));
                return Ok(());
            }
            _ if started.is_none() => return Err(malformed("snapshot: a piece before the Start piece")),
            SnapshotPiece::Rows { rows } => {
                if rows.iter().any(|row| row.value.is_none()) {
                    return Err(malformed("snapshot: a row without a value"));
                }
                let changes = self.check_rows(&rows)?;
                self.put_rows(&changes)
            }
            SnapshotPiece::Chunk { container, inode, chunk, first_block, blocks, data } => {
                self.check_container(container)?;
                self.check_range(first_block, blocks.len() as u64)?;
                let written = blocks.iter().filter(|block| block.is_some()).count();
                if blocks.is_empty() || data.len() != written * BLOCK {
                    return Err(malformed("snapshot: chunk data does not match its written blocks"));
                }
                self.put_chunk_piece(&mut state, (container, inode, chunk), first_block, &blocks, &data)
            }
        };
        if let Err(error) = &result {
            state.broken = Some(error.to_string());
        }
        result
    }

    /// Ends a full resync whose `Start` piece carried `seq`: makes everything durable and sets
    /// the position to `seq`. Then apply every record after `seq`.
    pub fn finish_snapshot(&self, seq: u64) -> StoreResult<()> {
        let mut state = self.state.lock();
        Self::check_usable(&state)?;
        match state.resync {
            Some(Some(started)) if started == seq => {}
            Some(_) => {
                return Err(StoreError::Invalid(
                    "finish_snapshot: not the sequence number of the copy's Start",
                ));
            }
            None => return Err(StoreError::Invalid("no full resync in progress")),
        }
        let has_volume = {
            let read = tables::begin_read(&self.db)?;
            let meta = read.open_table(tables::META).db()?;
            meta.get("next_inode").db()?.is_some()
        };
        if !has_volume {
            return Err(StoreError::Invalid("the copy held no volume"));
        }
        let result = self.sync_pending(&mut state).and_then(|()| self.checkpoint(&mut state, seq, false));
        if let Err(error) = result {
            state.broken = Some(error.to_string());
            return Err(error);
        }
        state.resync = None;
        state.empty = false;
        state.position = seq;
        self.position.store(seq, Ordering::SeqCst);
        Ok(())
    }

    /// Closes the replica cleanly: everything applied becomes durable and the position is
    /// persisted. To promote it: close, then [`crate::Store::open_replicated`] on the same
    /// directory.
    pub fn close(self) -> StoreResult<()> {
        let mut state = self.state.lock();
        if state.broken.is_some() || self.faults.crashed() {
            return Ok(());
        }
        let position = state.position;
        let in_resync = state.resync.is_some();
        self.sync_pending(&mut state)?;
        self.checkpoint(&mut state, position, in_resync)
    }

    /// The volume's used bytes as the applied records leave them: the `used_bytes` row the
    /// master's batches write (see [`crate::Store::used_bytes`]; it equals the master's once
    /// the master's writes are committed), or, for a volume whose master has not written the
    /// row yet, the sum over the inode rows. 0 for an empty replica.
    pub fn used_bytes(&self) -> StoreResult<u64> {
        let read = tables::begin_read(&self.db)?;
        let meta = read.open_table(tables::META).db()?;
        if let Some(value) = meta.get("used_bytes").db()? {
            return Ok(value.value());
        }
        open::count_used_bytes(&read.open_table(tables::INODES).db()?)
    }

    /// A hash of the volume's logical state (see [`crate::Store::digest`]).
    pub fn digest(&self) -> StoreResult<u64> {
        let _state = self.state.lock();
        image::digest(&self.db, &self.config.data_dir, self.config.data_containers)
    }

    /// `count` blocks of a chunk from `first_block` on, each verified against its checksum
    /// entry (`None`: a hole), as [`crate::Store::read_blocks`] on a master: what repairs a
    /// bad block of another copy of the volume. Under the replica's apply lock, so the blocks
    /// are those of the records applied so far ([`Replica::position`]). Refused while a full
    /// copy is applied into the replica (its blocks are fuzzy until it ends).
    pub fn read_blocks(
        &self,
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        count: u64,
    ) -> StoreResult<Vec<Option<Block>>> {
        let mut state = self.state.lock();
        Self::check_whole(&state)?;
        repair::check_request(
            self.config.data_containers,
            self.blocks_per_chunk,
            container,
            first_block,
            count,
        )?;
        let Some(files) = self.chunk_files(&mut state, container, inode, chunk, false)? else {
            return Ok(vec![None; count as usize]);
        };
        repair::read_verified(&files, (container, inode, chunk), first_block, count)
    }

    /// Repairs this replica's bad blocks from another copy (the master's
    /// [`crate::Store::read_blocks`]), with the rule of [`crate::Store::repair_blocks`]: every
    /// given block must match its own CRC ([`StoreError::Invalid`] otherwise, before anything
    /// changes), and only local blocks that are bad (written, bytes not matching their checksum
    /// entry) are rewritten. Local only (no record), under the apply lock, durable when it
    /// returns (the chunk's files are fdatasynced, with every other change since the last
    /// durable point). Returns the number of blocks repaired. A failed write or fdatasync
    /// leaves the replica refusing everything, as in [`Replica::apply`].
    ///
    /// The blocks must not be newer than what this replica has applied: read them on the
    /// master, note the master's [`crate::Store::replication_position`] after that read, and
    /// call this once [`Replica::position`] has reached it. (A block from further ahead would
    /// survive a crash of this replica in a region that is clean at its durable position, where
    /// a promotion would not overwrite it.)
    pub fn repair_blocks(
        &self,
        container: u32,
        inode: u64,
        chunk: u64,
        first_block: u64,
        blocks: Vec<Option<Block>>,
    ) -> StoreResult<u64> {
        let mut state = self.state.lock();
        Self::check_whole(&state)?;
        repair::check_request(
            self.config.data_containers,
            self.blocks_per_chunk,
            container,
            first_block,
            blocks.len() as u64,
        )?;
        repair::check_given(&blocks)?;
        let Some(files) = self.chunk_files(&mut state, container, inode, chunk, false)? else {
            return Ok(0);
        };
        let bad = repair::find_bad_local(&files, first_block, &blocks)?;
        if bad.is_empty() {
            return Ok(0);
        }
        let written = repair::write_blocks(&files, first_block, &blocks, &bad, &self.faults);
        let result = match written {
            Ok(_) => {
                state.unsynced_chunks.insert((container, inode, chunk));
                self.sync_pending(&mut state)
            }
            Err(error) => Err(data::io_error(error)),
        };
        if let Err(error) = result {
            tracing::error!(%error, "repairing a chunk block failed; the replica needs a full resync");
            state.broken = Some(error.to_string());
            return Err(error);
        }
        tracing::warn!(container, inode, chunk, first_block, blocks = bad.len(), "repaired bad chunk blocks");
        Ok(bad.len() as u64)
    }

    /// One step of a scrub of this replica, as [`crate::Store::scrub`]: verifies up to
    /// `blocks_max` written blocks from `cursor` on and returns the bad ones and where to go on
    /// (`None`: the pass is complete). Reads without the apply lock; a mismatch is read again
    /// under it. Refused while a full copy is applied. Right after a full copy, until the
    /// records after its sequence number are applied, it may find blocks the fuzzy copy tore;
    /// repairing them from the master is harmless.
    pub fn scrub(
        &self,
        cursor: ScrubCursor,
        blocks_max: u64,
    ) -> StoreResult<(Vec<BadBlock>, Option<ScrubCursor>)> {
        Self::check_whole(&self.state.lock())?;
        repair::scrub_walk(
            &self.config.data_dir,
            self.config.data_containers,
            cursor,
            blocks_max,
            &mut |bad| {
                let state = self.state.lock();
                if state.resync.is_some() {
                    // A copy began meanwhile: its blocks are fuzzy until it ends.
                    return Ok(false);
                }
                repair::block_is_bad(&self.config.data_dir, bad)
            },
        )
    }

    /// Simulates a crash of the replica's process: no more I/O reaches the disk, then the
    /// replica is dropped. What was written to the page cache stays (as after `kill -9`).
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.faults.crash();
        drop(self);
    }

    /// Test hook: from now on, remember the old contents of the blocks each chunk write
    /// replaces, until the next durable point, for [`Replica::simulate_power_failure`].
    #[doc(hidden)]
    pub fn keep_undo_for_tests(&self) {
        let mut state = self.state.lock();
        if state.undo.is_none() {
            state.undo = Some(Vec::new());
        }
    }

    /// Simulates a power failure: chunk writes since the last durable point are lost, each with
    /// the given chance (in percent, decided by `seed`), their blocks reverting to their old
    /// contents; then the replica is dropped as in a crash. Needs
    /// [`Replica::keep_undo_for_tests`].
    #[doc(hidden)]
    pub fn simulate_power_failure(self, seed: u64, lose_percent: u64) {
        {
            let mut state = self.state.lock();
            let undo = state.undo.take().unwrap_or_default();
            let mut random = seed;
            for entry in undo.iter().rev() {
                random =
                    random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                if (random >> 33) % 100 >= lose_percent {
                    continue;
                }
                let (container, inode, chunk) = entry.key;
                if let Ok(Some(files)) = self.chunk_files(&mut state, container, inode, chunk, false) {
                    let _ = files.data.write_all_at(&entry.data, entry.first_block * BLOCK_U64);
                    let _ = data::write_sums(&files.sums, entry.first_block, &entry.sums);
                }
            }
        }
        self.simulate_crash();
    }

    // ---- checks (before anything changes) ----

    fn check_usable(state: &State) -> StoreResult<()> {
        match &state.broken {
            Some(reason) => Err(StoreError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Usable, and not in the middle of a full copy (for reads and repairs of blocks).
    fn check_whole(state: &State) -> StoreResult<()> {
        Self::check_usable(state)?;
        if state.resync.is_some() {
            return Err(StoreError::Invalid("a full resync is in progress"));
        }
        Ok(())
    }

    fn check_container(&self, container: u32) -> StoreResult<()> {
        if container < 2 || container - 2 >= self.config.data_containers {
            return Err(malformed("replication record names a data container that does not exist"));
        }
        Ok(())
    }

    fn check_range(&self, first_block: u64, count: u64) -> StoreResult<()> {
        match first_block.checked_add(count) {
            Some(end) if end <= self.blocks_per_chunk => Ok(()),
            _ => Err(malformed("replication record reaches past the end of its chunk")),
        }
    }

    /// Checks rows from a record or a copy and converts them: known tables, keys and values of
    /// the right shape, no node-local meta key, and identity keys only with this replica's
    /// values.
    fn check_rows(&self, rows: &[RowChange]) -> StoreResult<Vec<Change>> {
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let change = row.to_change().ok_or(malformed("replication record names an unknown table"))?;
            let key = change.key.as_slice();
            let key_ok = match change.table {
                TableId::Meta => std::str::from_utf8(key).is_ok(),
                TableId::Inodes | TableId::PendingDelete => key.len() == 8,
                TableId::Dirents => key.len() > 8,
                TableId::Cookies | TableId::Chunks => key.len() == 16,
                TableId::Inline => key.len() == 12,
                TableId::Dirty => key.len() == 20,
            };
            let value_ok = match (change.table, change.value.as_deref()) {
                (_, None) => true,
                (TableId::Meta, Some(value)) => value.len() == 8,
                (TableId::Chunks, Some(value)) => value.len() == 4,
                (TableId::Dirty, Some(value)) => value.is_empty(),
                _ => true,
            };
            if !key_ok || !value_ok {
                return Err(malformed("replication record has a row of the wrong shape"));
            }
            if change.table == TableId::Meta {
                let name = std::str::from_utf8(key).unwrap_or_default();
                if LOCAL_META_KEYS.contains(&name) {
                    return Err(malformed("replication record writes a node-local meta key"));
                }
                if IDENTITY_KEYS.contains(&name) {
                    let expected = match name {
                        "format_version" => DATABASE_FORMAT_VERSION,
                        "cluster_id" => self.cluster.0,
                        "volume_id" => u64::from(self.volume.0),
                        _ => u64::from(self.config.data_containers),
                    };
                    let value = change
                        .value
                        .as_deref()
                        .and_then(|value| value.try_into().ok())
                        .map(u64::from_le_bytes);
                    if value != Some(expected) {
                        return Err(StoreError::Invalid(
                            "replication record of another volume, format or container layout",
                        ));
                    }
                }
            }
            changes.push(change);
        }
        Ok(changes)
    }

    fn check_chunk_record(&self, body: &RecordBody) -> StoreResult<()> {
        match body {
            RecordBody::Name { .. } | RecordBody::Sync => Ok(()),
            RecordBody::ChunkWrite { container, first_block, data, crcs, .. } => {
                self.check_container(*container)?;
                if crcs.is_empty() || data.len() != crcs.len() * BLOCK {
                    return Err(malformed("replication record: chunk data is not its whole blocks"));
                }
                self.check_range(*first_block, crcs.len() as u64)?;
                for (block, crc) in data.chunks_exact(BLOCK).zip(crcs) {
                    if crc32c::crc32c(block) != *crc {
                        return Err(malformed("replication record: a block does not match its checksum"));
                    }
                }
                Ok(())
            }
            RecordBody::ChunkClear { container, first_block, count, .. } => {
                self.check_container(*container)?;
                if *count == 0 {
                    return Err(malformed("replication record clears no block"));
                }
                self.check_range(*first_block, *count)
            }
            RecordBody::ChunkTruncate { container, blocks, tail, .. } => {
                self.check_container(*container)?;
                self.check_range(0, *blocks)?;
                if let Some(tail) = tail
                    && (*blocks == 0 || tail.data.len() != BLOCK || crc32c::crc32c(&tail.data) != tail.crc)
                {
                    return Err(malformed("replication record: a truncation's last block is malformed"));
                }
                Ok(())
            }
            RecordBody::ChunkDelete { chunks, .. } => {
                for (_, container) in chunks {
                    self.check_container(*container)?;
                }
                Ok(())
            }
        }
    }

    // ---- changes ----

    fn execute(
        &self,
        state: &mut State,
        seq: u64,
        body: &RecordBody,
        changes: Vec<Change>,
    ) -> StoreResult<()> {
        match body {
            RecordBody::Name { .. } => {
                self.sync_pending(state)?;
                self.commit_batch(state, changes, seq)
            }
            RecordBody::ChunkWrite { container, inode, chunk, first_block, data, crcs } => {
                let key = (*container, *inode, *chunk);
                let files = self
                    .chunk_files(state, *container, *inode, *chunk, true)?
                    .ok_or_else(|| StoreError::Io(io::Error::other("chunk files missing after creation")))?;
                if let Some(undo) = &mut state.undo {
                    let mut old = vec![0u8; data.len()];
                    data::read_full_at(&files.data, &mut old, first_block * BLOCK_U64)?;
                    let sums = data::read_sums(&files.sums, *first_block, crcs.len() as u64)?;
                    undo.push(Undo { key, first_block: *first_block, data: old, sums });
                }
                self.faults.check_data_write()?;
                files.data.write_all_at(data, first_block * BLOCK_U64).map_err(data::io_error)?;
                let sums: Vec<BlockSum> = crcs.iter().map(|&crc| BlockSum { crc, written: true }).collect();
                data::write_sums(&files.sums, *first_block, &sums).map_err(data::io_error)?;
                state.unsynced_chunks.insert(key);
                Ok(())
            }
            RecordBody::ChunkClear { container, inode, chunk, first_block, count } => {
                let Some(files) = self.chunk_files(state, *container, *inode, *chunk, false)? else {
                    return Ok(());
                };
                let entries =
                    files.sums.metadata()?.len().saturating_sub(CHECKSUM_HEADER_BYTES) / CHECKSUM_ENTRY_BYTES;
                let end = (first_block + count).min(entries);
                self.faults.check_data_write()?;
                if *first_block < end {
                    let holes = vec![BlockSum::default(); (end - first_block) as usize];
                    data::write_sums(&files.sums, *first_block, &holes).map_err(data::io_error)?;
                }
                data::punch_hole(&files.data, first_block * BLOCK_U64, count * BLOCK_U64);
                state.unsynced_chunks.insert((*container, *inode, *chunk));
                Ok(())
            }
            RecordBody::ChunkTruncate { container, inode, chunk, blocks, tail } => {
                if *blocks == 0 {
                    self.remove_chunk(state, (*container, *inode, *chunk))?;
                } else if let Some(files) = self.chunk_files(state, *container, *inode, *chunk, false)? {
                    self.faults.check_data_write()?;
                    if let Some(tail) = tail {
                        files
                            .data
                            .write_all_at(&tail.data, (blocks - 1) * BLOCK_U64)
                            .map_err(data::io_error)?;
                        let sum = BlockSum { crc: tail.crc, written: true };
                        data::write_sums(&files.sums, blocks - 1, &[sum]).map_err(data::io_error)?;
                    }
                    files.sums.set_len(CHECKSUM_HEADER_BYTES + blocks * CHECKSUM_ENTRY_BYTES)?;
                    files.data.set_len(blocks * BLOCK_U64)?;
                    state.unsynced_chunks.insert((*container, *inode, *chunk));
                }
                self.sync_pending(state)?;
                self.commit_batch(state, Vec::new(), seq)
            }
            RecordBody::ChunkDelete { inode, chunks } => {
                for &(chunk, container) in chunks {
                    self.remove_chunk(state, (container, *inode, chunk))?;
                }
                Ok(())
            }
            RecordBody::Sync => self.sync_pending(state),
        }
    }

    /// The chunk's open files (created, with their checksum header, when `create`).
    fn chunk_files(
        &self,
        state: &mut State,
        container: u32,
        inode: u64,
        chunk: u64,
        create: bool,
    ) -> StoreResult<Option<Arc<ChunkFiles>>> {
        let key = (container, inode, chunk);
        if let Some(files) = state.files.get(&key) {
            return Ok(Some(files.clone()));
        }
        let (data_path, sums_path, dir) =
            data::chunk_paths(&image::container_dir(&self.config.data_dir, container), inode, chunk);
        let open = |path: &PathBuf| OpenOptions::new().read(true).write(true).open(path);
        let files = match (open(&data_path), open(&sums_path)) {
            (Ok(data), Ok(sums)) => ChunkFiles::new(data, sums, dir),
            (data, sums) => {
                let missing = |result: &io::Result<File>| matches!(result, Err(error) if error.kind() == io::ErrorKind::NotFound);
                if !missing(&data) && !missing(&sums) {
                    return Err(StoreError::Io(
                        data.err().or(sums.err()).unwrap_or_else(|| io::Error::other("open")),
                    ));
                }
                if !create {
                    return Ok(None);
                }
                if !dir.is_dir() {
                    std::fs::create_dir_all(&dir).map_err(data::io_error)?;
                }
                let make = |path: &PathBuf| {
                    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
                };
                let data = make(&data_path).map_err(data::io_error)?;
                let sums = make(&sums_path).map_err(data::io_error)?;
                if sums.metadata()?.len() < CHECKSUM_HEADER_BYTES {
                    sums.write_all_at(&format::checksum_header(container, inode, chunk), 0)
                        .map_err(data::io_error)?;
                }
                state.unsynced_dirs.insert(dir.clone());
                ChunkFiles::new(data, sums, dir)
            }
        };
        if state.files.len() >= self.config.open_chunk_files_max.max(1) {
            state.files.clear();
        }
        let files = Arc::new(files);
        state.files.insert(key, files.clone());
        Ok(Some(files))
    }

    fn remove_chunk(&self, state: &mut State, key: (u32, u64, u64)) -> StoreResult<()> {
        let (container, inode, chunk) = key;
        state.files.remove(&key);
        state.unsynced_chunks.remove(&key);
        let (data_path, sums_path, dir) =
            data::chunk_paths(&image::container_dir(&self.config.data_dir, container), inode, chunk);
        if self.faults.crashed() {
            return Err(StoreError::Io(io::Error::other("simulated crash")));
        }
        for path in [data_path, sums_path] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(StoreError::Io(error)),
            }
        }
        state.unsynced_dirs.insert(dir);
        Ok(())
    }

    /// fdatasyncs every chunk file and directory changed since the last durable point.
    fn sync_pending(&self, state: &mut State) -> StoreResult<()> {
        let mut opened = Vec::new();
        for (container, inode, chunk) in std::mem::take(&mut state.unsynced_chunks) {
            let Some(files) = self.chunk_files(state, container, inode, chunk, false)? else {
                continue;
            };
            opened.push(files);
        }
        let all: Vec<&File> = opened.iter().flat_map(|files| [&files.data, &files.sums]).collect();
        data::sync_together(&all, |file| {
            self.faults.check_data_sync()?;
            Ok(file.sync_data()?)
        })?;
        for dir in std::mem::take(&mut state.unsynced_dirs) {
            self.faults.check_data_sync()?;
            File::open(&dir)?.sync_all()?;
        }
        if let Some(undo) = &mut state.undo {
            undo.clear();
        }
        Ok(())
    }

    /// Applies name rows and the new position in one batch, durable through the journal (or a
    /// checkpoint), exactly as a master commits a batch.
    fn commit_batch(&self, state: &mut State, changes: Vec<Change>, seq: u64) -> StoreResult<()> {
        let position = Change {
            table: TableId::Meta,
            key: b"replication_position".to_vec(),
            value: Some(seq.to_le_bytes().to_vec()),
        };
        let mut write = self.db.begin_write().db()?;
        for change in changes.iter().chain(std::iter::once(&position)) {
            open::replay_change(&write, change)?;
        }
        let mut payload = Vec::new();
        encode_changes(&changes, &mut payload);
        encode_changes(std::slice::from_ref(&position), &mut payload);
        let low_space =
            open::available_bytes(&self.config.data_dir)? < self.config.space_reserve_bytes.saturating_mul(2);
        let journal = &mut state.journal;
        if low_space || journal.batches >= CHECKPOINT_BATCHES || !journal.fits(payload.len()) {
            let generation = journal.generation + 1;
            write.open_table(tables::META).db()?.insert("journal_generation", generation).db()?;
            write.set_durability(Durability::Immediate).db()?;
            write.commit().db()?;
            journal.restart(generation);
        } else {
            journal
                .append(&payload)
                .and_then(|()| self.faults.check_metadata_sync())
                .and_then(|()| journal.sync())?;
            write.set_durability(Durability::None).db()?;
            write.commit().db()?;
        }
        Ok(())
    }

    /// A durable redb commit of the position that starts a new journal generation (`close`,
    /// end of a full copy). `in_resync`: keep the "incomplete copy" mark.
    fn checkpoint(&self, state: &mut State, position: u64, in_resync: bool) -> StoreResult<()> {
        let generation = state.journal.generation + 1;
        let write = self.db.begin_write().db()?;
        {
            let mut meta = write.open_table(tables::META).db()?;
            meta.insert("replication_position", position).db()?;
            meta.insert("journal_generation", generation).db()?;
            if !in_resync {
                meta.remove("resync_incomplete").db()?;
            }
        }
        write.commit().db()?;
        state.journal.restart(generation);
        Ok(())
    }

    /// Empties the replica for a full copy: tables and chunk files. The tables first, durably,
    /// with the "incomplete copy" mark.
    fn wipe(&self, state: &mut State) -> StoreResult<()> {
        let generation = state.journal.generation + 1;
        let write = self.db.begin_write().db()?;
        {
            let mut meta = write.open_table(tables::META).db()?;
            let mut volume_keys = Vec::new();
            for row in meta.iter().db()? {
                let (key, _) = row.db()?;
                let name = key.value().to_string();
                if !IDENTITY_KEYS.contains(&name.as_str()) && !LOCAL_META_KEYS.contains(&name.as_str()) {
                    volume_keys.push(name);
                }
            }
            for name in volume_keys {
                meta.remove(name.as_str()).db()?;
            }
            meta.insert("replication_position", 0).db()?;
            meta.insert("resync_incomplete", 1).db()?;
            meta.insert("journal_generation", generation).db()?;
        }
        write.delete_table(tables::INODES).db()?;
        write.delete_table(tables::DIRENTS).db()?;
        write.delete_table(tables::COOKIES).db()?;
        write.delete_table(tables::INLINE).db()?;
        write.delete_table(tables::CHUNKS).db()?;
        write.delete_table(tables::DIRTY).db()?;
        write.delete_table(tables::PENDING_DELETE).db()?;
        open::create_tables(&write)?;
        write.commit().db()?;
        state.journal.restart(generation);
        state.files.clear();
        state.unsynced_chunks.clear();
        if let Some(undo) = &mut state.undo {
            undo.clear();
        }
        for (container, inode, chunk) in
            image::list_chunks(&self.config.data_dir, self.config.data_containers)?
        {
            self.remove_chunk(state, (container, inode, chunk))?;
        }
        Ok(())
    }

    /// Rows of a full copy: one non-durable commit per piece (the end of the copy commits
    /// durably; a crash before leaves the "incomplete copy" mark).
    fn put_rows(&self, changes: &[Change]) -> StoreResult<()> {
        let mut write = self.db.begin_write().db()?;
        for change in changes {
            open::replay_change(&write, change)?;
        }
        write.set_durability(Durability::None).db()?;
        write.commit().db()?;
        Ok(())
    }

    fn put_chunk_piece(
        &self,
        state: &mut State,
        key: (u32, u64, u64),
        first_block: u64,
        blocks: &[Option<u32>],
        data: &[u8],
    ) -> StoreResult<()> {
        let (container, inode, chunk) = key;
        let files = self
            .chunk_files(state, container, inode, chunk, true)?
            .ok_or_else(|| StoreError::Io(io::Error::other("chunk files missing after creation")))?;
        self.faults.check_data_write()?;
        let mut sums = Vec::with_capacity(blocks.len());
        let mut written = data.chunks_exact(BLOCK);
        for (index, block) in blocks.iter().enumerate() {
            match block {
                Some(crc) => {
                    let bytes = written.next().ok_or(malformed("snapshot: chunk data too short"))?;
                    files
                        .data
                        .write_all_at(bytes, (first_block + index as u64) * BLOCK_U64)
                        .map_err(data::io_error)?;
                    sums.push(BlockSum { crc: *crc, written: true });
                }
                None => sums.push(BlockSum::default()),
            }
        }
        data::write_sums(&files.sums, first_block, &sums).map_err(data::io_error)?;
        state.unsynced_chunks.insert(key);
        Ok(())
    }
}

/// Whether name rows create a volume (a new master's first record writes `format_version`).
fn creates_volume(changes: &[Change]) -> bool {
    changes.iter().any(|change| {
        change.table == TableId::Meta && change.key == b"format_version" && change.value.is_some()
    })
}
