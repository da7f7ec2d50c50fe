//! The NFS gateway: ONC RPC over TCP, the 21 NFSv3 procedures (RFC 1813), MOUNT v3 and a
//! portmapper v2, on top of a [`cairn_store::Store`], so that any machine mounts Cairn with its
//! ordinary NFSv3 client.
//!
//! Key types: [`Gateway`] (start with a store and a [`GatewayConfig`], reload the exports, shut
//! down), [`exports::Exports`] (the `/etc/exports`-style rules, checked at MNT and on every
//! request). Inside: `connection` (record marking, bounded in-flight calls per connection, the
//! writer), `rpc` (call header, AUTH_UNIX), `nfs_args` and `nfs` (decoding and the procedures;
//! `nfs::nfs_status` is the one mapping from `StoreError` to `nfsstat3`), `mount`, `portmap`, and
//! `drc` (the duplicate request cache). Wire details: `docs/wire.md`.
//!
//! Must not depend on: the store's internals (only its public API in `cairn_store`), any
//! gateway-local state in file handles, cookies or verifiers (handles, cookies and write verifiers
//! come from the store and are valid on every gateway), or the gateway's clock for file times.
//! Nothing from the network may panic it: malformed input gets an error reply or a closed
//! connection.

pub mod exports;

mod connection;
mod drc;
mod mount;
mod nfs;
mod nfs_args;
mod portmap;
mod rpc;
mod sink;
mod xdr;

use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_store::FileSystem;
use cairn_types::{ClusterId, Fid, VolumeId};
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::connection::{RECORD_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX};
pub use crate::drc::{DRC_CHECKSUM_BYTES, DRC_ENTRIES_MAX, DRC_ENTRY_LIFETIME};
use crate::exports::{Exports, ExportsError};

/// ONC RPC program number of NFS.
pub const NFS_PROGRAM: u32 = 100_003;
/// The one NFS version served.
pub const NFS_VERSION: u32 = 3;
/// The standard NFS port.
pub const NFS_PORT_DEFAULT: u16 = 2049;
/// The standard portmapper port.
pub const PORTMAP_PORT_DEFAULT: u16 = 111;

/// Where and what the gateway serves.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub bind_address: IpAddr,
    /// NFS and MOUNT are both served here (default 2049); 0 picks a free port (tests).
    pub nfs_port: u16,
    /// The portmapper's port (TCP, and UDP when it can be bound too); `Some(111)` by default. If
    /// it cannot be bound, the gateway logs a warning and goes on without a portmapper.
    pub portmap_port: Option<u16>,
    pub exports_file: PathBuf,
}

impl GatewayConfig {
    /// The defaults: every address, port 2049, portmapper on 111.
    pub fn new(exports_file: impl Into<PathBuf>) -> GatewayConfig {
        GatewayConfig {
            bind_address: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            nfs_port: NFS_PORT_DEFAULT,
            portmap_port: Some(PORTMAP_PORT_DEFAULT),
            exports_file: exports_file.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Exports(#[from] ExportsError),
    #[error("cannot listen for {service} on {address}: {source}")]
    Bind { service: &'static str, address: SocketAddr, source: std::io::Error },
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn FileSystem>,
    pub(crate) cluster: ClusterId,
    pub(crate) volume: VolumeId,
    pub(crate) root: Fid,
    /// The current rules; replaced whole by `reload_exports`.
    pub(crate) exports: RwLock<Arc<Exports>>,
    /// Bumped after every replacement of `exports`, so connections can cache their options.
    pub(crate) exports_generation: AtomicU64,
    pub(crate) exports_file: PathBuf,
    pub(crate) drc: Arc<drc::Drc>,
    pub(crate) mounts: Mutex<Vec<mount::MountRecord>>,
    pub(crate) portmap: portmap::PortmapTable,
}

/// A running gateway. Dropping it stops the listeners too, but only [`Gateway::shutdown`] waits
/// for the in-flight calls.
pub struct Gateway {
    shared: Arc<Shared>,
    nfs_address: SocketAddr,
    portmap_address: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Loads the exports, binds the listeners, and serves until [`Gateway::shutdown`]. Returns
    /// once the listeners are bound.
    pub async fn start(store: Arc<dyn FileSystem>, config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let exports = Exports::load(&config.exports_file)?;
        let nfs_address = SocketAddr::new(config.bind_address, config.nfs_port);
        let nfs_listener = TcpListener::bind(nfs_address).await.map_err(|source| GatewayError::Bind {
            service: "NFS",
            address: nfs_address,
            source,
        })?;
        let nfs_address = nfs_listener.local_addr().map_err(|source| GatewayError::Bind {
            service: "NFS",
            address: nfs_address,
            source,
        })?;

        let mut portmap_listener = None;
        let mut portmap_socket = None;
        if let Some(port) = config.portmap_port {
            let address = SocketAddr::new(config.bind_address, port);
            match TcpListener::bind(address).await.and_then(|listener| Ok((listener.local_addr()?, listener)))
            {
                Ok((bound, listener)) => {
                    portmap_listener = Some((bound, listener));
                    // UDP on the same port, for clients that ask the portmapper over UDP.
                    match UdpSocket::bind(bound).await {
                        Ok(socket) => portmap_socket = Some(socket),
                        Err(error) => tracing::warn!(%bound, %error, "no UDP portmapper"),
                    }
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "cannot listen for the portmapper; going on without one");
                }
            }
        }
        let portmap_address = portmap_listener.as_ref().map(|(address, _)| *address);

        let (cluster, volume, root) = (store.cluster_id(), store.volume_id(), store.root());
        let shared = Arc::new(Shared {
            store,
            cluster,
            volume,
            root,
            exports: RwLock::new(Arc::new(exports)),
            exports_generation: AtomicU64::new(0),
            exports_file: config.exports_file,
            drc: Arc::new(drc::Drc::default()),
            mounts: Mutex::new(Vec::new()),
            portmap: portmap::PortmapTable {
                nfs_port: nfs_address.port(),
                portmap_tcp_port: portmap_address.map(|address| address.port()),
                portmap_udp_port: portmap_socket.as_ref().and(portmap_address).map(|address| address.port()),
            },
        });

        let (shutdown, shutdown_receiver) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(connection::accept_loop(
            nfs_listener,
            shared.clone(),
            connection::Service::Nfs,
            shutdown_receiver.clone(),
        ))];
        if let Some((_, listener)) = portmap_listener {
            tasks.push(tokio::spawn(connection::accept_loop(
                listener,
                shared.clone(),
                connection::Service::Portmap,
                shutdown_receiver.clone(),
            )));
        }
        if let Some(socket) = portmap_socket {
            tasks.push(tokio::spawn(connection::portmap_udp_loop(socket, shared.clone(), shutdown_receiver)));
        }
        tracing::info!(%nfs_address, ?portmap_address, "NFS gateway listening");
        Ok(Gateway { shared, nfs_address, portmap_address, shutdown, tasks })
    }

    /// Where NFS and MOUNT are served.
    pub fn nfs_address(&self) -> SocketAddr {
        self.nfs_address
    }

    /// Where the portmapper is served, if it could be bound.
    pub fn portmap_address(&self) -> Option<SocketAddr> {
        self.portmap_address
    }

    /// Re-reads the exports file and applies it to every later request. On error the old rules
    /// stay.
    pub fn reload_exports(&self) -> Result<(), ExportsError> {
        let exports = Exports::load(&self.shared.exports_file)?;
        *self.shared.exports.write() = Arc::new(exports);
        self.shared.exports_generation.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(file = %self.shared.exports_file.display(), "exports reloaded");
        Ok(())
    }

    /// Stops accepting, lets in-flight calls finish and their replies go out, and joins every
    /// task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "gateway task failed");
            }
        }
        tracing::info!(nfs_address = %self.nfs_address, "NFS gateway stopped");
    }
}

/// Feeds arbitrary bytes through every decoder that sees network input: record marking, the RPC
/// call header and credentials, and the arguments of every NFS, MOUNT and portmap procedure. For
/// the `rpc_decode` fuzz target; must never panic.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    let mut stream = bytes;
    let mut records = Vec::new();
    // `&[u8]` never returns Pending, so one poll finishes each read.
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    loop {
        let mut read = std::pin::pin!(connection::read_record(&mut stream));
        match read.as_mut().poll(&mut context) {
            std::task::Poll::Ready(Ok(Some(record))) => records.push(record),
            _ => break,
        }
    }
    // The raw bytes as one record too, so the decoders see inputs without a valid record mark.
    records.push(bytes.to_vec());
    for record in &records {
        if let rpc::CallOutcome::Call(header) = rpc::decode_call(record) {
            let arguments = &record[header.arguments_offset..];
            let table =
                portmap::PortmapTable { nfs_port: 2049, portmap_tcp_port: Some(111), portmap_udp_port: None };
            let _ = portmap::execute(&table, &header, arguments);
        }
    }
    for procedure in 0..=nfs_args::procedure::LAST + 1 {
        let _ = nfs_args::decode(procedure, bytes);
    }
    for procedure in 0..=mount::procedure::LAST + 1 {
        if let Ok(Some(path)) = mount::decode(procedure, bytes) {
            let _ = mount::normalise_path(path);
        }
    }
    for procedure in 0..=portmap::procedure::DUMP + 1 {
        let _ = portmap::decode(procedure, bytes);
    }
}
