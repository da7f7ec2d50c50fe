//! The WebHDFS API of `cairn up --nodes 3`, driven by a real third-party client: HdfsCLI (the
//! `hdfs` package from PyPI) in a venv made for the test. It uploads (the two-step CREATE),
//! lists, reads at an offset with a length, appends, overwrites, renames, changes permission
//! and owner, asks for the content summary, checksum and block locations, checks
//! RemoteException errors, and deletes (`webhdfs.py` asserts each step).

use std::path::Path;
use std::process::Command;

use crate::cluster::Cluster;
use crate::support::test_dir;

/// A venv in `dir` with HdfsCLI installed; its python.
fn hdfscli_venv(dir: &Path) -> std::path::PathBuf {
    let venv = dir.join("venv");
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).output();
    match made {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 -m venv failed (install python3-venv): {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("cannot run python3 (install python3 and python3-venv): {error}"),
    }
    let python = venv.join("bin/python");
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "hdfs"])
        .output()
        .expect("run pip in the venv");
    assert!(
        pip.status.success(),
        "pip install hdfs failed (PyPI must be reachable): {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    python
}

#[test]
fn hdfscli_uploads_lists_reads_appends_renames_and_deletes() {
    let dir = test_dir("webhdfs");
    let python = hdfscli_venv(dir.path());
    // Below the ephemeral range (see `cluster_port_args`).
    let console_port = crate::support::port_run_base() + 4 * 6_100;
    let _cluster =
        Cluster::start_with(&dir.path().join("data"), 3, &["--console-port", &console_port.to_string()]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/webhdfs.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(console_port.to_string())
        .arg(dir.path())
        .output()
        .expect("run webhdfs.py");
    assert!(
        output.status.success(),
        "webhdfs.py failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("webhdfs.py prints one JSON line");
    let expected = std::fs::read(dir.path().join("expected.bin")).expect("expected.bin");
    assert_eq!(expected.len(), 3 * 1024 * 1024 + 123 + 500_000);
    // The checksum is the CRC32C of the file's bytes.
    let crc = format!("{:08x}", crc32c::crc32c(&expected));
    assert_eq!(report["checksum"], crc.as_str(), "GETFILECHECKSUM of the file");
}
