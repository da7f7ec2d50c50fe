//! The CLDB's RPC messages. They ride on `cairn-rpc` frames (MessagePack with named fields): new
//! variants go at the end, new fields are `#[serde(default)]`.
//!
//! Every request is answered with `Result<Response, CldbError>`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// A cairn-rpc client speaking the CLDB protocol (the CLDB never pushes).
pub type RpcClient = cairn_rpc::Client<Request, Result<Response, CldbError>, ()>;

/// What a CLDB is asked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Sent every second by each node's fileserver. Master only.
    Heartbeat(Heartbeat),
    /// Master only.
    CreateVolume(VolumeSpec),
    /// Master only.
    RemoveVolume {
        name: String,
    },
    ListVolumes,
    VolumeInfo {
        name: String,
    },
    /// The clients' hot path: where a volume lives, its master and epoch.
    LookupVolume {
        id: u32,
    },
    ListNodes,
    ListContainers,
    ContainerInfo {
        id: u64,
    },
    ListAlarms,
    /// Master only (so that a pool just added is listed). Every VIP pool, in address order
    /// (its addresses and rules; where each VIP is: `ListVips`).
    ListVipPools,
    Status,
    /// Master only. Changes a live volume's quotas or replication; answered with the new
    /// record (`Response::Volume`).
    ModifyVolume(VolumeChange),
    /// Master only. Adds a pool of virtual IPs (`maprcli virtualip add`); answered with the pool
    /// (`Response::VipPool`).
    AddVipPool(VipPoolSpec),
    /// Master only. Changes the pool that starts at `start`; answered with the new pool.
    EditVipPool(VipPoolEdit),
    /// Master only. Removes the pool that starts at `start` (its VIPs are released); answered
    /// with the removed pool.
    RemoveVipPool {
        start: Ipv4Addr,
    },
    /// Master only. Moves one VIP to the interface with this MAC and keeps it there while that
    /// gateway is healthy; answered with the VIP's state (`Response::Vips`).
    MoveVip {
        vip: Ipv4Addr,
        to_mac: String,
    },
    /// Master only (the assignment lives in the master's memory). Every VIP and where it is.
    ListVips,
    /// Master only. A node's VIP agent: what it has and sees; answered (`Response::VipGrant`) with
    /// the VIPs it must hold, at once if they changed, else after at most `wait_ms`.
    VipAgent(VipAgentReport),
    /// Every node's services as its Warden last published them (any CLDB, from coord).
    ListServices,
    /// Asks a node's Warden to start, stop or restart one of its services; answered
    /// (`Response::Services`, that node only) once the Warden took the request, or
    /// `Unavailable` if it did not within `SERVICE_COMMAND_WAIT`.
    ServiceCommand(ServiceRequest),
}

impl Request {
    /// Writes and heartbeats go to the master; everything else may be answered by any CLDB.
    pub fn needs_master(&self) -> bool {
        matches!(
            self,
            Request::Heartbeat(_)
                | Request::CreateVolume(_)
                | Request::RemoveVolume { .. }
                | Request::ModifyVolume(_)
                | Request::AddVipPool(_)
                | Request::EditVipPool(_)
                | Request::RemoveVipPool { .. }
                | Request::MoveVip { .. }
                | Request::ListVips
                | Request::ListVipPools
                | Request::VipAgent(_)
        )
    }
}

/// What a CLDB answers (inside `Ok`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Heartbeat(HeartbeatReply),
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Removed { id: u32 },
    Location(VolumeLocation),
    Nodes(Vec<NodeInfo>),
    Containers(Vec<ContainerInfo>),
    Container(ContainerInfo),
    Alarms(Vec<Alarm>),
    Status(CldbStatus),
    VipPool(VipPool),
    Vips(Vec<VipInfo>),
    VipGrant(VipGrant),
    VipPools(Vec<VipPool>),
    Services(Vec<NodeServices>),
}

/// Every failure a CLDB client can see.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CldbError {
    /// This CLDB is not the master; `master` is the master's RPC address if one is known.
    #[error("this CLDB is not the master (master: {})", master.as_deref().unwrap_or("unknown"))]
    NotMaster { master: Option<String> },
    #[error("no such volume: {what}")]
    NoSuchVolume { what: String },
    #[error("a volume named {name} already exists")]
    VolumeExists { name: String },
    #[error("no such container: {id}")]
    NoSuchContainer { id: u64 },
    #[error("invalid request: {0}")]
    InvalidSpec(String),
    #[error("not enough nodes: {needed} needed, {up} up")]
    NotEnoughNodes { needed: u32, up: u32 },
    /// Coord is unreachable or failed, or no CLDB answered: try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A record in coord cannot be decoded.
    #[error("corrupt record at {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

/// How a volume's writes travel from the master to the other replicas.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum ReplicationType {
    /// Master → replica 1 → replica 2 ... (MapR's `high_throughput`).
    #[default]
    Chain,
    /// Master → every replica at once (MapR's `low_latency`).
    Star,
}

/// One fileserver's heartbeat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// The node's name, unique in the cluster (usually the host name).
    pub node: String,
    /// Where the node's fileserver answers RPCs (host:port).
    pub fileserver_address: String,
    #[serde(default)]
    pub nfs_address: String,
    /// Rack path, like `/dc1/rack7`; empty means [`crate::model::DEFAULT_TOPOLOGY`].
    #[serde(default)]
    pub topology: String,
    #[serde(default)]
    pub services: Vec<String>,
    /// Every volume the node holds a copy of.
    #[serde(default)]
    pub volumes: Vec<VolumeReport>,
    /// The file system holding the node's containers (absent when it cannot be read).
    #[serde(default)]
    pub disk: Option<DiskSpace>,
}

/// Size and free space of a file system, from statvfs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskSpace {
    pub total_bytes: u64,
    /// What an unprivileged writer may still use (`f_bavail`).
    pub free_bytes: u64,
}

/// What a node holds of one volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportedRole {
    Master,
    Replica,
    Resyncing,
    /// A copy the node keeps but that belongs to no current placement it knows of.
    Stale,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeReport {
    pub volume: u32,
    pub role: ReportedRole,
    /// The placement epoch the node's copy follows (the last assignment it applied).
    pub epoch: u64,
    /// The last replication sequence number applied.
    #[serde(default)]
    pub position: u64,
    /// Bytes used (meaningful in the master's report; quotas use it).
    #[serde(default)]
    pub size_bytes: u64,
    /// In a master's report: the resyncing nodes that have caught up and receive every new write.
    #[serde(default)]
    pub in_sync: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct HeartbeatReply {
    pub cluster_id: u64,
    /// The CLDB master epoch of the master that answered. A node keeps the highest it has seen
    /// and ignores replies carrying a lower one: they come from a deposed master.
    #[serde(default)]
    pub cldb_epoch: u64,
    /// Every volume the node hosts or should host, and `Remove` for copies it must delete.
    /// A volume the node reported but that is missing here is left alone for now: its fate is
    /// decided at a later heartbeat (it may be taken back as a resync target).
    pub assignments: Vec<Assignment>,
}

/// What a node is to do with one volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AssignedRole {
    Master,
    Replica,
    /// Copy the volume from the master until it reports this node `in_sync`.
    Resync,
    /// Delete the local copy.
    Remove,
}

/// One volume's placement as seen by one node. Assignments of a volume with the same epoch have
/// the same placement (only the quotas may differ: ModifyVolume changes them without an epoch
/// bump, and the master applies those of every assignment), and a higher epoch always supersedes
/// a lower one: a node keeps the highest epoch it has applied per volume and ignores older
/// assignments (they can only come from a deposed CLDB master). `Remove` of a volume the CLDB no
/// longer knows at all carries `u64::MAX`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub volume: u32,
    pub epoch: u64,
    /// The master's node name (empty in a `Remove`).
    #[serde(default)]
    pub master: String,
    #[serde(default)]
    pub master_address: String,
    /// (node name, fileserver address), master first, in chain order.
    #[serde(default)]
    pub replicas: Vec<(String, String)>,
    /// (node name, fileserver address) of nodes being brought up to date by the master.
    #[serde(default)]
    pub resyncing: Vec<(String, String)>,
    #[serde(default)]
    pub replication_type: ReplicationType,
    #[serde(default)]
    pub data_containers: u32,
    pub your_role: AssignedRole,
    /// The volume's hard quota (from its spec): the master refuses writes that would take the
    /// volume's used bytes past it. `None`: no quota (and in a `Remove`).
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// The volume's advisory quota: only an alarm, raised by the CLDB.
    #[serde(default)]
    pub advisory_quota_bytes: Option<u64>,
}

/// A request to create a volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct VolumeSpec {
    pub name: String,
    /// Where the volume is mounted in the cluster namespace; default `/<name>`.
    #[serde(default)]
    pub mount_path: Option<String>,
    /// Number of copies, 1..=5; default 3.
    #[serde(default)]
    pub replication: Option<u32>,
    /// Fewest copies to create the volume with, 1..=replication; default 1.
    #[serde(default)]
    pub min_replication: Option<u32>,
    #[serde(default)]
    pub replication_type: ReplicationType,
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    #[serde(default)]
    pub advisory_quota_bytes: Option<u64>,
    /// Default [`crate::model::DEFAULT_DATA_CONTAINERS`].
    #[serde(default)]
    pub data_containers: Option<u32>,
}

/// What [`VolumeChange`] does with one quota.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QuotaChange {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Set it to this many bytes (it may be below the bytes already used: growth is refused from
    /// then on, nothing is deleted).
    Set(u64),
    /// No quota any more.
    Remove,
}

impl QuotaChange {
    /// The quota after the change.
    pub fn apply(self, current: Option<u64>) -> Option<u64> {
        match self {
            QuotaChange::Keep => current,
            QuotaChange::Set(bytes) => Some(bytes),
            QuotaChange::Remove => None,
        }
    }
}

/// A request to change a live volume (ModifyVolume). Fields left at their default change
/// nothing; the new values are checked like a [`VolumeSpec`]'s (replication 1..=5, minimum
/// replication 1..=replication, advisory quota not above the hard quota). Setting the same
/// values again changes nothing, so the request is safe to repeat.
///
/// A higher replication makes the CLDB add that many resync targets at once (nodes that report
/// a copy first, then the placement rules of re-replication), without waiting for the
/// re-replication timeout; a lower one drops the surplus at once: nodes that are down first,
/// then resync targets, then replicas from the end of the chain, never the master; their nodes
/// are told to delete their copies at their next heartbeat. Either bumps the placement epoch. A
/// quota change keeps the epoch: the master applies the quotas of every assignment it gets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct VolumeChange {
    pub name: String,
    #[serde(default)]
    pub quota: QuotaChange,
    #[serde(default)]
    pub advisory_quota: QuotaChange,
    /// New number of copies, 1..=5.
    #[serde(default)]
    pub replication: Option<u32>,
    /// New fewest copies (checked against the replication; only volume creation uses it).
    #[serde(default)]
    pub min_replication: Option<u32>,
}

/// A volume record, as kept in coord.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub id: u32,
    pub name: String,
    pub mount_path: String,
    pub replication: u32,
    pub min_replication: u32,
    pub replication_type: ReplicationType,
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    #[serde(default)]
    pub advisory_quota_bytes: Option<u64>,
    pub data_containers: u32,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Set by RemoveVolume; the record goes once no live node reports a copy.
    #[serde(default)]
    pub removed: bool,
    pub placement: Placement,
}

/// Where a volume (its name container and all its data containers) lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Placement {
    /// Node names, master first.
    pub replicas: Vec<String>,
    pub master: String,
    /// Starts at 1; +1 at every change of master, replicas or resyncing (and at removal).
    pub epoch: u64,
    /// Nodes being brought up to date by the master; they join `replicas` once in sync.
    #[serde(default)]
    pub resyncing: Vec<String>,
    /// When the volume became under-replicated (ms since the Unix epoch).
    #[serde(default)]
    pub lost_since_ms: Option<u64>,
}

/// A volume and what the master knows of its use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume: Volume,
    /// Bytes used, from the volume master's last report; only a CLDB master knows it.
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// A node's name and addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub name: String,
    pub fileserver_address: String,
    #[serde(default)]
    pub nfs_address: String,
}

/// The answer to LookupVolume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeLocation {
    pub volume: u32,
    pub name: String,
    pub epoch: u64,
    pub master: String,
    /// The master's fileserver address (empty if the node is unknown).
    pub master_address: String,
    /// Master first.
    pub replicas: Vec<NodeAddress>,
    pub replication_type: ReplicationType,
    /// Cluster-wide id of the name container.
    pub name_container: u64,
    /// Cluster-wide ids of the data containers.
    pub data_containers: Vec<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum NodeState {
    #[default]
    Up,
    Down,
}

/// A node record, as kept in coord. Written when the node registers, when its addresses,
/// topology or services change, and when it goes Down or comes back Up; not at every heartbeat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeRecord {
    pub name: String,
    pub fileserver_address: String,
    #[serde(default)]
    pub nfs_address: String,
    pub topology: String,
    #[serde(default)]
    pub services: Vec<String>,
    pub state: NodeState,
    /// When `state` last changed (ms since the Unix epoch).
    pub state_since_ms: u64,
    /// The last heartbeat when the record was written.
    #[serde(default)]
    pub last_heartbeat_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub record: NodeRecord,
    /// The last heartbeat received (the master's memory; from the record on other CLDBs).
    pub last_heartbeat_ms: u64,
    /// Volumes placed on the node (replicas and resyncing).
    pub volumes: u32,
    /// The node's disk as of its last heartbeat to this master (only the master knows it).
    #[serde(default)]
    pub disk: Option<DiskSpace>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    Name,
    Data,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Cluster-wide id: `volume * 1000 + local id` (local 1 is the name container).
    pub id: u64,
    pub volume: u32,
    pub volume_name: String,
    pub kind: ContainerKind,
    pub epoch: u64,
    pub master: String,
    pub replicas: Vec<String>,
    pub resyncing: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlarmKind {
    NodeDown,
    UnderReplicated,
    QuotaExceeded,
    AdvisoryQuotaExceeded,
    MasterElectionStuck,
    /// A record in coord could not be decoded.
    CorruptRecord,
    /// A node's Warden gave up restarting a service (subject `node/service`).
    ServiceFailed,
    /// A node's Warden refused a configuration file (subject `node/file`) and kept its last
    /// good copy.
    ConfigRejected,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    pub kind: AlarmKind,
    /// A node name, a volume name, or a coord path.
    pub subject: String,
    /// When the condition started (ms since the Unix epoch).
    pub since_ms: u64,
    pub message: String,
}

impl Alarm {
    /// The alarm's key, also its znode name under `/cairn/cldb/alarms`.
    pub fn key(&self) -> String {
        alarm_key(self.kind, &self.subject)
    }
}

/// `<Kind>-<subject>` with `/` in the subject replaced (it may be a coord path).
pub fn alarm_key(kind: AlarmKind, subject: &str) -> String {
    format!("{kind:?}-{}", subject.replace('/', "%"))
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CldbStatus {
    /// This CLDB's name and RPC address.
    pub name: String,
    pub address: String,
    pub is_master: bool,
    /// The master's RPC address, if one is known.
    #[serde(default)]
    pub master: Option<String>,
    /// The CLDB master epoch: +1 at every election.
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub cluster_id: u64,
}

/// A request to add a pool of virtual IPs: `start..=end` (one VIP without `end`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VipPoolSpec {
    pub start: Ipv4Addr,
    #[serde(default)]
    pub end: Option<Ipv4Addr>,
    /// The netmask as a prefix length (0..=32): the subnet a VIP shares with the interfaces
    /// that may hold it.
    pub prefix: u8,
    /// MAC addresses of the interfaces that may hold the pool's VIPs; empty: every interface of
    /// every node running a healthy NFS gateway, in the VIPs' subnet.
    #[serde(default)]
    pub macs: Vec<String>,
    /// The interface that gets a VIP back whenever its gateway is healthy.
    #[serde(default)]
    pub preferred_mac: Option<String>,
    /// Accept VIPs outside every eligible interface's subnet (the network must route them to
    /// the nodes).
    #[serde(default)]
    pub any_subnet: bool,
}

/// A change to the pool starting at `start` (`maprcli virtualip edit`); `None` keeps a field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct VipPoolEdit {
    pub start: Option<Ipv4Addr>,
    #[serde(default)]
    pub end: Option<Ipv4Addr>,
    #[serde(default)]
    pub prefix: Option<u8>,
    #[serde(default)]
    pub macs: Option<Vec<String>>,
    /// `Some(None)` removes the preferred MAC.
    #[serde(default)]
    pub preferred_mac: Option<Option<String>>,
    #[serde(default)]
    pub any_subnet: Option<bool>,
}

/// A pool of virtual IPs, as kept in coord under `/cairn/cldb/vips/<start>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VipPool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub prefix: u8,
    /// Lower-case `aa:bb:cc:dd:ee:ff`; empty: any interface in the subnet.
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default)]
    pub preferred_mac: Option<String>,
    #[serde(default)]
    pub any_subnet: bool,
    /// VIPs moved by hand (`vip move`): they stay on that MAC while its gateway is healthy.
    #[serde(default)]
    pub moved: BTreeMap<Ipv4Addr, String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_ms: u64,
}

/// Where one VIP is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VipInfo {
    pub vip: Ipv4Addr,
    pub prefix: u8,
    /// The first VIP of its pool.
    pub pool: Ipv4Addr,
    /// The node it is granted to (empty: nobody yet).
    pub node: String,
    /// The interface it is on: name, MAC and the interface's own (physical) IPv4 address.
    #[serde(default)]
    pub interface: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub physical_ip: Option<Ipv4Addr>,
    /// True once the node reported holding it.
    #[serde(default)]
    pub held: bool,
    /// The MAC it returns to (a `vip move` target, else the pool's preferred MAC).
    #[serde(default)]
    pub preferred_mac: Option<String>,
}

/// One network interface of a node, as its VIP agent sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InterfaceReport {
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// IPv4 addresses with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// What a node's VIP agent tells the CLDB master, every half second at most.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct VipAgentReport {
    pub node: String,
    /// The agent's coord session: it holds VIPs only while the session lives, and the ephemeral
    /// `/cairn/nfs/<node>` carries it.
    pub session: u64,
    /// The grant generation the agent last applied; the master answers at once when it differs.
    #[serde(default)]
    pub generation: u64,
    /// Longest the master may hold the answer back (capped at [`crate::vip::AGENT_WAIT_MAX`]).
    #[serde(default)]
    pub wait_ms: u64,
    /// The node's own NFS gateway answers.
    #[serde(default)]
    pub nfs_ok: bool,
    #[serde(default)]
    pub interfaces: Vec<InterfaceReport>,
    /// The VIPs the node holds now.
    #[serde(default)]
    pub held: Vec<Ipv4Addr>,
    /// Established NFS connections to a held VIP: (VIP:port, client:port), for tickle ACKs by
    /// the next holder.
    #[serde(default)]
    pub connections: Vec<(SocketAddrV4, SocketAddrV4)>,
    /// A VIP someone else answered for when the agent probed it before claiming.
    #[serde(default)]
    pub conflicts: Vec<(Ipv4Addr, String)>,
}

/// The VIPs a node must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct VipGrant {
    /// The CLDB master epoch of the master that answered (agents ignore lower ones).
    pub cldb_epoch: u64,
    pub generation: u64,
    pub vips: Vec<GrantedVip>,
}

/// One VIP a node must hold, and on which interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GrantedVip {
    pub vip: Ipv4Addr,
    pub interface: String,
    pub mac: String,
    /// MACs that may still answer for the VIP without being a conflict (the previous holder
    /// during a planned move).
    #[serde(default)]
    pub ignore_macs: Vec<String>,
    /// Connections the previous holder had: tickle each after taking over.
    #[serde(default)]
    pub tickle: Vec<(SocketAddrV4, SocketAddrV4)>,
}

/// What a node's Warden publishes at `/cairn/warden/nodes/<node>` (ephemeral: gone with the
/// Warden) and `cairn service list` shows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeServices {
    pub node: String,
    pub host: String,
    /// The Warden's process id.
    pub pid: u32,
    /// When the Warden wrote this (ms since the Unix epoch).
    pub updated_ms: u64,
    pub services: Vec<ServiceStatus>,
}

/// One service on one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ServiceStatus {
    pub name: String,
    /// `running`, `waiting`, `backoff`, `failed`, `stopped` (by an operator) or `stopping`.
    pub state: String,
    /// Why it is in that state (what it waits for, its last exit, ...).
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Resident memory of its process tree (or its cgroup's usage).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Its memory share (`heapsize`), enforced with a cgroup when the machine has one.
    #[serde(default)]
    pub heap_bytes: Option<u64>,
    pub restarts: u64,
    /// When the running instance started (ms since the Unix epoch).
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// Its triplet's count: `all` or the number of instances allowed cluster-wide.
    #[serde(default)]
    pub count: String,
    #[serde(default)]
    pub ports: Vec<(String, u16)>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

/// `cairn service start|stop|restart --node N --service S`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    pub node: String,
    pub service: String,
    pub action: ServiceAction,
}
