//! cairn-cldb's integration tests: the planner's decisions, and CLDBs over a real coord member.

#![allow(clippy::unwrap_used)]

mod cluster;
mod modify;
mod planner;
