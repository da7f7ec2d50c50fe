//! The holder device: creation, what it looks like, refusals, and that it dies with its owner.

use std::sync::Arc;

use cairn_vip::{HOLDER_ALIAS, VipError, VipHost};

use crate::lab::Lab;

#[test]
fn open_brings_up_a_holder_that_interfaces_leaves_out() {
    let lab = Lab::new(&["a"]);
    let a = lab.worker("a");
    let host = a.run(|| async { Arc::new(VipHost::open("cvip-a").await.expect("open")) });
    assert_eq!(host.device(), "cvip-a");

    let details = lab.ip("a", &["-d", "link", "show", "cvip-a"]);
    for expected in ["tun type tap", "persist off", "UP", "LOWER_UP", HOLDER_ALIAS] {
        assert!(details.contains(expected), "{expected:?} missing from:\n{details}");
    }
    let addresses = lab.ip("a", &["addr", "show", "dev", "cvip-a"]);
    assert!(!addresses.contains("inet"), "the holder has no address at all, not even IPv6:\n{addresses}");

    let interfaces = a.run(|| async { cairn_vip::interfaces().await.expect("interfaces") });
    assert_eq!(interfaces.len(), 1, "only eth0 (not lo, not the holder): {interfaces:?}");
    let eth0 = &interfaces[0];
    assert_eq!(eth0.name, "eth0");
    assert_eq!(eth0.mac, lab.mac("a"));
    assert_eq!(eth0.addresses, vec![(lab.host_ip("a"), 24)]);
    assert!(eth0.up);
    assert_ne!(eth0.index, host.device_index());

    drop(host);
    assert!(!lab.has_link("a", "cvip-a"), "dropping the VipHost destroys the device");
}

#[test]
fn open_refuses_busy_foreign_and_invalid_names_and_takes_over_a_stale_persistent_device() {
    let lab = Lab::new(&["a"]);
    let a = lab.worker("a");
    let host = a.run(|| async { Arc::new(VipHost::open("cvip-a").await.expect("open")) });

    let busy = a.run(|| async { VipHost::open("cvip-a").await.expect_err("busy") });
    assert!(matches!(busy, VipError::DeviceBusy { .. }), "{busy:?}");
    assert!(busy.to_string().contains("cvip-a"), "{busy}");
    let foreign = a.run(|| async { VipHost::open("eth0").await.expect_err("a veth") });
    assert!(matches!(foreign, VipError::DeviceNotTap { .. }), "{foreign:?}");
    assert!(foreign.to_string().contains("eth0"), "{foreign}");
    let long = a.run(|| async { VipHost::open("cvip-0123456789ab").await.expect_err("too long") });
    assert!(matches!(long, VipError::DeviceName { .. }), "{long:?}");
    assert!(lab.has_link("a", "cvip-a"), "failed opens leave the first holder alone");
    drop(host);

    // A persistent TAP device with an address, as a crashed tool might leave behind.
    lab.ip("a", &["tuntap", "add", "dev", "cvip-p", "mode", "tap"]);
    lab.ip("a", &["addr", "add", "10.231.0.60/32", "dev", "cvip-p"]);
    let held = a.run(|| async {
        let host = VipHost::open("cvip-p").await.expect("take over");
        host.held().await.expect("held")
    });
    assert!(held.is_empty(), "the stale address was removed: {held:?}");
    assert!(!lab.has_link("a", "cvip-p"), "no longer persistent: gone with its owner");
}
