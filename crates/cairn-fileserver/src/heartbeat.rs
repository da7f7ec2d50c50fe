//! The node's heartbeat to the CLDB, and the assignments it brings back.
//!
//! Every [`HEARTBEAT_INTERVAL`] the server reports what it holds (role, epoch, replication
//! position, size of each volume) and applies the answer: open a volume as master at a new
//! epoch, step down, or drop a copy. Replies from a deposed CLDB master (a lower CLDB epoch than
//! one already seen) are ignored, and so is an assignment older than the epoch held.

use std::sync::Arc;
use std::time::Duration;

use cairn_cldb::CldbClient;
use cairn_cldb::proto::{
    AssignedRole, Assignment, DiskSpace, Heartbeat, ReplicationType, ReportedRole, VolumeReport,
};
use cairn_types::ClusterId;
use cairn_types::VolumeId;
use tokio::sync::watch;

use crate::FileServer;
use crate::proto::{ReplReply, ReplRequest, ServerStatus};
use crate::replica::ReplicaVolume;
use crate::server::Held;

/// Most bytes of records in one answer to a promoted replica's fetch.
const FETCH_BYTES_MAX: u64 = 16 << 20;

/// How often the node heartbeats. DESIGN.md says every 1-3 s; half a second, because an
/// assignment (a replica promoted after its master died) reaches the node only in the reply to
/// its next heartbeat, and that wait is part of the clients' stall in a failover.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

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
                disk: cairn_store::disk_space(&self.inner.config.data_dir)
                    .ok()
                    .map(|(total_bytes, free_bytes)| DiskSpace { total_bytes, free_bytes }),
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
        let status = self.status();
        self.publish_metrics(&status);
        let mut reports: Vec<VolumeReport> = status
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
                in_sync: volume.in_sync,
            })
            .collect();
        // Copies on disk that are not open (after a restart): the CLDB may take them back as
        // resync targets.
        for volume in self.inner.copies_on_disk() {
            if !reports.iter().any(|report| report.volume == volume) {
                reports.push(VolumeReport {
                    volume,
                    role: ReportedRole::Stale,
                    epoch: 0,
                    position: 0,
                    size_bytes: 0,
                    in_sync: Vec::new(),
                });
            }
        }
        reports
    }

    /// The copies held and, for the volumes mastered here, each replica's lag, into the
    /// process's metrics (refreshed with every heartbeat).
    fn publish_metrics(&self, status: &ServerStatus) {
        let masters = status.volumes.iter().filter(|volume| volume.role == "master").count() as u64;
        let replicas = status.volumes.iter().filter(|volume| volume.role != "master").count() as u64;
        cairn_metrics::local_copies(masters, replicas);
        let mut lags = Vec::new();
        for (volume, held) in self.inner.volumes.read().iter() {
            if let Held::Master(master) = held {
                let volume = volume.to_string();
                lags.extend(
                    master.replicator.lags().into_iter().map(|(node, lag)| (volume.clone(), node, lag)),
                );
            }
        }
        cairn_metrics::replication_lags(&lags);
    }

    /// Applies one assignment of the CLDB. Changes of role run on a blocking thread (they open
    /// and close stores); heartbeats wait for them, so they never overlap.
    async fn apply(self: &Arc<Self>, cluster: ClusterId, assignment: Assignment) {
        let volume = assignment.volume;
        let epoch = assignment.epoch;
        let held = self.inner.volumes.read().get(&volume).cloned();
        let targets: Vec<(String, String)> =
            assignment.replicas.iter().chain(&assignment.resyncing).cloned().collect();
        let chain = assignment.replication_type == ReplicationType::Chain;
        match (assignment.your_role, held) {
            (AssignedRole::Master, Some(Held::Master(master))) => {
                master.store.set_quota(assignment.quota_bytes);
                master.replicator.set_placement(epoch, targets, chain);
            }
            (AssignedRole::Master, held) => {
                let promoted = match held {
                    Some(Held::Replica(replica)) => {
                        self.catch_up(&replica, &assignment).await;
                        true
                    }
                    _ => false,
                };
                let inner = self.inner.clone();
                let data_containers = Some(assignment.data_containers);
                let opened = tokio::task::spawn_blocking(move || {
                    inner.become_master(cluster, VolumeId(volume), epoch, data_containers)
                })
                .await;
                match opened {
                    Ok(Ok((store, replicator))) => {
                        store.set_quota(assignment.quota_bytes);
                        replicator.set_placement(epoch, targets, chain);
                        tracing::info!(volume, epoch, promoted, "serving the volume as master");
                    }
                    Ok(Err(error)) => {
                        tracing::error!(volume, epoch, %error, "cannot serve the volume as master")
                    }
                    Err(error) => tracing::error!(volume, %error, "volume open task failed"),
                }
            }
            (AssignedRole::Replica | AssignedRole::Resync, Some(Held::Replica(replica))) => {
                replica.assigned(epoch, &assignment.master);
            }
            (AssignedRole::Replica | AssignedRole::Resync, held) => {
                if let Some(Held::Master(master)) = &held
                    && master.replicator.epoch() >= epoch
                {
                    return;
                }
                // Our reference must go before the volume is released (it waits for sole use).
                drop(held);
                let inner = self.inner.clone();
                let data_containers = Some(assignment.data_containers);
                let opened = tokio::task::spawn_blocking(move || {
                    inner.become_replica(cluster, VolumeId(volume), epoch, data_containers)
                })
                .await;
                match opened {
                    Ok(Ok(())) => {
                        tracing::info!(volume, epoch, master = %assignment.master, "holding a replica")
                    }
                    Ok(Err(error)) => tracing::error!(volume, epoch, %error, "cannot open the replica"),
                    Err(error) => tracing::error!(volume, %error, "replica open task failed"),
                }
            }
            (AssignedRole::Remove, held) => {
                drop(held);
                let inner = self.inner.clone();
                let removed = tokio::task::spawn_blocking(move || inner.remove_copy(volume)).await;
                match removed {
                    Ok(Ok(())) => tracing::info!(volume, "copy removed"),
                    Ok(Err(error)) => tracing::warn!(volume, %error, "cannot remove the copy"),
                    Err(error) => tracing::warn!(volume, %error, "copy removal task failed"),
                }
            }
        }
    }

    /// Before a replica becomes master: fetches, from the other replicas of the same history,
    /// the records they applied beyond this copy (they may have been ahead of it when the master
    /// failed; an acknowledged write is on every replica that followed). The calls carry the new
    /// epoch, so those replicas stop following the old master.
    async fn catch_up(&self, replica: &Arc<ReplicaVolume>, assignment: &Assignment) {
        let volume = assignment.volume;
        for (node, address) in assignment.replicas.iter().chain(&assignment.resyncing) {
            if *node == self.inner.config.node {
                continue;
            }
            loop {
                let copy = replica.clone();
                let Ok((history_epoch, position)) =
                    tokio::task::spawn_blocking(move || copy.stands_at()).await
                else {
                    return;
                };
                let request = ReplRequest::Fetch {
                    volume,
                    epoch: assignment.epoch,
                    after: position,
                    bytes_max: FETCH_BYTES_MAX,
                };
                let records = match self.inner.peers.call(address, request).await {
                    Ok(ReplReply::Records { history_epoch: theirs, records })
                        if theirs == history_epoch && history_epoch != 0 && !records.is_empty() =>
                    {
                        records
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::info!(volume, from = %node, ?error, "no catch-up from this replica");
                        break;
                    }
                };
                let count = records.len();
                let copy = replica.clone();
                match tokio::task::spawn_blocking(move || copy.apply_fetched(&records)).await {
                    Ok(Ok(())) => tracing::info!(volume, from = %node, count, "caught up before promotion"),
                    Ok(Err(error)) => {
                        tracing::warn!(volume, from = %node, %error, "cannot apply fetched records");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(volume, %error, "catch-up task failed");
                        break;
                    }
                }
            }
        }
    }
}
