//! The Warden on a real 3-node cluster (`cairn up --nodes 3`: every node's services are child
//! processes of its Warden): start order, restarts after `kill -9`, registration in coord,
//! operators' start/stop/restart, live changes to `warden.conf`, pluggable services (a
//! singleton failed over to another node, never two at once), and a memory limit enforced.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::support::{CAIRN, test_dir};

/// Longest wait for a service to get where a test expects it.
const SETTLE: Duration = Duration::from_secs(40);

fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(CAIRN).args(args).arg("--data-dir").arg(data).output().expect("run cairn")
}

fn cli_ok(data: &Path, args: &[&str]) -> String {
    let out = cli(data, args);
    assert!(out.status.success(), "cairn {args:?}: {}", crate::support::describe_output(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cairn service list --json`.
fn services(data: &Path) -> serde_json::Value {
    serde_json::from_str(&cli_ok(data, &["service", "list", "--json"])).expect("service list is JSON")
}

/// The status of `service` on `node`, if listed.
fn status(list: &serde_json::Value, node: &str, service: &str) -> Option<serde_json::Value> {
    let node = list.as_array()?.iter().find(|n| n["node"] == node)?;
    node["services"].as_array()?.iter().find(|s| s["name"] == service).cloned()
}

/// Waits until `check` holds for the service list; returns that list.
fn wait_list(data: &Path, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let list = services(data);
        if check(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: not within {SETTLE:?}:\n{}", explain(data, &list));
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A failure's evidence, shortest first (CI shows only the start of a long output): one line
/// per listed service, then the end of each node's log (its Warden's and its services' lines).
fn explain(data: &Path, list: &serde_json::Value) -> String {
    let mut text = String::new();
    for node in list.as_array().into_iter().flatten() {
        for service in node["services"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "{} {} {} pid={} restarts={} {}\n",
                node["node"],
                service["name"],
                service["state"],
                service["pid"],
                service["restarts"],
                service["detail"]
            ));
        }
    }
    for entry in std::fs::read_dir(data.join("nodes")).into_iter().flatten().flatten() {
        let log = std::fs::read_to_string(entry.path().join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        text.push_str(&format!("--- {} (last 25 lines)\n", entry.path().join("node.log").display()));
        for line in &lines[lines.len().saturating_sub(25)..] {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn running(list: &serde_json::Value, node: &str, service: &str) -> bool {
    status(list, node, service).is_some_and(|s| s["state"] == "running")
}

fn pid_of(list: &serde_json::Value, node: &str, service: &str) -> i32 {
    status(list, node, service).and_then(|s| s["pid"].as_i64()).expect("a pid") as i32
}

fn alive(pid: i32) -> bool {
    // A zombie (not yet reaped) counts as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

fn conf_dir(data: &Path, node: &str) -> PathBuf {
    data.join("nodes").join(node).join("conf")
}

fn coord_members(cluster: &Cluster) -> String {
    cluster.cluster["coord"]
        .as_array()
        .expect("coord in cluster.json")
        .iter()
        .map(|m| m["address"].as_str().expect("address").to_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// The data of a znode, or None if it does not exist.
fn znode(members: &str, path: &str) -> Option<String> {
    let out =
        Command::new(CAIRN).args(["coord", "--coord", members, "get", path]).output().expect("cairn coord");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn children(members: &str, path: &str) -> Vec<String> {
    let out =
        Command::new(CAIRN).args(["coord", "--coord", members, "ls", path]).output().expect("cairn coord");
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

fn alarms(data: &Path) -> serde_json::Value {
    serde_json::from_str(&cli_ok(data, &["alarm", "list", "--json"])).expect("alarm list is JSON")
}

fn has_alarm(list: &serde_json::Value, kind: &str, subject: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|alarm| alarm["kind"] == kind && alarm["subject"] == subject))
}

fn wait_alarm(data: &Path, kind: &str, subject: &str, raised: bool) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let list = alarms(data);
        if has_alarm(&list, kind, subject) == raised {
            return;
        }
        assert!(Instant::now() < deadline, "alarm {kind} {subject} raised={raised} not seen: {list:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Writes a file the Warden watches; the mtime granularity of some file systems is coarse, so
/// the size changes too when the content does.
fn write_conf(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("conf.d");
    std::fs::write(path, text).expect("write a configuration file");
}

#[test]
fn services_start_in_order_are_restarted_registered_and_obey_operators_and_live_configuration() {
    let dir = test_dir("warden-basics");
    let data = dir.path().join("data");
    let cluster = Cluster::start(&data);
    let members = coord_members(&cluster);
    let nodes = ["n1", "n2", "n3"];
    let builtins = ["coord", "cldb", "fileserver", "nfs", "console"];
    let list = wait_list(&data, "every service running", |list| {
        nodes.iter().all(|node| builtins.iter().all(|service| running(list, node, service)))
    });

    // Dependency order: a service starts only once its dependencies run somewhere (registered
    // in coord, which needs the quorum up first: hundreds of milliseconds).
    let first = |service: &str| {
        nodes
            .iter()
            .filter_map(|node| status(&list, node, service).and_then(|s| s["started_ms"].as_u64()))
            .min()
            .expect("a start time")
    };
    for (service, dependency) in
        [("cldb", "coord"), ("fileserver", "coord"), ("nfs", "cldb"), ("nfs", "fileserver")]
    {
        assert!(
            first(service) > first(dependency) + 50,
            "{service} started at {} before its dependency {dependency} ran (at {})",
            first(service),
            first(dependency)
        );
    }
    // Every running service is registered at /services/<service>/<node>.
    for service in builtins {
        let mut registered = children(&members, &format!("/services/{service}"));
        registered.sort();
        assert_eq!(registered, nodes, "/services/{service}");
    }

    // kill -9 of a service: the Warden starts it again and registers the new process.
    let old = pid_of(&list, "n2", "fileserver");
    // SAFETY: kill(2) of a process of this test's cluster.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
    let list = wait_list(&data, "n2's file server restarted", |list| {
        running(list, "n2", "fileserver")
            && pid_of(list, "n2", "fileserver") != old
            && status(list, "n2", "fileserver").is_some_and(|s| s["restarts"].as_u64() >= Some(1))
    });
    let new = pid_of(&list, "n2", "fileserver");
    let deadline = Instant::now() + SETTLE;
    loop {
        let record = znode(&members, "/services/fileserver/n2").unwrap_or_default();
        if record.contains(&format!("\"pid\":{new}")) {
            break;
        }
        assert!(Instant::now() < deadline, "/services/fileserver/n2 does not name pid {new}: {record}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Operators: stop keeps it stopped (process gone, unregistered), start runs it again,
    // restart gives a new process.
    let console = pid_of(&list, "n3", "console");
    let out = cli_ok(&data, &["service", "stop", "--node", "n3", "--service", "console"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(!alive(console), "the console process {console} survived its stop");
    assert_eq!(znode(&members, "/services/console/n3"), None);
    std::thread::sleep(Duration::from_secs(2));
    let list = services(&data);
    assert_eq!(status(&list, "n3", "console").expect("listed")["state"], "stopped");
    cli_ok(&data, &["service", "start", "--node", "n3", "--service", "console"]);
    let nfs = pid_of(&list, "n1", "nfs");
    cli_ok(&data, &["service", "restart", "--node", "n1", "--service", "nfs"]);
    let list = services(&data);
    assert!(running(&list, "n3", "console"));
    assert!(running(&list, "n1", "nfs") && pid_of(&list, "n1", "nfs") != nfs);
    assert!(!alive(nfs), "the old NFS gateway {nfs} survived its restart");
    // Bad requests are refused with a reason.
    let out = cli(&data, &["service", "stop", "--node", "n9", "--service", "nfs"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("n9"));
    let out = cli(&data, &["service", "stop", "--node", "n1", "--service", "nope"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nope"));

    // warden.conf changed live: the console removed from n3, then back.
    let warden_conf = conf_dir(&data, "n3").join("warden.conf");
    let original = std::fs::read_to_string(&warden_conf).expect("warden.conf");
    let console = pid_of(&list, "n3", "console");
    write_conf(&warden_conf, &original.replace(";console:all:cldb", ""));
    wait_list(&data, "the console gone from n3", |list| status(list, "n3", "console").is_none());
    assert!(!alive(console), "the console process {console} survived its removal");
    write_conf(&warden_conf, &original);
    wait_list(&data, "the console back on n3", |list| running(list, "n3", "console"));

    // A malformed warden.conf is refused with an alarm; the services keep running as they were.
    let before = services(&data);
    write_conf(&warden_conf, &format!("{original}\nservices.retries=many\n"));
    wait_alarm(&data, "ConfigRejected", "n3/warden.conf", true);
    let after = services(&data);
    for service in builtins {
        assert_eq!(pid_of(&after, "n3", service), pid_of(&before, "n3", service), "{service} on n3 changed");
    }
    write_conf(&warden_conf, &original);
    wait_alarm(&data, "ConfigRejected", "n3/warden.conf", false);
}

/// The instances of a program: processes whose command line names `marker`, less those whose
/// parent does too. A shell script forks before it execs each command it runs (the script's
/// `sleep`), and for an instant the fork shows the script's command line: that is not a second
/// instance.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(marker) && alive(pid) {
            found.push((pid, parent_of(pid)));
        }
    }
    let pids: Vec<i32> = found.iter().map(|(pid, _)| *pid).collect();
    found
        .into_iter()
        .filter(|(_, parent)| !parent.is_some_and(|p| pids.contains(&p)))
        .map(|(pid, _)| pid)
        .collect()
}

/// The parent of a process, from `/proc/<pid>/stat` (the field after the command's parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_pluggable_singleton_is_restarted_then_failed_over_and_never_runs_twice() {
    let dir = test_dir("warden-singleton");
    let data = dir.path().join("data");
    let cluster = Cluster::start(&data);
    let members = coord_members(&cluster);
    // A third-party program: a script that only sleeps. Its path marks its processes.
    let script = dir.path().join("singleton-daemon.sh");
    std::fs::write(&script, "while true; do sleep 1; done\n").expect("script");
    let marker = script.to_str().expect("path").to_owned();
    let plugin = format!(
        "services=singleton:1:cldb\nservice.command=exec /bin/sh {marker}\nservice.env.PURPOSE=test\n"
    );
    for node in ["n1", "n2", "n3"] {
        write_conf(&conf_dir(&data, node).join("conf.d").join("warden.singleton.conf"), &plugin);
    }
    // Watch every 10 ms, for the whole test, that at most one instance runs.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, most, marker) = (stop.clone(), most.clone(), marker.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let instances = processes_with(&marker);
                if most.fetch_max(instances.len(), Ordering::SeqCst) < instances.len() && instances.len() > 1
                {
                    eprintln!("instances of the singleton at once: {instances:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let holder = |list: &serde_json::Value| -> Option<String> {
        let running: Vec<String> = ["n1", "n2", "n3"]
            .into_iter()
            .filter(|node| running(list, node, "singleton"))
            .map(str::to_owned)
            .collect();
        (running.len() == 1).then(|| running[0].clone())
    };
    let list = wait_list(&data, "the singleton running on one node", |list| holder(list).is_some());
    let first = holder(&list).expect("a holder");
    for node in ["n1", "n2", "n3"].into_iter().filter(|n| *n != first) {
        let waiting = status(&list, node, "singleton").expect("listed");
        assert_eq!(waiting["state"], "waiting", "{node}: {waiting}");
    }
    assert_eq!(children(&members, "/services/singleton"), std::slice::from_ref(&first));

    // Supervised: kill -9 of the program, its Warden restarts it on the same node.
    let old = pid_of(&list, &first, "singleton");
    // SAFETY: kill(2) of a process of this test.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
    wait_list(&data, "the singleton restarted in place", |list| {
        holder(list).as_deref() == Some(first.as_str()) && pid_of(list, &first, "singleton") != old
    });

    // Failed over: its node dies (kill -9 of the Warden takes its services along); another
    // node's Warden starts it once the dead node's coord session ends.
    let node_pid = cluster.cluster["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == first.as_str())
        .and_then(|n| n["pid"].as_i64())
        .expect("the node's pid") as i32;
    let killed_at = Instant::now();
    // SAFETY: kill(2) of a node process of this test's cluster.
    assert_eq!(unsafe { libc::kill(node_pid, libc::SIGKILL) }, 0);
    let list = wait_list(&data, "the singleton on another node", |list| {
        holder(list).is_some_and(|node| node != first) && processes_with(&marker).len() == 1
    });
    let second = holder(&list).expect("a holder");
    eprintln!(
        "the singleton moved from {first} to {second} {:?} after the node's death",
        killed_at.elapsed()
    );
    assert!(killed_at.elapsed() < Duration::from_secs(30));
    let deadline = Instant::now() + SETTLE;
    while children(&members, "/services/singleton") != [second.clone()] {
        assert!(Instant::now() < deadline, "/services/singleton does not name {second} alone");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Taken out of the holder's configuration: it stops there and gives its slot up, and the
    // last node starts it.
    std::fs::remove_file(conf_dir(&data, &second).join("conf.d").join("warden.singleton.conf"))
        .expect("remove the plugin file");
    let list = wait_list(&data, "the singleton on the third node", |list| {
        holder(list).is_some_and(|node| node != first && node != second) && processes_with(&marker).len() == 1
    });
    assert!(status(&list, &second, "singleton").is_none(), "{second} still lists the singleton");
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    assert_eq!(most.load(Ordering::SeqCst), 1, "two instances of the singleton ran at once");
}

#[test]
fn a_service_over_its_memory_limit_is_killed_restarted_then_failed_with_an_alarm() {
    let dir = test_dir("warden-memory");
    let data = dir.path().join("data");
    let _cluster = Cluster::start(&data);
    // 1 % of this machine's memory, at most 64 MB: the program wants 300 MB.
    let plugin = "services=hog:all\n\
                  service.command=exec python3 -c \"import time; b = b'x' * (300 << 20); time.sleep(1000)\"\n\
                  service.heapsize.percent=1\n\
                  service.heapsize.max=64\n\
                  service.heapsize.min=32\n";
    write_conf(&conf_dir(&data, "n3").join("conf.d").join("warden.hog.conf"), plugin);
    let list = wait_list(&data, "the hog given up", |list| {
        status(list, "n3", "hog").is_some_and(|s| s["state"] == "failed")
    });
    let hog = status(&list, "n3", "hog").expect("listed");
    assert!(hog["restarts"].as_u64() >= Some(4), "{hog}");
    assert!(hog["detail"].as_str().is_some_and(|d| d.contains("memory limit of 64 MiB")), "{hog}");
    assert!(status(&list, "n1", "hog").is_none(), "only n3 has the plugin");
    wait_alarm(&data, "ServiceFailed", "n3/hog", true);
    // A failed service stays down, and nothing of it is left running.
    std::thread::sleep(Duration::from_secs(3));
    let later = status(&services(&data), "n3", "hog").expect("listed");
    assert_eq!(
        (later["state"].clone(), later["restarts"].clone()),
        (hog["state"].clone(), hog["restarts"].clone())
    );
    assert!(processes_with("b'x' * (300 << 20)").is_empty());
}

/// Plain `cairn up` (one node) is a whole cluster too: the node's Warden runs coord, the CLDB,
/// the file server, the NFS gateway and the console; the default volume has one copy; the
/// admin commands and the console answer; NFS serves files. A data directory of the other
/// layout (`--embedded`) is refused with what to run instead.
#[test]
fn a_one_node_cairn_up_runs_every_service_under_its_warden() {
    crate::support::require_libnfs_utils();
    let dir = test_dir("warden-one-node");
    let data = dir.path().join("data");
    let cluster = Cluster::start_nodes(&data, 1);
    let builtins = ["coord", "cldb", "fileserver", "nfs", "console"];
    wait_list(&data, "every service running on n1", |list| {
        builtins.iter().all(|service| running(list, "n1", service))
    });

    let volume: serde_json::Value =
        serde_json::from_str(&cli_ok(&data, &["volume", "info", "default", "--json"])).expect("JSON");
    assert_eq!(volume["volume"]["replication"], 1, "{volume:#}");
    assert_eq!(volume["volume"]["mount_path"], "/", "{volume:#}");

    let bytes = crate::support::random_bytes(300_000);
    let source = dir.path().join("source.bin");
    std::fs::write(&source, &bytes).expect("write the source");
    let url = crate::support::nfs_file_url(cluster.nfs[0], "/one-node.bin", "");
    crate::support::libnfs_ok(None, "nfs-cp", &[source.to_str().expect("path"), &url]);
    let read = crate::support::libnfs_ok(None, "nfs-cat", &[&url]);
    assert!(read.stdout == bytes, "nfs-cat returned {} other bytes", read.stdout.len());

    // The console serves its login page.
    let port = cluster.cluster["nodes"][0]["console_port"].as_u64().expect("a console port") as u16;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the console");
    use std::io::{Read, Write};
    stream.write_all(b"GET /login HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer:.300}");
    assert!(answer.contains("<form"), "no login form: {answer:.600}");
    drop(cluster);

    let out =
        Command::new(CAIRN).args(["up", "--embedded", "--no-portmap", "--data-dir"]).arg(&data).output();
    let out = out.expect("run cairn up --embedded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cairn up (without --embedded)"), "{stderr}");
}
