//! Answers to the read requests, built from tables (the master's memory, or what a non-master
//! just read from coord).

use crate::model::{data_container_ids, name_container_id, split_container_id};
use crate::planner::Tables;
use crate::proto::{
    CldbError, ContainerInfo, ContainerKind, NodeAddress, NodeInfo, ReportedRole, Volume, VolumeInfo,
    VolumeLocation,
};

/// A volume and the size its master last reported (if this CLDB received the report).
pub fn volume_info(t: &Tables, v: &Volume) -> VolumeInfo {
    let size_bytes = t
        .reports
        .get(&v.placement.master)
        .and_then(|r| r.get(&v.id))
        .filter(|r| r.role == ReportedRole::Master)
        .map(|r| r.size_bytes);
    VolumeInfo { volume: v.clone(), size_bytes }
}

/// Every live volume.
pub fn volume_infos(t: &Tables) -> Vec<VolumeInfo> {
    t.volumes.values().filter(|v| !v.removed).map(|v| volume_info(t, v)).collect()
}

pub fn live_volume(t: &Tables, id: u32) -> Result<&Volume, CldbError> {
    t.volumes
        .get(&id)
        .filter(|v| !v.removed)
        .ok_or_else(|| CldbError::NoSuchVolume { what: format!("id {id}") })
}

/// Where a volume lives.
pub fn location(t: &Tables, v: &Volume) -> VolumeLocation {
    let address = |n: &String| {
        t.nodes.get(n).map_or_else(
            || NodeAddress { name: n.clone(), fileserver_address: String::new(), nfs_address: String::new() },
            |r| NodeAddress {
                name: n.clone(),
                fileserver_address: r.fileserver_address.clone(),
                nfs_address: r.nfs_address.clone(),
            },
        )
    };
    let p = &v.placement;
    VolumeLocation {
        volume: v.id,
        name: v.name.clone(),
        epoch: p.epoch,
        master: p.master.clone(),
        master_address: t.nodes.get(&p.master).map(|r| r.fileserver_address.clone()).unwrap_or_default(),
        replicas: p.replicas.iter().map(address).collect(),
        replication_type: v.replication_type,
        name_container: name_container_id(v.id),
        data_containers: data_container_ids(v.id, v.data_containers),
    }
}

/// Every node, with the last heartbeat `last_heartbeat(name)` says (or the record's).
pub fn node_infos(t: &Tables) -> Vec<NodeInfo> {
    let load = crate::planner::load(t);
    t.nodes
        .values()
        .map(|r| NodeInfo {
            record: r.clone(),
            last_heartbeat_ms: t.last_heartbeat_ms.get(&r.name).copied().unwrap_or(r.last_heartbeat_ms),
            volumes: u32::try_from(load.get(&r.name).copied().unwrap_or(0)).unwrap_or(u32::MAX),
            disk: t.disks.get(&r.name).copied(),
        })
        .collect()
}

fn container(v: &Volume, id: u64, kind: ContainerKind) -> ContainerInfo {
    let p = &v.placement;
    ContainerInfo {
        id,
        volume: v.id,
        volume_name: v.name.clone(),
        kind,
        epoch: p.epoch,
        master: p.master.clone(),
        replicas: p.replicas.clone(),
        resyncing: p.resyncing.clone(),
    }
}

/// Every container of every live volume.
pub fn containers(t: &Tables) -> Vec<ContainerInfo> {
    let mut out = Vec::new();
    for v in t.volumes.values().filter(|v| !v.removed) {
        out.push(container(v, name_container_id(v.id), ContainerKind::Name));
        for id in data_container_ids(v.id, v.data_containers) {
            out.push(container(v, id, ContainerKind::Data));
        }
    }
    out
}

/// One container.
pub fn container_info(t: &Tables, id: u64) -> Result<ContainerInfo, CldbError> {
    let count = |volume: u32| t.volumes.get(&volume).filter(|v| !v.removed).map(|v| v.data_containers);
    let (volume, kind) = split_container_id(id, count).ok_or(CldbError::NoSuchContainer { id })?;
    let v = live_volume(t, volume)?;
    Ok(container(v, id, kind))
}
