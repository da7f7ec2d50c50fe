//! A real crash: a child process (this test binary, re-executed) works on a store and prints
//! every operation before it starts (`> …`) and once it is acknowledged (`< ok`); the parent
//! kills it with SIGKILL at a random moment, reopens the store, and checks every acknowledged
//! durable operation. A second thread in the child makes concurrent unstable writes, commits and
//! namespace changes that are not checked except that nothing may read as corrupt.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_store::{CreateHow, SetAttributes, Stability, Store, StoreError};

use crate::common::{self, Rng, root};

const CHILD_ENV: &str = "CAIRN_KILL9_DIR";
const ROUNDS: u64 = 3;

/// The bytes the child writes for (file, write index): a pattern the parent can recompute.
fn pattern(file: u64, write: u64, length: usize) -> Vec<u8> {
    Rng(file << 32 | write).bytes(length)
}

/// The child half of [`killed_child_recovers`]: runs when that test re-executes this binary with
/// `CHILD_ENV` set, until it is killed.
fn kill9_child(dir: String) {
    let round: u64 =
        std::env::var("CAIRN_KILL9_ROUND").ok().and_then(|value| value.parse().ok()).unwrap_or(0);
    let store =
        std::sync::Arc::new(Store::open(common::config(std::path::Path::new(&dir))).expect("child open"));
    let noise_store = store.clone();
    std::thread::spawn(move || noise(&noise_store, round));
    let mut rng = Rng(round * 7919 + 1);
    let top = store.root();
    let mut files: Vec<(u64, cairn_types::Fid, u64, u64)> = Vec::new(); // (file number, fid, end, writes)
    println!("READY");
    for file_number in 0.. {
        let choice = rng.below(10);
        if files.is_empty() || choice < 3 {
            let number = round * 1_000_000 + file_number;
            let name = format!("f{number}");
            println!("> create {name}");
            let fid = store
                .create(&root(), top, name.as_bytes(), CreateHow::Guarded(SetAttributes::default()))
                .expect("create")
                .fid;
            println!("< ok {} {}", fid.inode, fid.uniquifier);
            files.push((number, fid, 0, 0));
            continue;
        }
        let index = rng.below(files.len() as u64) as usize;
        let (number, fid, end, writes) = files[index];
        match choice {
            3..=7 => {
                // Append at or after the end (sometimes leaving a hole), never overlapping.
                let gap = if rng.chance(30) { rng.below(3 << 20) } else { 0 };
                let offset = end + gap;
                let length = (rng.below(300_000) + 1) as usize;
                let data = pattern(number, writes, length);
                let stable = rng.chance(50);
                println!("> write f{number} {offset} {length} {writes}");
                let stability = if stable { Stability::FileSync } else { Stability::Unstable };
                store.write(&root(), fid, offset, &data, stability).expect("write");
                if !stable {
                    store.commit(fid, 0, 0).expect("commit");
                }
                println!("< ok");
                files[index] = (number, fid, offset + length as u64, writes + 1);
            }
            8 => {
                let size = end + rng.below(100_000);
                println!("> extend f{number} {size}");
                store
                    .setattr(
                        &root(),
                        fid,
                        SetAttributes { size_bytes: Some(size), ..Default::default() },
                        None,
                    )
                    .expect("extend");
                println!("< ok");
                files[index] = (number, fid, size, writes);
            }
            _ => {
                println!("> remove f{number}");
                store.remove(&root(), top, format!("f{number}").as_bytes()).expect("remove");
                println!("< ok");
                files.remove(index);
            }
        }
    }
}

/// Concurrent, unchecked activity: unstable overwrites, commits, creates and removes.
fn noise(store: &Store, round: u64) {
    let mut rng = Rng(round + 99);
    let noise_dir = match store.mkdir(
        &root(),
        store.root(),
        format!("noise{round}").as_bytes(),
        SetAttributes::default(),
    ) {
        Ok(created) => created.fid,
        Err(error) => panic!("noise mkdir: {error}"),
    };
    let mut fids = Vec::new();
    for index in 0u64.. {
        if fids.len() < 4 || rng.chance(5) {
            let name = format!("n{index}");
            let fid = store.create(
                &root(),
                noise_dir,
                name.as_bytes(),
                CreateHow::Unchecked(SetAttributes::default()),
            );
            fids.push(fid.expect("noise create").fid);
        }
        let fid = fids[rng.below(fids.len() as u64) as usize];
        let offset = rng.below(3 << 20);
        let length = (rng.below(200_000) + 1) as usize;
        let data = rng.bytes(length);
        store.write(&root(), fid, offset, &data, Stability::Unstable).expect("noise write");
        if rng.chance(10) {
            store.commit(fid, 0, 0).expect("noise commit");
        }
        if rng.chance(5) {
            let size = rng.below(3 << 20);
            store
                .setattr(&root(), fid, SetAttributes { size_bytes: Some(size), ..Default::default() }, None)
                .expect("noise truncate");
        }
    }
}

/// An acknowledged file: inode, uniquifier, acknowledged writes (offset, length, index), and
/// the size it has at least.
type AcknowledgedFile = (u64, u32, Vec<(u64, usize, u64)>, u64);

#[derive(Default, Debug)]
struct Expected {
    /// Live files by name.
    files: BTreeMap<String, AcknowledgedFile>,
    removed: Vec<String>,
    /// The operation in flight when the child died (its effect is unknown).
    in_flight: Option<String>,
}

fn parse(lines: &[String], expected: &mut Expected) {
    let mut pending: Option<Vec<String>> = None;
    for line in lines {
        if let Some(op) = line.strip_prefix("> ") {
            pending = Some(op.split(' ').map(str::to_string).collect());
            continue;
        }
        let Some(rest) = line.strip_prefix("< ok") else { continue };
        let op = pending.take().expect("acknowledgement without an operation");
        match op[0].as_str() {
            "create" => {
                let mut parts = rest.split_whitespace();
                let inode: u64 = parts.next().expect("inode").parse().expect("inode");
                let uniquifier: u32 = parts.next().expect("uniquifier").parse().expect("uniquifier");
                expected.files.insert(op[1].clone(), (inode, uniquifier, Vec::new(), 0));
            }
            "write" => {
                let file = expected.files.get_mut(&op[1]).expect("written file");
                let (offset, length, index): (u64, usize, u64) = (
                    op[2].parse().expect("offset"),
                    op[3].parse().expect("length"),
                    op[4].parse().expect("index"),
                );
                file.2.push((offset, length, index));
                file.3 = file.3.max(offset + length as u64);
            }
            "extend" => {
                let file = expected.files.get_mut(&op[1]).expect("extended file");
                file.3 = file.3.max(op[2].parse().expect("size"));
            }
            "remove" => {
                expected.files.remove(&op[1]);
                expected.removed.push(op[1].clone());
            }
            other => panic!("unknown operation {other}"),
        }
    }
    expected.in_flight = pending.map(|op| op.join(" "));
}

fn verify(dir: &std::path::Path, expected: &Expected) {
    let store = Store::open(common::config(dir)).expect("reopen after kill");
    // The used-bytes row was committed with the inode records it sums.
    assert_eq!(store.used_bytes(), common::walk_used_bytes(&store), "used bytes after the kill");
    let in_flight_name = expected.in_flight.as_ref().and_then(|op| op.split(' ').nth(1).map(str::to_string));
    for (name, (inode, uniquifier, writes, size)) in &expected.files {
        let uncertain = in_flight_name.as_deref() == Some(name.as_str());
        let found = store.lookup(&root(), store.root(), name.as_bytes());
        let found = match found {
            Ok(found) => found,
            Err(StoreError::NotFound) if uncertain => continue,
            Err(error) => panic!("acknowledged file {name} is gone: {error}"),
        };
        assert_eq!((found.fid.inode, found.fid.uniquifier), (*inode, *uniquifier), "{name}");
        assert!(
            found.attributes.size_bytes >= *size,
            "{name}: size {} < {size}",
            found.attributes.size_bytes
        );
        let number: u64 = name[1..].parse().expect("file number");
        for &(offset, length, index) in writes {
            let data =
                store.read(&root(), found.fid, offset, length as u32).expect("read acknowledged write").data;
            assert!(
                data == pattern(number, index, length),
                "{name}: acknowledged write {index} at {offset} differs"
            );
        }
    }
    for name in &expected.removed {
        assert!(
            matches!(store.lookup(&root(), store.root(), name.as_bytes()), Err(StoreError::NotFound)),
            "{name} is back"
        );
    }
    // Nothing reads as corrupt, anywhere (the noise files included).
    let mut directories = vec![store.root()];
    while let Some(directory) = directories.pop() {
        let page = store.readdir(&root(), directory, 0, 100_000, true).expect("readdir");
        for entry in page.entries.iter().filter(|entry| entry.name != b"." && entry.name != b"..") {
            let attributes = entry.attributes.expect("attributes");
            match attributes.kind {
                cairn_store::FileKind::Directory => directories.push(entry.fid),
                cairn_store::FileKind::Regular => {
                    let mut offset = 0;
                    while offset < attributes.size_bytes {
                        let result = store.read(&root(), entry.fid, offset, 1 << 20);
                        let result = result
                            .unwrap_or_else(|error| panic!("reading {:?} at {offset}: {error}", entry.name));
                        offset += 1 << 20;
                        assert!(!result.data.is_empty());
                    }
                }
                _ => {}
            }
        }
    }
    store.sync_all().expect("sync_all");
}

#[test]
fn killed_child_recovers() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        kill9_child(dir);
        return;
    }
    let seed = common::seed("killed_child_recovers");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut expected = Expected::default();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["kill9::killed_child_recovers", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("CAIRN_KILL9_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (sender, receiver) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let ready_deadline = Instant::now() + Duration::from_secs(60);
        while !lines.iter().any(|line: &String| line.ends_with("READY")) {
            let timeout = ready_deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(timeout) {
                Ok(line) => lines.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("child never got ready: {lines:?}");
                }
            }
        }
        let delay = Duration::from_millis(300 + rng.below(1500));
        let started = Instant::now();
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("wait child");
        reader.join().expect("reader");
        lines.extend(receiver.try_iter());
        assert!(status.code().is_none(), "the child ended by itself: {status:?}");
        let acknowledged = lines.iter().filter(|line| line.starts_with("< ok")).count();
        eprintln!(
            "round {round}: killed after {:?}, {acknowledged} acknowledged operations",
            started.elapsed()
        );
        parse(&lines, &mut expected);
        verify(dir.path(), &expected);
        assert!(acknowledged > 0, "the child acknowledged nothing");
        // The next round continues from what survived: the in-flight operation is settled now.
        if let Some(op) = expected.in_flight.take()
            && op.starts_with("remove")
        {
            let name = op.split(' ').nth(1).expect("name").to_string();
            expected.files.remove(&name);
        }
        let store = Store::open(common::config(dir.path())).expect("reopen");
        expected.files.retain(|name, _| store.lookup(&root(), store.root(), name.as_bytes()).is_ok());
    }
}
