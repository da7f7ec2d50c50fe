//! coord: Cairn's ZooKeeper-role quorum.
//!
//! A replicated tree of znodes with sessions, ephemeral and sequential znodes, versions, watches
//! and atomic multi-ops, kept consistent by Raft (openraft 0.9). Other services use it to elect
//! the CLDB master (with a fencing epoch), register themselves and own VIPs.
//!
//! Key types: [`api`] (what clients see), [`tree::Tree`] (the deterministic state machine).
//! This crate never touches the file store or NFS.

pub mod api;
pub mod client;
pub mod fence;
pub mod member;
pub mod proto;
pub mod raft;
pub mod store;
pub mod tree;
