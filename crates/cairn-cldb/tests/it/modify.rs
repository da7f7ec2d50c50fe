//! ModifyVolume: the checks of a change, the placement it leads to (pure), and the request on
//! CLDBs over a real coord member with fake file servers (persisted, redirected, assigned).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_cldb::model::check_change;
use cairn_cldb::planner::{PlannerConfig, Tables, assignments, modify_volume};
use cairn_cldb::proto::{
    AlarmKind, AssignedRole, CldbError, NodeRecord, NodeState, Placement, QuotaChange, ReplicationType,
    ReportedRole, Request, RpcClient, Volume, VolumeChange, VolumeReport, VolumeSpec,
};
use cairn_cldb::{Cldb, CldbClient};

use crate::cluster::{Coord, FakeNode, cldb_config, eventually};

const NOW: u64 = 1_000_000;
const MIB: u64 = 1 << 20;

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
                topology: rack.to_string(),
                state: NodeState::Up,
                last_heartbeat_ms: NOW,
                ..Default::default()
            },
        );
        t.last_heartbeat_ms.insert(name.to_string(), NOW);
    }
    t
}

fn volume(replicas: &[&str], resyncing: &[&str], replication: u32) -> Volume {
    Volume {
        id: 1,
        name: "v1".into(),
        mount_path: "/v1".into(),
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
            epoch: 5,
            resyncing: resyncing.iter().map(|s| s.to_string()).collect(),
            lost_since_ms: None,
        },
    }
}

fn change() -> VolumeChange {
    VolumeChange { name: "v1".into(), ..Default::default() }
}

fn invalid(result: Result<Volume, CldbError>, words: &str) {
    match result {
        Err(CldbError::InvalidSpec(message)) => assert!(message.contains(words), "{message}"),
        other => panic!("expected InvalidSpec({words}...), got {other:?}"),
    }
}

/// `check_change` then `modify_volume`, as the service does.
fn modify(t: &Tables, v: &Volume, c: &VolumeChange) -> Result<Volume, CldbError> {
    let changed = check_change(v, c)?;
    modify_volume(&config(), t, v, changed, NOW, &mut Vec::new())
}

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn changes_are_checked_like_specs() {
    let mut v = volume(&["a"], &[], 1);
    v.quota_bytes = Some(10 * MIB);
    v.advisory_quota_bytes = Some(8 * MIB);
    // Keep, set, remove.
    assert_eq!(check_change(&v, &change()), Ok(v.clone()));
    let c =
        VolumeChange { quota: QuotaChange::Set(20 * MIB), advisory_quota: QuotaChange::Remove, ..change() };
    let changed = check_change(&v, &c).unwrap();
    assert_eq!((changed.quota_bytes, changed.advisory_quota_bytes), (Some(20 * MIB), None));
    // A hard quota below the bytes used is allowed (growth is refused from then on), even 0, but
    // not below the advisory quota.
    invalid(check_change(&v, &VolumeChange { quota: QuotaChange::Set(0), ..change() }), "advisory quota");
    let c = VolumeChange { quota: QuotaChange::Set(0), advisory_quota: QuotaChange::Remove, ..change() };
    assert_eq!(check_change(&v, &c).unwrap().quota_bytes, Some(0));
    // The advisory quota is compared with the resulting hard quota, whichever of them changes.
    invalid(check_change(&v, &VolumeChange { quota: QuotaChange::Set(MIB), ..change() }), "advisory quota");
    invalid(
        check_change(&v, &VolumeChange { advisory_quota: QuotaChange::Set(11 * MIB), ..change() }),
        "advisory quota 11534336 is above the hard quota 10485760",
    );
    let no_hard = check_change(&v, &VolumeChange { quota: QuotaChange::Remove, ..change() }).unwrap();
    assert_eq!((no_hard.quota_bytes, no_hard.advisory_quota_bytes), (None, Some(8 * MIB)));
    // Replication 1..=5, minimum 1..=replication, with the values after the change.
    for bad in [0, 6, u32::MAX] {
        invalid(check_change(&v, &VolumeChange { replication: Some(bad), ..change() }), "replication");
    }
    invalid(
        check_change(&v, &VolumeChange { min_replication: Some(2), ..change() }),
        "minimum replication 2",
    );
    invalid(
        check_change(&v, &VolumeChange { min_replication: Some(0), ..change() }),
        "minimum replication 0",
    );
    let mut three = volume(&["a", "b", "c"], &[], 3);
    three.min_replication = 3;
    invalid(
        check_change(&three, &VolumeChange { replication: Some(2), ..change() }),
        "minimum replication 3",
    );
    let lowered =
        check_change(&three, &VolumeChange { replication: Some(2), min_replication: Some(2), ..change() })
            .unwrap();
    assert_eq!((lowered.replication, lowered.min_replication), (2, 2));
    invalid(check_change(&v, &VolumeChange { name: "a/b".into(), ..change() }), "volume name");
}

#[test]
fn a_quota_change_keeps_the_placement_and_its_epoch() {
    let t = tables(&[("a", "/r"), ("b", "/r")]);
    let v = volume(&["a", "b"], &[], 2);
    let c = VolumeChange {
        quota: QuotaChange::Set(8 * MIB),
        advisory_quota: QuotaChange::Set(4 * MIB),
        min_replication: Some(2),
        ..change()
    };
    let changed = modify(&t, &v, &c).unwrap();
    assert_eq!(changed.placement, v.placement);
    assert_eq!(
        (changed.quota_bytes, changed.advisory_quota_bytes, changed.min_replication),
        (Some(8 * MIB), Some(4 * MIB), 2)
    );
    // Same values again: the same record.
    assert_eq!(modify(&t, &changed, &c).unwrap(), changed);
}

#[test]
fn a_higher_replication_adds_resync_targets_at_once() {
    let mut t = tables(&[("a", "/r1"), ("b", "/r1"), ("c", "/r1"), ("d", "/r2"), ("e", "/r2")]);
    let v = volume(&["a", "b"], &[], 2);
    // A node reporting a copy comes first, then the least used topology.
    t.reports.entry("c".into()).or_default().insert(
        1,
        VolumeReport {
            volume: 1,
            role: ReportedRole::Stale,
            epoch: 0,
            position: 0,
            size_bytes: 0,
            in_sync: vec![],
        },
    );
    let changed = modify(&t, &v, &VolumeChange { replication: Some(4), ..change() }).unwrap();
    assert_eq!(names(&changed.placement.replicas), ["a", "b"]);
    assert_eq!(names(&changed.placement.resyncing), ["c", "d"]);
    assert_eq!(changed.placement.epoch, 6);
    assert_eq!(changed.placement.lost_since_ms, Some(NOW), "under-replicated until they are in sync");
    let resync = assignments(&t, "d", &[], NOW, &config());
    assert_eq!(resync.len(), 0, "the tables are not updated yet");
    let mut t2 = t.clone();
    t2.volumes.insert(1, changed.clone());
    let resync = assignments(&t2, "d", &[], NOW, &config());
    assert_eq!((resync[0].your_role, resync[0].epoch), (AssignedRole::Resync, 6));
    let master = assignments(&t2, "a", &[], NOW, &config());
    assert_eq!(master[0].resyncing.len(), 2);

    // Not enough nodes: as many as there are; re-replication adds the rest later.
    let changed = modify(&t, &v, &VolumeChange { replication: Some(5), ..change() }).unwrap();
    assert_eq!(changed.placement.resyncing.len(), 3);
    let t3 = tables(&[("a", "/r"), ("b", "/r")]);
    let changed = modify(&t3, &v, &VolumeChange { replication: Some(3), ..change() }).unwrap();
    assert_eq!((changed.placement.resyncing.len(), changed.placement.epoch), (0, 5));
    assert_eq!(changed.placement.lost_since_ms, Some(NOW));

    // A deficit left by a dead node still waits for the re-replication timeout: only the
    // growth is placed now.
    let mut lost = volume(&["a"], &[], 2);
    lost.placement.lost_since_ms = Some(NOW - 1_000);
    let changed = modify(&t, &lost, &VolumeChange { replication: Some(3), ..change() }).unwrap();
    assert_eq!(names(&changed.placement.resyncing), ["c"]);
    assert_eq!(changed.placement.lost_since_ms, Some(NOW - 1_000));

    // Master down: no target now (the tick elects a master first).
    let mut t4 = t.clone();
    t4.last_heartbeat_ms.insert("a".into(), NOW - 7_000);
    let changed = modify(&t4, &v, &VolumeChange { replication: Some(3), ..change() }).unwrap();
    assert_eq!(changed.placement, Placement { lost_since_ms: Some(NOW), ..v.placement.clone() });
}

#[test]
fn a_lower_replication_drops_the_surplus_but_never_the_master() {
    let t = tables(&[("a", "/r"), ("b", "/r"), ("c", "/r"), ("d", "/r")]);
    let v = volume(&["a", "b", "c"], &["d"], 4);
    // Resync targets go first, then replicas from the end of the chain.
    let changed = modify(&t, &v, &VolumeChange { replication: Some(2), ..change() }).unwrap();
    assert_eq!(names(&changed.placement.replicas), ["a", "b"]);
    assert!(changed.placement.resyncing.is_empty());
    assert_eq!((changed.placement.master.as_str(), changed.placement.epoch), ("a", 6));
    assert_eq!(changed.placement.lost_since_ms, None);
    let one = modify(&t, &v, &VolumeChange { replication: Some(1), ..change() }).unwrap();
    assert_eq!(names(&one.placement.replicas), ["a"]);

    // Nodes that are down go before any live one.
    let mut down = t.clone();
    down.last_heartbeat_ms.insert("b".into(), NOW - 7_000);
    let changed =
        modify(&down, &volume(&["a", "b", "c"], &[], 3), &VolumeChange { replication: Some(2), ..change() })
            .unwrap();
    assert_eq!(names(&changed.placement.replicas), ["a", "c"]);

    // The dropped nodes are told to delete their copies (the volume is full, its master up).
    let mut t2 = t.clone();
    t2.volumes.insert(1, changed.clone());
    let report = VolumeReport {
        volume: 1,
        role: ReportedRole::Replica,
        epoch: 5,
        position: 9,
        size_bytes: 0,
        in_sync: vec![],
    };
    let told = assignments(&t2, "b", &[report], NOW, &config());
    assert_eq!((told[0].your_role, told[0].epoch), (AssignedRole::Remove, 6));

    // Master down: refused, the replica that would take over could be dropped.
    let mut t3 = t.clone();
    t3.last_heartbeat_ms.insert("a".into(), NOW - 7_000);
    invalid(modify(&t3, &v, &VolumeChange { replication: Some(1), ..change() }), "master a is down");

    // Lowering to what is placed changes no placement.
    let v2 = volume(&["a", "b"], &[], 3);
    let changed = modify(&t, &v2, &VolumeChange { replication: Some(2), ..change() }).unwrap();
    assert_eq!(changed.placement, v2.placement);
}

/// Waits until `node` holds `volume` with `role` and the quotas given.
async fn assigned(node: &FakeNode, volume: u32, role: AssignedRole, quotas: (Option<u64>, Option<u64>)) {
    eventually("the assignment carries the change", Duration::from_secs(10), || async {
        node.assignment(volume)
            .is_some_and(|a| a.your_role == role && (a.quota_bytes, a.advisory_quota_bytes) == quotas)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_volume_is_persisted_redirected_assigned_and_checked() {
    let coord = Coord::start().await;
    let a = Cldb::start(cldb_config("cldb-a", &coord)).await.unwrap();
    eventually("cldb-a becomes master", Duration::from_secs(20), || async { a.is_master() }).await;
    let b = Cldb::start(cldb_config("cldb-b", &coord)).await.unwrap();
    let (a_addr, b_addr) = (a.address().to_string(), b.address().to_string());
    let via_b = CldbClient::new(vec![b_addr.clone(), a_addr.clone()]);
    let nodes: BTreeMap<String, FakeNode> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|n| (n.to_owned(), FakeNode::start(n, vec![a_addr.clone()])))
        .collect();
    eventually("three nodes up", Duration::from_secs(10), || async {
        via_b.list_nodes().await.is_ok_and(|n| n.len() == 3)
    })
    .await;
    let v = via_b
        .create_volume(VolumeSpec { name: "q".into(), replication: Some(2), ..Default::default() })
        .await
        .unwrap()
        .volume;
    let master = nodes[&v.placement.master].view.clone();
    let master_node = &nodes[&v.placement.master];
    assigned(master_node, v.id, AssignedRole::Master, (None, None)).await;

    // A non-master CLDB redirects the change to the master.
    let raw = RpcClient::connect_tcp(&b_addr, Duration::from_secs(1), None).await.unwrap();
    let quotas = VolumeChange {
        name: "q".into(),
        quota: QuotaChange::Set(10 * MIB),
        advisory_quota: QuotaChange::Set(8 * MIB),
        ..Default::default()
    };
    let answer = raw.call(Request::ModifyVolume(quotas.clone()), Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer, Err(CldbError::NotMaster { master: Some(a_addr.clone()) }));
    let info = via_b.modify_volume(quotas.clone()).await.unwrap();
    assert_eq!(via_b.master().as_deref(), Some(a_addr.as_str()));
    assert_eq!((info.volume.quota_bytes, info.volume.advisory_quota_bytes), (Some(10 * MIB), Some(8 * MIB)));
    assert_eq!(info.volume.placement, v.placement, "a quota change keeps the placement and epoch");
    // Persisted in coord: a non-master reads it there; and the master's next assignment has it.
    let reader_b = CldbClient::new(vec![b_addr.clone()]);
    assert_eq!(reader_b.volume_info("q").await.unwrap().volume, info.volume);
    assigned(master_node, v.id, AssignedRole::Master, (Some(10 * MIB), Some(8 * MIB))).await;
    // The same change again changes nothing.
    assert_eq!(via_b.modify_volume(quotas).await.unwrap().volume, info.volume);

    // Refused: bad values, unknown or removed volumes; nothing changes.
    let refuse = |change: VolumeChange, words: &'static str| {
        let via_b = via_b.clone();
        async move {
            match via_b.modify_volume(change).await {
                Err(CldbError::InvalidSpec(message)) => assert!(message.contains(words), "{message}"),
                other => panic!("expected InvalidSpec({words}...), got {other:?}"),
            }
        }
    };
    let q = || VolumeChange { name: "q".into(), ..Default::default() };
    refuse(VolumeChange { advisory_quota: QuotaChange::Set(11 * MIB), ..q() }, "advisory quota").await;
    refuse(VolumeChange { quota: QuotaChange::Set(MIB), ..q() }, "advisory quota").await;
    refuse(VolumeChange { replication: Some(0), ..q() }, "replication 0").await;
    refuse(VolumeChange { replication: Some(6), ..q() }, "replication 6").await;
    refuse(VolumeChange { min_replication: Some(3), ..q() }, "minimum replication 3").await;
    assert_eq!(
        via_b.modify_volume(VolumeChange { name: "nothing".into(), ..Default::default() }).await,
        Err(CldbError::NoSuchVolume { what: "nothing".into() })
    );
    assert_eq!(reader_b.volume_info("q").await.unwrap().volume, info.volume);

    // The advisory quota below what the master reports (4096 bytes): an alarm; removed: cleared.
    let advisory = VolumeChange { advisory_quota: QuotaChange::Set(1_000), ..q() };
    assert_eq!(via_b.modify_volume(advisory).await.unwrap().volume.advisory_quota_bytes, Some(1_000));
    let quota_alarm = |wanted: bool| {
        let reader_b = reader_b.clone();
        async move {
            reader_b.list_alarms().await.is_ok_and(|alarms| {
                alarms.iter().any(|a| a.kind == AlarmKind::AdvisoryQuotaExceeded && a.subject == "q")
                    == wanted
            })
        }
    };
    eventually("the advisory quota alarm", Duration::from_secs(10), || quota_alarm(true)).await;
    let info = via_b
        .modify_volume(VolumeChange {
            quota: QuotaChange::Remove,
            advisory_quota: QuotaChange::Remove,
            ..q()
        })
        .await
        .unwrap();
    assert_eq!((info.volume.quota_bytes, info.volume.advisory_quota_bytes), (None, None));
    eventually("the advisory quota alarm clears", Duration::from_secs(10), || quota_alarm(false)).await;
    assigned(master_node, v.id, AssignedRole::Master, (None, None)).await;

    // Replication 2 -> 3: the third node resyncs at once, then (in sync) becomes a replica.
    let third = nodes.keys().find(|n| !v.placement.replicas.contains(n)).unwrap().clone();
    let info = via_b.modify_volume(VolumeChange { replication: Some(3), ..q() }).await.unwrap();
    assert_eq!((info.volume.replication, info.volume.placement.epoch), (3, v.placement.epoch + 1));
    assert_eq!(info.volume.placement.resyncing, vec![third.clone()]);
    eventually("the third node becomes a replica", Duration::from_secs(10), || async {
        reader_b.lookup_volume(v.id).await.is_ok_and(|l| l.replicas.len() == 3 && l.replicas[2].name == third)
    })
    .await;
    assigned(&nodes[&third], v.id, AssignedRole::Replica, (None, None)).await;
    assert_eq!(reader_b.volume_info("q").await.unwrap().volume.placement.epoch, v.placement.epoch + 2);

    // Replication 3 -> 1: both non-master nodes leave and are told to delete their copies.
    let info = via_b.modify_volume(VolumeChange { replication: Some(1), ..q() }).await.unwrap();
    assert_eq!(info.volume.placement.replicas, vec![v.placement.master.clone()]);
    for (name, node) in &nodes {
        if *name != v.placement.master {
            eventually("a dropped node removes its copy", Duration::from_secs(10), || async {
                node.view.lock().removed.contains(&v.id)
            })
            .await;
        }
    }
    assert_eq!(master.lock().volumes[&v.id].your_role, AssignedRole::Master);
    assert_eq!(reader_b.lookup_volume(v.id).await.unwrap().replicas.len(), 1);

    // Removed volumes cannot be changed.
    via_b.remove_volume("q").await.unwrap();
    assert_eq!(via_b.modify_volume(q()).await, Err(CldbError::NoSuchVolume { what: "q".into() }));

    for (_, n) in nodes {
        n.kill().await;
    }
    b.shutdown().await;
    a.shutdown().await;
    coord.shutdown().await;
}
