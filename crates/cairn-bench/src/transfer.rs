//! `cairn-bench transfer`: moving data in and out of a cluster without an NFS mount, against
//! `cp` on the local disk. A 3-node cluster on this machine (`cairn up --nodes 3`, the default
//! volume with 3 copies) in a network namespace of its own, its data on a fresh loop-mounted ext4;
//! the sources and the references on that same file system:
//!
//! - `cairn fs put` of one large file (default 1 GiB), against `cp` of it to the same disk
//!   followed by `sync`;
//! - `cairn fs get` of it back to the disk, followed by `sync`, against the same `cp`;
//! - `cairn distcp` of a tree of many small files (default 10,000 of 4 KiB, in 100 folders) into
//!   the cluster, against `cp -r` of the tree plus `sync`.
//!
//! Every cluster transfer is timed from the command's start to its end (and the `sync` after a
//! `get`), with cold caches (`drop_caches` before each). The copy got back is compared with the
//! source byte for byte, and distcp reads every copy back and checks its CRC-32C itself. The
//! reference is what the disk does for the same bytes with one copy; the cluster writes three
//! (all on this one disk), so a put or distcp at a third of `cp`'s rate is the disk's limit.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::progress;
use crate::replication::wait_for_copies;
use crate::report::{median, now_utc};
use crate::servers::{ClusterSpec, RunningServer};
use crate::system::{LoopFs, MIB, check_interrupted, drop_caches, run_checked};

/// Copies of the default volume, and nodes.
const COPIES: u32 = 3;
/// Folders the small files are spread over.
const TREE_FOLDERS: usize = 100;

#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// Size of the large file put and got (K, M, G suffixes).
    #[arg(long, default_value = "1G", value_parser = crate::parse_size)]
    size: u64,
    /// Small files in the tree copied with distcp.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Size of each small file (K, M suffixes).
    #[arg(long, default_value = "4K", value_parser = crate::parse_size)]
    file_size: u64,
    /// Repeat everything N times and report medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    #[command(flatten)]
    cairn: crate::CairnBinary,
    /// Where the temporary ext4 images go (on the disk under test).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
}

/// One run's figures, in seconds.
#[derive(Clone, Copy, Debug, Default)]
struct Times {
    cp_file: f64,
    put: f64,
    get: f64,
    cp_tree: f64,
    distcp: f64,
}

pub fn run(args: &TransferArgs) -> Result<()> {
    crate::ensure_root()?;
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.size >= 16 << 20, "--size must be at least 16M");
    ensure!(args.files >= 1 && args.file_size >= 1, "--files and --file-size must be positive");
    let cairn = args.cairn.resolve()?;
    let tree_bytes = args.files as u64 * args.file_size;
    // Sparse: the source, the reference copy, three copies in the cluster and the copy got back.
    let image_bytes = (16u64 << 30).max((args.size + tree_bytes) * 8);
    let mut runs = Vec::new();
    for run_index in 0..args.runs {
        check_interrupted()?;
        progress(&format!("run {} of {}", run_index + 1, args.runs));
        runs.push(bench_run(args, &cairn, image_bytes)?);
    }
    print!("{}", table(args, &runs));
    Ok(())
}

fn bench_run(args: &TransferArgs, cairn: &Path, image_bytes: u64) -> Result<Times> {
    let fs = LoopFs::create(&args.work_dir, image_bytes)?;
    let root = fs.path();
    let source = root.join("source");
    std::fs::create_dir_all(source.join("tree"))?;
    let big = source.join("big.bin");
    progress(&format!("writing {} MiB of random bytes and {} small files", args.size >> 20, args.files));
    run_checked(Command::new("dd").arg("if=/dev/urandom").arg(format!("of={}", big.display())).args([
        "bs=1M",
        &format!("count={}", args.size >> 20),
        "status=none",
    ]))?;
    write_tree(&source.join("tree"), args.files, args.file_size)?;
    let mut times = Times::default();

    let reference = root.join("reference");
    std::fs::create_dir_all(&reference)?;
    drop_caches()?;
    times.cp_file = timed(Command::new("sh").arg("-c").arg(format!(
        "cp {} {} && sync",
        big.display(),
        reference.join("big.bin").display()
    )))?;
    progress(&format!("[cp] {:.0} MiB/s for the large file", mib(args.size) / times.cp_file));
    drop_caches()?;
    times.cp_tree = timed(Command::new("sh").arg("-c").arg(format!(
        "cp -r {} {} && sync",
        source.join("tree").display(),
        reference.join("tree").display()
    )))?;
    progress(&format!("[cp] {:.0} files/s for the tree", args.files as f64 / times.cp_tree));
    check_interrupted()?;

    let dir = root.join("cairn");
    let netns = format!("cb{}-xfer", std::process::id());
    let spec = ClusterSpec { nodes: COPIES as u16, replication: COPIES, replication_type: None };
    let mut server = RunningServer::start_cairn_cluster(cairn, &dir, &netns, spec)?;
    wait_for_copies(cairn, &dir, &netns, COPIES, &mut server)?;
    let in_cluster = |arguments: &[&str]| {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &netns]).arg(cairn).args(arguments).arg("--data-dir").arg(&dir);
        command
    };
    let path = |p: &Path| p.display().to_string();

    drop_caches()?;
    times.put = timed(&mut in_cluster(&["fs", "put", &path(&big), "/big.bin"]))?;
    progress(&format!("[cairn] fs put {:.0} MiB/s", mib(args.size) / times.put));
    let back = root.join("back.bin");
    drop_caches()?;
    let started = Instant::now();
    run_checked(&mut in_cluster(&["fs", "get", "/big.bin", &path(&back)]))?;
    run_checked(&mut Command::new("sync"))?;
    times.get = started.elapsed().as_secs_f64();
    progress(&format!("[cairn] fs get {:.0} MiB/s", mib(args.size) / times.get));
    run_checked(Command::new("cmp").arg(&big).arg(&back))
        .context("the file got back differs from the source")?;
    check_interrupted()?;

    drop_caches()?;
    let tree_url = format!("file://{}", source.join("tree").display());
    times.distcp = timed(&mut in_cluster(&["distcp", &tree_url, "/"]))?;
    progress(&format!("[cairn] distcp {:.0} files/s", args.files as f64 / times.distcp));
    server.check_alive()?;
    drop(server);
    drop(fs);
    Ok(times)
}

/// `count` files of `size` random bytes, spread over [`TREE_FOLDERS`] folders of `dir`.
fn write_tree(dir: &Path, count: usize, size: u64) -> Result<()> {
    let mut random = std::fs::File::open("/dev/urandom")?;
    let mut bytes = vec![0u8; usize::try_from(size)?];
    for index in 0..count {
        let folder = dir.join(format!("d{:03}", index % TREE_FOLDERS));
        if index < TREE_FOLDERS {
            std::fs::create_dir_all(&folder)?;
        }
        random.read_exact(&mut bytes)?;
        std::fs::write(folder.join(format!("f{index:05}")), &bytes)?;
    }
    Ok(())
}

/// Seconds `command` took; fails if it failed.
fn timed(command: &mut Command) -> Result<f64> {
    let started = Instant::now();
    run_checked(command)?;
    Ok(started.elapsed().as_secs_f64())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

fn table(args: &TransferArgs, runs: &[Times]) -> String {
    let pick =
        |field: fn(&Times) -> f64| median(&runs.iter().map(field).collect::<Vec<f64>>()).unwrap_or(f64::NAN);
    let (cp_file, put, get, cp_tree, distcp) =
        (pick(|t| t.cp_file), pick(|t| t.put), pick(|t| t.get), pick(|t| t.cp_tree), pick(|t| t.distcp));
    let size = mib(args.size);
    let files = args.files as f64;
    let mut out = String::new();
    let _ = writeln!(out, "\ncairn-bench transfer, {} ({} run(s), medians)", now_utc(), runs.len());
    let _ = writeln!(out, "command: {}", crate::command_line());
    let _ = writeln!(
        out,
        "cluster: 3 nodes, default volume with {COPIES} copies, one disk; reference: cp to the same disk + sync\n"
    );
    let _ = writeln!(out, "| transfer | unit | Cairn | cp | Cairn/cp |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: |");
    let mut row = |label: String, unit: &str, cairn: f64, reference: f64| {
        let _ =
            writeln!(out, "| {label} | {unit} | {cairn:.0} | {reference:.0} | {:.2}x |", cairn / reference);
    };
    row(format!("cairn fs put, {} MiB", args.size >> 20), "MiB/s", size / put, size / cp_file);
    row(format!("cairn fs get, {} MiB (+ sync)", args.size >> 20), "MiB/s", size / get, size / cp_file);
    row(
        format!("cairn distcp, {} files of {} KiB", args.files, args.file_size >> 10),
        "files/s",
        files / distcp,
        files / cp_tree,
    );
    let _ = writeln!(
        out,
        "\nseconds: put {put:.2}, get {get:.2}, cp {cp_file:.2}; distcp {distcp:.2}, cp -r {cp_tree:.2}"
    );
    out
}
