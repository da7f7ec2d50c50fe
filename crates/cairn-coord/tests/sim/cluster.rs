//! One simulation run: three members and a writing client on turmoil's network, driven step by step
//! through the seed's fault plan, with the checker looking at every member after every step.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cairn_coord::api::{CoordError, CreateMode, Zxid};
use cairn_coord::client::{ClientOptions, CoordClient};
use cairn_coord::raft::{Raft, seed_thread_rng};
use cairn_coord::store::Machine;

use crate::checker::Checker;
use crate::plan::{Action, MEMBERS, SETTLE_LIMIT, WRITES_END, plan};
use crate::sim_net::{SimDialer, address, host_name, run_member};

const TICK: Duration = Duration::from_millis(1);
/// Short enough that several writes are tried, and fail, inside the no-quorum window.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT: &str = "client";

/// Handles on a running member, for the checker to read between steps.
pub struct Published {
    /// How many times this member has been started, this start included.
    pub generation: u64,
    pub raft: Raft,
    pub machine: Arc<Machine>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// `set("/k", value)`.
    Set,
    /// `create("/log/e-", value, PersistentSequential)`.
    Create,
}

/// One write the client tried, in the order it tried them.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    /// Unique per write; also its data.
    pub value: u64,
    pub kind: WriteKind,
    pub sent: Duration,
    pub done: Duration,
    /// The zxid and path of an acknowledged write, or why it failed.
    pub outcome: Result<(Zxid, String), String>,
}

/// What the hosts publish and the driver reads. Everything runs on one thread.
#[derive(Default)]
pub struct Board {
    /// The running members.
    pub members: BTreeMap<u64, Published>,
    starts: BTreeMap<u64, u64>,
    pub writes: Vec<WriteRecord>,
}

type Shared = Rc<RefCell<Board>>;

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// A member process: listens, opens its store (which outlives crashes), serves.
async fn member_main(
    id: u64,
    seed: u64,
    snapshot_every_entries: u64,
    data_dir: PathBuf,
    board: Shared,
) -> turmoil::Result {
    seed_thread_rng(seed ^ id);
    run_member(id, &MEMBERS, "sim", snapshot_every_entries, data_dir, |member| {
        let mut board = board.borrow_mut();
        let generation = {
            let starts = board.starts.entry(id).or_insert(0);
            *starts += 1;
            *starts
        };
        let published =
            Published { generation, raft: member.raft().clone(), machine: member.machine().clone() };
        board.members.insert(id, published);
    })
    .await
}

/// Creates `path` unless it exists, retrying through faults.
async fn ensure(client: &CoordClient, path: &str) {
    loop {
        match client.create(path, b"", CreateMode::Persistent).await {
            Ok(_) | Err(CoordError::NodeExists { .. }) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The client: sequential writes, alternating a set of one znode and a sequential create, each with
/// a unique value, until `WRITES_END`. Records every outcome.
async fn client_main(board: Shared) -> turmoil::Result {
    let members: Vec<String> = MEMBERS.iter().map(|m| address(*m)).collect();
    let options = ClientOptions { session_timeout: None, request_timeout: REQUEST_TIMEOUT };
    let client = CoordClient::connect_with(&members, options, Arc::new(SimDialer))
        .await
        .map_err(|e| format!("client: {e}"))?;
    ensure(&client, "/k").await;
    ensure(&client, "/log").await;
    let mut value = 0;
    while now() < WRITES_END {
        value += 1;
        let data = value.to_string();
        let sent = now();
        let (kind, outcome) = if value % 2 == 0 {
            let r = client.set("/k", data.as_bytes(), None).await;
            (WriteKind::Set, r.map(|stat| (stat.mzxid, "/k".to_owned())))
        } else {
            let r = client.create("/log/e-", data.as_bytes(), CreateMode::PersistentSequential).await;
            (WriteKind::Create, r.map(|(path, stat)| (stat.czxid, path)))
        };
        let failed = outcome.is_err();
        let record =
            WriteRecord { value, kind, sent, done: now(), outcome: outcome.map_err(|e| e.to_string()) };
        board.borrow_mut().writes.push(record);
        let pause = if failed { 100 } else { 10 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Ok(())
}

/// What a successful run reports.
pub struct Outcome {
    /// Leader, term and applied-index observations and the client's outcomes, with simulated times.
    pub trace: Vec<String>,
    pub attempted: usize,
    pub acked: usize,
    /// Terms that had a leader.
    pub leaders: usize,
    pub crashes: usize,
    /// Snapshots seen (built or installed), over all members.
    pub snapshots: usize,
    pub final_index: Zxid,
}

/// A directory for the members' stores; tmpfs when there is one (fsync is then free).
fn data_root() -> Result<tempfile::TempDir, String> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::TempDir::new_in(shm) } else { tempfile::TempDir::new() };
    dir.map_err(|e| format!("cannot create a temporary directory: {e}"))
}

fn apply(sim: &mut turmoil::Sim<'_>, action: &Action, board: &Shared) {
    let others = |member: u64| MEMBERS.iter().filter(move |m| **m != member).map(|m| host_name(*m));
    match action {
        Action::Isolate { member, client } => {
            for other in others(*member) {
                sim.partition(host_name(*member), other);
            }
            if *client {
                sim.partition(host_name(*member), CLIENT);
            }
        }
        Action::Rejoin { member } => {
            for other in others(*member) {
                sim.repair(host_name(*member), other);
            }
            sim.repair(host_name(*member), CLIENT);
        }
        Action::Crash { member } => {
            sim.crash(host_name(*member));
            board.borrow_mut().members.remove(member);
        }
        Action::Restart { member } => {
            board.borrow_mut().members.remove(member);
            sim.bounce(host_name(*member));
        }
        Action::SplitAll => {
            for (i, a) in MEMBERS.iter().enumerate() {
                for b in &MEMBERS[i + 1..] {
                    sim.partition(host_name(*a), host_name(*b));
                }
            }
        }
        Action::JoinAll => {
            for (i, a) in MEMBERS.iter().enumerate() {
                for b in &MEMBERS[i + 1..] {
                    sim.repair(host_name(*a), host_name(*b));
                }
            }
        }
    }
}

/// tokio numbers tasks from one process-wide counter, and a current-thread runtime files its tasks
/// in `id % 4` lists that it drops in list order when it shuts down, as turmoil's crash does. The
/// drop order decides the order in which the dead host's sockets send their last segments, and so
/// which random latency each gets. Starting every run at the same id modulo a multiple of 4 makes
/// that order the same from run to run (runs must not overlap: see `SIM_LOCK`).
fn align_task_ids() -> Result<(), String> {
    const ALIGN: u64 = 64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    loop {
        let id: u64 = rt
            .spawn(async {})
            .id()
            .to_string()
            .parse()
            .map_err(|e| format!("tokio task id is not a number: {e}"))?;
        if id % ALIGN == ALIGN - 1 {
            return Ok(());
        }
    }
}

/// Runs one seed to the end; `Err` says which invariant broke, when.
pub fn run_seed(seed: u64) -> Result<Outcome, String> {
    align_task_ids()?;
    seed_thread_rng(seed);
    let plan = plan(seed);
    let root = data_root()?;
    let board: Shared = Rc::new(RefCell::new(Board::default()));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(SETTLE_LIMIT + Duration::from_secs(10))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .rng_seed(seed)
        .build();
    for id in MEMBERS {
        let dir = root.path().join(host_name(id));
        let board = board.clone();
        let snapshot_every = plan.snapshot_every;
        sim.host(host_name(id), move || member_main(id, seed, snapshot_every, dir.clone(), board.clone()));
    }
    sim.client(CLIENT, client_main(board.clone()));

    let mut checker = Checker::new(plan.cut);
    checker.note(
        Duration::ZERO,
        format!(
            "plan: {:?}, cut: {:?}, snapshot every {} entries",
            plan.actions, plan.cut_kind, plan.snapshot_every
        ),
    );
    let mut pending = plan.actions.iter().peekable();
    loop {
        let now = sim.elapsed();
        while let Some((at, action)) = pending.next_if(|(at, _)| *at <= now) {
            checker.note(*at, format!("{action:?}"));
            if matches!(action, Action::Crash { .. }) {
                checker.crashes += 1;
            }
            apply(&mut sim, action, &board);
        }
        let client_done = sim.step().map_err(|e| format!("at {now:?}: the simulation failed: {e}"))?;
        let now = sim.elapsed();
        checker.observe(now, &board.borrow()).map_err(|e| format!("at {now:?}: {e}"))?;
        if client_done && pending.peek().is_none() && checker.settled(&board.borrow()) {
            break;
        }
        if now > SETTLE_LIMIT {
            return Err(format!(
                "the cluster did not settle by {SETTLE_LIMIT:?} with every fault healed: {}",
                checker.describe(&board.borrow())
            ));
        }
    }
    let outcome = checker.finish(&board.borrow());
    // Stop every member before the store directory goes.
    drop(sim);
    outcome
}
