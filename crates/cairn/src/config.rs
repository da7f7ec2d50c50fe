//! Central configuration: configuration files kept in the cluster and copied onto every node.
//!
//! The files live in the volume [`VOLUME`] mounted at [`MOUNT_PATH`]: `default/<relative path>`
//! for every node, `nodes/<node>/<relative path>` for one node (it wins over the default file of
//! the same relative path). The relative path is where the file lands in the node's
//! configuration directory (`NodeConfig::conf_dir`, default DATA_DIR/conf): `warden.conf`,
//! `conf.d/warden.<service>.conf`, or any other file. `exports` is the one exception: on a node
//! without an explicit `exports` file in its node configuration it goes to DATA_DIR/exports,
//! the file the NFS gateway serves, and the gateway is told to re-read it (SIGHUP).
//!
//! Each node's Warden runs [`run_pull_task`]. A pull reads both trees through the client library
//! (no NFS), validates the Warden's files with the Warden's parsers and `exports` with the
//! gateway's, and writes each good file whose bytes differ (temporary file, fsync, rename), so
//! the Warden's live reload sees only real changes. A file that fails validation is not written:
//! the node keeps its last good copy and a `ConfigRejected` alarm is raised in coord (subject
//! `<node>/<path in the volume>`), cleared by the first pull that finds the file good or gone.
//! Local files the cluster does not hold are left alone: a node may keep files of its own.
//!
//! A pull runs when the Warden starts, every `config.pull.interval.sec` of the local
//! warden.conf (300 s by default; 10 s after a pull that could not reach the cluster), and on
//! demand: `cairn config pull` writes [`PULL_REQUEST`] (`{generation, node}`), which every
//! Warden reads once a second, and waits for their [`PullReport`]s at `REPORTS/<node>`.
//!
//! What reloads: warden.conf and conf.d/ are applied by the Warden's own live reload (a changed
//! plugin file restarts that plugin; counts, added and removed services take effect), `exports`
//! by SIGHUP to the nfs service. Any other file is only copied; the program reading it sees it
//! at its next restart.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{block_on, now_ms};

use anyhow::Context;
use cairn_cldb::CldbClient;
use cairn_cldb::proto::{Alarm, AlarmKind, NodeState, VolumeSpec};
use cairn_cldb::warden::{ALARMS, NODES};
use cairn_client::ClusterFs;
use cairn_client::namespace::{Mount, Namespace, PathError};
use cairn_coord::api::{CoordError, CreateMode};
use cairn_coord::client::{ClientOptions, CoordClient};
use cairn_store::{Caller, CreateHow, FileKind, FileSystem, SetAttributes, Stability, StoreError};
use cairn_types::Fid;
use cairn_warden::conf::{PLUGIN_DIR, WARDEN_CONF_FILE, parse_service_conf, parse_warden_conf};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::admin::{Table, Target};
use crate::node::NodeConfig;

/// The configuration volume.
pub const VOLUME: &str = "cairn.configuration";
/// Where the configuration volume is mounted in the cluster namespace.
pub const MOUNT_PATH: &str = "/var/cairn/configuration";
/// The volume's directory of files for every node.
const DEFAULT_DIR: &str = "default";
/// The volume's directory holding one directory of files per node.
const NODES_DIR: &str = "nodes";
/// The pulled file that is the NFS gateway's exports.
const EXPORTS_FILE: &str = "exports";
/// On-demand pulls: `{generation, node}` ([`PullRequest`]), written by `cairn config pull`.
pub const PULL_REQUEST: &str = "/cairn/warden/pull";
/// Each node's answer to the last pull, `REPORTS/<node>` ([`PullReport`]).
pub const REPORTS: &str = "/cairn/warden/config";
/// How often a Warden looks for an on-demand pull (one cheap `get`).
const REQUEST_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// After a pull that could not reach the cluster (at start the CLDB may not be up yet), the next
/// one comes this soon rather than a whole interval later.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// Most files one node takes from the cluster: a limit, so a wrong copy into the volume cannot
/// flood a node's configuration directory.
const FILES_MAX: usize = 1000;
/// Deepest directory nesting taken from the cluster.
const DEPTH_MAX: usize = 16;
/// Largest file taken (the Warden's own limit on its files).
const FILE_BYTES_MAX: u64 = cairn_warden::conf::CONF_FILE_BYTES_MAX;
/// Longest relative path accepted.
const RELATIVE_PATH_BYTES_MAX: usize = 1024;
/// Copies of the configuration volume, at most (fewer on a smaller cluster).
const REPLICATION_MAX: u32 = 3;
/// Files written under this suffix are half written: pulls skip them in the volume, and the
/// Warden ignores them in conf.d/ (not `warden.*.conf`).
const TEMPORARY_SUFFIX: &str = ".cairn-tmp";
/// Every alarm of a pull starts with this, which tells them from the Warden's own alarms.
const ALARM_PREFIX: &str = "central configuration: ";
/// Longest one coord call may take (reconnection included).
const COORD_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the CLDB when a pull lists the volumes (the locator waits up to 30 s for a
/// volume's master).
const CLDB_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `cairn config pull` looks for the nodes' answers.
const REPORT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Bytes of one READ or WRITE in the volume.
const PIECE_BYTES: usize = 1 << 20;

/// An on-demand pull, at [`PULL_REQUEST`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PullRequest {
    /// Milliseconds since the Unix epoch, and always above the previous request's.
    pub generation: u64,
    /// Only this node pulls; `None`: every node.
    pub node: Option<String>,
}

/// What one pull did on one node, at `REPORTS/<node>`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    pub node: String,
    /// The generation of the last on-demand pull this node answered (0: none).
    pub generation: u64,
    /// When the pull ended (ms since the Unix epoch).
    pub time_ms: u64,
    /// Relative paths written because their bytes changed.
    pub written: Vec<String>,
    /// Relative paths whose local copy already had the cluster's bytes.
    pub unchanged: Vec<String>,
    /// Files refused; their local copies stay.
    pub rejected: Vec<Rejected>,
    /// Why the pull could not read the cluster or write a file; nothing was rejected for it.
    pub error: Option<String>,
}

/// A cluster file that failed validation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Where it would have gone, relative to the configuration directory.
    pub path: String,
    /// Where it is in the volume (`default/...` or `nodes/<node>/...`).
    pub source: String,
    pub error: String,
}

// ------------------------------------------------------------------------------------------
// Validation and names

/// Checks a file the way its reader will: `warden.conf` and `conf.d/warden.<name>.conf` with the
/// Warden's parsers, `exports` with the NFS gateway's. Other files are not checked.
pub(crate) fn validate(relative: &str, bytes: &[u8]) -> Result<(), String> {
    let text = || std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned());
    if relative == WARDEN_CONF_FILE {
        parse_warden_conf(text()?).map(drop).map_err(|e| e.to_string())
    } else if let Some(name) = plugin_name(relative) {
        parse_service_conf(name, text()?).map(drop).map_err(|e| e.to_string())
    } else if relative == EXPORTS_FILE {
        cairn_nfs::exports::Exports::parse(text()?).map(drop).map_err(|e| e.to_string())
    } else {
        Ok(())
    }
}

/// `conf.d/warden.<name>.conf` → `name`.
fn plugin_name(relative: &str) -> Option<&str> {
    relative
        .strip_prefix(PLUGIN_DIR)?
        .strip_prefix('/')?
        .strip_prefix("warden.")?
        .strip_suffix(".conf")
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

/// A relative path as the volume and the configuration directory take it: `a/b/c`, no empty,
/// `.` or `..` component, no half-written temporary file.
fn check_relative(text: &str) -> Result<String, String> {
    let trimmed = text.trim_start_matches("./");
    if trimmed.is_empty() || trimmed.starts_with('/') {
        return Err(format!(
            "{text:?} is not a relative path (like `warden.conf` or `conf.d/warden.x.conf`)"
        ));
    }
    if trimmed.len() > RELATIVE_PATH_BYTES_MAX {
        return Err(format!("a path longer than {RELATIVE_PATH_BYTES_MAX} bytes"));
    }
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.ends_with(TEMPORARY_SUFFIX) {
            return Err(format!("{text:?} has a bad component {part:?}"));
        }
    }
    Ok(trimmed.to_owned())
}

/// A node name usable as a directory of the volume.
fn check_node(node: &str) -> anyhow::Result<()> {
    if node.is_empty() || node == "." || node == ".." || node.contains('/') || node.contains('\0') {
        anyhow::bail!("{node:?} is not a node name");
    }
    Ok(())
}

/// Where a relative path lives in the volume for `node` (`None`: the default files).
fn source_dir(node: Option<&str>) -> String {
    match node {
        Some(node) => format!("{NODES_DIR}/{node}"),
        None => DEFAULT_DIR.to_owned(),
    }
}

// ------------------------------------------------------------------------------------------
// One pull on one node

/// Where a node keeps the files it pulls.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    pub node: String,
    /// Where relative paths land (the Warden's configuration directory).
    pub conf_dir: PathBuf,
    /// Where a pulled `exports` goes: the gateway's exports file when the node configuration
    /// names none (DATA_DIR/exports), else `conf_dir/exports` like any other file.
    pub exports_file: PathBuf,
    /// Whether `exports_file` is the one the node's gateway serves (then it is told to reload).
    pub exports_served: bool,
    /// The Warden's run directory (`warden.json` names the nfs service's pid).
    pub run_dir: PathBuf,
}

impl NodeFiles {
    pub fn of(config: &NodeConfig) -> NodeFiles {
        let conf_dir = config.conf_dir();
        let (exports_file, exports_served) = match &config.exports {
            Some(_) => (conf_dir.join(EXPORTS_FILE), false),
            None => (config.data_dir.join(EXPORTS_FILE), true),
        };
        NodeFiles {
            node: config.name.clone(),
            conf_dir,
            exports_file,
            exports_served,
            run_dir: config.data_dir.join("run"),
        }
    }

    fn destination(&self, relative: &str) -> PathBuf {
        if relative == EXPORTS_FILE { self.exports_file.clone() } else { self.conf_dir.join(relative) }
    }
}

/// A file of the cluster for one node, after the merge.
#[derive(Clone, Debug)]
struct ClusterFile {
    /// Its path in the volume.
    source: String,
    /// Its bytes, or why they could not be taken (too large, unreadable).
    content: Result<Vec<u8>, String>,
}

/// Writes the cluster's files (relative path → file, node-specific ones already merged over the
/// default ones) into the node's directories; the report of the pass (generation 0).
fn apply(files: &NodeFiles, cluster: BTreeMap<String, ClusterFile>) -> PullReport {
    let mut report = PullReport { node: files.node.clone(), ..PullReport::default() };
    let mut errors = Vec::new();
    for (relative, file) in cluster {
        let checked = file.content.and_then(|bytes| validate(&relative, &bytes).map(|()| bytes));
        let bytes = match checked {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(
                    "{MOUNT_PATH}/{} rejected, node {} keeps its copy of {relative}: {error}",
                    file.source,
                    files.node
                );
                report.rejected.push(Rejected { path: relative, source: file.source, error });
                continue;
            }
        };
        let destination = files.destination(&relative);
        if std::fs::read(&destination).is_ok_and(|local| local == bytes) {
            report.unchanged.push(relative);
            continue;
        }
        match write_atomically(&destination, &bytes) {
            Ok(()) => {
                tracing::info!("{} written from {MOUNT_PATH}/{}", destination.display(), file.source);
                report.written.push(relative);
            }
            Err(error) => {
                tracing::error!("cannot write {}: {error}", destination.display());
                errors.push(format!("cannot write {}: {error}", destination.display()));
            }
        }
    }
    if !errors.is_empty() {
        report.error = Some(errors.join("; "));
    }
    report
}

/// Replaces `path` with `bytes` so that a reader sees the old file or the new one, never a mix:
/// a temporary file beside it, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut temporary_name = path.file_name().unwrap_or_default().to_os_string();
    temporary_name.push(TEMPORARY_SUFFIX);
    let temporary = parent.join(temporary_name);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    std::fs::File::open(parent)?.sync_all()
}

/// Tells the node's NFS gateway to re-read its exports: SIGHUP to the nfs service, whose pid the
/// Warden writes in `run/warden.json`.
fn reload_gateway(run_dir: &Path) -> anyhow::Result<()> {
    let path = run_dir.join("warden.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let state: cairn_cldb::proto::NodeServices = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the Warden's state", path.display()))?;
    let pid = state
        .services
        .iter()
        .find(|s| s.name == "nfs")
        .and_then(|s| s.pid)
        .context("the nfs service is not running on this node")?;
    let pid = i32::try_from(pid).context("the nfs service's pid is out of range")?;
    // SAFETY: kill(2) with a pid the Warden wrote for its own child; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!("cannot signal the nfs service (pid {pid}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A regular file of the volume.
struct VolumeFile {
    fs: Arc<ClusterFs>,
    fid: Fid,
    size_bytes: u64,
}

/// Every regular file below `dir` of the volume, by path relative to `dir` (at most
/// [`FILES_MAX`], [`DEPTH_MAX`] deep; half-written pushes skipped).
fn list_tree(namespace: &Namespace, dir: &Path) -> anyhow::Result<BTreeMap<String, VolumeFile>> {
    let mut out = BTreeMap::new();
    let Some(top) = namespace.lookup_optional(dir)? else { return Ok(out) };
    if top.attributes.kind != FileKind::Directory {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let mut stack = vec![(top.fid, String::new(), 0usize)];
    while let Some((fid, prefix, depth)) = stack.pop() {
        let entries = namespace.list(&top.fs, fid).map_err(|e| PathError::store(&dir.join(&prefix), e))?;
        for (name, child, attributes) in entries {
            let Ok(name) = std::str::from_utf8(&name) else {
                tracing::warn!("{}: skipping a name that is not UTF-8", dir.join(&prefix).display());
                continue;
            };
            if name.ends_with(TEMPORARY_SUFFIX) {
                continue;
            }
            let relative = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
            match attributes.kind {
                FileKind::Directory if depth + 1 < DEPTH_MAX => stack.push((child, relative, depth + 1)),
                FileKind::Regular => {
                    if out.len() >= FILES_MAX {
                        anyhow::bail!("{} holds more than {FILES_MAX} files", dir.display());
                    }
                    out.insert(
                        relative,
                        VolumeFile { fs: top.fs.clone(), fid: child, size_bytes: attributes.size_bytes },
                    );
                }
                _ => tracing::debug!("{}: skipping {relative} (not a regular file)", dir.display()),
            }
        }
    }
    Ok(out)
}

/// A whole file of the volume (at most [`FILE_BYTES_MAX`]).
fn read_file(fs: &ClusterFs, fid: Fid, size_bytes: u64) -> Result<Vec<u8>, String> {
    if size_bytes > FILE_BYTES_MAX {
        return Err(format!("{size_bytes} bytes, more than the limit of {FILE_BYTES_MAX}"));
    }
    let mut bytes = Vec::new();
    loop {
        let read = fs
            .read(&Caller::root(), fid, bytes.len() as u64, PIECE_BYTES as u32)
            .map_err(|e| format!("cannot read it: {}", cairn_client::namespace::store_error_text(&e)))?;
        let eof = read.eof || read.data.is_empty();
        bytes.extend_from_slice(&read.data);
        if bytes.len() as u64 > FILE_BYTES_MAX {
            return Err(format!("more than the limit of {FILE_BYTES_MAX} bytes"));
        }
        if eof {
            return Ok(bytes);
        }
    }
}

/// The cluster's files for `node`: `default/` with `nodes/<node>/` over it.
fn cluster_files(
    namespace: &Namespace,
    mount: &Mount,
    node: &str,
) -> anyhow::Result<BTreeMap<String, ClusterFile>> {
    let mut merged = BTreeMap::new();
    for scope in [source_dir(None), source_dir(Some(node))] {
        for (relative, file) in list_tree(namespace, &mount.path.join(&scope))? {
            let content = read_file(&file.fs, file.fid, file.size_bytes);
            merged.insert(relative.clone(), ClusterFile { source: format!("{scope}/{relative}"), content });
        }
    }
    Ok(merged)
}

/// One pull (blocking: call it from a blocking thread).
fn pull_once(handle: tokio::runtime::Handle, cldbs: Vec<String>, files: &NodeFiles) -> PullReport {
    let failed = |error: String| PullReport {
        node: files.node.clone(),
        time_ms: now_ms(),
        error: Some(error),
        ..PullReport::default()
    };
    let cldb = crate::admin::client(cldbs.clone(), CLDB_TIMEOUT);
    let locator = crate::admin::client(cldbs, CLDB_TIMEOUT * 3);
    let namespace = match Namespace::connect_on(handle, cldb, locator, Caller::root()) {
        Ok(namespace) => namespace,
        Err(error) => return failed(format!("cannot list the volumes: {error}")),
    };
    let Some(mount) = namespace.mounts().iter().find(|m| m.name == VOLUME).cloned() else {
        tracing::debug!("no volume {VOLUME} yet: nothing to pull");
        return PullReport { node: files.node.clone(), time_ms: now_ms(), ..PullReport::default() };
    };
    let cluster = match cluster_files(&namespace, &mount, &files.node) {
        Ok(cluster) => cluster,
        Err(error) => return failed(format!("cannot read {MOUNT_PATH}: {error:#}")),
    };
    let mut report = apply(files, cluster);
    report.time_ms = now_ms();
    if files.exports_served && report.written.iter().any(|p| p == EXPORTS_FILE) {
        match reload_gateway(&files.run_dir) {
            Ok(()) => tracing::info!("asked the NFS gateway to reload its exports"),
            Err(error) => tracing::warn!("exports written but not reloaded: {error:#}"),
        }
    }
    report
}

// ------------------------------------------------------------------------------------------
// The Warden's pull task

/// The Warden's puller: pulls at start, every `config.pull.interval.sec`, and when
/// `cairn config pull` asks; raises and clears the alarms of rejected files and writes its report
/// in coord. Returns when `stop` turns true (a pull under way finishes on its blocking thread).
pub async fn run_pull_task(config: NodeConfig, mut stop: watch::Receiver<bool>) {
    let files = NodeFiles::of(&config);
    let cldbs = config.cldbs.clone();
    let members = config.coord_addresses();
    if cldbs.is_empty() || members.is_empty() {
        tracing::info!("no CLDB or coord configured: central configuration is off");
        return;
    }
    let mut coord: Option<CoordClient> = None;
    // The last request seen (for any node), and the last one this node answered.
    let mut seen = 0u64;
    let mut answered = 0u64;
    let mut next_pull = tokio::time::Instant::now();
    loop {
        tokio::select! {
            // A dropped sender means the Warden is gone: stop too.
            changed = stop.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REQUEST_POLL_INTERVAL) => {}
        }
        if *stop.borrow() {
            return;
        }
        if coord.as_ref().is_none_or(|c| !c.is_alive()) {
            coord = connect_coord(&members).await.ok();
        }
        let mut requested = false;
        if let Some(client) = &coord
            && let Ok(Some(request)) = read_request(client).await
            && request.generation > seen
        {
            seen = request.generation;
            if request.node.as_ref().is_none_or(|n| *n == files.node) {
                requested = true;
                answered = request.generation;
            }
        }
        if !requested && tokio::time::Instant::now() < next_pull {
            continue;
        }
        let handle = tokio::runtime::Handle::current();
        let (task_files, task_cldbs) = (files.clone(), cldbs.clone());
        let pull = tokio::task::spawn_blocking(move || pull_once(handle, task_cldbs, &task_files));
        let mut report = tokio::select! {
            _ = stop.changed() => return,
            done = pull => match done {
                Ok(report) => report,
                Err(error) => PullReport {
                    node: files.node.clone(),
                    time_ms: now_ms(),
                    error: Some(format!("the pull task failed: {error}")),
                    ..PullReport::default()
                },
            },
        };
        report.generation = answered;
        let interval = pull_interval(&files.conf_dir);
        next_pull = tokio::time::Instant::now()
            + if report.error.is_some() { RETRY_AFTER_FAILURE.min(interval) } else { interval };
        match &report.error {
            Some(error) => tracing::warn!("configuration pull failed: {error}"),
            None => tracing::info!(
                "configuration pulled: {} written, {} unchanged, {} rejected",
                report.written.len(),
                report.unchanged.len(),
                report.rejected.len()
            ),
        }
        let Some(client) = &coord else { continue };
        if report.error.is_none()
            && let Err(error) = sync_alarms(client, &files.node, &report.rejected).await
        {
            tracing::warn!("cannot update the configuration alarms: {error}");
        }
        let path = format!("{REPORTS}/{}", files.node);
        let data = serde_json::to_vec(&report).unwrap_or_default();
        if let Err(error) = set_or_create(client, &path, &data).await {
            tracing::warn!("cannot write the pull report at {path}: {error}");
        }
    }
}

/// `config.pull.interval.sec` of the node's warden.conf (the default when it cannot be read).
fn pull_interval(conf_dir: &Path) -> Duration {
    std::fs::read_to_string(conf_dir.join(WARDEN_CONF_FILE))
        .ok()
        .and_then(|text| parse_warden_conf(&text).ok())
        .map_or(cairn_warden::conf::CONFIG_PULL_INTERVAL_DEFAULT, |conf| conf.config_pull_interval)
}

/// The alarms this node raised for rejected files become exactly `rejected`: new ones created,
/// the ones of files now good (or gone from the cluster) deleted. The Warden's own alarms (no
/// [`ALARM_PREFIX`]) are not touched.
async fn sync_alarms(client: &CoordClient, node: &str, rejected: &[Rejected]) -> Result<(), CoordError> {
    let mut raised: BTreeMap<String, Alarm> = BTreeMap::new();
    let ours = format!("{node}/");
    let children = match client.children(ALARMS).await {
        Ok(children) => children,
        Err(CoordError::NoNode { .. }) => Vec::new(),
        Err(error) => return Err(error),
    };
    for key in children {
        let Ok((data, _)) = client.get(&format!("{ALARMS}/{key}")).await else { continue };
        let Ok(alarm) = serde_json::from_slice::<Alarm>(&data) else { continue };
        if alarm.kind == AlarmKind::ConfigRejected
            && alarm.subject.starts_with(&ours)
            && alarm.message.starts_with(ALARM_PREFIX)
        {
            raised.insert(key, alarm);
        }
    }
    let mut wanted = BTreeSet::new();
    for file in rejected {
        let subject = format!("{node}/{}", file.source);
        let message = format!(
            "{ALARM_PREFIX}{MOUNT_PATH}/{} rejected: {}; node {node} keeps its copy of {}",
            file.source, file.error, file.path
        );
        let key = cairn_cldb::proto::alarm_key(AlarmKind::ConfigRejected, &subject);
        wanted.insert(key.clone());
        if raised.get(&key).is_some_and(|a| a.message == message) {
            continue;
        }
        let since_ms = raised.get(&key).map_or_else(now_ms, |a| a.since_ms);
        let alarm = Alarm { kind: AlarmKind::ConfigRejected, subject, since_ms, message };
        let data = serde_json::to_vec(&alarm).unwrap_or_default();
        set_or_create(client, &format!("{ALARMS}/{key}"), &data).await?;
        tracing::info!("alarm raised: {}", alarm.message);
    }
    for key in raised.keys().filter(|k| !wanted.contains(*k)) {
        match client.delete(&format!("{ALARMS}/{key}"), None).await {
            Ok(()) | Err(CoordError::NoNode { .. }) => tracing::info!("alarm {key} cleared"),
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Coord

async fn connect_coord(members: &[String]) -> anyhow::Result<CoordClient> {
    let options = ClientOptions { session_timeout: None, request_timeout: COORD_CALL_TIMEOUT };
    CoordClient::connect(members, options)
        .await
        .with_context(|| format!("cannot reach coord at {}", members.join(",")))
}

async fn read_request(client: &CoordClient) -> Result<Option<PullRequest>, CoordError> {
    match client.get(PULL_REQUEST).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
        Err(CoordError::NoNode { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Sets a persistent znode, creating it (and its parents) when missing.
async fn set_or_create(client: &CoordClient, path: &str, data: &[u8]) -> Result<(), CoordError> {
    match client.set(path, data, None).await {
        Ok(_) => return Ok(()),
        Err(CoordError::NoNode { .. }) => {}
        Err(error) => return Err(error),
    }
    let mut at = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        at.push('/');
        at.push_str(part);
        let content = if i + 1 == parts.len() { data } else { b"" };
        match client.create(&at, content, CreateMode::Persistent).await {
            Ok(_) => {}
            Err(CoordError::NodeExists { .. }) if i + 1 == parts.len() => {
                client.set(&at, data, None).await?;
            }
            Err(CoordError::NodeExists { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The volume

/// Creates the configuration volume when the cluster has none: mounted at [`MOUNT_PATH`], with
/// min(3, nodes up) copies. `cairn up --nodes N` calls it once the default volume exists;
/// `cairn config push` calls it before its first write.
pub(crate) async fn ensure_volume(cldb: &CldbClient) -> anyhow::Result<()> {
    match cldb.volume_info(VOLUME).await {
        Ok(_) => return Ok(()),
        Err(cairn_cldb::CldbError::NoSuchVolume { .. }) => {}
        Err(error) => return Err(anyhow::anyhow!("cannot look for volume {VOLUME}: {error}")),
    }
    let nodes = cldb.list_nodes().await.map_err(|e| anyhow::anyhow!("cannot list the nodes: {e}"))?;
    let up = nodes.iter().filter(|n| n.record.state == NodeState::Up).count();
    let replication = u32::try_from(up).unwrap_or(u32::MAX).clamp(1, REPLICATION_MAX);
    let spec = VolumeSpec {
        name: VOLUME.to_owned(),
        mount_path: Some(MOUNT_PATH.to_owned()),
        replication: Some(replication),
        min_replication: Some(1),
        // A few small files: one data container is plenty.
        data_containers: Some(1),
        ..VolumeSpec::default()
    };
    match cldb.create_volume(spec).await {
        Ok(_) => {
            tracing::info!("created volume {VOLUME} at {MOUNT_PATH} with {replication} copies");
            Ok(())
        }
        // Made meanwhile by another command.
        Err(cairn_cldb::CldbError::VolumeExists { .. }) => Ok(()),
        Err(error) => Err(anyhow::anyhow!("cannot create volume {VOLUME}: {error}")),
    }
}

/// Writes `bytes` as the file `path` of the cluster: a temporary file beside it (which pulls
/// skip), written FILE_SYNC, then renamed over the old one, so a pull reads the old bytes or the
/// new ones.
fn write_cluster_file(namespace: &Namespace, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let (parent, name) = namespace.parent(path)?;
    let mut temporary = name.clone();
    temporary.extend_from_slice(TEMPORARY_SUFFIX.as_bytes());
    let caller = &namespace.caller;
    let attributes = SetAttributes { mode: Some(0o644), size_bytes: Some(0), ..SetAttributes::default() };
    let failed = |e: StoreError| anyhow::Error::from(PathError::store(path, e));
    let created =
        parent.fs.create(caller, parent.fid, &temporary, CreateHow::Unchecked(attributes)).map_err(failed)?;
    for (i, piece) in bytes.chunks(PIECE_BYTES).enumerate() {
        let offset = (i * PIECE_BYTES) as u64;
        parent.fs.write(caller, created.fid, offset, piece, Stability::FileSync).map_err(failed)?;
    }
    parent.fs.rename(caller, parent.fid, &temporary, parent.fid, &name).map_err(failed)?;
    namespace.forget(path);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The CLI

#[derive(Args)]
#[command(after_help = "\
Files live in the volume cairn.configuration, mounted at /var/cairn/configuration: default/ for \
every node, nodes/<node>/ for one node (it wins over default/). A file's path below those is its \
path in the node's configuration directory (DATA_DIR/conf): warden.conf, conf.d/warden.<service>.conf, \
...; `exports` goes to DATA_DIR/exports and the NFS gateway reloads it. Every Warden pulls every \
config.pull.interval.sec (warden.conf, default 300) and when `cairn config pull` asks.")]
pub struct ConfigArgs {
    #[command(flatten)]
    target: Target,
    /// Coord members, host:port, comma-separated [default: CAIRN_COORD, else the `coord` list of
    /// DATA_DIR/cluster.json].
    #[arg(long, global = true, value_delimiter = ',', value_name = "HOST:PORT")]
    coord: Vec<String>,
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Ask every node's Warden (or one) to pull now; wait for their answers and print what each
    /// wrote, kept and rejected (exit 1 if a file was rejected or a node did not answer).
    Pull(PullArgs),
    /// Copy a local file into the configuration volume (validated first when it is a Warden or
    /// exports file), then pull on the nodes it concerns.
    Push {
        file: PathBuf,
        /// For this node only (nodes/<NODE>/) [default: every node, default/].
        #[arg(long)]
        node: Option<String>,
        /// Its path in the configuration directory, e.g. conf.d/warden.x.conf [default: the
        /// file's name].
        #[arg(long, value_name = "RELATIVE")]
        name: Option<String>,
        /// Do not ask the nodes to pull.
        #[arg(long)]
        no_pull: bool,
        /// Seconds to wait for the nodes' answers.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        wait: u64,
    },
    /// List the files the configuration volume holds.
    Ls,
    /// Print one file of the configuration volume.
    Cat {
        /// Its path below default/ (or nodes/<NODE>/).
        name: String,
        /// The node-specific file [default: the default one].
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Args)]
struct PullArgs {
    /// Only this node [default: every node whose Warden runs].
    #[arg(long)]
    node: Option<String>,
    /// Seconds to wait for the nodes' answers.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    wait: u64,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let coord = crate::coord::coord_addresses(&args.coord, &args.target.data_dir);
    match args.command {
        ConfigCommand::Pull(pull) => pull_command(&args.target, &coord, pull.node.as_deref(), pull.wait),
        ConfigCommand::Push { file, node, name, no_pull, wait } => {
            push(&args.target, &file, node.as_deref(), name.as_deref())?;
            if no_pull {
                return Ok(());
            }
            pull_command(&args.target, &coord, node.as_deref(), wait)
        }
        ConfigCommand::Ls => ls(&args.target),
        ConfigCommand::Cat { name, node } => cat(&args.target, &name, node.as_deref()),
    }
}

/// The namespace and the configuration volume's mount, if the volume exists.
fn connect(target: &Target) -> anyhow::Result<(Namespace, Option<Mount>)> {
    let addresses = crate::admin::cldb_addresses(target)?;
    let timeout = Duration::from_secs(target.timeout.max(1));
    let namespace = crate::fs_cli::cluster::connect(addresses, timeout, Caller::root())?;
    let mount = namespace.mounts().iter().find(|m| m.name == VOLUME).cloned();
    Ok((namespace, mount))
}

fn push(target: &Target, file: &Path, node: Option<&str>, name: Option<&str>) -> anyhow::Result<()> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: no file name to use (give --name)", file.display()))?
            .to_owned(),
    };
    let relative = check_relative(&name).map_err(|e| anyhow::anyhow!("bad --name: {e}"))?;
    if let Some(node) = node {
        check_node(node)?;
    }
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if size > FILE_BYTES_MAX {
        anyhow::bail!("{}: {size} bytes, more than the limit of {FILE_BYTES_MAX}", file.display());
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    validate(&relative, &bytes).map_err(|e| anyhow::anyhow!("{} refused: {e}", file.display()))?;
    let addresses = crate::admin::cldb_addresses(target)?;
    let timeout = Duration::from_secs(target.timeout.max(1));
    block_on(async { ensure_volume(&crate::admin::client(addresses, timeout)).await })?;
    let (namespace, mount) = connect(target)?;
    let mount = mount.with_context(|| format!("volume {VOLUME} exists but the CLDB does not list it"))?;
    let source = format!("{}/{relative}", source_dir(node));
    let path = mount.path.join(&source);
    if let Some(parent) = path.parent() {
        namespace.make_directories(parent, 0o755)?;
    }
    write_cluster_file(&namespace, &path, &bytes)?;
    let message = format!("Pushed {} to {}.", file.display(), path.display());
    // With --json, stdout is for the pull's JSON answer.
    if target.json {
        eprintln!("{message}");
    } else {
        println!("{message}");
    }
    Ok(())
}

/// What `cairn config pull` found for one node.
#[derive(Serialize)]
struct NodeOutcome {
    node: String,
    /// `None`: no answer in time.
    report: Option<PullReport>,
}

fn pull_command(target: &Target, members: &[String], node: Option<&str>, wait: u64) -> anyhow::Result<()> {
    let wait = Duration::from_secs(wait);
    let outcomes = block_on(async {
        let client = connect_coord(members).await?;
        let coord_failed = |e: CoordError| anyhow::anyhow!("coord at {}: {e}", members.join(","));
        let mut running = match client.children(NODES).await {
            Ok(children) => children,
            Err(CoordError::NoNode { .. }) => Vec::new(),
            Err(error) => return Err(coord_failed(error)),
        };
        running.sort();
        let targets: Vec<String> = match node {
            Some(node) if running.iter().any(|n| n == node) => vec![node.to_owned()],
            Some(node) => anyhow::bail!(
                "no Warden runs on node {node:?} (nodes with one: {})",
                if running.is_empty() { "none".to_owned() } else { running.join(", ") }
            ),
            None if running.is_empty() => anyhow::bail!("no Warden runs (none published at {NODES})"),
            None => running,
        };
        let previous = read_request(&client).await.map_err(coord_failed)?.map_or(0, |r| r.generation);
        let request = PullRequest { generation: now_ms().max(previous + 1), node: node.map(str::to_owned) };
        let data = serde_json::to_vec(&request).context("cannot encode the pull request")?;
        set_or_create(&client, PULL_REQUEST, &data).await.map_err(coord_failed)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut reports: BTreeMap<String, PullReport> = BTreeMap::new();
        loop {
            let pending: Vec<&String> = targets.iter().filter(|n| !reports.contains_key(*n)).collect();
            for node in pending {
                let Ok((data, _)) = client.get(&format!("{REPORTS}/{node}")).await else { continue };
                if let Ok(report) = serde_json::from_slice::<PullReport>(&data)
                    && report.generation >= request.generation
                {
                    reports.insert(node.clone(), report);
                }
            }
            if reports.len() == targets.len() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(REPORT_POLL_INTERVAL).await;
        }
        Ok(targets
            .into_iter()
            .map(|node| NodeOutcome { report: reports.remove(&node), node })
            .collect::<Vec<_>>())
    })?;
    if target.json {
        let text = serde_json::to_string_pretty(&outcomes).context("cannot encode the answer as JSON")?;
        println!("{text}");
    } else {
        print!("{}", outcome_table(&outcomes, wait));
    }
    let mut problems = Vec::new();
    let rejected: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.report.as_ref().is_some_and(|r| !r.rejected.is_empty()))
        .map(|o| o.node.as_str())
        .collect();
    if !rejected.is_empty() {
        problems.push(format!("files rejected on {}", rejected.join(", ")));
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.report.as_ref().is_some_and(|r| r.error.is_some()))
        .map(|o| o.node.as_str())
        .collect();
    if !failed.is_empty() {
        problems.push(format!("the pull failed on {}", failed.join(", ")));
    }
    let silent: Vec<&str> = outcomes.iter().filter(|o| o.report.is_none()).map(|o| o.node.as_str()).collect();
    if !silent.is_empty() {
        problems.push(format!("no answer within {}s from {}", wait.as_secs(), silent.join(", ")));
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// A row per node, then one line per file written or rejected.
fn outcome_table(outcomes: &[NodeOutcome], wait: Duration) -> String {
    let mut table = Table::new(&["NODE", "WRITTEN", "UNCHANGED", "REJECTED"]);
    let mut details = String::new();
    for outcome in outcomes {
        let node = &outcome.node;
        let Some(report) = &outcome.report else {
            table.row(vec![node.clone(), "-".into(), "-".into(), "-".into()]);
            details.push_str(&format!("{node}: no answer within {}s\n", wait.as_secs()));
            continue;
        };
        table.row(vec![
            node.clone(),
            report.written.len().to_string(),
            report.unchanged.len().to_string(),
            report.rejected.len().to_string(),
        ]);
        for path in &report.written {
            details.push_str(&format!("{node}: wrote {path}\n"));
        }
        for rejected in &report.rejected {
            details.push_str(&format!(
                "{node}: rejected {MOUNT_PATH}/{} (kept the local {}): {}\n",
                rejected.source, rejected.path, rejected.error
            ));
        }
        if let Some(error) = &report.error {
            details.push_str(&format!("{node}: pull failed: {error}\n"));
        }
    }
    format!("{}{details}", table.render_or("No nodes."))
}

/// A file of the volume as `ls` shows it.
#[derive(Serialize)]
struct Listed {
    /// `default` or the node's name.
    scope: String,
    path: String,
    size_bytes: u64,
}

fn ls(target: &Target) -> anyhow::Result<()> {
    let (namespace, mount) = connect(target)?;
    let mut listed = Vec::new();
    if let Some(mount) = &mount {
        let mut scopes = vec![("default".to_owned(), source_dir(None))];
        let nodes_dir = mount.path.join(NODES_DIR);
        if let Some(dir) = namespace.lookup_optional(&nodes_dir)?
            && dir.attributes.kind == FileKind::Directory
        {
            let entries = namespace.list(&dir.fs, dir.fid).map_err(|e| PathError::store(&nodes_dir, e))?;
            for (name, _, attributes) in entries {
                if attributes.kind == FileKind::Directory
                    && let Ok(name) = std::str::from_utf8(&name)
                {
                    scopes.push((name.to_owned(), source_dir(Some(name))));
                }
            }
        }
        for (scope, dir) in scopes {
            for (path, file) in list_tree(&namespace, &mount.path.join(&dir))? {
                listed.push(Listed { scope: scope.clone(), path, size_bytes: file.size_bytes });
            }
        }
    }
    if target.json {
        let text = serde_json::to_string_pretty(&listed).context("cannot encode the answer as JSON")?;
        println!("{text}");
        return Ok(());
    }
    if mount.is_none() {
        println!("No volume {VOLUME} yet (`cairn config push` creates it).");
        return Ok(());
    }
    let mut table = Table::new(&["SCOPE", "PATH", "SIZE"]);
    for file in &listed {
        table.row(vec![file.scope.clone(), file.path.clone(), file.size_bytes.to_string()]);
    }
    print!("{}", table.render_or(&format!("{MOUNT_PATH} holds no file.")));
    Ok(())
}

fn cat(target: &Target, name: &str, node: Option<&str>) -> anyhow::Result<()> {
    let relative = check_relative(name).map_err(|e| anyhow::anyhow!("bad name: {e}"))?;
    if let Some(node) = node {
        check_node(node)?;
    }
    let (namespace, mount) = connect(target)?;
    let mount = mount.with_context(|| format!("no volume {VOLUME} yet (`cairn config push` creates it)"))?;
    let path = mount.path.join(source_dir(node)).join(&relative);
    let file = namespace.lookup(&path)?;
    if file.attributes.kind != FileKind::Regular {
        anyhow::bail!("{}: not a regular file", path.display());
    }
    let bytes = read_file(&file.fs, file.fid, file.attributes.size_bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&bytes).and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLUGIN: &str = "services=echo:all\nservice.command=exec sleep 100000\n";

    fn files(root: &Path) -> NodeFiles {
        NodeFiles {
            node: "n1".into(),
            conf_dir: root.join("conf"),
            exports_file: root.join("exports"),
            exports_served: true,
            run_dir: root.join("run"),
        }
    }

    fn file(source: &str, text: &str) -> ClusterFile {
        ClusterFile { source: source.into(), content: Ok(text.as_bytes().to_vec()) }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_relative("conf.d/warden.x.conf").as_deref(), Ok("conf.d/warden.x.conf"));
        assert_eq!(check_relative("./warden.conf").as_deref(), Ok("warden.conf"));
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "x.cairn-tmp", "."] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(plugin_name("conf.d/warden.echo.conf"), Some("echo"));
        assert_eq!(plugin_name("conf.d/other.conf"), None);
        assert_eq!(plugin_name("warden.echo.conf"), None);
        assert!(check_node("n2").is_ok());
        assert!(check_node("../n2").is_err());
    }

    #[test]
    fn warden_files_are_validated_and_others_are_not() {
        assert!(validate("conf.d/warden.echo.conf", PLUGIN.as_bytes()).is_ok());
        let error = validate("conf.d/warden.echo.conf", b"services=echo:all\n").unwrap_err();
        assert!(error.contains("service.command"), "{error}");
        assert!(validate("warden.conf", cairn_warden::conf::DEFAULT_WARDEN_CONF.as_bytes()).is_ok());
        assert!(validate("warden.conf", b"services=a:x\n").is_err());
        assert!(validate("warden.conf", &[0xff, 0xfe]).is_err());
        assert!(validate("notes.txt", &[0xff, 0xfe]).is_ok());
    }

    #[test]
    fn a_pass_writes_changes_keeps_rejected_copies_and_leaves_local_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = files(dir.path());
        std::fs::create_dir_all(files.conf_dir.join("conf.d")).expect("mkdir");
        std::fs::write(files.conf_dir.join("local.txt"), "mine").expect("write");
        let good = files.conf_dir.join("conf.d/warden.echo.conf");
        std::fs::write(&good, PLUGIN).expect("write");
        let mut cluster = BTreeMap::new();
        cluster
            .insert("conf.d/warden.echo.conf".to_owned(), file("default/conf.d/warden.echo.conf", "x=1\n"));
        cluster.insert("notes/a.txt".to_owned(), file("nodes/n1/notes/a.txt", "hello"));
        cluster.insert(
            "big".to_owned(),
            ClusterFile { source: "default/big".into(), content: Err("too large".into()) },
        );
        let report = apply(&files, cluster.clone());
        assert_eq!(report.written, ["notes/a.txt"]);
        assert_eq!(report.rejected.len(), 2, "{report:?}");
        assert_eq!(std::fs::read_to_string(&good).expect("read"), PLUGIN, "the good copy stays");
        assert_eq!(std::fs::read_to_string(files.conf_dir.join("local.txt")).expect("read"), "mine");
        assert_eq!(std::fs::read_to_string(files.conf_dir.join("notes/a.txt")).expect("read"), "hello");
        // Again: nothing changes on disk.
        let report = apply(&files, cluster);
        assert!(report.written.is_empty() && report.unchanged == ["notes/a.txt"], "{report:?}");
        // exports goes to the gateway's file.
        let mut cluster = BTreeMap::new();
        cluster.insert("exports".to_owned(), file("default/exports", "/ *(rw)\n"));
        let report = apply(&files, cluster);
        assert_eq!(report.written, ["exports"]);
        assert!(dir.path().join("exports").exists() && !files.conf_dir.join("exports").exists());
        let leftovers: Vec<_> = std::fs::read_dir(&files.conf_dir)
            .expect("read_dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(TEMPORARY_SUFFIX))
            .collect();
        assert!(leftovers.is_empty());
    }
}
