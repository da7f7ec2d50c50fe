//! A node of a cluster: its configuration file, and its built-in services, each run as its own
//! process by the node's Warden (`cairn node start`, see `warden.rs`): a coord member and a CLDB
//! (when the configuration gives them ports), the file server with its heartbeat, the NFS
//! gateway (which serves the configured volume from whichever node is its master, and holds
//! virtual IPs), and the web console (when given a port). `cairn up --nodes N` writes N
//! configurations and starts N Wardens.

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
    /// The Warden's configuration: `warden.conf` and `conf.d/` [default: DATA_DIR/conf].
    #[serde(default)]
    pub conf_dir: Option<PathBuf>,
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

    /// The host others reach this node at.
    pub fn host(&self) -> String {
        if let Some(host) = &self.advertise_host {
            return host.clone();
        }
        if self.bind.is_unspecified() { "127.0.0.1".to_string() } else { self.bind.to_string() }
    }

    /// Every coord member's `HOST:PORT`.
    pub fn coord_addresses(&self) -> Vec<String> {
        self.coord_members.iter().filter_map(|m| m.split_once('=').map(|(_, a)| a.to_string())).collect()
    }
}

/// `cairn node start`: the node's Warden, which runs each service below as its own process.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-warden")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::warden::run(config, config_path))
}

/// The built-in services, in the order a node starts them.
pub const SERVICES: [&str; 5] = ["coord", "cldb", "fileserver", "nfs", "console"];

impl NodeConfig {
    /// The built-in services this node is configured for: a coord member and a CLDB only with
    /// their ports, the console only with its port.
    pub fn services(&self) -> Vec<&'static str> {
        SERVICES
            .into_iter()
            .filter(|service| match *service {
                "coord" => self.coord_id.is_some() && self.coord_port.is_some(),
                "cldb" => self.cldb_port.is_some(),
                "console" => self.console_port.is_some(),
                _ => true,
            })
            .collect()
    }

    /// The ports a built-in service listens on, by name (what its `/services` znode lists).
    pub fn ports(&self, service: &str) -> Vec<(String, u16)> {
        let named = |name: &str, port: Option<u16>| port.map(|port| (name.to_owned(), port));
        match service {
            "coord" => named("coord", self.coord_port).into_iter().collect(),
            "cldb" => named("cldb", self.cldb_port).into_iter().collect(),
            "fileserver" => vec![("fileserver".to_owned(), self.fileserver_port)],
            "nfs" => [named("nfs", Some(self.nfs_port)), named("portmap", self.portmap_port)]
                .into_iter()
                .flatten()
                .collect(),
            "console" => named("console", self.console_port).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.conf_dir.clone().unwrap_or_else(|| self.data_dir.join("conf"))
    }
}

/// `cairn node service --service S`: one built-in service of the node, in the foreground, until
/// SIGTERM or SIGINT. The Warden starts these; each is its own process, with its own metrics.
pub fn run_service(config_path: &Path, service: &str) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    if !SERVICES.contains(&service) {
        anyhow::bail!("no built-in service {service:?} (there are {})", SERVICES.join(", "));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("cairn-{service}"))
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_one(config, service))
}

fn metric_groups(service: &str) -> &'static [cairn_metrics::Group] {
    use cairn_metrics::Group;
    match service {
        "coord" => &[Group::Coord],
        "cldb" => &[Group::Cldb],
        "fileserver" => &[Group::FileServer],
        "nfs" => &[Group::Nfs],
        _ => &[],
    }
}

async fn serve_one(config: NodeConfig, service: &str) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let stopped = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    };
    cairn_metrics::init(metric_groups(service));
    if service != "console" {
        publish_metrics(&config, service).await;
    }
    match service {
        "coord" => serve_coord(&config, stopped).await,
        "cldb" => serve_cldb(&config, stopped).await,
        "fileserver" => serve_fileserver(&config, stop_rx, stopped).await,
        "nfs" => serve_nfs(&config, stop_rx, stopped).await,
        _ => serve_console(&config, stopped).await,
    }?;
    println!("node {} {service} stopped", config.name);
    Ok(())
}

/// Serves the process's metrics on an ephemeral port of the node's address and names it in
/// `DATA_DIR/run/<service>.metrics`, where the node's console finds it. Metrics are no part of
/// the service: a failure is logged.
pub(crate) async fn publish_metrics(config: &NodeConfig, service: &str) {
    let run_dir = config.data_dir.join("run");
    let listen = SocketAddr::new(config.bind, 0);
    let result = async {
        std::fs::create_dir_all(&run_dir)?;
        let (mut address, _task) = cairn_metrics::serve(listen).await?;
        if address.ip().is_unspecified() {
            address.set_ip(IpAddr::from([127, 0, 0, 1]));
        }
        cairn_metrics::write_endpoint_file(&run_dir, service, address)
    }
    .await;
    if let Err(error) = result {
        tracing::error!("no metrics endpoint for {service}: {error}");
    }
}

async fn serve_coord(config: &NodeConfig, stopped: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (Some(id), Some(port)) = (config.coord_id, config.coord_port) else {
        anyhow::bail!("node {} has no coord member (coord_id and coord_port)", config.name);
    };
    let host = config.host();
    let args = crate::coord::ServeArgs {
        id,
        data_dir: config.data_dir.join("coord"),
        listen: SocketAddr::new(config.bind, port).to_string(),
        advertise: Some(format!("{host}:{port}")),
        members: config.coord_members.clone(),
        cluster_name: "cairn".to_string(),
        snapshot_every: cairn_coord::raft::SNAPSHOT_EVERY_ENTRIES,
    };
    println!("node {} coord: member {id} on {host}:{port}", config.name);
    crate::coord::run_member(args, stopped).await
}

async fn serve_cldb(config: &NodeConfig, stopped: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Some(port) = config.cldb_port else {
        anyhow::bail!("node {} has no CLDB (cldb_port)", config.name);
    };
    let host = config.host();
    let mut cldb_config =
        CldbConfig::new(config.name.clone(), SocketAddr::new(config.bind, port), config.coord_addresses());
    cldb_config.advertise = Some(format!("{host}:{port}"));
    cldb_config.node_timeout = Duration::from_millis(config.node_timeout_ms);
    cldb_config.rereplication_timeout = Duration::from_millis(config.rereplication_timeout_ms);
    let cldb = Cldb::start(cldb_config).await.context("cannot start the CLDB")?;
    println!("node {} cldb: {host}:{port}", config.name);
    stopped.await;
    cldb.shutdown().await;
    Ok(())
}

async fn serve_fileserver(
    config: &NodeConfig,
    stop_rx: watch::Receiver<bool>,
    stopped: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let host = config.host();
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
    let identity = NodeIdentity {
        nfs_address: format!("{host}:{}", config.nfs_port),
        topology: config.topology.clone(),
        services: config.services().into_iter().map(str::to_string).collect(),
    };
    let heartbeats = tokio::spawn(fileserver.clone().run_heartbeats(
        CldbClient::new(config.cldbs.clone()),
        identity,
        stop_rx,
    ));
    println!("node {} running: fileserver={}", config.name, fileserver.advertised_address());
    stopped.await;
    let _ = heartbeats.await;
    fileserver.shutdown().await;
    Ok(())
}

async fn serve_console(config: &NodeConfig, stopped: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Some(port) = config.console_port else {
        anyhow::bail!("node {} has no console (console_port)", config.name);
    };
    let console = cairn_console::Console::start(cairn_console::ConsoleConfig {
        listen: SocketAddr::new(config.bind, port),
        node: config.name.clone(),
        cldb: CldbClient::new(config.cldbs.clone()),
        coord: config.coord_addresses(),
        data_dir: Some(config.data_dir.clone()),
    })
    .await
    .context("cannot start the web console")?;
    println!("node {} console: http://{}:{}/", config.name, config.host(), console.address().port());
    stopped.await;
    console.shutdown().await;
    Ok(())
}

async fn serve_nfs(
    config: &NodeConfig,
    stop_rx: watch::Receiver<bool>,
    stopped: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Watched from the start: a SIGHUP while the gateway still waits for its volume is then
    // queued (the new exports are read at start anyway) instead of killing the process.
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let host = config.host();
    let cldb_client = CldbClient::new(config.cldbs.clone());
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
    tokio::pin!(stopped);
    let gateway = tokio::select! {
        _ = &mut stopped => None,
        started = gateway_task => Some(started.context("gateway task failed")??),
    };
    let Some(gateway) = gateway else { return Ok(()) };
    let mut vip_agent = None;
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
        vip_agent = Some(tokio::spawn(crate::vip_agent::run(agent, cldb_client.clone(), stop_rx)));
    }
    println!("node {} ready: nfs={}", config.name, gateway.nfs_address());
    // SIGHUP re-reads the exports file (`cairn config pull` sends it after writing a new one);
    // a bad file keeps the old rules.
    loop {
        tokio::select! {
            () = &mut stopped => break,
            _ = hangup.recv() => match gateway.reload_exports() {
                Ok(()) => tracing::info!("exports reloaded"),
                Err(error) => tracing::error!("exports not reloaded, the old rules stay: {error}"),
            },
        }
    }
    if let Some(agent) = vip_agent {
        let _ = agent.await;
    }
    gateway.shutdown().await;
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
