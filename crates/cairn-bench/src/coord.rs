//! `cairn-bench coord`: Cairn's coord service against Apache ZooKeeper 3.8, three members each on
//! loopback, data on the same disk, the same client logic, in one run. See `docs/benchmarks.md`.
//!
//! Per system: start the quorum and wait until it has settled; warm up; synchronous `set` of 1 KiB
//! values with 1 and with many clients (each its own session, each on its own znode); `get` of a
//! 1 KiB znode with many and with 1 client; then, `--runs` times, kill -9 the leader under a client
//! that writes every 10 ms and time how long its writes are blocked, restarting the killed member
//! afterwards. Throughput clients are spread over the members, the first on a follower; the
//! failover client gets the whole member list.

mod client;
mod cluster;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::client::Client;
use self::cluster::{Cluster, Launchers, MEMBERS, System, Usage};
use self::report::{CoordReport, Figures};
use crate::progress;
use crate::system::check_interrupted;

/// Size of every value written and read.
const VALUE_BYTES: usize = 1024;
/// The failover client's pace: one write every this long.
const FAILOVER_WRITE_INTERVAL: Duration = Duration::from_millis(10);
/// How long the failover client writes before the kill (every write must succeed).
const FAILOVER_STEADY: Duration = Duration::from_secs(1);
/// How long it goes on writing after its first write that succeeded after the kill.
const FAILOVER_AFTER: Duration = Duration::from_millis(500);
/// A system whose writes are blocked for longer than this fails the test.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// Longest one failover write may take (the clients' own timeouts are shorter).
const WRITE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Delay between connecting all clients and the common start of a throughput test.
const START_DELAY: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug)]
pub struct CoordArgs {
    /// Leader kills per system; the blocked time reported is their median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each throughput test runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients (sessions) of the many-clients tests.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of warm-up, writes then reads with all clients, before the measured tests (the JVM
    /// compiles its hot paths meanwhile).
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Run only one system.
    #[arg(long, value_enum)]
    only: Option<OnlySystem>,
    /// Print the results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cairn: crate::CairnBinary,
    /// Where the members' data folders go (one temporary folder for both systems).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Keep that folder (the members' data and logs) instead of deleting it at the end.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OnlySystem {
    Cairn,
    Zookeeper,
}

pub fn run(args: &CoordArgs) -> Result<()> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.seconds >= 1, "--seconds must be at least 1");
    ensure!(args.clients >= 1, "--clients must be at least 1");
    let systems = match args.only {
        Some(OnlySystem::Cairn) => vec![System::Cairn],
        Some(OnlySystem::Zookeeper) => vec![System::ZooKeeper],
        None => vec![System::ZooKeeper, System::Cairn],
    };
    let launchers = prepare(args, &systems)?;
    let dir = tempfile::Builder::new()
        .prefix("cairn-bench-coord.")
        .tempdir_in(&args.work_dir)
        .with_context(|| format!("creating a temporary folder in {}", args.work_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-bench")
        .build()
        .context("starting the async runtime")?;

    let mut report = CoordReport::new(args.seconds, args.clients, args.runs);
    for system in systems {
        check_interrupted()?;
        let busy = crate::system::busy_cpus_elsewhere();
        progress(&format!("[{}] starting 3 members; CPUs busy elsewhere: {busy:.2}", system.name()));
        report.add_busy_cpus(busy);
        let dir = dir.path().join(system.name());
        let (figures, result) = bench_system(args, &launchers, system, &dir, &runtime, &mut report);
        // What was measured before a failure still counts; the failure is reported with it.
        report.add_system(system, figures);
        if let Err(error) = result {
            check_interrupted()?;
            let message = format!("{}: {error:#}", system.name());
            progress(&format!("FAILED {message}"));
            report.add_failure(message);
        }
    }
    let command = crate::command_line();
    if args.json {
        println!("{}", report.to_json(&command));
    } else {
        print!("{}", report.to_table(&command));
    }
    if args.keep {
        progress(&format!("kept the members' data and logs in {}", dir.keep().display()));
    }
    ensure!(report.failures().is_empty(), "{} system(s) failed (see above)", report.failures().len());
    Ok(())
}

/// The cairn binary (built first unless told otherwise) and ZooKeeper's java and jars.
fn prepare(args: &CoordArgs, systems: &[System]) -> Result<Launchers> {
    let mut launchers =
        Launchers { cairn_binary: PathBuf::new(), java: PathBuf::new(), zookeeper_classpath: Vec::new() };
    if systems.contains(&System::ZooKeeper) {
        let (java, classpath) = cluster::find_zookeeper()?;
        launchers.java = java;
        launchers.zookeeper_classpath = classpath;
    }
    if systems.contains(&System::Cairn) {
        launchers.cairn_binary = args.cairn.resolve()?;
    }
    Ok(launchers)
}

/// Everything measured on one system, on a fresh quorum; every member is killed on return.
fn bench_system(
    args: &CoordArgs,
    launchers: &Launchers,
    system: System,
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
    report: &mut CoordReport,
) -> (Figures, Result<()>) {
    let mut figures = Figures::new();
    let mut cluster = match Cluster::start(system, launchers, dir) {
        Ok(cluster) => cluster,
        Err(error) => return (figures, Err(error)),
    };
    // block_on runs the future on this (the main) thread, so members restarted by it are started
    // from the main thread (see Cluster::start_member).
    let result = runtime.block_on(measure(args, &mut cluster, report, &mut figures));
    drop(cluster);
    (figures, result)
}

/// Which member each of `count` throughput clients connects to: round robin from the member
/// after the leader, so one client is on a follower and many are spread evenly.
fn placement(cluster: &Cluster, leader: usize, count: usize) -> Vec<String> {
    (0..count).map(|i| cluster.address((leader + 1 + i) % MEMBERS).to_owned()).collect()
}

fn value(seed: u8) -> Vec<u8> {
    (0..VALUE_BYTES).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn write_path(client: usize) -> String {
    format!("/bench/w{client}")
}

const READ_PATH: &str = "/bench/r";
const FAILOVER_PATH: &str = "/bench/failover";

/// Runs every test on `cluster`, adding to `figures` as it goes.
async fn measure(
    args: &CoordArgs,
    cluster: &mut Cluster,
    report: &mut CoordReport,
    figures: &mut Figures,
) -> Result<()> {
    let system = cluster.system;
    let name = system.name();
    let say = |message: String| progress(&format!("[{name}] {message}"));
    let started = Instant::now();
    let leader = cluster.wait_settled().await?;
    say(format!(
        "quorum settled in {:.1} s; leader is member {}",
        started.elapsed().as_secs_f64(),
        cluster.id(leader)
    ));

    let setup = Client::connect(system, &cluster.addresses()).await?;
    setup.put("/bench", b"").await?;
    for i in 0..args.clients {
        setup.put(&write_path(i), &value(0)).await?;
    }
    setup.put(READ_PATH, &value(1)).await?;
    setup.put(FAILOVER_PATH, &value(2)).await?;
    setup.close().await;

    let pids = cluster.pids();
    let many = placement(cluster, leader, args.clients);
    let one = placement(cluster, leader, 1);
    let seconds = Duration::from_secs(args.seconds);
    if args.warmup_seconds > 0 {
        let warmup = Duration::from_secs(args.warmup_seconds);
        throughput(system, &pids, &many, Op::Set, warmup).await.context("warm-up writes")?;
        throughput(system, &pids, &many, Op::Get, warmup).await.context("warm-up reads")?;
        say(format!("warmed up ({} s of writes, then reads, {} clients)", args.warmup_seconds, args.clients));
    }

    let set_1 = throughput(system, &pids, &one, Op::Set, seconds).await.context("set, 1 client")?;
    say(format!("set 1 KiB, 1 client: {}", set_1.describe()));
    figures.insert(report::SET_1, vec![set_1.rate()]);
    figures.insert(report::SET_1_P50, vec![set_1.p50_ms]);
    check_interrupted()?;

    let set_many = throughput(system, &pids, &many, Op::Set, seconds).await.context("set, many clients")?;
    say(format!("set 1 KiB, {} clients: {}", args.clients, set_many.describe()));
    figures.insert(report::SET_MANY, vec![set_many.rate()]);
    figures.insert(report::SET_MANY_P99, vec![set_many.p99_ms]);
    let ops = set_many.ops.max(1) as f64;
    figures.insert(report::CPU_PER_SET, vec![set_many.usage.cpu_seconds * 1e6 / ops]);
    figures.insert(report::CLIENT_CPU_PER_SET, vec![set_many.client_cpu_seconds * 1e6 / ops]);
    figures.insert(report::DISK_PER_SET, vec![set_many.usage.write_bytes as f64 / 1024.0 / ops]);
    check_interrupted()?;

    let get_many = throughput(system, &pids, &many, Op::Get, seconds).await.context("get, many clients")?;
    say(format!("get 1 KiB, {} clients: {}", args.clients, get_many.describe()));
    figures.insert(report::GET_MANY, vec![get_many.rate()]);
    let ops = get_many.ops.max(1) as f64;
    figures.insert(report::CPU_PER_GET, vec![get_many.usage.cpu_seconds * 1e6 / ops]);
    figures.insert(report::CLIENT_CPU_PER_GET, vec![get_many.client_cpu_seconds * 1e6 / ops]);
    check_interrupted()?;

    let get_1 = throughput(system, &pids, &one, Op::Get, seconds).await.context("get, 1 client")?;
    say(format!("get 1 KiB, 1 client: {}", get_1.describe()));
    figures.insert(report::GET_1, vec![get_1.rate()]);
    check_interrupted()?;

    let mut placements = Vec::new();
    let result = leader_kills(args, cluster, figures, &mut placements).await;
    if !placements.is_empty() {
        report.add_note(format!("{name} leader kills: {}", placements.join("; ")));
    }
    result
}

/// The `--runs` leader kills, each followed by a restart of the killed member; adds each blocked
/// time to `figures` as soon as it is measured, and a description of each to `placements`.
async fn leader_kills(
    args: &CoordArgs,
    cluster: &mut Cluster,
    figures: &mut Figures,
    placements: &mut Vec<String>,
) -> Result<()> {
    let name = cluster.system.name();
    let say = |message: String| progress(&format!("[{name}] {message}"));
    for run in 0..args.runs {
        let kill = run + 1;
        let outcome =
            blocked_by_leader_kill(cluster, run).await.with_context(|| format!("leader kill {kill}"))?;
        let member =
            |index: Option<usize>| index.map_or_else(|| "?".to_owned(), |i| cluster.id(i).to_string());
        let role = |index: Option<usize>, leader: usize| match index {
            Some(i) if i == leader => "leader",
            Some(_) => "follower",
            None => "unknown member",
        };
        say(format!(
            "leader kill {kill} of {}: member {} killed; writes blocked {:.3} s ({} failed attempts); client on \
             member {} before the kill, on member {} after; member {} leads now",
            args.runs,
            cluster.id(outcome.killed),
            outcome.blocked.as_secs_f64(),
            outcome.failed_attempts,
            member(outcome.client_before),
            member(outcome.client_after),
            cluster.id(outcome.new_leader),
        ));
        figures.entry(report::BLOCKED).or_default().push(outcome.blocked.as_secs_f64());
        placements.push(format!(
            "{:.2} s with the client on the {} then the {}",
            outcome.blocked.as_secs_f64(),
            role(outcome.client_before, outcome.killed),
            role(outcome.client_after, outcome.new_leader)
        ));
        let restarted_at = Instant::now();
        cluster.start_member(outcome.killed)?;
        cluster.wait_settled().await.with_context(|| {
            format!("restarting member {} after leader kill {kill}", cluster.id(outcome.killed))
        })?;
        say(format!(
            "member {} restarted; quorum settled again {:.1} s after the restart",
            cluster.id(outcome.killed),
            restarted_at.elapsed().as_secs_f64()
        ));
        check_interrupted()?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Each client sets its own znode.
    Set,
    /// Every client gets the same znode.
    Get,
}

/// What a throughput test measured.
struct Throughput {
    ops: u64,
    /// From the common start to the end of the last client's last operation.
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
    /// The members' CPU time and disk writes over the test.
    usage: Usage,
    /// CPU time of this process (the clients) over the test.
    client_cpu_seconds: f64,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!(
            "{:.0} ops/s ({} ops in {:.2} s; latency p50 {:.2} ms, p99 {:.2} ms; members' CPU {:.2} s, clients' \
             CPU {:.2} s, members' disk writes {:.1} MiB)",
            self.rate(),
            self.ops,
            self.elapsed.as_secs_f64(),
            self.p50_ms,
            self.p99_ms,
            self.usage.cpu_seconds,
            self.client_cpu_seconds,
            self.usage.write_bytes as f64 / (1024.0 * 1024.0)
        )
    }
}

fn percentile_ms(sorted_micros: &[u32], fraction: f64) -> f64 {
    if sorted_micros.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted_micros.len() - 1) as f64 * fraction).round() as usize;
    f64::from(sorted_micros[index.min(sorted_micros.len() - 1)]) / 1000.0
}

/// One client per entry of `addresses` (connected to that member only), all starting together
/// and each doing `op` back to back for `duration`; counts completed operations.
async fn throughput(
    system: System,
    pids: &[u32],
    addresses: &[String],
    op: Op,
    duration: Duration,
) -> Result<Throughput> {
    let mut connecting = JoinSet::new();
    for (i, address) in addresses.iter().enumerate() {
        let address = address.clone();
        connecting.spawn(async move { (i, Client::connect(system, &[address]).await) });
    }
    let mut clients: Vec<Option<Client>> = vec![None; addresses.len()];
    while let Some(joined) = connecting.join_next().await {
        let (i, client) = joined.context("a connecting task failed")?;
        clients[i] = Some(client?);
    }
    let clients: Vec<Client> = clients.into_iter().flatten().collect();
    ensure!(clients.len() == addresses.len(), "not every client connected");

    let start = Instant::now() + START_DELAY;
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let path = match op {
                Op::Set => write_path(i),
                Op::Get => READ_PATH.to_owned(),
            };
            let data = value(i as u8);
            let mut latencies: Vec<u32> = Vec::with_capacity(4096);
            tokio::time::sleep_until(start).await;
            let mut now = Instant::now();
            while now < deadline {
                match op {
                    Op::Set => client.set(&path, &data).await?,
                    Op::Get => {
                        let bytes = client.get(&path).await?;
                        ensure!(bytes == VALUE_BYTES, "get {path} returned {bytes} bytes");
                    }
                }
                let done = Instant::now();
                latencies.push(u32::try_from(done.duration_since(now).as_micros()).unwrap_or(u32::MAX));
                now = done;
            }
            anyhow::Ok((latencies, now))
        });
    }
    tokio::time::sleep_until(start).await;
    let before = cluster::usage(pids);
    let client_before = cluster::usage(&[std::process::id()]);
    let mut all = Vec::new();
    let mut end = start;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a client task failed") {
            Ok(Ok((latencies, finished))) => {
                all.extend(latencies);
                end = end.max(finished);
            }
            Ok(Err(error)) | Err(error) => {
                if failure.is_none() {
                    failure = Some(error);
                    tasks.abort_all();
                }
            }
        }
    }
    let after = cluster::usage(pids);
    let client_after = cluster::usage(&[std::process::id()]);
    let mut closing = JoinSet::new();
    for client in clients {
        closing.spawn(client.close());
    }
    while closing.join_next().await.is_some() {}
    if let Some(error) = failure {
        return Err(error);
    }
    all.sort_unstable();
    Ok(Throughput {
        ops: all.len() as u64,
        elapsed: end.duration_since(start),
        p50_ms: percentile_ms(&all, 0.50),
        p99_ms: percentile_ms(&all, 0.99),
        usage: Usage {
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
            write_bytes: after.write_bytes.saturating_sub(before.write_bytes),
        },
        client_cpu_seconds: client_after.cpu_seconds - client_before.cpu_seconds,
    })
}

/// One write of the failover client.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    sent: Instant,
    done: Instant,
    ok: bool,
}

struct FailoverOutcome {
    /// The member killed (the leader before).
    killed: usize,
    blocked: Duration,
    failed_attempts: usize,
    /// The member the client was connected to just before the kill, and after the recovery.
    client_before: Option<usize>,
    client_after: Option<usize>,
    /// The leader elected after the kill.
    new_leader: usize,
}

/// The time between the last write that succeeded before the kill and the first write sent after
/// the kill that succeeded. Writes in flight at the kill are not counted either way.
fn blocked_time(attempts: &[Attempt], killed_at: Instant) -> Option<Duration> {
    let last_before = attempts.iter().filter(|a| a.ok && a.done <= killed_at).map(|a| a.done).max()?;
    let first_after = attempts.iter().filter(|a| a.ok && a.sent >= killed_at).map(|a| a.done).min()?;
    Some(first_after.duration_since(last_before))
}

/// A client with the whole member list writes every 10 ms; the leader is killed with SIGKILL;
/// returns how long the writes were blocked. The killed member is left down.
async fn blocked_by_leader_kill(cluster: &mut Cluster, run: usize) -> Result<FailoverOutcome> {
    let system = cluster.system;
    let leader = cluster.wait_settled().await?;
    // Cairn's client tries the list in order (ZooKeeper's shuffles it): start elsewhere each run.
    let mut members = cluster.addresses();
    members.rotate_left(run % MEMBERS);
    let client = Client::connect(system, &members).await?;

    let attempts = Arc::new(AttemptLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, attempts, stop) = (client.clone(), attempts.clone(), stop.clone());
        tokio::spawn(async move {
            let data = value(3);
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let result =
                    tokio::time::timeout(WRITE_ATTEMPT_TIMEOUT, client.set(FAILOVER_PATH, &data)).await;
                attempts.push(Attempt { sent, done: Instant::now(), ok: matches!(result, Ok(Ok(()))) });
                tokio::time::sleep_until(sent + FAILOVER_WRITE_INTERVAL).await;
            }
        })
    };
    let stop_writer = || stop.store(true, Ordering::SeqCst);

    tokio::time::sleep(FAILOVER_STEADY).await;
    let steady = attempts.snapshot();
    if steady.is_empty() || steady.iter().any(|a| !a.ok) {
        stop_writer();
        let _ = writer.await;
        bail!("the failover client's writes did not all succeed before the kill");
    }
    let client_before = connected_member(cluster, &client).await;
    let killed_at = Instant::now();
    cluster.kill_member(leader)?;
    loop {
        if let Err(error) = check_interrupted() {
            stop_writer();
            return Err(error);
        }
        if attempts.snapshot().iter().any(|a| a.ok && a.sent >= killed_at) {
            break;
        }
        if killed_at.elapsed() > FAILOVER_LIMIT {
            stop_writer();
            bail!("writes still blocked {FAILOVER_LIMIT:?} after the leader was killed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(FAILOVER_AFTER).await;
    stop_writer();
    writer.await.context("the failover writer failed")?;
    let client_after = connected_member(cluster, &client).await;
    client.close().await;
    let new_leader = cluster.wait_settled().await.context("the two members left did not settle")?;
    let attempts = attempts.snapshot();
    let blocked = blocked_time(&attempts, killed_at).context("no successful write before the kill")?;
    let failed_attempts = attempts.iter().filter(|a| !a.ok).count();
    Ok(FailoverOutcome { killed: leader, blocked, failed_attempts, client_before, client_after, new_leader })
}

/// The member `client` is connected to: Cairn's client says; for ZooKeeper, the one member whose
/// `cons` lists a session (only this client has one at the time).
async fn connected_member(cluster: &Cluster, client: &Client) -> Option<usize> {
    match client {
        Client::Cairn(_) => {
            let address = client.connected_to()?;
            cluster.addresses().iter().position(|a| *a == address)
        }
        Client::ZooKeeper(_) => match cluster.zookeeper_members_with_sessions().await[..] {
            [member] => Some(member),
            _ => None,
        },
    }
}

/// The failover client's attempts, shared between its task and the test (a std mutex, never held
/// across an await).
#[derive(Default)]
struct AttemptLog(std::sync::Mutex<Vec<Attempt>>);

impl AttemptLog {
    fn push(&self, attempt: Attempt) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(attempt);
    }

    fn snapshot(&self) -> Vec<Attempt> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_time_counts_from_last_success_before_to_first_sent_after() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let attempt = |sent: u64, done: u64, ok: bool| Attempt { sent: at(sent), done: at(done), ok };
        let attempts = [
            attempt(0, 2, true),
            attempt(10, 12, true),
            // In flight at the kill (15 ms): ignored even though it succeeded.
            attempt(14, 16, true),
            attempt(20, 300, false),
            attempt(310, 320, false),
            attempt(330, 700, true),
            attempt(710, 712, true),
        ];
        assert_eq!(blocked_time(&attempts, at(15)), Some(Duration::from_millis(688)));
        assert_eq!(blocked_time(&attempts[..5], at(15)), None);
    }

    #[test]
    fn percentiles() {
        let micros: Vec<u32> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(percentile_ms(&micros, 0.5), 51.0);
        assert_eq!(percentile_ms(&micros, 0.99), 99.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn values_are_a_kib() {
        assert_eq!(value(7).len(), VALUE_BYTES);
        assert_ne!(value(1), value(2));
    }
}
