//! The Raft log, vote and snapshot of one coord member, kept in a fjall database (`raft/`), and
//! the state machine that applies committed entries to the znode [`Tree`].
//!
//! Why fjall: its write path is a journal append and an fdatasync, as ZooKeeper's transaction log
//! is; redb's copy-on-write B-tree cost about 0.4 ms of extra work per commit here (measured:
//! 677 us against 267 us per 1.2 KiB durable write), which every write pays on the leader and a
//! follower.
//!
//! Durability: `append` returns at once and hands the entries to a flusher; the flusher writes every
//! queued job in one atomic write batch, then persists the journal with fdatasync, and only then
//! calls openraft's `LogFlushed` callbacks. That is group commit: 64 concurrent writers cost one
//! fsync, not 64. Votes, truncations and purges go through the same queue, so the store always sees
//! the operations in the order openraft issued them, and their callers wait for the fsync.
//!
//! Integrity: every value carries a CRC32C of its bytes. Opening the store reads every entry back
//! and checks it, and that the indexes are contiguous; any mismatch refuses to start with the path
//! and index in the message. Nothing is ever truncated to "repair" a file.
//!
//! fjall, on finding the newest batch of its journal damaged, drops it without an error: right
//! after a crash in the middle of a write (it was never acknowledged), wrong after damage to a
//! batch that was. So after every persist the store also records, in a small side file
//! (`raft.mark`), the last log index and vote term it made durable. At start, a log that ends before
//! the mark, or a vote older than it, means acknowledged data went missing, and the member refuses
//! to start (and keeps refusing). The mark is written without its own fsync (one fsync per commit
//! is the budget); it catches any loss seen after a process crash or a clean stop.
//!
//! The state machine lives in memory; a snapshot (the whole tree) is written to the same database
//! when openraft builds or installs one. At start the tree is the last snapshot, and openraft
//! replays the log entries after it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::api::{CommandOk, WatchEvent, Zxid, zxid_entry_end, zxid_of};
use crate::raft::{NodeId, TypeConfig};
use crate::tree::Tree;

const LOG: &str = "raft_log";
const META: &str = "raft_meta";

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";
const KEY_FORMAT: &str = "format";

/// Version of the layout of this file; see docs/format.md.
const FORMAT_VERSION: u32 = 1;
/// The `committed` hint is written once it has moved this many entries past the last one written.
/// A count of entries, not a period of time: what a restarted member replays at start must depend
/// only on what was written, never on how fast the machine ran (the deterministic simulation
/// restarts members and compares what they replayed from run to run).
const COMMITTED_EVERY_ENTRIES: u64 = 64;
/// Durable log entries kept in memory for replication.
const CACHED_ENTRIES_MAX: usize = 4096;
/// How long the flusher waits for more jobs when several are already queued.
const FLUSH_LINGER: std::time::Duration = std::time::Duration::from_micros(300);
/// Most jobs folded into one transaction by the flusher.
const FLUSH_JOBS_MAX: usize = 4096;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Why a member's store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("coord store {path} is damaged or unreadable: {source}; refusing to start")]
    Database { path: PathBuf, source: Box<fjall::Error> },
    #[error("coord store {path} is damaged: {what}; refusing to start")]
    Corrupt { path: PathBuf, what: String },
    #[error("coord store {path}: {source}")]
    Io { path: PathBuf, source: Box<fjall::Error> },
}

impl OpenError {
    /// Another process (a dying predecessor, say) still holds the database.
    pub fn is_in_use(&self) -> bool {
        matches!(self, OpenError::Database { source, .. } if matches!(**source, fjall::Error::Locked))
    }
}

/// How the log is made durable. `Background` folds concurrent appends into one fsync on a flusher
/// thread (production). `Inline` commits inside each call on the calling task; the deterministic
/// simulation uses it because it may not start threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    Background,
    Inline,
}

/// Appends `crc32c(bytes)` to `bytes`.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Checks and strips the CRC32C trailer.
fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 4 {
        return Err(format!("value of {} bytes is shorter than its checksum", bytes.len()));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    Ok(body)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map(seal).map_err(|e| e.to_string())
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    let body = unseal(bytes)?;
    rmp_serde::from_slice(body).map_err(|e| format!("undecodable: {e}"))
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// One write for the flusher.
enum Job {
    Append { entries: Vec<(u64, LogId<NodeId>, Vec<u8>)>, callback: LogFlushed<TypeConfig> },
    Truncate { since: u64, done: tokio::sync::oneshot::Sender<Result<(), String>> },
    Purge { upto: u64, value: Vec<u8>, done: tokio::sync::oneshot::Sender<Result<(), String>> },
    Meta { key: &'static str, value: Vec<u8>, done: tokio::sync::oneshot::Sender<Result<(), String>> },
}

/// The database and what both halves (log and state machine) share.
struct Shared {
    db: fjall::Database,
    log: fjall::Keyspace,
    meta: fjall::Keyspace,
    path: PathBuf,
    /// Entries handed to `append` and not yet durable, by index. Readers see them.
    /// Also the most recent durable ones (up to `CACHED_ENTRIES_MAX`), so that replication to
    /// followers reads memory, not the database.
    pending: Mutex<BTreeMap<u64, Entry<TypeConfig>>>,
    /// The latest `committed` openraft handed over, written with the next transaction: it is only
    /// a hint for replay at start, not worth a commit of its own.
    /// (one past the committed index, encoded value).
    committed: Mutex<Option<(u64, Vec<u8>)>>,
    /// One past the committed index of the hint last written (`None`: none written since open).
    committed_written: Mutex<Option<u64>>,
    last_purged: Mutex<Option<LogId<NodeId>>>,
    flusher: Option<std::sync::mpsc::Sender<Job>>,
    /// Set when a write failed: the member must stop, never retry (fsyncgate).
    failed: Mutex<Option<String>>,
    /// The side file, and what it says now.
    mark_file: std::fs::File,
    mark: Mutex<Mark>,
}

/// What the store has made durable, as recorded in `raft.mark`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Mark {
    /// One past the last durable log index (0: empty log).
    log_end: u64,
    vote_term: u64,
}

impl Mark {
    const BYTES: usize = 20;

    fn encode(self) -> [u8; Mark::BYTES] {
        let mut out = [0u8; Mark::BYTES];
        out[..8].copy_from_slice(&self.log_end.to_le_bytes());
        out[8..16].copy_from_slice(&self.vote_term.to_le_bytes());
        let crc = crc32c::crc32c(&out[..16]);
        out[16..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Mark, String> {
        if bytes.len() != Mark::BYTES {
            return Err(format!("is {} bytes long, not {}", bytes.len(), Mark::BYTES));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[16..]);
        if u32::from_le_bytes(crc) != crc32c::crc32c(&bytes[..16]) {
            return Err("checksum mismatch".into());
        }
        Ok(Mark { log_end: word(0), vote_term: word(8) })
    }
}

impl Shared {
    /// Writes `jobs` in one transaction, fsyncs, then reports to every waiter.
    fn run_jobs(&self, jobs: Vec<Job>) {
        let started = std::time::Instant::now();
        let result = if let Some(reason) = self.failed.lock().clone() {
            Err(format!("an earlier write failed: {reason}"))
        } else {
            self.write_jobs(&jobs)
        };
        tracing::trace!(jobs = jobs.len(), micros = started.elapsed().as_micros() as u64, "coord log commit");
        if let Err(reason) = &result {
            tracing::error!(path = %self.path.display(), "coord log write failed: {reason}");
            self.failed.lock().get_or_insert_with(|| reason.clone());
        } else {
            self.advance_mark(&jobs);
        }
        for job in jobs {
            match job {
                Job::Append { callback, .. } => {
                    if result.is_ok() {
                        // Keep recent durable entries cached; never drop one not yet durable.
                        let durable_end = self.mark.lock().log_end;
                        let mut pending = self.pending.lock();
                        while pending.len() > CACHED_ENTRIES_MAX {
                            match pending.first_key_value() {
                                Some((index, _)) if *index < durable_end => {
                                    pending.pop_first();
                                }
                                _ => break,
                            }
                        }
                    }
                    callback.log_io_completed(result.clone().map_err(io_error));
                }
                Job::Truncate { done, .. } | Job::Purge { done, .. } | Job::Meta { done, .. } => {
                    let _ = done.send(result.clone());
                }
            }
        }
    }

    /// Records what `jobs` made durable in the side file.
    fn advance_mark(&self, jobs: &[Job]) {
        use std::os::unix::fs::FileExt;
        let mut mark = self.mark.lock();
        let before = *mark;
        for job in jobs {
            match job {
                Job::Append { entries, .. } => {
                    if let Some((index, _, _)) = entries.last() {
                        mark.log_end = index.saturating_add(1);
                    }
                }
                Job::Truncate { since, .. } => mark.log_end = *since,
                Job::Purge { .. } => {}
                Job::Meta { key, value, .. } => {
                    if *key == KEY_VOTE
                        && let Ok(vote) = decode::<Vote<NodeId>>(value)
                    {
                        mark.vote_term = vote.leader_id.term;
                    }
                }
            }
        }
        if *mark != before
            && let Err(e) = self.mark_file.write_all_at(&mark.encode(), 0)
        {
            tracing::warn!("cannot update {}.mark: {e}", self.path.display());
        }
    }

    fn write_jobs(&self, jobs: &[Job]) -> Result<(), String> {
        let mut batch = self.db.batch();
        // Every `COMMITTED_EVERY_ENTRIES` entries: a hint for replay at start, not worth the bytes
        // on every commit. And never ahead of the log this batch leaves durable: at start openraft
        // replays up to it, and fails if entries are missing.
        let mut log_end = self.mark.lock().log_end;
        for job in jobs {
            match job {
                Job::Append { entries, .. } => {
                    if let Some((index, _, _)) = entries.last() {
                        log_end = index.saturating_add(1);
                    }
                }
                Job::Truncate { since, .. } => log_end = log_end.min(*since),
                Job::Purge { .. } | Job::Meta { .. } => {}
            }
        }
        {
            let mut written = self.committed_written.lock();
            let due = |end: u64| {
                end <= log_end && written.is_none_or(|w| end >= w.saturating_add(COMMITTED_EVERY_ENTRIES))
            };
            let mut pending = self.committed.lock();
            if let Some((end, committed)) = pending.take_if(|(end, _)| due(*end)) {
                batch.insert(&self.meta, KEY_COMMITTED, committed);
                *written = Some(end);
            }
        }
        // Indexes appended earlier in this same batch (not yet visible to reads of the keyspace).
        let mut appended: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
        for job in jobs {
            match job {
                Job::Append { entries, .. } => {
                    for (index, _, bytes) in entries {
                        batch.insert(&self.log, index.to_be_bytes(), bytes.as_slice());
                        appended.insert(*index);
                    }
                }
                Job::Truncate { since, .. } => {
                    for index in self.stored_indexes(*since..)? {
                        batch.remove(&self.log, index.to_be_bytes());
                    }
                    for index in appended.split_off(since) {
                        batch.remove(&self.log, index.to_be_bytes());
                    }
                }
                Job::Purge { upto, value, .. } => {
                    for index in self.stored_indexes(..=*upto)? {
                        batch.remove(&self.log, index.to_be_bytes());
                    }
                    let kept = appended.split_off(&upto.saturating_add(1));
                    for index in std::mem::replace(&mut appended, kept) {
                        batch.remove(&self.log, index.to_be_bytes());
                    }
                    batch.insert(&self.meta, KEY_PURGED, value.as_slice());
                }
                Job::Meta { key, value, .. } => {
                    batch.insert(&self.meta, *key, value.as_slice());
                }
            }
        }
        batch.commit().map_err(|e| e.to_string())?;
        self.db.persist(fjall::PersistMode::SyncData).map_err(|e| e.to_string())
    }

    /// The indexes stored in the log keyspace within `range`.
    fn stored_indexes(&self, range: impl RangeBounds<u64>) -> Result<Vec<u64>, String> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(*e),
            Bound::Excluded(e) => e.checked_sub(1),
            Bound::Unbounded => Some(u64::MAX),
        };
        let Some(end) = end else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in self.log.range(start.to_be_bytes()..=end.to_be_bytes()) {
            let key = item.key().map_err(|e| e.to_string())?;
            out.push(index_of(&key)?);
        }
        Ok(out)
    }

    fn submit(&self, job: Job) {
        match &self.flusher {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(job)) = tx.send(job) {
                    // The flusher is gone (shutdown): fail the job rather than lose it silently.
                    self.failed.lock().get_or_insert_with(|| "the log flusher has stopped".to_owned());
                    self.run_jobs(vec![job]);
                }
            }
            None => self.run_jobs(vec![job]),
        }
    }

    async fn submit_and_wait(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Job,
    ) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.submit(make(done));
        wait.await.map_err(|_| "the log flusher dropped a job".to_owned())?
    }

    fn read_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, String> {
        match self.meta.get(key).map_err(|e| e.to_string())? {
            Some(v) => decode(&v).map(Some).map_err(|e| format!("{key}: {e}")),
            None => Ok(None),
        }
    }

    /// Entries in `range`: from the cache when it holds the start of the range, else from the
    /// file overlaid with the cache.
    fn entries(&self, start: u64, end_exclusive: u64) -> Result<Vec<Entry<TypeConfig>>, String> {
        {
            let pending = self.pending.lock();
            if pending.first_key_value().is_some_and(|(first, _)| *first <= start) {
                return Ok(pending.range(start..end_exclusive).map(|(_, e)| e.clone()).collect());
            }
        }
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = BTreeMap::new();
        if start < end_exclusive {
            for item in self.log.range(start.to_be_bytes()..end_exclusive.to_be_bytes()) {
                let (k, v) = item.into_inner().map_err(|e| e.to_string())?;
                let index = index_of(&k)?;
                let entry: Entry<TypeConfig> = decode(&v).map_err(|e| format!("log entry {index}: {e}"))?;
                out.insert(index, entry);
            }
            let pending = self.pending.lock();
            for (index, entry) in pending.range(start..end_exclusive) {
                out.insert(*index, entry.clone());
            }
        }
        Ok(out.into_values().collect())
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, String> {
        if let Some((_, e)) = self.pending.lock().last_key_value() {
            return Ok(Some(e.log_id));
        }
        match self.log.last_key_value() {
            Some(item) => {
                let (k, v) = item.into_inner().map_err(|e| e.to_string())?;
                let index = index_of(&k)?;
                let entry: Entry<TypeConfig> = decode(&v).map_err(|e| format!("log entry {index}: {e}"))?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

/// A log key back to its index.
fn index_of(key: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| format!("log key of {} bytes", key.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Opens (or creates) a member's store at `dir/raft/`, checking every value. Returns the log half
/// and the state-machine half for `openraft::Raft::new`.
pub fn open(dir: &Path, mode: FlushMode) -> Result<(LogStore, StateMachineStore), OpenError> {
    let path = dir.join("raft");
    let db = fjall::Database::builder(&path)
        .open()
        .map_err(|e| OpenError::Database { path: path.clone(), source: Box::new(e) })?;
    let corrupt = |what: String| OpenError::Corrupt { path: path.clone(), what };
    let io = |e: fjall::Error| OpenError::Io { path: path.clone(), source: Box::new(e) };
    let log = db.keyspace(LOG, fjall::KeyspaceCreateOptions::default).map_err(io)?;
    let meta = db.keyspace(META, fjall::KeyspaceCreateOptions::default).map_err(io)?;

    // Stamp the format on first open; check it otherwise.
    match meta.get(KEY_FORMAT).map_err(io)? {
        None => {
            let value = encode(&FORMAT_VERSION).map_err(&corrupt)?;
            meta.insert(KEY_FORMAT, value).map_err(io)?;
            db.persist(fjall::PersistMode::SyncData).map_err(io)?;
        }
        Some(bytes) => {
            let version: u32 = decode(&bytes).map_err(|e| corrupt(format!("format marker: {e}")))?;
            if version != FORMAT_VERSION {
                return Err(corrupt(format!(
                    "format version {version}, this binary reads version {FORMAT_VERSION}"
                )));
            }
        }
    }

    // Check every log entry: checksum, decodability, index matches key, contiguous.
    let mut previous: Option<u64> = None;
    for item in log.iter() {
        let (k, v) = item.into_inner().map_err(io)?;
        let index = index_of(&k).map_err(&corrupt)?;
        let entry: Entry<TypeConfig> = decode(&v).map_err(|e| corrupt(format!("log entry {index}: {e}")))?;
        if entry.log_id.index != index {
            return Err(corrupt(format!("log entry stored at {index} says it is {}", entry.log_id.index)));
        }
        if let Some(p) = previous
            && p + 1 != index
        {
            return Err(corrupt(format!("log has a hole between entries {p} and {index}")));
        }
        previous = Some(index);
    }
    for item in meta.iter() {
        let (k, v) = item.into_inner().map_err(io)?;
        unseal(&v).map_err(|e| corrupt(format!("{}: {e}", String::from_utf8_lossy(&k))))?;
    }

    // Compare with the side file: the log must reach as far, and the vote as high, as recorded.
    let mark_path = dir.join("raft.mark");
    let mark_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&mark_path)
        .map_err(|e| corrupt(format!("cannot open {}: {e}", mark_path.display())))?;
    let mark_bytes = std::fs::read(&mark_path)
        .map_err(|e| corrupt(format!("cannot read {}: {e}", mark_path.display())))?;
    let (log_end, vote_term) = {
        let last = previous.map(|p| p.saturating_add(1));
        let purged: Option<Option<LogId<NodeId>>> = match meta.get(KEY_PURGED).map_err(io)? {
            Some(v) => Some(decode(&v).map_err(|e| corrupt(format!("{KEY_PURGED}: {e}")))?),
            None => None,
        };
        let purged_end = purged.flatten().map(|l| l.index.saturating_add(1)).unwrap_or(0);
        let vote: Option<Vote<NodeId>> = match meta.get(KEY_VOTE).map_err(io)? {
            Some(v) => Some(decode(&v).map_err(|e| corrupt(format!("{KEY_VOTE}: {e}")))?),
            None => None,
        };
        (last.unwrap_or(0).max(purged_end), vote.map(|v| v.leader_id.term).unwrap_or(0))
    };
    let mark = if mark_bytes.is_empty() {
        Mark { log_end, vote_term }
    } else {
        let mark = Mark::decode(&mark_bytes).map_err(|e| corrupt(format!("{}: {e}", mark_path.display())))?;
        let kept = "";
        if log_end < mark.log_end {
            return Err(corrupt(format!(
                "the log ends before index {} but entries up to {} were made durable: acknowledged \
                 entries are missing{kept}; to recover, remove this member's data directory and add \
                 the member back: it catches up from the others",
                log_end,
                mark.log_end.saturating_sub(1)
            )));
        }
        if vote_term < mark.vote_term {
            return Err(corrupt(format!(
                "the saved vote is for term {vote_term} but a vote for term {} was made durable{kept}",
                mark.vote_term
            )));
        }
        mark
    };
    {
        use std::os::unix::fs::FileExt;
        mark_file
            .write_all_at(&mark.encode(), 0)
            .map_err(|e| corrupt(format!("cannot write {}: {e}", mark_path.display())))?;
    }

    let (tx, rx) = match mode {
        FlushMode::Background => {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            (Some(tx), Some(rx))
        }
        FlushMode::Inline => (None, None),
    };
    let shared = Arc::new(Shared {
        db,
        log,
        meta,
        path: path.clone(),
        pending: Mutex::new(BTreeMap::new()),
        committed: Mutex::new(None),
        committed_written: Mutex::new(None),
        last_purged: Mutex::new(None),
        flusher: tx,
        failed: Mutex::new(None),
        mark_file,
        mark: Mutex::new(mark),
    });
    let last_purged: Option<LogId<NodeId>> = shared.read_meta(KEY_PURGED).map_err(&corrupt)?;
    *shared.last_purged.lock() = last_purged;

    if let Some(rx) = rx {
        // The thread holds only a weak reference, so dropping the stores ends it.
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("coord-flush".into())
            .spawn(move || flusher_loop(rx, weak))
            .map_err(|e| OpenError::Corrupt {
                path: path.clone(),
                what: format!("cannot start flusher: {e}"),
            })?;
    }

    let snapshot: Option<StoredSnapshot> = shared.read_meta(KEY_SNAPSHOT).map_err(&corrupt)?;
    let (tree, last_applied, membership) = match &snapshot {
        Some(s) => (
            Tree::from_bytes(&s.data).map_err(|e| corrupt(format!("snapshot: {e}")))?,
            s.meta.last_log_id,
            s.meta.last_membership.clone(),
        ),
        None => (Tree::new(), None, StoredMembership::default()),
    };
    let (applied_tx, _) =
        tokio::sync::watch::channel(last_applied.map(|l| zxid_entry_end(l.index)).unwrap_or(0));
    let machine = Arc::new(Machine {
        tree: RwLock::new(tree),
        state: Mutex::new(MachineState { last_applied, membership, snapshot, snapshot_count: 0 }),
        applied: applied_tx,
        listener: Mutex::new(None),
    });
    Ok((LogStore { shared: shared.clone() }, StateMachineStore { shared, machine }))
}

fn flusher_loop(rx: std::sync::mpsc::Receiver<Job>, shared: std::sync::Weak<Shared>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < FLUSH_JOBS_MAX {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Several jobs already waiting means many writers: wait a moment for more, so that one
        // commit (one fsync, one journal append) serves them all. A lone writer does not
        // wait.
        if jobs.len() > 1 {
            let until = std::time::Instant::now() + FLUSH_LINGER;
            while jobs.len() < FLUSH_JOBS_MAX {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let Some(shared) = shared.upgrade() else { return };
        shared.run_jobs(jobs);
    }
}

/// The log half: what openraft appends, truncates, purges; plus the vote.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        self.shared.entries(start, end).map_err(|e| StorageIOError::read_logs(AnyError::error(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged = *self.shared.last_purged.lock();
        let last = self
            .shared
            .last_entry_id()
            .map_err(|e| StorageError::from(StorageIOError::read_logs(AnyError::error(e))))?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let value = encode(vote).map_err(|e| StorageIOError::write_vote(AnyError::error(e)))?;
        self.shared
            .submit_and_wait(|done| Job::Meta { key: KEY_VOTE, value, done })
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.shared.read_meta(KEY_VOTE).map_err(|e| StorageIOError::read_vote(AnyError::error(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Rides with the next transaction: a lost `committed` only means replaying a little more
        // at start.
        let value = encode(&committed).map_err(|e| StorageIOError::write(AnyError::error(e)))?;
        let end = committed.map(|c| c.index.saturating_add(1)).unwrap_or(0);
        *self.shared.committed.lock() = Some((end, value));
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> = self
            .shared
            .read_meta(KEY_COMMITTED)
            .map_err(|e| StorageError::from(StorageIOError::read(AnyError::error(e))))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut pending = self.shared.pending.lock();
            for entry in entries {
                let bytes = encode(&entry)
                    .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::error(e)))?;
                encoded.push((entry.log_id.index, entry.log_id, bytes));
                pending.insert(entry.log_id.index, entry);
            }
        }
        self.shared.submit(Job::Append { entries: encoded, callback });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.shared.pending.lock().retain(|index, _| *index < log_id.index);
        self.shared
            .submit_and_wait(|done| Job::Truncate { since: log_id.index, done })
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::error(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let value = encode(&Some(log_id)).map_err(|e| StorageIOError::write_logs(AnyError::error(e)))?;
        self.shared
            .submit_and_wait(|done| Job::Purge { upto: log_id.index, value, done })
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_logs(AnyError::error(e))))?;
        *self.shared.last_purged.lock() = Some(log_id);
        self.shared.pending.lock().retain(|index, _| *index > log_id.index);
        Ok(())
    }
}

/// A snapshot as kept in the file: openraft's metadata and `Tree::to_bytes`.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

struct MachineState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshot_count: u64,
}

/// Told about every applied change, in apply order, on the applying task; the coord server uses it
/// to fire watches. It must not block.
pub type ApplyListener = Box<dyn Fn(Zxid, &[WatchEvent]) + Send + Sync>;

/// The in-memory state machine, shared with the server (which reads the tree to answer reads).
pub struct Machine {
    tree: RwLock<Tree>,
    state: Mutex<MachineState>,
    applied: tokio::sync::watch::Sender<Zxid>,
    listener: Mutex<Option<ApplyListener>>,
}

impl Machine {
    /// Runs `f` on the current tree.
    pub fn read<T>(&self, f: impl FnOnce(&Tree) -> T) -> T {
        f(&self.tree.read())
    }
    /// Runs `f` on the current tree, and returns the zxid that tree has applied (`applied` is
    /// advanced under the tree lock, so the two belong together).
    pub fn read_applied<T>(&self, f: impl FnOnce(&Tree) -> T) -> (T, Zxid) {
        let tree = self.tree.read();
        let applied = *self.applied.borrow();
        (f(&tree), applied)
    }
    /// The last zxid applied (the end of the last applied entry), and a way to wait for a later
    /// one.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<Zxid> {
        self.applied.subscribe()
    }
    pub fn set_listener(&self, listener: ApplyListener) {
        *self.listener.lock() = Some(listener);
    }
}

/// The state-machine half given to openraft.
pub struct StateMachineStore {
    shared: Arc<Shared>,
    machine: Arc<Machine>,
}

impl StateMachineStore {
    pub fn machine(&self) -> Arc<Machine> {
        self.machine.clone()
    }

    fn snapshot_of(stored: &StoredSnapshot) -> Snapshot<TypeConfig> {
        Snapshot { meta: stored.meta.clone(), snapshot: Box::new(Cursor::new(stored.data.clone())) }
    }

    async fn persist_snapshot(&self, stored: &StoredSnapshot) -> StorageResult<()> {
        let signature = Some(stored.meta.signature());
        let value = encode(stored)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), AnyError::error(e)))?;
        self.shared
            .submit_and_wait(|done| Job::Meta { key: KEY_SNAPSHOT, value, done })
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature, AnyError::error(e)).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_applied, membership, count) = {
            let tree = self.machine.tree.read();
            let mut state = self.machine.state.lock();
            state.snapshot_count += 1;
            (tree.to_bytes(), state.last_applied, state.membership.clone(), state.snapshot_count)
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{count}", l.leader_id, l.index),
            None => format!("empty-{count}"),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id },
            data,
        };
        self.persist_snapshot(&stored).await?;
        let snapshot = Self::snapshot_of(&stored);
        self.machine.state.lock().snapshot = Some(stored);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>)> {
        let state = self.machine.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<crate::api::CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut last = None;
        {
            let mut tree = self.machine.tree.write();
            let listener = self.machine.listener.lock();
            let mut state = self.machine.state.lock();
            for entry in entries {
                let index = entry.log_id.index;
                state.last_applied = Some(entry.log_id);
                let result = match &entry.payload {
                    EntryPayload::Blank => Ok(CommandOk::Internal),
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Ok(CommandOk::Internal)
                    }
                    EntryPayload::Normal(command) => {
                        let (result, events) = tree.apply(zxid_of(index, 0), command);
                        if let Some(listener) = listener.as_ref()
                            && !events.is_empty()
                        {
                            listener(zxid_of(index, 0), &events);
                        }
                        result
                    }
                };
                results.push(result);
                last = Some(index);
            }
            // Under the tree lock, so that a reader sees the tree and `applied` of the same moment.
            if let Some(index) = last {
                self.machine.applied.send_replace(zxid_entry_end(index));
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachineStore { shared: self.shared.clone(), machine: self.machine.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let tree = Tree::from_bytes(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e.to_string()))
        })?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.persist_snapshot(&stored).await?;
        {
            let mut current = self.machine.tree.write();
            let mut state = self.machine.state.lock();
            *current = tree;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.snapshot = Some(stored);
            if let Some(l) = meta.last_log_id {
                self.machine.applied.send_replace(zxid_entry_end(l.index));
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.machine.state.lock().snapshot.as_ref().map(Self::snapshot_of))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    /// Writes entries straight into the log keyspace and advances the mark, as a flush would.
    fn write_entries(log: &LogStore, indexes: std::ops::Range<u64>) {
        let shared = &log.shared;
        for index in indexes.clone() {
            let bytes = encode(&blank(index)).expect("encode");
            shared.log.insert(index.to_be_bytes(), bytes).expect("insert");
        }
        shared.db.persist(fjall::PersistMode::SyncData).expect("persist");
        let mut mark = shared.mark.lock();
        mark.log_end = indexes.end;
        use std::os::unix::fs::FileExt;
        shared.mark_file.write_all_at(&mark.encode(), 0).expect("write mark");
    }

    #[test]
    fn entries_lost_behind_the_stores_back_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (log, _machine) = open(dir.path(), FlushMode::Inline).expect("open");
            write_entries(&log, 0..10);
        }
        // Reopens fine and sees every entry.
        {
            let (log, _machine) = open(dir.path(), FlushMode::Inline).expect("reopen");
            assert_eq!(log.shared.entries(0, 10).expect("read").len(), 10);
            // The database silently loses its last entries (as a dropped journal tail would).
            for index in 7..10u64 {
                log.shared.log.remove(index.to_be_bytes()).expect("remove");
            }
            log.shared.db.persist(fjall::PersistMode::SyncData).expect("persist");
        }
        for _ in 0..2 {
            let error = open(dir.path(), FlushMode::Inline).err().expect("a store missing entries opened");
            let message = error.to_string();
            assert!(message.contains("acknowledged entries are missing"), "{message}");
            assert!(message.contains("up to 9"), "{message}");
        }
    }

    #[test]
    fn a_damaged_value_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (log, _machine) = open(dir.path(), FlushMode::Inline).expect("open");
            write_entries(&log, 0..3);
            let mut bytes = encode(&blank(1)).expect("encode");
            bytes[2] ^= 0x40;
            log.shared.log.insert(1u64.to_be_bytes(), bytes).expect("insert");
            log.shared.db.persist(fjall::PersistMode::SyncData).expect("persist");
        }
        let message = open(dir.path(), FlushMode::Inline).err().expect("opened").to_string();
        assert!(message.contains("log entry 1") && message.contains("checksum"), "{message}");
    }

    #[test]
    fn a_hole_in_the_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (log, _machine) = open(dir.path(), FlushMode::Inline).expect("open");
            write_entries(&log, 0..5);
            log.shared.log.remove(2u64.to_be_bytes()).expect("remove");
            log.shared.db.persist(fjall::PersistMode::SyncData).expect("persist");
        }
        let message = open(dir.path(), FlushMode::Inline).err().expect("opened").to_string();
        assert!(message.contains("hole between entries 1 and 3"), "{message}");
    }
}
