//! `cairn volume|container|alarm|vip|service|user ...` and `cairn node list`: the cluster's
//! administration commands. Each is one or two calls on a [`Backend`], printed as an aligned
//! table, or with `--json` as the CLDB's own reply types (`VolumeInfo`, `NodeInfo`,
//! `ContainerInfo`, `Alarm`, serialized by serde).
//!
//! The backend is the CLDB itself through [`CldbClient`], or with `--console URL` (or
//! `$CAIRN_CONSOLE`) a node's web console through its JSON API (`rest.rs`), as a console user
//! whose role the console enforces. The API's bodies are the same CLDB types, so both print
//! through the same code. `cairn user ...` always goes through a console: users live there.
//!
//! The CLDBs are named by `--cldb HOST:PORT,...`, or else read from the `cldb` list of
//! `DATA_DIR/cluster.json`, which `cairn up --nodes N` writes. Reads go to the CLDB master when
//! one is known: only it knows the volumes' sizes and the nodes' last heartbeats, and it always
//! sees the latest writes.

use std::fmt::Display;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cairn_cldb::proto::{
    Alarm, ContainerInfo, ContainerKind, NodeInfo, NodeServices, NodeState, QuotaChange, ReplicationType,
    ServiceAction, ServiceRequest, ServiceStatus, VipInfo, VipPool, VipPoolEdit, VipPoolSpec, VolumeChange,
    VolumeInfo, VolumeSpec,
};
use cairn_cldb::{CldbClient, CldbClientOptions, CldbError};
use cairn_console::api::MoveVip;
use cairn_console::users::{NewUser, Role, UserChange, UserView};
use cairn_types::text::{parse_size, size, utc};
use clap::{Args, Subcommand, ValueEnum};
use parking_lot::Mutex;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::rest::{self, ConsoleClient};

/// The file of a data directory where `cairn up` says what runs where (see `up.rs`).
const CLUSTER_FILE: &str = "cluster.json";
/// Longest to open one connection to a CLDB.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest to wait for one answer of a CLDB.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the CLDB is, how long to try it, and how to print: shared by every command.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Cluster options")]
pub struct Target {
    /// CLDBs to ask, host:port, comma-separated [default: the `cldb` list of
    /// DATA_DIR/cluster.json].
    #[arg(long, global = true, value_delimiter = ',', value_name = "HOST:PORT")]
    pub(crate) cldb: Vec<String>,
    /// Data directory of a `cairn up --nodes N`, whose cluster.json names the CLDBs (used
    /// without --cldb).
    #[arg(long, global = true, default_value = "./cairn-data")]
    pub(crate) data_dir: PathBuf,
    /// Print the CLDB's answer as JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Seconds to keep trying the CLDBs (redirections and master elections included).
    #[arg(long, global = true, default_value_t = 10, value_name = "SECONDS")]
    pub(crate) timeout: u64,
}

/// Whether the admin commands go through a node's web console, and as whom.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Console options")]
pub struct ConsoleOptions {
    /// Go through this node's web console, http://HOST:PORT, and its JSON API instead of the
    /// CLDB; env CAIRN_CONSOLE [`cairn user` default: the first node's console in
    /// DATA_DIR/cluster.json].
    #[arg(long, global = true, value_name = "URL")]
    console: Option<String>,
    /// The console user to log in as; env CAIRN_USER [default: admin]. Its password comes from
    /// $CAIRN_PASSWORD, or is asked when stdin is a terminal. A read-only user may only look.
    #[arg(long, global = true, value_name = "NAME")]
    user: Option<String>,
}

impl ConsoleOptions {
    /// `--console`, or else `$CAIRN_CONSOLE`.
    fn url(&self) -> Option<String> {
        self.console
            .clone()
            .or_else(|| std::env::var(rest::CONSOLE_ENV).ok())
            .filter(|url| !url.trim().is_empty())
    }

    /// `--user`, or else `$CAIRN_USER`, or else `admin`.
    fn user(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var(rest::USER_ENV).ok())
            .filter(|user| !user.trim().is_empty())
            .unwrap_or_else(|| rest::DEFAULT_USER.to_owned())
    }

    /// Logs in to the console at `url` as the user named.
    async fn login(&self, url: &str, target: &Target) -> anyhow::Result<ConsoleClient> {
        let url = rest::console_url(url)?;
        let user = self.user();
        let password = rest::login_password(&user, &url)?;
        ConsoleClient::login(url, &user, &password, Duration::from_secs(target.timeout.max(1))).await
    }
}

#[derive(Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    console: ConsoleOptions,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a volume.
    Create(CreateArgs),
    /// Every volume: mount path, replication, size, quota, placement.
    List,
    /// One volume in detail.
    Info { name: String },
    /// Remove a volume (its copies are deleted by the nodes that hold them).
    Remove { name: String },
    /// Change a volume's quotas or replication (options not given are left as they are).
    Modify(ModifyArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// 1 to 64 characters of A-Z a-z 0-9 . _ -
    name: String,
    /// Where the volume is mounted in the cluster namespace [default: /NAME].
    #[arg(long, value_name = "MOUNT_PATH")]
    path: Option<String>,
    /// Number of copies, 1 to 5 [default: 3].
    #[arg(long, value_name = "N")]
    replication: Option<u32>,
    /// Fewest copies to create the volume with, 1 to the replication [default: 1].
    #[arg(long, value_name = "N")]
    min_replication: Option<u32>,
    /// How writes travel from the master to the replicas: chain (master → replica → replica) or
    /// star (master → every replica).
    #[arg(long, value_enum, default_value_t = ReplicationTypeArg::Chain)]
    replication_type: ReplicationTypeArg,
    /// Number of data containers, 1 to 998 [default: 4].
    #[arg(long, value_name = "N")]
    data_containers: Option<u32>,
    /// Hard quota: bytes, or with a unit K, M, G, T, P (powers of 1024), like 10G or 512M.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    quota: Option<u64>,
    /// Advisory quota (raises an alarm only), same units as --quota.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    advisory_quota: Option<u64>,
}

#[derive(Args)]
struct ModifyArgs {
    name: String,
    /// New hard quota: bytes, or with a unit K, M, G, T, P (powers of 1024), like 10G; `none`
    /// removes it. Below the bytes used, the volume refuses to grow but loses nothing.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_quota)]
    quota: Option<QuotaChange>,
    /// New advisory quota (raises an alarm only), same units as --quota; `none` removes it. It
    /// may not be above the hard quota.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_quota)]
    advisory_quota: Option<QuotaChange>,
    /// New number of copies, 1 to 5. Higher: new copies are made at once; lower: the surplus
    /// copies (never the master's) are deleted.
    #[arg(long, value_name = "N")]
    replication: Option<u32>,
    /// New fewest copies, 1 to the replication.
    #[arg(long, value_name = "N")]
    min_replication: Option<u32>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum ReplicationTypeArg {
    /// Master → replica 1 → replica 2 ... (MapR's high_throughput).
    #[value(alias = "high-throughput", alias = "high_throughput")]
    Chain,
    /// Master → every replica at once (MapR's low_latency).
    #[value(alias = "low-latency", alias = "low_latency")]
    Star,
}

impl From<ReplicationTypeArg> for ReplicationType {
    fn from(arg: ReplicationTypeArg) -> ReplicationType {
        match arg {
            ReplicationTypeArg::Chain => ReplicationType::Chain,
            ReplicationTypeArg::Star => ReplicationType::Star,
        }
    }
}

/// `cairn node list`.
#[derive(Args)]
pub struct NodeListArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    console: ConsoleOptions,
}

#[derive(Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    console: ConsoleOptions,
    #[command(subcommand)]
    command: ServiceCommand,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Every service on every node: state, pid, memory, restarts, uptime (as each node's
    /// Warden published it).
    List,
    /// Start a service a Warden was told to stop, or that it gave up restarting.
    Start(ServiceTarget),
    /// Stop a service; its Warden keeps it stopped until `cairn service start`.
    Stop(ServiceTarget),
    /// Stop a service and start it again.
    Restart(ServiceTarget),
}

#[derive(Args)]
struct ServiceTarget {
    /// The node's name (see `cairn service list`).
    #[arg(long)]
    node: String,
    /// The service's name.
    #[arg(long)]
    service: String,
}

#[derive(Args)]
pub struct ContainerArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    console: ConsoleOptions,
    #[command(subcommand)]
    command: ContainerCommand,
}

#[derive(Subcommand)]
enum ContainerCommand {
    /// Every container of every volume: master, replicas, epoch.
    List {
        /// Only the containers of this volume.
        #[arg(long)]
        volume: Option<String>,
    },
    /// One container: its replicas in order, master, epoch, resyncing nodes.
    Info { id: u64 },
}

#[derive(Args)]
pub struct AlarmArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    console: ConsoleOptions,
    #[command(subcommand)]
    command: AlarmCommand,
}

#[derive(Subcommand)]
enum AlarmCommand {
    /// Every raised alarm: nodes down, volumes under-replicated or over quota, ...
    List,
}

/// `cairn volume ...`.
pub fn volume(args: VolumeArgs) -> anyhow::Result<()> {
    let VolumeArgs { target, console, command } = args;
    let json = target.json;
    with_backend(&target, &console, async |backend| match command {
        VolumeCommand::Create(create) => volume_create(backend, json, create).await,
        VolumeCommand::List => volume_list(backend, json).await,
        VolumeCommand::Info { name } => volume_info(backend, json, &name).await,
        VolumeCommand::Remove { name } => volume_remove(backend, json, &name).await,
        VolumeCommand::Modify(modify) => volume_modify(backend, json, modify).await,
    })
}

#[derive(Args)]
pub struct VipArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    console: ConsoleOptions,
    #[command(subcommand)]
    command: VipCommand,
}

#[derive(Subcommand)]
enum VipCommand {
    /// Add a pool of virtual IPs (one, or START to END), held by the NFS gateways.
    Add(VipAddArgs),
    /// Change the pool that starts at --start (options not given are left as they are).
    Edit(VipEditArgs),
    /// Move one VIP to the interface with this MAC (it stays there while that gateway is
    /// healthy).
    Move {
        /// The VIP to move.
        #[arg(long, alias = "start")]
        vip: Ipv4Addr,
        #[arg(long, value_name = "MAC")]
        to_mac: String,
    },
    /// Remove the pool that starts at --start; its VIPs are released.
    Remove {
        #[arg(long)]
        start: Ipv4Addr,
    },
    /// Every VIP: its node, interface, MAC and the interface's own (physical) address.
    List,
}

#[derive(Args)]
struct VipAddArgs {
    /// The first (or only) VIP.
    #[arg(long)]
    start: Ipv4Addr,
    /// The last VIP of the range [default: --start].
    #[arg(long)]
    end: Option<Ipv4Addr>,
    /// The VIPs' netmask, 255.255.255.0 or 24: the subnet they share with the interfaces that
    /// may hold them.
    #[arg(long)]
    netmask: String,
    /// Only the interfaces with these MACs may hold the pool's VIPs [default: every interface of
    /// every node with a healthy NFS gateway, in the subnet].
    #[arg(long, value_delimiter = ',', value_name = "MAC,...")]
    macs: Vec<String>,
    /// The interface that gets a VIP back whenever its gateway is healthy.
    #[arg(long, value_name = "MAC")]
    preferred_mac: Option<String>,
    /// Accept VIPs outside every eligible interface's subnet (your network must route them to
    /// the nodes).
    #[arg(long)]
    any_subnet: bool,
}

#[derive(Args)]
struct VipEditArgs {
    /// The first VIP of the pool to change.
    #[arg(long)]
    start: Ipv4Addr,
    #[arg(long)]
    end: Option<Ipv4Addr>,
    #[arg(long)]
    netmask: Option<String>,
    /// The MACs that may hold the pool's VIPs; `any` for every interface in the subnet.
    #[arg(long, value_delimiter = ',', value_name = "MAC,...|any")]
    macs: Option<Vec<String>>,
    /// The preferred MAC; `none` to remove it.
    #[arg(long, value_name = "MAC|none")]
    preferred_mac: Option<String>,
    #[arg(long)]
    any_subnet: Option<bool>,
}

/// `cairn vip ...`.
pub fn vip(args: VipArgs) -> anyhow::Result<()> {
    let VipArgs { target, console, command } = args;
    let json = target.json;
    with_backend(&target, &console, async |backend| match command {
        VipCommand::Add(add) => vip_add(backend, json, add).await,
        VipCommand::Edit(edit) => vip_edit(backend, json, edit).await,
        VipCommand::Move { vip, to_mac } => vip_move(backend, json, vip, &to_mac).await,
        VipCommand::Remove { start } => vip_remove(backend, json, start).await,
        VipCommand::List => vip_list(backend, json).await,
    })
}

/// `cairn node list`.
pub fn node_list(args: NodeListArgs) -> anyhow::Result<()> {
    let json = args.target.json;
    with_backend(&args.target, &args.console, async |backend| nodes(backend, json).await)
}

/// `cairn container ...`.
pub fn container(args: ContainerArgs) -> anyhow::Result<()> {
    let ContainerArgs { target, console, command } = args;
    let json = target.json;
    with_backend(&target, &console, async |backend| match command {
        ContainerCommand::List { volume } => container_list(backend, json, volume.as_deref()).await,
        ContainerCommand::Info { id } => container_info(backend, json, id).await,
    })
}

/// `cairn service ...`.
pub fn service(args: ServiceArgs) -> anyhow::Result<()> {
    let ServiceArgs { target, console, command } = args;
    let json = target.json;
    with_backend(&target, &console, async |backend| {
        let (which, action) = match command {
            ServiceCommand::List => return services(backend, json).await,
            ServiceCommand::Start(which) => (which, ServiceAction::Start),
            ServiceCommand::Stop(which) => (which, ServiceAction::Stop),
            ServiceCommand::Restart(which) => (which, ServiceAction::Restart),
        };
        service_command(backend, which, action).await
    })
}

/// `cairn alarm ...`.
pub fn alarm(args: AlarmArgs) -> anyhow::Result<()> {
    let AlarmArgs { target, console, command } = args;
    let json = target.json;
    with_backend(&target, &console, async |backend| match command {
        AlarmCommand::List => alarms(backend, json).await,
    })
}

#[derive(Args)]
pub struct UserArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    console: ConsoleOptions,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Every console user: name, role, when it was added (admins only).
    List,
    /// Add a user. Its password comes from $CAIRN_NEW_PASSWORD, or is asked twice when stdin
    /// is a terminal.
    Add {
        /// 1 to 64 letters, digits, '-', '_' or '.'.
        name: String,
        /// What the user may do: everything (admin), or only look (read-only).
        #[arg(long, value_enum, default_value_t = RoleArg::ReadOnly)]
        role: RoleArg,
    },
    /// Remove a user; its sessions on the console asked end at once.
    Remove { name: String },
    /// Set a user's password, from $CAIRN_NEW_PASSWORD or asked twice when stdin is a terminal;
    /// the user's sessions on the console asked end.
    Passwd {
        /// The user [default: the one logged in as, --user].
        name: Option<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RoleArg {
    /// May see and change everything, users included.
    Admin,
    /// May see everything but users; every change is refused.
    #[value(name = "read-only", alias = "readonly")]
    ReadOnly,
}

impl From<RoleArg> for Role {
    fn from(arg: RoleArg) -> Role {
        match arg {
            RoleArg::Admin => Role::Admin,
            RoleArg::ReadOnly => Role::Readonly,
        }
    }
}

/// `cairn user ...`: always through a console, `--console` or the first of DATA_DIR/cluster.json.
pub fn user(args: UserArgs) -> anyhow::Result<()> {
    let UserArgs { target, console, command } = args;
    block_on(async {
        let url = match console.url() {
            Some(url) => url,
            None => console_from_cluster_file(&target.data_dir)?,
        };
        let client = console.login(&url, &target).await?;
        let result = user_command(&client, target.json, command).await;
        client.logout().await;
        result
    })
}

/// Runs one command on the backend `--console` chooses, then logs out of the console.
fn with_backend<T>(
    target: &Target,
    console: &ConsoleOptions,
    work: impl AsyncFnOnce(&Backend) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    block_on(async {
        let backend = match console.url() {
            Some(url) => Backend::Console(console.login(&url, target).await?),
            None => Backend::Cldb(Cldb::new(target)?),
        };
        let result = work(&backend).await;
        backend.close().await;
        result
    })
}

pub(crate) fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(work)
}

// ------------------------------------------------------------------------------------------
// The CLDB

/// The CLDBs named by `--cldb`, or else by DATA_DIR/cluster.json.
pub(crate) fn cldb_addresses(target: &Target) -> anyhow::Result<Vec<String>> {
    let given: Vec<String> =
        target.cldb.iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
    if !given.is_empty() {
        return Ok(given);
    }
    let path = target.data_dir.join(CLUSTER_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --cldb HOST:PORT given, and cannot read {} (written by `cairn up --nodes N` \
             with --data-dir {})",
            path.display(),
            target.data_dir.display()
        )
    })?;
    addresses_from_cluster_file(&text, &path)
}

/// The `address` and the port named `port_field` of each node of a cluster.json that has both.
fn node_ports<'a>(
    cluster: &'a serde_json::Value,
    port_field: &'a str,
) -> impl Iterator<Item = (&'a str, u64)> {
    cluster
        .get("nodes")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |node| Some((node.get("address")?.as_str()?, node.get(port_field)?.as_u64()?)))
}

/// The `cldb` list of a cluster.json, or else its nodes' `address` and `cldb_port`.
fn addresses_from_cluster_file(text: &str, path: &Path) -> anyhow::Result<Vec<String>> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{} is not JSON", path.display()))?;
    let mut list: Vec<String> = value
        .get("cldb")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    if list.is_empty() {
        list = node_ports(&value, "cldb_port").map(|(address, port)| format!("{address}:{port}")).collect();
    }
    if list.is_empty() {
        anyhow::bail!(
            "{} names no CLDB: `cairn up --embedded` runs none (start a cluster with \
             `cairn up`), or pass --cldb HOST:PORT",
            path.display()
        );
    }
    Ok(list)
}

/// A CLDB client and what to say when it fails.
struct Cldb {
    /// For changes (they go to the master whatever the order).
    client: CldbClient,
    /// For reads, made by the first one: the master first (see [`Cldb::reader`]).
    reader: Mutex<Option<CldbClient>>,
    addresses: Vec<String>,
    timeout: Duration,
}

impl Cldb {
    fn new(target: &Target) -> anyhow::Result<Cldb> {
        let addresses = cldb_addresses(target)?;
        let timeout = Duration::from_secs(target.timeout.max(1));
        Ok(Cldb { client: client(addresses.clone(), timeout), reader: Mutex::new(None), addresses, timeout })
    }

    /// The client for reads, which go to the master first: it alone knows the volumes' sizes and
    /// the nodes' last heartbeats, and it has seen every write. Without a master (an election is
    /// under way) any CLDB answers, from coord.
    async fn reader(&self, action: &str) -> anyhow::Result<CldbClient> {
        if let Some(reader) = self.reader.lock().clone() {
            return Ok(reader);
        }
        let status = self.client.status().await.map_err(|e| self.failed(action, e))?;
        let master = if status.is_master { Some(status.address) } else { status.master };
        let reader = match master {
            Some(master) => {
                let mut ordered = vec![master.clone()];
                ordered.extend(self.addresses.iter().filter(|a| **a != master).cloned());
                client(ordered, self.timeout)
            }
            None => self.client.clone(),
        };
        *self.reader.lock() = Some(reader.clone());
        Ok(reader)
    }

    /// One line saying what failed and why; for an unreachable CLDB, the addresses tried.
    fn failed(&self, action: impl Display, error: CldbError) -> anyhow::Error {
        let tried = format!("tried {} for {}s", self.addresses.join(","), self.timeout.as_secs());
        match error {
            CldbError::Unavailable(detail) => {
                anyhow::anyhow!("{action}: the CLDB is unavailable ({tried}): {detail}")
            }
            CldbError::NotMaster { .. } => anyhow::anyhow!(
                "{action}: no CLDB master answered ({tried}); an election may be under way, or \
                 coord is down"
            ),
            other => anyhow::anyhow!("{action}: {other}"),
        }
    }
}

pub(crate) fn client(addresses: Vec<String>, timeout: Duration) -> CldbClient {
    CldbClient::with_options(
        addresses,
        CldbClientOptions {
            request_timeout: timeout,
            connect_timeout: CONNECT_TIMEOUT.min(timeout),
            call_timeout: CALL_TIMEOUT.min(timeout),
        },
    )
}

// ------------------------------------------------------------------------------------------
// The backends

/// Where the commands go: the CLDB itself, or a node's console over its JSON API. Both answer
/// with the CLDB's types; each method says what failed in one line, after `action`.
enum Backend {
    Cldb(Cldb),
    Console(ConsoleClient),
}

/// `DELETE /api/volumes/NAME`'s answer.
#[derive(Deserialize)]
struct RemovedVolume {
    id: u32,
}

impl Backend {
    /// Ends the console session, if any.
    async fn close(self) {
        if let Backend::Console(console) = self {
            console.logout().await;
        }
    }

    async fn create_volume(&self, spec: VolumeSpec, action: &str) -> anyhow::Result<VolumeInfo> {
        match self {
            Backend::Cldb(cldb) => cldb.client.create_volume(spec).await.map_err(|e| cldb.failed(action, e)),
            Backend::Console(console) => console.send(Method::POST, &["volumes"], &spec, action).await,
        }
    }

    async fn modify_volume(&self, change: VolumeChange, action: &str) -> anyhow::Result<VolumeInfo> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.client.modify_volume(change).await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => {
                console.send(Method::PATCH, &["volumes", &change.name], &change, action).await
            }
        }
    }

    async fn remove_volume(&self, name: &str, action: &str) -> anyhow::Result<u32> {
        match self {
            Backend::Cldb(cldb) => cldb.client.remove_volume(name).await.map_err(|e| cldb.failed(action, e)),
            Backend::Console(console) => {
                Ok(console.delete::<RemovedVolume>(&["volumes", name], action).await?.id)
            }
        }
    }

    async fn list_volumes(&self, action: &str) -> anyhow::Result<Vec<VolumeInfo>> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action).await?.list_volumes().await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.get(&["volumes"], action).await,
        }
    }

    async fn volume_info(&self, name: &str, action: &str) -> anyhow::Result<VolumeInfo> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action).await?.volume_info(name).await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.get(&["volumes", name], action).await,
        }
    }

    async fn list_containers(&self, action: &str) -> anyhow::Result<Vec<ContainerInfo>> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action).await?.list_containers().await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.get(&["containers"], action).await,
        }
    }

    async fn container_info(&self, id: u64, action: &str) -> anyhow::Result<ContainerInfo> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action).await?.container_info(id).await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.get(&["containers", &id.to_string()], action).await,
        }
    }

    async fn list_nodes(&self, action: &str) -> anyhow::Result<Vec<NodeInfo>> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action).await?.list_nodes().await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.get(&["nodes"], action).await,
        }
    }

    async fn list_alarms(&self, action: &str) -> anyhow::Result<Vec<Alarm>> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action).await?.list_alarms().await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.get(&["alarms"], action).await,
        }
    }

    async fn list_services(&self, action: &str) -> anyhow::Result<Vec<NodeServices>> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action).await?.list_services().await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.get(&["services"], action).await,
        }
    }

    async fn service_command(&self, request: ServiceRequest, action: &str) -> anyhow::Result<()> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.reader(action)
                    .await?
                    .service_command(request)
                    .await
                    .map_err(|e| cldb.failed(action, e))?;
            }
            Backend::Console(console) => {
                let _: Vec<NodeServices> =
                    console.send(Method::POST, &["services"], &request, action).await?;
            }
        }
        Ok(())
    }

    async fn add_vip_pool(&self, spec: VipPoolSpec, action: &str) -> anyhow::Result<VipPool> {
        match self {
            Backend::Cldb(cldb) => cldb.client.add_vip_pool(spec).await.map_err(|e| cldb.failed(action, e)),
            Backend::Console(console) => console.send(Method::POST, &["vip-pools"], &spec, action).await,
        }
    }

    async fn edit_vip_pool(
        &self,
        start: Ipv4Addr,
        edit: VipPoolEdit,
        action: &str,
    ) -> anyhow::Result<VipPool> {
        match self {
            Backend::Cldb(cldb) => cldb.client.edit_vip_pool(edit).await.map_err(|e| cldb.failed(action, e)),
            Backend::Console(console) => {
                console.send(Method::PATCH, &["vip-pools", &start.to_string()], &edit, action).await
            }
        }
    }

    async fn remove_vip_pool(&self, start: Ipv4Addr, action: &str) -> anyhow::Result<VipPool> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.client.remove_vip_pool(start).await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => console.delete(&["vip-pools", &start.to_string()], action).await,
        }
    }

    async fn move_vip(&self, vip: Ipv4Addr, to_mac: &str, action: &str) -> anyhow::Result<Vec<VipInfo>> {
        match self {
            Backend::Cldb(cldb) => {
                cldb.client.move_vip(vip, to_mac).await.map_err(|e| cldb.failed(action, e))
            }
            Backend::Console(console) => {
                let request = MoveVip { to_mac: to_mac.to_owned() };
                console.send(Method::POST, &["vips", &vip.to_string(), "move"], &request, action).await
            }
        }
    }

    async fn list_vips(&self, action: &str) -> anyhow::Result<Vec<VipInfo>> {
        match self {
            Backend::Cldb(cldb) => cldb.client.list_vips().await.map_err(|e| cldb.failed(action, e)),
            Backend::Console(console) => console.get(&["vips"], action).await,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Commands

async fn volume_create(backend: &Backend, json: bool, args: CreateArgs) -> anyhow::Result<()> {
    let spec = VolumeSpec {
        name: args.name.clone(),
        mount_path: args.path,
        replication: args.replication,
        min_replication: args.min_replication,
        replication_type: args.replication_type.into(),
        quota_bytes: args.quota,
        advisory_quota_bytes: args.advisory_quota,
        data_containers: args.data_containers,
    };
    let info = backend.create_volume(spec, &format!("cannot create volume {}", args.name)).await?;
    if json {
        return print_json(&info);
    }
    let mut out = format!("Created volume {} (id {}).\n", info.volume.name, info.volume.id);
    out.push_str(&volume_details(&info, now_ms()));
    print(&out)
}

async fn volume_modify(backend: &Backend, json: bool, args: ModifyArgs) -> anyhow::Result<()> {
    if args.quota.is_none()
        && args.advisory_quota.is_none()
        && args.replication.is_none()
        && args.min_replication.is_none()
    {
        anyhow::bail!(
            "cannot modify volume {}: nothing to change (give --quota, --advisory-quota, --replication \
             or --min-replication)",
            args.name
        );
    }
    let change = VolumeChange {
        name: args.name.clone(),
        quota: args.quota.unwrap_or_default(),
        advisory_quota: args.advisory_quota.unwrap_or_default(),
        replication: args.replication,
        min_replication: args.min_replication,
    };
    let info = backend.modify_volume(change, &format!("cannot modify volume {}", args.name)).await?;
    if json {
        return print_json(&info);
    }
    let mut out = format!("Modified volume {} (id {}).\n", info.volume.name, info.volume.id);
    out.push_str(&volume_details(&info, now_ms()));
    print(&out)
}

async fn volume_list(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let mut volumes = backend.list_volumes("cannot list the volumes").await?;
    volumes.sort_by(|a, b| a.volume.name.cmp(&b.volume.name));
    if json {
        return print_json(&volumes);
    }
    let mut table = Table::new(&[
        "NAME",
        "ID",
        "MOUNT",
        "REPLICATION",
        "TYPE",
        "USED",
        "QUOTA",
        "EPOCH",
        "MASTER",
        "REPLICAS",
    ]);
    for info in &volumes {
        let v = &info.volume;
        table.row(vec![
            v.name.clone(),
            v.id.to_string(),
            v.mount_path.clone(),
            format!("{}/{} (min {})", v.placement.replicas.len(), v.replication, v.min_replication),
            replication_type(v.replication_type).to_owned(),
            info.size_bytes.map_or_else(|| "?".to_owned(), size),
            v.quota_bytes.map_or_else(|| "-".to_owned(), size),
            v.placement.epoch.to_string(),
            v.placement.master.clone(),
            list(&v.placement.replicas),
        ]);
    }
    print(&table.render_or("No volumes."))
}

async fn volume_info(backend: &Backend, json: bool, name: &str) -> anyhow::Result<()> {
    let info = backend.volume_info(name, &format!("cannot get volume {name}")).await?;
    if json {
        return print_json(&info);
    }
    print(&volume_details(&info, now_ms()))
}

async fn volume_remove(backend: &Backend, json: bool, name: &str) -> anyhow::Result<()> {
    let id = backend.remove_volume(name, &format!("cannot remove volume {name}")).await?;
    if json {
        return print_json(&serde_json::json!({ "name": name, "id": id, "removed": true }));
    }
    print(&format!("Removed volume {name} (id {id}); the nodes delete its copies.\n"))
}

async fn vip_add(backend: &Backend, json: bool, args: VipAddArgs) -> anyhow::Result<()> {
    let action = format!("cannot add the VIP pool starting at {}", args.start);
    let prefix =
        cairn_cldb::vip::parse_netmask(&args.netmask).map_err(|e| anyhow::anyhow!("{action}: {e}"))?;
    let spec = VipPoolSpec {
        start: args.start,
        end: args.end,
        prefix,
        macs: args.macs,
        preferred_mac: args.preferred_mac,
        any_subnet: args.any_subnet,
    };
    let pool = backend.add_vip_pool(spec, &action).await?;
    if json {
        return print_json(&pool);
    }
    print(&format!("added VIP pool {}\n", pool_line(&pool)))
}

async fn vip_edit(backend: &Backend, json: bool, args: VipEditArgs) -> anyhow::Result<()> {
    let action = format!("cannot edit the VIP pool starting at {}", args.start);
    let prefix = match &args.netmask {
        Some(mask) => {
            Some(cairn_cldb::vip::parse_netmask(mask).map_err(|e| anyhow::anyhow!("{action}: {e}"))?)
        }
        None => None,
    };
    let macs = args.macs.map(|m| if m.len() == 1 && m[0] == "any" { Vec::new() } else { m });
    let preferred_mac = args.preferred_mac.map(|m| if m == "none" { None } else { Some(m) });
    let edit = VipPoolEdit {
        start: Some(args.start),
        end: args.end,
        prefix,
        macs,
        preferred_mac,
        any_subnet: args.any_subnet,
    };
    let pool = backend.edit_vip_pool(args.start, edit, &action).await?;
    if json {
        return print_json(&pool);
    }
    print(&format!("VIP pool now {}\n", pool_line(&pool)))
}

async fn vip_move(backend: &Backend, json: bool, vip: Ipv4Addr, to_mac: &str) -> anyhow::Result<()> {
    let infos = backend.move_vip(vip, to_mac, &format!("cannot move VIP {vip}")).await?;
    if json {
        return print_json(&infos);
    }
    print(&vip_table(&infos))
}

async fn vip_remove(backend: &Backend, json: bool, start: Ipv4Addr) -> anyhow::Result<()> {
    let pool =
        backend.remove_vip_pool(start, &format!("cannot remove the VIP pool starting at {start}")).await?;
    if json {
        return print_json(&pool);
    }
    print(&format!("removed VIP pool {}\n", pool_line(&pool)))
}

async fn vip_list(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let infos = backend.list_vips("cannot list the VIPs").await?;
    if json {
        return print_json(&infos);
    }
    print(&vip_table(&infos))
}

fn pool_line(pool: &VipPool) -> String {
    let range =
        if pool.start == pool.end { pool.start.to_string() } else { format!("{}-{}", pool.start, pool.end) };
    let macs =
        if pool.macs.is_empty() { "any interface in the subnet".to_owned() } else { pool.macs.join(",") };
    let preferred = pool.preferred_mac.as_deref().map(|m| format!(", preferred {m}")).unwrap_or_default();
    let subnet = if pool.any_subnet { ", any subnet" } else { "" };
    format!("{range}/{} on {macs}{preferred}{subnet}", pool.prefix)
}

fn vip_table(infos: &[VipInfo]) -> String {
    let mut table = Table::new(&["VIP", "NODE", "INTERFACE", "MAC", "PHYSICAL IP", "STATE", "PREFERRED MAC"]);
    for v in infos {
        let state = match (v.node.is_empty(), v.held) {
            (true, _) => "unassigned",
            (false, true) => "held",
            (false, false) => "claiming",
        };
        table.row(vec![
            format!("{}/{}", v.vip, v.prefix),
            dash(&v.node),
            dash(&v.interface),
            dash(&v.mac),
            v.physical_ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            state.to_owned(),
            dash(v.preferred_mac.as_deref().unwrap_or("")),
        ]);
    }
    table.render_or("No VIP pools: add one with `cairn vip add --start IP --netmask MASK`.")
}

async fn nodes(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let mut nodes = backend.list_nodes("cannot list the nodes").await?;
    nodes.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    if json {
        return print_json(&nodes);
    }
    print(&node_table(&nodes, now_ms()))
}

async fn services(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let nodes = backend.list_services("cannot list the services").await?;
    if json {
        return print_json(&nodes);
    }
    print(&service_table(&nodes, now_ms()))
}

/// How long `cairn service start|stop|restart` waits for the service to get there.
const SERVICE_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

async fn service_command(
    backend: &Backend,
    which: ServiceTarget,
    action: ServiceAction,
) -> anyhow::Result<()> {
    let verb = format!("{action:?}").to_lowercase();
    let what = format!("cannot {verb} {} on node {}", which.service, which.node);
    // The instance running before the request: a restart is done once another one runs.
    let before = backend.list_services(&what).await?;
    let started_before =
        status_of(&before, &which.node, &which.service).and_then(|s| s.started_ms.map(|at| (at, s.pid)));
    let request = ServiceRequest { node: which.node.clone(), service: which.service.clone(), action };
    backend.service_command(request, &what).await?;
    // The Warden took the request; wait until the service is where it was asked to be.
    let deadline = tokio::time::Instant::now() + SERVICE_SETTLE;
    loop {
        let nodes = backend.list_services(&what).await?;
        if let Some(status) = status_of(&nodes, &which.node, &which.service) {
            let arrived = match action {
                ServiceAction::Stop => status.state == "stopped",
                ServiceAction::Start => status.state == "running",
                ServiceAction::Restart => {
                    status.state == "running"
                        && status.started_ms.map(|at| (at, status.pid)) != started_before
                }
            };
            if arrived {
                println!(
                    "{} on node {}: {}{}",
                    which.service,
                    which.node,
                    status.state,
                    status.pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
                );
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{what}: still {} after {SERVICE_SETTLE:?}{}",
                    status.state,
                    if status.detail.is_empty() { String::new() } else { format!(" ({})", status.detail) }
                );
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn status_of<'a>(nodes: &'a [NodeServices], node: &str, service: &str) -> Option<&'a ServiceStatus> {
    nodes.iter().find(|n| n.node == node)?.services.iter().find(|s| s.name == service)
}

fn service_table(nodes: &[NodeServices], now: u64) -> String {
    let mut table =
        Table::new(&["NODE", "SERVICE", "STATE", "PID", "MEMORY", "HEAP", "RESTARTS", "UPTIME", "DETAIL"]);
    for node in nodes {
        for s in &node.services {
            table.row(vec![
                node.node.clone(),
                s.name.clone(),
                s.state.clone(),
                s.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                s.memory_bytes.map_or_else(|| "-".to_owned(), cairn_types::text::size),
                s.heap_bytes.map_or_else(|| "-".to_owned(), cairn_types::text::size),
                s.restarts.to_string(),
                s.started_ms.map_or_else(|| "-".to_owned(), |at| duration(now.saturating_sub(at))),
                dash(&s.detail),
            ]);
        }
    }
    table.render_or("No Warden has published its services (is coord up?).")
}

fn node_table(nodes: &[NodeInfo], now: u64) -> String {
    let mut table =
        Table::new(&["NAME", "STATE", "HEARTBEAT", "SERVICES", "FILESERVER", "NFS", "TOPOLOGY", "VOLUMES"]);
    for node in nodes {
        let r = &node.record;
        let state = match r.state {
            NodeState::Up => "up".to_owned(),
            NodeState::Down => format!("down for {}", duration(now.saturating_sub(r.state_since_ms))),
        };
        table.row(vec![
            r.name.clone(),
            state,
            ago(node.last_heartbeat_ms, now),
            list(&r.services),
            r.fileserver_address.clone(),
            dash(&r.nfs_address),
            r.topology.clone(),
            node.volumes.to_string(),
        ]);
    }
    table.render_or("No nodes have registered with the CLDB.")
}

async fn container_list(backend: &Backend, json: bool, volume: Option<&str>) -> anyhow::Result<()> {
    let mut containers = backend.list_containers("cannot list the containers").await?;
    if let Some(volume) = volume {
        containers.retain(|c| c.volume_name == volume);
        if containers.is_empty() {
            // Says whether the volume exists at all.
            backend.volume_info(volume, &format!("cannot list the containers of {volume}")).await?;
        }
    }
    containers.sort_by_key(|c| c.id);
    if json {
        return print_json(&containers);
    }
    let mut table = Table::new(&["ID", "VOLUME", "KIND", "EPOCH", "MASTER", "REPLICAS", "RESYNCING"]);
    for c in &containers {
        table.row(vec![
            c.id.to_string(),
            c.volume_name.clone(),
            kind(c.kind).to_owned(),
            c.epoch.to_string(),
            c.master.clone(),
            list(&c.replicas),
            list(&c.resyncing),
        ]);
    }
    print(&table.render_or("No containers."))
}

async fn container_info(backend: &Backend, json: bool, id: u64) -> anyhow::Result<()> {
    let action = format!("cannot get container {id}");
    let info = backend.container_info(id, &action).await?;
    if json {
        return print_json(&info);
    }
    // The CLDB keeps sizes and the replication type per volume, not per container.
    let volume = backend.volume_info(&info.volume_name, &action).await.ok();
    print(&container_details(&info, volume.as_ref()))
}

async fn alarms(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let mut alarms = backend.list_alarms("cannot list the alarms").await?;
    alarms.sort_by(|a, b| (a.since_ms, a.kind, &a.subject).cmp(&(b.since_ms, b.kind, &b.subject)));
    if json {
        return print_json(&alarms);
    }
    print(&alarm_table(&alarms, now_ms()))
}

fn alarm_table(alarms: &[Alarm], now: u64) -> String {
    let mut table = Table::new(&["KIND", "SUBJECT", "SINCE", "MESSAGE"]);
    for a in alarms {
        table.row(vec![format!("{:?}", a.kind), a.subject.clone(), ago(a.since_ms, now), a.message.clone()]);
    }
    table.render_or("No alarms.")
}

async fn user_command(console: &ConsoleClient, json: bool, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::List => {
            let mut users: Vec<UserView> = console.get(&["users"], "cannot list the users").await?;
            users.sort_by(|a, b| a.name.cmp(&b.name));
            if json {
                return print_json(&users);
            }
            print(&user_table(&users, now_ms()))
        }
        UserCommand::Add { name, role } => {
            let password = rest::new_password(&name)?;
            let new = NewUser { name: name.clone(), password, role: role.into() };
            let action = format!("cannot add user {name}");
            let added: UserView = console.send(Method::POST, &["users"], &new, &action).await?;
            if json {
                return print_json(&added);
            }
            print(&format!("Added user {} ({}).\n", added.name, added.role.as_str()))
        }
        UserCommand::Remove { name } => {
            let action = format!("cannot remove user {name}");
            let _: serde_json::Value = console.delete(&["users", &name], &action).await?;
            if json {
                return print_json(&serde_json::json!({ "name": name, "removed": true }));
            }
            print(&format!("Removed user {name}.\n"))
        }
        UserCommand::Passwd { name } => {
            let name = name.unwrap_or_else(|| console.user().to_owned());
            let password = rest::new_password(&name)?;
            let change = UserChange { password: Some(password), role: None };
            let action = format!("cannot change the password of user {name}");
            let changed: UserView = console.send(Method::PUT, &["users", &name], &change, &action).await?;
            if json {
                return print_json(&changed);
            }
            print(&format!("Changed the password of user {}.\n", changed.name))
        }
    }
}

fn user_table(users: &[UserView], now: u64) -> String {
    let mut table = Table::new(&["NAME", "ROLE", "ADDED"]);
    for u in users {
        let added = if u.created_ms == 0 {
            "-".to_owned()
        } else {
            format!("{} ({})", utc(u.created_ms), ago(u.created_ms, now))
        };
        table.row(vec![u.name.clone(), u.role.as_str().to_owned(), added]);
    }
    table.render_or("No users.")
}

/// The console of DATA_DIR/cluster.json's first node, for `cairn user` without `--console`.
fn console_from_cluster_file(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(CLUSTER_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --console URL given (nor ${}), and cannot read {} (written by `cairn up --nodes N` \
             with --data-dir {})",
            rest::CONSOLE_ENV,
            path.display(),
            data_dir.display()
        )
    })?;
    console_from_cluster_text(&text, &path)
}

/// `http://ADDRESS:CONSOLE_PORT/` of the first node of a cluster.json that has a console.
fn console_from_cluster_text(text: &str, path: &Path) -> anyhow::Result<String> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{} is not JSON", path.display()))?;
    node_ports(&value, "console_port")
        .map(|(address, port)| format!("http://{address}:{port}/"))
        .next()
        .with_context(|| {
            format!(
                "{} names no console (a one-node `cairn up`, or one started with --no-console): \
                 pass --console URL",
                path.display()
            )
        })
}

// ------------------------------------------------------------------------------------------
// Formatting

/// `volume info`: one `key: value` line per property.
fn volume_details(info: &VolumeInfo, now: u64) -> String {
    let v = &info.volume;
    let p = &v.placement;
    let mut lines: Vec<(&str, String)> = vec![
        ("name", v.name.clone()),
        ("id", v.id.to_string()),
        ("mount path", v.mount_path.clone()),
        (
            "replication",
            format!(
                "{} copies (at least {}), {}; {} placed",
                v.replication,
                v.min_replication,
                replication_type(v.replication_type),
                p.replicas.len()
            ),
        ),
        ("quota", v.quota_bytes.map_or_else(|| "none".to_owned(), size)),
        ("advisory quota", v.advisory_quota_bytes.map_or_else(|| "none".to_owned(), size)),
        ("used", info.size_bytes.map_or_else(|| "unknown (not reported to this CLDB yet)".to_owned(), size)),
        ("created", format!("{} ({})", utc(v.created_ms), ago(v.created_ms, now))),
        ("epoch", p.epoch.to_string()),
        ("master", dash(&p.master)),
        ("replicas", replicas(&p.replicas, v.replication_type)),
        ("resyncing", list(&p.resyncing)),
    ];
    if let Some(since) = p.lost_since_ms {
        lines.push(("under-replicated", format!("since {} ({})", utc(since), ago(since, now))));
    }
    let first_data = cairn_cldb::model::name_container_id(v.id) + 1;
    let data = match v.data_containers {
        0 => "none".to_owned(),
        1 => first_data.to_string(),
        n => format!("{first_data}-{}", first_data + u64::from(n) - 1),
    };
    lines.push(("containers", format!("name {}, data {data}", cairn_cldb::model::name_container_id(v.id))));
    key_values(&lines)
}

/// `container info`: one `key: value` line per property.
fn container_details(c: &ContainerInfo, volume: Option<&VolumeInfo>) -> String {
    let chain = volume.map_or(ReplicationType::Chain, |v| v.volume.replication_type);
    let mut lines: Vec<(&str, String)> = vec![
        ("id", c.id.to_string()),
        ("volume", format!("{} (id {})", c.volume_name, c.volume)),
        ("kind", kind(c.kind).to_owned()),
        ("epoch", c.epoch.to_string()),
        ("master", dash(&c.master)),
        ("replicas", replicas(&c.replicas, chain)),
        ("resyncing", list(&c.resyncing)),
    ];
    if let Some(v) = volume {
        let used = v.size_bytes.map_or_else(|| "unknown".to_owned(), size);
        lines.push(("volume size", format!("{used} (the CLDB keeps sizes per volume, not per container)")));
    }
    key_values(&lines)
}

/// Replicas in order, master first, with what the order means.
fn replicas(nodes: &[String], how: ReplicationType) -> String {
    if nodes.is_empty() {
        return "-".to_owned();
    }
    match how {
        ReplicationType::Chain => format!("{} (master first, in chain order)", nodes.join(" -> ")),
        ReplicationType::Star => format!("{} (master first)", nodes.join(", ")),
    }
}

fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in lines {
        out.push_str(&format!("{:<width$} {value}\n", format!("{key}:")));
    }
    out
}

fn replication_type(t: ReplicationType) -> &'static str {
    match t {
        ReplicationType::Chain => "chain",
        ReplicationType::Star => "star",
    }
}

fn kind(k: ContainerKind) -> &'static str {
    match k {
        ContainerKind::Name => "name",
        ContainerKind::Data => "data",
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "-".to_owned() } else { items.join(",") }
}

fn dash(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

/// A table with a header line, columns left-aligned and separated by two spaces.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, or `empty` (and a newline) when it has no row below the header.
    pub(crate) fn render_or(&self, empty: &str) -> String {
        if self.rows.len() <= 1 {
            return format!("{empty}\n");
        }
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A quota for `volume modify`: a size ([`parse_size`]) or `none`.
fn parse_quota(text: &str) -> Result<QuotaChange, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(QuotaChange::Remove);
    }
    parse_size(text).map(QuotaChange::Set)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `3.2s ago`, `5m 10s ago`; `never` for 0.
fn ago(then_ms: u64, now_ms: u64) -> String {
    if then_ms == 0 {
        return "never".to_owned();
    }
    format!("{} ago", duration(now_ms.saturating_sub(then_ms)))
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..10 => format!("{:.1}s", ms as f64 / 1000.0),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // Whoever reads (`| head`) may stop early.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode the answer as JSON")?;
    print(&format!("{text}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("2 P"), Ok(2 << 50));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("0.1K"), Ok(102));
        assert_eq!(parse_size("1.3G"), Ok(1_395_864_371));
        for bad in ["", "G", "10X", "1.2.3G", "-1", "1.5", ".", "16384P", "99999999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn quotas_parse() {
        assert_eq!(parse_quota("8M"), Ok(QuotaChange::Set(8 << 20)));
        assert_eq!(parse_quota("0"), Ok(QuotaChange::Set(0)));
        assert_eq!(parse_quota("none"), Ok(QuotaChange::Remove));
        assert_eq!(parse_quota("None"), Ok(QuotaChange::Remove));
        assert!(parse_quota("nothing").is_err());
        assert!(parse_quota("").is_err());
    }

    #[test]
    fn times_print() {
        assert_eq!(ago(0, 5_000), "never");
        assert_eq!(ago(1_000, 4_400), "3.4s ago");
        assert_eq!(duration(125_000), "2m 5s");
        assert_eq!(duration(90_000_000), "1d 1h");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["n1".into(), "up".into()]);
        t.row(vec!["node-long".into(), "down".into()]);
        assert_eq!(t.render_or("none"), "NAME       STATE\nn1         up\nnode-long  down\n");
        assert_eq!(Table::new(&["A"]).render_or("none"), "none\n");
    }

    #[test]
    fn cluster_file_addresses() {
        let path = Path::new("cluster.json");
        let listed = r#"{"cldb": ["127.0.0.1:7222", "127.0.0.1:7223"], "nodes": []}"#;
        assert_eq!(
            addresses_from_cluster_file(listed, path).expect("listed"),
            vec!["127.0.0.1:7222", "127.0.0.1:7223"]
        );
        let from_nodes =
            r#"{"nodes": [{"address": "10.0.0.1", "cldb_port": 7222}, {"address": "10.0.0.2"}]}"#;
        assert_eq!(addresses_from_cluster_file(from_nodes, path).expect("nodes"), vec!["10.0.0.1:7222"]);
        let one_node = r#"{"coord": [{"id": 1, "address": "127.0.0.1:5181"}]}"#;
        let error = addresses_from_cluster_file(one_node, path).expect_err("no CLDB").to_string();
        assert!(error.contains("names no CLDB"), "{error}");
    }

    #[test]
    fn cluster_file_console() {
        let path = Path::new("cluster.json");
        let nodes = r#"{"nodes": [{"address": "10.0.0.1", "console_port": null},
                                  {"address": "10.0.0.2", "console_port": 8443}]}"#;
        assert_eq!(console_from_cluster_text(nodes, path).expect("console"), "http://10.0.0.2:8443/");
        let error = console_from_cluster_text(r#"{"nodes": []}"#, path).expect_err("none").to_string();
        assert!(error.contains("names no console"), "{error}");
    }
}
