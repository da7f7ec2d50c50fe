//! The Warden: the one process an init system starts on a node. It starts the node's services
//! (the built-in ones and any pluggable program) as child processes in dependency order, keeps
//! cluster-wide instance counts through coord, restarts what dies with capped backoff, gives
//! each service its memory share and enforces it with a cgroup, registers every running service
//! at `/services/<service>/<node>`, and applies changes to its configuration files live.

pub mod cgroup;
pub mod conf;
pub mod heap;
pub mod process;
pub mod supervisor;

pub use supervisor::{Builtin, WardenConfig, run};
