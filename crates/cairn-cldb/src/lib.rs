//! CLDB: Cairn's container location database.
//!
//! The CLDB knows the volumes, where their containers live, and the nodes. Fileservers heartbeat
//! to it every second with what they hold; it answers each heartbeat with the node's
//! assignments. It elects a new master for a volume when its master dies, drops dead replicas,
//! re-replicates under-replicated volumes and raises alarms. Clients look volumes up in it.
//!
//! # Model (first version)
//!
//! The unit of replication is the **volume**: its name container and its data containers live on
//! the same ordered replica set (master first) with one **epoch**. Container ids are cluster-wide:
//! `volume * 1000 + local id`, local 1 the name container, 2.. the data containers. The epoch
//! starts at 1 and goes up by one at every change of the placement: master, replicas, or
//! resyncing nodes (so an assignment is identified by (volume, epoch); a node keeps the highest
//! epoch per volume and ignores lower ones), and at removal.
//!
//! # Mastership and fencing
//!
//! Several CLDBs run; one is master. It holds the ephemeral lock `/cairn/cldb/master` (data: its
//! RPC address) through [`cairn_coord::fence::acquire_or_take_over`] (a standby ends the
//! session of a master whose CLDB port refuses connections). On election it bumps the CLDB epoch
//! record `/cairn/cldb/epoch` with a version check and keeps the new znode version; every later
//! write is a coord `multi` starting with `Op::Check` of that version, so once another master has
//! bumped it, every write of the old one fails (details in [`store`]). The master also checks each
//! tick that the lock is still owned by its session, and steps down (closes its session and
//! campaigns again) when it is not or when a fenced write fails on the check. Heartbeat replies
//! carry the CLDB epoch (`cldb_epoch`) so nodes can ignore a deposed master.
//!
//! Every table lives in coord (layout in [`store`]), so a failover loses nothing; the master keeps
//! a copy in memory. Placement changes are written to coord, fenced, *before* memory is updated
//! and so before any heartbeat reply can carry them. Not persisted: heartbeat times (a new master
//! gives every node marked Up one node timeout of grace) and the nodes' reports (sizes,
//! positions), which arrive again within a second.
//!
//! Non-master CLDBs answer reads (lookups, lists, info, alarms, status) from coord, and answer
//! heartbeats and writes with [`proto::CldbError::NotMaster`] holding the master's address.
//!
//! # Key types
//!
//! - [`proto`]: the RPC messages ([`proto::Request`], [`proto::Response`], [`proto::CldbError`],
//!   [`proto::Heartbeat`], [`proto::Assignment`], [`proto::Volume`] ...).
//! - [`planner`]: the decisions as pure functions ([`planner::plan`],
//!   [`planner::place_new_volume`], [`planner::assignments`]) over [`planner::Tables`].
//! - [`service`]: [`Cldb`] (start, address, shutdown) and [`CldbConfig`].
//! - [`client`]: [`CldbClient`], which finds the master and follows redirections.
//! - [`store`]: the coord layout, loading and fenced writes.

pub mod client;
pub mod model;
pub mod planner;
pub mod probe;
pub mod proto;
pub mod service;
pub mod store;
pub mod view;
pub mod vip;
pub mod warden;

pub use client::{CldbClient, CldbClientOptions};
pub use proto::{CldbError, Request, Response};
pub use service::{Cldb, CldbConfig, StartError, run};
