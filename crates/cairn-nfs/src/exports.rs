//! The exports file: `/etc/exports` syntax, matched against client addresses.
//!
//! Each non-empty, non-comment line is `PATH CLIENT(OPTIONS) CLIENT(OPTIONS) ...` where CLIENT is
//! `*`, an IP address, a CIDR network (`10.0.0.0/8`, `fd00::/8`) or a host name (resolved when the
//! file is loaded), and OPTIONS a comma-separated list of `rw`, `ro`, `root_squash`,
//! `no_root_squash`, `all_squash`, `no_all_squash`, `anonuid=N`, `anongid=N`, `secure`,
//! `insecure` (and a few knfsd options that are accepted and ignored: `sync`, `async`,
//! `no_subtree_check`, `subtree_check`, `wdelay`, `no_wdelay`, `crossmnt`, `nohide`, `fsid=...`).
//! Defaults follow exports(5): `ro`, `root_squash`, `anonuid=65534`, `anongid=65534`, except
//! `insecure` is Cairn's default (a source port proves nothing).

use std::net::IpAddr;
use std::path::Path;

use cairn_store::Caller;

/// How client identities are mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Squash {
    /// Keep every uid and gid (`no_root_squash`).
    None,
    /// Map uid 0 and gid 0 to the anonymous ids (`root_squash`, the default).
    Root,
    /// Map every uid and gid to the anonymous ids (`all_squash`).
    All,
}

/// Options of one client rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    pub read_only: bool,
    pub squash: Squash,
    pub anonymous_uid: u32,
    pub anonymous_gid: u32,
    /// Requests must come from a source port below 1024.
    pub secure: bool,
}

/// Who a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMatcher {
    Everyone,
    Address(IpAddr),
    Network(ipnet::IpNet),
    /// A host name and the addresses it resolved to when the file was loaded.
    Host { name: String, addresses: Vec<IpAddr> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRule {
    pub matcher: ClientMatcher,
    pub options: ExportOptions,
}

/// One exported path and its client rules, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportEntry {
    /// Normalised absolute path in the cluster namespace: `/` or `/a/b` (no trailing slash).
    pub path: String,
    pub rules: Vec<ClientRule>,
}

/// A parse or load failure, with the line it happened on.
#[derive(Debug, thiserror::Error)]
pub enum ExportsError {
    #[error("exports line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("cannot read exports file {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// A parsed exports file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exports {
    pub entries: Vec<ExportEntry>,
}

impl Exports {
    pub fn parse(text: &str) -> Result<Exports, ExportsError> {
        let _ = text;
        todo!()
    }

    pub fn load(path: &Path) -> Result<Exports, ExportsError> {
        let _ = path;
        todo!()
    }

    /// The options for `client` mounting exactly `path` (normalised), or None when the path is not
    /// exported or the client matches none of its rules. The first matching rule of the entry
    /// wins, as in exports(5).
    pub fn options_for_mount(&self, path: &str, client: IpAddr) -> Option<ExportOptions> {
        let _ = (path, client);
        todo!()
    }

    /// The options checked on every NFS request: handles carry no export id (they are valid on
    /// every gateway forever), so the check is per volume: the least privileged options among all
    /// entries whose rules match `client` (ro beats rw; all_squash beats root_squash beats
    /// no_root_squash; secure beats insecure), or None when the client matches no entry at all.
    pub fn options_for_request(&self, client: IpAddr) -> Option<ExportOptions> {
        let _ = client;
        todo!()
    }
}

impl ExportOptions {
    /// Applies the squash rules to AUTH_UNIX credentials (or to AUTH_NONE, given as None, which
    /// always maps to the anonymous ids).
    pub fn caller_for(&self, credentials: Option<(u32, u32, &[u32])>) -> Caller {
        let _ = credentials;
        todo!()
    }
}
