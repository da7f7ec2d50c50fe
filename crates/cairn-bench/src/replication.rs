//! `cairn-bench replication`: what three copies of a volume cost. A 3-node cluster on this
//! machine (`cairn up --nodes 3`) with `--replication 3`, against the same with `--replication 1`,
//! in one run: sequential 1 MiB writes (ending with a COMMIT) and then cold reads of one file
//! through the first node's NFS gateway, with the same fio jobs as the NFS benchmark's sequential
//! tests. See `docs/benchmarks.md`.
//!
//! The reference: on one machine the three copies share one disk, so rf=3 writes can go at most
//! at a third of the disk's write rate when every write is made durable. That rate is measured in
//! the same run on the same kind of fresh loop-mounted ext4: fio, `psync` engine, sequential
//! 1 MiB writes of `--size` with an fdatasync after every write. For context it also measures the
//! same writes with one fsync at the end (the disk's streaming rate, like the NFS benchmark's
//! `dd conv=fsync`), and how many bytes the servers' processes wrote to storage.
//!
//! Each cluster gets a fresh loop-mounted ext4 for its data directory and a network namespace of
//! its own (only `lo`), like the NFS benchmark's single server; it is measured only once the
//! volume has all its copies in place (`cairn volume info default --json`: as many replicas as
//! asked for, nothing resyncing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::fio::{self, Direction, Expect};
use crate::json::{self, Json};
use crate::report::{median, now_utc};
use crate::servers::{ClusterSpec, RunningServer};
use crate::system::{self, CpuSample, LoopFs, MIB, Usage, check_interrupted, drop_caches, run_checked};
use crate::{DATA_FILE, FIO_IODEPTH, commit_file, fio_job, progress};

/// Nodes of each cluster.
const NODES: u16 = 3;
/// The two clusters compared.
const REPLICATION_FACTORS: [u32; 2] = [1, 3];
/// How long a volume may take to have all its copies in place after `cairn up` is ready.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between two `cairn volume info` calls while waiting for the copies.
const PLACEMENT_POLL: Duration = Duration::from_millis(250);
/// rf=3 writes must reach this fraction of the disk's fsync write rate divided by 3.
const WRITE_TARGET: f64 = 0.8;
/// rf=3 reads must reach this fraction of rf=1 reads.
const READ_TARGET: f64 = 0.9;

#[derive(clap::Args, Debug)]
pub struct ReplicationArgs {
    /// Bytes written and then read sequentially (K, M, G suffixes); also the reference's size.
    #[arg(long, default_value = "1G", value_parser = crate::parse_size)]
    size: u64,
    /// Repeat everything N times and report medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Print the results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cairn: crate::CairnBinary,
    /// fio with the `nfs` ioengine (built by `nfsvm --setup` when missing).
    #[arg(long, default_value = "/var/cache/nfsvm/bin/fio")]
    fio: PathBuf,
    /// The folder holding `nfsvm`.
    #[arg(long, default_value = "/work/shared/nfsvm")]
    nfsvm_dir: PathBuf,
    /// Where the temporary ext4 images go (on the disk under test).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// How writes travel from the volume's master to its replicas (`cairn up --replication-type`)
    /// [default: cairn's, chain].
    #[arg(long, value_enum)]
    replication_type: Option<ReplicationType>,
    /// Seconds to wait between the write (and a `sync`) and dropping the caches for the read. On
    /// a virtual machine the host may still be writing back what the guest flushed, three copies
    /// of it with rf=3, and a read right away competes with that.
    #[arg(long, default_value_t = 0)]
    read_delay: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ReplicationType {
    Chain,
    Star,
}

impl ReplicationType {
    fn name(self) -> &'static str {
        match self {
            Self::Chain => "chain",
            Self::Star => "star",
        }
    }
}

pub fn run(args: &ReplicationArgs) -> Result<()> {
    crate::ensure_root()?;
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.size >= 64 << 20, "--size must be at least 64M");
    crate::ensure_fio(&args.fio, &args.nfsvm_dir)?;
    let cairn = args.cairn.resolve()?;
    // Sparse: rf=3 keeps three copies of the file (plus what replication keeps on the side).
    let image_bytes = (8u64 << 30).max(args.size * 8);

    let replication_type = args.replication_type.map_or("default", ReplicationType::name);
    let mut report = ReplicationReport::new(args.size, args.runs, replication_type, args.read_delay);
    for run_index in 0..args.runs {
        progress(&format!("run {} of {}", run_index + 1, args.runs));
        check_interrupted()?;
        let busy = system::busy_cpus_elsewhere();
        report.busy_cpus.push(busy);
        progress(&format!("[disk] fio psync 1 MiB writes; CPUs busy elsewhere: {busy:.2}"));
        match disk_write(args, image_bytes, DiskSync::EveryWrite) {
            Ok(rate) => {
                progress(&format!(
                    "[disk] fdatasync after each write: {rate:.0} MiB/s; limit for rf=3 writes {:.0} MiB/s",
                    rate / 3.0
                ));
                report.disk.push(rate);
            }
            Err(error) => {
                check_interrupted()?;
                let message = format!("run {}, disk reference: {error:#}", run_index + 1);
                progress(&format!("FAILED {message}"));
                report.failures.push(message);
            }
        }
        check_interrupted()?;
        match disk_write(args, image_bytes, DiskSync::AtEnd) {
            Ok(rate) => {
                progress(&format!("[disk] one fsync at the end: {rate:.0} MiB/s"));
                report.disk_streaming.push(rate);
            }
            Err(error) => {
                check_interrupted()?;
                let message = format!("run {}, disk streaming rate: {error:#}", run_index + 1);
                progress(&format!("FAILED {message}"));
                report.failures.push(message);
            }
        }
        // Alternate the order between runs, so neither cluster always goes first.
        let mut order = REPLICATION_FACTORS;
        if run_index % 2 == 1 {
            order.reverse();
        }
        for replication in order {
            check_interrupted()?;
            let busy = system::busy_cpus_elsewhere();
            report.busy_cpus.push(busy);
            progress(&format!("[rf={replication}] starting 3 nodes; CPUs busy elsewhere: {busy:.2}"));
            let mut figures = BTreeMap::new();
            let mut notes = Vec::new();
            let result = bench_cluster(args, &cairn, replication, image_bytes, &mut figures, &mut notes);
            report.notes.extend(
                notes.into_iter().map(|note| format!("run {}, rf={replication}: {note}", run_index + 1)),
            );
            // What was measured before a failure still counts; the failure is reported with it.
            report.add_cluster(replication, &figures);
            if let Err(error) = result {
                check_interrupted()?;
                let message = format!("run {}, rf={replication}: {error:#}", run_index + 1);
                progress(&format!("FAILED {message}"));
                report.failures.push(message);
            }
        }
    }
    let command = crate::command_line();
    if args.json {
        println!("{}", report.to_json(&command));
    } else {
        print!("{}", report.to_table(&command));
    }
    ensure!(report.failures.is_empty(), "{} part(s) failed (see above)", report.failures.len());
    Ok(())
}

/// When the disk reference makes its writes durable.
#[derive(Clone, Copy, Debug)]
enum DiskSync {
    /// `fdatasync=1`: an fdatasync after every write (the reference of the target).
    EveryWrite,
    /// `end_fsync=1`: one fsync when all is written (context: the disk's streaming rate).
    AtEnd,
}

/// fio, `psync` engine, sequential 1 MiB writes of `--size` into a new file on a fresh
/// loop-mounted ext4, no preallocation (`fallocate=none`, so the file grows as Cairn's chunk
/// files do), made durable as `sync` says. MiB/s over fio's run time, which includes the
/// fdatasyncs, or the final fsync.
fn disk_write(args: &ReplicationArgs, image_bytes: u64, sync: DiskSync) -> Result<f64> {
    let fs = LoopFs::create(&args.work_dir, image_bytes)?;
    let file = fs.path().join("disk.bin");
    let sync_option = match sync {
        DiskSync::EveryWrite => "--fdatasync=1",
        DiskSync::AtEnd => "--end_fsync=1",
    };
    let job = fio_job(&[
        "--ioengine=psync",
        "--rw=write",
        "--bs=1M",
        &format!("--size={}", args.size),
        sync_option,
        "--fallocate=none",
        &format!("--filename={}", file.display()),
    ]);
    let written = fio::run_local(&args.fio, "diskwrite", Direction::Write, &job, Expect::Bytes(args.size))?;
    drop(fs);
    Ok(written.bytes as f64 / MIB / written.runtime.as_secs_f64())
}

/// Figure keys of one cluster.
const WRITE: &str = "write";
const READ: &str = "read";
const COMMIT: &str = "commit";
const READY: &str = "ready";
const COPIES: &str = "copies";
const WRITE_CPU: &str = "write_cpu";
const READ_CPU: &str = "read_cpu";
const WRITE_AMPLIFICATION: &str = "write_amplification";
const STORAGE_RATE: &str = "storage_rate";
const WRITE_MACHINE_BUSY: &str = "write_machine_busy";
const WRITE_MACHINE_IOWAIT: &str = "write_machine_iowait";
const HUNG_JOBS: &str = "fio_hung_jobs";

/// One cluster, on a fresh file system and namespace: start it, wait for the copies, write,
/// drop caches, read. Everything is stopped and removed on return.
fn bench_cluster(
    args: &ReplicationArgs,
    cairn: &Path,
    replication: u32,
    image_bytes: u64,
    figures: &mut BTreeMap<&'static str, f64>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let say = |message: String| progress(&format!("[rf={replication}] {message}"));
    let fs = LoopFs::create(&args.work_dir, image_bytes)?;
    let dir = fs.path().join("cairn");
    let netns = format!("cb{}-rf{replication}", std::process::id());
    let started = Instant::now();
    let spec = ClusterSpec {
        nodes: NODES,
        replication,
        replication_type: args.replication_type.map(ReplicationType::name),
    };
    let mut server = RunningServer::start_cairn_cluster(cairn, &dir, &netns, spec)?;
    let ready = started.elapsed();
    let endpoint = server.endpoint.clone();
    say(format!(
        "ready after {:.1} s; gateway {} in netns {netns}",
        ready.as_secs_f64(),
        endpoint.libnfs_url()
    ));
    figures.insert(READY, ready.as_secs_f64());
    let placement = wait_for_copies(cairn, &dir, &netns, replication, &mut server)?;
    let copies = started.elapsed();
    figures.insert(COPIES, copies.as_secs_f64());
    say(format!(
        "{replication} copies in place {:.1} s after starting cairn up: master {}, replicas {}, {}",
        copies.as_secs_f64(),
        placement.master,
        placement.replicas.join(","),
        placement.replication_type
    ));
    notes.push(format!(
        "volume master {}, replicas {}, replication type {} (the client's gateway is on {})",
        placement.master,
        placement.replicas.join(","),
        placement.replication_type,
        server.nodes().first().map_or("?", |node| node.name.as_str())
    ));
    check_interrupted()?;

    let iodepth = format!("--iodepth={FIO_IODEPTH}");
    let mut hung_jobs = 0.0;
    let pids = server.pids();
    let node_usage = |server: &RunningServer| -> Vec<(String, Usage)> {
        server.nodes().iter().map(|node| (node.name.clone(), system::usage(&[node.pid]))).collect()
    };

    // The NFS benchmark's sequential write: FIO_IODEPTH MiB longer than the read (fio's nfs
    // engine drops its last requests in flight), then a COMMIT of the whole file.
    let write_size = format!("--size={}", args.size + ((FIO_IODEPTH as u64) << 20));
    let usage_before = system::usage(&pids);
    let nodes_before = node_usage(&server);
    let machine_before = CpuSample::take();
    let wall = Instant::now();
    let written = fio::run(
        &args.fio,
        &endpoint,
        "seqwrite",
        DATA_FILE,
        Direction::Write,
        &fio_job(&["--rw=write", "--bs=1M", &write_size, &iodepth]),
        Expect::Bytes(args.size),
    )?;
    let commit = commit_file(&endpoint)?;
    let wall = wall.elapsed();
    let machine = machine_before.zip(CpuSample::take()).map(|(before, after)| after.since(&before));
    let usage = system::usage(&pids).since(&usage_before);
    let nodes_cpu: Vec<String> = node_usage(&server)
        .iter()
        .zip(&nodes_before)
        .map(|((name, after), (_, before))| format!("{name} {:.1}", after.since(before).cpu_seconds))
        .collect();
    if written.hung_job_killed {
        hung_jobs += 1.0;
        say("fio seqwrite: job hung after its I/O (libnfs unmount); killed it".to_owned());
    }
    let seconds = written.runtime.as_secs_f64() + commit.as_secs_f64();
    let write = written.bytes as f64 / MIB / seconds;
    let cores = usage.cpu_seconds / wall.as_secs_f64();
    let amplification = usage.write_bytes as f64 / written.bytes as f64;
    let storage_rate = usage.write_bytes as f64 / MIB / wall.as_secs_f64();
    say(format!(
        "sequential write {write:.0} MiB/s ({:.0} MiB in {:.2} s + COMMIT {:.2} s); server CPU {cores:.2} cores \
         (CPU s per node: {}), {amplification:.2} bytes to storage per byte written ({storage_rate:.0} MiB/s)",
        written.bytes as f64 / MIB,
        written.runtime.as_secs_f64(),
        commit.as_secs_f64(),
        nodes_cpu.join(", ")
    ));
    notes.push(format!("CPU seconds per node during the write: {}", nodes_cpu.join(", ")));
    figures.insert(WRITE, write);
    figures.insert(COMMIT, commit.as_secs_f64());
    figures.insert(WRITE_CPU, cores);
    figures.insert(WRITE_AMPLIFICATION, amplification);
    figures.insert(STORAGE_RATE, storage_rate);
    if let Some(machine) = machine {
        say(format!(
            "machine during the write: {:.2} CPUs busy, {:.2} idle in iowait (all processes)",
            machine.busy, machine.iowait
        ));
        figures.insert(WRITE_MACHINE_BUSY, machine.busy);
        figures.insert(WRITE_MACHINE_IOWAIT, machine.iowait);
    }
    server.check_alive()?;
    check_interrupted()?;

    if args.read_delay > 0 {
        run_checked(&mut Command::new("sync"))?;
        for _ in 0..args.read_delay {
            check_interrupted()?;
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    drop_caches()?;
    let usage_before = system::usage(&pids);
    let wall = Instant::now();
    let read = fio::run(
        &args.fio,
        &endpoint,
        "seqread",
        DATA_FILE,
        Direction::Read,
        &fio_job(&["--rw=read", "--bs=1M", &format!("--size={}", args.size), &iodepth]),
        Expect::Bytes(args.size - ((FIO_IODEPTH as u64) << 20)),
    )?;
    let wall = wall.elapsed();
    let usage = system::usage(&pids).since(&usage_before);
    if read.hung_job_killed {
        hung_jobs += 1.0;
        say("fio seqread: job hung after its I/O (libnfs unmount); killed it".to_owned());
    }
    let read_rate = read.bytes as f64 / MIB / read.runtime.as_secs_f64();
    let cores = usage.cpu_seconds / wall.as_secs_f64();
    say(format!("sequential read (cold) {read_rate:.0} MiB/s; server CPU {cores:.2} cores"));
    figures.insert(READ, read_rate);
    figures.insert(READ_CPU, cores);
    figures.insert(HUNG_JOBS, hung_jobs);
    server.check_alive()?;
    drop(server);
    drop(fs);
    Ok(())
}

/// Where the CLDB has put a volume.
#[derive(Debug, PartialEq)]
pub(crate) struct Placement {
    /// `Chain` or `Star`.
    replication_type: String,
    master: String,
    /// In-sync copies, master first.
    replicas: Vec<String>,
    /// Copies being brought up to date.
    resyncing: Vec<String>,
}

/// `cairn volume info default --json --data-dir DIR`, run in the cluster's namespace.
fn volume_placement(cairn: &Path, dir: &Path, netns: &str) -> Result<Placement> {
    let output = run_checked(
        Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(cairn)
            .args(["volume", "info", "default", "--json", "--data-dir"])
            .arg(dir),
    )?;
    parse_placement(&String::from_utf8_lossy(&output.stdout))
}

/// The placement in `cairn volume info --json`'s output (`volume.placement`).
fn parse_placement(text: &str) -> Result<Placement> {
    let info = json::parse(text.trim()).context("cairn volume info printed no JSON")?;
    let replication_type = info.path(&["volume", "replication_type"]).and_then(Json::as_str).unwrap_or("?");
    let placement =
        info.path(&["volume", "placement"]).context("no volume.placement in cairn volume info")?;
    let names = |key: &str| -> Result<Vec<String>> {
        match placement.get(key) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_owned).with_context(|| format!("a non-string in {key}"))
                })
                .collect(),
            Some(other) => bail!("placement.{key} is not a list: {other:?}"),
        }
    };
    Ok(Placement {
        replication_type: replication_type.to_owned(),
        master: placement.get("master").and_then(Json::as_str).unwrap_or_default().to_owned(),
        replicas: names("replicas")?,
        resyncing: names("resyncing")?,
    })
}

/// Polls the default volume's placement until it has `replication` in-sync copies and nothing
/// resyncing.
pub(crate) fn wait_for_copies(
    cairn: &Path,
    dir: &Path,
    netns: &str,
    replication: u32,
    server: &mut RunningServer,
) -> Result<Placement> {
    let start = Instant::now();
    loop {
        check_interrupted()?;
        server.check_alive()?;
        let last = match volume_placement(cairn, dir, netns) {
            Ok(placement)
                if placement.replicas.len() == replication as usize && placement.resyncing.is_empty() =>
            {
                return Ok(placement);
            }
            Ok(placement) => format!("{placement:?}"),
            Err(error) => format!("{error:#}"),
        };
        if start.elapsed() > PLACEMENT_TIMEOUT {
            bail!(
                "the default volume did not get {replication} copies within {PLACEMENT_TIMEOUT:?}; last: {last}"
            );
        }
        std::thread::sleep(PLACEMENT_POLL);
    }
}

/// One table row of the per-cluster figures.
struct Row {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
}

const ROWS: &[Row] = &[
    Row { key: WRITE, label: "seq write 1 MiB, qd16, incl. COMMIT", unit: "MiB/s" },
    Row { key: READ, label: "seq read 1 MiB, qd16, cold cache", unit: "MiB/s" },
    Row { key: COMMIT, label: "COMMIT at the end of the write", unit: "s" },
    Row { key: COPIES, label: "copies in place, from starting cairn up", unit: "s" },
    Row { key: READY, label: "cairn up ready, from its start", unit: "s" },
    Row { key: WRITE_CPU, label: "server CPU during the write", unit: "cores" },
    Row { key: READ_CPU, label: "server CPU during the read", unit: "cores" },
    Row { key: WRITE_AMPLIFICATION, label: "bytes to storage per byte written", unit: "x" },
    Row { key: STORAGE_RATE, label: "server writes to storage, during the write", unit: "MiB/s" },
    Row { key: WRITE_MACHINE_BUSY, label: "machine CPUs busy during the write (all)", unit: "cores" },
    Row { key: WRITE_MACHINE_IOWAIT, label: "machine CPUs in iowait during the write", unit: "cores" },
];

/// A figure as the table shows it.
fn format_value(value: Option<f64>, unit: &str) -> String {
    match value {
        Some(v) if unit == "cores" || unit == "x" => format!("{v:.2}"),
        _ => crate::report::format_value(value, unit),
    }
}

/// Figures over runs, and the output.
struct ReplicationReport {
    size: u64,
    /// `--replication-type`, or "default".
    replication_type: &'static str,
    /// `--read-delay`, seconds.
    read_delay: u64,
    runs: usize,
    /// CPUs busy with other work before each part.
    busy_cpus: Vec<f64>,
    /// The disk's fsync write rate, MiB/s, per run.
    disk: Vec<f64>,
    /// The disk's streaming write rate (one fsync at the end), MiB/s, per run.
    disk_streaming: Vec<f64>,
    /// Per replication factor, per key, the values of the runs.
    clusters: BTreeMap<u32, BTreeMap<&'static str, Vec<f64>>>,
    notes: Vec<String>,
    failures: Vec<String>,
}

/// A target's outcome.
struct Verdict {
    /// What was compared, e.g. "rf=3 write as % of disk/3".
    name: &'static str,
    percent: Option<f64>,
    target_percent: f64,
    pass: Option<bool>,
}

impl ReplicationReport {
    fn new(size: u64, runs: usize, replication_type: &'static str, read_delay: u64) -> Self {
        Self {
            size,
            replication_type,
            read_delay,
            runs,
            busy_cpus: Vec::new(),
            disk: Vec::new(),
            disk_streaming: Vec::new(),
            clusters: BTreeMap::new(),
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn add_cluster(&mut self, replication: u32, figures: &BTreeMap<&'static str, f64>) {
        let cluster = self.clusters.entry(replication).or_default();
        for (key, value) in figures {
            cluster.entry(key).or_default().push(*value);
        }
    }

    fn values(&self, replication: u32, key: &str) -> &[f64] {
        self.clusters.get(&replication).and_then(|c| c.get(key)).map_or(&[], Vec::as_slice)
    }

    fn median(&self, replication: u32, key: &str) -> Option<f64> {
        median(self.values(replication, key))
    }

    fn limit(&self) -> Option<f64> {
        median(&self.disk).map(|disk| disk / 3.0)
    }

    fn verdicts(&self) -> [Verdict; 2] {
        let write_percent = match (self.median(3, WRITE), self.limit()) {
            (Some(write), Some(limit)) if limit > 0.0 => Some(100.0 * write / limit),
            _ => None,
        };
        let read_percent = match (self.median(3, READ), self.median(1, READ)) {
            (Some(rf3), Some(rf1)) if rf1 > 0.0 => Some(100.0 * rf3 / rf1),
            _ => None,
        };
        let verdict = |name, percent: Option<f64>, target: f64| Verdict {
            name,
            percent,
            target_percent: target * 100.0,
            pass: percent.map(|p| p >= target * 100.0),
        };
        [
            verdict("rf=3 write as % of the limit (disk / 3)", write_percent, WRITE_TARGET),
            verdict("rf=3 read as % of rf=1 read", read_percent, READ_TARGET),
        ]
    }

    fn busy_cpus_max(&self) -> f64 {
        self.busy_cpus.iter().copied().fold(0.0, f64::max)
    }

    fn hung_jobs(&self) -> f64 {
        REPLICATION_FACTORS.iter().flat_map(|rf| self.values(*rf, HUNG_JOBS)).sum()
    }

    fn to_table(&self, command: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nReplication: rf=3 against rf=1, {NODES}-node cluster on one machine, {}",
            now_utc()
        );
        let _ = writeln!(out, "command: {command}");
        let _ = writeln!(
            out,
            "size {} MiB, fio nfs engine bs=1M iodepth={FIO_IODEPTH} through the first node's gateway, replication \
             type {}, read {} s after the write, {} run(s), medians\n",
            self.size >> 20,
            self.replication_type,
            self.read_delay,
            self.runs
        );
        let _ = writeln!(out, "reference (fresh ext4 image on the same disk)");
        let _ = writeln!(
            out,
            "  {:<52} {:>8} MiB/s",
            "disk: fio psync 1 MiB writes, fdatasync after each",
            format_value(median(&self.disk), "MiB/s")
        );
        let _ = writeln!(
            out,
            "  {:<52} {:>8} MiB/s",
            "limit for rf=3 writes: disk / 3",
            format_value(self.limit(), "MiB/s")
        );
        let _ = writeln!(
            out,
            "  {:<52} {:>8} MiB/s\n",
            "context: the same writes, one fsync at the end",
            format_value(median(&self.disk_streaming), "MiB/s")
        );
        let _ = writeln!(out, "{:<42} {:<6} {:>9} {:>9} {:>10}", "test", "unit", "rf=1", "rf=3", "rf=3/rf=1");
        for row in ROWS {
            let rf1 = self.median(1, row.key);
            let rf3 = self.median(3, row.key);
            let ratio = match (rf1, rf3) {
                (Some(a), Some(b)) if a > 0.0 && (row.key == WRITE || row.key == READ) => {
                    format!("{:.2}x", b / a)
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<42} {:<6} {:>9} {:>9} {:>10}",
                row.label,
                row.unit,
                format_value(rf1, row.unit),
                format_value(rf3, row.unit),
                ratio
            );
        }
        if self.runs > 1 {
            let runs = |values: &[f64]| {
                values.iter().map(|v| format_value(Some(*v), "MiB/s")).collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(out, "\nper run (MiB/s, in run order)");
            let _ = writeln!(out, "  {:<40} {}", "disk, fdatasync after each write", runs(&self.disk));
            for (key, name) in [(WRITE, "write"), (READ, "read")] {
                for replication in REPLICATION_FACTORS {
                    let label = format!("rf={replication} {name}");
                    let _ = writeln!(out, "  {label:<40} {}", runs(self.values(replication, key)));
                }
            }
        }
        let _ = writeln!(out);
        for verdict in self.verdicts() {
            let result = match verdict.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "-",
            };
            let _ = writeln!(
                out,
                "{:<42} {:>6} (target >= {:.0} %)  {result}",
                verdict.name,
                verdict.percent.map_or_else(|| "-".to_owned(), |p| format!("{p:.0} %")),
                verdict.target_percent
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if self.busy_cpus_max() > 0.25 {
            let _ = writeln!(
                out,
                "note: the machine was busy (up to {:.2} CPUs used elsewhere when a part started); figures are noisy",
                self.busy_cpus_max()
            );
        }
        let hung = self.hung_jobs();
        if hung > 0.0 {
            let _ = writeln!(
                out,
                "note: {hung:.0} fio job(s) hung in libnfs's unmount after their I/O and were killed \
                 (their figures are complete; see docs/benchmarks.md)"
            );
        }
        for failure in &self.failures {
            let _ = writeln!(out, "FAILED {failure}");
        }
        out
    }

    fn to_json(&self, command: &str) -> String {
        let mut out = json::report_header(
            command,
            &format!(
                "{{\"size_bytes\": {}, \"nodes\": {NODES}, \"fio_iodepth\": {FIO_IODEPTH}, \"runs\": {}, \
                 \"replication_type\": {}, \"read_delay_seconds\": {}}}",
                self.size,
                self.runs,
                json::quote(self.replication_type),
                self.read_delay
            ),
        );
        let _ = writeln!(out, "  \"cpus_busy_elsewhere\": {},", json::list(&self.busy_cpus));
        let _ = writeln!(
            out,
            "  \"disk_fsync_write\": {{\"label\": {}, \"unit\": \"MiB/s\", \"median\": {}, \"runs\": {}}},",
            json::quote("fio psync, 1 MiB sequential writes, fdatasync after each, fresh ext4"),
            json::optional(median(&self.disk)),
            json::list(&self.disk)
        );
        let _ = writeln!(out, "  \"rf3_write_limit\": {},", json::optional(self.limit()));
        let _ = writeln!(
            out,
            "  \"disk_streaming_write\": {{\"label\": {}, \"unit\": \"MiB/s\", \"median\": {}, \"runs\": {}}},",
            json::quote("fio psync, 1 MiB sequential writes, one fsync at the end, fresh ext4"),
            json::optional(median(&self.disk_streaming)),
            json::list(&self.disk_streaming)
        );
        let results: Vec<String> = ROWS
            .iter()
            .map(|row| {
                format!(
                    "    {{\"test\": {}, \"label\": {}, \"unit\": {}, \"rf1\": {}, \"rf3\": {}, \"rf1_runs\": {}, \
                     \"rf3_runs\": {}}}",
                    json::quote(row.key),
                    json::quote(row.label),
                    json::quote(row.unit),
                    json::optional(self.median(1, row.key)),
                    json::optional(self.median(3, row.key)),
                    json::list(self.values(1, row.key)),
                    json::list(self.values(3, row.key)),
                )
            })
            .collect();
        let _ = writeln!(out, "  \"results\": [\n{}\n  ],", results.join(",\n"));
        let targets: Vec<String> = self
            .verdicts()
            .iter()
            .map(|verdict| {
                format!(
                    "    {{\"target\": {}, \"percent\": {}, \"at_least_percent\": {}, \"pass\": {}}}",
                    json::quote(verdict.name),
                    json::optional(verdict.percent),
                    json::number(verdict.target_percent),
                    verdict.pass.map_or("null", |p| if p { "true" } else { "false" })
                )
            })
            .collect();
        let _ = writeln!(out, "  \"targets\": [\n{}\n  ],", targets.join(",\n"));
        let _ = writeln!(out, "  \"fio_hung_jobs\": {},", json::number(self.hung_jobs()));
        let notes: Vec<String> = self.notes.iter().map(|n| json::quote(n)).collect();
        let _ = writeln!(out, "  \"notes\": [{}],", notes.join(", "));
        let failures: Vec<String> = self.failures.iter().map(|f| json::quote(f)).collect();
        let _ = writeln!(out, "  \"failures\": [{}]", failures.join(", "));
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_placement_of_volume_info() {
        let text = r#"{
  "volume": {
    "id": 1,
    "name": "default",
    "replication": 3,
    "replication_type": "Chain",
    "placement": {
      "replicas": ["n1", "n2"],
      "master": "n1",
      "epoch": 4,
      "resyncing": ["n3"],
      "lost_since_ms": null
    }
  },
  "size_bytes": 0
}
"#;
        let placement = parse_placement(text).expect("placement");
        assert_eq!(placement.master, "n1");
        assert_eq!(placement.replication_type, "Chain");
        assert_eq!(placement.replicas, ["n1", "n2"]);
        assert_eq!(placement.resyncing, ["n3"]);
        let without_resyncing =
            r#"{"volume": {"placement": {"replicas": ["n2"], "master": "n2", "epoch": 1}}}"#;
        assert!(parse_placement(without_resyncing).expect("placement").resyncing.is_empty());
        assert!(parse_placement("{}").is_err());
    }

    #[test]
    fn targets_compare_medians() {
        let mut report = ReplicationReport::new(1 << 30, 1, "default", 0);
        report.disk.push(300.0);
        report.add_cluster(1, &BTreeMap::from([(WRITE, 250.0), (READ, 400.0)]));
        report.add_cluster(3, &BTreeMap::from([(WRITE, 85.0), (READ, 350.0)]));
        let [write, read] = report.verdicts();
        assert_eq!(write.percent, Some(85.0));
        assert_eq!(write.pass, Some(true));
        assert_eq!(read.percent, Some(87.5));
        assert_eq!(read.pass, Some(false));
        let table = report.to_table("cairn-bench replication");
        assert!(table.contains("FAIL") && table.contains("PASS"), "{table}");
        let json_text = report.to_json("cairn-bench replication");
        assert!(json::parse(&json_text).is_ok(), "{json_text}");
    }
}
