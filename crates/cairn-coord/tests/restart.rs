//! Reads right after every member of the quorum was killed and restarted, in a deterministic
//! simulation (turmoil).
//!
//! A member restarts with the tree of its last snapshot and replays only the log entries its
//! `committed` hint covers (written every few dozen entries); the rest it applies once it learns
//! they are committed. The leader that was killed comes back with its vote for itself: if it were
//! allowed to lead that term again at once, it would know its commit index only from that stale
//! hint, and a `sync` (a linearizable read) would get a read point behind writes acknowledged
//! before the kill, and the next read would answer `NoNode` for a znode created before it.
//!
//! The schedule forces that window: the old leader comes back alone (its replication to the dead
//! followers fails and backs off for 500 ms), the client's `sync` waits on it, then one follower
//! comes back, and the first heartbeat it answers confirms the old leader before its replication
//! retries and moves the commit index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cairn_coord::api::{CoordError, CreateMode, Zxid};
use cairn_coord::client::{ClientOptions, CoordClient};
use cairn_coord::raft::{Raft, SNAPSHOT_EVERY_ENTRIES, seed_thread_rng};
use cairn_coord::store::Machine;
use openraft::ServerState;

#[path = "common/sim_net.rs"]
mod sim_net;

use sim_net::{SimDialer, address, host_name, run_member};

const MEMBERS: [u64; 3] = [1, 2, 3];
const CHILDREN: u32 = 20;

/// What the driver and the simulated hosts share (everything runs on one thread).
#[derive(Default)]
struct Board {
    /// The running members.
    members: BTreeMap<u64, (Raft, Arc<Machine>)>,
    /// Set by the client once every write was acknowledged: the zxid of the last one.
    written: Option<Zxid>,
    /// Set by the driver: the member the client reads from after the restart.
    read_from: Option<u64>,
    /// The client's read of the last child after `sync`.
    read: Option<Result<Vec<u8>, String>>,
}

type Shared = Rc<RefCell<Board>>;

async fn member_main(id: u64, seed: u64, data_dir: PathBuf, board: Shared) -> turmoil::Result {
    seed_thread_rng(seed ^ id);
    run_member(id, &MEMBERS, "restart", SNAPSHOT_EVERY_ENTRIES, data_dir, |member| {
        board.borrow_mut().members.insert(id, (member.raft().clone(), member.machine().clone()));
    })
    .await
}

async fn client_main(board: Shared) -> turmoil::Result {
    let options = ClientOptions { session_timeout: None, request_timeout: Duration::from_secs(5) };
    let members: Vec<String> = MEMBERS.iter().map(|m| address(*m)).collect();
    let client = CoordClient::connect_with(&members, options.clone(), Arc::new(SimDialer)).await?;
    client.create("/t", b"", CreateMode::Persistent).await?;
    for i in 0..CHILDREN {
        client.create(&format!("/t/n{i}"), i.to_string().as_bytes(), CreateMode::Persistent).await?;
    }
    board.borrow_mut().written = Some(client.last_zxid());
    drop(client);

    let target = loop {
        if let Some(target) = board.borrow().read_from {
            break target;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A new client, as after a restart of the application: it has seen nothing, so only `sync`
    // makes its reads see the writes above.
    let client = CoordClient::connect_with(&[address(target)], options, Arc::new(SimDialer)).await?;
    let mut tries = 0;
    loop {
        match client.sync().await {
            Ok(()) => break,
            Err(CoordError::Unavailable { .. } | CoordError::ConnectionLoss { .. }) if tries < 10 => {
                tries += 1;
            }
            Err(e) => return Err(format!("sync: {e}").into()),
        }
    }
    let last = format!("/t/n{}", CHILDREN - 1);
    let read = client.get(&last).await.map(|(data, _)| data).map_err(|e| format!("get {last}: {e}"));
    board.borrow_mut().read = Some(read);
    Ok(())
}

fn step_until(sim: &mut turmoil::Sim<'_>, limit: Duration, what: &str, done: impl Fn() -> bool) {
    let until = sim.elapsed() + limit;
    while !done() {
        sim.step().unwrap_or_else(|e| panic!("the simulation failed while waiting for {what}: {e}"));
        assert!(sim.elapsed() < until, "no {what} within {limit:?}");
    }
}

fn run(seed: u64) {
    seed_thread_rng(seed);
    let root = tempfile::tempdir().expect("tempdir");
    let board: Shared = Rc::new(RefCell::new(Board::default()));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .rng_seed(seed)
        .build();
    for id in MEMBERS {
        let dir = root.path().join(host_name(id));
        let board = board.clone();
        sim.host(host_name(id), move || member_main(id, seed, dir.clone(), board.clone()));
    }
    sim.client("client", client_main(board.clone()));

    step_until(&mut sim, Duration::from_secs(30), "acknowledged writes", || board.borrow().written.is_some());
    let written = board.borrow().written.expect("written");
    let leader = {
        let b = board.borrow();
        let leaders: Vec<u64> = b
            .members
            .iter()
            .filter(|(_, (raft, _))| raft.metrics().borrow().state == ServerState::Leader)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(leaders.len(), 1, "seed {seed}: leaders before the kill: {leaders:?}");
        leaders[0]
    };

    // Kill every member at once.
    for id in MEMBERS {
        sim.crash(host_name(id));
    }
    board.borrow_mut().members.clear();

    // The old leader comes back alone.
    sim.bounce(host_name(leader));
    step_until(&mut sim, Duration::from_secs(5), "restart of the old leader", || {
        board.borrow().members.contains_key(&leader)
    });
    let replayed = *board.borrow().members[&leader].1.applied().borrow();
    // The precondition of the scenario: the restarted member has not replayed the last writes.
    assert!(
        replayed < written,
        "seed {seed}: the restarted leader replayed up to {replayed} at start, past the last write \
         {written}: the test no longer exercises a read before replay"
    );
    step_for(&mut sim, Duration::from_secs(1));
    board.borrow_mut().read_from = Some(leader);
    // The client connects and its `sync` waits for a majority.
    step_for(&mut sim, Duration::from_millis(300));
    assert!(board.borrow().read.is_none(), "seed {seed}: a read was answered without a majority");

    // One follower comes back: a majority again.
    let follower = MEMBERS.into_iter().find(|m| *m != leader).expect("a follower");
    sim.bounce(host_name(follower));
    step_until(&mut sim, Duration::from_secs(60), "the read after the restart", || {
        board.borrow().read.is_some()
    });
    let read = board.borrow_mut().read.take().expect("read");
    assert_eq!(
        read.map_err(|e| format!(
            "seed {seed}: a read after sync missed a write acknowledged before every member restarted: {e}"
        )),
        Ok((CHILDREN - 1).to_string().into_bytes()),
    );
    drop(sim);
}

fn step_for(sim: &mut turmoil::Sim<'_>, length: Duration) {
    let until = sim.elapsed() + length;
    while sim.elapsed() < until {
        sim.step().unwrap_or_else(|e| panic!("the simulation failed: {e}"));
    }
}

#[test]
fn sync_after_every_member_restarted_sees_acknowledged_writes() {
    for seed in 1..=4 {
        run(seed);
    }
}
