//! A replica of a volume on this node: applies what the volume's master sends
//! ([`ReplRequest`]), refuses masters of older epochs (but not the master the CLDB kept at a
//! newer epoch before it hears of it), and keeps its latest records in memory so that, if it is
//! promoted, it can bring the other replicas up to date without a full copy.
//!
//! Which history a copy belongs to: the **history epoch**, kept in `<volume dir>/history-epoch`,
//! is the epoch of the master whose history the copy is a prefix of. It is written (durably)
//! when the replica starts following a master, after the master checked that the copy continues
//! its history or sent a full copy; it is 0 while a full copy is applied and on a copy that
//! was a master (a master's copy may hold changes no replica has: it must be copied again
//! before it can follow anyone).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_store::replication::{Block, Record, Replica};
use cairn_store::{BadBlock, ScrubCursor, StoreConfig, StoreError};
use cairn_types::{ClusterId, VolumeId};
use parking_lot::Mutex;

use crate::proto::{ReplError, ReplReply, ReplRequest};

/// Bytes of applied records a replica keeps in memory (see the module doc).
pub(crate) const RETAINED_BYTES: usize = 64 << 20;

const HISTORY_FILE: &str = "history-epoch";

/// One volume's replica on this node.
pub(crate) struct ReplicaVolume {
    pub(crate) dir: PathBuf,
    replica: Replica,
    /// Serializes the changes (records, copies); `state` is only held briefly.
    apply: Mutex<()>,
    state: Mutex<State>,
}

struct State {
    /// The newest epoch seen, from a master's call or from the CLDB.
    epoch: u64,
    /// The master the CLDB named for `epoch` (None when only a master's call brought `epoch`).
    assigned_master: Option<String>,
    /// The master this copy follows (node name), once it checked the copy or copied it anew.
    following: Option<String>,
    /// The master that said hello last (it may not have decided yet), its address, and the
    /// epoch of its hello.
    master: String,
    master_address: String,
    master_epoch: u64,
    history_epoch: u64,
    /// A full copy is being applied.
    copying: bool,
    /// The latest records applied, consecutive, ending at the replica's position.
    retained: VecDeque<Record>,
    retained_bytes: usize,
}

/// What a replica tells the CLDB.
pub(crate) struct ReplicaReport {
    pub(crate) epoch: u64,
    pub(crate) position: u64,
    pub(crate) following: bool,
    pub(crate) copying: bool,
}

impl ReplicaVolume {
    /// Opens (creating it if new) the replica in `config.data_dir`.
    pub(crate) fn open(
        config: StoreConfig,
        cluster: ClusterId,
        volume: VolumeId,
        epoch: u64,
    ) -> Result<ReplicaVolume, StoreError> {
        let dir = config.data_dir.clone();
        let replica = Replica::open(config, cluster, volume)?;
        let history_epoch = read_history_epoch(&dir);
        Ok(ReplicaVolume {
            dir,
            replica,
            apply: Mutex::new(()),
            state: Mutex::new(State {
                epoch,
                assigned_master: None,
                following: None,
                master: String::new(),
                master_address: String::new(),
                master_epoch: 0,
                history_epoch,
                copying: false,
                retained: VecDeque::new(),
                retained_bytes: 0,
            }),
        })
    }

    pub(crate) fn report(&self) -> ReplicaReport {
        let state = self.state.lock();
        ReplicaReport {
            epoch: state.epoch,
            position: self.replica.position(),
            following: state.following.is_some(),
            copying: state.copying,
        }
    }

    /// The CLDB's assignment: a newer epoch keeps this copy following its master only if the
    /// master did not change.
    pub(crate) fn assigned(&self, epoch: u64, master: &str) {
        let mut state = self.state.lock();
        if epoch < state.epoch {
            return;
        }
        if epoch > state.epoch {
            state.epoch = epoch;
            if state.following.as_deref() != Some(master) {
                state.following = None;
            }
        }
        state.assigned_master = Some(master.to_owned());
    }

    /// The history epoch and position (taken together, between two changes).
    pub(crate) fn stands_at(&self) -> (u64, u64) {
        let _apply = self.apply.lock();
        (self.state.lock().history_epoch, self.replica.position())
    }

    /// The history epoch, and the records kept in memory (for a promotion: the copy is closed
    /// right after, so they are moved out).
    fn take_history(&self) -> (u64, Vec<Record>) {
        let _apply = self.apply.lock();
        let mut state = self.state.lock();
        state.retained_bytes = 0;
        (state.history_epoch, std::mem::take(&mut state.retained).into())
    }

    /// The master this copy follows: (address, epoch), for fetching good blocks from it.
    pub(crate) fn master(&self) -> Option<(String, u64)> {
        let state = self.state.lock();
        state
            .following
            .as_ref()
            .filter(|_| !state.master_address.is_empty())
            .map(|_| (state.master_address.clone(), state.epoch))
    }

    /// One step of this copy's scrub (see [`Replica::scrub`]).
    pub(crate) fn scrub(
        &self,
        cursor: ScrubCursor,
        blocks_max: u64,
    ) -> Result<(Vec<BadBlock>, Option<ScrubCursor>), StoreError> {
        self.replica.scrub(cursor, blocks_max)
    }

    /// The last record applied.
    pub(crate) fn position(&self) -> u64 {
        self.replica.position()
    }

    /// Rewrites this copy's bad blocks among `blocks` (good ones from the master).
    pub(crate) fn repair(&self, bad: BadBlock, blocks: Vec<Option<Block>>) -> Result<u64, StoreError> {
        let _apply = self.apply.lock();
        self.replica.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, blocks)
    }

    /// Closes the copy durably (before it is opened as a master).
    pub(crate) fn close(self) -> Result<(), StoreError> {
        self.replica.close()
    }

    /// Closes the copy durably for a promotion: its history epoch and the records it kept.
    pub(crate) fn close_for_promotion(self) -> Result<(u64, Vec<Record>), StoreError> {
        let history = self.take_history();
        self.replica.close()?;
        Ok(history)
    }

    /// Applies records fetched from a peer (a promotion catching up): they must continue the
    /// copy.
    pub(crate) fn apply_fetched(&self, records: &[Record]) -> Result<(), StoreError> {
        let _apply = self.apply.lock();
        for record in records {
            if record.seq <= self.replica.position() {
                continue;
            }
            self.replica.apply(record)?;
            self.retain(record);
        }
        Ok(())
    }

    /// Handles a master's call. Blocks on disk: call it from a blocking thread.
    pub(crate) fn handle(&self, request: ReplRequest) -> Result<ReplReply, ReplError> {
        let _apply = self.apply.lock();
        let epoch = request.epoch();
        {
            let mut state = self.state.lock();
            if epoch < state.epoch && !state.sent_by_the_kept_master(&request) {
                return Err(ReplError::Fenced { epoch: state.epoch });
            }
            if epoch > state.epoch {
                state.epoch = epoch;
                state.assigned_master = None;
            }
        }
        let need_resync = |error: StoreError| ReplError::NeedResync(error.to_string());
        match request {
            ReplRequest::Hello { master, master_address, .. } => {
                let mut state = self.state.lock();
                state.following = None;
                state.master = master;
                state.master_address = master_address;
                state.master_epoch = epoch;
                Ok(ReplReply::Position {
                    history_epoch: state.history_epoch,
                    position: self.replica.position(),
                })
            }
            ReplRequest::Follow { epoch, .. } => {
                let mut state = self.state.lock();
                if state.copying {
                    return Err(ReplError::NeedResync("a full copy did not finish".to_string()));
                }
                self.set_history_epoch(&mut state, epoch).map_err(need_resync)?;
                state.following = Some(state.master.clone());
                Ok(ReplReply::Position {
                    history_epoch: state.history_epoch,
                    position: self.replica.position(),
                })
            }
            ReplRequest::Records { records, .. } => {
                if self.state.lock().following.is_none() {
                    return Err(ReplError::NeedResync("not following this master".to_string()));
                }
                for record in &records {
                    if record.seq <= self.replica.position() {
                        continue;
                    }
                    if let Err(error) = self.replica.apply(record) {
                        self.state.lock().following = None;
                        return Err(need_resync(error));
                    }
                    self.retain(record);
                }
                let state = self.state.lock();
                Ok(ReplReply::Position {
                    history_epoch: state.history_epoch,
                    position: self.replica.position(),
                })
            }
            ReplRequest::SnapshotBegin { .. } => {
                let mut state = self.state.lock();
                state.following = None;
                state.copying = true;
                state.retained.clear();
                state.retained_bytes = 0;
                self.set_history_epoch(&mut state, 0).map_err(need_resync)?;
                drop(state);
                self.replica.begin_snapshot().map_err(need_resync)?;
                Ok(ReplReply::Position { history_epoch: 0, position: 0 })
            }
            ReplRequest::SnapshotPieces { pieces, .. } => {
                if !self.state.lock().copying {
                    return Err(ReplError::NeedResync("no full copy in progress".to_string()));
                }
                for piece in pieces {
                    self.replica.apply_snapshot_piece(piece).map_err(need_resync)?;
                }
                Ok(ReplReply::Position { history_epoch: 0, position: 0 })
            }
            ReplRequest::SnapshotEnd { epoch, seq, .. } => {
                if !self.state.lock().copying {
                    return Err(ReplError::NeedResync("no full copy in progress".to_string()));
                }
                self.replica.finish_snapshot(seq).map_err(need_resync)?;
                let mut state = self.state.lock();
                state.copying = false;
                self.set_history_epoch(&mut state, epoch).map_err(need_resync)?;
                state.following = Some(state.master.clone());
                Ok(ReplReply::Position { history_epoch: epoch, position: self.replica.position() })
            }
            ReplRequest::ReadBlocks { container, inode, chunk, first_block, count, .. } => self
                .replica
                .read_blocks(container, inode, chunk, first_block, count)
                .map(|blocks| ReplReply::Blocks { blocks, position: self.replica.position() })
                .map_err(|error| ReplError::Failed(error.to_string())),
            ReplRequest::Fetch { after, bytes_max, .. } => {
                let mut state = self.state.lock();
                // The caller is a new master: this copy stops following the old one.
                state.following = None;
                let mut records = Vec::new();
                let mut bytes = 0;
                if state.retained.front().is_some_and(|first| first.seq <= after + 1) {
                    for record in state.retained.iter().filter(|record| record.seq > after) {
                        bytes += record.body.size_bytes();
                        if bytes as u64 > bytes_max && !records.is_empty() {
                            break;
                        }
                        records.push(record.clone());
                    }
                }
                Ok(ReplReply::Records { history_epoch: state.history_epoch, records })
            }
        }
    }

    fn retain(&self, record: &Record) {
        let mut state = self.state.lock();
        state.retained_bytes += record.body.size_bytes();
        state.retained.push_back(record.clone());
        while state.retained_bytes > RETAINED_BYTES {
            let Some(first) = state.retained.pop_front() else { break };
            state.retained_bytes -= first.body.size_bytes();
        }
    }

    fn set_history_epoch(&self, state: &mut State, epoch: u64) -> Result<(), StoreError> {
        if state.history_epoch != epoch {
            write_history_epoch(&self.dir, epoch)?;
            state.history_epoch = epoch;
        }
        Ok(())
    }
}

impl State {
    /// Whether a call at an epoch older than this copy's comes from the master the CLDB kept at
    /// this copy's epoch. Each node learns a new epoch from its own heartbeat, so when the CLDB
    /// changes only the replicas (one dropped, one added or in sync), a replica may hear of it
    /// before its master, whose calls still carry the previous epoch: fencing them would leave
    /// the volume with a master that refuses every change, and no other. Calls of the master
    /// that said hello are taken from the epoch of its hello on; a promoted replica's fetch never.
    fn sent_by_the_kept_master(&self, request: &ReplRequest) -> bool {
        let sender = match request {
            ReplRequest::Hello { master, .. } => master,
            ReplRequest::Fetch { .. } => return false,
            _ if request.epoch() < self.master_epoch => return false,
            _ => &self.master,
        };
        !sender.is_empty() && self.assigned_master.as_ref() == Some(sender)
    }
}

/// The history epoch of the copy in `dir` (0 when unknown).
pub(crate) fn read_history_epoch(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(HISTORY_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Durably records the history epoch of the copy in `dir`.
pub(crate) fn write_history_epoch(dir: &Path, epoch: u64) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{HISTORY_FILE}.new"));
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{epoch}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(HISTORY_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(dir: &Path) -> ReplicaVolume {
        ReplicaVolume::open(StoreConfig::new(dir), ClusterId(7), VolumeId(1), 1).expect("open a replica")
    }

    fn hello(epoch: u64, master: &str) -> ReplRequest {
        ReplRequest::Hello { volume: 1, epoch, master: master.to_owned(), master_address: String::new() }
    }

    fn records(epoch: u64) -> ReplRequest {
        ReplRequest::Records { volume: 1, epoch, records: Vec::new(), forward: Vec::new() }
    }

    /// A replica that follows master `m` at epoch 1.
    fn following_m(dir: &Path) -> ReplicaVolume {
        let replica = replica(dir);
        replica.assigned(1, "m");
        replica.handle(hello(1, "m")).expect("hello");
        replica.handle(ReplRequest::Follow { volume: 1, epoch: 1 }).expect("follow");
        assert!(replica.report().following);
        replica
    }

    fn fenced_at(answer: Result<ReplReply, ReplError>) -> Option<u64> {
        match answer {
            Err(ReplError::Fenced { epoch }) => Some(epoch),
            _ => None,
        }
    }

    #[test]
    fn the_master_kept_at_a_newer_epoch_is_not_fenced_before_it_hears_of_it() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let replica = following_m(dir.path());
        // The CLDB drops another replica: epoch 2, same master; this node hears of it first.
        replica.assigned(2, "m");
        assert!(matches!(replica.handle(records(1)), Ok(ReplReply::Position { .. })));
        // The master's link starts over before it hears of epoch 2.
        replica.handle(hello(1, "m")).expect("hello of the kept master");
        replica.handle(ReplRequest::Follow { volume: 1, epoch: 1 }).expect("follow");
        assert!(matches!(replica.handle(records(1)), Ok(ReplReply::Position { .. })));
        assert!(matches!(replica.handle(records(2)), Ok(ReplReply::Position { .. })));
        let report = replica.report();
        assert!(report.following);
        assert_eq!(report.epoch, 2);
    }

    #[test]
    fn a_deposed_master_is_fenced() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let replica = following_m(dir.path());
        // The CLDB makes n the master at epoch 2.
        replica.assigned(2, "n");
        assert_eq!(fenced_at(replica.handle(records(1))), Some(2));
        assert_eq!(fenced_at(replica.handle(hello(1, "m"))), Some(2));
        assert!(!replica.report().following);
    }

    #[test]
    fn a_promoted_replicas_fetch_fences_the_old_master() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let replica = following_m(dir.path());
        replica.assigned(2, "m");
        let fetch = ReplRequest::Fetch { volume: 1, epoch: 3, after: 0, bytes_max: 1 << 20 };
        replica.handle(fetch).expect("fetch");
        assert_eq!(fenced_at(replica.handle(records(2))), Some(3));
        assert_eq!(fenced_at(replica.handle(records(1))), Some(3));
    }

    #[test]
    fn calls_from_before_the_masters_hello_are_fenced() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let replica = following_m(dir.path());
        replica.assigned(2, "m");
        replica.handle(hello(2, "m")).expect("hello");
        replica.handle(ReplRequest::Follow { volume: 1, epoch: 2 }).expect("follow");
        replica.assigned(3, "m");
        // A late call of an older mastership of the same node.
        assert_eq!(fenced_at(replica.handle(records(1))), Some(3));
        assert!(matches!(replica.handle(records(2)), Ok(ReplReply::Position { .. })));
    }
}
