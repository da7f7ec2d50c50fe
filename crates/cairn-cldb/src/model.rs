//! Limits, names, container ids and the checks on what callers send.

use crate::proto::{CldbError, ContainerKind, Heartbeat, Placement, Volume, VolumeChange, VolumeSpec};

/// Topology of a node that announces none.
pub const DEFAULT_TOPOLOGY: &str = "/default-rack";
/// Data containers per volume unless the spec says otherwise.
pub const DEFAULT_DATA_CONTAINERS: u32 = 4;
/// Copies per volume unless the spec says otherwise.
pub const DEFAULT_REPLICATION: u32 = 3;
/// Most copies of a volume.
pub const REPLICATION_MAX: u32 = 5;
/// Cluster-wide container id = `volume * CONTAINERS_PER_VOLUME + local id`.
pub const CONTAINERS_PER_VOLUME: u64 = 1_000;
/// Local id of the name container; data containers are 2, 3, ...
pub const NAME_CONTAINER_LOCAL_ID: u64 = 1;
/// Most data containers per volume (local ids 2..=999).
pub const DATA_CONTAINERS_MAX: u32 = (CONTAINERS_PER_VOLUME - 1 - NAME_CONTAINER_LOCAL_ID) as u32;
/// Longest volume name, in bytes.
pub const VOLUME_NAME_BYTES_MAX: usize = 64;
/// Longest node name, topology, address or service name, in bytes.
pub const NODE_FIELD_BYTES_MAX: usize = 255;
/// Longest mount path, in bytes.
pub const MOUNT_PATH_BYTES_MAX: usize = 1024;
/// Most volume reports or services in one heartbeat.
pub const HEARTBEAT_ITEMS_MAX: usize = 100_000;

/// The cluster-wide id of a volume's name container.
pub fn name_container_id(volume: u32) -> u64 {
    u64::from(volume) * CONTAINERS_PER_VOLUME + NAME_CONTAINER_LOCAL_ID
}

/// The cluster-wide ids of a volume's data containers.
pub fn data_container_ids(volume: u32, count: u32) -> Vec<u64> {
    let base = u64::from(volume) * CONTAINERS_PER_VOLUME + NAME_CONTAINER_LOCAL_ID;
    (1..=u64::from(count.min(DATA_CONTAINERS_MAX))).map(|i| base + i).collect()
}

/// Which volume a container id belongs to, and which kind it is; `None` for an id that no
/// volume of `data_containers` data containers has.
pub fn split_container_id(
    id: u64,
    data_containers: impl Fn(u32) -> Option<u32>,
) -> Option<(u32, ContainerKind)> {
    let volume = u32::try_from(id / CONTAINERS_PER_VOLUME).ok()?;
    let local = id % CONTAINERS_PER_VOLUME;
    let count = data_containers(volume)?;
    match local {
        NAME_CONTAINER_LOCAL_ID => Some((volume, ContainerKind::Name)),
        l if l > NAME_CONTAINER_LOCAL_ID && l <= NAME_CONTAINER_LOCAL_ID + u64::from(count) => {
            Some((volume, ContainerKind::Data))
        }
        _ => None,
    }
}

/// Volume names: 1 to 64 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_volume_name(name: &str) -> Result<(), CldbError> {
    let ok = !name.is_empty()
        && name.len() <= VOLUME_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CldbError::InvalidSpec(format!(
            "volume name {name:?}: 1 to {VOLUME_NAME_BYTES_MAX} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Node names become znode names: no `/`, no NUL, not `.` or `..`, at most 255 bytes.
pub fn check_node_name(name: &str) -> Result<(), CldbError> {
    let ok = !name.is_empty()
        && name.len() <= NODE_FIELD_BYTES_MAX
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_control);
    if ok { Ok(()) } else { Err(CldbError::InvalidSpec(format!("node name {name:?}"))) }
}

fn check_field(what: &str, value: &str) -> Result<(), CldbError> {
    if value.len() > NODE_FIELD_BYTES_MAX || value.contains('\0') {
        return Err(CldbError::InvalidSpec(format!("{what} {value:?}")));
    }
    Ok(())
}

/// Checks a heartbeat's fields and fills in the defaults (topology).
pub fn check_heartbeat(hb: &mut Heartbeat) -> Result<(), CldbError> {
    check_node_name(&hb.node)?;
    if hb.fileserver_address.is_empty() {
        return Err(CldbError::InvalidSpec("heartbeat without a fileserver address".into()));
    }
    check_field("fileserver address", &hb.fileserver_address)?;
    check_field("nfs address", &hb.nfs_address)?;
    if hb.topology.is_empty() {
        hb.topology = DEFAULT_TOPOLOGY.to_owned();
    }
    check_field("topology", &hb.topology)?;
    if !hb.topology.starts_with('/') {
        return Err(CldbError::InvalidSpec(format!("topology {:?} must start with /", hb.topology)));
    }
    if hb.services.len() > HEARTBEAT_ITEMS_MAX || hb.volumes.len() > HEARTBEAT_ITEMS_MAX {
        return Err(CldbError::InvalidSpec("heartbeat too large".into()));
    }
    for service in &hb.services {
        check_field("service", service)?;
    }
    Ok(())
}

/// Mount paths: absolute, no empty, `.` or `..` component, no trailing slash (except `/`).
pub fn check_mount_path(path: &str) -> Result<(), CldbError> {
    let bad = |why: &str| Err(CldbError::InvalidSpec(format!("mount path {path:?}: {why}")));
    if path.len() > MOUNT_PATH_BYTES_MAX {
        return bad("too long");
    }
    if !path.starts_with('/') {
        return bad("must start with /");
    }
    if path == "/" {
        return Ok(());
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, . or .. component");
    }
    Ok(())
}

/// Replication 1..=[`REPLICATION_MAX`], minimum replication 1..=replication.
fn check_replication(replication: u32, min_replication: u32) -> Result<(), CldbError> {
    if !(1..=REPLICATION_MAX).contains(&replication) {
        return Err(CldbError::InvalidSpec(format!("replication {replication}: 1 to {REPLICATION_MAX}")));
    }
    if !(1..=replication).contains(&min_replication) {
        return Err(CldbError::InvalidSpec(format!(
            "minimum replication {min_replication}: 1 to the replication ({replication})"
        )));
    }
    Ok(())
}

/// The advisory quota may not be above the hard quota.
fn check_quotas(hard: Option<u64>, advisory: Option<u64>) -> Result<(), CldbError> {
    if let (Some(hard), Some(advisory)) = (hard, advisory)
        && advisory > hard
    {
        return Err(CldbError::InvalidSpec(format!(
            "advisory quota {advisory} is above the hard quota {hard}"
        )));
    }
    Ok(())
}

/// The record of `v` with the quotas and replication of `change` (the placement untouched:
/// [`crate::planner::modify_volume`] adapts it), checked like a spec: the resulting values must
/// be valid together, so lowering the replication below the current minimum replication needs a
/// lower `min_replication` in the same change.
pub fn check_change(v: &Volume, change: &VolumeChange) -> Result<Volume, CldbError> {
    check_volume_name(&change.name)?;
    let mut changed = v.clone();
    changed.quota_bytes = change.quota.apply(v.quota_bytes);
    changed.advisory_quota_bytes = change.advisory_quota.apply(v.advisory_quota_bytes);
    changed.replication = change.replication.unwrap_or(v.replication);
    changed.min_replication = change.min_replication.unwrap_or(v.min_replication);
    check_replication(changed.replication, changed.min_replication)?;
    check_quotas(changed.quota_bytes, changed.advisory_quota_bytes)?;
    Ok(changed)
}

/// A spec with its defaults filled in and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedSpec {
    pub name: String,
    pub mount_path: String,
    pub replication: u32,
    pub min_replication: u32,
    pub spec: VolumeSpec,
    pub data_containers: u32,
}

pub fn check_spec(spec: &VolumeSpec) -> Result<CheckedSpec, CldbError> {
    check_volume_name(&spec.name)?;
    let mount_path = spec.mount_path.clone().unwrap_or_else(|| format!("/{}", spec.name));
    check_mount_path(&mount_path)?;
    let replication = spec.replication.unwrap_or(DEFAULT_REPLICATION);
    let min_replication = spec.min_replication.unwrap_or(1);
    check_replication(replication, min_replication)?;
    let data_containers = spec.data_containers.unwrap_or(DEFAULT_DATA_CONTAINERS);
    if !(1..=DATA_CONTAINERS_MAX).contains(&data_containers) {
        return Err(CldbError::InvalidSpec(format!(
            "data containers {data_containers}: 1 to {DATA_CONTAINERS_MAX}"
        )));
    }
    check_quotas(spec.quota_bytes, spec.advisory_quota_bytes)?;
    Ok(CheckedSpec {
        name: spec.name.clone(),
        mount_path,
        replication,
        min_replication,
        spec: spec.clone(),
        data_containers,
    })
}

impl CheckedSpec {
    /// The record of a new volume placed on `replicas` (master first).
    pub fn into_volume(self, id: u32, replicas: Vec<String>, now_ms: u64) -> Volume {
        let lost_since_ms = (replicas.len() < self.replication as usize).then_some(now_ms);
        Volume {
            id,
            name: self.name,
            mount_path: self.mount_path,
            replication: self.replication,
            min_replication: self.min_replication,
            replication_type: self.spec.replication_type,
            quota_bytes: self.spec.quota_bytes,
            advisory_quota_bytes: self.spec.advisory_quota_bytes,
            data_containers: self.data_containers,
            created_ms: now_ms,
            removed: false,
            placement: Placement {
                master: replicas.first().cloned().unwrap_or_default(),
                replicas,
                epoch: 1,
                resyncing: Vec::new(),
                lost_since_ms,
            },
        }
    }
}

/// Checks the invariants of a record read from coord: master first among its replicas, no node
/// twice, a name and a replication that make sense.
pub fn check_volume_record(v: &Volume) -> Result<(), String> {
    check_volume_name(&v.name).map_err(|e| e.to_string())?;
    let p = &v.placement;
    if p.replicas.is_empty() {
        return Err("no replica".into());
    }
    if p.replicas.first() != Some(&p.master) {
        return Err(format!("master {} is not the first replica", p.master));
    }
    let mut all: Vec<&String> = p.replicas.iter().chain(&p.resyncing).collect();
    all.sort();
    if all.windows(2).any(|w| w[0] == w[1]) {
        return Err("a node appears twice in the placement".into());
    }
    if !(1..=REPLICATION_MAX).contains(&v.replication) || v.data_containers > DATA_CONTAINERS_MAX {
        return Err("replication or data containers out of range".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert_eq!(name_container_id(7), 7001);
        assert_eq!(data_container_ids(7, 3), vec![7002, 7003, 7004]);
        let count = |v: u32| (v == 7).then_some(3);
        assert_eq!(split_container_id(7001, count), Some((7, ContainerKind::Name)));
        assert_eq!(split_container_id(7004, count), Some((7, ContainerKind::Data)));
        assert_eq!(split_container_id(7005, count), None);
        assert_eq!(split_container_id(7000, count), None);
        assert_eq!(split_container_id(8001, count), None);
        assert_eq!(split_container_id(u64::MAX, count), None);
    }

    #[test]
    fn names_and_paths() {
        assert!(check_volume_name("home.alice_1-x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_volume_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_node_name("node-1.example:5660").is_ok());
        assert!(check_node_name("a/b").is_err());
        assert!(check_mount_path("/a/b").is_ok());
        assert!(check_mount_path("/a/").is_err());
        assert!(check_mount_path("a").is_err());
    }

    #[test]
    fn spec_defaults_and_limits() {
        let c = check_spec(&VolumeSpec { name: "v".into(), ..Default::default() }).expect("valid");
        assert_eq!((c.replication, c.min_replication, c.data_containers), (3, 1, 4));
        assert_eq!(c.mount_path, "/v");
        let bad = VolumeSpec { name: "v".into(), replication: Some(6), ..Default::default() };
        assert!(check_spec(&bad).is_err());
        let bad = VolumeSpec {
            name: "v".into(),
            replication: Some(2),
            min_replication: Some(3),
            ..Default::default()
        };
        assert!(check_spec(&bad).is_err());
        let bad = VolumeSpec {
            name: "v".into(),
            quota_bytes: Some(10),
            advisory_quota_bytes: Some(11),
            ..Default::default()
        };
        assert!(check_spec(&bad).is_err());
    }
}
