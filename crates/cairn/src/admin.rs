//! `cairn volume|container|alarm|vip ...` and `cairn node list`: the cluster's administration
//! commands. Each is one or two calls on the CLDB through [`CldbClient`], printed as an aligned
//! table, or with `--json` as the CLDB's own reply types (`VolumeInfo`, `NodeInfo`,
//! `ContainerInfo`, `Alarm`, serialized by serde).
//!
//! The CLDBs are named by `--cldb HOST:PORT,...`, or else read from the `cldb` list of
//! `DATA_DIR/cluster.json`, which `cairn up --nodes N` writes. Reads go to the CLDB master when
//! one is known: only it knows the volumes' sizes and the nodes' last heartbeats, and it always
//! sees the latest writes.

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cairn_cldb::proto::{
    Alarm, ContainerInfo, ContainerKind, NodeInfo, NodeServices, NodeState, QuotaChange, ReplicationType,
    ServiceAction, ServiceRequest, ServiceStatus, VipInfo, VipPool, VipPoolEdit, VipPoolSpec, VolumeChange,
    VolumeInfo, VolumeSpec,
};
use cairn_cldb::{CldbClient, CldbClientOptions, CldbError};
use cairn_types::text::{parse_size, size, utc};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

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

#[derive(Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    target: Target,
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
}

#[derive(Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    target: Target,
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
    let target = args.target;
    block_on(async move {
        match args.command {
            VolumeCommand::Create(create) => volume_create(&target, create).await,
            VolumeCommand::List => volume_list(&target).await,
            VolumeCommand::Info { name } => volume_info(&target, &name).await,
            VolumeCommand::Remove { name } => volume_remove(&target, &name).await,
            VolumeCommand::Modify(modify) => volume_modify(&target, modify).await,
        }
    })
}

#[derive(Args)]
pub struct VipArgs {
    #[command(flatten)]
    target: Target,
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
        vip: std::net::Ipv4Addr,
        #[arg(long, value_name = "MAC")]
        to_mac: String,
    },
    /// Remove the pool that starts at --start; its VIPs are released.
    Remove {
        #[arg(long)]
        start: std::net::Ipv4Addr,
    },
    /// Every VIP: its node, interface, MAC and the interface's own (physical) address.
    List,
}

#[derive(Args)]
struct VipAddArgs {
    /// The first (or only) VIP.
    #[arg(long)]
    start: std::net::Ipv4Addr,
    /// The last VIP of the range [default: --start].
    #[arg(long)]
    end: Option<std::net::Ipv4Addr>,
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
    start: std::net::Ipv4Addr,
    #[arg(long)]
    end: Option<std::net::Ipv4Addr>,
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
    let target = args.target;
    block_on(async move {
        match args.command {
            VipCommand::Add(add) => vip_add(&target, add).await,
            VipCommand::Edit(edit) => vip_edit(&target, edit).await,
            VipCommand::Move { vip, to_mac } => vip_move(&target, vip, &to_mac).await,
            VipCommand::Remove { start } => vip_remove(&target, start).await,
            VipCommand::List => vip_list(&target).await,
        }
    })
}

/// `cairn node list`.
pub fn node_list(args: NodeListArgs) -> anyhow::Result<()> {
    block_on(nodes(&args.target))
}

/// `cairn container ...`.
pub fn container(args: ContainerArgs) -> anyhow::Result<()> {
    let target = args.target;
    block_on(async move {
        match args.command {
            ContainerCommand::List { volume } => container_list(&target, volume.as_deref()).await,
            ContainerCommand::Info { id } => container_info(&target, id).await,
        }
    })
}

/// `cairn service ...`.
pub fn service(args: ServiceArgs) -> anyhow::Result<()> {
    let target = args.target;
    block_on(async move {
        let (which, action) = match args.command {
            ServiceCommand::List => return services(&target).await,
            ServiceCommand::Start(which) => (which, ServiceAction::Start),
            ServiceCommand::Stop(which) => (which, ServiceAction::Stop),
            ServiceCommand::Restart(which) => (which, ServiceAction::Restart),
        };
        service_command(&target, which, action).await
    })
}

/// `cairn alarm ...`.
pub fn alarm(args: AlarmArgs) -> anyhow::Result<()> {
    let target = args.target;
    block_on(async move {
        match args.command {
            AlarmCommand::List => alarms(&target).await,
        }
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
        list = value
            .get("nodes")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|node| {
                let address = node.get("address")?.as_str()?;
                let port = node.get("cldb_port")?.as_u64()?;
                Some(format!("{address}:{port}"))
            })
            .collect();
    }
    if list.is_empty() {
        anyhow::bail!(
            "{} names no CLDB: a one-node `cairn up` runs none (start a cluster with \
             `cairn up --nodes 3`), or pass --cldb HOST:PORT",
            path.display()
        );
    }
    Ok(list)
}

/// A CLDB client and what to say when it fails.
struct Cldb {
    client: CldbClient,
    addresses: Vec<String>,
    timeout: Duration,
}

impl Cldb {
    fn new(target: &Target) -> anyhow::Result<Cldb> {
        let addresses = cldb_addresses(target)?;
        let timeout = Duration::from_secs(target.timeout.max(1));
        Ok(Cldb { client: client(addresses.clone(), timeout), addresses, timeout })
    }

    /// Like [`Cldb::new`], but reads go to the master first: it alone knows the volumes' sizes
    /// and the nodes' last heartbeats, and it has seen every write. Without a master (an election
    /// is under way) any CLDB answers, from coord.
    async fn for_reads(target: &Target, action: &str) -> anyhow::Result<Cldb> {
        let mut cldb = Cldb::new(target)?;
        let status = cldb.client.status().await.map_err(|e| cldb.failed(action, e))?;
        let master = if status.is_master { Some(status.address) } else { status.master };
        if let Some(master) = master {
            let mut ordered = vec![master.clone()];
            ordered.extend(cldb.addresses.iter().filter(|a| **a != master).cloned());
            cldb.client = client(ordered, cldb.timeout);
        }
        Ok(cldb)
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
// Commands

async fn volume_create(target: &Target, args: CreateArgs) -> anyhow::Result<()> {
    let cldb = Cldb::new(target)?;
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
    let info = cldb
        .client
        .create_volume(spec)
        .await
        .map_err(|e| cldb.failed(format_args!("cannot create volume {}", args.name), e))?;
    if target.json {
        return print_json(&info);
    }
    let mut out = format!("Created volume {} (id {}).\n", info.volume.name, info.volume.id);
    out.push_str(&volume_details(&info, now_ms()));
    print(&out)
}

async fn volume_modify(target: &Target, args: ModifyArgs) -> anyhow::Result<()> {
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
    let cldb = Cldb::new(target)?;
    let change = VolumeChange {
        name: args.name.clone(),
        quota: args.quota.unwrap_or_default(),
        advisory_quota: args.advisory_quota.unwrap_or_default(),
        replication: args.replication,
        min_replication: args.min_replication,
    };
    let info = cldb
        .client
        .modify_volume(change)
        .await
        .map_err(|e| cldb.failed(format_args!("cannot modify volume {}", args.name), e))?;
    if target.json {
        return print_json(&info);
    }
    let mut out = format!("Modified volume {} (id {}).\n", info.volume.name, info.volume.id);
    out.push_str(&volume_details(&info, now_ms()));
    print(&out)
}

async fn volume_list(target: &Target) -> anyhow::Result<()> {
    let action = "cannot list the volumes";
    let cldb = Cldb::for_reads(target, action).await?;
    let mut volumes = cldb.client.list_volumes().await.map_err(|e| cldb.failed(action, e))?;
    volumes.sort_by(|a, b| a.volume.name.cmp(&b.volume.name));
    if target.json {
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

async fn volume_info(target: &Target, name: &str) -> anyhow::Result<()> {
    let action = format!("cannot get volume {name}");
    let cldb = Cldb::for_reads(target, &action).await?;
    let info = cldb.client.volume_info(name).await.map_err(|e| cldb.failed(&action, e))?;
    if target.json {
        return print_json(&info);
    }
    print(&volume_details(&info, now_ms()))
}

async fn volume_remove(target: &Target, name: &str) -> anyhow::Result<()> {
    let cldb = Cldb::new(target)?;
    let id = cldb
        .client
        .remove_volume(name)
        .await
        .map_err(|e| cldb.failed(format_args!("cannot remove volume {name}"), e))?;
    if target.json {
        return print_json(&serde_json::json!({ "name": name, "id": id, "removed": true }));
    }
    print(&format!("Removed volume {name} (id {id}); the nodes delete its copies.\n"))
}

async fn vip_add(target: &Target, args: VipAddArgs) -> anyhow::Result<()> {
    let action = format!("cannot add the VIP pool starting at {}", args.start);
    let cldb = Cldb::new(target)?;
    let prefix = cairn_cldb::vip::parse_netmask(&args.netmask).map_err(|e| cldb.failed(&action, e))?;
    let spec = VipPoolSpec {
        start: args.start,
        end: args.end,
        prefix,
        macs: args.macs,
        preferred_mac: args.preferred_mac,
        any_subnet: args.any_subnet,
    };
    let pool = cldb.client.add_vip_pool(spec).await.map_err(|e| cldb.failed(&action, e))?;
    if target.json {
        return print_json(&pool);
    }
    print(&format!("added VIP pool {}\n", pool_line(&pool)))
}

async fn vip_edit(target: &Target, args: VipEditArgs) -> anyhow::Result<()> {
    let action = format!("cannot edit the VIP pool starting at {}", args.start);
    let cldb = Cldb::new(target)?;
    let prefix = match &args.netmask {
        Some(mask) => Some(cairn_cldb::vip::parse_netmask(mask).map_err(|e| cldb.failed(&action, e))?),
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
    let pool = cldb.client.edit_vip_pool(edit).await.map_err(|e| cldb.failed(&action, e))?;
    if target.json {
        return print_json(&pool);
    }
    print(&format!("VIP pool now {}\n", pool_line(&pool)))
}

async fn vip_move(target: &Target, vip: std::net::Ipv4Addr, to_mac: &str) -> anyhow::Result<()> {
    let action = format!("cannot move VIP {vip}");
    let cldb = Cldb::new(target)?;
    let infos = cldb.client.move_vip(vip, to_mac).await.map_err(|e| cldb.failed(&action, e))?;
    if target.json {
        return print_json(&infos);
    }
    print(&vip_table(&infos))
}

async fn vip_remove(target: &Target, start: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let action = format!("cannot remove the VIP pool starting at {start}");
    let cldb = Cldb::new(target)?;
    let pool = cldb.client.remove_vip_pool(start).await.map_err(|e| cldb.failed(&action, e))?;
    if target.json {
        return print_json(&pool);
    }
    print(&format!("removed VIP pool {}\n", pool_line(&pool)))
}

async fn vip_list(target: &Target) -> anyhow::Result<()> {
    let action = "cannot list the VIPs";
    let cldb = Cldb::new(target)?;
    let infos = cldb.client.list_vips().await.map_err(|e| cldb.failed(action, e))?;
    if target.json {
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

async fn nodes(target: &Target) -> anyhow::Result<()> {
    let action = "cannot list the nodes";
    let cldb = Cldb::for_reads(target, action).await?;
    let mut nodes = cldb.client.list_nodes().await.map_err(|e| cldb.failed(action, e))?;
    nodes.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    if target.json {
        return print_json(&nodes);
    }
    print(&node_table(&nodes, now_ms()))
}

async fn services(target: &Target) -> anyhow::Result<()> {
    let action = "cannot list the services";
    let cldb = Cldb::for_reads(target, action).await?;
    let nodes = cldb.client.list_services().await.map_err(|e| cldb.failed(action, e))?;
    if target.json {
        return print_json(&nodes);
    }
    print(&service_table(&nodes, now_ms()))
}

/// How long `cairn service start|stop|restart` waits for the service to get there.
const SERVICE_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

async fn service_command(target: &Target, which: ServiceTarget, action: ServiceAction) -> anyhow::Result<()> {
    let verb = format!("{action:?}").to_lowercase();
    let what = format!("cannot {verb} {} on node {}", which.service, which.node);
    let cldb = Cldb::for_reads(target, &what).await?;
    // The instance running before the request: a restart is done once another one runs.
    let before = cldb.client.list_services().await.map_err(|e| cldb.failed(&what, e))?;
    let started_before =
        status_of(&before, &which.node, &which.service).and_then(|s| s.started_ms.map(|at| (at, s.pid)));
    let request = ServiceRequest { node: which.node.clone(), service: which.service.clone(), action };
    cldb.client.service_command(request).await.map_err(|e| cldb.failed(&what, e))?;
    // The Warden took the request; wait until the service is where it was asked to be.
    let deadline = tokio::time::Instant::now() + SERVICE_SETTLE;
    loop {
        let nodes = cldb.client.list_services().await.map_err(|e| cldb.failed(&what, e))?;
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

async fn container_list(target: &Target, volume: Option<&str>) -> anyhow::Result<()> {
    let action = "cannot list the containers";
    let cldb = Cldb::for_reads(target, action).await?;
    let mut containers = cldb.client.list_containers().await.map_err(|e| cldb.failed(action, e))?;
    if let Some(volume) = volume {
        containers.retain(|c| c.volume_name == volume);
        if containers.is_empty() {
            // Says whether the volume exists at all.
            cldb.client
                .volume_info(volume)
                .await
                .map_err(|e| cldb.failed(format_args!("cannot list the containers of {volume}"), e))?;
        }
    }
    containers.sort_by_key(|c| c.id);
    if target.json {
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

async fn container_info(target: &Target, id: u64) -> anyhow::Result<()> {
    let action = format!("cannot get container {id}");
    let cldb = Cldb::for_reads(target, &action).await?;
    let info = cldb.client.container_info(id).await.map_err(|e| cldb.failed(&action, e))?;
    if target.json {
        return print_json(&info);
    }
    // The CLDB keeps sizes and the replication type per volume, not per container.
    let volume = cldb.client.volume_info(&info.volume_name).await.ok();
    print(&container_details(&info, volume.as_ref()))
}

async fn alarms(target: &Target) -> anyhow::Result<()> {
    let action = "cannot list the alarms";
    let cldb = Cldb::for_reads(target, action).await?;
    let mut alarms = cldb.client.list_alarms().await.map_err(|e| cldb.failed(action, e))?;
    alarms.sort_by(|a, b| (a.since_ms, a.kind, &a.subject).cmp(&(b.since_ms, b.kind, &b.subject)));
    if target.json {
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
}
