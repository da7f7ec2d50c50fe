//! Central configuration on a real `cairn up --nodes 3`: files pushed into the configuration
//! volume (`/var/cairn/configuration`) reach every node's configuration directory through its
//! Warden's pull, a node-specific file wins over the default one, and a malformed file is
//! rejected with an alarm while every node keeps its last good copy.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin::{cairn, json, ok};
use crate::cluster::Cluster;
use crate::support::{describe_output, test_dir};

/// Longest wait for a Warden to act on a pulled file.
const SETTLE: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PLUGIN_PATH: &str = "conf.d/warden.echo.conf";
const PLUGIN: &str = "services=echo:all\nservice.command=exec sleep 100000\nservice.env.GREETING=hello\n";
const PLUGIN_N2: &str =
    "services=echo:all\nservice.command=exec sleep 100000\nservice.env.GREETING=bonjour from n2\n";
const PLUGIN_AGAIN: &str =
    "# fixed\nservices=echo:all\nservice.command=exec sleep 100000\nservice.env.GREETING=hello again\n";
/// No `service.command=`: the Warden's parser refuses it.
const MALFORMED: &str = "services=echo:all\nservice.env.GREETING=broken\n";

fn local_copy(data: &Path, node: &str) -> String {
    let path = data.join("nodes").join(node).join("conf").join(PLUGIN_PATH);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a local file");
    path
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn echo_running_everywhere(list: &Value) -> bool {
    NODES.iter().all(|node| {
        list.as_array().and_then(|nodes| nodes.iter().find(|n| n["node"] == *node)).is_some_and(|n| {
            n["services"].as_array().is_some_and(|services| {
                services.iter().any(|s| s["name"] == "echo" && s["state"] == "running")
            })
        })
    })
}

fn config_alarms(data: &Path) -> Vec<String> {
    let alarms = json(data, &["alarm", "list"]);
    alarms
        .as_array()
        .expect("alarm list is an array")
        .iter()
        .filter(|a| a["kind"] == "ConfigRejected")
        .filter_map(|a| a["subject"].as_str().map(str::to_owned))
        .collect()
}

fn assert_fails(out: &Output, what: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", describe_output(out));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn central_config_pushes_overrides_and_rejects_malformed_files() {
    let dir = test_dir("central-config");
    let data = dir.path().join("data");
    let _cluster = Cluster::start(&data);
    let started = Instant::now();

    // A plugin pushed to default/ reaches every node, and every Warden starts it.
    let plugin = write(dir.path(), "echo.conf", PLUGIN);
    let out = ok(&data, &["config", "push", s(&plugin), "--name", PLUGIN_PATH]);
    assert!(out.contains("/var/cairn/configuration/default/conf.d/warden.echo.conf"), "{out}");
    for node in NODES {
        // Written by this pull, or already by a periodic one (the first pulls retry every 10 s
        // while the cluster starts); either way every node answered.
        assert!(out.lines().any(|line| line.starts_with(&format!("{node} "))), "{out}");
        assert_eq!(local_copy(&data, node), PLUGIN, "node {node}");
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let list = json(&data, &["service", "list"]);
        if echo_running_everywhere(&list) {
            break;
        }
        assert!(Instant::now() < deadline, "echo is not running on every node:\n{list:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The volume is in the namespace at its mount path.
    let listing = ok(&data, &["fs", "ls", "/var/cairn"]);
    assert!(listing.contains("/var/cairn/configuration"), "{listing}");
    let held = json(&data, &["config", "ls"]);
    assert!(held.as_array().is_some_and(|files| files.iter().any(|f| f["path"] == PLUGIN_PATH)), "{held:#}");

    // A file for n2 wins there, and only there.
    let override_n2 = write(dir.path(), "echo-n2.conf", PLUGIN_N2);
    let out = ok(&data, &["config", "push", s(&override_n2), "--node", "n2", "--name", PLUGIN_PATH]);
    assert!(out.contains("n2: wrote"), "{out}");
    assert_eq!(local_copy(&data, "n2"), PLUGIN_N2);
    assert_eq!(local_copy(&data, "n1"), PLUGIN);
    assert_eq!(local_copy(&data, "n3"), PLUGIN);
    // A pull of every node changes nothing more.
    let out = ok(&data, &["config", "pull"]);
    assert!(!out.contains("wrote"), "{out}");

    // push validates: a malformed Warden file is refused before it reaches the cluster.
    let malformed = write(dir.path(), "bad.conf", MALFORMED);
    let refused = cairn(&data, &["config", "push", s(&malformed), "--name", PLUGIN_PATH]);
    let text = assert_fails(&refused, "push of a malformed file");
    assert!(text.contains("service.command"), "{text}");

    // Written into the volume behind push's back, it is rejected by the nodes that use it (n1,
    // n3; n2 has its own), with an alarm each, and every node keeps its good copy.
    ok(
        &data,
        &["fs", "put", "-f", s(&malformed), "/var/cairn/configuration/default/conf.d/warden.echo.conf"],
    );
    let out = cairn(&data, &["config", "pull"]);
    let text = assert_fails(&out, "pull of a malformed file");
    assert!(text.contains("rejected") && text.contains("n1") && text.contains("n3"), "{text}");
    assert_eq!(local_copy(&data, "n1"), PLUGIN);
    assert_eq!(local_copy(&data, "n2"), PLUGIN_N2);
    assert_eq!(local_copy(&data, "n3"), PLUGIN);
    let alarms = config_alarms(&data);
    for node in ["n1", "n3"] {
        let subject = format!("{node}/default/{PLUGIN_PATH}");
        assert!(alarms.contains(&subject), "no alarm {subject}: {alarms:?}");
    }
    assert!(!alarms.iter().any(|a| a.starts_with("n2/")), "{alarms:?}");

    // A good file again: written, and the alarms are cleared.
    let fixed = write(dir.path(), "fixed.conf", PLUGIN_AGAIN);
    ok(&data, &["config", "push", s(&fixed), "--name", PLUGIN_PATH]);
    assert_eq!(local_copy(&data, "n1"), PLUGIN_AGAIN);
    assert_eq!(local_copy(&data, "n3"), PLUGIN_AGAIN);
    assert_eq!(local_copy(&data, "n2"), PLUGIN_N2);
    let alarms = config_alarms(&data);
    assert!(alarms.is_empty(), "alarms left: {alarms:?}");

    // `exports` goes to the gateway's file, which the gateway re-reads (SIGHUP) without a
    // restart: the same nfs process before and after.
    let nfs_pid = |list: &Value| {
        list.as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == "n1"))
            .and_then(|n| n["services"].as_array()?.iter().find(|s| s["name"] == "nfs").cloned())
            .and_then(|s| s["pid"].as_u64())
            .expect("n1's nfs pid")
    };
    let before = nfs_pid(&json(&data, &["service", "list"]));
    let exports_text = "/ *(rw,no_root_squash)\n# pushed by the test\n";
    let exports = write(dir.path(), "exports", exports_text);
    ok(&data, &["config", "push", s(&exports), "--node", "n1"]);
    let served = std::fs::read_to_string(data.join("nodes/n1/exports")).expect("n1's exports");
    assert_eq!(served, exports_text);
    std::thread::sleep(Duration::from_secs(1));
    let after = json(&data, &["service", "list"]);
    assert_eq!(nfs_pid(&after), before, "the nfs service was restarted: {after:#}");
    eprintln!("central configuration checks took {:?} after the cluster started", started.elapsed());
}
