//! `cairn fs` and `cairn distcp` against a real `cairn up --nodes 3`: every command is the built
//! binary, finding the CLDBs through the data directory's cluster.json, with no NFS mount.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin::{cairn, json, ok};
use crate::cluster::Cluster;
use crate::support::{CAIRN, describe_output, md5_of_file, random_bytes, test_dir};

/// Runs a command that must fail with `code` and one line on stderr; that line.
fn fails(data_dir: &Path, code: i32, args: &[&str]) -> String {
    let out = cairn(data_dir, args);
    assert_eq!(out.status.code(), Some(code), "cairn {}: {}", args.join(" "), describe_output(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "cairn {}: not one line: {}",
        args.join(" "),
        describe_output(&out)
    );
    stderr
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// md5 of every file below `root`, by relative path.
fn tree_md5s(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(root).expect("below root").to_owned(), md5_of_file(&path));
            }
        }
    }
    out
}

/// A local tree: small files, an empty one, nested folders and one of several MiB.
fn make_tree(root: &Path, files: usize, size_max: usize) -> u64 {
    let mut total = 0;
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 4)).join(format!("e{}", i % 3));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let size = if i == 0 { 0 } else { (i * 7919) % size_max };
        std::fs::write(dir.join(format!("f{i}.bin")), random_bytes(size)).expect("write");
        total += size as u64;
    }
    total
}

#[test]
fn fs_commands_round_trip_through_the_client_library() {
    let dir = test_dir("fs");
    let data = dir.path().join("data");
    let _cluster = Cluster::start(&data);
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).expect("mkdir");

    // A random multi-MiB file (not a whole number of pieces) in and out.
    let big = local.join("big.bin");
    std::fs::write(&big, random_bytes((9 << 20) + 12_345)).expect("write");
    ok(&data, &["fs", "put", s(&big), "/big.bin"]);
    let back = local.join("big.back");
    ok(&data, &["fs", "get", "/big.bin", s(&back)]);
    assert_eq!(md5_of_file(&back), md5_of_file(&big));
    let stat = json(&data, &["fs", "stat", "/big.bin"]);
    assert_eq!(stat["size_bytes"], (9u64 << 20) + 12_345, "{stat:#}");
    assert_eq!(stat["type"], "file", "{stat:#}");
    assert_eq!(stat["volume"], "default", "{stat:#}");

    // An existing destination needs -f.
    let message = fails(&data, 1, &["fs", "put", s(&big), "/big.bin"]);
    assert_eq!(message, "cairn fs: /big.bin: File exists");
    ok(&data, &["fs", "put", "-f", s(&big), "/big.bin"]);

    // A directory tree, recursively, and back.
    let tree = local.join("tree");
    let total = make_tree(&tree, 24, 300 << 10);
    ok(&data, &["fs", "put", s(&tree), "/tree"]);
    let listing = json(&data, &["fs", "ls", "-R", "/tree"]);
    let paths: Vec<&str> =
        listing.as_array().expect("array").iter().map(|e| e["path"].as_str().expect("path")).collect();
    assert!(paths.contains(&"/tree/d1/e1/f1.bin") && paths.contains(&"/tree/d0/e0/f0.bin"), "{paths:?}");
    let files = listing.as_array().expect("array").iter().filter(|e| e["type"] == "file").count();
    assert_eq!(files, 24, "{listing:#}");
    let text = ok(&data, &["fs", "ls", "-R", "-h", "/tree"]);
    assert!(text.lines().any(|l| l.starts_with("drwx") && l.ends_with(" /tree/d2")), "{text}");
    let out = local.join("out");
    ok(&data, &["fs", "get", "/tree", s(&out)]);
    assert_eq!(tree_md5s(&out), tree_md5s(&tree));

    // du and df.
    let du = json(&data, &["fs", "du", "-s", "/tree"]);
    assert_eq!(du[0]["size_bytes"], total, "{du:#}");
    assert_eq!(du[0]["files"], 24, "{du:#}");
    let text = ok(&data, &["fs", "du", "/tree"]);
    assert_eq!(text.lines().count(), 4, "one line per entry of /tree: {text}");
    let df = json(&data, &["fs", "df"]);
    let default =
        df.as_array().expect("array").iter().find(|v| v["volume"] == "default").expect("default volume");
    assert_eq!(default["mount_path"], "/", "{df:#}");
    assert!(default["size_bytes"].as_u64().expect("size") > 0, "{df:#}");
    assert!(ok(&data, &["fs", "df", "-h"]).contains("default"));

    // cat and tail.
    let text_file = local.join("text.txt");
    let content: String = (0..400).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&text_file, &content).expect("write");
    ok(&data, &["fs", "put", s(&text_file), "/text.txt"]);
    assert_eq!(ok(&data, &["fs", "cat", "/text.txt"]), content);
    assert_eq!(ok(&data, &["fs", "tail", "/text.txt"]), content[content.len() - 1024..]);

    // tail -f sees what is appended.
    let mut follow = Command::new(CAIRN)
        .args(["fs", "tail", "-f", "-c", "0", "/text.txt", "--data-dir", s(&data)])
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tail -f");
    let stdout = follow.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| l != "appended 2")
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(1));
    let more = local.join("more.txt");
    std::fs::write(&more, "appended 1\n").expect("write");
    ok(&data, &["fs", "append", s(&more), "/text.txt"]);
    std::fs::write(&more, "appended 2\n").expect("write");
    ok(&data, &["fs", "-appendToFile", s(&more), "/text.txt"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(lines.is_finished(), "tail -f did not print the appended lines");
    assert_eq!(lines.join().expect("reader"), vec!["appended 1".to_owned()]);

    // mkdir -p, mv, rm -r.
    ok(&data, &["fs", "mkdir", "-p", "/x/y/z"]);
    assert_eq!(json(&data, &["fs", "stat", "/x/y/z"])["type"], "directory");
    ok(&data, &["fs", "mkdir", "-p", "/x/y/z"]);
    assert_eq!(fails(&data, 1, &["fs", "mkdir", "/x/y/z"]), "cairn fs: /x/y/z: File exists");
    assert_eq!(fails(&data, 3, &["fs", "mkdir", "/q/r"]), "cairn fs: /q: No such file or directory");
    ok(&data, &["fs", "mv", "/text.txt", "/x/y/z"]);
    assert_eq!(ok(&data, &["fs", "cat", "/x/y/z/text.txt"]).len(), content.len() + 22);
    assert_eq!(
        fails(&data, 3, &["fs", "stat", "/text.txt"]),
        "cairn fs: /text.txt: No such file or directory"
    );
    ok(&data, &["fs", "mv", "/x/y/z/text.txt", "/x/renamed.txt"]);
    assert_eq!(json(&data, &["fs", "stat", "/x/renamed.txt"])["size_bytes"], content.len() + 22);
    assert_eq!(fails(&data, 1, &["fs", "rm", "/x"]), "cairn fs: /x: Is a directory");
    ok(&data, &["fs", "rm", "-r", "/x"]);
    assert_eq!(fails(&data, 3, &["fs", "ls", "/x"]), "cairn fs: /x: No such file or directory");
    ok(&data, &["fs", "rm", "-f", "/x"]);

    // chmod and chown show in stat.
    ok(&data, &["fs", "chmod", "0600", "/big.bin"]);
    assert_eq!(json(&data, &["fs", "stat", "/big.bin"])["mode"], "0600");
    ok(&data, &["fs", "chmod", "u+x,g+r", "/big.bin"]);
    let stat = json(&data, &["fs", "stat", "/big.bin"]);
    assert_eq!(stat["mode"], "0740", "{stat:#}");
    assert_eq!(stat["permissions"], "-rwxr-----", "{stat:#}");
    ok(&data, &["fs", "chown", "1234:5678", "/big.bin"]);
    let stat = json(&data, &["fs", "stat", "/big.bin"]);
    assert_eq!((stat["uid"].as_u64(), stat["gid"].as_u64()), (Some(1234), Some(5678)), "{stat:#}");
    ok(&data, &["fs", "chmod", "-R", "go-rwx", "/tree"]);
    assert_eq!(json(&data, &["fs", "stat", "/tree/d1/e1/f1.bin"])["mode"], "0600");
    let text = ok(&data, &["fs", "stat", "/big.bin"]);
    assert!(text.contains("mode:     0740 (-rwxr-----)") && text.contains("(1234)"), "{text}");

    // Another user is held to the permission bits.
    ok(&data, &["fs", "mkdir", "/private"]);
    assert_eq!(
        fails(&data, 1, &["fs", "--user", "1234:1234", "put", s(&more), "/private/f"]),
        "cairn fs: /private/f: Permission denied"
    );
    ok(&data, &["fs", "chown", "1234", "/private"]);
    ok(&data, &["fs", "--user", "1234:1234", "put", s(&more), "/private/f"]);
    assert_eq!(json(&data, &["fs", "stat", "/private/f"])["uid"], 1234);

    // A missing path: exit 3, one clear line, nothing on stdout.
    let out = cairn(&data, &["fs", "cat", "/nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe_output(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "cairn fs: /nope: No such file or directory\n");
    assert!(out.stdout.is_empty());
    assert_eq!(
        fails(&data, 3, &["fs", "get", "/nope", s(&local.join("nope"))]),
        "cairn fs: /nope: No such file or directory"
    );
    assert_eq!(cairn(&data, &["fs", "test", "-e", "/nope"]).status.code(), Some(1));
    assert_eq!(cairn(&data, &["fs", "-test", "-d", "/tree"]).status.code(), Some(0));

    // Hadoop's spellings.
    ok(&data, &["fs", "-mkdir", "-p", "/hadoop/a"]);
    ok(&data, &["fs", "-put", s(&big), "/hadoop/a/big"]);
    ok(&data, &["fs", "-copyFromLocal", s(&text_file), "/hadoop/a/text"]);
    let listing = ok(&data, &["fs", "-ls", "-R", "/hadoop"]);
    assert!(listing.contains("/hadoop/a/big") && listing.contains("/hadoop/a/text"), "{listing}");
    assert_eq!(ok(&data, &["fs", "-cat", "/hadoop/a/text"]), content);
    assert_eq!(ok(&data, &["fs", "-tail", "/hadoop/a/text"]).len(), 1024);
    let got = local.join("got");
    ok(&data, &["fs", "-copyToLocal", "/hadoop/a/big", s(&got)]);
    assert_eq!(md5_of_file(&got), md5_of_file(&big));
    ok(&data, &["fs", "-get", "/hadoop/a/text", s(&local.join("got2"))]);
    ok(&data, &["fs", "-mv", "/hadoop/a/text", "/hadoop/text"]);
    ok(&data, &["fs", "-chmod", "640", "/hadoop/text"]);
    ok(&data, &["fs", "-chown", "7:8", "/hadoop/text"]);
    let stat = json(&data, &["fs", "-stat", "/hadoop/text"]);
    assert_eq!(
        (stat["mode"].as_str(), stat["uid"].as_u64(), stat["gid"].as_u64()),
        (Some("0640"), Some(7), Some(8))
    );
    assert!(ok(&data, &["fs", "-du", "-s", "-h", "/hadoop"]).contains("/hadoop"));
    assert!(ok(&data, &["fs", "-df", "-h"]).contains("default"));
    ok(&data, &["fs", "-rm", "-r", "/hadoop"]);
    assert_eq!(fails(&data, 3, &["fs", "-ls", "/hadoop"]), "cairn fs: /hadoop: No such file or directory");
}

/// Files below `root` in the cluster (from `ls -R --json`).
fn cluster_files(data: &Path, root: &str) -> usize {
    let out = cairn(data, &["fs", "ls", "-R", root, "--json"]);
    if !out.status.success() {
        return 0;
    }
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    listing.as_array().map_or(0, |l| l.iter().filter(|e| e["type"] == "file").count())
}

/// "copied N files ... M unchanged" from distcp's last line.
fn copied_and_unchanged(stdout: &str) -> (u64, u64) {
    let line = stdout.lines().last().unwrap_or_default();
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .unwrap_or_else(|| panic!("{word} in {line}"));
        words[at - 1].parse().unwrap_or_else(|_| panic!("number before {word} in {line}"))
    };
    let copied = line
        .strip_prefix("copied ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no copied count in {stdout}"));
    (copied, number_before("unchanged"))
}

#[test]
fn distcp_copies_restarts_and_repairs_a_corrupted_copy() {
    let dir = test_dir("distcp");
    let data = dir.path().join("data");
    let cluster = Cluster::start(&data);
    let cldb = cluster.cluster["cldb"][0].as_str().expect("a CLDB address").to_owned();
    let src = dir.path().join("src");
    make_tree(&src, 40, 200 << 10);
    std::fs::write(src.join("large.bin"), random_bytes((6 << 20) + 1)).expect("write");
    let src_url = format!("file://{}", s(&src));

    // Local → cluster, then a second run copies nothing.
    let out = ok(&data, &["distcp", &src_url, "/backup"]);
    assert_eq!(copied_and_unchanged(&out), (41, 0), "{out}");
    let out = ok(&data, &["distcp", &src_url, "/backup"]);
    assert_eq!(copied_and_unchanged(&out), (0, 41), "{out}");

    // Cluster → cluster (named by URL) and cluster → local: the same bytes.
    let out = ok(&data, &["distcp", &format!("cairn://{cldb}/backup/src"), "/copy"]);
    assert_eq!(copied_and_unchanged(&out), (41, 0), "{out}");
    let restored = dir.path().join("restored");
    let restored_url = format!("file://{}", s(&restored));
    ok(&data, &["distcp", "/copy/src", &restored_url]);
    assert_eq!(tree_md5s(&restored.join("src")), tree_md5s(&src));

    // A corrupted copy (same size and modification time, other bytes) is found and copied again.
    let victim = restored.join("src/d1/e1/f1.bin");
    let mtime = std::fs::metadata(&victim).expect("stat").modified().expect("mtime");
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(mtime)))
        .expect("restore mtime");
    assert_ne!(md5_of_file(&victim), md5_of_file(&src.join("d1/e1/f1.bin")));
    let out = ok(&data, &["distcp", "/copy/src", &restored_url]);
    assert_eq!(copied_and_unchanged(&out), (1, 40), "{out}");
    assert_eq!(tree_md5s(&restored.join("src")), tree_md5s(&src));

    // A run killed halfway, then a run that completes it.
    let many = dir.path().join("many");
    for i in 0..300 {
        std::fs::create_dir_all(many.join(format!("g{}", i % 10))).expect("mkdir");
        std::fs::write(many.join(format!("g{}/h{i}", i % 10)), random_bytes(64 << 10)).expect("write");
    }
    let many_url = format!("file://{}", s(&many));
    let mut run = Command::new(CAIRN)
        .args(["distcp", "--parallel", "1", &many_url, "/many-copy", "--data-dir", s(&data)])
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start distcp");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    while Instant::now() < deadline && run.try_wait().expect("try_wait").is_none() {
        seen = cluster_files(&data, "/many-copy/many");
        if seen >= 30 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let finished_early = run.try_wait().expect("try_wait").is_some();
    let _ = run.kill();
    let _ = run.wait();
    let mut stderr = String::new();
    let _ = run.stderr.take().expect("stderr").read_to_string(&mut stderr);
    assert!(!finished_early, "distcp finished before it could be killed ({seen} files seen): {stderr}");
    assert!((30..300).contains(&seen), "killed after {seen} files");
    let out = ok(&data, &["distcp", &many_url, "/many-copy"]);
    let (copied, unchanged) = copied_and_unchanged(&out);
    assert_eq!(copied + unchanged, 300, "{out}");
    assert!(unchanged >= 28 && copied > 0, "the rerun copies only the rest: {out}");
    let back = dir.path().join("many-back");
    ok(&data, &["distcp", "/many-copy/many", &format!("file://{}", s(&back))]);
    assert_eq!(tree_md5s(&back.join("many")), tree_md5s(&many));
    let out = ok(&data, &["distcp", &many_url, "/many-copy"]);
    assert_eq!(copied_and_unchanged(&out), (0, 300), "{out}");

    // A missing source: exit 3.
    let out = cairn(&data, &["distcp", "/no/such", &restored_url]);
    assert_eq!(out.status.code(), Some(3), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cairn distcp: /no/such: No such file or directory")
    );
}
