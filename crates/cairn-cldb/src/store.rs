//! The CLDB tables in coord: their layout, loading them, and fenced writes.
//!
//! ```text
//! /cairn/cluster                  {"cluster_id": u64}, created once by the first CLDB
//! /cairn/cldb/master              ephemeral lock of the master; data: its RPC address
//! /cairn/cldb/epoch               {"epoch", "name", "address", "lock_zxid"}: the CLDB master
//!                                 epoch; its znode *version* is the fencing token
//! /cairn/cldb/next-volume-id      JSON u32: the next volume id (ids are never reused)
//! /cairn/cldb/volumes/<id>        JSON Volume (spec + placement + removed flag)
//! /cairn/cldb/volume-names/<name> the id of the live volume with that name (as text)
//! /cairn/cldb/nodes/<name>        JSON NodeRecord
//! /cairn/cldb/alarms/<Kind>-<subject>  JSON Alarm (subject with `/` written `%`)
//! /cairn/cldb/vips/<start>        JSON VipPool (a pool of virtual IPs, by its first address)
//! /cairn/nfs/<node>               ephemeral of the node's VIP agent session; data: NFS address
//! ```
//!
//! Fencing: a newly elected master sets `/cairn/cldb/epoch` with a version check (so two
//! elections never both succeed from the same version) and remembers the new version; every
//! later write is a `multi` that starts with `Op::Check` of that version. The next master's bump
//! changes the version, so every write of a deposed master fails from then on, whatever it
//! believes. A bump can only succeed while the bumper's session is alive (coord refuses writes of
//! an expired session), and while that session lives it holds the ephemeral lock, so bumps happen
//! in the order of lock holders. The new master reads the tables after its bump, so it sees every
//! write the old master made before being fenced.

use std::collections::BTreeMap;

use cairn_coord::api::{CoordError, CreateMode, Op};
use cairn_coord::client::CoordClient;
use serde::{Deserialize, Serialize};

use crate::model::check_volume_record;
use crate::planner::Tables;
use crate::proto::{Alarm, CldbError, NodeRecord, NodeState, VipPool, Volume};

pub const CLUSTER_PATH: &str = "/cairn/cluster";
pub const ROOT: &str = "/cairn/cldb";
pub const MASTER_PATH: &str = "/cairn/cldb/master";
pub const EPOCH_PATH: &str = "/cairn/cldb/epoch";
pub const NEXT_VOLUME_ID_PATH: &str = "/cairn/cldb/next-volume-id";
pub const VOLUMES: &str = "/cairn/cldb/volumes";
pub const VOLUME_NAMES: &str = "/cairn/cldb/volume-names";
pub const NODES: &str = "/cairn/cldb/nodes";
pub const ALARMS: &str = "/cairn/cldb/alarms";
pub const VIPS: &str = "/cairn/cldb/vips";
/// Most operations per fenced `multi` (coord allows 1024, the fence check included).
pub const OPS_PER_MULTI_MAX: usize = 500;

pub fn volume_path(id: u32) -> String {
    format!("{VOLUMES}/{id}")
}
pub fn volume_name_path(name: &str) -> String {
    format!("{VOLUME_NAMES}/{name}")
}
pub fn node_path(name: &str) -> String {
    format!("{NODES}/{name}")
}
pub fn alarm_path(key: &str) -> String {
    format!("{ALARMS}/{key}")
}
pub fn vip_pool_path(start: std::net::Ipv4Addr) -> String {
    format!("{VIPS}/{start}")
}

#[derive(Serialize, Deserialize)]
struct ClusterRecord {
    cluster_id: u64,
}

/// The content of `/cairn/cldb/epoch`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochRecord {
    pub epoch: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    /// The czxid of the lock znode the master held when it bumped the epoch.
    #[serde(default)]
    pub lock_zxid: u64,
}

pub fn unavailable(e: CoordError) -> CldbError {
    CldbError::Unavailable(format!("coord: {e}"))
}

pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records hold only strings, numbers, lists and maps with string keys: serde_json cannot
    // fail on them.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(path: &str, data: &[u8]) -> Result<T, CldbError> {
    serde_json::from_slice(data)
        .map_err(|e| CldbError::Corrupt { path: path.to_owned(), reason: e.to_string() })
}

pub(crate) async fn create_if_missing(
    client: &CoordClient,
    path: &str,
    data: &[u8],
) -> Result<(), CoordError> {
    match client.create(path, data, CreateMode::Persistent).await {
        Ok(_) | Err(CoordError::NodeExists { .. }) => Ok(()),
        Err(CoordError::ConnectionLoss { .. }) => match client.exists(path).await? {
            Some(_) => Ok(()),
            None => Box::pin(create_if_missing(client, path, data)).await,
        },
        Err(e) => Err(e),
    }
}

/// Creates the znodes the tables live under (harmless if they exist) and the cluster id (a random
/// u64, drawn once per cluster). Returns the cluster id.
pub async fn ensure_layout(client: &CoordClient) -> Result<u64, CldbError> {
    for path in ["/cairn", ROOT, VOLUMES, VOLUME_NAMES, NODES, ALARMS, VIPS, crate::vip::NFS_SESSIONS] {
        create_if_missing(client, path, b"").await.map_err(unavailable)?;
    }
    create_if_missing(client, NEXT_VOLUME_ID_PATH, b"1").await.map_err(unavailable)?;
    create_if_missing(client, EPOCH_PATH, &to_json(&EpochRecord::default())).await.map_err(unavailable)?;
    let proposed = ClusterRecord { cluster_id: rand::random::<u64>().max(1) };
    create_if_missing(client, CLUSTER_PATH, &to_json(&proposed)).await.map_err(unavailable)?;
    let (data, _) = client.get(CLUSTER_PATH).await.map_err(unavailable)?;
    let record: ClusterRecord = decode(CLUSTER_PATH, &data)?;
    Ok(record.cluster_id)
}

/// The master's RPC address, from the lock znode; `None` if no master holds it.
pub async fn master_address(client: &CoordClient) -> Result<Option<String>, CldbError> {
    match client.get(MASTER_PATH).await {
        Ok((data, _)) => Ok(String::from_utf8(data).ok().filter(|s| !s.is_empty())),
        Err(CoordError::NoNode { .. }) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// The current CLDB master epoch record and its znode version.
pub async fn epoch(client: &CoordClient) -> Result<(EpochRecord, i32), CldbError> {
    let (data, stat) = client.get(EPOCH_PATH).await.map_err(unavailable)?;
    // A damaged epoch record only loses the counter's value, not the fence (the version).
    let record = decode(EPOCH_PATH, &data).unwrap_or_default();
    Ok((record, stat.version))
}

/// Bumps the CLDB master epoch after winning the lock. Returns the new record and the fencing
/// version every later write must check.
pub async fn bump_epoch(
    client: &CoordClient,
    name: &str,
    address: &str,
    lock_zxid: u64,
) -> Result<(EpochRecord, i32), CldbError> {
    loop {
        let (old, version) = epoch(client).await?;
        let new = EpochRecord {
            epoch: old.epoch.saturating_add(1),
            name: name.to_owned(),
            address: address.to_owned(),
            lock_zxid,
        };
        match client.set(EPOCH_PATH, &to_json(&new), Some(version)).await {
            Ok(stat) => return Ok((new, stat.version)),
            // Someone bumped between our read and write (or our write went through before the
            // connection broke): read again. Only a live session can bump, so we still hold the
            // lock if we succeed.
            Err(CoordError::BadVersion { .. }) | Err(CoordError::ConnectionLoss { .. }) => {
                let (now, v) = epoch(client).await?;
                if now == new {
                    return Ok((now, v));
                }
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
}

/// Why a fenced write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another master has been elected (or our session is gone): stop acting as master.
    #[error("deposed: {0}")]
    Deposed(String),
    /// Coord refused one of the operations (the tables in memory disagree with coord).
    #[error("coord refused the write: {0}")]
    Refused(CoordError),
    /// Coord could not be reached, or the connection broke: the write may or may not have been
    /// applied.
    #[error("coord write failed: {0}")]
    Unknown(CoordError),
}

impl From<WriteError> for CldbError {
    fn from(e: WriteError) -> CldbError {
        match e {
            WriteError::Deposed(_) => CldbError::NotMaster { master: None },
            other => CldbError::Unavailable(other.to_string()),
        }
    }
}

/// The master's handle for writing: its coord session and fencing version.
#[derive(Clone)]
pub struct Fenced {
    pub client: CoordClient,
    pub version: i32,
}

impl Fenced {
    /// Applies `ops` (in multis of at most [`OPS_PER_MULTI_MAX`], each fenced; a plan that large
    /// is not atomic as a whole).
    pub async fn write(&self, ops: Vec<Op>) -> Result<(), WriteError> {
        for chunk in ops.chunks(OPS_PER_MULTI_MAX) {
            let mut multi = Vec::with_capacity(chunk.len() + 1);
            multi.push(Op::Check { path: EPOCH_PATH.to_owned(), version: self.version });
            multi.extend_from_slice(chunk);
            match self.client.multi(multi).await {
                Ok(_) => {}
                Err(CoordError::MultiFailed { index: 0, error }) => {
                    return Err(WriteError::Deposed(format!("the CLDB epoch moved on: {error}")));
                }
                Err(e @ (CoordError::SessionExpired { .. } | CoordError::Closed)) => {
                    return Err(WriteError::Deposed(e.to_string()));
                }
                Err(CoordError::MultiFailed { error, .. }) => return Err(WriteError::Refused(*error)),
                Err(e @ (CoordError::Unavailable { .. } | CoordError::ConnectionLoss { .. })) => {
                    return Err(WriteError::Unknown(e));
                }
                Err(e) => return Err(WriteError::Refused(e)),
            }
        }
        Ok(())
    }
}

pub fn set(path: String, data: Vec<u8>) -> Op {
    Op::SetData { path, data, version: None }
}
pub fn create(path: String, data: Vec<u8>) -> Op {
    Op::Create { path, data, mode: CreateMode::Persistent }
}
pub fn delete(path: String) -> Op {
    Op::Delete { path, version: None }
}

/// Everything the master keeps in memory, as read from coord.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub tables: Tables,
    pub names: BTreeMap<String, u32>,
    pub next_volume_id: u32,
}

/// One volume record; `Ok(None)` if there is none.
pub async fn read_volume(client: &CoordClient, id: u32) -> Result<Option<Volume>, CldbError> {
    let path = volume_path(id);
    match client.get(&path).await {
        Ok((data, _)) => {
            let v: Volume = decode(&path, &data)?;
            check_volume_record(&v).map_err(|reason| CldbError::Corrupt { path, reason })?;
            Ok(Some(v))
        }
        Err(CoordError::NoNode { .. }) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// The id of the live volume named `name`.
pub async fn volume_id_by_name(client: &CoordClient, name: &str) -> Result<Option<u32>, CldbError> {
    let path = volume_name_path(name);
    match client.get(&path).await {
        Ok((data, _)) => {
            let text = String::from_utf8_lossy(&data);
            text.trim()
                .parse()
                .map(Some)
                .map_err(|_| CldbError::Corrupt { path, reason: format!("not a volume id: {text:?}") })
        }
        Err(CoordError::NoNode { .. }) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// One node record; `Ok(None)` if there is none.
pub async fn read_node(client: &CoordClient, name: &str) -> Result<Option<NodeRecord>, CldbError> {
    let path = node_path(name);
    match client.get(&path).await {
        Ok((data, _)) => decode(&path, &data).map(Some),
        Err(CoordError::NoNode { .. }) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// The children of `dir` and their data; a child deleted meanwhile is skipped.
pub(crate) async fn read_dir(client: &CoordClient, dir: &str) -> Result<Vec<(String, Vec<u8>)>, CldbError> {
    let names = client.children(dir).await.map_err(unavailable)?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match client.get(&format!("{dir}/{name}")).await {
            Ok((data, _)) => out.push((name, data)),
            Err(CoordError::NoNode { .. }) => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(out)
}

/// Reads every table. A record that does not decode is left out and listed in
/// `tables.corrupt` (and, for a volume, its id in `corrupt_volumes`, so that its copies are kept).
pub async fn load(client: &CoordClient) -> Result<Loaded, CldbError> {
    let mut loaded = Loaded::default();
    let t = &mut loaded.tables;
    for (name, data) in read_dir(client, VOLUMES).await? {
        let path = format!("{VOLUMES}/{name}");
        let decoded = decode::<Volume>(&path, &data).and_then(|v| {
            check_volume_record(&v).map_err(|reason| CldbError::Corrupt { path: path.clone(), reason })?;
            if name.parse::<u32>().ok() != Some(v.id) {
                return Err(CldbError::Corrupt {
                    path: path.clone(),
                    reason: format!("holds volume {}", v.id),
                });
            }
            Ok(v)
        });
        match decoded {
            Ok(v) => {
                t.volumes.insert(v.id, v);
            }
            Err(e) => {
                tracing::error!("{e}");
                if let Ok(id) = name.parse::<u32>() {
                    t.corrupt_volumes.insert(id);
                }
                t.corrupt.insert(path, e.to_string());
            }
        }
    }
    for (name, data) in read_dir(client, NODES).await? {
        let path = node_path(&name);
        match decode::<NodeRecord>(&path, &data) {
            Ok(n) if n.name == name => {
                t.nodes.insert(name, n);
            }
            Ok(n) => {
                t.corrupt.insert(path, format!("holds node {}", n.name));
            }
            Err(e) => {
                tracing::error!("{e}");
                t.corrupt.insert(path, e.to_string());
            }
        }
    }
    for (key, data) in read_dir(client, ALARMS).await? {
        // An alarm that does not decode is dropped: the planner raises it again if it holds.
        if let Ok(alarm) = decode::<Alarm>(&alarm_path(&key), &data)
            && alarm.key() == key
        {
            t.alarms.insert(key, alarm);
        }
    }
    for (name, data) in read_dir(client, VIPS).await? {
        let path = format!("{VIPS}/{name}");
        match decode::<VipPool>(&path, &data) {
            Ok(pool) if name.parse() == Ok(pool.start) && pool.start <= pool.end => {
                t.vip_pools.insert(pool.start, pool);
            }
            Ok(_) => {
                t.corrupt.insert(path, "the pool does not match its name".into());
            }
            Err(e) => {
                tracing::error!("{e}");
                t.corrupt.insert(path, e.to_string());
            }
        }
    }
    for v in t.volumes.values().filter(|v| !v.removed) {
        loaded.names.insert(v.name.clone(), v.id);
    }
    let (data, _) = client.get(NEXT_VOLUME_ID_PATH).await.map_err(unavailable)?;
    let text = String::from_utf8_lossy(&data);
    let stored: u32 = text.trim().parse().unwrap_or(1);
    // Never hand out an id at or below one in use, even if the counter was damaged.
    let above_all = t.volumes.keys().chain(&t.corrupt_volumes).max().map_or(1, |m| m.saturating_add(1));
    loaded.next_volume_id = stored.max(above_all).max(1);
    Ok(loaded)
}

/// The live node records, with their persisted state.
pub async fn read_nodes(client: &CoordClient) -> Result<BTreeMap<String, NodeRecord>, CldbError> {
    let mut nodes = BTreeMap::new();
    for (name, data) in read_dir(client, NODES).await? {
        match decode::<NodeRecord>(&node_path(&name), &data) {
            Ok(n) => {
                nodes.insert(name, n);
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(nodes)
}

/// The live volume records (removed ones left out).
pub async fn read_volumes(client: &CoordClient) -> Result<BTreeMap<u32, Volume>, CldbError> {
    let mut volumes = BTreeMap::new();
    for (name, data) in read_dir(client, VOLUMES).await? {
        match decode::<Volume>(&format!("{VOLUMES}/{name}"), &data) {
            Ok(v) if !v.removed => {
                volumes.insert(v.id, v);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(volumes)
}

/// The alarms as persisted by the master.
pub async fn read_alarms(client: &CoordClient) -> Result<Vec<Alarm>, CldbError> {
    let mut alarms = Vec::new();
    for (key, data) in read_dir(client, ALARMS).await? {
        match decode::<Alarm>(&alarm_path(&key), &data) {
            Ok(a) => alarms.push(a),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(alarms)
}

/// True if the node record says Up.
pub fn marked_up(n: &NodeRecord) -> bool {
    n.state == NodeState::Up
}

/// The live NFS agent sessions: node name → the session owning `/cairn/nfs/<node>`.
pub async fn nfs_sessions(client: &CoordClient) -> Result<BTreeMap<String, u64>, CldbError> {
    let mut out = BTreeMap::new();
    for name in client.children(crate::vip::NFS_SESSIONS).await.map_err(unavailable)? {
        match client.exists(&format!("{}/{name}", crate::vip::NFS_SESSIONS)).await {
            Ok(Some(stat)) if stat.ephemeral_owner != 0 => {
                out.insert(name, stat.ephemeral_owner);
            }
            Ok(_) => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(out)
}
