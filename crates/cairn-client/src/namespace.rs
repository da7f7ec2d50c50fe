//! One cluster's namespace as a client sees it (`cairn fs`, `cairn distcp`, the console's
//! WebHDFS): every volume at its mount path, reached through [`ClusterFs`] (no NFS mount), paths
//! resolved to the volume with the longest mount path that is a prefix of them ([`MountTable`]).
//! A path no volume holds but with volumes mounted below it (`/` when no volume is mounted at
//! `/`, `/var` above `/var/cairn/configuration`) is a virtual directory: it lists the mount
//! points and the directories on the way to them. Also the operations every front end needs
//! (`mkdir -p`, recursive removal, listing), so that they are written once, and the callers'
//! identities from this machine's /etc/passwd and /etc/group ([`Names`]).

use std::collections::HashMap;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_cldb::CldbClient;
use cairn_store::{Attributes, Caller, FileKind, FileSystem, SetAttributes, StoreError, Timestamp};
use cairn_types::Fid;
use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};

use crate::{CldbLocator, ClusterFs, Connections};

/// Longest wait for a volume's master when a volume is first opened.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries asked for in one READDIR.
pub const READDIR_ENTRIES_MAX: usize = 1024;
/// Supplementary groups a caller gets from /etc/group (NFS's AUTH_SYS carries 16).
const CALLER_GROUPS_MAX: usize = 16;

/// A volume of the cluster and where it is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub name: String,
    pub id: u32,
    /// Normalized: `/` or `/a/b` (no trailing slash).
    pub path: PathBuf,
    pub replication: u32,
}

// ------------------------------------------------------------------------------------------
// Mount paths

/// The volumes by mount path. Pure (no I/O), so the path rules are tested without a cluster.
#[derive(Clone, Debug, Default)]
pub struct MountTable {
    /// Invariant: deepest mount path first, so the first prefix found is the longest.
    mounts: Vec<Mount>,
}

impl MountTable {
    pub fn new(mut mounts: Vec<Mount>) -> MountTable {
        for mount in &mut mounts {
            mount.path = normalize(&mount.path);
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.path.components().count()));
        MountTable { mounts }
    }

    /// Deepest mount path first.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// The volume holding `path` (normalized) and the names below its mount path.
    pub fn mount_of(&self, path: &Path) -> Option<(&Mount, Vec<Vec<u8>>)> {
        let mount = self.mounts.iter().find(|m| path.starts_with(&m.path))?;
        let rest = path
            .strip_prefix(&mount.path)
            .ok()?
            .components()
            .map(|c| c.as_os_str().as_bytes().to_vec())
            .collect();
        Some((mount, rest))
    }

    /// Whether volumes are mounted strictly below `path` (normalized).
    pub fn has_mounts_below(&self, path: &Path) -> bool {
        self.mounts.iter().any(|m| m.path != path && m.path.starts_with(path))
    }

    /// Whether `path` is a directory only because volumes are mounted below it (no volume holds
    /// it).
    pub fn is_virtual_directory(&self, path: &Path) -> bool {
        self.mount_of(path).is_none() && self.has_mounts_below(path)
    }

    /// Whether `path` is a mount point or has one below it: such a path is never removed or
    /// renamed from a client (the volume would be unreachable, not gone).
    pub fn holds_mount_point(&self, path: &Path) -> bool {
        self.mounts.iter().any(|m| m.path.starts_with(path))
    }

    /// The names directly below `path` (normalized) that lead to mount points, in name order:
    /// with `Some(volume)` where that volume is mounted, `None` for a directory on the way to
    /// deeper mount points.
    pub fn names_toward_mounts(&self, path: &Path) -> Vec<(Vec<u8>, Option<Mount>)> {
        let mut names: Vec<(Vec<u8>, Option<Mount>)> = Vec::new();
        for mount in &self.mounts {
            let Ok(rest) = mount.path.strip_prefix(path) else { continue };
            let mut components = rest.components();
            let Some(first) = components.next() else { continue };
            let name = first.as_os_str().as_bytes().to_vec();
            let at_mount = components.next().is_none().then(|| mount.clone());
            match names.iter_mut().find(|(existing, _)| *existing == name) {
                Some(entry) => {
                    if entry.1.is_none() {
                        entry.1 = at_mount;
                    }
                }
                None => names.push((name, at_mount)),
            }
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
    }
}

/// The attributes shown for a virtual directory: root's, mode 0755, times zero (nothing
/// stores them).
pub fn virtual_directory_attributes() -> Attributes {
    Attributes {
        kind: FileKind::Directory,
        mode: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        size_bytes: 0,
        used_bytes: 0,
        rdev: (0, 0),
        fsid: 0,
        fileid: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
    }
}

// ------------------------------------------------------------------------------------------
// The namespace

/// What every view of one namespace shares, across refreshes: the runtime, the CLDB clients,
/// the connections and the opened volumes.
struct Shared {
    /// Owned by a namespace that started its own runtime ([`Namespace::connect`]).
    _runtime: Option<Runtime>,
    handle: Handle,
    /// Asked for the volumes ([`Namespace::refreshed`]).
    cldb: CldbClient,
    locator: Arc<CldbLocator>,
    connections: Arc<Connections>,
    opened: Mutex<HashMap<u32, Arc<ClusterFs>>>,
}

/// The cluster's volumes, opened on first use, as one caller. Its methods block: call them from
/// plain or blocking threads, never from an async task.
pub struct Namespace {
    shared: Arc<Shared>,
    /// The volumes as listed when this view was made: a view never changes them, so one request
    /// sees one mount table; [`Namespace::refreshed`] makes a view with the current ones.
    mounts: Arc<MountTable>,
    /// Read with the mount table, so that requests do not read /etc/passwd and /etc/group.
    names: Arc<Names>,
    /// FIDs of directories already looked up (cluster path → FID), to spare tree walks.
    directories: Mutex<HashMap<PathBuf, (u32, Fid)>>,
    pub caller: Caller,
}

/// A path looked up: its volume, FID and attributes.
#[derive(Clone)]
pub struct Node {
    pub fs: Arc<ClusterFs>,
    pub mount: Mount,
    pub fid: Fid,
    pub attributes: Attributes,
}

/// One entry of [`Namespace::list_directory`].
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Vec<u8>,
    pub attributes: Attributes,
    /// The volume holding the entry (for a mount point, the volume mounted there); `None` for a
    /// virtual directory.
    pub mount: Option<Mount>,
}

/// The volumes the CLDBs list (removed ones left out).
fn list_mounts(handle: &Handle, cldb: &CldbClient) -> Result<MountTable, String> {
    let volumes = handle.block_on(cldb.list_volumes()).map_err(|error| error.to_string())?;
    Ok(MountTable::new(
        volumes
            .into_iter()
            .filter(|info| !info.volume.removed)
            .map(|info| Mount {
                path: PathBuf::from(&info.volume.mount_path),
                name: info.volume.name,
                id: info.volume.id,
                replication: info.volume.replication,
            })
            .collect(),
    ))
}

impl Namespace {
    /// Asks the CLDBs (`cldb`) for the volumes, on a runtime of its own; `locator` follows the
    /// volumes' masters (give it a request timeout of at least the open timeout, 30 s).
    pub fn connect(cldb: CldbClient, locator: CldbClient, caller: Caller) -> Result<Namespace, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the async runtime: {error}"))?;
        let handle = runtime.handle().clone();
        Namespace::connect_with(Some(runtime), handle, cldb, locator, caller)
    }

    /// Like [`Namespace::connect`] on an existing runtime. Call it from a blocking thread
    /// (`tokio::task::spawn_blocking`), never from an async task.
    pub fn connect_on(
        handle: Handle,
        cldb: CldbClient,
        locator: CldbClient,
        caller: Caller,
    ) -> Result<Namespace, String> {
        Namespace::connect_with(None, handle, cldb, locator, caller)
    }

    fn connect_with(
        runtime: Option<Runtime>,
        handle: Handle,
        cldb: CldbClient,
        locator: CldbClient,
        caller: Caller,
    ) -> Result<Namespace, String> {
        let mounts = list_mounts(&handle, &cldb)?;
        Ok(Namespace {
            shared: Arc::new(Shared {
                _runtime: runtime,
                handle,
                cldb,
                locator: Arc::new(CldbLocator(locator)),
                connections: Arc::new(Connections::default()),
                opened: Mutex::new(HashMap::new()),
            }),
            mounts: Arc::new(mounts),
            names: Arc::new(Names::load()),
            directories: Mutex::new(HashMap::new()),
            caller,
        })
    }

    /// The same namespace (volumes, opened volumes) as another caller, with a cache of its own.
    pub fn as_caller(&self, caller: Caller) -> Namespace {
        Namespace {
            shared: self.shared.clone(),
            mounts: self.mounts.clone(),
            names: self.names.clone(),
            directories: Mutex::new(HashMap::new()),
            caller,
        }
    }

    /// A view with the volumes the CLDBs list now (added, removed, moved) and the names read
    /// again; the connections and the opened volumes are kept (but those of volumes no longer
    /// listed), so a refresh costs one CLDB request, not a reconnection. Blocks.
    pub fn refreshed(&self) -> Result<Namespace, String> {
        let mounts = list_mounts(&self.shared.handle, &self.shared.cldb)?;
        self.shared.opened.lock().retain(|id, _| mounts.mounts().iter().any(|m| m.id == *id));
        Ok(Namespace {
            shared: self.shared.clone(),
            mounts: Arc::new(mounts),
            names: Arc::new(Names::load()),
            directories: Mutex::new(HashMap::new()),
            caller: self.caller.clone(),
        })
    }

    /// Deepest mount path first.
    pub fn mounts(&self) -> &[Mount] {
        self.mounts.mounts()
    }

    pub fn mount_table(&self) -> &MountTable {
        &self.mounts
    }

    /// Owner and group names, as read when this view was made.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The volume, opened (once).
    pub fn open(&self, mount: &Mount) -> Result<Arc<ClusterFs>, StoreError> {
        if let Some(fs) = self.shared.opened.lock().get(&mount.id) {
            return Ok(fs.clone());
        }
        let open = ClusterFs::open(self.shared.locator.clone(), self.shared.connections.clone(), mount.id);
        let fs = match self.shared.handle.block_on(async { tokio::time::timeout(OPEN_TIMEOUT, open).await }) {
            Ok(result) => Arc::new(result?),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "volume {} has no reachable master after {}s",
                    mount.name,
                    OPEN_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(self.shared.opened.lock().entry(mount.id).or_insert(fs).clone())
    }

    /// The volume holding `path` (normalized) and the names below its mount path.
    pub fn mount_of(&self, path: &Path) -> Option<(&Mount, Vec<Vec<u8>>)> {
        self.mounts.mount_of(path)
    }

    /// Whether `path` is a directory only because volumes are mounted below it (no volume holds
    /// it).
    pub fn is_virtual_directory(&self, path: &Path) -> bool {
        self.mounts.is_virtual_directory(path)
    }
    /// Looks `path` up (symbolic links are not followed).
    pub fn lookup(&self, path: &Path) -> Result<Node, PathError> {
        let path = normalize(path);
        let failed = |error: StoreError| PathError::store(&path, error);
        let Some((mount, rest)) = self.mount_of(&path) else {
            return Err(failed(StoreError::NotFound));
        };
        let mount = mount.clone();
        let fs = self.open(&mount).map_err(failed)?;
        // Start from the deepest cached directory above the path.
        let mut start = (fs.root(), 0usize);
        {
            let cache = self.directories.lock();
            for depth in (1..=rest.len()).rev() {
                let mut prefix = mount.path.clone();
                for name in &rest[..depth] {
                    prefix.push(std::ffi::OsStr::from_bytes(name));
                }
                if let Some((volume, fid)) = cache.get(&prefix)
                    && *volume == mount.id
                {
                    start = (*fid, depth);
                    break;
                }
            }
        }
        match self.walk(&fs, &mount, start, &rest) {
            Err(StoreError::Stale(_)) if start.1 > 0 => {
                // A cached directory was removed: walk from the root.
                self.directories.lock().clear();
                self.walk(&fs, &mount, (fs.root(), 0), &rest).map_err(failed)
            }
            other => other.map_err(failed),
        }
        .map(|(fid, attributes)| Node { fs, mount, fid, attributes })
    }

    fn walk(
        &self,
        fs: &Arc<ClusterFs>,
        mount: &Mount,
        (mut fid, depth): (Fid, usize),
        rest: &[Vec<u8>],
    ) -> Result<(Fid, Attributes), StoreError> {
        let mut attributes = fs.getattr(fid)?;
        let mut path = mount.path.clone();
        for name in &rest[..depth] {
            path.push(std::ffi::OsStr::from_bytes(name));
        }
        for name in &rest[depth..] {
            if attributes.kind != FileKind::Directory {
                return Err(StoreError::NotDirectory);
            }
            let found = fs.lookup(&self.caller, fid, name)?;
            fid = found.fid;
            attributes = found.attributes;
            path.push(std::ffi::OsStr::from_bytes(name));
            if attributes.kind == FileKind::Directory {
                self.directories.lock().insert(path.clone(), (mount.id, fid));
            }
        }
        Ok((fid, attributes))
    }

    /// Like [`Namespace::lookup`], `None` when the path does not exist.
    pub fn lookup_optional(&self, path: &Path) -> Result<Option<Node>, PathError> {
        match self.lookup(path) {
            Ok(node) => Ok(Some(node)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The parent directory of `path` and the last name.
    pub fn parent(&self, path: &Path) -> Result<(Node, Vec<u8>), PathError> {
        let path = normalize(path);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(PathError::store(&path, StoreError::Invalid("the root has no parent")));
        };
        if self.mounts.mounts().iter().any(|m| m.path == path) {
            return Err(PathError::mount_point(&path, "is a volume's mount point"));
        }
        let node = self.lookup(parent)?;
        if node.attributes.kind != FileKind::Directory {
            return Err(PathError::store(parent, StoreError::NotDirectory));
        }
        Ok((node, name.as_bytes().to_vec()))
    }

    /// Forgets cached directory FIDs at or below `path` (after a removal or a rename).
    pub fn forget(&self, path: &Path) {
        let path = normalize(path);
        self.directories.lock().retain(|cached, _| !cached.starts_with(&path));
    }

    /// Every entry of a directory (without `.` and `..`), with attributes.
    pub fn list(
        &self,
        fs: &ClusterFs,
        directory: Fid,
    ) -> Result<Vec<(Vec<u8>, Fid, Attributes)>, StoreError> {
        let mut entries = Vec::new();
        let mut cookie = 0;
        loop {
            let page = fs.readdir(&self.caller, directory, cookie, READDIR_ENTRIES_MAX, true)?;
            for entry in &page.entries {
                cookie = entry.cookie;
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                let attributes = match entry.attributes {
                    Some(attributes) => attributes,
                    None => match fs.getattr(entry.fid) {
                        Ok(attributes) => attributes,
                        // Removed since the listing.
                        Err(StoreError::Stale(_) | StoreError::NotFound) => continue,
                        Err(error) => return Err(error),
                    },
                };
                entries.push((entry.name.clone(), entry.fid, attributes));
            }
            if page.eof || page.entries.is_empty() {
                break;
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// Like [`Namespace::lookup_optional`], but `Ok(None)` for a virtual directory: a path no
    /// volume holds, or missing from the volume holding it, with volumes mounted below it.
    /// Not found is an error.
    pub fn lookup_or_virtual(&self, path: &Path) -> Result<Option<Node>, PathError> {
        let path = normalize(path);
        if self.mounts.is_virtual_directory(&path) {
            return Ok(None);
        }
        match self.lookup(&path) {
            Ok(node) => Ok(Some(node)),
            Err(error) if error.is_not_found() && self.mounts.has_mounts_below(&path) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The attributes of `path`, made up for a virtual directory
    /// ([`virtual_directory_attributes`]).
    pub fn attributes(&self, path: &Path) -> Result<Attributes, PathError> {
        Ok(self.lookup_or_virtual(path)?.map_or_else(virtual_directory_attributes, |node| node.attributes))
    }

    /// The entries of the directory `path` as a user sees them: its own (unless it is virtual),
    /// the volumes mounted right below it (as their roots, over an entry of the same name), and
    /// virtual directories on the way to deeper mount points (where the directory has no entry
    /// of that name); in name order. A volume in the mount table whose root is not found (removed
    /// since the table was read) is left out.
    pub fn list_directory(&self, path: &Path) -> Result<Vec<Entry>, PathError> {
        let path = normalize(path);
        let mut entries = Vec::new();
        if let Some(node) = self.lookup_or_virtual(&path)? {
            if node.attributes.kind != FileKind::Directory {
                return Err(PathError::store(&path, StoreError::NotDirectory));
            }
            for (name, _, attributes) in
                self.list(&node.fs, node.fid).map_err(|error| PathError::store(&path, error))?
            {
                entries.push(Entry { name, attributes, mount: Some(node.mount.clone()) });
            }
        }
        for (name, mount) in self.mounts.names_toward_mounts(&path) {
            match mount {
                Some(mount) => {
                    let root = match self.lookup(&mount.path) {
                        Ok(root) => root,
                        Err(error) if error.is_not_found() => continue,
                        Err(error) => return Err(error),
                    };
                    entries.retain(|entry| entry.name != name);
                    entries.push(Entry { name, attributes: root.attributes, mount: Some(mount) });
                }
                None if entries.iter().any(|entry| entry.name == name) => {}
                None => entries.push(Entry { name, attributes: virtual_directory_attributes(), mount: None }),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// `mkdir -p`: every missing directory down to `path`, made with `mode`; directories that
    /// exist (virtual ones too) are fine, anything else on the way is "Not a directory".
    pub fn make_directories(&self, path: &Path, mode: u32) -> Result<(), PathError> {
        let path = normalize(path);
        let attributes = SetAttributes { mode: Some(mode & 0o7777), ..SetAttributes::default() };
        let mut partial = PathBuf::from("/");
        for component in path.components().skip(1) {
            partial.push(component);
            match self.lookup_or_virtual(&partial) {
                Ok(None) => continue,
                Ok(Some(node)) if node.attributes.kind == FileKind::Directory => continue,
                Ok(Some(_)) => return Err(PathError::store(&partial, StoreError::NotDirectory)),
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error),
            }
            let (parent, name) = self.parent(&partial)?;
            match parent.fs.mkdir(&self.caller, parent.fid, &name, attributes) {
                Ok(_) => {}
                // Made by someone else meanwhile: fine if it is a directory.
                Err(StoreError::Exists)
                    if self
                        .lookup_optional(&partial)?
                        .is_some_and(|node| node.attributes.kind == FileKind::Directory) => {}
                Err(error) => return Err(PathError::store(&partial, error)),
            }
        }
        Ok(())
    }

    /// Removes a file or an empty directory. A mount point, or a path above one, is refused.
    pub fn remove(&self, path: &Path) -> Result<(), PathError> {
        let path = normalize(path);
        let node = self.lookup(&path)?;
        self.refuse_mount_points(&path)?;
        self.remove_node(&path, node.attributes.kind)
    }

    /// `rm -r`: removes `path` and everything below it; its files `files_parallel` at a time,
    /// then its directories deepest first. A mount point, or a path above one, is refused
    /// (before anything is removed). Entries removed meanwhile by someone else are fine.
    pub fn remove_tree(&self, path: &Path, files_parallel: usize) -> Result<(), PathError> {
        let path = normalize(path);
        let node = self.lookup(&path)?;
        self.refuse_mount_points(&path)?;
        if node.attributes.kind != FileKind::Directory {
            return self.remove_node(&path, node.attributes.kind);
        }
        // The whole tree first (directory FID, name, path of each entry).
        let mut files: Vec<(Fid, Vec<u8>, PathBuf)> = Vec::new();
        let mut directories: Vec<(Fid, Vec<u8>, PathBuf)> = Vec::new();
        let mut pending = vec![(node.fid, path.clone())];
        while let Some((fid, directory)) = pending.pop() {
            for (name, child, attributes) in
                self.list(&node.fs, fid).map_err(|error| PathError::store(&directory, error))?
            {
                let child_path = directory.join(std::ffi::OsStr::from_bytes(&name));
                if attributes.kind == FileKind::Directory {
                    directories.push((fid, name, child_path.clone()));
                    pending.push((child, child_path));
                } else {
                    files.push((fid, name, child_path));
                }
            }
        }
        let failure: Mutex<Option<PathError>> = Mutex::new(None);
        run_parallel(files.len(), files_parallel, |index| {
            let (directory, name, child) = &files[index];
            match node.fs.remove(&self.caller, *directory, name) {
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(error) => {
                    failure.lock().get_or_insert(PathError::store(child, error));
                }
            }
        });
        if let Some(error) = failure.into_inner() {
            return Err(error);
        }
        // Pushed parents first: in reverse, every directory goes before its parent.
        for (directory, name, child) in directories.iter().rev() {
            match node.fs.rmdir(&self.caller, *directory, name) {
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(error) => return Err(PathError::store(child, error)),
            }
        }
        self.remove_node(&path, FileKind::Directory)
    }

    fn refuse_mount_points(&self, path: &Path) -> Result<(), PathError> {
        if self.mounts.mounts().iter().any(|m| m.path == path) {
            return Err(PathError::mount_point(path, "is a volume's mount point"));
        }
        if self.mounts.holds_mount_point(path) {
            return Err(PathError::mount_point(path, "holds a volume's mount point"));
        }
        Ok(())
    }

    fn remove_node(&self, path: &Path, kind: FileKind) -> Result<(), PathError> {
        let (parent, name) = self.parent(path)?;
        let removed = if kind == FileKind::Directory {
            parent.fs.rmdir(&self.caller, parent.fid, &name)
        } else {
            parent.fs.remove(&self.caller, parent.fid, &name)
        };
        removed.map_err(|error| PathError::store(path, error))?;
        self.forget(path);
        Ok(())
    }
}

/// Runs `work(index)` for every index below `count` on up to `threads` threads (the calling
/// one alone when 1).
pub fn run_parallel(count: usize, threads: usize, work: impl Fn(usize) + Sync) {
    let threads = threads.clamp(1, count.max(1));
    if threads == 1 {
        (0..count).for_each(work);
        return;
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        break;
                    }
                    work(index);
                }
            });
        }
    });
}

/// `path` as an absolute path without `.`, `..`, repeated or trailing slashes (a relative path
/// is taken from `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Errors

/// A failure about one path: `PATH: reason`.
#[derive(Debug)]
pub struct PathError {
    path: String,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Store(StoreError),
    Io(std::io::Error),
    Message(String),
    /// A change refused because it would cut a volume off the namespace.
    MountPoint(&'static str),
}

impl PathError {
    pub fn store(path: &Path, error: StoreError) -> PathError {
        PathError { path: path.display().to_string(), cause: Cause::Store(error) }
    }

    pub fn io(path: &Path, error: std::io::Error) -> PathError {
        PathError { path: path.display().to_string(), cause: Cause::Io(error) }
    }

    pub fn message(path: &Path, text: &str) -> PathError {
        PathError { path: path.display().to_string(), cause: Cause::Message(text.to_owned()) }
    }

    pub fn mount_point(path: &Path, why: &'static str) -> PathError {
        PathError { path: path.display().to_string(), cause: Cause::MountPoint(why) }
    }

    /// Whether the change was refused because `path` is or holds a mount point (front ends answer
    /// it as a permission error).
    pub fn is_mount_point(&self) -> bool {
        matches!(self.cause, Cause::MountPoint(_))
    }

    pub fn with_prefix(mut self, prefix: &str) -> PathError {
        self.path = format!("{prefix}{}", self.path);
        self
    }

    /// The store's error, when the failure is one.
    pub fn store_error(&self) -> Option<&StoreError> {
        match &self.cause {
            Cause::Store(error) => Some(error),
            Cause::Io(_) | Cause::Message(_) | Cause::MountPoint(_) => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        match &self.cause {
            Cause::Store(error) => matches!(error, StoreError::NotFound | StoreError::Stale(_)),
            Cause::Io(error) => error.kind() == std::io::ErrorKind::NotFound,
            Cause::Message(_) | Cause::MountPoint(_) => false,
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Store(error) => write!(f, "{}: {}", self.path, store_error_text(error)),
            Cause::Io(error) => {
                let text = error.to_string();
                // "No such file or directory (os error 2)" → "No such file or directory".
                let text = text.split(" (os error").next().unwrap_or(&text);
                write!(f, "{}: {text}", self.path)
            }
            Cause::Message(text) => write!(f, "{}: {text}", self.path),
            Cause::MountPoint(why) => write!(f, "{}: {why}", self.path),
        }
    }
}

impl std::error::Error for PathError {}

/// The one mapping from store errors to what `cairn fs` (and WebHDFS messages) print (the strerror texts where there
/// is one).
pub fn store_error_text(error: &StoreError) -> String {
    match error {
        StoreError::NotFound | StoreError::Stale(_) => "No such file or directory".to_owned(),
        StoreError::Exists => "File exists".to_owned(),
        StoreError::NotDirectory => "Not a directory".to_owned(),
        StoreError::IsDirectory => "Is a directory".to_owned(),
        StoreError::NotEmpty => "Directory not empty".to_owned(),
        StoreError::AccessDenied => "Permission denied".to_owned(),
        StoreError::NotOwner => "Operation not permitted".to_owned(),
        StoreError::NameTooLong => "File name too long".to_owned(),
        StoreError::FileTooLarge => "File too large".to_owned(),
        StoreError::NoSpace => "No space left on device".to_owned(),
        StoreError::QuotaExceeded => "Disk quota exceeded".to_owned(),
        StoreError::CrossVolume => "Invalid cross-device link (a rename between volumes)".to_owned(),
        other => other.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Identities

/// Owners, groups and memberships from this machine's /etc/passwd and /etc/group, parsed once
/// (a [`Namespace`] holds them, read again with its mount table).
#[derive(Debug, Default)]
pub struct Names {
    /// uid → the first account with it, as getpwuid(3) answers.
    users: HashMap<u32, String>,
    /// gid → the first group with it.
    groups: HashMap<u32, String>,
    /// Account name → uid and primary gid (the first line of that name).
    accounts: HashMap<String, (u32, Option<u32>)>,
    /// Group name → gid.
    group_ids: HashMap<String, u32>,
    /// Account name → the groups listing it as a member, in /etc/group order.
    memberships: HashMap<String, Vec<u32>>,
}

impl Names {
    /// Reads /etc/passwd and /etc/group (a missing file counts as empty: ids show as numbers).
    pub fn load() -> Names {
        let read = |file: &str| std::fs::read_to_string(file).unwrap_or_default();
        Names::parse(&read("/etc/passwd"), &read("/etc/group"))
    }

    /// From the texts of a passwd file (`name:x:uid:gid:...`) and a group file
    /// (`name:x:gid:member,member`); malformed lines are skipped.
    pub fn parse(passwd: &str, group: &str) -> Names {
        let mut names = Names::default();
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(Ok(uid))) = (fields.first(), fields.get(2).map(|f| f.parse::<u32>()))
            else {
                continue;
            };
            let primary = fields.get(3).and_then(|gid| gid.parse().ok());
            names.users.entry(uid).or_insert_with(|| (*name).to_owned());
            names.accounts.entry((*name).to_owned()).or_insert((uid, primary));
        }
        for line in group.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(Ok(gid))) = (fields.first(), fields.get(2).map(|f| f.parse::<u32>()))
            else {
                continue;
            };
            names.groups.entry(gid).or_insert_with(|| (*name).to_owned());
            names.group_ids.entry((*name).to_owned()).or_insert(gid);
            for member in fields.get(3).into_iter().flat_map(|m| m.split(',')).filter(|m| !m.is_empty()) {
                let groups = names.memberships.entry(member.to_owned()).or_default();
                if !groups.contains(&gid) {
                    groups.push(gid);
                }
            }
        }
        names
    }

    /// The account name of `uid`, or the number.
    pub fn user(&self, uid: u32) -> String {
        self.users.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }

    /// The group name of `gid`, or the number.
    pub fn group(&self, gid: u32) -> String {
        self.groups.get(&gid).cloned().unwrap_or_else(|| gid.to_string())
    }

    /// `NAME` or `UID`: the uid and, for a name, the primary gid.
    pub fn user_id(&self, text: &str) -> Result<(u32, Option<u32>), String> {
        if let Ok(uid) = text.parse() {
            return Ok((uid, None));
        }
        self.accounts.get(text).copied().ok_or_else(|| format!("{text}: no such user in /etc/passwd"))
    }

    /// `NAME` or `GID`.
    pub fn group_id(&self, text: &str) -> Result<u32, String> {
        if let Ok(gid) = text.parse() {
            return Ok(gid);
        }
        self.group_ids.get(text).copied().ok_or_else(|| format!("{text}: no such group in /etc/group"))
    }

    /// `NAME|UID[:GROUP|GID]`: the caller, with the supplementary groups that list the account.
    /// The account is the one named (several may share a uid); for a number, the first with it.
    pub fn caller_for(&self, text: &str) -> Result<Caller, String> {
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (text, None),
        };
        let (uid, primary) = self.user_id(user)?;
        let gid = match group {
            Some(group) => self.group_id(group)?,
            None => primary.unwrap_or(uid),
        };
        let account = if user.parse::<u32>().is_ok() { self.user(uid) } else { user.to_owned() };
        let groups = self
            .memberships
            .get(&account)
            .map(|groups| groups.iter().copied().filter(|g| *g != gid).take(CALLER_GROUPS_MAX).collect())
            .unwrap_or_default();
        Ok(Caller { uid, gid, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(name: &str, id: u32, path: &str) -> Mount {
        Mount { name: name.to_owned(), id, path: PathBuf::from(path), replication: 3 }
    }

    fn names_of(list: Vec<(Vec<u8>, Option<Mount>)>) -> Vec<(String, Option<String>)> {
        list.into_iter()
            .map(|(name, mount)| (String::from_utf8_lossy(&name).into_owned(), mount.map(|m| m.name)))
            .collect()
    }

    #[test]
    fn the_longest_mount_path_holds_a_path() {
        let table = MountTable::new(vec![
            mount("default", 1, "/"),
            mount("logs", 2, "/logs/"),
            mount("deep", 3, "/logs/app/x"),
        ]);
        let (volume, rest) = table.mount_of(Path::new("/logs/app/x/y/z")).expect("held");
        assert_eq!((volume.name.as_str(), rest), ("deep", vec![b"y".to_vec(), b"z".to_vec()]));
        let (volume, rest) = table.mount_of(Path::new("/logs")).expect("held");
        assert_eq!((volume.name.as_str(), rest.len()), ("logs", 0));
        assert_eq!(table.mount_of(Path::new("/logsx")).map(|(m, _)| m.id), Some(1));
        assert!(!table.is_virtual_directory(Path::new("/")));
    }

    #[test]
    fn paths_above_mount_points_are_virtual_directories_without_a_root_volume() {
        let table = MountTable::new(vec![
            mount("configuration", 1, "/var/cairn/configuration"),
            mount("logs", 2, "/logs"),
        ]);
        for path in ["/", "/var", "/var/cairn"] {
            assert!(table.is_virtual_directory(Path::new(path)), "{path}");
        }
        for path in ["/var/cairn/configuration", "/var/other", "/logs/a", "/tmp"] {
            assert!(!table.is_virtual_directory(Path::new(path)), "{path}");
        }
        assert!(table.mount_of(Path::new("/var")).is_none());
        assert!(table.has_mounts_below(Path::new("/var")));
        assert!(!table.has_mounts_below(Path::new("/logs")));
    }

    #[test]
    fn names_toward_mounts_lists_mount_points_and_the_directories_on_the_way() {
        let table = MountTable::new(vec![
            mount("default", 1, "/"),
            mount("configuration", 2, "/var/cairn/configuration"),
            mount("logs", 3, "/logs"),
            mount("app", 4, "/logs/app"),
            mount("tmp", 5, "/var/tmp"),
        ]);
        assert_eq!(
            names_of(table.names_toward_mounts(Path::new("/"))),
            vec![("logs".to_owned(), Some("logs".to_owned())), ("var".to_owned(), None)]
        );
        assert_eq!(
            names_of(table.names_toward_mounts(Path::new("/var"))),
            vec![("cairn".to_owned(), None), ("tmp".to_owned(), Some("tmp".to_owned()))]
        );
        assert_eq!(
            names_of(table.names_toward_mounts(Path::new("/var/cairn"))),
            vec![("configuration".to_owned(), Some("configuration".to_owned()))]
        );
        assert!(table.names_toward_mounts(Path::new("/var/cairn/configuration")).is_empty());
        assert!(table.names_toward_mounts(Path::new("/elsewhere")).is_empty());
    }

    #[test]
    fn mount_points_and_paths_above_them_are_held() {
        let table = MountTable::new(vec![mount("default", 1, "/"), mount("logs", 2, "/a/logs")]);
        for path in ["/", "/a", "/a/logs"] {
            assert!(table.holds_mount_point(Path::new(path)), "{path}");
        }
        for path in ["/a/logs/x", "/b", "/a/log"] {
            assert!(!table.holds_mount_point(Path::new(path)), "{path}");
        }
    }

    #[test]
    fn mount_point_refusals_are_their_own_kind_of_error() {
        let error = PathError::mount_point(Path::new("/logs"), "is a volume's mount point");
        assert_eq!(error.to_string(), "/logs: is a volume's mount point");
        assert!(error.is_mount_point() && !error.is_not_found() && error.store_error().is_none());
        assert!(!PathError::store(Path::new("/x"), StoreError::NotFound).is_mount_point());
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize(Path::new("a//b/./c/../")), PathBuf::from("/a/b"));
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
    }

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
toor:x:0:0:second root:/root:/bin/sh
alice:x:1000:1000::/home/alice:/bin/sh
alice2:x:1000:1001::/home/alice2:/bin/sh
broken line
bob:x:notanumber:1
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:toor
alice:x:1000:
staff:x:50:alice,alice2
dev:x:60:alice2
alice2:x:1001:
";

    #[test]
    fn names_keep_the_first_account_of_a_shared_id() {
        let names = Names::parse(PASSWD, GROUP);
        assert_eq!(names.user(0), "root");
        assert_eq!(names.user(1000), "alice");
        assert_eq!(names.user(4242), "4242");
        assert_eq!(names.group(50), "staff");
        assert_eq!(names.user_id("alice2"), Ok((1000, Some(1001))));
        assert_eq!(names.user_id("77"), Ok((77, None)));
        assert!(names.user_id("bob").is_err());
        assert_eq!(names.group_id("dev"), Ok(60));
        assert!(names.group_id("nobody-here").unwrap_err().contains("/etc/group"));
    }

    #[test]
    fn a_caller_gets_the_groups_of_the_account_named_not_of_its_uid() {
        let names = Names::parse(PASSWD, GROUP);
        let caller = names.caller_for("alice2").expect("alice2");
        assert_eq!((caller.uid, caller.gid, caller.groups), (1000, 1001, vec![50, 60]));
        let caller = names.caller_for("alice").expect("alice");
        assert_eq!((caller.uid, caller.gid, caller.groups), (1000, 1000, vec![50]));
        // toor shares root's uid and is in wheel; root is not.
        assert_eq!(names.caller_for("toor").expect("toor").groups, vec![10]);
        assert!(names.caller_for("root").expect("root").groups.is_empty());
        // A number stands for the first account with it.
        let caller = names.caller_for("1000:staff").expect("1000:staff");
        assert_eq!((caller.uid, caller.gid, caller.groups), (1000, 50, Vec::<u32>::new()));
        assert!(names.caller_for("nobody-here").is_err());
    }
}
