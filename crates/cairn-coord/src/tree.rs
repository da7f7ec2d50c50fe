//! The deterministic replicated state machine: a tree of znodes plus the live sessions.
//!
//! Every member of the quorum applies the same committed log entries, in the same order, through
//! [`Tree::apply`], and so reaches the same tree. To keep that true `apply` reads no clock, draws
//! no random number and never iterates a hash map: everything it needs is in the [`Command`], and
//! every collection here is a `BTreeMap` or `BTreeSet`.
//!
//! The whole tree is the Raft snapshot ([`Tree::to_bytes`] / [`Tree::from_bytes`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::api::{
    Command, CommandOk, CommandResult, CoordError, CreateMode, DATA_BYTES_MAX, EventType, MULTI_OPS_MAX,
    NO_SESSION, Op, OpResult, SESSION_TIMEOUT_MS_MAX, SESSION_TIMEOUT_MS_MIN, SessionId, Stat, WatchEvent,
    Zxid, join_path, split_path, validate_path,
};

/// The format version written as the first byte of a snapshot.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

const ROOT: &str = "/";

/// One znode: its value, its metadata and the names (not paths) of its children.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
struct Znode {
    #[serde(with = "crate::api::bytes")]
    data: Vec<u8>,
    stat: Stat,
    children: BTreeSet<String>,
}

/// A live session: its (clamped) timeout and the paths of the ephemerals it owns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Session {
    timeout_ms: u64,
    ephemerals: BTreeSet<String>,
}

/// The znodes, keyed by full path, and the sessions, keyed by id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Znode>,
    sessions: BTreeMap<SessionId, Session>,
}

/// Why a snapshot could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot of {len} bytes is too short (at least 5 needed)")]
    TooShort { len: usize },
    #[error("snapshot format version {found} is not supported (this build reads {SNAPSHOT_FORMAT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("snapshot does not decode: {0}")]
    Decode(String),
    #[error("snapshot decodes to an inconsistent tree: {0}")]
    Inconsistent(String),
}

impl From<SnapshotError> for CoordError {
    fn from(e: SnapshotError) -> Self {
        CoordError::BadRequest { reason: e.to_string() }
    }
}

/// How to take back one change made inside a multi. Applied in reverse order, the records put the
/// tree back exactly as it was (same maps, same stats), without cloning it.
#[derive(Debug)]
enum Undo {
    Created { path: String, parent: String, name: String, parent_stat: Stat, owner: SessionId },
    Deleted { path: String, parent: String, name: String, parent_stat: Option<Stat>, node: Znode },
    DataSet { path: String, data: Vec<u8>, stat: Stat },
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn event(path: &str, event: EventType, zxid: Zxid) -> WatchEvent {
    WatchEvent { path: path.to_owned(), event, zxid }
}

fn check_version(path: &str, expected: Option<i32>, actual: i32) -> Result<(), CoordError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(CoordError::BadVersion { path: path.to_owned(), expected, actual })
        }
        _ => Ok(()),
    }
}

fn check_data(data: &[u8]) -> Result<(), CoordError> {
    if data.len() > DATA_BYTES_MAX {
        return Err(CoordError::DataTooLarge { bytes: data.len(), max: DATA_BYTES_MAX });
    }
    Ok(())
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A tree holding only the root, with an all-zero stat, and no session.
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT.to_owned(), Znode::default());
        Tree { nodes, sessions: BTreeMap::new() }
    }

    /// Applies one committed log entry's command at `zxid` (a batch's commands at `zxid`,
    /// `zxid + 1`, ...). Returns the result for the client and
    /// the watch events it caused, in order. Never panics; a failed command changes nothing and
    /// causes no event.
    pub fn apply(&mut self, zxid: Zxid, cmd: &Command) -> (CommandResult, Vec<WatchEvent>) {
        let mut events = Vec::new();
        let result = match cmd {
            Command::CreateSession { timeout_ms } => self.create_session(zxid, *timeout_ms),
            Command::CloseSession { session } => {
                if self.end_session(zxid, *session, &mut events) {
                    Ok(CommandOk::SessionClosed)
                } else {
                    Err(CoordError::SessionExpired { session: *session })
                }
            }
            Command::ExpireSessions { sessions } => {
                let mut expired = Vec::new();
                for &session in sessions {
                    if self.end_session(zxid, session, &mut events) {
                        expired.push(session);
                    }
                }
                Ok(CommandOk::SessionsExpired { sessions: expired })
            }
            Command::Write { session, op, time_ms } => self.write(zxid, *session, *time_ms, op, &mut events),
            Command::Multi { session, ops, time_ms } => {
                self.multi(zxid, *session, *time_ms, ops, &mut events)
            }
            Command::Batch(commands) => {
                if commands.len() as u64 > crate::api::ZXIDS_PER_ENTRY {
                    Err(CoordError::BadRequest { reason: format!("batch of {} commands", commands.len()) })
                } else {
                    // Each command gets the next zxid and stands alone: one failing changes
                    // nothing for the others.
                    let mut results = Vec::with_capacity(commands.len());
                    for (position, command) in commands.iter().enumerate() {
                        let result = if matches!(command, Command::Batch(_)) {
                            Err(CoordError::BadRequest { reason: "nested batch".into() })
                        } else {
                            let (result, more) = self.apply(zxid.saturating_add(position as u64), command);
                            events.extend(more);
                            result
                        };
                        results.push(result);
                    }
                    Ok(CommandOk::Batch(results))
                }
            }
        };
        if result.is_err() {
            events.clear();
        }
        (result, events)
    }

    /// The value and stat of the znode at `path`.
    pub fn get(&self, path: &str) -> Result<(Vec<u8>, Stat), CoordError> {
        let node = self.node(path)?;
        Ok((node.data.clone(), node.stat.clone()))
    }

    /// The stat of the znode at `path`, `None` if there is none. Errors only on a bad path.
    pub fn exists(&self, path: &str) -> Result<Option<Stat>, CoordError> {
        validate_path(path)?;
        Ok(self.nodes.get(path).map(|node| node.stat.clone()))
    }

    /// The names of the children of `path`, sorted, and its stat.
    pub fn children(&self, path: &str) -> Result<(Vec<String>, Stat), CoordError> {
        let node = self.node(path)?;
        Ok((node.children.iter().cloned().collect(), node.stat.clone()))
    }

    pub fn session_exists(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    /// Every live session and its timeout in milliseconds, sorted by id.
    pub fn sessions(&self) -> Vec<(SessionId, u64)> {
        self.sessions.iter().map(|(&id, s)| (id, s.timeout_ms)).collect()
    }

    /// The paths of the ephemerals `session` owns, sorted (empty for an unknown session).
    pub fn ephemerals(&self, session: SessionId) -> Vec<String> {
        self.sessions.get(&session).map(|s| s.ephemerals.iter().cloned().collect()).unwrap_or_default()
    }

    /// Number of znodes, the root included.
    pub fn znode_count(&self) -> usize {
        self.nodes.len()
    }

    /// The snapshot encoding: one format-version byte ([`SNAPSHOT_FORMAT_VERSION`]), the tree as
    /// MessagePack with named fields, then the CRC-32C of everything before it, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_FORMAT_VERSION];
        // Serialising plain structs, strings and integer-keyed maps into a Vec cannot fail.
        let body = rmp_serde::to_vec_named(self).expect("a Tree always serialises to MessagePack");
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a snapshot written by [`Tree::to_bytes`]: rejects an unknown version, a checksum
    /// mismatch, an undecodable body and a tree whose internal links disagree.
    pub fn from_bytes(bytes: &[u8]) -> Result<Tree, SnapshotError> {
        if bytes.len() < 5 {
            return Err(SnapshotError::TooShort { len: bytes.len() });
        }
        let (covered, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c::crc32c(covered);
        if stored != computed {
            return Err(SnapshotError::BadChecksum { stored, computed });
        }
        if covered[0] != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { found: covered[0] });
        }
        let tree: Tree =
            rmp_serde::from_slice(&covered[1..]).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        tree.check_invariants().map_err(SnapshotError::Inconsistent)?;
        Ok(tree)
    }

    /// Checks that the tree is internally consistent: valid paths, a root, parent and child links
    /// that agree, current `num_children` and `data_length`, ephemerals owned by live sessions and
    /// recorded in them, and childless.
    pub fn check_invariants(&self) -> Result<(), String> {
        let root = self.nodes.get(ROOT).ok_or("no root znode")?;
        if root.stat.ephemeral_owner != NO_SESSION {
            return Err("the root is ephemeral".to_owned());
        }
        for (path, node) in &self.nodes {
            validate_path(path).map_err(|e| e.to_string())?;
            if let Some((parent, name)) = split_path(path) {
                let linked = self.nodes.get(parent).is_some_and(|p| p.children.contains(name));
                if !linked {
                    return Err(format!("{path} is not a child of {parent}"));
                }
            }
            for name in &node.children {
                if name.is_empty() || name.contains('/') || !self.nodes.contains_key(&join_path(path, name)) {
                    return Err(format!("{path} lists a child {name:?} that does not exist"));
                }
            }
            if node.stat.num_children != len_u32(node.children.len()) {
                return Err(format!("{path}: num_children is stale"));
            }
            if node.stat.data_length != len_u32(node.data.len()) {
                return Err(format!("{path}: data_length is stale"));
            }
            let owner = node.stat.ephemeral_owner;
            if owner != NO_SESSION {
                if !self.sessions.get(&owner).is_some_and(|s| s.ephemerals.contains(path)) {
                    return Err(format!("ephemeral {path} is not recorded in session {owner:#x}"));
                }
                if !node.children.is_empty() {
                    return Err(format!("ephemeral {path} has children"));
                }
            }
        }
        for (&id, session) in &self.sessions {
            if id == NO_SESSION {
                return Err("a session has the reserved id 0".to_owned());
            }
            for path in &session.ephemerals {
                if self.nodes.get(path).is_none_or(|n| n.stat.ephemeral_owner != id) {
                    return Err(format!("session {id:#x} records {path}, which it does not own"));
                }
            }
        }
        Ok(())
    }

    fn node(&self, path: &str) -> Result<&Znode, CoordError> {
        validate_path(path)?;
        self.nodes.get(path).ok_or_else(|| CoordError::NoNode { path: path.to_owned() })
    }

    fn check_session(&self, session: SessionId) -> Result<(), CoordError> {
        if session != NO_SESSION && !self.sessions.contains_key(&session) {
            return Err(CoordError::SessionExpired { session });
        }
        Ok(())
    }

    fn write(
        &mut self,
        zxid: Zxid,
        session: SessionId,
        time_ms: u64,
        op: &Op,
        events: &mut Vec<WatchEvent>,
    ) -> CommandResult {
        self.check_session(session)?;
        let mut results = self
            .transaction(zxid, session, time_ms, std::slice::from_ref(op), events)
            .map_err(|(_, error)| error)?;
        let result = results
            .pop()
            .ok_or_else(|| CoordError::BadRequest { reason: "a write produced no result".to_owned() })?;
        Ok(CommandOk::Write(result))
    }

    fn multi(
        &mut self,
        zxid: Zxid,
        session: SessionId,
        time_ms: u64,
        ops: &[Op],
        events: &mut Vec<WatchEvent>,
    ) -> CommandResult {
        self.check_session(session)?;
        if ops.len() > MULTI_OPS_MAX {
            return Err(CoordError::MultiTooLarge { count: ops.len(), max: MULTI_OPS_MAX });
        }
        let results = self
            .transaction(zxid, session, time_ms, ops, events)
            .map_err(|(index, error)| CoordError::MultiFailed { index, error: Box::new(error) })?;
        Ok(CommandOk::Multi(results))
    }

    fn create_session(&mut self, zxid: Zxid, timeout_ms: u64) -> CommandResult {
        // Log index 0 is openraft's initial membership entry, so a real command never lands there;
        // refusing it keeps NO_SESSION from ever naming a live session.
        if zxid == NO_SESSION {
            return Err(CoordError::BadRequest {
                reason: "a session cannot be created at index 0".to_owned(),
            });
        }
        if self.sessions.contains_key(&zxid) {
            return Err(CoordError::BadRequest { reason: format!("session {zxid:#x} already exists") });
        }
        let timeout_ms = timeout_ms.clamp(SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX);
        self.sessions.insert(zxid, Session { timeout_ms, ephemerals: BTreeSet::new() });
        Ok(CommandOk::SessionCreated { session: zxid, timeout_ms })
    }

    /// Closes or expires `session`: deletes its ephemerals (with the events of a delete) and
    /// forgets it. False if there was no such session.
    fn end_session(&mut self, zxid: Zxid, session: SessionId, events: &mut Vec<WatchEvent>) -> bool {
        let Some(ended) = self.sessions.remove(&session) else {
            return false;
        };
        let mut undo = Vec::new();
        for path in &ended.ephemerals {
            let owned = self.nodes.get(path).is_some_and(|n| n.stat.ephemeral_owner == session);
            if owned && path != ROOT {
                self.remove_node(zxid, path, &mut undo, events);
            }
        }
        true
    }

    /// Applies `ops` in order, all or nothing. On failure returns the failing op's index and
    /// error, with the tree and `events` as they were before.
    fn transaction(
        &mut self,
        zxid: Zxid,
        session: SessionId,
        time_ms: u64,
        ops: &[Op],
        events: &mut Vec<WatchEvent>,
    ) -> Result<Vec<OpResult>, (usize, CoordError)> {
        let events_before = events.len();
        let mut undo = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            match self.apply_op(zxid, session, time_ms, op, &mut undo, events) {
                Ok(result) => results.push(result),
                Err(error) => {
                    self.rollback(undo);
                    events.truncate(events_before);
                    return Err((index, error));
                }
            }
        }
        Ok(results)
    }

    /// Applies one op. Every check comes before the first change, so a failed op changes nothing.
    fn apply_op(
        &mut self,
        zxid: Zxid,
        session: SessionId,
        time_ms: u64,
        op: &Op,
        undo: &mut Vec<Undo>,
        events: &mut Vec<WatchEvent>,
    ) -> Result<OpResult, CoordError> {
        match op {
            Op::Create { path, data, mode } => {
                self.create(zxid, session, time_ms, path, data, *mode, undo, events)
            }
            Op::Delete { path, version } => {
                validate_path(path)?;
                if path == ROOT {
                    return Err(CoordError::RootImmutable { what: "deleted".to_owned() });
                }
                let node = self.nodes.get(path).ok_or_else(|| CoordError::NoNode { path: path.clone() })?;
                check_version(path, *version, node.stat.version)?;
                if !node.children.is_empty() {
                    return Err(CoordError::NotEmpty { path: path.clone() });
                }
                self.remove_node(zxid, path, undo, events);
                Ok(OpResult::Deleted)
            }
            Op::SetData { path, data, version } => {
                validate_path(path)?;
                let node =
                    self.nodes.get_mut(path).ok_or_else(|| CoordError::NoNode { path: path.clone() })?;
                check_version(path, *version, node.stat.version)?;
                check_data(data)?;
                let old_stat = node.stat.clone();
                let old_data = std::mem::replace(&mut node.data, data.clone());
                node.stat.version = node.stat.version.saturating_add(1);
                node.stat.mzxid = zxid;
                node.stat.mtime_ms = time_ms;
                node.stat.data_length = len_u32(node.data.len());
                let stat = node.stat.clone();
                undo.push(Undo::DataSet { path: path.clone(), data: old_data, stat: old_stat });
                events.push(event(path, EventType::DataChanged, zxid));
                Ok(OpResult::Set { stat })
            }
            Op::Check { path, version } => {
                let node = self.node(path)?;
                check_version(path, Some(*version), node.stat.version)?;
                Ok(OpResult::Checked)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        zxid: Zxid,
        session: SessionId,
        time_ms: u64,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        undo: &mut Vec<Undo>,
        events: &mut Vec<WatchEvent>,
    ) -> Result<OpResult, CoordError> {
        validate_path(path)?;
        check_data(data)?;
        let owner = if mode.is_ephemeral() {
            if session == NO_SESSION {
                return Err(CoordError::EphemeralWithoutSession);
            }
            if !self.sessions.contains_key(&session) {
                return Err(CoordError::SessionExpired { session });
            }
            session
        } else {
            NO_SESSION
        };
        let Some((parent_path, _)) = split_path(path) else {
            return Err(CoordError::NodeExists { path: ROOT.to_owned() });
        };
        let parent =
            self.nodes.get(parent_path).ok_or_else(|| CoordError::NoNode { path: parent_path.to_owned() })?;
        if parent.stat.ephemeral_owner != NO_SESSION {
            return Err(CoordError::NoChildrenForEphemerals { path: parent_path.to_owned() });
        }
        let full = if mode.is_sequential() {
            let full = format!("{path}{:010}", parent.stat.cversion);
            validate_path(&full)?;
            full
        } else {
            path.to_owned()
        };
        if self.nodes.contains_key(&full) {
            return Err(CoordError::NodeExists { path: full });
        }
        let name = match split_path(&full) {
            Some((_, name)) => name.to_owned(),
            None => return Err(CoordError::NodeExists { path: full }),
        };

        let parent = self
            .nodes
            .get_mut(parent_path)
            .ok_or_else(|| CoordError::NoNode { path: parent_path.to_owned() })?;
        let parent_stat = parent.stat.clone();
        parent.children.insert(name.clone());
        parent.stat.cversion = parent.stat.cversion.saturating_add(1);
        parent.stat.pzxid = zxid;
        parent.stat.num_children = len_u32(parent.children.len());

        let stat = Stat {
            czxid: zxid,
            mzxid: zxid,
            pzxid: zxid,
            ctime_ms: time_ms,
            mtime_ms: time_ms,
            version: 0,
            cversion: 0,
            ephemeral_owner: owner,
            data_length: len_u32(data.len()),
            num_children: 0,
        };
        self.nodes.insert(
            full.clone(),
            Znode { data: data.to_vec(), stat: stat.clone(), children: BTreeSet::new() },
        );
        if let Some(s) = self.sessions.get_mut(&owner) {
            s.ephemerals.insert(full.clone());
        }
        undo.push(Undo::Created {
            path: full.clone(),
            parent: parent_path.to_owned(),
            name,
            parent_stat,
            owner,
        });
        events.push(event(&full, EventType::Created, zxid));
        events.push(event(parent_path, EventType::ChildrenChanged, zxid));
        Ok(OpResult::Created { path: full, stat })
    }

    /// Removes the (existing, non-root, childless) znode at `path`, unlinks it from its parent and
    /// its owner, and records the undo and the events of a delete.
    fn remove_node(&mut self, zxid: Zxid, path: &str, undo: &mut Vec<Undo>, events: &mut Vec<WatchEvent>) {
        let Some((parent_path, name)) = split_path(path) else {
            return;
        };
        let Some(node) = self.nodes.remove(path) else {
            return;
        };
        let parent_stat = self.nodes.get_mut(parent_path).map(|parent| {
            let before = parent.stat.clone();
            parent.children.remove(name);
            parent.stat.cversion = parent.stat.cversion.saturating_add(1);
            parent.stat.pzxid = zxid;
            parent.stat.num_children = len_u32(parent.children.len());
            before
        });
        if let Some(s) = self.sessions.get_mut(&node.stat.ephemeral_owner) {
            s.ephemerals.remove(path);
        }
        undo.push(Undo::Deleted {
            path: path.to_owned(),
            parent: parent_path.to_owned(),
            name: name.to_owned(),
            parent_stat,
            node,
        });
        events.push(event(path, EventType::Deleted, zxid));
        events.push(event(parent_path, EventType::ChildrenChanged, zxid));
    }

    /// Takes back the changes recorded in `undo`, newest first.
    fn rollback(&mut self, undo: Vec<Undo>) {
        for record in undo.into_iter().rev() {
            match record {
                Undo::Created { path, parent, name, parent_stat, owner } => {
                    self.nodes.remove(&path);
                    if let Some(p) = self.nodes.get_mut(&parent) {
                        p.children.remove(&name);
                        p.stat = parent_stat;
                    }
                    if let Some(s) = self.sessions.get_mut(&owner) {
                        s.ephemerals.remove(&path);
                    }
                }
                Undo::Deleted { path, parent, name, parent_stat, node } => {
                    if let (Some(p), Some(stat)) = (self.nodes.get_mut(&parent), parent_stat) {
                        p.children.insert(name);
                        p.stat = stat;
                    }
                    if let Some(s) = self.sessions.get_mut(&node.stat.ephemeral_owner) {
                        s.ephemerals.insert(path.clone());
                    }
                    self.nodes.insert(path, node);
                }
                Undo::DataSet { path, data, stat } => {
                    if let Some(node) = self.nodes.get_mut(&path) {
                        node.data = data;
                        node.stat = stat;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;

    /// A tree with a test harness: applies commands at increasing zxids and checks the invariants
    /// after each one.
    struct H {
        tree: Tree,
        zxid: Zxid,
    }

    impl H {
        fn new() -> Self {
            H { tree: Tree::new(), zxid: 0 }
        }

        fn apply(&mut self, cmd: Command) -> (CommandResult, Vec<WatchEvent>) {
            self.zxid += 1;
            let out = self.tree.apply(self.zxid, &cmd);
            self.tree.check_invariants().unwrap();
            out
        }

        fn session(&mut self) -> SessionId {
            match self.apply(Command::CreateSession { timeout_ms: 10_000 }).0.unwrap() {
                CommandOk::SessionCreated { session, .. } => session,
                other => panic!("unexpected {other:?}"),
            }
        }

        fn write(&mut self, session: SessionId, op: Op) -> (Result<OpResult, CoordError>, Vec<WatchEvent>) {
            let time_ms = T + self.zxid + 1;
            let (res, ev) = self.apply(Command::Write { session, op, time_ms });
            let res = res.map(|ok| match ok {
                CommandOk::Write(r) => r,
                other => panic!("unexpected {other:?}"),
            });
            (res, ev)
        }

        fn create(&mut self, session: SessionId, path: &str, mode: CreateMode) -> Result<String, CoordError> {
            match self.write(session, create(path, b"v", mode)).0? {
                OpResult::Created { path, .. } => Ok(path),
                other => panic!("unexpected {other:?}"),
            }
        }

        fn mkdir(&mut self, path: &str) {
            self.create(NO_SESSION, path, CreateMode::Persistent).unwrap();
        }
    }

    fn create(path: &str, data: &[u8], mode: CreateMode) -> Op {
        Op::Create { path: path.into(), data: data.to_vec(), mode }
    }

    fn delete(path: &str, version: Option<i32>) -> Op {
        Op::Delete { path: path.into(), version }
    }

    fn set(path: &str, data: &[u8], version: Option<i32>) -> Op {
        Op::SetData { path: path.into(), data: data.to_vec(), version }
    }

    fn ev(path: &str, event: EventType, zxid: Zxid) -> WatchEvent {
        WatchEvent { path: path.into(), event, zxid }
    }

    #[test]
    fn new_tree_has_only_the_root() {
        let tree = Tree::new();
        assert_eq!(tree.znode_count(), 1);
        let (data, stat) = tree.get("/").unwrap();
        assert!(data.is_empty());
        assert_eq!(stat, Stat::default());
        assert_eq!(tree.children("/").unwrap().0, Vec::<String>::new());
        assert!(tree.sessions().is_empty());
        assert_eq!(tree.exists("/a").unwrap(), None);
        assert!(matches!(tree.exists("a"), Err(CoordError::BadPath { .. })));
        assert!(matches!(tree.get("/a"), Err(CoordError::NoNode { path }) if path == "/a"));
        assert!(matches!(tree.children("/a/"), Err(CoordError::BadPath { .. })));
    }

    #[test]
    fn create_sets_stats_and_events() {
        let mut h = H::new();
        h.zxid = 41;
        let (res, events) = h.write(NO_SESSION, create("/a", b"hello", CreateMode::Persistent));
        let OpResult::Created { path, stat } = res.unwrap() else { panic!() };
        assert_eq!(path, "/a");
        let expected = Stat {
            czxid: 42,
            mzxid: 42,
            pzxid: 42,
            ctime_ms: T + 42,
            mtime_ms: T + 42,
            version: 0,
            cversion: 0,
            ephemeral_owner: NO_SESSION,
            data_length: 5,
            num_children: 0,
        };
        assert_eq!(stat, expected);
        assert_eq!(h.tree.get("/a").unwrap(), (b"hello".to_vec(), expected));
        assert_eq!(events, vec![ev("/a", EventType::Created, 42), ev("/", EventType::ChildrenChanged, 42)]);
        let root = h.tree.exists("/").unwrap().unwrap();
        assert_eq!((root.cversion, root.pzxid, root.num_children), (1, 42, 1));
        assert_eq!(root.mzxid, 0, "a child create is not a data change of the parent");

        h.mkdir("/a/b");
        h.mkdir("/a/a");
        let (names, stat) = h.tree.children("/a").unwrap();
        assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
        assert_eq!((stat.num_children, stat.cversion, stat.pzxid), (2, 2, 44));
        assert_eq!(h.tree.znode_count(), 4);
    }

    #[test]
    fn create_errors() {
        let mut h = H::new();
        h.mkdir("/a");
        let before = h.tree.to_bytes();
        let cases: Vec<(Op, CoordError)> = vec![
            (create("/", b"", CreateMode::Persistent), CoordError::NodeExists { path: "/".into() }),
            (create("/a", b"", CreateMode::Persistent), CoordError::NodeExists { path: "/a".into() }),
            (create("/x/y", b"", CreateMode::Persistent), CoordError::NoNode { path: "/x".into() }),
            (create("/a/y", b"", CreateMode::Ephemeral), CoordError::EphemeralWithoutSession),
            (create("/a/y", b"", CreateMode::EphemeralSequential), CoordError::EphemeralWithoutSession),
            (
                create("/a/y", &vec![0; DATA_BYTES_MAX + 1], CreateMode::Persistent),
                CoordError::DataTooLarge { bytes: DATA_BYTES_MAX + 1, max: DATA_BYTES_MAX },
            ),
        ];
        for (op, expected) in cases {
            let (res, events) = h.write(NO_SESSION, op.clone());
            assert_eq!(res, Err(expected), "{op:?}");
            assert!(events.is_empty());
        }
        for bad in ["a", "/a/", "/a//b", "/a/../b", ""] {
            let (res, _) = h.write(NO_SESSION, create(bad, b"", CreateMode::Persistent));
            assert!(matches!(res, Err(CoordError::BadPath { .. })), "{bad:?}: {res:?}");
        }
        // A sequential name that would exceed the path limit.
        let long = format!("/{}", "x".repeat(crate::api::PATH_BYTES_MAX - 5));
        let (res, _) = h.write(NO_SESSION, create(&long, b"", CreateMode::PersistentSequential));
        assert!(matches!(res, Err(CoordError::BadPath { .. })), "{res:?}");
        assert_eq!(h.tree.to_bytes(), before);
        // Exactly at the limit is fine.
        h.mkdir(&format!("/{}", "x".repeat(crate::api::PATH_BYTES_MAX - 1)));
    }

    #[test]
    fn ephemerals_cannot_have_children() {
        let mut h = H::new();
        let s = h.session();
        assert_eq!(h.create(s, "/e", CreateMode::Ephemeral).unwrap(), "/e");
        assert_eq!(h.tree.exists("/e").unwrap().unwrap().ephemeral_owner, s);
        assert_eq!(
            h.create(s, "/e/c", CreateMode::Persistent),
            Err(CoordError::NoChildrenForEphemerals { path: "/e".into() })
        );
        assert_eq!(h.tree.ephemerals(s), vec!["/e".to_string()]);
    }

    #[test]
    fn sequential_names_follow_parent_cversion() {
        let mut h = H::new();
        h.mkdir("/q");
        let s = h.session();
        assert_eq!(
            h.create(NO_SESSION, "/q/n-", CreateMode::PersistentSequential).unwrap(),
            "/q/n-0000000000"
        );
        assert_eq!(h.create(s, "/q/n-", CreateMode::EphemeralSequential).unwrap(), "/q/n-0000000001");
        h.mkdir("/q/plain");
        h.write(NO_SESSION, delete("/q/plain", None)).0.unwrap();
        // Deletes bump cversion too, so numbers are never reused.
        assert_eq!(
            h.create(NO_SESSION, "/q/n-", CreateMode::PersistentSequential).unwrap(),
            "/q/n-0000000004"
        );
        // Under the root: "/lock-" becomes a child of "/".
        let root_cv = h.tree.exists("/").unwrap().unwrap().cversion;
        assert_eq!(
            h.create(NO_SESSION, "/lock-", CreateMode::PersistentSequential).unwrap(),
            format!("/lock-{root_cv:010}")
        );
        // A clash with an existing name is NodeExists, and the failed create uses up no number.
        let next = h.tree.exists("/q").unwrap().unwrap().cversion;
        let clash = format!("/q/n-{:010}", next + 1);
        h.mkdir(&clash);
        assert_eq!(
            h.create(NO_SESSION, "/q/n-", CreateMode::PersistentSequential),
            Err(CoordError::NodeExists { path: clash.clone() })
        );
        assert_eq!(h.tree.exists("/q").unwrap().unwrap().cversion, next + 1);
        h.write(NO_SESSION, delete(&clash, None)).0.unwrap();
        assert_eq!(
            h.create(NO_SESSION, "/q/n-", CreateMode::PersistentSequential).unwrap(),
            format!("/q/n-{:010}", next + 2)
        );
    }

    #[test]
    fn delete_and_errors() {
        let mut h = H::new();
        h.mkdir("/a");
        h.mkdir("/a/b");
        assert_eq!(
            h.write(NO_SESSION, delete("/", None)).0,
            Err(CoordError::RootImmutable { what: "deleted".into() })
        );
        assert_eq!(
            h.write(NO_SESSION, delete("/zz", None)).0,
            Err(CoordError::NoNode { path: "/zz".into() })
        );
        assert_eq!(
            h.write(NO_SESSION, delete("/a", None)).0,
            Err(CoordError::NotEmpty { path: "/a".into() })
        );
        assert_eq!(
            h.write(NO_SESSION, delete("/a/b", Some(3))).0,
            Err(CoordError::BadVersion { path: "/a/b".into(), expected: 3, actual: 0 })
        );
        assert!(matches!(h.write(NO_SESSION, delete("/a/", None)).0, Err(CoordError::BadPath { .. })));
        let before = h.tree.exists("/a").unwrap().unwrap();
        let (res, events) = h.write(NO_SESSION, delete("/a/b", Some(0)));
        assert_eq!(res, Ok(OpResult::Deleted));
        let z = h.zxid;
        assert_eq!(events, vec![ev("/a/b", EventType::Deleted, z), ev("/a", EventType::ChildrenChanged, z)]);
        let after = h.tree.exists("/a").unwrap().unwrap();
        assert_eq!((after.cversion, after.pzxid, after.num_children), (before.cversion + 1, z, 0));
        assert_eq!(h.tree.exists("/a/b").unwrap(), None);
        assert_eq!(h.write(NO_SESSION, delete("/a", None)).0, Ok(OpResult::Deleted));
        assert_eq!(h.tree.znode_count(), 1);
    }

    #[test]
    fn set_data_and_versions() {
        let mut h = H::new();
        h.mkdir("/a");
        let created = h.tree.exists("/a").unwrap().unwrap();
        let (res, events) = h.write(NO_SESSION, set("/a", b"one", Some(0)));
        let z = h.zxid;
        let OpResult::Set { stat } = res.unwrap() else { panic!() };
        assert_eq!((stat.version, stat.mzxid, stat.mtime_ms, stat.data_length), (1, z, T + z, 3));
        assert_eq!((stat.czxid, stat.ctime_ms), (created.czxid, created.ctime_ms));
        assert_eq!(events, vec![ev("/a", EventType::DataChanged, z)]);
        assert_eq!(
            h.write(NO_SESSION, set("/a", b"two", Some(0))).0,
            Err(CoordError::BadVersion { path: "/a".into(), expected: 0, actual: 1 })
        );
        h.write(NO_SESSION, set("/a", b"", None)).0.unwrap();
        let (data, stat) = h.tree.get("/a").unwrap();
        assert!(data.is_empty());
        assert_eq!((stat.version, stat.data_length), (2, 0));
        assert_eq!(
            h.write(NO_SESSION, set("/nope", b"", None)).0,
            Err(CoordError::NoNode { path: "/nope".into() })
        );
        assert_eq!(
            h.write(NO_SESSION, set("/a", &vec![1; DATA_BYTES_MAX + 1], None)).0,
            Err(CoordError::DataTooLarge { bytes: DATA_BYTES_MAX + 1, max: DATA_BYTES_MAX })
        );
        // Exactly the maximum is accepted.
        h.write(NO_SESSION, set("/a", &vec![1; DATA_BYTES_MAX], None)).0.unwrap();
        assert_eq!(h.tree.exists("/a").unwrap().unwrap().data_length as usize, DATA_BYTES_MAX);
        // The root may hold data.
        h.write(NO_SESSION, set("/", b"root", None)).0.unwrap();
        assert_eq!(h.tree.get("/").unwrap().0, b"root");
        // Versions saturate rather than overflow.
        h.tree.nodes.get_mut("/a").unwrap().stat.version = i32::MAX;
        h.write(NO_SESSION, set("/a", b"x", Some(i32::MAX))).0.unwrap();
        assert_eq!(h.tree.exists("/a").unwrap().unwrap().version, i32::MAX);
    }

    #[test]
    fn check_op() {
        let mut h = H::new();
        h.mkdir("/a");
        assert_eq!(
            h.write(NO_SESSION, Op::Check { path: "/a".into(), version: 0 }),
            (Ok(OpResult::Checked), vec![])
        );
        assert_eq!(
            h.write(NO_SESSION, Op::Check { path: "/a".into(), version: 1 }).0,
            Err(CoordError::BadVersion { path: "/a".into(), expected: 1, actual: 0 })
        );
        assert_eq!(
            h.write(NO_SESSION, Op::Check { path: "/b".into(), version: 0 }).0,
            Err(CoordError::NoNode { path: "/b".into() })
        );
    }

    #[test]
    fn sessions_are_created_clamped_and_checked() {
        let mut h = H::new();
        h.zxid = 9;
        assert_eq!(
            h.apply(Command::CreateSession { timeout_ms: 5 }).0,
            Ok(CommandOk::SessionCreated { session: 10, timeout_ms: SESSION_TIMEOUT_MS_MIN })
        );
        assert_eq!(
            h.apply(Command::CreateSession { timeout_ms: u64::MAX }).0,
            Ok(CommandOk::SessionCreated { session: 11, timeout_ms: SESSION_TIMEOUT_MS_MAX })
        );
        assert_eq!(
            h.apply(Command::CreateSession { timeout_ms: 30_000 }).0,
            Ok(CommandOk::SessionCreated { session: 12, timeout_ms: 30_000 })
        );
        assert_eq!(
            h.tree.sessions(),
            vec![(10, SESSION_TIMEOUT_MS_MIN), (11, SESSION_TIMEOUT_MS_MAX), (12, 30_000)]
        );
        assert!(h.tree.session_exists(11) && !h.tree.session_exists(13));
        // Index 0 and an id already in use are refused without changing anything.
        assert!(matches!(
            Tree::new().apply(0, &Command::CreateSession { timeout_ms: 1 }).0,
            Err(CoordError::BadRequest { .. })
        ));
        let mut t = h.tree.clone();
        assert!(matches!(
            t.apply(10, &Command::CreateSession { timeout_ms: 1 }).0,
            Err(CoordError::BadRequest { .. })
        ));
        assert_eq!(t, h.tree);
        // Unknown sessions cannot write, even persistent znodes.
        assert_eq!(
            h.create(99, "/a", CreateMode::Persistent),
            Err(CoordError::SessionExpired { session: 99 })
        );
        let (res, events) = h.apply(Command::Multi {
            session: 99,
            ops: vec![create("/a", b"", CreateMode::Persistent)],
            time_ms: T,
        });
        assert_eq!(res, Err(CoordError::SessionExpired { session: 99 }));
        assert!(events.is_empty());
        assert_eq!(
            h.apply(Command::CloseSession { session: 99 }).0,
            Err(CoordError::SessionExpired { session: 99 })
        );
        assert_eq!(h.create(10, "/a", CreateMode::Persistent).unwrap(), "/a");
        assert_eq!(h.tree.exists("/a").unwrap().unwrap().ephemeral_owner, NO_SESSION);
    }

    #[test]
    fn close_session_removes_ephemerals_with_events() {
        let mut h = H::new();
        h.mkdir("/svc");
        let s1 = h.session();
        let s2 = h.session();
        h.create(s1, "/svc/b", CreateMode::Ephemeral).unwrap();
        h.create(s1, "/e", CreateMode::Ephemeral).unwrap();
        let seq = h.create(s1, "/svc/a-", CreateMode::EphemeralSequential).unwrap();
        h.create(s2, "/svc/other", CreateMode::Ephemeral).unwrap();
        h.create(s1, "/svc/keep", CreateMode::Persistent).unwrap();
        assert_eq!(h.tree.ephemerals(s1), vec!["/e".to_string(), seq.clone(), "/svc/b".to_string()]);
        let svc_cv = h.tree.exists("/svc").unwrap().unwrap().cversion;

        let (res, events) = h.apply(Command::CloseSession { session: s1 });
        assert_eq!(res, Ok(CommandOk::SessionClosed));
        let z = h.zxid;
        assert_eq!(
            events,
            vec![
                ev("/e", EventType::Deleted, z),
                ev("/", EventType::ChildrenChanged, z),
                ev(&seq, EventType::Deleted, z),
                ev("/svc", EventType::ChildrenChanged, z),
                ev("/svc/b", EventType::Deleted, z),
                ev("/svc", EventType::ChildrenChanged, z),
            ]
        );
        assert!(!h.tree.session_exists(s1));
        assert!(h.tree.ephemerals(s1).is_empty());
        assert_eq!(h.tree.children("/svc").unwrap().0, vec!["keep".to_string(), "other".to_string()]);
        let svc = h.tree.exists("/svc").unwrap().unwrap();
        assert_eq!((svc.cversion, svc.pzxid, svc.num_children), (svc_cv + 2, z, 2));
        // Closing twice is an error.
        assert_eq!(
            h.apply(Command::CloseSession { session: s1 }),
            (Err(CoordError::SessionExpired { session: s1 }), vec![])
        );
        assert_eq!(
            h.create(s1, "/x", CreateMode::Ephemeral),
            Err(CoordError::SessionExpired { session: s1 })
        );
    }

    #[test]
    fn expire_sessions_skips_unknown_ones() {
        let mut h = H::new();
        let s1 = h.session();
        let s2 = h.session();
        let s3 = h.session();
        h.create(s1, "/one", CreateMode::Ephemeral).unwrap();
        h.create(s3, "/three", CreateMode::Ephemeral).unwrap();
        let (res, events) = h.apply(Command::ExpireSessions { sessions: vec![s3, 777, s1, s3] });
        let z = h.zxid;
        assert_eq!(res, Ok(CommandOk::SessionsExpired { sessions: vec![s3, s1] }));
        assert_eq!(
            events,
            vec![
                ev("/three", EventType::Deleted, z),
                ev("/", EventType::ChildrenChanged, z),
                ev("/one", EventType::Deleted, z),
                ev("/", EventType::ChildrenChanged, z),
            ]
        );
        assert_eq!(h.tree.sessions(), vec![(s2, 10_000)]);
        assert_eq!(h.tree.znode_count(), 1);
        assert_eq!(
            h.apply(Command::ExpireSessions { sessions: vec![] }).0,
            Ok(CommandOk::SessionsExpired { sessions: vec![] })
        );
    }

    #[test]
    fn deleting_an_ephemeral_forgets_it_in_its_session() {
        let mut h = H::new();
        let s = h.session();
        h.create(s, "/e", CreateMode::Ephemeral).unwrap();
        h.write(NO_SESSION, delete("/e", None)).0.unwrap();
        assert!(h.tree.ephemerals(s).is_empty());
        let (_, events) = h.apply(Command::CloseSession { session: s });
        assert!(events.is_empty());
    }

    #[test]
    fn multi_success_results_and_events() {
        let mut h = H::new();
        h.mkdir("/q");
        let s = h.session();
        let ops = vec![
            create("/q/n-", b"1", CreateMode::EphemeralSequential),
            create("/q/n-", b"2", CreateMode::PersistentSequential),
            Op::Check { path: "/q".into(), version: 0 },
            set("/q", b"d", Some(0)),
            create("/q/x", b"", CreateMode::Persistent),
            delete("/q/x", Some(0)),
        ];
        h.zxid = 99;
        let (res, events) = h.apply(Command::Multi { session: s, ops, time_ms: 5 });
        let Ok(CommandOk::Multi(results)) = res else { panic!("{res:?}") };
        assert_eq!(results.len(), 6);
        let names: Vec<_> = results
            .iter()
            .filter_map(|r| match r {
                OpResult::Created { path, stat } => {
                    assert_eq!((stat.czxid, stat.ctime_ms), (100, 5));
                    Some(path.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["/q/n-0000000000", "/q/n-0000000001", "/q/x"]);
        assert_eq!(results[2], OpResult::Checked);
        assert!(matches!(&results[3], OpResult::Set { stat } if stat.version == 1 && stat.mzxid == 100));
        assert_eq!(results[5], OpResult::Deleted);
        use EventType::*;
        assert_eq!(
            events,
            vec![
                ev("/q/n-0000000000", Created, 100),
                ev("/q", ChildrenChanged, 100),
                ev("/q/n-0000000001", Created, 100),
                ev("/q", ChildrenChanged, 100),
                ev("/q", DataChanged, 100),
                ev("/q/x", Created, 100),
                ev("/q", ChildrenChanged, 100),
                ev("/q/x", Deleted, 100),
                ev("/q", ChildrenChanged, 100),
            ]
        );
        assert_eq!(h.tree.ephemerals(s), vec!["/q/n-0000000000".to_string()]);
        assert_eq!(h.tree.exists("/q").unwrap().unwrap().cversion, 4);
        // An empty multi succeeds and does nothing.
        let before = h.tree.to_bytes();
        assert_eq!(
            h.apply(Command::Multi { session: NO_SESSION, ops: vec![], time_ms: 0 }),
            (Ok(CommandOk::Multi(vec![])), vec![])
        );
        assert_eq!(h.tree.to_bytes(), before);
    }

    #[test]
    fn multi_failure_is_atomic() {
        let mut h = H::new();
        h.mkdir("/a");
        h.mkdir("/a/old");
        let s = h.session();
        h.create(s, "/a/eph", CreateMode::Ephemeral).unwrap();
        h.write(NO_SESSION, set("/a", b"before", None)).0.unwrap();
        let before = h.tree.to_bytes();
        let clone = h.tree.clone();

        // Each failing op, after a prefix that touches everything: create (incl. sequential and
        // ephemeral), delete (incl. an ephemeral), set data on a znode and its parent.
        let prefix = vec![
            create("/a/new", b"n", CreateMode::Persistent),
            create("/a/s-", b"", CreateMode::EphemeralSequential),
            delete("/a/old", None),
            delete("/a/eph", None),
            set("/a", b"after", Some(1)),
            set("/a/new", b"n2", None),
        ];
        let failing: Vec<(Vec<Op>, CoordError)> = vec![
            (
                vec![delete("/a/new", Some(0))],
                CoordError::BadVersion { path: "/a/new".into(), expected: 0, actual: 1 },
            ),
            (
                // "/a/old" was deleted by the prefix: recreate it as an ephemeral, then nest.
                vec![
                    create("/a/old", b"", CreateMode::Ephemeral),
                    create("/a/old/child", b"", CreateMode::Persistent),
                ],
                CoordError::NoChildrenForEphemerals { path: "/a/old".into() },
            ),
            (vec![delete("/a", None)], CoordError::NotEmpty { path: "/a".into() }),
            (
                vec![Op::Check { path: "/a/old".into(), version: 0 }],
                CoordError::NoNode { path: "/a/old".into() },
            ),
            (
                vec![create("/a/new", b"", CreateMode::Persistent)],
                CoordError::NodeExists { path: "/a/new".into() },
            ),
            (vec![delete("/", None)], CoordError::RootImmutable { what: "deleted".into() }),
        ];
        for (suffix, expected) in failing {
            let mut ops = prefix.clone();
            ops.extend(suffix);
            let index = ops.len() - 1;
            let (res, events) = h.apply(Command::Multi { session: s, ops, time_ms: T });
            assert_eq!(res, Err(CoordError::MultiFailed { index, error: Box::new(expected) }));
            assert!(events.is_empty());
            assert_eq!(h.tree.to_bytes(), before);
            assert_eq!(h.tree, clone);
        }

        // The third op fails: the first two are undone.
        let ops = vec![
            create("/b", b"", CreateMode::Persistent),
            set("/a", b"zzz", None),
            create("/nope/x", b"", CreateMode::Persistent),
            create("/c", b"", CreateMode::Persistent),
        ];
        let (res, events) = h.apply(Command::Multi { session: s, ops, time_ms: T });
        assert_eq!(
            res,
            Err(CoordError::MultiFailed {
                index: 2,
                error: Box::new(CoordError::NoNode { path: "/nope".into() })
            })
        );
        assert!(events.is_empty());
        assert_eq!(h.tree.to_bytes(), before);
        // Ephemeral without a session inside a multi is an op error.
        let (res, _) = h.apply(Command::Multi {
            session: NO_SESSION,
            ops: vec![create("/p", b"", CreateMode::Persistent), create("/e", b"", CreateMode::Ephemeral)],
            time_ms: T,
        });
        assert_eq!(
            res,
            Err(CoordError::MultiFailed { index: 1, error: Box::new(CoordError::EphemeralWithoutSession) })
        );
        assert_eq!(h.tree.to_bytes(), before);
    }

    #[test]
    fn multi_too_large() {
        let mut h = H::new();
        let ops = vec![Op::Check { path: "/".into(), version: 0 }; MULTI_OPS_MAX + 1];
        assert_eq!(
            h.apply(Command::Multi { session: NO_SESSION, ops, time_ms: 0 }).0,
            Err(CoordError::MultiTooLarge { count: MULTI_OPS_MAX + 1, max: MULTI_OPS_MAX })
        );
        let ops = vec![Op::Check { path: "/".into(), version: 0 }; MULTI_OPS_MAX];
        assert!(h.apply(Command::Multi { session: NO_SESSION, ops, time_ms: 0 }).0.is_ok());
    }

    fn sample_tree() -> Tree {
        let mut h = H::new();
        h.mkdir("/a");
        h.write(NO_SESSION, set("/a", &[0, 1, 2, 255], None)).0.unwrap();
        let s = h.session();
        h.create(s, "/a/e-", CreateMode::EphemeralSequential).unwrap();
        h.create(NO_SESSION, "/a/p", CreateMode::Persistent).unwrap();
        h.tree
    }

    #[test]
    fn snapshot_round_trip() {
        let tree = sample_tree();
        let bytes = tree.to_bytes();
        assert_eq!(bytes[0], SNAPSHOT_FORMAT_VERSION);
        let back = Tree::from_bytes(&bytes).unwrap();
        assert_eq!(back, tree);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(Tree::from_bytes(&Tree::new().to_bytes()).unwrap(), Tree::new());
    }

    #[test]
    fn snapshot_stores_values_as_binary() {
        let mut h = H::new();
        h.write(NO_SESSION, create("/big", &vec![0xAB; 100_000], CreateMode::Persistent)).0.unwrap();
        let bytes = h.tree.to_bytes();
        // An array of 0xAB integers would take two bytes each.
        assert!(bytes.len() < 101_000, "{} bytes", bytes.len());
        assert_eq!(Tree::from_bytes(&bytes).unwrap(), h.tree);
    }

    fn seal(version: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![version];
        out.extend_from_slice(body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn snapshot_rejects_damage() {
        let bytes = sample_tree().to_bytes();
        for i in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xFF] {
                let mut bad = bytes.clone();
                bad[i] ^= mask;
                assert!(Tree::from_bytes(&bad).is_err(), "flip {mask:#x} at {i} accepted");
            }
        }
        for len in 0..bytes.len() {
            assert!(Tree::from_bytes(&bytes[..len]).is_err(), "truncation to {len} accepted");
        }
        assert!(matches!(Tree::from_bytes(&[1, 2]), Err(SnapshotError::TooShort { len: 2 })));
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert!(matches!(Tree::from_bytes(&bad), Err(SnapshotError::BadChecksum { .. })));

        let body = rmp_serde::to_vec_named(&sample_tree()).unwrap();
        assert!(matches!(
            Tree::from_bytes(&seal(2, &body)),
            Err(SnapshotError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(Tree::from_bytes(&seal(1, b"\xc1garbage")), Err(SnapshotError::Decode(_))));

        // Well-formed but inconsistent trees are refused.
        let mutations: Vec<fn(&mut Tree)> = vec![
            |t| {
                t.nodes.remove("/");
            },
            |t| {
                t.nodes.get_mut("/a").unwrap().children.insert("ghost".into());
            },
            |t| {
                t.nodes.get_mut("/a").unwrap().stat.num_children = 7;
            },
            |t| {
                t.nodes.get_mut("/a").unwrap().stat.data_length = 0;
            },
            |t| {
                t.nodes.get_mut("/").unwrap().children.remove("a");
            },
            |t| {
                t.sessions.clear();
            },
            |t| {
                t.nodes.insert("bad".into(), Znode::default());
            },
            |t| {
                let s = *t.sessions.keys().next().unwrap();
                t.sessions.get_mut(&s).unwrap().ephemerals.insert("/a/p".into());
            },
        ];
        for (i, mutate) in mutations.into_iter().enumerate() {
            let mut t = sample_tree();
            mutate(&mut t);
            let body = rmp_serde::to_vec_named(&t).unwrap();
            assert!(
                matches!(Tree::from_bytes(&seal(1, &body)), Err(SnapshotError::Inconsistent(_))),
                "mutation {i}"
            );
        }
        let as_coord: CoordError = SnapshotError::TooShort { len: 0 }.into();
        assert!(matches!(as_coord, CoordError::BadRequest { .. }));
    }

    /// Marsaglia's xorshift64: deterministic, no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const NAMES: [&str; 5] = ["a", "b", "c", "s-", "e"];

    fn random_path(rng: &mut XorShift, tree: &Tree) -> String {
        if rng.chance(50) {
            // An existing znode (possibly the root), or a child of one.
            let existing: Vec<&String> = tree.nodes.keys().collect();
            let base = (*rng.pick(&existing)).clone();
            if rng.chance(50) { base } else { join_path(&base, rng.pick::<&str>(&NAMES)) }
        } else if rng.chance(3) {
            rng.pick(&["", "a", "/a/", "//", "/a/../b"]).to_string()
        } else {
            let depth = 1 + rng.below(3);
            (0..depth).fold(String::from("/"), |p, _| join_path(&p, rng.pick::<&str>(&NAMES)))
        }
    }

    fn random_version(rng: &mut XorShift) -> Option<i32> {
        if rng.chance(60) { None } else { Some(rng.below(3) as i32 - (rng.chance(10) as i32)) }
    }

    fn random_op(rng: &mut XorShift, tree: &Tree) -> Op {
        let path = random_path(rng, tree);
        let data = vec![rng.next() as u8; rng.below(4)];
        match rng.below(10) {
            0..=3 => {
                let mode = *rng.pick(&[
                    CreateMode::Persistent,
                    CreateMode::Ephemeral,
                    CreateMode::PersistentSequential,
                    CreateMode::EphemeralSequential,
                ]);
                Op::Create { path, data, mode }
            }
            4..=6 => Op::Delete { path, version: random_version(rng) },
            7..=8 => Op::SetData { path, data, version: random_version(rng) },
            _ => Op::Check { path, version: random_version(rng).unwrap_or(0) },
        }
    }

    fn random_session(rng: &mut XorShift, tree: &Tree) -> SessionId {
        let live: Vec<SessionId> = tree.sessions.keys().copied().collect();
        if live.is_empty() || rng.chance(20) {
            if rng.chance(50) { NO_SESSION } else { 1 + rng.below(3000) as u64 }
        } else {
            *rng.pick(&live)
        }
    }

    fn random_command(rng: &mut XorShift, tree: &Tree) -> Command {
        let time_ms = rng.next() % 1_000_000;
        match rng.below(20) {
            0..=1 => Command::CreateSession { timeout_ms: rng.next() % 200_000 },
            2 => Command::CloseSession { session: random_session(rng, tree) },
            3 => {
                let sessions = (0..rng.below(3)).map(|_| random_session(rng, tree)).collect();
                Command::ExpireSessions { sessions }
            }
            4..=7 => {
                let ops = (0..rng.below(5)).map(|_| random_op(rng, tree)).collect();
                Command::Multi { session: random_session(rng, tree), ops, time_ms }
            }
            _ => Command::Write { session: random_session(rng, tree), op: random_op(rng, tree), time_ms },
        }
    }

    #[test]
    fn randomized_replicas_agree() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut a = Tree::new();
        let mut b = Tree::new();
        let (mut oks, mut errs, mut multi_oks, mut events_seen) = (0, 0, 0, 0);
        for zxid in 1..=2000u64 {
            let cmd = random_command(&mut rng, &a);
            let before = a.to_bytes();
            let (ra, ea) = a.apply(zxid, &cmd);
            let (rb, eb) = b.apply(zxid, &cmd);
            assert_eq!(ra, rb, "zxid {zxid}: {cmd:?}");
            assert_eq!(ea, eb);
            assert_eq!(a, b, "zxid {zxid}: replicas diverged on {cmd:?}");
            a.check_invariants().unwrap_or_else(|e| panic!("zxid {zxid}: {e} after {cmd:?}"));
            assert!(ea.iter().all(|e| e.zxid == zxid));
            match &ra {
                Ok(ok) => {
                    oks += 1;
                    if matches!(ok, CommandOk::Multi(r) if r.len() > 1) {
                        multi_oks += 1;
                    }
                }
                Err(_) => {
                    errs += 1;
                    assert!(ea.is_empty(), "a failed command emitted events");
                    assert_eq!(a.to_bytes(), before, "a failed {cmd:?} changed the tree");
                }
            }
            events_seen += ea.len();
            // Now and then one replica restarts from its own snapshot.
            if zxid % 97 == 0 {
                b = Tree::from_bytes(&b.to_bytes()).unwrap();
            }
        }
        let bytes = a.to_bytes();
        assert_eq!(Tree::from_bytes(&bytes).unwrap(), a);
        assert_eq!(bytes, b.to_bytes());
        // The run exercised something.
        assert!(
            oks > 500 && errs > 200 && multi_oks > 10 && events_seen > 500,
            "{oks} {errs} {multi_oks} {events_seen}"
        );
        assert!(a.znode_count() > 5, "{}", a.znode_count());
    }
}
