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
//! Fencing: a replica that knows a newer epoch refuses the link's calls; the replicator then
//! fails every wait with [`ReplicationError::Fenced`], and the store refuses every later change.

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
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) type PeerClient = cairn_rpc::Client<Request, Response, ()>;

/// Connections to other file servers, one per address.
#[derive(Default)]
pub(crate) struct Peers {
    clients: Mutex<HashMap<String, PeerClient>>,
}

impl Peers {
    pub(crate) async fn get(&self, address: &str) -> Result<PeerClient, String> {
        if let Some(client) = self.clients.lock().get(address).filter(|client| !client.is_closed()) {
            return Ok(client.clone());
        }
        let client = PeerClient::connect_tcp(address, CONNECT_TIMEOUT, None)
            .await
            .map_err(|error| format!("cannot reach file server {address}: {error}"))?;
        self.clients.lock().insert(address.to_string(), client.clone());
        Ok(client)
    }

    pub(crate) fn forget(&self, address: &str) {
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
    /// A replica knew this newer epoch.
    fenced: Option<u64>,
    /// The volume stopped being served here.
    stopped: bool,
}

/// See the module documentation.
pub(crate) struct NetReplicator {
    volume: u32,
    node: String,
    peers: Arc<Peers>,
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
    pub(crate) fn new(
        volume: u32,
        node: String,
        epoch: u64,
        history_epoch: u64,
        retained: Vec<Record>,
        peers: Arc<Peers>,
        runtime: Handle,
    ) -> Arc<NetReplicator> {
        let log_bytes = retained.iter().map(|record| record.body.size_bytes()).sum();
        let last = retained.last().map_or(0, |record| record.seq);
        Arc::new(NetReplicator {
            volume,
            node,
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

    /// The CLDB's placement at `epoch`: (node, address) of every other replica and resync
    /// target. Starts links to new ones, stops links to the ones that left.
    pub(crate) fn set_placement(self: &Arc<Self>, epoch: u64, targets: Vec<(String, String)>) {
        let mut state = self.state.lock();
        if epoch < state.epoch || state.stopped {
            return;
        }
        state.epoch = epoch;
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
        let hello = ReplRequest::Hello { volume, epoch, master: self.node.clone() };
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
        self.stream(node, address, generation, acked, epoch).await
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

    /// Sends the records after `acked`, as they come, until the link is replaced or fails.
    async fn stream(
        &self,
        node: &str,
        address: &str,
        generation: u64,
        mut acked: u64,
        mut sent_epoch: u64,
    ) -> Result<(), LinkError> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, epoch) = {
                let state = self.state.lock();
                if state.stopped || state.links.get(node).is_none_or(|link| link.generation != generation) {
                    return Ok(());
                }
                if let Some(epoch) = state.fenced {
                    return Err(LinkError::Fenced(epoch));
                }
                let mut batch = Vec::new();
                if acked < state.last {
                    let Some(first) = state.log.front() else {
                        return Err(LinkError::Retry(
                            "the log no longer holds what the replica lacks".into(),
                        ));
                    };
                    if first.seq > acked + 1 {
                        return Err(LinkError::Retry(
                            "the log no longer holds what the replica lacks".into(),
                        ));
                    }
                    let skip = usize::try_from(acked + 1 - first.seq).unwrap_or(usize::MAX);
                    let mut bytes = 0;
                    for record in state.log.iter().skip(skip) {
                        bytes += record.body.size_bytes();
                        if bytes > BATCH_BYTES_MAX && !batch.is_empty() {
                            break;
                        }
                        batch.push(Record::clone(record));
                    }
                }
                (batch, state.epoch)
            };
            if batch.is_empty() && epoch == sent_epoch {
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                continue;
            }
            let request = ReplRequest::Records { volume: self.volume, epoch, records: batch };
            let ReplReply::Position { position, .. } = self.peers.call(address, request).await? else {
                return Err(LinkError::Retry("unexpected answer to records".to_string()));
            };
            sent_epoch = epoch;
            acked = position;
            self.update_link(node, generation, |link| link.acked = position);
        }
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
            let lagging: Vec<&String> = state
                .links
                .iter()
                .filter(|(_, link)| link.waited_for && link.acked < seq)
                .map(|(node, _)| node)
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if self.acked.wait_until(&mut state, deadline).timed_out() {
                let lagging: Vec<&String> = state
                    .links
                    .iter()
                    .filter(|(_, link)| link.waited_for && link.acked < seq)
                    .map(|(node, _)| node)
                    .collect();
                return Err(ReplicationError::Unavailable(format!(
                    "replicas {lagging:?} did not acknowledge record {seq} within {WAIT_MAX:?}"
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
