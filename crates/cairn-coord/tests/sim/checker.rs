//! The invariants, checked against every running member after every simulation step, and the final
//! checks once the cluster has settled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_coord::api::Zxid;
use cairn_coord::tree::Tree;
use openraft::ServerState;

use crate::cluster::{Board, Outcome, WriteKind, WriteRecord};
use crate::plan::MEMBERS;

/// An acknowledged write.
struct Acked {
    value: u64,
    kind: WriteKind,
    zxid: Zxid,
    path: String,
}

/// What the checker last saw of one member.
struct Seen {
    generation: u64,
    applied: Zxid,
    raft_applied: Option<u64>,
    /// Acknowledged writes (a prefix of `Checker::acked`) found in this member's tree.
    verified: usize,
    line: String,
}

pub struct Checker {
    /// No write sent in `[start, end)` may be acknowledged before `end`.
    cut: (Duration, Duration),
    /// Term -> the one member that led it.
    leaders: BTreeMap<u64, u64>,
    seen: BTreeMap<u64, Seen>,
    /// Applied index -> a digest of the tree at that index, and who first showed it.
    states: BTreeMap<Zxid, (u64, String)>,
    acked: Vec<Acked>,
    /// How many of the client's records have been looked at.
    records: usize,
    trace: Vec<String>,
    pub crashes: usize,
    /// (member, index) of every snapshot seen, built or installed.
    snapshots: BTreeSet<(u64, Zxid)>,
}

fn ms(t: Duration) -> u128 {
    t.as_millis()
}

/// A cheap summary of the tree that any change to the written znodes alters.
fn digest(tree: &Tree) -> String {
    format!(
        "{:?} {:?} {:?} {}",
        tree.get("/k").ok(),
        tree.exists("/log").ok().flatten(),
        tree.exists("/").ok().flatten(),
        tree.znode_count()
    )
}

/// Whether `tree` holds the acknowledged write `a`.
/// Checks, in order from `*verified`, every acknowledged write the member has applied (`zxid <=
/// applied`) against its tree.
fn verify_acked(
    tree: &Tree,
    acked: &[Acked],
    verified: &mut usize,
    applied: Zxid,
    id: u64,
) -> Result<(), String> {
    while let Some(a) = acked.get(*verified)
        && a.zxid <= applied
    {
        holds(tree, a).map_err(|e| format!("member {id} applied up to {applied}, but {e}"))?;
        *verified += 1;
    }
    Ok(())
}

fn holds(tree: &Tree, a: &Acked) -> Result<(), String> {
    match a.kind {
        WriteKind::Create => match tree.get(&a.path) {
            Ok((data, stat)) if data == a.value.to_string().as_bytes() && stat.czxid == a.zxid => Ok(()),
            Ok((data, stat)) => Err(format!(
                "{} holds {:?} created at {}, not the acknowledged {} created at {}",
                a.path,
                String::from_utf8_lossy(&data),
                stat.czxid,
                a.value,
                a.zxid
            )),
            Err(e) => Err(format!(
                "acknowledged create of {} (value {}, zxid {}) is gone: {e}",
                a.path, a.value, a.zxid
            )),
        },
        WriteKind::Set => match tree.get("/k") {
            Ok((_, stat)) if stat.mzxid >= a.zxid => Ok(()),
            Ok((data, stat)) => Err(format!(
                "/k was last set at {} (to {:?}), before the acknowledged set to {} at {}",
                stat.mzxid,
                String::from_utf8_lossy(&data),
                a.value,
                a.zxid
            )),
            Err(e) => Err(format!("/k is gone: {e}")),
        },
    }
}

impl Checker {
    pub fn new(cut: (Duration, Duration)) -> Self {
        Checker {
            cut,
            leaders: BTreeMap::new(),
            seen: BTreeMap::new(),
            states: BTreeMap::new(),
            acked: Vec::new(),
            records: 0,
            trace: Vec::new(),
            crashes: 0,
            snapshots: BTreeSet::new(),
        }
    }

    pub fn note(&mut self, at: Duration, what: String) {
        self.trace.push(format!("{} {what}", ms(at)));
    }

    fn claim_leader(&mut self, term: u64, leader: u64, by: u64) -> Result<(), String> {
        let first = *self.leaders.entry(term).or_insert(leader);
        if first != leader {
            return Err(format!(
                "two leaders in term {term}: member {first}, and member {leader} (seen by member {by})"
            ));
        }
        Ok(())
    }

    /// Takes in the client's new records: acknowledged zxids must increase (the client is
    /// sequential), and nothing sent while no majority could talk may be acknowledged in that window.
    fn take_records(&mut self, now: Duration, writes: &[WriteRecord]) -> Result<(), String> {
        for w in &writes[self.records..] {
            let outcome = match &w.outcome {
                Ok((zxid, path)) => format!("ok {zxid} {path}"),
                Err(_) => "failed".to_owned(),
            };
            self.trace.push(format!(
                "{} write {} {:?} sent {}: {outcome}",
                ms(now),
                w.value,
                w.kind,
                ms(w.sent)
            ));
            let Ok((zxid, path)) = &w.outcome else { continue };
            let (start, end) = self.cut;
            if w.sent >= start && w.done < end {
                return Err(format!(
                    "write {} ({:?}) sent at {:?} was acknowledged at {:?} with zxid {zxid}, while no \
                     majority could talk ({start:?}..{end:?})",
                    w.value, w.kind, w.sent, w.done
                ));
            }
            if let Some(last) = self.acked.last()
                && last.zxid >= *zxid
            {
                return Err(format!(
                    "write {} was acknowledged at zxid {zxid}, not after the previous acknowledged write {} \
                     at {}",
                    w.value, last.value, last.zxid
                ));
            }
            self.acked.push(Acked { value: w.value, kind: w.kind, zxid: *zxid, path: path.clone() });
        }
        self.records = writes.len();
        Ok(())
    }

    /// Checks every running member; called after every step.
    pub fn observe(&mut self, now: Duration, board: &Board) -> Result<(), String> {
        self.take_records(now, &board.writes)?;
        for (&id, member) in &board.members {
            let (state, term, leader, raft_applied, snapshot) = {
                let metrics = member.raft.metrics();
                let m = metrics.borrow();
                (m.state, m.current_term, m.current_leader, m.last_applied.map(|l| l.index), m.snapshot)
            };
            if let Some(snapshot) = snapshot {
                self.snapshots.insert((id, snapshot.index));
            }
            if state == ServerState::Leader {
                self.claim_leader(term, id, id)?;
            }
            if let Some(leader) = leader {
                self.claim_leader(term, leader, id)?;
            }
            let applied = *member.machine.applied().borrow();

            let restarted = self.seen.get(&id).is_none_or(|s| s.generation != member.generation);
            if restarted {
                self.seen.insert(
                    id,
                    Seen {
                        generation: member.generation,
                        applied,
                        raft_applied,
                        verified: 0,
                        line: String::new(),
                    },
                );
            }
            let seen = self.seen.get_mut(&id).expect("just inserted");
            if applied < seen.applied {
                return Err(format!(
                    "member {id} applied index went back from {} to {applied}",
                    seen.applied
                ));
            }
            if raft_applied < seen.raft_applied {
                return Err(format!(
                    "member {id} Raft last_applied went back from {:?} to {raft_applied:?}",
                    seen.raft_applied
                ));
            }
            let changed = restarted || applied != seen.applied;
            seen.applied = applied;
            seen.raft_applied = raft_applied;

            if changed {
                let acked = &self.acked;
                let states = &mut self.states;
                member.machine.read(|tree| -> Result<(), String> {
                    let d = digest(tree);
                    let (first, expected) = states.entry(applied).or_insert_with(|| (id, d.clone()));
                    if *expected != d {
                        return Err(format!(
                            "state machines diverged at index {applied}: member {first} had {expected}, \
                             member {id} has {d}"
                        ));
                    }
                    verify_acked(tree, acked, &mut seen.verified, applied, id)
                })?;
            } else {
                // Writes acknowledged since this member last moved.
                let acked = &self.acked;
                if acked.get(seen.verified).is_some_and(|a| a.zxid <= applied) {
                    member.machine.read(|tree| verify_acked(tree, acked, &mut seen.verified, applied, id))?;
                }
            }

            let line = format!(
                "m{id} g{} {state:?} term {term} leader {leader:?} applied {applied} snapshot {:?}",
                member.generation,
                snapshot.map(|s| s.index)
            );
            if line != seen.line {
                self.trace.push(format!("{} {line}", ms(now)));
                seen.line = line;
            }
        }
        Ok(())
    }

    /// Every member running, one leader everyone follows, every member at the same index (past every
    /// acknowledged write) with the same tree.
    pub fn settled(&self, board: &Board) -> bool {
        if board.members.len() != MEMBERS.len() {
            return false;
        }
        let mut views = BTreeSet::new();
        let mut applied = BTreeSet::new();
        let mut leaders = 0;
        for member in board.members.values() {
            let metrics = member.raft.metrics();
            let m = metrics.borrow();
            if m.state == ServerState::Leader {
                leaders += 1;
            }
            views.insert((m.current_term, m.current_leader));
            applied.insert(*member.machine.applied().borrow());
        }
        let last_acked = self.acked.last().map_or(0, |a| a.zxid);
        if leaders != 1
            || views.len() != 1
            || applied.len() != 1
            || applied.first().is_none_or(|a| *a < last_acked)
        {
            return false;
        }
        let trees: BTreeSet<Vec<u8>> =
            board.members.values().map(|m| m.machine.read(|t| t.to_bytes())).collect();
        trees.len() == 1
    }

    /// The state of every member, for a failure message.
    pub fn describe(&self, board: &Board) -> String {
        let mut out = Vec::new();
        for id in MEMBERS {
            match board.members.get(&id) {
                Some(member) => {
                    let metrics = member.raft.metrics();
                    let m = metrics.borrow();
                    out.push(format!(
                        "m{id}: {:?} term {} leader {:?} applied {} last log {:?}",
                        m.state,
                        m.current_term,
                        m.current_leader,
                        *member.machine.applied().borrow(),
                        m.last_log_index
                    ));
                }
                None => out.push(format!("m{id}: not running")),
            }
        }
        let last = self.acked.last().map_or(0, |a| a.zxid);
        out.push(format!("last acknowledged zxid {last}"));
        out.join("; ")
    }

    /// The final checks on the settled cluster.
    pub fn finish(mut self, board: &Board) -> Result<Outcome, String> {
        let Some(first) = board.members.values().next() else {
            return Err("no member running at the end".to_owned());
        };
        for (id, member) in &board.members {
            member.machine.read(|t| t.check_invariants()).map_err(|e| format!("member {id}'s tree: {e}"))?;
        }
        let final_index = *first.machine.applied().borrow();
        let writes = &board.writes;
        first.machine.read(|tree| -> Result<(), String> {
            for a in &self.acked {
                holds(tree, a).map_err(|e| format!("after settling: {e}"))?;
            }
            // /k holds the last acknowledged set, or a later-applied set whose outcome the client
            // never learned.
            if let Some(last) = self.acked.iter().rev().find(|a| a.kind == WriteKind::Set) {
                let (data, stat) = tree.get("/k").map_err(|e| format!("/k: {e}"))?;
                let value = String::from_utf8_lossy(&data).parse::<u64>().ok();
                let unacked = |v: u64| {
                    writes.iter().any(|w| w.value == v && w.kind == WriteKind::Set && w.outcome.is_err())
                };
                let fine = match value {
                    Some(v) if v == last.value => stat.mzxid == last.zxid,
                    Some(v) => unacked(v) && stat.mzxid > last.zxid,
                    None => false,
                };
                if !fine {
                    return Err(format!(
                        "/k holds {:?} (set at {}), but the last acknowledged set was {} at {}",
                        String::from_utf8_lossy(&data),
                        stat.mzxid,
                        last.value,
                        last.zxid
                    ));
                }
            }
            // Every sequential znode comes from one write the client tried, and no write is applied
            // twice.
            let (names, _) = tree.children("/log").map_err(|e| format!("/log: {e}"))?;
            let mut values = BTreeSet::new();
            for name in names {
                let path = format!("/log/{name}");
                let (data, _) = tree.get(&path).map_err(|e| format!("{path}: {e}"))?;
                let value = String::from_utf8_lossy(&data).parse::<u64>().ok();
                let tried =
                    value.is_some_and(|v| writes.iter().any(|w| w.value == v && w.kind == WriteKind::Create));
                if !tried {
                    return Err(format!("{path} holds {data:?}, which the client never wrote"));
                }
                if !values.insert(value) {
                    return Err(format!("{path}: the write of {value:?} was applied twice"));
                }
            }
            Ok(())
        })?;

        // The no-quorum window was exercised: writes were tried in it, and none got through.
        let (start, end) = self.cut;
        let in_cut: Vec<&WriteRecord> = writes.iter().filter(|w| w.sent >= start && w.done < end).collect();
        if in_cut.is_empty() {
            return Err(format!("no write was tried while no majority could talk ({start:?}..{end:?})"));
        }
        // Progress before the faults, and again once every fault healed.
        let acked_writes: Vec<&WriteRecord> = writes.iter().filter(|w| w.outcome.is_ok()).collect();
        if acked_writes.len() < 50 {
            return Err(format!(
                "only {} writes acknowledged: the quorum made too little progress",
                acked_writes.len()
            ));
        }
        if !acked_writes.iter().any(|w| w.sent >= end) {
            return Err(format!("no write was acknowledged after the majority came back at {end:?}"));
        }
        self.trace.push(format!("final index {final_index}, leaders {:?}", self.leaders));
        Ok(Outcome {
            trace: self.trace,
            attempted: writes.len(),
            acked: acked_writes.len(),
            leaders: self.leaders.len(),
            crashes: self.crashes,
            snapshots: self.snapshots.len(),
            final_index,
        })
    }
}
