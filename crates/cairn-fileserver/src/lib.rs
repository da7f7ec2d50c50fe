//! The file server: serves the containers of the volumes on its node to the rest of the cluster.
//!
//! Key types: [`FileServer`] (a running server: a `cairn-rpc` listener and the volumes it holds),
//! [`proto`] (its messages). Gateways and tools reach it through `cairn-client`, never directly.
//!
//! For each volume this node holds, the server is either the volume's **master** (it runs the
//! volume's [`cairn_store::Store`] and answers file system calls) or a **replica**. The CLDB
//! decides which, with an epoch that grows at every change; a call carrying another epoch than
//! the master's, or reaching a server that is not the master, is answered
//! [`proto::WireError::NotMaster`] and the caller looks the volume up again.
//!
//! Retried changes: a change carries a `request_id` chosen by the caller and kept across its
//! retries; the server remembers the answers of recent changes ([`replies::ReplyCache`]) and
//! answers a retry with the first answer, so a CREATE whose reply was lost is not answered EEXIST
//! when it is retried.

mod heartbeat;
pub mod proto;
mod repair;
mod replica;
mod replicator;
mod replies;
mod server;

pub use heartbeat::{HEARTBEAT_INTERVAL, NodeIdentity};
pub use replicator::{CONNECT_TIMEOUT, Connections, FileServerClient};
pub use server::{FileServer, FileServerConfig, FileServerError, SCRUB_INTERVAL_DEFAULT};
