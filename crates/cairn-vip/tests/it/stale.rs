//! A VIP that comes back to a node it left finds that node's old connection on it, which the
//! client's new connection (same source port, as the Linux NFS client reconnects) would run into;
//! `abort_tcp_connections` clears it before the address is taken back.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::arp::{claim, open, release};
use crate::lab::{Lab, VIP};
use crate::tcp::{read_line, serve};

/// The client's fixed source port (the NFS client keeps one across reconnects).
const CLIENT_PORT: u16 = 877;

/// Connects from [`CLIENT_PORT`], reads the greeting, and hands the connection back as a std
/// stream that closes abortively (a RST, and the port is free again at once).
async fn greeting_from_fixed_port(to: SocketAddrV4) -> (String, std::net::TcpStream) {
    let mut stream = connect_from_fixed_port(to).await.expect("connect");
    let greeting = read_line(&mut stream, Duration::from_secs(3)).await.expect("greeting");
    let stream = stream.into_std().expect("std stream");
    socket_linger_zero(&stream);
    (greeting, stream)
}

fn socket_linger_zero(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `linger` is a valid `struct linger` of the length given, on an open socket.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER");
}

async fn connect_from_fixed_port(to: SocketAddrV4) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([0, 0, 0, 0], CLIENT_PORT)))?;
    tokio::time::timeout(Duration::from_secs(3), socket.connect(SocketAddr::V4(to)))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[test]
fn the_stale_connection_of_a_returning_vip_is_aborted() {
    let lab = Lab::new(&["a", "b", "peer"]);
    let (a, b, peer) = (lab.worker("a"), lab.worker("b"), lab.worker("peer"));
    serve(&a, 2049, "a");
    serve(&b, 2049, "b");
    let (host_a, eth0_a) = open(&a, "cvip-a");
    let (host_b, eth0_b) = open(&b, "cvip-b");
    let vip_port = SocketAddrV4::new(VIP, 2049);
    let peer_address = SocketAddrV4::new(lab.host_ip("peer"), CLIENT_PORT);

    // The peer's first connection, to a, stays open on a's side when the VIP leaves: the peer's
    // RST goes to a, which no longer has the address.
    claim(&a, &host_a, VIP);
    let (first, first_stream) = peer.run(move || async move { greeting_from_fixed_port(vip_port).await });
    assert_eq!(first, "a");
    release(&a, &host_a, VIP);
    drop(first_stream);

    // The VIP on b: the peer's next connection, from the same port, reaches b.
    claim(&b, &host_b, VIP);
    let (announcing, eth0) = (host_b.clone(), eth0_b.clone());
    b.run(move || async move { announcing.announce(&eth0, VIP).expect("announce") });
    let (second, second_stream) = peer.run(move || async move { greeting_from_fixed_port(vip_port).await });
    assert_eq!(second, "b");
    release(&b, &host_b, VIP);

    // Back to a: its stale socket (the same four numbers as the peer's live one) goes first.
    let aborted = a.run(move || async move { cairn_vip::abort_tcp_connections(VIP) }).expect("abort");
    assert_eq!(aborted, 1, "a held exactly one stale connection on the VIP");
    let again = a.run(move || async move { cairn_vip::abort_tcp_connections(VIP) }).expect("abort again");
    assert_eq!(again, 0, "nothing left to abort");
    claim(&a, &host_a, VIP);
    let (announcing, eth0) = (host_a.clone(), eth0_a.clone());
    a.run(move || async move { announcing.announce(&eth0, VIP).expect("announce") });
    let tickling = host_a.clone();
    a.run(move || async move { tickling.tickle(vip_port, peer_address).expect("tickle") });
    drop(second_stream);
    let (third, took) = peer.run(move || async move {
        // The peer reconnects from the same port; no stale socket on a delays it.
        let start = Instant::now();
        let (greeting, _stream) = greeting_from_fixed_port(vip_port).await;
        (greeting, start.elapsed())
    });
    assert_eq!(third, "a");
    assert!(took < Duration::from_millis(900), "the reconnection waited for a SYN retransmission: {took:?}");
}
