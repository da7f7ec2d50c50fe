//! Prometheus metrics of `cairn up --nodes 3`: every node's `/metrics` (on its console port)
//! parses as Prometheus text, names one coord leader and one CLDB master, and its counters move
//! with NFS I/O through that node's gateway.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};

use crate::cluster::Cluster;
use crate::support::{libnfs_ok, nfs_file_url, random_bytes, require_libnfs_utils, run_libnfs, test_dir};

/// How long the cluster's roles may take to show in every node's metrics.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One node's `/metrics`, parsed.
fn scrape(port: u64) -> Scrape {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let text = runtime.block_on(async {
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        response.text().await.expect("metrics text")
    });
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .unwrap_or_else(|e| panic!("{url} is not Prometheus text ({e}):\n{text}"))
}

/// The value of the sample `name` whose labels include every pair of `labels` (summed when
/// several match; 0 when none does).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| labels.iter().all(|(key, wanted)| sample.labels.get(key) == Some(*wanted)))
        .map(|sample| match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// The number of observations in the latency histogram of `procedure`.
fn observations(scrape: &Scrape, procedure: &str) -> f64 {
    let count = value(scrape, "cairn_nfs_request_duration_seconds_count", &[("procedure", procedure)]);
    if count > 0.0 {
        count
    } else {
        // prometheus-parse folds the buckets into one sample; the +Inf bucket counts them all.
        value(scrape, "cairn_nfs_request_duration_seconds", &[("procedure", procedure)])
    }
}

#[test]
fn every_node_reports_its_roles_and_its_counters_move_with_nfs_io() {
    require_libnfs_utils();
    let dir = test_dir("metrics");
    // Below the ephemeral range (see `cluster_port_args`).
    let console_port = crate::support::port_run_base() + 4 * 6_100;
    let cluster =
        Cluster::start_with(&dir.path().join("data"), 3, &["--console-port", &console_port.to_string()]);
    let ports: Vec<u64> = cluster.cluster["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| node["console_port"].as_u64().expect("console_port in cluster.json"))
        .collect();

    // One coord leader that every member names, and one CLDB master that sees 3 nodes up.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let scrapes = loop {
        let scrapes: Vec<Scrape> = ports.iter().map(|port| scrape(*port)).collect();
        let leaders: f64 = scrapes.iter().map(|s| value(s, "cairn_coord_leader", &[])).sum();
        let masters: Vec<&Scrape> =
            scrapes.iter().filter(|s| value(s, "cairn_cldb_master", &[]) == 1.0).collect();
        let leader_ids: Vec<f64> = scrapes.iter().map(|s| value(s, "cairn_coord_leader_id", &[])).collect();
        let settled = leaders == 1.0
            && leader_ids.iter().all(|id| *id != 0.0 && *id == leader_ids[0])
            && masters.len() == 1
            && value(masters[0], "cairn_cluster_nodes", &[("state", "up")]) == 3.0
            && value(masters[0], "cairn_cluster_containers", &[("state", "unavailable")]) == 0.0;
        if settled {
            break scrapes;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics did not settle within {SETTLE_TIMEOUT:?}: coord leaders {leaders}, leader ids \
             {leader_ids:?}, CLDB masters {}",
            masters.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let terms: Vec<f64> = scrapes.iter().map(|s| value(s, "cairn_coord_term", &[])).collect();
    assert!(terms.iter().all(|term| *term >= 1.0), "coord terms {terms:?}");

    // Write through node 1's gateway, read back through node 2's, miss a file through node 3's.
    let before: Vec<Scrape> = ports.iter().map(|port| scrape(*port)).collect();
    let bytes = random_bytes(3 << 20);
    let source = dir.path().join("source.bin");
    std::fs::write(&source, &bytes).expect("write source");
    libnfs_ok(None, "nfs-cp", &[source.to_str().expect("path"), &nfs_file_url(cluster.nfs[0], "/m.bin", "")]);
    let read = libnfs_ok(None, "nfs-cat", &[&nfs_file_url(cluster.nfs[1], "/m.bin", "")]);
    assert!(read.stdout == bytes, "node 2 returned other bytes");
    let missing = run_libnfs(None, "nfs-cat", &[&nfs_file_url(cluster.nfs[2], "/no-such-file", "")]);
    assert!(!missing.status.success(), "nfs-cat of a missing file succeeded");
    let after: Vec<Scrape> = ports.iter().map(|port| scrape(*port)).collect();

    let delta = |node: usize, name: &str, labels: &[(&str, &str)]| {
        value(&after[node], name, labels) - value(&before[node], name, labels)
    };
    let size = bytes.len() as f64;
    assert!(delta(0, "cairn_nfs_written_bytes_total", &[]) >= size, "node 1 counted too few written bytes");
    assert!(delta(0, "cairn_nfs_requests_total", &[("procedure", "WRITE"), ("status", "ok")]) >= 1.0);
    assert!(observations(&after[0], "WRITE") >= observations(&before[0], "WRITE") + 1.0, "WRITE latencies");
    assert!(delta(1, "cairn_nfs_read_bytes_total", &[]) >= size, "node 2 counted too few read bytes");
    assert!(delta(1, "cairn_nfs_requests_total", &[("procedure", "READ"), ("status", "ok")]) >= 1.0);
    assert_eq!(delta(1, "cairn_nfs_written_bytes_total", &[]), 0.0, "node 2 wrote nothing");
    assert!(
        delta(2, "cairn_nfs_requests_total", &[("procedure", "LOOKUP"), ("status", "NFS3ERR_NOENT")]) >= 1.0,
        "node 3 did not count the failed LOOKUP"
    );

    // The default volume's master follows two replicas, which catch up.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let scrapes: Vec<Scrape> = ports.iter().map(|port| scrape(*port)).collect();
        let masters: Vec<&Scrape> = scrapes
            .iter()
            .filter(|s| value(s, "cairn_local_copies", &[("state", "master")]) >= 1.0)
            .collect();
        let lags: BTreeMap<String, f64> = masters
            .iter()
            .flat_map(|s| s.samples.iter())
            .filter(|sample| sample.metric == "cairn_replication_lag_records")
            .map(|sample| {
                (sample.labels.get("replica").unwrap_or_default().to_owned(), value_of(&sample.value))
            })
            .collect();
        if masters.len() == 1 && lags.len() == 2 && lags.values().all(|lag| *lag == 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "replication lag did not reach 0 on 2 replicas: {lags:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn value_of(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        _ => f64::NAN,
    }
}
