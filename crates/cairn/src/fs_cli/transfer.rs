//! Copying trees between two [`Tree`]s (the local file system, a cluster): the engine behind
//! `cairn fs put|get` and `cairn distcp`.
//!
//! Files are copied several at a time, and each large file in pieces of `piece_bytes`, several
//! pieces in flight, each piece read from the source and written to the destination at its
//! offset. A cluster destination takes UNSTABLE writes and one COMMIT per file: when the
//! volume's write verifier changed between the first write and the COMMIT (a master restarted
//! or failed over and unstable data may be lost), the whole file is written again, like an NFS
//! client does. Each file's CRC-32C is computed from the bytes read; `verify` reads the
//! destination back and compares.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use cairn_client::ClusterFs;
use cairn_store::{
    Attributes, CreateHow, FileKind, FileSystem, SetAttributes, SetTime, Stability, StoreError, Timestamp,
    WriteVerifier,
};
use cairn_types::Fid;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

use super::PathError;
use cairn_client::namespace::{Namespace, run_parallel};

/// Times a file is written again after its destination lost unstable writes.
const REWRITES_MAX: usize = 3;

/// What kind of object a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Directory,
    Symlink,
    Other,
}

/// What the copy needs to know of a file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) kind: Kind,
    pub(crate) size_bytes: u64,
    /// Seconds and nanoseconds since the Unix epoch.
    pub(crate) mtime: (i64, u32),
    /// Permission bits (`0o7777`).
    pub(crate) mode: u32,
}

/// A file system a copy reads from or writes to. Paths are absolute within the tree.
pub(crate) trait Tree: Send + Sync {
    /// How messages name `path`.
    fn display(&self, path: &Path) -> String;
    fn stat(&self, path: &Path) -> Result<Option<Meta>, PathError>;
    /// The entries of a directory, sorted by name.
    fn list(&self, path: &Path) -> Result<Vec<(OsString, Meta)>, PathError>;
    /// Makes a directory; one that exists already is fine.
    fn make_directory(&self, path: &Path, mode: u32) -> Result<(), PathError>;
    /// `mkdir -p`: makes every missing directory down to `path`.
    fn make_directories(&self, path: &Path, mode: u32) -> Result<(), PathError>;
    fn reader<'a>(&'a self, path: &Path) -> Result<Box<dyn Reader + 'a>, PathError>;
    /// Creates the file, or empties an existing one.
    fn writer<'a>(&'a self, path: &Path, mode: u32) -> Result<Box<dyn Writer + 'a>, PathError>;
    fn set_attributes(
        &self,
        path: &Path,
        mtime: Option<(i64, u32)>,
        mode: Option<u32>,
    ) -> Result<(), PathError>;
}

pub(crate) trait Reader: Sync {
    /// `len` bytes at `offset`, fewer only at the end of the file.
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, PathError>;
}

pub(crate) trait Writer: Sync {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), PathError>;
    /// Makes every write durable. False when the destination may have lost some of them (its
    /// write verifier changed): the file must be written again.
    fn finish(&self) -> Result<bool, PathError>;
}

// ------------------------------------------------------------------------------------------
// The local file system

pub(crate) struct LocalTree {
    /// fsync each file written before calling it done.
    pub(crate) sync: bool,
}

fn local_meta(metadata: &std::fs::Metadata) -> Meta {
    let file_type = metadata.file_type();
    let kind = if file_type.is_file() {
        Kind::File
    } else if file_type.is_dir() {
        Kind::Directory
    } else if file_type.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    Meta {
        kind,
        size_bytes: metadata.len(),
        mtime: (metadata.mtime(), u32::try_from(metadata.mtime_nsec()).unwrap_or(0)),
        mode: metadata.mode() & 0o7777,
    }
}

impl Tree for LocalTree {
    fn display(&self, path: &Path) -> String {
        path.display().to_string()
    }

    fn stat(&self, path: &Path) -> Result<Option<Meta>, PathError> {
        match std::fs::symlink_metadata(path) {
            Ok(metadata) => Ok(Some(local_meta(&metadata))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(PathError::io(path, error)),
        }
    }

    fn list(&self, path: &Path) -> Result<Vec<(OsString, Meta)>, PathError> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| PathError::io(path, e))? {
            let entry = entry.map_err(|e| PathError::io(path, e))?;
            let metadata = entry.metadata().map_err(|e| PathError::io(&entry.path(), e))?;
            entries.push((entry.file_name(), local_meta(&metadata)));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    fn make_directory(&self, path: &Path, mode: u32) -> Result<(), PathError> {
        match std::fs::DirBuilder::new().mode(mode).create(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            Err(error) => Err(PathError::io(path, error)),
        }
    }

    fn make_directories(&self, path: &Path, mode: u32) -> Result<(), PathError> {
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(|e| PathError::io(path, e))
    }

    fn reader<'a>(&'a self, path: &Path) -> Result<Box<dyn Reader + 'a>, PathError> {
        let file = File::open(path).map_err(|e| PathError::io(path, e))?;
        Ok(Box::new(LocalFile { file, path: path.to_owned(), sync: false }))
    }

    fn writer<'a>(&'a self, path: &Path, mode: u32) -> Result<Box<dyn Writer + 'a>, PathError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| PathError::io(path, e))?;
        Ok(Box::new(LocalFile { file, path: path.to_owned(), sync: self.sync }))
    }

    fn set_attributes(
        &self,
        path: &Path,
        mtime: Option<(i64, u32)>,
        mode: Option<u32>,
    ) -> Result<(), PathError> {
        if let Some((seconds, nanoseconds)) = mtime {
            let time = if seconds >= 0 {
                UNIX_EPOCH + Duration::new(seconds.unsigned_abs(), nanoseconds)
            } else {
                UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
            };
            let file = File::open(path).map_err(|e| PathError::io(path, e))?;
            file.set_times(std::fs::FileTimes::new().set_modified(time))
                .map_err(|e| PathError::io(path, e))?;
        }
        if let Some(mode) = mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| PathError::io(path, e))?;
        }
        Ok(())
    }
}

struct LocalFile {
    file: File,
    path: PathBuf,
    sync: bool,
}

impl Reader for LocalFile {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, PathError> {
        let mut data = vec![0; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(count) => done += count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(PathError::io(&self.path, error)),
            }
        }
        data.truncate(done);
        Ok(data)
    }
}

impl Writer for LocalFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), PathError> {
        self.file.write_all_at(data, offset).map_err(|e| PathError::io(&self.path, e))
    }

    fn finish(&self) -> Result<bool, PathError> {
        if self.sync {
            self.file.sync_all().map_err(|e| PathError::io(&self.path, e))?;
        }
        Ok(true)
    }
}

// ------------------------------------------------------------------------------------------
// A cluster

pub(crate) struct ClusterTree {
    pub(crate) namespace: Arc<Namespace>,
    /// Put before paths in messages: empty for `cairn fs`, `cairn://HOST:PORT` for distcp.
    pub(crate) label: String,
}

pub(crate) fn cluster_meta(attributes: &Attributes) -> Meta {
    let kind = match attributes.kind {
        FileKind::Regular => Kind::File,
        FileKind::Directory => Kind::Directory,
        FileKind::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Meta {
        kind,
        size_bytes: attributes.size_bytes,
        mtime: (i64::from(attributes.mtime.seconds), attributes.mtime.nanoseconds),
        mode: attributes.mode & 0o7777,
    }
}

const VIRTUAL_DIRECTORY: Meta = Meta { kind: Kind::Directory, size_bytes: 0, mtime: (0, 0), mode: 0o755 };

impl ClusterTree {
    fn error(&self, path: &Path, error: StoreError) -> PathError {
        PathError::store(Path::new(&self.display(path)), error)
    }

    fn relabel(&self, error: PathError) -> PathError {
        if self.label.is_empty() { error } else { error.with_prefix(&self.label) }
    }
}

impl Tree for ClusterTree {
    fn display(&self, path: &Path) -> String {
        format!("{}{}", self.label, path.display())
    }

    fn stat(&self, path: &Path) -> Result<Option<Meta>, PathError> {
        match self.namespace.lookup_or_virtual(path) {
            Ok(Some(node)) => Ok(Some(cluster_meta(&node.attributes))),
            Ok(None) => Ok(Some(VIRTUAL_DIRECTORY)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(self.relabel(error)),
        }
    }

    fn list(&self, path: &Path) -> Result<Vec<(OsString, Meta)>, PathError> {
        let entries = self.namespace.list_directory(path).map_err(|e| self.relabel(e))?;
        Ok(entries
            .into_iter()
            .map(|entry| {
                let meta =
                    if entry.mount.is_some() { cluster_meta(&entry.attributes) } else { VIRTUAL_DIRECTORY };
                (OsStr::from_bytes(&entry.name).to_owned(), meta)
            })
            .collect())
    }

    fn make_directory(&self, path: &Path, mode: u32) -> Result<(), PathError> {
        if self.stat(path)?.is_some_and(|meta| meta.kind == Kind::Directory) {
            return Ok(());
        }
        let (parent, name) = self.namespace.parent(path).map_err(|e| self.relabel(e))?;
        let attributes = SetAttributes { mode: Some(mode & 0o7777), ..SetAttributes::default() };
        match parent.fs.mkdir(&self.namespace.caller, parent.fid, &name, attributes) {
            Ok(_) => Ok(()),
            Err(StoreError::Exists) if self.stat(path)?.is_some_and(|meta| meta.kind == Kind::Directory) => {
                Ok(())
            }
            Err(error) => Err(self.error(path, error)),
        }
    }

    fn make_directories(&self, path: &Path, mode: u32) -> Result<(), PathError> {
        self.namespace.make_directories(path, mode).map_err(|e| self.relabel(e))
    }

    fn reader<'a>(&'a self, path: &Path) -> Result<Box<dyn Reader + 'a>, PathError> {
        let node = self.namespace.lookup(path).map_err(|e| self.relabel(e))?;
        if node.attributes.kind == FileKind::Directory {
            return Err(self.error(path, StoreError::IsDirectory));
        }
        Ok(Box::new(ClusterFile::new(self, path, node.fs, node.fid)))
    }

    fn writer<'a>(&'a self, path: &Path, mode: u32) -> Result<Box<dyn Writer + 'a>, PathError> {
        let (parent, name) = self.namespace.parent(path).map_err(|e| self.relabel(e))?;
        let attributes =
            SetAttributes { mode: Some(mode & 0o7777), size_bytes: Some(0), ..SetAttributes::default() };
        let created = parent
            .fs
            .create(&self.namespace.caller, parent.fid, &name, CreateHow::Unchecked(attributes))
            .map_err(|e| self.error(path, e))?;
        Ok(Box::new(ClusterFile::new(self, path, parent.fs, created.fid)))
    }

    fn set_attributes(
        &self,
        path: &Path,
        mtime: Option<(i64, u32)>,
        mode: Option<u32>,
    ) -> Result<(), PathError> {
        let node = self.namespace.lookup(path).map_err(|e| self.relabel(e))?;
        let changes = SetAttributes {
            mode,
            mtime: match mtime {
                Some((seconds, nanoseconds)) => SetTime::ClientTime(Timestamp {
                    seconds: u32::try_from(seconds.max(0)).unwrap_or(u32::MAX),
                    nanoseconds,
                }),
                None => SetTime::DontChange,
            },
            ..SetAttributes::default()
        };
        node.fs.setattr(&self.namespace.caller, node.fid, changes, None).map_err(|e| self.error(path, e))?;
        Ok(())
    }
}

/// A file of a cluster, read or written by FID.
pub(crate) struct ClusterFile<'a> {
    tree: &'a ClusterTree,
    path: PathBuf,
    fs: Arc<ClusterFs>,
    fid: Fid,
    /// The verifier of the first UNSTABLE write; `lost` is set when a later write saw another.
    verifier: Mutex<Option<WriteVerifier>>,
    lost: AtomicBool,
}

impl<'a> ClusterFile<'a> {
    fn new(tree: &'a ClusterTree, path: &Path, fs: Arc<ClusterFs>, fid: Fid) -> ClusterFile<'a> {
        ClusterFile {
            tree,
            path: path.to_owned(),
            fs,
            fid,
            verifier: Mutex::new(None),
            lost: AtomicBool::new(false),
        }
    }
}

impl Reader for ClusterFile<'_> {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, PathError> {
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let want = u32::try_from(len - data.len()).unwrap_or(u32::MAX);
            let result = self
                .fs
                .read(&self.tree.namespace.caller, self.fid, offset + data.len() as u64, want)
                .map_err(|e| self.tree.error(&self.path, e))?;
            let eof = result.eof || result.data.is_empty();
            data.extend_from_slice(&result.data);
            if eof {
                break;
            }
        }
        Ok(data)
    }
}

impl Writer for ClusterFile<'_> {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), PathError> {
        let mut done = 0;
        while done < data.len() {
            let result = self
                .fs
                .write(
                    &self.tree.namespace.caller,
                    self.fid,
                    offset + done as u64,
                    &data[done..],
                    Stability::Unstable,
                )
                .map_err(|e| self.tree.error(&self.path, e))?;
            if result.count_bytes == 0 {
                return Err(self
                    .tree
                    .error(&self.path, StoreError::Io(std::io::Error::other("a write wrote nothing"))));
            }
            done += result.count_bytes as usize;
            let mut first = self.verifier.lock();
            match *first {
                None => *first = Some(result.verifier),
                Some(verifier) if verifier != result.verifier => self.lost.store(true, Ordering::SeqCst),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn finish(&self) -> Result<bool, PathError> {
        let committed = self.fs.commit(self.fid, 0, 0).map_err(|e| self.tree.error(&self.path, e))?;
        let first = *self.verifier.lock();
        Ok(!self.lost.load(Ordering::SeqCst) && first.is_none_or(|verifier| verifier == committed.verifier))
    }
}

// ------------------------------------------------------------------------------------------
// The engine

#[derive(Clone, Debug)]
pub(crate) struct CopyConfig {
    /// Replace existing destination files (else an existing one is an error).
    pub(crate) overwrite: bool,
    /// Give the copies the sources' modification times and permission bits.
    pub(crate) preserve: bool,
    /// distcp: skip a file whose copy has the same size, modification time and checksum.
    pub(crate) update: bool,
    /// Read every copy back and compare its CRC-32C with the source's.
    pub(crate) verify: bool,
    pub(crate) files_parallel: usize,
    pub(crate) pieces_parallel: usize,
    pub(crate) piece_bytes: usize,
}

/// What a copy did.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) files_copied: u64,
    pub(crate) files_skipped: u64,
    pub(crate) directories: u64,
    pub(crate) bytes_copied: u64,
    /// One line per file that failed (the copy goes on with the others).
    pub(crate) errors: Vec<PathError>,
}

/// One file or directory to copy.
struct Item {
    source: PathBuf,
    target: PathBuf,
    meta: Meta,
}

/// Copies `source` (a file or a directory tree) to `target` (the file or directory to create).
pub(crate) fn copy_tree(
    from: &dyn Tree,
    source: &Path,
    to: &dyn Tree,
    target: &Path,
    config: &CopyConfig,
    progress: &ProgressBar,
) -> Result<Summary, PathError> {
    let Some(meta) = from.stat(source)? else {
        return Err(PathError::store(Path::new(&from.display(source)), StoreError::NotFound));
    };
    let mut directories = Vec::new();
    let mut files = Vec::new();
    let mut summary = Summary::default();
    walk(from, source, target, meta, &mut directories, &mut files, &mut summary.errors)?;
    progress.inc_length(files.iter().map(|item| item.meta.size_bytes).sum());
    for item in &directories {
        to.make_directory(&item.target, item.meta.mode | 0o700)?;
        summary.directories += 1;
    }
    let results: Vec<Mutex<Option<Result<bool, PathError>>>> =
        files.iter().map(|_| Mutex::new(None)).collect();
    let pieces_parallel = if files.len() == 1 {
        config.pieces_parallel.max(config.files_parallel)
    } else {
        config.pieces_parallel
    };
    let per_file = CopyConfig { pieces_parallel, ..config.clone() };
    run_parallel(files.len(), config.files_parallel, |index| {
        let item = &files[index];
        let result = copy_file(from, to, item, &per_file, progress);
        *results[index].lock() = Some(result);
    });
    for (item, result) in files.iter().zip(results) {
        match result.into_inner() {
            Some(Ok(true)) => {
                summary.files_copied += 1;
                summary.bytes_copied += item.meta.size_bytes;
            }
            Some(Ok(false)) => summary.files_skipped += 1,
            Some(Err(error)) => summary.errors.push(error),
            None => {}
        }
    }
    // Directories last, deepest first: their times would change with every file made in them.
    if config.preserve || config.update {
        for item in directories.iter().rev() {
            to.set_attributes(&item.target, Some(item.meta.mtime), Some(item.meta.mode))?;
        }
    }
    Ok(summary)
}

fn walk(
    from: &dyn Tree,
    source: &Path,
    target: &Path,
    meta: Meta,
    directories: &mut Vec<Item>,
    files: &mut Vec<Item>,
    errors: &mut Vec<PathError>,
) -> Result<(), PathError> {
    match meta.kind {
        Kind::File => files.push(Item { source: source.to_owned(), target: target.to_owned(), meta }),
        Kind::Directory => {
            directories.push(Item { source: source.to_owned(), target: target.to_owned(), meta });
            for (name, child) in from.list(source)? {
                walk(from, &source.join(&name), &target.join(&name), child, directories, files, errors)?;
            }
        }
        Kind::Symlink | Kind::Other => errors.push(PathError::message(
            Path::new(&from.display(source)),
            "skipped: not a regular file or directory",
        )),
    }
    Ok(())
}

/// Runs `work(piece index, offset, length)` over the pieces of `size_bytes`, in parallel; stops
/// at the first error.
fn for_each_piece(
    size_bytes: u64,
    piece_bytes: usize,
    parallel: usize,
    work: impl Fn(usize, u64, usize) -> Result<(), PathError> + Sync,
) -> Result<(), PathError> {
    let pieces = size_bytes.div_ceil(piece_bytes as u64) as usize;
    let failure: Mutex<Option<PathError>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    run_parallel(pieces, parallel, |index| {
        if failed.load(Ordering::SeqCst) {
            return;
        }
        let offset = index as u64 * piece_bytes as u64;
        let len = (size_bytes - offset).min(piece_bytes as u64) as usize;
        if let Err(error) = work(index, offset, len) {
            failed.store(true, Ordering::SeqCst);
            failure.lock().get_or_insert(error);
        }
    });
    match failure.into_inner() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The CRC-32C of a whole file from the CRCs of its consecutive pieces.
fn combine(pieces: &[(u32, usize)]) -> u32 {
    pieces.iter().fold(0, |crc, &(piece, len)| crc32c::crc32c_combine(crc, piece, len))
}

/// The CRC-32C of a file, read in parallel pieces.
pub(crate) fn checksum(
    tree: &dyn Tree,
    path: &Path,
    size_bytes: u64,
    config: &CopyConfig,
) -> Result<u32, PathError> {
    let reader = tree.reader(path)?;
    let pieces = size_bytes.div_ceil(config.piece_bytes as u64) as usize;
    let crcs: Vec<Mutex<(u32, usize)>> = (0..pieces).map(|_| Mutex::new((0, 0))).collect();
    for_each_piece(size_bytes, config.piece_bytes, config.pieces_parallel, |index, offset, len| {
        let data = reader.read_at(offset, len)?;
        if data.len() != len {
            return Err(PathError::message(Path::new(&tree.display(path)), "changed size while being read"));
        }
        *crcs[index].lock() = (crc32c::crc32c(&data), len);
        Ok(())
    })?;
    Ok(combine(&crcs.into_iter().map(Mutex::into_inner).collect::<Vec<_>>()))
}

/// Copies one file. Ok(false): skipped (its copy is up to date).
fn copy_file(
    from: &dyn Tree,
    to: &dyn Tree,
    item: &Item,
    config: &CopyConfig,
    progress: &ProgressBar,
) -> Result<bool, PathError> {
    let size_bytes = item.meta.size_bytes;
    let existing = to.stat(&item.target)?;
    if let Some(existing) = existing {
        if existing.kind == Kind::Directory {
            return Err(PathError::store(Path::new(&to.display(&item.target)), StoreError::IsDirectory));
        }
        if config.update {
            if existing.size_bytes == size_bytes
                && existing.mtime == item.meta.mtime
                && checksum(from, &item.source, size_bytes, config)?
                    == checksum(to, &item.target, size_bytes, config)?
            {
                progress.inc(size_bytes);
                return Ok(false);
            }
        } else if !config.overwrite {
            return Err(PathError::store(Path::new(&to.display(&item.target)), StoreError::Exists));
        }
    }
    let reader = from.reader(&item.source)?;
    let pieces = size_bytes.div_ceil(config.piece_bytes as u64) as usize;
    let mut source_crc = 0;
    for attempt in 1..=REWRITES_MAX {
        let writer = to.writer(&item.target, item.meta.mode | 0o600)?;
        let crcs: Vec<Mutex<(u32, usize)>> = (0..pieces).map(|_| Mutex::new((0, 0))).collect();
        let written = AtomicU64::new(0);
        let copied =
            for_each_piece(size_bytes, config.piece_bytes, config.pieces_parallel, |index, offset, len| {
                let data = reader.read_at(offset, len)?;
                if data.len() != len {
                    return Err(PathError::message(
                        Path::new(&from.display(&item.source)),
                        "shrank while being copied",
                    ));
                }
                writer.write_at(offset, &data)?;
                *crcs[index].lock() = (crc32c::crc32c(&data), len);
                written.fetch_add(len as u64, Ordering::SeqCst);
                progress.inc(len as u64);
                Ok(())
            });
        if let Err(error) = copied {
            progress.dec(written.load(Ordering::SeqCst));
            return Err(error);
        }
        if writer.finish()? {
            source_crc = combine(&crcs.into_iter().map(Mutex::into_inner).collect::<Vec<_>>());
            break;
        }
        progress.dec(size_bytes);
        if attempt == REWRITES_MAX {
            return Err(PathError::message(
                Path::new(&to.display(&item.target)),
                "the destination kept losing unstable writes (its write verifier changed); giving up",
            ));
        }
        progress.println(format!(
            "cairn: {}: the destination may have lost unstable writes (its write verifier changed): writing it again",
            to.display(&item.target)
        ));
    }
    if config.verify {
        let copy_crc = checksum(to, &item.target, size_bytes, config)?;
        if copy_crc != source_crc {
            return Err(PathError::message(
                Path::new(&to.display(&item.target)),
                &format!("checksum mismatch after the copy: CRC-32C {copy_crc:08x}, source {source_crc:08x}"),
            ));
        }
    }
    if config.preserve || config.update {
        to.set_attributes(&item.target, Some(item.meta.mtime), Some(item.meta.mode))?;
    }
    Ok(true)
}

/// A byte-count progress bar on stderr, shown only when stdout is a terminal.
pub(crate) fn progress_bar() -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
