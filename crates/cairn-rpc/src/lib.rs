//! `cairn-rpc`: a small, multiplexed request/response RPC over any async byte stream.
//!
//! One connection carries many concurrent calls: every request has a `u64` id and its response carries
//! the same id, so responses may come back in any order. The server may also send unsolicited *pushes*
//! (e.g. watch notifications) to the client. Frames are length-prefixed MessagePack; the wire format is
//! described in this crate's `README.md`.
//!
//! Key types:
//! - [`Client`]: a cloneable handle on one connection; [`Client::call`] sends a request and awaits its
//!   response, pushes are delivered to an optional channel.
//! - [`Handler`]: implemented by a service; called once per request (concurrently) with a
//!   [`Connection`] that identifies the caller and lets the service push to it.
//! - [`serve_connection`] serves one already-established stream; [`serve_tcp`] is a tokio accept loop.
//!
//! The library works over any `AsyncRead + AsyncWrite + Send + Unpin + 'static` stream (tokio TCP,
//! `tokio::io::duplex`, turmoil's simulated TCP): apart from [`Client::connect_tcp`] and [`serve_tcp`]
//! it never touches `tokio::net`, and it only ever spawns tokio tasks. It knows nothing about Cairn's
//! services: request, response and push bodies are serde types chosen by the user.

mod client;
mod frame;
mod server;

use std::time::Duration;

pub use client::Client;
pub use server::{Connection, Handler, serve_connection, serve_tcp};

/// Version announced in the `Hello` frame; a peer announcing another version is rejected.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest accepted frame payload (the bytes after the 4-byte length prefix).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Most calls outstanding on one connection: further client calls wait, and a server stops reading
/// the socket until one of its running handlers finishes (and its response is written).
pub const IN_FLIGHT_MAX: usize = 4096;
/// Most pushes queued but not yet written on one server connection; one more closes the connection.
pub const PUSH_QUEUE_MAX: usize = 65_536;
/// Time allowed for the `Hello` exchange when a connection starts.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the RPC layer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection is closed (by either side, or because it broke).
    #[error("connection closed")]
    Closed,
    /// The call (or connect / handshake) did not complete in time.
    #[error("timed out")]
    Timeout,
    /// The peer sent something that is not valid for this protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A body could not be serialized locally.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A frame exceeds [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
}
