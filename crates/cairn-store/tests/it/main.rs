//! The store's integration tests: one binary, one module per feature, all through the public
//! API on real files in temporary directories.

// Helpers outside `#[test]` functions unwrap too: a test that cannot set up should panic.
#![allow(clippy::unwrap_used)]

mod basic;
mod bigdir;
mod checksums;
mod common;
mod concurrency;
mod kill9;
mod model;
mod nospace;
mod permissions;
mod poison;
mod quota;
mod repair;
mod replication;
mod started;
