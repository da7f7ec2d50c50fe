//! Bad blocks on real node processes: a byte flipped in a chunk file on disk (what a failing disk
//! does) is noticed by its checksum and the block rewritten from another copy: on the master when
//! a client reads it, on a replica by the background scrub.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::failover::default_placement;
use crate::support::{libnfs_ok, md5_of_file, nfs_file_url, random_bytes, require_libnfs_utils, test_dir};

/// Where in the chunk file the byte is flipped: inside block 128, well within the file.
const FLIPPED_OFFSET: u64 = (1 << 20) + 100;

/// The one chunk data file of the default volume on `node` (the test writes one 3 MiB file).
fn chunk_file(data: &Path, node: &str) -> PathBuf {
    let found = chunk_files(data, node);
    assert_eq!(found.len(), 1, "chunk data files on {node}: {found:?}");
    found.into_iter().next().expect("one file")
}

/// Waits until `replica` holds the same chunk data file as `master`: a replica that joined the
/// volume while the file was written is brought up to date by a resync in the background, and a
/// byte flipped before that ends would be overwritten by the resync rather than by a repair.
fn wait_for_the_same_copy(data: &Path, master: &str, replica: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let on_master = chunk_files(data, master);
        let on_replica = chunk_files(data, replica);
        if let ([master_file], [replica_file]) = (on_master.as_slice(), on_replica.as_slice())
            && std::fs::read(master_file).ok() == std::fs::read(replica_file).ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{replica} does not hold {master}'s chunk file after 60 s: {on_master:?} {on_replica:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn chunk_files(data: &Path, node: &str) -> Vec<PathBuf> {
    let containers = data.join("nodes").join(node).join("volumes").join("1").join("containers");
    let mut found = Vec::new();
    let Ok(containers) = std::fs::read_dir(&containers) else { return found };
    for container in containers.flatten() {
        let Ok(buckets) = std::fs::read_dir(container.path().join("chunks")) else { continue };
        for bucket in buckets.flatten() {
            let Ok(files) = std::fs::read_dir(bucket.path()) else { continue };
            for file in files.flatten() {
                if file.path().extension().is_some_and(|extension| extension == "data") {
                    found.push(file.path());
                }
            }
        }
    }
    found
}

fn byte_at(path: &Path, offset: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8];
    std::fs::File::open(path).expect("open").read_exact_at(&mut byte, offset).expect("read");
    byte[0]
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("read");
    file.write_all_at(&[!byte[0]], offset).expect("write");
}

/// A cluster with a 3 MiB file on its 3 copies; returns it, the file's source path, the data
/// directory and the (master, replica) names.
fn cluster_with_a_file(dir: &Path, scrub_seconds: &str) -> (Cluster, PathBuf, PathBuf, String, String) {
    require_libnfs_utils();
    let data = dir.join("data");
    let cluster = Cluster::start_with(&data, 3, &["--scrub-interval", scrub_seconds]);
    let source = dir.join("source.bin");
    std::fs::write(&source, random_bytes(3 << 20)).expect("write the source");
    libnfs_ok(
        None,
        "nfs-cp",
        &[source.to_str().expect("path"), &nfs_file_url(cluster.nfs[0], "/file.bin", "")],
    );
    let placement = default_placement(None, &data);
    let master = placement["master"].as_str().expect("master").to_owned();
    let replica = placement["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(|node| node.as_str())
        .find(|node| *node != master)
        .expect("a replica")
        .to_owned();
    wait_for_the_same_copy(&data, &master, &replica);
    (cluster, source, data, master, replica)
}

fn node_log(data: &Path, node: &str) -> String {
    std::fs::read_to_string(data.join("nodes").join(node).join("node.log")).unwrap_or_default()
}

#[test]
fn a_bad_block_on_the_master_is_repaired_from_a_replica_when_read() {
    let dir = test_dir("repair-read");
    // No scrub pass during the test: the read finds the bad block.
    let (cluster, source, data, master, replica) = cluster_with_a_file(dir.path(), "3600");
    let on_master = chunk_file(&data, &master);
    let good = byte_at(&chunk_file(&data, &replica), FLIPPED_OFFSET);
    assert_eq!(byte_at(&on_master, FLIPPED_OFFSET), good, "the copies differ before the test");
    flip(&on_master, FLIPPED_OFFSET);

    let read = dir.path().join("read.bin");
    libnfs_ok(
        None,
        "nfs-cp",
        &[&nfs_file_url(cluster.nfs[1], "/file.bin", ""), read.to_str().expect("path")],
    );
    assert_eq!(md5_of_file(&read), md5_of_file(&source), "the read returned other bytes");
    assert_eq!(byte_at(&on_master, FLIPPED_OFFSET), good, "the master's block was not rewritten");
    let log = node_log(&data, &master);
    assert!(log.contains("bad block repaired from a replica"), "no repair in {master}'s log");
    assert!(!log.contains("scrub found a bad block"), "the scrub, not the read, found the block");
}

#[test]
fn the_scrub_repairs_a_bad_block_of_a_replica_from_the_master() {
    let dir = test_dir("repair-scrub");
    let (cluster, source, data, master, replica) = cluster_with_a_file(dir.path(), "1");
    let on_replica = chunk_file(&data, &replica);
    let good = byte_at(&chunk_file(&data, &master), FLIPPED_OFFSET);
    flip(&on_replica, FLIPPED_OFFSET);

    let deadline = Instant::now() + Duration::from_secs(60);
    while byte_at(&on_replica, FLIPPED_OFFSET) != good {
        assert!(Instant::now() < deadline, "the scrub did not repair {replica}'s block within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        node_log(&data, &replica).contains("scrub found a bad block"),
        "no scrub finding in {replica}'s log"
    );
    // And the file still reads back whole.
    let read = dir.path().join("read.bin");
    libnfs_ok(
        None,
        "nfs-cp",
        &[&nfs_file_url(cluster.nfs[2], "/file.bin", ""), read.to_str().expect("path")],
    );
    assert_eq!(md5_of_file(&read), md5_of_file(&source));
}
