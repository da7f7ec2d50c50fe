//! The tickle ACK resets a client's connection to the previous holder of a VIP.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::arp::{claim, open, release};
use crate::lab::{Lab, VIP};
use crate::tcp::{connect, read_line, serve};

#[test]
fn tickle_resets_a_client_of_the_previous_holder() {
    let lab = Lab::new(&["a", "b", "peer"]);
    let (a, b, peer) = (lab.worker("a"), lab.worker("b"), lab.worker("peer"));
    serve(&a, 2049, "a");
    let (host_a, _) = open(&a, "cvip-a");
    let (host_b, eth0_b) = open(&b, "cvip-b");
    claim(&a, &host_a, VIP);

    // The peer connects to a through the VIP, reads the greeting, then waits for more (as an NFS
    // client waits for a reply), for up to 20 s.
    let vip_port = SocketAddrV4::new(VIP, 2049);
    let (local_tx, local_rx) = std::sync::mpsc::channel();
    let waiting = peer.start(move || async move {
        let mut stream = connect(vip_port, Duration::from_secs(3)).await.expect("connect");
        let greeting = read_line(&mut stream, Duration::from_secs(3)).await.expect("greeting");
        let _ = local_tx.send((greeting, stream.local_addr().expect("local address")));
        let start = Instant::now();
        let outcome = read_line(&mut stream, Duration::from_secs(20)).await;
        (outcome.map_err(|error| error.kind()), start.elapsed())
    });
    let (greeting, local) = local_rx.recv_timeout(Duration::from_secs(10)).expect("connected");
    assert_eq!(greeting, "a");
    let std::net::SocketAddr::V4(peer_address) = local else { panic!("IPv4 expected: {local}") };

    // Move the VIP to b (a's kernel keeps its socket, silently). Nothing tells the client yet.
    release(&a, &host_a, VIP);
    claim(&b, &host_b, VIP);
    let announcing = host_b.clone();
    let eth0 = eth0_b.clone();
    b.run(move || async move { announcing.announce(&eth0, VIP).expect("announce") });
    assert!(waiting.wait_for(Duration::from_millis(300)).is_none(), "the client does not notice by itself");

    let tickling = host_b.clone();
    let tickled_at = Instant::now();
    let sent = b.run(move || async move {
        let start = Instant::now();
        tickling.tickle(vip_port, peer_address).expect("tickle");
        start.elapsed()
    });
    let (outcome, _) =
        waiting.wait_for(Duration::from_secs(2)).expect("the tickle resets the connection at once");
    eprintln!(
        "measured: tickle handed to the kernel in {sent:?}; the client's read failed {:?} after the \
         tickle was started",
        tickled_at.elapsed()
    );
    assert!(
        matches!(outcome, Err(std::io::ErrorKind::ConnectionReset)) || outcome == Ok(String::new()),
        "reset (or EOF): {outcome:?}"
    );
}
