//! The administration CLI through a node's web console (`--console URL`) against a real
//! `cairn up --nodes 3`: the same answers as through the CLDB, VIP pools, a service restarted,
//! console users added and removed with `cairn user`, and the console's refusals (a read-only
//! user's change, a wrong or missing password) as one clear line and a failed exit.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::admin::{fails_env as fails, json_env as json, ok_env as ok};
use crate::cluster::Cluster;
use crate::console::generated_admin_password;
use crate::support::test_dir;

/// Attempts at reading the same answer through both backends (a volume master's size report may
/// land between the two reads).
const SAME_ANSWER_ATTEMPTS: usize = 20;

fn names(list: &Value, pointer: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|item| {
            item.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no {pointer} in {item}"))
        })
        .map(str::to_owned)
        .collect()
}

/// The output of `through_console` once it equals that of `through_cldb` (both re-run until
/// then), so that the two backends are seen to print the same thing.
fn same_answer(data: &Path, through_cldb: &[&str], through_console: &[&str], env: &[(&str, &str)]) -> String {
    let mut last = (String::new(), String::new());
    for _ in 0..SAME_ANSWER_ATTEMPTS {
        let cldb = ok(data, through_cldb, &[]);
        let console = ok(data, through_console, env);
        if cldb == console {
            return console;
        }
        last = (cldb, console);
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "cairn {} and cairn {} kept printing different things:\n--- CLDB ---\n{}\n--- console ---\n{}",
        through_cldb.join(" "),
        through_console.join(" "),
        last.0,
        last.1
    );
}

#[test]
fn the_admin_cli_through_the_console_prints_what_the_cldb_says_and_enforces_roles() {
    let dir = test_dir("console-cli");
    let data = dir.path().join("data");
    let cluster = Cluster::start(&data);
    let port = cluster.cluster["nodes"][0]["console_port"].as_u64().expect("console_port in cluster.json");
    let url = format!("http://127.0.0.1:{port}");
    let admin_password = generated_admin_password(&data);
    let admin = [("CAIRN_PASSWORD", admin_password.as_str())];
    let console = ["--console", url.as_str()];
    // The arguments, then `--console URL`.
    let with = |args: &[&'static str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&console);
        all
    };

    // A volume created through the console, as the default user (admin).
    let created = json(
        &data,
        &with(&["volume", "create", "web", "--replication", "2", "--quota", "1G", "--data-containers", "2"]),
        &admin,
    );
    assert_eq!(created["volume"]["name"], "web", "{created}");
    assert_eq!(created["volume"]["replication"], 2, "{created}");
    assert_eq!(created["volume"]["quota_bytes"], 1u64 << 30, "{created}");
    assert_eq!(created["volume"]["mount_path"], "/web", "{created}");

    // Listed the same through the console as through the CLDB: JSON and table alike.
    let listed =
        same_answer(&data, &["volume", "list", "--json"], &with(&["volume", "list", "--json"]), &admin);
    let listed: Value = serde_json::from_str(&listed).expect("volume list is JSON");
    assert!(names(&listed, "/volume/name").contains(&"web".to_owned()), "{listed}");
    let table = same_answer(&data, &["volume", "list"], &with(&["volume", "list"]), &admin);
    let row =
        table.lines().find(|l| l.starts_with("web ")).unwrap_or_else(|| panic!("no row for web:\n{table}"));
    // Copies placed / 2, the quota (on a loaded machine a node may not have taken its copy yet).
    assert!(row.contains("/web") && row.contains("1 GiB") && row.contains("/2 (min 1)"), "{table}");

    // A change through the new PATCH route, and a read of one volume.
    let modified = json(&data, &with(&["volume", "modify", "web", "--quota", "2G"]), &admin);
    assert_eq!(modified["volume"]["quota_bytes"], 2u64 << 30, "{modified}");
    let info = json(&data, &["volume", "info", "web"], &[]);
    assert_eq!(info["volume"]["quota_bytes"], 2u64 << 30, "{info}");
    let missing = fails(&data, &with(&["volume", "info", "nosuch"]), &admin);
    assert!(missing.contains("cannot get volume nosuch") && missing.contains("no such volume"), "{missing}");

    // Nodes, containers and alarms come through the console too.
    let nodes = json(&data, &with(&["node", "list"]), &admin);
    assert_eq!(names(&nodes, "/record/name"), ["n1", "n2", "n3"], "{nodes}");
    let containers = json(&data, &with(&["container", "list", "--volume", "web"]), &admin);
    // The name container and the two data containers.
    assert_eq!(containers.as_array().map(Vec::len), Some(3), "{containers}");
    assert!(names(&containers, "/volume_name").iter().all(|v| v == "web"), "{containers}");
    let alarms = json(&data, &with(&["alarm", "list"]), &admin);
    assert!(alarms.is_array(), "{alarms}");

    // A VIP pool added through the console, listed through it and through the CLDB. No VIP
    // agents run in `cairn up`, so the pool is outside every reported subnet (--any-subnet).
    let added = ok(
        &data,
        &with(&[
            "vip",
            "add",
            "--start",
            "10.78.0.10",
            "--end",
            "10.78.0.11",
            "--netmask",
            "24",
            "--any-subnet",
        ]),
        &admin,
    );
    assert_eq!(
        added.trim(),
        "added VIP pool 10.78.0.10-10.78.0.11/24 on any interface in the subnet, any subnet"
    );
    let vips = json(&data, &with(&["vip", "list"]), &admin);
    assert_eq!(names(&vips, "/vip"), ["10.78.0.10", "10.78.0.11"], "{vips}");
    assert!(vips.as_array().expect("array").iter().all(|v| v["prefix"] == 24), "{vips}");
    let vips_from_cldb = json(&data, &["vip", "list"], &[]);
    assert_eq!(names(&vips_from_cldb, "/vip"), names(&vips, "/vip"), "{vips_from_cldb}");

    // A service restarted through the console's new route: another process runs it after.
    let pid_of = |services: &Value| -> Option<u64> {
        services.as_array()?.iter().find(|n| n["node"] == "n3")?["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "console")?["pid"]
            .as_u64()
    };
    let before = pid_of(&json(&data, &with(&["service", "list"]), &admin)).expect("n3 runs a console");
    let restarted = ok(&data, &with(&["service", "restart", "--node", "n3", "--service", "console"]), &admin);
    assert!(restarted.starts_with("console on node n3: running (pid "), "{restarted}");
    let after = pid_of(&json(&data, &["service", "list"], &[])).expect("n3 runs a console again");
    assert_ne!(before, after, "the console of n3 kept its process");
    assert!(restarted.contains(&format!("(pid {after})")), "{restarted} but the CLDB says pid {after}");

    // A read-only user, added without --console: cairn user finds node 1's console in
    // cluster.json.
    let viewer_password = "viewer-pass-1";
    let added = ok(
        &data,
        &["user", "add", "viewer", "--role", "read-only"],
        &[("CAIRN_PASSWORD", admin_password.as_str()), ("CAIRN_NEW_PASSWORD", viewer_password)],
    );
    assert_eq!(added.trim(), "Added user viewer (readonly).");
    let users = json(&data, &["user", "list"], &admin);
    let roles: Vec<(String, String)> = users
        .as_array()
        .expect("array")
        .iter()
        .map(|u| (u["name"].as_str().unwrap_or("").to_owned(), u["role"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        roles,
        [("admin".to_owned(), "admin".to_owned()), ("viewer".to_owned(), "readonly".to_owned())],
        "{users}"
    );

    // The read-only user sees what the admin sees (user named by env here, by --user below)...
    let viewer = [("CAIRN_USER", "viewer"), ("CAIRN_PASSWORD", viewer_password)];
    let seen = json(&data, &with(&["volume", "list"]), &viewer);
    assert_eq!(names(&seen, "/volume/name"), names(&listed, "/volume/name"), "{seen}");
    let seen_vips = json(&data, &with(&["vip", "list", "--user", "viewer"]), &viewer[1..]);
    assert_eq!(names(&seen_vips, "/vip"), ["10.78.0.10", "10.78.0.11"], "{seen_vips}");

    // ... but every change is refused, saying why, and nothing changes.
    let refused = fails(&data, &with(&["volume", "create", "nope"]), &viewer);
    assert!(refused.contains("cannot create volume nope"), "{refused}");
    assert!(refused.contains("user viewer is read-only: changes need the admin role"), "{refused}");
    let volumes = json(&data, &["volume", "list"], &[]);
    assert!(!names(&volumes, "/volume/name").contains(&"nope".to_owned()), "{volumes}");
    let refused = fails(&data, &with(&["service", "stop", "--node", "n2", "--service", "nfs"]), &viewer);
    assert!(refused.contains("cannot stop nfs on node n2") && refused.contains("read-only"), "{refused}");
    let refused = fails(&data, &["user", "list"], &viewer);
    assert!(refused.contains("cannot list the users") && refused.contains("read-only"), "{refused}");

    // A wrong password, and none at all (stdin is not a terminal), are refused before anything.
    let wrong = fails(&data, &with(&["volume", "create", "nope"]), &[("CAIRN_PASSWORD", "not-the-password")]);
    assert!(wrong.contains("cannot log in") && wrong.contains("wrong user name or password"), "{wrong}");
    assert!(wrong.contains("refused user admin") && wrong.contains(&url), "{wrong}");
    let missing = fails(&data, &with(&["volume", "list"]), &[]);
    assert!(
        missing.contains("no password for user admin") && missing.contains("CAIRN_PASSWORD"),
        "{missing}"
    );

    // Removed, the user can no longer log in.
    let removed = ok(&data, &with(&["user", "remove", "viewer"]), &admin);
    assert_eq!(removed.trim(), "Removed user viewer.");
    let users = json(&data, &with(&["user", "list"]), &admin);
    assert_eq!(names(&users, "/name"), ["admin"], "{users}");
    let gone = fails(&data, &with(&["volume", "list"]), &viewer);
    assert!(gone.contains("refused user viewer: wrong user name or password"), "{gone}");
    let again = fails(&data, &with(&["user", "remove", "viewer"]), &admin);
    assert!(again.contains("cannot remove user viewer") && again.contains("viewer"), "{again}");

    // Removing the volume through the console.
    let removed = ok(&data, &with(&["volume", "remove", "web"]), &admin);
    assert!(removed.starts_with("Removed volume web (id "), "{removed}");
    let volumes = json(&data, &["volume", "list"], &[]);
    assert!(!names(&volumes, "/volume/name").contains(&"web".to_owned()), "{volumes}");
}
