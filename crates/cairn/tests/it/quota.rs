//! Quotas end to end on a `cairn up --nodes 3`: `cairn volume modify` gives the default volume a
//! hard and an advisory quota, the volume's master enforces the hard one (NFS3ERR_DQUOT through
//! any gateway), and the CLDB reports the bytes used and raises the advisory alarm.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nfs3_client::Nfs3Connection;
use nfs3_client::nfs3_types::nfs3::{
    CREATE3args, GETATTR3args, Nfs3Option, Nfs3Result, READ3args, REMOVE3args, SETATTR3args, WRITE3args,
    createhow3, diropargs3, filename3, nfs_fh3, nfsstat3, sattr3, stable_how,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::cluster::Cluster;
use crate::support::{
    CAIRN, describe_output, libnfs_ok, nfs_file_url, random_bytes, require_libnfs_utils, test_dir,
};

const MIB: usize = 1 << 20;
const QUOTA: u64 = 8 << 20;
const ADVISORY_QUOTA: u64 = 4 << 20;
/// How long the master may take to apply a change of the CLDB (a heartbeat is 1 s), and the
/// CLDB to learn the bytes used.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);

type Connection = Nfs3Connection<TokioIo<TcpStream>>;

/// Runs `cairn ARGS --cldb CLDB`.
fn cairn(cldb: &str, args: &[&str]) -> Output {
    Command::new(CAIRN)
        .args(args)
        .args(["--cldb", cldb])
        .env("CAIRN_LOG", "warn")
        .output()
        .expect("run cairn")
}

/// `cairn ARGS --json --cldb CLDB`, which must succeed: its output parsed.
fn json(cldb: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = cairn(cldb, &args);
    assert!(out.status.success(), "cairn {} failed: {}", args.join(" "), describe_output(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("cairn {} printed no JSON ({e}): {}", args.join(" "), describe_output(&out))
    })
}

/// `cairn ARGS --cldb CLDB`, which must fail with one line on stderr: that line.
fn fails(cldb: &str, args: &[&str]) -> String {
    let out = cairn(cldb, args);
    assert!(!out.status.success(), "cairn {} succeeded: {}", args.join(" "), describe_output(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "cairn {}: {}", args.join(" "), describe_output(&out));
    stderr
}

fn name(text: &str) -> filename3<'_> {
    filename3(Opaque::borrowed(text.as_bytes()))
}

async fn create(connection: &mut Connection, root: &nfs_fh3, file: &str) -> nfs_fh3 {
    let arguments = CREATE3args {
        where_: diropargs3 { dir: root.clone(), name: name(file) },
        how: createhow3::UNCHECKED(sattr3::default()),
    };
    match connection.create(&arguments).await.expect("CREATE") {
        Nfs3Result::Ok(created) => match created.obj {
            Nfs3Option::Some(handle) => handle,
            Nfs3Option::None => panic!("CREATE {file} returned no handle"),
        },
        Nfs3Result::Err((status, _)) => panic!("CREATE {file}: {status:?}"),
    }
}

/// One FILE_SYNC WRITE: `Ok` if all of `data` was written, else the status.
async fn write(
    connection: &mut Connection,
    file: &nfs_fh3,
    offset: u64,
    data: &[u8],
) -> Result<(), nfsstat3> {
    let arguments = WRITE3args {
        file: file.clone(),
        offset,
        count: data.len() as u32,
        stable: stable_how::FILE_SYNC,
        data: Opaque::borrowed(data),
    };
    match connection.write(&arguments).await.expect("WRITE") {
        Nfs3Result::Ok(done) => {
            assert_eq!(done.count as usize, data.len(), "short WRITE at {offset}");
            assert!(
                matches!(done.committed, stable_how::FILE_SYNC),
                "WRITE at {offset}: {:?}",
                done.committed
            );
            Ok(())
        }
        Nfs3Result::Err((status, _)) => Err(status),
    }
}

/// The whole content of `file`, READ by READ.
async fn read_all(connection: &mut Connection, file: &nfs_fh3) -> Vec<u8> {
    let mut content = Vec::new();
    loop {
        let arguments = READ3args { file: file.clone(), offset: content.len() as u64, count: MIB as u32 };
        match connection.read(&arguments).await.expect("READ") {
            Nfs3Result::Ok(read) => {
                content.extend_from_slice(&read.data);
                if read.eof {
                    return content;
                }
                assert!(read.count > 0, "READ at {} returned nothing before the end", content.len());
            }
            Nfs3Result::Err((status, _)) => panic!("READ at {}: {status:?}", content.len()),
        }
    }
}

async fn size_of(connection: &mut Connection, file: &nfs_fh3) -> u64 {
    match connection.getattr(&GETATTR3args { object: file.clone() }).await.expect("GETATTR") {
        Nfs3Result::Ok(found) => found.obj_attributes.size,
        Nfs3Result::Err((status, _)) => panic!("GETATTR: {status:?}"),
    }
}

async fn set_size(connection: &mut Connection, file: &nfs_fh3, size: u64) -> Result<(), nfsstat3> {
    let arguments = SETATTR3args {
        object: file.clone(),
        new_attributes: sattr3 { size: Nfs3Option::Some(size), ..sattr3::default() },
        guard: Nfs3Option::None,
    };
    match connection.setattr(&arguments).await.expect("SETATTR") {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((status, _)) => Err(status),
    }
}

async fn remove(connection: &mut Connection, root: &nfs_fh3, file: &str) {
    let arguments = REMOVE3args { object: diropargs3 { dir: root.clone(), name: name(file) } };
    match connection.remove(&arguments).await.expect("REMOVE") {
        Nfs3Result::Ok(_) => {}
        Nfs3Result::Err((status, _)) => panic!("REMOVE {file}: {status:?}"),
    }
}

/// Waits until the master refuses growth past the quota: a probe file is grown to one byte past
/// it (and truncated back while the quota is not in force yet), then removed.
async fn wait_for_the_quota(connection: &mut Connection, root: &nfs_fh3) {
    let probe = create(connection, root, "quota-probe").await;
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        match set_size(connection, &probe, QUOTA + 1).await {
            Err(nfsstat3::NFS3ERR_DQUOT) => break,
            Ok(()) => set_size(connection, &probe, 0).await.expect("truncate the probe"),
            Err(status) => panic!("SETATTR of the probe: {status:?}"),
        }
        assert!(Instant::now() < deadline, "the quota was not in force after {CONVERGE_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(size_of(connection, &probe).await, 0, "the refused SETATTR changed the size");
    remove(connection, root, "quota-probe").await;
}

/// Polls `cairn volume info default --json` until `check` holds; the last answer.
fn volume_info_until(cldb: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let info = json(cldb, &["volume", "info", "default"]);
        if check(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "{what} not seen within {CONVERGE_TIMEOUT:?}: {info:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_hard_quota_refuses_growth_with_dquot_and_the_advisory_one_raises_an_alarm() {
    require_libnfs_utils();
    let dir = test_dir("quota");
    let cluster = Cluster::start(&dir.path().join("data"));
    let cldb: Vec<&str> = cluster.cluster["cldb"]
        .as_array()
        .expect("cldb in cluster.json")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let cldb = cldb.join(",");

    // Nothing written yet: the master reports an empty volume.
    volume_info_until(&cldb, "the default volume's size", |info| info["size_bytes"] == 0);

    // Mistakes change nothing: one line, a non-zero exit.
    let error = fails(&cldb, &["volume", "modify", "default", "--quota", "4M", "--advisory-quota", "8M"]);
    assert!(error.contains("advisory quota") && error.contains("above the hard quota"), "{error}");
    let error = fails(&cldb, &["volume", "modify", "nope", "--quota", "8M"]);
    assert!(error.contains("no such volume"), "{error}");
    let error = fails(&cldb, &["volume", "modify", "default", "--replication", "6"]);
    assert!(error.contains("replication"), "{error}");
    let error = fails(&cldb, &["volume", "modify", "default"]);
    assert!(error.contains("nothing to change"), "{error}");

    let modified =
        json(&cldb, &["volume", "modify", "default", "--quota", "8M", "--advisory-quota", "4M"])["volume"]
            .clone();
    assert_eq!(
        (modified["quota_bytes"].as_u64(), modified["advisory_quota_bytes"].as_u64()),
        (Some(QUOTA), Some(ADVISORY_QUOTA)),
        "{modified:#}"
    );
    let info = json(&cldb, &["volume", "info", "default"]);
    assert_eq!(info["volume"], modified, "volume info shows the change");

    let gateway: SocketAddr = cluster.nfs[0];
    let first_bytes = random_bytes(6 * MIB);
    let second_bytes = random_bytes(3 * MIB);
    let overwrite = random_bytes(MIB);
    crate::libnfs::with_nfs3_client(gateway, async |connection, root| {
        wait_for_the_quota(connection, &root).await;

        // 6 MiB, one FILE_SYNC WRITE per MiB: under the quota.
        let first = create(connection, &root, "first.bin").await;
        for (index, chunk) in first_bytes.chunks(MIB).enumerate() {
            let written = write(connection, &first, (index * MIB) as u64, chunk).await;
            assert_eq!(written, Ok(()), "MiB {index} of first.bin");
        }

        // A second file: 2 MiB take the volume to the quota exactly; the third would pass it.
        let second = create(connection, &root, "second.bin").await;
        for (index, chunk) in second_bytes.chunks(MIB).enumerate() {
            let written = write(connection, &second, (index * MIB) as u64, chunk).await;
            let used_after = (6 + index as u64 + 1) << 20;
            if used_after <= QUOTA {
                assert_eq!(written, Ok(()), "MiB {index} of second.bin ({used_after} bytes used after it)");
            } else {
                assert!(
                    matches!(written, Err(nfsstat3::NFS3ERR_DQUOT)),
                    "MiB {index} of second.bin would take the volume to {used_after} bytes: {written:?}"
                );
            }
        }
        assert_eq!(size_of(connection, &second).await, 2 << 20, "the refused WRITE changed the size");
        // Growth by a single byte, of any file, is refused too.
        assert!(matches!(write(connection, &first, 6 << 20, b"x").await, Err(nfsstat3::NFS3ERR_DQUOT)));

        // At the quota, the first file reads back whole and can be overwritten inside.
        assert!(read_all(connection, &first).await == first_bytes, "first.bin reads back other bytes");
        assert_eq!(
            write(connection, &first, 2 << 20, &overwrite).await,
            Ok(()),
            "overwrite inside first.bin"
        );

        // Removing the second file frees its 2 MiB: a new file may use them again.
        remove(connection, &root, "second.bin").await;
        let third = create(connection, &root, "third.bin").await;
        for index in 0..2 {
            let written =
                write(connection, &third, (index * MIB) as u64, &second_bytes[index * MIB..][..MIB]).await;
            assert_eq!(written, Ok(()), "MiB {index} of third.bin after the removal");
        }
    });

    // Through another gateway, the first file has its overwritten MiB and nothing else changed.
    let mut expected = first_bytes.clone();
    expected[2 * MIB..3 * MIB].copy_from_slice(&overwrite);
    let out = libnfs_ok(None, "nfs-cat", &[&nfs_file_url(cluster.nfs[1], "/first.bin", "")]);
    assert!(
        out.stdout == expected,
        "first.bin through {} differs ({} bytes)",
        cluster.nfs[1],
        out.stdout.len()
    );

    // The CLDB learns the bytes used from the master (6 + 2 MiB), and raises the advisory alarm
    // (above 4 MiB) but not the hard one (at 8 MiB, not above).
    let info = volume_info_until(&cldb, "8 MiB used", |info| info["size_bytes"] == QUOTA);
    assert_eq!(info["volume"]["quota_bytes"], QUOTA, "{info:#}");
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let alarms = loop {
        let alarms = json(&cldb, &["alarm", "list"]);
        let kinds: Vec<&str> = alarms
            .as_array()
            .expect("alarm list is an array")
            .iter()
            .filter(|alarm| alarm["subject"] == "default")
            .filter_map(|alarm| alarm["kind"].as_str())
            .collect();
        if kinds.contains(&"AdvisoryQuotaExceeded") {
            assert!(!kinds.contains(&"QuotaExceeded"), "at the hard quota is not above it: {alarms:#}");
            break alarms;
        }
        assert!(Instant::now() < deadline, "no advisory quota alarm within {CONVERGE_TIMEOUT:?}: {alarms:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let alarm = alarms
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["kind"] == "AdvisoryQuotaExceeded")
        .expect("alarm");
    assert!(alarm["message"].as_str().is_some_and(|m| m.contains("advisory quota")), "{alarm:#}");
}
