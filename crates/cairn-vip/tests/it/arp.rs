//! Gratuitous ARP and the probe.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_vip::{Interface, VipHost};

use crate::lab::{Lab, VIP, VIP2, Worker, time_until};
use crate::tcp::{greeting, serve};

/// Opens a holder in the worker's namespace; returns it with the namespace's eth0.
pub fn open(worker: &Worker, device: &'static str) -> (Arc<VipHost>, Interface) {
    worker.run(move || async move {
        let host = VipHost::open(device).await.expect("open");
        let mut interfaces = cairn_vip::interfaces().await.expect("interfaces");
        assert_eq!(interfaces.len(), 1, "{interfaces:?}");
        (Arc::new(host), interfaces.remove(0))
    })
}

pub fn claim(worker: &Worker, host: &Arc<VipHost>, vip: std::net::Ipv4Addr) {
    let host = host.clone();
    worker.run(move || async move { host.claim(vip, Duration::from_secs(60)).await.expect("claim") });
}

pub fn release(worker: &Worker, host: &Arc<VipHost>, vip: std::net::Ipv4Addr) {
    let host = host.clone();
    worker.run(move || async move { host.release(vip).await.expect("release") });
}

#[test]
fn announce_repoints_the_peers_neighbour_entry() {
    let lab = Lab::new(&["a", "b", "peer"]);
    let (a, b, peer) = (lab.worker("a"), lab.worker("b"), lab.worker("peer"));
    serve(&a, 7000, "a");
    serve(&b, 7000, "b");
    let (host_a, _) = open(&a, "cvip-a");
    let (host_b, eth0_b) = open(&b, "cvip-b");
    claim(&a, &host_a, VIP);
    let vip_port = SocketAddrV4::new(VIP, 7000);
    let reply = peer.run(move || async move { greeting(vip_port, Duration::from_secs(3)).await });
    assert_eq!(reply.expect("a answers"), "a");
    assert_eq!(lab.neighbour_mac("peer", VIP), Some(lab.mac_text("a")));

    // Make before break: b claims and announces, then a releases.
    let announcing = host_b.clone();
    let (claim_took, announce_took, second_announce_took) = b.run(move || async move {
        let start = Instant::now();
        announcing.claim(VIP, Duration::from_secs(60)).await.expect("claim");
        let claimed = Instant::now();
        announcing.announce(&eth0_b, VIP).expect("announce");
        let announced = Instant::now();
        announcing.announce(&eth0_b, VIP).expect("announce again");
        (claimed - start, announced - claimed, announced.elapsed())
    });
    eprintln!(
        "measured: claim {claim_took:?}, first announce (GARP) {announce_took:?}, second announce \
         {second_announce_took:?}"
    );
    let repointed =
        time_until(Duration::from_secs(1), || lab.neighbour_mac("peer", VIP) == Some(lab.mac_text("b")))
            .expect("the peer's neighbour entry follows the GARP");
    eprintln!("measured: peer's neighbour entry showed b's MAC {repointed:?} after the announce returned");
    release(&a, &host_a, VIP);
    let reply = peer.run(move || async move { greeting(vip_port, Duration::from_secs(3)).await });
    assert_eq!(reply.expect("b answers now"), "b");
}

#[test]
fn in_use_finds_another_holder_and_nobody_otherwise() {
    let lab = Lab::new(&["a", "b"]);
    let (a, b) = (lab.worker("a"), lab.worker("b"));
    let (host_a, _) = open(&a, "cvip-a");
    let (host_b, eth0_b) = open(&b, "cvip-b");
    claim(&a, &host_a, VIP);
    let mac_a = lab.mac("a");

    let probe = |vip, wait_ms: u64, ignore: Vec<[u8; 6]>| {
        let (host, eth0) = (host_b.clone(), eth0_b.clone());
        b.run(move || async move {
            let start = Instant::now();
            let answer =
                host.in_use(&eth0, vip, Duration::from_millis(wait_ms), &ignore).await.expect("probe");
            (answer, start.elapsed())
        })
    };
    let (answer, took) = probe(VIP, 1000, vec![]);
    eprintln!("measured: in_use found the holder after {took:?}");
    assert_eq!(answer, Some(mac_a), "a's eth0 answers the probe for the VIP on its holder");
    assert!(took < Duration::from_millis(300), "the first probe gets the answer: {took:?}");

    let (answer, took) = probe(VIP, 300, vec![mac_a]);
    assert_eq!(answer, None, "a's MAC is ignored");
    assert!(took >= Duration::from_millis(300), "waits the whole time: {took:?}");
    let (answer, _) = probe(VIP2, 300, vec![]);
    assert_eq!(answer, None, "nobody holds VIP2");

    // b holding the VIP too does not hide a (b's own answers are ignored; it gets none anyway).
    claim(&b, &host_b, VIP);
    assert_eq!(probe(VIP, 500, vec![]).0, Some(mac_a));
    release(&a, &host_a, VIP);
    assert_eq!(probe(VIP, 300, vec![]).0, None, "released on a, held only by b itself");
}
