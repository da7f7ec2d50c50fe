//! Two CLDBs over a real (in-process) coord member, with fake fileservers heartbeating.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_cldb::proto::{
    AlarmKind, AssignedRole, Assignment, DiskSpace, Heartbeat, ReportedRole, Request, RpcClient,
    VolumeReport, VolumeSpec,
};
use cairn_cldb::{Cldb, CldbClient, CldbConfig, CldbError};
use cairn_coord::member::{Member, MemberConfig};
use cairn_coord::proto::TcpDialer;
use cairn_coord::store::FlushMode;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The disk every fake node reports.
const FAKE_DISK: DiskSpace = DiskSpace { total_bytes: 1 << 40, free_bytes: 3 << 38 };

/// One coord member serving on a free port.
pub(crate) struct Coord {
    pub(crate) address: String,
    member: Member,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Coord {
    pub(crate) async fn start() -> Coord {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let config = MemberConfig {
            id: 1,
            data_dir: dir.path().join("coord-1"),
            address: address.clone(),
            initial_members: BTreeMap::from([(1, address.clone())]),
            cluster_name: "cldb-test".into(),
            flush: FlushMode::Background,
            snapshot_every_entries: cairn_coord::raft::SNAPSHOT_EVERY_ENTRIES,
        };
        let member = Member::start(config, Arc::new(TcpDialer)).await.unwrap();
        let handler = member.handler();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            cairn_rpc::serve_tcp(listener, handler, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Coord { address, member, stop, server, _dir: dir }
    }

    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.member.shutdown().await;
    }
}

pub(crate) fn cldb_config(name: &str, coord: &Coord) -> CldbConfig {
    let mut c = CldbConfig::new(name, "127.0.0.1:0".parse().unwrap(), vec![coord.address.clone()]);
    c.node_timeout = Duration::from_secs(2);
    c.rereplication_timeout = Duration::from_secs(3);
    c.tick = Duration::from_millis(200);
    c.coord_session_timeout = Duration::from_secs(3);
    c
}

/// Waits until `check` is true, for at most `limit`.
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a fake fileserver believes: the assignments it applied, by volume.
#[derive(Default)]
pub(crate) struct View {
    pub(crate) cldb_epoch: u64,
    pub(crate) volumes: BTreeMap<u32, Assignment>,
    pub(crate) removed: Vec<u32>,
}

/// A fake fileserver: heartbeats every 200 ms, applies its assignments (highest epoch wins),
/// reports them back, and as a master reports every resyncing node in sync at once.
pub(crate) struct FakeNode {
    name: String,
    pub(crate) view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl FakeNode {
    pub(crate) fn start(name: &str, cldbs: Vec<String>) -> FakeNode {
        let view = Arc::new(Mutex::new(View::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let client = CldbClient::new(cldbs);
        let task = tokio::spawn(Self::run(name.to_owned(), client, view.clone(), stop.clone()));
        FakeNode { name: name.to_owned(), view, stop, task }
    }

    async fn run(name: String, client: CldbClient, view: Arc<Mutex<View>>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let volumes: Vec<VolumeReport> = view
                .lock()
                .volumes
                .values()
                .map(|a| VolumeReport {
                    volume: a.volume,
                    role: match a.your_role {
                        AssignedRole::Master => ReportedRole::Master,
                        AssignedRole::Replica => ReportedRole::Replica,
                        AssignedRole::Resync | AssignedRole::Remove => ReportedRole::Resyncing,
                    },
                    epoch: a.epoch,
                    position: 10,
                    size_bytes: 4096,
                    in_sync: if a.your_role == AssignedRole::Master {
                        a.resyncing.iter().map(|(n, _)| n.clone()).collect()
                    } else {
                        vec![]
                    },
                })
                .collect();
            let hb = Heartbeat {
                node: name.clone(),
                fileserver_address: format!("{name}.fs:5660"),
                nfs_address: format!("{name}.nfs:2049"),
                topology: String::new(),
                services: vec!["fileserver".into(), "nfs".into()],
                volumes,
                disk: Some(FAKE_DISK),
            };
            if let Ok(reply) = client.heartbeat(hb).await {
                let mut v = view.lock();
                if reply.cldb_epoch >= v.cldb_epoch {
                    v.cldb_epoch = reply.cldb_epoch;
                    for a in reply.assignments {
                        let newer = v.volumes.get(&a.volume).is_none_or(|old| a.epoch >= old.epoch);
                        if !newer {
                            continue;
                        }
                        if a.your_role == AssignedRole::Remove {
                            v.volumes.remove(&a.volume);
                            v.removed.push(a.volume);
                        } else {
                            v.volumes.insert(a.volume, a);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) fn assignment(&self, volume: u32) -> Option<Assignment> {
        self.view.lock().volumes.get(&volume).cloned()
    }

    /// Stops heartbeating, as if the node died.
    pub(crate) async fn kill(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cldb_failover_keeps_the_tables_and_volume_masters_fail_over() {
    let coord = Coord::start().await;
    let a = Cldb::start(cldb_config("cldb-a", &coord)).await.unwrap();
    eventually("cldb-a becomes master", Duration::from_secs(20), || async { a.is_master() }).await;
    let b = Cldb::start(cldb_config("cldb-b", &coord)).await.unwrap();
    let (a_addr, b_addr) = (a.address().to_string(), b.address().to_string());

    // b is not master: its status says who is, and it sends writers there.
    let via_b = CldbClient::new(vec![b_addr.clone()]);
    eventually("cldb-b reports the master", Duration::from_secs(10), || async {
        via_b.status_of(&b_addr).await.is_ok_and(|s| !s.is_master && s.master.as_deref() == Some(&a_addr))
    })
    .await;
    let raw = RpcClient::connect_tcp(&b_addr, Duration::from_secs(1), None).await.unwrap();
    let answer =
        raw.call(Request::RemoveVolume { name: "nothing".into() }, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer, Err(CldbError::NotMaster { master: Some(a_addr.clone()) }));

    // Three nodes heartbeat, each first to b (the client follows the hint).
    let mut nodes: BTreeMap<String, FakeNode> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|n| (n.to_owned(), FakeNode::start(n, vec![b_addr.clone(), a_addr.clone()])))
        .collect();
    eventually("three nodes up", Duration::from_secs(10), || async {
        via_b.list_nodes().await.is_ok_and(|n| n.len() == 3)
    })
    .await;
    // The master knows each node's disk from its heartbeats.
    let from_master = CldbClient::new(vec![a_addr.clone()]).list_nodes().await.unwrap();
    assert!(from_master.iter().all(|n| n.disk == Some(FAKE_DISK)), "{from_master:?}");

    // Create through the non-master.
    let too_many = VolumeSpec {
        name: "big".into(),
        replication: Some(4),
        min_replication: Some(4),
        ..Default::default()
    };
    assert_eq!(via_b.create_volume(too_many).await, Err(CldbError::NotEnoughNodes { needed: 4, up: 3 }));
    let alpha = via_b
        .create_volume(VolumeSpec { name: "alpha".into(), replication: Some(3), ..Default::default() })
        .await
        .unwrap()
        .volume;
    assert_eq!(via_b.master().as_deref(), Some(a_addr.as_str()));
    assert_eq!(alpha.placement.replicas.len(), 3);
    assert_eq!(alpha.placement.epoch, 1);
    let beta = via_b
        .create_volume(VolumeSpec { name: "beta".into(), replication: Some(2), ..Default::default() })
        .await
        .unwrap()
        .volume;
    assert_ne!(alpha.id, beta.id);
    let again = via_b.create_volume(VolumeSpec { name: "alpha".into(), ..Default::default() }).await;
    assert_eq!(again, Err(CldbError::VolumeExists { name: "alpha".into() }));

    // Reads from the non-master come from coord.
    let reader_b = CldbClient::new(vec![b_addr.clone()]);
    let location = reader_b.lookup_volume(alpha.id).await.unwrap();
    assert_eq!(location.epoch, 1);
    assert_eq!(location.master, alpha.placement.master);
    assert_eq!(location.master_address, format!("{}.fs:5660", alpha.placement.master));
    assert_eq!(location.data_containers.len(), 4);
    assert_eq!(reader_b.list_containers().await.unwrap().len(), 10);
    let c = reader_b.container_info(location.data_containers[0]).await.unwrap();
    assert_eq!(c.volume, alpha.id);
    assert_eq!(reader_b.volume_info("beta").await.unwrap().volume, beta);

    // Every node of alpha learns its role.
    eventually("alpha assigned to its three nodes", Duration::from_secs(10), || async {
        alpha.placement.replicas.iter().all(|n| nodes[n].assignment(alpha.id).is_some_and(|a| a.epoch == 1))
    })
    .await;
    let master_node = &alpha.placement.master;
    assert_eq!(nodes[master_node].assignment(alpha.id).unwrap().your_role, AssignedRole::Master);

    // The CLDB master stops: b takes over within seconds, with every table.
    a.shutdown().await;
    eventually("cldb-b becomes master", Duration::from_secs(10), || async { b.is_master() }).await;
    let status = reader_b.status().await.unwrap();
    assert!(status.is_master);
    assert_eq!(status.epoch, 2);
    let volumes = reader_b.list_volumes().await.unwrap();
    let by_name: BTreeMap<String, _> =
        volumes.into_iter().map(|v| (v.volume.name.clone(), v.volume)).collect();
    assert_eq!(by_name["alpha"], alpha);
    assert_eq!(by_name["beta"], beta);
    assert_eq!(reader_b.list_nodes().await.unwrap().len(), 3);
    eventually("the nodes heartbeat to the new master", Duration::from_secs(10), || async {
        nodes.values().all(|n| n.view.lock().cldb_epoch == 2)
    })
    .await;
    let disks: Vec<_> = reader_b.list_nodes().await.unwrap().into_iter().map(|n| n.disk).collect();
    assert_eq!(disks, vec![Some(FAKE_DISK); 3], "the new master learnt the disks from heartbeats");

    // Alpha's master node dies: a surviving replica becomes master with epoch 2.
    let victim = nodes.remove(master_node).unwrap();
    let victim_name = victim.name.clone();
    victim.kill().await;
    eventually("a new master for alpha", Duration::from_secs(15), || async {
        nodes.values().any(|n| {
            n.assignment(alpha.id).is_some_and(|a| a.your_role == AssignedRole::Master && a.epoch == 2)
        })
    })
    .await;
    let location = reader_b.lookup_volume(alpha.id).await.unwrap();
    assert_eq!(location.epoch, 2);
    assert_ne!(location.master, victim_name);
    assert_eq!(location.replicas.len(), 2);
    // Every surviving node learns the new placement at its next heartbeat.
    eventually("every node has alpha's epoch 2 placement", Duration::from_secs(10), || async {
        nodes
            .values()
            .all(|n| n.assignment(alpha.id).is_some_and(|a| a.epoch == 2 && a.master == location.master))
    })
    .await;
    let alarms = reader_b.list_alarms().await.unwrap();
    assert!(alarms.iter().any(|a| a.kind == AlarmKind::NodeDown && a.subject == victim_name), "{alarms:?}");
    assert!(
        alarms.iter().any(|a| a.kind == AlarmKind::UnderReplicated && a.subject == "alpha"),
        "{alarms:?}"
    );

    // A fourth node: after the re-replication timeout it resyncs alpha and becomes a replica.
    nodes.insert("n4".into(), FakeNode::start("n4", vec![b_addr.clone()]));
    eventually("n4 becomes a replica of alpha", Duration::from_secs(20), || async {
        reader_b.lookup_volume(alpha.id).await.is_ok_and(|l| l.replicas.iter().any(|r| r.name == "n4"))
    })
    .await;
    eventually("alpha's under-replication alarm clears", Duration::from_secs(10), || async {
        reader_b
            .list_alarms()
            .await
            .is_ok_and(|a| !a.iter().any(|a| a.kind == AlarmKind::UnderReplicated && a.subject == "alpha"))
    })
    .await;

    // Removing beta tells its nodes to delete their copies; then its record goes.
    reader_b.remove_volume("beta").await.unwrap();
    assert_eq!(reader_b.volume_info("beta").await, Err(CldbError::NoSuchVolume { what: "beta".into() }));
    eventually("beta removed from every node", Duration::from_secs(10), || async {
        nodes.values().all(|n| n.assignment(beta.id).is_none())
    })
    .await;

    // cldb-a comes back as a follower and reads the same tables.
    let a2 = Cldb::start(cldb_config("cldb-a2", &coord)).await.unwrap();
    let reader_a = CldbClient::new(vec![a2.address().to_string()]);
    eventually("cldb-a2 answers as a follower", Duration::from_secs(10), || async {
        reader_a.status().await.is_ok_and(|s| !s.is_master && s.epoch == 2)
    })
    .await;
    assert_eq!(
        reader_a.lookup_volume(alpha.id).await.unwrap(),
        reader_b.lookup_volume(alpha.id).await.unwrap()
    );

    for (_, n) in nodes {
        n.kill().await;
    }
    a2.shutdown().await;
    b.shutdown().await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_master_cannot_write_and_corrupt_records_raise_alarms() {
    use cairn_cldb::store::{self, EPOCH_PATH, Fenced, WriteError};
    use cairn_coord::client::{ClientOptions, CoordClient};

    let coord = Coord::start().await;
    let a = Cldb::start(cldb_config("cldb-a", &coord)).await.unwrap();
    eventually("cldb-a becomes master", Duration::from_secs(20), || async { a.is_master() }).await;
    let client = CldbClient::new(vec![a.address().to_string()]);
    let node = FakeNode::start("n1", vec![a.address().to_string()]);
    eventually("n1 up", Duration::from_secs(10), || async {
        client.list_nodes().await.is_ok_and(|n| n.len() == 1)
    })
    .await;
    let v = client
        .create_volume(VolumeSpec { name: "gamma".into(), replication: Some(1), ..Default::default() })
        .await
        .unwrap()
        .volume;

    // A writer holding the current fence works until someone bumps the epoch; then it is deposed.
    let zk =
        CoordClient::connect(std::slice::from_ref(&coord.address), ClientOptions::default()).await.unwrap();
    let (_, version) = store::epoch(&zk).await.unwrap();
    let fenced = Fenced { client: zk.clone(), version };
    fenced.write(vec![store::create("/cairn/cldb/test-probe".into(), vec![])]).await.unwrap();
    zk.set(EPOCH_PATH, b"{\"epoch\": 2}", None).await.unwrap();
    let refused = fenced.write(vec![store::delete("/cairn/cldb/test-probe".into())]).await;
    assert!(matches!(refused, Err(WriteError::Deposed(_))), "{refused:?}");
    assert!(zk.exists("/cairn/cldb/test-probe").await.unwrap().is_some());

    // cldb-a noticed too: it stepped down and was elected again, with a higher epoch.
    eventually("cldb-a re-elected with epoch 3", Duration::from_secs(20), || async {
        client.status().await.is_ok_and(|s| s.is_master && s.epoch == 3)
    })
    .await;
    assert_eq!(client.volume_info("gamma").await.unwrap().volume, v);
    eventually("n1 follows the new CLDB epoch", Duration::from_secs(10), || async {
        node.view.lock().cldb_epoch == 3
    })
    .await;

    // Garbage in a volume record: an alarm, no panic, and the node's copy of it is kept.
    let bad = v.id + 1;
    zk.create(&store::volume_path(bad), b"not json", cairn_coord::api::CreateMode::Persistent).await.unwrap();
    // Step the master down so that it reloads the tables.
    zk.set(EPOCH_PATH, b"{\"epoch\": 4}", None).await.unwrap();
    eventually("corrupt record alarm", Duration::from_secs(20), || async {
        client.list_alarms().await.is_ok_and(|a| a.iter().any(|a| a.kind == AlarmKind::CorruptRecord))
    })
    .await;
    let hb = Heartbeat {
        node: "n9".into(),
        fileserver_address: "n9.fs:5660".into(),
        volumes: vec![VolumeReport {
            volume: bad,
            role: ReportedRole::Replica,
            epoch: 1,
            position: 0,
            size_bytes: 0,
            in_sync: vec![],
        }],
        ..Default::default()
    };
    let reply = client.heartbeat(hb).await.unwrap();
    assert!(reply.assignments.iter().all(|a| a.volume != bad), "{reply:?}");
    // A new volume never reuses the corrupt record's id.
    let delta = client
        .create_volume(VolumeSpec { name: "delta".into(), replication: Some(1), ..Default::default() })
        .await
        .unwrap()
        .volume;
    assert!(delta.id > bad);
    // Lookups of the bad id fail cleanly on every CLDB.
    assert!(client.lookup_volume(bad).await.is_err());

    node.kill().await;
    zk.close().await.unwrap();
    a.shutdown().await;
    coord.shutdown().await;
}
