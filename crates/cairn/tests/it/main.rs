//! End-to-end tests of the single-node server (`cairn up`) with real NFS clients: libnfs-utils on
//! this machine, and the Linux kernel NFSv3 client in a small VM (nfsvm, see
//! /work/shared/nfsvm/README.md), each test with its own server, data folder, ports or network
//! namespace, so that nextest runs them in parallel.
//!
//! They need root, `ip netns`, libnfs-utils and nfsvm (run `nfsvm --setup` once); a missing piece
//! fails the test with a message naming it. `CAIRN_IT_KEEP=1` keeps the temporary folders (server
//! data and logs).

mod admin;
mod central_config;
mod cluster;
mod console;
mod console_cli;
mod coord;
mod drc;
mod exports;
mod failover;
mod fs_cli;
mod kernel_client;
mod libnfs;
mod metrics;
mod quota;
mod repair;
mod support;
mod vip;
mod warden;
mod webhdfs;
