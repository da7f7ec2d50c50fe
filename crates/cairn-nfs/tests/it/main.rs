//! Integration tests of the NFS gateway: a real gateway on loopback, a real store in a temporary
//! directory, real clients (`nfs3_client` and hand-built RPC records). No mocks.

mod access_control;
mod protocol;
mod readdir;
mod roundtrip;
mod support;
