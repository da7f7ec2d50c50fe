//! Aborting this host's TCP connections on an address, through the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`): a dump of the IPv4 TCP sockets, then `SOCK_DESTROY` of each one whose
//! local address matches, as `ss -K src ADDR` does. Needs `CONFIG_INET_DIAG_DESTROY` (Debian's
//! kernels have it) and `CAP_NET_ADMIN`.
//!
//! Why: a VIP that comes back to a node it left finds that node's old connections on it still
//! established in the kernel (the gateway never saw them end: the client's RST went to the other
//! holder). The Linux NFS client reconnects from the same source port, so its new connection has
//! the same four numbers as a stale one here, and the stale socket answers its segments with
//! ACKs of its own old window instead of a RST: the client retransmits forever. Destroying the
//! stale sockets before taking the address back ends that (the kernel's own `tcp_abort`).
//!
//! No crate of the rust-netlink family sends `SOCK_DESTROY`, and the two messages needed are
//! small fixed layouts, so they are written here.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;

use crate::sys::NetlinkSocket;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// `struct nlmsghdr`.
const HEADER_BYTES: usize = 16;
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_BYTES: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, extensions, pad, states, then the socket id.
const REQUEST_BYTES: usize = 8 + SOCKID_BYTES;
/// `struct inet_diag_msg`: family, state, timer, retransmits, socket id, then five u32.
const DIAG_MSG_BYTES: usize = 4 + SOCKID_BYTES + 20;
/// Every TCP state but LISTEN (10) and TIME_WAIT (6), which have no connection to abort.
const STATES: u32 = 0xfff & !(1 << 10) & !(1 << 6);
const TCP_LISTEN: u8 = 10;

/// Aborts every TCP connection whose local address is `local` (the peer gets a RST when the
/// connection's state allows one). Returns how many were aborted.
pub fn abort_tcp_connections(local: Ipv4Addr) -> io::Result<usize> {
    let socket = NetlinkSocket::open(libc::NETLINK_SOCK_DIAG)?;
    let mut found = Vec::new();
    socket.send(&message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, &[0u8; SOCKID_BYTES]))?;
    let mut buffer = vec![0u8; 64 * 1024];
    'dump: loop {
        let length = socket.receive(&mut buffer)?;
        for (kind, payload) in messages(&buffer[..length])? {
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR => {
                    return Err(netlink_error(payload).unwrap_or_else(|| io::Error::other("dump failed")));
                }
                SOCK_DIAG_BY_FAMILY if payload.len() >= DIAG_MSG_BYTES => {
                    let state = payload[1];
                    let id = &payload[4..4 + SOCKID_BYTES];
                    let source = Ipv4Addr::new(id[4], id[5], id[6], id[7]);
                    if state != TCP_LISTEN && source == local {
                        found.push(<[u8; SOCKID_BYTES]>::try_from(id).map_err(io::Error::other)?);
                    }
                }
                _ => {}
            }
        }
    }
    let mut aborted = 0;
    for (sequence, id) in (2u32..).zip(&found) {
        socket.send(&message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, sequence, id))?;
        let length = socket.receive(&mut buffer)?;
        for (kind, payload) in messages(&buffer[..length])? {
            if kind != NLMSG_ERROR {
                continue;
            }
            match netlink_error(payload) {
                None => aborted += 1,
                // Gone meanwhile: nothing left to abort.
                Some(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                Some(error) => return Err(error),
            }
        }
    }
    Ok(aborted)
}

/// A request (`inet_diag_req_v2`) for IPv4 TCP sockets in [`STATES`], about socket `id`.
fn message(kind: u16, flags: u16, sequence: u32, id: &[u8; SOCKID_BYTES]) -> Vec<u8> {
    let total = HEADER_BYTES + REQUEST_BYTES;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(libc::AF_INET as u8);
    out.push(libc::IPPROTO_TCP as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&STATES.to_ne_bytes());
    out.extend_from_slice(id);
    out
}

/// The messages of one datagram: (type, payload).
fn messages(mut data: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while data.len() >= HEADER_BYTES {
        let length = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if length < HEADER_BYTES || length > data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message"));
        }
        out.push((u16::from_ne_bytes([data[4], data[5]]), &data[HEADER_BYTES..length]));
        // Messages are aligned to 4 bytes.
        let next = (length + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(out)
}

/// The error an `NLMSG_ERROR` payload carries; `None` for an acknowledgement (error 0).
fn netlink_error(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..size_of::<i32>())?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_kernel_layout() {
        let mut id = [0u8; SOCKID_BYTES];
        id[4..8].copy_from_slice(&[10, 0, 0, 1]);
        let request = message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 7, &id);
        assert_eq!(request.len(), 72);
        assert_eq!(u32::from_ne_bytes(request[0..4].try_into().expect("4 bytes")), 72);
        assert_eq!(u16::from_ne_bytes([request[4], request[5]]), SOCK_DESTROY);
        assert_eq!(u32::from_ne_bytes(request[8..12].try_into().expect("4 bytes")), 7);
        assert_eq!(request[16], libc::AF_INET as u8);
        assert_eq!(request[17], libc::IPPROTO_TCP as u8);
        assert_eq!(&request[24 + 4..24 + 8], &[10, 0, 0, 1]);
    }

    #[test]
    fn messages_split_on_aligned_lengths_and_refuse_bad_lengths() {
        let mut data = Vec::new();
        for (kind, payload) in [(NLMSG_ERROR, vec![0u8; 5]), (NLMSG_DONE, vec![0u8; 4])] {
            data.extend_from_slice(&((HEADER_BYTES + payload.len()) as u32).to_ne_bytes());
            data.extend_from_slice(&kind.to_ne_bytes());
            data.extend_from_slice(&[0u8; 10]);
            data.extend_from_slice(&payload);
            while data.len() % 4 != 0 {
                data.push(0);
            }
        }
        let parsed = messages(&data).expect("well formed");
        assert_eq!(parsed.iter().map(|(k, p)| (*k, p.len())).collect::<Vec<_>>(), vec![(2, 5), (3, 4)]);
        assert!(netlink_error(parsed[0].1).is_none());
        data[0] = 200;
        assert!(messages(&data).is_err());
    }
}
