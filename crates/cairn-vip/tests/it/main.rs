//! cairn-vip's integration tests: real TAP devices, addresses, ARP and TCP inside network
//! namespaces joined by a bridge (see `lab.rs`). They need root and fail without it.

mod arp;
mod crash;
mod device;
mod holder;
mod lab;
mod lease;
mod reach;
mod stale;
mod tcp;
mod tickle;
