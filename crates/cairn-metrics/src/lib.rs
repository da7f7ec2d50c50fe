//! The process's Prometheus metrics: one registry per process, filled by the services through the
//! functions here and rendered in the text exposition format by [`render`].
//!
//! A node may run its services in one process (`cairn up`) or, under the Warden, each service in
//! its own process. In the second case each process calls [`init`] with its own [`Group`]s, so the
//! processes of a node register disjoint sets of families; each serves its text on a loopback port
//! ([`serve`]) named in an endpoint file (`DATA_DIR/run/<service>.metrics`, see
//! [`write_endpoint_file`]), and the console concatenates the texts into one `/metrics` for the
//! node. Disjoint families are what make plain concatenation a valid exposition.
//!
//! Names follow Prometheus conventions: `_total` counters, `_seconds` and `_bytes` units, a few
//! labels of bounded cardinality (procedure, status, volume, role). `docs/operations.md` lists
//! them with what healthy values look like.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use tokio::task::JoinHandle;

/// The services whose families a process registers: each family belongs to exactly one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// `nfs_*`: the NFS gateway.
    Nfs,
    /// Replication lag, resyncs and local copies: the file server.
    FileServer,
    /// `cluster_containers`, `cluster_nodes`, `cldb_master`: the CLDB.
    Cldb,
    /// `coord_*`: the coord member.
    Coord,
    /// `service_restarts`: the Warden supervising the node's services.
    Warden,
}

impl Group {
    /// Every group: what a process registers when it never calls [`init`].
    pub const ALL: [Group; 5] = [Group::Nfs, Group::FileServer, Group::Cldb, Group::Coord, Group::Warden];
}

/// The groups chosen by [`init`], or (set at the registry's first use) every group.
static GROUPS: OnceLock<Vec<Group>> = OnceLock::new();

/// Chooses the groups whose families this process registers and renders; call it once, at
/// process start, before any metric is updated or rendered.
///
/// Without a call, the first use registers every group, which is what a process running all of a
/// node's services wants (`cairn up`). The choice cannot change afterwards, since the registry is
/// built once: a call after the first use, or a second call, is ignored with a warning rather
/// than a panic, as metrics must never take a service down. Metrics of groups left out can still
/// be updated; they are simply not rendered.
pub fn init(groups: &[Group]) {
    if GROUPS.set(groups.to_vec()).is_err() {
        tracing::warn!(
            requested = ?groups,
            registered = ?GROUPS.get(),
            "metrics: init called after the registry was built or a second time; ignored"
        );
    }
}

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

static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| Metrics::new(GROUPS.get_or_init(|| Group::ALL.to_vec())));

/// A registry that only registers the families of the chosen groups.
struct GroupRegistry<'a> {
    registry: Registry,
    groups: &'a [Group],
}

impl GroupRegistry<'_> {
    fn register(&mut self, group: Group, name: &str, help: &str, metric: impl Metric) {
        if self.groups.contains(&group) {
            self.registry.register(name, help, metric);
        }
    }
}

impl Metrics {
    /// Every metric, with the families of `groups` registered (the others are updated but never
    /// rendered).
    fn new(groups: &[Group]) -> Metrics {
        let mut registry = GroupRegistry { registry: Registry::with_prefix("cairn"), groups };
        let nfs_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
        Group::Nfs, "nfs_requests",
        "NFSv3 and MOUNT requests answered by this gateway, by procedure and status (ok or the nfsstat3 name)",
        nfs_requests.clone(),
    );
        let nfs_duration = Family::<ProcedureLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            Group::Nfs,
            "nfs_request_duration_seconds",
            "Time from a request's decoding to its reply being queued, by procedure",
            nfs_duration.clone(),
        );
        let nfs_read_bytes = Counter::default();
        registry.register(Group::Nfs, "nfs_read_bytes", "Bytes returned by NFS READ", nfs_read_bytes.clone());
        let nfs_written_bytes = Counter::default();
        registry.register(
            Group::Nfs,
            "nfs_written_bytes",
            "Bytes accepted by NFS WRITE",
            nfs_written_bytes.clone(),
        );
        let nfs_connections = Gauge::default();
        registry.register(
            Group::Nfs,
            "nfs_connections",
            "Open NFS client connections",
            nfs_connections.clone(),
        );
        let replication_lag_records = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            Group::FileServer,
            "replication_lag_records",
            "Records the master has logged that a replica has not acknowledged yet (master side)",
            replication_lag_records.clone(),
        );
        let resync_sent_bytes = Family::<VolumeLabels, Counter>::default();
        registry.register(
            Group::FileServer,
            "resync_sent_bytes",
            "Bytes of full copies sent to replicas that could not roll forward (master side)",
            resync_sent_bytes.clone(),
        );
        let resyncs = Family::<VolumeLabels, Counter>::default();
        registry.register(
            Group::FileServer,
            "resyncs",
            "Replica resynchronisations started (master side)",
            resyncs.clone(),
        );
        let local_copies = Family::<StateLabels, Gauge>::default();
        registry.register(
            Group::FileServer,
            "local_copies",
            "Volume copies this node's file server holds, by role (master, replica)",
            local_copies.clone(),
        );
        let cluster_containers = Family::<StateLabels, Gauge>::default();
        registry.register(
            Group::Cldb,
            "cluster_containers",
            "Containers in the cluster by state (ok, under_replicated, unavailable); set by the CLDB master",
            cluster_containers.clone(),
        );
        let cluster_nodes = Family::<StateLabels, Gauge>::default();
        registry.register(
            Group::Cldb,
            "cluster_nodes",
            "Nodes by state (up, down); set by the CLDB master",
            cluster_nodes.clone(),
        );
        let cldb_master = Gauge::default();
        registry.register(
            Group::Cldb,
            "cldb_master",
            "1 while this node's CLDB is the master",
            cldb_master.clone(),
        );
        let coord_leader = Gauge::default();
        registry.register(
            Group::Coord,
            "coord_leader",
            "1 while this node's coord member is the Raft leader",
            coord_leader.clone(),
        );
        let coord_term = Gauge::default();
        registry.register(
            Group::Coord,
            "coord_term",
            "The coord member's current Raft term",
            coord_term.clone(),
        );
        let coord_leader_id = Gauge::default();
        registry.register(
            Group::Coord,
            "coord_leader_id",
            "The member id of the coord leader this member knows (0: none)",
            coord_leader_id.clone(),
        );
        let coord_last_applied = Gauge::default();
        registry.register(
            Group::Coord,
            "coord_last_applied",
            "The coord member's last applied log index",
            coord_last_applied.clone(),
        );
        let service_restarts = Family::<ServiceLabels, Counter>::default();
        registry.register(
            Group::Warden,
            "service_restarts",
            "Restarts of a supervised service on this node",
            service_restarts.clone(),
        );
        Metrics {
            registry: registry.registry,
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
    }
}

/// Every metric in the Prometheus text exposition format (version 0.0.4 / OpenMetrics text).
/// Only the families of the groups this process registers (see [`init`]).
pub fn render() -> String {
    render_registry(&METRICS.registry)
}

fn render_registry(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, registry);
    text
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves [`render`] at `GET /metrics` on `listen` (port 0: any free port), for the node's console
/// to collect; bind it to loopback, as it has no login. Returns the bound address and the server
/// task, which runs until the process ends or its owner aborts the handle.
pub async fn serve(listen: SocketAddr) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }),
    );
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, %address, "metrics server failed");
        }
    });
    Ok((address, server))
}

/// The suffix of an endpoint file's name: `<service>.metrics`.
const ENDPOINT_FILE_SUFFIX: &str = ".metrics";
/// Most bytes read from one endpoint file (`HOST:PORT` and a newline need far fewer).
const ENDPOINT_FILE_BYTES_MAX: u64 = 256;
/// Most endpoint files read from one run directory: a node runs a handful of services.
pub const ENDPOINT_FILES_MAX: usize = 64;

/// Writes `run_dir/<service>.metrics` holding `HOST:PORT` and a newline: where `service`'s process
/// serves its metrics. The text goes to a temporary name first and is then renamed over the file,
/// so a reader sees the old address or the new one, never a half-written one. Creates `run_dir`
/// if needed. A `service` that is empty, starts with a dot or holds a path separator is refused
/// (`InvalidInput`), as it could not be read back as one file of `run_dir`.
pub fn write_endpoint_file(run_dir: &Path, service: &str, address: SocketAddr) -> std::io::Result<()> {
    if service.is_empty() || service.starts_with('.') || service.contains(['/', '\\', '\0']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{service:?} cannot name a metrics endpoint file"),
        ));
    }
    std::fs::create_dir_all(run_dir)?;
    let path = run_dir.join(format!("{service}{ENDPOINT_FILE_SUFFIX}"));
    // The leading dot and the other suffix keep readers from taking the temporary for an endpoint.
    let temporary = run_dir.join(format!(".{service}{ENDPOINT_FILE_SUFFIX}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, format!("{address}\n"))?;
    std::fs::rename(&temporary, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Every `(service, address)` named by an endpoint file of `run_dir`, sorted by service. A missing
/// directory gives none (no service has started yet); an unreadable or malformed file is skipped
/// with a warning, so one bad file cannot hide the other services' metrics. At most
/// [`ENDPOINT_FILES_MAX`] files are read.
pub fn read_endpoint_files(run_dir: &Path) -> Vec<(String, SocketAddr)> {
    let entries = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            tracing::warn!(%error, run_dir = %run_dir.display(), "metrics: cannot list endpoint files");
            return Vec::new();
        }
    };
    let mut endpoints = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, run_dir = %run_dir.display(), "metrics: cannot list endpoint files");
                break;
            }
        };
        let name = entry.file_name();
        let Some(service) = name.to_str().and_then(|name| name.strip_suffix(ENDPOINT_FILE_SUFFIX)) else {
            continue;
        };
        if service.is_empty() || service.starts_with('.') {
            continue;
        }
        if endpoints.len() == ENDPOINT_FILES_MAX {
            tracing::warn!(run_dir = %run_dir.display(), "metrics: more than {ENDPOINT_FILES_MAX} endpoint files; the rest are ignored");
            break;
        }
        let path = entry.path();
        match read_endpoint_file(&path) {
            Ok(address) => endpoints.push((service.to_owned(), address)),
            Err(why) => tracing::warn!(path = %path.display(), "metrics: skipping endpoint file: {why}"),
        }
    }
    endpoints.sort();
    endpoints
}

/// The address in one endpoint file, or why there is none.
fn read_endpoint_file(path: &Path) -> Result<SocketAddr, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(ENDPOINT_FILE_BYTES_MAX).read_to_string(&mut text))
        .map_err(|error| error.to_string())?;
    let text = text.trim();
    text.parse().map_err(|_| format!("{text:?} is not HOST:PORT"))
}

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

    #[test]
    fn a_subset_of_groups_registers_only_their_families() {
        let metrics = Metrics::new(&[Group::Coord, Group::Warden]);
        // Updating a family that is not registered is allowed; it is just not rendered.
        metrics.nfs_read_bytes.inc_by(7);
        metrics.coord_term.set(3);
        metrics.service_restarts.get_or_create(&ServiceLabels { service: "nfs".to_owned() }).inc();
        let text = render_registry(&metrics.registry);
        assert!(text.contains("cairn_coord_term 3"), "{text}");
        assert!(text.contains("cairn_service_restarts_total{service=\"nfs\"} 1"), "{text}");
        for absent in [
            "cairn_nfs_",
            "cairn_replication_lag",
            "cairn_resync",
            "cairn_local_copies",
            "cairn_cluster_",
            "cairn_cldb_master",
        ] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Gives every family a sample: prometheus-client does not render a family without one.
    fn sample_everything(metrics: &Metrics) {
        let volume = VolumeLabels { volume: "v".to_owned() };
        let state = StateLabels { state: "ok" };
        metrics.nfs_requests.get_or_create(&OutcomeLabels { procedure: "READ", status: "ok" }).inc();
        metrics.nfs_duration.get_or_create(&ProcedureLabels { procedure: "READ" }).observe(0.001);
        metrics
            .replication_lag_records
            .get_or_create(&ReplicaLabels { volume: "v".to_owned(), replica: "r".to_owned() })
            .set(1);
        metrics.resync_sent_bytes.get_or_create(&volume).inc();
        metrics.resyncs.get_or_create(&volume).inc();
        metrics.local_copies.get_or_create(&state).set(1);
        metrics.cluster_containers.get_or_create(&state).set(1);
        metrics.cluster_nodes.get_or_create(&state).set(1);
        metrics.service_restarts.get_or_create(&ServiceLabels { service: "nfs".to_owned() }).inc();
    }

    #[test]
    fn every_family_belongs_to_exactly_one_group() {
        let metrics = Metrics::new(&Group::ALL);
        sample_everything(&metrics);
        let all = render_registry(&metrics.registry);
        let mut families_per_group = 0;
        for group in Group::ALL {
            let metrics = Metrics::new(&[group]);
            sample_everything(&metrics);
            let text = render_registry(&metrics.registry);
            let families = text.lines().filter(|line| line.starts_with("# TYPE ")).count();
            assert!(families > 0, "{group:?} registers nothing");
            families_per_group += families;
        }
        let families_all = all.lines().filter(|line| line.starts_with("# TYPE ")).count();
        assert_eq!(families_per_group, families_all, "{all}");
    }

    #[test]
    fn endpoint_files_round_trip_and_bad_ones_are_skipped() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let run_dir = dir.path().join("run");
        assert!(read_endpoint_files(&run_dir).is_empty());
        let nfs: SocketAddr = "127.0.0.1:4100".parse().expect("address");
        let cldb: SocketAddr = "[::1]:4200".parse().expect("address");
        write_endpoint_file(&run_dir, "nfs", "127.0.0.1:1".parse().expect("address")).expect("write");
        write_endpoint_file(&run_dir, "nfs", nfs).expect("rewrite");
        write_endpoint_file(&run_dir, "cldb", cldb).expect("write");
        assert_eq!(std::fs::read_to_string(run_dir.join("nfs.metrics")).expect("read"), "127.0.0.1:4100\n");
        std::fs::write(run_dir.join("coord.metrics"), "not an address\n").expect("write");
        std::fs::write(run_dir.join("notes.txt"), "127.0.0.1:9\n").expect("write");
        std::fs::write(run_dir.join(".fileserver.metrics.1.tmp"), "127.0.0.1:9\n").expect("write");
        assert_eq!(read_endpoint_files(&run_dir), vec![("cldb".to_owned(), cldb), ("nfs".to_owned(), nfs)]);
        for bad in ["", ".hidden", "a/b"] {
            let error = write_endpoint_file(&run_dir, bad, nfs).expect_err("refused");
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
