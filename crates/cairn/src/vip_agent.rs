//! The VIP agent of a node's NFS service: holds the virtual IPs the CLDB master grants this node,
//! and nothing else.
//!
//! - **Authority.** It keeps a coord session of its own with the ephemeral `/cairn/nfs/<node>`,
//!   and holds VIPs only while that session surely lives: every VIP carries a kernel lifetime
//!   that ends before coord could expire the session ([`lifetime`]), renewed every
//!   [`FENCE_INTERVAL`]. A process that freezes loses its VIPs to the kernel before anyone else
//!   is given them; one that dies loses them at once, with the device they are on
//!   (`cairn_vip::VipHost`).
//! - **Reports.** It tells the master ([`cairn_cldb::CldbClient::vip_agent`]) its interfaces,
//!   what it holds, whether its gateway answers NFS NULL, and the NFS connections to its VIPs
//!   (for the next holder's tickle ACKs); the master answers with the grants, at once when they
//!   change. The connections also go into `/cairn/nfs/<node>` when they change, for a master
//!   elected after this node died with the previous one.
//! - **Claiming.** Probe (does anyone else answer ARP for it?), abort this host's connections
//!   left on the address from an earlier holding (`cairn_vip::abort_tcp_connections`: the NFS
//!   client reconnects from the same port and would run into them), add the address, announce it
//!   with gratuitous ARP (again after 100 ms, 500 ms and 2 s), then tickle the previous holder's
//!   clients so they reconnect at once.
//! - **Releasing.** A VIP no longer granted, all of them when the session is in doubt or the
//!   gateway stops answering, and all of them at a clean stop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use cairn_cldb::CldbClient;
use cairn_cldb::probe::{self, PingError};
use cairn_cldb::proto::{GrantedVip, InterfaceReport, VipAgentReport, VipGrant};
use cairn_coord::api::{CoordError, CreateMode};
use cairn_coord::client::{ClientOptions, CoordClient};
use cairn_vip::{Interface, VipHost};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// The agent's coord session timeout: a frozen holder's VIPs move after about this long.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Kept between a VIP's kernel lifetime and the session's end: the kernel deletes an expired
/// address up to about a second late.
const LIFETIME_MARGIN: Duration = Duration::from_millis(1_600);
/// How often lifetimes are renewed and the session checked.
const FENCE_INTERVAL: Duration = Duration::from_millis(200);
/// Longest the master may hold a report's answer back.
const REPORT_WAIT: Duration = Duration::from_millis(500);
/// How long a probe waits for someone else to answer for a VIP.
const PROBE_WAIT: Duration = Duration::from_millis(30);
/// Gratuitous ARPs after the first, counted from the claim.
const ANNOUNCE_AGAIN: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(500), Duration::from_secs(2)];
/// The gateway's own NULL ping must answer within this.
const SELF_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the agent needs to know.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    /// The device (at most 15 bytes) the VIPs are put on.
    pub device: String,
    pub coord: Vec<String>,
    /// Where the node's gateway answers (its own health check).
    pub nfs_check: SocketAddr,
    /// The port clients mount, whose connections are reported.
    pub nfs_port: u16,
    /// Written into `/cairn/nfs/<node>`.
    pub nfs_address: String,
}

/// The device name for a node: `cv-` and the node name's first 12 safe characters.
pub fn device_name(node: &str) -> String {
    let safe: String = node.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(12).collect();
    format!("cv-{safe}")
}

/// The kernel lifetime a VIP may have now: whole seconds before the session's end minus the
/// margin; `None` when that is under a second (or there is no session): release everything.
pub fn lifetime(valid_until: Option<Instant>, now: Instant) -> Option<Duration> {
    let left = valid_until?.checked_duration_since(now)?.checked_sub(LIFETIME_MARGIN)?;
    (left >= Duration::from_secs(1)).then(|| Duration::from_secs(left.as_secs()))
}

/// Runs the agent until `stop`; never fails the node: without the means to hold VIPs (not root,
/// no /dev/net/tun) it logs why and does nothing.
pub async fn run(config: AgentConfig, cldb: CldbClient, mut stop: watch::Receiver<bool>) {
    let host = match VipHost::open(&config.device).await {
        Ok(host) => Arc::new(host),
        Err(error) => {
            tracing::error!("VIPs disabled on this node: {error}");
            return;
        }
    };
    let mut agent = Agent {
        config,
        cldb,
        host,
        held: BTreeMap::new(),
        epoch: 0,
        generation: 0,
        conflicts: Vec::new(),
        published: None,
    };
    loop {
        let session = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            s = agent.open_session() => s,
        };
        agent.published = None;
        let stopped = agent.serve(&session, &mut stop).await;
        agent.release_all("the agent's coord session ended").await;
        let _ = session.close().await;
        if stopped {
            break;
        }
    }
    agent.release_all("the node stops").await;
}

struct Held {
    interface: String,
}

struct Agent {
    config: AgentConfig,
    cldb: CldbClient,
    host: Arc<VipHost>,
    held: BTreeMap<Ipv4Addr, Held>,
    /// Highest CLDB master epoch seen: grants from a lower one are ignored.
    epoch: u64,
    generation: u64,
    conflicts: Vec<(Ipv4Addr, String)>,
    /// The connections last written to this session's `/cairn/nfs/<node>`.
    published: Option<Vec<cairn_cldb::vip::Connection>>,
}

impl Agent {
    /// A coord session with the node's ephemeral; retried until it works.
    async fn open_session(&self) -> CoordClient {
        let path = format!("{}/{}", cairn_cldb::vip::NFS_SESSIONS, self.config.node);
        let options =
            ClientOptions { session_timeout: Some(SESSION_TIMEOUT), request_timeout: Duration::from_secs(3) };
        loop {
            match CoordClient::connect(&self.config.coord, options.clone()).await {
                Ok(client) => match register(&client, &path, self.config.nfs_address.as_bytes()).await {
                    Ok(()) => {
                        tracing::info!("VIP agent: session {:#x} holds {path}", client.session());
                        return client;
                    }
                    Err(e) => {
                        tracing::warn!("VIP agent: cannot register {path}: {e}");
                        let _ = client.close().await;
                    }
                },
                Err(e) => tracing::debug!("VIP agent: coord: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reports and applies grants while the session lives; true if asked to stop.
    async fn serve(&mut self, session: &CoordClient, stop: &mut watch::Receiver<bool>) -> bool {
        let mut fence = tokio::time::interval(FENCE_INTERVAL);
        fence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gateway: Option<TcpStream> = None;
        let mut xid: u32 = rand::random();
        let mut poll = None;
        loop {
            if poll.is_none() {
                let nfs_ok = self_check(&mut gateway, self.config.nfs_check, &mut xid).await;
                if !nfs_ok && !self.held.is_empty() {
                    self.release_all("the NFS gateway does not answer").await;
                }
                let report = self.report(session.session(), nfs_ok).await;
                self.publish(session, &report.connections).await;
                let cldb = self.cldb.clone();
                poll = Some(Box::pin(async move { cldb.vip_agent(report).await }));
            }
            let Some(pending) = poll.as_mut() else { continue };
            enum Event {
                Stop,
                Fence,
                Answer(Result<VipGrant, cairn_cldb::CldbError>),
            }
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => Event::Stop,
                _ = fence.tick() => Event::Fence,
                answer = pending => Event::Answer(answer),
            };
            match event {
                Event::Stop => return true,
                Event::Fence => {
                    if !self.fence(session).await {
                        return false;
                    }
                }
                Event::Answer(answer) => {
                    poll = None;
                    match answer {
                        Ok(grant) => self.apply(grant, session).await,
                        Err(e) => {
                            tracing::debug!("VIP agent: report: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
    }

    /// Renews every held VIP's lifetime, or releases them all when the session is in doubt;
    /// false when the session is over.
    async fn fence(&mut self, session: &CoordClient) -> bool {
        match lifetime(session.session_valid_until(), Instant::now()) {
            Some(life) => {
                for vip in self.held.keys() {
                    if let Err(e) = self.host.claim(*vip, life).await {
                        tracing::warn!("VIP agent: cannot renew {vip}: {e}");
                    }
                }
                true
            }
            None => {
                if !self.held.is_empty() {
                    self.release_all("the coord session may be about to expire").await;
                }
                session.is_alive()
            }
        }
    }

    /// Keeps the connections in `/cairn/nfs/<node>` up to date (written when they change): a
    /// CLDB master elected after this node died with the old one reads them there, so that the
    /// VIPs' new holders can tickle this node's clients.
    async fn publish(&mut self, session: &CoordClient, connections: &[cairn_cldb::vip::Connection]) {
        if self.published.as_deref() == Some(connections) {
            return;
        }
        let path = format!("{}/{}", cairn_cldb::vip::NFS_SESSIONS, self.config.node);
        let data = cairn_cldb::vip::session_data(&self.config.nfs_address, connections);
        match session.set(&path, &data, None).await {
            Ok(_) => self.published = Some(connections.to_vec()),
            Err(e) => tracing::debug!("VIP agent: cannot publish its connections: {e}"),
        }
    }

    async fn report(&mut self, session: u64, nfs_ok: bool) -> VipAgentReport {
        let interfaces = match cairn_vip::interfaces().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("VIP agent: cannot list interfaces: {e}");
                Vec::new()
            }
        };
        let held: BTreeSet<Ipv4Addr> = self.held.keys().copied().collect();
        VipAgentReport {
            node: self.config.node.clone(),
            session,
            generation: self.generation,
            wait_ms: REPORT_WAIT.as_millis() as u64,
            nfs_ok,
            interfaces: interfaces.iter().map(interface_report).collect(),
            held: held.iter().copied().collect(),
            connections: nfs_connections(self.config.nfs_port, &held),
            conflicts: std::mem::take(&mut self.conflicts),
        }
    }

    async fn apply(&mut self, grant: VipGrant, session: &CoordClient) {
        if grant.cldb_epoch < self.epoch {
            return;
        }
        self.epoch = grant.cldb_epoch;
        self.generation = grant.generation;
        let wanted: BTreeMap<Ipv4Addr, &GrantedVip> = grant.vips.iter().map(|g| (g.vip, g)).collect();
        let gone: Vec<Ipv4Addr> = self.held.keys().filter(|v| !wanted.contains_key(*v)).copied().collect();
        for vip in gone {
            self.release(vip, "no longer granted").await;
        }
        let new: Vec<&GrantedVip> = grant.vips.iter().filter(|g| !self.held.contains_key(&g.vip)).collect();
        if new.is_empty() {
            return;
        }
        let interfaces = cairn_vip::interfaces().await.unwrap_or_default();
        for g in new {
            let Some(life) = lifetime(session.session_valid_until(), Instant::now()) else { return };
            let Some(interface) = interfaces.iter().find(|i| i.name == g.interface) else {
                tracing::warn!(
                    "VIP agent: {} granted on {}, which this node does not have",
                    g.vip,
                    g.interface
                );
                continue;
            };
            self.claim(g, interface, life).await;
        }
    }

    async fn claim(&mut self, g: &GrantedVip, interface: &Interface, life: Duration) {
        let started = Instant::now();
        let ignore: Vec<[u8; 6]> =
            g.ignore_macs.iter().filter_map(|m| cairn_vip::parse_mac(m).ok()).collect();
        match self.host.in_use(interface, g.vip, PROBE_WAIT, &ignore).await {
            Ok(Some(mac)) => {
                let mac = cairn_vip::format_mac(&mac);
                tracing::error!("VIP agent: not claiming {}: {mac} answers for it", g.vip);
                self.conflicts.push((g.vip, mac));
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("VIP agent: cannot probe {}: {e}", g.vip),
        }
        // Connections left on this address from an earlier holding (the client's RST went to
        // the other holder) would catch the client's reconnection from the same port: abort them
        // before the address comes back.
        let vip = g.vip;
        let stale = tokio::task::spawn_blocking(move || cairn_vip::abort_tcp_connections(vip)).await;
        let stale = match stale {
            Ok(Ok(aborted)) => aborted,
            Ok(Err(e)) => {
                tracing::warn!("VIP agent: cannot abort old connections on {}: {e}", g.vip);
                0
            }
            Err(e) => {
                tracing::warn!("VIP agent: aborting old connections on {}: {e}", g.vip);
                0
            }
        };
        if let Err(e) = self.host.claim(g.vip, life).await {
            tracing::error!("VIP agent: cannot add {}: {e}", g.vip);
            return;
        }
        self.held.insert(g.vip, Held { interface: interface.name.clone() });
        if let Err(e) = self.host.announce(interface, g.vip) {
            tracing::warn!("VIP agent: cannot announce {}: {e}", g.vip);
        }
        for (local, peer) in &g.tickle {
            if let Err(e) = self.host.tickle(*local, *peer) {
                tracing::debug!("VIP agent: tickle {peer}: {e}");
            }
        }
        tracing::info!(
            "VIP {} claimed on {} in {:?} ({} connections tickled, {stale} old ones aborted)",
            g.vip,
            interface.name,
            started.elapsed(),
            g.tickle.len()
        );
        let host = self.host.clone();
        let (interface, vip, tickle) = (interface.clone(), g.vip, g.tickle.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            for (i, after) in ANNOUNCE_AGAIN.into_iter().enumerate() {
                tokio::time::sleep_until(start + after).await;
                if host.held().await.map(|h| h.contains(&vip)).unwrap_or(false) {
                    let _ = host.announce(&interface, vip);
                    if i == 0 {
                        for (local, peer) in &tickle {
                            let _ = host.tickle(*local, *peer);
                        }
                    }
                } else {
                    break;
                }
            }
        });
    }

    async fn release(&mut self, vip: Ipv4Addr, why: &str) {
        if let Some(held) = self.held.remove(&vip) {
            match self.host.release(vip).await {
                Ok(()) => tracing::info!("VIP {vip} released from {}: {why}", held.interface),
                Err(e) => tracing::error!("VIP agent: cannot release {vip}: {e}"),
            }
        }
    }

    async fn release_all(&mut self, why: &str) {
        let all: Vec<Ipv4Addr> = self.held.keys().copied().collect();
        for vip in all {
            self.release(vip, why).await;
        }
    }
}

/// Creates the node's ephemeral, replacing one a previous incarnation left behind.
async fn register(client: &CoordClient, path: &str, data: &[u8]) -> Result<(), CoordError> {
    loop {
        match client.create(path, data, CreateMode::Ephemeral).await {
            Ok(_) => return Ok(()),
            Err(CoordError::NodeExists { .. }) => match client.exists(path).await? {
                Some(stat) if stat.ephemeral_owner == client.session() => return Ok(()),
                Some(_) => match client.delete(path, None).await {
                    Ok(()) | Err(CoordError::NoNode { .. }) => {}
                    Err(e) => return Err(e),
                },
                None => {}
            },
            Err(e) => return Err(e),
        }
    }
}

/// NFS NULL to the node's own gateway over a kept connection.
async fn self_check(connection: &mut Option<TcpStream>, address: SocketAddr, xid: &mut u32) -> bool {
    for _ in 0..2 {
        if connection.is_none() {
            match probe::connect(&address.to_string()).await {
                Ok(stream) => *connection = Some(stream),
                Err(_) => return false,
            }
        }
        let Some(stream) = connection.as_mut() else { return false };
        *xid = xid.wrapping_add(1);
        match probe::null_ping(stream, *xid, SELF_PING_TIMEOUT).await {
            Ok(()) => return true,
            Err(PingError::Timeout(_)) => {
                *connection = None;
                return false;
            }
            // A broken connection: one more try on a new one.
            Err(_) => *connection = None,
        }
    }
    false
}

fn interface_report(i: &Interface) -> InterfaceReport {
    InterfaceReport {
        name: i.name.clone(),
        mac: cairn_vip::format_mac(&i.mac),
        addresses: i.addresses.clone(),
    }
}

/// Established TCP connections to `port` on one of `vips`: (local, peer), from /proc/net/tcp.
fn nfs_connections(port: u16, vips: &BTreeSet<Ipv4Addr>) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    if vips.is_empty() {
        return Vec::new();
    }
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return Vec::new() };
    parse_proc_net_tcp(&table)
        .into_iter()
        .filter(|(local, _)| local.port() == port && vips.contains(local.ip()))
        .collect()
}

/// The established connections of a /proc/net/tcp table.
fn parse_proc_net_tcp(table: &str) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    fn address(text: &str) -> Option<SocketAddrV4> {
        let (ip, port) = text.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints the network-order address as a little-endian u32.
        Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_le_bytes()), port))
    }
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = address(fields.next()?)?;
            let peer = address(fields.next()?)?;
            (fields.next()? == "01").then_some((local, peer))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_end_before_the_session() {
        let now = Instant::now();
        assert_eq!(lifetime(Some(now + Duration::from_secs(5)), now), Some(Duration::from_secs(3)));
        assert_eq!(lifetime(Some(now + Duration::from_millis(2_500)), now), None);
        assert_eq!(lifetime(Some(now), now), None);
        assert_eq!(lifetime(None, now), None);
    }

    #[test]
    fn proc_net_tcp_parses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 3200000A:0801 6400000A:02BC 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n\
           1: 00000000:0801 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0\n";
        let parsed = parse_proc_net_tcp(table);
        assert_eq!(
            parsed,
            vec![(
                SocketAddrV4::new([10, 0, 0, 50].into(), 2049),
                SocketAddrV4::new([10, 0, 0, 100].into(), 700)
            )]
        );
    }

    #[test]
    fn device_names_fit() {
        assert_eq!(device_name("node1"), "cv-node1");
        assert!(device_name("a-very-long-node-name.example.com").len() <= 15);
    }
}
