//! The 21 NFSv3 procedures (RFC 1813 section 3.3): one store call each, results encoded with
//! `nfs3_types`, and the one mapping from [`StoreError`] to `nfsstat3` ([`nfs_status`]).
//!
//! Runs on a blocking thread: every store method blocks on disk I/O.

use std::time::Instant;

use cairn_store::{
    Attributes, Caller, Change, Changed, DirectoryPage, FileKind, PreOpAttributes, Stability, StoreError,
    Timestamp, WccData, access,
};
use cairn_types::limits::{FILE_SIZE_BYTES_MAX, IO_SIZE_BYTES_MAX, NAME_LENGTH_BYTES_MAX};
use cairn_types::{Fid, FileHandle};
use nfs3_types::nfs3::{
    FSF3_CANSETTIME, FSF3_HOMOGENEOUS, FSF3_LINK, FSF3_SYMLINK, Nfs3Option, fattr3, ftype3, nfsstat3,
    nfstime3, post_op_attr, specdata3, stable_how, wcc_attr, wcc_data, writeverf3,
};

use crate::Shared;
use crate::connection::Reply;
use crate::nfs_args::{self, MknodWhat, NfsArguments, procedure};
use crate::rpc::{self, AcceptStatus};
use crate::xdr::{XdrWrite, padded_length};

/// FSINFO rtmult/wtmult: the store's block size.
const IO_MULTIPLE_BYTES: u32 = 8192;
/// FSINFO dtpref.
const READDIR_PREFERRED_BYTES: u32 = 64 * 1024;
/// PATHCONF linkmax.
const LINK_COUNT_MAX: u32 = u32::MAX - 1;
/// Most entries asked of the store for one READDIR page.
const READDIR_ENTRIES_MAX: usize = 4096;
/// Most entries asked of the store for one READDIRPLUS page (each carries attributes).
const READDIRPLUS_ENTRIES_MAX: usize = 1024;
/// Most store calls to fill one READDIR or READDIRPLUS reply.
const READDIR_STORE_CALLS_MAX: usize = 8;

/// XDR size of fattr3.
const FATTR3_BYTES: usize = 84;
/// XDR size of a post_op_attr holding attributes.
const POST_OP_ATTR_BYTES: usize = 4 + FATTR3_BYTES;
/// XDR size of a post_op_fh3 holding a version-1 handle.
const POST_OP_HANDLE_BYTES: usize = 4 + 4 + cairn_types::FILE_HANDLE_LEN;

/// Maps a store error to its NFSv3 status. The only place this mapping exists.
pub fn nfs_status(error: &StoreError) -> nfsstat3 {
    match error {
        StoreError::NotFound => nfsstat3::NFS3ERR_NOENT,
        StoreError::Stale(_) => nfsstat3::NFS3ERR_STALE,
        StoreError::Exists => nfsstat3::NFS3ERR_EXIST,
        StoreError::NotDirectory => nfsstat3::NFS3ERR_NOTDIR,
        StoreError::IsDirectory => nfsstat3::NFS3ERR_ISDIR,
        StoreError::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        StoreError::AccessDenied => nfsstat3::NFS3ERR_ACCES,
        StoreError::NotOwner => nfsstat3::NFS3ERR_PERM,
        StoreError::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        StoreError::Invalid(_) => nfsstat3::NFS3ERR_INVAL,
        StoreError::FileTooLarge => nfsstat3::NFS3ERR_FBIG,
        StoreError::NoSpace => nfsstat3::NFS3ERR_NOSPC,
        StoreError::NotSync => nfsstat3::NFS3ERR_NOT_SYNC,
        StoreError::NotSupported(_) => nfsstat3::NFS3ERR_NOTSUPP,
        StoreError::CrossVolume => nfsstat3::NFS3ERR_XDEV,
        StoreError::QuotaExceeded => nfsstat3::NFS3ERR_DQUOT,
        // The client retries later (RFC 1813 section 2.6: "the server initiated the request, but
        // was not able to complete it in a timely fashion").
        StoreError::NotMaster | StoreError::Unavailable(_) => {
            tracing::warn!(%error, "volume unavailable answered with NFS3ERR_JUKEBOX");
            nfsstat3::NFS3ERR_JUKEBOX
        }
        StoreError::Corrupt { .. } | StoreError::BadBlock(_) | StoreError::Poisoned(_) => {
            tracing::error!(%error, "store failure answered with NFS3ERR_IO");
            nfsstat3::NFS3ERR_IO
        }
        StoreError::Io(_) => {
            tracing::warn!(%error, "store I/O error answered with NFS3ERR_IO");
            nfsstat3::NFS3ERR_IO
        }
    }
}

/// The shape of a procedure's failure result after its status (RFC 1813 section 3.3): how many
/// XDR words of "no attributes" it needs.
fn empty_failure_words(procedure_number: u32) -> usize {
    use procedure::*;
    match procedure_number {
        GETATTR => 0,
        LOOKUP | ACCESS | READLINK | READ | READDIR | READDIRPLUS | FSSTAT | FSINFO | PATHCONF => 1,
        SETATTR | WRITE | CREATE | MKDIR | SYMLINK | MKNOD | REMOVE | RMDIR | COMMIT => 2,
        LINK => 3,
        RENAME => 4,
        _ => 0,
    }
}

/// A complete reply for `procedure_number` failing with `status` and no attributes at all: for
/// refusals decided before the arguments are looked at (exports, read-only).
pub fn failure_reply(xid: u32, procedure_number: u32, status: nfsstat3) -> Vec<u8> {
    let words = empty_failure_words(procedure_number);
    let mut out = Vec::with_capacity(rpc::SUCCESS_HEADER_BYTES + 4 + 4 * words);
    rpc::begin_accepted_reply(&mut out, xid, AcceptStatus::Success);
    out.put(&status);
    for _ in 0..words {
        out.put_u32(0);
    }
    rpc::finish_record(&mut out, 0);
    out
}

/// Executes one NFSv3 call whose header is already checked and returns the whole reply.
pub fn execute(
    shared: &Shared,
    caller: &Caller,
    read_only: bool,
    xid: u32,
    procedure_number: u32,
    arguments: &[u8],
) -> Reply {
    let (arguments, out, status_at, started) = match begin(xid, procedure_number, arguments) {
        Ok(begun) => begun,
        Err(reply) => return reply,
    };
    let written_bytes = match &arguments {
        NfsArguments::Write { data, .. } => data.len() as u64,
        _ => 0,
    };
    let mut request = Request { shared, caller, read_only, out };
    let payload = request.run(arguments);
    finish_reply(request.out, status_at, procedure_number, started, written_bytes, payload)
}

/// The procedures that change something, started in two steps so that the caller need not wait
/// for the store: [`start_change`] checks the arguments (and answers at once when they fail),
/// the store makes the change, then [`PendingChange::finish`] encodes its result. [`execute`]
/// runs the same steps in one go.
pub enum Started {
    Reply(Reply),
    Change(Change, PendingChange),
}

/// A change handed to the store, and how to answer once it is made.
pub struct PendingChange {
    xid: u32,
    procedure_number: u32,
    read_only: bool,
    started: Instant,
    finish: Finish,
}

/// How a change's result is encoded: the objects whose attributes a failure reports.
enum Finish {
    /// CREATE, MKDIR, SYMLINK, MKNOD.
    Created {
        directory: Fid,
    },
    /// REMOVE, RMDIR, SETATTR.
    Wcc {
        fid: Fid,
    },
    Renamed {
        from: Fid,
        to: Fid,
    },
    Linked {
        file: Fid,
        directory: Fid,
    },
}

/// Step one for a procedure that [`nfs_args::is_change`]: the change to make, or the whole
/// reply when the arguments are wrong.
pub fn start_change(
    shared: &Shared,
    caller: &Caller,
    read_only: bool,
    xid: u32,
    procedure_number: u32,
    arguments: &[u8],
) -> Started {
    let (arguments, out, status_at, started) = match begin(xid, procedure_number, arguments) {
        Ok(begun) => begun,
        Err(reply) => return Started::Reply(reply),
    };
    let mut request = Request { shared, caller, read_only, out };
    match request.prepare_change(arguments) {
        Some((change, finish)) => {
            Started::Change(change, PendingChange { xid, procedure_number, read_only, started, finish })
        }
        None => Started::Reply(finish_reply(request.out, status_at, procedure_number, started, 0, None)),
    }
}

impl PendingChange {
    /// Step two: the reply, once the store has answered.
    pub fn finish(self, shared: &Shared, caller: &Caller, result: Result<Changed, StoreError>) -> Reply {
        let mut out = Vec::with_capacity(256);
        rpc::begin_accepted_reply(&mut out, self.xid, AcceptStatus::Success);
        let status_at = out.len();
        let mut request = Request { shared, caller, read_only: self.read_only, out };
        request.finish_change(self.finish, result.map_err(|error| nfs_status(&error)));
        finish_reply(request.out, status_at, self.procedure_number, self.started, 0, None)
    }
}

/// Decodes a call's arguments and starts its reply: (arguments, reply so far, where the status
/// goes, when the call started); the GARBAGE_ARGS reply when they do not decode.
fn begin(
    xid: u32,
    procedure_number: u32,
    arguments: &[u8],
) -> Result<(NfsArguments<'_>, Vec<u8>, usize, Instant), Reply> {
    let started = Instant::now();
    let Ok(arguments) = nfs_args::decode(procedure_number, arguments) else {
        cairn_metrics::nfs_request(procedure_name(procedure_number), "GARBAGE_ARGS", started.elapsed());
        return Err(Reply::new(rpc::accepted_reply(xid, AcceptStatus::GarbageArguments)));
    };
    let mut out = Vec::with_capacity(reply_capacity(&arguments));
    rpc::begin_accepted_reply(&mut out, xid, AcceptStatus::Success);
    let status_at = out.len();
    Ok((arguments, out, status_at, started))
}

/// Ends a reply whose result was written after `status_at`: metrics, record mark.
fn finish_reply(
    mut out: Vec<u8>,
    status_at: usize,
    procedure_number: u32,
    started: Instant,
    written_bytes: u64,
    payload: Option<Vec<u8>>,
) -> Reply {
    let name = procedure_name(procedure_number);
    // Every procedure's result starts with its nfsstat3 (NULL has none: it always succeeds).
    let status = out
        .get(status_at..status_at + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u32::from_be_bytes);
    cairn_metrics::nfs_request(name, status_name(status), started.elapsed());
    if status == 0 {
        let read_bytes = match procedure_number {
            procedure::READ => payload.as_ref().map_or(0, |payload| payload.len() as u64),
            _ => 0,
        };
        cairn_metrics::nfs_read_bytes(read_bytes);
        cairn_metrics::nfs_written_bytes(written_bytes);
    }
    let payload_bytes = payload.as_ref().map_or(0, |payload| padded_length(payload.len()).unwrap_or(0));
    rpc::finish_record(&mut out, payload_bytes);
    Reply { head: out, payload: payload.unwrap_or_default() }
}

/// The procedure's name, as a metrics label.
fn procedure_name(number: u32) -> &'static str {
    const NAMES: [&str; 22] = [
        "NULL",
        "GETATTR",
        "SETATTR",
        "LOOKUP",
        "ACCESS",
        "READLINK",
        "READ",
        "WRITE",
        "CREATE",
        "MKDIR",
        "SYMLINK",
        "MKNOD",
        "REMOVE",
        "RMDIR",
        "RENAME",
        "LINK",
        "READDIR",
        "READDIRPLUS",
        "FSSTAT",
        "FSINFO",
        "PATHCONF",
        "COMMIT",
    ];
    usize::try_from(number).ok().and_then(|index| NAMES.get(index)).copied().unwrap_or("UNKNOWN")
}

/// An nfsstat3's name (RFC 1813 section 2.6), `ok` for NFS3_OK, as a metrics label.
fn status_name(status: u32) -> &'static str {
    match status {
        0 => "ok",
        1 => "NFS3ERR_PERM",
        2 => "NFS3ERR_NOENT",
        5 => "NFS3ERR_IO",
        6 => "NFS3ERR_NXIO",
        13 => "NFS3ERR_ACCES",
        17 => "NFS3ERR_EXIST",
        18 => "NFS3ERR_XDEV",
        19 => "NFS3ERR_NODEV",
        20 => "NFS3ERR_NOTDIR",
        21 => "NFS3ERR_ISDIR",
        22 => "NFS3ERR_INVAL",
        27 => "NFS3ERR_FBIG",
        28 => "NFS3ERR_NOSPC",
        30 => "NFS3ERR_ROFS",
        31 => "NFS3ERR_MLINK",
        63 => "NFS3ERR_NAMETOOLONG",
        66 => "NFS3ERR_NOTEMPTY",
        69 => "NFS3ERR_DQUOT",
        70 => "NFS3ERR_STALE",
        71 => "NFS3ERR_REMOTE",
        10001 => "NFS3ERR_BADHANDLE",
        10002 => "NFS3ERR_NOT_SYNC",
        10003 => "NFS3ERR_BAD_COOKIE",
        10004 => "NFS3ERR_NOTSUPP",
        10005 => "NFS3ERR_TOOSMALL",
        10006 => "NFS3ERR_SERVERFAULT",
        10007 => "NFS3ERR_BADTYPE",
        10008 => "NFS3ERR_JUKEBOX",
        _ => "other",
    }
}

fn reply_capacity(arguments: &NfsArguments<'_>) -> usize {
    match arguments {
        NfsArguments::ReadDir { count, .. } => (*count as usize).min(64 * 1024) + 128,
        NfsArguments::ReadDirPlus { maxcount, .. } => (*maxcount as usize).min(256 * 1024) + 128,
        NfsArguments::ReadLink { .. } => 512,
        _ => 256,
    }
}

struct Request<'a> {
    shared: &'a Shared,
    caller: &'a Caller,
    read_only: bool,
    out: Vec<u8>,
}

impl Request<'_> {
    /// Runs the procedure, writing its status and results; returns the READ payload, sent after
    /// `out` without being copied.
    fn run(&mut self, arguments: NfsArguments<'_>) -> Option<Vec<u8>> {
        match arguments {
            NfsArguments::Null => {}
            NfsArguments::GetAttr { object } => self.getattr(object),
            NfsArguments::Lookup { directory, name } => self.lookup(directory, name),
            NfsArguments::Access { object, access } => self.access(object, access),
            NfsArguments::ReadLink { object } => match self.fid(object) {
                Ok(fid) => match self.store().readlink(self.caller, fid) {
                    Ok((target, attributes)) => {
                        self.ok();
                        self.post_op(Some(&attributes));
                        self.out.put_opaque(&target);
                    }
                    Err(error) => self.fail_post_op(nfs_status(&error), Some(fid)),
                },
                Err(status) => self.fail_post_op(status, None),
            },
            NfsArguments::Read { file, offset, count } => return self.read(file, offset, count),
            NfsArguments::Write { file, offset, stable, data } => self.write(file, offset, stable, data),
            arguments @ (NfsArguments::SetAttr { .. }
            | NfsArguments::Create { .. }
            | NfsArguments::MkDir { .. }
            | NfsArguments::Symlink { .. }
            | NfsArguments::MkNod { .. }
            | NfsArguments::Remove { .. }
            | NfsArguments::RmDir { .. }
            | NfsArguments::Rename { .. }
            | NfsArguments::Link { .. }) => {
                if let Some((change, finish)) = self.prepare_change(arguments) {
                    let result = self.store().change(change).map_err(|error| nfs_status(&error));
                    self.finish_change(finish, result);
                }
            }
            NfsArguments::ReadDir { directory, cookie, count } => {
                self.readdir(directory, cookie, ReaddirLimits::plain(count))
            }
            NfsArguments::ReadDirPlus { directory, cookie, dircount, maxcount } => {
                self.readdir(directory, cookie, ReaddirLimits::plus(dircount, maxcount))
            }
            NfsArguments::FsStat { root } => self.fsstat(root),
            NfsArguments::FsInfo { root } => self.fsinfo(root),
            NfsArguments::PathConf { object } => self.pathconf(object),
            NfsArguments::Commit { file, offset, count } => match self.fid(file) {
                Ok(fid) => match self.store().commit(fid, offset, count) {
                    Ok(result) => {
                        self.ok();
                        self.wcc(&result.file);
                        self.out.put(&writeverf3(result.verifier.0));
                    }
                    Err(error) => self.fail_wcc(nfs_status(&error), Some(fid)),
                },
                Err(status) => self.fail_wcc(status, None),
            },
        }
        None
    }

    fn store(&self) -> &dyn cairn_store::FileSystem {
        &*self.shared.store
    }

    /// Resolves a handle from the wire: BADHANDLE when it does not decode, STALE when it names
    /// another cluster or volume.
    fn fid(&self, handle: &[u8]) -> Result<Fid, nfsstat3> {
        self.shared.fid_of(handle)
    }

    fn ok(&mut self) {
        self.out.put(&nfsstat3::NFS3_OK);
    }

    fn post_op(&mut self, attributes: Option<&Attributes>) {
        self.out.put(&post_op_attr_of(attributes));
    }

    fn wcc(&mut self, wcc: &WccData) {
        self.out.put(&wcc_data_of(wcc));
    }

    fn put_handle(&mut self, fid: Fid) {
        self.out.put_opaque(&self.shared.handle_of(fid).encode());
    }

    /// Attributes after a failed operation, fetched separately: fine for post-op attributes
    /// (they only have to be current), never used as pre-op attributes.
    fn attributes_after_failure(&self, fid: Option<Fid>) -> Option<Attributes> {
        fid.and_then(|fid| self.store().getattr(fid).ok())
    }

    fn fail_post_op(&mut self, status: nfsstat3, fid: Option<Fid>) {
        let attributes = self.attributes_after_failure(fid);
        self.out.put(&status);
        self.post_op(attributes.as_ref());
    }

    /// A failure whose result is one wcc_data: no pre-op attributes (they could not be taken
    /// atomically with an operation that did not happen), current post-op attributes.
    fn fail_wcc(&mut self, status: nfsstat3, fid: Option<Fid>) {
        let attributes = self.attributes_after_failure(fid);
        self.out.put(&status);
        self.wcc(&WccData { before: None, after: attributes });
    }

    fn getattr(&mut self, object: &[u8]) {
        let result =
            self.fid(object).and_then(|fid| self.store().getattr(fid).map_err(|error| nfs_status(&error)));
        match result {
            Ok(attributes) => {
                self.ok();
                self.out.put(&fattr3_of(&attributes));
            }
            Err(status) => self.out.put(&status),
        }
    }

    fn lookup(&mut self, directory: &[u8], name: &[u8]) {
        let directory = match self.fid(directory) {
            Ok(fid) => fid,
            Err(status) => return self.fail_post_op(status, None),
        };
        if name.len() > NAME_LENGTH_BYTES_MAX {
            return self.fail_post_op(nfsstat3::NFS3ERR_NAMETOOLONG, Some(directory));
        }
        match self.store().lookup(self.caller, directory, name) {
            Ok(found) => {
                self.ok();
                self.put_handle(found.fid);
                self.post_op(Some(&found.attributes));
                self.post_op(Some(&found.directory));
            }
            Err(error) => self.fail_post_op(nfs_status(&error), Some(directory)),
        }
    }

    fn access(&mut self, object: &[u8], requested: u32) {
        let fid = match self.fid(object) {
            Ok(fid) => fid,
            Err(status) => return self.fail_post_op(status, None),
        };
        match self.store().access(self.caller, fid, requested) {
            Ok((mut granted, attributes)) => {
                if self.read_only {
                    granted &= !(access::MODIFY | access::EXTEND | access::DELETE);
                }
                self.ok();
                self.post_op(Some(&attributes));
                self.out.put_u32(granted & requested);
            }
            Err(error) => self.fail_post_op(nfs_status(&error), Some(fid)),
        }
    }

    fn read(&mut self, file: &[u8], offset: u64, count: u32) -> Option<Vec<u8>> {
        let fid = match self.fid(file) {
            Ok(fid) => fid,
            Err(status) => {
                self.fail_post_op(status, None);
                return None;
            }
        };
        match self.store().read(self.caller, fid, offset, count.min(IO_SIZE_BYTES_MAX)) {
            Ok(result) => {
                self.ok();
                self.post_op(Some(&result.attributes));
                // The store never returns more than asked, so the length fits in u32.
                let length = result.data.len() as u32;
                self.out.put_u32(length);
                self.out.put_bool(result.eof);
                self.out.put_u32(length);
                Some(result.data)
            }
            Err(error) => {
                self.fail_post_op(nfs_status(&error), Some(fid));
                None
            }
        }
    }

    fn write(&mut self, file: &[u8], offset: u64, stable: Stability, data: &[u8]) {
        let fid = match self.fid(file) {
            Ok(fid) => fid,
            Err(status) => return self.fail_wcc(status, None),
        };
        match self.store().write(self.caller, fid, offset, data, stable) {
            Ok(result) => {
                self.ok();
                self.wcc(&result.file);
                self.out.put_u32(result.count_bytes);
                self.out.put(&stable_how_of(result.committed));
                self.out.put(&writeverf3(result.verifier.0));
            }
            Err(error) => self.fail_wcc(nfs_status(&error), Some(fid)),
        }
    }

    /// The change a changing procedure asks for, and how to encode its result; `None` when the
    /// arguments fail (the failure is encoded).
    fn prepare_change(&mut self, arguments: NfsArguments<'_>) -> Option<(Change, Finish)> {
        let caller = self.caller.clone();
        match arguments {
            NfsArguments::SetAttr { object, attributes, guard_ctime } => match self.fid(object) {
                Ok(fid) => Some((
                    Change::Setattr { caller, fid, changes: attributes, guard_ctime },
                    Finish::Wcc { fid },
                )),
                Err(status) => {
                    self.fail_wcc(status, None);
                    None
                }
            },
            NfsArguments::Create { directory, name, how } => {
                self.prepare_creation(directory, name, |directory, name| Change::Create {
                    caller,
                    directory,
                    name,
                    how,
                })
            }
            NfsArguments::MkDir { directory, name, attributes } => {
                self.prepare_creation(directory, name, |directory, name| Change::Mkdir {
                    caller,
                    directory,
                    name,
                    attributes,
                })
            }
            NfsArguments::Symlink { directory, name, attributes, target } => {
                self.prepare_creation(directory, name, |directory, name| Change::Symlink {
                    caller,
                    directory,
                    name,
                    target: target.to_vec(),
                    attributes,
                })
            }
            NfsArguments::MkNod { directory, name, what } => match what {
                MknodWhat::Special(kind, attributes) => {
                    self.prepare_creation(directory, name, |directory, name| Change::Mknod {
                        caller,
                        directory,
                        name,
                        kind,
                        attributes,
                    })
                }
                MknodWhat::BadType => {
                    let fid = self.fid(directory).ok();
                    self.fail_wcc(nfsstat3::NFS3ERR_BADTYPE, fid);
                    None
                }
            },
            NfsArguments::Remove { directory, name } => match self.fid(directory) {
                Ok(fid) => Some((
                    Change::Remove { caller, directory: fid, name: name.to_vec() },
                    Finish::Wcc { fid },
                )),
                Err(status) => {
                    self.fail_wcc(status, None);
                    None
                }
            },
            NfsArguments::RmDir { directory, name } => match self.fid(directory) {
                Ok(fid) => {
                    Some((Change::Rmdir { caller, directory: fid, name: name.to_vec() }, Finish::Wcc { fid }))
                }
                Err(status) => {
                    self.fail_wcc(status, None);
                    None
                }
            },
            NfsArguments::Rename { from_directory, from_name, to_directory, to_name } => {
                let fids = self.fid(from_directory).and_then(|from| Ok((from, self.fid(to_directory)?)));
                let (from, to) = match fids {
                    Ok(fids) => fids,
                    Err(status) => {
                        self.out.put(&status);
                        self.wcc(&WccData { before: None, after: None });
                        self.wcc(&WccData { before: None, after: None });
                        return None;
                    }
                };
                let finish = Finish::Renamed { from, to };
                if let Err(status) = check_new_name(to_name) {
                    self.finish_change(finish, Err(status));
                    return None;
                }
                let change = Change::Rename {
                    caller,
                    from_directory: from,
                    from_name: from_name.to_vec(),
                    to_directory: to,
                    to_name: to_name.to_vec(),
                };
                Some((change, finish))
            }
            NfsArguments::Link { file, directory, name } => {
                let fids = self.fid(file).and_then(|file| Ok((file, self.fid(directory)?)));
                let (file, directory) = match fids {
                    Ok(fids) => fids,
                    Err(status) => {
                        self.out.put(&status);
                        self.post_op(None);
                        self.wcc(&WccData { before: None, after: None });
                        return None;
                    }
                };
                let finish = Finish::Linked { file, directory };
                if let Err(status) = check_new_name(name) {
                    self.finish_change(finish, Err(status));
                    return None;
                }
                Some((Change::Link { caller, fid: file, directory, name: name.to_vec() }, finish))
            }
            _ => {
                // Not a change: a bug in the caller.
                tracing::error!("prepare_change called for a procedure that changes nothing");
                self.out.put(&nfsstat3::NFS3ERR_SERVERFAULT);
                None
            }
        }
    }

    /// CREATE, MKDIR, SYMLINK and MKNOD: the same arguments checks.
    fn prepare_creation(
        &mut self,
        directory: &[u8],
        name: &[u8],
        change: impl FnOnce(Fid, Vec<u8>) -> Change,
    ) -> Option<(Change, Finish)> {
        let directory = match self.fid(directory) {
            Ok(fid) => fid,
            Err(status) => {
                self.fail_wcc(status, None);
                return None;
            }
        };
        if let Err(status) = check_new_name(name) {
            self.fail_wcc(status, Some(directory));
            return None;
        }
        Some((change(directory, name.to_vec()), Finish::Created { directory }))
    }

    /// Encodes a change's result. Failures report the current attributes of the objects
    /// involved, fetched separately (see [`Request::attributes_after_failure`]).
    fn finish_change(&mut self, finish: Finish, result: Result<Changed, nfsstat3>) {
        match (finish, result) {
            (Finish::Created { .. }, Ok(Changed::Created(created))) => {
                self.ok();
                self.out.put_bool(true);
                self.put_handle(created.fid);
                self.post_op(Some(&created.attributes));
                self.wcc(&created.directory);
            }
            (Finish::Created { directory: fid } | Finish::Wcc { fid }, Err(status)) => {
                self.fail_wcc(status, Some(fid));
            }
            (Finish::Wcc { .. }, Ok(Changed::Wcc(wcc))) => {
                self.ok();
                self.wcc(&wcc);
            }
            (Finish::Renamed { .. }, Ok(Changed::Renamed(renamed))) => {
                self.ok();
                self.wcc(&renamed.from_directory);
                self.wcc(&renamed.to_directory);
            }
            (Finish::Renamed { from, to }, Err(status)) => {
                let from_after = self.attributes_after_failure(Some(from));
                let to_after = if to == from { from_after } else { self.attributes_after_failure(Some(to)) };
                self.out.put(&status);
                self.wcc(&WccData { before: None, after: from_after });
                self.wcc(&WccData { before: None, after: to_after });
            }
            (Finish::Linked { .. }, Ok(Changed::Linked(linked))) => {
                self.ok();
                self.post_op(Some(&linked.file));
                self.wcc(&linked.directory);
            }
            (Finish::Linked { file, directory }, Err(status)) => {
                let file_after = self.attributes_after_failure(Some(file));
                let directory_after = self.attributes_after_failure(Some(directory));
                self.out.put(&status);
                self.post_op(file_after.as_ref());
                self.wcc(&WccData { before: None, after: directory_after });
            }
            (finish, Ok(_)) => {
                // The file system answered with another kind of result: a bug.
                tracing::error!("a change was answered with the result of another kind of change");
                self.finish_change(finish, Err(nfsstat3::NFS3ERR_SERVERFAULT));
            }
        }
    }

    fn readdir(&mut self, directory: &[u8], cookie: u64, limits: ReaddirLimits) {
        let fid = match self.fid(directory) {
            Ok(fid) => fid,
            Err(status) => return self.fail_post_op(status, None),
        };
        let start = self.out.len();
        // status + post_op_attr + cookieverf3 + end of list + eof.
        let fixed_bytes = 4 + POST_OP_ATTR_BYTES + 8 + 4 + 4;
        if limits.reply_bytes_max < fixed_bytes {
            return self.fail_post_op(nfsstat3::NFS3ERR_TOOSMALL, Some(fid));
        }
        let mut reply_bytes = fixed_bytes;
        let mut directory_bytes = 0usize;
        let mut next_cookie = cookie;
        let mut entries_written = 0usize;
        let mut eof = false;
        for call in 0..READDIR_STORE_CALLS_MAX {
            let entries_max = limits.entries_to_ask(reply_bytes, directory_bytes);
            let page: DirectoryPage =
                match self.store().readdir(self.caller, fid, next_cookie, entries_max, limits.plus) {
                    Ok(page) => page,
                    Err(error) if call == 0 => return self.fail_post_op(nfs_status(&error), Some(fid)),
                    // A later page failed (the directory went away meanwhile): send what fits so far.
                    Err(_) => break,
                };
            if call == 0 {
                self.ok();
                self.post_op(Some(&page.directory));
                // cookieverf3: always zero; any verifier is accepted (cookies are stateless).
                self.out.put_u64(0);
            }
            let mut all_fit = true;
            for entry in &page.entries {
                let name_bytes = 4 + padded_length(entry.name.len()).unwrap_or(usize::MAX / 2);
                let entry_bytes = if limits.plus {
                    let attributes_bytes = if entry.attributes.is_some() { POST_OP_ATTR_BYTES } else { 4 };
                    4 + 8 + name_bytes + 8 + attributes_bytes + POST_OP_HANDLE_BYTES
                } else {
                    4 + 8 + name_bytes + 8
                };
                let entry_directory_bytes = 8 + name_bytes + 8;
                if reply_bytes + entry_bytes > limits.reply_bytes_max
                    || (limits.plus && directory_bytes + entry_directory_bytes > limits.directory_bytes_max)
                {
                    all_fit = false;
                    break;
                }
                reply_bytes += entry_bytes;
                directory_bytes += entry_directory_bytes;
                self.out.put_bool(true);
                self.out.put_u64(entry.fileid);
                self.out.put_opaque(&entry.name);
                self.out.put_u64(entry.cookie);
                if limits.plus {
                    self.post_op(entry.attributes.as_ref());
                    self.out.put_bool(true);
                    self.put_handle(entry.fid);
                }
                entries_written += 1;
                next_cookie = entry.cookie;
            }
            if !all_fit {
                break;
            }
            if page.eof {
                eof = true;
                break;
            }
            if page.entries.is_empty() || limits.is_full(reply_bytes, directory_bytes) {
                break;
            }
        }
        if entries_written == 0 && !eof {
            self.out.truncate(start);
            // Either not even one entry fits, or the store made no progress.
            return self.fail_post_op(nfsstat3::NFS3ERR_TOOSMALL, Some(fid));
        }
        self.out.put_bool(false);
        self.out.put_bool(eof);
    }

    fn fsstat(&mut self, root: &[u8]) {
        let fid = match self.fid(root) {
            Ok(fid) => fid,
            Err(status) => return self.fail_post_op(status, None),
        };
        let attributes = match self.store().getattr(fid) {
            Ok(attributes) => attributes,
            Err(error) => return self.fail_post_op(nfs_status(&error), None),
        };
        match self.store().fsstat() {
            Ok(statistics) => {
                self.ok();
                self.post_op(Some(&attributes));
                self.out.put_u64(statistics.total_bytes);
                self.out.put_u64(statistics.free_bytes);
                self.out.put_u64(statistics.available_bytes);
                self.out.put_u64(statistics.total_files);
                self.out.put_u64(statistics.free_files);
                self.out.put_u64(statistics.available_files);
                // invarsec: the values change all the time.
                self.out.put_u32(0);
            }
            Err(error) => {
                self.out.put(&nfs_status(&error));
                self.post_op(Some(&attributes));
            }
        }
    }

    /// The attributes of the object a handle names, or the status to answer.
    fn attributes_of(&self, handle: &[u8]) -> Result<Attributes, nfsstat3> {
        let fid = self.fid(handle)?;
        self.store().getattr(fid).map_err(|error| nfs_status(&error))
    }

    fn fsinfo(&mut self, root: &[u8]) {
        let attributes = match self.attributes_of(root) {
            Ok(attributes) => attributes,
            Err(status) => return self.fail_post_op(status, None),
        };
        self.ok();
        self.post_op(Some(&attributes));
        self.out.put_u32(IO_SIZE_BYTES_MAX); // rtmax
        self.out.put_u32(IO_SIZE_BYTES_MAX); // rtpref
        self.out.put_u32(IO_MULTIPLE_BYTES); // rtmult
        self.out.put_u32(IO_SIZE_BYTES_MAX); // wtmax
        self.out.put_u32(IO_SIZE_BYTES_MAX); // wtpref
        self.out.put_u32(IO_MULTIPLE_BYTES); // wtmult
        self.out.put_u32(READDIR_PREFERRED_BYTES); // dtpref
        self.out.put_u64(FILE_SIZE_BYTES_MAX); // maxfilesize
        self.out.put(&nfstime3 { seconds: 0, nseconds: 1 }); // time_delta
        self.out.put_u32(FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME);
    }

    fn pathconf(&mut self, object: &[u8]) {
        let attributes = match self.attributes_of(object) {
            Ok(attributes) => attributes,
            Err(status) => return self.fail_post_op(status, None),
        };
        self.ok();
        self.post_op(Some(&attributes));
        self.out.put_u32(LINK_COUNT_MAX);
        self.out.put_u32(NAME_LENGTH_BYTES_MAX as u32);
        self.out.put_bool(true); // no_trunc
        self.out.put_bool(true); // chown_restricted
        self.out.put_bool(false); // case_insensitive
        self.out.put_bool(true); // case_preserving
    }
}

/// Names a new directory entry may have: not empty, not `.` or `..`, no `/` or NUL, at most
/// [`NAME_LENGTH_BYTES_MAX`] bytes.
fn check_new_name(name: &[u8]) -> Result<(), nfsstat3> {
    if name.len() > NAME_LENGTH_BYTES_MAX {
        return Err(nfsstat3::NFS3ERR_NAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    if name.iter().any(|&byte| byte == b'/' || byte == 0) {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    Ok(())
}

/// How much a READDIR (`count`) or READDIRPLUS (`dircount`, `maxcount`) reply may hold.
#[derive(Clone, Copy)]
struct ReaddirLimits {
    plus: bool,
    /// Bytes of the whole result (status included).
    reply_bytes_max: usize,
    /// READDIRPLUS: bytes of fileids, names and cookies.
    directory_bytes_max: usize,
}

impl ReaddirLimits {
    fn plain(count: u32) -> ReaddirLimits {
        ReaddirLimits { plus: false, reply_bytes_max: count as usize, directory_bytes_max: usize::MAX }
    }

    fn plus(dircount: u32, maxcount: u32) -> ReaddirLimits {
        // Clients send dircount 0 to mean "no separate limit" (RFC 1813 leaves it a hint).
        let directory_bytes_max = if dircount == 0 { usize::MAX } else { dircount as usize };
        ReaddirLimits { plus: true, reply_bytes_max: maxcount as usize, directory_bytes_max }
    }

    /// How many entries to ask the store for, estimated from the space left and small names.
    fn entries_to_ask(&self, reply_bytes: usize, directory_bytes: usize) -> usize {
        let reply_left = self.reply_bytes_max.saturating_sub(reply_bytes);
        if self.plus {
            let directory_left = self.directory_bytes_max.saturating_sub(directory_bytes);
            let by_reply = reply_left / (4 + 8 + 12 + 8 + POST_OP_ATTR_BYTES + POST_OP_HANDLE_BYTES);
            let by_directory = directory_left / (8 + 12 + 8);
            (by_reply.min(by_directory) + 1).min(READDIRPLUS_ENTRIES_MAX)
        } else {
            (reply_left / (4 + 8 + 12 + 8) + 1).min(READDIR_ENTRIES_MAX)
        }
    }

    /// No room left for even a one-byte name.
    fn is_full(&self, reply_bytes: usize, directory_bytes: usize) -> bool {
        let smallest_entry = if self.plus { 4 + 8 + 8 + 8 + 4 + POST_OP_HANDLE_BYTES } else { 4 + 8 + 8 + 8 };
        reply_bytes + smallest_entry > self.reply_bytes_max
            || (self.plus && directory_bytes + 8 + 8 + 8 > self.directory_bytes_max)
    }
}

fn nfstime_of(time: Timestamp) -> nfstime3 {
    nfstime3 { seconds: time.seconds, nseconds: time.nanoseconds }
}

pub fn fattr3_of(attributes: &Attributes) -> fattr3 {
    let type_ = match attributes.kind {
        FileKind::Regular => ftype3::NF3REG,
        FileKind::Directory => ftype3::NF3DIR,
        FileKind::Symlink => ftype3::NF3LNK,
        FileKind::BlockDevice => ftype3::NF3BLK,
        FileKind::CharDevice => ftype3::NF3CHR,
        FileKind::Socket => ftype3::NF3SOCK,
        FileKind::Fifo => ftype3::NF3FIFO,
    };
    fattr3 {
        type_,
        mode: attributes.mode & 0o7777,
        nlink: attributes.nlink,
        uid: attributes.uid,
        gid: attributes.gid,
        size: attributes.size_bytes,
        used: attributes.used_bytes,
        rdev: specdata3 { specdata1: attributes.rdev.0, specdata2: attributes.rdev.1 },
        fsid: attributes.fsid,
        fileid: attributes.fileid,
        atime: nfstime_of(attributes.atime),
        mtime: nfstime_of(attributes.mtime),
        ctime: nfstime_of(attributes.ctime),
    }
}

fn post_op_attr_of(attributes: Option<&Attributes>) -> post_op_attr {
    match attributes {
        Some(attributes) => Nfs3Option::Some(fattr3_of(attributes)),
        None => Nfs3Option::None,
    }
}

fn wcc_attr_of(before: &PreOpAttributes) -> wcc_attr {
    wcc_attr { size: before.size_bytes, mtime: nfstime_of(before.mtime), ctime: nfstime_of(before.ctime) }
}

fn wcc_data_of(wcc: &WccData) -> wcc_data {
    wcc_data {
        before: match &wcc.before {
            Some(before) => Nfs3Option::Some(wcc_attr_of(before)),
            None => Nfs3Option::None,
        },
        after: post_op_attr_of(wcc.after.as_ref()),
    }
}

fn stable_how_of(stability: Stability) -> stable_how {
    match stability {
        Stability::Unstable => stable_how::UNSTABLE,
        Stability::DataSync => stable_how::DATA_SYNC,
        Stability::FileSync => stable_how::FILE_SYNC,
    }
}

impl Shared {
    pub(crate) fn handle_of(&self, fid: Fid) -> FileHandle {
        FileHandle { cluster: self.cluster, volume: self.volume, fid }
    }

    pub(crate) fn fid_of(&self, handle: &[u8]) -> Result<Fid, nfsstat3> {
        let handle = FileHandle::decode(handle).map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?;
        if handle.cluster != self.cluster || handle.volume != self.volume {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok(handle.fid)
    }
}
