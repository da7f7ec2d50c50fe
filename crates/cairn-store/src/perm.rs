//! POSIX permission rules, as the store applies them atomically with each operation.
//!
//! Root (uid 0) passes every read/write/search check; executing a non-directory needs at least
//! one execute bit even for root. READ and WRITE of file data additionally allow the owner
//! (Linux knfsd's owner override: NFS has no open, so a process that created a 0444 file keeps
//! writing it), and READ is allowed to whoever may execute. ACCESS answers with the plain mode
//! bits (no owner override), as knfsd does, so clients enforce open(2) semantics.

use crate::api::{Caller, FileKind, access};
use crate::format::Inode;

pub(crate) const READ: u32 = 4;
pub(crate) const WRITE: u32 = 2;
pub(crate) const SEARCH: u32 = 1;

pub(crate) const S_ISUID: u32 = 0o4000;
pub(crate) const S_ISGID: u32 = 0o2000;
pub(crate) const S_ISVTX: u32 = 0o1000;
pub(crate) const MODE_MASK: u32 = 0o7777;

/// Whether the mode bits grant all of `bits` (a mix of [`READ`], [`WRITE`], [`SEARCH`]).
pub(crate) fn mode_allows(caller: &Caller, inode: &Inode, bits: u32) -> bool {
    if caller.uid == 0 {
        if bits & SEARCH != 0 && inode.kind != FileKind::Directory && inode.mode & 0o111 == 0 {
            return false;
        }
        return true;
    }
    let class = if caller.uid == inode.uid {
        (inode.mode >> 6) & 7
    } else if caller.is_member_of(inode.gid) {
        (inode.mode >> 3) & 7
    } else {
        inode.mode & 7
    };
    class & bits == bits
}

/// READ of file data: read permission, ownership, or execute permission.
pub(crate) fn may_read_data(caller: &Caller, inode: &Inode) -> bool {
    caller.uid == inode.uid || mode_allows(caller, inode, READ) || mode_allows(caller, inode, SEARCH)
}

/// WRITE of file data (and truncation): write permission or ownership.
pub(crate) fn may_write_data(caller: &Caller, inode: &Inode) -> bool {
    caller.uid == inode.uid || mode_allows(caller, inode, WRITE)
}

/// Changing entries of a directory: write and search.
pub(crate) fn may_modify_directory(caller: &Caller, directory: &Inode) -> bool {
    mode_allows(caller, directory, WRITE | SEARCH)
}

/// The sticky-bit rule: in a sticky directory only the owner of the entry or of the directory
/// (or root) may remove or rename it.
pub(crate) fn sticky_allows(caller: &Caller, directory: &Inode, victim: &Inode) -> bool {
    directory.mode & S_ISVTX == 0
        || caller.uid == 0
        || caller.uid == victim.uid
        || caller.uid == directory.uid
}

pub(crate) fn is_owner_or_root(caller: &Caller, inode: &Inode) -> bool {
    caller.uid == 0 || caller.uid == inode.uid
}

/// The ACCESS answer for `requested` bits.
pub(crate) fn access_bits(caller: &Caller, inode: &Inode, requested: u32) -> u32 {
    let read = mode_allows(caller, inode, READ);
    let write = mode_allows(caller, inode, WRITE);
    let search = mode_allows(caller, inode, SEARCH);
    let mut granted = 0;
    if inode.kind == FileKind::Directory {
        if read {
            granted |= access::READ;
        }
        if search {
            granted |= access::LOOKUP | access::EXECUTE;
        }
        if write && search {
            granted |= access::MODIFY | access::EXTEND | access::DELETE;
        }
    } else {
        if read {
            granted |= access::READ;
        }
        if write {
            granted |= access::MODIFY | access::EXTEND;
        }
        if search {
            granted |= access::EXECUTE;
        }
    }
    granted & requested
}

/// The mode bits a write by `caller` leaves: a write by anyone but the owner or root clears
/// setuid, and setgid when group execute is set (setgid without group execute is mandatory
/// locking, not privilege).
pub(crate) fn mode_after_write(caller: &Caller, inode: &Inode) -> u32 {
    if caller.uid == 0 || caller.uid == inode.uid {
        return inode.mode;
    }
    strip_privileges(inode.mode)
}

pub(crate) fn strip_privileges(mode: u32) -> u32 {
    let mut mode = mode & !S_ISUID;
    if mode & 0o010 != 0 {
        mode &= !S_ISGID;
    }
    mode
}
