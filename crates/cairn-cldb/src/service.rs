//! The CLDB service: serves the RPC port, campaigns for mastership in coord, and, while master,
//! answers heartbeats and writes and runs the planner every tick.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_coord::api::{CoordError, Op};
use cairn_coord::client::{ClientOptions, CoordClient};
use cairn_rpc::{Connection, Handler};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::model::{check_change, check_heartbeat, check_node_name, check_spec, check_volume_name};
use crate::planner::{self, PlannerConfig, Tables};
use crate::probe::{self, Prober};
use crate::proto::{
    CldbError, CldbStatus, Heartbeat, HeartbeatReply, NodeRecord, NodeState, Request, Response,
    VipAgentReport, VipGrant, VipPool, VolumeInfo,
};
use crate::store::{self, Fenced, Loaded, WriteError};
use crate::view;
use crate::vip;

/// Pause before retrying coord after a failure.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How a CLDB runs.
#[derive(Clone, Debug)]
pub struct CldbConfig {
    /// This CLDB's name (for logs and the epoch record).
    pub name: String,
    /// Where to serve the RPC port (port 0: any free port).
    pub listen: SocketAddr,
    /// The address others reach this CLDB at; default: the bound address.
    pub advertise: Option<String>,
    /// Coord members (host:port).
    pub coord: Vec<String>,
    /// A node is Down after this long without a heartbeat (and a new master waits this long
    /// before declaring any node Down).
    pub node_timeout: Duration,
    /// An under-replicated volume gets new copies after this long.
    pub rereplication_timeout: Duration,
    /// How often the master runs the planner.
    pub tick: Duration,
    /// The coord session timeout: how long a dead master holds the lock.
    pub coord_session_timeout: Duration,
}

impl CldbConfig {
    /// The defaults: node timeout 6 s, re-replication after 60 s, a tick of 500 ms, coord
    /// sessions of 10 s.
    pub fn new(name: impl Into<String>, listen: SocketAddr, coord: Vec<String>) -> CldbConfig {
        CldbConfig {
            name: name.into(),
            listen,
            advertise: None,
            coord,
            node_timeout: Duration::from_secs(6),
            rereplication_timeout: Duration::from_secs(60),
            tick: Duration::from_millis(500),
            coord_session_timeout: Duration::from_secs(10),
        }
    }

    pub fn planner(&self) -> PlannerConfig {
        PlannerConfig { node_timeout: self.node_timeout, rereplication_timeout: self.rereplication_timeout }
    }
}

/// Why a CLDB could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("bad configuration: {0}")]
    Config(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The master's memory.
struct State {
    loaded: Loaded,
    /// A write failed in a way that may leave memory and coord apart: reload before acting.
    stale: bool,
    vips: VipMemory,
}

/// What the master knows of the VIP agents and the grants it made (memory only: a new master
/// learns them again from the agents' reports, see [`crate::vip`]).
#[derive(Default)]
struct VipMemory {
    agents: BTreeMap<String, vip::Agent>,
    grants: BTreeMap<Ipv4Addr, vip::Grant>,
    releasing: vip::Releasing,
    /// Node → the session owning `/cairn/nfs/<node>`, as last read from coord.
    sessions: BTreeMap<String, u64>,
    /// Every node with a live NFS session has reported since this master was elected.
    ready: bool,
    /// Until then: node → how many times in a row its gateway refused a connection.
    refused: BTreeMap<String, u32>,
    /// The NFS connections of nodes whose session this master ended, from their
    /// `/cairn/nfs/<node>` data: their clients are tickled by the VIPs' new holders.
    orphans: BTreeMap<String, Vec<vip::Connection>>,
}

/// What a CLDB holds while it is master.
struct Master {
    fenced: Fenced,
    epoch: u64,
    state: tokio::sync::Mutex<State>,
    deposed: AtomicBool,
    deposed_notify: Notify,
    /// The VIP grants' generation: +1 at every change, waking the agents waiting for one.
    vip_generation: watch::Sender<u64>,
    /// NULL pings to every gateway.
    prober: Prober,
}

impl Master {
    fn depose(&self, why: &str) {
        if !self.deposed.swap(true, Ordering::SeqCst) {
            tracing::warn!("CLDB master epoch {} deposed: {why}", self.epoch);
        }
        self.deposed_notify.notify_waiters();
        self.deposed_notify.notify_one();
    }

    fn is_deposed(&self) -> bool {
        self.deposed.load(Ordering::SeqCst)
    }

    /// Applies `ops` fenced; on failure, deposes or marks the memory stale.
    async fn write(&self, st: &mut State, ops: Vec<Op>) -> Result<(), CldbError> {
        if ops.is_empty() {
            return Ok(());
        }
        match self.fenced.write(ops).await {
            Ok(()) => Ok(()),
            Err(WriteError::Deposed(why)) => {
                self.depose(&why);
                Err(CldbError::NotMaster { master: None })
            }
            Err(e) => {
                tracing::warn!("{e}; reloading the tables");
                st.stale = true;
                self.refresh(st).await;
                Err(e.into())
            }
        }
    }

    /// Reloads the tables from coord if a write left them in doubt (liveness and reports kept).
    async fn refresh(&self, st: &mut State) -> bool {
        if !st.stale {
            return true;
        }
        match store::load(&self.fenced.client).await {
            Ok(mut fresh) => {
                fresh.tables.last_heartbeat_ms = std::mem::take(&mut st.loaded.tables.last_heartbeat_ms);
                fresh.tables.reports = std::mem::take(&mut st.loaded.tables.reports);
                st.loaded = fresh;
                st.stale = false;
                true
            }
            Err(e) => {
                tracing::warn!("cannot reload the tables: {e}");
                false
            }
        }
    }

    /// Brings the agents' liveness up to date (sessions, pings) and plans the VIPs again; bumps
    /// the generation if a grant changed.
    fn replan_vips(&self, st: &mut State) {
        let vips = &mut st.vips;
        for (node, agent) in vips.agents.iter_mut() {
            let probe = self.prober.state(node);
            agent.session_alive = vips.sessions.get(node) == Some(&agent.report.session);
            agent.proven_dead = probe.proven_dead;
            agent.ping_ok = probe.ping_ok;
        }
        if !vips.ready {
            vips.ready = vips
                .sessions
                .iter()
                .all(|(node, session)| vips.agents.get(node).is_some_and(|a| a.report.session == *session));
            if vips.ready {
                tracing::info!("every NFS agent has reported: VIPs may move");
            }
        }
        // Forget the take-backs the nodes have applied (or can no longer hold anything).
        vips.releasing.retain(|ip, nodes| {
            nodes.retain(|node, generation| {
                vips.agents.get(node).is_some_and(|a| {
                    a.may_hold() && (a.report.generation < *generation || a.report.held.contains(ip))
                })
            });
            !nodes.is_empty()
        });
        let grants = vip::plan_vips(
            &st.loaded.tables.vip_pools,
            &vips.agents,
            &vips.grants,
            &vips.releasing,
            vips.ready,
        );
        if grants != vips.grants {
            let next = *self.vip_generation.borrow() + 1;
            for (ip, old) in &vips.grants {
                if grants.get(ip).is_none_or(|g| g.node != old.node) {
                    vips.releasing.entry(*ip).or_default().insert(old.node.clone(), next);
                }
            }
            for (ip, g) in &grants {
                if vips.grants.get(ip).map(|old| (&old.node, &old.mac)) != Some((&g.node, &g.mac)) {
                    tracing::info!("VIP {ip} -> node {} ({} {})", g.node, g.interface, g.mac);
                }
            }
            for ip in vips.grants.keys().filter(|ip| !grants.contains_key(*ip)) {
                tracing::info!("VIP {ip} released");
            }
            vips.grants = grants;
            self.vip_generation.send_replace(next);
        }
    }

    /// Reads the NFS sessions from coord, points the prober at every agent's gateway, and plans
    /// the VIPs again.
    async fn refresh_vips(&self, st: &mut State) {
        match store::nfs_sessions(&self.fenced.client).await {
            Ok(sessions) => st.vips.sessions = sessions,
            Err(e) => tracing::warn!("cannot read the NFS sessions: {e}"),
        }
        if !st.vips.ready {
            self.end_dead_sessions(st).await;
        }
        self.sync_probes(st);
        self.replan_vips(st);
    }

    /// Until every agent has reported to this (new) master: a node whose NFS session lives on but
    /// whose gateway refuses connections twice in a row has its session ended. Its process is gone
    /// (an agent registers only once its gateway listens), and VIPs need not wait for the session
    /// to time out before they move; this is what a master elected after its predecessor's node
    /// died meets.
    async fn end_dead_sessions(&self, st: &mut State) {
        let silent: Vec<(String, u64, String, String)> = st
            .vips
            .sessions
            .iter()
            .filter(|(node, session)| st.vips.agents.get(*node).is_none_or(|a| a.report.session != **session))
            .filter_map(|(node, session)| {
                let record = st.loaded.tables.nodes.get(node)?;
                (!record.nfs_address.is_empty()).then(|| {
                    (node.clone(), *session, record.nfs_address.clone(), record.fileserver_address.clone())
                })
            })
            .collect();
        st.vips.refused.retain(|node, _| silent.iter().any(|(n, _, _, _)| n == node));
        for (node, session, address, fileserver) in silent {
            let refused = refuses(&address).await;
            // Both its ports refusing at once is proof enough; the NFS port alone, twice in a row.
            let whole_node = refused && refuses(&fileserver).await;
            let strikes = st.vips.refused.entry(node.clone()).or_default();
            *strikes = if refused { *strikes + 1 } else { 0 };
            if *strikes < 2 && !whole_node {
                continue;
            }
            tracing::warn!(
                "node {node}: its NFS gateway {address} refuses connections and it has not reported: \
                 ending its NFS session"
            );
            let path = format!("{}/{node}", vip::NFS_SESSIONS);
            if let Ok((data, stat)) = self.fenced.client.get(&path).await
                && stat.ephemeral_owner == session
            {
                st.vips.orphans.insert(node.clone(), vip::session_connections(&data));
            }
            match self.fenced.client.expire_session(session).await {
                Ok(_) => {
                    st.vips.sessions.remove(&node);
                    st.vips.refused.remove(&node);
                }
                Err(e) => tracing::warn!("cannot end the NFS session of {node}: {e}"),
            }
            // Its file server too: the whole node is gone, down now (its volumes fail over)
            // rather than after the heartbeat timeout this master's election granted it.
            if refuses(&fileserver).await
                && st.loaded.tables.last_heartbeat_ms.get(&node).is_some_and(|t| *t != 0)
            {
                tracing::warn!("node {node}: its ports refuse connections, taking it as down");
                st.loaded.tables.last_heartbeat_ms.insert(node, 0);
            }
        }
    }

    /// Points the prober at the gateway of every node with an agent.
    fn sync_probes(&self, st: &State) {
        let targets: BTreeMap<String, probe::Target> = st
            .vips
            .agents
            .keys()
            .filter_map(|n| {
                let record = st.loaded.tables.nodes.get(n)?;
                (!record.nfs_address.is_empty()).then(|| {
                    (
                        n.clone(),
                        probe::Target {
                            nfs_address: record.nfs_address.clone(),
                            fileserver_address: record.fileserver_address.clone(),
                        },
                    )
                })
            })
            .collect();
        self.prober.sync(&targets);
    }

    async fn ready_state(&self) -> Result<tokio::sync::MutexGuard<'_, State>, CldbError> {
        let mut st = self.state.lock().await;
        if !self.refresh(&mut st).await {
            return Err(CldbError::Unavailable("the tables could not be reloaded from coord".into()));
        }
        Ok(st)
    }
}

struct Shared {
    config: CldbConfig,
    planner: PlannerConfig,
    address: String,
    cluster_id: AtomicU64,
    coord: Mutex<Option<CoordClient>>,
    master: RwLock<Option<Arc<Master>>>,
}

impl Shared {
    fn master(&self) -> Option<Arc<Master>> {
        self.master.read().clone().filter(|m| !m.is_deposed())
    }

    fn coord(&self) -> Result<CoordClient, CldbError> {
        self.coord
            .lock()
            .clone()
            .filter(CoordClient::is_alive)
            .ok_or_else(|| CldbError::Unavailable("not connected to coord".into()))
    }

    async fn master_hint(&self) -> Option<String> {
        let client = self.coord().ok()?;
        store::master_address(&client).await.ok().flatten().filter(|a| *a != self.address)
    }

    async fn handle(&self, req: Request) -> Result<Response, CldbError> {
        match req {
            // The Wardens' records live in coord, apart from the CLDB's tables: any CLDB answers.
            Request::ListServices => {
                return Ok(Response::Services(crate::warden::list(&self.coord()?).await?));
            }
            Request::ServiceCommand(request) => {
                return crate::warden::command(&self.coord()?, request).await.map(Response::Services);
            }
            Request::ListAlarms => {
                let mut alarms = match self.handle_any(Request::ListAlarms).await? {
                    Response::Alarms(alarms) => alarms,
                    other => return Ok(other),
                };
                alarms.extend(crate::warden::alarms(&self.coord()?).await?);
                Ok(Response::Alarms(alarms))
            }
            req => self.handle_any(req).await,
        }
    }

    async fn handle_any(&self, req: Request) -> Result<Response, CldbError> {
        if let Some(master) = self.master() {
            let result = self.handle_master(&master, req).await;
            return match result {
                Err(CldbError::NotMaster { .. }) => {
                    Err(CldbError::NotMaster { master: self.master_hint().await })
                }
                other => other,
            };
        }
        if req.needs_master() {
            return Err(CldbError::NotMaster { master: self.master_hint().await });
        }
        self.handle_follower(req).await
    }

    async fn handle_master(&self, m: &Master, req: Request) -> Result<Response, CldbError> {
        match req {
            Request::Heartbeat(hb) => self.heartbeat(m, hb).await.map(Response::Heartbeat),
            Request::CreateVolume(spec) => {
                let checked = check_spec(&spec)?;
                let mut st = m.ready_state().await?;
                let now = now_ms();
                let loaded = &st.loaded;
                if loaded.names.contains_key(&checked.name) {
                    return Err(CldbError::VolumeExists { name: checked.name });
                }
                if loaded.tables.volumes.values().any(|v| !v.removed && v.mount_path == checked.mount_path) {
                    return Err(CldbError::InvalidSpec(format!(
                        "mount path {} is in use",
                        checked.mount_path
                    )));
                }
                let up = planner::up_nodes(&loaded.tables, now, &self.planner);
                let replicas = planner::place_new_volume(&checked, &loaded.tables, &up)?;
                let id = loaded.next_volume_id;
                let next = id
                    .checked_add(1)
                    .ok_or_else(|| CldbError::InvalidSpec("volume ids are exhausted".into()))?;
                let volume = checked.into_volume(id, replicas, now);
                let ops = vec![
                    store::set(store::NEXT_VOLUME_ID_PATH.to_owned(), next.to_string().into_bytes()),
                    store::create(store::volume_path(id), store::to_json(&volume)),
                    store::create(store::volume_name_path(&volume.name), id.to_string().into_bytes()),
                ];
                m.write(&mut st, ops).await?;
                tracing::info!(
                    "volume {} ({id}) created on {:?}, master {}",
                    volume.name,
                    volume.placement.replicas,
                    volume.placement.master
                );
                let loaded = &mut st.loaded;
                loaded.next_volume_id = next;
                loaded.names.insert(volume.name.clone(), id);
                loaded.tables.volumes.insert(id, volume.clone());
                Ok(Response::Volume(VolumeInfo { volume, size_bytes: None }))
            }
            Request::RemoveVolume { name } => {
                check_volume_name(&name)?;
                let mut st = m.ready_state().await?;
                let Some(id) = st.loaded.names.get(&name).copied() else {
                    return Err(CldbError::NoSuchVolume { what: name });
                };
                let mut volume = view::live_volume(&st.loaded.tables, id)?.clone();
                volume.removed = true;
                volume.placement.epoch = volume.placement.epoch.saturating_add(1);
                let ops = vec![
                    store::set(store::volume_path(id), store::to_json(&volume)),
                    store::delete(store::volume_name_path(&name)),
                ];
                m.write(&mut st, ops).await?;
                tracing::info!("volume {name} ({id}) removed");
                st.loaded.names.remove(&name);
                st.loaded.tables.volumes.insert(id, volume);
                Ok(Response::Removed { id })
            }
            Request::ModifyVolume(change) => {
                check_volume_name(&change.name)?;
                let mut st = m.ready_state().await?;
                let Some(id) = st.loaded.names.get(&change.name).copied() else {
                    return Err(CldbError::NoSuchVolume { what: change.name });
                };
                let old = view::live_volume(&st.loaded.tables, id)?.clone();
                let changed = check_change(&old, &change)?;
                let mut notes = Vec::new();
                let volume = planner::modify_volume(
                    &self.planner,
                    &st.loaded.tables,
                    &old,
                    changed,
                    now_ms(),
                    &mut notes,
                )?;
                if volume != old {
                    m.write(&mut st, vec![store::set(store::volume_path(id), store::to_json(&volume))])
                        .await?;
                    tracing::info!(
                        "volume {} ({id}) modified: quota {:?}, advisory quota {:?}, replication {} (min {}), \
                         epoch {}",
                        volume.name,
                        volume.quota_bytes,
                        volume.advisory_quota_bytes,
                        volume.replication,
                        volume.min_replication,
                        volume.placement.epoch
                    );
                    for note in &notes {
                        tracing::info!("{note}");
                    }
                    st.loaded.tables.volumes.insert(id, volume.clone());
                }
                Ok(Response::Volume(view::volume_info(&st.loaded.tables, &volume)))
            }
            Request::AddVipPool(spec) => {
                let mut st = m.ready_state().await?;
                let (agents, own) = vip_context(&st);
                let pool = vip::check_pool(&spec, &st.loaded.tables.vip_pools, &agents, &own, now_ms())?;
                m.write(
                    &mut st,
                    vec![store::create(store::vip_pool_path(pool.start), store::to_json(&pool))],
                )
                .await?;
                tracing::info!("VIP pool {}-{}/{} added", pool.start, pool.end, pool.prefix);
                st.loaded.tables.vip_pools.insert(pool.start, pool.clone());
                m.replan_vips(&mut st);
                Ok(Response::VipPool(pool))
            }
            Request::EditVipPool(edit) => {
                let mut st = m.ready_state().await?;
                let old = pool_starting_at(&st, edit.start)?;
                let (agents, own) = vip_context(&st);
                let mut others = st.loaded.tables.vip_pools.clone();
                others.remove(&old.start);
                let pool = vip::check_edit(&old, &edit, &others, &agents, &own)?;
                m.write(&mut st, vec![store::set(store::vip_pool_path(pool.start), store::to_json(&pool))])
                    .await?;
                tracing::info!("VIP pool {}-{}/{} edited", pool.start, pool.end, pool.prefix);
                st.loaded.tables.vip_pools.insert(pool.start, pool.clone());
                m.replan_vips(&mut st);
                Ok(Response::VipPool(pool))
            }
            Request::RemoveVipPool { start } => {
                let mut st = m.ready_state().await?;
                let pool = pool_starting_at(&st, Some(start))?;
                m.write(&mut st, vec![store::delete(store::vip_pool_path(pool.start))]).await?;
                tracing::info!("VIP pool {}-{} removed", pool.start, pool.end);
                st.loaded.tables.vip_pools.remove(&pool.start);
                m.replan_vips(&mut st);
                Ok(Response::VipPool(pool))
            }
            Request::MoveVip { vip: ip, to_mac } => {
                let mac = vip::normalize_mac(&to_mac)?;
                let mut st = m.ready_state().await?;
                let Some(mut pool) = st.loaded.tables.vip_pools.values().find(|p| p.contains(ip)).cloned()
                else {
                    return Err(CldbError::InvalidSpec(format!("{ip} is in no VIP pool")));
                };
                let accepted = st
                    .vips
                    .agents
                    .values()
                    .flat_map(|a| &a.report.interfaces)
                    .find(|i| i.mac == mac)
                    .map(|i| pool.accepts(i, ip));
                match accepted {
                    None => {
                        return Err(CldbError::InvalidSpec(format!(
                            "no node has an interface with MAC {mac}"
                        )));
                    }
                    Some(false) => {
                        return Err(CldbError::InvalidSpec(format!(
                            "the interface with MAC {mac} may not hold {ip} (not in the pool's MACs or subnet)"
                        )));
                    }
                    Some(true) => {}
                }
                if pool.moved.get(&ip) != Some(&mac) {
                    pool.moved.insert(ip, mac.clone());
                    m.write(
                        &mut st,
                        vec![store::set(store::vip_pool_path(pool.start), store::to_json(&pool))],
                    )
                    .await?;
                    tracing::info!("VIP {ip} moved to {mac} by request");
                    st.loaded.tables.vip_pools.insert(pool.start, pool);
                }
                m.replan_vips(&mut st);
                let infos = vip::vip_infos(&st.loaded.tables.vip_pools, &st.vips.grants, &st.vips.agents);
                Ok(Response::Vips(infos.into_iter().filter(|i| i.vip == ip).collect()))
            }
            Request::ListVips => {
                let st = m.ready_state().await?;
                Ok(Response::Vips(vip::vip_infos(
                    &st.loaded.tables.vip_pools,
                    &st.vips.grants,
                    &st.vips.agents,
                )))
            }
            Request::VipAgent(report) => self.vip_agent(m, report).await.map(Response::VipGrant),
            Request::Status => Ok(Response::Status(CldbStatus {
                name: self.config.name.clone(),
                address: self.address.clone(),
                is_master: true,
                master: Some(self.address.clone()),
                epoch: m.epoch,
                cluster_id: self.cluster_id.load(Ordering::SeqCst),
            })),
            read => {
                let st = m.ready_state().await?;
                answer_read(&st.loaded.tables, &st.loaded.names, read)
            }
        }
    }

    async fn heartbeat(&self, m: &Master, mut hb: Heartbeat) -> Result<HeartbeatReply, CldbError> {
        check_heartbeat(&mut hb)?;
        let mut services = std::mem::take(&mut hb.services);
        services.sort();
        services.dedup();
        let mut st = m.ready_state().await?;
        let now = now_ms();
        let existing = st.loaded.tables.nodes.get(&hb.node).cloned();
        let mut record = NodeRecord {
            name: hb.node.clone(),
            fileserver_address: hb.fileserver_address.clone(),
            nfs_address: hb.nfs_address.clone(),
            topology: hb.topology.clone(),
            services,
            state: NodeState::Up,
            state_since_ms: now,
            last_heartbeat_ms: now,
        };
        let registration_changed = match &existing {
            None => true,
            Some(old) => {
                if old.state == NodeState::Up {
                    record.state_since_ms = old.state_since_ms;
                }
                old.state != NodeState::Up
                    || old.fileserver_address != record.fileserver_address
                    || old.nfs_address != record.nfs_address
                    || old.topology != record.topology
                    || old.services != record.services
            }
        };
        if registration_changed {
            let path = store::node_path(&record.name);
            let data = store::to_json(&record);
            let op = if existing.is_some() { store::set(path, data) } else { store::create(path, data) };
            m.write(&mut st, vec![op]).await?;
            match &existing {
                None => tracing::info!("node {} registered at {}", record.name, record.fileserver_address),
                Some(old) if old.state != NodeState::Up => tracing::info!("node {} is up again", record.name),
                Some(_) => tracing::info!("node {} changed its registration", record.name),
            }
            st.loaded.tables.nodes.insert(record.name.clone(), record);
        }
        let tables = &mut st.loaded.tables;
        tables.last_heartbeat_ms.insert(hb.node.clone(), now);
        match hb.disk {
            Some(disk) => tables.disks.insert(hb.node.clone(), disk),
            None => tables.disks.remove(&hb.node),
        };
        let reports: BTreeMap<_, _> = hb.volumes.iter().map(|r| (r.volume, r.clone())).collect();
        tables.reports.insert(hb.node.clone(), reports);
        let assignments = planner::assignments(tables, &hb.node, &hb.volumes, now, &self.planner);
        Ok(HeartbeatReply {
            cluster_id: self.cluster_id.load(Ordering::SeqCst),
            cldb_epoch: m.epoch,
            assignments,
        })
    }

    /// An agent's report: remember it, plan, and answer with its VIPs once the grants differ
    /// from what it applied, or after its wait.
    async fn vip_agent(&self, m: &Master, mut report: VipAgentReport) -> Result<VipGrant, CldbError> {
        vip::check_report(&mut report)?;
        let node = report.node.clone();
        let seen = report.generation;
        let wait = Duration::from_millis(report.wait_ms).min(vip::AGENT_WAIT_MAX);
        let mut generation = m.vip_generation.subscribe();
        {
            let mut st = m.ready_state().await?;
            if st.vips.sessions.get(&node) != Some(&report.session) {
                // A session we have not seen yet (a restarted agent): look at once.
                let path = format!("{}/{node}", vip::NFS_SESSIONS);
                if let Ok(Some(stat)) = m.fenced.client.exists(&path).await
                    && stat.ephemeral_owner == report.session
                {
                    st.vips.sessions.insert(node.clone(), report.session);
                }
            }
            for (ip, by) in &report.conflicts {
                tracing::warn!("node {node} did not claim VIP {ip}: {by} answers for it");
            }
            st.vips.orphans.remove(&node);
            let agent = vip::Agent { report, session_alive: false, proven_dead: false, ping_ok: true };
            let new_agent = st.vips.agents.insert(node.clone(), agent).is_none();
            if new_agent {
                m.sync_probes(&st);
            }
            m.replan_vips(&mut st);
        }
        if *generation.borrow_and_update() == seen && !wait.is_zero() {
            let _ = tokio::time::timeout(wait, generation.changed()).await;
        }
        let st = m.state.lock().await;
        Ok(VipGrant {
            cldb_epoch: m.epoch,
            generation: *m.vip_generation.borrow(),
            vips: vip::grants_for(&node, &st.vips.grants, &st.vips.agents, &st.vips.orphans),
        })
    }

    async fn handle_follower(&self, req: Request) -> Result<Response, CldbError> {
        let client = self.coord()?;
        let mut t = Tables::default();
        match req {
            Request::Status => {
                let (epoch, _) = store::epoch(&client).await?;
                let master = store::master_address(&client).await?;
                Ok(Response::Status(CldbStatus {
                    name: self.config.name.clone(),
                    address: self.address.clone(),
                    is_master: false,
                    master,
                    epoch: epoch.epoch,
                    cluster_id: self.cluster_id.load(Ordering::SeqCst),
                }))
            }
            Request::VolumeInfo { name } => {
                check_volume_name(&name)?;
                let no_such = || CldbError::NoSuchVolume { what: name.clone() };
                let id = store::volume_id_by_name(&client, &name).await?.ok_or_else(no_such)?;
                let v = store::read_volume(&client, id).await?.filter(|v| !v.removed).ok_or_else(no_such)?;
                Ok(Response::Volume(view::volume_info(&t, &v)))
            }
            Request::LookupVolume { id } => {
                let v = store::read_volume(&client, id)
                    .await?
                    .filter(|v| !v.removed)
                    .ok_or(CldbError::NoSuchVolume { what: format!("id {id}") })?;
                for n in &v.placement.replicas {
                    if check_node_name(n).is_ok()
                        && let Some(record) = store::read_node(&client, n).await?
                    {
                        t.nodes.insert(n.clone(), record);
                    }
                }
                Ok(Response::Location(view::location(&t, &v)))
            }
            Request::ContainerInfo { id } => {
                let volume = u32::try_from(id / crate::model::CONTAINERS_PER_VOLUME)
                    .map_err(|_| CldbError::NoSuchContainer { id })?;
                if let Some(v) = store::read_volume(&client, volume).await? {
                    t.volumes.insert(v.id, v);
                }
                Ok(Response::Container(view::container_info(&t, id)?))
            }
            Request::ListAlarms => Ok(Response::Alarms(store::read_alarms(&client).await?)),
            other => {
                t.volumes = store::read_volumes(&client).await?;
                if matches!(other, Request::ListNodes) {
                    t.nodes = store::read_nodes(&client).await?;
                }
                answer_read(&t, &BTreeMap::new(), other)
            }
        }
    }
}

/// The agents' reports and every address a node has (which no VIP may take).
fn vip_context(st: &State) -> (BTreeMap<String, VipAgentReport>, BTreeSet<Ipv4Addr>) {
    let agents: BTreeMap<String, VipAgentReport> =
        st.vips.agents.iter().map(|(n, a)| (n.clone(), a.report.clone())).collect();
    let mut own: BTreeSet<Ipv4Addr> = agents
        .values()
        .flat_map(|a| a.interfaces.iter().flat_map(|i| i.addresses.iter().map(|(ip, _)| *ip)))
        .collect();
    for record in st.loaded.tables.nodes.values() {
        for address in [&record.fileserver_address, &record.nfs_address] {
            if let Ok(std::net::SocketAddr::V4(a)) = address.parse::<std::net::SocketAddr>() {
                own.insert(*a.ip());
            }
        }
    }
    (agents, own)
}

/// The pool whose first VIP is `start`.
fn pool_starting_at(st: &State, start: Option<Ipv4Addr>) -> Result<VipPool, CldbError> {
    let start = start.ok_or_else(|| CldbError::InvalidSpec("which pool? give its first VIP".into()))?;
    st.loaded.tables.vip_pools.get(&start).cloned().ok_or_else(|| {
        CldbError::InvalidSpec(format!("no VIP pool starts at {start} (see `cairn vip list`)"))
    })
}

/// Answers a read from tables in memory.
fn answer_read(t: &Tables, names: &BTreeMap<String, u32>, req: Request) -> Result<Response, CldbError> {
    match req {
        Request::ListVolumes => Ok(Response::Volumes(view::volume_infos(t))),
        Request::VolumeInfo { name } => {
            let v = names
                .get(&name)
                .and_then(|id| t.volumes.get(id))
                .filter(|v| !v.removed)
                .ok_or(CldbError::NoSuchVolume { what: name })?;
            Ok(Response::Volume(view::volume_info(t, v)))
        }
        Request::LookupVolume { id } => Ok(Response::Location(view::location(t, view::live_volume(t, id)?))),
        Request::ListNodes => Ok(Response::Nodes(view::node_infos(t))),
        Request::ListContainers => Ok(Response::Containers(view::containers(t))),
        Request::ContainerInfo { id } => Ok(Response::Container(view::container_info(t, id)?)),
        Request::ListAlarms => Ok(Response::Alarms(t.alarms.values().cloned().collect())),
        Request::ListVipPools => Ok(Response::VipPools(t.vip_pools.values().cloned().collect())),
        other => Err(CldbError::InvalidSpec(format!("not a read: {other:?}"))),
    }
}

/// The RPC handler.
struct RpcHandler {
    shared: Arc<Shared>,
}

impl Handler for RpcHandler {
    type Req = Request;
    type Resp = Result<Response, CldbError>;
    type Push = ();

    async fn call(&self, _conn: &Connection<()>, req: Request) -> Result<Response, CldbError> {
        self.shared.handle(req).await
    }
}

/// A running CLDB. Dropping it stops it without waiting; [`Cldb::shutdown`] waits.
pub struct Cldb {
    shared: Arc<Shared>,
    address: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    campaign: JoinHandle<()>,
}

impl Cldb {
    /// Binds the RPC port, starts serving, and starts campaigning for mastership in coord (in the
    /// background: coord need not be up yet).
    pub async fn start(config: CldbConfig) -> Result<Cldb, StartError> {
        if config.coord.is_empty() {
            return Err(StartError::Config("no coord member given".into()));
        }
        if config.tick.is_zero() || config.node_timeout.is_zero() {
            return Err(StartError::Config("tick and node timeout must be positive".into()));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { address: config.listen, source })?;
        let address =
            listener.local_addr().map_err(|source| StartError::Listen { address: config.listen, source })?;
        let advertised = config.advertise.clone().unwrap_or_else(|| address.to_string());
        let shared = Arc::new(Shared {
            planner: config.planner(),
            config,
            address: advertised,
            cluster_id: AtomicU64::new(0),
            coord: Mutex::new(None),
            master: RwLock::new(None),
        });
        let (stop, stop_rx) = watch::channel(false);
        let handler = Arc::new(RpcHandler { shared: shared.clone() });
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            cairn_rpc::serve_tcp(listener, handler, async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await;
        });
        let campaign = tokio::spawn(campaign(shared.clone(), stop_rx));
        tracing::info!("CLDB {} serving on {address}", shared.config.name);
        Ok(Cldb { shared, address, stop, server, campaign })
    }

    /// The bound RPC address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// True while this CLDB is the master.
    pub fn is_master(&self) -> bool {
        self.shared.master().is_some()
    }

    /// The CLDB master epoch while master.
    pub fn master_epoch(&self) -> Option<u64> {
        self.shared.master().map(|m| m.epoch)
    }

    /// Stops serving and campaigning; a master closes its coord session, which frees the lock at
    /// once for another CLDB.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.campaign.await;
        let _ = self.server.await;
    }
}

/// Runs a CLDB until `shutdown` completes.
pub async fn run(config: CldbConfig, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let cldb = Cldb::start(config).await?;
    shutdown.await;
    cldb.shutdown().await;
    Ok(())
}

/// Sleeps for `pause`; true if asked to stop meanwhile.
async fn pause_or_stop(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    let stopped = tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(pause) => false,
    };
    stopped || *stop.borrow()
}

/// Connects to coord, campaigns, and serves as master whenever elected, until stopped.
async fn campaign(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let options = ClientOptions {
        session_timeout: Some(shared.config.coord_session_timeout),
        request_timeout: Duration::from_secs(5),
    };
    'session: while !*stop.borrow() {
        let connected = tokio::select! {
            _ = stop.wait_for(|s| *s) => break 'session,
            r = CoordClient::connect(&shared.config.coord, options.clone()) => r,
        };
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("CLDB {}: cannot reach coord: {e}", shared.config.name);
                if pause_or_stop(&mut stop, RETRY_PAUSE).await {
                    break;
                }
                continue;
            }
        };
        *shared.coord.lock() = Some(client.clone());
        loop {
            if !client.is_alive() {
                continue 'session;
            }
            let elected = tokio::select! {
                _ = stop.wait_for(|s| *s) => break 'session,
                r = elect(&shared, &client) => r,
            };
            let master = match elected {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    tracing::warn!("CLDB {}: election: {e}", shared.config.name);
                    if pause_or_stop(&mut stop, RETRY_PAUSE).await {
                        break 'session;
                    }
                    continue;
                }
            };
            *shared.master.write() = Some(master.clone());
            tracing::info!("CLDB {} is master, epoch {}", shared.config.name, master.epoch);
            cairn_metrics::cldb_master(true);
            let stopped = serve_as_master(&shared, &master, &mut stop).await;
            *shared.master.write() = None;
            cairn_metrics::cldb_master(false);
            if stopped {
                break 'session;
            }
            // Deposed: a fresh session is the clean way back into the race.
            let _ = client.close().await;
            continue 'session;
        }
    }
    *shared.master.write() = None;
    let client = shared.coord.lock().take();
    if let Some(client) = client {
        let _ = client.close().await;
    }
}

/// Takes the lock, bumps the CLDB epoch and loads the tables.
async fn elect(shared: &Shared, client: &CoordClient) -> Result<Master, CldbError> {
    let cluster_id = store::ensure_layout(client).await?;
    shared.cluster_id.store(cluster_id, Ordering::SeqCst);
    let own = shared.address.clone();
    let leadership = cairn_coord::fence::acquire_or_take_over(
        client,
        store::MASTER_PATH,
        shared.address.as_bytes(),
        move |held| master_gone(own.clone(), held),
    )
    .await
    .map_err(store::unavailable)?;
    let (record, version) =
        store::bump_epoch(client, &shared.config.name, &shared.address, leadership.epoch).await?;
    let mut loaded = loop {
        match store::load(client).await {
            Ok(l) => break l,
            Err(e @ CldbError::Unavailable(_)) if client.is_alive() => {
                tracing::warn!("loading the tables: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    };
    // Grace: every node marked Up gets a full node timeout from now to heartbeat.
    let now = now_ms();
    let up: Vec<String> =
        loaded.tables.nodes.values().filter(|n| store::marked_up(n)).map(|n| n.name.clone()).collect();
    for name in up {
        loaded.tables.last_heartbeat_ms.insert(name, now);
    }
    Ok(Master {
        fenced: Fenced { client: client.clone(), version },
        epoch: record.epoch,
        state: tokio::sync::Mutex::new(State { loaded, stale: false, vips: VipMemory::default() }),
        deposed: AtomicBool::new(false),
        deposed_notify: Notify::new(),
        vip_generation: watch::Sender::new(0),
        prober: Prober::default(),
    })
}

/// Whether connections to `address` are refused: nothing listens there (a killed process's ports
/// refuse at once; a busy or unreachable one times out, which proves nothing).
async fn refuses(address: &str) -> bool {
    matches!(probe::connect(address).await, Err(probe::PingError::Refused))
}

/// Whether the master whose lock holds `held` (its RPC address) is gone: its CLDB port refuses
/// connections.
async fn master_gone(own: String, held: Vec<u8>) -> bool {
    let Ok(address) = String::from_utf8(held) else { return false };
    address != own && refuses(&address).await
}

/// Runs the planner every tick until deposed (false) or stopped (true).
async fn serve_as_master(shared: &Shared, master: &Master, stop: &mut watch::Receiver<bool>) -> bool {
    let mut interval = tokio::time::interval(shared.config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let probed = tokio::select! {
            _ = stop.wait_for(|s| *s) => return true,
            () = master.deposed_notify.notified() => false,
            _ = interval.tick() => false,
            () = master.prober.changed.notified() => true,
        };
        if master.is_deposed() {
            return false;
        }
        if probed {
            // A gateway stopped or started answering: move VIPs (and fail volumes over) now.
            let mut st = master.state.lock().await;
            master.replan_vips(&mut st);
            drop(st);
            tick(shared, master).await;
            continue;
        }
        let client = &master.fenced.client;
        match client.exists(store::MASTER_PATH).await {
            Ok(Some(stat)) if stat.ephemeral_owner == client.session() => {}
            Ok(_) => {
                master.depose("the master lock is gone or held by another session");
                return false;
            }
            Err(CoordError::Closed | CoordError::SessionExpired { .. }) => {
                master.depose("the coord session is gone");
                return false;
            }
            Err(e) => {
                tracing::warn!("cannot check the master lock: {e}");
                continue;
            }
        }
        // The fence too, so that a deposed master stops answering heartbeats even if it has
        // nothing to write.
        match store::epoch(client).await {
            Ok((_, version)) if version == master.fenced.version => {}
            Ok(_) => {
                master.depose("the CLDB epoch moved on");
                return false;
            }
            Err(e) => {
                tracing::warn!("cannot check the CLDB epoch: {e}");
                continue;
            }
        }
        tick(shared, master).await;
    }
}

/// The cluster's nodes and containers by state, into the process's metrics (master only).
fn publish_metrics(t: &Tables) {
    let up = t.nodes.values().filter(|n| store::marked_up(n)).count() as u64;
    cairn_metrics::cluster_nodes("up", up);
    cairn_metrics::cluster_nodes("down", t.nodes.len() as u64 - up);
    let (mut ok, mut under, mut unavailable) = (0, 0, 0);
    for v in t.volumes.values().filter(|v| !v.removed) {
        // A volume's name container and data containers share its placement.
        let containers = 1 + u64::from(v.data_containers);
        if v.placement.master.is_empty() {
            unavailable += containers;
        } else if (v.placement.replicas.len() as u64) < u64::from(v.replication) {
            under += containers;
        } else {
            ok += containers;
        }
    }
    cairn_metrics::cluster_containers("ok", ok);
    cairn_metrics::cluster_containers("under_replicated", under);
    cairn_metrics::cluster_containers("unavailable", unavailable);
}

/// One planning round: plan, write fenced, then apply to memory.
async fn tick(shared: &Shared, master: &Master) {
    let Ok(mut st) = master.ready_state().await else { return };
    master.refresh_vips(&mut st).await;
    // A node whose NFS and file server ports both refuse right after the connection to them
    // broke is gone: down now rather than after the heartbeat timeout.
    let gone: Vec<String> = st
        .vips
        .agents
        .keys()
        .filter(|n| master.prober.state(n).fileserver_refused)
        .filter(|n| st.loaded.tables.last_heartbeat_ms.get(*n).is_some_and(|t| *t != 0))
        .cloned()
        .collect();
    for n in gone {
        tracing::warn!("node {n}: its ports refuse connections, taking it as down");
        st.loaded.tables.last_heartbeat_ms.insert(n, 0);
    }
    publish_metrics(&st.loaded.tables);
    let now = now_ms();
    let plan = planner::plan(&shared.planner, &st.loaded.tables, now);
    if plan.is_empty(&st.loaded.tables.alarms) {
        return;
    }
    let mut ops = Vec::new();
    for v in &plan.volumes {
        ops.push(store::set(store::volume_path(v.id), store::to_json(v)));
    }
    for id in &plan.deleted_volumes {
        ops.push(store::delete(store::volume_path(*id)));
    }
    for n in &plan.nodes {
        ops.push(store::set(store::node_path(&n.name), store::to_json(n)));
    }
    let old_alarms = &st.loaded.tables.alarms;
    for (key, alarm) in &plan.alarms {
        match old_alarms.get(key) {
            Some(old) if old == alarm => {}
            Some(_) => ops.push(store::set(store::alarm_path(key), store::to_json(alarm))),
            None => ops.push(store::create(store::alarm_path(key), store::to_json(alarm))),
        }
    }
    for key in old_alarms.keys().filter(|k| !plan.alarms.contains_key(*k)) {
        ops.push(store::delete(store::alarm_path(key)));
    }
    if master.write(&mut st, ops).await.is_err() {
        return;
    }
    for note in &plan.notes {
        tracing::info!("{note}");
    }
    let t = &mut st.loaded.tables;
    for v in plan.volumes {
        t.volumes.insert(v.id, v);
    }
    for id in plan.deleted_volumes {
        t.volumes.remove(&id);
    }
    for n in plan.nodes {
        t.nodes.insert(n.name.clone(), n);
    }
    t.alarms = plan.alarms;
}
