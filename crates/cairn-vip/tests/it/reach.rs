//! Claim and release: the VIP on the holder device is reachable through eth0.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_vip::VipHost;

use crate::lab::{Lab, VIP};
use crate::tcp::{greeting, serve};

#[test]
fn claim_makes_the_vip_reachable_and_release_takes_it_away() {
    let lab = Lab::new(&["a", "peer"]);
    let a = lab.worker("a");
    let peer = lab.worker("peer");
    serve(&a, 7000, "a");
    let host = a.run(|| async { Arc::new(VipHost::open("cvip-a").await.expect("open")) });

    let claim_host = host.clone();
    let (took, held) = a.run(move || async move {
        let start = Instant::now();
        claim_host.claim(VIP, Duration::from_secs(60)).await.expect("claim");
        let took = start.elapsed();
        // A second claim renews; it neither fails nor adds anything.
        claim_host.claim(VIP, Duration::from_secs(60)).await.expect("renew");
        (took, claim_host.held().await.expect("held"))
    });
    eprintln!("measured: claim (RTM_NEWADDR) took {took:?}");
    assert_eq!(held, vec![VIP]);
    let on_holder: Vec<_> = lab.addresses("a").into_iter().filter(|(_, ip, _, _)| *ip == VIP).collect();
    assert_eq!(on_holder.len(), 1, "{on_holder:?}");
    let (device, _, prefix, valid_s) = &on_holder[0];
    assert_eq!((device.as_str(), *prefix), ("cvip-a", 32));
    assert!(valid_s.is_some_and(|s| (58..=60).contains(&s)), "valid_lft {valid_s:?}");

    let vip_port = SocketAddrV4::new(VIP, 7000);
    let reply = peer.run(move || async move { greeting(vip_port, Duration::from_secs(3)).await });
    assert_eq!(reply.expect("the peer reaches the VIP"), "a");
    assert_eq!(lab.neighbour_mac("peer", VIP), Some(lab.mac_text("a")), "eth0 answered the ARP request");

    let release_host = host.clone();
    let held = a.run(move || async move {
        release_host.release(VIP).await.expect("release");
        release_host.release(VIP).await.expect("releasing an absent VIP succeeds");
        release_host.held().await.expect("held")
    });
    assert!(held.is_empty(), "{held:?}");
    assert!(!lab.has_address("a", VIP));
    let error = peer
        .run(move || async move { greeting(vip_port, Duration::from_secs(1)).await })
        .expect_err("released: unreachable");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "dropped, not refused: {error}");
}
