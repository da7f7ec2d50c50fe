//! The types coord's clients see: znode paths, create modes, stats, operations, results, watch
//! events and errors. They travel over the wire (serde, MessagePack) and sit in the Raft log, so
//! changing them is a format change: add variants at the end, never reorder.

use serde::{Deserialize, Serialize};

/// A session's id. It is the Raft log index of the entry that created the session, so it is unique
/// cluster-wide and never reused. `NO_SESSION` marks one-shot writes made without a session (they
/// may only create persistent znodes).
pub type SessionId = u64;
pub const NO_SESSION: SessionId = 0;

/// A transaction id (ZooKeeper's zxid): `log index * ZXIDS_PER_ENTRY + position`, where position is
/// the write's place in its log entry (the leader batches concurrent writes into one entry). It is
/// unique and strictly increasing cluster-wide, which is what makes a lock znode's `czxid` a
/// fencing epoch.
pub type Zxid = u64;

/// Room for this many writes in one log entry.
pub const ZXIDS_PER_ENTRY: u64 = 1 << 16;

/// The zxid of the write at `position` in the log entry at `index`.
pub fn zxid_of(index: u64, position: usize) -> Zxid {
    index.saturating_mul(ZXIDS_PER_ENTRY).saturating_add(position as u64)
}

/// The last zxid of the entry at `index`: a member that applied the entry has applied every zxid
/// up to this one.
pub fn zxid_entry_end(index: u64) -> Zxid {
    index.saturating_add(1).saturating_mul(ZXIDS_PER_ENTRY).saturating_sub(1)
}

/// Longest path accepted, in bytes.
pub const PATH_BYTES_MAX: usize = 4096;
/// Largest znode value accepted, in bytes (ZooKeeper's default jute.maxbuffer is 1 MiB too).
pub const DATA_BYTES_MAX: usize = 1024 * 1024;
/// Most operations in one `multi`.
pub const MULTI_OPS_MAX: usize = 1024;
/// Session timeouts are clamped into this range, in milliseconds.
pub const SESSION_TIMEOUT_MS_MIN: u64 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: u64 = 120_000;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreateMode {
    Persistent,
    Ephemeral,
    PersistentSequential,
    EphemeralSequential,
}

impl CreateMode {
    pub fn is_ephemeral(self) -> bool {
        matches!(self, CreateMode::Ephemeral | CreateMode::EphemeralSequential)
    }
    pub fn is_sequential(self) -> bool {
        matches!(self, CreateMode::PersistentSequential | CreateMode::EphemeralSequential)
    }
}

/// A znode's metadata, as in ZooKeeper.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Stat {
    /// Zxid of the change that created this znode.
    pub czxid: Zxid,
    /// Zxid of the change that last modified this znode's data (or created it).
    pub mzxid: Zxid,
    /// Zxid of the change that last added or removed a child (or created it).
    pub pzxid: Zxid,
    /// Creation time, milliseconds since the Unix epoch, stamped by the leader that proposed it.
    pub ctime_ms: u64,
    /// Time of the last data change, same clock.
    pub mtime_ms: u64,
    /// Number of data changes since creation.
    pub version: i32,
    /// Number of child changes since creation (also the next sequential suffix).
    pub cversion: i32,
    /// Owning session for an ephemeral znode, `NO_SESSION` otherwise.
    pub ephemeral_owner: SessionId,
    pub data_length: u32,
    pub num_children: u32,
}

/// One write operation. `version: None` means "any version" (ZooKeeper's -1).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Create {
        path: String,
        #[serde(with = "bytes")]
        data: Vec<u8>,
        mode: CreateMode,
    },
    Delete {
        path: String,
        version: Option<i32>,
    },
    SetData {
        path: String,
        #[serde(with = "bytes")]
        data: Vec<u8>,
        version: Option<i32>,
    },
    /// Fails the `multi` unless the znode exists with exactly this version.
    Check {
        path: String,
        version: i32,
    },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::Create { path, .. }
            | Op::Delete { path, .. }
            | Op::SetData { path, .. }
            | Op::Check { path, .. } => path,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// `path` is the name actually created (with the sequential suffix, if any).
    Created {
        path: String,
        stat: Stat,
    },
    Deleted,
    Set {
        stat: Stat,
    },
    Checked,
}

/// What goes into the Raft log. Every field that `apply` needs is in the entry: `apply` reads no
/// clock and draws no random number, so every member reaches the same tree.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The new session's id is the index of this entry.
    CreateSession { timeout_ms: u64 },
    /// A client closed its session: its ephemerals go now.
    CloseSession { session: SessionId },
    /// The leader saw no heartbeat within the timeout: the sessions' ephemerals go.
    ExpireSessions { sessions: Vec<SessionId> },
    /// One write, on behalf of `session`; `time_ms` is the leader's wall clock when proposed.
    Write { session: SessionId, op: Op, time_ms: u64 },
    /// Several writes, all applied or none.
    Multi { session: SessionId, ops: Vec<Op>, time_ms: u64 },
    /// Independent commands from different clients, proposed together; each has its own result
    /// and zxid. Never nested.
    Batch(Vec<Command>),
}

impl Command {
    /// A rough size in bytes, to keep batches within the frame limit.
    pub fn approx_bytes(&self) -> usize {
        let op_bytes = |op: &Op| {
            op.path().len()
                + match op {
                    Op::Create { data, .. } | Op::SetData { data, .. } => data.len(),
                    Op::Delete { .. } | Op::Check { .. } => 0,
                }
                + 32
        };
        match self {
            Command::Write { op, .. } => op_bytes(op),
            Command::Multi { ops, .. } => ops.iter().map(op_bytes).sum(),
            Command::ExpireSessions { sessions } => sessions.len() * 9 + 16,
            Command::Batch(commands) => commands.iter().map(Command::approx_bytes).sum(),
            Command::CreateSession { .. } | Command::CloseSession { .. } => 32,
        }
    }
}

/// What `apply` returns for a command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CommandOk {
    SessionCreated {
        session: SessionId,
        timeout_ms: u64,
    },
    SessionClosed,
    /// The sessions that existed and are now gone.
    SessionsExpired {
        sessions: Vec<SessionId>,
    },
    Write(OpResult),
    Multi(Vec<OpResult>),
    /// The result of a Raft-internal entry (blank or membership), which changes no znode.
    Internal,
    /// One result per command of a `Command::Batch`, in order.
    Batch(Vec<CommandResult>),
}

pub type CommandResult = Result<CommandOk, CoordError>;

/// Which kind of watch a client sets. A data watch set by `get` or `exists` fires on create,
/// delete and data change of the path; a children watch set by `children` fires when a child is
/// added or removed, or the znode itself is deleted. Both are one-shot, as in ZooKeeper.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchKind {
    Data,
    Children,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Created,
    Deleted,
    DataChanged,
    ChildrenChanged,
}

/// A change that may fire watches: produced by `apply`, in apply order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub event: EventType,
    /// The zxid of the change.
    pub zxid: Zxid,
}

impl WatchEvent {
    /// Which watch kinds this event fires: data watches for created/deleted/changed, children
    /// watches for children changed and deleted.
    pub fn fires(&self, kind: WatchKind) -> bool {
        matches!(
            (self.event, kind),
            (EventType::Created | EventType::Deleted | EventType::DataChanged, WatchKind::Data)
                | (EventType::ChildrenChanged | EventType::Deleted, WatchKind::Children)
        )
    }
}

/// Every failure a client can see. Expected outcomes (no node, version mismatch, not leader) are
/// values of this type, not panics or strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordError {
    #[error("no znode at {path}")]
    NoNode { path: String },
    #[error("a znode already exists at {path}")]
    NodeExists { path: String },
    #[error("version mismatch at {path}: expected {expected}, znode is at {actual}")]
    BadVersion { path: String, expected: i32, actual: i32 },
    #[error("{path} has children")]
    NotEmpty { path: String },
    #[error("{path} is ephemeral and cannot have children")]
    NoChildrenForEphemerals { path: String },
    #[error("session {session:#x} has expired or was closed")]
    SessionExpired { session: SessionId },
    #[error("an ephemeral znode needs a session")]
    EphemeralWithoutSession,
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("value of {bytes} bytes is larger than the {max} allowed")]
    DataTooLarge { bytes: usize, max: usize },
    #[error("operation {index} of the multi failed: {error}")]
    MultiFailed { index: usize, error: Box<CoordError> },
    #[error("a multi holds {count} operations, more than the {max} allowed")]
    MultiTooLarge { count: usize, max: usize },
    #[error("the root znode cannot be {what}")]
    RootImmutable { what: String },
    /// No leader is known or reachable; the quorum may have lost its majority.
    #[error("coord is unavailable: {reason}")]
    Unavailable { reason: String },
    /// A request that makes no sense (malformed message, unknown member...).
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    /// Membership change refused or failed.
    #[error("membership change failed: {reason}")]
    Membership { reason: String },
    /// The connection broke after a write was sent: it may or may not have been applied. Read back
    /// before retrying (ZooKeeper's ConnectionLoss).
    #[error("connection lost, the outcome is unknown: {reason}")]
    ConnectionLoss { reason: String },
    /// This client was closed, or its session expired: make a new client.
    #[error("client closed")]
    Closed,
}

/// Checks a znode path: absolute, no empty, `.` or `..` component, no trailing slash (except the
/// root), no NUL, at most `PATH_BYTES_MAX` bytes.
pub fn validate_path(path: &str) -> Result<(), CoordError> {
    let bad = |reason: &str| Err(CoordError::BadPath { path: path.to_owned(), reason: reason.to_owned() });
    if path.len() > PATH_BYTES_MAX {
        return bad("too long");
    }
    if !path.starts_with('/') {
        return bad("must start with /");
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return bad("must not end with /");
    }
    if path.contains('\0') {
        return bad("must not contain NUL");
    }
    for part in path[1..].split('/') {
        match part {
            "" => return bad("empty component"),
            "." | ".." => return bad("relative component"),
            _ => {}
        }
    }
    Ok(())
}

/// The parent of a valid non-root path, and the last component.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    if path == "/" {
        return None;
    }
    let slash = path.rfind('/')?;
    let parent = if slash == 0 { "/" } else { &path[..slash] };
    Some((parent, &path[slash + 1..]))
}

/// Joins a parent path and a child name.
pub fn join_path(parent: &str, name: &str) -> String {
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

/// Znode values as MessagePack binary (one header, then the bytes) instead of an array of
/// integers; arrays are still accepted when reading.
pub(crate) mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(validate_path("/").is_ok());
        assert!(validate_path("/a/b-c_d.e").is_ok());
        for bad in ["", "a", "/a/", "//a", "/a//b", "/a/./b", "/a/..", "/a\0b"] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_path(&format!("/{}", "x".repeat(PATH_BYTES_MAX))).is_err());
    }

    #[test]
    fn paths_split_and_join() {
        assert_eq!(split_path("/a"), Some(("/", "a")));
        assert_eq!(split_path("/a/b/c"), Some(("/a/b", "c")));
        assert_eq!(split_path("/"), None);
        assert_eq!(join_path("/", "a"), "/a");
        assert_eq!(join_path("/a", "b"), "/a/b");
    }
}
