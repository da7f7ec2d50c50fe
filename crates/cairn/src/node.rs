//! `cairn node start --config FILE`: one node of a cluster, every service in one process: a coord
//! member and a CLDB (when the configuration gives them ports), the file server with its
//! heartbeat, the web console (when given a port), and the NFS gateway, which serves the
//! configured volume from whichever node is its master. `cairn up --nodes N` writes N
//! configurations and starts N of these.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_cldb::{Cldb, CldbClient, CldbConfig};
use cairn_client::{CldbLocator, ClusterFs, Connections};
use cairn_fileserver::{FileServer, FileServerConfig, NodeIdentity};
use cairn_nfs::{Gateway, GatewayConfig};
use cairn_store::{FileSystem, StoreConfig};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// A node's configuration file (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster.
    pub name: String,
    pub data_dir: PathBuf,
    /// Address every service listens on.
    pub bind: IpAddr,
    /// Address the NFS gateway listens on [default: `bind`]; `0.0.0.0` to serve virtual IPs.
    #[serde(default)]
    pub nfs_bind: Option<IpAddr>,
    /// The host others reach this node at [default: `bind`, or 127.0.0.1 if that is 0.0.0.0].
    #[serde(default)]
    pub advertise_host: Option<String>,
    /// Run the VIP agent (needs root and /dev/net/tun; one node per host) [default: true].
    #[serde(default = "default_true")]
    pub vip_agent: bool,
    /// This node's coord member id and port, if it runs one.
    #[serde(default)]
    pub coord_id: Option<u64>,
    #[serde(default)]
    pub coord_port: Option<u16>,
    /// Every coord member, `ID=HOST:PORT`.
    pub coord_members: Vec<String>,
    /// This node's CLDB port, if it runs one.
    #[serde(default)]
    pub cldb_port: Option<u16>,
    /// Every CLDB, `HOST:PORT`.
    pub cldbs: Vec<String>,
    pub fileserver_port: u16,
    pub nfs_port: u16,
    #[serde(default)]
    pub portmap_port: Option<u16>,
    /// Exports file [default: DATA_DIR/exports, created as `/ *(rw,no_root_squash)`].
    #[serde(default)]
    pub exports: Option<PathBuf>,
    /// The volume the gateway serves.
    #[serde(default = "default_volume")]
    pub nfs_volume: String,
    #[serde(default)]
    pub topology: String,
    /// CLDB: a node is down after this long without a heartbeat.
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// CLDB: an under-replicated volume gets a new copy after this long.
    #[serde(default = "default_rereplication_timeout_ms")]
    pub rereplication_timeout_ms: u64,
    /// File server: a scrub pass over each copy starts this long after the previous one ended.
    #[serde(default = "default_scrub_interval_ms")]
    pub scrub_interval_ms: u64,
    /// The web console's port (plain HTTP, on `bind`), if this node runs one.
    #[serde(default)]
    pub console_port: Option<u16>,
}

fn default_true() -> bool {
    true
}
fn default_volume() -> String {
    "default".to_string()
}
fn default_node_timeout_ms() -> u64 {
    6_000
}
fn default_rereplication_timeout_ms() -> u64 {
    60_000
}
fn default_scrub_interval_ms() -> u64 {
    u64::try_from(cairn_fileserver::SCRUB_INTERVAL_DEFAULT.as_millis()).unwrap_or(u64::MAX)
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid node configuration", path.display()))
    }

    fn host(&self) -> String {
        if let Some(host) = &self.advertise_host {
            return host.clone();
        }
        if self.bind.is_unspecified() { "127.0.0.1".to_string() } else { self.bind.to_string() }
    }

    fn coord_addresses(&self) -> Vec<String> {
        self.coord_members.iter().filter_map(|m| m.split_once('=').map(|(_, a)| a.to_string())).collect()
    }
}

pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-node")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let host = config.host();

    let mut coord_task = None;
    if let (Some(id), Some(port)) = (config.coord_id, config.coord_port) {
        let args = crate::coord::ServeArgs {
            id,
            data_dir: config.data_dir.join("coord"),
            listen: SocketAddr::new(config.bind, port).to_string(),
            advertise: Some(format!("{host}:{port}")),
            members: config.coord_members.clone(),
            cluster_name: "cairn".to_string(),
            snapshot_every: cairn_coord::raft::SNAPSHOT_EVERY_ENTRIES,
        };
        let mut stop = stop_rx.clone();
        coord_task = Some(tokio::spawn(crate::coord::run_member(args, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })));
    }

    let mut cldb = None;
    if let Some(port) = config.cldb_port {
        let mut cldb_config = CldbConfig::new(
            config.name.clone(),
            SocketAddr::new(config.bind, port),
            config.coord_addresses(),
        );
        cldb_config.advertise = Some(format!("{host}:{port}"));
        cldb_config.node_timeout = Duration::from_millis(config.node_timeout_ms);
        cldb_config.rereplication_timeout = Duration::from_millis(config.rereplication_timeout_ms);
        cldb = Some(Cldb::start(cldb_config).await.context("cannot start the CLDB")?);
    }

    let fileserver = Arc::new(
        FileServer::start(FileServerConfig {
            node: config.name.clone(),
            data_dir: config.data_dir.clone(),
            listen: SocketAddr::new(config.bind, config.fileserver_port),
            advertise: Some(format!("{host}:{}", config.fileserver_port)),
            store: StoreConfig::new(config.data_dir.join("volumes")),
            scrub_interval: Duration::from_millis(config.scrub_interval_ms),
        })
        .await
        .context("cannot start the file server")?,
    );
    let cldb_client = CldbClient::new(config.cldbs.clone());
    let identity = NodeIdentity {
        nfs_address: format!("{host}:{}", config.nfs_port),
        topology: config.topology.clone(),
        services: ["fileserver", "nfs"]
            .into_iter()
            .chain(config.coord_id.map(|_| "coord"))
            .chain(config.cldb_port.map(|_| "cldb"))
            .chain(config.console_port.map(|_| "console"))
            .map(str::to_string)
            .collect(),
    };
    let heartbeats =
        tokio::spawn(fileserver.clone().run_heartbeats(cldb_client.clone(), identity, stop_rx.clone()));

    let mut console = None;
    if let Some(port) = config.console_port {
        // The console is no part of the data path: a node whose console port is taken still
        // serves, and says so.
        match cairn_console::Console::start(cairn_console::ConsoleConfig {
            listen: SocketAddr::new(config.bind, port),
            node: config.name.clone(),
            cldb: cldb_client.clone(),
            coord: config.coord_addresses(),
            data_dir: Some(config.data_dir.clone()),
        })
        .await
        {
            Ok(started) => {
                println!("node {} console: http://{host}:{}/", config.name, started.address().port());
                console = Some(started);
            }
            Err(error) => tracing::error!("no web console on this node: {error}"),
        }
    }

    let exports_file = match &config.exports {
        Some(path) => path.clone(),
        None => {
            let path = config.data_dir.join("exports");
            if !path.exists() {
                std::fs::write(&path, crate::up::DEFAULT_EXPORTS)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            path
        }
    };
    let gateway_config = GatewayConfig {
        bind_address: config.nfs_bind.unwrap_or(config.bind),
        nfs_port: config.nfs_port,
        portmap_port: config.portmap_port,
        exports_file,
    };
    let gateway_task =
        tokio::spawn(start_gateway(cldb_client.clone(), config.nfs_volume.clone(), gateway_config));
    println!("node {} running: fileserver={}", config.name, fileserver.advertised_address());

    let gateway = tokio::select! {
        _ = terminate.recv() => None,
        _ = interrupt.recv() => None,
        started = gateway_task => Some(started.context("gateway task failed")??),
    };
    let mut vip_agent = None;
    if let Some(gateway) = &gateway {
        if config.vip_agent {
            let nfs_ip = config.nfs_bind.unwrap_or(config.bind);
            let check_ip = if nfs_ip.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { nfs_ip };
            let agent = crate::vip_agent::AgentConfig {
                node: config.name.clone(),
                device: crate::vip_agent::device_name(&config.name),
                coord: config.coord_addresses(),
                nfs_check: SocketAddr::new(check_ip, gateway.nfs_address().port()),
                nfs_port: gateway.nfs_address().port(),
                nfs_address: format!("{host}:{}", gateway.nfs_address().port()),
            };
            vip_agent =
                Some(tokio::spawn(crate::vip_agent::run(agent, cldb_client.clone(), stop_rx.clone())));
        }
        println!("node {} ready: nfs={}", config.name, gateway.nfs_address());
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    if let Some(console) = console {
        console.shutdown().await;
    }
    if let Some(agent) = vip_agent {
        let _ = agent.await;
    }
    if let Some(gateway) = gateway {
        gateway.shutdown().await;
    }
    let _ = heartbeats.await;
    fileserver.shutdown().await;
    if let Some(cldb) = cldb {
        cldb.shutdown().await;
    }
    if let Some(task) = coord_task {
        task.await.context("coord task failed")??;
    }
    println!("node {} stopped", config.name);
    Ok(())
}

/// Waits for the volume to exist and have a master, then serves it over NFS.
async fn start_gateway(cldb: CldbClient, volume: String, config: GatewayConfig) -> anyhow::Result<Gateway> {
    let connections = Arc::new(Connections::default());
    let locator = Arc::new(CldbLocator(cldb.clone()));
    loop {
        let id = match cldb.volume_info(&volume).await {
            Ok(info) => info.volume.id,
            Err(error) => {
                tracing::debug!(%error, volume, "waiting for the volume");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        match tokio::time::timeout(
            Duration::from_secs(10),
            ClusterFs::open(locator.clone(), connections.clone(), id),
        )
        .await
        {
            Ok(Ok(fs)) => {
                let fs: Arc<dyn FileSystem> = Arc::new(fs);
                return Gateway::start(fs, config).await.context("cannot start the NFS gateway");
            }
            Ok(Err(error)) => tracing::debug!(%error, volume, "waiting for the volume's master"),
            Err(_) => tracing::debug!(volume, "waiting for the volume's master"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
