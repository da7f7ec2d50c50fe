//! The coord quorum as separate `cairn coord serve` processes on loopback: leader kill, ephemeral
//! expiry, watches, frozen minority and majority, full restart, compare-and-set, membership changes,
//! a corrupted log, and the fencing epoch. Everything goes through real sockets and real disks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_coord::api::{CoordError, CreateMode, EventType};
use cairn_coord::client::{ClientOptions, CoordClient, member_status};
use cairn_coord::fence::{Fence, acquire, try_acquire};

use crate::support::{CAIRN, cluster_port_args, port_run_base, test_dir};

/// A quorum of member processes, each with its own folder and log. Dropping it kills them all.
struct Quorum {
    _dir: tempfile::TempDir,
    root: PathBuf,
    members: BTreeMap<u64, Member>,
    initial: String,
    /// Extra arguments for every member.
    extra: Vec<String>,
}

struct Member {
    address: String,
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Quorum {
    fn start(tag: &str, size: u64) -> Quorum {
        Quorum::start_with(tag, size, &[])
    }

    fn start_with(tag: &str, size: u64, extra: &[&str]) -> Quorum {
        let dir = test_dir(tag);
        let root = dir.path().to_owned();
        // Ports below the ephemeral range: a restarted member must find its port free.
        let base = port_run_base() + 6_100;
        let addresses: BTreeMap<u64, String> =
            (1..=size).map(|id| (id, format!("127.0.0.1:{}", base + id as u16))).collect();
        let initial: Vec<String> = addresses.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let mut quorum = Quorum {
            _dir: dir,
            root,
            members: BTreeMap::new(),
            initial: initial.join(","),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for (id, address) in addresses {
            quorum.add_process(id, &address, true);
        }
        quorum
    }

    /// Starts member `id`; `initial` gives it the initial membership (a member joining later gets
    /// none and is added with add-member).
    fn add_process(&mut self, id: u64, address: &str, initial: bool) {
        let data_dir = self.root.join(format!("m{id}"));
        let log = self.root.join(format!("m{id}.log"));
        let mut member = Member { address: address.to_owned(), child: None, data_dir, log };
        member.child = Some(spawn_member(id, &member, initial.then_some(self.initial.as_str()), &self.extra));
        self.members.insert(id, member);
    }

    fn addresses(&self) -> Vec<String> {
        self.members.values().map(|m| m.address.clone()).collect()
    }

    fn address(&self, id: u64) -> String {
        self.members[&id].address.clone()
    }

    fn pid(&self, id: u64) -> i32 {
        self.members[&id].child.as_ref().expect("member is running").id() as i32
    }

    fn kill9(&mut self, id: u64) {
        let member = self.members.get_mut(&id).expect("known member");
        if let Some(mut child) = member.child.take() {
            child.kill().expect("kill -9 a member");
            child.wait().expect("reap a member");
        }
    }

    fn signal(&self, id: u64, signal: i32) {
        // SAFETY: kill(2) on a child process of this test.
        let result = unsafe { libc::kill(self.pid(id), signal) };
        assert_eq!(result, 0, "signal {signal} to member {id}: {}", std::io::Error::last_os_error());
    }

    fn restart(&mut self, id: u64) {
        self.kill9(id);
        let initial = self.initial.clone();
        let extra = self.extra.clone();
        let member = self.members.get_mut(&id).expect("known member");
        member.child = Some(spawn_member(id, member, Some(&initial), &extra));
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (id, m) in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- member {id} ({}) ---\n", m.address));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until the given members agree on one leader among them; returns it.
    async fn wait_for_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = BTreeSet::new();
            let mut answered = 0;
            for id in among {
                if let Ok(s) = member_status(&self.address(*id), Duration::from_millis(500)).await {
                    answered += 1;
                    if let Some(l) = s.leader {
                        leaders.insert(l);
                    }
                }
            }
            if answered == among.len() && leaders.len() == 1 {
                let leader = *leaders.iter().next().expect("one leader");
                if among.contains(&leader) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn client(&self, session: Option<Duration>) -> CoordClient {
        self.client_to(&self.addresses(), session).await
    }

    async fn client_to(&self, addresses: &[String], session: Option<Duration>) -> CoordClient {
        let options = ClientOptions { session_timeout: session, request_timeout: Duration::from_secs(10) };
        CoordClient::connect(addresses, options)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.logs()))
    }
}

impl Drop for Quorum {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            // A frozen member must be thawed to die promptly.
            if let Some(child) = &self.members[&id].child {
                // SAFETY: kill(2) on a child process of this test.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            }
            self.kill9(id);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn spawn_member(id: u64, member: &Member, initial: Option<&str>, extra: &[String]) -> Child {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(&member.log).expect("open member log");
    let mut command = Command::new(CAIRN);
    command
        .args(["coord", "serve", "--id", &id.to_string(), "--listen", &member.address])
        .arg("--data-dir")
        .arg(&member.data_dir)
        .env("CAIRN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    if let Some(initial) = initial {
        command.args(["--members", initial]);
    }
    command.args(extra);
    command.spawn().expect("start cairn coord serve")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

#[test]
fn leader_kill9_loses_no_acknowledged_write() {
    runtime().block_on(async {
        let mut quorum = Quorum::start("coord-leader-kill", 3);
        let first = quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        client.create("/acked", b"", CreateMode::Persistent).await.expect("create /acked");

        // Four writers create numbered znodes; only acknowledged ones are recorded.
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u32 {
            let client = quorum.client(None).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut failures = 0u32;
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("/acked/w{w}-{i}");
                    match client.create(&path, format!("{w}:{i}").as_bytes(), CreateMode::Persistent).await {
                        Ok(_) => acked.push(path),
                        Err(CoordError::NodeExists { .. }) => acked.push(path),
                        Err(_) => failures += 1,
                    }
                    i += 1;
                }
                (acked, failures)
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed_at = Instant::now();
        quorum.kill9(first);
        let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != first).collect();
        let second = quorum.wait_for_leader(&survivors, Duration::from_secs(10)).await;
        let takeover = killed_at.elapsed();
        assert_ne!(second, first, "the killed leader cannot lead");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        for writer in writers {
            let (a, _failures) = writer.await.expect("writer task");
            acked.extend(a);
        }
        assert!(acked.len() > 20, "too few writes acknowledged: {}", acked.len());
        eprintln!("{} writes acknowledged; new leader {second} after {takeover:?}", acked.len());

        // The old leader comes back and catches up; every member holds every acknowledged write.
        quorum.restart(first);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let expected: BTreeSet<String> =
            acked.iter().map(|p| p.trim_start_matches("/acked/").to_owned()).collect();
        for id in [1, 2, 3] {
            let only = quorum.client_to(&[quorum.address(id)], None).await;
            only.sync().await.expect("sync");
            let children: BTreeSet<String> =
                only.children("/acked").await.expect("children").into_iter().collect();
            let missing: Vec<&String> = expected.difference(&children).collect();
            assert!(missing.is_empty(), "member {id} lost acknowledged writes: {missing:?}");
        }
    });
}

#[test]
fn ephemeral_survives_a_leader_change_and_goes_with_its_holder() {
    runtime().block_on(async {
        let mut quorum = Quorum::start("coord-ephemeral", 3);
        let leader = quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        // The holder is a separate process: `cairn coord create --ephemeral` keeps its session.
        let holder_log = quorum.root.join("holder.log");
        let mut holder = Command::new(CAIRN)
            .args(["coord", "--coord", &quorum.addresses().join(","), "create", "/holder", "me"])
            .args(["--ephemeral", "--session-timeout-ms", "3000"])
            .stdout(std::fs::File::create(&holder_log).expect("holder log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start the holder");
        let watcher = quorum.client(Some(Duration::from_secs(10))).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while watcher.exists("/holder").await.expect("exists").is_none() {
            assert!(Instant::now() < deadline, "the holder never created /holder");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let owner = watcher.exists("/holder").await.expect("exists").expect("exists").ephemeral_owner;

        // A leader change is not a session expiry.
        quorum.kill9(leader);
        let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        quorum.wait_for_leader(&survivors, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(7)).await;
        let stat = watcher.exists("/holder").await.expect("exists after leader change");
        assert_eq!(stat.map(|s| s.ephemeral_owner), Some(owner), "the ephemeral died with the leader");
        quorum.restart(leader);

        // Killing the holder ends its session after the timeout, not before.
        let (_, watch) = watcher.exists_watch("/holder").await.expect("watch /holder");
        holder.kill().expect("kill -9 the holder");
        holder.wait().expect("reap the holder");
        let killed = Instant::now();
        let event = tokio::time::timeout(Duration::from_secs(15), watch.wait())
            .await
            .expect("the ephemeral outlived its session by far")
            .expect("watch");
        let gone_after = killed.elapsed();
        assert_eq!(event.event, EventType::Deleted);
        assert!(watcher.exists("/holder").await.expect("exists").is_none());
        // The last ping may have been up to a third of the timeout before the kill.
        assert!(gone_after >= Duration::from_millis(1800), "expired too early: {gone_after:?}");
        eprintln!("ephemeral deleted {gone_after:?} after its holder was killed (timeout 3 s)");
    });
}

#[test]
fn watches_fire_exactly_once_per_change_even_across_a_reconnect() {
    runtime().block_on(async {
        let mut quorum = Quorum::start("coord-watch", 3);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let writer = quorum.client(None).await;
        writer.create("/w", b"0", CreateMode::Persistent).await.expect("create /w");

        // The CLI watcher re-arms after each event: N spaced changes give exactly N lines.
        let watch_out = quorum.root.join("watch.out");
        let mut cli = Command::new(CAIRN)
            .args(["coord", "--coord", &quorum.addresses().join(","), "watch", "/w", "--count", "4"])
            .stdout(std::fs::File::create(&watch_out).expect("watch out"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start cairn coord watch");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&watch_out).unwrap_or_default().contains("watching") {
            assert!(Instant::now() < deadline, "cairn coord watch did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 1..=4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            writer.set("/w", format!("{i}").as_bytes(), None).await.expect("set /w");
        }
        let status = tokio::task::spawn_blocking(move || cli.wait()).await.expect("join").expect("wait");
        assert!(status.success(), "cairn coord watch failed: {status}");
        let out = std::fs::read_to_string(&watch_out).expect("read watch output");
        let events: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
        assert_eq!(events.len(), 4, "expected 4 events:\n{out}");
        assert!(events.iter().all(|e| e.contains("DataChanged")), "{out}");

        // One-shot: two changes, one event; and the watch moves with the client to another member.
        let only_first = quorum.client_to(&quorum.addresses(), Some(Duration::from_secs(10))).await;
        let (_, _, data_watch) = only_first.get_watch("/w").await.expect("get_watch");
        let (_, child_watch) = only_first.children_watch("/w").await.expect("children_watch");
        let connected = only_first.connected_to().expect("connected");
        let id =
            quorum.members.iter().find(|(_, m)| m.address == connected).map(|(id, _)| *id).expect("member");
        quorum.kill9(id);
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|x| *x != id).collect();
        quorum.wait_for_leader(&others, Duration::from_secs(10)).await;
        // Give the client time to notice and re-register elsewhere.
        only_first.exists("/").await.expect("reconnect");
        let writer =
            quorum.client_to(&others.iter().map(|i| quorum.address(*i)).collect::<Vec<_>>(), None).await;
        writer.set("/w", b"a", None).await.expect("set");
        writer.set("/w", b"b", None).await.expect("set");
        writer.create("/w/c", b"", CreateMode::Persistent).await.expect("create child");
        let event = tokio::time::timeout(Duration::from_secs(10), data_watch.wait())
            .await
            .expect("data watch")
            .expect("ok");
        assert_eq!(event.event, EventType::DataChanged);
        let event = tokio::time::timeout(Duration::from_secs(10), child_watch.wait())
            .await
            .expect("child watch")
            .expect("ok");
        assert_eq!(event.event, EventType::ChildrenChanged);
        // A watch set once does not fire twice: a new one sees only the next change.
        let (_, _, again) = only_first.get_watch("/w").await.expect("get_watch");
        let early = tokio::time::timeout(Duration::from_millis(500), again.wait()).await;
        assert!(early.is_err(), "a re-armed watch fired without a change: {early:?}");
    });
}

#[test]
fn a_frozen_minority_does_not_stop_commits_but_a_frozen_majority_does() {
    runtime().block_on(async {
        let quorum = Quorum::start("coord-freeze", 3);
        let leader = quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        let client = quorum.client_to(&[quorum.address(leader)], None).await;
        client.create("/f", b"", CreateMode::Persistent).await.expect("create");

        quorum.signal(followers[0], libc::SIGSTOP);
        for i in 0..20 {
            client.set("/f", format!("{i}").as_bytes(), None).await.expect("write with a frozen minority");
        }
        quorum.signal(followers[0], libc::SIGCONT);

        let before = member_status(&quorum.address(leader), Duration::from_secs(2)).await.expect("status");
        quorum.signal(followers[0], libc::SIGSTOP);
        quorum.signal(followers[1], libc::SIGSTOP);
        let short = CoordClient::connect(
            &[quorum.address(leader)],
            ClientOptions { session_timeout: None, request_timeout: Duration::from_secs(3) },
        )
        .await
        .expect("connect");
        let result = short.set("/f", b"must-not-commit", None).await;
        assert!(result.is_err(), "a write committed without a majority: {result:?}");
        let during = member_status(&quorum.address(leader), Duration::from_secs(2)).await.expect("status");
        assert_eq!(during.last_applied, before.last_applied, "the leader applied entries without a majority");
        quorum.signal(followers[0], libc::SIGCONT);
        quorum.signal(followers[1], libc::SIGCONT);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        client.set("/f", b"after", None).await.expect("writes resume once the majority is back");
    });
}

#[test]
fn restarting_every_member_keeps_the_tree() {
    runtime().block_on(async {
        let mut quorum = Quorum::start("coord-restart-all", 3);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        client.create("/t", b"root", CreateMode::Persistent).await.expect("create");
        let mut expected = BTreeMap::new();
        for i in 0..200u32 {
            let (path, _) = client
                .create("/t/n-", format!("value {i}").as_bytes(), CreateMode::PersistentSequential)
                .await
                .expect("create");
            expected.insert(path, format!("value {i}").into_bytes());
        }
        client.set("/t", b"root v1", Some(0)).await.expect("set");
        drop(client);
        for id in [1, 2, 3] {
            quorum.kill9(id);
        }
        for id in [1, 2, 3] {
            quorum.restart(id);
        }
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        client.sync().await.expect("sync");
        let (data, stat) = client.get("/t").await.expect("get /t");
        assert_eq!(data, b"root v1");
        assert_eq!(stat.version, 1);
        let children = client.children("/t").await.expect("children");
        assert_eq!(children.len(), expected.len());
        for (path, value) in &expected {
            assert_eq!(&client.get(path).await.expect("get").0, value, "{path}");
        }
        client.create("/t/after", b"", CreateMode::Persistent).await.expect("writes after restart");
    });
}

#[test]
fn a_member_far_behind_catches_up_from_a_snapshot() {
    runtime().block_on(async {
        // Snapshots every 100 entries, keeping 25: a member down for 600 entries finds the log it
        // needs purged, and must install a snapshot.
        let mut quorum = Quorum::start_with("coord-snapshot", 3, &["--snapshot-every", "100"]);
        let leader = quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let lagging = if leader == 3 { 2 } else { 3 };
        quorum.kill9(lagging);
        let up: Vec<String> =
            [1, 2, 3].into_iter().filter(|id| *id != lagging).map(|id| quorum.address(id)).collect();
        let client = quorum.client_to(&up, None).await;
        client.create("/s", b"", CreateMode::Persistent).await.expect("create");
        for i in 0..600u32 {
            client
                .create(&format!("/s/n{i}"), format!("{i}").as_bytes(), CreateMode::Persistent)
                .await
                .expect("create");
        }
        let log = std::fs::read_to_string(&quorum.members[&leader].log).unwrap_or_default();
        assert!(log.contains("snapshot"), "the leader built no snapshot:\n{}", quorum.logs());
        quorum.restart(lagging);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let only = quorum.client_to(&[quorum.address(lagging)], None).await;
        only.sync().await.expect("sync on the lagging member");
        assert_eq!(only.children("/s").await.expect("children").len(), 600);
        assert_eq!(only.get("/s/n599").await.expect("get").0, b"599");
        // The status reports Raft's applied index, which may trail the reads above by a few
        // entries for a moment: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status =
                member_status(&quorum.address(lagging), Duration::from_secs(2)).await.expect("status");
            if status.last_applied >= Some(601) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the member did not catch up: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn concurrent_compare_and_set_reaches_the_exact_total() {
    runtime().block_on(async {
        let quorum = Quorum::start("coord-cas", 3);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        client.create("/counter", b"0", CreateMode::Persistent).await.expect("create");
        const CLIENTS: u64 = 8;
        const INCREMENTS: u64 = 25;
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            // Spread the clients over the members: reads on followers, writes forwarded.
            let mut addresses = quorum.addresses();
            let n = addresses.len();
            addresses.rotate_left(c as usize % n);
            let client = quorum.client_to(&addresses, None).await;
            tasks.push(tokio::spawn(async move {
                // A new client may be connected to a follower that has not applied the create
                // yet (as in ZooKeeper): sync first.
                client.sync().await.expect("sync");
                let mut conflicts = 0u64;
                for _ in 0..INCREMENTS {
                    loop {
                        let (data, stat) = client.get("/counter").await.expect("get");
                        let value: u64 = String::from_utf8(data).expect("utf8").parse().expect("number");
                        match client
                            .set("/counter", (value + 1).to_string().as_bytes(), Some(stat.version))
                            .await
                        {
                            Ok(_) => break,
                            Err(CoordError::BadVersion { .. }) => conflicts += 1,
                            Err(e) => panic!("set: {e}"),
                        }
                    }
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for task in tasks {
            conflicts += task.await.expect("task");
        }
        client.sync().await.expect("sync");
        let (data, stat) = client.get("/counter").await.expect("get");
        assert_eq!(String::from_utf8(data).expect("utf8"), (CLIENTS * INCREMENTS).to_string());
        assert_eq!(stat.version as u64, CLIENTS * INCREMENTS);
        eprintln!("{} increments, {conflicts} version conflicts retried", CLIENTS * INCREMENTS);
    });
}

#[test]
fn members_are_added_and_removed_at_runtime() {
    runtime().block_on(async {
        let mut quorum = Quorum::start("coord-membership", 3);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        for i in 0..50 {
            client.create(&format!("/m{i}"), b"x", CreateMode::Persistent).await.expect("create");
        }
        let address = format!("127.0.0.1:{}", port_run_base() + 6_100 + 4);
        quorum.add_process(4, &address, false);
        // Add it only once it serves on its port (so no other process answers at that address).
        let deadline = Instant::now() + Duration::from_secs(20);
        while member_status(&address, Duration::from_millis(500)).await.map(|s| s.id) != Ok(4) {
            assert!(Instant::now() < deadline, "member 4 did not start\n{}", quorum.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = Command::new(CAIRN)
            .args(["coord", "--coord", &quorum.addresses()[..3].join(","), "add-member", "4", &address])
            .output()
            .expect("run add-member");
        assert!(
            out.status.success(),
            "add-member: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            quorum.logs()
        );
        // Committed on the quorum as soon as add-member returns; the new member learns it shortly.
        let leader = quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await;
        let status = member_status(&quorum.address(leader), Duration::from_secs(2)).await.expect("status");
        let voters: Vec<u64> = status.voters.iter().map(|(id, _)| *id).collect();
        assert_eq!(voters, vec![1, 2, 3, 4]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = member_status(&address, Duration::from_secs(2)).await;
            let voters: Option<Vec<u64>> =
                status.as_ref().ok().map(|s| s.voters.iter().map(|(id, _)| *id).collect());
            if voters == Some(vec![1, 2, 3, 4]) {
                break;
            }
            assert!(Instant::now() < deadline, "member 4 never learnt it is a voter: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The new member caught up and serves reads.
        let only_new = quorum.client_to(std::slice::from_ref(&address), None).await;
        only_new.sync().await.expect("sync on the new member");
        assert_eq!(only_new.get("/m49").await.expect("get on the new member").0, b"x");

        let out = Command::new(CAIRN)
            .args(["coord", "--coord", &quorum.addresses()[..3].join(","), "remove-member", "4"])
            .output()
            .expect("run remove-member");
        assert!(out.status.success(), "remove-member: {}", String::from_utf8_lossy(&out.stderr));
        let leader = quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await;
        let status = member_status(&quorum.address(leader), Duration::from_secs(2)).await.expect("status");
        let voters: Vec<u64> = status.voters.iter().map(|(id, _)| *id).collect();
        assert_eq!(voters, vec![1, 2, 3]);
        client.create("/after-removal", b"", CreateMode::Persistent).await.expect("writes go on");
    });
}

/// Starts member 1 on its data and expects it to exit with an error; returns its stderr.
async fn start_expecting_refusal(member: &Member, initial: &str) -> String {
    let mut child = Command::new(CAIRN)
        .args(["coord", "serve", "--id", "1", "--listen", &member.address, "--members", initial])
        .arg("--data-dir")
        .arg(&member.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cairn coord serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            child.kill().expect("kill");
            let out = child.wait_with_output().expect("output");
            panic!(
                "a member with a damaged store kept running: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a member with a damaged store started: {stderr}");
    stderr
}

/// Every file below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the store folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Flips one byte of every occurrence of `marker` in `path`; returns how many were found.
fn corrupt_occurrences(path: &Path, marker: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).expect("read the store file");
    let mut found = 0;
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i + marker.len() / 2] ^= 0x20;
            found += 1;
            i += marker.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(path, &bytes).expect("write the store file");
    found
}

#[test]
fn a_member_with_a_corrupted_log_refuses_to_start_and_keeps_refusing() {
    runtime().block_on(async {
        let mut quorum = Quorum::start("coord-bitflip", 1);
        quorum.wait_for_leader(&[1], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        let marker = b"CORRUPTION-TARGET-0123456789";
        client.create("/victim", marker, CreateMode::Persistent).await.expect("create");
        drop(client);
        quorum.kill9(1);
        // The value sits in the database's journal (or a table file): flip it wherever it is.
        let store = quorum.members[&1].data_dir.join("raft");
        let mut found = 0;
        for file in files_under(&store) {
            found += corrupt_occurrences(&file, marker);
        }
        assert!(found > 0, "the marker is not under {}", store.display());

        let member = &quorum.members[&1];
        for attempt in 1..=2 {
            // The second start must refuse too: the loss is not forgotten.
            let stderr = start_expecting_refusal(member, &quorum.initial).await;
            assert!(
                stderr.contains("damaged") && stderr.contains("refusing to start"),
                "attempt {attempt}: unclear message: {stderr}"
            );
            assert!(
                stderr.contains(&store.display().to_string()),
                "attempt {attempt}: the message does not name the store: {stderr}"
            );
            eprintln!("refused: {stderr}");
        }
    });
}

#[test]
fn a_lock_epoch_fences_a_deposed_holder() {
    runtime().block_on(async {
        let quorum = Quorum::start("coord-fence", 3);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let a = quorum.client(Some(Duration::from_secs(2))).await;
        let b = quorum.client(Some(Duration::from_secs(10))).await;
        let fence = Fence::new();

        let held_a = acquire(&a, "/master", b"a").await.expect("a takes the lock");
        assert!(try_acquire(&b, "/master", b"b").await.expect("try").is_none(), "two holders");
        fence.admit(held_a.epoch).expect("a's orders are admitted");

        // a loses its session (as if paused past its timeout); b takes over with a larger epoch.
        let b_waits = tokio::spawn(async move {
            let held = acquire(&b, "/master", b"b").await.expect("b takes the lock");
            (b, held)
        });
        a.close().await.expect("close a's session");
        let (_b, held_b) =
            tokio::time::timeout(Duration::from_secs(10), b_waits).await.expect("b waited").expect("b");
        assert!(held_b.epoch > held_a.epoch, "epochs must grow: {} then {}", held_a.epoch, held_b.epoch);
        fence.admit(held_b.epoch).expect("b's orders are admitted");
        let stale = fence.admit(held_a.epoch);
        assert!(stale.is_err(), "the deposed holder's order was admitted");
    });
}

#[test]
fn a_multi_applies_all_or_nothing() {
    runtime().block_on(async {
        let quorum = Quorum::start("coord-multi", 3);
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let client = quorum.client(None).await;
        client.create("/cfg", b"v0", CreateMode::Persistent).await.expect("create");
        use cairn_coord::api::Op;
        // The check fails (version 0 is current, 5 is asked): neither the create nor the set happens.
        let failed = client
            .multi(vec![
                Op::Create { path: "/cfg/a".into(), data: b"a".to_vec(), mode: CreateMode::Persistent },
                Op::SetData { path: "/cfg".into(), data: b"v1".to_vec(), version: Some(0) },
                Op::Check { path: "/cfg".into(), version: 5 },
            ])
            .await;
        match failed {
            Err(CoordError::MultiFailed { index: 2, error }) => {
                assert!(matches!(*error, CoordError::BadVersion { .. }), "{error:?}")
            }
            other => panic!("expected the third op to fail: {other:?}"),
        }
        assert!(client.exists("/cfg/a").await.expect("exists").is_none(), "a failed multi left a create");
        assert_eq!(client.get("/cfg").await.expect("get").0, b"v0");
        let results = client
            .multi(vec![
                Op::Create { path: "/cfg/a".into(), data: b"a".to_vec(), mode: CreateMode::Persistent },
                Op::SetData { path: "/cfg".into(), data: b"v1".to_vec(), version: Some(0) },
                Op::Check { path: "/cfg".into(), version: 1 },
            ])
            .await
            .expect("multi");
        assert_eq!(results.len(), 3);
        // Every member applied it: read from each.
        for id in [1, 2, 3] {
            let only = quorum.client_to(&[quorum.address(id)], None).await;
            only.sync().await.expect("sync");
            assert_eq!(only.get("/cfg").await.expect("get").0, b"v1", "member {id}");
            assert_eq!(only.get("/cfg/a").await.expect("get").0, b"a", "member {id}");
        }
        // Clear errors for bad input.
        assert!(matches!(client.get("/nope").await, Err(CoordError::NoNode { .. })));
        assert!(matches!(client.get("no-slash").await, Err(CoordError::BadPath { .. })));
        assert!(matches!(client.delete("/cfg", Some(7)).await, Err(CoordError::BadVersion { .. })));
        assert!(matches!(
            client.create("/e", b"", CreateMode::Ephemeral).await,
            Err(CoordError::EphemeralWithoutSession)
        ));
    });
}

#[test]
fn cairn_up_nodes_3_runs_a_three_member_quorum() {
    let dir = test_dir("coord-up3");
    let data_dir = dir.path().join("data");
    // Runs of consecutive ports for the members and the other services; retry on a clash.
    for attempt in 0..5 {
        let mut up = Command::new(CAIRN)
            .args(["up", "--no-portmap", "--nodes", "3"])
            .args(cluster_port_args(true))
            .arg("--data-dir")
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cairn up");
        let stdout = up.stdout.take().expect("stdout");
        let ready = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.starts_with("Cairn is ready"))
        });
        let ready = ready.join().expect("reader");
        let Some(ready) = ready else {
            let out = up.wait_with_output().expect("output");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("in use") && attempt < 4 {
                continue;
            }
            panic!("cairn up --nodes 3 did not become ready: {stderr}");
        };
        assert!(ready.contains("coord=") && ready.contains("coord_leader="), "{ready}");
        let cluster: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(data_dir.join("cluster.json")).expect("cluster.json"),
        )
        .expect("cluster.json is JSON");
        let members = cluster["coord"].as_array().expect("coord list");
        assert_eq!(members.len(), 3, "{cluster}");
        let addresses: Vec<String> =
            members.iter().map(|m| m["address"].as_str().expect("address").to_owned()).collect();
        let out = Command::new(CAIRN)
            .args(["coord", "--coord", &addresses.join(","), "status", "--json"])
            .output()
            .expect("cairn coord status");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
        let listed = status["members"].as_array().expect("members");
        assert_eq!(listed.len(), 3, "{status}");
        assert!(listed.iter().all(|m| m["reachable"] == true), "{status}");
        assert_eq!(listed.iter().filter(|m| m["state"] == "Leader").count(), 1, "{status}");
        assert_eq!(listed[0]["voters"].as_array().map(|v| v.len()), Some(3), "{status}");
        // SIGTERM stops the node and its members.
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
        let status = up.wait().expect("wait");
        assert!(status.success(), "cairn up did not stop cleanly: {status}");
        for m in members {
            let pid = m["pid"].as_i64().expect("pid") as i32;
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 {
                assert!(Instant::now() < deadline, "coord member {pid} outlived cairn up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        return;
    }
}

#[test]
fn a_member_cut_off_from_the_leader_stops_vouching_for_sessions() {
    use cairn_coord::proto::{Client as Rpc, Request, Response};
    runtime().block_on(async {
        let quorum = Quorum::start("coord-vouch", 3);
        let leader = quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        let (lonely, frozen) = (others[0], others[1]);
        let client = quorum.client_to(&[quorum.address(lonely)], Some(Duration::from_secs(10))).await;
        let session = client.session();
        let rpc: Rpc =
            Rpc::connect_tcp(quorum.address(lonely), Duration::from_secs(2), None).await.expect("connect");
        let ping = || rpc.call(Request::Ping { session }, Duration::from_secs(10));
        assert!(matches!(ping().await, Ok(Response::Pong(Ok(())))), "a healthy member refused a ping");

        // The leader and the other follower freeze: `lonely` hears from no leader any more.
        quorum.signal(leader, libc::SIGSTOP);
        quorum.signal(frozen, libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let answer = ping().await;
        quorum.signal(leader, libc::SIGCONT);
        quorum.signal(frozen, libc::SIGCONT);
        assert!(
            matches!(answer, Ok(Response::Pong(Err(CoordError::Unavailable { .. })))),
            "a member cut off from the leader still vouched for a session: {answer:?}"
        );
        // Back in touch: it vouches again, and the session survived.
        quorum.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ping().await {
                Ok(Response::Pong(Ok(()))) => break,
                other => assert!(Instant::now() < deadline, "no vouching after the thaw: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
