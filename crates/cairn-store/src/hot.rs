//! The hot inode table: in-memory, authoritative copies of inodes that are being changed.
//!
//! An inode enters the table when a metadata operation or a write touches it, and leaves it
//! (is evicted) once everything about it is durable: its record as committed, no unstable inline
//! bytes and no chunk with an open dirty-region intent. While an inode is in the table its entry
//! is the truth and the database may lag behind; readers look here first.
//!
//! Lock order (outermost first): a data stripe lock ([`crate::Store::stripe`]), a shard of this
//! table, one entry. Nobody waits for a group commit while holding any of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::format::Inode;

/// Number of shards of the table (a power of two).
const SHARDS: usize = 64;

/// An unstable inline block (one of the first eight 8 KiB blocks of a file).
pub(crate) struct InlineBlock {
    /// Always exactly one block long.
    pub data: Vec<u8>,
    /// The entry generation of the write that produced these bytes.
    pub generation: u64,
}

/// A chunk written since its last commit.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkDirty {
    /// Incremented by every write into the chunk, before the write starts.
    pub sequence: u64,
    /// Regions whose dirty intent is durable (rows in the `dirty_regions` table).
    /// Invariant: a region is here only while its row is durable.
    pub marked: BTreeSet<u32>,
    /// The chunk's files were created since the last commit: their directory needs an fsync.
    pub created: bool,
    pub container: u32,
}

pub(crate) struct Entry {
    pub number: u64,
    pub inode: Inode,
    /// Incremented by every change to `inode` or to the inline blocks.
    pub generation: u64,
    /// The generation whose record is durable.
    pub persisted_generation: u64,
    /// The inode was removed (by a batch that may not have committed yet).
    pub deleted: bool,
    /// The entry left the table: whoever holds it must look the inode up again.
    pub evicted: bool,
    pub inline_dirty: BTreeMap<u32, InlineBlock>,
    pub chunks: BTreeMap<u64, ChunkDirty>,
    /// Writers between their first and last look at the entry: it must not be evicted.
    pub pins: u32,
}

impl Entry {
    pub fn new(number: u64, inode: Inode) -> Entry {
        Entry {
            number,
            inode,
            generation: 0,
            persisted_generation: 0,
            deleted: false,
            evicted: false,
            inline_dirty: BTreeMap::new(),
            chunks: BTreeMap::new(),
            pins: 0,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.pins == 0
            && self.generation == self.persisted_generation
            && self.inline_dirty.is_empty()
            && self.chunks.is_empty()
    }

    /// Whether the inode holds unstable state that a COMMIT would make durable.
    pub fn has_unstable(&self) -> bool {
        self.generation != self.persisted_generation
            || !self.inline_dirty.is_empty()
            || !self.chunks.is_empty()
    }

    pub fn touch(&mut self) {
        self.generation += 1;
    }
}

pub(crate) type EntryRef = Arc<Mutex<Entry>>;

pub(crate) struct HotTable {
    shards: Box<[Mutex<HashMap<u64, EntryRef>>]>,
}

impl HotTable {
    pub fn new() -> HotTable {
        HotTable { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    pub fn shard(&self, number: u64) -> &Mutex<HashMap<u64, EntryRef>> {
        &self.shards[(number as usize) & (SHARDS - 1)]
    }

    pub fn get(&self, number: u64) -> Option<EntryRef> {
        self.shard(number).lock().get(&number).cloned()
    }

    /// The entry of `number`, loading it with `load` (under the shard lock) when absent.
    /// `load` returning `None` means the inode does not exist.
    pub fn get_or_load<E>(
        &self,
        number: u64,
        load: impl FnOnce() -> Result<Option<Inode>, E>,
    ) -> Result<Option<EntryRef>, E> {
        let mut shard = self.shard(number).lock();
        if let Some(entry) = shard.get(&number) {
            return Ok(Some(entry.clone()));
        }
        let Some(inode) = load()? else {
            return Ok(None);
        };
        let entry = Arc::new(Mutex::new(Entry::new(number, inode)));
        shard.insert(number, entry.clone());
        Ok(Some(entry))
    }

    /// Drops the entry if it is clean (or a tombstone whose removal is durable, when
    /// `drop_deleted`).
    pub fn evict_if_clean(&self, number: u64, drop_deleted: bool) {
        let mut shard = self.shard(number).lock();
        let Some(entry) = shard.get(&number) else {
            return;
        };
        let mut guard = entry.lock();
        let removable = if guard.deleted { drop_deleted } else { guard.is_clean() };
        if removable {
            guard.evicted = true;
            drop(guard);
            shard.remove(&number);
        }
    }

    /// Every entry (for flushing all unstable state).
    pub fn all(&self) -> Vec<EntryRef> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().values().cloned());
        }
        out
    }
}
