//! The server: the volumes held here, and the request handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_rpc::{Connection, Handler};
use cairn_store::{Changed, FileSystem, Store, StoreConfig};
use cairn_types::{ClusterId, VolumeId};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proto::{
    FsOp, FsReply, ReplError, ReplReply, ReplRequest, Request, Response, ServerStatus, VolumeStatus,
    WireError,
};
use crate::replica::{self, ReplicaVolume};
use crate::replicator::{Connections, NetReplicator};
use crate::replies::{Begin, ReplyCache};

/// Settings of a [`FileServer`].
#[derive(Clone, Debug)]
pub struct FileServerConfig {
    /// This node's name (as the CLDB knows it).
    pub node: String,
    /// Volumes live in `<data_dir>/volumes/<volume id>/`.
    pub data_dir: PathBuf,
    /// Where to serve `cairn-rpc`.
    pub listen: SocketAddr,
    /// The address other nodes reach this server at; default: the bound address.
    pub advertise: Option<String>,
    /// Store settings used for every volume (its `data_dir` and `identity` are set per volume).
    pub store: StoreConfig,
    /// A scrub pass over each copy starts this long after the previous one ended.
    pub scrub_interval: Duration,
}

/// Default time between two scrub passes over a copy.
pub const SCRUB_INTERVAL_DEFAULT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum FileServerError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("volume {volume}: {source}")]
    Store { volume: u32, source: cairn_store::StoreError },
}

/// What this server holds of one volume.
#[derive(Clone)]
pub(crate) enum Held {
    Master(Arc<MasterVolume>),
    Replica(Arc<ReplicaVolume>),
}

/// A volume this server masters.
pub(crate) struct MasterVolume {
    pub(crate) store: Arc<Store>,
    pub(crate) replicator: Arc<NetReplicator>,
}

pub(crate) struct Inner {
    pub(crate) config: FileServerConfig,
    /// The address other nodes reach this server at.
    pub(crate) advertised: String,
    pub(crate) volumes: RwLock<HashMap<u32, Held>>,
    replies: ReplyCache,
    pub(crate) peers: Arc<Connections>,
    pub(crate) runtime: Handle,
}

/// A running file server.
pub struct FileServer {
    pub(crate) inner: Arc<Inner>,
    address: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// How long a change of role waits for the calls in flight on the volume to finish.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

impl FileServer {
    /// Binds the listener and serves until [`FileServer::shutdown`].
    pub async fn start(config: FileServerConfig) -> Result<FileServer, FileServerError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| FileServerError::Bind { address: config.listen, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| FileServerError::Bind { address: config.listen, source })?;
        let advertised = config.advertise.clone().unwrap_or_else(|| address.to_string());
        let inner = Arc::new(Inner {
            advertised,
            config,
            volumes: RwLock::new(HashMap::new()),
            replies: ReplyCache::default(),
            peers: Arc::new(Connections::default()),
            runtime: Handle::current(),
        });
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let handler = Arc::new(RpcHandler { inner: inner.clone() });
        tokio::spawn(inner.clone().run_scrub(shutdown_rx.clone()));
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            };
            cairn_rpc::serve_tcp(listener, handler, stop).await;
        });
        tracing::info!(%address, node = %inner.config.node, "file server listening");
        Ok(FileServer { inner, address, shutdown, task: parking_lot::Mutex::new(Some(task)) })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Opens (creating it if new) the volume's store here and serves it as master at `epoch`,
    /// without replicas (one-copy volumes, tests). Blocks on disk I/O (recovery): call it from a
    /// blocking thread.
    pub fn open_master(
        &self,
        cluster: ClusterId,
        volume: VolumeId,
        epoch: u64,
    ) -> Result<(), FileServerError> {
        let replicator = NetReplicator::new(
            volume.0,
            self.inner.config.node.clone(),
            self.inner.advertised.clone(),
            epoch,
            0,
            Vec::new(),
            self.inner.peers.clone(),
            self.inner.runtime.clone(),
        );
        self.inner.open_store(cluster, volume, None, replicator).map(drop)
    }

    /// What this server holds.
    pub fn status(&self) -> ServerStatus {
        self.inner.status()
    }

    /// The address other nodes reach this server at.
    pub fn advertised_address(&self) -> String {
        self.inner.advertised.clone()
    }

    /// The epoch at which this server masters the volume, if it does.
    pub fn held_epoch(&self, volume: u32) -> Option<u64> {
        match self.inner.volumes.read().get(&volume) {
            Some(Held::Master(master)) => Some(master.replicator.epoch()),
            _ => None,
        }
    }

    /// Stops serving and makes every volume durable.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let volumes: Vec<Held> = self.inner.volumes.write().drain().map(|(_, held)| held).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for held in volumes {
                match held {
                    Held::Master(master) => {
                        master.replicator.stop();
                        if let Err(error) = master.store.sync_all() {
                            tracing::warn!(%error, "volume not synced at shutdown");
                        }
                    }
                    Held::Replica(replica) => {
                        if let Ok(replica) = Arc::try_unwrap(replica)
                            && let Err(error) = replica.close()
                        {
                            tracing::warn!(%error, "replica not closed cleanly at shutdown");
                        }
                    }
                }
            }
        })
        .await;
    }
}

impl Inner {
    /// Where the volume's copy lives on this node.
    pub(crate) fn volume_dir(&self, volume: u32) -> PathBuf {
        self.config.data_dir.join("volumes").join(volume.to_string())
    }

    pub(crate) fn store_config(
        &self,
        cluster: ClusterId,
        volume: VolumeId,
        data_containers: Option<u32>,
    ) -> StoreConfig {
        let mut config = self.config.store.clone();
        config.data_dir = self.volume_dir(volume.0);
        config.identity = Some((cluster, volume));
        if let Some(count) = data_containers.filter(|count| *count > 0) {
            config.data_containers = count;
        }
        config
    }

    /// Opens the volume's store as master with `replicator` (blocking). The copy's history
    /// epoch becomes 0 first: from now on it may hold changes no replica has.
    pub(crate) fn open_store(
        &self,
        cluster: ClusterId,
        volume: VolumeId,
        data_containers: Option<u32>,
        replicator: Arc<NetReplicator>,
    ) -> Result<Arc<Store>, FileServerError> {
        let config = self.store_config(cluster, volume, data_containers);
        let failed = |source| FileServerError::Store { volume: volume.0, source };
        replica::write_history_epoch(&config.data_dir, 0).map_err(failed)?;
        let store = match Store::open_replicated(config, replicator.clone()) {
            Ok(store) => Arc::new(store),
            Err(error) => {
                replicator.stop();
                return Err(failed(error));
            }
        };
        replicator.set_store(&store);
        self.volumes
            .write()
            .insert(volume.0, Held::Master(Arc::new(MasterVolume { store: store.clone(), replicator })));
        Ok(store)
    }

    /// Serves the volume as master at `epoch` (blocking): a replica held here is closed and
    /// promoted (its latest records go to the new log, for the other replicas to roll forward
    /// from); a copy on disk from before a restart is opened. Returns the replicator, for the
    /// placement.
    pub(crate) fn become_master(
        &self,
        cluster: ClusterId,
        volume: VolumeId,
        epoch: u64,
        data_containers: Option<u32>,
    ) -> Result<(Arc<Store>, Arc<NetReplicator>), FileServerError> {
        let failed = |source| FileServerError::Store { volume: volume.0, source };
        let (history_epoch, retained) = match self.release(volume.0) {
            Some(Released::Replica(replica)) => replica.close_for_promotion().map_err(failed)?,
            Some(Released::Master(store)) => {
                store.sync_all().map_err(failed)?;
                (0, Vec::new())
            }
            None => {
                let dir = self.volume_dir(volume.0);
                let history_epoch = replica::read_history_epoch(&dir);
                if history_epoch != 0 {
                    // A replica's copy (this node restarted): replay its journal first.
                    let config = self.store_config(cluster, volume, data_containers);
                    ReplicaVolume::open(config, cluster, volume, epoch)
                        .and_then(ReplicaVolume::close)
                        .map_err(failed)?;
                }
                (history_epoch, Vec::new())
            }
        };
        let replicator = NetReplicator::new(
            volume.0,
            self.config.node.clone(),
            self.advertised.clone(),
            epoch,
            history_epoch,
            retained,
            self.peers.clone(),
            self.runtime.clone(),
        );
        let store = self.open_store(cluster, volume, data_containers, replicator.clone())?;
        Ok((store, replicator))
    }

    /// Holds a replica of the volume (blocking): a master held here steps down (its copy must
    /// then be copied in full before it follows anyone).
    pub(crate) fn become_replica(
        &self,
        cluster: ClusterId,
        volume: VolumeId,
        epoch: u64,
        data_containers: Option<u32>,
    ) -> Result<(), FileServerError> {
        let failed = |source| FileServerError::Store { volume: volume.0, source };
        if let Some(Released::Master(store)) = self.release(volume.0) {
            tracing::warn!(volume = volume.0, epoch, "no longer master of the volume");
            store.sync_all().map_err(failed)?;
        }
        let config = self.store_config(cluster, volume, data_containers);
        let replica = ReplicaVolume::open(config, cluster, volume, epoch).map_err(failed)?;
        self.volumes.write().insert(volume.0, Held::Replica(Arc::new(replica)));
        Ok(())
    }

    /// Deletes this node's copy of the volume (blocking).
    pub(crate) fn remove_copy(&self, volume: u32) -> std::io::Result<()> {
        match self.release(volume) {
            Some(Released::Master(store)) => drop(store),
            Some(Released::Replica(replica)) => drop(replica),
            None => {}
        }
        let dir = self.volume_dir(volume);
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// The volumes with a copy in the data directory.
    pub(crate) fn copies_on_disk(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("volumes")) else { return Vec::new() };
        entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect()
    }

    /// Takes the volume out of the table and waits until nothing else uses it (blocking).
    /// `None` if it is not held, or still in use after [`RELEASE_TIMEOUT`].
    pub(crate) fn release(&self, volume: u32) -> Option<Released> {
        let held = self.volumes.write().remove(&volume)?;
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        match held {
            Held::Master(master) => {
                master.replicator.stop();
                let MasterVolume { store, replicator: _ } = sole_owner(master, deadline)?;
                sole_owner(store, deadline).map(Released::Master)
            }
            Held::Replica(replica) => sole_owner(replica, deadline).map(Released::Replica),
        }
    }

    fn status(&self) -> ServerStatus {
        let volumes: Vec<(u32, Held)> =
            self.volumes.read().iter().map(|(&id, held)| (id, held.clone())).collect();
        let mut list: Vec<VolumeStatus> = volumes
            .into_iter()
            .map(|(id, held)| match held {
                Held::Master(master) => VolumeStatus {
                    volume: id,
                    role: if master.replicator.fenced().is_some() { "stale" } else { "master" }.to_string(),
                    epoch: master.replicator.epoch(),
                    position: master.store.replication_position(),
                    size_bytes: master.store.used_bytes(),
                    in_sync: master.replicator.in_sync(),
                },
                Held::Replica(replica) => {
                    let report = replica.report();
                    let role = if report.following {
                        "replica"
                    } else if report.copying {
                        "resyncing"
                    } else {
                        "stale"
                    };
                    VolumeStatus {
                        volume: id,
                        role: role.to_string(),
                        epoch: report.epoch,
                        position: report.position,
                        size_bytes: 0,
                        in_sync: Vec::new(),
                    }
                }
            })
            .collect();
        list.sort_by_key(|status| status.volume);
        ServerStatus { node: self.config.node.clone(), volumes: list }
    }

    fn master(&self, volume: u32, epoch: u64) -> Result<Arc<MasterVolume>, WireError> {
        let volumes = self.volumes.read();
        let Some(Held::Master(master)) = volumes.get(&volume) else {
            return Err(match volumes.get(&volume) {
                Some(Held::Replica(replica)) => {
                    WireError::NotMaster { volume, epoch: replica.report().epoch }
                }
                _ => WireError::NoSuchVolume(volume),
            });
        };
        let current = master.replicator.epoch();
        let fenced = master.replicator.fenced().is_some();
        if fenced || (epoch != 0 && !(master.replicator.lineage_start()..=current).contains(&epoch)) {
            return Err(WireError::NotMaster { volume, epoch: current });
        }
        Ok(master.clone())
    }

    async fn fs(
        self: &Arc<Self>,
        volume: u32,
        epoch: u64,
        request_id: u128,
        op: FsOp,
    ) -> Result<FsReply, WireError> {
        let held = self.master(volume, epoch)?;
        if request_id == 0 || !op.is_change() {
            return self.execute_repairing(volume, &held, op).await;
        }
        loop {
            match self.replies.begin(request_id) {
                Begin::Answered(answer) => return *answer,
                Begin::Wait(notify) => {
                    let _ = tokio::time::timeout(Duration::from_millis(200), notify.notified()).await;
                }
                Begin::Run => {
                    let answer = self.execute_repairing(volume, &held, op).await;
                    self.replies.finish(request_id, &answer);
                    return answer;
                }
            }
        }
    }

    /// Runs an operation; if it meets a bad block, repairs it from a replica and runs a read
    /// or write again (once).
    async fn execute_repairing(
        &self,
        volume: u32,
        master: &Arc<MasterVolume>,
        op: FsOp,
    ) -> Result<FsReply, WireError> {
        // Shared, not copied: a write's data is not duplicated for the rare retry.
        let op = Arc::new(op);
        let again = matches!(*op, FsOp::Read { .. } | FsOp::Write { .. });
        match execute(master.store.clone(), op.clone()).await {
            Err(WireError::BadBlock(bad)) if again && self.repair_on_master(volume, master, bad).await => {
                execute(master.store.clone(), op).await
            }
            answer => answer,
        }
    }

    /// A master's call to this node's replica of a volume.
    async fn repl(self: &Arc<Self>, request: ReplRequest) -> Result<ReplReply, ReplError> {
        let volume = request.volume();
        let held = self.volumes.read().get(&volume).cloned();
        match held {
            Some(Held::Replica(replica)) => {
                let downstream = match &request {
                    ReplRequest::Records { volume, epoch, records, forward } if !forward.is_empty() => {
                        let (next, rest) = (&forward[0], &forward[1..]);
                        let request = ReplRequest::Records {
                            volume: *volume,
                            epoch: *epoch,
                            records: records.clone(),
                            forward: rest.to_vec(),
                        };
                        Some((next.clone(), request))
                    }
                    _ => None,
                };
                let local = async move {
                    match tokio::task::spawn_blocking(move || replica.handle(request)).await {
                        Ok(result) => result,
                        Err(error) => Err(ReplError::NeedResync(format!("replica task failed: {error}"))),
                    }
                };
                let Some(((next_node, next_address), request)) = downstream else {
                    return local.await;
                };
                // Chain: apply here while the next replica applies too, then answer for both.
                let (local, remote) = tokio::join!(local, self.peers.call(&next_address, request));
                let ReplReply::Position { position, .. } = local? else {
                    return Err(ReplError::NeedResync("unexpected local answer".to_string()));
                };
                let mut positions = vec![(self.config.node.clone(), position)];
                let mut failed = Vec::new();
                match remote {
                    Ok(ReplReply::Position { position, .. }) => positions.push((next_node, position)),
                    Ok(ReplReply::Chain { positions: theirs, failed: their_failures }) => {
                        positions.extend(theirs);
                        failed.extend(their_failures);
                    }
                    Ok(ReplReply::Records { .. } | ReplReply::Blocks { .. }) => {
                        failed.push((next_node, ReplError::Unreachable("unexpected answer".to_string())))
                    }
                    Err(error) => failed.push((next_node, error.into())),
                }
                Ok(ReplReply::Chain { positions, failed })
            }
            Some(Held::Master(master)) => {
                let epoch = master.replicator.epoch();
                if matches!(request, ReplRequest::ReadBlocks { .. }) && request.epoch() <= epoch {
                    // A replica repairing a bad block of its copy.
                    return self.read_blocks_on_master(&master, request).await;
                }
                if request.epoch() > epoch {
                    // Another node masters the volume at a newer epoch: stop acknowledging
                    // changes now; the CLDB's next answer turns this copy into a replica.
                    master.replicator.fence(request.epoch());
                    Err(ReplError::NoReplica(volume))
                } else {
                    Err(ReplError::Fenced { epoch })
                }
            }
            None => Err(ReplError::NoReplica(volume)),
        }
    }
}

/// The value once every other user of `shared` dropped it (polling until `deadline`).
fn sole_owner<T>(mut shared: Arc<T>, deadline: Instant) -> Option<T> {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(value) => return Some(value),
            Err(still_shared) if Instant::now() < deadline => {
                shared = still_shared;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return None,
        }
    }
}

/// A volume taken out of service, owned.
pub(crate) enum Released {
    Master(Store),
    Replica(ReplicaVolume),
}

/// Runs one operation on a blocking thread (the store blocks on disk and on group commits).
async fn execute(store: Arc<Store>, op: Arc<FsOp>) -> Result<FsReply, WireError> {
    match tokio::task::spawn_blocking(move || run(&*store, &op)).await {
        Ok(result) => result,
        Err(error) => Err(WireError::Io(format!("operation failed: {error}"))),
    }
}

fn run(store: &dyn FileSystem, op: &FsOp) -> Result<FsReply, WireError> {
    let reply = match op {
        FsOp::Identity => {
            FsReply::Identity { cluster: store.cluster_id(), volume: store.volume_id(), root: store.root() }
        }
        FsOp::Getattr { fid } => FsReply::Attributes(store.getattr(*fid)?),
        FsOp::Lookup { caller, directory, name } => FsReply::Lookup(store.lookup(caller, *directory, name)?),
        FsOp::Access { caller, fid, requested } => {
            let (granted, attributes) = store.access(caller, *fid, *requested)?;
            FsReply::Access { granted, attributes }
        }
        FsOp::Readlink { caller, fid } => {
            let (target, attributes) = store.readlink(caller, *fid)?;
            FsReply::Readlink { target, attributes }
        }
        FsOp::Read { caller, fid, offset, count } => {
            FsReply::Read(store.read(caller, *fid, *offset, *count)?)
        }
        FsOp::Write { caller, fid, offset, data, stability } => {
            FsReply::Write(store.write(caller, *fid, *offset, data, *stability)?)
        }
        FsOp::Commit { fid, offset, count_bytes } => {
            FsReply::Commit(store.commit(*fid, *offset, *count_bytes)?)
        }
        FsOp::Change(change) => match store.change(change.clone())? {
            Changed::Created(created) => FsReply::Created(created),
            Changed::Wcc(wcc) => FsReply::Wcc(wcc),
            Changed::Renamed(renamed) => FsReply::Renamed(renamed),
            Changed::Linked(linked) => FsReply::Linked(linked),
        },
        FsOp::Readdir { caller, directory, cookie, entries_max, with_attributes } => FsReply::Directory(
            store.readdir(caller, *directory, *cookie, *entries_max as usize, *with_attributes)?,
        ),
        FsOp::Fsstat => FsReply::Fsstat(store.fsstat()?),
    };
    Ok(reply)
}

struct RpcHandler {
    inner: Arc<Inner>,
}

impl Handler for RpcHandler {
    type Req = Request;
    type Resp = Response;
    type Push = ();

    async fn call(&self, _conn: &Connection<()>, req: Request) -> Response {
        match req {
            Request::Fs { volume, epoch, request_id, op } => {
                Response::Fs(self.inner.fs(volume, epoch, request_id, op).await)
            }
            Request::Status => Response::Status(self.inner.status()),
            Request::Repl(request) => Response::Repl(self.inner.repl(request).await),
        }
    }
}
