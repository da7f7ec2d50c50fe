//! A replica of a volume on this node: applies what the volume's master sends
//! ([`ReplRequest`]), refuses masters of older epochs, and keeps its latest records in memory so
//! that, if it is promoted, it can bring the other replicas up to date without a full copy.
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
    /// The master this copy follows (node name), once it checked the copy or copied it anew.
    following: Option<String>,
    /// The master that said hello last (it may not have decided yet), and its address.
    master: String,
    master_address: String,
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
                following: None,
                master: String::new(),
                master_address: String::new(),
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
        if epoch <= state.epoch {
            return;
        }
        state.epoch = epoch;
        if state.following.as_deref() != Some(master) {
            state.following = None;
        }
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
            if epoch < state.epoch {
                return Err(ReplError::Fenced { epoch: state.epoch });
            }
            if epoch > state.epoch {
                state.epoch = epoch;
            }
        }
        let need_resync = |error: StoreError| ReplError::NeedResync(error.to_string());
        match request {
            ReplRequest::Hello { master, master_address, .. } => {
                let mut state = self.state.lock();
                state.following = None;
                state.master = master;
                state.master_address = master_address;
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
