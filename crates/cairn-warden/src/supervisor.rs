//! The supervision loop. Every `TICK` the Warden looks at each service of its configuration, in
//! dependency order, and moves it one step: starts what may run (its dependencies run somewhere
//! in the cluster, and a slot is free if its count is limited), notices what died and restarts
//! it after a capped backoff (or marks it failed after too many failures), stops what the
//! configuration no longer lists or an operator stopped, and fences itself: a count-limited
//! service is stopped before the Warden's coord session could expire, since another node's
//! Warden takes the slot once it does.
//!
//! One loop rather than a task per service: the steps are short, the state is in one place,
//! and a start, a stop and a slot change never race with each other.
//!
//! Coord paths: `/services/<service>/<node>` (ephemeral, the running instance, with its ports),
//! `SLOTS/<service>/<k>` (ephemeral, the k-th of a limited count, held while the service is
//! meant to run here), and the CLDB's `warden` paths for the published state, the operators'
//! requests and alarms.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_cldb::proto::{
    Alarm, AlarmKind, NodeServices, ServiceAction, ServiceRequest, ServiceStatus, alarm_key,
};
use cairn_cldb::warden::{ALARMS, NODES, REQUESTS};
use cairn_coord::api::{CoordError, CreateMode};
use cairn_coord::client::{ClientOptions, CoordClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cgroup::{self, MemoryCgroup};
use crate::conf::{self, ConfDir, Count, HealthCheck, Triplet};
use crate::{heap, process};

/// How often the loop runs.
const TICK: Duration = Duration::from_millis(250);
/// The Warden's coord session: a dead node's slots are free this long after its death.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// A count-limited service is stopped when the session may end within this margin.
const FENCE_MARGIN: Duration = Duration::from_millis(1500);
/// How often the published state is rewritten when nothing changed (memory, uptime).
const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// Where the slots of count-limited services are.
pub const SLOTS: &str = "/cairn/warden/slots";
/// Where running services register.
pub const SERVICES: &str = "/services";

/// A built-in service: how this node runs it.
#[derive(Clone, Debug)]
pub struct Builtin {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub ports: Vec<(String, u16)>,
}

/// What the Warden of one node needs.
#[derive(Clone, Debug)]
pub struct WardenConfig {
    pub node: String,
    /// The host others reach this node at.
    pub host: String,
    /// Holds `warden.conf` and `conf.d/`.
    pub conf_dir: PathBuf,
    /// Where the Warden writes `warden.json` (its state, also published in coord).
    pub run_dir: PathBuf,
    /// Coord members, `HOST:PORT`.
    pub coord: Vec<String>,
    /// The built-in services this node may run (those its configuration gives ports).
    pub builtins: Vec<Builtin>,
}

/// Runs the Warden until `stop` turns true, then stops every service (dependents first).
/// Fails only if the configuration cannot be read at start.
pub async fn run(config: WardenConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let loaded =
        conf::load(&config.conf_dir).map_err(|error| anyhow::anyhow!("cannot start the Warden: {error}"))?;
    let mut warden = Warden::new(config, loaded);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        warden.step().await;
    }
    warden.shutdown().await;
    Ok(())
}

struct Running {
    child: tokio::process::Child,
    pid: i32,
    started: Instant,
    started_ms: u64,
    cgroup: Option<MemoryCgroup>,
    heap: Option<u64>,
    oom_kills_before: u64,
    /// What the instance was started with: a changed definition restarts it.
    launch: Launch,
}

#[derive(Default)]
struct Service {
    running: Option<Running>,
    restarts: u64,
    /// Failures within the retry window.
    failures: Vec<Instant>,
    backoff_until: Option<Instant>,
    /// Stopped by an operator: stays stopped until started again.
    held_stopped: bool,
    /// Gave up restarting it: why.
    failed: Option<String>,
    /// The slot held (count-limited services), and in which session.
    slot: Option<(String, u64)>,
    /// The session in which `/services/<name>/<node>` was created.
    registered: Option<u64>,
    state: &'static str,
    detail: String,
    next_health: Option<Instant>,
    health_failures: u32,
}

/// How a service is run.
#[derive(Clone, Debug, PartialEq)]
struct Launch {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log_file: Option<PathBuf>,
    ports: Vec<(String, u16)>,
    health: Option<HealthCheck>,
    health_interval: Duration,
    health_failures: u32,
}

struct Warden {
    config: WardenConfig,
    conf: ConfDir,
    /// The configuration files as last read (path, modified, length): a change reloads them.
    conf_stamp: Vec<(PathBuf, Option<SystemTime>, u64)>,
    services: BTreeMap<String, Service>,
    session: Option<CoordClient>,
    connecting: Option<JoinHandle<Result<CoordClient, CoordError>>>,
    /// Paths made persistent in this session.
    made: BTreeSet<String>,
    last_publish: Option<(Instant, NodeServices)>,
    /// Alarms to keep raised, and the ones written in coord.
    alarms: BTreeMap<String, Alarm>,
    alarms_written: BTreeSet<String>,
    total_memory: u64,
    cgroups: Option<cgroup::CgroupVersion>,
    cgroup_warned: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn stamp(conf_dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut paths = vec![conf_dir.join("warden.conf")];
    if let Ok(entries) = std::fs::read_dir(conf_dir.join("conf.d")) {
        paths.extend(entries.flatten().map(|entry| entry.path()));
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let metadata = std::fs::metadata(&path).ok();
            let modified = metadata.as_ref().and_then(|m| m.modified().ok());
            let len = metadata.map_or(0, |m| m.len());
            (path, modified, len)
        })
        .collect()
}

impl Warden {
    fn new(config: WardenConfig, conf: ConfDir) -> Warden {
        let total_memory = heap::total_memory_bytes().unwrap_or_else(|error| {
            tracing::error!("cannot read the machine's memory ({error}): no memory shares");
            0
        });
        Warden {
            conf_stamp: stamp(&config.conf_dir),
            config,
            conf,
            services: BTreeMap::new(),
            session: None,
            connecting: None,
            made: BTreeSet::new(),
            last_publish: None,
            alarms: BTreeMap::new(),
            alarms_written: BTreeSet::new(),
            total_memory,
            cgroups: cgroup::available(),
            cgroup_warned: false,
        }
    }

    /// One pass over everything.
    async fn step(&mut self) {
        self.reload_conf();
        self.tend_session().await;
        self.take_requests().await;
        let triplets = self.triplets();
        let wanted: BTreeSet<String> = triplets.iter().map(|t| t.service.clone()).collect();
        // A service no longer configured here stops and gives up its slot (held while it runs
        // or waits out a backoff), so that another node may run it.
        let dropped: Vec<String> =
            self.services.keys().filter(|name| !wanted.contains(*name)).cloned().collect();
        for name in dropped.iter().rev() {
            self.stop(name, "no longer in the configuration").await;
            self.release_slot(name).await;
        }
        self.services.retain(|name, _| wanted.contains(name));
        for triplet in &triplets {
            self.tend(triplet).await;
        }
        self.publish().await;
    }

    /// The triplets of the services this node can run, dependencies first.
    fn triplets(&self) -> Vec<Triplet> {
        let all = self.conf.triplets();
        let order =
            conf::start_order(&all).unwrap_or_else(|_| all.iter().map(|t| t.service.clone()).collect());
        order
            .into_iter()
            .filter_map(|name| all.iter().find(|t| t.service == name).cloned())
            .filter(|t| self.launch(&t.service).is_some())
            .collect()
    }

    fn launch(&self, name: &str) -> Option<Launch> {
        if let Some(builtin) = self.config.builtins.iter().find(|b| b.name == name) {
            return Some(Launch {
                program: builtin.program.clone().into_os_string(),
                args: builtin.args.clone(),
                env: Vec::new(),
                log_file: None,
                ports: builtin.ports.clone(),
                health: None,
                health_interval: Duration::from_secs(5),
                health_failures: 3,
            });
        }
        let plugin = self.conf.plugins.get(name)?;
        Some(Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), plugin.command.clone().into()],
            env: plugin.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            log_file: plugin.log_file.clone(),
            ports: plugin.ports.iter().map(|port| ("port".to_owned(), *port)).collect(),
            health: plugin.health.clone(),
            health_interval: plugin.health_interval,
            health_failures: plugin.health_failures,
        })
    }

    /// Re-reads the configuration files when one changed. A bad file is refused with an alarm;
    /// the last good configuration stays in force.
    fn reload_conf(&mut self) {
        let now = stamp(&self.config.conf_dir);
        if now == self.conf_stamp {
            return;
        }
        self.conf_stamp = now;
        let subject = format!("{}/warden.conf", self.config.node);
        match conf::load(&self.config.conf_dir) {
            Ok(loaded) => {
                tracing::info!("configuration reloaded from {}", self.config.conf_dir.display());
                self.conf = loaded;
                self.clear_alarm(AlarmKind::ConfigRejected, &subject);
            }
            Err(error) => {
                tracing::error!("configuration refused, the previous one stays in force: {error}");
                self.raise_alarm(
                    AlarmKind::ConfigRejected,
                    &subject,
                    format!("node {}: {error}; the previous configuration stays in force", self.config.node),
                );
            }
        }
    }

    /// Keeps a coord session: connects in the background (coord may be one of the services
    /// this Warden is about to start), and forgets what the old session held once it ends.
    async fn tend_session(&mut self) {
        if self.session.as_ref().is_some_and(|s| !s.is_alive()) {
            tracing::warn!("coord session ended; opening another");
            self.session = None;
        }
        if self.session.is_some() {
            return;
        }
        match self.connecting.take() {
            Some(task) if task.is_finished() => match task.await {
                Ok(Ok(client)) => {
                    tracing::info!("coord session {:#x} open", client.session());
                    self.session = Some(client);
                    self.made.clear();
                    self.last_publish = None;
                    self.alarms_written.clear();
                }
                Ok(Err(error)) => tracing::debug!(%error, "no coord session yet"),
                Err(error) => tracing::warn!(%error, "coord connection task failed"),
            },
            Some(task) => self.connecting = Some(task),
            None => {
                let members = self.config.coord.clone();
                self.connecting = Some(tokio::spawn(async move {
                    let options = ClientOptions {
                        session_timeout: Some(SESSION_TIMEOUT),
                        request_timeout: Duration::from_secs(2),
                    };
                    CoordClient::connect(&members, options).await
                }));
            }
        }
    }

    /// The session, if it is safe to act on: its end is more than the fence margin away.
    fn safe_session(&self) -> Option<&CoordClient> {
        let session = self.session.as_ref()?;
        let until = session.session_valid_until()?;
        (until > tokio::time::Instant::now() + FENCE_MARGIN).then_some(session)
    }

    /// Creates `path` and its parents as persistent znodes (once per session).
    async fn make_path(&mut self, path: &str) -> Result<(), CoordError> {
        let Some(session) = self.session.clone() else {
            return Err(CoordError::Unavailable { reason: "no coord session".into() });
        };
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            if self.made.contains(&at) {
                continue;
            }
            match session.create(&at, b"", CreateMode::Persistent).await {
                Ok(_) | Err(CoordError::NodeExists { .. }) => {
                    self.made.insert(at.clone());
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Creates an ephemeral of this session, replacing one an earlier session of this Warden
    /// left (`ours` says whether an existing one is ours to replace).
    async fn claim(
        &mut self,
        path: &str,
        data: &[u8],
        ours: impl Fn(&[u8]) -> bool,
    ) -> Result<bool, CoordError> {
        let parent = path.rsplit_once('/').map_or("/", |(parent, _)| parent).to_owned();
        self.make_path(&parent).await?;
        let Some(session) = self.session.clone() else { return Ok(false) };
        for _ in 0..2 {
            match session.create(path, data, CreateMode::Ephemeral).await {
                Ok(_) => return Ok(true),
                Err(CoordError::NodeExists { .. }) => match session.get(path).await {
                    Ok((_, stat)) if stat.ephemeral_owner == session.session() => return Ok(true),
                    Ok((existing, _)) if ours(&existing) => match session.delete(path, None).await {
                        Ok(()) | Err(CoordError::NoNode { .. }) => {}
                        Err(error) => return Err(error),
                    },
                    Ok(_) => return Ok(false),
                    Err(CoordError::NoNode { .. }) => {}
                    Err(error) => return Err(error),
                },
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    }

    async fn tend(&mut self, triplet: &Triplet) {
        let name = triplet.service.as_str();
        let service = self.services.entry(name.to_owned()).or_default();
        if let Some(running) = &mut service.running {
            match running.child.try_wait() {
                Ok(Some(status)) => return self.exited(name, status).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(service = name, %error, "cannot check the process"),
            }
            return self.tend_running(triplet).await;
        }
        if service.held_stopped {
            return self.set_state(name, "stopped", "stopped by an operator".into());
        }
        if let Some(why) = service.failed.clone() {
            return self.set_state(name, "failed", why);
        }
        if let Some(until) = service.backoff_until
            && until > Instant::now()
        {
            let detail = service.detail.clone();
            return self.set_state(name, "backoff", detail);
        }
        for dependency in &triplet.dependencies {
            if !self.runs_somewhere(dependency).await {
                return self.set_state(name, "waiting", format!("waiting for {dependency}"));
            }
        }
        if let Count::Nodes(count) = triplet.count
            && !self.take_slot(name, count).await
        {
            let detail = format!("{count} instance(s) allowed, running elsewhere");
            return self.set_state(name, "waiting", detail);
        }
        self.start(name).await;
    }

    fn set_state(&mut self, name: &str, state: &'static str, detail: String) {
        if let Some(service) = self.services.get_mut(name) {
            service.state = state;
            service.detail = detail;
        }
    }

    /// A running service: fenced if its count is limited and the session is at risk, stopped
    /// if its slot is beyond a lowered count or its definition changed, health-checked, and
    /// registered.
    async fn tend_running(&mut self, triplet: &Triplet) {
        let name = triplet.service.as_str();
        if let Count::Nodes(count) = triplet.count {
            if self.safe_session().is_none() {
                tracing::warn!(service = name, "coord session at risk: stopping a count-limited service");
                self.stop(name, "stopped: the coord session is at risk (another node may take it over)")
                    .await;
                return;
            }
            let slot_index = self
                .services
                .get(name)
                .and_then(|s| s.slot.as_ref())
                .and_then(|(path, _)| path.rsplit_once('/').and_then(|(_, k)| k.parse::<u32>().ok()));
            if slot_index.is_none_or(|index| index >= count) {
                self.stop(name, "its count was lowered").await;
                self.release_slot(name).await;
                return;
            }
        }
        let launch = self.launch(name);
        let changed = self
            .services
            .get(name)
            .and_then(|s| s.running.as_ref())
            .is_some_and(|r| Some(&r.launch) != launch.as_ref());
        if changed {
            tracing::info!(service = name, "definition changed: restarting");
            self.stop(name, "its definition changed").await;
            return;
        }
        if !self.healthy(name).await {
            return;
        }
        if !self.ready(name).await {
            return self.set_state(name, "starting", "waiting for its port to accept connections".into());
        }
        self.register(name).await;
        self.set_state(name, "running", String::new());
    }

    /// A built-in service is ready (and registered, so that its dependents may start) once its
    /// first port accepts connections; a pluggable one at once (its health check, if any, runs
    /// from then on).
    async fn ready(&mut self, name: &str) -> bool {
        let Some(service) = self.services.get(name) else { return false };
        if service.registered.is_some() || service.state == "running" {
            return true;
        }
        let Some(builtin) = self.config.builtins.iter().find(|b| b.name == name) else { return true };
        let Some((_, port)) = builtin.ports.first() else { return true };
        let address = (self.config.host.as_str(), *port);
        tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(address))
            .await
            .is_ok_and(|connected| connected.is_ok())
    }

    /// Runs the service's health check when due; after too many failures in a row, the service
    /// is killed (and restarted as if it had died). False once killed.
    async fn healthy(&mut self, name: &str) -> bool {
        let Some(launch) = self.launch(name) else { return true };
        let Some(check) = launch.health.clone() else { return true };
        let now = Instant::now();
        let Some(service) = self.services.get_mut(name) else { return true };
        let started = service.running.as_ref().map_or(now, |r| r.started);
        let due = service.next_health.unwrap_or(started + launch.health_interval);
        if now < due {
            return true;
        }
        service.next_health = Some(now + launch.health_interval);
        let ok = match &check {
            HealthCheck::Tcp { port } => tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(("127.0.0.1", *port)),
            )
            .await
            .is_ok_and(|connected| connected.is_ok()),
            HealthCheck::Command { command } => tokio::time::timeout(
                Duration::from_secs(10),
                tokio::process::Command::new("/bin/sh").arg("-c").arg(command).kill_on_drop(true).status(),
            )
            .await
            .is_ok_and(|status| status.is_ok_and(|s| s.success())),
        };
        let Some(service) = self.services.get_mut(name) else { return true };
        if ok {
            service.health_failures = 0;
            return true;
        }
        service.health_failures += 1;
        tracing::warn!(service = name, failures = service.health_failures, "health check failed");
        if service.health_failures < launch.health_failures {
            return true;
        }
        service.health_failures = 0;
        let failures = launch.health_failures;
        if let Some(running) = service.running.as_mut() {
            let grace = Duration::from_secs(2);
            let _ = process::stop_tree(&mut running.child, running.pid, running.cgroup.as_ref(), grace).await;
        }
        let status = match self.services.get_mut(name).and_then(|s| s.running.as_mut()) {
            Some(running) => running.child.wait().await.ok(),
            None => None,
        };
        tracing::warn!(service = name, "killed after {failures} failed health checks");
        if let Some(status) = status {
            self.exited(name, status).await;
        }
        false
    }

    /// True if `service` is registered somewhere in the cluster (this node included): it runs
    /// and accepts connections.
    async fn runs_somewhere(&mut self, service: &str) -> bool {
        let Some(session) = self.session.clone() else { return false };
        matches!(session.children(&format!("{SERVICES}/{service}")).await, Ok(nodes) if !nodes.is_empty())
    }

    /// Takes one of the `count` slots of a limited service, or keeps the one held.
    async fn take_slot(&mut self, name: &str, count: u32) -> bool {
        let Some(session) = self.safe_session().map(CoordClient::session) else { return false };
        if let Some((_, held_in)) = self.services.get(name).and_then(|s| s.slot.clone())
            && held_in == session
        {
            return true;
        }
        // A read first: a Warden waiting for a slot held elsewhere retries every tick, and a
        // failed create would still be a write through the quorum.
        let Some(client) = self.session.clone() else { return false };
        let taken = match client.children(&format!("{SLOTS}/{name}")).await {
            Ok(taken) => taken,
            Err(CoordError::NoNode { .. }) => Vec::new(),
            Err(error) => {
                tracing::debug!(service = name, %error, "cannot read the slots");
                return false;
            }
        };
        let node = self.config.node.clone();
        for index in 0..count {
            if taken.contains(&index.to_string()) {
                continue;
            }
            let path = format!("{SLOTS}/{name}/{index}");
            match self.claim(&path, node.as_bytes(), |existing| existing == node.as_bytes()).await {
                Ok(true) => {
                    tracing::info!(service = name, slot = index, "slot taken");
                    if let Some(service) = self.services.get_mut(name) {
                        service.slot = Some((path, session));
                    }
                    return true;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(service = name, %error, "cannot take a slot");
                    return false;
                }
            }
        }
        false
    }

    async fn release_slot(&mut self, name: &str) {
        let Some((path, held_in)) = self.services.get_mut(name).and_then(|s| s.slot.take()) else { return };
        if let Some(session) = &self.session
            && session.session() == held_in
            && let Err(error) = session.delete(&path, None).await
        {
            tracing::warn!(service = name, %error, "cannot release slot {path}");
        }
    }

    async fn register(&mut self, name: &str) {
        let Some(session) = self.session.as_ref().map(CoordClient::session) else { return };
        let Some(service) = self.services.get(name) else { return };
        if service.registered == Some(session) {
            return;
        }
        let Some(running) = &service.running else { return };
        let record = serde_json::json!({
            "node": self.config.node,
            "host": self.config.host,
            "service": name,
            "pid": running.pid,
            "ports": running.launch.ports,
            "started_ms": running.started_ms,
        });
        let path = format!("{SERVICES}/{name}/{}", self.config.node);
        let data = record.to_string().into_bytes();
        let node = self.config.node.clone();
        let ours = move |existing: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(existing).is_ok_and(|v| v["node"] == node.as_str())
        };
        match self.claim(&path, &data, ours).await {
            Ok(true) => {
                if let Some(service) = self.services.get_mut(name) {
                    service.registered = Some(session);
                }
            }
            Ok(false) => tracing::warn!(service = name, "{path} is held by someone else"),
            Err(error) => tracing::debug!(service = name, %error, "cannot register"),
        }
    }

    async fn unregister(&mut self, name: &str) {
        let Some(service) = self.services.get_mut(name) else { return };
        let Some(registered_in) = service.registered.take() else { return };
        if let Some(session) = &self.session
            && session.session() == registered_in
        {
            let path = format!("{SERVICES}/{name}/{}", self.config.node);
            match session.delete(&path, None).await {
                Ok(()) | Err(CoordError::NoNode { .. }) => {}
                Err(error) => tracing::warn!(service = name, %error, "cannot unregister"),
            }
        }
    }

    async fn start(&mut self, name: &str) {
        let Some(launch) = self.launch(name) else { return };
        let heap = heap::allocate(&self.conf, &[name.to_owned()], self.total_memory).get(name).copied();
        let mut cgroup = None;
        if let Some(limit) = heap
            && self.conf.warden.memory_enforce
        {
            match self.cgroups {
                Some(_) => match MemoryCgroup::create(&self.config.node, name, limit) {
                    Ok(created) => cgroup = Some(created),
                    Err(error) => tracing::error!(service = name, %error, "memory limit not enforced"),
                },
                None if !self.cgroup_warned => {
                    self.cgroup_warned = true;
                    tracing::error!(
                        "no cgroup memory controller on this machine: memory limits not enforced"
                    );
                }
                None => {}
            }
        }
        let mut env = vec![
            (OsString::from("CAIRN_NODE"), OsString::from(&self.config.node)),
            (OsString::from("CAIRN_SERVICE"), OsString::from(name)),
        ];
        if let Some(bytes) = heap {
            env.push(("CAIRN_HEAP_BYTES".into(), bytes.to_string().into()));
            env.push(("CAIRN_HEAP_MB".into(), (bytes >> 20).to_string().into()));
        }
        env.extend(launch.env.iter().cloned());
        let spec = process::Spawn {
            program: PathBuf::from(&launch.program),
            args: launch.args.clone(),
            env,
            cwd: None,
            log_file: launch.log_file.clone(),
            cgroup: cgroup.as_ref(),
        };
        let spawned = process::spawn(&spec);
        let service = self.services.entry(name.to_owned()).or_default();
        match spawned {
            Ok(child) => {
                let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0);
                tracing::info!(service = name, pid, heap_bytes = ?heap, "started");
                service.running = Some(Running {
                    child,
                    pid,
                    started: Instant::now(),
                    started_ms: now_ms(),
                    oom_kills_before: cgroup.as_ref().map_or(0, MemoryCgroup::oom_kills),
                    cgroup,
                    heap,
                    launch,
                });
                service.next_health = None;
                service.health_failures = 0;
                service.state = "starting";
                service.detail.clear();
            }
            Err(error) => {
                tracing::error!(service = name, %error, "cannot start");
                if let Some(cgroup) = cgroup {
                    let _ = cgroup.remove();
                }
                self.failed_once(name, format!("cannot start: {error}")).await;
            }
        }
    }

    /// The service's process ended without being asked to: clean up what it left, then restart
    /// it after a backoff, or give up.
    async fn exited(&mut self, name: &str, status: ExitStatus) {
        self.unregister(name).await;
        let Some(mut running) = self.services.get_mut(name).and_then(|s| s.running.take()) else { return };
        let mut why = process::describe_exit(status);
        if let Some(cgroup) = &running.cgroup
            && cgroup.oom_kills() > running.oom_kills_before
        {
            let limit = running.heap.unwrap_or(0) >> 20;
            why = format!("{why}: over its memory limit of {limit} MiB");
        }
        // Whatever the process left behind (its children) goes with it.
        process::signal_group(running.pid, libc::SIGKILL);
        if let Some(cgroup) = running.cgroup.take() {
            cgroup.kill_all();
            let _ = cgroup.remove();
        }
        let _ = running.child.wait().await;
        self.forget_endpoint(name);
        let ran = running.started.elapsed();
        tracing::warn!(service = name, pid = running.pid, "exited after {ran:.1?} ({why})");
        self.failed_once(name, why).await;
    }

    /// Counts a failure: a backoff before the next start, or, past the retries, failed.
    async fn failed_once(&mut self, name: &str, why: String) {
        let retries = self.conf.warden.retries;
        let window = self.conf.warden.retry_window;
        let initial = self.conf.warden.backoff_initial;
        let max = self.conf.warden.backoff_max;
        let now = Instant::now();
        let Some(service) = self.services.get_mut(name) else { return };
        service.restarts += 1;
        cairn_metrics::service_restarted(name);
        service.failures.retain(|at| now.duration_since(*at) < window);
        service.failures.push(now);
        let count = service.failures.len();
        if count > retries as usize {
            let message = format!(
                "node {}: {name} failed {count} times within {window:?}, last: {why}; not restarted \
                 (`cairn service start --node {} --service {name}` tries again)",
                self.config.node, self.config.node
            );
            tracing::error!("{message}");
            let detail = format!("gave up after {count} failures; last: {why}");
            service.failed = Some(detail.clone());
            service.detail = detail;
            service.state = "failed";
            self.release_slot(name).await;
            let subject = format!("{}/{name}", self.config.node);
            self.raise_alarm(AlarmKind::ServiceFailed, &subject, message);
            return;
        }
        let exponent = u32::try_from(count.saturating_sub(1)).unwrap_or(u32::MAX).min(16);
        let delay = initial.saturating_mul(1 << exponent).min(max);
        service.backoff_until = Some(now + delay);
        service.state = "backoff";
        service.detail = format!("{why}; restarting in {delay:?}");
    }

    /// Stops a running service (not a failure), and leaves nothing of it running.
    async fn stop(&mut self, name: &str, why: &str) {
        self.unregister(name).await;
        let grace = self.conf.warden.stop_timeout;
        let Some(service) = self.services.get_mut(name) else { return };
        let Some(mut running) = service.running.take() else { return };
        service.state = "stopping";
        tracing::info!(service = name, pid = running.pid, "stopping: {why}");
        match process::stop_tree(&mut running.child, running.pid, running.cgroup.as_ref(), grace).await {
            Ok(status) => tracing::info!(service = name, "stopped ({})", process::describe_exit(status)),
            Err(error) => tracing::warn!(service = name, %error, "stopping"),
        }
        if let Some(cgroup) = running.cgroup.take() {
            let _ = cgroup.remove();
        }
        self.forget_endpoint(name);
        if let Some(service) = self.services.get_mut(name) {
            service.detail = why.to_owned();
        }
    }

    /// A built-in service names its metrics endpoint in `run/<service>.metrics`; once it is gone
    /// the file would send the console to a dead (or someone else's) port.
    fn forget_endpoint(&self, name: &str) {
        let _ = std::fs::remove_file(self.config.run_dir.join(format!("{name}.metrics")));
    }

    /// Takes the operators' requests for this node (`cairn service start|stop|restart`).
    async fn take_requests(&mut self) {
        let Some(session) = self.session.clone() else { return };
        let dir = format!("{REQUESTS}/{}", self.config.node);
        let Ok(mut names) = session.children(&dir).await else { return };
        names.sort();
        for entry in names {
            let path = format!("{dir}/{entry}");
            let Ok((data, _)) = session.get(&path).await else { continue };
            if session.delete(&path, None).await.is_err() {
                continue;
            }
            match serde_json::from_slice::<ServiceRequest>(&data) {
                Ok(request) => self.apply(request).await,
                Err(error) => tracing::warn!("ignored a malformed request at {path}: {error}"),
            }
        }
    }

    async fn apply(&mut self, request: ServiceRequest) {
        let name = request.service.as_str();
        tracing::info!(service = name, action = ?request.action, "operator request");
        if matches!(request.action, ServiceAction::Stop | ServiceAction::Restart) {
            self.stop(name, "stopped by an operator").await;
            self.release_slot(name).await;
        }
        let subject = format!("{}/{name}", self.config.node);
        let Some(service) = self.services.get_mut(name) else { return };
        match request.action {
            ServiceAction::Stop => {
                service.held_stopped = true;
                service.state = "stopped";
            }
            ServiceAction::Start | ServiceAction::Restart => {
                service.held_stopped = false;
                service.failed = None;
                service.failures.clear();
                service.backoff_until = None;
                self.clear_alarm(AlarmKind::ServiceFailed, &subject);
            }
        }
    }

    fn raise_alarm(&mut self, kind: AlarmKind, subject: &str, message: String) {
        let key = alarm_key(kind, subject);
        let since_ms = self.alarms.get(&key).map_or_else(now_ms, |a| a.since_ms);
        self.alarms.insert(key.clone(), Alarm { kind, subject: subject.to_owned(), since_ms, message });
        self.alarms_written.remove(&key);
    }

    fn clear_alarm(&mut self, kind: AlarmKind, subject: &str) {
        let key = alarm_key(kind, subject);
        if self.alarms.remove(&key).is_some() {
            // Deleted by the next publish.
            self.alarms_written.insert(key);
        }
    }

    /// Writes the node's state (coord and `run/warden.json`) when it changed or every
    /// `PUBLISH_EVERY`, and brings the alarms in coord in line.
    async fn publish(&mut self) {
        let state = self.snapshot();
        let due = self.last_publish.as_ref().is_none_or(|(at, last)| {
            at.elapsed() >= PUBLISH_EVERY || strip_volatile(last) != strip_volatile(&state)
        });
        if !due {
            return;
        }
        let json = serde_json::to_vec_pretty(&state).unwrap_or_default();
        let local = self.config.run_dir.join("warden.json");
        let temporary = self.config.run_dir.join("warden.json.new");
        if std::fs::create_dir_all(&self.config.run_dir).is_ok() && std::fs::write(&temporary, &json).is_ok()
        {
            let _ = std::fs::rename(&temporary, &local);
        }
        self.last_publish = Some((Instant::now(), state));
        let Some(session) = self.session.clone() else { return };
        let path = format!("{NODES}/{}", self.config.node);
        match session.set(&path, &json, None).await {
            Ok(_) => {}
            Err(CoordError::NoNode { .. }) => {
                let node = self.config.node.clone();
                let ours = move |existing: &[u8]| {
                    serde_json::from_slice::<NodeServices>(existing).is_ok_and(|n| n.node == node)
                };
                if let Err(error) = self.claim(&path, &json, ours).await {
                    tracing::debug!(%error, "cannot publish the node's services");
                }
            }
            Err(error) => tracing::debug!(%error, "cannot publish the node's services"),
        }
        self.sync_alarms(&session).await;
    }

    async fn sync_alarms(&mut self, session: &CoordClient) {
        let pending: Vec<String> =
            self.alarms_written.iter().filter(|k| !self.alarms.contains_key(*k)).cloned().collect();
        for key in pending {
            match session.delete(&format!("{ALARMS}/{key}"), None).await {
                Ok(()) | Err(CoordError::NoNode { .. }) => {
                    self.alarms_written.remove(&key);
                }
                Err(error) => tracing::debug!(%error, "cannot clear alarm {key}"),
            }
        }
        let unwritten: Vec<Alarm> = self
            .alarms
            .iter()
            .filter(|(k, _)| !self.alarms_written.contains(*k))
            .map(|(_, a)| a.clone())
            .collect();
        if unwritten.is_empty() || self.make_path(ALARMS).await.is_err() {
            return;
        }
        for alarm in unwritten {
            let key = alarm.key();
            let path = format!("{ALARMS}/{key}");
            let data = serde_json::to_vec(&alarm).unwrap_or_default();
            let written = match session.create(&path, &data, CreateMode::Persistent).await {
                Ok(_) => true,
                Err(CoordError::NodeExists { .. }) => session.set(&path, &data, None).await.is_ok(),
                Err(_) => false,
            };
            if written {
                self.alarms_written.insert(key);
            }
        }
    }

    fn snapshot(&self) -> NodeServices {
        let triplets = self.conf.triplets();
        let services =
            self.services
                .iter()
                .map(|(name, service)| {
                    let running = service.running.as_ref();
                    let memory = running.map(|r| {
                        r.cgroup
                            .as_ref()
                            .and_then(MemoryCgroup::usage_bytes)
                            .unwrap_or_else(|| process::group_rss_bytes(r.pid))
                    });
                    let count = triplets.iter().find(|t| t.service == *name).map_or_else(String::new, |t| {
                        match t.count {
                            Count::All => "all".to_owned(),
                            Count::Nodes(n) => n.to_string(),
                        }
                    });
                    ServiceStatus {
                        name: name.clone(),
                        state: if service.state.is_empty() { "waiting".into() } else { service.state.into() },
                        detail: service.detail.clone(),
                        pid: running.and_then(|r| u32::try_from(r.pid).ok()),
                        memory_bytes: memory,
                        heap_bytes: running.and_then(|r| r.heap),
                        restarts: service.restarts,
                        started_ms: running.map(|r| r.started_ms),
                        count,
                        ports: running.map(|r| r.launch.ports.clone()).unwrap_or_default(),
                    }
                })
                .collect();
        NodeServices {
            node: self.config.node.clone(),
            host: self.config.host.clone(),
            pid: std::process::id(),
            updated_ms: now_ms(),
            services,
        }
    }

    /// Stops every service, dependents first, then ends the session (its ephemerals go).
    async fn shutdown(&mut self) {
        let mut order: Vec<String> = self.triplets().into_iter().map(|t| t.service).collect();
        for name in self.services.keys() {
            if !order.contains(name) {
                order.push(name.clone());
            }
        }
        for name in order.iter().rev() {
            self.stop(name, "the node is stopping").await;
            self.release_slot(name).await;
        }
        if let Some(session) = self.session.take() {
            let _ = session.close().await;
        }
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
    }
}

/// The state without what changes on its own (memory, time): a change in the rest is published
/// at once.
fn strip_volatile(state: &NodeServices) -> Vec<(String, String, String, Option<u32>, u64)> {
    state
        .services
        .iter()
        .map(|s| (s.name.clone(), s.state.clone(), s.detail.clone(), s.pid, s.restarts))
        .collect()
}
