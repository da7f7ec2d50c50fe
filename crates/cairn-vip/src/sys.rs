//! The system calls: the TAP holder device (`/dev/net/tun`), the AF_PACKET sockets and the raw
//! IPv4 socket. Every `unsafe` block of the crate is here.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::frame::ETH_P_ARP;

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name, then the flags (40 bytes in all).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The outcome of attaching to `/dev/net/tun` under a name.
pub(crate) enum TapError {
    /// A TAP device of that name exists and another file descriptor is attached to it.
    Busy,
    /// A device of that name exists and is not a (single-queue) TAP device.
    NotTap,
    Other(io::Error),
}

/// Creates (or attaches to) the TAP device `name` without packet information, and makes sure it
/// is not persistent, so that it disappears when the returned descriptor is closed. Returns the
/// descriptor and whether a persistent device was taken over.
pub(crate) fn open_tap(name: &str) -> Result<(OwnedFd, bool), TapError> {
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a valid NUL-terminated string; the result is checked.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(TapError::Other(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut request = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    // The caller checked that the name is at most 15 bytes, so the last byte stays NUL.
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    request.flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EBUSY) => TapError::Busy,
            Some(libc::EINVAL) => TapError::NotTap,
            _ => TapError::Other(error),
        });
    }

    let mut current = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    // SAFETY: TUNGETIFF fills a `struct ifreq`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut current) } < 0 {
        return Err(TapError::Other(io::Error::last_os_error()));
    }
    let persistent = i32::from(current.flags) & libc::IFF_PERSIST != 0;
    if persistent {
        // SAFETY: TUNSETPERSIST takes an integer argument.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong) } < 0 {
            return Err(TapError::Other(io::Error::last_os_error()));
        }
    }
    Ok((fd, persistent))
}

/// The index of the interface `name` in the calling thread's network namespace.
pub(crate) fn interface_index(name: &str) -> io::Result<u32> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 { Err(io::Error::last_os_error()) } else { Ok(index) }
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, protocol) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just created and own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn link_address(index: u32, protocol: u16) -> io::Result<libc::sockaddr_ll> {
    // SAFETY: `sockaddr_ll` is plain old data; all zeroes is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = libc::AF_PACKET as libc::c_ushort;
    address.sll_protocol = protocol.to_be();
    address.sll_ifindex = i32::try_from(index).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    address.sll_halen = 6;
    address.sll_addr[..6].fill(0xff);
    Ok(address)
}

/// An AF_PACKET socket of protocol 0: it receives nothing (no protocol hook is registered) and
/// sends whole Ethernet frames to any interface, named per frame.
pub(crate) fn packet_sender() -> io::Result<OwnedFd> {
    socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
}

/// Sends one Ethernet ARP frame out of interface `index` (non-blocking).
pub(crate) fn send_arp(fd: &OwnedFd, index: u32, frame: &[u8]) -> io::Result<()> {
    let address = link_address(index, ETH_P_ARP)?;
    // SAFETY: `frame` and `address` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check_sent(sent, frame.len())
}

fn check_sent(sent: isize, expected: usize) -> io::Result<()> {
    match usize::try_from(sent) {
        Err(_) => Err(io::Error::last_os_error()),
        Ok(n) if n == expected => Ok(()),
        Ok(n) => Err(io::Error::other(format!("short send: {n} of {expected} bytes"))),
    }
}

/// A non-blocking AF_PACKET socket bound to interface `index` that receives every ARP frame seen
/// there, in or out. It is created with protocol 0 and gets its protocol from `bind`: a socket
/// created for ARP would be hooked on every interface first, and unhooking it in `bind` waits
/// for an RCU grace period (about 10 ms).
pub(crate) fn arp_receiver(index: u32) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    let address = link_address(index, ETH_P_ARP)?;
    // SAFETY: `address` is a valid `sockaddr_ll` of the length given.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Receives one frame (non-blocking) into `buffer`: its length and whether this host sent it.
pub(crate) fn receive_frame(fd: &OwnedFd, buffer: &mut [u8]) -> io::Result<(usize, bool)> {
    // SAFETY: `sockaddr_ll` is plain old data; all zeroes is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { zeroed() };
    let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buffer` and `from` are valid for the lengths given.
    let received = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
            (&raw mut from).cast(),
            &mut from_len,
        )
    };
    let length = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
    Ok((length, from.sll_pkttype == libc::PACKET_OUTGOING))
}

/// A raw IPv4 socket (IPPROTO_RAW, so the header is ours: IP_HDRINCL is implied).
pub(crate) fn raw_ipv4() -> io::Result<OwnedFd> {
    socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)
}

/// Sends a whole IPv4 packet to `to` (routed by the kernel like any other packet).
pub(crate) fn send_ipv4(fd: &OwnedFd, to: SocketAddrV4, packet: &[u8]) -> io::Result<()> {
    // SAFETY: `sockaddr_in` is plain old data; all zeroes is a valid value.
    let mut address: libc::sockaddr_in = unsafe { zeroed() };
    address.sin_family = libc::AF_INET as libc::sa_family_t;
    address.sin_addr = libc::in_addr { s_addr: u32::from(*to.ip()).to_be() };
    // SAFETY: `packet` and `address` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check_sent(sent, packet.len())
}

/// Registers `fd` with the current tokio runtime's reactor, for reading.
pub(crate) fn register_readable(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd`, which therefore stays open and the same for its lifetime.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
}

/// A blocking netlink socket (`NETLINK_SOCK_DIAG` and the like) talking to the kernel; a receive
/// waits at most 2 s.
pub(crate) struct NetlinkSocket(OwnedFd);

impl NetlinkSocket {
    pub(crate) fn open(protocol: libc::c_int) -> io::Result<NetlinkSocket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, protocol) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
        // SAFETY: `timeout` is a valid `timeval` of the length given.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NetlinkSocket(fd))
    }

    /// Sends one datagram to the kernel.
    pub(crate) fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: `sockaddr_nl` is plain old data; all zeroes is a valid value.
        let mut kernel: libc::sockaddr_nl = unsafe { zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` and `kernel` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        check_sent(sent, message.len())
    }

    /// Receives one datagram into `buffer`; its length.
    pub(crate) fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buffer` is valid for its length.
        let received = unsafe { libc::recv(self.0.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        usize::try_from(received).map_err(|_| io::Error::last_os_error())
    }
}
