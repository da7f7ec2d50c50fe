//! Starting and stopping the two servers, each in a network namespace of its own with only a
//! loopback interface, listening on 127.0.0.1 there; both sides are otherwise set up alike.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::json::{self, Json};
use crate::netns::Netns;
use crate::nfs::Endpoint;
use crate::system::{self, run_checked};

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `cairn up --nodes N` may take to come up (a coord quorum, CLDB registrations, the
/// default volume).
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

const NFS_PORT: u16 = 2049;
/// ganesha-server's MOUNT port; Cairn serves MOUNT on the NFS port.
const GANESHA_MOUNT_PORT: u16 = 20048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Cairn,
    Ganesha,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cairn => "cairn",
            Self::Ganesha => "ganesha",
        }
    }
}

pub struct Tools {
    pub ganesha_script: PathBuf,
    pub cairn_binary: PathBuf,
}

pub struct RunningServer {
    pub endpoint: Endpoint,
    guard: Guard,
}

enum Guard {
    Ganesha {
        script: PathBuf,
        netns: String,
    },
    /// `cairn up`, and with `--nodes N` its node processes (read from `cluster.json` once it is
    /// ready).
    Cairn {
        child: Child,
        log: PathBuf,
        nodes: Vec<NodeProcess>,
        netns: Netns,
    },
}

/// One node process of `cairn up --nodes N`.
#[derive(Clone, Debug)]
pub struct NodeProcess {
    pub name: String,
    pub pid: u32,
    log: PathBuf,
}

/// A `cairn up --nodes N` cluster's settings, beyond what the single server gets.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSpec {
    pub nodes: u16,
    pub replication: u32,
    /// `--replication-type` (`chain` or `star`); cairn's default when `None`.
    pub replication_type: Option<&'static str>,
}

impl RunningServer {
    /// Starts `side` serving from `dir` (created if missing), in a namespace named `netns`.
    pub fn start(side: Side, tools: &Tools, dir: &Path, netns: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        match side {
            Side::Ganesha => start_ganesha(&tools.ganesha_script, dir, netns),
            Side::Cairn => start_cairn(&tools.cairn_binary, dir, netns),
        }
    }

    /// Starts `cairn up --nodes N --replication R` serving from `dir` (created if missing), in a
    /// namespace named `netns`; the endpoint is the first node's gateway.
    pub fn start_cairn_cluster(binary: &Path, dir: &Path, netns: &str, spec: ClusterSpec) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut extra = vec![
            "--nodes".to_owned(),
            spec.nodes.to_string(),
            "--replication".to_owned(),
            spec.replication.to_string(),
        ];
        if let Some(replication_type) = spec.replication_type {
            extra.extend(["--replication-type".to_owned(), replication_type.to_owned()]);
        }
        let mut server = start_cairn_with(binary, dir, netns, &extra, CLUSTER_START_TIMEOUT)?;
        let nodes = cluster_nodes(dir)?;
        if nodes.len() != usize::from(spec.nodes) {
            bail!("{}/cluster.json lists {} nodes, not {}", dir.display(), nodes.len(), spec.nodes);
        }
        if let Guard::Cairn { nodes: slot, .. } = &mut server.guard {
            *slot = nodes;
        }
        server.check_alive()?;
        Ok(server)
    }

    /// Fails if the server process, or one of its node processes, is gone (Cairn only;
    /// ganesha-server watches its own).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Guard::Cairn { child, log, nodes, .. } = &mut self.guard {
            if let Some(status) = child.try_wait()? {
                bail!("cairn exited ({status}); the end of its log:\n{}", log_tail(log));
            }
            for node in nodes.iter() {
                if !system::process_running(node.pid) {
                    bail!(
                        "cairn node {} (pid {}) exited; the end of {}:\n{}",
                        node.name,
                        node.pid,
                        node.log.display(),
                        log_tail(&node.log)
                    );
                }
            }
        }
        Ok(())
    }

    /// The server's processes: `cairn up`'s and its nodes' (Cairn only; empty for Ganesha).
    pub fn pids(&self) -> Vec<u32> {
        match &self.guard {
            Guard::Ganesha { .. } => Vec::new(),
            Guard::Cairn { child, nodes, .. } => {
                std::iter::once(child.id()).chain(nodes.iter().map(|node| node.pid)).collect()
            }
        }
    }

    /// The node processes of a `cairn up --nodes N` (empty for one node).
    pub fn nodes(&self) -> &[NodeProcess] {
        match &self.guard {
            Guard::Cairn { nodes, .. } => nodes,
            Guard::Ganesha { .. } => &[],
        }
    }
}

/// The nodes `cairn up --nodes N` wrote into DIR/cluster.json: name, pid, log.
fn cluster_nodes(dir: &Path) -> Result<Vec<NodeProcess>> {
    let path = dir.join("cluster.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cluster = json::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(Json::Array(nodes)) = cluster.get("nodes") else {
        bail!("{} has no nodes", path.display());
    };
    nodes
        .iter()
        .map(|node| {
            let name = node.get("name").and_then(Json::as_str).context("a node without a name")?;
            let pid = node.get("pid").and_then(Json::as_f64).context("a node without a pid")?;
            let data_dir = node.get("data_dir").and_then(Json::as_str).context("a node without data_dir")?;
            Ok(NodeProcess {
                name: name.to_owned(),
                pid: pid as u32,
                log: Path::new(data_dir).join("node.log"),
            })
        })
        .collect()
}

fn start_ganesha(script: &Path, dir: &Path, netns: &str) -> Result<RunningServer> {
    run_checked(
        Command::new(script)
            .arg("start")
            .arg(dir)
            .arg(netns)
            .env("NFS_PORT", NFS_PORT.to_string())
            .env("MNT_PORT", GANESHA_MOUNT_PORT.to_string()),
    )
    .context("starting ganesha")?;
    let guard = Guard::Ganesha { script: script.to_owned(), netns: netns.to_owned() };
    let export = std::fs::canonicalize(dir)?.to_str().context("export path is not UTF-8")?.to_owned();
    Ok(RunningServer {
        endpoint: Endpoint {
            netns: netns.to_owned(),
            nfs_port: NFS_PORT,
            mount_port: GANESHA_MOUNT_PORT,
            export,
        },
        guard,
    })
}

/// The single server the NFS benchmark compares with Ganesha: `cairn up --embedded` (the store
/// and the gateway in one process).
fn start_cairn(binary: &Path, dir: &Path, netns_name: &str) -> Result<RunningServer> {
    start_cairn_with(binary, dir, netns_name, &["--embedded".to_owned()], START_TIMEOUT)
}

/// `ip netns exec NETNS cairn up --data-dir DIR --nfs-port 2049 --bind 127.0.0.1 --no-portmap
/// EXTRA...` in a new namespace, until its ready line; the endpoint is the first gateway it names.
fn start_cairn_with(
    binary: &Path,
    dir: &Path,
    netns_name: &str,
    extra: &[String],
    timeout: Duration,
) -> Result<RunningServer> {
    let netns = Netns::create(netns_name)?;
    let log = std::env::temp_dir().join(format!("cairn-bench.{}.cairn.log", std::process::id()));
    let log_file = std::fs::File::create(&log)?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns_name])
        .arg(binary)
        .arg("up")
        .arg("--data-dir")
        .arg(dir)
        .args(["--nfs-port", &NFS_PORT.to_string(), "--bind", "127.0.0.1", "--no-portmap"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("cairn stdout")?;
    let mut server = RunningServer {
        endpoint: Endpoint {
            netns: netns_name.to_owned(),
            nfs_port: NFS_PORT,
            mount_port: NFS_PORT,
            export: "/".to_owned(),
        },
        guard: Guard::Cairn { child, log: log.clone(), nodes: Vec::new(), netns },
    };
    // A thread owns stdout for the server's life (so the pipe never fills) and reports the
    // ready line; it ends at EOF, when the server exits.
    let (ready_sender, ready_receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Cairn is ready:") {
                let _ = ready_sender.send(line);
            }
        }
    });
    let start = Instant::now();
    loop {
        match ready_receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(port) = ready_port(&line) {
                    server.endpoint.nfs_port = port;
                    server.endpoint.mount_port = port;
                }
                return Ok(server);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("cairn exited before it was ready; the end of its log:\n{}", log_tail(&log))
            }
        }
        server.check_alive()?;
        if start.elapsed() > timeout {
            bail!("cairn not ready after {timeout:?}; the end of its log:\n{}", log_tail(&log));
        }
    }
}

/// The last lines of Cairn's stderr, for error messages (the file goes when the server does).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The port in a ready line such as `Cairn is ready: nfs=127.0.0.1:2049 ...`; of the first
/// gateway when it lists several (`nfs=127.0.0.1:2049,127.0.0.1:2050,...`).
fn ready_port(line: &str) -> Option<u16> {
    let addresses = line.split_whitespace().find_map(|word| word.strip_prefix("nfs="))?;
    let first = addresses.split(',').next()?;
    first.trim_end_matches(';').rsplit_once(':')?.1.parse().ok()
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        match &mut self.guard {
            Guard::Ganesha { script, netns } => {
                if let Err(error) = run_checked(Command::new(&*script).arg("stop").arg(&*netns)) {
                    eprintln!("cairn-bench: stopping ganesha: {error:#}");
                }
            }
            Guard::Cairn { child, log, netns, .. } => {
                let _ = std::fs::remove_file(&*log);
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet,
                    // so the pid cannot have been reused.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
                let start = Instant::now();
                let mut exited = false;
                while start.elapsed() < STOP_TIMEOUT {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        exited = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if !exited {
                    eprintln!("cairn-bench: cairn did not exit after SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                }
                // Whatever still runs in the namespace (node processes of `cairn up --nodes N`
                // that outlived it) was started by this benchmark: kill it before the namespace
                // and the file system go.
                kill_namespace_processes(&netns.name);
            }
        }
    }
}

/// SIGKILLs every process left in network namespace `name` (only this benchmark's processes run
/// there) and waits up to [`STOP_TIMEOUT`] for them to be gone.
fn kill_namespace_processes(name: &str) {
    let pids = || -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let left = pids();
    if left.is_empty() {
        return;
    }
    eprintln!("cairn-bench: killing {} process(es) left in netns {name}", left.len());
    for pid in &left {
        if let Ok(pid) = libc::pid_t::try_from(*pid) {
            // SAFETY: kill(2) of a process inside the benchmark's own namespace; no memory is
            // involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let start = Instant::now();
    while start.elapsed() < STOP_TIMEOUT && pids().iter().any(|pid| system::process_running(*pid)) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_of_the_ready_line() {
        assert_eq!(ready_port("Cairn is ready: nfs=127.0.0.1:2049 mount=same"), Some(2049));
        assert_eq!(ready_port("Cairn is ready: data=/x nfs=[::1]:3049, exports=/"), Some(3049));
        assert_eq!(ready_port("Cairn is ready"), None);
        assert_eq!(
            ready_port(
                "Cairn is ready: cluster=00ab nodes=3 nfs=127.0.0.1:2049,127.0.0.1:2050,127.0.0.1:2051 cldb=x"
            ),
            Some(2049)
        );
    }
}
