//! The master side: numbering and submitting records, waiting for their acknowledgement, the
//! full copy, and the records a replicated store's opening sends (a fresh volume's first
//! record; recovery's region images).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::image::{self, BLOCKS_PER_PIECE};
use super::{RecordBody, ReplicationError, Replicator, RowChange, SnapshotPiece};
use crate::api::{StoreError, StoreResult};
use crate::data::{self, ChunkFiles};
use crate::format::BLOCK;
use crate::tables::{self, Db};
use crate::{Store, StoreConfig};

/// A store's link to its replicator (absent for a single-node store).
pub(crate) struct Link {
    replicator: Option<Arc<dyn Replicator>>,
    /// The sequence number of the last record submitted (or the stored position). The mutex is
    /// held around `submit`, so numbers are checked and recorded in submission order.
    last: Mutex<u64>,
    /// A copy of `last` for readers.
    position: AtomicU64,
    /// Every record up to this one is acknowledged by the replicas.
    acked: AtomicU64,
    /// A replica knows a newer epoch: no change is accepted any more.
    fenced: AtomicBool,
}

impl Link {
    /// Tells the replicator where the sequence continues.
    pub fn new(replicator: Option<Arc<dyn Replicator>>, position: u64) -> Link {
        if let Some(replicator) = &replicator {
            replicator.resume(position);
        }
        Link {
            replicator,
            last: Mutex::new(position),
            position: AtomicU64::new(position),
            acked: AtomicU64::new(position),
            fenced: AtomicBool::new(false),
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }
}

impl Store {
    /// Opens the store in `config.data_dir` as its volume's master: like [`Store::open`]
    /// (creating the volume on first use, recovering after a crash), and every change that
    /// reaches disk from now on is submitted to `replicator` (see [`crate::replication`]).
    ///
    /// A directory that was a [`super::Replica`] continues its sequence from the replica's
    /// position; recovery's own changes are the first records. A new volume's first record
    /// holds its initial rows, so that empty replicas can follow from position 0. Returns once
    /// those records are acknowledged.
    pub fn open_replicated(config: StoreConfig, replicator: Arc<dyn Replicator>) -> StoreResult<Store> {
        crate::open::open_with(config, Some(replicator))
    }

    /// The sequence number of the last record submitted (or, on a store opened without a
    /// replicator, of the last one applied when it was replicated).
    pub fn replication_position(&self) -> u64 {
        self.repl.position.load(Ordering::SeqCst)
    }

    /// Whether this store submits its changes to a replicator.
    pub fn is_replicated(&self) -> bool {
        self.repl.replicator.is_some()
    }

    /// Streams a full copy of the volume to `sink` and returns S, the sequence number the copy
    /// of the tables is consistent with. The first piece is [`SnapshotPiece::Start`] (which
    /// carries S too), then every table row, read in one read transaction taken under the lock
    /// that orders the name container's records, then the checksum entries and written blocks
    /// of every chunk file, read while writes go on. Contract: a replica that applies every
    /// piece and then every record with a sequence number above S ends identical to this
    /// store. Whoever carries the pieces must therefore keep the records submitted meanwhile.
    pub fn snapshot(&self, sink: &mut dyn FnMut(SnapshotPiece) -> StoreResult<()>) -> StoreResult<u64> {
        self.check_poisoned()?;
        let (read, seq) = {
            let _applier = self.group.applier.lock();
            (tables::begin_read(&self.db)?, self.repl.position.load(Ordering::SeqCst))
        };
        sink(SnapshotPiece::Start {
            seq,
            cluster: self.cluster.0,
            volume: self.volume.0,
            data_containers: self.config.data_containers,
            chunk_size_bytes: self.config.chunk_size_bytes,
        })?;
        image::send_rows(&read, sink)?;
        drop(read);
        image::send_chunks(&self.config.data_dir, self.config.data_containers, sink)?;
        Ok(seq)
    }

    /// A hash of the volume's logical state on disk (table rows except node-local ones, and
    /// the bytes and checksums of every written chunk block): equal on a master and replicas
    /// that converged. Unstable state held in memory does not count. Call it while nothing
    /// changes.
    pub fn digest(&self) -> StoreResult<u64> {
        image::digest(&self.db, &self.config.data_dir, self.config.data_containers)
    }

    /// Submits a record, if this store is replicated: `Ok(Some(seq))`. Called in apply order,
    /// under the lock that orders the change. A replicator that breaks the numbering poisons the
    /// store (a replica would skip or refuse its records).
    pub(crate) fn replicate(&self, body: RecordBody) -> StoreResult<Option<u64>> {
        let Some(replicator) = &self.repl.replicator else {
            return Ok(None);
        };
        let mut last = self.repl.last.lock();
        let seq = replicator.submit(body);
        if seq != *last + 1 {
            let expected = *last + 1;
            drop(last);
            self.poison(format!("the replicator numbered a record {seq} where {expected} was due"));
            return Err(self.poisoned_error());
        }
        *last = seq;
        self.repl.position.store(seq, Ordering::SeqCst);
        Ok(Some(seq))
    }

    /// Waits until the replicas acknowledged every record submitted so far. A fenced store
    /// answers [`StoreError::NotMaster`] from now on.
    pub(crate) fn wait_replicated(&self) -> StoreResult<()> {
        let Some(replicator) = &self.repl.replicator else {
            return Ok(());
        };
        let seq = self.repl.position.load(Ordering::SeqCst);
        if seq <= self.repl.acked.load(Ordering::SeqCst) {
            return Ok(());
        }
        match replicator.wait(seq) {
            Ok(()) => {
                self.repl.acked.fetch_max(seq, Ordering::SeqCst);
                Ok(())
            }
            Err(ReplicationError::Fenced) => {
                if !self.repl.fenced.swap(true, Ordering::SeqCst) {
                    tracing::warn!(seq, "fenced: a newer master took over; refusing changes");
                }
                Err(StoreError::NotMaster)
            }
            Err(ReplicationError::Unavailable(reason)) => Err(StoreError::Unavailable(reason)),
        }
    }
}

/// A new volume's first record: every row it was created with (identity, counters, root
/// directory). Its position is persisted at once.
pub(crate) fn send_initial_state(store: &Store) -> StoreResult<()> {
    let read = tables::begin_read(&store.db)?;
    let mut changes = Vec::new();
    image::for_each_row(&read, &mut |change| {
        changes.push(RowChange::from(change));
        Ok(())
    })?;
    drop(read);
    if let Some(seq) = store.replicate(RecordBody::Name { changes })? {
        let write = store.db.begin_write().db()?;
        write.open_table(tables::META).db()?.insert("replication_position", seq).db()?;
        write.commit().db()?;
    }
    Ok(())
}

/// Recovery's image of `count` blocks of a dirty region, from `first_block`: runs of written
/// blocks as [`RecordBody::ChunkWrite`] (bytes and checksums as recovery left them), runs of
/// holes as [`RecordBody::ChunkClear`]. A replica's copy of the region may differ from this
/// store's (writes not synced before a crash, on either side); after the image it does not.
pub(crate) fn send_region_image(
    store: &Store,
    (container, inode, chunk): (u32, u64, u64),
    files: Option<&ChunkFiles>,
    first_block: u64,
    count: u64,
) -> StoreResult<()> {
    let Some(files) = files else {
        store.replicate(RecordBody::ChunkClear { container, inode, chunk, first_block, count })?;
        return Ok(());
    };
    let sums = data::read_sums(&files.sums, first_block, count)?;
    let mut start = 0usize;
    while start < sums.len() {
        let written = sums[start].written;
        let mut end = start + 1;
        while end < sums.len()
            && sums[end].written == written
            && (!written || ((end - start) as u64) < BLOCKS_PER_PIECE)
        {
            end += 1;
        }
        let run_first = first_block + start as u64;
        let run_count = (end - start) as u64;
        if written {
            let mut bytes = vec![0u8; (end - start) * BLOCK];
            data::read_full_at(&files.data, &mut bytes, run_first * BLOCK as u64)?;
            let crcs = sums[start..end].iter().map(|sum| sum.crc).collect();
            store.replicate(RecordBody::ChunkWrite {
                container,
                inode,
                chunk,
                first_block: run_first,
                data: bytes,
                crcs,
            })?;
        } else {
            store.replicate(RecordBody::ChunkClear {
                container,
                inode,
                chunk,
                first_block: run_first,
                count: run_count,
            })?;
        }
        start = end;
    }
    Ok(())
}
