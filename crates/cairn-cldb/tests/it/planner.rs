//! The planner's decisions, without I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_cldb::model::check_spec;
use cairn_cldb::planner::{self, PlannerConfig, Tables, assignments, place_new_volume, plan, up_nodes};
use cairn_cldb::proto::{
    AlarmKind, AssignedRole, Assignment, CldbError, NodeRecord, NodeState, Placement, ReplicationType,
    ReportedRole, Volume, VolumeReport, VolumeSpec,
};

const NOW: u64 = 1_000_000;

fn config() -> PlannerConfig {
    PlannerConfig { node_timeout: Duration::from_secs(6), rereplication_timeout: Duration::from_secs(60) }
}

/// Nodes `(name, rack)`, all Up and heard from just now.
fn tables(nodes: &[(&str, &str)]) -> Tables {
    let mut t = Tables::default();
    for (name, rack) in nodes {
        t.nodes.insert(
            name.to_string(),
            NodeRecord {
                name: name.to_string(),
                fileserver_address: format!("{name}:5660"),
                nfs_address: String::new(),
                topology: rack.to_string(),
                services: vec![],
                state: NodeState::Up,
                state_since_ms: 0,
                last_heartbeat_ms: NOW,
            },
        );
        t.last_heartbeat_ms.insert(name.to_string(), NOW);
    }
    t
}

fn volume(id: u32, replicas: &[&str], epoch: u64, replication: u32) -> Volume {
    Volume {
        id,
        name: format!("v{id}"),
        mount_path: format!("/v{id}"),
        replication,
        min_replication: 1,
        replication_type: ReplicationType::Chain,
        quota_bytes: None,
        advisory_quota_bytes: None,
        data_containers: 4,
        created_ms: 0,
        removed: false,
        placement: Placement {
            replicas: replicas.iter().map(|s| s.to_string()).collect(),
            master: replicas[0].to_string(),
            epoch,
            resyncing: vec![],
            lost_since_ms: None,
        },
    }
}

fn report(t: &mut Tables, node: &str, volume: u32, role: ReportedRole, epoch: u64, position: u64) {
    t.reports
        .entry(node.to_string())
        .or_default()
        .insert(volume, VolumeReport { volume, role, epoch, position, size_bytes: 0, in_sync: vec![] });
}

/// Makes `node` silent for longer than the node timeout.
fn kill(t: &mut Tables, node: &str) {
    t.last_heartbeat_ms.insert(node.to_string(), NOW - 7_000);
}

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn kinds(plan: &planner::Plan) -> BTreeSet<(AlarmKind, String)> {
    plan.alarms.values().map(|a| (a.kind, a.subject.clone())).collect()
}

#[test]
fn create_spreads_over_racks_and_prefers_the_least_loaded() {
    let mut t =
        tables(&[("a1", "/r1"), ("a2", "/r1"), ("b1", "/r2"), ("b2", "/r2"), ("c1", "/r3"), ("c2", "/r3")]);
    // a1 and b1 already carry a volume.
    t.volumes.insert(1, volume(1, &["a1", "b1"], 1, 2));
    let spec =
        check_spec(&VolumeSpec { name: "x".into(), replication: Some(3), ..Default::default() }).unwrap();
    let up = up_nodes(&t, NOW, &config());
    let placed = place_new_volume(&spec, &t, &up).unwrap();
    assert_eq!(placed.len(), 3);
    let racks: BTreeSet<&str> = placed.iter().map(|n| t.nodes[n].topology.as_str()).collect();
    assert_eq!(racks.len(), 3, "one copy per rack: {placed:?}");
    assert!(!placed.contains(&"a1".to_string()) && !placed.contains(&"b1".to_string()), "{placed:?}");
    let v = spec.into_volume(2, placed.clone(), NOW);
    assert_eq!(v.placement.master, placed[0]);
    assert_eq!(v.placement.epoch, 1);
    assert_eq!(v.placement.lost_since_ms, None);
}

#[test]
fn create_fails_or_is_under_replicated_with_few_nodes() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r")]);
    kill(&mut t, "c");
    let up = up_nodes(&t, NOW, &config());
    let spec = check_spec(&VolumeSpec {
        name: "x".into(),
        replication: Some(3),
        min_replication: Some(3),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(place_new_volume(&spec, &t, &up), Err(CldbError::NotEnoughNodes { needed: 3, up: 2 }));
    let spec = check_spec(&VolumeSpec {
        name: "x".into(),
        replication: Some(3),
        min_replication: Some(2),
        ..Default::default()
    })
    .unwrap();
    let placed = place_new_volume(&spec, &t, &up).unwrap();
    assert_eq!(names(&placed), ["a", "b"]);
    let v = spec.into_volume(1, placed, NOW);
    assert_eq!(v.placement.lost_since_ms, Some(NOW));
}

#[test]
fn master_failover_picks_the_most_advanced_up_to_date_replica() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r")]);
    t.volumes.insert(7, volume(7, &["a", "b", "c"], 5, 3));
    report(&mut t, "b", 7, ReportedRole::Replica, 5, 100);
    report(&mut t, "c", 7, ReportedRole::Replica, 5, 120);
    kill(&mut t, "a");
    let p = plan(&config(), &t, NOW);
    assert_eq!(p.volumes.len(), 1);
    let v = &p.volumes[0];
    assert_eq!(v.placement.master, "c");
    assert_eq!(names(&v.placement.replicas), ["c", "b"]);
    assert_eq!(v.placement.epoch, 6);
    assert_eq!(v.placement.lost_since_ms, Some(NOW));
    assert_eq!(p.nodes.len(), 1);
    assert_eq!(p.nodes[0].state, NodeState::Down);
    let k = kinds(&p);
    assert!(k.contains(&(AlarmKind::NodeDown, "a".into())));
    assert!(k.contains(&(AlarmKind::UnderReplicated, "v7".into())));
    assert!(!k.iter().any(|(kind, _)| *kind == AlarmKind::MasterElectionStuck));
}

#[test]
fn failover_ties_go_to_the_earlier_replica() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r")]);
    t.volumes.insert(7, volume(7, &["a", "b", "c"], 5, 3));
    report(&mut t, "b", 7, ReportedRole::Replica, 5, 100);
    report(&mut t, "c", 7, ReportedRole::Replica, 5, 100);
    kill(&mut t, "a");
    let p = plan(&config(), &t, NOW);
    assert_eq!(p.volumes[0].placement.master, "b");
}

#[test]
fn failover_never_picks_a_stale_or_resyncing_copy() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r"), ("d", "/r")]);
    let mut v = volume(7, &["a", "b", "c"], 5, 3);
    v.placement.resyncing = vec!["d".into()];
    t.volumes.insert(7, v);
    // b is far ahead but reports an older epoch; c says it is stale; d is resyncing.
    report(&mut t, "b", 7, ReportedRole::Replica, 4, 1_000);
    report(&mut t, "c", 7, ReportedRole::Stale, 5, 500);
    report(&mut t, "d", 7, ReportedRole::Resyncing, 5, 900);
    kill(&mut t, "a");
    let p = plan(&config(), &t, NOW);
    assert!(p.volumes.is_empty(), "placement must not change: {:?}", p.volumes);
    assert!(kinds(&p).contains(&(AlarmKind::MasterElectionStuck, "v7".into())));

    // The next tick, once b reports the current epoch, it is elected; the alarm keeps its start.
    let mut t2 = t.clone();
    t2.alarms = p.alarms.clone();
    report(&mut t2, "b", 7, ReportedRole::Replica, 5, 1_000);
    let p2 = plan(&config(), &t2, NOW + 500);
    let v = &p2.volumes[0];
    assert_eq!(v.placement.master, "b");
    assert_eq!(names(&v.placement.replicas), ["b", "c"]);
    assert_eq!(names(&v.placement.resyncing), ["d"]);
    assert_eq!(v.placement.epoch, 6);
    assert!(!kinds(&p2).iter().any(|(kind, _)| *kind == AlarmKind::MasterElectionStuck));
    let down = p2.alarms.values().find(|a| a.kind == AlarmKind::NodeDown).unwrap();
    assert_eq!(down.since_ms, p.alarms.values().find(|a| a.kind == AlarmKind::NodeDown).unwrap().since_ms);
}

#[test]
fn a_lone_master_that_dies_leaves_the_volume_stuck() {
    let mut t = tables(&[("a", "/r"), ("b", "/r")]);
    t.volumes.insert(3, volume(3, &["a"], 2, 2));
    // b holds an old copy: it must not become master, nor be resynced from nobody.
    report(&mut t, "b", 3, ReportedRole::Replica, 1, 50);
    kill(&mut t, "a");
    let p = plan(&config(), &t, NOW);
    let k = kinds(&p);
    assert!(k.contains(&(AlarmKind::MasterElectionStuck, "v3".into())));
    if let Some(v) = p.volumes.first() {
        assert_eq!(v.placement.master, "a");
        assert!(v.placement.resyncing.is_empty());
        assert_eq!(v.placement.epoch, 2);
    }
    // b's copy is neither assigned nor removed while the volume is stuck.
    let reports = vec![VolumeReport {
        volume: 3,
        role: ReportedRole::Replica,
        epoch: 1,
        position: 50,
        size_bytes: 0,
        in_sync: vec![],
    }];
    assert!(assignments(&t, "b", &reports, NOW, &config()).is_empty());
}

#[test]
fn a_dead_replica_is_dropped_with_a_new_epoch() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r")]);
    t.volumes.insert(7, volume(7, &["a", "b", "c"], 5, 3));
    kill(&mut t, "c");
    let p = plan(&config(), &t, NOW);
    let v = &p.volumes[0];
    assert_eq!(v.placement.master, "a");
    assert_eq!(names(&v.placement.replicas), ["a", "b"]);
    assert_eq!(v.placement.epoch, 6);
    assert_eq!(v.placement.lost_since_ms, Some(NOW));
    // No spare node and the timeout not reached: no resync target.
    assert!(v.placement.resyncing.is_empty());
}

#[test]
fn re_replication_waits_for_the_timeout_and_prefers_another_rack() {
    let mut t = tables(&[("a", "/r1"), ("b", "/r2"), ("d", "/r1"), ("e", "/r3")]);
    let mut v = volume(7, &["a", "b"], 6, 3);
    v.placement.lost_since_ms = Some(NOW - 30_000);
    t.volumes.insert(7, v.clone());
    let p = plan(&config(), &t, NOW);
    assert!(p.volumes.is_empty(), "too early: {:?}", p.volumes);
    assert!(kinds(&p).contains(&(AlarmKind::UnderReplicated, "v7".into())));

    for n in ["a", "b", "d", "e"] {
        t.last_heartbeat_ms.insert(n.into(), NOW + 31_000);
    }
    let p = plan(&config(), &t, NOW + 31_000);
    let changed = &p.volumes[0];
    assert_eq!(names(&changed.placement.resyncing), ["e"], "rack r3 is not used yet");
    assert_eq!(changed.placement.epoch, 7);
    assert_eq!(changed.placement.lost_since_ms, Some(NOW - 30_000));

    // Once the master reports e in sync, e becomes a replica and the alarm clears.
    let mut t2 = t.clone();
    t2.volumes.insert(7, changed.clone());
    t2.reports.entry("a".into()).or_default().insert(
        7,
        VolumeReport {
            volume: 7,
            role: ReportedRole::Master,
            epoch: 7,
            position: 10,
            size_bytes: 0,
            in_sync: vec!["e".into()],
        },
    );
    let p = plan(&config(), &t2, NOW + 31_500);
    let done = &p.volumes[0];
    assert_eq!(names(&done.placement.replicas), ["a", "b", "e"]);
    assert!(done.placement.resyncing.is_empty());
    assert_eq!(done.placement.epoch, 8);
    assert_eq!(done.placement.lost_since_ms, None);
    assert!(p.alarms.is_empty(), "{:?}", p.alarms);
}

#[test]
fn a_returning_copy_is_resynced_before_the_timeout() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r"), ("d", "/r")]);
    let mut v = volume(7, &["a", "b"], 6, 3);
    v.placement.lost_since_ms = Some(NOW - 1_000);
    t.volumes.insert(7, v);
    // c was dropped at epoch 5 and is back; d is an empty spare.
    report(&mut t, "c", 7, ReportedRole::Replica, 5, 40);
    let p = plan(&config(), &t, NOW);
    let v = &p.volumes[0];
    assert_eq!(names(&v.placement.resyncing), ["c"]);
    assert_eq!(v.placement.epoch, 7);
    let a = assignments(&t, "c", &[], NOW, &config());
    assert!(a.is_empty(), "c is not assigned yet in the old tables");
    let mut t2 = t.clone();
    t2.volumes.insert(7, v.clone());
    let a = assignments(&t2, "c", &[], NOW, &config());
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].your_role, AssignedRole::Resync);
    assert_eq!(a[0].master_address, "a:5660");
    assert_eq!(a[0].epoch, 7);
}

#[test]
fn copies_not_needed_are_removed_and_removed_volumes_go() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r")]);
    t.volumes.insert(1, volume(1, &["a", "b"], 3, 2));
    let mut gone = volume(2, &["a"], 4, 1);
    gone.removed = true;
    t.volumes.insert(2, gone);
    let reports: Vec<VolumeReport> = [1, 2, 99]
        .into_iter()
        .map(|volume| VolumeReport {
            volume,
            role: ReportedRole::Stale,
            epoch: 1,
            position: 0,
            size_bytes: 0,
            in_sync: vec![],
        })
        .collect();
    let got: BTreeMap<u32, (AssignedRole, u64)> = assignments(&t, "c", &reports, NOW, &config())
        .into_iter()
        .map(|a| (a.volume, (a.your_role, a.epoch)))
        .collect();
    assert_eq!(got[&1], (AssignedRole::Remove, 3), "volume 1 is fully replicated");
    assert_eq!(got[&2], (AssignedRole::Remove, 4));
    assert_eq!(got[&99], (AssignedRole::Remove, u64::MAX));

    // a's assignments: master of 1 and Remove for 2 it still reports.
    report(&mut t, "a", 2, ReportedRole::Master, 4, 0);
    let a_reports = vec![t.reports["a"][&2].clone()];
    let got: BTreeMap<u32, AssignedRole> = assignments(&t, "a", &a_reports, NOW, &config())
        .into_iter()
        .map(|a| (a.volume, a.your_role))
        .collect();
    assert_eq!(got[&1], AssignedRole::Master);
    assert_eq!(got[&2], AssignedRole::Remove);
    // Volume 2's record stays while a reports it, and goes once nobody does.
    assert!(plan(&config(), &t, NOW).deleted_volumes.is_empty());
    t.reports.clear();
    assert_eq!(plan(&config(), &t, NOW).deleted_volumes, vec![2]);
}

#[test]
fn quota_alarms_come_from_the_master_report() {
    let mut t = tables(&[("a", "/r")]);
    let mut v = volume(1, &["a"], 1, 1);
    v.quota_bytes = Some(1_000);
    v.advisory_quota_bytes = Some(500);
    t.volumes.insert(1, v);
    let size = |t: &mut Tables, bytes| {
        report(t, "a", 1, ReportedRole::Master, 1, 0);
        t.reports.get_mut("a").unwrap().get_mut(&1).unwrap().size_bytes = bytes;
    };
    size(&mut t, 400);
    assert!(plan(&config(), &t, NOW).alarms.is_empty());
    size(&mut t, 600);
    assert_eq!(
        kinds(&plan(&config(), &t, NOW)),
        [(AlarmKind::AdvisoryQuotaExceeded, "v1".to_string())].into()
    );
    size(&mut t, 1_200);
    assert_eq!(kinds(&plan(&config(), &t, NOW)), [(AlarmKind::QuotaExceeded, "v1".to_string())].into());
}

#[test]
fn quota_alarms_are_raised_kept_and_cleared() {
    let mut t = tables(&[("a", "/r"), ("b", "/r")]);
    let mut v = volume(1, &["a", "b"], 1, 2);
    v.quota_bytes = Some(1_000);
    v.advisory_quota_bytes = Some(500);
    t.volumes.insert(1, v);
    let size = |t: &mut Tables, node: &str, role: ReportedRole, bytes| {
        report(t, node, 1, role, 1, 0);
        t.reports.get_mut(node).unwrap().get_mut(&1).unwrap().size_bytes = bytes;
    };
    // At the quota is not above it; a replica's report counts for nothing.
    size(&mut t, "a", ReportedRole::Master, 1_000);
    size(&mut t, "b", ReportedRole::Replica, 5_000);
    let p = plan(&config(), &t, NOW);
    assert_eq!(kinds(&p), [(AlarmKind::AdvisoryQuotaExceeded, "v1".to_string())].into());
    // Above the hard quota: the hard alarm replaces the advisory one, and keeps its start time
    // while it holds.
    t.alarms = p.alarms;
    size(&mut t, "a", ReportedRole::Master, 1_001);
    let p = plan(&config(), &t, NOW + 1_000);
    assert_eq!(kinds(&p), [(AlarmKind::QuotaExceeded, "v1".to_string())].into());
    let raised = p.alarms.values().next().unwrap().clone();
    assert_eq!((raised.subject.as_str(), raised.since_ms), ("v1", NOW + 1_000));
    assert!(!p.is_empty(&t.alarms), "the alarm change must be written");
    t.alarms = p.alarms;
    let p = plan(&config(), &t, NOW + 2_000);
    assert_eq!(p.alarms.values().next().unwrap().since_ms, NOW + 1_000);
    assert!(p.is_empty(&t.alarms), "nothing changed: nothing to write");
    // Back below both quotas (files removed): cleared.
    size(&mut t, "a", ReportedRole::Master, 499);
    let p = plan(&config(), &t, NOW + 3_000);
    assert!(p.alarms.is_empty(), "{:?}", p.alarms);
    assert!(!p.is_empty(&t.alarms), "the cleared alarm must be deleted");
}

#[test]
fn assignments_carry_the_volume_quotas() {
    let mut t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r")]);
    let mut v = volume(1, &["a", "b"], 3, 3);
    v.quota_bytes = Some(10 << 30);
    v.advisory_quota_bytes = Some(8 << 30);
    v.placement.resyncing = vec!["c".to_string()];
    t.volumes.insert(1, v);
    t.volumes.insert(2, volume(2, &["a"], 1, 1));
    for node in ["a", "b", "c"] {
        for a in assignments(&t, node, &[], NOW, &config()).into_iter().filter(|a| a.volume == 1) {
            assert_eq!((a.quota_bytes, a.advisory_quota_bytes), (Some(10 << 30), Some(8 << 30)), "{node}");
        }
    }
    let a: Vec<_> = assignments(&t, "a", &[], NOW, &config());
    let (one, two) = (a.iter().find(|a| a.volume == 1).unwrap(), a.iter().find(|a| a.volume == 2).unwrap());
    assert_eq!(one.your_role, AssignedRole::Master);
    assert_eq!((two.quota_bytes, two.advisory_quota_bytes), (None, None), "no quota in the spec");
    // A volume created from a spec with quotas assigns them.
    let spec = VolumeSpec {
        name: "q".into(),
        replication: Some(1),
        quota_bytes: Some(1 << 20),
        advisory_quota_bytes: Some(1 << 19),
        ..Default::default()
    };
    let mut t = tables(&[("a", "/r")]);
    let placed = place_new_volume(&check_spec(&spec).unwrap(), &t, &up_nodes(&t, NOW, &config())).unwrap();
    t.volumes.insert(3, check_spec(&spec).unwrap().into_volume(3, placed, NOW));
    let a = assignments(&t, "a", &[], NOW, &config());
    assert_eq!((a[0].quota_bytes, a[0].advisory_quota_bytes), (Some(1 << 20), Some(1 << 19)));
    // On the wire (MessagePack with named fields), and optional there: an assignment from an
    // older CLDB, without the fields, has no quota.
    let decoded: Assignment = rmp_serde::from_slice(&rmp_serde::to_vec_named(&a[0]).unwrap()).unwrap();
    assert_eq!(decoded, a[0]);
    let mut older = serde_json::to_value(&a[0]).unwrap();
    older.as_object_mut().unwrap().retain(|key, _| !key.contains("quota"));
    let decoded: Assignment = serde_json::from_value(older).unwrap();
    assert_eq!((decoded.quota_bytes, decoded.advisory_quota_bytes), (None, None));
}

#[test]
fn nodes_get_a_full_timeout_and_down_nodes_stay_down() {
    let mut t = tables(&[("a", "/r"), ("b", "/r")]);
    t.last_heartbeat_ms.insert("a".into(), NOW - 5_999);
    let p = plan(&config(), &t, NOW);
    assert!(p.nodes.is_empty());
    let p = plan(&config(), &t, NOW + 2);
    assert_eq!(p.nodes.len(), 1);
    assert_eq!(p.nodes[0].name, "a");
    assert_eq!(p.nodes[0].state_since_ms, NOW + 2);
    // Recorded as Down: no further change, the alarm holds.
    t.nodes.insert("a".into(), p.nodes[0].clone());
    t.alarms = p.alarms.clone();
    let p2 = plan(&config(), &t, NOW + 500);
    assert!(p2.nodes.is_empty());
    assert!(p2.is_empty(&t.alarms), "{p2:?}");
}
