//! `cairn up`: a whole cluster on this machine in the foreground, its nodes' Wardens as child
//! processes ([`run_cluster`]; one node by default), or with `--embedded` the store and the NFS
//! gateway in this one process with a one-member coord ([`run`]).

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use cairn_nfs::{Gateway, GatewayConfig};
use cairn_store::{Store, StoreConfig};
use tokio::signal::unix::{SignalKind, signal};

/// Prints a line to stdout, ignoring a closed pipe: a server must not die because whoever started it
/// stopped reading its output.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The exports file `cairn up` writes when there is none: everything, to everyone who can reach
/// the bind address (which is loopback unless the operator chose otherwise).
pub const DEFAULT_EXPORTS: &str = "/ *(rw,no_root_squash)\n";

const PID_FILE: &str = "cairn.pid";
const LOCK_FILE: &str = "lock";

pub struct UpConfig {
    pub data_dir: PathBuf,
    pub nfs_port: u16,
    pub bind_address: IpAddr,
    pub portmap_port: Option<u16>,
    pub exports_file: Option<PathBuf>,
    /// How many coord members to run (1, 3 or 5), each its own process.
    pub nodes: u16,
    /// The first coord member's port; the others take the next ones.
    pub coord_port: u16,
}

/// Written to DATA_DIR/cluster.json: what runs where, for tools and tests.
const CLUSTER_FILE: &str = "cluster.json";
/// How long `cairn up` waits for the coord quorum to elect a leader.
const COORD_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn run(config: UpConfig) -> anyhow::Result<()> {
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config.data_dir)?;
    refuse_other_layout(&config.data_dir, "store", "nodes", "cairn up (without --embedded)")?;
    let exports_file = match &config.exports_file {
        Some(path) => path.clone(),
        None => {
            let path = config.data_dir.join("exports");
            if !path.exists() {
                fs::write(&path, DEFAULT_EXPORTS)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            path
        }
    };
    let exports_text = fs::read_to_string(&exports_file)
        .with_context(|| format!("cannot read exports file {}", exports_file.display()))?;
    say!("Exports ({}):", exports_file.display());
    for line in exports_text.lines() {
        say!("    {line}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, exports_file))
}

/// The coord member processes of this node, stopped (SIGTERM, then SIGKILL) when dropped. Each also
/// gets SIGTERM from the kernel if `cairn up` dies without cleaning up (PR_SET_PDEATHSIG).
struct CoordMembers {
    members: Vec<(u64, String, std::process::Child)>,
}

impl CoordMembers {
    fn start(data_dir: &Path, bind: IpAddr, nodes: u16, first_port: u16) -> anyhow::Result<CoordMembers> {
        use std::os::unix::process::CommandExt;
        if !matches!(nodes, 1 | 3 | 5) {
            bail!("--nodes must be 1, 3 or 5 (a quorum needs an odd number of members), not {nodes}");
        }
        let host = if bind.is_unspecified() { "127.0.0.1".to_owned() } else { bind.to_string() };
        let exe = std::env::current_exe().context("cannot find the cairn executable")?;
        let addresses: Vec<(u64, String)> = (0..nodes)
            .map(|i| {
                let port = first_port.checked_add(i).context("coord port out of range")?;
                Ok((u64::from(i) + 1, format!("{host}:{port}")))
            })
            .collect::<anyhow::Result<_>>()?;
        let list: Vec<String> = addresses.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let mut started = CoordMembers { members: Vec::new() };
        for (id, address) in &addresses {
            let dir = data_dir.join("coord").join(id.to_string());
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let log_path = dir.join("member.log");
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot open {}", log_path.display()))?;
            let log_err = log.try_clone().context("cannot duplicate the log file")?;
            let mut command = std::process::Command::new(&exe);
            command
                .args([
                    "coord",
                    "serve",
                    "--id",
                    &id.to_string(),
                    "--listen",
                    address,
                    "--members",
                    &list.join(","),
                ])
                .arg("--data-dir")
                .arg(&dir)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(log_err);
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command.spawn().with_context(|| format!("cannot start coord member {id}"))?;
            started.members.push((*id, address.clone(), child));
        }
        Ok(started)
    }

    fn addresses(&self) -> Vec<String> {
        self.members.iter().filter(|(_, a, _)| !a.is_empty()).map(|(_, a, _)| a.clone()).collect()
    }

    /// Waits until a member reports a leader; fails early if a member process exits.
    async fn wait_for_leader(&mut self, data_dir: &Path) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + COORD_READY_TIMEOUT;
        loop {
            for (id, _, child) in &mut self.members {
                if let Some(status) = child.try_wait().context("cannot check a coord member")? {
                    let log = data_dir.join("coord").join(id.to_string()).join("member.log");
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> =
                        text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                    bail!("coord member {id} exited ({status}); {}:\n{}", log.display(), tail.join("\n"));
                }
            }
            for address in self.addresses() {
                if let Ok(s) =
                    cairn_coord::client::member_status(&address, std::time::Duration::from_millis(500)).await
                    && let Some(leader) = s.leader
                {
                    return Ok(leader);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the coord quorum elected no leader within {COORD_READY_TIMEOUT:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Drop for CoordMembers {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.members {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for (_, _, child) in &mut self.members {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
    }
}

/// The coord addresses a running (or last) `cairn up` wrote in DATA_DIR/cluster.json.
pub fn coord_addresses_from(data_dir: &Path) -> Option<Vec<String>> {
    let text = fs::read_to_string(data_dir.join(CLUSTER_FILE)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let list: Vec<String> = value
        .get("coord")?
        .as_array()?
        .iter()
        .filter_map(|m| m.get("address")?.as_str().map(str::to_owned))
        .collect();
    (!list.is_empty()).then_some(list)
}

async fn serve(config: UpConfig, exports_file: PathBuf) -> anyhow::Result<()> {
    let store_config = StoreConfig::new(config.data_dir.join("store"));
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .context("store open task failed")?
        .context("cannot open the store")?;
    let store = Arc::new(store);
    let mut coord =
        CoordMembers::start(&config.data_dir, config.bind_address, config.nodes, config.coord_port)?;
    let leader = coord.wait_for_leader(&config.data_dir).await?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let gateway = Gateway::start(
        Arc::clone(&store) as Arc<dyn cairn_store::FileSystem>,
        GatewayConfig {
            bind_address: config.bind_address,
            nfs_port: config.nfs_port,
            portmap_port: config.portmap_port,
            exports_file,
        },
    )
    .await
    .context("cannot start the NFS gateway")?;
    let pid_file = config.data_dir.join(PID_FILE);
    fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    let cluster = serde_json::json!({
        "pid": std::process::id(),
        "nfs": gateway.nfs_address().to_string(),
        "portmap": gateway.portmap_address().map(|a| a.to_string()),
        "coord": coord.members.iter().map(|(id, address, child)| serde_json::json!({
            "id": id, "address": address, "pid": child.id(),
        })).collect::<Vec<_>>(),
    });
    let cluster_file = config.data_dir.join(CLUSTER_FILE);
    fs::write(&cluster_file, format!("{cluster:#}\n"))
        .with_context(|| format!("cannot write {}", cluster_file.display()))?;

    let nfs = gateway.nfs_address();
    let mut ready = format!("Cairn is ready: cluster={:016x} nfs={nfs}", store.cluster_id().0);
    if let Some(portmap) = gateway.portmap_address() {
        ready.push_str(&format!(" portmap={portmap}"));
    }
    ready.push_str(&format!(" coord={} coord_leader={leader}", coord.addresses().join(",")));
    say!("{ready}");
    say!("{}", mount_hint(nfs, gateway.portmap_address()));
    let _ = std::io::stdout().flush();

    loop {
        tokio::select! {
            _ = hangup.recv() => match gateway.reload_exports() {
                Ok(()) => tracing::info!("exports reloaded"),
                Err(error) => tracing::error!(%error, "exports not reloaded; the previous rules stay"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("stopping");
    gateway.shutdown().await;
    let store_for_sync = Arc::clone(&store);
    tokio::task::spawn_blocking(move || store_for_sync.sync_all())
        .await
        .context("store sync task failed")?
        .context("cannot sync the store at shutdown")?;
    let _ = fs::remove_file(&pid_file);
    drop(coord);
    say!("Cairn stopped.");
    Ok(())
}

/// A data directory holds either an embedded Cairn (`DATA_DIR/store`) or a cluster's nodes
/// (`DATA_DIR/nodes`): starting the other kind on it would show an empty file system beside
/// the user's files, so it is refused with what to run instead.
fn refuse_other_layout(data_dir: &Path, mine: &str, other: &str, other_command: &str) -> anyhow::Result<()> {
    if data_dir.join(other).exists() && !data_dir.join(mine).exists() {
        bail!(
            "{} holds the data of `{other_command}` (its {other}/ folder); start that, or choose \
             another --data-dir",
            data_dir.display()
        );
    }
    Ok(())
}

/// How to mount the first NFS gateway (no `port=` needed when the portmapper is on 111 and
/// NFS on 2049).
fn mount_hint(nfs: SocketAddr, portmap: Option<SocketAddr>) -> String {
    // Bound to every address: any of this host's addresses will do.
    let host = if nfs.ip().is_unspecified() { "THIS-HOST".to_owned() } else { nfs.ip().to_string() };
    if portmap.is_some_and(|address| address.port() == 111) && nfs.port() == 2049 {
        format!("Mount with: mount -t nfs -o vers=3,nolock {host}:/ /mnt")
    } else {
        format!(
            "Mount with: mount -t nfs -o vers=3,proto=tcp,port={port},mountport={port},nolock {host}:/ /mnt",
            port = nfs.port()
        )
    }
}

/// Held for the life of the process: two nodes on one data directory would corrupt it.
struct DataDirLock {
    _file: fs::File,
}

fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        bail!("data directory {} is in use by another cairn process", data_dir.display());
    }
    Ok(DataDirLock { _file: file })
}

/// `cairn exports reload`: signal the running node of `data_dir`.
pub fn signal_reload(data_dir: &Path) -> anyhow::Result<()> {
    let pid_file = data_dir.join(PID_FILE);
    let text = fs::read_to_string(&pid_file)
        .with_context(|| format!("no running cairn for {} ({})", data_dir.display(), pid_file.display()))?;
    let pid: i32 = text.trim().parse().with_context(|| format!("{} holds no pid", pid_file.display()))?;
    // SAFETY: kill(2) with a pid read from our own pid file; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!("cannot signal cairn process {pid}: {}", std::io::Error::last_os_error());
    }
    say!("Asked cairn (pid {pid}) to reload its exports.");
    Ok(())
}

/// Settings of `cairn up` (without `--embedded`).
pub struct ClusterUpConfig {
    pub up: UpConfig,
    pub cldb_port: u16,
    pub fileserver_port: u16,
    /// How long a volume may lack copies before the CLDB makes new ones.
    pub rereplication_timeout: std::time::Duration,
    /// Copies of the default volume (at most the number of nodes).
    pub replication: u32,
    /// How the default volume's writes travel to its replicas.
    pub replication_type: cairn_cldb::proto::ReplicationType,
    /// Time between two scrub passes over a copy.
    pub scrub_interval: std::time::Duration,
    /// The first node's web console port; node i serves it on this + i. `None`: no console.
    pub console_port: Option<u16>,
}

/// Most nodes `cairn up` starts on one machine.
pub const NODES_MAX: u16 = 9;

/// `cairn up [--nodes N]` (N = 1, or 3 ≤ N ≤ 9): N node processes (Wardens) on this machine,
/// each running a file server, an NFS gateway and a console, the first 3 (5 from 5 nodes on; the
/// only one of a one-node cluster) also a coord member and a CLDB, on their own ports (the first
/// port of each kind, then the next ones), and the `default` volume.
pub fn run_cluster(config: ClusterUpConfig) -> anyhow::Result<()> {
    let up = &config.up;
    fs::create_dir_all(&up.data_dir)
        .with_context(|| format!("cannot create data directory {}", up.data_dir.display()))?;
    let _lock = lock_data_dir(&up.data_dir)?;
    if up.nodes != 1 && !(3..=NODES_MAX).contains(&up.nodes) {
        bail!("--nodes must be 1, or 3 to {NODES_MAX}, not {}", up.nodes);
    }
    refuse_other_layout(&up.data_dir, "nodes", "store", "cairn up --embedded")?;
    // Coord members and CLDBs run on the first 3 nodes (5 from 5 nodes on; the only node of a
    // one-node cluster): a quorum needs an odd number of members, and more than 5 only slows it
    // down. The other nodes hold data and serve NFS.
    let control = match up.nodes {
        1 => 1,
        3 | 4 => 3,
        _ => 5,
    };
    let host =
        if up.bind_address.is_unspecified() { "127.0.0.1".to_owned() } else { up.bind_address.to_string() };
    let port = |base: u16, i: u16| base.checked_add(i).context("port out of range");
    let mut coord_members = Vec::new();
    let mut cldbs = Vec::new();
    for i in 0..control {
        coord_members.push(format!("{}={host}:{}", i + 1, port(up.coord_port, i)?));
        cldbs.push(format!("{host}:{}", port(config.cldb_port, i)?));
    }
    let mut configs = Vec::new();
    for i in 0..up.nodes {
        let name = format!("n{}", i + 1);
        configs.push(crate::node::NodeConfig {
            data_dir: up.data_dir.join("nodes").join(&name),
            name,
            bind: up.bind_address,
            nfs_bind: None,
            advertise_host: None,
            // Every node of `cairn up` shares this host's interfaces: VIPs need one node per host.
            vip_agent: false,
            coord_id: (i < control).then_some(u64::from(i) + 1),
            coord_port: if i < control { Some(port(up.coord_port, i)?) } else { None },
            coord_members: coord_members.clone(),
            cldb_port: if i < control { Some(port(config.cldb_port, i)?) } else { None },
            cldbs: cldbs.clone(),
            fileserver_port: port(config.fileserver_port, i)?,
            nfs_port: port(up.nfs_port, i)?,
            portmap_port: if i == 0 { up.portmap_port } else { None },
            exports: up.exports_file.clone(),
            nfs_volume: "default".to_string(),
            topology: String::new(),
            node_timeout_ms: 6_000,
            rereplication_timeout_ms: u64::try_from(config.rereplication_timeout.as_millis())
                .unwrap_or(u64::MAX),
            scrub_interval_ms: u64::try_from(config.scrub_interval.as_millis()).unwrap_or(u64::MAX),
            console_port: config.console_port.map(|base| port(base, i)).transpose()?,
            conf_dir: None,
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn")
        .build()
        .context("cannot start the async runtime")?;
    if !(1..=u32::from(up.nodes).min(5)).contains(&config.replication) {
        bail!(
            "--replication must be 1 to {} (the nodes, at most 5), not {}",
            up.nodes.min(5),
            config.replication
        );
    }
    runtime.block_on(serve_cluster(&up.data_dir, configs, cldbs, config.replication, config.replication_type))
}

async fn serve_cluster(
    data_dir: &Path,
    configs: Vec<crate::node::NodeConfig>,
    cldbs: Vec<String>,
    replication: u32,
    replication_type: cairn_cldb::proto::ReplicationType,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let exe = std::env::current_exe().context("cannot find the cairn executable")?;
    let mut nodes = CoordMembers { members: Vec::new() };
    for (i, config) in configs.iter().enumerate() {
        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
        let config_path = config.data_dir.join("node.json");
        fs::write(&config_path, serde_json::to_string_pretty(config)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.data_dir.join("node.log"))
            .context("cannot open the node log")?;
        let log_err = log.try_clone().context("cannot duplicate the log file")?;
        let mut command = std::process::Command::new(&exe);
        command
            .args(["node", "start", "--config"])
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("cannot start node {}", config.name))?;
        // A data-only node has no coord member: no address.
        let coord = match config.coord_id {
            Some(_) => {
                config.coord_members[i].split_once('=').map(|(_, a)| a.to_string()).unwrap_or_default()
            }
            None => String::new(),
        };
        nodes.members.push((i as u64 + 1, coord, child));
    }
    let leader = nodes.wait_for_node_leader(&configs).await?;

    // The CLDB sees every node, then the default volume is made (once).
    let cldb = cairn_cldb::CldbClient::new(cldbs.clone());
    let deadline = tokio::time::Instant::now() + COORD_READY_TIMEOUT * 2;
    loop {
        match cldb.list_nodes().await {
            Ok(list) if list.len() >= configs.len() => break,
            _ if tokio::time::Instant::now() >= deadline => {
                bail!("the nodes did not all register with the CLDB")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    let cluster_id = loop {
        match cldb.volume_info("default").await {
            Ok(_) => break cldb.status().await.map(|s| s.cluster_id).unwrap_or(0),
            Err(cairn_cldb::CldbError::NoSuchVolume { .. }) => {
                let spec = cairn_cldb::proto::VolumeSpec {
                    name: "default".to_string(),
                    mount_path: Some("/".to_string()),
                    replication: Some(replication),
                    replication_type,
                    min_replication: Some(1),
                    ..Default::default()
                };
                if let Err(error) = cldb.create_volume(spec).await {
                    tracing::debug!(%error, "default volume not created yet");
                }
            }
            Err(error) => tracing::debug!(%error, "waiting for the CLDB"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the default volume could not be created");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // The central configuration's volume (config.rs); `cairn config push` makes it otherwise.
    if let Err(error) = crate::config::ensure_volume(&cldb).await {
        tracing::warn!("{error:#}");
    }
    // Every gateway serves once it reached the volume's master.
    for config in &configs {
        let address = format!(
            "{}:{}",
            if config.bind.is_unspecified() { "127.0.0.1".to_string() } else { config.bind.to_string() },
            config.nfs_port
        );
        loop {
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                break;
            }
            nodes.check_alive(data_dir)?;
            if tokio::time::Instant::now() >= deadline {
                bail!("node {} did not start its NFS gateway", config.name);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    let host = |c: &crate::node::NodeConfig| {
        if c.bind.is_unspecified() { "127.0.0.1".to_string() } else { c.bind.to_string() }
    };
    let cluster = serde_json::json!({
        "pid": std::process::id(),
        "nfs": format!("{}:{}", host(&configs[0]), configs[0].nfs_port),
        "cldb": cldbs,
        "coord": nodes.members.iter().filter(|(_, address, _)| !address.is_empty()).map(|(id, address, child)| serde_json::json!({
            "id": id, "address": address, "pid": child.id(),
        })).collect::<Vec<_>>(),
        "nodes": configs.iter().zip(&nodes.members).map(|(c, (_, _, child))| serde_json::json!({
            "name": c.name, "pid": child.id(), "address": host(c),
            "nfs_port": c.nfs_port, "coord_port": c.coord_port, "cldb_port": c.cldb_port,
            "fileserver_port": c.fileserver_port, "portmap_port": c.portmap_port,
            "console_port": c.console_port, "data_dir": c.data_dir,
        })).collect::<Vec<_>>(),
    });
    let cluster_file = data_dir.join(CLUSTER_FILE);
    fs::write(&cluster_file, format!("{cluster:#}\n"))
        .with_context(|| format!("cannot write {}", cluster_file.display()))?;
    let nfs: Vec<String> = configs.iter().map(|c| format!("{}:{}", host(c), c.nfs_port)).collect();
    let coord: Vec<&str> =
        nodes.members.iter().map(|(_, a, _)| a.as_str()).filter(|a| !a.is_empty()).collect();
    let consoles: Vec<String> = configs
        .iter()
        .filter_map(|c| c.console_port.map(|port| format!("http://{}:{port}/", host(c))))
        .collect();
    say!(
        "Cairn is ready: cluster={cluster_id:016x} nodes={} nfs={} cldb={} coord={} coord_leader={leader}{}",
        configs.len(),
        nfs.join(","),
        cldbs.join(","),
        coord.join(","),
        if consoles.is_empty() { String::new() } else { format!(" console={}", consoles.join(",")) }
    );
    let first_nfs = SocketAddr::new(configs[0].bind, configs[0].nfs_port);
    let portmap = match configs[0].portmap_port {
        // Skipped with a warning by the gateway when it cannot be bound: say so only if it
        // answers.
        Some(port) if tokio::net::TcpStream::connect((host(&configs[0]), port)).await.is_ok() => {
            Some(SocketAddr::new(configs[0].bind, port))
        }
        _ => None,
    };
    say!("{}", mount_hint(first_nfs, portmap));
    if let Some(first) = consoles.first() {
        say!(
            "Web console: {first} (user admin; password from $CAIRN_ADMIN_PASSWORD, or printed once \
             in the node log of the node that created it: {}/nodes/*/node.log)",
            data_dir.display()
        );
    }
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    drop(nodes);
    say!("Cairn stopped.");
    Ok(())
}

impl CoordMembers {
    /// Fails if a node process exited.
    fn check_alive(&mut self, data_dir: &Path) -> anyhow::Result<()> {
        for (id, _, child) in &mut self.members {
            if let Some(status) = child.try_wait().context("cannot check a node")? {
                let log = data_dir.join("nodes").join(format!("n{id}")).join("node.log");
                let text = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> =
                    text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("node n{id} exited ({status}); {}:\n{}", log.display(), tail.join("\n"));
            }
        }
        Ok(())
    }

    async fn wait_for_node_leader(&mut self, configs: &[crate::node::NodeConfig]) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + COORD_READY_TIMEOUT;
        let data_dir =
            configs[0].data_dir.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        loop {
            self.check_alive(&data_dir)?;
            for address in self.addresses() {
                if let Ok(s) =
                    cairn_coord::client::member_status(&address, std::time::Duration::from_millis(500)).await
                    && let Some(leader) = s.leader
                {
                    return Ok(leader);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the coord quorum elected no leader within {COORD_READY_TIMEOUT:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
