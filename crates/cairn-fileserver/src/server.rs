//! The server: the volumes held here, and the request handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_rpc::{Connection, Handler};
use cairn_store::{FileSystem, Store, StoreConfig};
use cairn_types::{ClusterId, VolumeId};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proto::{FsOp, FsReply, Request, Response, ServerStatus, VolumeStatus, WireError};
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
}

#[derive(Debug, thiserror::Error)]
pub enum FileServerError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("volume {volume}: {source}")]
    Store { volume: u32, source: cairn_store::StoreError },
}

/// One volume held by this server.
struct Volume {
    epoch: u64,
    store: Arc<Store>,
}

pub(crate) struct Inner {
    pub(crate) config: FileServerConfig,
    volumes: RwLock<HashMap<u32, Arc<Volume>>>,
    replies: ReplyCache,
}

/// A running file server.
pub struct FileServer {
    pub(crate) inner: Arc<Inner>,
    address: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl FileServer {
    /// Binds the listener and serves until [`FileServer::shutdown`].
    pub async fn start(config: FileServerConfig) -> Result<FileServer, FileServerError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| FileServerError::Bind { address: config.listen, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| FileServerError::Bind { address: config.listen, source })?;
        let inner =
            Arc::new(Inner { config, volumes: RwLock::new(HashMap::new()), replies: ReplyCache::default() });
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let handler = Arc::new(RpcHandler { inner: inner.clone() });
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

    /// Opens (creating it if new) the volume's store here and serves it as master at `epoch`.
    /// Blocks on disk I/O (recovery): call it from a blocking thread.
    pub fn open_master(
        &self,
        cluster: ClusterId,
        volume: VolumeId,
        epoch: u64,
    ) -> Result<(), FileServerError> {
        let mut store_config = self.inner.config.store.clone();
        store_config.data_dir = self.inner.config.data_dir.join("volumes").join(volume.0.to_string());
        store_config.identity = Some((cluster, volume));
        let store = Store::open(store_config)
            .map_err(|source| FileServerError::Store { volume: volume.0, source })?;
        self.inner.volumes.write().insert(volume.0, Arc::new(Volume { epoch, store: Arc::new(store) }));
        Ok(())
    }

    /// What this server holds.
    pub fn status(&self) -> ServerStatus {
        self.inner.status()
    }

    /// The address other nodes reach this server at.
    pub fn advertised_address(&self) -> String {
        self.inner.config.advertise.clone().unwrap_or_else(|| self.address.to_string())
    }

    /// The epoch at which this server holds the volume, if it does.
    pub fn held_epoch(&self, volume: u32) -> Option<u64> {
        self.inner.volumes.read().get(&volume).map(|held| held.epoch)
    }

    /// Stops serving the volume as master (a newer epoch made another node master). The store
    /// is closed once the calls in flight on it are done.
    pub fn step_down(&self, volume: u32, epoch: u64) {
        if let Some(held) = self.inner.volumes.write().remove(&volume) {
            tracing::warn!(volume, held = held.epoch, epoch, "no longer master of the volume");
        }
    }

    /// Stops serving and makes every volume durable.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let volumes: Vec<Arc<Volume>> =
            self.inner.volumes.write().drain().map(|(_, volume)| volume).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for volume in volumes {
                if let Err(error) = volume.store.sync_all() {
                    tracing::warn!(%error, "volume not synced at shutdown");
                }
            }
        })
        .await;
    }
}

impl Inner {
    fn status(&self) -> ServerStatus {
        let volumes = self.volumes.read();
        let mut list: Vec<VolumeStatus> = volumes
            .iter()
            .map(|(&id, volume)| VolumeStatus {
                volume: id,
                role: "master".to_string(),
                epoch: volume.epoch,
                position: 0,
                // Not measured yet: quotas come with per-volume accounting.
                size_bytes: 0,
            })
            .collect();
        list.sort_by_key(|status| status.volume);
        ServerStatus { node: self.config.node.clone(), volumes: list }
    }

    fn master(&self, volume: u32, epoch: u64) -> Result<Arc<Volume>, WireError> {
        let volumes = self.volumes.read();
        let held = volumes.get(&volume).ok_or(WireError::NoSuchVolume(volume))?;
        if epoch != 0 && epoch != held.epoch {
            return Err(WireError::NotMaster { volume, epoch: held.epoch });
        }
        Ok(held.clone())
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
            return execute(held.store.clone(), op).await;
        }
        loop {
            match self.replies.begin(request_id) {
                Begin::Answered(answer) => return *answer,
                Begin::Wait(notify) => {
                    let _ = tokio::time::timeout(Duration::from_millis(200), notify.notified()).await;
                }
                Begin::Run => {
                    let answer = execute(held.store.clone(), op).await;
                    self.replies.finish(request_id, &answer);
                    return answer;
                }
            }
        }
    }
}

/// Runs one operation on a blocking thread (the store blocks on disk and on group commits).
async fn execute(store: Arc<Store>, op: FsOp) -> Result<FsReply, WireError> {
    match tokio::task::spawn_blocking(move || run(&*store, op)).await {
        Ok(result) => result,
        Err(error) => Err(WireError::Io(format!("operation failed: {error}"))),
    }
}

fn run(store: &dyn FileSystem, op: FsOp) -> Result<FsReply, WireError> {
    let reply = match op {
        FsOp::Identity => {
            FsReply::Identity { cluster: store.cluster_id(), volume: store.volume_id(), root: store.root() }
        }
        FsOp::Getattr { fid } => FsReply::Attributes(store.getattr(fid)?),
        FsOp::Setattr { caller, fid, changes, guard_ctime } => {
            FsReply::Wcc(store.setattr(&caller, fid, changes, guard_ctime)?)
        }
        FsOp::Lookup { caller, directory, name } => FsReply::Lookup(store.lookup(&caller, directory, &name)?),
        FsOp::Access { caller, fid, requested } => {
            let (granted, attributes) = store.access(&caller, fid, requested)?;
            FsReply::Access { granted, attributes }
        }
        FsOp::Readlink { caller, fid } => {
            let (target, attributes) = store.readlink(&caller, fid)?;
            FsReply::Readlink { target, attributes }
        }
        FsOp::Read { caller, fid, offset, count } => FsReply::Read(store.read(&caller, fid, offset, count)?),
        FsOp::Write { caller, fid, offset, data, stability } => {
            FsReply::Write(store.write(&caller, fid, offset, &data, stability)?)
        }
        FsOp::Commit { fid, offset, count_bytes } => {
            FsReply::Commit(store.commit(fid, offset, count_bytes)?)
        }
        FsOp::Create { caller, directory, name, how } => {
            FsReply::Created(store.create(&caller, directory, &name, how)?)
        }
        FsOp::Mkdir { caller, directory, name, attributes } => {
            FsReply::Created(store.mkdir(&caller, directory, &name, attributes)?)
        }
        FsOp::Symlink { caller, directory, name, target, attributes } => {
            FsReply::Created(store.symlink(&caller, directory, &name, &target, attributes)?)
        }
        FsOp::Mknod { caller, directory, name, kind, attributes } => {
            FsReply::Created(store.mknod(&caller, directory, &name, kind, attributes)?)
        }
        FsOp::Remove { caller, directory, name } => FsReply::Wcc(store.remove(&caller, directory, &name)?),
        FsOp::Rmdir { caller, directory, name } => FsReply::Wcc(store.rmdir(&caller, directory, &name)?),
        FsOp::Rename { caller, from_directory, from_name, to_directory, to_name } => {
            FsReply::Renamed(store.rename(&caller, from_directory, &from_name, to_directory, &to_name)?)
        }
        FsOp::Link { caller, fid, directory, name } => {
            FsReply::Linked(store.link(&caller, fid, directory, &name)?)
        }
        FsOp::Readdir { caller, directory, cookie, entries_max, with_attributes } => FsReply::Directory(
            store.readdir(&caller, directory, cookie, entries_max as usize, with_attributes)?,
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
        }
    }
}
