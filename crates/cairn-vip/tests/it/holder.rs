//! The holder process: this test binary re-executed with [`HOLDER_ENV`] set, so that a test can
//! SIGKILL or SIGSTOP a real process that holds a VIP.

use std::net::Ipv4Addr;
use std::time::Duration;

use cairn_vip::VipHost;

/// `"<namespace> <device> <vip> <lifetime ms> <renew ms>"`: act as a holder process.
pub const HOLDER_ENV: &str = "CAIRN_VIP_TEST_HOLDER";
/// Printed on a line of its own once the VIP is held.
pub const HOLDER_READY: &str = "cairn-vip-holder-ready";

/// Does nothing in a normal test run. With [`HOLDER_ENV`] set (by `Lab::holder`), enters the
/// namespace, opens the device, claims the VIP, says so, and renews it forever.
#[test]
fn holder_child() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else { return };
    let words: Vec<&str> = spec.split_whitespace().collect();
    let [ns, device, vip, lifetime_ms, renew_ms] = words[..] else { panic!("bad {HOLDER_ENV}: {spec:?}") };
    let vip: Ipv4Addr = vip.parse().expect("a VIP");
    let lifetime = Duration::from_millis(lifetime_ms.parse().expect("a lifetime"));
    let renew = Duration::from_millis(renew_ms.parse().expect("a renewal period"));
    crate::lab::enter_netns(ns);
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let host = VipHost::open(device).await.expect("open the holder device");
        host.claim(vip, lifetime).await.expect("claim");
        println!("{HOLDER_READY}");
        loop {
            tokio::time::sleep(renew).await;
            host.claim(vip, lifetime).await.expect("renew");
        }
    });
}
