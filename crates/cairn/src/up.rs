//! `cairn up`: a whole single-node cluster in one foreground process.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use cairn_nfs::{Gateway, GatewayConfig};
use cairn_store::{Store, StoreConfig};
use tokio::signal::unix::{SignalKind, signal};

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
}

pub fn run(config: UpConfig) -> anyhow::Result<()> {
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config.data_dir)?;
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
    println!("Exports ({}):", exports_file.display());
    for line in exports_text.lines() {
        println!("    {line}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, exports_file))
}

async fn serve(config: UpConfig, exports_file: PathBuf) -> anyhow::Result<()> {
    let store_config = StoreConfig::new(config.data_dir.join("store"));
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .context("store open task failed")?
        .context("cannot open the store")?;
    let store = Arc::new(store);
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let gateway = Gateway::start(
        Arc::clone(&store),
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

    let nfs = gateway.nfs_address();
    let mut ready = format!("Cairn is ready: cluster={:016x} nfs={nfs}", store.cluster_id().0);
    if let Some(portmap) = gateway.portmap_address() {
        ready.push_str(&format!(" portmap={portmap}"));
    }
    println!("{ready}");
    // Bound to every address: any of this host's addresses will do.
    let host = if nfs.ip().is_unspecified() { "THIS-HOST".to_owned() } else { nfs.ip().to_string() };
    if gateway.portmap_address().is_some_and(|address| address.port() == 111) && nfs.port() == 2049 {
        println!("Mount with: mount -t nfs -o vers=3,nolock {host}:/ /mnt");
    } else {
        println!(
            "Mount with: mount -t nfs -o vers=3,proto=tcp,port={port},mountport={port},nolock {host}:/ /mnt",
            port = nfs.port()
        );
    }
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
    println!("Cairn stopped.");
    Ok(())
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
    println!("Asked cairn (pid {pid}) to reload its exports.");
    Ok(())
}
