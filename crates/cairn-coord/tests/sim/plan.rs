//! The fault schedule of one run, drawn from its seed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const MEMBERS: [u64; 3] = [1, 2, 3];

/// Faults start once the quorum has had time to elect a leader and the client to start writing.
const FAULTS_START: Duration = Duration::from_secs(3);
/// Every single-member fault is over by then.
const FAULTS_END: Duration = Duration::from_secs(22);
/// The window in which no majority can talk. It is longer than a client request timeout plus a
/// retry, so writes are certainly sent, and certainly fail, inside it.
const CUT_START: Duration = Duration::from_secs(24);
const CUT_END: Duration = Duration::from_secs(30);
/// The client stops writing then; the cluster then has until `SETTLE_LIMIT` to converge.
pub const WRITES_END: Duration = Duration::from_secs(36);
pub const SETTLE_LIMIT: Duration = Duration::from_secs(50);

/// One change to the simulated world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Cuts a member off from the other members, and from the client too if `client`.
    Isolate { member: u64, client: bool },
    /// Restores every link of a member.
    Rejoin { member: u64 },
    /// Kills a member's process; its data directory stays.
    Crash { member: u64 },
    /// Restarts a crashed member on its data directory.
    Restart { member: u64 },
    /// Cuts every member off from every other member (the client still reaches all of them).
    SplitAll,
    /// Undoes `SplitAll`.
    JoinAll,
}

/// How the majority is cut off in the no-quorum window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every member alone.
    SplitAll,
    /// Two members crashed.
    CrashTwo(u64, u64),
    /// Two members cut off from everything, the third still serving the client.
    IsolateTwo(u64, u64),
}

pub struct Plan {
    /// Sorted by time.
    pub actions: Vec<(Duration, Action)>,
    /// When no majority exists: `[start, end)`.
    pub cut: (Duration, Duration),
    pub cut_kind: Cut,
    /// The members' snapshot threshold: small in most runs, so that snapshots are built, the log is
    /// purged, restarts load a snapshot and lagging members are sent one.
    pub snapshot_every: u64,
}

fn millis(rng: &mut StdRng, low: u64, high: u64) -> Duration {
    Duration::from_millis(rng.random_range(low..high))
}

pub fn plan(seed: u64) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let snapshot_every = if rng.random_bool(0.75) {
        rng.random_range(40..250)
    } else {
        cairn_coord::raft::SNAPSHOT_EVERY_ENTRIES
    };
    let mut actions = Vec::new();
    let mut t = FAULTS_START + millis(&mut rng, 0, 1000);
    while t < FAULTS_END {
        let member = MEMBERS[rng.random_range(0..MEMBERS.len())];
        let length =
            millis(&mut rng, 200, 4000).min(FAULTS_END.saturating_sub(t)).max(Duration::from_millis(50));
        let end = t + length;
        match rng.random_range(0..5) {
            0 => {
                actions.push((t, Action::Isolate { member, client: false }));
                actions.push((end, Action::Rejoin { member }));
            }
            1 => {
                actions.push((t, Action::Isolate { member, client: true }));
                actions.push((end, Action::Rejoin { member }));
            }
            2 => {
                actions.push((t, Action::Crash { member }));
                actions.push((end, Action::Restart { member }));
            }
            3 => {
                // A crash and an immediate restart: replay with traffic already flowing.
                actions.push((t, Action::Crash { member }));
                actions.push((t + millis(&mut rng, 1, 60), Action::Restart { member }));
            }
            _ => {
                // Both: cut off, crashed while cut off, back with its links.
                let mid = t + length / 2;
                actions.push((t, Action::Isolate { member, client: rng.random_bool(0.5) }));
                actions.push((mid, Action::Crash { member }));
                actions.push((end, Action::Rejoin { member }));
                actions.push((end, Action::Restart { member }));
            }
        }
        t = end + millis(&mut rng, 300, 2500);
    }

    let (a, b) = {
        let skip = MEMBERS[rng.random_range(0..MEMBERS.len())];
        let mut two = MEMBERS.iter().copied().filter(|m| *m != skip);
        (two.next().expect("three members"), two.next().expect("three members"))
    };
    let cut_kind = match rng.random_range(0..3) {
        0 => Cut::SplitAll,
        1 => Cut::CrashTwo(a, b),
        _ => Cut::IsolateTwo(a, b),
    };
    match cut_kind {
        Cut::SplitAll => {
            actions.push((CUT_START, Action::SplitAll));
            actions.push((CUT_END, Action::JoinAll));
        }
        Cut::CrashTwo(a, b) => {
            actions.push((CUT_START, Action::Crash { member: a }));
            actions.push((CUT_START, Action::Crash { member: b }));
            actions.push((CUT_END, Action::Restart { member: a }));
            actions.push((CUT_END, Action::Restart { member: b }));
        }
        Cut::IsolateTwo(a, b) => {
            actions.push((CUT_START, Action::Isolate { member: a, client: true }));
            actions.push((CUT_START, Action::Isolate { member: b, client: true }));
            actions.push((CUT_END, Action::Rejoin { member: a }));
            actions.push((CUT_END, Action::Rejoin { member: b }));
        }
    }
    // Stable: actions at the same time keep their order.
    actions.sort_by_key(|(at, _)| *at);
    Plan { actions, cut: (CUT_START, CUT_END), cut_kind, snapshot_every }
}
