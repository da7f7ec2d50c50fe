//! Group commit: metadata operations submitted concurrently share one redb write transaction and
//! one fsync.
//!
//! Leader/follower: a caller queues its operation; if no leader is running, it becomes the
//! leader, takes the whole queue (at most [`BATCH_OPS_MAX`]), applies each operation in order
//! inside one write transaction, appends the batch to the journal and commits it to redb, hands
//! the leadership over, waits until the batch is durable, and wakes everyone with their own
//! result. Batches are pipelined: the next one is applied while this one's fdatasync runs, so a
//! batch is visible to readers shortly before it is durable (like a local file system's page
//! cache), but no caller is answered, and no later batch is acknowledged, before it is.
//! Operations validate everything before they change anything (`Batch::mutated` marks the
//! point of no return), so an operation that fails leaves no trace and does not affect the
//! others. A storage error after that point fails the whole batch and poisons the store.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_types::{Fid, TxnId};
use parking_lot::{Condvar, Mutex};
use redb::{Durability, Table};

use crate::api::{Change, ChangeDone, Changed, StoreError, StoreResult};
use crate::format::{self, BLOCK, Inode};
use crate::hot::{ChunkDirty, EntryRef};
use crate::journal::{CHECKPOINT_BATCHES, Change as Row, TableId, keys};
use crate::tables::{self, Db};
use crate::{Store, data, namespace};

/// A record written by a batch: the entry, its generation, and the inline blocks (index,
/// generation) written with it.
type Written = (EntryRef, u64, Vec<(u32, u64)>);

/// What one operation may add to a commit, at most, for the free-space reserve: a few
/// copied-on-write B-tree pages.
const OPERATION_PAGES_BYTES: u64 = 32 * 1024;

/// Most operations in one batch.
const BATCH_OPS_MAX: usize = 4096;

pub(crate) enum Op {
    /// A change a client asked for.
    Change(Change),
    /// Records durable dirty-region intents (and chunk map rows) before unstable writes.
    MarkDirty { inode: u64, regions: Vec<(u64, u32, u32)> },
    /// Persists inodes' unstable metadata and inline blocks, and clears the dirty-region
    /// intents of chunks whose data was synced: (inode, [(chunk index, write sequence at the
    /// sync)]).
    Flush { items: Vec<(u64, Vec<(u64, u64)>)> },
    /// Persists the unstable metadata and inline blocks of every hot inode (memory bound).
    FlushAll,
    /// Commits durably to redb and starts a new journal generation (clean shutdown).
    Checkpoint,
}

// Moved once per operation, never stored in bulk: boxing the large variant would only add an
// allocation per change.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Output {
    Changed(Changed),
    Done,
}

/// Work after a batch committed.
pub(crate) enum Post {
    /// The intents are durable: writers may now use these regions.
    SetMarks { entry: EntryRef, chunk: u64, container: u32, regions: Vec<u32> },
    /// The inode's removal is durable: delete its chunk files.
    DeleteFiles { number: u64, chunks: Vec<(u64, u32)> },
}

/// How an operation uses space, for the free-space reserve.
#[derive(Clone, Copy)]
pub(crate) enum SpaceUse {
    Consume,
    Free,
}

/// The tables of one batch. Invariant: they are written only through the `put_*`/`del_*`
/// methods, which also record each change for the metadata journal.
pub(crate) struct Batch<'t> {
    pub inodes: Table<'t, u64, &'static [u8]>,
    pub dirents: Table<'t, (u64, &'static [u8]), &'static [u8]>,
    pub cookies: Table<'t, (u64, u64), &'static [u8]>,
    pub inline: Table<'t, (u64, u32), &'static [u8]>,
    pub chunks: Table<'t, (u64, u64), u32>,
    pub dirty: Table<'t, (u64, u64, u32), ()>,
    pub pending_delete: Table<'t, u64, &'static [u8]>,
    /// Entries whose records this batch writes.
    touched: Vec<EntryRef>,
    touched_numbers: HashSet<u64>,
    /// Entries whose unstable inline blocks this batch writes.
    flush_inline: HashSet<u64>,
    /// Every inode this batch loaded into the hot table (evicted after commit if clean).
    loaded: HashSet<u64>,
    pub post: Vec<Post>,
    /// Set by an operation when it starts changing state: an error after this is fatal.
    pub mutated: bool,
    pub next_inode: u64,
    space_available_bytes: u64,
    space_reserve_bytes: u64,
    /// The physical changes of this batch, for the journal.
    changes: Vec<Row>,
    /// Commit this batch durably to redb and start a new journal generation.
    force_checkpoint: bool,
    /// The `used_bytes` row as this batch leaves it: every inode record written or deleted
    /// adjusts it by the change of the record's regular-file size (the old record is what the
    /// insert or removal returns), so it always equals the sum over the `inodes` table.
    used_bytes: u64,
}

impl Batch<'_> {
    pub fn begin_mutation(&mut self) {
        self.mutated = true;
    }

    fn log(&mut self, table: TableId, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.changes.push(Row { table, key, value });
    }

    pub fn put_inode(&mut self, number: u64, value: &[u8]) -> StoreResult<()> {
        let added = Inode::used_bytes_of(value)?;
        let removed = match self.inodes.insert(number, value).db()? {
            Some(old) => Inode::used_bytes_of(old.value())?,
            None => 0,
        };
        self.used_bytes = self.used_bytes.wrapping_sub(removed).wrapping_add(added);
        self.log(TableId::Inodes, keys::inode(number), Some(value.to_vec()));
        Ok(())
    }

    pub fn del_inode(&mut self, number: u64) -> StoreResult<()> {
        let removed = match self.inodes.remove(number).db()? {
            Some(old) => Inode::used_bytes_of(old.value())?,
            None => 0,
        };
        self.used_bytes = self.used_bytes.wrapping_sub(removed);
        self.log(TableId::Inodes, keys::inode(number), None);
        Ok(())
    }

    pub fn put_dirent(&mut self, directory: u64, name: &[u8], value: &[u8]) -> StoreResult<()> {
        self.dirents.insert((directory, name), value).db()?;
        self.log(TableId::Dirents, keys::dirent(directory, name), Some(value.to_vec()));
        Ok(())
    }

    pub fn del_dirent(&mut self, directory: u64, name: &[u8]) -> StoreResult<()> {
        self.dirents.remove((directory, name)).db()?;
        self.log(TableId::Dirents, keys::dirent(directory, name), None);
        Ok(())
    }

    pub fn put_cookie(&mut self, directory: u64, cookie: u64, value: &[u8]) -> StoreResult<()> {
        self.cookies.insert((directory, cookie), value).db()?;
        self.log(TableId::Cookies, keys::pair(directory, cookie), Some(value.to_vec()));
        Ok(())
    }

    pub fn del_cookie(&mut self, directory: u64, cookie: u64) -> StoreResult<()> {
        self.cookies.remove((directory, cookie)).db()?;
        self.log(TableId::Cookies, keys::pair(directory, cookie), None);
        Ok(())
    }

    pub fn put_inline(&mut self, number: u64, index: u32, value: &[u8]) -> StoreResult<()> {
        self.inline.insert((number, index), value).db()?;
        self.log(TableId::Inline, keys::inline(number, index), Some(value.to_vec()));
        Ok(())
    }

    /// Deletes an inline block, returning what it held.
    pub fn take_inline(&mut self, number: u64, index: u32) -> StoreResult<Option<Vec<u8>>> {
        let old = self.inline.remove((number, index)).db()?.map(|bytes| bytes.value().to_vec());
        if old.is_some() {
            self.log(TableId::Inline, keys::inline(number, index), None);
        }
        Ok(old)
    }

    pub fn put_chunk(&mut self, number: u64, chunk: u64, container: u32) -> StoreResult<()> {
        self.chunks.insert((number, chunk), container).db()?;
        self.log(TableId::Chunks, keys::pair(number, chunk), Some(container.to_le_bytes().to_vec()));
        Ok(())
    }

    pub fn del_chunk(&mut self, number: u64, chunk: u64) -> StoreResult<()> {
        self.chunks.remove((number, chunk)).db()?;
        self.log(TableId::Chunks, keys::pair(number, chunk), None);
        Ok(())
    }

    pub fn put_dirty(&mut self, number: u64, chunk: u64, region: u32) -> StoreResult<()> {
        self.dirty.insert((number, chunk, region), ()).db()?;
        self.log(TableId::Dirty, keys::dirty(number, chunk, region), Some(Vec::new()));
        Ok(())
    }

    pub fn del_dirty(&mut self, number: u64, chunk: u64, region: u32) -> StoreResult<()> {
        self.dirty.remove((number, chunk, region)).db()?;
        self.log(TableId::Dirty, keys::dirty(number, chunk, region), None);
        Ok(())
    }

    pub fn put_pending_delete(&mut self, number: u64, value: &[u8]) -> StoreResult<()> {
        self.pending_delete.insert(number, value).db()?;
        self.log(TableId::PendingDelete, keys::inode(number), Some(value.to_vec()));
        Ok(())
    }

    pub fn del_pending_delete(&mut self, number: u64) -> StoreResult<()> {
        self.pending_delete.remove(number).db()?;
        self.log(TableId::PendingDelete, keys::inode(number), None);
        Ok(())
    }

    pub fn request_checkpoint(&mut self) {
        self.force_checkpoint = true;
    }

    /// Checks the free-space reserve for an operation that may write about `bytes` to the
    /// database, and counts them against this batch (so that a large batch cannot overrun the
    /// reserve either).
    pub fn need_space(&mut self, usage: SpaceUse, bytes: u64) -> StoreResult<()> {
        let floor = match usage {
            SpaceUse::Consume => self.space_reserve_bytes / 2,
            SpaceUse::Free => self.space_reserve_bytes / 8,
        };
        let estimate = bytes + OPERATION_PAGES_BYTES;
        if self.space_available_bytes < floor.saturating_add(estimate) {
            return Err(StoreError::NoSpace);
        }
        self.space_available_bytes -= estimate;
        Ok(())
    }

    /// The entry of inode `number` (loaded into the hot table from this transaction if
    /// needed), or `None` if it does not exist or was removed.
    pub fn entry(&mut self, store: &Store, number: u64) -> StoreResult<Option<EntryRef>> {
        let inodes = &self.inodes;
        let entry = store.hot.get_or_load(number, || tables::get_inode(inodes, number))?;
        self.loaded.insert(number);
        Ok(entry.filter(|entry| !entry.lock().deleted))
    }

    /// The entry a FID names, or [`StoreError::Stale`].
    pub fn resolve(&mut self, store: &Store, fid: Fid) -> StoreResult<EntryRef> {
        if fid.container != crate::NAME_CONTAINER_ID {
            return Err(StoreError::Stale(fid));
        }
        let entry = self.entry(store, fid.inode)?.ok_or(StoreError::Stale(fid))?;
        if entry.lock().inode.uniquifier != fid.uniquifier {
            return Err(StoreError::Stale(fid));
        }
        Ok(entry)
    }

    /// Marks the entry's record to be written at the end of the batch.
    pub fn touch(&mut self, entry: &EntryRef) {
        let number = entry.lock().number;
        self.loaded.insert(number);
        if self.touched_numbers.insert(number) {
            self.touched.push(entry.clone());
        }
    }

    /// Also writes the entry's unstable inline blocks in this batch.
    pub fn flush_inline_of(&mut self, entry: &EntryRef) {
        self.touch(entry);
        self.flush_inline.insert(entry.lock().number);
    }
}

/// Longest a new leader waits for more operations while an fdatasync runs.
const GATHER_WAIT_MAX: Duration = Duration::from_millis(1);

/// What a waiting caller is told.
enum SlotState {
    Waiting,
    /// The previous leader hands the leadership over: run the next batch.
    Lead,
    Done(Box<StoreResult<Output>>),
}

struct Slot {
    state: Mutex<SlotState>,
    wake: Condvar,
}

impl Slot {
    fn set(&self, state: SlotState) {
        *self.state.lock() = state;
        self.wake.notify_one();
    }
}

/// Who waits for an operation's result.
enum Waiter {
    /// A thread blocked in [`submit`] (it may be handed the leadership).
    Thread(Arc<Slot>),
    /// A change started with [`start`], whose submitter does not wait: its callback runs on the
    /// thread that finishes its batch, and a committer thread leads for it.
    Callback(ChangeDone),
}

struct Queue {
    operations: Vec<(Op, Waiter)>,
    /// Invariant: when false, `operations` is empty (a leader that has applied its batch hands
    /// over to the first queued caller).
    leader: bool,
    /// A leader waits on `gather` for more operations.
    gathering: bool,
    /// An fdatasync of the journal is running.
    syncing: bool,
    /// Operations the last finished fdatasync made durable (and so released to submit again).
    last_synced_operations: u64,
}

pub(crate) struct ApplierState {
    pub next_inode: u64,
    pub txn_id: u64,
    /// The `used_bytes` meta row as the last batch committed it (at opening: as read, or
    /// computed from the inodes when the row is absent).
    pub used_bytes: u64,
}

/// How much of the journal is durable.
struct Synced {
    /// Journal records, numbered as [`GroupCommit::appended`] counts them, known durable.
    records: u64,
    /// Operations in them, as [`GroupCommit::appended_operations`] counts them.
    operations: u64,
}

pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    gather: Condvar,
    /// Held by the leader while it applies a batch, commits it to redb and appends its journal
    /// record (and submits its replication record): the order of batches.
    pub applier: Mutex<ApplierState>,
    /// Held while records are made durable: an fdatasync of the journal, or a checkpoint's
    /// durable commit. Batches are acknowledged in the order their records became durable.
    synced: Mutex<Synced>,
    /// Journal records appended (fully written, maybe not yet durable) since opening, and the
    /// operations in them.
    appended: AtomicU64,
    appended_operations: AtomicU64,
    /// Hot entries a batch loaded, to evict once no batch is being applied (one that is may
    /// hold them): (inode, whether a deleted entry goes too).
    evictions: Mutex<Vec<(u64, bool)>>,
    last_txn: AtomicU64,
    /// Batches committed and operations in them (for measurements).
    pub batches: AtomicU64,
    pub batched_operations: AtomicU64,
    committers: Arc<Committers>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.committers.state.lock().stopping = true;
        self.committers.wake.notify_all();
    }
}

impl GroupCommit {
    pub fn new(next_inode: u64, txn_id: u64, used_bytes: u64) -> GroupCommit {
        GroupCommit {
            queue: Mutex::new(Queue {
                operations: Vec::new(),
                leader: false,
                gathering: false,
                syncing: false,
                last_synced_operations: 0,
            }),
            gather: Condvar::new(),
            applier: Mutex::new(ApplierState { next_inode, txn_id, used_bytes }),
            synced: Mutex::new(Synced { records: 0, operations: 0 }),
            appended: AtomicU64::new(0),
            appended_operations: AtomicU64::new(0),
            evictions: Mutex::new(Vec::new()),
            last_txn: AtomicU64::new(txn_id),
            batches: AtomicU64::new(0),
            batched_operations: AtomicU64::new(0),
            committers: Arc::new(Committers::default()),
        }
    }

    pub fn last_txn(&self) -> TxnId {
        TxnId(self.last_txn.load(Ordering::SeqCst))
    }
}

/// Submits an operation and waits until it is durable (or failed).
///
/// Pipelining: a leader applies its batch, commits it to redb and appends it to the journal,
/// then hands the leadership over and only then waits for the fdatasync. The next batch is
/// applied while the previous one is being synced, and one fdatasync covers every record
/// appended before it started.
///
/// Gathering: a batch costs a fixed redb transaction and commit, and one started while an
/// fdatasync runs cannot be durable before that one ends anyway. So while one runs, a new leader
/// waits (until it ends, at most [`GATHER_WAIT_MAX`]) for as many operations as the last
/// finished fdatasync released: the callers it answered usually submit again within
/// microseconds.
pub(crate) fn submit(store: &Store, op: Op) -> StoreResult<Output> {
    let group = &store.group;
    let slot = Arc::new(Slot { state: Mutex::new(SlotState::Waiting), wake: Condvar::new() });
    let mut queue = group.queue.lock();
    queue.operations.push((op, Waiter::Thread(slot.clone())));
    let lead_now = !queue.leader;
    queue.leader = true;
    if queue.gathering {
        group.gather.notify_one();
    }
    drop(queue);
    if !lead_now {
        let mut state = slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, SlotState::Waiting) {
                SlotState::Waiting => slot.wake.wait(&mut state),
                SlotState::Lead => break,
                SlotState::Done(result) => return *result,
            }
        }
    }
    lead(store);
    match std::mem::replace(&mut *slot.state.lock(), SlotState::Waiting) {
        SlotState::Done(result) => *result,
        _ => unreachable!("a leader's own operation is in the batch it runs"),
    }
}

/// Runs one batch as the leader: applies it, hands the leadership to the first queued caller,
/// then waits until the batch is durable and answers its callers.
fn lead(store: &Store) {
    let group = &store.group;
    let mut queue = group.queue.lock();
    let deadline = Instant::now() + GATHER_WAIT_MAX;
    while queue.syncing
        && (queue.operations.len() as u64) < queue.last_synced_operations
        && queue.operations.len() < BATCH_OPS_MAX
    {
        queue.gathering = true;
        if group.gather.wait_until(&mut queue, deadline).timed_out() {
            break;
        }
    }
    queue.gathering = false;
    let count = queue.operations.len().min(BATCH_OPS_MAX);
    let (batch, waiters): (Vec<Op>, Vec<Waiter>) = queue.operations.drain(..count).unzip();
    drop(queue);
    let applied = std::panic::catch_unwind(AssertUnwindSafe(|| apply_batch(store, batch)));
    let mut queue = group.queue.lock();
    match queue.operations.first() {
        Some((_, Waiter::Thread(next))) => next.set(SlotState::Lead),
        Some((_, Waiter::Callback(_))) => group.committers.lead_elsewhere(None),
        None => queue.leader = false,
    }
    drop(queue);
    let results = applied
        .and_then(|applied| std::panic::catch_unwind(AssertUnwindSafe(|| acknowledge(store, applied))))
        .unwrap_or_else(|_| {
            store.poison("a metadata batch panicked".to_string());
            poisoned_results(store, waiters.len())
        });
    deliver(waiters, results);
}

/// Gives each waiter its result: wakes the waiting threads first, then runs the callbacks.
fn deliver(waiters: Vec<Waiter>, results: Vec<StoreResult<Output>>) {
    let mut callbacks = Vec::new();
    for (waiter, result) in waiters.into_iter().zip(results) {
        match waiter {
            Waiter::Thread(slot) => slot.set(SlotState::Done(Box::new(result))),
            Waiter::Callback(done) => callbacks.push((done, result)),
        }
    }
    for (done, result) in callbacks {
        let result = result.map(|output| match output {
            Output::Changed(changed) => changed,
            Output::Done => unreachable!("a started change answers with what it changed"),
        });
        if std::panic::catch_unwind(AssertUnwindSafe(|| done(result))).is_err() {
            tracing::error!("the callback of a change panicked");
        }
    }
}

/// Starts a change without waiting for it: `done` gets its result once it is durable (or has
/// failed), on the thread that finishes its batch. If no batch is being led, a committer thread
/// leads one.
pub(crate) fn start(store: &Arc<Store>, change: Change, done: ChangeDone) {
    let group = &store.group;
    let mut queue = group.queue.lock();
    queue.operations.push((Op::Change(change), Waiter::Callback(done)));
    if queue.gathering {
        group.gather.notify_one();
    }
    if !queue.leader {
        queue.leader = true;
        drop(queue);
        group.committers.lead_elsewhere(Some(store));
    }
}

/// Most committer threads per store: one applies a batch while another waits for the previous
/// batch's fdatasync (and runs its callbacks); the others cover callbacks that run late.
const COMMITTERS_MAX: usize = 4;
/// How long an idle committer thread lives.
const COMMITTER_IDLE: Duration = Duration::from_secs(10);

/// Threads that lead the batches of started changes, whose submitters cannot wait (the NFS
/// gateway's connection tasks). Started on demand; they hold the store only while leading, and
/// end when idle for [`COMMITTER_IDLE`] or when the store is dropped.
#[derive(Default)]
struct Committers {
    state: Mutex<CommittersState>,
    wake: Condvar,
}

#[derive(Default)]
struct CommittersState {
    /// Leaderships handed over to the committers and not yet taken.
    wanted: usize,
    threads: usize,
    /// The store to lead for (set by the first started change).
    store: std::sync::Weak<Store>,
    stopping: bool,
}

impl Committers {
    /// Hands the leadership (already marked taken in the queue) to a committer thread.
    fn lead_elsewhere(self: &Arc<Self>, store: Option<&Arc<Store>>) {
        let mut state = self.state.lock();
        if let Some(store) = store
            && state.store.strong_count() == 0
        {
            state.store = Arc::downgrade(store);
        }
        state.wanted += 1;
        if self.wake.notify_one() || state.threads >= COMMITTERS_MAX {
            return;
        }
        let committers = self.clone();
        let spawned = std::thread::Builder::new().name("cairn-commit".into()).spawn(move || committers.run());
        match spawned {
            Ok(_) => state.threads += 1,
            // The leadership stays wanted: the next hand-over tries again, and a running
            // committer takes it when it finishes.
            Err(error) => tracing::error!(%error, "cannot start a committer thread"),
        }
    }

    /// A committer thread: leads batches while leaderships are wanted.
    fn run(self: Arc<Self>) {
        let mut state = self.state.lock();
        loop {
            if state.wanted > 0 {
                state.wanted -= 1;
                let store = state.store.upgrade();
                drop(state);
                if let Some(store) = store {
                    lead(&store);
                }
                state = self.state.lock();
                continue;
            }
            if state.stopping
                || (self.wake.wait_for(&mut state, COMMITTER_IDLE).timed_out() && state.wanted == 0)
            {
                break;
            }
        }
        state.threads -= 1;
    }
}

/// The results of a batch that fails as a whole because the store is poisoned.
fn poisoned_results(store: &Store, count: usize) -> Vec<StoreResult<Output>> {
    (0..count).map(|_| Err(store.poisoned_error())).collect()
}

/// A batch committed to redb (visible to readers), not yet acknowledged.
struct Applied {
    results: Vec<StoreResult<Output>>,
    /// `None` when the batch failed as a whole (its results say so).
    committed: Option<Committed>,
}

struct Committed {
    /// The batch's journal record (its number in [`GroupCommit::appended`]) and the file to
    /// fdatasync; `None` if the batch committed durably to redb (a checkpoint).
    record: Option<(u64, Arc<std::fs::File>)>,
    written: Vec<Written>,
    post: Vec<Post>,
    loaded: HashSet<u64>,
    txn_id: u64,
    operations: usize,
    applied: Instant,
}

/// Applies a batch inside one write transaction, appends its changes to the journal and
/// commits it to redb without an fsync (or, at a checkpoint, durably).
fn apply_batch(store: &Store, batch: Vec<Op>) -> Applied {
    let count = batch.len();
    let started = Instant::now();
    let failed = |results: Vec<StoreResult<Output>>| Applied { results, committed: None };
    if store.is_poisoned() {
        return failed(poisoned_results(store, count));
    }
    let mut applier = store.group.applier.lock();
    let deferred = std::mem::take(&mut *store.group.evictions.lock());
    for (number, drop_deleted) in deferred {
        store.hot.evict_if_clean(number, drop_deleted);
    }
    let fail_all = |store: &Store, error: StoreError| -> Applied {
        store.poison(format!("metadata commit failed: {error}"));
        failed(poisoned_results(store, count))
    };
    let space_available_bytes = match crate::open::available_bytes(&store.config.data_dir) {
        Ok(bytes) => bytes,
        Err(error) => {
            return failed(
                (0..count).map(|_| Err(StoreError::Io(std::io::Error::other(error.to_string())))).collect(),
            );
        }
    };
    let mut txn = match store.db.begin_write().db() {
        Ok(txn) => txn,
        Err(error) => return fail_all(store, error),
    };
    let mut results: Vec<StoreResult<Output>> = Vec::with_capacity(count);
    let mut mutations = 0u64;
    let mut written: Vec<Written> = Vec::new();
    let (post, loaded, next_inode, mut changes, force_checkpoint, used_bytes) = {
        let opened = (|| -> StoreResult<Batch<'_>> {
            Ok(Batch {
                inodes: txn.open_table(tables::INODES).db()?,
                dirents: txn.open_table(tables::DIRENTS).db()?,
                cookies: txn.open_table(tables::COOKIES).db()?,
                inline: txn.open_table(tables::INLINE).db()?,
                chunks: txn.open_table(tables::CHUNKS).db()?,
                dirty: txn.open_table(tables::DIRTY).db()?,
                pending_delete: txn.open_table(tables::PENDING_DELETE).db()?,
                touched: Vec::new(),
                touched_numbers: HashSet::new(),
                flush_inline: HashSet::new(),
                loaded: HashSet::new(),
                post: Vec::new(),
                mutated: false,
                next_inode: applier.next_inode,
                space_available_bytes,
                space_reserve_bytes: store.config.space_reserve_bytes,
                changes: Vec::new(),
                force_checkpoint: false,
                used_bytes: applier.used_bytes,
            })
        })();
        let mut b = match opened {
            Ok(b) => b,
            Err(error) => return fail_all(store, error),
        };
        let finished: Vec<u64> = std::mem::take(&mut *store.finished_deletes.lock());
        for number in finished {
            if let Err(error) = b.del_pending_delete(number) {
                return fail_all(store, error);
            }
        }
        for op in batch {
            b.mutated = false;
            let result = apply(store, &mut b, op);
            match &result {
                Err(error) if b.mutated => {
                    let error = StoreError::Io(std::io::Error::other(error.to_string()));
                    return fail_all(store, error);
                }
                Ok(_) if b.mutated => mutations += 1,
                _ => {}
            }
            results.push(result);
        }
        // Write the records of every touched inode, and the inline blocks asked for.
        let touched = std::mem::take(&mut b.touched);
        for entry in &touched {
            let guard = entry.lock();
            if guard.deleted || guard.evicted {
                continue;
            }
            let number = guard.number;
            if let Err(error) = b.put_inode(number, guard.inode.encode().as_slice()) {
                drop(guard);
                return fail_all(store, error);
            }
            let mut blocks = Vec::new();
            if b.flush_inline.contains(&number) {
                for (&index, block) in &guard.inline_dirty {
                    let encoded = format::encode_inline(&block.data);
                    if let Err(error) = b.put_inline(number, index, encoded.as_slice()) {
                        drop(guard);
                        return fail_all(store, error);
                    }
                    blocks.push((index, block.generation));
                }
            }
            written.push((entry.clone(), guard.generation, blocks));
        }
        (
            std::mem::take(&mut b.post),
            std::mem::take(&mut b.loaded),
            b.next_inode,
            std::mem::take(&mut b.changes),
            b.force_checkpoint,
            b.used_bytes,
        )
    };
    let txn_id = applier.txn_id + mutations;
    // Durability: append the batch's changes to the journal, then commit to redb without an
    // fsync (the journal's fdatasync comes in `acknowledge`, while the next batch is applied);
    // or, at a checkpoint, commit to redb durably and start a new journal generation.
    let mut journal = store.journal.lock();
    changes.push(Row {
        table: TableId::Meta,
        key: b"next_inode".to_vec(),
        value: Some(next_inode.to_le_bytes().to_vec()),
    });
    changes.push(Row {
        table: TableId::Meta,
        key: b"txn_id".to_vec(),
        value: Some(txn_id.to_le_bytes().to_vec()),
    });
    // In every batch, like the counters above: it travels with the inode rows that change it
    // (and a store that predates the row gets it from its first batch).
    changes.push(Row {
        table: TableId::Meta,
        key: b"used_bytes".to_vec(),
        value: Some(used_bytes.to_le_bytes().to_vec()),
    });
    let mut payload = Vec::new();
    crate::journal::encode_changes(&changes, &mut payload);
    // Replication: the batch's record goes out before the local commit, under the applier lock
    // (the order of batches). Its sequence number is this store's position, committed with it.
    let position = if store.is_replicated() {
        let rows = std::mem::take(&mut changes).into_iter().map(Into::into).collect();
        match store.replicate(crate::replication::RecordBody::Name { changes: rows }) {
            Ok(position) => position,
            Err(error) => return fail_all(store, error),
        }
    } else {
        None
    };
    if let Some(position) = position {
        let change = Row {
            table: TableId::Meta,
            key: b"replication_position".to_vec(),
            value: Some(position.to_le_bytes().to_vec()),
        };
        crate::journal::encode_changes(std::slice::from_ref(&change), &mut payload);
    }
    // Near a full disk every batch commits durably: pages that non-durable commits free cannot
    // be reused before the next durable commit, so the database would grow into the reserve.
    let low_space = space_available_bytes < store.config.space_reserve_bytes.saturating_mul(2);
    let checkpoint = force_checkpoint
        || low_space
        || journal.batches >= CHECKPOINT_BATCHES
        || !journal.fits(payload.len());
    let generation = journal.generation + 1;
    let meta_result = (|| -> StoreResult<()> {
        let mut meta = txn.open_table(tables::META).db()?;
        meta.insert("next_inode", next_inode).db()?;
        meta.insert("txn_id", txn_id).db()?;
        meta.insert("used_bytes", used_bytes).db()?;
        if let Some(position) = position {
            meta.insert("replication_position", position).db()?;
        }
        if checkpoint {
            meta.insert("journal_generation", generation).db()?;
        }
        Ok(())
    })();
    if let Err(error) = meta_result {
        return fail_all(store, error);
    }
    let record = if checkpoint {
        // A durable commit makes every earlier record durable too; it waits for a running
        // fdatasync, and commits nothing after a failed one.
        let mut synced = store.group.synced.lock();
        if store.is_poisoned() {
            return failed(poisoned_results(store, count));
        }
        if let Err(error) = txn.set_durability(Durability::Immediate).db() {
            return fail_all(store, error);
        }
        if let Err(error) = txn.commit().db() {
            return fail_all(store, error);
        }
        synced.records = store.group.appended.load(Ordering::SeqCst);
        synced.operations = store.group.appended_operations.load(Ordering::SeqCst);
        journal.restart(generation);
        None
    } else {
        if let Err(error) = journal.append(&payload) {
            return fail_all(store, StoreError::Io(error));
        }
        store.group.appended_operations.fetch_add(count as u64, Ordering::SeqCst);
        let number = store.group.appended.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(error) = txn.set_durability(Durability::None).db() {
            return fail_all(store, error);
        }
        if let Err(error) = txn.commit().db() {
            return fail_all(store, error);
        }
        Some((number, journal.file()))
    };
    drop(journal);
    applier.next_inode = next_inode;
    applier.txn_id = txn_id;
    applier.used_bytes = used_bytes;
    drop(applier);
    tracing::trace!(
        operations = count,
        apply_us = started.elapsed().as_micros() as u64,
        checkpoint,
        "batch applied"
    );
    Applied {
        results,
        committed: Some(Committed {
            record,
            written,
            post,
            loaded,
            txn_id,
            operations: count,
            applied: Instant::now(),
        }),
    }
}

/// Waits until an applied batch is durable (making it so with an fdatasync that also covers
/// every record appended before it, unless an earlier one already did), then finishes it: the
/// in-memory state that may only change once the batch is durable, and the batch's results.
fn acknowledge(store: &Store, applied: Applied) -> Vec<StoreResult<Output>> {
    let Applied { results, committed } = applied;
    let Some(committed) = committed else {
        return results;
    };
    let group = &store.group;
    if let Some((number, file)) = &committed.record {
        let mut synced = group.synced.lock();
        if synced.records < *number {
            // After a failed fdatasync this record may be lost, and fsync is never retried.
            if store.is_poisoned() {
                return poisoned_results(store, results.len());
            }
            let target = group.appended.load(Ordering::SeqCst);
            let target_operations = group.appended_operations.load(Ordering::SeqCst);
            group.queue.lock().syncing = true;
            let outcome = store.faults.check_metadata_sync().and_then(|()| file.sync_data());
            let mut queue = group.queue.lock();
            queue.syncing = false;
            queue.last_synced_operations = target_operations.saturating_sub(synced.operations);
            if queue.gathering {
                group.gather.notify_one();
            }
            drop(queue);
            if let Err(error) = outcome {
                store.poison(format!("metadata commit failed: {error}"));
                return poisoned_results(store, results.len());
            }
            synced.records = target;
            synced.operations = target_operations;
        }
    }
    tracing::trace!(
        operations = committed.operations,
        durable_us = committed.applied.elapsed().as_micros() as u64,
        "batch durable"
    );
    group.batches.fetch_add(1, Ordering::Relaxed);
    group.batched_operations.fetch_add(committed.operations as u64, Ordering::Relaxed);
    group.last_txn.fetch_max(committed.txn_id, Ordering::SeqCst);

    // The records are durable.
    for (entry, generation, blocks) in committed.written {
        let mut guard = entry.lock();
        guard.persisted_generation = guard.persisted_generation.max(generation);
        for (index, block_generation) in blocks {
            if guard.inline_dirty.get(&index).is_some_and(|block| block.generation == block_generation) {
                guard.inline_dirty.remove(&index);
                store.inline_dirty_bytes.fetch_sub(BLOCK as u64, Ordering::SeqCst);
            }
        }
    }
    let mut evictions = Vec::new();
    let mut finished_deletes = Vec::new();
    for action in committed.post {
        match action {
            Post::SetMarks { entry, chunk, container, regions } => {
                let mut guard = entry.lock();
                if guard.deleted {
                    continue;
                }
                let state = guard
                    .chunks
                    .entry(chunk)
                    .or_insert_with(|| ChunkDirty { container, ..ChunkDirty::default() });
                state.marked.extend(regions);
            }
            Post::DeleteFiles { number, chunks } => {
                evictions.push((number, true));
                if !chunks.is_empty() {
                    data::delete_chunk_files(store, number, &chunks);
                    finished_deletes.push(number);
                }
            }
        }
    }
    store.finished_deletes.lock().extend(finished_deletes);
    evictions.extend(committed.loaded.into_iter().map(|number| (number, false)));
    evict_or_defer(store, evictions);
    results
}

/// Evicts clean hot entries now if no batch is being applied, else leaves them to the next
/// batch (a batch being applied may hold an entry it loaded and change it: evicting it would
/// lose the change).
fn evict_or_defer(store: &Store, mut evictions: Vec<(u64, bool)>) {
    let group = &store.group;
    match group.applier.try_lock() {
        Some(applier) => {
            evictions.append(&mut group.evictions.lock());
            for (number, drop_deleted) in evictions {
                store.hot.evict_if_clean(number, drop_deleted);
            }
            drop(applier);
        }
        None => group.evictions.lock().extend(evictions),
    }
}

fn apply(store: &Store, b: &mut Batch<'_>, op: Op) -> StoreResult<Output> {
    match op {
        Op::Change(change) => apply_change(store, b, change).map(Output::Changed),
        Op::MarkDirty { inode, regions } => {
            data::apply_mark_dirty(store, b, inode, &regions).map(|()| Output::Done)
        }
        Op::Flush { items } => data::apply_flush(store, b, &items).map(|()| Output::Done),
        Op::Checkpoint => {
            b.request_checkpoint();
            Ok(Output::Done)
        }
        Op::FlushAll => {
            let mut unstable = Vec::new();
            let mut bytes = 0;
            for entry in store.hot.all() {
                let guard = entry.lock();
                if !guard.deleted && !guard.evicted && guard.has_unstable() {
                    bytes += guard.inline_dirty.len() as u64 * BLOCK as u64;
                    drop(guard);
                    unstable.push(entry);
                }
            }
            b.need_space(SpaceUse::Consume, bytes)?;
            b.begin_mutation();
            for entry in unstable {
                b.flush_inline_of(&entry);
            }
            Ok(Output::Done)
        }
    }
}

fn apply_change(store: &Store, b: &mut Batch<'_>, change: Change) -> StoreResult<Changed> {
    match change {
        Change::Create { caller, directory, name, how } => {
            namespace::apply_create(store, b, &caller, directory, &name, how).map(Changed::Created)
        }
        Change::Mkdir { caller, directory, name, attributes } => {
            namespace::apply_mkdir(store, b, &caller, directory, &name, attributes).map(Changed::Created)
        }
        Change::Symlink { caller, directory, name, target, attributes } => {
            namespace::apply_symlink(store, b, &caller, directory, &name, &target, attributes)
                .map(Changed::Created)
        }
        Change::Mknod { caller, directory, name, kind, attributes } => {
            namespace::apply_mknod(store, b, &caller, directory, &name, kind, attributes)
                .map(Changed::Created)
        }
        Change::Remove { caller, directory, name } => {
            namespace::apply_remove(store, b, &caller, directory, &name, false).map(Changed::Wcc)
        }
        Change::Rmdir { caller, directory, name } => {
            namespace::apply_remove(store, b, &caller, directory, &name, true).map(Changed::Wcc)
        }
        Change::Rename { caller, from_directory, from_name, to_directory, to_name } => {
            namespace::apply_rename(store, b, &caller, from_directory, &from_name, to_directory, &to_name)
                .map(Changed::Renamed)
        }
        Change::Link { caller, fid, directory, name } => {
            namespace::apply_link(store, b, &caller, fid, directory, &name).map(Changed::Linked)
        }
        Change::Setattr { caller, fid, changes, guard_ctime } => {
            namespace::apply_setattr(store, b, &caller, fid, changes, guard_ctime).map(Changed::Wcc)
        }
    }
}

/// Chunk map rows of an inode, from inside a batch.
pub(crate) fn chunk_rows(b: &Batch<'_>, number: u64) -> StoreResult<Vec<(u64, u32)>> {
    use redb::ReadableTable;
    let mut out = Vec::new();
    for row in b.chunks.range((number, 0)..=(number, u64::MAX)).db()? {
        let (key, value) = row.db()?;
        out.push((key.value().1, value.value()));
    }
    Ok(out)
}

/// Deletes the dirty-region rows of an inode (all chunks, or one).
pub(crate) fn remove_dirty_rows(b: &mut Batch<'_>, number: u64, chunk: Option<u64>) -> StoreResult<()> {
    use redb::ReadableTable;
    let (low, high) = match chunk {
        Some(chunk) => ((number, chunk, 0), (number, chunk, u32::MAX)),
        None => ((number, 0, 0), (number, u64::MAX, u32::MAX)),
    };
    let mut keys = Vec::new();
    for row in b.dirty.range(low..=high).db()? {
        let (key, _) = row.db()?;
        keys.push(key.value());
    }
    for (number, chunk, region) in keys {
        b.del_dirty(number, chunk, region)?;
    }
    Ok(())
}
