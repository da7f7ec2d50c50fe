//! One coord member: the Raft node, its store, and the request handler that serves other members
//! and clients on one port.
//!
//! - **Writes** from a client go to `Raft::client_write` on the leader. A follower forwards them to
//!   the leader and relays the answer, so a client may stay connected to any member.
//! - **Reads** are served by the member the client is connected to, once it has applied at least the
//!   client's last seen zxid (read-your-writes). A linearizable read first gets a read point from
//!   the leader (ReadIndex) and waits for it.
//! - **Sessions** are kept alive by pings. Only the leader tracks deadlines, in memory; followers
//!   pass pings on in batches. A new leader gives every session a full timeout from the moment it
//!   takes over, so a leader change does not expire healthy sessions. The leader proposes
//!   `ExpireSessions` when a deadline passes; applying it removes the ephemerals.
//! - **Watches** live on the member the client is connected to; every member applies every entry, so
//!   each fires its own clients' watches in apply order, on the same connection as the responses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory, ServerState};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{
    Command, CommandOk, CoordError, EventType, SessionId, WatchEvent, WatchKind, Zxid, zxid_entry_end,
    zxid_of,
};
use crate::proto::{Client, Dialer, MemberStatus, ReadOk, ReadOp, Request, Response, WatchFired, WatchSpec};
use crate::raft::{NodeId, Raft, TypeConfig, raft_config};
use crate::store::{self, FlushMode, Machine};

/// How long a member waits for a peer connection to open.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a client write may take, including waiting for a leader to be elected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a read waits for this member to catch up with the client's last seen zxid.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often followers pass pings on to the leader, and how often the leader checks deadlines.
const TOUCH_INTERVAL: Duration = Duration::from_millis(100);
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Most sessions expired by one log entry.
const EXPIRE_BATCH_MAX: usize = 1024;
/// A member that has not heard from the leader (a leader: from a quorum) for this long stops
/// vouching for its clients' sessions; twice the longest election timeout, so an ordinary election
/// does not trigger it.
const OUT_OF_TOUCH: Duration = Duration::from_millis(1_000);
/// Most connections watching one path and kind on a member.
const WATCHERS_PER_PATH_MAX: usize = 65_536;
/// Most writes waiting for the batcher; more are refused (nothing appended) until it drains.
const QUEUED_WRITES_MAX: usize = 65_536;
/// How long a probe of a leader whose connection closed may take before it counts as alive.
const LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Proposals waiting for their commit at once; more commands wait and go together in the next.
const PROPOSALS_IN_FLIGHT_MAX: usize = 4;
/// Most commands, and about the most bytes, in one batched log entry.
const BATCH_COMMANDS_MAX: usize = 1024;
const BATCH_BYTES_MAX: usize = 4 << 20;

/// Everything a member needs to start.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub id: NodeId,
    /// Where the Raft log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// The address other members and clients reach this one at (host:port).
    pub address: String,
    /// The members of a new quorum. Used once: when the store is empty, the member with the lowest
    /// id initializes the quorum with them. Later starts read the membership from the log.
    pub initial_members: BTreeMap<NodeId, String>,
    pub cluster_name: String,
    pub flush: FlushMode,
    /// Build a snapshot (and purge the log before it) after this many entries; see
    /// [`crate::raft::SNAPSHOT_EVERY_ENTRIES`].
    pub snapshot_every_entries: u64,
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::OpenError),
    #[error("bad Raft configuration: {0}")]
    Config(String),
    #[error("cannot start Raft: {0}")]
    Raft(String),
}

/// Cached connections to other members, by address.
struct Peers {
    dialer: Arc<dyn Dialer>,
    clients: Mutex<HashMap<String, Client>>,
}

impl Peers {
    async fn get(&self, address: &str) -> Result<Client, String> {
        if let Some(client) = self.clients.lock().get(address)
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        let dial = async {
            let stream = self.dialer.dial(address).await.map_err(|e| e.to_string())?;
            Client::handshake(stream, address.to_owned(), None).await.map_err(|e| e.to_string())
        };
        let client = tokio::time::timeout(DIAL_TIMEOUT, dial)
            .await
            .map_err(|_| format!("connecting to {address} timed out"))??;
        self.clients.lock().insert(address.to_owned(), client.clone());
        Ok(client)
    }

    fn forget(&self, address: &str) {
        self.clients.lock().remove(address);
    }
}

/// openraft's view of the network: one link per peer, over the member protocol.
struct Network {
    peers: Arc<Peers>,
}

struct PeerLink {
    target: NodeId,
    address: String,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerLink { target, address: node.addr.clone(), peers: self.peers.clone() }
    }
}

type LinkError<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerLink {
    async fn call(&self, req: Request, ttl: Duration) -> Result<Response, Unreachable> {
        let client =
            self.peers.get(&self.address).await.map_err(|e| Unreachable::new(&std::io::Error::other(e)))?;
        match client.call(req, ttl).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.peers.forget(&self.address);
                Err(Unreachable::new(&std::io::Error::other(e.to_string())))
            }
        }
    }

    fn unexpected<E: std::error::Error>(resp: &Response) -> LinkError<E> {
        let msg = format!("unexpected answer from peer: {resp:?}");
        RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<NodeId, E>) -> LinkError<E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, LinkError<openraft::error::Infallible>> {
        match self.call(Request::RaftAppend(rpc), option.hard_ttl()).await? {
            Response::RaftAppend(r) => r.map_err(|e| self.remote(e)),
            other => Err(Self::unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, LinkError<InstallSnapshotError>> {
        match self.call(Request::RaftSnapshot(rpc), option.hard_ttl()).await? {
            Response::RaftSnapshot(r) => r.map_err(|e| self.remote(e)),
            other => Err(Self::unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, LinkError<openraft::error::Infallible>> {
        match self.call(Request::RaftVote(rpc), option.hard_ttl()).await? {
            Response::RaftVote(r) => r.map_err(|e| self.remote(e)),
            other => Err(Self::unexpected(&other)),
        }
    }
}

/// The connections waiting on one watch, by connection id.
type Watchers = BTreeMap<u64, cairn_rpc::Connection<WatchFired>>;

/// Watches set by this member's clients: one-shot, keyed by path and kind.
#[derive(Default)]
struct Watches {
    map: Mutex<BTreeMap<(String, WatchKind), Watchers>>,
}

impl Watches {
    fn add(&self, path: &str, kind: WatchKind, conn: &cairn_rpc::Connection<WatchFired>) {
        let mut map = self.map.lock();
        // A connection that closed while its request waited: `disconnected` already ran.
        if conn.is_closed() {
            return;
        }
        let watchers = map.entry((path.to_owned(), kind)).or_default();
        if watchers.len() < WATCHERS_PER_PATH_MAX {
            watchers.insert(conn.id(), conn.clone());
        }
    }

    fn fire(&self, events: &[WatchEvent]) {
        let mut map = self.map.lock();
        for event in events {
            for kind in [WatchKind::Data, WatchKind::Children] {
                if !event.fires(kind) {
                    continue;
                }
                if let Some(conns) = map.remove(&(event.path.clone(), kind)) {
                    for conn in conns.values() {
                        // A full push queue closes that connection; the client re-registers.
                        let _ = conn.push(&WatchFired { kind, event: event.clone() });
                    }
                }
            }
        }
    }

    fn drop_connection(&self, conn_id: u64) {
        let mut map = self.map.lock();
        map.retain(|_, conns| {
            conns.remove(&conn_id);
            !conns.is_empty()
        });
    }

    fn count(&self) -> usize {
        self.map.lock().values().map(|c| c.len()).sum()
    }
}

/// The leader's session deadlines. Empty on followers.
#[derive(Default)]
struct SessionDeadlines {
    /// The term in which this member became leader and set the deadlines.
    term: Option<u64>,
    deadlines: HashMap<SessionId, Instant>,
}

/// A command waiting for the batcher, and where its outcome goes.
type Pending = (Command, oneshot::Sender<Result<(crate::api::CommandResult, Zxid), Proposal>>, Instant);

/// Why a proposal did not produce a result.
#[derive(Clone, Debug)]
enum Proposal {
    /// This member is not the leader (nothing was appended).
    NotLeader {
        leader_id: Option<NodeId>,
    },
    Failed(CoordError),
}

/// Commands waiting to be proposed.
#[derive(Default)]
struct Batcher {
    queue: Mutex<std::collections::VecDeque<Pending>>,
    wake: tokio::sync::Notify,
}

impl Batcher {
    /// Takes queued commands, up to [`BATCH_COMMANDS_MAX`] and about [`BATCH_BYTES_MAX`].
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let now = Instant::now();
        while let Some((command, _, deadline)) = queue.front() {
            if *deadline <= now {
                // Its caller has given up: never propose it late, over newer writes.
                if let Some((_, tx, _)) = queue.pop_front() {
                    let _ = tx.send(Err(Proposal::Failed(unavailable("timed out before it was proposed"))));
                }
                continue;
            }
            let size = command.approx_bytes();
            if !batch.is_empty() && (batch.len() >= BATCH_COMMANDS_MAX || bytes + size > BATCH_BYTES_MAX) {
                break;
            }
            bytes += size;
            if let Some(pending) = queue.pop_front() {
                batch.push(pending);
            }
        }
        batch
    }
}

/// What the request handler and the background tasks share.
pub struct Core {
    id: NodeId,
    address: String,
    raft: Raft,
    machine: Arc<Machine>,
    peers: Arc<Peers>,
    watches: Watches,
    sessions: Mutex<SessionDeadlines>,
    /// Sessions pinged on this follower, to pass on to the leader.
    touched: Mutex<BTreeSet<SessionId>>,
    batcher: Batcher,
    /// Connections over which a leader sent AppendEntries, by connection id.
    leader_connections: Mutex<HashMap<u64, NodeId>>,
    /// When a leader's AppendEntries (or heartbeat) last succeeded here.
    leader_contact: Mutex<Option<Instant>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Nothing was done: safe to retry. (Forwarding members retry on exactly this.)
fn unavailable(reason: impl Into<String>) -> CoordError {
    CoordError::Unavailable { reason: reason.into() }
}

/// The request may or may not have taken effect.
fn outcome_unknown(reason: impl Into<String>) -> CoordError {
    CoordError::ConnectionLoss { reason: reason.into() }
}

impl Core {
    fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let address = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, address))
    }

    /// This member's Raft view, into the process's metrics.
    fn publish_metrics(&self) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.state == ServerState::Leader && m.current_leader == Some(self.id);
        cairn_metrics::coord_raft(
            leader,
            m.current_term,
            m.current_leader,
            m.last_applied.map_or(0, |l| l.index),
        );
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    fn applied(&self) -> Zxid {
        *self.machine.applied().borrow()
    }

    /// Waits until this member has applied `zxid`.
    async fn catch_up(&self, zxid: Zxid) -> Result<(), CoordError> {
        let mut applied = self.machine.applied();
        let wait = applied.wait_for(|a| *a >= zxid);
        match tokio::time::timeout(CATCH_UP_TIMEOUT, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(unavailable("member is shutting down")),
            Err(_) => Err(unavailable(format!(
                "member {} has not caught up with zxid {zxid} (applied {})",
                self.id,
                self.applied()
            ))),
        }
    }

    /// Sends `req` to the current leader and returns its answer. Waits for an election if there is
    /// no leader. Only retries when the request surely was not handled (no leader, no connection).
    async fn to_leader(&self, req: impl Fn() -> Request, deadline: Instant) -> Result<Response, CoordError> {
        loop {
            if let Some((leader, address)) = self.leader() {
                if leader == self.id {
                    // Elected meanwhile: the caller handles the request here.
                    return Ok(Response::Failed(unavailable(format!(
                        "member {} is now the leader",
                        self.id
                    ))));
                }
                match self.peers.get(&address).await {
                    Ok(client) => {
                        let ttl = deadline.saturating_duration_since(Instant::now());
                        if ttl.is_zero() {
                            return Err(unavailable("timed out before reaching the leader"));
                        }
                        // Sent: if no answer comes, the request may or may not have been handled.
                        return client.call(req(), ttl).await.map_err(|e| {
                            self.peers.forget(&address);
                            CoordError::ConnectionLoss {
                                reason: format!("leader {leader} at {address} did not answer: {e}"),
                            }
                        });
                    }
                    Err(e) => tracing::debug!("cannot reach leader {leader}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(unavailable("no leader reachable: the quorum may have lost its majority"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes `command` (stamping its time) and returns its result and zxid. `forwarded` is set
    /// when another member sent it here; such a request is never forwarded again.
    async fn write(&self, mut command: Command, forwarded: bool) -> Response {
        match &mut command {
            Command::Write { time_ms, .. } | Command::Multi { time_ms, .. } => *time_ms = now_ms(),
            _ => {}
        }
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            match self.propose(command.clone(), deadline).await {
                Ok((result, zxid)) => return Response::Written { result, zxid },
                Err(Proposal::NotLeader { leader_id }) => {
                    if forwarded {
                        return Response::Failed(unavailable(format!(
                            "member {} is not the leader (leader: {leader_id:?})",
                            self.id
                        )));
                    }
                    if leader_id.is_some_and(|l| l != self.id) {
                        let command = command.clone();
                        match self
                            .to_leader(move || Request::Forward { command: command.clone() }, deadline)
                            .await
                        {
                            Ok(Response::Failed(CoordError::Unavailable { .. }))
                                if Instant::now() < deadline =>
                            {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            Ok(resp) => return resp,
                            Err(e) => return Response::Failed(e),
                        }
                    }
                }
                Err(Proposal::Failed(e)) => return Response::Failed(e),
            }
            if Instant::now() >= deadline {
                return Response::Failed(unavailable("no leader elected in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes `command` through the batcher: alone when the log is idle, together with the other
    /// commands that arrived meanwhile when [`PROPOSALS_IN_FLIGHT_MAX`] proposals are already
    /// waiting for their commit. Returns its result and zxid.
    async fn propose(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(crate::api::CommandResult, Zxid), Proposal> {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.batcher.queue.lock();
            if queue.len() >= QUEUED_WRITES_MAX {
                return Err(Proposal::Failed(unavailable("too many writes waiting")));
            }
            queue.push_back((command, tx, deadline));
        }
        self.batcher.wake.notify_one();
        rx.await.unwrap_or_else(|_| Err(Proposal::Failed(outcome_unknown("member is shutting down"))))
    }

    /// The batcher's loop: takes whatever is queued (up to the limits) whenever a proposal slot is
    /// free, and proposes it as one log entry.
    async fn run_batcher(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let batch = loop {
                let batch = self.batcher.take();
                if !batch.is_empty() {
                    break batch;
                }
                self.batcher.wake.notified().await;
            };
            let core = self.clone();
            tokio::spawn(async move {
                core.commit_batch(batch).await;
                drop(slot);
            });
        }
    }

    async fn commit_batch(&self, mut batch: Vec<Pending>) {
        let single = batch.len() == 1;
        let command = if single {
            batch[0].0.clone()
        } else {
            Command::Batch(batch.iter().map(|(c, _, _)| c.clone()).collect())
        };
        match self.raft.client_write(command).await {
            Ok(resp) => {
                let index = resp.log_id.index;
                if single {
                    if let Some((_, tx, _)) = batch.pop() {
                        let _ = tx.send(Ok((resp.data, zxid_of(index, 0))));
                    }
                    return;
                }
                let results = match resp.data {
                    Ok(CommandOk::Batch(results)) if results.len() == batch.len() => results,
                    other => {
                        let e = outcome_unknown(format!("unexpected result of a batch: {other:?}"));
                        for (_, tx, _) in batch {
                            let _ = tx.send(Err(Proposal::Failed(e.clone())));
                        }
                        return;
                    }
                };
                for (position, ((_, tx, _), result)) in batch.into_iter().zip(results).enumerate() {
                    let _ = tx.send(Ok((result, zxid_of(index, position))));
                }
            }
            Err(e) => {
                let outcome = match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                        Proposal::NotLeader { leader_id: f.leader_id }
                    }
                    RaftError::APIError(e) => {
                        Proposal::Failed(CoordError::Membership { reason: e.to_string() })
                    }
                    RaftError::Fatal(e) => Proposal::Failed(outcome_unknown(format!("Raft stopped: {e}"))),
                };
                for (_, tx, _) in batch {
                    let _ = tx.send(Err(outcome.clone()));
                }
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the read point.
    async fn local_read_index(&self) -> Result<Zxid, CoordError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| zxid_entry_end(l.index)).unwrap_or(0)),
            Err(e) => Err(unavailable(format!("leadership not confirmed: {e}"))),
        }
    }

    /// A read point every later read must reach to be linearizable. Retries through leader
    /// changes until the write timeout.
    async fn read_index(&self) -> Result<Zxid, CoordError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            let attempt = if self.is_leader() {
                match self.local_read_index().await {
                    Ok(zxid) => return Ok(zxid),
                    Err(e) => e,
                }
            } else {
                match self.to_leader(|| Request::ReadIndex, deadline).await {
                    Ok(Response::ReadIndex(Ok(zxid))) => return Ok(zxid),
                    Ok(Response::ReadIndex(Err(e))) => e,
                    Ok(Response::Failed(e)) => e,
                    Ok(other) => {
                        return Err(unavailable(format!("unexpected answer to ReadIndex: {other:?}")));
                    }
                    Err(e) => return Err(e),
                }
            };
            if Instant::now() >= deadline {
                return Err(attempt);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn read(
        &self,
        conn: &cairn_rpc::Connection<WatchFired>,
        op: ReadOp,
        path: String,
        watch: bool,
        min_zxid: Zxid,
        linearizable: bool,
    ) -> Response {
        let mut point = min_zxid;
        if linearizable {
            match self.read_index().await {
                Ok(index) => point = point.max(index),
                Err(e) => return Response::Read { result: Err(e), zxid: self.applied() },
            }
        }
        if let Err(e) = self.catch_up(point).await {
            return Response::Read { result: Err(e), zxid: self.applied() };
        }
        // Read and register under the tree lock, so no change slips between the two; and answer
        // the zxid of that very tree (a later one would have the client believe it saw changes it
        // did not, and miss their watch events after a reconnect).
        let (result, zxid) = self.machine.read_applied(|tree| match op {
            ReadOp::Get => {
                let r = tree.get(&path).map(|(data, stat)| ReadOk::Data { data, stat });
                if watch && r.is_ok() {
                    self.watches.add(&path, WatchKind::Data, conn);
                }
                r
            }
            ReadOp::Exists => {
                let r = tree.exists(&path).map(|stat| ReadOk::Exists { stat });
                if watch && r.is_ok() {
                    self.watches.add(&path, WatchKind::Data, conn);
                }
                r
            }
            ReadOp::Children => {
                let r = tree.children(&path).map(|(names, stat)| ReadOk::Children { names, stat });
                if watch && r.is_ok() {
                    self.watches.add(&path, WatchKind::Children, conn);
                }
                r
            }
        });
        Response::Read { result, zxid }
    }

    async fn set_watches(
        &self,
        conn: &cairn_rpc::Connection<WatchFired>,
        watches: Vec<WatchSpec>,
        last_zxid: Zxid,
    ) -> Response {
        if let Err(e) = self.catch_up(last_zxid).await {
            return Response::Done(Err(e));
        }
        let mut fire_now = Vec::new();
        self.machine.read(|tree| {
            for spec in watches {
                let stat = match tree.exists(&spec.path) {
                    Ok(stat) => stat,
                    Err(_) => continue,
                };
                let event = |event: EventType, zxid: Zxid| WatchFired {
                    kind: spec.kind,
                    event: WatchEvent { path: spec.path.clone(), event, zxid },
                };
                let fired = match (spec.kind, spec.existed, &stat) {
                    (WatchKind::Data, false, Some(s)) => Some(event(EventType::Created, s.czxid)),
                    (WatchKind::Data, false, None) => None,
                    (_, true, None) | (WatchKind::Children, false, None) => {
                        Some(event(EventType::Deleted, self.applied()))
                    }
                    (WatchKind::Data, true, Some(s)) if s.mzxid > last_zxid => {
                        Some(event(EventType::DataChanged, s.mzxid))
                    }
                    (WatchKind::Children, _, Some(s)) if s.pzxid > last_zxid => {
                        Some(event(EventType::ChildrenChanged, s.pzxid))
                    }
                    _ => None,
                };
                match fired {
                    Some(f) => fire_now.push(f),
                    None => self.watches.add(&spec.path, spec.kind, conn),
                }
            }
        });
        for fired in fire_now {
            let _ = conn.push(&fired);
        }
        Response::Done(Ok(()))
    }

    async fn ping(&self, session: SessionId) -> Response {
        // The session id is the index that created it: wait until this member has applied it.
        if let Err(e) = self.catch_up(session).await {
            return Response::Pong(Err(e));
        }
        if !self.machine.read(|t| t.session_exists(session)) {
            return Response::Pong(Err(CoordError::SessionExpired { session }));
        }
        // Only vouch for a session while in touch with a majority: a member cut off from it must
        // not keep its clients believing in sessions the majority may be expiring.
        if self.is_leader() {
            let since_quorum = self.raft.metrics().borrow().millis_since_quorum_ack;
            if since_quorum.is_none_or(|ms| ms > OUT_OF_TOUCH.as_millis() as u64) {
                return Response::Pong(Err(unavailable("the leader has lost touch with its quorum")));
            }
            self.touch(&[session]);
        } else {
            let contact = *self.leader_contact.lock();
            if contact.is_none_or(|at| at.elapsed() > OUT_OF_TOUCH) {
                return Response::Pong(Err(unavailable("this member has lost touch with the leader")));
            }
            self.touched.lock().insert(session);
        }
        Response::Pong(Ok(()))
    }

    /// Called when the connection the leader replicated over closed: elects at once if the leader
    /// is still the one we follow and refuses connections.
    async fn check_leader_alive(&self, leader: NodeId) {
        let Some((current, address)) = self.leader() else { return };
        if current != leader || leader == self.id {
            return;
        }
        let dial = tokio::time::timeout(LEADER_PROBE_TIMEOUT, self.peers.dialer.dial(&address)).await;
        if let Ok(Err(e)) = dial {
            tracing::info!("leader {leader} at {address} is gone ({e}): starting an election");
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::warn!("cannot start an election: {e}");
            }
        }
    }

    /// On the leader: pushes the sessions' deadlines to a full timeout from now.
    fn touch(&self, sessions: &[SessionId]) {
        let now = Instant::now();
        let timeouts: Vec<(SessionId, u64)> = self.machine.read(|tree| {
            let all: HashMap<SessionId, u64> = tree.sessions().into_iter().collect();
            sessions.iter().filter_map(|s| all.get(s).map(|t| (*s, *t))).collect()
        });
        let mut tracker = self.sessions.lock();
        if tracker.term.is_none() {
            return;
        }
        for (session, timeout_ms) in timeouts {
            tracker.deadlines.insert(session, now + Duration::from_millis(timeout_ms));
        }
    }

    fn status(&self) -> MemberStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let address_of = |id: NodeId| membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        let (znodes, sessions) = self.machine.read(|t| (t.znode_count(), t.sessions().len()));
        MemberStatus {
            id: self.id,
            address: self.address.clone(),
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters: membership.voter_ids().map(|id| (id, address_of(id))).collect(),
            learners: membership.learner_ids().map(|id| (id, address_of(id))).collect(),
            znodes,
            sessions,
        }
    }

    async fn add_member(&self, id: NodeId, address: String) -> Response {
        if !self.is_leader() {
            let deadline = Instant::now() + WRITE_TIMEOUT;
            return self
                .to_leader(|| Request::AddMember { id, address: address.clone() }, deadline)
                .await
                .unwrap_or_else(|e| Response::Done(Err(e)));
        }
        let membership_error = |e: String| Response::Done(Err(CoordError::Membership { reason: e }));
        if let Err(e) = self.raft.add_learner(id, BasicNode::new(address.clone()), true).await {
            return membership_error(format!("adding {id} at {address} as a learner: {e}"));
        }
        let mut voters: BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        voters.insert(id);
        match self.raft.change_membership(voters, false).await {
            Ok(_) => Response::Done(Ok(())),
            Err(e) => membership_error(format!("making {id} a voter: {e}")),
        }
    }

    async fn remove_member(&self, id: NodeId) -> Response {
        if !self.is_leader() {
            let deadline = Instant::now() + WRITE_TIMEOUT;
            return self
                .to_leader(|| Request::RemoveMember { id }, deadline)
                .await
                .unwrap_or_else(|e| Response::Done(Err(e)));
        }
        let mut voters: BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if !voters.remove(&id) {
            return Response::Done(Err(CoordError::Membership { reason: format!("{id} is not a voter") }));
        }
        if voters.is_empty() {
            return Response::Done(Err(CoordError::Membership {
                reason: "cannot remove the last voter".into(),
            }));
        }
        match self.raft.change_membership(voters, false).await {
            Ok(_) => Response::Done(Ok(())),
            Err(e) => Response::Done(Err(CoordError::Membership { reason: e.to_string() })),
        }
    }

    /// Leader: keeps deadlines in step with the tree and proposes the expiry of late sessions.
    /// Follower: passes its clients' pings on to the leader.
    async fn tick(&self) {
        if self.is_leader() {
            let term = self.raft.metrics().borrow().current_term;
            let now = Instant::now();
            let sessions = self.machine.read(|t| t.sessions());
            let expired: Vec<SessionId> = {
                let mut tracker = self.sessions.lock();
                if tracker.term != Some(term) {
                    // Newly elected: every session gets a full timeout from now.
                    tracker.term = Some(term);
                    tracker.deadlines.clear();
                }
                let live: BTreeSet<SessionId> = sessions.iter().map(|(s, _)| *s).collect();
                tracker.deadlines.retain(|s, _| live.contains(s));
                for (session, timeout_ms) in &sessions {
                    tracker.deadlines.entry(*session).or_insert(now + Duration::from_millis(*timeout_ms));
                }
                let mut expired: Vec<SessionId> =
                    tracker.deadlines.iter().filter(|(_, d)| **d <= now).map(|(s, _)| *s).collect();
                expired.sort_unstable();
                expired.truncate(EXPIRE_BATCH_MAX);
                expired
            };
            if !expired.is_empty() {
                tracing::info!(sessions = ?expired, "expiring sessions that missed their heartbeats");
                if let Response::Failed(e) =
                    self.write(Command::ExpireSessions { sessions: expired }, true).await
                {
                    tracing::warn!("could not expire sessions: {e}");
                }
            }
        } else {
            {
                let mut tracker = self.sessions.lock();
                tracker.term = None;
                tracker.deadlines.clear();
            }
            let touched: Vec<SessionId> = std::mem::take(&mut *self.touched.lock()).into_iter().collect();
            if touched.is_empty() {
                return;
            }
            let deadline = Instant::now() + TOUCH_INTERVAL * 5;
            match self.to_leader(|| Request::Touch { sessions: touched.clone() }, deadline).await {
                Ok(_) => {}
                Err(e) => {
                    // Keep them for the next round.
                    tracing::debug!("could not pass pings on: {e}");
                    self.touched.lock().extend(touched);
                }
            }
        }
    }
}

/// The member's request handler.
pub struct Handler {
    core: Arc<Core>,
}

impl cairn_rpc::Handler for Handler {
    type Req = Request;
    type Resp = Response;
    type Push = WatchFired;

    async fn call(&self, conn: &cairn_rpc::Connection<WatchFired>, req: Request) -> Response {
        let core = &self.core;
        match req {
            Request::RaftAppend(rpc) => {
                if let Some(leader) = rpc.vote.leader_id().voted_for() {
                    core.leader_connections.lock().insert(conn.id(), leader);
                }
                let result = core.raft.append_entries(rpc).await;
                if matches!(result, Ok(AppendEntriesResponse::Success)) {
                    *core.leader_contact.lock() = Some(Instant::now());
                }
                Response::RaftAppend(result)
            }
            Request::RaftVote(rpc) => Response::RaftVote(core.raft.vote(rpc).await),
            Request::RaftSnapshot(rpc) => Response::RaftSnapshot(core.raft.install_snapshot(rpc).await),
            Request::Forward { command } => core.write(command, true).await,
            Request::Touch { sessions } => {
                if core.is_leader() {
                    core.touch(&sessions);
                    Response::Done(Ok(()))
                } else {
                    Response::Done(Err(unavailable("not the leader")))
                }
            }
            Request::ReadIndex => {
                if core.is_leader() {
                    Response::ReadIndex(core.local_read_index().await)
                } else {
                    Response::ReadIndex(Err(unavailable("not the leader")))
                }
            }
            Request::Hello => Response::Welcome { id: core.id, leader: core.leader() },
            Request::Write { command } => core.write(command, false).await,
            Request::Ping { session } => core.ping(session).await,
            Request::Read { op, path, watch, min_zxid, linearizable } => {
                core.read(conn, op, path, watch, min_zxid, linearizable).await
            }
            Request::SetWatches { watches, last_zxid } => core.set_watches(conn, watches, last_zxid).await,
            Request::Status => Response::Status(core.status()),
            Request::AddMember { id, address } => core.add_member(id, address).await,
            Request::RemoveMember { id } => core.remove_member(id).await,
        }
    }

    fn disconnected(&self, conn: &cairn_rpc::Connection<WatchFired>) {
        self.core.watches.drop_connection(conn.id());
        // The leader's connection closed. A killed process closes its sockets at once, so this is
        // usually the first sign of a dead leader: if it no longer accepts connections, start an
        // election now instead of waiting out the election timeout (ZooKeeper does the same).
        let leader = self.core.leader_connections.lock().remove(&conn.id());
        if let Some(leader) = leader {
            let core = self.core.clone();
            tokio::spawn(async move { core.check_leader_alive(leader).await });
        }
    }
}

/// Makes a member that led a term before it stopped start as a follower, so that it leads again only
/// after winning a new term.
///
/// openraft 0.9 restores a member whose saved vote is its own committed vote as the leader of that
/// term at once, without an election. Such a leader knows its commit index only from the
/// `committed` hint, which may trail what it acknowledged before it stopped; and its no-op is the
/// one it committed in its previous life, so `ensure_linearizable` answers `max(no-op, committed)`:
/// a read point behind writes already acknowledged to clients, and a read after `sync` was
/// answered from a tree that had not replayed them (`NoNode` for a znode created before the
/// restart). Raft's read rule (§8) holds only for a leader that has committed an entry of its term
/// since it knows its commit index; a new term does that with its no-op. It also keeps a leader
/// that lost log entries not yet flushed when it died (a majority of followers may have made them
/// durable and committed) from proposing different entries under the same log ids in the same term.
///
/// Turning the vote into an uncommitted vote for the same term is safe: it grants nothing new (a
/// candidate of the same term is still refused), and no other member can lead that term.
async fn step_down_after_restart(log: &mut store::LogStore, id: NodeId) -> Result<(), StartError> {
    use openraft::storage::RaftLogStorage;
    let vote = log.read_vote().await.map_err(|e| StartError::Raft(e.to_string()))?;
    if let Some(vote) = vote
        && vote.is_committed()
        && vote.leader_id().voted_for() == Some(id)
    {
        tracing::info!(%vote, "led this term before stopping: starting as a follower, to be elected anew");
        let demoted = openraft::Vote::new(vote.leader_id().get_term(), id);
        log.save_vote(&demoted).await.map_err(|e| StartError::Raft(e.to_string()))?;
    }
    Ok(())
}

/// A running member. Dropping it does not stop it: call [`Member::shutdown`].
pub struct Member {
    core: Arc<Core>,
    ticker: JoinHandle<()>,
    batcher: JoinHandle<()>,
}

impl Member {
    /// Opens the store, starts Raft and, on a brand-new quorum, initializes it.
    pub async fn start(config: MemberConfig, dialer: Arc<dyn Dialer>) -> Result<Member, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::Raft(format!("cannot create {}: {e}", config.data_dir.display())))?;
        let (mut log, machine_store) = store::open(&config.data_dir, config.flush)?;
        step_down_after_restart(&mut log, config.id).await?;
        let machine = machine_store.machine();
        let raft_config = raft_config(&config.cluster_name, config.snapshot_every_entries)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let peers = Arc::new(Peers { dialer, clients: Mutex::new(HashMap::new()) });
        let network = Network { peers: peers.clone() };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, machine_store)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let lowest = config.initial_members.keys().next().copied();
        if lowest == Some(config.id)
            && !raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?
        {
            let members: BTreeMap<NodeId, BasicNode> =
                config.initial_members.iter().map(|(id, a)| (*id, BasicNode::new(a.clone()))).collect();
            tracing::info!(?members, "initializing a new coord quorum");
            raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))?;
        }

        let core = Arc::new(Core {
            id: config.id,
            address: config.address.clone(),
            raft,
            machine: machine.clone(),
            peers,
            watches: Watches::default(),
            sessions: Mutex::new(SessionDeadlines::default()),
            touched: Mutex::new(BTreeSet::new()),
            batcher: Batcher::default(),
            leader_connections: Mutex::new(HashMap::new()),
            leader_contact: Mutex::new(None),
        });
        let batcher = tokio::spawn(core.clone().run_batcher());
        let weak = Arc::downgrade(&core);
        machine.set_listener(Box::new(move |_zxid, events| {
            if let Some(core) = weak.upgrade() {
                core.watches.fire(events);
            }
        }));
        let ticking = core.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TOUCH_INTERVAL.min(EXPIRY_CHECK_INTERVAL));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticking.tick().await;
                ticking.publish_metrics();
            }
        });
        Ok(Member { core, ticker, batcher })
    }

    /// The handler to serve connections with (`cairn_rpc::serve_tcp` or `serve_connection`).
    pub fn handler(&self) -> Arc<Handler> {
        Arc::new(Handler { core: self.core.clone() })
    }

    pub fn id(&self) -> NodeId {
        self.core.id
    }

    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    pub fn machine(&self) -> &Arc<Machine> {
        &self.core.machine
    }

    pub fn status(&self) -> MemberStatus {
        self.core.status()
    }

    /// Watches registered by this member's clients.
    pub fn watch_count(&self) -> usize {
        self.core.watches.count()
    }

    /// Stops Raft and the background task.
    pub async fn shutdown(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        self.batcher.abort();
        let _ = self.batcher.await;
        for (_, tx, _) in self.core.batcher.queue.lock().drain(..) {
            let _ = tx.send(Err(Proposal::Failed(unavailable("member is shutting down"))));
        }
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!("Raft did not stop cleanly: {e}");
        }
    }
}
