//! Shared helpers of the real-client tests: prerequisites, the `cairn up` process, network
//! namespaces, runs of the kernel client in an `nfsvm` guest, and libnfs-utils invocations.
//!
//! Every helper fails with a message saying what is missing instead of skipping: a test that
//! silently does nothing is worse than a red one.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for this test binary.
pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// How long `cairn up` may take to print its ready line.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server may take to exit after SIGTERM.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at starting a server on a fresh free port when the last one was taken meanwhile.
const FREE_PORT_ATTEMPTS_MAX: usize = 5;
/// How long to wait for a server to log its reload after SIGHUP.
const SIGHUP_RELOAD_WAIT: Duration = Duration::from_secs(5);
/// Lines of a server log shown when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// The prelude of every guest script: `check`, `check_eq`, `check_fails`, `drop_caches`, `finish`.
pub const GUEST_LIB: &str = include_str!("guest/lib.sh");

/// The line every guest script prints last, from `finish`, when it ran to its end.
pub const GUEST_COMPLETED: &str = "script-completed";

// ------------------------------------------------------------------------------------------
// Prerequisites

/// Panics unless this process runs as root (network namespaces, taps, nfsvm need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the real-client tests must run as root (network namespaces, tap devices, nfsvm): \
         run them as root, e.g. `sudo -E cargo nextest run -p cairn`"
    );
}

/// The full path of an executable found on PATH, or a panic naming what to install.
pub fn require_command(name: &str, how_to_get_it: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| panic!("`{name}` is not on PATH: {how_to_get_it}"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        candidate.metadata().is_ok_and(|metadata| {
            use std::os::unix::fs::PermissionsExt;
            metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
        })
    })
}

/// Panics unless libnfs-utils (`nfs-ls`, `nfs-cp`, `nfs-cat`) is installed.
pub fn require_libnfs_utils() {
    for tool in ["nfs-ls", "nfs-cp", "nfs-cat"] {
        require_command(tool, "install libnfs-utils (`apt-get install libnfs-utils`)");
    }
}

/// The repository root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The nfsvm script, `../shared/nfsvm/nfsvm` relative to the repository root (or `$NFSVM`).
pub fn nfsvm_path() -> PathBuf {
    let path = match std::env::var_os("NFSVM") {
        Some(path) => PathBuf::from(path),
        None => repo_root().join("../shared/nfsvm/nfsvm"),
    };
    assert!(
        path.is_file(),
        "nfsvm not found at {} (the kernel-client tests boot a VM with it; see \
         /work/shared/nfsvm/README.md, or set $NFSVM to its path)",
        path.display()
    );
    path.canonicalize().expect("canonical path of nfsvm")
}

/// Everything the kernel-client tests need: root, `ip netns`, qemu through nfsvm.
pub fn require_kernel_client_prerequisites() -> PathBuf {
    require_root();
    require_command("ip", "install iproute2 (`apt-get install iproute2`)");
    let netns = Command::new("ip").args(["netns", "list"]).output().expect("run `ip netns list`");
    assert!(
        netns.status.success(),
        "`ip netns list` failed ({}): network namespaces are unavailable here: {}",
        netns.status,
        String::from_utf8_lossy(&netns.stderr)
    );
    require_command("md5sum", "install coreutils");
    nfsvm_path()
}

// ------------------------------------------------------------------------------------------
// Temporary folders and small host-side utilities

/// A fresh temporary folder for one test (removed at the end unless `CAIRN_IT_KEEP` is set).
pub fn test_dir(tag: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("cairn-it-{tag}-"))
        .tempdir()
        .expect("create a temporary folder");
    if std::env::var_os("CAIRN_IT_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

/// A port that was free on 127.0.0.1 a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address of a bound listener").port()
}

/// The port options of a test `cairn up --nodes N` (N ≤ 9): NFS, coord, CLDB, file server and
/// (with `console`) console ports, each kind a run of consecutive ports starting 6,100 after the
/// previous kind, at a random base. Every one is below 32768, out of the kernel's ephemeral range
/// (32768-60999), where an outgoing connection or a service's port-0 listener (its metrics
/// endpoint) could hold it when the cluster starts, or restarts a service.
pub fn cluster_port_args(console: bool) -> Vec<String> {
    let base = port_run_base();
    let kinds: &[&str] = if console {
        &["--nfs-port", "--coord-port", "--cldb-port", "--fileserver-port", "--console-port"]
    } else {
        &["--nfs-port", "--coord-port", "--cldb-port", "--fileserver-port"]
    };
    let mut args = Vec::new();
    for (k, flag) in (0u16..).zip(kinds) {
        args.push((*flag).to_owned());
        args.push((base + k * 6_100).to_string());
    }
    args
}

/// The first of a run of at most 9 ports below the kernel's ephemeral range, picked at random
/// among 1,000 runs 6 apart; `base + k * 6_100` (k < 5) are other such runs.
pub fn port_run_base() -> u16 {
    2_000 + (free_port() % 1_000) * 6
}

/// `size` bytes from /dev/urandom.
pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut bytes = vec![0; size];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes
}

/// The md5 of a host file, from `md5sum`.
pub fn md5_of_file(path: &Path) -> String {
    let output = Command::new("md5sum").arg(path).output().expect("run md5sum");
    assert!(output.status.success(), "md5sum {} failed: {}", path.display(), describe_output(&output));
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

/// Exit status, stdout and stderr of a finished command, for failure messages.
pub fn describe_output(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits for `child` up to `timeout`; None when it is still running.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(error) => panic!("waiting for pid {}: {error}", child.id()),
        }
    }
}

/// Prefixes `command` with `ip netns exec NS` when a namespace is given.
fn in_netns(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

// ------------------------------------------------------------------------------------------
// Network namespaces

/// A network namespace made for one test; deleted on drop (kill the processes inside first).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `cairn-TAG-PID` (unique per test process; nextest runs every test in its own
    /// process) with its loopback up. A leftover of the same name is deleted first.
    pub fn create(tag: &str) -> Netns {
        let name = format!("cairn-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let add = Command::new("ip").args(["netns", "add", &name]).output().expect("run ip netns add");
        assert!(add.status.success(), "ip netns add {name} failed: {}", describe_output(&add));
        let netns = Netns { name };
        let up = Command::new("ip")
            .args(["-n", &netns.name, "link", "set", "lo", "up"])
            .output()
            .expect("run ip link set lo up");
        assert!(up.status.success(), "ip -n {} link set lo up failed: {}", netns.name, describe_output(&up));
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.name]).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("ip netns del {} failed: {}", self.name, describe_output(&output)),
            Err(error) => eprintln!("ip netns del {}: {error}", self.name),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The server under test

/// How to run `cairn up`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Run inside this network namespace (`ip netns exec`), else in the test's own.
    pub netns: Option<String>,
    pub bind: IpAddr,
    pub nfs_port: u16,
    /// `--exports FILE`; None uses the default `<data-dir>/exports`.
    pub exports: Option<PathBuf>,
    /// Run the portmapper on port 111 (else `--no-portmap`).
    pub portmap: bool,
    /// `--coord-port`: where the node's one-member coord quorum listens (default 5181, fine inside
    /// a namespace of its own; on the shared loopback each server needs its own).
    pub coord_port: Option<u16>,
    /// More arguments of `cairn up` (e.g. `--nodes 3`).
    pub extra_args: Vec<String>,
}

impl ServerConfig {
    /// A server listening on the wildcard address, port 2049, inside `netns`.
    pub fn in_netns(netns: &Netns, data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            netns: Some(netns.name.clone()),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            nfs_port: 2049,
            exports: None,
            portmap: false,
            coord_port: None,
            extra_args: Vec::new(),
        }
    }
}

static SERVER_INCARNATIONS: AtomicUsize = AtomicUsize::new(0);

/// A running `cairn up`. Dropping it stops it (SIGTERM, then SIGKILL) and, when the test is
/// failing, prints the end of its log.
pub struct CairnServer {
    pub config: ServerConfig,
    /// The `Cairn is ready:` line.
    pub ready_line: String,
    /// The `nfs=IP:PORT` of the ready line.
    pub nfs_address: SocketAddr,
    child: Option<Child>,
    /// stdout lines (after the ready line the reader thread keeps appending).
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_log: PathBuf,
    stdout_reader: Option<JoinHandle<()>>,
}

impl CairnServer {
    /// Starts `cairn up` and waits for its ready line; panics with its log when it does not come.
    pub fn start(config: ServerConfig) -> CairnServer {
        CairnServer::try_start(config).unwrap_or_else(|message| panic!("{message}"))
    }

    /// Starts a server on 127.0.0.1 at a free port, without a portmapper, choosing another port
    /// when the chosen one was taken before the server bound it.
    pub fn start_on_loopback(data_dir: PathBuf, exports: Option<PathBuf>) -> CairnServer {
        let mut failures = String::new();
        for _ in 0..FREE_PORT_ATTEMPTS_MAX {
            let config = ServerConfig {
                data_dir: data_dir.clone(),
                netns: None,
                bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
                nfs_port: free_port(),
                exports: exports.clone(),
                portmap: false,
                coord_port: Some(free_port()),
                extra_args: Vec::new(),
            };
            match CairnServer::try_start(config) {
                Ok(server) => return server,
                Err(message) if message.contains("in use") => failures.push_str(&message),
                Err(message) => panic!("{message}"),
            }
        }
        panic!("cairn up found no free port in {FREE_PORT_ATTEMPTS_MAX} attempts:\n{failures}");
    }

    fn try_start(config: ServerConfig) -> Result<CairnServer, String> {
        let incarnation = SERVER_INCARNATIONS.fetch_add(1, Ordering::Relaxed);
        let log_dir = config.data_dir.parent().unwrap_or(Path::new("/tmp"));
        let stderr_log = log_dir.join(format!("cairn-up-{incarnation}.stderr"));
        let stderr_file = std::fs::File::create(&stderr_log).expect("create the server's stderr log");
        let mut command = in_netns(config.netns.as_deref(), CAIRN);
        command
            .arg("up")
            .arg("--data-dir")
            .arg(&config.data_dir)
            .arg("--bind")
            .arg(config.bind.to_string())
            .arg("--nfs-port")
            .arg(config.nfs_port.to_string());
        if !config.portmap {
            command.arg("--no-portmap");
        }
        if let Some(exports) = &config.exports {
            command.arg("--exports").arg(exports);
        }
        if let Some(port) = config.coord_port {
            command.arg("--coord-port").arg(port.to_string());
        }
        // One process (the store and the gateway) unless the test asks for a cluster.
        if !config.extra_args.iter().any(|arg| arg == "--nodes") {
            command.arg("--embedded");
        }
        command.args(&config.extra_args);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr_file);
        let mut child = command.spawn().map_err(|error| format!("cannot start {CAIRN}: {error}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = channel();
        let stdout_reader = {
            let stdout_lines = Arc::clone(&stdout_lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    stdout_lines.lock().expect("stdout lines lock").push(line.clone());
                    let _ = sender.send(line);
                }
            })
        };
        let mut server = CairnServer {
            config,
            ready_line: String::new(),
            nfs_address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            child: Some(child),
            stdout_lines,
            stderr_log,
            stdout_reader: Some(stdout_reader),
        };
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        loop {
            match receiver.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("Cairn is ready:") => {
                    server.ready_line = line;
                    break;
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                // stdout closed: only the exit check below can end the wait now.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(50)),
            }
            if let Some(status) = server.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                let message = format!(
                    "cairn up ({:?}) exited with {status} before it was ready; log:\n{}",
                    server.config,
                    server.log_tail()
                );
                server.child = None;
                return Err(message);
            }
            if Instant::now() > deadline {
                let message = format!(
                    "cairn up ({:?}) printed no `Cairn is ready:` line within {:?}; log:\n{}",
                    server.config,
                    SERVER_READY_TIMEOUT,
                    server.log_tail()
                );
                return Err(message);
            }
        }
        let nfs = server
            .ready_line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("nfs="))
            // Several nodes: `nfs=A,B,C`; the first is node 1's gateway.
            .and_then(|addresses| addresses.split(',').next())
            .map(|address| address.trim_end_matches([',', ';', ')']))
            .ok_or_else(|| format!("the ready line has no nfs=IP:PORT: {:?}", server.ready_line))?;
        server.nfs_address = nfs.parse().map_err(|error| {
            format!("the ready line's nfs={nfs} is not IP:PORT ({error}): {:?}", server.ready_line)
        })?;
        if server.nfs_address.port() != server.config.nfs_port {
            return Err(format!(
                "cairn up --nfs-port {} reports nfs={} in its ready line {:?}",
                server.config.nfs_port, server.nfs_address, server.ready_line
            ));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// The address clients on this machine use (the configured bind address, or 127.0.0.1 for
    /// the wildcard address), with the NFS port.
    pub fn client_address(&self) -> SocketAddr {
        let ip = if self.config.bind.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.config.bind
        };
        SocketAddr::new(ip, self.config.nfs_port)
    }

    /// The end of stdout and stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        let stdout = self.stdout_lines.lock().map(|lines| lines.clone()).unwrap_or_default();
        let skip = stdout.len().saturating_sub(LOG_TAIL_LINES);
        let _ = writeln!(text, "--- cairn up stdout (last {LOG_TAIL_LINES} lines) ---");
        for line in &stdout[skip..] {
            let _ = writeln!(text, "{line}");
        }
        let stderr = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
        let _ = writeln!(
            text,
            "--- cairn up stderr {} (last {LOG_TAIL_LINES} lines) ---",
            self.stderr_log.display()
        );
        for line in &lines[skip..] {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    /// SIGKILL: a crash. Waits until the process is gone.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        send_signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        self.join_stdout_reader();
    }

    /// SIGTERM, then waits for the exit; panics when it takes longer than SERVER_STOP_TIMEOUT.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        send_signal(child.id(), libc::SIGTERM);
        let status = wait_with_timeout(&mut child, SERVER_STOP_TIMEOUT);
        let Some(status) = status else {
            send_signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "cairn up did not exit within {SERVER_STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                self.log_tail()
            );
        };
        self.join_stdout_reader();
        status
    }

    /// Starts a new incarnation with the same configuration (data dir, port, namespace), after
    /// `kill9` or `stop`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs the old process stopped or killed first");
        let restarted = CairnServer::start(self.config.clone());
        *self = restarted;
    }

    /// Like `restart`, with another exports file.
    pub fn restart_with_exports(&mut self, exports: Option<PathBuf>) {
        self.config.exports = exports;
        self.restart();
    }

    /// SIGHUP: reload the exports file. A signal has no answer, so this waits (up to
    /// SIGHUP_RELOAD_WAIT) for one more "exports reloaded" line in the server's log; when none
    /// comes it goes on anyway, and the test's own checks show whether the rules changed.
    pub fn reload_exports_with_sighup(&self) {
        let reloads = || {
            std::fs::read_to_string(&self.stderr_log).unwrap_or_default().matches("exports reloaded").count()
        };
        let before = reloads();
        send_signal(self.pid(), libc::SIGHUP);
        let deadline = Instant::now() + SIGHUP_RELOAD_WAIT;
        while reloads() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `cairn exports reload --data-dir DIR` (in the server's namespace); panics unless it succeeds.
    pub fn reload_exports_with_cli(&self) {
        let output = in_netns(self.config.netns.as_deref(), CAIRN)
            .args(["exports", "reload", "--data-dir"])
            .arg(&self.config.data_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run cairn exports reload");
        assert!(
            output.status.success(),
            "cairn exports reload --data-dir {} failed: {}\nserver log:\n{}",
            self.config.data_dir.display(),
            describe_output(&output),
            self.log_tail()
        );
    }

    fn join_stdout_reader(&mut self) {
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for CairnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), libc::SIGTERM);
            if wait_with_timeout(&mut child, Duration::from_secs(10)).is_none() {
                send_signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

// ------------------------------------------------------------------------------------------
// The kernel client in an nfsvm guest

/// One way of booting the nfsvm guest against a server in a network namespace (tap mode).
#[derive(Clone, Debug)]
pub struct Vm {
    pub netns: String,
    pub nfs_port: u16,
    pub mount_port: u16,
    pub export: String,
    /// Extra mount options (`-o`).
    pub mount_options: Option<String>,
    pub memory_mib: Option<u32>,
    /// `--add SRC[=DST]` arguments.
    pub additions: Vec<String>,
    /// nfsvm's own timeout (it exits 124 when it is reached).
    pub timeout: Duration,
    /// Bridge mode: the guest is a host on this bridge of `netns`, with this address
    /// (`A/P`), and mounts `server` (e.g. a virtual IP).
    pub bridge: Option<Bridged>,
}

/// A guest on a bridge, as an ordinary host (nfsvm `--bridge`).
#[derive(Clone, Debug)]
pub struct Bridged {
    pub bridge: String,
    pub guest_ip: String,
    pub server: String,
}

impl Vm {
    /// The guest for a server on port 2049 (NFS and MOUNT) in `netns`, mounting `/`, with
    /// util-linux's `setpriv` added (to run commands as other users).
    pub fn new(netns: &Netns) -> Vm {
        let setpriv = require_command("setpriv", "install util-linux");
        Vm {
            netns: netns.name.clone(),
            nfs_port: 2049,
            mount_port: 2049,
            export: "/".to_owned(),
            mount_options: None,
            memory_mib: None,
            additions: vec![setpriv.display().to_string()],
            timeout: Duration::from_secs(400),
            bridge: None,
        }
    }

    fn command(&self, script: &str) -> Command {
        let mut command = Command::new(nfsvm_path());
        command
            .args(["--netns", &self.netns])
            .args(["--nfs-port", &self.nfs_port.to_string()])
            .args(["--mount-port", &self.mount_port.to_string()])
            .args(["--export", &self.export])
            .args(["--timeout", &self.timeout.as_secs().to_string()])
            // Timings on stderr, among them "guest booted" when the guest's init starts.
            .arg("-v");
        if let Some(options) = &self.mount_options {
            command.args(["--mount-opts", options]);
        }
        if let Some(bridged) = &self.bridge {
            command
                .args(["--bridge", &bridged.bridge])
                .args(["--guest-ip", &bridged.guest_ip])
                .args(["--server", &bridged.server]);
        }
        if let Some(memory) = self.memory_mib {
            command.args(["--mem", &memory.to_string()]);
        }
        for addition in &self.additions {
            command.args(["--add", addition]);
        }
        command.arg("--").arg(format!("{GUEST_LIB}\n{script}"));
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    /// Boots the guest, runs `script` (after the prelude guest/lib.sh) and waits for the end.
    pub fn run(&self, script: &str) -> VmRun {
        self.spawn(script).finish()
    }

    /// Boots the guest in the background; its output lines can be awaited while it runs.
    ///
    /// Under the emulated CPU a guest very rarely hangs in early boot (CI once saw one stop
    /// after the kernel's "Probing EDD" line and sit out its whole timeout). A guest that has
    /// not reached its init within [`GUEST_BOOT_TIMEOUT`] is killed and booted again, up to
    /// [`GUEST_BOOT_ATTEMPTS`] times; nothing of the test's script has run by then.
    pub fn spawn(&self, script: &str) -> RunningVm {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let (mut vm, booted) = self.spawn_once(script, started);
            match booted.recv_timeout(GUEST_BOOT_TIMEOUT) {
                // Booted, or nfsvm ended (its stderr closed) without booting: the run reports it.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return vm,
                Err(RecvTimeoutError::Timeout) if attempt >= GUEST_BOOT_ATTEMPTS => return vm,
                Err(RecvTimeoutError::Timeout) => {
                    vm.kill();
                    let run = vm.finish_inner();
                    eprintln!(
                        "nfsvm guest did not boot within {GUEST_BOOT_TIMEOUT:?} (attempt {attempt} of \
                         {GUEST_BOOT_ATTEMPTS}); booting it again. Its run:\n{}",
                        run.describe()
                    );
                    attempt += 1;
                }
            }
        }
    }

    /// One boot; the receiver gets a message when the guest's init has started.
    fn spawn_once(&self, script: &str, started: Instant) -> (RunningVm, Receiver<()>) {
        let mut child = self.command(script).spawn().expect("start nfsvm");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, receiver) = channel();
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_reader = {
            let stdout_lines = Arc::clone(&stdout_lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    stdout_lines.lock().expect("stdout lines lock").push(line.clone());
                    let _ = sender.send(line);
                }
            })
        };
        let (booted_sender, booted) = channel();
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("nfsvm: [") && line.ends_with("] guest booted") {
                    let _ = booted_sender.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let vm = RunningVm {
            child: Some(child),
            lines: receiver,
            stdout_lines,
            readers: Some((stdout_reader, stderr_reader)),
            started,
        };
        (vm, booted)
    }
}

/// How long a guest may take to reach its init (about 2 s on an idle machine) before it is
/// taken as hung and booted again.
const GUEST_BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const GUEST_BOOT_ATTEMPTS: u32 = 3;

/// A guest that is still running.
pub struct RunningVm {
    child: Option<Child>,
    lines: Receiver<String>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    readers: Option<(JoinHandle<()>, JoinHandle<String>)>,
    started: Instant,
}

impl RunningVm {
    /// Waits for an output line starting with `prefix`; panics after `timeout` or when the
    /// guest ends first.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no guest line starting with {prefix:?} within {timeout:?}; output so far:\n{}",
                        self.output()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let run = self.finish_inner();
                    panic!(
                        "the guest ended before printing a line starting with {prefix:?}:\n{}",
                        run.describe()
                    )
                }
            }
        }
    }

    /// The guest's output lines received so far.
    pub fn lines_so_far(&self) -> Vec<String> {
        self.stdout_lines.lock().map(|lines| lines.clone()).unwrap_or_default()
    }

    fn output(&self) -> String {
        self.lines_so_far().join("\n")
    }

    /// Waits for the guest to end.
    pub fn finish(mut self) -> VmRun {
        self.finish_inner()
    }

    /// Kills qemu and everything else below nfsvm, and nfsvm itself if it does not end then.
    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            for pid in descendants(child.id()) {
                send_signal(pid, libc::SIGKILL);
            }
            if wait_with_timeout(child, Duration::from_secs(10)).is_none() {
                send_signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }

    fn finish_inner(&mut self) -> VmRun {
        let status = self.child.take().map(|mut child| child.wait().expect("wait for nfsvm"));
        let stderr = match self.readers.take() {
            Some((stdout_reader, stderr_reader)) => {
                let _ = stdout_reader.join();
                stderr_reader.join().unwrap_or_default()
            }
            None => String::new(),
        };
        VmRun {
            exit_code: status.and_then(|status| status.code()),
            output: self.output(),
            stderr,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for RunningVm {
    /// A guest still running here belongs to a failing test: stop qemu at once. nfsvm runs it
    /// under `timeout`, which makes its own process group, so the whole tree below nfsvm is
    /// killed; nfsvm itself then ends and removes its tap device.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every process below `root` (children, grandchildren, ...), from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(after_comm) = stat.rfind(')').map(|end| &stat[end + 1..]) else { continue };
        if let Some(ppid) = after_comm.split_whitespace().nth(1).and_then(|ppid| ppid.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        index += 1;
    }
    found.remove(0);
    found
}

/// The result of one guest boot.
#[derive(Debug)]
pub struct VmRun {
    /// nfsvm's exit code: the script's, or 111 when the mount failed, 124 on timeout, 125 when
    /// the VM died.
    pub exit_code: Option<i32>,
    /// The guest's output (stdout and stderr merged).
    pub output: String,
    /// nfsvm's own stderr.
    pub stderr: String,
    pub elapsed: Duration,
}

impl VmRun {
    pub fn describe(&self) -> String {
        format!(
            "nfsvm exit code {:?} after {:.1} s\n--- guest output ---\n{}\n--- nfsvm stderr ---\n{}",
            self.exit_code,
            self.elapsed.as_secs_f64(),
            self.output,
            self.stderr
        )
    }

    /// Asserts that the script ran to its end with exit code 0, that no check failed, and that
    /// every name in `expected` printed `ok NAME`.
    pub fn assert_checks(&self, expected: &[&str]) {
        let failures: Vec<&str> = self.output.lines().filter(|line| line.starts_with("FAIL ")).collect();
        let passed: Vec<&str> = self.output.lines().filter_map(|line| line.strip_prefix("ok ")).collect();
        let missing: Vec<&&str> = expected.iter().filter(|name| !passed.contains(name)).collect();
        assert!(
            failures.is_empty()
                && missing.is_empty()
                && passed.contains(&GUEST_COMPLETED)
                && self.exit_code == Some(0),
            "guest checks failed:\n  failed: {failures:#?}\n  missing: {missing:?}\n  completed: {}\n{}",
            passed.contains(&GUEST_COMPLETED),
            self.describe()
        );
        eprintln!("guest run: {} checks ok in {:.1} s", passed.len(), self.elapsed.as_secs_f64());
        for info in self.output.lines().filter(|line| line.starts_with("info: ")) {
            eprintln!("  guest {info}");
        }
    }

    /// The values of the lines `KEY NAME VALUE`, as (NAME, VALUE) pairs.
    pub fn keyed_values(&self, key: &str) -> Vec<(String, String)> {
        self.output
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(key)).then_some(())?;
                Some((words.next()?.to_owned(), words.next()?.to_owned()))
            })
            .collect()
    }
}

// ------------------------------------------------------------------------------------------
// A test's server in its own namespace, with the guest to reach it

/// A network namespace, a `cairn up` inside it on the wildcard address, port 2049, and the
/// nfsvm guest configuration that mounts it. Dropped in field order: server, then namespace,
/// then the data.
pub struct KernelFixture {
    pub server: CairnServer,
    pub vm: Vm,
    pub netns: Netns,
    pub dir: tempfile::TempDir,
}

impl KernelFixture {
    /// Default exports (`<data-dir>/exports`, created by the server as `/ *(rw,no_root_squash)`).
    pub fn start(tag: &str) -> KernelFixture {
        KernelFixture::start_with(tag, |_| {})
    }

    /// `configure` may change the server configuration, e.g. point `exports` at a file it writes
    /// into `config.data_dir.parent()`.
    pub fn start_with(tag: &str, configure: impl FnOnce(&mut ServerConfig)) -> KernelFixture {
        require_kernel_client_prerequisites();
        let dir = test_dir(tag);
        let netns = Netns::create(tag);
        let mut config = ServerConfig::in_netns(&netns, dir.path().join("data"));
        configure(&mut config);
        let server = CairnServer::start(config);
        let vm = Vm::new(&netns);
        KernelFixture { server, vm, netns, dir }
    }

    /// Runs a libnfs-utils tool inside the server's namespace; panics unless it succeeds.
    pub fn libnfs_ok(&self, tool: &str, args: &[&str]) -> Output {
        libnfs_ok(Some(&self.netns.name), tool, args)
    }

    /// The `nfs://` URL of the file `path` (absolute) on this fixture's server, for libnfs-utils
    /// run inside its namespace.
    pub fn file_url(&self, path: &str) -> String {
        nfs_file_url(self.server.client_address(), path, "")
    }
}

// ------------------------------------------------------------------------------------------
// libnfs-utils

/// `nfs://IP/PATH?nfsport=P&mountport=P&version=3` plus `extra` (e.g. `&uid=1000&gid=1000`).
pub fn nfs_url(address: SocketAddr, path: &str, extra: &str) -> String {
    let port = address.port();
    format!("nfs://{}{path}?nfsport={port}&mountport={port}&version=3{extra}", address.ip())
}

/// The URL of a file for `nfs-cp`/`nfs-cat`, which MOUNT the part before the last `/`: a file
/// at the export root (`/name`) becomes `nfs://IP//name`, so that libnfs mounts `/` (with
/// `nfs://IP/name` it would MOUNT an empty path, which servers refuse, ganesha as well).
pub fn nfs_file_url(address: SocketAddr, path: &str, extra: &str) -> String {
    let at_root = path.strip_prefix('/').is_some_and(|name| !name.contains('/'));
    if at_root { nfs_url(address, &format!("/{path}"), extra) } else { nfs_url(address, path, extra) }
}

/// Runs `nfs-ls`, `nfs-cp` or `nfs-cat`, inside `netns` when given.
pub fn run_libnfs(netns: Option<&str>, tool: &str, args: &[&str]) -> Output {
    require_libnfs_utils();
    in_netns(netns, tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("run {tool}: {error}"))
}

/// Runs a libnfs-utils tool and panics with its output unless it succeeds.
pub fn libnfs_ok(netns: Option<&str>, tool: &str, args: &[&str]) -> Output {
    let output = run_libnfs(netns, tool, args);
    assert!(output.status.success(), "{tool} {args:?} failed: {}", describe_output(&output));
    output
}

/// `pid` and every process descending from it (read from /proc), parents first.
pub(crate) fn process_tree(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name may hold spaces and parentheses: the fields follow the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if let Some(parent) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) {
            parents.push((child, parent));
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        next += 1;
    }
    tree
}

/// Sends `signal` to `pid` and all its descendants (a node's Warden and its services: a frozen
/// node is every one of its processes frozen).
pub(crate) fn signal_tree(pid: i32, signal: libc::c_int) {
    for member in process_tree(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; the processes are this test's.
        unsafe { libc::kill(member, signal) };
    }
}
