//! `cairn-vip`: the low-level mechanics of the NFS gateways' virtual IPs (VIPs). Which node holds
//! which VIP is decided elsewhere (the CLDB, through the VIP agent); this crate only makes this
//! host hold, announce, probe for and hand over an address.
//!
//! # The holder device
//!
//! A VIP is not put on the physical interface. [`VipHost::open`] creates a **TAP device owned by
//! the process** (`/dev/net/tun`, `TUNSETIFF` with `IFF_TAP | IFF_NO_PI`, never `TUNSETPERSIST`),
//! brings it up, and every VIP goes on it as a /32. Linux is a weak-host system: a packet for any
//! local address is accepted on whichever interface it arrives, and with `arp_ignore=0` (the
//! default) the physical interface answers ARP requests (probes included) for an address held on
//! another interface. So clients reach the VIP through the physical interface as usual.
//!
//! The point is what happens when the gateway dies. The device lives exactly as long as the file
//! descriptor: when the process exits or is killed (even with SIGKILL), the kernel closes it,
//! destroys the device and its addresses with it (measured: the address is gone 6-16 ms after
//! SIGKILL). A dead gateway's kernel then no longer answers ARP for the VIP and
//! no longer sends RSTs for it, which would otherwise break the clients' connections to the new
//! holder. The descriptor is close-on-exec, so a child process cannot keep the device alive.
//! Dropping the [`VipHost`] has the same effect as dying: every VIP goes.
//!
//! # The lease
//!
//! A process that is frozen (SIGSTOP, a stalled VM, swap death) keeps its descriptor, so the
//! device alone does not protect against it. Every VIP therefore carries a finite valid and
//! preferred lifetime (`IFA_CACHEINFO`), and the agent renews it with [`VipHost::claim`] well
//! before it runs out (`RTM_NEWADDR` with `NLM_F_CREATE | NLM_F_REPLACE` only rewrites the
//! lifetimes of an address that is there). The kernel deletes an expired IPv4 address by itself,
//! measured here between 0.02 and 0.2 s after expiry, so a frozen gateway loses its VIPs one
//! lifetime after its last renewal, whatever its process does. The agent must choose the lifetime
//! shorter than the time after which another node may take the VIP over.
//!
//! # Announcing, probing, tickling
//!
//! Adding an address sends nothing. [`VipHost::announce`] sends one **gratuitous ARP** (an ARP
//! request with sender IP = target IP = VIP, broadcast, sender MAC = the interface's MAC, as
//! keepalived and `arping -U` do) so that neighbours and switches repoint the VIP at once, rather
//! than after about 30 s of neighbour-unreachability detection. The agent sends a few, spaced.
//!
//! [`VipHost::in_use`] is an RFC 5227 **probe** (sender IP 0.0.0.0): it tells whether some other
//! host answers for the VIP, before claiming it or after a partition heals.
//!
//! [`VipHost::tickle`] sends CTDB's **tickle ACK** after a takeover: a TCP ACK with sequence 0
//! from VIP:port to a client of the previous holder. The client's TCP finds it outside its window
//! and answers with an ACK carrying its real numbers; that reaches this host, which has no such
//! connection and answers with a valid RST, and the client reconnects at once instead of waiting
//! for its next retransmission (exponential backoff: seconds to minutes).
//!
//! # Stale connections
//!
//! [`abort_tcp_connections`] destroys this host's TCP sockets on an address (`SOCK_DESTROY`, as
//! `ss -K` does). A VIP that comes back to a node it left finds that node's old connections still
//! established there; the client's reconnection from the same port would run into them. The agent
//! aborts them before it takes the address back.
//!
//! # Requirements and namespaces
//!
//! Root, or `CAP_NET_ADMIN` and `CAP_NET_RAW`; `arp_ignore=0` on the interfaces that serve VIPs;
//! services bound to `0.0.0.0` (or with `IP_FREEBIND`). Everything (device, netlink socket,
//! packet sockets) lives in the network namespace of the thread that calls [`VipHost::open`]
//! ([`VipHost::in_use`]'s receiving socket: of the thread that calls it).

mod frame;
mod netlink;
mod sockets;
mod sys;

pub use sockets::abort_tcp_connections;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::Duration;

use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use crate::netlink::Netlink;

/// Alias given to holder devices, so that [`interfaces`] can leave them out.
pub const HOLDER_ALIAS: &str = "cairn-vip holder";
/// Longest an rtnetlink request may take before it fails with [`VipError::NetlinkTimeout`].
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes sent by [`VipHost::in_use`], spread over its wait.
pub const PROBE_COUNT: u32 = 3;
/// Longest lifetime a VIP can be given, in seconds (0xffffffff would mean "forever").
pub const LIFETIME_S_MAX: u32 = u32::MAX - 1;

/// Everything that can go wrong; every message names the device, interface or address involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VipError {
    #[error("invalid VIP device name {name:?}: {reason}")]
    DeviceName { name: String, reason: &'static str },
    #[error("cannot create the VIP device {device}: {source} (is /dev/net/tun there? are we root?)")]
    CreateDevice { device: String, source: std::io::Error },
    #[error(
        "cannot create the VIP device {device}: a TAP device of that name exists and another process \
         holds it"
    )]
    DeviceBusy { device: String },
    #[error("cannot create the VIP device {device}: a device of that name exists and is not a TAP device")]
    DeviceNotTap { device: String },
    #[error("{action}: {source}")]
    Netlink { action: String, source: std::io::Error },
    #[error("{action}: no answer from the kernel within {timeout:?}")]
    NetlinkTimeout { action: String, timeout: Duration },
    #[error("{action}: {source}")]
    Socket { action: String, source: std::io::Error },
    #[error("not a MAC address: {text:?} (expected six hexadecimal bytes separated by ':' or '-')")]
    InvalidMac { text: String },
}

/// A network interface that could serve VIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// IPv4 addresses with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// Administratively up and running (`IFF_UP` and `IFF_RUNNING`: the link has a carrier).
    pub up: bool,
}

/// Every interface with a MAC address (a 6-byte, non-zero link-layer address), in the calling
/// thread's network namespace, by index: not `lo`, not VIP holder devices (recognised by
/// [`HOLDER_ALIAS`]).
pub async fn interfaces() -> Result<Vec<Interface>, VipError> {
    let netlink = Netlink::open()?;
    let links = netlink.links().await?;
    let addresses = netlink.ipv4_addresses(None).await?;
    let mut interfaces = Vec::new();
    for link in links {
        let flags = link.header.flags;
        let mut name = None;
        let mut mac = None;
        let mut holder = false;
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::IfName(text) => name = Some(text.clone()),
                LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                LinkAttribute::IfAlias(alias) => holder = alias == HOLDER_ALIAS,
                _ => {}
            }
        }
        let (Some(name), Some(mac)) = (name, mac) else { continue };
        if holder || flags.contains(LinkFlags::Loopback) || mac == [0; 6] {
            continue;
        }
        let index = link.header.index;
        interfaces.push(Interface {
            name,
            index,
            mac,
            addresses: addresses
                .iter()
                .filter(|entry| entry.index == index)
                .map(|entry| (entry.address, entry.prefix_len))
                .collect(),
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
        });
    }
    interfaces.sort_by_key(|interface| interface.index);
    Ok(interfaces)
}

/// `52:54:00:12:34:56`: lower case, colons.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Parses six two-digit hexadecimal bytes, upper or lower case, separated by ':' or '-'.
pub fn parse_mac(text: &str) -> Result<[u8; 6], VipError> {
    let invalid = || VipError::InvalidMac { text: text.to_owned() };
    let separator = if text.contains('-') { '-' } else { ':' };
    let mut mac = [0u8; 6];
    let mut parts = text.split(separator);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 || !part.bytes().all(|digit| digit.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// This host's side of the VIPs: the holder TAP device (the VIPs die with it, so with the
/// process), a netlink connection, an AF_PACKET socket for gratuitous ARPs and a raw IPv4 socket
/// for tickles, all opened once and kept (closing a packet socket costs 8-15 ms). Dropping it
/// removes every VIP. `Send + Sync`: the methods take `&self` and may run concurrently.
pub struct VipHost {
    device: String,
    index: u32,
    netlink: Netlink,
    arp_sender: OwnedFd,
    raw_ipv4: OwnedFd,
    // Declared last so that it is closed last: the device (and so the VIPs) goes when it closes.
    _tap: OwnedFd,
}

impl std::fmt::Debug for VipHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VipHost").field("device", &self.device).field("index", &self.index).finish()
    }
}

impl VipHost {
    /// Creates the holder TAP device `device` (at most 15 bytes, e.g. `cvip-n1`) with IPv6 off,
    /// the alias [`HOLDER_ALIAS`], and brings it up. A device of that name held by another
    /// process is [`VipError::DeviceBusy`]; a persistent TAP device left behind by someone is
    /// taken over, made non-persistent and emptied. Must run inside a tokio runtime.
    pub async fn open(device: &str) -> Result<VipHost, VipError> {
        check_device_name(device)?;
        let (tap, persistent) = sys::open_tap(device).map_err(|error| match error {
            sys::TapError::Busy => VipError::DeviceBusy { device: device.to_owned() },
            sys::TapError::NotTap => VipError::DeviceNotTap { device: device.to_owned() },
            sys::TapError::Other(source) => VipError::CreateDevice { device: device.to_owned(), source },
        })?;
        if persistent {
            tracing::warn!(device, "took over a persistent TAP device and made it non-persistent");
        }
        let index = sys::interface_index(device)
            .map_err(|source| VipError::CreateDevice { device: device.to_owned(), source })?;
        // Without IPv6 the device sends nothing at all (no DAD, router or MLD messages queued on
        // a descriptor nobody reads). Best effort: IPv6 may be off or absent altogether.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6"), "1");
        let socket_error = |action: &str| {
            let action = action.to_owned();
            move |source| VipError::Socket { action, source }
        };
        let arp_sender = sys::packet_sender().map_err(socket_error("cannot open an AF_PACKET socket"))?;
        let raw_ipv4 = sys::raw_ipv4().map_err(socket_error("cannot open a raw IPv4 socket"))?;
        let netlink = Netlink::open()?;
        netlink.set_up(index, HOLDER_ALIAS, device).await?;
        let host = VipHost { device: device.to_owned(), index, netlink, arp_sender, raw_ipv4, _tap: tap };
        // A device taken over may carry addresses: remove them all.
        for entry in host.netlink.ipv4_addresses(Some(index)).await? {
            host.netlink.delete(index, entry.address, entry.prefix_len, device).await?;
        }
        Ok(host)
    }

    /// The holder device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The holder device's interface index.
    pub fn device_index(&self) -> u32 {
        self.index
    }

    /// Adds `vip/32` to the holder with valid and preferred lifetime `lifetime` in whole seconds
    /// (rounded down, at least 1, at most [`LIFETIME_S_MAX`]). If it is there already, its
    /// lifetime is replaced (a renewal). Idempotent. Sends nothing: see [`VipHost::announce`].
    /// Fails with ENODEV if someone deleted the device (`ip link del`): open a new `VipHost`.
    pub async fn claim(&self, vip: Ipv4Addr, lifetime: Duration) -> Result<(), VipError> {
        let lifetime_s = lifetime.as_secs().clamp(1, u64::from(LIFETIME_S_MAX));
        let lifetime_s = u32::try_from(lifetime_s).unwrap_or(LIFETIME_S_MAX);
        self.netlink.add_leased(self.index, vip, lifetime_s, &self.device).await
    }

    /// Removes `vip/32` from the holder; an absent VIP is success.
    pub async fn release(&self, vip: Ipv4Addr) -> Result<(), VipError> {
        self.netlink.delete(self.index, vip, 32, &self.device).await
    }

    /// The VIPs on the holder device now (asks the kernel; expired ones are gone), sorted.
    pub async fn held(&self) -> Result<Vec<Ipv4Addr>, VipError> {
        let entries = self.netlink.ipv4_addresses(Some(self.index)).await?;
        let mut vips: Vec<Ipv4Addr> =
            entries.into_iter().filter(|entry| entry.prefix_len == 32).map(|entry| entry.address).collect();
        vips.sort();
        vips.dedup();
        Ok(vips)
    }

    /// Sends one gratuitous ARP for `vip` out of `interface`: Ethernet broadcast, ARP request,
    /// sender MAC = `interface.mac`, sender IP = target IP = `vip`. Non-blocking.
    pub fn announce(&self, interface: &Interface, vip: Ipv4Addr) -> Result<(), VipError> {
        let frame = frame::gratuitous_arp(interface.mac, vip);
        sys::send_arp(&self.arp_sender, interface.index, &frame).map_err(|source| VipError::Socket {
            action: format!("cannot send a gratuitous ARP for {vip} on {}", interface.name),
            source,
        })
    }

    /// RFC 5227-style probe from `interface`: ARP requests for `vip` with sender IP 0.0.0.0
    /// ([`PROBE_COUNT`] of them, spread over `wait`). Returns the MAC of the first host that
    /// answers within `wait` (an ARP reply, or any ARP packet whose sender IP is `vip`), leaving
    /// out `interface.mac` and the MACs in `ignore`; `None` if nobody does.
    pub async fn in_use(
        &self,
        interface: &Interface,
        vip: Ipv4Addr,
        wait: Duration,
        ignore: &[[u8; 6]],
    ) -> Result<Option<[u8; 6]>, VipError> {
        let socket_error = |what: &str| {
            let action = format!("cannot probe for {vip} on {}: {what}", interface.name);
            move |source| VipError::Socket { action, source }
        };
        let receiver = Receiver(Some(
            sys::register_readable(
                sys::arp_receiver(interface.index).map_err(socket_error("AF_PACKET socket"))?,
            )
            .map_err(socket_error("tokio registration"))?,
        ));
        let Some(fd) = receiver.0.as_ref() else { return Ok(None) };
        let probe = frame::arp_probe(interface.mac, vip);
        let start = Instant::now();
        let deadline = start + wait;
        let mut probes_sent = 0u32;
        let mut buffer = [0u8; 128];
        loop {
            let now = Instant::now();
            let mut wake = deadline;
            if probes_sent < PROBE_COUNT {
                let due = start + wait.mul_f64(f64::from(probes_sent) / f64::from(PROBE_COUNT));
                if now >= due {
                    sys::send_arp(fd.get_ref(), interface.index, &probe).map_err(socket_error("send"))?;
                    probes_sent += 1;
                    continue;
                }
                wake = wake.min(due);
            }
            if now >= deadline {
                return Ok(None);
            }
            let Ok(ready) = tokio::time::timeout_at(wake, fd.readable()).await else { continue };
            let mut guard = ready.map_err(socket_error("poll"))?;
            loop {
                let (length, outgoing) =
                    match guard.try_io(|fd| sys::receive_frame(fd.get_ref(), &mut buffer)) {
                        Err(_would_block) => break,
                        Ok(Err(error)) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                        Ok(received) => received.map_err(socket_error("receive"))?,
                    };
                let Some(arp) = buffer.get(..length).and_then(frame::parse_arp) else { continue };
                let answers = arp.sender_ip == vip
                    && (arp.op == frame::ARP_REPLY || arp.op == frame::ARP_REQUEST)
                    && !outgoing
                    && arp.sender_mac != interface.mac
                    && !ignore.contains(&arp.sender_mac);
                if answers {
                    return Ok(Some(arp.sender_mac));
                }
            }
        }
    }

    /// Sends a tickle ACK (TCP ACK, sequence 0, acknowledgement 0) from `local` (VIP:port) to
    /// `peer` (the client's ip:port) over the raw IPv4 socket. Claim and announce the VIP first:
    /// the client's answer must reach this host for the RST to follow. Non-blocking.
    pub fn tickle(&self, local: SocketAddrV4, peer: SocketAddrV4) -> Result<(), VipError> {
        let packet = frame::tickle_packet(local, peer);
        sys::send_ipv4(&self.raw_ipv4, peer, &packet).map_err(|source| VipError::Socket {
            action: format!("cannot send a tickle ACK from {local} to {peer}"),
            source,
        })
    }
}

/// The probe's AF_PACKET socket: closed on a blocking thread, because closing a packet socket
/// with a protocol hook waits for an RCU grace period (8-15 ms).
struct Receiver(Option<AsyncFd<OwnedFd>>);

impl Drop for Receiver {
    fn drop(&mut self) {
        let Some(fd) = self.0.take() else { return };
        let fd = fd.into_inner();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(fd))),
            Err(_) => drop(fd),
        }
    }
}

/// The kernel's rules for interface names (`dev_valid_name`), plus no '%' (a pattern to the TUN
/// driver).
fn check_device_name(name: &str) -> Result<(), VipError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() >= libc::IFNAMSIZ {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name.chars().any(|c| c == '/' || c == ':' || c == '%' || c == '\0' || c.is_whitespace()) {
        Some("contains '/', ':', '%', a NUL or white space")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(VipError::DeviceName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(format_mac(&mac), "52:54:00:12:34:56");
        assert_eq!(parse_mac("52:54:00:12:34:56").expect("lower"), mac);
        assert_eq!(parse_mac("52-54-00-12-34-56").expect("dashes"), mac);
        assert_eq!(parse_mac("AA:bb:CC:dd:EE:ff").expect("mixed case"), [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54-00:12:34:56",
            "+1:54:00:12:34:56",
            "g2:54:00:12:34:56",
            "52:54:00:12:34:56:",
        ] {
            let error = parse_mac(bad).expect_err(bad);
            assert!(error.to_string().contains("not a MAC address"), "{error}");
        }
    }

    #[test]
    fn device_names_follow_the_kernel_rules() {
        assert!(check_device_name("cvip-n1").is_ok());
        assert!(check_device_name("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b", "cvip%d"] {
            assert!(matches!(check_device_name(bad), Err(VipError::DeviceName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn vip_host_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<VipHost>();
    }
}
