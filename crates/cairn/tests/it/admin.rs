//! The administration CLI (`cairn volume|node|container|alarm ...`) against a real
//! `cairn up --nodes 3`: each command is the built binary, finding the CLDBs through the data
//! directory's cluster.json.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::cluster::Cluster;
use crate::support::{CAIRN, describe_output, free_port, test_dir};

/// Runs `cairn ARGS --data-dir DATA_DIR`.
pub(crate) fn cairn(data_dir: &Path, args: &[&str]) -> Output {
    cairn_env(data_dir, args, &[])
}

/// Runs `cairn ARGS --data-dir DATA_DIR` with these environment variables, and none of the
/// console's (`CAIRN_CONSOLE`, `CAIRN_USER`, ...) inherited from whoever runs the tests.
pub(crate) fn cairn_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(CAIRN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("CAIRN_LOG", "warn")
        .env_remove("CAIRN_CONSOLE")
        .env_remove("CAIRN_USER")
        .env_remove("CAIRN_PASSWORD")
        .env_remove("CAIRN_NEW_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run cairn")
}

/// Runs a command that must succeed; its stdout.
pub(crate) fn ok(data_dir: &Path, args: &[&str]) -> String {
    ok_env(data_dir, args, &[])
}

pub(crate) fn ok_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = cairn_env(data_dir, args, env);
    assert!(out.status.success(), "cairn {} failed: {}", args.join(" "), describe_output(&out));
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs a command with `--json`; its stdout parsed.
pub(crate) fn json(data_dir: &Path, args: &[&str]) -> Value {
    json_env(data_dir, args, &[])
}

pub(crate) fn json_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = ok_env(data_dir, &args, env);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("cairn {} printed no JSON ({e}):\n{text}", args.join(" ")))
}

/// Runs a command that must fail with one line on stderr and nothing on stdout; that line.
fn fails(data_dir: &Path, args: &[&str]) -> String {
    fails_env(data_dir, args, &[])
}

pub(crate) fn fails_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = cairn_env(data_dir, args, env);
    assert!(!out.status.success(), "cairn {} succeeded: {}", args.join(" "), describe_output(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "cairn {}: not one line: {}",
        args.join(" "),
        describe_output(&out)
    );
    assert!(out.stdout.is_empty(), "cairn {} printed on stdout: {}", args.join(" "), describe_output(&out));
    stderr
}

fn array<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value.as_array().unwrap_or_else(|| panic!("{what} is not an array: {value}"))
}

fn volume_named<'a>(volumes: &'a Value, name: &str) -> Option<&'a Value> {
    array(volumes, "volume list").iter().find(|v| v["volume"]["name"] == name)
}

#[test]
fn volumes_nodes_containers_and_alarms_through_the_cli() {
    let dir = test_dir("admin");
    let data = dir.path().join("data");
    let _cluster = Cluster::start(&data);

    // Create: a quota, two copies, two data containers.
    let created = ok(
        &data,
        &[
            "volume",
            "create",
            "logs",
            "--replication",
            "2",
            "--quota",
            "10G",
            "--advisory-quota",
            "512M",
            "--path",
            "/var/logs",
            "--data-containers",
            "2",
        ],
    );
    assert!(created.contains("Created volume logs"), "{created}");

    let volumes = json(&data, &["volume", "list"]);
    assert!(volume_named(&volumes, "default").is_some(), "no default volume: {volumes:#}");
    let logs =
        &volume_named(&volumes, "logs").unwrap_or_else(|| panic!("no logs volume: {volumes:#}"))["volume"];
    assert_eq!(logs["mount_path"], "/var/logs", "{logs:#}");
    assert_eq!(logs["replication"], 2, "{logs:#}");
    assert_eq!(logs["min_replication"], 1, "{logs:#}");
    assert_eq!(logs["replication_type"], "Chain", "{logs:#}");
    assert_eq!(logs["quota_bytes"], 10u64 << 30, "{logs:#}");
    assert_eq!(logs["advisory_quota_bytes"], 512u64 << 20, "{logs:#}");
    assert_eq!(logs["data_containers"], 2, "{logs:#}");
    let replicas = array(&logs["placement"]["replicas"], "replicas");
    assert_eq!(replicas.len(), 2, "two copies on three nodes: {logs:#}");
    assert_eq!(logs["placement"]["master"], replicas[0], "master first: {logs:#}");
    let volume_id = logs["id"].as_u64().expect("volume id");

    let table = ok(&data, &["volume", "list"]);
    let row =
        table.lines().find(|l| l.starts_with("logs ")).unwrap_or_else(|| panic!("no logs row:\n{table}"));
    assert!(table.starts_with("NAME "), "{table}");
    assert!(row.contains("/var/logs") && row.contains("10 GiB") && row.contains("2/2"), "{table}");

    let info = ok(&data, &["volume", "info", "logs"]);
    for expected in ["name:", "/var/logs", "10 GiB", "512 MiB", "master:", "replicas:"] {
        assert!(info.contains(expected), "volume info lacks {expected:?}:\n{info}");
    }
    assert_eq!(json(&data, &["volume", "info", "logs"])["volume"]["id"], volume_id);

    // Nodes: the three of `cairn up --nodes 3`, all up.
    let nodes = json(&data, &["node", "list"]);
    let nodes = array(&nodes, "node list");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["record"]["name"].as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"], "{nodes:#?}");
    for node in nodes {
        assert_eq!(node["record"]["state"], "Up", "{node:#}");
        assert!(node["last_heartbeat_ms"].as_u64().is_some_and(|t| t > 0), "{node:#}");
    }
    let table = ok(&data, &["node", "list"]);
    assert_eq!(table.lines().count(), 4, "a header and three nodes:\n{table}");

    // Containers: a name container and two data containers, each with the volume's master.
    let containers = json(&data, &["container", "list"]);
    let ours: Vec<&Value> =
        array(&containers, "container list").iter().filter(|c| c["volume_name"] == "logs").collect();
    let ids: Vec<u64> = ours.iter().filter_map(|c| c["id"].as_u64()).collect();
    let first = volume_id * 1000 + 1;
    assert_eq!(ids, [first, first + 1, first + 2], "{containers:#}");
    for c in &ours {
        assert_eq!(c["master"], logs["placement"]["master"], "{c:#}");
        assert_eq!(c["replicas"], logs["placement"]["replicas"], "{c:#}");
        assert!(c["epoch"].as_u64().is_some_and(|e| e >= 1), "{c:#}");
    }
    let only = json(&data, &["container", "list", "--volume", "logs"]);
    assert_eq!(array(&only, "container list --volume").len(), 3, "{only:#}");
    let data_container = (first + 1).to_string();
    let container = json(&data, &["container", "info", &data_container]);
    assert_eq!(container["kind"], "Data", "{container:#}");
    assert_eq!(container["master"], logs["placement"]["master"], "{container:#}");
    let text = ok(&data, &["container", "info", &data_container]);
    assert!(text.contains("replicas:") && text.contains("volume:") && text.contains("logs"), "{text}");

    let alarms = json(&data, &["alarm", "list"]);
    assert!(alarms.is_array(), "{alarms:#}");
    ok(&data, &["alarm", "list"]);

    // Mistakes: one clear line and a non-zero exit.
    let error = fails(&data, &["volume", "create", "logs"]);
    assert!(error.contains("logs") && error.contains("already exists"), "{error}");
    let error = fails(&data, &["volume", "info", "nope"]);
    assert!(error.contains("no such volume"), "{error}");
    let error = fails(&data, &["volume", "create", "x", "--replication", "9"]);
    assert!(error.contains("replication"), "{error}");
    let error = fails(&data, &["container", "info", "999999"]);
    assert!(error.contains("no such container"), "{error}");
    let nowhere = format!("127.0.0.1:{}", free_port());
    let error = fails(&data, &["volume", "list", "--cldb", &nowhere, "--timeout", "1"]);
    assert!(error.contains("unavailable") && error.contains(&nowhere), "{error}");

    // Remove: gone from the list, and from info.
    let removed = ok(&data, &["volume", "remove", "logs"]);
    assert!(removed.contains("Removed volume logs"), "{removed}");
    let volumes = json(&data, &["volume", "list"]);
    assert!(volume_named(&volumes, "logs").is_none(), "logs is still listed: {volumes:#}");
    assert!(volume_named(&volumes, "default").is_some(), "{volumes:#}");
    let error = fails(&data, &["volume", "info", "logs"]);
    assert!(error.contains("no such volume"), "{error}");
    let error = fails(&data, &["volume", "remove", "logs"]);
    assert!(error.contains("no such volume"), "{error}");
}
