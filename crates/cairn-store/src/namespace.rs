//! Namespace operations: lookups and listings (read paths, no locks held across I/O) and the
//! changes that group commit applies inside a batch (create, mkdir, symlink, mknod, remove,
//! rmdir, rename, link, setattr).
//!
//! Every `apply_*` function checks everything first and calls [`Batch::begin_mutation`] only
//! when it cannot fail any more for a reason other than storage.

use cairn_types::Fid;
use cairn_types::limits::{FILE_SIZE_BYTES_MAX, NAME_LENGTH_BYTES_MAX, SYMLINK_TARGET_BYTES_MAX};

use crate::api::{
    Attributes, Caller, CreateHow, Created, DirectoryEntry, DirectoryPage, FileKind, Linked, Lookup, Renamed,
    SetAttributes, SetTime, SpecialKind, StoreError, StoreResult, Timestamp, WccData,
};
use crate::format::{Dirent, Inode};
use crate::group::{Batch, SpaceUse};
use crate::hot::EntryRef;
use crate::perm::{self, READ, S_ISGID, SEARCH, WRITE};
use crate::tables::{self, Db};
use crate::{Store, data, next_ctime, now, pre_op, random_nonzero_u32};

/// Checks a name that is to be created.
pub(crate) fn validate_new_name(name: &[u8]) -> StoreResult<()> {
    if name.is_empty() {
        return Err(StoreError::Invalid("empty name"));
    }
    if name == b"." || name == b".." {
        return Err(StoreError::Invalid("`.` and `..` cannot be created or removed"));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(StoreError::Invalid("name contains `/` or NUL"));
    }
    if name.len() > NAME_LENGTH_BYTES_MAX {
        return Err(StoreError::NameTooLong);
    }
    Ok(())
}

fn resolve_time(setting: SetTime, current: Timestamp, server: Timestamp) -> Timestamp {
    match setting {
        SetTime::DontChange => current,
        SetTime::ServerTime => server,
        SetTime::ClientTime(time) => time,
    }
}

/// COOKIES value: the directory entry followed by the name.
pub(crate) fn encode_cookie_value(dirent: &Dirent, name: &[u8]) -> Vec<u8> {
    let mut out = dirent.encode().to_vec();
    out.extend_from_slice(name);
    out
}

fn decode_cookie_value(bytes: &[u8]) -> StoreResult<(Dirent, Vec<u8>)> {
    if bytes.len() < 22 {
        return Err(StoreError::Corrupt { what: "directory cookie row".to_string(), offset: 0 });
    }
    Ok((Dirent::decode(&bytes[..22])?, bytes[22..].to_vec()))
}

// ---- read paths ----

pub(crate) fn lookup(store: &Store, caller: &Caller, directory: Fid, name: &[u8]) -> StoreResult<Lookup> {
    let (number, dir) = store.current(directory)?;
    if dir.kind != FileKind::Directory {
        return Err(StoreError::NotDirectory);
    }
    if !perm::mode_allows(caller, &dir, SEARCH) {
        return Err(StoreError::AccessDenied);
    }
    let directory_attributes = store.attributes(number, &dir);
    let child = match name {
        b"." => number,
        b".." => dir.parent,
        _ => {
            if name.len() > NAME_LENGTH_BYTES_MAX {
                return Err(StoreError::NameTooLong);
            }
            if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                return Err(StoreError::NotFound);
            }
            let read = tables::begin_read(&store.db)?;
            let dirents = read.open_table(tables::DIRENTS).db()?;
            match tables::get_dirent(&dirents, number, name)? {
                Some(dirent) => dirent.inode,
                None => return Err(StoreError::NotFound),
            }
        }
    };
    let inode = if child == number { Some(dir.clone()) } else { store.current_by_number(child, None)? };
    let inode = inode.ok_or(StoreError::NotFound)?;
    Ok(Lookup {
        fid: store.fid(child, &inode),
        attributes: store.attributes(child, &inode),
        directory: directory_attributes,
    })
}

pub(crate) fn readdir(
    store: &Store,
    caller: &Caller,
    directory: Fid,
    cookie: u64,
    entries_max: usize,
    with_attributes: bool,
) -> StoreResult<DirectoryPage> {
    let (number, dir) = store.current(directory)?;
    if dir.kind != FileKind::Directory {
        return Err(StoreError::NotDirectory);
    }
    if !perm::mode_allows(caller, &dir, READ) {
        return Err(StoreError::AccessDenied);
    }
    let read = tables::begin_read(&store.db)?;
    let attributes_of = |inode_number: u64| -> StoreResult<Option<Attributes>> {
        if !with_attributes {
            return Ok(None);
        }
        Ok(store
            .current_by_number(inode_number, Some(&read))?
            .map(|inode| store.attributes(inode_number, &inode)))
    };
    let mut entries = Vec::new();
    let mut eof = true;
    'listing: {
        if cookie < 1 {
            if entries.len() >= entries_max {
                eof = false;
                break 'listing;
            }
            entries.push(DirectoryEntry {
                cookie: 1,
                name: b".".to_vec(),
                fid: store.fid(number, &dir),
                fileid: number,
                attributes: with_attributes.then(|| store.attributes(number, &dir)),
            });
        }
        if cookie < 2 {
            if entries.len() >= entries_max {
                eof = false;
                break 'listing;
            }
            let parent = if dir.parent == number {
                Some(dir.clone())
            } else {
                store.current_by_number(dir.parent, Some(&read))?
            };
            let parent =
                parent.ok_or(StoreError::Corrupt { what: "parent directory".to_string(), offset: 0 })?;
            entries.push(DirectoryEntry {
                cookie: 2,
                name: b"..".to_vec(),
                fid: store.fid(dir.parent, &parent),
                fileid: dir.parent,
                attributes: with_attributes.then(|| store.attributes(dir.parent, &parent)),
            });
        }
        if cookie == u64::MAX {
            break 'listing;
        }
        let start = cookie.max(2) + 1;
        let cookies = read.open_table(tables::COOKIES).db()?;
        for row in cookies.range((number, start)..=(number, u64::MAX)).db()? {
            let (key, value) = row.db()?;
            if entries.len() >= entries_max {
                eof = false;
                break 'listing;
            }
            let (dirent, name) = decode_cookie_value(value.value())?;
            let attributes = attributes_of(dirent.inode)?;
            entries.push(DirectoryEntry {
                cookie: key.value().1,
                name,
                fid: Fid {
                    container: crate::NAME_CONTAINER_ID,
                    inode: dirent.inode,
                    uniquifier: dirent.uniquifier,
                },
                fileid: dirent.inode,
                attributes,
            });
        }
    }
    Ok(DirectoryPage { entries, eof, directory: store.attributes(number, &dir) })
}

// ---- changes, applied inside a batch ----

fn directory_entry(store: &Store, b: &mut Batch<'_>, directory: Fid) -> StoreResult<(EntryRef, Inode)> {
    let entry = b.resolve(store, directory)?;
    let inode = entry.lock().inode.clone();
    if inode.kind != FileKind::Directory {
        return Err(StoreError::NotDirectory);
    }
    Ok((entry, inode))
}

fn wcc(store: &Store, number: u64, before: &Inode, entry: &EntryRef) -> WccData {
    let after = entry.lock().inode.clone();
    WccData { before: Some(pre_op(before)), after: Some(store.attributes(number, &after)) }
}

/// Adds a name to a directory: the entry and its cookie row; updates the directory.
fn insert_name(
    b: &mut Batch<'_>,
    dir_entry: &EntryRef,
    name: &[u8],
    number: u64,
    inode: &Inode,
    subdirectory: bool,
) -> StoreResult<()> {
    let (dir_number, cookie) = {
        let mut dir = dir_entry.lock();
        let cookie = dir.inode.next_cookie;
        dir.inode.next_cookie += 1;
        dir.inode.entries += 1;
        if subdirectory {
            dir.inode.nlink = dir.inode.nlink.saturating_add(1);
        }
        let time = next_ctime(dir.inode.ctime);
        dir.inode.mtime = time;
        dir.inode.ctime = time;
        dir.touch();
        (dir.number, cookie)
    };
    let dirent = Dirent { cookie, inode: number, uniquifier: inode.uniquifier, kind: inode.kind };
    b.put_dirent(dir_number, name, dirent.encode().as_slice())?;
    b.put_cookie(dir_number, cookie, encode_cookie_value(&dirent, name).as_slice())?;
    b.touch(dir_entry);
    Ok(())
}

/// Removes a name from a directory; updates the directory.
fn remove_name(
    b: &mut Batch<'_>,
    dir_entry: &EntryRef,
    name: &[u8],
    dirent: &Dirent,
    subdirectory: bool,
) -> StoreResult<()> {
    let dir_number = {
        let mut dir = dir_entry.lock();
        dir.inode.entries = dir.inode.entries.saturating_sub(1);
        if subdirectory {
            dir.inode.nlink = dir.inode.nlink.saturating_sub(1).max(2);
        }
        let time = next_ctime(dir.inode.ctime);
        dir.inode.mtime = time;
        dir.inode.ctime = time;
        dir.touch();
        dir.number
    };
    b.del_dirent(dir_number, name)?;
    b.del_cookie(dir_number, dirent.cookie)?;
    b.touch(dir_entry);
    Ok(())
}

/// Drops one link of an inode whose name was removed; deletes the inode at zero links (or
/// always, for a directory).
fn drop_link(store: &Store, b: &mut Batch<'_>, entry: &EntryRef) -> StoreResult<()> {
    let delete = {
        let mut guard = entry.lock();
        if guard.inode.kind == FileKind::Directory {
            true
        } else {
            guard.inode.nlink = guard.inode.nlink.saturating_sub(1);
            guard.inode.ctime = next_ctime(guard.inode.ctime);
            guard.touch();
            guard.inode.nlink == 0
        }
    };
    if delete {
        data::delete_inode(store, b, entry)
    } else {
        b.touch(entry);
        Ok(())
    }
}

struct NewObject<'a> {
    kind: FileKind,
    mode_default: u32,
    rdev: (u32, u32),
    target: &'a [u8],
    attributes: SetAttributes,
    create_verifier: Option<[u8; 8]>,
}

fn create_object(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    dir_entry: &EntryRef,
    dir: &Inode,
    name: &[u8],
    new: NewObject<'_>,
) -> StoreResult<Created> {
    let attributes = new.attributes;
    if let Some(uid) = attributes.uid
        && uid != caller.uid
        && caller.uid != 0
    {
        return Err(StoreError::NotOwner);
    }
    if let Some(gid) = attributes.gid
        && caller.uid != 0
        && !caller.is_member_of(gid)
    {
        return Err(StoreError::NotOwner);
    }
    let size_bytes = match (new.kind, attributes.size_bytes) {
        (FileKind::Regular, Some(size)) if size > FILE_SIZE_BYTES_MAX => {
            return Err(StoreError::FileTooLarge);
        }
        (FileKind::Regular, Some(size)) => size,
        _ => 0,
    };
    b.need_space(SpaceUse::Consume, 0)?;
    // The last check: nothing fails after it but storage (which poisons the store).
    store.reserve_growth(size_bytes)?;

    b.begin_mutation();
    let number = b.next_inode;
    b.next_inode += 1;
    let time = now();
    let inherit_group = dir.mode & S_ISGID != 0;
    let mut gid = attributes.gid.unwrap_or(if inherit_group { dir.gid } else { caller.gid });
    if inherit_group && attributes.gid.is_none() {
        gid = dir.gid;
    }
    let uid = attributes.uid.unwrap_or(caller.uid);
    let mut mode = attributes.mode.unwrap_or(new.mode_default) & perm::MODE_MASK;
    if new.kind == FileKind::Directory && inherit_group {
        mode |= S_ISGID;
    }
    if new.kind != FileKind::Directory && caller.uid != 0 && mode & S_ISGID != 0 && !caller.is_member_of(gid)
    {
        mode &= !S_ISGID;
    }
    let dir_number = dir_entry.lock().number;
    let inode = Inode {
        kind: new.kind,
        mode,
        nlink: if new.kind == FileKind::Directory { 2 } else { 1 },
        uid,
        gid,
        size_bytes,
        blocks_used: 0,
        rdev: new.rdev,
        atime: resolve_time(attributes.atime, time, time),
        mtime: resolve_time(attributes.mtime, time, time),
        ctime: time,
        uniquifier: random_nonzero_u32(),
        parent: if new.kind == FileKind::Directory { dir_number } else { 0 },
        next_cookie: 3,
        entries: 0,
        create_verifier: new.create_verifier,
        target: new.target.to_vec(),
    };
    insert_name(b, dir_entry, name, number, &inode, new.kind == FileKind::Directory)?;
    // Written straight into the transaction: nobody can name the new inode before the batch
    // commits, and an operation later in this batch loads it from the transaction.
    b.put_inode(number, inode.encode().as_slice())?;
    Ok(Created {
        fid: store.fid(number, &inode),
        attributes: store.attributes(number, &inode),
        directory: wcc(store, dir_number, dir, dir_entry),
    })
}

fn prepare_create(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    directory: Fid,
    name: &[u8],
) -> StoreResult<(EntryRef, Inode, Option<Dirent>)> {
    validate_new_name(name)?;
    let (dir_entry, dir) = directory_entry(store, b, directory)?;
    if !perm::may_modify_directory(caller, &dir) {
        return Err(StoreError::AccessDenied);
    }
    let dir_number = dir_entry.lock().number;
    let existing = tables::get_dirent(&b.dirents, dir_number, name)?;
    Ok((dir_entry, dir, existing))
}

pub(crate) fn apply_create(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    directory: Fid,
    name: &[u8],
    how: CreateHow,
) -> StoreResult<Created> {
    let (dir_entry, dir, existing) = prepare_create(store, b, caller, directory, name)?;
    let dir_number = dir_entry.lock().number;
    if let Some(existing) = existing {
        let entry = b.entry(store, existing.inode)?.ok_or(StoreError::NotFound)?;
        let inode = entry.lock().inode.clone();
        let fid = store.fid(existing.inode, &inode);
        let unchanged =
            WccData { before: Some(pre_op(&dir)), after: Some(store.attributes(dir_number, &dir)) };
        return match how {
            CreateHow::Guarded(_) => Err(StoreError::Exists),
            CreateHow::Exclusive(verifier) => {
                if inode.kind == FileKind::Regular && inode.create_verifier == Some(verifier) {
                    Ok(Created {
                        fid,
                        attributes: store.attributes(existing.inode, &inode),
                        directory: unchanged,
                    })
                } else {
                    Err(StoreError::Exists)
                }
            }
            CreateHow::Unchecked(attributes) => {
                if inode.kind != FileKind::Regular {
                    return Err(StoreError::Exists);
                }
                if let Some(size) = attributes.size_bytes {
                    let changes = SetAttributes { size_bytes: Some(size), ..SetAttributes::default() };
                    setattr_entry(store, b, caller, &entry, changes, None)?;
                }
                let inode = entry.lock().inode.clone();
                Ok(Created {
                    fid,
                    attributes: store.attributes(existing.inode, &inode),
                    directory: unchanged,
                })
            }
        };
    }
    let (attributes, create_verifier) = match how {
        CreateHow::Unchecked(attributes) | CreateHow::Guarded(attributes) => (attributes, None),
        CreateHow::Exclusive(verifier) => (SetAttributes::default(), Some(verifier)),
    };
    let new = NewObject {
        kind: FileKind::Regular,
        mode_default: 0o644,
        rdev: (0, 0),
        target: &[],
        attributes,
        create_verifier,
    };
    create_object(store, b, caller, &dir_entry, &dir, name, new)
}

pub(crate) fn apply_mkdir(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    directory: Fid,
    name: &[u8],
    attributes: SetAttributes,
) -> StoreResult<Created> {
    let (dir_entry, dir, existing) = prepare_create(store, b, caller, directory, name)?;
    if existing.is_some() {
        return Err(StoreError::Exists);
    }
    let new = NewObject {
        kind: FileKind::Directory,
        mode_default: 0o755,
        rdev: (0, 0),
        target: &[],
        attributes: SetAttributes { size_bytes: None, ..attributes },
        create_verifier: None,
    };
    create_object(store, b, caller, &dir_entry, &dir, name, new)
}

pub(crate) fn apply_symlink(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    directory: Fid,
    name: &[u8],
    target: &[u8],
    attributes: SetAttributes,
) -> StoreResult<Created> {
    if target.len() > SYMLINK_TARGET_BYTES_MAX {
        return Err(StoreError::NameTooLong);
    }
    let (dir_entry, dir, existing) = prepare_create(store, b, caller, directory, name)?;
    if existing.is_some() {
        return Err(StoreError::Exists);
    }
    let new = NewObject {
        kind: FileKind::Symlink,
        mode_default: 0o777,
        rdev: (0, 0),
        target,
        attributes: SetAttributes { size_bytes: None, ..attributes },
        create_verifier: None,
    };
    create_object(store, b, caller, &dir_entry, &dir, name, new)
}

pub(crate) fn apply_mknod(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    directory: Fid,
    name: &[u8],
    kind: SpecialKind,
    attributes: SetAttributes,
) -> StoreResult<Created> {
    let (kind, rdev) = match kind {
        SpecialKind::BlockDevice { major, minor } => (FileKind::BlockDevice, (major, minor)),
        SpecialKind::CharDevice { major, minor } => (FileKind::CharDevice, (major, minor)),
        SpecialKind::Socket => (FileKind::Socket, (0, 0)),
        SpecialKind::Fifo => (FileKind::Fifo, (0, 0)),
    };
    let (dir_entry, dir, existing) = prepare_create(store, b, caller, directory, name)?;
    if matches!(kind, FileKind::BlockDevice | FileKind::CharDevice) && caller.uid != 0 {
        return Err(StoreError::NotOwner);
    }
    if existing.is_some() {
        return Err(StoreError::Exists);
    }
    let new = NewObject {
        kind,
        mode_default: 0o644,
        rdev,
        target: &[],
        attributes: SetAttributes { size_bytes: None, ..attributes },
        create_verifier: None,
    };
    create_object(store, b, caller, &dir_entry, &dir, name, new)
}

pub(crate) fn apply_remove(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    directory: Fid,
    name: &[u8],
    rmdir: bool,
) -> StoreResult<WccData> {
    if rmdir && name == b".." {
        return Err(StoreError::NotEmpty);
    }
    validate_new_name(name)?;
    let (dir_entry, dir) = directory_entry(store, b, directory)?;
    if !perm::may_modify_directory(caller, &dir) {
        return Err(StoreError::AccessDenied);
    }
    let dir_number = dir_entry.lock().number;
    let dirent = tables::get_dirent(&b.dirents, dir_number, name)?.ok_or(StoreError::NotFound)?;
    let victim_entry = b.entry(store, dirent.inode)?.ok_or(StoreError::NotFound)?;
    let victim = victim_entry.lock().inode.clone();
    if rmdir {
        if victim.kind != FileKind::Directory {
            return Err(StoreError::NotDirectory);
        }
        if victim.entries > 0 {
            return Err(StoreError::NotEmpty);
        }
    } else if victim.kind == FileKind::Directory {
        return Err(StoreError::IsDirectory);
    }
    if !perm::sticky_allows(caller, &dir, &victim) {
        return Err(StoreError::NotOwner);
    }
    b.need_space(SpaceUse::Free, 0)?;

    b.begin_mutation();
    remove_name(b, &dir_entry, name, &dirent, rmdir)?;
    drop_link(store, b, &victim_entry)?;
    Ok(wcc(store, dir_number, &dir, &dir_entry))
}

pub(crate) fn apply_link(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    fid: Fid,
    directory: Fid,
    name: &[u8],
) -> StoreResult<Linked> {
    validate_new_name(name)?;
    let file_entry = b.resolve(store, fid)?;
    let file = file_entry.lock().inode.clone();
    if file.kind == FileKind::Directory {
        return Err(StoreError::IsDirectory);
    }
    let (dir_entry, dir) = directory_entry(store, b, directory)?;
    if !perm::may_modify_directory(caller, &dir) {
        return Err(StoreError::AccessDenied);
    }
    let dir_number = dir_entry.lock().number;
    if tables::get_dirent(&b.dirents, dir_number, name)?.is_some() {
        return Err(StoreError::Exists);
    }
    if file.nlink >= u32::MAX - 1 {
        return Err(StoreError::Invalid("too many links"));
    }
    b.need_space(SpaceUse::Consume, 0)?;

    b.begin_mutation();
    insert_name(b, &dir_entry, name, fid.inode, &file, false)?;
    {
        let mut guard = file_entry.lock();
        guard.inode.nlink += 1;
        guard.inode.ctime = next_ctime(guard.inode.ctime);
        guard.touch();
    }
    b.touch(&file_entry);
    let after = file_entry.lock().inode.clone();
    Ok(Linked {
        file: store.attributes(fid.inode, &after),
        directory: wcc(store, dir_number, &dir, &dir_entry),
    })
}

/// Whether `ancestor` is `start` or one of its ancestors (walking parent pointers).
fn is_ancestor(store: &Store, b: &mut Batch<'_>, ancestor: u64, start: u64) -> StoreResult<bool> {
    let mut current = start;
    // Invariant: directory depth is bounded by the number of inodes; the bound stops a loop on
    // a corrupt parent chain.
    for _ in 0..1_000_000 {
        if current == ancestor {
            return Ok(true);
        }
        let Some(entry) = b.entry(store, current)? else {
            return Ok(false);
        };
        let parent = entry.lock().inode.parent;
        if parent == current {
            return Ok(false);
        }
        current = parent;
    }
    Err(StoreError::Corrupt { what: "directory parent chain".to_string(), offset: current })
}

pub(crate) fn apply_rename(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    from_directory: Fid,
    from_name: &[u8],
    to_directory: Fid,
    to_name: &[u8],
) -> StoreResult<Renamed> {
    validate_new_name(from_name)?;
    validate_new_name(to_name)?;
    let (from_entry, from_dir) = directory_entry(store, b, from_directory)?;
    let (to_entry, to_dir) = directory_entry(store, b, to_directory)?;
    let from_number = from_directory.inode;
    let to_number = to_directory.inode;
    if !perm::may_modify_directory(caller, &from_dir) || !perm::may_modify_directory(caller, &to_dir) {
        return Err(StoreError::AccessDenied);
    }
    let source = tables::get_dirent(&b.dirents, from_number, from_name)?.ok_or(StoreError::NotFound)?;
    let source_entry = b.entry(store, source.inode)?.ok_or(StoreError::NotFound)?;
    let source_inode = source_entry.lock().inode.clone();
    if !perm::sticky_allows(caller, &from_dir, &source_inode) {
        return Err(StoreError::NotOwner);
    }
    let unchanged = |store: &Store| Renamed {
        from_directory: WccData {
            before: Some(pre_op(&from_dir)),
            after: Some(store.attributes(from_number, &from_dir)),
        },
        to_directory: WccData {
            before: Some(pre_op(&to_dir)),
            after: Some(store.attributes(to_number, &to_dir)),
        },
    };
    let is_directory = source_inode.kind == FileKind::Directory;
    let target = tables::get_dirent(&b.dirents, to_number, to_name)?;
    let mut target_entry = None;
    if let Some(target) = &target {
        if target.inode == source.inode {
            // Both names are links to the same inode: POSIX says do nothing.
            return Ok(unchanged(store));
        }
        let entry = b.entry(store, target.inode)?.ok_or(StoreError::NotFound)?;
        let target_inode = entry.lock().inode.clone();
        if !perm::sticky_allows(caller, &to_dir, &target_inode) {
            return Err(StoreError::NotOwner);
        }
        match (is_directory, target_inode.kind == FileKind::Directory) {
            (true, false) => return Err(StoreError::NotDirectory),
            (false, true) => return Err(StoreError::IsDirectory),
            (true, true) if target_inode.entries > 0 => return Err(StoreError::NotEmpty),
            _ => {}
        }
        target_entry = Some(entry);
    }
    if is_directory && from_number != to_number {
        if is_ancestor(store, b, source.inode, to_number)? {
            return Err(StoreError::Invalid("cannot move a directory into itself"));
        }
        // Its `..` changes: like Linux, that needs write permission on the moved directory.
        if !perm::mode_allows(caller, &source_inode, WRITE) {
            return Err(StoreError::AccessDenied);
        }
    }
    b.need_space(SpaceUse::Free, 0)?;

    b.begin_mutation();
    if let (Some(target), Some(entry)) = (&target, &target_entry) {
        remove_name(b, &to_entry, to_name, target, target.kind == FileKind::Directory)?;
        drop_link(store, b, entry)?;
    }
    remove_name(b, &from_entry, from_name, &source, is_directory && from_number != to_number)?;
    insert_name(
        b,
        &to_entry,
        to_name,
        source.inode,
        &source_inode,
        is_directory && from_number != to_number,
    )?;
    {
        let mut guard = source_entry.lock();
        if is_directory {
            guard.inode.parent = to_number;
        }
        guard.inode.ctime = next_ctime(guard.inode.ctime);
        guard.touch();
    }
    b.touch(&source_entry);
    Ok(Renamed {
        from_directory: wcc(store, from_number, &from_dir, &from_entry),
        to_directory: wcc(store, to_number, &to_dir, &to_entry),
    })
}

pub(crate) fn apply_setattr(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    fid: Fid,
    changes: SetAttributes,
    guard_ctime: Option<Timestamp>,
) -> StoreResult<WccData> {
    let entry = b.resolve(store, fid)?;
    setattr_entry(store, b, caller, &entry, changes, guard_ctime)
}

pub(crate) fn setattr_entry(
    store: &Store,
    b: &mut Batch<'_>,
    caller: &Caller,
    entry: &EntryRef,
    changes: SetAttributes,
    guard_ctime: Option<Timestamp>,
) -> StoreResult<WccData> {
    let (number, kind) = {
        let guard = entry.lock();
        (guard.number, guard.inode.kind)
    };
    // Writers of a regular file hold its stripe: holding it here makes the snapshot below the
    // file's state for the whole operation.
    let _stripe = (kind == FileKind::Regular).then(|| store.stripe(number).write());
    let inode = entry.lock().inode.clone();
    if let Some(guard) = guard_ctime
        && guard != inode.ctime
    {
        return Err(StoreError::NotSync);
    }
    if let Some(size) = changes.size_bytes {
        match inode.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(StoreError::IsDirectory),
            _ => return Err(StoreError::Invalid("size of a special file")),
        }
        if size > FILE_SIZE_BYTES_MAX {
            return Err(StoreError::FileTooLarge);
        }
        if !perm::may_write_data(caller, &inode) {
            return Err(StoreError::AccessDenied);
        }
    }
    if changes.mode.is_some() && !perm::is_owner_or_root(caller, &inode) {
        return Err(StoreError::NotOwner);
    }
    if let Some(uid) = changes.uid
        && uid != inode.uid
        && caller.uid != 0
    {
        return Err(StoreError::NotOwner);
    }
    if let Some(gid) = changes.gid
        && gid != inode.gid
        && caller.uid != 0
        && !(caller.uid == inode.uid && caller.is_member_of(gid))
    {
        return Err(StoreError::NotOwner);
    }
    for setting in [changes.atime, changes.mtime] {
        match setting {
            SetTime::DontChange => {}
            SetTime::ClientTime(_) if !perm::is_owner_or_root(caller, &inode) => {
                return Err(StoreError::NotOwner);
            }
            SetTime::ServerTime
                if !perm::is_owner_or_root(caller, &inode) && !perm::mode_allows(caller, &inode, WRITE) =>
            {
                return Err(StoreError::AccessDenied);
            }
            _ => {}
        }
    }
    let shrinking = changes.size_bytes.is_some_and(|size| size < inode.size_bytes);
    if let Some(size) = changes.size_bytes
        && shrinking
    {
        data::check_truncate(store, b, entry, size)?;
    }
    b.need_space(if shrinking { SpaceUse::Free } else { SpaceUse::Consume }, 0)?;
    // The last check: nothing fails after it but storage (which poisons the store). The size
    // cannot change meanwhile: size changes hold the stripe.
    let growth = changes.size_bytes.map_or(0, |size| size.saturating_sub(inode.size_bytes));
    store.reserve_growth(growth)?;

    b.begin_mutation();
    if let Some(size) = changes.size_bytes
        && size < inode.size_bytes
    {
        data::truncate_down(store, b, entry, inode.size_bytes, size)?;
    }
    let time = now();
    {
        let mut guard = entry.lock();
        let current = &mut guard.inode;
        if let Some(uid) = changes.uid {
            current.uid = uid;
        }
        if let Some(gid) = changes.gid {
            current.gid = gid;
        }
        let owner_changed = changes.uid.is_some_and(|uid| uid != inode.uid)
            || changes.gid.is_some_and(|gid| gid != inode.gid);
        if let Some(mode) = changes.mode {
            current.mode = mode & perm::MODE_MASK;
            if caller.uid != 0 && current.kind != FileKind::Directory && !caller.is_member_of(current.gid) {
                current.mode &= !S_ISGID;
            }
        }
        if owner_changed && current.kind != FileKind::Directory {
            current.mode = perm::strip_privileges(current.mode);
        }
        current.atime = resolve_time(changes.atime, current.atime, time);
        current.mtime = resolve_time(changes.mtime, current.mtime, time);
        if let Some(size) = changes.size_bytes {
            // Growth was reserved above; a shrink gives its bytes back.
            store.release_bytes(current.size_bytes.saturating_sub(size));
            current.size_bytes = size;
            if changes.mtime == SetTime::DontChange {
                current.mtime = time;
            }
        }
        current.ctime = next_ctime(current.ctime);
        guard.touch();
    }
    b.touch(entry);
    Ok(wcc(store, number, &inode, entry))
}
