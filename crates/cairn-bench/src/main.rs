//! `cairn-bench`: Cairn against NFS-Ganesha (FSAL VFS) on the same disk, with the same clients,
//! in the same run; prints figures, ratios and pass/fail lines against the targets.
//!
//! Each server gets a fresh loop-mounted ext4 and a network namespace of its own; fio's `nfs`
//! engine (libnfs) drives the data tests and a pipelined NFSv3 client of our own the metadata
//! tests. See `docs/benchmarks.md` for what each figure means. Needs root.
//!
//! `cairn-bench coord` is a second benchmark: Cairn's coord quorum against Apache ZooKeeper (see
//! [`coord`]); `cairn-bench replication` a third: a 3-node cluster with 3 copies of its volume
//! against the same with 1 copy, through one NFS gateway (see [`replication`]); `cairn-bench vip`
//! a fourth: the client's stall when a VIP moves, Cairn against keepalived (see [`vip`]);
//! `cairn-bench transfer` a fifth: `cairn fs put`/`get` and `cairn distcp` against `cp` (see
//! [`transfer`]).

mod coord;
mod fio;
mod json;
mod meta;
mod netns;
mod nfs;
mod replication;
mod report;
mod rpc;
mod servers;
mod system;
mod transfer;
mod vip;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand, ValueEnum};

use crate::fio::{Direction, Expect};
use crate::netns::Netns;
use crate::nfs::NfsSession;
use crate::report::{Figures, Report};
use crate::servers::{RunningServer, Side, Tools};
use crate::system::{LoopFs, MIB, check_interrupted, drop_caches, run_checked};

/// Requests in flight for the fio tests.
const FIO_IODEPTH: usize = 16;
/// Requests in flight on one connection for the metadata tests.
const METADATA_DEPTHS: [usize; 2] = [1, 16];
/// How long the loopback TCP test sends.
const LOOPBACK_DURATION: Duration = Duration::from_secs(2);
/// The file the data tests write and read, in the export's root.
const DATA_FILE: &str = "seq";

#[derive(Parser, Debug)]
#[command(
    name = "cairn-bench",
    about = "Benchmark Cairn against NFS-Ganesha (VFS) on the same disk and client, in one run",
    after_help = "Run as root. Builds the cairn binary first (cargo build --release -p cairn) \
                  unless --cairn-bin or --no-build is given. See docs/benchmarks.md.",
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Another benchmark instead of the NFS one (the options above are the NFS benchmark's).
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Run only one side (the machine's own limits are always measured).
    #[arg(long, value_enum)]
    only: Option<OnlySide>,
    /// Bytes written and read sequentially, and the random tests' file size (K, M, G suffixes).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Files for the create/lookup/getattr/remove tests.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Entries in the folder that is listed.
    #[arg(long, default_value_t = 100_000)]
    dir_entries: usize,
    /// Seconds each random 4 KiB test runs.
    #[arg(long, default_value_t = 20)]
    random_seconds: u64,
    /// Repeat everything N times and report medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Print the results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cairn: CairnBinary,
    /// fio with the `nfs` ioengine (built by `nfsvm --setup` when missing).
    #[arg(long, default_value = "/var/cache/nfsvm/bin/fio")]
    fio: PathBuf,
    /// The folder holding `ganesha-server` and `nfsvm`.
    #[arg(long, default_value = "/work/shared/nfsvm")]
    nfsvm_dir: PathBuf,
    /// Where the temporary ext4 images go (on the disk under test).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Cairn's coord quorum against Apache ZooKeeper 3.8, 3 members each on loopback.
    ///
    /// Writes/s and reads/s with 1 and many clients, and how long writes are blocked when the
    /// leader is killed. Needs the Debian packages zookeeper and default-jre-headless; root is not
    /// needed. See docs/benchmarks.md.
    Coord(coord::CoordArgs),
    /// A 3-node cluster's volume with 3 copies against 1 copy: sequential NFS writes and reads.
    ///
    /// The reference is the disk's fsync write rate, measured in the same run. Each cluster (`cairn up --nodes 3 --replication 3|1`) runs in a network namespace of its
    /// own on a fresh loop-mounted ext4; fio's `nfs` engine writes then reads one file through
    /// the first node's gateway. Needs root. See docs/benchmarks.md.
    Replication(replication::ReplicationArgs),
    /// Client stall when the NFS gateway behind a virtual IP dies or hands it over: Cairn's VIPs
    /// against keepalived moving a plain VIP between the same gateways.
    ///
    /// Three node namespaces on a bridge, the Linux kernel client (nfsvm) on the same bridge
    /// running an O_DIRECT write/read-back loop through the VIP; `kill -9` of the VIP holder and
    /// planned moves, min/median/max stall and the errors the application saw. Needs root, nfsvm,
    /// arping and keepalived (Debian packages iputils-arping, keepalived). See docs/benchmarks.md.
    Vip(vip::VipArgs),
    /// `cairn fs put` and `get` of a large file and `cairn distcp` of many small files into a
    /// 3-node cluster (3 copies), against `cp` to the same disk.
    ///
    /// The cluster runs in a network namespace of its own on a fresh loop-mounted ext4, which also
    /// holds the sources and the references; caches are dropped before every transfer. Needs
    /// root. See docs/benchmarks.md.
    Transfer(transfer::TransferArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OnlySide {
    Cairn,
    Ganesha,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (digits, suffix) = lower.split_at(digits_end);
    let value: u64 = digits.parse().map_err(|_| format!("not a size: {text}"))?;
    let shift = match suffix.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("unknown size suffix in {text}")),
    };
    value.checked_shl(shift).filter(|v| v >> shift == value).ok_or_else(|| format!("size too large: {text}"))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    system::install_signal_handlers();
    let result = match &args.command {
        Some(BenchCommand::Coord(coord_args)) => coord::run(coord_args),
        Some(BenchCommand::Replication(replication_args)) => replication::run(replication_args),
        Some(BenchCommand::Vip(vip_args)) => vip::run(vip_args),
        Some(BenchCommand::Transfer(transfer_args)) => transfer::run(transfer_args),
        None => run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn progress(message: &str) {
    eprintln!("cairn-bench: {message}");
}

/// Fails unless the benchmark runs as root (mounts, network namespaces, drop_caches).
fn ensure_root() -> Result<()> {
    // /proc/self belongs to the process's effective uid.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    ensure!(uid == 0, "cairn-bench must run as root (mounts, network namespaces, drop_caches)");
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    ensure_root()?;
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.size >= 16 << 20, "--size must be at least 16M");
    ensure!(args.files >= 1 && args.dir_entries >= 1, "--files and --dir-entries must be positive");

    let sides: Vec<Side> = match args.only {
        Some(OnlySide::Cairn) => vec![Side::Cairn],
        Some(OnlySide::Ganesha) => vec![Side::Ganesha],
        None => vec![Side::Ganesha, Side::Cairn],
    };
    let tools = prepare_tools(args, &sides)?;
    let image_bytes = (8u64 << 30).max(args.size * 4);

    let mut report = Report::new(args.size, args.files, args.dir_entries, args.random_seconds, args.runs);
    for run_index in 0..args.runs {
        progress(&format!("run {} of {}", run_index + 1, args.runs));
        let machine = machine_limits(args, image_bytes)?;
        report.add_machine(&machine);
        // Alternate the order between runs, so neither side always goes first.
        let mut order = sides.clone();
        if run_index % 2 == 1 {
            order.reverse();
        }
        for side in order {
            check_interrupted()?;
            let busy = system::busy_cpus_elsewhere();
            progress(&format!("[{}] starting; CPUs busy elsewhere: {busy:.2}", side.name()));
            report.add_busy_cpus(busy);
            match bench_side(args, &tools, side, image_bytes) {
                Ok(figures) => report.add_side(side, &figures),
                Err(error) => {
                    // Keep going: the other side's figures and the later runs still count, and
                    // the failure is reported with them.
                    check_interrupted()?;
                    let message = format!("run {}, {}: {error:#}", run_index + 1, side.name());
                    progress(&format!("FAILED {message}"));
                    report.add_failure(message);
                }
            }
        }
    }
    if args.json {
        println!("{}", report.to_json(&command_line()));
    } else {
        print!("{}", report.to_table(&command_line()));
    }
    ensure!(report.failures().is_empty(), "{} side run(s) failed (see above)", report.failures().len());
    Ok(())
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The static fio with libnfs's `nfs` engine: built by `nfsvm --setup` when missing.
fn ensure_fio(fio: &Path, nfsvm_dir: &Path) -> Result<()> {
    if !fio.exists() {
        progress(&format!("{} is missing; running nfsvm --setup", fio.display()));
        run_checked(Command::new(nfsvm_dir.join("nfsvm")).arg("--setup"))?;
        ensure!(fio.exists(), "{} still missing after nfsvm --setup", fio.display());
    }
    Ok(())
}

fn prepare_tools(args: &Args, sides: &[Side]) -> Result<Tools> {
    ensure_fio(&args.fio, &args.nfsvm_dir)?;
    let ganesha_script = args.nfsvm_dir.join("ganesha-server");
    if sides.contains(&Side::Ganesha) {
        ensure!(ganesha_script.exists(), "{} not found", ganesha_script.display());
    }
    let cairn_binary = if sides.contains(&Side::Cairn) { args.cairn.resolve()? } else { PathBuf::new() };
    Ok(Tools { ganesha_script, cairn_binary })
}

/// Which cairn binary a benchmark runs.
#[derive(clap::Args, Debug)]
pub struct CairnBinary {
    /// The cairn binary [default: `cairn` next to this program, built first].
    #[arg(long)]
    cairn_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p cairn` first.
    #[arg(long)]
    no_build: bool,
}

impl CairnBinary {
    /// The binary's path, after building it unless told not to; fails when it does not exist.
    pub fn resolve(&self) -> Result<PathBuf> {
        let binary = match &self.cairn_bin {
            Some(path) => path.clone(),
            None => {
                let exe = std::env::current_exe()?;
                exe.parent().context("no folder for the current executable")?.join("cairn")
            }
        };
        if self.cairn_bin.is_none() && !self.no_build {
            build_cairn()?;
        }
        ensure!(binary.exists(), "{} not found (build it: cargo build --release -p cairn)", binary.display());
        Ok(binary)
    }
}

/// `cargo build --release -p cairn` in this workspace, so the benchmark never measures a stale
/// server. Cargo prints its progress on stderr.
fn build_cairn() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    progress("building cairn (cargo build --release -p cairn)");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "cairn"])
        .current_dir(&workspace)
        .status()
        .context("running cargo")?;
    ensure!(status.success(), "cargo build --release -p cairn failed ({status})");
    Ok(())
}

/// The machine's own limits: dd with fsync on a fresh file system, cold dd read, loopback TCP.
fn machine_limits(args: &Args, image_bytes: u64) -> Result<BTreeMap<&'static str, f64>> {
    let mut figures = BTreeMap::new();
    {
        let fs = LoopFs::create(&args.work_dir, image_bytes)?;
        let dd = system::dd(fs.path(), args.size)?;
        progress(&format!(
            "machine: dd write conv=fsync {:.0} MiB/s, dd read (cold) {:.0} MiB/s",
            dd.write_mib_per_second, dd.read_mib_per_second
        ));
        figures.insert("dd_write", dd.write_mib_per_second);
        figures.insert("dd_read", dd.read_mib_per_second);
    }
    check_interrupted()?;
    let netns = Netns::create(&format!("cb{}-lo", std::process::id()))?;
    let loopback = system::loopback_bandwidth(&netns.name, LOOPBACK_DURATION)?;
    progress(&format!("machine: loopback TCP {loopback:.0} MiB/s"));
    figures.insert("loopback_tcp", loopback);
    Ok(figures)
}

fn fio_job(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Everything measured against one server, on a fresh file system.
fn bench_side(args: &Args, tools: &Tools, side: Side, image_bytes: u64) -> Result<Figures> {
    let name = side.name();
    let fs = LoopFs::create(&args.work_dir, image_bytes)?;
    let netns = format!("cb{}-{name}", std::process::id());
    let mut server = RunningServer::start(side, tools, &fs.path().join(name), &netns)?;
    let endpoint = server.endpoint.clone();
    progress(&format!("[{name}] serving {} in netns {netns}", endpoint.libnfs_url()));
    let mut figures = Figures::new();
    let say = |message: String| progress(&format!("[{name}] {message}"));
    let iodepth = format!("--iodepth={FIO_IODEPTH}");
    let size = format!("--size={}", args.size);
    let random_seconds = format!("--runtime={}", args.random_seconds);
    let random_common =
        ["--bs=4k", &size, &iodepth, "--time_based", &random_seconds, "--norandommap", "--randrepeat=0"];

    // Sequential write, then COMMIT (fio's nfs engine cannot fsync). The write runs
    // FIO_IODEPTH MiB long because the engine drops its last requests in flight.
    let write_size = format!("--size={}", args.size + ((FIO_IODEPTH as u64) << 20));
    let mut fio_hung_jobs = 0.0;
    let mut run_fio = |job_name: &str, direction: Direction, job: &[String], expect: Expect| {
        let result = fio::run(&args.fio, &endpoint, job_name, DATA_FILE, direction, job, expect)?;
        if result.hung_job_killed {
            fio_hung_jobs += 1.0;
            say(format!("fio {job_name}: job hung after its I/O (libnfs unmount); killed it"));
        }
        anyhow::Ok(result)
    };
    let written = run_fio(
        "seqwrite",
        Direction::Write,
        &fio_job(&["--rw=write", "--bs=1M", &write_size, &iodepth]),
        Expect::Bytes(args.size),
    )?;
    let commit = commit_file(&endpoint)?;
    let seconds = written.runtime.as_secs_f64() + commit.as_secs_f64();
    let seq_write = written.bytes as f64 / MIB / seconds;
    say(format!(
        "sequential write {seq_write:.0} MiB/s ({:.0} MiB in {:.2} s + COMMIT {:.2} s)",
        written.bytes as f64 / MIB,
        written.runtime.as_secs_f64(),
        commit.as_secs_f64()
    ));
    figures.insert("seq_write".to_owned(), seq_write);
    server.check_alive()?;
    check_interrupted()?;

    drop_caches()?;
    let read = run_fio(
        "seqread",
        Direction::Read,
        &fio_job(&["--rw=read", "--bs=1M", &size, &iodepth]),
        Expect::Bytes(args.size - ((FIO_IODEPTH as u64) << 20)),
    )?;
    let seq_read = read.bytes as f64 / MIB / read.runtime.as_secs_f64();
    say(format!("sequential read (cold) {seq_read:.0} MiB/s"));
    figures.insert("seq_read".to_owned(), seq_read);
    server.check_alive()?;
    check_interrupted()?;

    let mut job = fio_job(&["--rw=randread"]);
    job.extend(fio_job(&random_common));
    let random_runtime = Expect::Runtime(Duration::from_secs(args.random_seconds));
    let random_read = run_fio("randread", Direction::Read, &job, random_runtime)?;
    let rand_read = random_read.bytes as f64 / 4096.0 / random_read.runtime.as_secs_f64();
    say(format!("random read 4 KiB {rand_read:.0} IOPS"));
    figures.insert("rand_read".to_owned(), rand_read);
    server.check_alive()?;
    check_interrupted()?;

    let mut job = fio_job(&["--rw=randwrite"]);
    job.extend(fio_job(&random_common));
    let random_write = run_fio("randwrite", Direction::Write, &job, random_runtime)?;
    let commit = commit_file(&endpoint)?;
    let rand_write =
        random_write.bytes as f64 / 4096.0 / (random_write.runtime.as_secs_f64() + commit.as_secs_f64());
    say(format!(
        "random write 4 KiB {rand_write:.0} IOPS ({:.0} IOPS before the COMMIT of {:.2} s)",
        random_write.bytes as f64 / 4096.0 / random_write.runtime.as_secs_f64(),
        commit.as_secs_f64()
    ));
    figures.insert("rand_write".to_owned(), rand_write);
    figures.insert(report::FIO_HUNG_JOBS.to_owned(), fio_hung_jobs);
    server.check_alive()?;
    check_interrupted()?;

    let mut session = NfsSession::open(&endpoint)?;
    let listing = meta::listing(&mut session, args.dir_entries)?;
    say(format!(
        "listing {} entries: READDIRPLUS {:.3} s in {} calls, READDIR {:.3} s in {} calls (filled at {:.0} files/s)",
        args.dir_entries,
        listing.readdirplus.as_secs_f64(),
        listing.readdirplus_calls,
        listing.readdir.as_secs_f64(),
        listing.readdir_calls,
        listing.fill_rate
    ));
    figures.insert("readdirplus".to_owned(), listing.readdirplus.as_secs_f64());
    figures.insert("readdir".to_owned(), listing.readdir.as_secs_f64());
    figures.insert("listing_fill".to_owned(), listing.fill_rate);
    server.check_alive()?;
    check_interrupted()?;

    for depth in METADATA_DEPTHS {
        let rates = meta::metadata(&mut session, args.files, depth)?;
        say(format!(
            "{} files, {depth} in flight: create {:.0}/s, lookup {:.0}/s, getattr {:.0}/s, remove {:.0}/s",
            args.files, rates.create, rates.lookup, rates.getattr, rates.remove
        ));
        let key = |op: &str| report::metadata_key(op, depth);
        figures.insert(key("create"), rates.create);
        figures.insert(key("lookup"), rates.lookup);
        figures.insert(key("getattr"), rates.getattr);
        figures.insert(key("remove"), rates.remove);
        server.check_alive()?;
        check_interrupted()?;
    }
    drop(session);
    drop(server);
    drop(fs);
    Ok(figures)
}

/// LOOKUPs the data file on a fresh connection and COMMITs all of it; returns the COMMIT time.
fn commit_file(endpoint: &nfs::Endpoint) -> Result<Duration> {
    let mut session = NfsSession::open(endpoint)?;
    let root = session.root.clone();
    let file = session.lookup(&root, DATA_FILE)?;
    session.commit(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
