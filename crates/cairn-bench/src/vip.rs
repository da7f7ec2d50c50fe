//! `cairn-bench vip`: how long an application stalls when the NFS gateway behind its virtual IP
//! dies (`kill -9`) or hands the VIP over on purpose (a planned move), with Cairn's own VIP
//! management and, in the same namespaces with the same client, with keepalived (Debian's
//! package) moving a plain VIP between the same gateways. See `docs/benchmarks.md`.
//!
//! The lab: three node namespaces on a bridge that lives in a fourth, each running one
//! `cairn node start` (coord member, CLDB, file server, NFS gateway on the wildcard address); the
//! client is the Linux kernel client in an nfsvm guest on the same bridge, mounting through a VIP
//! with default (hard) options, and running `cairn-stall-probe`: 4 KiB `O_DIRECT` writes each read
//! back and checked, one after the other. The stall of one event is the longest time between two
//! completed operations from the event until the client runs smoothly again, as the guest's own
//! clock measures it; errors the application saw and blocks that did not read back as written
//! are counted.
//!
//! Events alternate, kill then planned move, `--kills` and `--moves` of each:
//! - Cairn, kill: `kill -9` of the node process holding the client's VIP; it is started again
//!   afterwards and the lab settles (every VIP held, one per node, the client smooth again).
//! - Cairn, planned move: `cairn vip move --vip VIP --to-mac MAC` to the next node.
//! - keepalived, kill: `kill -9` of that node's process and of its keepalived, and the VIP is
//!   deleted from the node's interface, as if the machine had gone with it (a SIGKILLed
//!   keepalived leaves its address behind, and a dead machine answers no ARP).
//! - keepalived, planned move: SIGTERM to the holder's keepalived, which hands over at once
//!   (a priority-0 advertisement) and drops the VIP; it is started again afterwards.
//!
//! keepalived runs the configuration most deployments use: VRRP with `advert_int 1`, every
//! instance `state BACKUP` with `nopreempt` (so a node coming back does not take the VIP back),
//! priorities 150/100/50, the VIP as a /32 on `eth0`, and no health-check script (the process
//! dies with its node here).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;

use crate::json::{self, Json};
use crate::netns::{self, Netns};
use crate::progress;
use crate::report::{median, now_utc};
use crate::system::{check_interrupted, run_checked};

const SUBNET: &str = "10.233.0";
const BRIDGE: &str = "br0";
const NODES: usize = 3;
/// The pool; the client mounts the first. keepalived moves only the first.
const VIPS: [&str; 3] = ["10.233.0.50", "10.233.0.51", "10.233.0.52"];
const GUEST_IP: &str = "10.233.0.100/24";
/// The bridge namespace's own address: the probe's control connection comes here.
const CONTROL_IP: &str = "10.233.0.200";
const CONTROL_PORT: u16 = 7999;
const COORD_PORT: u16 = 7400;
const CLDB_PORT: u16 = 7222;
const FILESERVER_PORT: u16 = 5660;
const NFS_PORT: u16 = 2049;
/// How long the lab may take to start, or to settle after an event.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Consecutive smooth seconds of the probe that end an event: seconds whose longest gap between
/// two completed operations is under [`SMOOTH_MS`] (an emulated guest on a busy machine has
/// gaps of tens of ms now and then).
const SMOOTH_TICKS: u32 = 3;
const SMOOTH_MS: f64 = 250.0;
/// Seconds of smooth running measured before the first event, for the baseline.
const BASELINE_SECONDS: u64 = 10;
/// Targets (issue 5): median stall on a kill, on a planned move.
const KILL_TARGET_MS: f64 = 1000.0;
const MOVE_TARGET_MS: f64 = 300.0;

#[derive(clap::Args, Debug)]
pub struct VipArgs {
    /// Node kills per system.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Planned moves per system.
    #[arg(long, default_value_t = 5)]
    moves: usize,
    /// Measure only one system.
    #[arg(long, value_enum)]
    only: Option<HaSystem>,
    /// The probe reports a gap between two completed operations when it is at least this long.
    #[arg(long, default_value_t = 50)]
    threshold_ms: u64,
    /// Print the results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cairn: crate::CairnBinary,
    /// The folder holding `nfsvm`.
    #[arg(long, default_value = "/work/shared/nfsvm")]
    nfsvm_dir: PathBuf,
    /// Where the nodes' data and logs go (a temporary folder).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Keep that folder (data, node logs, keepalived logs, the guest's transcript).
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HaSystem {
    Cairn,
    Keepalived,
}

impl HaSystem {
    fn name(self) -> &'static str {
        match self {
            Self::Cairn => "cairn",
            Self::Keepalived => "keepalived",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    Kill,
    Move,
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Move => "move",
        }
    }
}

/// One measured event.
#[derive(Debug, Clone)]
struct Event {
    kind: EventKind,
    /// The node that held the client's VIP, and the one that holds it after.
    from: usize,
    to: Option<usize>,
    /// Longest gap between two completed operations, from the event until smooth again.
    stall_ms: f64,
    /// The VIP holder was also the CLDB master (a Cairn kill then includes a CLDB failover).
    cldb_master: bool,
    /// Longest gap while the lab settled again afterwards (the node restarting, VIPs rebalanced).
    recovery_ms: f64,
}

/// What one system's run produced.
#[derive(Debug, Default)]
struct Figures {
    events: Vec<Event>,
    /// Longest gap over the quiet seconds before the first event.
    baseline_ms: f64,
    errors: Vec<String>,
    mismatches: usize,
    /// The probe's last line (`done ...`), if it ended cleanly.
    done: Option<String>,
    failure: Option<String>,
}

pub fn run(args: &VipArgs) -> Result<()> {
    crate::ensure_root()?;
    ensure!(args.kills + args.moves >= 1, "nothing to measure: --kills and --moves are both 0");
    ensure!(args.threshold_ms >= 1, "--threshold-ms must be at least 1");
    let systems = match args.only {
        Some(system) => vec![system],
        None => vec![HaSystem::Cairn, HaSystem::Keepalived],
    };
    let cairn = args.cairn.resolve()?;
    let probe = probe_binary(args.cairn.no_build)?;
    let nfsvm = args.nfsvm_dir.join("nfsvm");
    ensure!(nfsvm.exists(), "{} not found", nfsvm.display());
    require_tool("arping", "iputils-arping")?;
    if systems.contains(&HaSystem::Keepalived) {
        require_tool("keepalived", "keepalived")?;
    }
    let dir = tempfile::Builder::new()
        .prefix("cairn-bench-vip.")
        .tempdir_in(&args.work_dir)
        .with_context(|| format!("creating a temporary folder in {}", args.work_dir.display()))?;

    let mut results = Vec::new();
    for system in systems {
        check_interrupted()?;
        let busy = crate::system::busy_cpus_elsewhere();
        progress(&format!("[{}] starting 3 nodes; CPUs busy elsewhere: {busy:.2}", system.name()));
        let setup =
            Setup { cairn: &cairn, probe: &probe, nfsvm: &nfsvm, dir: &dir.path().join(system.name()) };
        let figures = bench_system(args, system, &setup);
        if let Some(failure) = &figures.failure {
            check_interrupted()?;
            progress(&format!("FAILED {}: {failure}", system.name()));
        }
        results.push((system, busy, figures));
    }
    if args.keep {
        progress(&format!("kept {}", dir.keep().display()));
    }
    let command = crate::command_line();
    if args.json {
        println!("{}", to_json(&command, args, &results));
    } else {
        print!("{}", to_table(&command, args, &results));
    }
    let failed = results.iter().filter(|(_, _, f)| f.failure.is_some()).count();
    ensure!(failed == 0, "{failed} system run(s) failed (see above)");
    Ok(())
}

/// `cairn-stall-probe`, next to this program (same package), built when missing.
fn probe_binary(no_build: bool) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let folder = exe.parent().context("no folder for the current executable")?;
    let probe = folder.join("cairn-stall-probe");
    if !probe.exists() && !no_build {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "-p", "cairn-bench", "--bin", "cairn-stall-probe"]).current_dir(&workspace);
        if folder.ends_with("release") {
            command.arg("--release");
        }
        progress("building cairn-stall-probe");
        ensure!(command.status().context("running cargo")?.success(), "building cairn-stall-probe failed");
    }
    ensure!(probe.exists(), "{} not found (cargo build -p cairn-bench)", probe.display());
    Ok(probe)
}

/// Fails with the Debian package to install when `tool` is not on the PATH.
fn require_tool(tool: &str, package: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|output| output.status.success());
    ensure!(found, "{tool} not found: apt-get install {package}");
    Ok(())
}

struct Setup<'a> {
    cairn: &'a Path,
    probe: &'a Path,
    nfsvm: &'a Path,
    dir: &'a Path,
}

fn bench_system(args: &VipArgs, system: HaSystem, setup: &Setup<'_>) -> Figures {
    let mut figures = Figures::default();
    if let Err(error) = bench_system_inner(args, system, setup, &mut figures) {
        figures.failure = Some(format!("{error:#}"));
    }
    figures
}

fn bench_system_inner(
    args: &VipArgs,
    system: HaSystem,
    setup: &Setup<'_>,
    figures: &mut Figures,
) -> Result<()> {
    std::fs::create_dir_all(setup.dir)?;
    let mut lab = Lab::start(system, setup.cairn, setup.dir)?;
    lab.create_volume()?;
    match system {
        HaSystem::Cairn => {
            lab.add_pool()?;
            lab.wait_until("every VIP held, one per node", || lab.cairn_spread())?;
        }
        HaSystem::Keepalived => {
            for i in 0..NODES {
                lab.start_keepalived(i)?;
            }
            lab.wait_until("keepalived to hold the VIP", || Ok(lab.kernel_holder(VIPS[0]).is_some()))?;
        }
    }
    let threshold = Duration::from_millis(args.threshold_ms);
    progress(&format!("[{}] booting the client (nfsvm on the bridge, mounting {})", system.name(), VIPS[0]));
    let mut guest = Guest::boot(&lab, setup, threshold)?;
    let result = run_events(args, &mut lab, &mut guest, figures);
    let transcript = setup.dir.join("guest.log");
    let ended = guest.finish(&transcript);
    figures.errors = guest.errors.clone();
    figures.mismatches = guest.mismatches;
    result?;
    figures.done = Some(ended?);
    Ok(())
}

fn run_events(args: &VipArgs, lab: &mut Lab, guest: &mut Guest, figures: &mut Figures) -> Result<()> {
    let name = lab.system.name();
    let baseline = guest.observe(Duration::from_secs(60), || Ok(true))?;
    // The quiet seconds: whatever the probe saw while the lab was idle.
    let quiet = guest.observe_for(Duration::from_secs(BASELINE_SECONDS))?;
    figures.baseline_ms = baseline.max(quiet);
    progress(&format!(
        "[{name}] baseline: longest gap {:.1} ms over {BASELINE_SECONDS} s",
        figures.baseline_ms
    ));
    let mut kinds = Vec::new();
    for i in 0..args.kills.max(args.moves) {
        if i < args.kills {
            kinds.push(EventKind::Kill);
        }
        if i < args.moves {
            kinds.push(EventKind::Move);
        }
    }
    for (n, kind) in kinds.into_iter().enumerate() {
        check_interrupted()?;
        let event = match kind {
            EventKind::Kill => kill_event(lab, guest)?,
            EventKind::Move => move_event(lab, guest)?,
        };
        progress(&format!(
            "[{name}] {} {}: n{} -> {}: stall {:.0} ms{}; settling again: {:.0} ms",
            kind.name(),
            n + 1,
            event.from + 1,
            event.to.map_or_else(|| "?".to_owned(), |to| format!("n{}", to + 1)),
            event.stall_ms,
            if event.cldb_master { " (the holder was the CLDB master)" } else { "" },
            event.recovery_ms,
        ));
        figures.events.push(event);
    }
    Ok(())
}

fn kill_event(lab: &mut Lab, guest: &mut Guest) -> Result<Event> {
    let vip = VIPS[0];
    let from = lab.holder(vip)?.context("no node holds the client's VIP")?;
    let cldb_master = lab.cldb_master() == Some(from);
    lab.kill_node(from);
    if lab.system == HaSystem::Keepalived {
        lab.kill_keepalived(from, libc::SIGKILL);
        // The machine's address dies with it.
        let _ = Command::new("ip")
            .args(["-n", &lab.nodes[from].name, "addr", "del", &format!("{vip}/32"), "dev", "eth0"])
            .output();
    }
    let stall_ms = guest.observe(SETTLE_TIMEOUT, || Ok(lab.holder(vip)?.is_some_and(|h| h != from)))?;
    let to = lab.holder(vip)?;
    lab.start_node(from)?;
    if lab.system == HaSystem::Keepalived {
        lab.start_keepalived(from)?;
    }
    let recovery_ms = guest.observe(SETTLE_TIMEOUT, || lab.recovered(from))?;
    Ok(Event { kind: EventKind::Kill, from, to, stall_ms, cldb_master, recovery_ms })
}

fn move_event(lab: &mut Lab, guest: &mut Guest) -> Result<Event> {
    let vip = VIPS[0];
    let from = lab.holder(vip)?.context("no node holds the client's VIP")?;
    let cldb_master = lab.cldb_master() == Some(from);
    let (stall_ms, recovery_ms, to) = match lab.system {
        HaSystem::Cairn => {
            let to = (from + 1) % NODES;
            let out = lab.cli(to, &["vip", "move", "--vip", vip, "--to-mac", &node_mac(to)])?;
            ensure!(out.status.success(), "cairn vip move: {}", describe(&out));
            let stall = guest.observe(SETTLE_TIMEOUT, || Ok(lab.holder(vip)? == Some(to)))?;
            (stall, 0.0, Some(to))
        }
        HaSystem::Keepalived => {
            lab.kill_keepalived(from, libc::SIGTERM);
            let stall = guest.observe(SETTLE_TIMEOUT, || Ok(lab.holder(vip)?.is_some_and(|h| h != from)))?;
            let to = lab.holder(vip)?;
            lab.start_keepalived(from)?;
            let recovery = guest.observe(SETTLE_TIMEOUT, || lab.recovered(from))?;
            (stall, recovery, to)
        }
    };
    Ok(Event { kind: EventKind::Move, from, to, stall_ms, cldb_master, recovery_ms })
}

// ---------------------------------------------------------------------------------------------
// The lab: namespaces, nodes, keepalived

fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn node_ip(i: usize) -> String {
    format!("{SUBNET}.{}", 11 + i)
}

fn node_mac(i: usize) -> String {
    format!("02:00:00:00:01:{:02x}", 0x11 + i)
}

fn describe(output: &Output) -> String {
    format!(
        "{} {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn ip(args: &[&str]) -> Result<()> {
    run_checked(Command::new("ip").args(args)).map(drop)
}

struct Lab {
    system: HaSystem,
    cairn: PathBuf,
    dir: PathBuf,
    nodes: Vec<Netns>,
    bridge: Netns,
    processes: Vec<Option<Child>>,
    keepalived: Vec<Option<Child>>,
}

impl Lab {
    fn start(system: HaSystem, cairn: &Path, dir: &Path) -> Result<Self> {
        let prefix = format!("cbvip-{}", std::process::id());
        let bridge = Netns::create(&format!("{prefix}-br"))?;
        ip(&["-n", &bridge.name, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &bridge.name, "link", "set", BRIDGE, "up"])?;
        ip(&["-n", &bridge.name, "addr", "add", &format!("{CONTROL_IP}/24"), "dev", BRIDGE])?;
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let ns = Netns::create(&format!("{prefix}-n{}", i + 1))?;
            let outside = format!("cbv{}-{}", i + 1, std::process::id() % 100_000);
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns.name])?;
            ip(&["link", "set", &outside, "netns", &bridge.name])?;
            ip(&["-n", &bridge.name, "link", "set", &outside, "master", BRIDGE, "up"])?;
            ip(&["-n", &ns.name, "link", "set", "eth0", "address", &node_mac(i)])?;
            ip(&["-n", &ns.name, "addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"])?;
            nodes.push(ns);
        }
        let mut lab = Self {
            system,
            cairn: cairn.to_owned(),
            dir: dir.to_owned(),
            nodes,
            bridge,
            processes: (0..NODES).map(|_| None).collect(),
            keepalived: (0..NODES).map(|_| None).collect(),
        };
        for i in 0..NODES {
            lab.write_config(i)?;
            lab.start_node(i)?;
        }
        Ok(lab)
    }

    fn cldbs(&self) -> Vec<String> {
        (0..NODES).map(|j| format!("{}:{CLDB_PORT}", node_ip(j))).collect()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", node_name(i)))
    }

    fn write_config(&self, i: usize) -> Result<()> {
        let members: Vec<String> =
            (0..NODES).map(|j| json::quote(&format!("{}={}:{COORD_PORT}", j + 1, node_ip(j)))).collect();
        let cldbs: Vec<String> = self.cldbs().iter().map(|c| json::quote(c)).collect();
        let data_dir = self.dir.join(node_name(i));
        let config = format!(
            "{{\"name\": {}, \"data_dir\": {}, \"bind\": {}, \"nfs_bind\": \"0.0.0.0\", \"vip_agent\": {}, \
             \"coord_id\": {}, \"coord_port\": {COORD_PORT}, \"coord_members\": [{}], \"cldb_port\": {CLDB_PORT}, \
             \"cldbs\": [{}], \"fileserver_port\": {FILESERVER_PORT}, \"nfs_port\": {NFS_PORT}, \
             \"node_timeout_ms\": 6000}}\n",
            json::quote(&node_name(i)),
            json::quote(&data_dir.to_string_lossy()),
            json::quote(&node_ip(i)),
            self.system == HaSystem::Cairn,
            i + 1,
            members.join(", "),
            cldbs.join(", "),
        );
        let path = self.dir.join(format!("{}.json", node_name(i)));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new().append(true).create(true).open(self.log_path(i))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].name])
            .arg(&self.cairn)
            .args(["node", "start", "--config"])
            .arg(self.dir.join(format!("{}.json", node_name(i))))
            .env("CAIRN_LOG", "info,cairn_coord=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a node")?;
        self.processes[i] = Some(child);
        Ok(())
    }

    /// `kill -9` of node `i`'s process.
    fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.processes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start_keepalived(&mut self, i: usize) -> Result<()> {
        let priority = [150, 100, 50][i];
        let config = format!(
            "global_defs {{\n  router_id {name}\n}}\n\
             vrrp_instance cairn {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  \
             priority {priority}\n  advert_int 1\n  virtual_ipaddress {{\n    {vip}/32 dev eth0\n  }}\n}}\n",
            name = node_name(i),
            vip = VIPS[0],
        );
        let base = self.dir.join(format!("keepalived-{}", node_name(i)));
        let conf = base.with_extension("conf");
        std::fs::write(&conf, config)?;
        let log = std::fs::OpenOptions::new().append(true).create(true).open(base.with_extension("log"))?;
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.nodes[i].name,
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--vrrp",
            ])
            .arg(format!("--use-file={}", conf.display()))
            .arg(format!("--pid={}", base.with_extension("pid").display()))
            .arg(format!("--vrrp_pid={}", base.with_extension("vrrp.pid").display()))
            .arg(format!("--checkers_pid={}", base.with_extension("checkers.pid").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a kill reaches keepalived's VRRP child too.
            .process_group(0);
        self.keepalived[i] = Some(command.spawn().context("starting keepalived")?);
        Ok(())
    }

    /// Sends `signal` to node `i`'s keepalived (its whole process group) and waits for it.
    fn kill_keepalived(&mut self, i: usize, signal: i32) {
        if let Some(mut child) = self.keepalived[i].take() {
            let group = child.id() as i32;
            // SAFETY: kill(2) of the process group of our own child.
            unsafe { libc::kill(-group, signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// `cairn ARGS --cldb ...` run in node `from`'s namespace.
    fn cli(&self, from: usize, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.nodes[from].name])
            .arg(&self.cairn)
            .args(args)
            .args(["--cldb", &self.cldbs().join(","), "--timeout", "15"])
            .output()
            .context("running cairn")
    }

    fn live_node(&self) -> usize {
        (0..NODES).find(|i| self.processes[*i].is_some()).unwrap_or(0)
    }

    /// Polls `done` every 300 ms until it holds, for at most [`SETTLE_TIMEOUT`].
    fn wait_until(&self, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            check_interrupted()?;
            if done()? {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "waited {SETTLE_TIMEOUT:?} for {what}; see the logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn create_volume(&self) -> Result<()> {
        self.wait_until("the default volume to be created", || {
            // Three copies, refused (and retried) until the CLDB has heard from all three nodes.
            let args: Vec<&str> =
                "volume create default --path / --replication 3 --min-replication 3".split(' ').collect();
            let out = self.cli(0, &args)?;
            Ok(out.status.success() || describe(&out).contains("already exists"))
        })
    }

    fn add_pool(&self) -> Result<()> {
        self.wait_until("the VIP pool to be added", || {
            let args = ["vip", "add", "--start", VIPS[0], "--end", VIPS[2], "--netmask", "255.255.255.0"];
            Ok(self.cli(0, &args)?.status.success())
        })
    }

    /// `cairn vip list --json`: VIP → (node index, held).
    fn cairn_vips(&self) -> Result<BTreeMap<String, (Option<usize>, bool)>> {
        let out = self.cli(self.live_node(), &["vip", "list", "--json"])?;
        if !out.status.success() {
            return Ok(BTreeMap::new());
        }
        let list = json::parse(&String::from_utf8_lossy(&out.stdout))?;
        let mut vips = BTreeMap::new();
        let mut i = 0;
        while let Some(v) = list.index(i) {
            i += 1;
            let vip = v.get("vip").and_then(Json::as_str).unwrap_or_default().to_owned();
            let node = v.get("node").and_then(Json::as_str).unwrap_or_default();
            let held = matches!(v.get("held"), Some(Json::Bool(true)));
            vips.insert(vip, ((0..NODES).find(|n| node_name(*n) == node), held));
        }
        Ok(vips)
    }

    /// Every VIP held, on three different nodes.
    fn cairn_spread(&self) -> Result<bool> {
        let vips = self.cairn_vips()?;
        let nodes: std::collections::BTreeSet<usize> =
            vips.values().filter_map(|(n, held)| n.filter(|_| *held)).collect();
        Ok(vips.len() == VIPS.len() && nodes.len() == NODES && vips.values().all(|(_, held)| *held))
    }

    /// The node holding `vip`: Cairn's view (held, as reported by its agent), or for keepalived
    /// the node whose kernel has the address.
    fn holder(&self, vip: &str) -> Result<Option<usize>> {
        match self.system {
            HaSystem::Cairn => {
                Ok(self.cairn_vips()?.get(vip).and_then(|(node, held)| node.filter(|_| *held)))
            }
            HaSystem::Keepalived => Ok(self.kernel_holder(vip)),
        }
    }

    /// The node whose kernel has `vip` as an address (on any device).
    fn kernel_holder(&self, vip: &str) -> Option<usize> {
        (0..NODES).find(|i| {
            Command::new("ip")
                .args(["-n", &self.nodes[*i].name, "-4", "-o", "addr", "show"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(&format!("inet {vip}/32")))
        })
    }

    /// Node `i` is back: Cairn has every VIP held, one per node; with keepalived, the node's
    /// NFS gateway accepts connections and its keepalived runs.
    fn recovered(&mut self, i: usize) -> Result<bool> {
        match self.system {
            HaSystem::Cairn => self.cairn_spread(),
            HaSystem::Keepalived => {
                let running =
                    self.keepalived[i].as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)));
                let address: SocketAddr = format!("{}:{NFS_PORT}", node_ip(i)).parse()?;
                Ok(running && netns::connect(&self.bridge.name, address).is_ok())
            }
        }
    }

    /// Which node runs the CLDB master, from the node logs (the latest epoch wins).
    fn cldb_master(&self) -> Option<usize> {
        let mut last: Option<(usize, u64)> = None;
        for i in 0..NODES {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let Some(position) = log.rfind("is master, epoch ") else { continue };
            let epoch: u64 = log[position + 17..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|digits| digits.parse().ok())
                .unwrap_or(0);
            if last.is_none_or(|(_, e)| epoch > e) {
                last = Some((i, epoch));
            }
        }
        last.map(|(i, _)| i)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill_keepalived(i, libc::SIGTERM);
            if let Some(mut child) = self.processes[i].take() {
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The namespaces go with their Netns guards (nodes, then the bridge).
    }
}

// ---------------------------------------------------------------------------------------------
// The client: the kernel NFS client in an nfsvm guest, running cairn-stall-probe

struct Guest {
    child: Option<Child>,
    lines: Receiver<String>,
    control: TcpStream,
    transcript: Vec<String>,
    errors: Vec<String>,
    mismatches: usize,
    stderr_path: PathBuf,
}

impl Guest {
    fn boot(lab: &Lab, setup: &Setup<'_>, threshold: Duration) -> Result<Self> {
        let control_address: SocketAddr = format!("{CONTROL_IP}:{CONTROL_PORT}").parse()?;
        let listener = netns::run_in(&lab.bridge.name, move || {
            TcpListener::bind(control_address).with_context(|| format!("binding {control_address}"))
        })?;
        listener.set_nonblocking(true)?;
        let stderr_path = setup.dir.join("nfsvm.err");
        let probe_command = format!(
            "cairn-stall-probe --file /mnt/stall-probe --control {CONTROL_IP}:{CONTROL_PORT} --threshold-ms {}",
            threshold.as_millis()
        );
        let mut child = Command::new(setup.nfsvm)
            .args([
                "--netns",
                &lab.bridge.name,
                "--bridge",
                BRIDGE,
                "--guest-ip",
                GUEST_IP,
                "--server",
                VIPS[0],
            ])
            .args([
                "--nfs-port",
                &NFS_PORT.to_string(),
                "--mount-port",
                &NFS_PORT.to_string(),
                "--export",
                "/",
            ])
            .args(["--timeout", "14400", "--add"])
            .arg(setup.probe)
            .args(["--", &probe_command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting nfsvm")?;
        let stdout = child.stdout.take().context("nfsvm stdout")?;
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let control = loop {
            check_interrupted()?;
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error).context("accepting the probe's control connection"),
            }
            if let Ok(Some(status)) = child.try_wait() {
                let output: Vec<String> = lines.try_iter().collect();
                bail!(
                    "the guest ended ({status}) before the probe connected:\n{}\n{}",
                    output.join("\n"),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            ensure!(Instant::now() < deadline, "the probe never connected back to {control_address}");
            std::thread::sleep(Duration::from_millis(100));
        };
        control.set_nonblocking(false)?;
        Ok(Self {
            child: Some(child),
            lines,
            control,
            transcript: Vec::new(),
            errors: Vec::new(),
            mismatches: 0,
            stderr_path,
        })
    }

    /// Reads the probe's lines until `settled` holds and the probe has then run smoothly for
    /// [`SMOOTH_TICKS`] seconds; returns the longest gap between two completed operations seen
    /// meanwhile (in ms).
    fn observe(&mut self, timeout: Duration, mut settled: impl FnMut() -> Result<bool>) -> Result<f64> {
        let start = Instant::now();
        let mut longest: f64 = 0.0;
        let mut smooth = 0;
        let mut is_settled = false;
        let mut next_check = start;
        loop {
            check_interrupted()?;
            ensure!(
                start.elapsed() < timeout,
                "the client did not run smoothly again within {timeout:?}; its last lines:\n{}",
                self.tail()
            );
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next(), words.next()) {
                        (Some("gap"), Some(ms), _) => {
                            let ms: f64 = ms.parse().unwrap_or(f64::INFINITY);
                            longest = longest.max(ms);
                            if ms >= SMOOTH_MS {
                                smooth = 0;
                            }
                        }
                        (Some("tick"), Some(_), Some(ms)) => {
                            let ms: f64 = ms.parse().unwrap_or(f64::INFINITY);
                            longest = longest.max(ms);
                            smooth = if ms < SMOOTH_MS && is_settled { smooth + 1 } else { 0 };
                        }
                        (Some("error"), _, _) => {
                            self.errors.push(line.clone());
                            smooth = 0;
                        }
                        (Some("mismatch"), _, _) => self.mismatches += 1,
                        (Some("done"), _, _) => bail!("the probe ended early: {line}"),
                        _ => {}
                    }
                    self.transcript.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the guest ended; its last lines:\n{}", self.tail())
                }
            }
            if !is_settled && Instant::now() >= next_check {
                is_settled = settled()?;
                next_check = Instant::now() + Duration::from_millis(300);
            }
            if is_settled && smooth >= SMOOTH_TICKS {
                return Ok(longest);
            }
        }
    }

    /// The longest gap over the next `duration` (nothing else going on).
    fn observe_for(&mut self, duration: Duration) -> Result<f64> {
        let end = Instant::now() + duration;
        let mut longest: f64 = 0.0;
        while Instant::now() < end {
            match self.lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["gap", ms, ..] | ["tick", _, ms] => {
                            longest = longest.max(ms.parse().unwrap_or(f64::NAN))
                        }
                        ["error", ..] => self.errors.push(line.clone()),
                        ["mismatch", ..] => self.mismatches += 1,
                        _ => {}
                    }
                    self.transcript.push(line);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the guest ended; its last lines:\n{}", self.tail())
                }
            }
        }
        Ok(longest)
    }

    fn tail(&self) -> String {
        let from = self.transcript.len().saturating_sub(20);
        self.transcript[from..].join("\n")
    }

    /// Asks the probe to stop, waits for its `done` line and the guest's end; writes the
    /// transcript to `path`. Returns the `done` line.
    fn finish(&mut self, path: &Path) -> Result<String> {
        let _ = self.control.write_all(b"stop\n");
        let mut done = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => {
                    if line.starts_with("mismatch") {
                        self.mismatches += 1;
                    } else if line.starts_with("error") {
                        self.errors.push(line.clone());
                    } else if line.starts_with("done") {
                        done = Some(line.clone());
                    }
                    self.transcript.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.child.take().map(|mut child| {
            let _ = child.kill();
            child.wait()
        });
        let _ = std::fs::write(path, self.transcript.join("\n") + "\n");
        let done = done.with_context(|| {
            format!(
                "the probe never finished ({status:?}); last lines:\n{}\n{}",
                self.tail(),
                std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            )
        })?;
        Ok(done)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // nfsvm runs qemu under `timeout`, in a process group of its own; killing nfsvm's
            // children ends qemu, and nfsvm then removes its tap.
            let _ = Command::new("pkill").args(["-KILL", "-P", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

struct Summary {
    count: usize,
    min: Option<f64>,
    median: Option<f64>,
    max: Option<f64>,
}

fn summarize(figures: &Figures, kind: EventKind) -> Summary {
    let values: Vec<f64> = figures.events.iter().filter(|e| e.kind == kind).map(|e| e.stall_ms).collect();
    Summary {
        count: values.len(),
        min: values.iter().copied().reduce(f64::min),
        median: median(&values),
        max: values.iter().copied().reduce(f64::max),
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn to_table(command: &str, args: &VipArgs, results: &[(HaSystem, f64, Figures)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cairn-bench vip, {}", now_utc());
    let _ = writeln!(out, "command: {command}");
    let _ = writeln!(
        out,
        "client stall (ms): the longest time between two completed 4 KiB O_DIRECT operations of the kernel \
         client (hard mount, through the VIP), from the event until it runs smoothly again; \
         {} kills and {} planned moves per system",
        args.kills, args.moves
    );
    let _ = writeln!(
        out,
        "{:<11} {:>5} {:>5} {:>6} {:>7} {:>6}  {:>11}  app errors / bad blocks",
        "system", "event", "count", "min", "median", "max", "baseline"
    );
    for (system, busy, figures) in results {
        for kind in [EventKind::Kill, EventKind::Move] {
            let s = summarize(figures, kind);
            let _ = writeln!(
                out,
                "{:<11} {:>5} {:>5} {:>6} {:>7} {:>6}  {:>11}  {} / {}",
                system.name(),
                kind.name(),
                s.count,
                ms(s.min),
                ms(s.median),
                ms(s.max),
                format!("{:.0}", figures.baseline_ms),
                figures.errors.len(),
                figures.mismatches,
            );
        }
        let _ = writeln!(out, "  {} (CPUs busy elsewhere at start: {busy:.2}):", system.name());
        for event in &figures.events {
            let _ = writeln!(
                out,
                "    {} n{} -> {}: {:.0} ms{}{}",
                event.kind.name(),
                event.from + 1,
                event.to.map_or_else(|| "?".to_owned(), |to| format!("n{}", to + 1)),
                event.stall_ms,
                if event.cldb_master { ", holder was the CLDB master" } else { "" },
                if event.recovery_ms > 0.0 {
                    format!("; then {:.0} ms while the node came back", event.recovery_ms)
                } else {
                    String::new()
                },
            );
        }
        for error in &figures.errors {
            let _ = writeln!(out, "    application error: {error}");
        }
        if let Some(done) = &figures.done {
            let _ = writeln!(out, "    probe: {done}");
        }
        if let Some(failure) = &figures.failure {
            let _ = writeln!(out, "    FAILED: {failure}");
        }
    }
    let cairn = results.iter().find(|(s, _, _)| *s == HaSystem::Cairn).map(|(_, _, f)| f);
    let keepalived = results.iter().find(|(s, _, _)| *s == HaSystem::Keepalived).map(|(_, _, f)| f);
    if let Some(cairn) = cairn {
        let kill = summarize(cairn, EventKind::Kill).median;
        let moved = summarize(cairn, EventKind::Move).median;
        let verdict = |value: Option<f64>, target: f64| match value {
            Some(v) if v <= target => "PASS",
            Some(_) => "FAIL",
            None => "n/a",
        };
        let _ = writeln!(
            out,
            "target: cairn median stall on a kill <= {KILL_TARGET_MS:.0} ms: {} {}",
            ms(kill),
            verdict(kill, KILL_TARGET_MS)
        );
        let _ = writeln!(
            out,
            "target: cairn median stall on a planned move <= {MOVE_TARGET_MS:.0} ms: {} {}",
            ms(moved),
            verdict(moved, MOVE_TARGET_MS)
        );
        let clean = cairn.errors.is_empty() && cairn.mismatches == 0 && cairn.failure.is_none();
        let _ = writeln!(
            out,
            "target: 0 errors seen by the application: {} errors, {} bad blocks {}",
            cairn.errors.len(),
            cairn.mismatches,
            if clean { "PASS" } else { "FAIL" }
        );
        if let Some(keepalived) = keepalived {
            for kind in [EventKind::Kill, EventKind::Move] {
                let ours = summarize(cairn, kind).median;
                let theirs = summarize(keepalived, kind).median;
                if let (Some(ours), Some(theirs)) = (ours, theirs) {
                    let _ = writeln!(
                        out,
                        "keepalived / cairn median stall on a {}: {:.1}x",
                        kind.name(),
                        theirs / ours.max(1.0)
                    );
                }
            }
        }
    }
    out
}

fn to_json(command: &str, args: &VipArgs, results: &[(HaSystem, f64, Figures)]) -> String {
    let parameters = format!(
        "{{\"kills\": {}, \"moves\": {}, \"threshold_ms\": {}}}",
        args.kills, args.moves, args.threshold_ms
    );
    let mut out = json::report_header(command, &parameters);
    out.push_str("  \"systems\": {\n");
    let systems: Vec<String> = results
        .iter()
        .map(|(system, busy, figures)| {
            let events: Vec<String> = figures
                .events
                .iter()
                .map(|e| {
                    format!(
                        "{{\"kind\": {}, \"from\": {}, \"to\": {}, \"stall_ms\": {}, \"cldb_master\": {}, \"recovery_ms\": {}}}",
                        json::quote(e.kind.name()),
                        json::quote(&node_name(e.from)),
                        e.to.map_or_else(|| "null".to_owned(), |to| json::quote(&node_name(to))),
                        json::number(e.stall_ms),
                        e.cldb_master,
                        json::number(e.recovery_ms),
                    )
                })
                .collect();
            let summaries: Vec<String> = [EventKind::Kill, EventKind::Move]
                .iter()
                .map(|kind| {
                    let s = summarize(figures, *kind);
                    format!(
                        "{}: {{\"count\": {}, \"min_ms\": {}, \"median_ms\": {}, \"max_ms\": {}}}",
                        json::quote(kind.name()),
                        s.count,
                        json::optional(s.min),
                        json::optional(s.median),
                        json::optional(s.max)
                    )
                })
                .collect();
            let errors: Vec<String> = figures.errors.iter().map(|e| json::quote(e)).collect();
            format!(
                "    {}: {{\"busy_cpus\": {}, \"baseline_ms\": {}, {}, \"errors\": [{}], \"bad_blocks\": {}, \
                 \"probe\": {}, \"failure\": {}, \"events\": [{}]}}",
                json::quote(system.name()),
                json::number(*busy),
                json::number(figures.baseline_ms),
                summaries.join(", "),
                errors.join(", "),
                figures.mismatches,
                figures.done.as_deref().map_or_else(|| "null".to_owned(), json::quote),
                figures.failure.as_deref().map_or_else(|| "null".to_owned(), json::quote),
                events.join(", ")
            )
        })
        .collect();
    out.push_str(&systems.join(",\n"));
    out.push_str("\n  }\n}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, stall_ms: f64) -> Event {
        Event { kind, from: 0, to: Some(1), stall_ms, cldb_master: false, recovery_ms: 0.0 }
    }

    #[test]
    fn summaries_take_min_median_and_max_of_one_kind() {
        let figures = Figures {
            events: vec![
                event(EventKind::Kill, 900.0),
                event(EventKind::Move, 80.0),
                event(EventKind::Kill, 300.0),
                event(EventKind::Kill, 2000.0),
            ],
            ..Figures::default()
        };
        let kills = summarize(&figures, EventKind::Kill);
        assert_eq!(
            (kills.count, kills.min, kills.median, kills.max),
            (3, Some(300.0), Some(900.0), Some(2000.0))
        );
        let moves = summarize(&figures, EventKind::Move);
        assert_eq!((moves.count, moves.median), (1, Some(80.0)));
    }

    #[test]
    fn the_table_judges_the_targets() {
        let figures = Figures {
            events: vec![event(EventKind::Kill, 1500.0), event(EventKind::Move, 100.0)],
            ..Figures::default()
        };
        let args = VipArgs {
            kills: 1,
            moves: 1,
            only: None,
            threshold_ms: 50,
            json: false,
            cairn: crate::CairnBinary { cairn_bin: None, no_build: true },
            nfsvm_dir: PathBuf::new(),
            work_dir: PathBuf::new(),
            keep: false,
        };
        let table = to_table("cairn-bench vip", &args, &[(HaSystem::Cairn, 0.0, figures)]);
        assert!(table.contains("on a kill <= 1000 ms: 1500 FAIL"), "{table}");
        assert!(table.contains("on a planned move <= 300 ms: 100 PASS"), "{table}");
        assert!(table.contains("0 bad blocks PASS"), "{table}");
    }
}
