//! One cluster's namespace as `cairn fs` sees it: every volume at its mount path, reached through
//! [`ClusterFs`] (no NFS mount), paths resolved to the volume with the longest mount path that is
//! a prefix of them.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_client::{CldbLocator, ClusterFs, Connections};
use cairn_store::{Attributes, Caller, FileKind, FileSystem, StoreError};
use cairn_types::Fid;
use parking_lot::Mutex;

use super::PathError;

/// Longest wait for a volume's master when a volume is first opened.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries asked for in one READDIR.
pub(crate) const READDIR_ENTRIES_MAX: usize = 1024;

/// A volume of the cluster and where it is mounted.
#[derive(Clone, Debug)]
pub(crate) struct Mount {
    pub(crate) name: String,
    pub(crate) id: u32,
    /// Normalized: `/` or `/a/b` (no trailing slash).
    pub(crate) path: PathBuf,
    pub(crate) replication: u32,
}

/// The cluster's volumes, opened on first use. Its methods block: call them from plain threads,
/// never from a task of its runtime.
pub(crate) struct Namespace {
    runtime: tokio::runtime::Runtime,
    locator: Arc<CldbLocator>,
    connections: Arc<Connections>,
    /// Longest mount path first.
    mounts: Vec<Mount>,
    opened: Mutex<HashMap<u32, Arc<ClusterFs>>>,
    /// FIDs of directories already looked up (cluster path → FID), to spare tree walks.
    directories: Mutex<HashMap<PathBuf, (u32, Fid)>>,
    pub(crate) caller: Caller,
}

/// A path looked up: its volume, FID and attributes.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) fs: Arc<ClusterFs>,
    pub(crate) mount: Mount,
    pub(crate) fid: Fid,
    pub(crate) attributes: Attributes,
}

impl Namespace {
    /// Asks the CLDBs for the volumes.
    pub(crate) fn connect(
        addresses: Vec<String>,
        timeout: Duration,
        caller: Caller,
    ) -> anyhow::Result<Namespace> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let cldb = crate::admin::client(addresses.clone(), timeout);
        let volumes = runtime.block_on(cldb.list_volumes()).map_err(|error| {
            anyhow::anyhow!("cannot list the volumes (asked the CLDBs {}): {error}", addresses.join(","))
        })?;
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
        // The locator's client follows masters for as long as the retry window of ClusterFs.
        let locator = Arc::new(CldbLocator(crate::admin::client(addresses, timeout.max(OPEN_TIMEOUT))));
        Ok(Namespace {
            runtime,
            locator,
            connections: Arc::new(Connections::default()),
            mounts,
            opened: Mutex::new(HashMap::new()),
            directories: Mutex::new(HashMap::new()),
            caller,
        })
    }

    pub(crate) fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// The volume, opened (once).
    pub(crate) fn open(&self, mount: &Mount) -> Result<Arc<ClusterFs>, StoreError> {
        if let Some(fs) = self.opened.lock().get(&mount.id) {
            return Ok(fs.clone());
        }
        let open = ClusterFs::open(self.locator.clone(), self.connections.clone(), mount.id);
        let fs = match self.runtime.block_on(async { tokio::time::timeout(OPEN_TIMEOUT, open).await }) {
            Ok(result) => Arc::new(result?),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "volume {} has no reachable master after {}s",
                    mount.name,
                    OPEN_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(self.opened.lock().entry(mount.id).or_insert(fs).clone())
    }

    /// The volume holding `path` (normalized) and the names below its mount path.
    pub(crate) fn mount_of(&self, path: &Path) -> Option<(&Mount, Vec<Vec<u8>>)> {
        let mount = self.mounts.iter().find(|m| path.starts_with(&m.path))?;
        let rest = path
            .strip_prefix(&mount.path)
            .ok()?
            .components()
            .map(|c| c.as_os_str().as_bytes().to_vec())
            .collect();
        Some((mount, rest))
    }

    /// Mount points directly below `path` (normalized): their names and volumes.
    pub(crate) fn mounts_below(&self, path: &Path) -> Vec<(Vec<u8>, Mount)> {
        self.mounts
            .iter()
            .filter(|m| m.path.parent() == Some(path))
            .filter_map(|m| Some((m.path.file_name()?.as_bytes().to_vec(), m.clone())))
            .collect()
    }

    /// Whether `path` is a directory only because volumes are mounted below it (no volume holds
    /// it).
    pub(crate) fn is_virtual_directory(&self, path: &Path) -> bool {
        self.mount_of(path).is_none() && self.mounts.iter().any(|m| m.path.starts_with(path))
    }

    /// Looks `path` up (symbolic links are not followed).
    pub(crate) fn lookup(&self, path: &Path) -> Result<Node, PathError> {
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
    pub(crate) fn lookup_optional(&self, path: &Path) -> Result<Option<Node>, PathError> {
        match self.lookup(path) {
            Ok(node) => Ok(Some(node)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The parent directory of `path` and the last name.
    pub(crate) fn parent(&self, path: &Path) -> Result<(Node, Vec<u8>), PathError> {
        let path = normalize(path);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(PathError::store(&path, StoreError::Invalid("the root has no parent")));
        };
        if self.mounts.iter().any(|m| m.path == path) {
            return Err(PathError::message(&path, "is a volume's mount point"));
        }
        let node = self.lookup(parent)?;
        if node.attributes.kind != FileKind::Directory {
            return Err(PathError::store(parent, StoreError::NotDirectory));
        }
        Ok((node, name.as_bytes().to_vec()))
    }

    /// Forgets cached directory FIDs at or below `path` (after a removal or a rename).
    pub(crate) fn forget(&self, path: &Path) {
        let path = normalize(path);
        self.directories.lock().retain(|cached, _| !cached.starts_with(&path));
    }

    /// Every entry of a directory (without `.` and `..`), with attributes.
    pub(crate) fn list(
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
pub(crate) fn normalize(path: &Path) -> PathBuf {
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
