//! The process's Prometheus metrics: one registry per process (a node runs its services in one
//! process), filled by the services through the functions here and rendered in the text
//! exposition format by [`render`] for the `/metrics` endpoint.
//!
//! Names follow Prometheus conventions: `_total` counters, `_seconds` and `_bytes` units, a few
//! labels of bounded cardinality (procedure, status, volume, role). `docs/operations.md` lists
//! them with what healthy values look like.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcedureLabels {
    procedure: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    procedure: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    volume: String,
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

struct Metrics {
    registry: Registry,
    nfs_requests: Family<OutcomeLabels, Counter>,
    nfs_duration: Family<ProcedureLabels, Histogram>,
    nfs_read_bytes: Counter,
    nfs_written_bytes: Counter,
    nfs_connections: Gauge,
    replication_lag_records: Family<ReplicaLabels, Gauge>,
    resync_sent_bytes: Family<VolumeLabels, Counter>,
    resyncs: Family<VolumeLabels, Counter>,
    local_copies: Family<StateLabels, Gauge>,
    cluster_containers: Family<StateLabels, Gauge>,
    cluster_nodes: Family<StateLabels, Gauge>,
    cldb_master: Gauge,
    coord_leader: Gauge,
    coord_term: Gauge,
    coord_leader_id: Gauge,
    coord_last_applied: Gauge,
    service_restarts: Family<ServiceLabels, Counter>,
}

/// Latency buckets from 50 µs to about 6.5 s (doubling).
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 18))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("cairn");
    let nfs_requests = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "nfs_requests",
        "NFSv3 and MOUNT requests answered by this gateway, by procedure and status (ok or the nfsstat3 name)",
        nfs_requests.clone(),
    );
    let nfs_duration =
        Family::<ProcedureLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
    registry.register(
        "nfs_request_duration_seconds",
        "Time from a request's decoding to its reply being queued, by procedure",
        nfs_duration.clone(),
    );
    let nfs_read_bytes = Counter::default();
    registry.register("nfs_read_bytes", "Bytes returned by NFS READ", nfs_read_bytes.clone());
    let nfs_written_bytes = Counter::default();
    registry.register("nfs_written_bytes", "Bytes accepted by NFS WRITE", nfs_written_bytes.clone());
    let nfs_connections = Gauge::default();
    registry.register("nfs_connections", "Open NFS client connections", nfs_connections.clone());
    let replication_lag_records = Family::<ReplicaLabels, Gauge>::default();
    registry.register(
        "replication_lag_records",
        "Records the master has logged that a replica has not acknowledged yet (master side)",
        replication_lag_records.clone(),
    );
    let resync_sent_bytes = Family::<VolumeLabels, Counter>::default();
    registry.register(
        "resync_sent_bytes",
        "Bytes of full copies sent to replicas that could not roll forward (master side)",
        resync_sent_bytes.clone(),
    );
    let resyncs = Family::<VolumeLabels, Counter>::default();
    registry.register("resyncs", "Replica resynchronisations started (master side)", resyncs.clone());
    let local_copies = Family::<StateLabels, Gauge>::default();
    registry.register(
        "local_copies",
        "Volume copies this node's file server holds, by role (master, replica)",
        local_copies.clone(),
    );
    let cluster_containers = Family::<StateLabels, Gauge>::default();
    registry.register(
        "cluster_containers",
        "Containers in the cluster by state (ok, under_replicated, unavailable); set by the CLDB master",
        cluster_containers.clone(),
    );
    let cluster_nodes = Family::<StateLabels, Gauge>::default();
    registry.register(
        "cluster_nodes",
        "Nodes by state (up, down); set by the CLDB master",
        cluster_nodes.clone(),
    );
    let cldb_master = Gauge::default();
    registry.register("cldb_master", "1 while this node's CLDB is the master", cldb_master.clone());
    let coord_leader = Gauge::default();
    registry.register(
        "coord_leader",
        "1 while this node's coord member is the Raft leader",
        coord_leader.clone(),
    );
    let coord_term = Gauge::default();
    registry.register("coord_term", "The coord member's current Raft term", coord_term.clone());
    let coord_leader_id = Gauge::default();
    registry.register(
        "coord_leader_id",
        "The member id of the coord leader this member knows (0: none)",
        coord_leader_id.clone(),
    );
    let coord_last_applied = Gauge::default();
    registry.register(
        "coord_last_applied",
        "The coord member's last applied log index",
        coord_last_applied.clone(),
    );
    let service_restarts = Family::<ServiceLabels, Counter>::default();
    registry.register(
        "service_restarts",
        "Restarts of a supervised service on this node",
        service_restarts.clone(),
    );
    Metrics {
        registry,
        nfs_requests,
        nfs_duration,
        nfs_read_bytes,
        nfs_written_bytes,
        nfs_connections,
        replication_lag_records,
        resync_sent_bytes,
        resyncs,
        local_copies,
        cluster_containers,
        cluster_nodes,
        cldb_master,
        coord_leader,
        coord_term,
        coord_leader_id,
        coord_last_applied,
        service_restarts,
    }
});

/// Every metric in the Prometheus text exposition format (version 0.0.4 / OpenMetrics text).
pub fn render() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &METRICS.registry);
    text
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One NFS (or MOUNT) request answered: `status` is `"ok"` or the error's name.
pub fn nfs_request(procedure: &'static str, status: &'static str, elapsed: Duration) {
    METRICS.nfs_requests.get_or_create(&OutcomeLabels { procedure, status }).inc();
    METRICS.nfs_duration.get_or_create(&ProcedureLabels { procedure }).observe(elapsed.as_secs_f64());
}

pub fn nfs_read_bytes(bytes: u64) {
    METRICS.nfs_read_bytes.inc_by(bytes);
}

pub fn nfs_written_bytes(bytes: u64) {
    METRICS.nfs_written_bytes.inc_by(bytes);
}

/// An NFS connection opened (+1) or closed (-1).
pub fn nfs_connections_add(delta: i64) {
    METRICS.nfs_connections.inc_by(delta);
}

/// How many records each replica is behind its master, for every volume this node masters, as
/// `(volume, replica, records)`; replaces the previous report (replicas that left disappear).
pub fn replication_lags(lags: &[(String, String, u64)]) {
    METRICS.replication_lag_records.clear();
    for (volume, replica, records) in lags {
        let labels = ReplicaLabels { volume: volume.clone(), replica: replica.clone() };
        METRICS.replication_lag_records.get_or_create(&labels).set(saturating_i64(*records));
    }
}

/// A resync (full copy) of `volume` to a replica started.
pub fn resync_started(volume: &str) {
    METRICS.resyncs.get_or_create(&VolumeLabels { volume: volume.to_owned() }).inc();
}

/// `bytes` more of a resync of `volume` sent.
pub fn resync_sent(volume: &str, bytes: u64) {
    METRICS.resync_sent_bytes.get_or_create(&VolumeLabels { volume: volume.to_owned() }).inc_by(bytes);
}

/// The copies this node holds: `masters` as master, `replicas` as replica.
pub fn local_copies(masters: u64, replicas: u64) {
    METRICS.local_copies.get_or_create(&StateLabels { state: "master" }).set(saturating_i64(masters));
    METRICS.local_copies.get_or_create(&StateLabels { state: "replica" }).set(saturating_i64(replicas));
}

/// The cluster's containers by state, as the CLDB master sees them.
pub fn cluster_containers(state: &'static str, count: u64) {
    METRICS.cluster_containers.get_or_create(&StateLabels { state }).set(saturating_i64(count));
}

/// The cluster's nodes by state, as the CLDB master sees them.
pub fn cluster_nodes(state: &'static str, count: u64) {
    METRICS.cluster_nodes.get_or_create(&StateLabels { state }).set(saturating_i64(count));
}

/// Whether this node's CLDB is the master.
pub fn cldb_master(master: bool) {
    METRICS.cldb_master.set(i64::from(master));
}

/// The coord member's Raft view: whether it leads, its term, the leader it knows, its last
/// applied index.
pub fn coord_raft(leader: bool, term: u64, leader_id: Option<u64>, last_applied: u64) {
    METRICS.coord_leader.set(i64::from(leader));
    METRICS.coord_term.set(saturating_i64(term));
    METRICS.coord_leader_id.set(saturating_i64(leader_id.unwrap_or(0)));
    METRICS.coord_last_applied.set(saturating_i64(last_applied));
}

/// A supervised service was restarted.
pub fn service_restarted(service: &str) {
    METRICS.service_restarts.get_or_create(&ServiceLabels { service: service.to_owned() }).inc();
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_names_the_families_and_counts() {
        nfs_request("READ", "ok", Duration::from_micros(120));
        nfs_request("READ", "NFS3ERR_IO", Duration::from_millis(3));
        nfs_read_bytes(4096);
        let text = render();
        assert!(text.contains("cairn_nfs_requests_total{procedure=\"READ\",status=\"ok\"} 1"), "{text}");
        assert!(
            text.contains("cairn_nfs_requests_total{procedure=\"READ\",status=\"NFS3ERR_IO\"} 1"),
            "{text}"
        );
        assert!(text.contains("cairn_nfs_request_duration_seconds_count{procedure=\"READ\"} 2"), "{text}");
        assert!(text.contains("cairn_nfs_read_bytes_total 4096"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
