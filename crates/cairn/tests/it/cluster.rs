//! `cairn up --nodes 3`: three node processes, each with coord, CLDB, file server and NFS
//! gateway. A file written through one node's gateway reads back through the others, and a file
//! handle from one gateway works on another.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{GETATTR3args, LOOKUP3args, Nfs3Result, diropargs3, filename3, nfs_fh3};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use crate::libnfs::with_nfs3_client;
use crate::support::{
    CAIRN, cluster_port_args, libnfs_ok, nfs_file_url, random_bytes, require_libnfs_utils, test_dir,
};

/// A running `cairn up --nodes 3`, stopped with SIGTERM when dropped.
pub(crate) struct Cluster {
    up: Child,
    pub(crate) nfs: Vec<SocketAddr>,
    /// The content of `cluster.json`.
    pub(crate) cluster: serde_json::Value,
}

impl Cluster {
    pub(crate) fn start(data_dir: &std::path::Path) -> Cluster {
        Cluster::start_nodes(data_dir, 3)
    }

    /// `cairn up --nodes COUNT` on 127.0.0.1.
    pub(crate) fn start_nodes(data_dir: &std::path::Path, count: usize) -> Cluster {
        Cluster::start_with(data_dir, count, &[])
    }

    /// `cairn up --nodes COUNT` on 127.0.0.1 with more arguments.
    pub(crate) fn start_with(data_dir: &std::path::Path, count: usize, extra: &[&str]) -> Cluster {
        let mut last_error = String::new();
        for _ in 0..4 {
            // Four runs of `count` consecutive ports, in a range of their own.
            // Consoles on ports of the same range unless the test chose (the default, 8443 and
            // up, would be shared by every cluster of a parallel run).
            let console = !extra.iter().any(|arg| *arg == "--console-port" || *arg == "--no-console");
            let mut up = Command::new(CAIRN)
                .args(["up", "--no-portmap", "--nodes", &count.to_string()])
                .args(extra)
                .args(cluster_port_args(console))
                .arg("--data-dir")
                .arg(data_dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start cairn up");
            let stdout = up.stdout.take().expect("stdout");
            let ready = std::thread::spawn(move || {
                use std::io::BufRead;
                std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .find(|l| l.starts_with("Cairn is ready"))
            })
            .join()
            .expect("reader");
            let Some(ready) = ready else {
                let out = up.wait_with_output().expect("output");
                last_error = String::from_utf8_lossy(&out.stderr).into_owned();
                let _ = std::fs::remove_dir_all(data_dir);
                continue;
            };
            let cluster: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(data_dir.join("cluster.json")).expect("cluster.json"),
            )
            .expect("cluster.json is JSON");
            let nfs = cluster["nodes"]
                .as_array()
                .expect("nodes in cluster.json")
                .iter()
                .map(|node| {
                    let address = node["address"].as_str().expect("address");
                    let port = node["nfs_port"].as_u64().expect("nfs_port");
                    format!("{address}:{port}").parse().expect("NFS address")
                })
                .collect::<Vec<SocketAddr>>();
            assert_eq!(nfs.len(), count, "{ready}\n{cluster}");
            return Cluster { up, nfs, cluster };
        }
        panic!("cairn up --nodes 3 did not become ready: {last_error}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.up.id() as i32, libc::SIGTERM) };
        let _ = self.up.wait();
    }
}

fn lookup(connection_server: SocketAddr, name: &'static str) -> (nfs_fh3, u64) {
    with_nfs3_client(connection_server, async |connection, root| {
        let arguments = LOOKUP3args {
            what: diropargs3 { dir: root, name: filename3(Opaque::borrowed(name.as_bytes())) },
        };
        match connection.lookup(&arguments).await.expect("LOOKUP") {
            Nfs3Result::Ok(found) => {
                let size = match found.obj_attributes {
                    nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(attributes) => attributes.size,
                    nfs3_client::nfs3_types::nfs3::Nfs3Option::None => {
                        panic!("LOOKUP returned no attributes")
                    }
                };
                (found.object, size)
            }
            Nfs3Result::Err((status, _)) => panic!("LOOKUP {name} failed with {status:?}"),
        }
    })
}

#[test]
fn a_file_written_through_one_gateway_reads_back_through_every_other() {
    require_libnfs_utils();
    let dir = test_dir("cluster-gateways");
    let cluster = Cluster::start(&dir.path().join("data"));
    let source = dir.path().join("source.bin");
    let bytes = random_bytes(5_000_000 + 123);
    std::fs::write(&source, &bytes).expect("write source");

    let to = nfs_file_url(cluster.nfs[0], "/data.bin", "");
    libnfs_ok(None, "nfs-cp", &[source.to_str().expect("path"), &to]);
    for (index, &gateway) in cluster.nfs.iter().enumerate() {
        let out = libnfs_ok(None, "nfs-cat", &[&nfs_file_url(gateway, "/data.bin", "")]);
        assert!(out.stdout == bytes, "node {} returned other bytes ({} bytes)", index + 1, out.stdout.len());
    }

    // A handle from node 1's gateway names the same file on node 2's and node 3's.
    let (handle, size) = lookup(cluster.nfs[0], "data.bin");
    assert_eq!(size, bytes.len() as u64);
    for &gateway in &cluster.nfs[1..] {
        let handle = handle.clone();
        let attributes = with_nfs3_client(gateway, async |connection, _root| {
            connection.getattr(&GETATTR3args { object: handle }).await.expect("GETATTR")
        });
        match attributes {
            Nfs3Result::Ok(found) => assert_eq!(found.obj_attributes.size, bytes.len() as u64),
            Nfs3Result::Err((status, _)) => panic!("a handle from node 1 failed on {gateway}: {status:?}"),
        }
    }

    // Every node is registered with the CLDB, and `cairn up` wrote where each one runs.
    let nodes = cluster.cluster["nodes"].as_array().expect("nodes");
    let deadline = Instant::now() + Duration::from_secs(5);
    for node in nodes {
        let pid = node["pid"].as_i64().expect("pid") as i32;
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "node {node} is not running");
        assert!(Instant::now() < deadline);
    }
}
