//! One cluster's namespace as a client sees it (`cairn fs`, `cairn distcp`, the console's
//! WebHDFS): every volume at its mount path, reached through [`ClusterFs`] (no NFS mount), paths
//! resolved to the volume with the longest mount path that is a prefix of them. Also the callers'
//! identities from this machine's /etc/passwd and /etc/group ([`caller_for`], [`Names`]).

use std::collections::HashMap;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_cldb::CldbClient;
use cairn_store::{Attributes, Caller, FileKind, FileSystem, StoreError};
use cairn_types::Fid;
use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};

use crate::{CldbLocator, ClusterFs, Connections};

/// Longest wait for a volume's master when a volume is first opened.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries asked for in one READDIR.
pub const READDIR_ENTRIES_MAX: usize = 1024;

/// A volume of the cluster and where it is mounted.
#[derive(Clone, Debug)]
pub struct Mount {
    pub name: String,
    pub id: u32,
    /// Normalized: `/` or `/a/b` (no trailing slash).
    pub path: PathBuf,
    pub replication: u32,
}

/// What every view of one namespace shares: the runtime, the volumes, the opened volumes.
struct Shared {
    /// Owned by a namespace that started its own runtime ([`Namespace::connect`]).
    _runtime: Option<Runtime>,
    handle: Handle,
    locator: Arc<CldbLocator>,
    connections: Arc<Connections>,
    /// Longest mount path first.
    mounts: Vec<Mount>,
    opened: Mutex<HashMap<u32, Arc<ClusterFs>>>,
}

/// The cluster's volumes, opened on first use, as one caller. Its methods block: call them from
/// plain or blocking threads, never from an async task.
pub struct Namespace {
    shared: Arc<Shared>,
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
        let volumes = handle.block_on(cldb.list_volumes()).map_err(|error| error.to_string())?;
        let mut mounts: Vec<Mount> = volumes
            .into_iter()
            .filter(|info| !info.volume.removed)
            .map(|info| Mount {
                path: normalize(Path::new(&info.volume.mount_path)),
                name: info.volume.name,
                id: info.volume.id,
                replication: info.volume.replication,
            })
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.path.components().count()));
        Ok(Namespace {
            shared: Arc::new(Shared {
                _runtime: runtime,
                handle,
                locator: Arc::new(CldbLocator(locator)),
                connections: Arc::new(Connections::default()),
                mounts,
                opened: Mutex::new(HashMap::new()),
            }),
            directories: Mutex::new(HashMap::new()),
            caller,
        })
    }

    /// The same namespace (volumes, opened volumes) as another caller, with a cache of its own.
    pub fn as_caller(&self, caller: Caller) -> Namespace {
        Namespace { shared: self.shared.clone(), directories: Mutex::new(HashMap::new()), caller }
    }

    pub fn mounts(&self) -> &[Mount] {
        &self.shared.mounts
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
        let mount = self.shared.mounts.iter().find(|m| path.starts_with(&m.path))?;
        let rest = path
            .strip_prefix(&mount.path)
            .ok()?
            .components()
            .map(|c| c.as_os_str().as_bytes().to_vec())
            .collect();
        Some((mount, rest))
    }

    /// Mount points directly below `path` (normalized): their names and volumes.
    pub fn mounts_below(&self, path: &Path) -> Vec<(Vec<u8>, Mount)> {
        self.shared
            .mounts
            .iter()
            .filter(|m| m.path.parent() == Some(path))
            .filter_map(|m| Some((m.path.file_name()?.as_bytes().to_vec(), m.clone())))
            .collect()
    }

    /// Whether `path` is a directory only because volumes are mounted below it (no volume holds
    /// it).
    pub fn is_virtual_directory(&self, path: &Path) -> bool {
        self.mount_of(path).is_none() && self.shared.mounts.iter().any(|m| m.path.starts_with(path))
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
        if self.shared.mounts.iter().any(|m| m.path == path) {
            return Err(PathError::message(&path, "is a volume's mount point"));
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

    pub fn with_prefix(mut self, prefix: &str) -> PathError {
        self.path = format!("{prefix}{}", self.path);
        self
    }

    /// The store's error, when the failure is one.
    pub fn store_error(&self) -> Option<&StoreError> {
        match &self.cause {
            Cause::Store(error) => Some(error),
            Cause::Io(_) | Cause::Message(_) => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        match &self.cause {
            Cause::Store(error) => matches!(error, StoreError::NotFound | StoreError::Stale(_)),
            Cause::Io(error) => error.kind() == std::io::ErrorKind::NotFound,
            Cause::Message(_) => false,
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

/// Owner and group names from this machine's /etc/passwd and /etc/group.
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub fn load() -> Names {
        Names { users: id_names("/etc/passwd"), groups: id_names("/etc/group") }
    }

    pub fn user(&self, uid: u32) -> String {
        self.users.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups.get(&gid).cloned().unwrap_or_else(|| gid.to_string())
    }
}

/// `id → name` from a passwd- or group-format file (name:x:id:...).
fn id_names(file: &str) -> HashMap<u32, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse().ok()?;
            Some((id, name.to_owned()))
        })
        .collect()
}

pub fn id_of(file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&name) {
            return None;
        }
        Some((fields.get(2)?.parse().ok()?, fields.get(3).and_then(|g| g.parse().ok())))
    })
}

pub fn user_id(text: &str) -> Result<(u32, Option<u32>), String> {
    if let Ok(uid) = text.parse() {
        return Ok((uid, None));
    }
    id_of("/etc/passwd", text).ok_or_else(|| format!("{text}: no such user in /etc/passwd"))
}

pub fn group_id(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse() {
        return Ok(gid);
    }
    id_of("/etc/group", text)
        .map(|(gid, _)| gid)
        .ok_or_else(|| format!("{text}: no such group in /etc/group"))
}

/// `--user NAME|UID[:GROUP|GID]`: the caller, with the user's groups from /etc/group.
pub fn caller_for(text: &str) -> Result<Caller, String> {
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    let (uid, primary) = user_id(user)?;
    let gid = match group {
        Some(group) => group_id(group)?,
        None => primary.unwrap_or(uid),
    };
    let name = Names::load().user(uid);
    let groups = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let members = fields.get(3)?;
            members.split(',').any(|m| m == name).then(|| fields.get(2)?.parse().ok())?
        })
        .filter(|g| *g != gid)
        .take(16)
        .collect();
    Ok(Caller { uid, gid, groups })
}
