//! The node's heartbeat to the CLDB, and the assignments it brings back.
//!
//! Every [`HEARTBEAT_INTERVAL`] the server reports what it holds (role, epoch, replication
//! position, size of each volume) and applies the answer: open a volume as master at a new
//! epoch, step down, or drop a copy. Replies from a deposed CLDB master (a lower CLDB epoch than
//! one already seen) are ignored, and so is an assignment older than the epoch held.

use std::sync::Arc;
use std::time::Duration;

use cairn_cldb::CldbClient;
use cairn_cldb::proto::{AssignedRole, Assignment, Heartbeat, ReportedRole, VolumeReport};
use cairn_types::{ClusterId, VolumeId};
use tokio::sync::watch;

use crate::FileServer;

/// How often the node heartbeats (DESIGN.md: every 1-3 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// What the node tells the CLDB about itself besides its volumes.
#[derive(Clone, Debug, Default)]
pub struct NodeIdentity {
    pub nfs_address: String,
    pub topology: String,
    pub services: Vec<String>,
}

impl FileServer {
    /// Heartbeats to the CLDB until `stop` turns true, applying the assignments.
    pub async fn run_heartbeats(
        self: Arc<Self>,
        cldb: CldbClient,
        node: NodeIdentity,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut highest_cldb_epoch = 0;
        loop {
            let heartbeat = Heartbeat {
                node: self.inner.config.node.clone(),
                fileserver_address: self.advertised_address(),
                nfs_address: node.nfs_address.clone(),
                topology: node.topology.clone(),
                services: node.services.clone(),
                volumes: self.reports(),
            };
            match cldb.heartbeat(heartbeat).await {
                Ok(reply) if reply.cldb_epoch >= highest_cldb_epoch => {
                    highest_cldb_epoch = reply.cldb_epoch;
                    for assignment in reply.assignments {
                        self.apply(ClusterId(reply.cluster_id), assignment).await;
                    }
                }
                Ok(reply) => {
                    tracing::warn!(
                        epoch = reply.cldb_epoch,
                        highest_cldb_epoch,
                        "ignoring a deposed CLDB master"
                    );
                }
                Err(error) => tracing::debug!(%error, "heartbeat not answered"),
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    fn reports(&self) -> Vec<VolumeReport> {
        self.status()
            .volumes
            .into_iter()
            .map(|volume| VolumeReport {
                volume: volume.volume,
                role: match volume.role.as_str() {
                    "master" => ReportedRole::Master,
                    "replica" => ReportedRole::Replica,
                    "resyncing" => ReportedRole::Resyncing,
                    _ => ReportedRole::Stale,
                },
                epoch: volume.epoch,
                position: volume.position,
                size_bytes: volume.size_bytes,
                in_sync: Vec::new(),
            })
            .collect()
    }

    async fn apply(self: &Arc<Self>, cluster: ClusterId, assignment: Assignment) {
        let held = self.held_epoch(assignment.volume);
        if held.is_some_and(|epoch| epoch >= assignment.epoch) {
            return;
        }
        match assignment.your_role {
            AssignedRole::Master => {
                let server = self.clone();
                let (volume, epoch) = (VolumeId(assignment.volume), assignment.epoch);
                let opened =
                    tokio::task::spawn_blocking(move || server.open_master(cluster, volume, epoch)).await;
                match opened {
                    Ok(Ok(())) => tracing::info!(volume = volume.0, epoch, "serving volume as master"),
                    Ok(Err(error)) => tracing::error!(%error, "cannot open volume as master"),
                    Err(error) => tracing::error!(%error, "volume open task failed"),
                }
            }
            AssignedRole::Replica | AssignedRole::Resync | AssignedRole::Remove => {
                // Not master any more (or never): stop answering for the volume.
                self.step_down(assignment.volume, assignment.epoch);
            }
        }
    }
}
