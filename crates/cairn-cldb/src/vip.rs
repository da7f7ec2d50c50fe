//! Virtual IPs: the pools' checks and the assignment of each VIP to one gateway, as pure
//! functions over the pools (persisted in coord) and what the nodes' VIP agents report (the
//! master's memory).
//!
//! # Who may hold a VIP
//!
//! A node's agent holds VIPs only while its coord session lives: it keeps the ephemeral znode
//! `/cairn/nfs/<node>`, puts each VIP on a device its process owns (the kernel deletes it when the
//! process dies) with a kernel lifetime that ends before coord could expire the session, and drops
//! every VIP when the session is in doubt. So a node *may* hold a VIP while its session lives,
//! unless it is proven dead (its NFS port refuses connections: the process and its device are
//! gone). The master grants a VIP to a new node only when no other node may still hold it: the
//! old holder's session is gone, it is proven dead, or it reported that it let the VIP go. The one
//! exception is a planned move (`vip move`, a preferred MAC coming back) between two healthy
//! gateways: the new one claims first and the old one releases right after (make before break),
//! which the old one's clients see as one reset connection.
//!
//! A new master knows nothing of the grants; it grants nothing new until every node with a live
//! NFS session has reported what it holds.
//!
//! # Placement
//!
//! Each VIP goes to one eligible interface: on a node whose agent reports a live session, whose
//! gateway answers (its own check and the master's NULL pings), with a MAC in the pool's list
//! (any MAC if the list is empty) and an address in the VIP's subnet (unless `any_subnet`). A VIP
//! stays where it is while that stays true; its preferred MAC (a `vip move` target, else the
//! pool's) gets it back whenever eligible; otherwise it goes to the eligible node holding fewest
//! VIPs (then by name).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::proto::{
    CldbError, GrantedVip, InterfaceReport, VipAgentReport, VipInfo, VipPool, VipPoolEdit, VipPoolSpec,
};

/// Most VIPs in one pool.
pub const VIPS_PER_POOL_MAX: u32 = 1024;
/// Longest an agent's report may be held back by the master.
pub const AGENT_WAIT_MAX: Duration = Duration::from_secs(2);
/// Most interfaces, held VIPs or connections in one agent report.
pub const AGENT_ITEMS_MAX: usize = 65_536;
/// Where the agents' session ephemerals live: `/cairn/nfs/<node>`.
pub const NFS_SESSIONS: &str = "/cairn/nfs";

/// `aa:bb:cc:dd:ee:ff` (either case, `:` or `-`) in lower case with colons.
pub fn normalize_mac(text: &str) -> Result<String, CldbError> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let ok =
        parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(CldbError::InvalidSpec(format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")));
    }
    Ok(parts.join(":").to_ascii_lowercase())
}

/// A netmask written `255.255.255.0`, `24` or `/24`, as a prefix length.
pub fn parse_netmask(text: &str) -> Result<u8, CldbError> {
    let text = text.trim();
    let bad = || CldbError::InvalidSpec(format!("{text:?} is not a netmask (255.255.255.0 or 24)"));
    if let Ok(prefix) = text.trim_start_matches('/').parse::<u8>() {
        return if prefix <= 32 { Ok(prefix) } else { Err(bad()) };
    }
    let mask = u32::from(text.parse::<Ipv4Addr>().map_err(|_| bad())?);
    let prefix = mask.leading_ones();
    if mask.checked_shl(prefix).unwrap_or(0) != 0 {
        return Err(bad());
    }
    u8::try_from(prefix).map_err(|_| bad())
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) }
}

/// True if `a` and `b` are in the same subnet of length `prefix`.
pub fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    u32::from(a) & mask(prefix) == u32::from(b) & mask(prefix)
}

impl VipPool {
    /// Every VIP of the pool, in order.
    pub fn vips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (u32::from(self.start)..=u32::from(self.end)).map(Ipv4Addr::from)
    }

    pub fn contains(&self, vip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&vip)
    }

    /// The MAC a VIP returns to.
    pub fn preferred_mac_of(&self, vip: Ipv4Addr) -> Option<&String> {
        self.moved.get(&vip).or(self.preferred_mac.as_ref())
    }

    /// True if this interface may hold the pool's VIPs (the subnet checked against `vip`).
    pub fn accepts(&self, interface: &InterfaceReport, vip: Ipv4Addr) -> bool {
        if !self.macs.is_empty() && !self.macs.contains(&interface.mac) {
            return false;
        }
        self.any_subnet || interface.addresses.iter().any(|(a, _)| same_subnet(*a, vip, self.prefix))
    }
}

/// The pool `spec` describes, checked against the other pools and what the agents report:
/// a sensible range and netmask, no overlap, only MACs some node has, no node's own address, and
/// every VIP in the subnet of some eligible interface unless `any_subnet`.
pub fn check_pool(
    spec: &VipPoolSpec,
    others: &BTreeMap<Ipv4Addr, VipPool>,
    agents: &BTreeMap<String, VipAgentReport>,
    own_addresses: &BTreeSet<Ipv4Addr>,
    now_ms: u64,
) -> Result<VipPool, CldbError> {
    let bad = |why: String| Err(CldbError::InvalidSpec(why));
    let end = spec.end.unwrap_or(spec.start);
    if end < spec.start {
        return bad(format!("the range ends ({end}) before it starts ({})", spec.start));
    }
    let count = u32::from(end) - u32::from(spec.start) + 1;
    if count > VIPS_PER_POOL_MAX {
        return bad(format!("{count} VIPs in one pool: at most {VIPS_PER_POOL_MAX}"));
    }
    if spec.prefix > 32 {
        return bad(format!("netmask /{}: at most /32", spec.prefix));
    }
    for vip in [spec.start, end] {
        if vip.is_unspecified() || vip.is_loopback() || vip.is_multicast() || vip.is_broadcast() {
            return bad(format!("{vip} cannot be a virtual IP"));
        }
    }
    if let Some(other) = others.values().find(|p| p.start <= end && spec.start <= p.end) {
        return bad(format!(
            "{}-{end} overlaps the pool {}-{}: remove or edit that one first",
            spec.start, other.start, other.end
        ));
    }
    let known: BTreeSet<&String> =
        agents.values().flat_map(|a| a.interfaces.iter().map(|i| &i.mac)).collect();
    let mut macs = Vec::new();
    for mac in &spec.macs {
        let mac = normalize_mac(mac)?;
        if !known.contains(&mac) {
            return bad(format!("no node has an interface with MAC {mac}"));
        }
        if !macs.contains(&mac) {
            macs.push(mac);
        }
    }
    let preferred_mac = match &spec.preferred_mac {
        Some(mac) => {
            let mac = normalize_mac(mac)?;
            if !known.contains(&mac) {
                return bad(format!("no node has an interface with MAC {mac} (preferred MAC)"));
            }
            if !macs.is_empty() && !macs.contains(&mac) {
                return bad(format!("the preferred MAC {mac} is not among the pool's MACs"));
            }
            Some(mac)
        }
        None => None,
    };
    let pool = VipPool {
        start: spec.start,
        end,
        prefix: spec.prefix,
        macs,
        preferred_mac,
        any_subnet: spec.any_subnet,
        moved: BTreeMap::new(),
        created_ms: now_ms,
    };
    if let Some(own) = pool.vips().find(|v| own_addresses.contains(v)) {
        return bad(format!("{own} is the address of a node's interface, not a free address"));
    }
    if !pool.any_subnet {
        let interfaces: Vec<&InterfaceReport> = agents.values().flat_map(|a| &a.interfaces).collect();
        for vip in [pool.start, pool.end] {
            if !interfaces.iter().any(|i| pool.accepts(i, vip)) {
                return bad(format!(
                    "{vip}/{} is outside the subnet of every eligible interface; give --any-subnet if \
                     your network routes it to the nodes",
                    pool.prefix
                ));
            }
        }
    }
    Ok(pool)
}

/// The pool after `edit`, checked like a new one (against the other pools).
pub fn check_edit(
    old: &VipPool,
    edit: &VipPoolEdit,
    others: &BTreeMap<Ipv4Addr, VipPool>,
    agents: &BTreeMap<String, VipAgentReport>,
    own_addresses: &BTreeSet<Ipv4Addr>,
) -> Result<VipPool, CldbError> {
    let spec = VipPoolSpec {
        start: old.start,
        end: Some(edit.end.unwrap_or(old.end)),
        prefix: edit.prefix.unwrap_or(old.prefix),
        macs: edit.macs.clone().unwrap_or_else(|| old.macs.clone()),
        preferred_mac: edit.preferred_mac.clone().unwrap_or_else(|| old.preferred_mac.clone()),
        any_subnet: edit.any_subnet.unwrap_or(old.any_subnet),
    };
    let mut pool = check_pool(&spec, others, agents, own_addresses, old.created_ms)?;
    pool.moved = old.moved.iter().filter(|(v, _)| pool.contains(**v)).map(|(v, m)| (*v, m.clone())).collect();
    Ok(pool)
}

/// Checks an agent report's sizes and MACs.
pub fn check_report(report: &mut VipAgentReport) -> Result<(), CldbError> {
    crate::model::check_node_name(&report.node)?;
    if report.interfaces.len() > AGENT_ITEMS_MAX
        || report.held.len() > AGENT_ITEMS_MAX
        || report.connections.len() > AGENT_ITEMS_MAX
        || report.conflicts.len() > AGENT_ITEMS_MAX
    {
        return Err(CldbError::InvalidSpec("VIP agent report too large".into()));
    }
    for interface in &mut report.interfaces {
        interface.mac = normalize_mac(&interface.mac)?;
    }
    Ok(())
}

/// What the master knows of one node's VIP agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub report: VipAgentReport,
    /// The node's NFS session ephemeral exists with the reported session.
    pub session_alive: bool,
    /// Its NFS port refused a connection after the master's ping connection broke: the process
    /// and its VIP device are gone.
    pub proven_dead: bool,
    /// The master's NULL pings get answers.
    pub ping_ok: bool,
}

impl Agent {
    /// May still hold VIPs (the kernel could answer for them).
    pub fn may_hold(&self) -> bool {
        self.session_alive && !self.proven_dead
    }

    /// May be given VIPs.
    pub fn healthy(&self) -> bool {
        self.may_hold() && self.report.nfs_ok && self.ping_ok
    }
}

/// One VIP's grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub node: String,
    pub interface: String,
    pub mac: String,
    /// The node that had it before (a planned move or a takeover), for probes and tickles.
    pub previous: Option<String>,
}

/// Which interface of `agent` takes `vip` of `pool`: the preferred MAC's if it is there, else the
/// first that accepts it.
fn interface_for<'a>(agent: &'a Agent, pool: &VipPool, vip: Ipv4Addr) -> Option<&'a InterfaceReport> {
    let accepted = agent.report.interfaces.iter().filter(|i| pool.accepts(i, vip));
    let preferred = pool.preferred_mac_of(vip);
    let mut first = None;
    for interface in accepted {
        if Some(&interface.mac) == preferred {
            return Some(interface);
        }
        first.get_or_insert(interface);
    }
    first
}

/// VIPs taken back from nodes that may not have applied that yet: VIP → node → the grant
/// generation that took it back. A node has let go once it reports that generation (or a later
/// one) without the VIP among those it holds.
pub type Releasing = BTreeMap<Ipv4Addr, BTreeMap<String, u64>>;

/// The grants after one round: `ready` is false until every node with a live NFS session has
/// reported (a new master), and then nothing new is granted.
pub fn plan_vips(
    pools: &BTreeMap<Ipv4Addr, VipPool>,
    agents: &BTreeMap<String, Agent>,
    grants: &BTreeMap<Ipv4Addr, Grant>,
    releasing: &Releasing,
    ready: bool,
) -> BTreeMap<Ipv4Addr, Grant> {
    let mut out: BTreeMap<Ipv4Addr, Grant> = BTreeMap::new();
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    let holders = |vip: Ipv4Addr| -> BTreeSet<&String> {
        agents
            .iter()
            .filter(|(n, a)| {
                let unapplied = releasing
                    .get(&vip)
                    .and_then(|r| r.get(*n))
                    .is_some_and(|generation| a.report.generation < *generation);
                a.may_hold()
                    && (a.report.held.contains(&vip)
                        || unapplied
                        || grants.get(&vip).is_some_and(|g| g.node == **n))
            })
            .map(|(n, _)| n)
            .collect()
    };
    let mac_owner = |mac: &String| {
        agents.iter().find(|(_, a)| a.report.interfaces.iter().any(|i| &i.mac == mac)).map(|(n, _)| n)
    };
    // First pass: keep VIPs where they are, or move them to a healthy preferred MAC.
    let mut pending = Vec::new();
    for pool in pools.values() {
        for vip in pool.vips() {
            // Without a grant (a master elected since), the one healthy agent that holds the VIP
            // keeps it: a new master does not take VIPs back only to hand them out again.
            let adopted = || {
                let mut holding = agents.iter().filter(|(_, a)| a.healthy() && a.report.held.contains(&vip));
                match (holding.next(), holding.next()) {
                    (Some((node, a)), None) => interface_for(a, pool, vip).map(|i| grant(node, i, None)),
                    _ => None,
                }
            };
            let current = grants.get(&vip).cloned().or_else(adopted).filter(|g| {
                agents.get(&g.node).is_some_and(|a| a.healthy() && interface_for(a, pool, vip).is_some())
            });
            let current = current.as_ref();
            let preferred = pool
                .preferred_mac_of(vip)
                .and_then(|mac| mac_owner(mac).map(|n| (n, mac)))
                .filter(|(n, mac)| {
                    agents.get(*n).is_some_and(|a| {
                        a.healthy()
                            && a.report.interfaces.iter().any(|i| &i.mac == *mac && pool.accepts(i, vip))
                    })
                });
            match (current, preferred) {
                (Some(g), Some((node, mac))) if g.mac != *mac && ready => {
                    // A planned move between two healthy gateways: make before break.
                    let a = &agents[node];
                    if let Some(i) = a.report.interfaces.iter().find(|i| &i.mac == mac) {
                        out.insert(vip, grant(node, i, Some(g.node.clone())));
                        *load.entry(node.as_str()).or_default() += 1;
                    }
                }
                (Some(g), _) => {
                    out.insert(vip, g.clone());
                    if let Some((node, _)) = agents.get_key_value(&g.node) {
                        *load.entry(node.as_str()).or_default() += 1;
                    }
                }
                (None, _) => pending.push((pool, vip)),
            }
        }
    }
    if !ready {
        return out;
    }
    // Second pass: VIPs without a healthy holder, once nobody else may hold them.
    for (pool, vip) in pending {
        let previous = grants.get(&vip).map(|g| g.node.clone());
        let candidates: Vec<(&String, &InterfaceReport)> = agents
            .iter()
            .filter(|(_, a)| a.healthy())
            .filter_map(|(n, a)| interface_for(a, pool, vip).map(|i| (n, i)))
            .collect();
        let preferred = pool.preferred_mac_of(vip);
        let chosen = candidates
            .iter()
            .find(|(_, i)| Some(&i.mac) == preferred)
            .or_else(|| {
                candidates.iter().min_by_key(|(n, _)| (load.get(n.as_str()).copied().unwrap_or(0), *n))
            })
            .copied();
        let Some((node, interface)) = chosen else { continue };
        if holders(vip).iter().any(|h| *h != node) {
            // Someone else may still answer for it: wait until it lets go or is gone.
            continue;
        }
        *load.entry(node.as_str()).or_default() += 1;
        out.insert(vip, grant(node, interface, previous.filter(|p| p != node)));
    }
    rebalance(pools, agents, &mut out);
    out
}

/// Evens the VIPs out (a node that joined, or came back, takes some): while a healthy node holds
/// two more than another that could hold one of its VIPs, that VIP moves, make before break. VIPs
/// with a preferred MAC stay where the preference put them.
fn rebalance(
    pools: &BTreeMap<Ipv4Addr, VipPool>,
    agents: &BTreeMap<String, Agent>,
    out: &mut BTreeMap<Ipv4Addr, Grant>,
) {
    let healthy: Vec<&String> = agents.iter().filter(|(_, a)| a.healthy()).map(|(n, _)| n).collect();
    // Each round moves one VIP; bounded by the number of VIPs.
    for _ in 0..out.len() {
        let count = |node: &String| out.values().filter(|g| &g.node == node).count();
        let mut best: Option<(usize, Ipv4Addr, &String, &InterfaceReport)> = None;
        for (vip, g) in out.iter() {
            let Some(pool) = pools.values().find(|p| p.contains(*vip)) else { continue };
            if pool.preferred_mac_of(*vip).is_some() {
                continue;
            }
            let from = count(&g.node);
            for node in &healthy {
                let Some(interface) = interface_for(&agents[*node], pool, *vip) else { continue };
                let to = count(node);
                if from >= to + 2 && best.is_none_or(|(gap, ..)| from - to > gap) {
                    best = Some((from - to, *vip, node, interface));
                }
            }
        }
        let Some((_, vip, node, interface)) = best else { return };
        let previous = out.get(&vip).map(|g| g.node.clone());
        out.insert(vip, grant(node, interface, previous));
    }
}

fn grant(node: &str, interface: &InterfaceReport, previous: Option<String>) -> Grant {
    Grant { node: node.to_owned(), interface: interface.name.clone(), mac: interface.mac.clone(), previous }
}

/// The VIPs `node` must hold, with what it needs to take each over: the previous holder's MACs
/// (not a conflict while it lets go) and the connections to tickle: every connection on the VIP
/// that another node reported (a VIP has one holder, so they are all dead once `node` holds it),
/// including those of nodes that died with an earlier master (`orphans`, from their
/// `/cairn/nfs/<node>` data).
pub fn grants_for(
    node: &str,
    grants: &BTreeMap<Ipv4Addr, Grant>,
    agents: &BTreeMap<String, Agent>,
    orphans: &BTreeMap<String, Vec<Connection>>,
) -> Vec<GrantedVip> {
    grants
        .iter()
        .filter(|(_, g)| g.node == node)
        .map(|(vip, g)| {
            let previous = g.previous.as_ref().and_then(|p| agents.get(p));
            let ignore_macs = previous.map(|a| a.report.interfaces.iter().map(|i| i.mac.clone()).collect());
            let tickle: BTreeSet<Connection> = agents
                .iter()
                .filter(|(n, _)| *n != node)
                .flat_map(|(_, a)| a.report.connections.iter())
                .chain(orphans.iter().filter(|(n, _)| *n != node).flat_map(|(_, c)| c.iter()))
                .filter(|(local, _)| local.ip() == vip)
                .copied()
                .collect();
            GrantedVip {
                vip: *vip,
                interface: g.interface.clone(),
                mac: g.mac.clone(),
                ignore_macs: ignore_macs.unwrap_or_default(),
                tickle: tickle.into_iter().collect(),
            }
        })
        .collect()
}

/// A TCP connection to a gateway: (local address, client address).
pub type Connection = (SocketAddrV4, SocketAddrV4);

/// The data of an agent's `/cairn/nfs/<node>`: its gateway's address on the first line, then one
/// line per NFS connection on its VIPs ("LOCAL PEER"). A new CLDB master reads it from a node
/// that died with the old one, to tickle that node's clients.
pub fn session_data(nfs_address: &str, connections: &[Connection]) -> Vec<u8> {
    let mut text = format!("{nfs_address}\n");
    for (local, peer) in connections {
        text.push_str(&format!("{local} {peer}\n"));
    }
    text.into_bytes()
}

/// The connections in `/cairn/nfs/<node>` data ([`session_data`]); lines that do not parse are
/// skipped.
pub fn session_connections(data: &[u8]) -> Vec<Connection> {
    String::from_utf8_lossy(data)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (local, peer) = line.split_once(' ')?;
            Some((local.parse().ok()?, peer.parse().ok()?))
        })
        .collect()
}

/// Every VIP of every pool and where it is.
pub fn vip_infos(
    pools: &BTreeMap<Ipv4Addr, VipPool>,
    grants: &BTreeMap<Ipv4Addr, Grant>,
    agents: &BTreeMap<String, Agent>,
) -> Vec<VipInfo> {
    let mut out = Vec::new();
    for pool in pools.values() {
        for vip in pool.vips() {
            let g = grants.get(&vip);
            let agent = g.and_then(|g| agents.get(&g.node));
            let physical_ip = g.zip(agent).and_then(|(g, a)| {
                let i = a.report.interfaces.iter().find(|i| i.mac == g.mac)?;
                i.addresses
                    .iter()
                    .find(|(addr, _)| same_subnet(*addr, vip, pool.prefix))
                    .or(i.addresses.first())
                    .map(|(addr, _)| *addr)
            });
            out.push(VipInfo {
                vip,
                prefix: pool.prefix,
                pool: pool.start,
                node: g.map(|g| g.node.clone()).unwrap_or_default(),
                interface: g.map(|g| g.interface.clone()).unwrap_or_default(),
                mac: g.map(|g| g.mac.clone()).unwrap_or_default(),
                physical_ip,
                held: agent.is_some_and(|a| a.report.held.contains(&vip)),
                preferred_mac: pool.preferred_mac_of(vip).cloned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, mac: &str, address: [u8; 4]) -> InterfaceReport {
        InterfaceReport { name: name.into(), mac: mac.into(), addresses: vec![(Ipv4Addr::from(address), 24)] }
    }

    fn agent(node: &str, mac: &str, address: [u8; 4], held: &[Ipv4Addr]) -> (String, Agent) {
        let report = VipAgentReport {
            node: node.into(),
            session: 1,
            nfs_ok: true,
            interfaces: vec![interface("eth0", mac, address)],
            held: held.to_vec(),
            ..Default::default()
        };
        (node.to_owned(), Agent { report, session_alive: true, proven_dead: false, ping_ok: true })
    }

    fn pool(start: [u8; 4], end: [u8; 4]) -> VipPool {
        VipPool {
            start: start.into(),
            end: end.into(),
            prefix: 24,
            macs: vec![],
            preferred_mac: None,
            any_subnet: false,
            moved: BTreeMap::new(),
            created_ms: 0,
        }
    }

    fn three() -> BTreeMap<String, Agent> {
        [
            agent("n1", "02:00:00:00:00:01", [10, 0, 0, 11], &[]),
            agent("n2", "02:00:00:00:00:02", [10, 0, 0, 12], &[]),
            agent("n3", "02:00:00:00:00:03", [10, 0, 0, 13], &[]),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn netmasks_and_macs_parse() {
        assert_eq!(parse_netmask("255.255.255.0").ok(), Some(24));
        assert_eq!(parse_netmask("/20").ok(), Some(20));
        assert_eq!(parse_netmask("32").ok(), Some(32));
        assert!(parse_netmask("255.0.255.0").is_err());
        assert!(parse_netmask("33").is_err());
        assert_eq!(normalize_mac("02-AB-00-00-00-0F").ok().as_deref(), Some("02:ab:00:00:00:0f"));
        assert!(normalize_mac("02:ab:00:00:00").is_err());
        assert!(same_subnet([10, 0, 0, 5].into(), [10, 0, 0, 200].into(), 24));
        assert!(!same_subnet([10, 0, 1, 5].into(), [10, 0, 0, 200].into(), 24));
    }

    #[test]
    fn pools_are_checked() {
        let agents: BTreeMap<String, VipAgentReport> =
            three().into_iter().map(|(n, a)| (n, a.report)).collect();
        let own: BTreeSet<Ipv4Addr> = [[10, 0, 0, 11].into(), [10, 0, 0, 12].into()].into_iter().collect();
        let spec = |start: [u8; 4], end: [u8; 4]| VipPoolSpec {
            start: start.into(),
            end: Some(end.into()),
            prefix: 24,
            macs: vec![],
            preferred_mac: None,
            any_subnet: false,
        };
        let ok = check_pool(&spec([10, 0, 0, 50], [10, 0, 0, 52]), &BTreeMap::new(), &agents, &own, 0)
            .expect("valid pool");
        assert_eq!(ok.vips().count(), 3);
        let others: BTreeMap<_, _> = [(ok.start, ok.clone())].into_iter().collect();
        let overlap = check_pool(&spec([10, 0, 0, 52], [10, 0, 0, 60]), &others, &agents, &own, 0);
        assert!(matches!(overlap, Err(CldbError::InvalidSpec(m)) if m.contains("overlaps")));
        let own_address = check_pool(&spec([10, 0, 0, 10], [10, 0, 0, 11]), &others, &agents, &own, 0);
        assert!(matches!(own_address, Err(CldbError::InvalidSpec(m)) if m.contains("address of a node")));
        let outside = check_pool(&spec([10, 9, 0, 1], [10, 9, 0, 1]), &others, &agents, &own, 0);
        assert!(matches!(outside, Err(CldbError::InvalidSpec(m)) if m.contains("--any-subnet")));
        let mut anywhere = spec([10, 9, 0, 1], [10, 9, 0, 1]);
        anywhere.any_subnet = true;
        assert!(check_pool(&anywhere, &others, &agents, &own, 0).is_ok());
        let mut unknown = spec([10, 0, 0, 70], [10, 0, 0, 70]);
        unknown.macs = vec!["02:00:00:00:00:99".into()];
        let unknown = check_pool(&unknown, &others, &agents, &own, 0);
        assert!(matches!(unknown, Err(CldbError::InvalidSpec(m)) if m.contains("no node has")));
        let backwards = check_pool(&spec([10, 0, 0, 80], [10, 0, 0, 79]), &others, &agents, &own, 0);
        assert!(backwards.is_err());
    }

    #[test]
    fn a_new_master_keeps_the_vips_where_the_agents_hold_them() {
        let pools: BTreeMap<_, _> =
            [(Ipv4Addr::from([10, 0, 0, 50]), pool([10, 0, 0, 50], [10, 0, 0, 52]))].into_iter().collect();
        let (v50, v51, v52) =
            (Ipv4Addr::from([10, 0, 0, 50]), Ipv4Addr::from([10, 0, 0, 51]), Ipv4Addr::from([10, 0, 0, 52]));
        // n2 holds .51 and n3 holds .52 (n1, holding .50, died with the old master); .50 is
        // also claimed by no one else. The new master has no grants yet and is not ready.
        let agents: BTreeMap<String, Agent> = [
            agent("n2", "02:00:00:00:00:02", [10, 0, 0, 12], &[v51]),
            agent("n3", "02:00:00:00:00:03", [10, 0, 0, 13], &[v52]),
        ]
        .into_iter()
        .collect();
        let none = Releasing::new();
        let before_ready = plan_vips(&pools, &agents, &BTreeMap::new(), &none, false);
        let holder = |grants: &BTreeMap<Ipv4Addr, Grant>, vip| grants.get(&vip).map(|g| g.node.clone());
        assert_eq!(holder(&before_ready, v51).as_deref(), Some("n2"));
        assert_eq!(holder(&before_ready, v52).as_deref(), Some("n3"));
        assert_eq!(holder(&before_ready, v50), None, "nothing is handed out before every agent reported");
        let ready = plan_vips(&pools, &agents, &before_ready, &none, true);
        assert_eq!(holder(&ready, v51).as_deref(), Some("n2"), "kept: {ready:?}");
        assert_eq!(holder(&ready, v52).as_deref(), Some("n3"), "kept: {ready:?}");
        assert!(holder(&ready, v50).is_some(), "the orphan goes to a live node: {ready:?}");
        // Two agents claiming one VIP: neither is adopted blindly.
        let both: BTreeMap<String, Agent> = [
            agent("n2", "02:00:00:00:00:02", [10, 0, 0, 12], &[v51]),
            agent("n3", "02:00:00:00:00:03", [10, 0, 0, 13], &[v51]),
        ]
        .into_iter()
        .collect();
        assert_eq!(holder(&plan_vips(&pools, &both, &BTreeMap::new(), &none, false), v51), None);
    }

    #[test]
    fn session_data_carries_the_connections() {
        let c1: Connection =
            ("10.0.0.50:2049".parse().expect("addr"), "10.0.0.100:877".parse().expect("addr"));
        let c2: Connection =
            ("10.0.0.51:2049".parse().expect("addr"), "10.0.0.101:700".parse().expect("addr"));
        let data = session_data("10.0.0.11:2049", &[c1, c2]);
        assert_eq!(session_connections(&data), vec![c1, c2]);
        assert_eq!(session_connections(b"10.0.0.11:2049\ngarbage\n"), Vec::<Connection>::new());
        // An orphan's connection on the VIP is tickled by its new holder, not another VIP's.
        let pools: BTreeMap<_, _> =
            [(Ipv4Addr::from([10, 0, 0, 50]), pool([10, 0, 0, 50], [10, 0, 0, 52]))].into_iter().collect();
        let agents = three();
        let grants = plan_vips(&pools, &agents, &BTreeMap::new(), &Releasing::new(), true);
        let holder = grants[&Ipv4Addr::from([10, 0, 0, 50])].node.clone();
        let orphans: BTreeMap<String, Vec<Connection>> =
            [("n9".to_owned(), vec![c1, c2])].into_iter().collect();
        let granted = grants_for(&holder, &grants, &agents, &orphans);
        let vip50 = granted.iter().find(|g| g.vip == Ipv4Addr::from([10, 0, 0, 50])).expect("granted");
        assert_eq!(vip50.tickle, vec![c1]);
    }

    #[test]
    fn vips_spread_and_stay() {
        let pools: BTreeMap<_, _> =
            [(Ipv4Addr::from([10, 0, 0, 50]), pool([10, 0, 0, 50], [10, 0, 0, 52]))].into_iter().collect();
        let agents = three();
        let none = Releasing::new();
        let grants = plan_vips(&pools, &agents, &BTreeMap::new(), &none, true);
        let nodes: BTreeSet<&String> = grants.values().map(|g| &g.node).collect();
        assert_eq!(nodes.len(), 3, "one VIP per node: {grants:?}");
        assert_eq!(plan_vips(&pools, &agents, &grants, &none, true), grants, "stable");
        // All three on n1 (the others joined later): two move away.
        let crowded: BTreeMap<_, _> = grants
            .keys()
            .map(|vip| {
                let g = Grant {
                    node: "n1".into(),
                    interface: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    previous: None,
                };
                (*vip, g)
            })
            .collect();
        let spread = plan_vips(&pools, &agents, &crowded, &none, true);
        let nodes: BTreeSet<&String> = spread.values().map(|g| &g.node).collect();
        assert_eq!(nodes.len(), 3, "rebalanced: {spread:?}");
        assert!(plan_vips(&pools, &agents, &BTreeMap::new(), &none, false).is_empty(), "a new master waits");
    }

    #[test]
    fn a_dead_holder_frees_its_vip_at_once_and_a_live_one_must_let_go_first() {
        let vip = Ipv4Addr::from([10, 0, 0, 50]);
        let pools: BTreeMap<_, _> = [(vip, pool([10, 0, 0, 50], [10, 0, 0, 50]))].into_iter().collect();
        let mut agents = three();
        agents.get_mut("n1").expect("n1").report.held = vec![vip];
        let grants: BTreeMap<_, _> = [(
            vip,
            Grant {
                node: "n1".into(),
                interface: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                previous: None,
            },
        )]
        .into_iter()
        .collect();
        let none = Releasing::new();
        // Its gateway stops answering pings but the node lives: no one else gets the VIP yet.
        agents.get_mut("n1").expect("n1").ping_ok = false;
        assert!(plan_vips(&pools, &agents, &grants, &none, true).is_empty());
        // Taken back at generation 7: until n1 reports having applied it, nobody gets the VIP,
        // even if n1's (older) report does not list it.
        let releasing: Releasing =
            [(vip, [("n1".to_owned(), 7)].into_iter().collect())].into_iter().collect();
        agents.get_mut("n1").expect("n1").report.held.clear();
        agents.get_mut("n1").expect("n1").report.generation = 6;
        assert!(plan_vips(&pools, &agents, &BTreeMap::new(), &releasing, true).is_empty());
        // It reports letting go: the VIP moves.
        agents.get_mut("n1").expect("n1").report.generation = 7;
        let after_release = plan_vips(&pools, &agents, &BTreeMap::new(), &releasing, true);
        assert_ne!(after_release[&vip].node, "n1");
        // Proven dead while still holding it: the VIP moves at once, with n1's connections to
        // tickle.
        let n1 = agents.get_mut("n1").expect("n1");
        n1.report.held = vec![vip];
        n1.ping_ok = true;
        n1.proven_dead = true;
        let client = SocketAddrV4::new([10, 0, 0, 100].into(), 700);
        n1.report.connections = vec![(SocketAddrV4::new(vip, 2049), client)];
        let moved = plan_vips(&pools, &agents, &grants, &none, true);
        let to = &moved[&vip];
        assert_ne!(to.node, "n1");
        assert_eq!(to.previous.as_deref(), Some("n1"));
        let granted = grants_for(&to.node, &moved, &agents, &BTreeMap::new());
        assert_eq!(granted[0].tickle, vec![(SocketAddrV4::new(vip, 2049), client)]);
        // Session expired (frozen node): same.
        let n1 = agents.get_mut("n1").expect("n1");
        n1.proven_dead = false;
        n1.session_alive = false;
        assert_ne!(plan_vips(&pools, &agents, &grants, &none, true)[&vip].node, "n1");
    }

    #[test]
    fn a_preferred_mac_gets_its_vip_back() {
        let vip = Ipv4Addr::from([10, 0, 0, 50]);
        let mut p = pool([10, 0, 0, 50], [10, 0, 0, 50]);
        p.preferred_mac = Some("02:00:00:00:00:02".into());
        let pools: BTreeMap<_, _> = [(vip, p)].into_iter().collect();
        let mut agents = three();
        agents.get_mut("n2").expect("n2").session_alive = false;
        let none = Releasing::new();
        let without = plan_vips(&pools, &agents, &BTreeMap::new(), &none, true);
        assert_ne!(without[&vip].node, "n2");
        agents.get_mut("n2").expect("n2").session_alive = true;
        let back = plan_vips(&pools, &agents, &without, &none, true);
        assert_eq!(back[&vip].node, "n2");
        assert_eq!(back[&vip].previous, Some(without[&vip].node.clone()));
    }
}
