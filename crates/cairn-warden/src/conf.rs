//! The Warden's configuration files: `warden.conf` (which services run on this node, in which
//! dependency order, with how much memory, and how restarts behave) and the pluggable service
//! files `conf.d/warden.<name>.conf` (any program run as a service: command, environment, ports,
//! log file, memory and health check).
//!
//! Both are `key=value` lines; `#` starts a comment line, blank lines are ignored and whitespace
//! around keys and values is trimmed. Keys under the prefixes we own (`services.`, `service.`)
//! must be known, so a typo is an error instead of a silently ignored setting; keys under any
//! other prefix (another product's settings sharing the file) are ignored.
//!
//! Parsing is pure (text in, values out) so the supervisor can re-read and diff the files when
//! they change; [`load`] is the only function here that touches the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// The name of the node-wide file inside the configuration directory.
pub const WARDEN_CONF_FILE: &str = "warden.conf";

/// The directory (inside the configuration directory) holding pluggable service files.
pub const PLUGIN_DIR: &str = "conf.d";

/// Services the Warden knows without a pluggable file. A plugin may not take one of these names,
/// even when this node's `warden.conf` does not list it, so a plugin can never be confused with
/// (or registered in coord as) the real service.
pub const BUILTIN_SERVICES: &[&str] = &["coord", "cldb", "fileserver", "nfs", "console"];

/// The heap name that means "the operating system" in `service.command.os.heapsize.*`; no service
/// may be called this.
pub const OS_HEAP_NAME: &str = "os";

/// A limit on configuration file size, so a wrong path (a log, a disk image) fails fast.
pub const CONF_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Default for `services.retries`.
pub const RETRIES_DEFAULT: u32 = 3;
/// Default for `services.retryinterval.time.sec`.
pub const RETRY_WINDOW_DEFAULT: Duration = Duration::from_secs(1800);
/// Default for `services.backoff.initial.ms`.
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(500);
/// Default for `services.backoff.max.ms`.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_millis(8000);
/// Default for `services.stop.timeout.sec`.
pub const STOP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default for `config.pull.interval.sec`.
pub const CONFIG_PULL_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);
/// Default for `service.health.interval.sec`.
pub const HEALTH_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Default for `service.health.failures`.
pub const HEALTH_FAILURES_DEFAULT: u32 = 3;

/// The file a new node gets: the built-in services in dependency order and every default spelled
/// out, so an operator sees what can be changed.
pub const DEFAULT_WARDEN_CONF: &str = "\
# warden.conf: the services the Warden runs on this node.
#
# services=<service>:<number of nodes>:<dependencies>;...
#   <number of nodes> is `all` or how many nodes of the cluster run the service;
#   <dependencies> (comma-separated) must be running before the service starts.
services=coord:all;cldb:all:coord;fileserver:all:coord;nfs:all:cldb,fileserver;console:all:cldb

# Memory. The operating system's share is reserved first; every service then gets
# max(min, min(max, rest * percent / 100)) of the rest (max and min in MB), through
# service.<name>.heapsize.{percent,max,min}.
service.command.os.heapsize.percent=10
service.command.os.heapsize.min=256
service.command.os.heapsize.max=4096
# Enforce each service's share with a memory cgroup.
services.memory.enforce=true

# Restarts: the delay starts at backoff.initial and doubles up to backoff.max; after `retries`
# failures within `retryinterval` seconds the service is marked failed.
services.retries=3
services.retryinterval.time.sec=1800
services.backoff.initial.ms=500
services.backoff.max.ms=8000

# Stopping: SIGTERM to the service's processes, SIGKILL after this many seconds.
services.stop.timeout.sec=10

# How often the Warden pulls the central configuration.
config.pull.interval.sec=300
";

/// How many nodes of the cluster run a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Count {
    /// Every node whose `warden.conf` lists the service.
    All,
    /// At most this many nodes. Invariant: positive.
    Nodes(u32),
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::All => f.write_str("all"),
            Count::Nodes(n) => write!(f, "{n}"),
        }
    }
}

/// One `<service>:<number of nodes>:<dependencies>` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Triplet {
    pub service: String,
    pub count: Count,
    /// Services that must run before this one starts. Invariant: no duplicates, not the service
    /// itself. They may be services this node does not run (they run elsewhere).
    pub dependencies: Vec<String>,
}

impl fmt::Display for Triplet {
    /// The `warden.conf` spelling, so errors and logs quote what the operator wrote.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.count)?;
        if !self.dependencies.is_empty() {
            write!(f, ":{}", self.dependencies.join(","))?;
        }
        Ok(())
    }
}

/// A memory share: `max(min, min(max, total * percent / 100))`; see [`crate::heap::heap_bytes`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeapSpec {
    /// Invariant: within `0.0..=100.0`.
    pub percent: Option<f64>,
    pub max_mb: Option<u64>,
    pub min_mb: Option<u64>,
}

impl HeapSpec {
    /// True when no field is set, i.e. the service has no memory setting at all.
    pub fn is_empty(&self) -> bool {
        self.percent.is_none() && self.max_mb.is_none() && self.min_mb.is_none()
    }

    /// Each field of `self`, or `fallback`'s where `self` has none.
    pub fn or(&self, fallback: &HeapSpec) -> HeapSpec {
        HeapSpec {
            percent: self.percent.or(fallback.percent),
            max_mb: self.max_mb.or(fallback.max_mb),
            min_mb: self.min_mb.or(fallback.min_mb),
        }
    }
}

/// The contents of `warden.conf`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WardenConf {
    /// In file order. Invariant: unique names, no dependency cycle.
    pub services: Vec<Triplet>,
    /// `service.command.os.heapsize.*`: reserved for the operating system before services.
    pub os_heap: HeapSpec,
    /// `service.<name>.heapsize.*` and `service.command.<name>.heapsize.*`.
    pub heaps: BTreeMap<String, HeapSpec>,
    /// Failures within `retry_window` before the service is marked failed.
    pub retries: u32,
    pub retry_window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Between SIGTERM and SIGKILL when stopping a service.
    pub stop_timeout: Duration,
    pub config_pull_interval: Duration,
    pub memory_enforce: bool,
}

impl Default for WardenConf {
    /// No services and every default setting.
    fn default() -> Self {
        WardenConf {
            services: Vec::new(),
            os_heap: HeapSpec::default(),
            heaps: BTreeMap::new(),
            retries: RETRIES_DEFAULT,
            retry_window: RETRY_WINDOW_DEFAULT,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            stop_timeout: STOP_TIMEOUT_DEFAULT,
            config_pull_interval: CONFIG_PULL_INTERVAL_DEFAULT,
            memory_enforce: true,
        }
    }
}

impl WardenConf {
    /// The triplet of `service`, if this file lists it.
    pub fn triplet(&self, service: &str) -> Option<&Triplet> {
        self.services.iter().find(|t| t.service == service)
    }
}

/// How the Warden decides a running service is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum HealthCheck {
    /// A TCP connection to this port on localhost succeeds.
    Tcp { port: u16 },
    /// This command (run with `/bin/sh -c`) exits with status 0.
    Command { command: String },
}

/// A program run as a service, from `conf.d/warden.<name>.conf`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PluggableService {
    /// Invariant: `triplet.service` equals the file's `<name>`.
    pub triplet: Triplet,
    /// Run with `/bin/sh -c`.
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    pub log_file: Option<PathBuf>,
    pub heap: HeapSpec,
    pub health: Option<HealthCheck>,
    pub health_interval: Duration,
    /// Consecutive failed checks before a restart. Invariant: positive.
    pub health_failures: u32,
}

/// Everything in a configuration directory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfDir {
    pub warden: WardenConf,
    /// By service name. Invariant: no name is built in, listed in `warden.conf`, or `os`, and
    /// the triplets of both files together have no dependency cycle.
    pub plugins: BTreeMap<String, PluggableService>,
}

impl ConfDir {
    /// Every service this node knows: `warden.conf`'s in file order, then the plugins' by name.
    pub fn triplets(&self) -> Vec<Triplet> {
        let built_in = self.warden.services.iter().cloned();
        built_in.chain(self.plugins.values().map(|p| p.triplet.clone())).collect()
    }

    /// The memory setting of `service`: `warden.conf`'s fields first (central settings override),
    /// then the plugin file's; `None` when neither sets anything.
    pub fn heap_spec(&self, service: &str) -> Option<HeapSpec> {
        let central = self.warden.heaps.get(service).cloned().unwrap_or_default();
        let merged = match self.plugins.get(service) {
            Some(plugin) => central.or(&plugin.heap),
            None => central,
        };
        (!merged.is_empty()).then_some(merged)
    }
}

/// A configuration problem, naming the file (and line) so the operator can fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    /// A problem with one line, e.g. `warden.conf line 4: unknown count `x` in `nfs:x:cldb``.
    #[error("{file} line {line}: {message}")]
    Line { file: String, line: usize, message: String },
    /// A problem with a file as a whole (a missing key, a clash with another file).
    #[error("{file}: {message}")]
    File { file: String, message: String },
    /// The services' dependencies form a cycle; `cycle` starts and ends with the same service.
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
    /// A file could not be read.
    #[error("cannot read {}: {message}", path.display())]
    Io { path: PathBuf, kind: std::io::ErrorKind, message: String },
}

impl ConfError {
    fn io(path: &Path, error: &std::io::Error) -> ConfError {
        ConfError::Io { path: path.to_path_buf(), kind: error.kind(), message: error.to_string() }
    }
}

/// Parses `warden.conf`. Triplets are checked for duplicates, self-dependencies and cycles.
pub fn parse_warden_conf(text: &str) -> Result<WardenConf, ConfError> {
    let file = WARDEN_CONF_FILE;
    let mut conf = WardenConf::default();
    let mut seen = SeenKeys::new(file);
    for entry in entries(file, text)? {
        let Some(setting) = warden_key(&entry.key) else { continue };
        seen.check(&entry)?;
        apply_warden_setting(&mut conf, setting, &entry)?;
    }
    if let Err(ConfError::Cycle { cycle }) = start_order(&conf.services) {
        let line = seen.line_of("services").unwrap_or(0);
        let message = format!("dependency cycle {}", cycle.join(" -> "));
        return Err(ConfError::Line { file: file.to_string(), line, message });
    }
    Ok(conf)
}

/// Parses `conf.d/warden.<name>.conf`, the pluggable service `name`.
pub fn parse_service_conf(name: &str, text: &str) -> Result<PluggableService, ConfError> {
    let file = plugin_file_name(name);
    let file_error = |message: String| ConfError::File { file: file.clone(), message };
    check_name(name).map_err(|m| file_error(format!("bad service name: {m}")))?;
    let mut parts = PluginParts::default();
    let mut seen = SeenKeys::new(&file);
    for entry in entries(&file, text)? {
        let Some(setting) = plugin_key(&entry.key) else { continue };
        seen.check(&entry)?;
        apply_plugin_setting(&mut parts, setting, &entry, name)?;
    }
    let triplet = parts.triplet.ok_or_else(|| file_error(format!("no `services={name}:...` line")))?;
    let command = parts.command.ok_or_else(|| file_error("no `service.command=` line".to_string()))?;
    let health = match (parts.health_tcp, parts.health_command) {
        (Some(_), Some(_)) => {
            return Err(file_error(
                "both service.health.tcp and service.health.command are set; choose one".to_string(),
            ));
        }
        (Some(port), None) => Some(HealthCheck::Tcp { port }),
        (None, Some(command)) => Some(HealthCheck::Command { command }),
        (None, None) => None,
    };
    Ok(PluggableService {
        triplet,
        command,
        env: parts.env,
        ports: parts.ports,
        log_file: parts.log_file,
        heap: parts.heap,
        health,
        health_interval: parts.health_interval.unwrap_or(HEALTH_INTERVAL_DEFAULT),
        health_failures: parts.health_failures.unwrap_or(HEALTH_FAILURES_DEFAULT),
    })
}

/// Reads `conf_dir/warden.conf` (required) and every `conf_dir/conf.d/warden.<name>.conf` (the
/// directory is optional), and checks them together: no plugin takes a built-in or listed name,
/// and all triplets together have no dependency cycle. Other files in `conf.d` are ignored.
pub fn load(conf_dir: &Path) -> Result<ConfDir, ConfError> {
    let warden = parse_warden_conf(&read_conf_file(&conf_dir.join(WARDEN_CONF_FILE))?)?;
    let mut plugins = BTreeMap::new();
    for (name, path) in plugin_files(&conf_dir.join(PLUGIN_DIR))? {
        let plugin = parse_service_conf(&name, &read_conf_file(&path)?)?;
        check_plugin_name(&warden, &name)?;
        plugins.insert(name, plugin);
    }
    let conf = ConfDir { warden, plugins };
    start_order(&conf.triplets())?;
    Ok(conf)
}

/// A start order for `triplets`: every service after its dependencies, otherwise in list order.
/// Dependencies on services not in the list are allowed (they run on other nodes).
pub fn start_order(triplets: &[Triplet]) -> Result<Vec<String>, ConfError> {
    let mut names = BTreeSet::new();
    for t in triplets {
        if !names.insert(t.service.as_str()) {
            return Err(ConfError::File {
                file: "services".to_string(),
                message: format!("service `{}` is listed twice", t.service),
            });
        }
    }
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(triplets.len());
    // Kahn's algorithm, picking the first ready service in list order each round so the order is
    // deterministic and follows the file where dependencies allow; lists are short.
    while order.len() < triplets.len() {
        let ready = triplets.iter().find(|t| {
            !placed.contains(t.service.as_str())
                && t.dependencies.iter().all(|d| placed.contains(d.as_str()) || !names.contains(d.as_str()))
        });
        match ready {
            Some(t) => {
                placed.insert(&t.service);
                order.push(t.service.clone());
            }
            None => return Err(ConfError::Cycle { cycle: find_cycle(triplets, &names, &placed) }),
        }
    }
    Ok(order)
}

/// A cycle among the services not yet placed. Each of them has an unplaced dependency in the
/// list (or it would have been placed), so following those edges must revisit a service.
fn find_cycle(triplets: &[Triplet], names: &BTreeSet<&str>, placed: &BTreeSet<&str>) -> Vec<String> {
    let unplaced_dep = |service: &str| -> Option<String> {
        let t = triplets.iter().find(|t| t.service == service)?;
        t.dependencies.iter().find(|d| names.contains(d.as_str()) && !placed.contains(d.as_str())).cloned()
    };
    let Some(start) = triplets.iter().find(|t| !placed.contains(t.service.as_str())) else {
        return Vec::new();
    };
    let mut path = vec![start.service.clone()];
    while let Some(next) = unplaced_dep(path.last().map(String::as_str).unwrap_or_default()) {
        if let Some(at) = path.iter().position(|s| *s == next) {
            let mut cycle = path.split_off(at);
            cycle.push(next);
            return cycle;
        }
        path.push(next);
    }
    path
}

/// One `key=value` line.
struct Entry {
    file: String,
    line: usize,
    key: String,
    value: String,
}

impl Entry {
    fn error(&self, message: impl Into<String>) -> ConfError {
        ConfError::Line { file: self.file.clone(), line: self.line, message: message.into() }
    }
}

/// The `key=value` lines of a file, with comments and blank lines dropped.
fn entries(file: &str, text: &str) -> Result<Vec<Entry>, ConfError> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |message: String| ConfError::Line { file: file.to_string(), line: index + 1, message };
        let Some((key, value)) = line.split_once('=') else {
            return Err(error(format!("expected `key=value`, found `{line}`")));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(error(format!("empty key in `{line}`")));
        }
        out.push(Entry {
            file: file.to_string(),
            line: index + 1,
            key: key.to_string(),
            value: value.trim().to_string(),
        });
    }
    Ok(out)
}

/// Rejects a key we own that appears twice: which one should win is a guess.
struct SeenKeys {
    file: String,
    lines: BTreeMap<String, usize>,
}

impl SeenKeys {
    fn new(file: &str) -> Self {
        SeenKeys { file: file.to_string(), lines: BTreeMap::new() }
    }

    fn check(&mut self, entry: &Entry) -> Result<(), ConfError> {
        if let Some(first) = self.lines.insert(entry.key.clone(), entry.line) {
            return Err(ConfError::Line {
                file: self.file.clone(),
                line: entry.line,
                message: format!("`{}` is set again (first on line {first})", entry.key),
            });
        }
        Ok(())
    }

    fn line_of(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }
}

/// Which part of a heap setting a key sets.
#[derive(Clone, Copy)]
enum HeapField {
    Percent,
    Max,
    Min,
}

/// A recognized `warden.conf` key.
enum WardenKey {
    Services,
    Heap {
        service: String,
        field: HeapField,
    },
    Retries,
    RetryWindow,
    BackoffInitial,
    BackoffMax,
    StopTimeout,
    ConfigPullInterval,
    MemoryEnforce,
    /// Under a prefix we own but not a key we define: a typo.
    Unknown,
}

/// Classifies a `warden.conf` key; `None` for keys of other products, which are ignored.
fn warden_key(key: &str) -> Option<WardenKey> {
    let known = match key {
        "services" => WardenKey::Services,
        "services.retries" => WardenKey::Retries,
        "services.retryinterval.time.sec" => WardenKey::RetryWindow,
        "services.backoff.initial.ms" => WardenKey::BackoffInitial,
        "services.backoff.max.ms" => WardenKey::BackoffMax,
        "services.stop.timeout.sec" => WardenKey::StopTimeout,
        "services.memory.enforce" => WardenKey::MemoryEnforce,
        "config.pull.interval.sec" => WardenKey::ConfigPullInterval,
        _ if key.starts_with("services.") => WardenKey::Unknown,
        _ => {
            let rest = key.strip_prefix("service.")?;
            let rest = rest.strip_prefix("command.").unwrap_or(rest);
            match heap_key(rest) {
                Some((service, field)) if check_name(service).is_ok() => {
                    WardenKey::Heap { service: service.to_string(), field }
                }
                _ => WardenKey::Unknown,
            }
        }
    };
    Some(known)
}

/// Splits `<service>.heapsize.<field>`.
fn heap_key(key: &str) -> Option<(&str, HeapField)> {
    let (service, field) = key.split_once(".heapsize.")?;
    Some((service, heap_field(field)?))
}

fn heap_field(field: &str) -> Option<HeapField> {
    match field {
        "percent" => Some(HeapField::Percent),
        "max" => Some(HeapField::Max),
        "min" => Some(HeapField::Min),
        _ => None,
    }
}

fn apply_warden_setting(conf: &mut WardenConf, key: WardenKey, entry: &Entry) -> Result<(), ConfError> {
    match key {
        WardenKey::Services => conf.services = parse_triplets(entry)?,
        WardenKey::Heap { service, field } => {
            let spec = if service == OS_HEAP_NAME {
                &mut conf.os_heap
            } else {
                conf.heaps.entry(service).or_default()
            };
            set_heap_field(spec, field, entry)?;
        }
        WardenKey::Retries => conf.retries = parse_number(entry)?,
        WardenKey::RetryWindow => conf.retry_window = Duration::from_secs(parse_positive(entry)?),
        WardenKey::BackoffInitial => conf.backoff_initial = Duration::from_millis(parse_positive(entry)?),
        WardenKey::BackoffMax => conf.backoff_max = Duration::from_millis(parse_positive(entry)?),
        WardenKey::StopTimeout => conf.stop_timeout = Duration::from_secs(parse_number(entry)?),
        WardenKey::ConfigPullInterval => {
            conf.config_pull_interval = Duration::from_secs(parse_positive(entry)?)
        }
        WardenKey::MemoryEnforce => conf.memory_enforce = parse_bool(entry)?,
        WardenKey::Unknown => return Err(unknown_key(entry)),
    }
    Ok(())
}

fn unknown_key(entry: &Entry) -> ConfError {
    entry.error(format!("unknown key `{}`", entry.key))
}

/// A recognized key of a pluggable service file.
enum PluginKey {
    Services,
    Command,
    Env(String),
    Ports,
    LogFile,
    Heap(HeapField),
    HealthTcp,
    HealthCommand,
    HealthInterval,
    HealthFailures,
    Unknown,
}

/// Classifies a plugin file key; `None` for keys outside our prefixes, which are ignored.
fn plugin_key(key: &str) -> Option<PluginKey> {
    if key == "services" {
        return Some(PluginKey::Services);
    }
    if key.starts_with("services.") {
        return Some(PluginKey::Unknown);
    }
    let rest = key.strip_prefix("service.")?;
    let known = match rest {
        "command" => PluginKey::Command,
        "ports" => PluginKey::Ports,
        "logfile" => PluginKey::LogFile,
        "health.tcp" => PluginKey::HealthTcp,
        "health.command" => PluginKey::HealthCommand,
        "health.interval.sec" => PluginKey::HealthInterval,
        "health.failures" => PluginKey::HealthFailures,
        _ => match (rest.strip_prefix("env."), rest.strip_prefix("heapsize.").and_then(heap_field)) {
            (Some(var), _) if !var.is_empty() => PluginKey::Env(var.to_string()),
            (_, Some(field)) => PluginKey::Heap(field),
            _ => PluginKey::Unknown,
        },
    };
    Some(known)
}

/// The settings of a plugin file collected so far.
#[derive(Default)]
struct PluginParts {
    triplet: Option<Triplet>,
    command: Option<String>,
    env: BTreeMap<String, String>,
    ports: Vec<u16>,
    log_file: Option<PathBuf>,
    heap: HeapSpec,
    health_tcp: Option<u16>,
    health_command: Option<String>,
    health_interval: Option<Duration>,
    health_failures: Option<u32>,
}

fn apply_plugin_setting(
    parts: &mut PluginParts,
    key: PluginKey,
    entry: &Entry,
    name: &str,
) -> Result<(), ConfError> {
    match key {
        PluginKey::Services => parts.triplet = Some(parse_plugin_triplet(entry, name)?),
        PluginKey::Command => parts.command = Some(parse_command(entry)?),
        PluginKey::Env(var) => {
            if entry.value.contains('\0') {
                return Err(entry.error(format!("a NUL byte in `{}`", entry.key)));
            }
            parts.env.insert(var, entry.value.clone());
        }
        PluginKey::Ports => parts.ports = parse_ports(entry)?,
        PluginKey::LogFile => parts.log_file = Some(parse_log_file(entry)?),
        PluginKey::Heap(field) => set_heap_field(&mut parts.heap, field, entry)?,
        PluginKey::HealthTcp => parts.health_tcp = Some(parse_port(entry, &entry.value)?),
        PluginKey::HealthCommand => parts.health_command = Some(parse_command(entry)?),
        PluginKey::HealthInterval => {
            parts.health_interval = Some(Duration::from_secs(parse_positive(entry)?))
        }
        PluginKey::HealthFailures => parts.health_failures = Some(parse_positive(entry)?),
        PluginKey::Unknown => return Err(unknown_key(entry)),
    }
    Ok(())
}

/// The `services=` line of a plugin file: exactly one triplet, naming the file's service.
fn parse_plugin_triplet(entry: &Entry, name: &str) -> Result<Triplet, ConfError> {
    let mut triplets = parse_triplets(entry)?;
    let Some(triplet) = triplets.pop() else {
        return Err(entry.error(format!("`services=` is empty; expected `{name}:<count>:<dependencies>`")));
    };
    if !triplets.is_empty() {
        return Err(entry.error("a pluggable service file lists exactly one service"));
    }
    if triplet.service != name {
        return Err(entry.error(format!(
            "the service is called `{}` but the file is for `{name}` (warden.{name}.conf)",
            triplet.service
        )));
    }
    Ok(triplet)
}

fn parse_command(entry: &Entry) -> Result<String, ConfError> {
    if entry.value.is_empty() {
        return Err(entry.error(format!("`{}` is empty", entry.key)));
    }
    if entry.value.contains('\0') {
        return Err(entry.error(format!("a NUL byte in `{}`", entry.key)));
    }
    Ok(entry.value.clone())
}

fn parse_log_file(entry: &Entry) -> Result<PathBuf, ConfError> {
    let path = PathBuf::from(&entry.value);
    if !path.is_absolute() {
        return Err(entry.error(format!("service.logfile must be an absolute path, not `{}`", entry.value)));
    }
    Ok(path)
}

/// `services=a:all;b:3:a;c:1:a,b`. Empty entries (a trailing `;`) are skipped.
fn parse_triplets(entry: &Entry) -> Result<Vec<Triplet>, ConfError> {
    let mut triplets: Vec<Triplet> = Vec::new();
    for text in entry.value.split(';').map(str::trim).filter(|t| !t.is_empty()) {
        let triplet = parse_triplet(entry, text)?;
        if triplets.iter().any(|t| t.service == triplet.service) {
            return Err(entry.error(format!("service `{}` is listed twice", triplet.service)));
        }
        triplets.push(triplet);
    }
    Ok(triplets)
}

/// `<service>[:<count>[:<dependencies>]]`; a missing or empty count means `all`.
fn parse_triplet(entry: &Entry, text: &str) -> Result<Triplet, ConfError> {
    let parts: Vec<&str> = text.split(':').map(str::trim).collect();
    if parts.len() > 3 {
        return Err(
            entry.error(format!("too many `:` in `{text}`; expected `<service>:<count>:<dependencies>`"))
        );
    }
    let service = parts.first().copied().unwrap_or_default();
    check_service_name(service).map_err(|m| entry.error(format!("{m} in `{text}`")))?;
    let count = match parts.get(1).copied().unwrap_or_default() {
        "" => Count::All,
        c if c.eq_ignore_ascii_case("all") => Count::All,
        c => match c.parse::<u32>() {
            Ok(n) if n > 0 => Count::Nodes(n),
            Ok(_) => return Err(entry.error(format!("count 0 in `{text}`; use a positive number or `all`"))),
            Err(_) => return Err(entry.error(format!("unknown count `{c}` in `{text}`"))),
        },
    };
    let mut dependencies: Vec<String> = Vec::new();
    for dep in parts.get(2).copied().unwrap_or_default().split(',').map(str::trim).filter(|d| !d.is_empty()) {
        check_name(dep).map_err(|m| entry.error(format!("{m} (dependency) in `{text}`")))?;
        if dep == service {
            return Err(entry.error(format!("`{service}` depends on itself in `{text}`")));
        }
        if !dependencies.iter().any(|d| d == dep) {
            dependencies.push(dep.to_string());
        }
    }
    Ok(Triplet { service: service.to_string(), count, dependencies })
}

/// A service name: letters, digits, `_` and `-`, so it is safe in paths, znode names and keys
/// (no `.`, which would make `service.<name>.heapsize.*` ambiguous).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty service name".to_string());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!("character `{c}` in service name `{name}` (use letters, digits, `_`, `-`)"));
    }
    Ok(())
}

/// A name a service may have: a valid name that is not the operating system's heap name.
fn check_service_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name == OS_HEAP_NAME {
        return Err(format!("`{OS_HEAP_NAME}` is reserved for the operating system's memory"));
    }
    Ok(())
}

fn set_heap_field(spec: &mut HeapSpec, field: HeapField, entry: &Entry) -> Result<(), ConfError> {
    match field {
        HeapField::Percent => spec.percent = Some(parse_percent(entry)?),
        HeapField::Max => spec.max_mb = Some(parse_number(entry)?),
        HeapField::Min => spec.min_mb = Some(parse_number(entry)?),
    }
    Ok(())
}

fn parse_percent(entry: &Entry) -> Result<f64, ConfError> {
    match entry.value.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        Ok(_) => {
            Err(entry
                .error(format!("`{}` is not a percentage within 0..=100 (`{}`)", entry.value, entry.key)))
        }
        Err(_) => Err(entry.error(format!("`{}` is not a number (`{}`)", entry.value, entry.key))),
    }
}

fn parse_number<T: std::str::FromStr>(entry: &Entry) -> Result<T, ConfError> {
    entry.value.parse::<T>().map_err(|_| {
        entry.error(format!("`{}` is not a non-negative whole number (`{}`)", entry.value, entry.key))
    })
}

/// A number that must not be 0 (an interval of 0 would spin, 0 health failures is meaningless).
fn parse_positive<T: std::str::FromStr + PartialEq + Default>(entry: &Entry) -> Result<T, ConfError> {
    let n: T = parse_number(entry)?;
    if n == T::default() {
        return Err(entry.error(format!("`{}` must be positive", entry.key)));
    }
    Ok(n)
}

fn parse_bool(entry: &Entry) -> Result<bool, ConfError> {
    match entry.value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(entry.error(format!("`{}` must be `true` or `false`, not `{}`", entry.key, entry.value))),
    }
}

fn parse_ports(entry: &Entry) -> Result<Vec<u16>, ConfError> {
    let mut ports = Vec::new();
    for text in entry.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = parse_port(entry, text)?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

fn parse_port(entry: &Entry, text: &str) -> Result<u16, ConfError> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(entry.error(format!("`{text}` is not a port number 1..=65535 (`{}`)", entry.key))),
    }
}

fn plugin_file_name(name: &str) -> String {
    format!("warden.{name}.conf")
}

fn check_plugin_name(warden: &WardenConf, name: &str) -> Result<(), ConfError> {
    let clash = if BUILTIN_SERVICES.contains(&name) {
        Some("a built-in service")
    } else if warden.triplet(name).is_some() {
        Some("a service listed in warden.conf")
    } else {
        None
    };
    match clash {
        Some(what) => Err(ConfError::File {
            file: plugin_file_name(name),
            message: format!("`{name}` is {what}; a pluggable service needs another name"),
        }),
        None => Ok(()),
    }
}

/// The `warden.<name>.conf` files of `dir` by service name; none when `dir` does not exist.
fn plugin_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ConfError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(ConfError::io(dir, &e)),
    };
    let mut files = BTreeMap::new();
    for item in read {
        let item = item.map_err(|e| ConfError::io(dir, &e))?;
        let file_name = item.file_name();
        let Some(name) = file_name.to_str().and_then(|f| f.strip_prefix("warden.")?.strip_suffix(".conf"))
        else {
            continue;
        };
        files.insert(name.to_string(), item.path());
    }
    Ok(files)
}

fn read_conf_file(path: &Path) -> Result<String, ConfError> {
    let meta = std::fs::metadata(path).map_err(|e| ConfError::io(path, &e))?;
    if meta.len() > CONF_FILE_BYTES_MAX {
        return Err(ConfError::File {
            file: path.display().to_string(),
            message: format!("{} bytes is larger than the limit of {CONF_FILE_BYTES_MAX}", meta.len()),
        });
    }
    std::fs::read_to_string(path).map_err(|e| ConfError::io(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triplet(service: &str, count: Count, deps: &[&str]) -> Triplet {
        Triplet { service: service.into(), count, dependencies: deps.iter().map(|d| d.to_string()).collect() }
    }

    fn error_text(text: &str) -> String {
        parse_warden_conf(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_triplets_with_optional_parts() {
        let conf = parse_warden_conf("services = a:all; b:3:a ;c:1:a, b;d;e::a;\n").unwrap();
        assert_eq!(
            conf.services,
            vec![
                triplet("a", Count::All, &[]),
                triplet("b", Count::Nodes(3), &["a"]),
                triplet("c", Count::Nodes(1), &["a", "b"]),
                triplet("d", Count::All, &[]),
                triplet("e", Count::All, &["a"]),
            ]
        );
        assert_eq!(conf.triplet("c").map(ToString::to_string), Some("c:1:a,b".to_string()));
        assert_eq!(conf.triplet("zzz"), None);
    }

    #[test]
    fn defaults_apply_when_keys_are_missing() {
        let conf = parse_warden_conf("# only a comment\n\n").unwrap();
        assert_eq!(conf, WardenConf::default());
        assert_eq!(conf.retries, 3);
        assert_eq!(conf.retry_window, Duration::from_secs(1800));
        assert_eq!(conf.backoff_initial, Duration::from_millis(500));
        assert_eq!(conf.backoff_max, Duration::from_millis(8000));
        assert_eq!(conf.stop_timeout, Duration::from_secs(10));
        assert_eq!(conf.config_pull_interval, Duration::from_secs(300));
        assert!(conf.memory_enforce);
    }

    #[test]
    fn default_file_parses_to_the_documented_values() {
        let conf = parse_warden_conf(DEFAULT_WARDEN_CONF).unwrap();
        let expected = WardenConf {
            services: vec![
                triplet("coord", Count::All, &[]),
                triplet("cldb", Count::All, &["coord"]),
                triplet("fileserver", Count::All, &["coord"]),
                triplet("nfs", Count::All, &["cldb", "fileserver"]),
                triplet("console", Count::All, &["cldb"]),
            ],
            os_heap: HeapSpec { percent: Some(10.0), max_mb: Some(4096), min_mb: Some(256) },
            ..WardenConf::default()
        };
        assert_eq!(conf, expected);
        assert_eq!(start_order(&conf.services).unwrap(), ["coord", "cldb", "fileserver", "nfs", "console"]);
    }

    #[test]
    fn parses_mapr_style_settings_and_ignores_other_products_keys() {
        let text = "services=nfs:all:cldb;kvstore:all;cldb:all:kvstore\n\
                    service.command.os.heapsize.percent=10\n\
                    service.command.cldb.heapsize.percent = 8\n\
                    service.nfs.heapsize.max=1000\n\
                    service.nfs.heapsize.min=100\n\
                    services.retries=5\n\
                    services.retryinterval.time.sec=600\n\
                    services.backoff.initial.ms=250\n\
                    services.backoff.max.ms=4000\n\
                    services.stop.timeout.sec=3\n\
                    config.pull.interval.sec=60\n\
                    services.memory.enforce=False\n\
                    zookeeper.servers=a:5181\n\
                    hbase.heapsize=12\n";
        let conf = parse_warden_conf(text).unwrap();
        assert_eq!(conf.os_heap, HeapSpec { percent: Some(10.0), ..HeapSpec::default() });
        assert_eq!(conf.heaps["cldb"], HeapSpec { percent: Some(8.0), ..HeapSpec::default() });
        assert_eq!(conf.heaps["nfs"], HeapSpec { percent: None, max_mb: Some(1000), min_mb: Some(100) });
        assert_eq!(conf.retries, 5);
        assert_eq!(conf.retry_window, Duration::from_secs(600));
        assert_eq!(conf.backoff_initial, Duration::from_millis(250));
        assert_eq!(conf.backoff_max, Duration::from_millis(4000));
        assert_eq!(conf.stop_timeout, Duration::from_secs(3));
        assert_eq!(conf.config_pull_interval, Duration::from_secs(60));
        assert!(!conf.memory_enforce);
        assert_eq!(start_order(&conf.services).unwrap(), ["kvstore", "cldb", "nfs"]);
    }

    #[test]
    fn error_names_file_line_and_text() {
        assert_eq!(
            error_text("# header\n\n\nservices=nfs:x:cldb\n"),
            "warden.conf line 4: unknown count `x` in `nfs:x:cldb`"
        );
    }

    #[test]
    fn rejects_bad_triplets() {
        assert!(error_text("services=a:0").contains("count 0 in `a:0`"));
        assert!(error_text("services=a:-1").contains("unknown count `-1`"));
        assert!(error_text("services=a:all;a:1").contains("`a` is listed twice"));
        assert!(error_text("services=a:all:a").contains("depends on itself"));
        assert!(error_text("services=a:all:b:c").contains("too many `:`"));
        assert!(error_text("services=a b:all").contains("character ` `"));
        assert!(error_text("services=:all").contains("empty service name"));
        assert!(error_text("services=os:all").contains("reserved"));
        assert!(error_text("services=a:all:b/c").contains("(dependency)"));
    }

    #[test]
    fn rejects_a_dependency_cycle_naming_it() {
        let text = "services.retries=1\nservices=x:all;a:all:c;b:all:a;c:all:b,x\n";
        assert_eq!(error_text(text), "warden.conf line 2: dependency cycle a -> c -> b -> a");
        let triplets = vec![triplet("p", Count::All, &["q"]), triplet("q", Count::All, &["p"])];
        assert_eq!(start_order(&triplets).unwrap_err().to_string(), "dependency cycle: p -> q -> p");
    }

    #[test]
    fn start_order_puts_dependencies_first_and_allows_remote_ones() {
        let triplets = vec![
            triplet("nfs", Count::All, &["cldb", "fileserver"]),
            triplet("cldb", Count::Nodes(3), &["coord"]),
            triplet("fileserver", Count::All, &["coord", "elsewhere"]),
            triplet("coord", Count::Nodes(3), &[]),
        ];
        assert_eq!(start_order(&triplets).unwrap(), ["coord", "cldb", "fileserver", "nfs"]);
        assert!(start_order(&[]).unwrap().is_empty());
        let twice = vec![triplet("a", Count::All, &[]), triplet("a", Count::All, &[])];
        assert!(start_order(&twice).unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn rejects_unknown_keys_under_our_prefixes() {
        assert!(error_text("services.retry=3").contains("unknown key `services.retry`"));
        assert!(error_text("service.nfs.heapsize.precent=3").contains("unknown key"));
        assert!(error_text("service.nfs.heap.percent=3").contains("unknown key"));
        assert!(error_text("service.command.cldb.retryinterval.time.sec=600").contains("unknown key"));
        assert!(error_text("services").contains("expected `key=value`"));
        assert!(error_text("=3").contains("empty key"));
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(error_text("service.nfs.heapsize.percent=101").contains("not a percentage"));
        assert!(error_text("service.nfs.heapsize.percent=-1").contains("not a percentage"));
        assert!(error_text("service.nfs.heapsize.percent=NaN").contains("not a percentage"));
        assert!(error_text("service.nfs.heapsize.percent=ten").contains("not a number"));
        assert!(error_text("service.nfs.heapsize.max=1.5").contains("not a non-negative whole number"));
        assert!(error_text("services.retries=-3").contains("not a non-negative whole number"));
        assert!(error_text("services.backoff.max.ms=0").contains("must be positive"));
        assert!(error_text("services.memory.enforce=yes").contains("`true` or `false`"));
        assert!(error_text("services.retries=3\nservices.retries=4").contains("set again (first on line 1)"));
        let conf =
            parse_warden_conf("service.nfs.heapsize.percent=0\nservice.a.heapsize.percent=100").unwrap();
        assert_eq!(conf.heaps["nfs"].percent, Some(0.0));
        assert_eq!(conf.heaps["a"].percent, Some(100.0));
    }

    const PLUGIN: &str = "\
# A pluggable service.
services=hoststats:all:fileserver
service.command=/opt/hoststats/bin/run --port 8080
service.env.RUST_LOG = info
service.env.GREETING=a=b
service.ports=8080, 8081
service.logfile=/var/log/cairn/hoststats.log
service.heapsize.percent=5
service.heapsize.max=512
service.health.tcp=8080
service.health.interval.sec=2
service.health.failures=4
other.product.key=whatever
";

    #[test]
    fn parses_a_pluggable_service() {
        let plugin = parse_service_conf("hoststats", PLUGIN).unwrap();
        let expected = PluggableService {
            triplet: triplet("hoststats", Count::All, &["fileserver"]),
            command: "/opt/hoststats/bin/run --port 8080".into(),
            env: [("RUST_LOG".to_string(), "info".to_string()), ("GREETING".to_string(), "a=b".to_string())]
                .into_iter()
                .collect(),
            ports: vec![8080, 8081],
            log_file: Some(PathBuf::from("/var/log/cairn/hoststats.log")),
            heap: HeapSpec { percent: Some(5.0), max_mb: Some(512), min_mb: None },
            health: Some(HealthCheck::Tcp { port: 8080 }),
            health_interval: Duration::from_secs(2),
            health_failures: 4,
        };
        assert_eq!(plugin, expected);
        let minimal = parse_service_conf("x", "services=x\nservice.command=sleep 1\n").unwrap();
        assert_eq!(minimal.health, None);
        assert_eq!(minimal.health_interval, HEALTH_INTERVAL_DEFAULT);
        assert_eq!(minimal.health_failures, HEALTH_FAILURES_DEFAULT);
        let command =
            parse_service_conf("x", "services=x\nservice.command=a\nservice.health.command=true").unwrap();
        assert_eq!(command.health, Some(HealthCheck::Command { command: "true".into() }));
    }

    #[test]
    fn rejects_bad_pluggable_services() {
        let err = |name: &str, text: &str| parse_service_conf(name, text).unwrap_err().to_string();
        assert_eq!(err("x", "service.command=a"), "warden.x.conf: no `services=x:...` line");
        assert_eq!(err("x", "services=x"), "warden.x.conf: no `service.command=` line");
        assert!(err("x", "services=y\nservice.command=a").contains("called `y` but the file is for `x`"));
        assert!(err("x", "services=x;y\nservice.command=a").contains("exactly one service"));
        assert!(err("x", "services=\nservice.command=a").contains("is empty"));
        assert!(err("x", "services=x\nservice.command=").contains("is empty"));
        assert!(err("x", "services=x\nservice.command=a\nservice.comand=b").contains("unknown key"));
        assert!(err("x", "services=x\nservice.command=a\nservice.ports=80,0").contains("not a port"));
        assert!(err("x", "services=x\nservice.command=a\nservice.health.tcp=70000").contains("not a port"));
        assert!(err("x", "services=x\nservice.command=a\nservice.logfile=rel.log").contains("absolute"));
        assert!(err("x", "services=x\nservice.command=a\nservice.health.failures=0").contains("positive"));
        assert!(
            err("x", "services=x\nservice.command=a\nservice.health.tcp=1\nservice.health.command=true")
                .contains("choose one")
        );
        assert!(err("a.b", "services=a\nservice.command=a").contains("bad service name"));
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn load_reads_warden_conf_and_plugins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("warden.conf"),
            "services=coord:all;cldb:all:coord\nservice.web.heapsize.min=64\n",
        );
        write(
            &dir.path().join("conf.d/warden.web.conf"),
            "services=web:2:cldb\nservice.command=web\nservice.heapsize.percent=3\nservice.heapsize.min=32\n",
        );
        write(&dir.path().join("conf.d/README"), "not a service file");
        write(&dir.path().join("conf.d/warden.web.conf.bak"), "ignored");
        let conf = load(dir.path()).unwrap();
        assert_eq!(conf.plugins.keys().collect::<Vec<_>>(), ["web"]);
        let names: Vec<String> = conf.triplets().into_iter().map(|t| t.service).collect();
        assert_eq!(names, ["coord", "cldb", "web"]);
        // warden.conf's fields win over the plugin's, field by field.
        assert_eq!(
            conf.heap_spec("web"),
            Some(HeapSpec { percent: Some(3.0), max_mb: None, min_mb: Some(64) })
        );
        assert_eq!(conf.heap_spec("cldb"), None);
    }

    #[test]
    fn load_without_conf_d_and_without_warden_conf() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(dir.path()).unwrap_err();
        assert!(matches!(missing, ConfError::Io { kind: std::io::ErrorKind::NotFound, .. }));
        assert!(missing.to_string().contains("warden.conf"));
        write(&dir.path().join("warden.conf"), "services=coord");
        assert!(load(dir.path()).unwrap().plugins.is_empty());
    }

    #[test]
    fn load_rejects_name_clashes_and_cross_file_cycles() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("warden.conf"), "services=coord;svc:all:web\n");
        write(&dir.path().join("conf.d/warden.web.conf"), "services=web:all:svc\nservice.command=web\n");
        assert_eq!(load(dir.path()).unwrap_err().to_string(), "dependency cycle: svc -> web -> svc");
        write(&dir.path().join("warden.conf"), "services=svc\n");
        write(&dir.path().join("conf.d/warden.web.conf"), "services=web\nservice.command=web\n");
        write(&dir.path().join("conf.d/warden.svc.conf"), "services=svc\nservice.command=svc\n");
        assert!(load(dir.path()).unwrap_err().to_string().contains("a service listed in warden.conf"));
        std::fs::remove_file(dir.path().join("conf.d/warden.svc.conf")).unwrap();
        write(&dir.path().join("conf.d/warden.nfs.conf"), "services=nfs\nservice.command=nfs\n");
        assert!(load(dir.path()).unwrap_err().to_string().contains("`nfs` is a built-in service"));
    }

    /// The examples of docs/operations.md ("The Warden") are files this parser accepts.
    #[test]
    fn the_operations_guide_examples_parse() {
        let guide = include_str!("../../../docs/operations.md");
        let section = guide.split("## The Warden").nth(1).unwrap().split("\n## ").next().unwrap();
        let blocks: Vec<&str> = section.split("```").skip(1).step_by(2).collect();
        let warden = blocks.iter().find(|b| b.contains("# warden.conf")).unwrap();
        let parsed = parse_warden_conf(warden).unwrap();
        assert_eq!(parsed.heaps["nfs"].percent, Some(5.0));
        let plugin = blocks.iter().find(|b| b.contains("service.command=")).unwrap();
        let plugin: String = plugin.lines().map(str::trim_start).collect::<Vec<_>>().join("\n");
        let parsed = parse_service_conf("indexer", &plugin).unwrap();
        assert_eq!(parsed.triplet.count, Count::Nodes(1));
        assert_eq!(parsed.ports, [9300]);
    }
}
