//! The CLDB's decisions, as pure functions: given the tables, the nodes' liveness, their latest
//! reports and the time, what changes. No I/O, no clock, no randomness: the service reads the
//! clock, calls [`plan`], writes the changed records to coord (fenced) and only then applies them
//! to its memory, so no heartbeat reply carries a placement coord does not have.
//!
//! Rules, per volume (all changes of one tick make one epoch bump):
//! 1. **Master Down**: the new master is the Up replica (never a resyncing node) whose last report
//!    is for the current epoch, with role Master or Replica, and has the highest position; ties go
//!    to the earlier replica. The dead master leaves `replicas`. No such replica: the placement is
//!    kept and a `MasterElectionStuck` alarm raised; the next tick tries again.
//! 2. **Replica Down**: it leaves `replicas`. A resyncing node that is Down leaves `resyncing`.
//! 3. **In sync**: a resyncing node the master's report (for the current epoch, and only if
//!    nothing else changed this tick) lists in `in_sync` joins the end of `replicas`.
//! 4. **Returning copies**: with a live master and fewer than `replication` nodes in `replicas` +
//!    `resyncing`, an Up node that reports a copy of the volume becomes a resync target at once
//!    (most advanced position first).
//! 5. **Re-replication**: under-replicated (`replicas.len() < replication`) since at least
//!    `rereplication_timeout`, with a live master: Up nodes outside the placement become resync
//!    targets (spread across topologies, least loaded first) until `replicas + resyncing` reaches
//!    `replication`.
//!
//! A removed volume's record is deleted once no Up node reports a copy of it. A change of a
//! volume's replication by an administrator adapts its placement at once ([`modify_volume`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::model::CheckedSpec;
use crate::proto::{
    Alarm, AlarmKind, AssignedRole, Assignment, CldbError, NodeRecord, NodeState, Placement, ReportedRole,
    Volume, VolumeReport, alarm_key,
};

/// The timings the planner uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannerConfig {
    /// A node is Down after this long without a heartbeat.
    pub node_timeout: Duration,
    /// An under-replicated volume gets new resync targets after this long.
    pub rereplication_timeout: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig { node_timeout: Duration::from_secs(6), rereplication_timeout: Duration::from_secs(60) }
    }
}

/// What the master knows: the persisted tables plus what heartbeats told it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub volumes: BTreeMap<u32, Volume>,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Last heartbeat per node, ms. A node missing here counts as never heard from: a newly
    /// elected master seeds every Up node with its election time (the grace period).
    pub last_heartbeat_ms: BTreeMap<String, u64>,
    /// Each node's latest report, per volume.
    pub reports: BTreeMap<String, BTreeMap<u32, VolumeReport>>,
    /// Each node's disk, from its latest heartbeat (soft state, like the reports).
    pub disks: BTreeMap<String, crate::proto::DiskSpace>,
    /// The alarms currently raised, by [`Alarm::key`].
    pub alarms: BTreeMap<String, Alarm>,
    /// Records in coord that could not be decoded: path → reason.
    pub corrupt: BTreeMap<String, String>,
    /// Volume ids whose record is corrupt: their copies are never removed.
    pub corrupt_volumes: BTreeSet<u32>,
    /// The pools of virtual IPs, by first address.
    pub vip_pools: BTreeMap<std::net::Ipv4Addr, crate::proto::VipPool>,
}

/// The outcome of one planning round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Volume records that changed, as they must be written.
    pub volumes: Vec<Volume>,
    /// Removed volumes whose records can go.
    pub deleted_volumes: Vec<u32>,
    /// Node records that changed (Up → Down).
    pub nodes: Vec<NodeRecord>,
    /// The complete set of alarms now raised, by key.
    pub alarms: BTreeMap<String, Alarm>,
    /// One line per decision, for the log.
    pub notes: Vec<String>,
}

impl Plan {
    /// True when nothing needs writing (the alarms compared with `old`).
    pub fn is_empty(&self, old_alarms: &BTreeMap<String, Alarm>) -> bool {
        self.volumes.is_empty()
            && self.deleted_volumes.is_empty()
            && self.nodes.is_empty()
            && self.alarms == *old_alarms
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// True if `name` is registered, not marked Down, and heartbeated within the node timeout.
pub fn is_up(tables: &Tables, name: &str, now_ms: u64, config: &PlannerConfig) -> bool {
    let Some(node) = tables.nodes.get(name) else { return false };
    if node.state != NodeState::Up {
        return false;
    }
    let last = tables.last_heartbeat_ms.get(name).copied().unwrap_or(0);
    now_ms.saturating_sub(last) <= ms(config.node_timeout)
}

/// The nodes that are Up now.
pub fn up_nodes(tables: &Tables, now_ms: u64, config: &PlannerConfig) -> BTreeSet<String> {
    tables.nodes.keys().filter(|n| is_up(tables, n, now_ms, config)).cloned().collect()
}

/// How many placements (replicas and resync targets of live volumes) each node carries.
pub fn load(tables: &Tables) -> BTreeMap<String, usize> {
    let mut load = BTreeMap::new();
    for v in tables.volumes.values().filter(|v| !v.removed) {
        for n in v.placement.replicas.iter().chain(&v.placement.resyncing) {
            *load.entry(n.clone()).or_insert(0) += 1;
        }
    }
    load
}

/// Picks up to `count` nodes from `candidates`, none in `exclude`: each pick takes the node whose
/// topology is least used among `members` and the picks so far, then the least loaded, then the
/// name (deterministic).
fn choose(
    count: usize,
    candidates: &BTreeSet<String>,
    exclude: &BTreeSet<&String>,
    members: &[String],
    tables: &Tables,
    load: &BTreeMap<String, usize>,
) -> Vec<String> {
    let topology = |n: &String| tables.nodes.get(n).map(|r| r.topology.clone()).unwrap_or_default();
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    for m in members {
        *used.entry(topology(m)).or_insert(0) += 1;
    }
    let mut chosen: Vec<String> = Vec::new();
    while chosen.len() < count {
        let best =
            candidates.iter().filter(|n| !exclude.contains(n) && !chosen.contains(n)).min_by_key(|n| {
                (used.get(&topology(n)).copied().unwrap_or(0), load.get(*n).copied().unwrap_or(0), *n)
            });
        let Some(best) = best else { break };
        *used.entry(topology(best)).or_insert(0) += 1;
        chosen.push(best.clone());
    }
    chosen
}

/// The nodes of a new volume, master first: `replication` distinct Up nodes, or as many as are
/// Up if at least `min_replication`.
pub fn place_new_volume(
    spec: &CheckedSpec,
    tables: &Tables,
    up: &BTreeSet<String>,
) -> Result<Vec<String>, CldbError> {
    let available = up.len();
    if available < spec.min_replication as usize {
        return Err(CldbError::NotEnoughNodes {
            needed: spec.min_replication,
            up: u32::try_from(available).unwrap_or(u32::MAX),
        });
    }
    Ok(choose(spec.replication as usize, up, &BTreeSet::new(), &[], tables, &load(tables)))
}

fn report<'a>(tables: &'a Tables, node: &str, volume: u32) -> Option<&'a VolumeReport> {
    tables.reports.get(node)?.get(&volume)
}

/// Builds an alarm, keeping the start time of the same alarm if it was already raised.
fn alarm(
    prev: &BTreeMap<String, Alarm>,
    kind: AlarmKind,
    subject: &str,
    since_ms: u64,
    message: String,
) -> Alarm {
    let since_ms = prev.get(&alarm_key(kind, subject)).map_or(since_ms, |a| a.since_ms);
    Alarm { kind, subject: subject.to_owned(), since_ms, message }
}

/// One planning round.
pub fn plan(config: &PlannerConfig, tables: &Tables, now_ms: u64) -> Plan {
    let mut out = Plan::default();
    let mut alarms: Vec<Alarm> = Vec::new();
    let prev = &tables.alarms;

    // Nodes: Up -> Down after the timeout.
    for (name, record) in &tables.nodes {
        if record.state == NodeState::Up && !is_up(tables, name, now_ms, config) {
            let mut down = record.clone();
            down.state = NodeState::Down;
            down.state_since_ms = now_ms;
            down.last_heartbeat_ms =
                tables.last_heartbeat_ms.get(name).copied().unwrap_or(record.last_heartbeat_ms);
            out.notes.push(format!("node {name} is down (no heartbeat for {:?})", config.node_timeout));
            alarms.push(alarm(
                prev,
                AlarmKind::NodeDown,
                name,
                now_ms,
                format!("node {name} stopped heartbeating"),
            ));
            out.nodes.push(down);
        } else if record.state == NodeState::Down {
            alarms.push(alarm(
                prev,
                AlarmKind::NodeDown,
                name,
                record.state_since_ms,
                format!("node {name} stopped heartbeating"),
            ));
        }
    }
    let up = up_nodes(tables, now_ms, config);
    let mut load = load(tables);

    for v in tables.volumes.values() {
        if v.removed {
            let reported = up.iter().any(|n| report(tables, n, v.id).is_some());
            if !reported {
                out.notes
                    .push(format!("volume {} ({}): removed and no copy left, record deleted", v.name, v.id));
                out.deleted_volumes.push(v.id);
            }
            continue;
        }
        let (changed, volume_alarms) = plan_volume(config, tables, &up, &mut load, v, now_ms, &mut out.notes);
        alarms.extend(volume_alarms);
        if let Some(changed) = changed {
            out.volumes.push(changed);
        }
    }

    for (path, reason) in &tables.corrupt {
        alarms.push(alarm(
            prev,
            AlarmKind::CorruptRecord,
            path,
            now_ms,
            format!("cannot decode {path}: {reason}"),
        ));
    }
    out.alarms = alarms.into_iter().map(|a| (a.key(), a)).collect();
    out
}

/// Plans one live volume: the changed record (if any) and its alarms.
fn plan_volume(
    config: &PlannerConfig,
    tables: &Tables,
    up: &BTreeSet<String>,
    load: &mut BTreeMap<String, usize>,
    v: &Volume,
    now_ms: u64,
    notes: &mut Vec<String>,
) -> (Option<Volume>, Vec<Alarm>) {
    let prev = &tables.alarms;
    let mut alarms = Vec::new();
    let mut p = v.placement.clone();
    let label = format!("volume {} ({})", v.name, v.id);
    let drop_load = |load: &mut BTreeMap<String, usize>, n: &String| {
        if let Some(l) = load.get_mut(n) {
            *l = l.saturating_sub(1);
        }
    };

    // 1. Master down: elect the most advanced up-to-date replica.
    if !up.contains(&p.master) {
        let best = p
            .replicas
            .iter()
            .filter(|n| **n != p.master && up.contains(*n) && !p.resyncing.contains(n))
            .filter_map(|n| {
                let r = report(tables, n, v.id)?;
                (r.epoch == p.epoch && matches!(r.role, ReportedRole::Master | ReportedRole::Replica))
                    .then_some((n, r.position))
            })
            // max_by_key keeps the last maximum: reverse so that ties go to the earlier replica.
            .rev()
            .max_by_key(|(_, position)| *position)
            .map(|(n, _)| n.clone());
        match best {
            Some(new_master) => {
                notes.push(format!("{label}: master {} is down, {new_master} takes over", p.master));
                let old = p.master.clone();
                drop_load(load, &old);
                p.replicas.retain(|n| *n != old && *n != new_master);
                p.replicas.insert(0, new_master.clone());
                p.master = new_master;
            }
            None => {
                notes.push(format!("{label}: master {} is down and no replica is eligible", p.master));
                alarms.push(alarm(
                    prev,
                    AlarmKind::MasterElectionStuck,
                    &v.name,
                    now_ms,
                    format!(
                        "volume {}: master {} is down and no up-to-date replica is up (epoch {})",
                        v.name, p.master, p.epoch
                    ),
                ));
            }
        }
    }
    let master_up = up.contains(&p.master);

    // 2. Replicas and resync targets that are down leave the placement.
    let gone: Vec<String> = p
        .replicas
        .iter()
        .chain(&p.resyncing)
        .filter(|n| **n != p.master && !up.contains(*n))
        .cloned()
        .collect();
    for n in &gone {
        notes.push(format!("{label}: {n} is down, dropped from the placement"));
        drop_load(load, n);
    }
    p.replicas.retain(|n| *n == p.master || up.contains(n));
    p.resyncing.retain(|n| up.contains(n));

    // 3. Resync targets the master reports in sync become replicas.
    if master_up
        && p == v.placement
        && let Some(r) = report(tables, &p.master, v.id)
        && r.epoch == p.epoch
        && r.role == ReportedRole::Master
    {
        for n in &r.in_sync {
            if let Some(i) = p.resyncing.iter().position(|x| x == n) {
                notes.push(format!("{label}: {n} is in sync, now a replica"));
                p.resyncing.remove(i);
                p.replicas.push(n.clone());
            }
        }
    }

    let wanted = v.replication as usize;
    if master_up {
        // 4. Nodes that come back with a copy are the preferred resync targets.
        for n in returning_copies(tables, up, &p, v.id) {
            if p.replicas.len() + p.resyncing.len() >= wanted {
                break;
            }
            notes.push(format!("{label}: {n} came back with a copy, resyncing it"));
            *load.entry(n.clone()).or_insert(0) += 1;
            p.resyncing.push(n.clone());
        }
    }

    // 5. Re-replication after the timeout.
    if p.replicas.len() < wanted {
        let since = *p.lost_since_ms.get_or_insert(now_ms);
        let missing = wanted.saturating_sub(p.replicas.len() + p.resyncing.len());
        if master_up && missing > 0 && now_ms.saturating_sub(since) >= ms(config.rereplication_timeout) {
            let members: Vec<String> = p.replicas.iter().chain(&p.resyncing).cloned().collect();
            let exclude: BTreeSet<&String> = members.iter().collect();
            let picked = choose(missing, up, &exclude, &members, tables, load);
            for n in picked {
                notes.push(format!("{label}: under-replicated, re-replicating to {n}"));
                *load.entry(n.clone()).or_insert(0) += 1;
                p.resyncing.push(n);
            }
        }
        alarms.push(alarm(
            prev,
            AlarmKind::UnderReplicated,
            &v.name,
            since,
            format!("volume {}: {} of {} replicas", v.name, p.replicas.len(), wanted),
        ));
    } else {
        p.lost_since_ms = None;
    }

    // Quotas, from the master's last report.
    if let Some(r) = report(tables, &p.master, v.id).filter(|r| r.role == ReportedRole::Master) {
        if let Some(q) = v.quota_bytes.filter(|q| r.size_bytes > *q) {
            alarms.push(alarm(
                prev,
                AlarmKind::QuotaExceeded,
                &v.name,
                now_ms,
                format!("volume {} is above its quota of {q} bytes", v.name),
            ));
        } else if let Some(q) = v.advisory_quota_bytes.filter(|q| r.size_bytes > *q) {
            alarms.push(alarm(
                prev,
                AlarmKind::AdvisoryQuotaExceeded,
                &v.name,
                now_ms,
                format!("volume {} is above its advisory quota of {q} bytes", v.name),
            ));
        }
    }

    let placement_changed = p.master != v.placement.master
        || p.replicas != v.placement.replicas
        || p.resyncing != v.placement.resyncing;
    if placement_changed {
        p.epoch = v.placement.epoch.saturating_add(1);
    }
    if p == v.placement {
        return (None, alarms);
    }
    let mut changed = v.clone();
    changed.placement = p;
    (Some(changed), alarms)
}

/// The Up nodes outside placement `p` that report a copy of volume `id`, most advanced first.
fn returning_copies<'a>(
    tables: &Tables,
    up: &'a BTreeSet<String>,
    p: &Placement,
    id: u32,
) -> Vec<&'a String> {
    let mut returning: Vec<(u64, &String)> = up
        .iter()
        .filter(|n| !p.replicas.contains(n) && !p.resyncing.contains(n))
        .filter_map(|n| report(tables, n, id).map(|r| (r.position, n)))
        .collect();
    returning.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    returning.into_iter().map(|(_, n)| n).collect()
}

/// The record of volume `v` after a ModifyVolume: `changed` is `v` with the new quotas and
/// replication ([`crate::model::check_change`]), and its placement is adapted to the new
/// replication at once (see [`crate::proto::VolumeChange`]):
/// - higher: as many new resync targets as the replication grew (no more: a deficit left by
///   dead nodes still waits for the re-replication timeout, rule 5), nodes reporting a copy
///   first (rule 4), then picked like re-replication targets; none while the master is down
///   (rules 4 and 5 add them once a new master is elected);
/// - lower: the surplus leaves the placement, nodes that are down first, then resync targets
///   (the latest first), then replicas from the end of the chain; never the master. Refused
///   while the master is down, since the replica to be elected could be dropped.
///
/// The epoch goes up by one if the placement changed; `lost_since_ms` follows the new
/// replication. Notes for the log go to `notes`.
pub fn modify_volume(
    config: &PlannerConfig,
    tables: &Tables,
    v: &Volume,
    mut changed: Volume,
    now_ms: u64,
    notes: &mut Vec<String>,
) -> Result<Volume, CldbError> {
    let up = up_nodes(tables, now_ms, config);
    let label = format!("volume {} ({})", v.name, v.id);
    let wanted = changed.replication as usize;
    let p = &mut changed.placement;
    let master_up = up.contains(&p.master);
    let members = p.replicas.len() + p.resyncing.len();
    if members > wanted {
        if !master_up {
            return Err(CldbError::InvalidSpec(format!(
                "volume {}: its master {} is down; lower the replication once a new master is elected",
                v.name, p.master
            )));
        }
        // Resync targets (latest first), then replicas from the end of the chain; the stable
        // sort puts the nodes that are down before all of them.
        let mut candidates: Vec<String> =
            p.resyncing.iter().rev().chain(p.replicas.iter().skip(1).rev()).cloned().collect();
        candidates.sort_by_key(|n| up.contains(n));
        for n in candidates.into_iter().take(members - wanted) {
            notes.push(format!("{label}: replication lowered to {wanted}, {n} leaves the placement"));
            p.replicas.retain(|r| *r != n);
            p.resyncing.retain(|r| *r != n);
        }
    } else if changed.replication > v.replication && master_up {
        let grown = (changed.replication - v.replication) as usize;
        let mut missing = wanted.saturating_sub(members).min(grown);
        for n in returning_copies(tables, &up, p, v.id) {
            if missing == 0 {
                break;
            }
            notes.push(format!("{label}: replication raised to {wanted}, {n} has a copy, resyncing it"));
            p.resyncing.push(n.clone());
            missing -= 1;
        }
        let placed: Vec<String> = p.replicas.iter().chain(&p.resyncing).cloned().collect();
        let exclude: BTreeSet<&String> = placed.iter().collect();
        for n in choose(missing, &up, &exclude, &placed, tables, &load(tables)) {
            notes.push(format!("{label}: replication raised to {wanted}, resyncing to {n}"));
            p.resyncing.push(n);
        }
    }
    if p.replicas.len() < wanted {
        p.lost_since_ms.get_or_insert(now_ms);
    } else {
        p.lost_since_ms = None;
    }
    let old = &v.placement;
    if p.master != old.master || p.replicas != old.replicas || p.resyncing != old.resyncing {
        p.epoch = old.epoch.saturating_add(1);
    }
    Ok(changed)
}

/// The node address pairs of a list of node names.
fn addressed(tables: &Tables, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.clone(), tables.nodes.get(n).map(|r| r.fileserver_address.clone()).unwrap_or_default()))
        .collect()
}

/// The assignment of `volume` to a node in `role`.
pub fn assignment(tables: &Tables, v: &Volume, role: AssignedRole) -> Assignment {
    let p = &v.placement;
    Assignment {
        volume: v.id,
        epoch: p.epoch,
        master: p.master.clone(),
        master_address: tables.nodes.get(&p.master).map(|r| r.fileserver_address.clone()).unwrap_or_default(),
        replicas: addressed(tables, &p.replicas),
        resyncing: addressed(tables, &p.resyncing),
        replication_type: v.replication_type,
        data_containers: v.data_containers,
        your_role: role,
        quota_bytes: v.quota_bytes,
        advisory_quota_bytes: v.advisory_quota_bytes,
    }
}

fn remove(volume: u32, epoch: u64) -> Assignment {
    Assignment {
        volume,
        epoch,
        master: String::new(),
        master_address: String::new(),
        replicas: Vec::new(),
        resyncing: Vec::new(),
        replication_type: Default::default(),
        data_containers: 0,
        your_role: AssignedRole::Remove,
        quota_bytes: None,
        advisory_quota_bytes: None,
    }
}

/// What a node is told in its heartbeat reply: every volume placed on it, and `Remove` for the
/// copies it reports that belong to no placement and are not needed (a removed volume, an unknown
/// one, or a volume with its full set of nodes and a live master). A copy that may still be
/// needed (under-replicated volume, or its master down) is left out: kept, undecided.
pub fn assignments(
    tables: &Tables,
    node: &str,
    reports: &[VolumeReport],
    now_ms: u64,
    config: &PlannerConfig,
) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut covered = BTreeSet::new();
    for v in tables.volumes.values().filter(|v| !v.removed) {
        let p = &v.placement;
        let role = if p.master == node {
            AssignedRole::Master
        } else if p.replicas.iter().any(|n| n == node) {
            AssignedRole::Replica
        } else if p.resyncing.iter().any(|n| n == node) {
            AssignedRole::Resync
        } else {
            continue;
        };
        covered.insert(v.id);
        out.push(assignment(tables, v, role));
    }
    for r in reports {
        if !covered.insert(r.volume) {
            continue;
        }
        match tables.volumes.get(&r.volume) {
            None if tables.corrupt_volumes.contains(&r.volume) => {}
            None => out.push(remove(r.volume, u64::MAX)),
            Some(v) if v.removed => out.push(remove(v.id, v.placement.epoch)),
            Some(v) => {
                let p = &v.placement;
                let full = p.replicas.len() + p.resyncing.len() >= v.replication as usize;
                if full && is_up(tables, &p.master, now_ms, config) {
                    out.push(remove(v.id, p.epoch));
                }
            }
        }
    }
    out
}
