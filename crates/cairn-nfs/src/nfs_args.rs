//! Decoding of NFSv3 procedure arguments (RFC 1813 section 3.3) straight into store vocabulary.
//!
//! Every variable-length item borrows from the record: handles, names, symlink targets and the
//! WRITE payload are slices of the bytes read from the socket, never copies.

use cairn_store::{CreateHow, SetAttributes, SetTime, SpecialKind, Stability, Timestamp};

use crate::xdr::{XdrError, XdrReader, XdrResult};

/// RFC 1813 section 2.4: NFS3_FHSIZE, the largest handle on the wire.
pub const HANDLE_BYTES_WIRE_MAX: usize = 64;

/// NFSv3 procedure numbers (RFC 1813 section 3.3).
pub mod procedure {
    pub const NULL: u32 = 0;
    pub const GETATTR: u32 = 1;
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const ACCESS: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 6;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIR: u32 = 16;
    pub const READDIRPLUS: u32 = 17;
    pub const FSSTAT: u32 = 18;
    pub const FSINFO: u32 = 19;
    pub const PATHCONF: u32 = 20;
    pub const COMMIT: u32 = 21;
    /// The highest procedure number of NFSv3.
    pub const LAST: u32 = COMMIT;
}

/// Procedures that change the file system: refused on a read-only export.
pub fn is_modifying(procedure_number: u32) -> bool {
    use procedure::*;
    matches!(
        procedure_number,
        SETATTR | WRITE | CREATE | MKDIR | SYMLINK | MKNOD | REMOVE | RMDIR | RENAME | LINK
    )
}

/// Procedures whose retransmission must be answered from the duplicate request cache
/// (RFC 1813 section 4.5). WRITE is left out: rewriting the same bytes is harmless.
pub fn is_non_idempotent(procedure_number: u32) -> bool {
    is_change(procedure_number)
}

/// Procedures that are one [`cairn_store::Change`] each (all of them non-idempotent).
pub fn is_change(procedure_number: u32) -> bool {
    use procedure::*;
    matches!(procedure_number, SETATTR | CREATE | MKDIR | SYMLINK | MKNOD | REMOVE | RMDIR | RENAME | LINK)
}

/// What MKNOD asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MknodWhat {
    Special(SpecialKind, SetAttributes),
    /// NF3REG, NF3DIR, NF3LNK or an unknown type: NFS3ERR_BADTYPE.
    BadType,
}

/// The arguments of one NFSv3 call; handles are the raw bytes from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NfsArguments<'a> {
    Null,
    GetAttr { object: &'a [u8] },
    SetAttr { object: &'a [u8], attributes: SetAttributes, guard_ctime: Option<Timestamp> },
    Lookup { directory: &'a [u8], name: &'a [u8] },
    Access { object: &'a [u8], access: u32 },
    ReadLink { object: &'a [u8] },
    Read { file: &'a [u8], offset: u64, count: u32 },
    Write { file: &'a [u8], offset: u64, stable: Stability, data: &'a [u8] },
    Create { directory: &'a [u8], name: &'a [u8], how: CreateHow },
    MkDir { directory: &'a [u8], name: &'a [u8], attributes: SetAttributes },
    Symlink { directory: &'a [u8], name: &'a [u8], attributes: SetAttributes, target: &'a [u8] },
    MkNod { directory: &'a [u8], name: &'a [u8], what: MknodWhat },
    Remove { directory: &'a [u8], name: &'a [u8] },
    RmDir { directory: &'a [u8], name: &'a [u8] },
    Rename { from_directory: &'a [u8], from_name: &'a [u8], to_directory: &'a [u8], to_name: &'a [u8] },
    Link { file: &'a [u8], directory: &'a [u8], name: &'a [u8] },
    ReadDir { directory: &'a [u8], cookie: u64, count: u32 },
    ReadDirPlus { directory: &'a [u8], cookie: u64, dircount: u32, maxcount: u32 },
    FsStat { root: &'a [u8] },
    FsInfo { root: &'a [u8] },
    PathConf { object: &'a [u8] },
    Commit { file: &'a [u8], offset: u64, count: u32 },
}

/// Decodes the arguments of NFSv3 procedure `procedure_number`. Unknown procedures are an error
/// too (the dispatcher answers PROC_UNAVAIL before it gets here).
pub fn decode(procedure_number: u32, bytes: &[u8]) -> XdrResult<NfsArguments<'_>> {
    let mut r = XdrReader::new(bytes);
    let r = &mut r;
    let arguments = match procedure_number {
        procedure::NULL => NfsArguments::Null,
        procedure::GETATTR => NfsArguments::GetAttr { object: handle(r)? },
        procedure::SETATTR => NfsArguments::SetAttr {
            object: handle(r)?,
            attributes: set_attributes(r)?,
            guard_ctime: if r.bool()? { Some(time(r)?) } else { None },
        },
        procedure::LOOKUP => {
            let (directory, name) = dir_op(r)?;
            NfsArguments::Lookup { directory, name }
        }
        procedure::ACCESS => NfsArguments::Access { object: handle(r)?, access: r.u32()? },
        procedure::READLINK => NfsArguments::ReadLink { object: handle(r)? },
        procedure::READ => NfsArguments::Read { file: handle(r)?, offset: r.u64()?, count: r.u32()? },
        procedure::WRITE => {
            let file = handle(r)?;
            let offset = r.u64()?;
            let count = r.u32()? as usize;
            let stable = match r.u32()? {
                0 => Stability::Unstable,
                1 => Stability::DataSync,
                2 => Stability::FileSync,
                _ => return Err(XdrError),
            };
            let data = r.opaque(usize::MAX)?;
            // RFC 1813 section 3.3.7: count is the number of bytes in data. More data than count
            // is tolerated (the extra is ignored); less is a malformed call.
            if count > data.len() {
                return Err(XdrError);
            }
            NfsArguments::Write { file, offset, stable, data: &data[..count] }
        }
        procedure::CREATE => {
            let (directory, name) = dir_op(r)?;
            let how = match r.u32()? {
                0 => CreateHow::Unchecked(set_attributes(r)?),
                1 => CreateHow::Guarded(set_attributes(r)?),
                2 => {
                    let mut verifier = [0u8; 8];
                    verifier.copy_from_slice(r.fixed(8)?);
                    CreateHow::Exclusive(verifier)
                }
                _ => return Err(XdrError),
            };
            NfsArguments::Create { directory, name, how }
        }
        procedure::MKDIR => {
            let (directory, name) = dir_op(r)?;
            NfsArguments::MkDir { directory, name, attributes: set_attributes(r)? }
        }
        procedure::SYMLINK => {
            let (directory, name) = dir_op(r)?;
            let attributes = set_attributes(r)?;
            NfsArguments::Symlink { directory, name, attributes, target: r.opaque(usize::MAX)? }
        }
        procedure::MKNOD => {
            let (directory, name) = dir_op(r)?;
            let what = match r.u32()? {
                // NF3CHR, NF3BLK: devicedata3 = sattr3 + specdata3.
                kind @ (3 | 4) => {
                    let attributes = set_attributes(r)?;
                    let (major, minor) = (r.u32()?, r.u32()?);
                    let kind = if kind == 3 {
                        SpecialKind::BlockDevice { major, minor }
                    } else {
                        SpecialKind::CharDevice { major, minor }
                    };
                    MknodWhat::Special(kind, attributes)
                }
                6 => MknodWhat::Special(SpecialKind::Socket, set_attributes(r)?),
                7 => MknodWhat::Special(SpecialKind::Fifo, set_attributes(r)?),
                // The union's default arm is void.
                _ => MknodWhat::BadType,
            };
            NfsArguments::MkNod { directory, name, what }
        }
        procedure::REMOVE => {
            let (directory, name) = dir_op(r)?;
            NfsArguments::Remove { directory, name }
        }
        procedure::RMDIR => {
            let (directory, name) = dir_op(r)?;
            NfsArguments::RmDir { directory, name }
        }
        procedure::RENAME => {
            let (from_directory, from_name) = dir_op(r)?;
            let (to_directory, to_name) = dir_op(r)?;
            NfsArguments::Rename { from_directory, from_name, to_directory, to_name }
        }
        procedure::LINK => {
            let file = handle(r)?;
            let (directory, name) = dir_op(r)?;
            NfsArguments::Link { file, directory, name }
        }
        procedure::READDIR => {
            let directory = handle(r)?;
            let cookie = r.u64()?;
            // The cookie verifier is accepted whatever it is: cookies are stateless (wire.md).
            let _cookie_verifier = r.fixed(8)?;
            NfsArguments::ReadDir { directory, cookie, count: r.u32()? }
        }
        procedure::READDIRPLUS => {
            let directory = handle(r)?;
            let cookie = r.u64()?;
            let _cookie_verifier = r.fixed(8)?;
            NfsArguments::ReadDirPlus { directory, cookie, dircount: r.u32()?, maxcount: r.u32()? }
        }
        procedure::FSSTAT => NfsArguments::FsStat { root: handle(r)? },
        procedure::FSINFO => NfsArguments::FsInfo { root: handle(r)? },
        procedure::PATHCONF => NfsArguments::PathConf { object: handle(r)? },
        procedure::COMMIT => NfsArguments::Commit { file: handle(r)?, offset: r.u64()?, count: r.u32()? },
        _ => return Err(XdrError),
    };
    Ok(arguments)
}

fn handle<'a>(r: &mut XdrReader<'a>) -> XdrResult<&'a [u8]> {
    r.opaque(HANDLE_BYTES_WIRE_MAX)
}

/// diropargs3: a directory handle and a name. Names are bounded by the record only, so an
/// over-long name reaches the store and gets NFS3ERR_NAMETOOLONG instead of GARBAGE_ARGS.
fn dir_op<'a>(r: &mut XdrReader<'a>) -> XdrResult<(&'a [u8], &'a [u8])> {
    Ok((handle(r)?, r.opaque(usize::MAX)?))
}

fn time(r: &mut XdrReader<'_>) -> XdrResult<Timestamp> {
    Ok(Timestamp { seconds: r.u32()?, nanoseconds: r.u32()? })
}

fn set_time(r: &mut XdrReader<'_>) -> XdrResult<SetTime> {
    match r.u32()? {
        0 => Ok(SetTime::DontChange),
        1 => Ok(SetTime::ServerTime),
        2 => Ok(SetTime::ClientTime(time(r)?)),
        _ => Err(XdrError),
    }
}

/// sattr3 (RFC 1813 section 2.6).
fn set_attributes(r: &mut XdrReader<'_>) -> XdrResult<SetAttributes> {
    // Only permission, setuid, setgid and sticky bits are settable; file type bits are not.
    let mode = if r.bool()? { Some(r.u32()? & 0o7777) } else { None };
    let uid = if r.bool()? { Some(r.u32()?) } else { None };
    let gid = if r.bool()? { Some(r.u32()?) } else { None };
    let size_bytes = if r.bool()? { Some(r.u64()?) } else { None };
    let atime = set_time(r)?;
    let mtime = set_time(r)?;
    Ok(SetAttributes { mode, uid, gid, size_bytes, atime, mtime })
}
