//! The master side of a volume's replication: [`NetReplicator`] implements the store's
//! [`Replicator`] by keeping the records in an in-memory log and running one **link** task per
//! replica that carries them over `cairn-rpc` (star replication: the master sends to every
//! replica itself).
//!
//! A link says hello to its replica, which answers its history epoch and position. The copy
//! continues this master's history when it followed this master (its history epoch lies in the
//! epochs this master has held since it opened the volume) or when it stands exactly where this
//! master started (same history epoch and position); the link then sends the records after the
//! replica's position, if the log still has them. Otherwise it sends a full copy
//! ([`Store::snapshot`]) while the log keeps every record submitted meanwhile, then those
//! records.
//!
//! Acknowledgement: [`Replicator::wait`] returns once every replica in the **wait set** has
//! applied the record (and, for durable records, fsynced it). A replica joins the wait set when
//! its link starts following, and leaves it only when the CLDB takes it out of the placement
//! (a new epoch): a replica that stops answering therefore blocks writes until the CLDB declares
//! its node down, never silently loses them. A replica that never followed at this epoch is not
//! waited for, and it does not report itself as an up-to-date replica to the CLDB either, so the
//! CLDB never promotes a copy that may lack an acknowledged write.
//!
//! Fencing: a replica that knows a newer epoch refuses the link's calls (unless the CLDB kept
//! this master at that epoch); the replicator then fails every wait with
//! [`ReplicationError::Fenced`], and the store refuses every later change.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use cairn_store::Store;
use cairn_store::replication::{Record, RecordBody, ReplicationError, Replicator, SnapshotPiece};
use parking_lot::{Condvar, Mutex};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::proto::{ReplError, ReplReply, ReplRequest, Request, Response};

/// Longest wait for the replicas to acknowledge one record before the operation fails with
/// "unavailable" (the client retries it). The CLDB takes a dead replica out within a node
/// timeout, which unblocks the wait well before.
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(60);
/// Bytes of records the log keeps beyond what every replica acknowledged, so that a replica
/// that restarts can roll forward instead of being copied in full.
pub(crate) const LOG_RETAINED_BYTES: usize = 64 << 20;
/// Most bytes of records, or of snapshot pieces, in one call.
const BATCH_BYTES_MAX: usize = 8 << 20;
/// Longest wait for a replica's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait to connect to a file server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A `cairn-rpc` connection to a file server.
pub type FileServerClient = cairn_rpc::Client<Request, Response, ()>;

/// Connections to file servers, one per address, shared by everything in a process that calls
/// them (a file server's replication links, the cluster client's `ClusterFs`).
#[derive(Default)]
pub struct Connections {
    clients: Mutex<HashMap<String, FileServerClient>>,
}

impl Connections {
    /// The open connection to `address`, or a new one.
    pub async fn get(&self, address: &str) -> Result<FileServerClient, String> {
        if let Some(client) = self.clients.lock().get(address).filter(|client| !client.is_closed()) {
            return Ok(client.clone());
        }
        let client = FileServerClient::connect_tcp(address, CONNECT_TIMEOUT, None)
            .await
            .map_err(|error| format!("cannot reach file server {address}: {error}"))?;
        self.clients.lock().insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Closes and forgets the connection to `address` (after an error on it).
    pub fn forget(&self, address: &str) {
        if let Some(client) = self.clients.lock().remove(address) {
            client.close();
        }
    }

    /// One replication call.
    pub(crate) async fn call(&self, address: &str, request: ReplRequest) -> Result<ReplReply, LinkError> {
        let client = self.get(address).await.map_err(LinkError::Retry)?;
        match client.call(Request::Repl(request), CALL_TIMEOUT).await {
            Ok(Response::Repl(Ok(reply))) => Ok(reply),
            Ok(Response::Repl(Err(ReplError::Fenced { epoch }))) => Err(LinkError::Fenced(epoch)),
            Ok(Response::Repl(Err(ReplError::NeedResync(why)))) => Err(LinkError::NeedCopy(why)),
            Ok(Response::Repl(Err(error))) => Err(LinkError::Retry(error.to_string())),
            Ok(_) => Err(LinkError::Retry(format!("{address} answered another call"))),
            Err(error) => {
                self.forget(address);
                Err(LinkError::Retry(format!("{address}: {error}")))
            }
        }
    }
}

/// Why a link session ended.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// A replica knows this newer epoch.
    Fenced(u64),
    /// The replica cannot continue its copy: start over with a full copy.
    NeedCopy(String),
    /// Anything else: start over (hello) after a pause.
    Retry(String),
}

impl From<LinkError> for ReplError {
    fn from(error: LinkError) -> ReplError {
        match error {
            LinkError::Fenced(epoch) => ReplError::Fenced { epoch },
            LinkError::NeedCopy(why) => ReplError::NeedResync(why),
            LinkError::Retry(why) => ReplError::Unreachable(why),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Copying,
    Following,
}

struct Link {
    address: String,
    /// Bumped when the link is replaced or removed: its task stops.
    generation: u64,
    phase: Phase,
    /// Joined when the link first followed; left only when the CLDB drops the replica.
    waited_for: bool,
    /// The last record the replica acknowledged.
    acked: u64,
    /// While a full copy runs: records after this stay in the log.
    pin: Option<u64>,
    /// Chain replication: the replica before it could not pass it records (the link starts over).
    broken: Option<String>,
}

struct State {
    epoch: u64,
    /// The first epoch of this master's uninterrupted mastership.
    lineage_start: u64,
    /// The history epoch and position the store had when it opened as master.
    base: (u64, u64),
    /// The last record submitted.
    last: u64,
    log: VecDeque<Arc<Record>>,
    log_bytes: usize,
    links: BTreeMap<String, Link>,
    /// The other replicas in chain order (the CLDB's order).
    order: Vec<String>,
    /// Chain replication: records go to the first following replica, which passes them on.
    chain: bool,
    /// A replica knew this newer epoch.
    fenced: Option<u64>,
    /// The volume stopped being served here.
    stopped: bool,
}

impl State {
    /// The replicas waited for that have not acknowledged record `seq`.
    fn lagging(&self, seq: u64) -> Vec<&String> {
        self.links
            .iter()
            .filter(|(_, link)| link.waited_for && link.acked < seq)
            .map(|(node, _)| node)
            .collect()
    }
}

/// See the module documentation.
pub(crate) struct NetReplicator {
    volume: u32,
    node: String,
    /// Where this file server serves.
    address: String,
    peers: Arc<Connections>,
    runtime: Handle,
    state: Mutex<State>,
    acked: Condvar,
    wake: Notify,
    store: OnceLock<Weak<Store>>,
    next_generation: AtomicU64,
}

impl NetReplicator {
    /// A replicator for a master at `epoch` whose copy had `history_epoch` and, in `retained`,
    /// its latest records (consecutive, ending at its position).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        volume: u32,
        node: String,
        address: String,
        epoch: u64,
        history_epoch: u64,
        retained: Vec<Record>,
        peers: Arc<Connections>,
        runtime: Handle,
    ) -> Arc<NetReplicator> {
        let log_bytes = retained.iter().map(|record| record.body.size_bytes()).sum();
        let last = retained.last().map_or(0, |record| record.seq);
        Arc::new(NetReplicator {
            volume,
            node,
            address,
            peers,
            runtime,
            state: Mutex::new(State {
                epoch,
                lineage_start: epoch,
                base: (history_epoch, last),
                last,
                log: retained.into_iter().map(Arc::new).collect(),
                log_bytes,
                links: BTreeMap::new(),
                order: Vec::new(),
                chain: false,
                fenced: None,
                stopped: false,
            }),
            acked: Condvar::new(),
            wake: Notify::new(),
            store: OnceLock::new(),
            next_generation: AtomicU64::new(1),
        })
    }

    /// The store is open: links may copy it.
    pub(crate) fn set_store(&self, store: &Arc<Store>) {
        let _ = self.store.set(Arc::downgrade(store));
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// The first epoch of this mastership: calls carrying an epoch from here to the current one
    /// come from clients of this master.
    pub(crate) fn lineage_start(&self) -> u64 {
        self.state.lock().lineage_start
    }

    pub(crate) fn fenced(&self) -> Option<u64> {
        self.state.lock().fenced
    }

    /// The replicas that follow and have acknowledged record `position`: copies a bad block
    /// can be repaired from.
    pub(crate) fn repair_sources(&self, position: u64) -> Vec<(String, String)> {
        let state = self.state.lock();
        state
            .links
            .iter()
            .filter(|(_, link)| link.phase == Phase::Following && link.acked >= position)
            .map(|(node, link)| (node.clone(), link.address.clone()))
            .collect()
    }

    /// The replicas that follow (receive every record): the CLDB counts resyncing nodes listed
    /// here as caught up.
    pub(crate) fn in_sync(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .links
            .iter()
            .filter(|(_, link)| link.phase == Phase::Following)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// How many records each replica (node) has not acknowledged yet; a replica being copied
    /// counts every record.
    pub(crate) fn lags(&self) -> Vec<(String, u64)> {
        let state = self.state.lock();
        state.links.iter().map(|(node, link)| (node.clone(), state.last.saturating_sub(link.acked))).collect()
    }

    /// The CLDB's placement at `epoch`: (node, address) of every other replica and resync
    /// target, in chain order, and the replication type. Starts links to new ones, stops links
    /// to the ones that left.
    pub(crate) fn set_placement(self: &Arc<Self>, epoch: u64, targets: Vec<(String, String)>, chain: bool) {
        let mut state = self.state.lock();
        if epoch < state.epoch || state.stopped {
            return;
        }
        state.epoch = epoch;
        state.chain = chain;
        state.order =
            targets.iter().map(|(node, _)| node.clone()).filter(|node| *node != self.node).collect();
        let wanted: BTreeMap<String, String> =
            targets.into_iter().filter(|(node, _)| *node != self.node).collect();
        let before = state.links.len();
        state.links.retain(|node, link| wanted.get(node) == Some(&link.address));
        let removed = before != state.links.len();
        for (node, address) in wanted {
            if state.links.contains_key(&node) {
                continue;
            }
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            state.links.insert(
                node.clone(),
                Link {
                    address: address.clone(),
                    generation,
                    phase: Phase::Connecting,
                    waited_for: false,
                    acked: 0,
                    pin: None,
                    broken: None,
                },
            );
            let replicator = self.clone();
            self.runtime.spawn(async move { replicator.run_link(node, address, generation).await });
        }
        if removed {
            self.trim(&mut state);
            self.acked.notify_all();
        }
        drop(state);
        self.wake.notify_waiters();
    }

    /// This node no longer serves the volume: every wait fails and the links stop.
    pub(crate) fn stop(&self) {
        let mut state = self.state.lock();
        state.stopped = true;
        state.links.clear();
        self.acked.notify_all();
        drop(state);
        self.wake.notify_waiters();
    }

    /// A newer epoch exists: every wait fails from now on.
    pub(crate) fn fence(&self, epoch: u64) {
        let mut state = self.state.lock();
        if epoch > state.epoch && state.fenced.is_none() {
            tracing::warn!(volume = self.volume, epoch, "fenced: a newer epoch took the volume over");
            state.fenced = Some(epoch);
        }
        self.acked.notify_all();
        drop(state);
        self.wake.notify_waiters();
    }

    /// Drops records every link has and that lie beyond the retained window.
    fn trim(&self, state: &mut State) {
        let needed = state
            .links
            .values()
            .map(|link| match (link.phase, link.pin) {
                (_, Some(pin)) => pin,
                (Phase::Following, None) => link.acked,
                // Not following yet: it may roll forward from anywhere in the window.
                _ => 0,
            })
            .min()
            .unwrap_or(u64::MAX);
        while state.log_bytes > LOG_RETAINED_BYTES {
            match state.log.front() {
                Some(first) if first.seq <= needed => {
                    state.log_bytes -= first.body.size_bytes();
                    state.log.pop_front();
                }
                _ => break,
            }
        }
    }

    fn is_current(&self, node: &str, generation: u64) -> bool {
        let state = self.state.lock();
        !state.stopped
            && state.fenced.is_none()
            && state.links.get(node).is_some_and(|l| l.generation == generation)
    }

    fn update_link(&self, node: &str, generation: u64, change: impl FnOnce(&mut Link)) {
        let mut state = self.state.lock();
        if let Some(link) = state.links.get_mut(node).filter(|link| link.generation == generation) {
            change(link);
        }
        self.trim(&mut state);
        self.acked.notify_all();
    }

    async fn run_link(self: Arc<Self>, node: String, address: String, generation: u64) {
        let mut pause = Duration::from_millis(100);
        let mut must_copy = false;
        while self.is_current(&node, generation) {
            let why = match self.session(&node, &address, generation, must_copy).await {
                Ok(()) => return,
                Err(LinkError::Fenced(epoch)) => {
                    self.fence(epoch);
                    return;
                }
                Err(LinkError::NeedCopy(why)) => {
                    must_copy = true;
                    why
                }
                Err(LinkError::Retry(why)) => why,
            };
            tracing::info!(volume = self.volume, replica = %node, %why, "replication link restarts");
            self.update_link(&node, generation, |link| {
                link.phase = Phase::Connecting;
                link.pin = None;
                link.broken = None;
            });
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection's life: hello, catch up (roll forward or full copy), then stream.
    async fn session(
        self: &Arc<Self>,
        node: &str,
        address: &str,
        generation: u64,
        must_copy: bool,
    ) -> Result<(), LinkError> {
        let volume = self.volume;
        let epoch = self.epoch();
        let hello = ReplRequest::Hello {
            volume,
            epoch,
            master: self.node.clone(),
            master_address: self.address.clone(),
        };
        let ReplReply::Position { history_epoch, position } = self.peers.call(address, hello).await? else {
            return Err(LinkError::Retry("unexpected answer to hello".to_string()));
        };
        let rolls_forward = {
            let state = self.state.lock();
            // A base of history epoch 0 is a copy that was a master: only an empty one matches.
            let at_base = (history_epoch, position) == state.base && (state.base.0 != 0 || state.base.1 == 0);
            let continues = at_base || (history_epoch >= state.lineage_start && history_epoch <= state.epoch);
            let available =
                position == state.last || state.log.front().is_some_and(|first| first.seq <= position + 1);
            !must_copy && continues && position <= state.last && available
        };
        let acked = if rolls_forward {
            self.peers.call(address, ReplRequest::Follow { volume, epoch }).await?;
            tracing::info!(volume, replica = %node, position, "replica rolls forward");
            position
        } else {
            self.copy(node, address, generation, epoch).await?
        };
        self.update_link(node, generation, |link| {
            link.phase = Phase::Following;
            link.waited_for = true;
            link.acked = acked;
            link.pin = None;
        });
        self.stream(node, address, generation, epoch).await
    }

    /// A full copy; returns the sequence number it is consistent with.
    async fn copy(&self, node: &str, address: &str, generation: u64, epoch: u64) -> Result<u64, LinkError> {
        let volume = self.volume;
        let store = loop {
            if !self.is_current(node, generation) {
                return Err(LinkError::Retry("link replaced".to_string()));
            }
            match self.store.get().and_then(Weak::upgrade) {
                Some(store) => break store,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        tracing::info!(volume, replica = %node, "full copy of the volume starts");
        let volume_label = volume.to_string();
        cairn_metrics::resync_started(&volume_label);
        let started = Instant::now();
        {
            let mut state = self.state.lock();
            let last = state.last;
            if let Some(link) = state.links.get_mut(node).filter(|link| link.generation == generation) {
                link.phase = Phase::Copying;
                link.pin = Some(last);
            }
        }
        self.peers.call(address, ReplRequest::SnapshotBegin { volume, epoch }).await?;
        let peers = self.peers.clone();
        let runtime = self.runtime.clone();
        let target = address.to_string();
        let copied = tokio::task::spawn_blocking(move || {
            let mut batch: Vec<SnapshotPiece> = Vec::new();
            let mut batch_bytes = 0;
            let mut failure = None;
            let mut send = |pieces: Vec<SnapshotPiece>| -> Result<(), cairn_store::StoreError> {
                cairn_metrics::resync_sent(
                    &volume_label,
                    pieces.iter().map(piece_bytes).sum::<usize>() as u64,
                );
                let request = ReplRequest::SnapshotPieces { volume, epoch, pieces };
                runtime.block_on(peers.call(&target, request)).map(drop).map_err(|error| {
                    let message = format!("{error:?}");
                    failure = Some(error);
                    cairn_store::StoreError::Unavailable(message)
                })
            };
            let result = store.snapshot(&mut |piece| {
                batch_bytes += piece_bytes(&piece);
                batch.push(piece);
                if batch_bytes >= BATCH_BYTES_MAX {
                    batch_bytes = 0;
                    send(std::mem::take(&mut batch))?;
                }
                Ok(())
            });
            let result = result.and_then(|seq| {
                if !batch.is_empty() {
                    send(std::mem::take(&mut batch))?;
                }
                Ok(seq)
            });
            match (result, failure) {
                (Ok(seq), _) => Ok(seq),
                (Err(_), Some(failure)) => Err(failure),
                (Err(error), None) => Err(LinkError::Retry(format!("copy failed: {error}"))),
            }
        })
        .await
        .map_err(|error| LinkError::Retry(format!("copy task failed: {error}")))??;
        self.peers.call(address, ReplRequest::SnapshotEnd { volume, epoch, seq: copied }).await?;
        tracing::info!(volume, replica = %node, seq = copied, elapsed = ?started.elapsed(), "full copy done");
        Ok(copied)
    }

    /// Sends the records the replica lacks, as they come, until the link is replaced or fails.
    /// Star: to this link's replica. Chain: only the link of the first following replica sends,
    /// from the lowest position along the chain (each replica skips what it has), and the
    /// replicas pass the records on; the other links wait, and start over when the replica
    /// before them reports that it could not reach them.
    async fn stream(
        &self,
        node: &str,
        address: &str,
        generation: u64,
        mut sent_epoch: u64,
    ) -> Result<(), LinkError> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, epoch, forward) = {
                let state = self.state.lock();
                let Some((me, link)) = state
                    .links
                    .get_key_value(node)
                    .filter(|(_, link)| link.generation == generation && !state.stopped)
                else {
                    return Ok(());
                };
                if let Some(epoch) = state.fenced {
                    return Err(LinkError::Fenced(epoch));
                }
                if let Some(why) = &link.broken {
                    return Err(LinkError::Retry(why.clone()));
                }
                let chain: Vec<(&String, &Link)> = if state.chain {
                    state
                        .order
                        .iter()
                        .filter_map(|name| state.links.get_key_value(name))
                        .filter(|(_, link)| link.phase == Phase::Following)
                        .collect()
                } else {
                    vec![(me, link)]
                };
                if chain.first().is_none_or(|(first, _)| first.as_str() != node) {
                    // Chain replication, and another replica heads the chain: wait.
                    (Vec::new(), sent_epoch, Vec::new())
                } else {
                    let from = chain.iter().map(|(_, link)| link.acked).min().unwrap_or(link.acked) + 1;
                    let forward: Vec<(String, String)> = chain[1..]
                        .iter()
                        .map(|(name, link)| ((*name).clone(), link.address.clone()))
                        .collect();
                    let mut batch = Vec::new();
                    if from <= state.last {
                        let lacking =
                            || LinkError::Retry("the log no longer holds what a replica lacks".into());
                        let first = state.log.front().ok_or_else(lacking)?;
                        if first.seq > from {
                            return Err(lacking());
                        }
                        let skip = usize::try_from(from - first.seq).unwrap_or(usize::MAX);
                        let mut bytes = 0;
                        for record in state.log.iter().skip(skip) {
                            bytes += record.body.size_bytes();
                            if bytes > BATCH_BYTES_MAX && !batch.is_empty() {
                                break;
                            }
                            batch.push(Record::clone(record));
                        }
                    }
                    (batch, state.epoch, forward)
                }
            };
            if batch.is_empty() && epoch == sent_epoch {
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                continue;
            }
            let request = ReplRequest::Records { volume: self.volume, epoch, records: batch, forward };
            let reply = self.peers.call(address, request).await?;
            sent_epoch = epoch;
            match reply {
                ReplReply::Position { position, .. } => {
                    self.update_link(node, generation, |link| link.acked = position)
                }
                ReplReply::Chain { positions, failed } => self.chain_answer(positions, failed),
                ReplReply::Records { .. } | ReplReply::Blocks { .. } => {
                    return Err(LinkError::Retry("unexpected answer to records".to_string()));
                }
            }
        }
    }

    /// The positions a chain reports, and the replicas it could not reach.
    fn chain_answer(&self, positions: Vec<(String, u64)>, failed: Vec<(String, ReplError)>) {
        let mut state = self.state.lock();
        for (node, position) in positions {
            if let Some(link) = state.links.get_mut(&node).filter(|link| link.phase == Phase::Following) {
                link.acked = link.acked.max(position);
            }
        }
        for (node, error) in failed {
            if let ReplError::Fenced { epoch } = error {
                if epoch > state.epoch && state.fenced.is_none() {
                    tracing::warn!(volume = self.volume, epoch, "fenced: a newer epoch took the volume over");
                    state.fenced = Some(epoch);
                }
            } else if let Some(link) = state.links.get_mut(&node) {
                link.broken = Some(format!("the chain could not pass records on: {error}"));
            }
        }
        self.trim(&mut state);
        self.acked.notify_all();
        drop(state);
        self.wake.notify_waiters();
    }
}

fn piece_bytes(piece: &SnapshotPiece) -> usize {
    match piece {
        SnapshotPiece::Start { .. } => 64,
        SnapshotPiece::Rows { rows } => {
            rows.iter().map(|row| 8 + row.key.len() + row.value.as_ref().map_or(0, Vec::len)).sum()
        }
        SnapshotPiece::Chunk { data, blocks, .. } => data.len() + 8 * blocks.len(),
    }
}

impl Replicator for NetReplicator {
    fn submit(&self, body: RecordBody) -> u64 {
        let mut state = self.state.lock();
        state.last += 1;
        let seq = state.last;
        state.log_bytes += body.size_bytes();
        state.log.push_back(Arc::new(Record { seq, body }));
        self.trim(&mut state);
        drop(state);
        self.wake.notify_waiters();
        seq
    }

    fn wait(&self, seq: u64) -> Result<(), ReplicationError> {
        let deadline = Instant::now() + WAIT_MAX;
        let mut state = self.state.lock();
        loop {
            if state.fenced.is_some() {
                return Err(ReplicationError::Fenced);
            }
            if state.stopped {
                return Err(ReplicationError::Unavailable("the volume is no longer served here".to_string()));
            }
            if state.lagging(seq).is_empty() {
                return Ok(());
            }
            if self.acked.wait_until(&mut state, deadline).timed_out() {
                return Err(ReplicationError::Unavailable(format!(
                    "replicas {:?} did not acknowledge record {seq} within {WAIT_MAX:?}",
                    state.lagging(seq)
                )));
            }
        }
    }

    fn resume(&self, position: u64) {
        let mut state = self.state.lock();
        if state.log.is_empty() {
            state.last = position;
            state.base.1 = position;
        } else if state.last != position {
            // The retained records do not end where the store stands: they cannot be sent.
            tracing::warn!(
                volume = self.volume,
                retained = state.last,
                position,
                "dropping retained records"
            );
            state.log.clear();
            state.log_bytes = 0;
            state.last = position;
            state.base.1 = position;
        }
    }
}
