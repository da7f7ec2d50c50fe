//! The lifetime lease: an address that is not renewed disappears by itself, even while the
//! process that holds it is frozen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_vip::VipHost;

use crate::lab::{Lab, VIP, VIP2, time_until};

#[test]
fn lifetime_is_whole_seconds_and_expires_by_itself() {
    let lab = Lab::new(&["a"]);
    let a = lab.worker("a");
    let host = a.run(|| async { Arc::new(VipHost::open("cvip-a").await.expect("open")) });
    let claim_host = host.clone();
    let claimed_at = a.run(move || async move {
        claim_host.claim(VIP, Duration::from_millis(2900)).await.expect("claim");
        Instant::now()
    });
    let valid_s = lab.addresses("a").into_iter().find(|(_, ip, _, _)| *ip == VIP).and_then(|(.., s)| s);
    assert!(valid_s.is_some_and(|s| s <= 2), "2.9 s rounds down to 2 s: {valid_s:?}");

    let gone = time_until(Duration::from_secs(5), || !lab.has_address("a", VIP)).expect("expires");
    let after_claim = claimed_at.elapsed();
    eprintln!("measured: a 2 s lease disappeared {after_claim:?} after the claim");
    assert!(after_claim >= Duration::from_millis(1900), "not before its time: {after_claim:?}");
    assert!(after_claim <= Duration::from_millis(3500), "within about a second of expiry: {after_claim:?}");
    assert!(gone <= Duration::from_millis(3500));
    let held = a.run(move || async move { host.held().await.expect("held") });
    assert!(held.is_empty());

    // A sub-second lifetime is one second, not zero (which would be refused or mean "forever").
    let lab_host = a.run(|| async { Arc::new(VipHost::open("cvip-b").await.expect("open")) });
    let short_host = lab_host.clone();
    a.run(move || async move { short_host.claim(VIP2, Duration::from_millis(300)).await.expect("claim") });
    let gone = time_until(Duration::from_secs(3), || !lab.has_address("a", VIP2)).expect("expires");
    eprintln!("measured: a 1 s lease (asked 300 ms) disappeared after {gone:?}");
    assert!(gone >= Duration::from_millis(800), "{gone:?}");
}

#[test]
fn a_renewed_lease_stays_and_expires_once_renewals_stop() {
    let lab = Lab::new(&["a"]);
    let a = lab.worker("a");
    let host = a.run(|| async { Arc::new(VipHost::open("cvip-a").await.expect("open")) });
    let renewing = host.clone();
    let last_renewal = a.run(move || async move {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            renewing.claim(VIP, Duration::from_secs(2)).await.expect("claim");
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(renewing.held().await.expect("held"), vec![VIP], "still held while renewed");
        }
        renewing.claim(VIP, Duration::from_secs(2)).await.expect("claim");
        Instant::now()
    });
    time_until(Duration::from_secs(5), || !lab.has_address("a", VIP)).expect("expires");
    let after = last_renewal.elapsed();
    eprintln!("measured: gone {after:?} after the last renewal of a 2 s lease");
    assert!(after >= Duration::from_millis(1900) && after <= Duration::from_millis(3500), "{after:?}");
}

#[test]
fn a_frozen_holder_loses_its_vip_when_the_lease_runs_out() {
    let lab = Lab::new(&["a"]);
    let holder = lab.holder("a", "cvip-a", VIP, Duration::from_secs(2), Duration::from_millis(300));
    // Renewals keep it through several lifetimes.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(lab.has_address("a", VIP), "renewed by the holder");
    holder.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    time_until(Duration::from_secs(5), || !lab.has_address("a", VIP)).expect("the lease runs out");
    let after = stopped.elapsed();
    eprintln!("measured: VIP of a SIGSTOPped holder (2 s lease, renewed every 300 ms) gone after {after:?}");
    assert!(after <= Duration::from_millis(3500), "{after:?}");
    assert!(lab.has_link("a", "cvip-a"), "the frozen process still owns the device");
    drop(holder);
    assert!(time_until(Duration::from_secs(2), || !lab.has_link("a", "cvip-a")).is_some());
}
