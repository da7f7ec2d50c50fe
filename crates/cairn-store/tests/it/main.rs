//! The store's integration tests: one binary, one module per feature, all through the public
//! API on real files in temporary directories.

mod basic;
mod bigdir;
mod checksums;
mod common;
mod kill9;
mod model;
mod nospace;
mod perf;
mod permissions;
mod poison;
