//! Bad blocks: a chunk block whose bytes no longer match their checksum (a disk that flipped
//! bits, a torn sector) is rewritten from another copy of the volume.
//!
//! - On the master, a call that meets one ([`WireError::BadBlock`]) fetches the block from a
//!   replica that follows and has acknowledged everything the master had applied
//!   ([`NetReplicator::repair_sources`]), repairs it ([`cairn_store::Store::repair_blocks`],
//!   which replicates the rewrite) and runs the call again.
//! - A background **scrub** walks every copy this node holds, a few MiB at a time
//!   ([`SCRUB_STEP_BLOCKS`] blocks, then a pause), and repairs what it finds: on the master from
//!   a replica as above, on a replica from its master (which reads its own verified block).
//!   A pass over a copy starts again [`FileServerConfig::scrub_interval`] after the last one
//!   ended.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::{BadBlock, ScrubCursor};
use tokio::sync::watch;

use crate::proto::{ReplError, ReplReply, ReplRequest, WireError};
use crate::replica::ReplicaVolume;
use crate::server::{Held, Inner, MasterVolume};

/// Blocks (8 KiB) one scrub step verifies.
pub(crate) const SCRUB_STEP_BLOCKS: u64 = 512;
/// Pause between two scrub steps: at most about 4 MiB every 200 ms per node.
const SCRUB_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for a replica to apply what its master had when it read a block for it.
const REPLICA_CATCH_UP_MAX: Duration = Duration::from_secs(10);

impl Inner {
    /// Repairs a bad block of a volume this node masters from a replica; true if it was.
    pub(crate) async fn repair_on_master(
        &self,
        volume: u32,
        master: &Arc<MasterVolume>,
        bad: BadBlock,
    ) -> bool {
        let position = master.store.replication_position();
        for (node, address) in master.replicator.repair_sources(position) {
            let request = read_request(volume, master.replicator.epoch(), bad);
            let blocks = match self.peers.call(&address, request).await {
                Ok(ReplReply::Blocks { blocks, .. }) => blocks,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(volume, %bad, from = %node, ?error, "cannot read the block from a replica");
                    continue;
                }
            };
            let store = master.store.clone();
            let repaired = tokio::task::spawn_blocking(move || {
                store.repair_blocks(bad.container, bad.inode, bad.chunk, bad.block, blocks)
            })
            .await;
            match repaired {
                Ok(Ok(count)) if count > 0 => {
                    tracing::warn!(volume, %bad, from = %node, "bad block repaired from a replica");
                    return true;
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(volume, %bad, from = %node, %error, "block repair failed"),
                Err(error) => tracing::warn!(volume, %bad, %error, "block repair task failed"),
            }
        }
        tracing::error!(volume, %bad, "bad block: no replica could repair it");
        false
    }

    /// Repairs a bad block of this node's replica from its master; true if it was.
    async fn repair_on_replica(&self, volume: u32, replica: &Arc<ReplicaVolume>, bad: BadBlock) -> bool {
        let Some((address, epoch)) = replica.master() else {
            return false;
        };
        let (blocks, position) = match self.peers.call(&address, read_request(volume, epoch, bad)).await {
            Ok(ReplReply::Blocks { blocks, position }) => (blocks, position),
            Ok(_) => return false,
            Err(error) => {
                tracing::warn!(volume, %bad, ?error, "cannot read the block from the master");
                return false;
            }
        };
        // Never write a block newer than this copy: wait until it applied what the master had.
        let deadline = Instant::now() + REPLICA_CATCH_UP_MAX;
        while replica.position() < position {
            if Instant::now() >= deadline {
                tracing::info!(volume, %bad, "the replica lags the master: repair left for the next pass");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let copy = replica.clone();
        match tokio::task::spawn_blocking(move || copy.repair(bad, blocks)).await {
            Ok(Ok(count)) if count > 0 => {
                tracing::warn!(volume, %bad, "bad block of a replica repaired from the master");
                true
            }
            Ok(Ok(_)) => false,
            Ok(Err(error)) => {
                tracing::warn!(volume, %bad, %error, "replica block repair failed");
                false
            }
            Err(error) => {
                tracing::warn!(volume, %bad, %error, "replica block repair task failed");
                false
            }
        }
    }

    /// The master's verified blocks for a replica's repair.
    pub(crate) async fn read_blocks_on_master(
        &self,
        master: &Arc<MasterVolume>,
        request: ReplRequest,
    ) -> Result<ReplReply, ReplError> {
        let ReplRequest::ReadBlocks { container, inode, chunk, first_block, count, .. } = request else {
            return Err(ReplError::Failed("not a block read".to_string()));
        };
        let store = master.store.clone();
        let read = move || {
            let blocks = store.read_blocks(container, inode, chunk, first_block, count)?;
            Ok::<_, cairn_store::StoreError>((blocks, store.replication_position()))
        };
        match tokio::task::spawn_blocking(read).await {
            Ok(Ok((blocks, position))) => Ok(ReplReply::Blocks { blocks, position }),
            Ok(Err(error)) => Err(ReplError::Failed(WireError::from(error).to_string())),
            Err(error) => Err(ReplError::Failed(format!("block read task failed: {error}"))),
        }
    }

    /// Scrubs every copy this node holds, until `stop` turns true.
    pub(crate) async fn run_scrub(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Per volume: where the pass stands, and when the last pass ended.
        let mut passes: HashMap<u32, (ScrubCursor, Option<Instant>)> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SCRUB_PAUSE) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let held: Vec<(u32, Held)> =
                self.volumes.read().iter().map(|(&volume, held)| (volume, held.clone())).collect();
            passes.retain(|volume, _| held.iter().any(|(id, _)| id == volume));
            for (volume, held) in held {
                let (cursor, ended) = passes.get(&volume).copied().unwrap_or_default();
                if ended.is_some_and(|ended| ended.elapsed() < self.config.scrub_interval) {
                    continue;
                }
                let step = {
                    let held = held.clone();
                    tokio::task::spawn_blocking(move || match &held {
                        Held::Master(master) => master.store.scrub(cursor, SCRUB_STEP_BLOCKS),
                        Held::Replica(replica) => replica.scrub(cursor, SCRUB_STEP_BLOCKS),
                    })
                    .await
                };
                let (bad, next) = match step {
                    Ok(Ok(step)) => step,
                    Ok(Err(error)) => {
                        tracing::warn!(volume, %error, "scrub step failed");
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(volume, %error, "scrub task failed");
                        continue;
                    }
                };
                for bad in bad {
                    tracing::warn!(volume, %bad, "scrub found a bad block");
                    match &held {
                        Held::Master(master) => self.repair_on_master(volume, master, bad).await,
                        Held::Replica(replica) => self.repair_on_replica(volume, replica, bad).await,
                    };
                }
                let entry = match next {
                    Some(next) => (next, ended),
                    None => (ScrubCursor::default(), Some(Instant::now())),
                };
                passes.insert(volume, entry);
            }
        }
    }
}

fn read_request(volume: u32, epoch: u64, bad: BadBlock) -> ReplRequest {
    ReplRequest::ReadBlocks {
        volume,
        epoch,
        container: bad.container,
        inode: bad.inode,
        chunk: bad.chunk,
        first_block: bad.block,
        count: 1,
    }
}
