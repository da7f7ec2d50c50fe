//! `cairn fs ...`: files of a cluster through the client library (no NFS mount), with Hadoop's
//! `hadoop fs -put|-get|-ls|...` spellings accepted too.
//!
//! Paths are in the cluster namespace: each volume appears at its mount path (`cairn volume
//! list`), and a path belongs to the volume whose mount path is its longest prefix. `cairn up
//! --nodes N` mounts the `default` volume at `/`, so `/dir/file` is in `default` and a volume
//! created with `--path /logs` (or named `logs`) is `/logs/...`. Volumes are reached through
//! [`cairn_client::ClusterFs`]; the CLDBs are found as for `cairn volume` (`--cldb` or
//! DATA_DIR/cluster.json). Transfers run in [`transfer`]; distcp shares that engine.
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage, 3 a named path does not exist (and nothing
//! else failed). Messages are one line each on stderr: `cairn fs: /x: No such file or directory`.

pub(crate) mod cluster;
pub(crate) mod transfer;

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::{Attributes, Caller, FileKind, FileSystem, SetAttributes, Stability, StoreError};
use clap::{ArgAction, Args, Subcommand};
use serde_json::json;

use crate::admin::Target;
use cairn_client::namespace::{Names, Namespace, Node, normalize};
use transfer::{ClusterTree, CopyConfig, Kind, LocalTree, Tree};

/// Exit code for a path that does not exist.
pub(crate) const EXIT_NOT_FOUND: u8 = 3;
/// Pieces of a large file in flight (and files at a time in a tree).
const PARALLEL_DEFAULT: usize = 8;
/// Bytes of one READ or WRITE of a transfer: the gateway's limit too. Measured on a 3-node
/// `cairn up` (1 GiB put): 1 MiB pieces were as fast as 2 MiB and faster than 4 MiB.
const PIECE_BYTES_DEFAULT: u64 = cairn_types::limits::IO_SIZE_BYTES_MAX as u64;
/// How often `tail -f` looks for new bytes.
const TAIL_FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Args)]
#[command(after_help = "\
Paths are in the cluster namespace: each volume appears at its mount path (`cairn volume list`); \
`cairn up --nodes N` mounts the default volume at /. A path belongs to the volume with the \
longest mount path that prefixes it.

Hadoop spellings work too: `cairn fs -put`, `-copyFromLocal`, `-get`, `-copyToLocal`, `-ls`, `-cat`, \
`-tail`, `-mkdir`, `-rm`, `-mv`, `-cp`, `-stat`, `-du`, `-df`, `-chmod`, `-chown`, `-appendToFile`, \
`-test`.

Exit codes: 0 success, 1 failure, 2 bad usage, 3 a named path does not exist (nothing else failed).")]
pub struct FsArgs {
    #[command(flatten)]
    target: Target,
    /// Act as this user: NAME or UID, optionally :GROUP or :GID (names from this machine's
    /// /etc/passwd and /etc/group) [default: root].
    #[arg(long, global = true, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Pieces (of a large file) or files (of a tree) transferred at a time.
    #[arg(long, global = true, default_value_t = PARALLEL_DEFAULT, value_name = "N")]
    parallel: usize,
    /// Bytes of each READ and WRITE of a transfer (K, M suffixes).
    #[arg(long, global = true, default_value_t = PIECE_BYTES_DEFAULT, value_parser = cairn_types::text::parse_size, value_name = "BYTES")]
    piece_size: u64,
    #[command(subcommand)]
    command: FsCommand,
}

#[derive(Subcommand)]
enum FsCommand {
    /// Copy local files or directory trees into the cluster (`-` reads stdin).
    #[command(visible_alias = "copy-from-local")]
    Put(CopyArgs),
    /// Copy cluster files or directory trees to the local file system.
    #[command(visible_alias = "copy-to-local")]
    Get(CopyArgs),
    /// Copy files or trees within the cluster.
    Cp(CopyArgs),
    /// List a directory (or show a file): mode, copies, owner, group, size, mtime, path.
    #[command(disable_help_flag = true)]
    Ls {
        /// List subdirectories recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Sizes with units (KiB, MiB, ...).
        #[arg(short = 'h', long)]
        human: bool,
        /// List directories themselves, not their contents.
        #[arg(short = 'd', long)]
        directory: bool,
        #[arg(long, action = ArgAction::Help, help = "Print help")]
        help: Option<bool>,
        #[arg(default_value = "/")]
        paths: Vec<PathBuf>,
    },
    /// Print files to stdout.
    Cat {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the end of a file (the last KiB by default); -f goes on printing what is appended.
    Tail {
        /// Keep printing bytes appended to the file (until interrupted).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Bytes from the end to print first.
        #[arg(short = 'c', long, default_value_t = 1024, value_parser = cairn_types::text::parse_size)]
        bytes: u64,
        path: PathBuf,
    },
    /// Make directories.
    Mkdir {
        /// Make parents as needed; no error if the directory exists.
        #[arg(short = 'p', long)]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Remove files (and, with -r, directory trees).
    Rm {
        /// Remove directories and everything below them.
        #[arg(short = 'r', short_alias = 'R', long)]
        recursive: bool,
        /// No error for paths that do not exist.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Rename or move within a volume: `mv SRC DST`, or `mv SRC... DIR`.
    Mv {
        #[arg(required = true, num_args = 1..)]
        sources: Vec<PathBuf>,
        destination: PathBuf,
    },
    /// Show a file's or directory's attributes (`--json`: one object, an array for several paths).
    Stat {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Bytes below each entry of a directory (or, with -s, below each path).
    #[command(disable_help_flag = true)]
    Du {
        /// One total per path given.
        #[arg(short = 's', long)]
        summary: bool,
        /// Sizes with units.
        #[arg(short = 'h', long)]
        human: bool,
        #[arg(long, action = ArgAction::Help, help = "Print help")]
        help: Option<bool>,
        #[arg(default_value = "/")]
        paths: Vec<PathBuf>,
    },
    /// Capacity and use of each volume (or of the volumes holding the paths).
    #[command(disable_help_flag = true)]
    Df {
        /// Sizes with units.
        #[arg(short = 'h', long)]
        human: bool,
        #[arg(long, action = ArgAction::Help, help = "Print help")]
        help: Option<bool>,
        paths: Vec<PathBuf>,
    },
    /// Change permission bits: octal (`0755`) or symbolic (`u+x,go-w`, `a=r`).
    Chmod {
        #[arg(short = 'R', long)]
        recursive: bool,
        mode: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Change owner and group: `USER`, `USER:GROUP` or `:GROUP` (names or numbers).
    Chown {
        #[arg(short = 'R', long)]
        recursive: bool,
        owner: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Append local files (`-` reads stdin) to a cluster file, creating it if needed.
    Append {
        #[arg(required = true, num_args = 1..)]
        sources: Vec<PathBuf>,
        destination: PathBuf,
    },
    /// Test a path: exit 0 when true, 1 when false.
    Test {
        /// Exists.
        #[arg(short = 'e', group = "test")]
        exists: bool,
        /// Is a directory.
        #[arg(short = 'd', group = "test")]
        directory: bool,
        /// Is a regular file.
        #[arg(short = 'f', group = "test")]
        file: bool,
        /// Is a file with a nonzero size.
        #[arg(short = 's', group = "test")]
        nonempty: bool,
        /// Is a file of size zero.
        #[arg(short = 'z', group = "test")]
        empty: bool,
        path: PathBuf,
    },
}

#[derive(Args)]
struct CopyArgs {
    /// Replace existing files.
    #[arg(short = 'f', long)]
    force: bool,
    /// Keep modification times and permission bits.
    #[arg(short = 'p', long)]
    preserve: bool,
    /// Read each copy back and compare its CRC-32C with the source's.
    #[arg(long)]
    verify: bool,
    #[arg(required = true, num_args = 1..)]
    sources: Vec<PathBuf>,
    destination: PathBuf,
}

/// Hadoop's `hadoop fs` spellings and the subcommand each stands for.
const HADOOP_SPELLINGS: &[(&str, &str)] = &[
    ("-put", "put"),
    ("-copyFromLocal", "copy-from-local"),
    ("-get", "get"),
    ("-copyToLocal", "copy-to-local"),
    ("-cp", "cp"),
    ("-ls", "ls"),
    ("-cat", "cat"),
    ("-tail", "tail"),
    ("-mkdir", "mkdir"),
    ("-rm", "rm"),
    ("-mv", "mv"),
    ("-stat", "stat"),
    ("-du", "du"),
    ("-df", "df"),
    ("-chmod", "chmod"),
    ("-chown", "chown"),
    ("-appendToFile", "append"),
    ("-test", "test"),
];

/// Global options of `cairn fs` that take a value (they may come before the subcommand).
const OPTIONS_WITH_VALUES: &[&str] =
    &["--cldb", "--data-dir", "--timeout", "--user", "--parallel", "--piece-size"];

/// Rewrites `cairn fs -put ...` (Hadoop's spelling) to `cairn fs put ...` before clap parses;
/// any other command line is left as it is.
pub fn hadoop_spellings(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_none_or(|a| a != "fs") {
        return args;
    }
    let mut index = 2;
    while index < args.len() {
        let arg = args[index].to_string_lossy().into_owned();
        if let Some((_, name)) = HADOOP_SPELLINGS.iter().find(|(spelling, _)| *spelling == arg) {
            args[index] = OsString::from(name);
            break;
        }
        if OPTIONS_WITH_VALUES.contains(&arg.as_str()) {
            index += 2;
        } else if arg.starts_with('-') {
            index += 1;
        } else {
            break;
        }
    }
    args
}

// ------------------------------------------------------------------------------------------
// Errors

pub(crate) use cairn_client::namespace::PathError;

/// What went wrong in a command: failures are printed as they happen, the exit code remembers
/// the worst.
#[derive(Default)]
struct Outcome {
    failed: bool,
    not_found: bool,
}

impl Outcome {
    fn report(&mut self, error: &PathError) {
        eprintln!("cairn fs: {error}");
        if error.is_not_found() {
            self.not_found = true;
        } else {
            self.failed = true;
        }
    }

    fn report_any(&mut self, error: &anyhow::Error) {
        match error.downcast_ref::<PathError>() {
            Some(error) => self.report(error),
            None => {
                eprintln!("cairn fs: {error:#}");
                self.failed = true;
            }
        }
    }

    fn exit_code(&self) -> ExitCode {
        if self.failed {
            ExitCode::FAILURE
        } else if self.not_found {
            ExitCode::from(EXIT_NOT_FOUND)
        } else {
            ExitCode::SUCCESS
        }
    }
}

// ------------------------------------------------------------------------------------------
// Entry point

/// `cairn fs ...`.
pub fn main(args: FsArgs) -> ExitCode {
    let mut outcome = Outcome::default();
    match run(args, &mut outcome) {
        Ok(()) => {}
        Err(error) if is_broken_pipe(&error) => {}
        Err(error) => outcome.report_any(&error),
    }
    outcome.exit_code()
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

struct Context {
    namespace: Arc<Namespace>,
    tree: ClusterTree,
    json: bool,
    copy: CopyConfig,
}

fn run(args: FsArgs, outcome: &mut Outcome) -> anyhow::Result<()> {
    let caller = match &args.user {
        Some(user) => caller_for(user)?,
        None => Caller::root(),
    };
    let addresses = crate::admin::cldb_addresses(&args.target)?;
    let timeout = Duration::from_secs(args.target.timeout.max(1));
    let namespace = Arc::new(cluster::connect(addresses, timeout, caller)?);
    let piece_bytes = usize::try_from(args.piece_size.clamp(4096, 64 << 20)).unwrap_or(1 << 20);
    let context = Context {
        tree: ClusterTree { namespace: namespace.clone(), label: String::new() },
        namespace,
        json: args.target.json,
        copy: CopyConfig {
            overwrite: false,
            preserve: false,
            update: false,
            verify: false,
            files_parallel: args.parallel.max(1),
            pieces_parallel: args.parallel.max(1),
            piece_bytes,
        },
    };
    let cx = &context;
    match args.command {
        FsCommand::Put(copy) => put(cx, copy, outcome),
        FsCommand::Get(copy) => transfer_command(cx, &cx.tree, &LocalTree { sync: false }, copy, outcome),
        FsCommand::Cp(copy) => transfer_command(cx, &cx.tree, &cx.tree, copy, outcome),
        FsCommand::Ls { recursive, human, directory, help: _, paths } => {
            each_path(&paths, outcome, |path, out| ls(cx, path, recursive, human, directory, out))
        }
        FsCommand::Cat { paths } => each_path(&paths, outcome, |path, _| cat(cx, path)),
        FsCommand::Tail { follow, bytes, path } => tail(cx, &path, bytes, follow),
        FsCommand::Mkdir { parents, paths } => each_path(&paths, outcome, |path, _| mkdir(cx, path, parents)),
        FsCommand::Rm { recursive, force, paths } => {
            each_path(&paths, outcome, |path, _| rm(cx, path, recursive, force))
        }
        FsCommand::Mv { sources, destination } => mv(cx, &sources, &destination, outcome),
        FsCommand::Stat { paths } => stat(cx, &paths, outcome),
        FsCommand::Du { summary, human, help: _, paths } => du(cx, &paths, summary, human, outcome),
        FsCommand::Df { human, help: _, paths } => df(cx, &paths, human),
        FsCommand::Chmod { recursive, mode, paths } => {
            let change = parse_mode(&mode).map_err(|e| anyhow::anyhow!("{mode}: {e}"))?;
            each_path(&paths, outcome, |path, _| {
                apply(cx, path, recursive, &|attributes| SetAttributes {
                    mode: Some(change.apply(attributes.mode, attributes.kind == FileKind::Directory)),
                    ..SetAttributes::default()
                })
            })
        }
        FsCommand::Chown { recursive, owner, paths } => {
            let (uid, gid) = parse_owner(cx.namespace.names(), &owner)?;
            each_path(&paths, outcome, |path, _| {
                apply(cx, path, recursive, &|_| SetAttributes { uid, gid, ..SetAttributes::default() })
            })
        }
        FsCommand::Append { sources, destination } => append(cx, &sources, &destination),
        FsCommand::Test { exists: _, directory, file, nonempty, empty, path } => {
            let meta = cx.tree.stat(&path)?;
            let truth = match meta {
                None => false,
                Some(meta) if directory => meta.kind == Kind::Directory,
                Some(meta) if file => meta.kind == Kind::File,
                Some(meta) if nonempty => meta.kind == Kind::File && meta.size_bytes > 0,
                Some(meta) if empty => meta.kind == Kind::File && meta.size_bytes == 0,
                Some(_) => true,
            };
            if !truth {
                // False is not a failure to report: no message.
                outcome.failed = true;
            }
            Ok(())
        }
    }
}

/// Runs `work` on each path, reporting failures and going on with the next; the output of all
/// goes through one buffered stdout.
fn each_path(
    paths: &[PathBuf],
    outcome: &mut Outcome,
    mut work: impl FnMut(&Path, &mut Output) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut out = Output::new();
    for path in paths {
        match work(path, &mut out) {
            Ok(()) => {}
            Err(error) if is_broken_pipe(&error) => return Ok(()),
            Err(error) => {
                out.flush()?;
                outcome.report_any(&error);
            }
        }
    }
    out.flush()
}

/// Buffered stdout.
struct Output {
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Output {
    fn new() -> Output {
        Output { out: std::io::BufWriter::with_capacity(1 << 20, std::io::stdout()) }
    }

    fn text(&mut self, text: &str) -> anyhow::Result<()> {
        self.bytes(text.as_bytes())
    }

    fn bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.out.write_all(bytes)?;
        Ok(())
    }

    fn json(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.text(&format!("{text}\n"))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Transfers

fn put(cx: &Context, copy: CopyArgs, outcome: &mut Outcome) -> anyhow::Result<()> {
    if copy.sources.iter().any(|s| s == Path::new("-")) {
        if copy.sources.len() != 1 {
            anyhow::bail!("`-` (stdin) must be the only source");
        }
        let target = normalize(&copy.destination);
        if !copy.force && cx.tree.stat(&target)?.is_some() {
            return Err(PathError::store(&target, StoreError::Exists).into());
        }
        return write_stream(cx, &mut std::io::stdin().lock(), &target, false);
    }
    transfer_command(cx, &LocalTree { sync: false }, &cx.tree, copy, outcome)
}

/// `put`, `get`, `cp`: cp's rules for the destination (an existing directory receives the
/// sources by name; several sources need one).
fn transfer_command(
    cx: &Context,
    from: &dyn Tree,
    to: &dyn Tree,
    copy: CopyArgs,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let config =
        CopyConfig { overwrite: copy.force, preserve: copy.preserve, verify: copy.verify, ..cx.copy.clone() };
    let into_directory = to.stat(&copy.destination)?.is_some_and(|m| m.kind == Kind::Directory);
    if copy.sources.len() > 1 && !into_directory {
        let error = match to.stat(&copy.destination)? {
            None => StoreError::NotFound,
            Some(_) => StoreError::NotDirectory,
        };
        return Err(PathError::store(Path::new(&to.display(&copy.destination)), error).into());
    }
    let progress = transfer::progress_bar();
    progress.set_message("copying");
    for source in &copy.sources {
        let target = if into_directory {
            let Some(name) = normalize_local(source).file_name().map(OsStr::to_owned) else {
                outcome.report(&PathError::message(source, "has no name to copy to"));
                continue;
            };
            copy.destination.join(name)
        } else {
            copy.destination.clone()
        };
        if !config.overwrite
            && let Some(meta) = to.stat(&target)?
            && (meta.kind != Kind::Directory || from.stat(source)?.is_some_and(|m| m.kind != Kind::Directory))
        {
            outcome.report(&PathError::store(Path::new(&to.display(&target)), StoreError::Exists));
            continue;
        }
        match transfer::copy_tree(from, source, to, &target, &config, &progress) {
            Ok(summary) => {
                for error in &summary.errors {
                    progress.suspend(|| outcome.report(error));
                }
            }
            Err(error) => progress.suspend(|| outcome.report(&error)),
        }
    }
    progress.finish_and_clear();
    Ok(())
}

/// A local path without trailing `.`/`..` confusion, for taking its last name.
fn normalize_local(path: &Path) -> PathBuf {
    if path.file_name().is_some() {
        return path.to_owned();
    }
    std::path::absolute(path).ok().and_then(|p| p.canonicalize().ok()).unwrap_or_else(|| path.to_owned())
}

/// Writes a stream (stdin) to a cluster file, FILE_SYNC (it cannot be read again), several
/// pieces in flight.
fn write_stream(cx: &Context, input: &mut dyn Read, target: &Path, append: bool) -> anyhow::Result<()> {
    let (fs, fid, mut offset) = if append {
        match cx.namespace.lookup_optional(target)? {
            Some(node) if node.attributes.kind == FileKind::Regular => {
                (node.fs, node.fid, node.attributes.size_bytes)
            }
            Some(_) => return Err(PathError::store(target, StoreError::IsDirectory).into()),
            None => create_file(cx, target)?,
        }
    } else {
        create_file(cx, target)?
    };
    let piece = cx.copy.piece_bytes;
    let caller = &cx.namespace.caller;
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(cx.copy.pieces_parallel);
    let receiver = parking_lot::Mutex::new(receiver);
    let failure: parking_lot::Mutex<Option<PathError>> = parking_lot::Mutex::new(None);
    let read_error = std::thread::scope(|scope| {
        for _ in 0..cx.copy.pieces_parallel {
            scope.spawn(|| {
                loop {
                    let job = receiver.lock().recv();
                    let Ok((at, data)) = job else { break };
                    if failure.lock().is_some() {
                        continue;
                    }
                    if let Err(error) = fs.write(caller, fid, at, &data, Stability::FileSync) {
                        failure.lock().get_or_insert(PathError::store(target, error));
                    }
                }
            });
        }
        let result = loop {
            let mut data = Vec::with_capacity(piece);
            match (&mut *input).take(piece as u64).read_to_end(&mut data) {
                Ok(0) => break Ok(()),
                Ok(count) => {
                    let at = offset;
                    offset += count as u64;
                    if sender.send((at, data)).is_err() || failure.lock().is_some() {
                        break Ok(());
                    }
                }
                Err(error) => break Err(error),
            }
        };
        drop(sender);
        result
    });
    if let Some(error) = failure.into_inner() {
        return Err(error.into());
    }
    read_error.map_err(|e| PathError::io(Path::new("-"), e))?;
    Ok(())
}

fn create_file(
    cx: &Context,
    target: &Path,
) -> anyhow::Result<(Arc<cairn_client::ClusterFs>, cairn_types::Fid, u64)> {
    let (parent, name) = cx.namespace.parent(target)?;
    let attributes = SetAttributes { mode: Some(0o644), size_bytes: Some(0), ..SetAttributes::default() };
    let created = parent
        .fs
        .create(&cx.namespace.caller, parent.fid, &name, cairn_store::CreateHow::Unchecked(attributes))
        .map_err(|e| PathError::store(target, e))?;
    Ok((parent.fs, created.fid, 0))
}

fn append(cx: &Context, sources: &[PathBuf], destination: &Path) -> anyhow::Result<()> {
    let target = normalize(destination);
    for source in sources {
        if source == Path::new("-") {
            write_stream(cx, &mut std::io::stdin().lock(), &target, true)?;
        } else {
            let mut file = std::fs::File::open(source).map_err(|e| PathError::io(source, e))?;
            write_stream(cx, &mut file, &target, true)?;
        }
    }
    Ok(())
}

/// Reads `size` bytes of a file in parallel pieces and hands them to `sink` in order (at most
/// twice the parallelism in memory).
fn read_in_order(
    cx: &Context,
    node: &Node,
    path: &Path,
    from: u64,
    to: u64,
    sink: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let piece = cx.copy.piece_bytes as u64;
    let parallel = cx.copy.pieces_parallel;
    let caller = &cx.namespace.caller;
    type Job = (u64, u32, std::sync::mpsc::SyncSender<Result<Vec<u8>, StoreError>>);
    let (jobs, job_receiver) = std::sync::mpsc::sync_channel::<Job>(parallel * 2);
    let job_receiver = parking_lot::Mutex::new(job_receiver);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    let job = job_receiver.lock().recv();
                    let Ok((offset, count, reply)) = job else { break };
                    let result = node.fs.read(caller, node.fid, offset, count).map(|r| r.data);
                    let _ = reply.send(result);
                }
            });
        }
        let mut pending = std::collections::VecDeque::new();
        let mut next = from;
        let result = loop {
            while pending.len() < parallel * 2 && next < to {
                let count = (to - next).min(piece);
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                if jobs.send((next, count as u32, reply)).is_err() {
                    break;
                }
                pending.push_back(answer);
                next += count;
            }
            let Some(answer) = pending.pop_front() else { break Ok(()) };
            match answer.recv() {
                Ok(Ok(data)) if data.is_empty() => break Ok(()),
                Ok(Ok(data)) => {
                    if let Err(error) = sink(&data) {
                        break Err(error);
                    }
                }
                Ok(Err(error)) => break Err(PathError::store(path, error).into()),
                Err(_) => break Err(anyhow::anyhow!("a reader thread stopped")),
            }
        };
        drop(jobs);
        result
    })
}

fn cat(cx: &Context, path: &Path) -> anyhow::Result<()> {
    let node = cx.namespace.lookup(path)?;
    if node.attributes.kind == FileKind::Directory {
        return Err(PathError::store(path, StoreError::IsDirectory).into());
    }
    let mut stdout = std::io::stdout().lock();
    read_in_order(cx, &node, path, 0, node.attributes.size_bytes, &mut |data| {
        stdout.write_all(data)?;
        Ok(())
    })?;
    stdout.flush()?;
    Ok(())
}

fn tail(cx: &Context, path: &Path, bytes: u64, follow: bool) -> anyhow::Result<()> {
    let node = cx.namespace.lookup(path)?;
    if node.attributes.kind == FileKind::Directory {
        return Err(PathError::store(path, StoreError::IsDirectory).into());
    }
    let mut stdout = std::io::stdout().lock();
    let mut size = node.attributes.size_bytes;
    let mut print = |from: u64, to: u64| -> anyhow::Result<()> {
        read_in_order(cx, &node, path, from, to, &mut |data| {
            stdout.write_all(data)?;
            Ok(())
        })?;
        stdout.flush()?;
        Ok(())
    };
    print(size.saturating_sub(bytes), size)?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(TAIL_FOLLOW_INTERVAL);
        let now = node.fs.getattr(node.fid).map_err(|e| PathError::store(path, e))?.size_bytes;
        if now < size {
            eprintln!("cairn fs: {}: file truncated", path.display());
            size = now;
        } else if now > size {
            print(size, now)?;
            size = now;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Listing and attributes

/// `--user NAME|UID[:GROUP|GID]`: the caller, with the user's groups from /etc/group.
pub(crate) fn caller_for(text: &str) -> anyhow::Result<Caller> {
    Names::load().caller_for(text).map_err(anyhow::Error::msg)
}

/// `USER`, `USER:GROUP`, `:GROUP`.
fn parse_owner(names: &Names, text: &str) -> anyhow::Result<(Option<u32>, Option<u32>)> {
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    let uid = if user.is_empty() { None } else { Some(names.user_id(user).map_err(anyhow::Error::msg)?.0) };
    let gid = match group {
        Some(group) if !group.is_empty() => Some(names.group_id(group).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    if uid.is_none() && gid.is_none() {
        anyhow::bail!("{text}: give an owner, OWNER:GROUP or :GROUP");
    }
    Ok((uid, gid))
}

fn type_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::BlockDevice => "block device",
        FileKind::CharDevice => "character device",
        FileKind::Socket => "socket",
        FileKind::Fifo => "fifo",
    }
}

/// `drwxr-xr-x`.
fn permissions(kind: FileKind, mode: u32) -> String {
    let mut text = String::with_capacity(10);
    text.push(match kind {
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        FileKind::BlockDevice => 'b',
        FileKind::CharDevice => 'c',
        FileKind::Socket => 's',
        FileKind::Fifo => 'p',
        FileKind::Regular => '-',
    });
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (who, (bit, set_x, set)) in special.iter().enumerate() {
        let bits = (mode >> (6 - 3 * who)) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(match (bits & 1 != 0, mode & bit != 0) {
            (true, true) => *set_x,
            (false, true) => *set,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    text
}

fn time_ms(attributes: &Attributes) -> u64 {
    u64::from(attributes.mtime.seconds) * 1000 + u64::from(attributes.mtime.nanoseconds) / 1_000_000
}

/// `2024-05-01 12:00` (UTC).
fn short_time(attributes: &Attributes) -> String {
    let full = cairn_types::text::utc(time_ms(attributes));
    full.get(..16).unwrap_or(&full).to_owned()
}

fn display_path(path: &Path) -> String {
    path.display().to_string()
}

/// One entry as `ls --json` and `stat --json` print it (`volume` null and `replication` 0 for a
/// virtual directory).
fn entry_json(
    path: &Path,
    attributes: &Attributes,
    volume: Option<&cluster::Mount>,
    names: &Names,
) -> serde_json::Value {
    let stamp =
        |t: &cairn_store::Timestamp| u64::from(t.seconds) * 1000 + u64::from(t.nanoseconds) / 1_000_000;
    json!({
        "path": display_path(path),
        "type": type_name(attributes.kind),
        "size_bytes": attributes.size_bytes,
        "used_bytes": attributes.used_bytes,
        "mode": format!("{:04o}", attributes.mode & 0o7777),
        "permissions": permissions(attributes.kind, attributes.mode),
        "uid": attributes.uid,
        "gid": attributes.gid,
        "owner": names.user(attributes.uid),
        "group": names.group(attributes.gid),
        "nlink": attributes.nlink,
        "fileid": attributes.fileid,
        "volume": volume.map(|volume| volume.name.as_str()),
        "replication": volume.map_or(0, |volume| volume.replication),
        "mtime_ms": stamp(&attributes.mtime),
        "atime_ms": stamp(&attributes.atime),
        "ctime_ms": stamp(&attributes.ctime),
    })
}

struct Listing<'a> {
    rows: Vec<[String; 6]>,
    json: Vec<serde_json::Value>,
    names: &'a Names,
    human: bool,
}

impl Listing<'_> {
    fn add(&mut self, path: &Path, attributes: &Attributes, volume: Option<&cluster::Mount>) {
        self.json.push(entry_json(path, attributes, volume, self.names));
        self.rows.push([
            permissions(attributes.kind, attributes.mode),
            match volume {
                Some(volume) if attributes.kind != FileKind::Directory => volume.replication.to_string(),
                _ => "-".to_owned(),
            },
            self.names.user(attributes.uid),
            self.names.group(attributes.gid),
            if self.human {
                cairn_types::text::size(attributes.size_bytes)
            } else {
                attributes.size_bytes.to_string()
            },
            format!("{}  {}", short_time(attributes), display_path(path)),
        ]);
    }

    fn render(&self) -> String {
        let mut widths = [0usize; 6];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            out.push_str(&format!(
                "{:<w0$}  {:>w1$}  {:<w2$}  {:<w3$}  {:>w4$}  {}\n",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4]
            ));
        }
        out
    }
}

/// The entries of a directory as [`Namespace::list_directory`] shows them, with their paths.
fn directory_entries(
    cx: &Context,
    path: &Path,
) -> anyhow::Result<Vec<(PathBuf, Attributes, Option<cluster::Mount>)>> {
    Ok(cx
        .namespace
        .list_directory(path)?
        .into_iter()
        .map(|entry| (path.join(OsStr::from_bytes(&entry.name)), entry.attributes, entry.mount))
        .collect())
}

fn ls(
    cx: &Context,
    path: &Path,
    recursive: bool,
    human: bool,
    directory: bool,
    out: &mut Output,
) -> anyhow::Result<()> {
    let path = normalize(path);
    let mut listing = Listing { rows: Vec::new(), json: Vec::new(), names: cx.namespace.names(), human };
    let is_directory = match cx.namespace.lookup_or_virtual(&path)? {
        None => true,
        Some(node) => {
            if node.attributes.kind != FileKind::Directory || directory {
                listing.add(&path, &node.attributes, Some(&node.mount));
            }
            node.attributes.kind == FileKind::Directory
        }
    };
    if is_directory && !directory {
        list_below(cx, &path, recursive, &mut listing)?;
    }
    if cx.json { out.json(&serde_json::Value::Array(listing.json)) } else { out.text(&listing.render()) }
}

/// A directory's entries, each directory followed by its own when recursive (depth first, in
/// name order, like `hadoop fs -ls -R`).
fn list_below(cx: &Context, path: &Path, recursive: bool, listing: &mut Listing<'_>) -> anyhow::Result<()> {
    for (child, attributes, mount) in directory_entries(cx, path)? {
        listing.add(&child, &attributes, mount.as_ref());
        if recursive && attributes.kind == FileKind::Directory {
            list_below(cx, &child, recursive, listing)?;
        }
    }
    Ok(())
}

fn stat(cx: &Context, paths: &[PathBuf], outcome: &mut Outcome) -> anyhow::Result<()> {
    let names = cx.namespace.names();
    let mut out = Output::new();
    let mut objects = Vec::new();
    for path in paths {
        let path = normalize(path);
        let node = match cx.namespace.lookup(&path) {
            Ok(node) => node,
            Err(error) => {
                outcome.report(&error);
                continue;
            }
        };
        let a = &node.attributes;
        if cx.json {
            objects.push(entry_json(&path, a, Some(&node.mount), names));
            continue;
        }
        let time = |t: &cairn_store::Timestamp| {
            format!("{}.{:09}", cairn_types::text::utc(u64::from(t.seconds) * 1000), t.nanoseconds)
                .replace(" UTC.", ".")
                + " UTC"
        };
        let lines = [
            ("path", display_path(&path)),
            ("type", type_name(a.kind).to_owned()),
            ("size", format!("{} ({})", a.size_bytes, cairn_types::text::size(a.size_bytes))),
            ("mode", format!("{:04o} ({})", a.mode & 0o7777, permissions(a.kind, a.mode))),
            ("owner", format!("{} ({})", names.user(a.uid), a.uid)),
            ("group", format!("{} ({})", names.group(a.gid), a.gid)),
            ("links", a.nlink.to_string()),
            ("fileid", a.fileid.to_string()),
            (
                "volume",
                format!(
                    "{} (mounted at {}, {} copies)",
                    node.mount.name,
                    node.mount.path.display(),
                    node.mount.replication
                ),
            ),
            ("modified", time(&a.mtime)),
            ("accessed", time(&a.atime)),
            ("changed", time(&a.ctime)),
        ];
        if objects.is_empty() && path != normalize(&paths[0]) {
            out.text("\n")?;
        }
        for (key, value) in lines {
            out.text(&format!("{:<10}{value}\n", format!("{key}:")))?;
        }
        objects.push(serde_json::Value::Null);
    }
    if cx.json {
        match (paths.len(), objects.len()) {
            (1, 1) => out.json(&objects[0])?,
            (_, _) => out.json(&serde_json::Value::Array(objects))?,
        }
    }
    out.flush()
}

/// Bytes, bytes on disk and counts below a path.
#[derive(Default, Clone, Copy)]
struct Usage {
    size_bytes: u64,
    used_bytes: u64,
    files: u64,
    directories: u64,
}

fn usage(cx: &Context, path: &Path, attributes: &Attributes) -> anyhow::Result<Usage> {
    let mut total = Usage::default();
    let mut stack = vec![(path.to_owned(), *attributes)];
    while let Some((path, attributes)) = stack.pop() {
        if attributes.kind == FileKind::Directory {
            total.directories += 1;
            for (child, attributes, _) in directory_entries(cx, &path)? {
                stack.push((child, attributes));
            }
        } else {
            total.files += 1;
            total.size_bytes += attributes.size_bytes;
            total.used_bytes += attributes.used_bytes;
        }
    }
    Ok(total)
}

fn du(
    cx: &Context,
    paths: &[PathBuf],
    summary: bool,
    human: bool,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let mut rows: Vec<(PathBuf, Usage, u32)> = Vec::new();
    for path in paths {
        let path = normalize(path);
        let result = (|| -> anyhow::Result<()> {
            let node = cx.namespace.lookup_or_virtual(&path)?;
            let is_directory = node.as_ref().is_none_or(|n| n.attributes.kind == FileKind::Directory);
            if summary || !is_directory {
                let (attributes, replication) = match &node {
                    Some(node) => (node.attributes, node.mount.replication),
                    None => (cairn_client::namespace::virtual_directory_attributes(), 1),
                };
                let mut used = if node.is_some() { usage(cx, &path, &attributes)? } else { Usage::default() };
                if node.is_none() {
                    for (child, attributes, _) in directory_entries(cx, &path)? {
                        let u = usage(cx, &child, &attributes)?;
                        used.size_bytes += u.size_bytes;
                        used.used_bytes += u.used_bytes;
                        used.files += u.files;
                        used.directories += u.directories;
                    }
                }
                rows.push((path.clone(), used, replication));
            } else {
                for (child, attributes, mount) in directory_entries(cx, &path)? {
                    let replication = mount.map_or(1, |mount| mount.replication);
                    rows.push((child.clone(), usage(cx, &child, &attributes)?, replication));
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            outcome.report_any(&error);
        }
    }
    let mut out = Output::new();
    if cx.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(path, u, replication)| {
                json!({
                    "path": display_path(path),
                    "size_bytes": u.size_bytes,
                    "used_bytes": u.used_bytes,
                    "consumed_bytes": u.used_bytes * u64::from(*replication),
                    "files": u.files,
                    "directories": u.directories,
                })
            })
            .collect();
        out.json(&serde_json::Value::Array(list))?;
    } else {
        let show = |bytes: u64| if human { cairn_types::text::size(bytes) } else { bytes.to_string() };
        let cells: Vec<(String, String, String)> = rows
            .iter()
            .map(|(path, u, replication)| {
                (show(u.size_bytes), show(u.used_bytes * u64::from(*replication)), display_path(path))
            })
            .collect();
        let w0 = cells.iter().map(|c| c.0.len()).max().unwrap_or(0);
        let w1 = cells.iter().map(|c| c.1.len()).max().unwrap_or(0);
        for (size, consumed, path) in cells {
            out.text(&format!("{size:>w0$}  {consumed:>w1$}  {path}\n"))?;
        }
    }
    out.flush()
}

fn df(cx: &Context, paths: &[PathBuf], human: bool) -> anyhow::Result<()> {
    let mut mounts: Vec<cluster::Mount> = Vec::new();
    if paths.is_empty() {
        mounts = cx.namespace.mounts().to_vec();
        mounts.sort_by(|a, b| a.path.cmp(&b.path));
    }
    for path in paths {
        let path = normalize(path);
        let Some((mount, _)) = cx.namespace.mount_of(&path) else {
            return Err(PathError::store(&path, StoreError::NotFound).into());
        };
        if !mounts.iter().any(|m| m.id == mount.id) {
            mounts.push(mount.clone());
        }
    }
    let mut rows = Vec::new();
    for mount in &mounts {
        let fs = cx.namespace.open(mount).map_err(|e| PathError::store(&mount.path, e))?;
        let stat = fs.fsstat().map_err(|e| PathError::store(&mount.path, e))?;
        rows.push((mount, stat));
    }
    let mut out = Output::new();
    if cx.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(mount, stat)| {
                json!({
                    "volume": mount.name,
                    "mount_path": display_path(&mount.path),
                    "size_bytes": stat.total_bytes,
                    "used_bytes": stat.total_bytes.saturating_sub(stat.free_bytes),
                    "available_bytes": stat.available_bytes,
                    "files": stat.total_files.saturating_sub(stat.free_files),
                    "available_files": stat.available_files,
                })
            })
            .collect();
        return out.json(&serde_json::Value::Array(list)).and_then(|()| out.flush());
    }
    let show = |bytes: u64| if human { cairn_types::text::size(bytes) } else { bytes.to_string() };
    let mut table = crate::admin::Table::new(&["VOLUME", "SIZE", "USED", "AVAILABLE", "USE%", "MOUNTED ON"]);
    for (mount, stat) in &rows {
        let used = stat.total_bytes.saturating_sub(stat.free_bytes);
        let percent = if stat.total_bytes == 0 { 0 } else { (used * 100).div_ceil(stat.total_bytes) };
        table.row(vec![
            mount.name.clone(),
            show(stat.total_bytes),
            show(used),
            show(stat.available_bytes),
            format!("{percent}%"),
            display_path(&mount.path),
        ]);
    }
    out.text(&table.render_or("No volumes."))?;
    out.flush()
}

// ------------------------------------------------------------------------------------------
// Changes

fn mkdir(cx: &Context, path: &Path, parents: bool) -> anyhow::Result<()> {
    let path = normalize(path);
    if parents {
        return Ok(cx.namespace.make_directories(&path, 0o755)?);
    }
    let (parent, name) = cx.namespace.parent(&path)?;
    let attributes = SetAttributes { mode: Some(0o755), ..SetAttributes::default() };
    parent
        .fs
        .mkdir(&cx.namespace.caller, parent.fid, &name, attributes)
        .map_err(|e| PathError::store(&path, e))?;
    Ok(())
}

fn rm(cx: &Context, path: &Path, recursive: bool, force: bool) -> anyhow::Result<()> {
    let path = normalize(path);
    let node = match cx.namespace.lookup(&path) {
        Ok(node) => node,
        Err(error) if force && error.is_not_found() => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    if node.attributes.kind == FileKind::Directory && !recursive {
        return Err(PathError::store(&path, StoreError::IsDirectory).into());
    }
    Ok(cx.namespace.remove_tree(&path, cx.copy.files_parallel)?)
}

fn mv(cx: &Context, sources: &[PathBuf], destination: &Path, outcome: &mut Outcome) -> anyhow::Result<()> {
    let destination = normalize(destination);
    let into_directory = cx.tree.stat(&destination)?.is_some_and(|m| m.kind == Kind::Directory);
    if sources.len() > 1 && !into_directory {
        return Err(PathError::store(&destination, StoreError::NotDirectory).into());
    }
    for source in sources {
        let source = normalize(source);
        let result = (|| -> anyhow::Result<()> {
            let target = match (into_directory, source.file_name()) {
                (true, Some(name)) => destination.join(name),
                _ => destination.clone(),
            };
            cx.namespace.lookup(&source)?;
            let (from, from_name) = cx.namespace.parent(&source)?;
            let (to, to_name) = cx.namespace.parent(&target)?;
            if from.mount.id != to.mount.id {
                return Err(PathError::store(&source, StoreError::CrossVolume).into());
            }
            from.fs
                .rename(&cx.namespace.caller, from.fid, &from_name, to.fid, &to_name)
                .map_err(|e| PathError::store(&source, e))?;
            cx.namespace.forget(&source);
            cx.namespace.forget(&target);
            Ok(())
        })();
        if let Err(error) = result {
            outcome.report_any(&error);
        }
    }
    Ok(())
}

/// Applies a SETATTR built from each object's attributes to a path (and, recursive, to
/// everything below it).
fn apply(
    cx: &Context,
    path: &Path,
    recursive: bool,
    change: &dyn Fn(&Attributes) -> SetAttributes,
) -> anyhow::Result<()> {
    let path = normalize(path);
    let node = cx.namespace.lookup(&path)?;
    let caller = &cx.namespace.caller;
    let mut stack = vec![(node.fid, node.attributes, path.clone())];
    while let Some((fid, attributes, here)) = stack.pop() {
        node.fs.setattr(caller, fid, change(&attributes), None).map_err(|e| PathError::store(&here, e))?;
        if recursive && attributes.kind == FileKind::Directory {
            for (name, child, attributes) in
                cx.namespace.list(&node.fs, fid).map_err(|e| PathError::store(&here, e))?
            {
                stack.push((child, attributes, here.join(OsStr::from_bytes(&name))));
            }
        }
    }
    Ok(())
}

/// A chmod argument: an absolute octal mode, or symbolic clauses.
#[derive(Debug, PartialEq, Eq)]
enum ModeChange {
    Absolute(u32),
    Symbolic(Vec<(u32, char, u32, bool)>),
}

impl ModeChange {
    /// The new mode from the current one (`X` sets execute on directories or when some execute
    /// bit is set).
    fn apply(&self, mode: u32, is_directory: bool) -> u32 {
        match self {
            ModeChange::Absolute(mode) => *mode,
            ModeChange::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for &(who, op, bits, conditional_x) in clauses {
                    let mut bits = bits;
                    if conditional_x && (is_directory || mode & 0o111 != 0) {
                        bits |= 0o111;
                    }
                    let bits = bits & who;
                    match op {
                        '+' => mode |= bits,
                        '-' => mode &= !bits,
                        _ => mode = (mode & !who) | bits,
                    }
                }
                mode
            }
        }
    }
}

/// `0755`, `755`, `u+x`, `go-w`, `a=r,u+w`, `+X`.
fn parse_mode(text: &str) -> Result<ModeChange, String> {
    if !text.is_empty() && text.chars().all(|c| c.is_digit(8)) {
        let mode = u32::from_str_radix(text, 8).map_err(|e| e.to_string())?;
        if mode > 0o7777 {
            return Err("octal modes go up to 7777".to_owned());
        }
        return Ok(ModeChange::Absolute(mode));
    }
    let mut clauses = Vec::new();
    for clause in text.split(',') {
        let op_at = clause.find(['+', '-', '=']).ok_or("expected an octal mode or [ugoa][+-=][rwxXst]")?;
        let (who_text, rest) = clause.split_at(op_at);
        let mut who = 0;
        for c in who_text.chars() {
            who |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return Err(format!("unknown who {c:?}")),
            };
        }
        if who == 0 {
            who = 0o7777;
        }
        let mut chars = rest.chars();
        let op = chars.next().ok_or("missing operator")?;
        let mut bits = 0;
        let mut conditional_x = false;
        for c in chars {
            bits |= match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' => {
                    conditional_x = true;
                    0
                }
                's' => 0o6000,
                't' => 0o1000,
                _ => return Err(format!("unknown permission {c:?}")),
            };
        }
        clauses.push((who, op, bits, conditional_x));
    }
    Ok(ModeChange::Symbolic(clauses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hadoop_spellings_become_subcommands() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            hadoop_spellings(args(&["cairn", "fs", "-put", "a", "/b"])),
            args(&["cairn", "fs", "put", "a", "/b"])
        );
        assert_eq!(
            hadoop_spellings(args(&["cairn", "fs", "--cldb", "h:1", "-copyToLocal", "/a", "b"])),
            args(&["cairn", "fs", "--cldb", "h:1", "copy-to-local", "/a", "b"])
        );
        // Only the subcommand position is rewritten.
        assert_eq!(
            hadoop_spellings(args(&["cairn", "fs", "rm", "-rm"])),
            args(&["cairn", "fs", "rm", "-rm"])
        );
        assert_eq!(hadoop_spellings(args(&["cairn", "volume", "-ls"])), args(&["cairn", "volume", "-ls"]));
    }

    #[test]
    fn modes_parse_and_apply() {
        assert_eq!(parse_mode("0755"), Ok(ModeChange::Absolute(0o755)));
        assert_eq!(parse_mode("640").map(|m| m.apply(0o777, false)), Ok(0o640));
        assert_eq!(parse_mode("u+x").map(|m| m.apply(0o644, false)), Ok(0o744));
        assert_eq!(parse_mode("go-w").map(|m| m.apply(0o666, false)), Ok(0o644));
        assert_eq!(parse_mode("a=r,u+w").map(|m| m.apply(0o777, false)), Ok(0o644));
        assert_eq!(parse_mode("+X").map(|m| m.apply(0o644, true)), Ok(0o755));
        assert_eq!(parse_mode("+X").map(|m| m.apply(0o644, false)), Ok(0o644));
        assert!(parse_mode("9").is_err() && parse_mode("q+r").is_err() && parse_mode("u*x").is_err());
    }

    #[test]
    fn permissions_print_like_ls() {
        assert_eq!(permissions(FileKind::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(FileKind::Regular, 0o4644), "-rwSr--r--");
        assert_eq!(permissions(FileKind::Directory, 0o1777), "drwxrwxrwt");
    }

    #[test]
    fn store_errors_print_as_strerror() {
        let error = PathError::store(Path::new("/x"), StoreError::NotFound);
        assert_eq!(error.to_string(), "/x: No such file or directory");
        assert!(error.is_not_found());
        let error = PathError::io(Path::new("a"), std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(error.to_string(), "a: Permission denied");
    }
}
