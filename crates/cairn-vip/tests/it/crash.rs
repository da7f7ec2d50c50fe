//! A holder killed with SIGKILL takes its device and VIPs with it: its kernel neither answers ARP
//! for the VIP nor resets connections to it.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use cairn_vip::VipHost;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::lab::{Lab, VIP, time_until};
use crate::tcp::{greeting, serve};

#[test]
fn a_killed_holder_leaves_no_address_no_arp_answer_and_no_rst() {
    let lab = Lab::new(&["a", "b", "peer"]);
    let a = lab.worker("a");
    let b = lab.worker("b");
    let peer = lab.worker("peer");
    serve(&a, 7000, "a");
    let holder = lab.holder("a", "cvip-a", VIP, Duration::from_secs(60), Duration::from_secs(20));
    let vip_port = SocketAddrV4::new(VIP, 7000);
    let reply = peer.run(move || async move { greeting(vip_port, Duration::from_secs(3)).await });
    assert_eq!(reply.expect("reachable while held"), "a");

    // A job in a's namespace watches the addresses over netlink, as fast as it can.
    let watching = a.start(|| async {
        let (connection, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::task::spawn_local(connection);
        loop {
            let mut request = handle.address().get();
            request.message_mut().header.family = rtnetlink::packet_route::AddressFamily::Inet;
            let messages: Vec<_> = request.execute().try_collect().await.expect("dump");
            let local = AddressAttribute::Local(std::net::IpAddr::V4(VIP));
            let present = messages.iter().any(|message| message.attributes.contains(&local));
            if !present {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    holder.signal(libc::SIGKILL);
    let killed = Instant::now();
    let address_gone = watching.wait().saturating_duration_since(killed);
    time_until(Duration::from_secs(5), || !lab.has_link("a", "cvip-a")).expect("the device goes");
    let device_gone = killed.elapsed();
    assert!(!lab.has_address("a", VIP));
    eprintln!(
        "measured: after SIGKILL the address was gone within {address_gone:?} (netlink poll every \
         0.1 ms) and the device within {device_gone:?} (`ip link`)"
    );
    assert!(address_gone <= Duration::from_millis(500), "{address_gone:?}");
    drop(holder);

    // The peer still has a's MAC for the VIP: its SYN reaches a, whose kernel drops it (no RST).
    assert_eq!(lab.neighbour_mac("peer", VIP), Some(lab.mac_text("a")));
    let error = peer
        .run(move || async move { greeting(vip_port, Duration::from_millis(1500)).await })
        .expect_err("nobody holds the VIP");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "dropped, not reset: {error}");

    // And nobody answers ARP for it any more.
    let answer = b.run(|| async {
        let host = VipHost::open("cvip-b").await.expect("open");
        let eth0 = cairn_vip::interfaces().await.expect("interfaces").remove(0);
        host.in_use(&eth0, VIP, Duration::from_millis(300), &[]).await.expect("probe")
    });
    assert_eq!(answer, None);
}
