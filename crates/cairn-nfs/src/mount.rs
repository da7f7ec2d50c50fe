//! MOUNT v3 (RFC 1813 appendix I), answering v1 and v2 too (same procedures; MNT's v1 result is
//! a fixed 32-byte handle, which a version-1 Cairn handle exactly is).
//!
//! MNT checks the exports (`options_for_mount`), resolves the path by LOOKUPs from the volume root
//! as root, and records (client, path) in the mount list that DUMP shows. The list is advisory, as
//! everywhere: NFS requests are checked against the exports on their own.

use std::net::SocketAddr;

use cairn_store::Caller;
use cairn_types::{FILE_HANDLE_LEN, Fid};
use nfs3_types::nfs3::nfsstat3;

use crate::Shared;
use crate::connection::Reply;
use crate::exports::ClientMatcher;
use crate::nfs::nfs_status;
use crate::rpc::{self, AcceptStatus};
use crate::xdr::{XdrReader, XdrWrite};

pub const PROGRAM: u32 = 100_005;
pub const VERSION_LOW: u32 = 1;
pub const VERSION_HIGH: u32 = 3;
/// RFC 1813 appendix I: MNTPATHLEN.
pub const MOUNT_PATH_BYTES_MAX: usize = 1024;
/// RFC 1813 appendix I: MNTNAMLEN.
const HOST_NAME_BYTES_MAX: usize = 255;
/// Bound of the in-memory mount list; the oldest records go first.
pub const MOUNT_LIST_ENTRIES_MAX: usize = 4096;

pub mod procedure {
    pub const NULL: u32 = 0;
    pub const MNT: u32 = 1;
    pub const DUMP: u32 = 2;
    pub const UMNT: u32 = 3;
    pub const UMNTALL: u32 = 4;
    pub const EXPORT: u32 = 5;
    pub const LAST: u32 = EXPORT;
}

/// mountstat3 values (equal to the errno values v1 uses).
mod status {
    pub const OK: u32 = 0;
    pub const PERM: u32 = 1;
    pub const NOENT: u32 = 2;
    pub const IO: u32 = 5;
    pub const ACCES: u32 = 13;
    pub const NOTDIR: u32 = 20;
    pub const INVAL: u32 = 22;
    pub const NAMETOOLONG: u32 = 63;
}

/// One record of the mount list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRecord {
    pub host: String,
    pub path: String,
}

/// Decodes a MOUNT call's arguments without executing it (for the fuzz target).
pub fn decode(procedure_number: u32, arguments: &[u8]) -> Result<Option<&[u8]>, crate::xdr::XdrError> {
    match procedure_number {
        procedure::MNT | procedure::UMNT => Ok(Some(XdrReader::new(arguments).opaque(usize::MAX)?)),
        procedure::NULL | procedure::DUMP | procedure::UMNTALL | procedure::EXPORT => Ok(None),
        _ => Err(crate::xdr::XdrError),
    }
}

/// Executes a MOUNT call (version and procedure already checked); may block on the store.
pub fn execute(
    shared: &Shared,
    client: SocketAddr,
    xid: u32,
    version: u32,
    procedure_number: u32,
    arguments: &[u8],
) -> Reply {
    let Ok(path) = decode(procedure_number, arguments) else {
        return Reply::new(rpc::accepted_reply(xid, AcceptStatus::GarbageArguments));
    };
    let mut out = Vec::with_capacity(256);
    rpc::begin_accepted_reply(&mut out, xid, AcceptStatus::Success);
    let host = client.ip().to_canonical().to_string();
    match procedure_number {
        procedure::MNT => {
            let path = path.unwrap_or_default();
            match mount(shared, client, path) {
                Ok((fid, normalised)) => {
                    let handle = shared.handle_of(fid).encode();
                    out.put_u32(status::OK);
                    if version == 3 {
                        out.put_opaque(&handle);
                        // auth_flavors: AUTH_UNIX, AUTH_NONE.
                        out.put_u32(2);
                        out.put_u32(1);
                        out.put_u32(0);
                    } else {
                        const _: () = assert!(FILE_HANDLE_LEN == 32, "MOUNT v1 handles are 32 bytes");
                        out.extend_from_slice(&handle);
                    }
                    shared.record_mount(MountRecord { host, path: normalised });
                }
                Err(code) => out.put_u32(code),
            }
        }
        procedure::DUMP => {
            for record in shared.mounts.lock().iter() {
                out.put_bool(true);
                out.put_opaque(record.host.as_bytes());
                out.put_opaque(record.path.as_bytes());
            }
            out.put_bool(false);
        }
        procedure::UMNT => {
            if let Some(path) = path.and_then(normalise_path) {
                shared.mounts.lock().retain(|record| !(record.host == host && record.path == path));
            }
        }
        procedure::UMNTALL => shared.mounts.lock().retain(|record| record.host != host),
        procedure::EXPORT => {
            let exports = shared.exports.read().clone();
            for entry in &exports.entries {
                out.put_bool(true);
                out.put_opaque(entry.path.as_bytes());
                for rule in &entry.rules {
                    let name = match &rule.matcher {
                        ClientMatcher::Everyone => "*".to_string(),
                        ClientMatcher::Address(address) => address.to_string(),
                        ClientMatcher::Network(network) => network.to_string(),
                        ClientMatcher::Host { name, .. } => name.clone(),
                    };
                    out.put_bool(true);
                    out.put_opaque(&name.as_bytes()[..name.len().min(HOST_NAME_BYTES_MAX)]);
                }
                out.put_bool(false);
            }
            out.put_bool(false);
        }
        _ => {}
    }
    rpc::finish_record(&mut out, 0);
    Reply::new(out)
}

/// MNT: export check, then path resolution. Returns the directory and the normalised path, or a
/// mountstat3.
fn mount(shared: &Shared, client: SocketAddr, raw_path: &[u8]) -> Result<(Fid, String), u32> {
    if raw_path.len() > MOUNT_PATH_BYTES_MAX {
        return Err(status::NAMETOOLONG);
    }
    let path = normalise_path(raw_path).ok_or(status::NOENT)?;
    let client_ip = client.ip().to_canonical();
    let options = shared.exports.read().options_for_mount(&path, client_ip);
    let Some(options) = options else {
        tracing::debug!(%client, path, "mount refused: not exported to this client");
        return Err(status::ACCES);
    };
    if options.secure && client.port() >= 1024 {
        tracing::debug!(%client, path, "mount refused: secure export, unprivileged source port");
        return Err(status::ACCES);
    }
    let root = Caller::root();
    let mut fid = shared.root;
    let mut is_directory = true;
    for component in path.split('/').filter(|component| !component.is_empty()) {
        match shared.store.lookup(&root, fid, component.as_bytes()) {
            Ok(found) => {
                fid = found.fid;
                is_directory = found.attributes.kind == cairn_store::FileKind::Directory;
            }
            Err(error) => return Err(mount_status(nfs_status(&error))),
        }
    }
    if !is_directory {
        return Err(status::NOTDIR);
    }
    Ok((fid, path))
}

/// The mountstat3 for an NFS status of a failed lookup.
fn mount_status(status: nfsstat3) -> u32 {
    match status {
        nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_STALE => status::NOENT,
        nfsstat3::NFS3ERR_NOTDIR => status::NOTDIR,
        nfsstat3::NFS3ERR_ACCES => status::ACCES,
        nfsstat3::NFS3ERR_PERM => status::PERM,
        nfsstat3::NFS3ERR_NAMETOOLONG => status::NAMETOOLONG,
        nfsstat3::NFS3ERR_INVAL => status::INVAL,
        _ => status::IO,
    }
}

/// `/a//b/c/` → `/a/b/c`, with the exports file's rules (`exports::normalize_path`); non-UTF-8
/// paths are refused too.
pub fn normalise_path(raw: &[u8]) -> Option<String> {
    crate::exports::normalize_path(std::str::from_utf8(raw).ok()?).ok()
}

impl Shared {
    fn record_mount(&self, record: MountRecord) {
        let mut mounts = self.mounts.lock();
        if mounts.contains(&record) {
            return;
        }
        if mounts.len() >= MOUNT_LIST_ENTRIES_MAX {
            mounts.remove(0);
        }
        mounts.push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        assert_eq!(normalise_path(b"/").as_deref(), Some("/"));
        assert_eq!(normalise_path(b"//a/b//").as_deref(), Some("/a/b"));
        assert_eq!(normalise_path(b"/a/../b"), None);
        assert_eq!(normalise_path(b"a/b"), None);
        assert_eq!(normalise_path(b"/\xff"), None);
    }
}
