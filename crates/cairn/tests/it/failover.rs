//! Failover under load, with real node processes: `kill -9` of the node holding the default
//! volume's master copy while the kernel client writes 256 MiB through another node's gateway,
//! then the killed node comes back and resyncs; `kill -9` of the CLDB master and of the coord
//! leader while a userspace client copies a file through a surviving gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    CAIRN, CairnServer, Netns, ServerConfig, Vm, libnfs_ok, md5_of_file, nfs_file_url,
    require_kernel_client_prerequisites, test_dir,
};

const FAILOVER_WRITE_SCRIPT: &str = include_str!("guest/failover_write.sh");
/// How long a killed node may take to be back among the volume's replicas once restarted.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(180);

/// `cairn volume info default --json` of the cluster whose data directory is `data`, run in
/// `netns` if given: the volume's placement (`master`, `replicas`, `resyncing`, `epoch`).
pub(crate) fn default_placement(netns: Option<&Netns>, data: &Path) -> serde_json::Value {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &netns.name, CAIRN]);
            command
        }
        None => Command::new(CAIRN),
    };
    let output = command
        .args(["volume", "info", "default", "--json", "--data-dir"])
        .arg(data)
        .output()
        .expect("run cairn volume info");
    assert!(output.status.success(), "cairn volume info failed: {}", String::from_utf8_lossy(&output.stderr));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).expect("volume info is JSON");
    info["volume"]["placement"].clone()
}

fn node_names(data: &Path) -> Vec<(String, u32)> {
    let cluster: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("cluster.json")).expect("cluster.json"))
            .expect("cluster.json is JSON");
    cluster["nodes"]
        .as_array()
        .expect("nodes in cluster.json")
        .iter()
        .map(|node| {
            (node["name"].as_str().expect("name").to_owned(), node["pid"].as_u64().expect("pid") as u32)
        })
        .collect()
}

/// A node restarted by the test, stopped when dropped.
struct RestartedNode(Child);

impl Drop for RestartedNode {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn killing_the_volume_master_during_a_256_mib_kernel_write_loses_nothing_and_it_resyncs() {
    require_kernel_client_prerequisites();
    let dir = test_dir("failover");
    let netns = Netns::create("failover");
    let data = dir.path().join("data");
    let mut config = ServerConfig::in_netns(&netns, data.clone());
    config.extra_args = vec!["--nodes".to_owned(), "3".to_owned()];
    let server = CairnServer::start(config);
    let nodes = node_names(&data);
    assert_eq!(nodes.len(), 3, "cluster.json lists {nodes:?}");

    // Three copies, and the master is known.
    let deadline = Instant::now() + Duration::from_secs(30);
    let placement = loop {
        let placement = default_placement(Some(&netns), &data);
        if placement["replicas"].as_array().is_some_and(|replicas| replicas.len() == 3) {
            break placement;
        }
        assert!(Instant::now() < deadline, "the default volume never had 3 replicas: {placement}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let master = placement["master"].as_str().expect("master").to_owned();
    let master_index = nodes.iter().position(|(name, _)| *name == master).expect("the master is a node");
    let gateway_index = (master_index + 1) % 3;
    let reader_index = (master_index + 2) % 3;
    let nfs_port = |index: usize| 2049 + index as u16;

    let mut vm = Vm::new(&netns);
    vm.nfs_port = nfs_port(gateway_index);
    vm.mount_port = nfs_port(gateway_index);
    vm.memory_mib = Some(1536);
    let mut guest = vm.spawn(FAILOVER_WRITE_SCRIPT);
    guest.wait_for_line("progress 2", Duration::from_secs(300));
    let master_pid = nodes[master_index].1;
    // SAFETY: kill(2) of a node process of this test's cluster.
    assert_eq!(unsafe { libc::kill(master_pid as i32, libc::SIGKILL) }, 0, "kill -9 {master}");
    let killed_at = Instant::now();
    let seen = guest.lines_so_far();
    assert!(
        !seen.iter().any(|line| line == "progress 15"),
        "the kill came after the guest had finished writing; the test proves nothing:\n{}",
        seen.join("\n")
    );
    let run = guest.finish();
    run.assert_checks(&["sync-big", "write-big-returned", "size-big", "md5-big"]);
    let md5s = run.keyed_values("md5");
    assert_eq!(md5s.len(), 1, "no md5 line:\n{}", run.describe());
    eprintln!("the guest finished {:?} after the kill", killed_at.elapsed());

    // The new master is another node, and a third gateway reads the same bytes.
    let placement = default_placement(Some(&netns), &data);
    assert_ne!(placement["master"].as_str(), Some(master.as_str()), "no failover: {placement}");
    let reader = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), nfs_port(reader_index));
    let copy = dir.path().join("big.bin");
    let copy_text = copy.to_str().expect("UTF-8 temp path").to_owned();
    libnfs_ok(Some(&netns.name), "nfs-cp", &[&nfs_file_url(reader, "/big.bin", ""), &copy_text]);
    let size = std::fs::metadata(&copy).expect("metadata of the copy").len();
    assert_eq!(size, 256 << 20, "nfs-cp through {reader} copied {size} bytes");
    assert_eq!(md5_of_file(&copy), md5s[0].1, "{reader} read other bytes than the guest wrote");

    // The killed node comes back (as its supervisor would restart it) and resyncs.
    let config_file = data.join("nodes").join(&master).join("node.json");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(data.join("nodes").join(&master).join("node.log"))
        .expect("node log");
    let restarted = RestartedNode(
        Command::new("ip")
            .args(["netns", "exec", &netns.name, CAIRN, "node", "start", "--config"])
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restart the killed node"),
    );
    let deadline = Instant::now() + REJOIN_TIMEOUT;
    loop {
        let placement = default_placement(Some(&netns), &data);
        let replicas: Vec<&str> = placement["replicas"]
            .as_array()
            .map(|r| r.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        if replicas.len() == 3 && replicas.contains(&master.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{master} did not rejoin the volume's replicas within {REJOIN_TIMEOUT:?}: {placement}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(restarted);
    drop(server);
}

/// The CLDB that is master now and the coord leader's member id, asked over the network.
fn cldb_master_and_coord_leader(cluster: &serde_json::Value) -> (String, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cldb_master = None;
            for address in cluster["cldb"].as_array().expect("cldb addresses") {
                let address = address.as_str().expect("address");
                let client = cairn_cldb::CldbClient::new(vec![address.to_owned()]);
                if let Ok(status) = client.status_of(address).await
                    && status.is_master
                {
                    cldb_master = Some(status.name);
                }
            }
            let mut leader = None;
            for member in cluster["coord"].as_array().expect("coord members") {
                let address = member["address"].as_str().expect("address");
                if let Ok(status) = cairn_coord::client::member_status(address, Duration::from_secs(1)).await
                {
                    leader = leader.or(status.leader);
                }
            }
            if let (Some(cldb_master), Some(leader)) = (cldb_master, leader) {
                return (cldb_master, leader);
            }
            assert!(Instant::now() < deadline, "no CLDB master or coord leader found");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[test]
fn killing_the_cldb_master_and_the_coord_leader_during_a_copy_does_not_stop_it() {
    crate::support::require_libnfs_utils();
    let dir = test_dir("cldb-failover");
    // Star replication here (the other cluster tests use the default, chain).
    let cluster =
        crate::cluster::Cluster::start_with(&dir.path().join("data"), 5, &["--replication-type", "star"]);
    let nodes = cluster.cluster["nodes"].as_array().expect("nodes").clone();
    let (cldb_master, leader) = cldb_master_and_coord_leader(&cluster.cluster);
    // Node i runs coord member i.
    let leader_node = format!("n{leader}");
    let victims: Vec<&serde_json::Value> = nodes
        .iter()
        .filter(|node| node["name"] == cldb_master.as_str() || node["name"] == leader_node.as_str())
        .collect();
    assert!(!victims.is_empty() && victims.len() <= 2, "victims {victims:?}");
    let (survivor_index, _) =
        nodes.iter().enumerate().find(|(_, node)| !victims.contains(node)).expect("a surviving node");
    let gateway = cluster.nfs[survivor_index];

    // A userspace client writes 96 MiB through a surviving gateway, each MiB a FILE_SYNC WRITE
    // (stable: it must survive anything once answered), while the victims are killed.
    let bytes = std::sync::Arc::new(crate::support::random_bytes(96 << 20));
    let (progress, written) = std::sync::mpsc::channel();
    let writer = {
        let bytes = bytes.clone();
        std::thread::spawn(move || write_stable(gateway, "through-failover.bin", &bytes, &progress))
    };
    let first = written.recv_timeout(Duration::from_secs(60)).expect("the writes started");
    assert!(first < 96, "the writes ended before the kill: the test proves nothing");
    for victim in &victims {
        let pid = victim["pid"].as_i64().expect("pid") as i32;
        // SAFETY: kill(2) of a node process of this test's cluster.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 {victim}");
    }
    let killed_at = Instant::now();
    if let Err(error) = writer.join().expect("writer thread") {
        panic!(
            "writes through {gateway} failed after the CLDB master {cldb_master} and the coord leader \
             {leader_node} were killed: {error}"
        );
    }
    eprintln!("the writes ended {:?} after the kill", killed_at.elapsed());
    let source = dir.path().join("source.bin");
    std::fs::write(&source, bytes.as_slice()).expect("write the source");
    let read = dir.path().join("read.bin");
    let read_text = read.to_str().expect("UTF-8 temp path").to_owned();
    libnfs_ok(None, "nfs-cp", &[&nfs_file_url(gateway, "/through-failover.bin", ""), &read_text]);
    assert_eq!(md5_of_file(&read), md5_of_file(&source), "the file read back differs from what was written");

    // A new CLDB master took over, with a new coord leader: the tables still take changes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (new_master, new_leader) = cldb_master_and_coord_leader(&cluster.cluster);
        if new_master != cldb_master && new_leader != leader {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new CLDB master ({new_master}) or coord leader ({new_leader})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let survivor = &nodes[survivor_index];
    let cldb = format!("{}:{}", survivor["address"].as_str().expect("address"), survivor["cldb_port"]);
    let created = Command::new(CAIRN)
        .args(["volume", "create", "after-failover", "--replication", "2", "--cldb", &cldb])
        .output()
        .expect("cairn volume create");
    assert!(
        created.status.success(),
        "volume create after the failover: {}",
        crate::support::describe_output(&created)
    );
}

/// Creates `name` in the export root and writes `bytes` into it, one MiB per FILE_SYNC WRITE,
/// sending the MiB count after each. Any error ends it.
fn write_stable(
    gateway: SocketAddr,
    name: &'static str,
    bytes: &[u8],
    progress: &std::sync::mpsc::Sender<usize>,
) -> Result<(), String> {
    use nfs3_client::nfs3_types::nfs3::{
        CREATE3args, Nfs3Option, Nfs3Result, WRITE3args, createhow3, diropargs3, filename3, sattr3,
        stable_how,
    };
    use nfs3_client::nfs3_types::xdr_codec::Opaque;
    crate::libnfs::with_nfs3_client(gateway, async |connection, root| {
        let create = CREATE3args {
            where_: diropargs3 { dir: root, name: filename3(Opaque::borrowed(name.as_bytes())) },
            how: createhow3::UNCHECKED(sattr3::default()),
        };
        let file = match connection.create(&create).await.map_err(|error| format!("CREATE: {error:?}"))? {
            Nfs3Result::Ok(created) => match created.obj {
                Nfs3Option::Some(handle) => handle,
                Nfs3Option::None => return Err("CREATE returned no handle".to_owned()),
            },
            Nfs3Result::Err((status, _)) => return Err(format!("CREATE: {status:?}")),
        };
        for (index, chunk) in bytes.chunks(1 << 20).enumerate() {
            let write = WRITE3args {
                file: file.clone(),
                offset: (index as u64) << 20,
                count: chunk.len() as u32,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(chunk),
            };
            match connection
                .write(&write)
                .await
                .map_err(|error| format!("WRITE of MiB {index}: {error:?}"))?
            {
                Nfs3Result::Ok(done) if done.count as usize == chunk.len() => {}
                Nfs3Result::Ok(done) => {
                    return Err(format!("WRITE of MiB {index} wrote {} bytes", done.count));
                }
                Nfs3Result::Err((status, _)) => return Err(format!("WRITE of MiB {index}: {status:?}")),
            }
            let _ = progress.send(index + 1);
        }
        Ok(())
    })
}

#[test]
fn a_copy_lost_with_its_node_is_made_again_on_a_fourth_node() {
    crate::support::require_libnfs_utils();
    let dir = test_dir("rereplication");
    let data = dir.path().join("data");
    let cluster = crate::cluster::Cluster::start_with(&data, 4, &["--rereplication-timeout", "5"]);
    let bytes = crate::support::random_bytes(24 << 20);
    let source = dir.path().join("source.bin");
    std::fs::write(&source, &bytes).expect("write the source");
    let deadline = Instant::now() + Duration::from_secs(30);
    let placement = loop {
        let placement = default_placement(None, &data);
        if placement["replicas"].as_array().is_some_and(|replicas| replicas.len() == 3) {
            break placement;
        }
        assert!(Instant::now() < deadline, "the default volume never had 3 replicas: {placement}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let names = |placement: &serde_json::Value, field: &str| -> Vec<String> {
        placement[field]
            .as_array()
            .map(|list| list.iter().filter_map(|n| n.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let replicas = names(&placement, "replicas");
    let master = placement["master"].as_str().expect("master").to_owned();
    let nodes = cluster.cluster["nodes"].as_array().expect("nodes").clone();
    let index_of =
        |name: &str| nodes.iter().position(|node| node["name"] == name).expect("a node of cluster.json");
    let spare = nodes
        .iter()
        .map(|node| node["name"].as_str().expect("name").to_owned())
        .find(|name| !replicas.contains(name))
        .expect("a fourth node outside the placement");
    let victim =
        replicas.iter().find(|name| **name != master).expect("a replica that is not the master").clone();

    // Data in the volume, written through the spare node's gateway.
    let to = nfs_file_url(cluster.nfs[index_of(&spare)], "/before-loss.bin", "");
    libnfs_ok(None, "nfs-cp", &[source.to_str().expect("path"), &to]);

    let pid = nodes[index_of(&victim)]["pid"].as_i64().expect("pid") as i32;
    // SAFETY: kill(2) of a node process of this test's cluster.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 {victim}");
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let placement = default_placement(None, &data);
        let replicas = names(&placement, "replicas");
        if replicas.len() == 3
            && replicas.contains(&spare)
            && !replicas.contains(&victim)
            && names(&placement, "resyncing").is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "{spare} did not replace {victim} within 90 s: {placement}");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{spare} replaced {victim} {:?} after the kill", killed_at.elapsed());

    // The file is whole, read through the new copy's node.
    let read = dir.path().join("read.bin");
    let from = nfs_file_url(cluster.nfs[index_of(&spare)], "/before-loss.bin", "");
    libnfs_ok(None, "nfs-cp", &[&from, read.to_str().expect("path")]);
    assert_eq!(md5_of_file(&read), md5_of_file(&source), "the file differs after re-replication");
}
