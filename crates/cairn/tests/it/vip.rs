//! Virtual IPs that move between gateways, with real node processes each in its own network
//! namespace (three "hosts" on a bridge that lives in a fourth namespace), a pool of three VIPs,
//! and the Linux kernel client on the same bridge as an ordinary host (nfsvm's bridge mode),
//! mounting through a VIP with default (hard) options.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    Bridged, CAIRN, Netns, Vm, describe_output, require_kernel_client_prerequisites, test_dir,
};

/// The failover test's writer, 512 MiB.
fn vip_write_script() -> String {
    format!("MIB=512\n{}", include_str!("guest/failover_write.sh"))
}
const VIP_READ_SCRIPT: &str = include_str!("guest/vip_read.sh");
const SUBNET: &str = "10.232.0";
const BRIDGE: &str = "br0";
const GUEST_IP: &str = "10.232.0.100/24";
const VIPS: [&str; 3] = ["10.232.0.50", "10.232.0.51", "10.232.0.52"];
const COORD_PORT: u16 = 7400;
const CLDB_PORT: u16 = 7222;
const FILESERVER_PORT: u16 = 5660;
/// How long the cluster may take to hand out every VIP.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn ip(args: &[&str]) -> Output {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(output.status.success(), "ip {} failed: {}", args.join(" "), describe_output(&output));
    output
}

/// Node `i` (0-based): its name, address and MAC.
fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}
fn node_ip(i: usize) -> String {
    format!("{SUBNET}.{}", 11 + i)
}
fn node_mac(i: usize) -> String {
    format!("02:00:00:00:00:{:02x}", 0x11 + i)
}

/// Three node namespaces on a bridge, a node process in each.
pub(crate) struct VipCluster {
    pub dir: tempfile::TempDir,
    pub bridge_ns: Netns,
    pub nodes: Vec<Netns>,
    children: Vec<Option<Child>>,
}

impl VipCluster {
    pub fn start(tag: &str) -> VipCluster {
        require_kernel_client_prerequisites();
        let dir = test_dir(tag);
        let bridge_ns = Netns::create(&format!("{tag}-br"));
        ip(&["-n", &bridge_ns.name, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&["-n", &bridge_ns.name, "link", "set", BRIDGE, "up"]);
        // An address for the ARP checks made from the bridge's side.
        ip(&["-n", &bridge_ns.name, "addr", "add", &format!("{SUBNET}.200/24"), "dev", BRIDGE]);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let ns = Netns::create(&format!("{tag}-n{}", i + 1));
            let outside = format!("vb{}-{}", i + 1, std::process::id() % 100_000);
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
            ip(&["link", "set", &outside, "netns", &bridge_ns.name]);
            ip(&["-n", &bridge_ns.name, "link", "set", &outside, "master", BRIDGE, "up"]);
            ip(&["-n", &ns.name, "link", "set", "eth0", "address", &node_mac(i)]);
            ip(&["-n", &ns.name, "addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"]);
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
            nodes.push(ns);
        }
        let mut cluster = VipCluster { dir, bridge_ns, nodes, children: vec![None, None, None] };
        for i in 0..3 {
            cluster.write_config(i);
            cluster.start_node(i);
        }
        cluster.create_default_volume();
        cluster
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.json", node_name(i)))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", node_name(i)))
    }

    fn write_config(&self, i: usize) {
        let members: Vec<String> = (0..3).map(|j| format!("{}={}:{COORD_PORT}", j + 1, node_ip(j))).collect();
        let config = serde_json::json!({
            "name": node_name(i),
            "data_dir": self.dir.path().join(node_name(i)),
            "bind": node_ip(i),
            "nfs_bind": "0.0.0.0",
            "coord_id": i + 1,
            "coord_port": COORD_PORT,
            "coord_members": members,
            "cldb_port": CLDB_PORT,
            "cldbs": self.cldbs(),
            "fileserver_port": FILESERVER_PORT,
            "nfs_port": 2049,
            "node_timeout_ms": 6000,
        });
        std::fs::write(self.config_path(i), serde_json::to_vec_pretty(&config).expect("JSON"))
            .expect("write node config");
    }

    fn cldbs(&self) -> Vec<String> {
        (0..3).map(|j| format!("{}:{CLDB_PORT}", node_ip(j))).collect()
    }

    /// Starts node `i`'s process (again).
    pub fn start_node(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().append(true).create(true).open(self.log_path(i)).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].name, CAIRN, "node", "start", "--config"])
            .arg(self.config_path(i))
            .env("CAIRN_LOG", "info,cairn_coord=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start a node");
        self.children[i] = Some(child);
    }

    /// `kill -9` of node `i`'s process.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT of node `i`'s processes (its Warden and every service it runs).
    pub fn signal(&self, i: usize, signal: i32) {
        let child = self.children[i].as_ref().expect("node running");
        crate::support::signal_tree(child.id() as i32, signal);
    }

    /// `cairn ARGS --cldb ...` run in node `from`'s namespace.
    pub fn cli(&self, from: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.nodes[from].name, CAIRN])
            .args(args)
            .args(["--cldb", &self.cldbs().join(","), "--timeout", "15"])
            .output()
            .expect("run cairn")
    }

    fn live_node(&self) -> usize {
        (0..3).find(|i| self.children[*i].is_some()).expect("a live node")
    }

    /// Creates the default volume with a copy on every node. `--min-replication 3`: while the
    /// CLDB has not heard from all three nodes (a loaded machine), the creation is refused and
    /// retried, instead of placing the volume on the nodes heard from so far (a one-copy volume
    /// on the node a test then kills stays unavailable until that node returns).
    fn create_default_volume(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let out = self.cli(
                0,
                &[
                    "volume",
                    "create",
                    "default",
                    "--path",
                    "/",
                    "--replication",
                    "3",
                    "--min-replication",
                    "3",
                ],
            );
            let text = describe_output(&out);
            if out.status.success() || text.contains("already exists") {
                return;
            }
            assert!(Instant::now() < deadline, "cannot create the default volume: {text}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Adds the pool of three VIPs once the agents have reported their interfaces.
    pub fn add_pool(&self, extra: &[&str]) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut args = vec!["vip", "add", "--start", VIPS[0], "--end", VIPS[2], "--netmask", "255.255.255.0"];
        args.extend_from_slice(extra);
        loop {
            let out = self.cli(0, &args);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cairn vip add never succeeded: {}\n{}",
                describe_output(&out),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `cairn vip list --json`, as VIP → (node, held).
    pub fn vips(&self) -> BTreeMap<String, (String, bool)> {
        let out = self.cli(self.live_node(), &["vip", "list", "--json"]);
        if !out.status.success() {
            return BTreeMap::new();
        }
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("vip list is JSON");
        list.as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                (
                    v["vip"].as_str().unwrap_or_default().to_owned(),
                    (v["node"].as_str().unwrap_or_default().to_owned(), v["held"].as_bool().unwrap_or(false)),
                )
            })
            .collect()
    }

    /// Waits until every VIP is held, on three different nodes if `spread`; returns VIP → node.
    pub fn wait_all_held(&self, spread: bool) -> BTreeMap<String, String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let vips = self.vips();
            let nodes: std::collections::BTreeSet<&String> = vips.values().map(|(n, _)| n).collect();
            if vips.len() == 3
                && vips.values().all(|(n, held)| !n.is_empty() && *held)
                && (!spread || nodes.len() == 3)
            {
                return vips.into_iter().map(|(v, (n, _))| (v, n)).collect();
            }
            assert!(Instant::now() < deadline, "the VIPs were never all held: {vips:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The VIPs on node `i`'s device, from the kernel.
    pub fn addresses_on(&self, i: usize) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.nodes[i].name, "-4", "-o", "addr", "show"])
            .output()
            .expect("ip addr show");
        let text = String::from_utf8_lossy(&out.stdout);
        VIPS.iter().filter(|v| text.contains(&format!("inet {v}/32"))).map(|v| (*v).to_owned()).collect()
    }

    /// The node index of a node name.
    pub fn index(name: &str) -> usize {
        (0..3).find(|i| node_name(*i) == name).expect("a node of this cluster")
    }

    /// Which node the CLDB master runs on, from the logs (the last election wins).
    pub fn cldb_master(&self) -> Option<usize> {
        let mut last: Option<(usize, usize)> = None;
        for i in 0..3 {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            if let Some(pos) = log.rfind("is master, epoch") {
                let epoch: usize = log[pos + 16..]
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|s| !s.is_empty())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if last.is_none_or(|(_, e)| epoch > e) {
                    last = Some((i, epoch));
                }
            }
        }
        last.map(|(i, _)| i)
    }

    /// The guest on the bridge, mounting `server`.
    pub fn vm(&self, server: &str) -> Vm {
        let mut vm = Vm::new(&self.bridge_ns);
        vm.bridge = Some(Bridged {
            bridge: BRIDGE.to_owned(),
            guest_ip: GUEST_IP.to_owned(),
            server: server.to_owned(),
        });
        vm.memory_mib = Some(2048);
        vm.timeout = Duration::from_secs(900);
        vm
    }

    /// The MACs that answer an ARP request for `vip` on the bridge (asked from the bridge's
    /// namespace, as a client on that segment would), sorted.
    pub fn arp_answers(&self, vip: &str) -> Vec<String> {
        let arping = crate::support::require_command("arping", "apt-get install iputils-arping");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.bridge_ns.name])
            .arg(arping)
            .args(["-c", "3", "-w", "3", "-I", BRIDGE, vip])
            .output()
            .expect("run arping");
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let mut macs: Vec<String> = text
            .split(['[', ']'])
            .filter(|part| part.len() == 17 && part.matches(':').count() == 5)
            .map(str::to_owned)
            .collect();
        macs.sort();
        macs.dedup();
        macs
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for i in 0..3 {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            text.push_str(&format!("--- {} (last lines)\n", node_name(i)));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for VipCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            if let Some(mut child) = self.children[i].take() {
                // SAFETY: kill(2) of our child; a stopped one must be continued to die of SIGTERM.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGCONT);
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("CAIRN_IT_KEEP").is_some() {
            eprintln!("kept {}", self.dir.path().display());
        }
    }
}

/// Picks the VIP held by a node that is not the CLDB master (a CLDB failover is a slower path,
/// measured apart), and returns (VIP, node index).
fn victim(cluster: &VipCluster, held: &BTreeMap<String, String>) -> (String, usize) {
    let master = cluster.cldb_master();
    held.iter()
        .map(|(vip, node)| (vip.clone(), VipCluster::index(node)))
        .find(|(_, i)| Some(*i) != master)
        .expect("a VIP on a node that is not the CLDB master")
}

fn wait_moved(cluster: &VipCluster, vip: &str, from: &str) -> String {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let vips = cluster.vips();
        if let Some((node, true)) = vips.get(vip)
            && node != from
        {
            return node.clone();
        }
        assert!(Instant::now() < deadline, "VIP {vip} never left {from}: {vips:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn killing_the_vip_holder_during_a_512_mib_write_loses_nothing_and_it_returns_to_its_preferred_mac() {
    let mut cluster = VipCluster::start("vipkill");
    cluster.add_pool(&[]);
    let held = cluster.wait_all_held(true);
    let (vip, victim_index) = victim(&cluster, &held);
    let victim_name = node_name(victim_index);
    // The victim's MAC becomes the preferred MAC of its VIP: it must come back there.
    let out = cluster.cli(0, &["vip", "move", "--vip", &vip, "--to-mac", &node_mac(victim_index)]);
    assert!(out.status.success(), "vip move: {}", describe_output(&out));

    let mut guest = cluster.vm(&vip).spawn(&vip_write_script());
    guest.wait_for_line("progress 3", Duration::from_secs(600));
    cluster.kill9(victim_index);
    let killed_at = Instant::now();
    let seen = guest.lines_so_far();
    assert!(
        !seen.iter().any(|line| line == "progress 31"),
        "the kill came after the guest had finished writing; the test proves nothing"
    );
    let to = wait_moved(&cluster, &vip, &victim_name);
    eprintln!("VIP {vip} moved from {victim_name} to {to} {:?} after the kill", killed_at.elapsed());
    assert!(cluster.addresses_on(victim_index).is_empty(), "the killed node's kernel still has a VIP");
    let run = guest.finish();
    run.assert_checks(&["sync-big", "write-big-returned", "size-big", "md5-big"]);
    eprintln!("the guest finished {:?} after the kill", killed_at.elapsed());

    // The dead node comes back: its VIP returns to it (it is the VIP's preferred MAC), and no
    // address is held twice.
    cluster.start_node(victim_index);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let vips = cluster.vips();
        if vips.get(&vip).is_some_and(|(n, h)| *n == victim_name && *h) {
            break;
        }
        assert!(Instant::now() < deadline, "VIP {vip} did not return to {victim_name}: {vips:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..3 {
        for v in cluster.addresses_on(i) {
            *owners.entry(v).or_default() += 1;
        }
    }
    assert!(owners.values().all(|n| *n == 1), "a VIP is on two nodes: {owners:?}");
    // From a client's side of the bridge: exactly one MAC answers ARP for the VIP, the
    // returned node's.
    assert_eq!(cluster.arp_answers(&vip), vec![node_mac(victim_index)]);
}

#[test]
fn a_planned_move_during_a_write_costs_no_error() {
    let cluster = VipCluster::start("vipmove");
    cluster.add_pool(&[]);
    let held = cluster.wait_all_held(true);
    let (vip, from) = victim(&cluster, &held);
    let to = (0..3).find(|i| *i != from).expect("another node");
    let mut guest = cluster.vm(&vip).spawn(&vip_write_script());
    guest.wait_for_line("progress 3", Duration::from_secs(600));
    let out = cluster.cli(to, &["vip", "move", "--vip", &vip, "--to-mac", &node_mac(to)]);
    assert!(out.status.success(), "vip move: {}", describe_output(&out));
    let moved_to = wait_moved(&cluster, &vip, &node_name(from));
    assert_eq!(moved_to, node_name(to));
    assert!(!cluster.addresses_on(from).contains(&vip), "the old holder kept the VIP");
    let run = guest.finish();
    run.assert_checks(&["sync-big", "write-big-returned", "size-big", "md5-big"]);
}

#[test]
fn killing_the_vip_holder_during_a_512_mib_read_returns_the_right_bytes() {
    let mut cluster = VipCluster::start("vipread");
    cluster.add_pool(&[]);
    let held = cluster.wait_all_held(true);
    let (vip, victim_index) = victim(&cluster, &held);
    let mut guest = cluster.vm(&vip).spawn(VIP_READ_SCRIPT);
    guest.wait_for_line("progress 3", Duration::from_secs(600));
    cluster.kill9(victim_index);
    wait_moved(&cluster, &vip, &node_name(victim_index));
    let run = guest.finish();
    run.assert_checks(&["write-big", "read-big-returned", "size-back", "md5-back"]);
}

#[test]
fn a_frozen_holder_drops_its_vip_before_anyone_else_claims_it() {
    let cluster = VipCluster::start("vipfreeze");
    cluster.add_pool(&[]);
    let held = cluster.wait_all_held(true);
    let (vip, frozen) = victim(&cluster, &held);
    cluster.signal(frozen, libc::SIGSTOP);
    let stopped_at = Instant::now();
    // Watch the kernels of all three nodes every 20 ms: the frozen node's kernel must have
    // deleted the VIP before any other node has it.
    let mut gone_at = None;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let (claimed_at, by) = loop {
        let on_frozen = cluster.addresses_on(frozen).contains(&vip);
        if !on_frozen && gone_at.is_none() {
            gone_at = Some(stopped_at.elapsed());
        }
        let other = (0..3).filter(|i| *i != frozen).find(|i| cluster.addresses_on(*i).contains(&vip));
        if let Some(other) = other {
            assert!(!on_frozen, "VIP {vip} is on the frozen node and on {} at once", node_name(other));
            break (stopped_at.elapsed(), other);
        }
        assert!(Instant::now() < deadline, "VIP {vip} never moved off the frozen node\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    let gone_at = gone_at.expect("gone before claimed");
    eprintln!(
        "frozen {}: VIP gone from its kernel after {gone_at:?}, claimed by {} after {claimed_at:?}",
        node_name(frozen),
        node_name(by),
    );
    assert!(gone_at < claimed_at);
    cluster.signal(frozen, libc::SIGCONT);
}

#[test]
fn bad_vip_pools_are_refused_with_a_reason_and_change_nothing() {
    let cluster = VipCluster::start("vipbad");
    cluster.add_pool(&[]);
    cluster.wait_all_held(true);
    let refused = |args: &[&str], why: &str| {
        let out = cluster.cli(0, args);
        let text = describe_output(&out);
        assert!(!out.status.success(), "cairn {} succeeded", args.join(" "));
        assert!(text.contains(why), "cairn {}: no {why:?} in {text}", args.join(" "));
    };
    refused(&["vip", "add", "--start", "10.232.0.52", "--end", "10.232.0.60", "--netmask", "24"], "overlaps");
    refused(&["vip", "add", "--start", &node_ip(1), "--netmask", "24"], "address of a node");
    refused(&["vip", "add", "--start", "10.99.0.5", "--netmask", "24"], "--any-subnet");
    refused(
        &["vip", "add", "--start", "10.232.0.70", "--netmask", "24", "--macs", "02:00:00:00:00:99"],
        "no node has",
    );
    refused(&["vip", "add", "--start", "10.232.0.70", "--netmask", "255.0.255.0"], "not a netmask");
    refused(&["vip", "move", "--vip", VIPS[0], "--to-mac", "02:00:00:00:00:99"], "no node has");
    let out = cluster.cli(0, &["vip", "add", "--start", "10.99.0.5", "--netmask", "24", "--any-subnet"]);
    assert!(out.status.success(), "--any-subnet: {}", describe_output(&out));
    let vips = cluster.vips();
    assert_eq!(vips.len(), 4, "the refused pools changed something: {vips:?}");
}
