//! The Linux kernel NFSv3 client (in an nfsvm guest, tap networking) against `cairn up` in a
//! network namespace: data integrity, everyday file operations, concurrency, crash durability
//! and permission checks. The guest scripts live in `guest/`; each check prints `ok NAME` or
//! `FAIL NAME: detail`.

use std::time::Duration;

use crate::support::{KernelFixture, md5_of_file};

const BIG_FILE_SCRIPT: &str = include_str!("guest/big_file.sh");
const TREE_SCRIPT: &str = include_str!("guest/tree.sh");
const FILE_OPS_SCRIPT: &str = include_str!("guest/file_ops.sh");
const CONCURRENT_SCRIPT: &str = include_str!("guest/concurrent.sh");
const DURABILITY_WRITE_SCRIPT: &str = include_str!("guest/durability_write.sh");
const WRITE_THROUGH_RESTART_SCRIPT: &str = include_str!("guest/write_through_restart.sh");
const PERMISSIONS_SCRIPT: &str = include_str!("guest/permissions.sh");

/// Builds a guest script that checks `md5 PATH HEX` and `meta PATH VALUE` lines printed earlier.
fn verification_script(md5s: &[(String, String)], metas: &[(String, String)]) -> String {
    let mut script = String::from("drop_caches\n");
    for (path, md5) in md5s {
        script.push_str(&format!("check_eq 'md5 {path}' {md5} \"$(md5 {path})\"\n"));
    }
    for (path, meta) in metas {
        script.push_str(&format!(
            "check_eq 'meta {path}' {meta} \"$(stat -c '%a:%s:%F' {path} | tr ' ' '_')\"\n"
        ));
    }
    script.push_str("finish\n");
    script
}

fn check_names(prefix: &str, pairs: &[(String, String)]) -> Vec<String> {
    pairs.iter().map(|(path, _)| format!("{prefix} {path}")).collect()
}

#[test]
fn big_random_file_256_mib_md5_in_guest_and_on_host() {
    let mut fixture = KernelFixture::start("big");
    fixture.vm.memory_mib = Some(1536);
    let run = fixture.vm.run(BIG_FILE_SCRIPT);
    run.assert_checks(&["write-big", "size-big", "md5-big"]);
    let written = run.keyed_values("md5");
    assert_eq!(written.len(), 1, "the guest printed no md5 of big.bin:\n{}", run.describe());
    let guest_md5 = &written[0].1;

    // A second, independent read path: libnfs on the host, inside the server's namespace.
    let copy = fixture.dir.path().join("big.bin");
    let copy_text = copy.to_str().expect("UTF-8 temp path").to_owned();
    fixture.libnfs_ok("nfs-cp", &[&fixture.file_url("/big.bin"), &copy_text]);
    let size = std::fs::metadata(&copy).expect("metadata of the copy").len();
    assert_eq!(size, 256 << 20, "nfs-cp copied {size} bytes of big.bin");
    assert_eq!(
        &md5_of_file(&copy),
        guest_md5,
        "big.bin read by libnfs on the host differs from what the guest wrote"
    );
}

#[test]
fn tree_copy_move_rename_over_remove_and_rsync() {
    let fixture = KernelFixture::start("tree");
    let run = fixture.vm.run(TREE_SCRIPT);
    run.assert_checks(&[
        "tree-source-count",
        "cp-r",
        "diff-after-cp",
        "diff-after-cp-cold",
        "count-after-cp",
        "mv-folder",
        "mv-folder-old-gone",
        "mv-folder-content",
        "mv-file",
        "mv-file-old-gone",
        "mv-file-content",
        "mv-file-listing",
        "mv-over-existing",
        "mv-over-content",
        "mv-over-source-gone",
        "mv-over-listing",
        "rm-r",
        "rm-r-gone",
        "rm-r-listing",
        "rsync-a",
        "diff-after-rsync",
        "rsync-modes-mtimes",
        "rsync-again-nothing",
    ]);
}

#[test]
fn links_appends_overwrites_truncate_and_executables() {
    let fixture = KernelFixture::start("fileops");
    let run = fixture.vm.run(FILE_OPS_SCRIPT);
    run.assert_checks(&[
        "symlink-create",
        "symlink-readlink",
        "symlink-type",
        "symlink-follow",
        "symlink-dir-follow",
        "symlink-dangling-readlink",
        "symlink-dangling-no-target",
        "symlink-write-through",
        "symlink-remove-keeps-target",
        "hardlink-create",
        "hardlink-same-inode",
        "hardlink-count-2",
        "hardlink-shared-content",
        "hardlink-remove-one",
        "hardlink-count-1",
        "hardlink-survives",
        "append-exact",
        "append-size",
        "notrunc-size",
        "notrunc-content",
        "truncate-down-size",
        "truncate-down-content",
        "truncate-up-size",
        "truncate-up-kept",
        "truncate-up-zeros",
        "truncate-zero-size",
        "sparse-size",
        "sparse-hole-zeros",
        "sparse-tail",
        "exec-mode",
        "exec-relative",
        "exec-absolute",
        "exec-denied-without-x",
    ]);
    // The appended file, read by a second client (libnfs on the host).
    let appended = fixture.libnfs_ok("nfs-cat", &[&fixture.file_url("/appended.txt")]);
    assert_eq!(String::from_utf8_lossy(&appended.stdout), "first line\nsecond line\nthird line\n");
}

#[test]
fn reader_during_appends_and_two_writers_in_one_file() {
    let fixture = KernelFixture::start("concurrent");
    let run = fixture.vm.run(CONCURRENT_SCRIPT);
    run.assert_checks(&[
        "append-final-content",
        "append-final-content-cold",
        "tail-f-saw-everything",
        "reader-snapshots-are-prefixes",
        "reader-saw-growth",
        "two-writers-buffered-exit",
        "two-writers-buffered-size",
        "two-writers-buffered-region-a",
        "two-writers-buffered-region-b",
        "two-writers-direct-exit",
        "two-writers-direct-size",
        "two-writers-direct-region-a",
        "two-writers-direct-region-b",
    ]);
}

#[test]
fn synced_data_survives_kill_9_and_restart() {
    let mut fixture = KernelFixture::start("kill9");
    let written = fixture.vm.run(DURABILITY_WRITE_SCRIPT);
    written.assert_checks(&["write-cp", "write-dd-fsync", "write-dd-direct", "write-cat", "six-files"]);
    let md5s = written.keyed_values("md5");
    let metas = written.keyed_values("meta");
    assert_eq!((md5s.len(), metas.len()), (7, 4), "md5/meta lines missing:\n{}", written.describe());

    // The guest synced and unmounted; now the server crashes and comes back on the same data.
    fixture.server.kill9();
    fixture.server.restart();

    let verified = fixture.vm.run(&format!(
        "check durable-deleted-stays-deleted test ! -e durable/deleted.txt\n\
         check_eq durable-symlink nested/file-3 \"$(readlink durable/link-to-3)\"\n{}",
        verification_script(&md5s, &metas)
    ));
    let mut expected = check_names("md5", &md5s);
    expected.extend(check_names("meta", &metas));
    expected.push("durable-deleted-stays-deleted".to_owned());
    expected.push("durable-symlink".to_owned());
    verified.assert_checks(&expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn writes_continue_across_server_kill_9_and_restart() {
    let mut fixture = KernelFixture::start("midwrite");
    let mut guest = fixture.vm.spawn(WRITE_THROUGH_RESTART_SCRIPT);
    // A few MiB in, crash the server in the middle of the writes and bring it back on the same
    // port: the hard-mounted client retries, and must resend whatever the crashed incarnation
    // had not made durable (its write verifier changes).
    guest.wait_for_line("progress 4", Duration::from_secs(240));
    fixture.server.kill9();
    let seen_at_kill = guest.lines_so_far();
    assert!(
        !seen_at_kill.iter().any(|line| line == "progress 31"),
        "the kill came after the guest had finished writing; the test proves nothing:\n{}",
        seen_at_kill.join("\n")
    );
    fixture.server.restart();
    let run = guest.finish();
    run.assert_checks(&[
        "write-before-crash",
        "write-during-crash-returned",
        "during-size",
        "during-content",
        "before-content",
    ]);
    let md5s = run.keyed_values("md5");
    assert_eq!(md5s.len(), 2, "md5 lines missing:\n{}", run.describe());

    // What the client wrote after the restart is durable too.
    fixture.server.kill9();
    fixture.server.restart();
    let verified = fixture.vm.run(&verification_script(&md5s, &[]));
    let expected = check_names("md5", &md5s);
    verified.assert_checks(&expected.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Mode-bit checks for ordinary users: the guest's root (not squashed by the default exports)
/// prepares files of uid 1001, then `setpriv` runs commands as uid 1000 and 1001.
#[test]
fn permission_checks_for_non_root_users() {
    let fixture = KernelFixture::start("perms");
    let run = fixture.vm.run(PERMISSIONS_SCRIPT);
    run.assert_checks(&[
        "setup-owner",
        "setpriv-works",
        "other-cannot-read-0600",
        "owner-can-read-0600",
        "other-can-read-0644",
        "other-cannot-write-0644",
        "owner-can-write-0644",
        "group-member-can-read-0640",
        "non-member-cannot-read-0640",
        "other-cannot-create-in-0755-dir",
        "other-cannot-remove-in-0755-dir",
        "other-cannot-rename-in-0755-dir",
        "owner-can-create-in-0755-dir",
        "created-file-owner",
        "other-cannot-chmod",
        "other-cannot-chown",
        "non-root-cannot-create-in-root-dir",
        "content-unchanged-after-denials",
        "nothing-created-by-denied-users",
    ]);
}

/// A plain `mount -t nfs -o vers=3,nolock host:/ /mnt`: no ports given, so the kernel asks the
/// portmapper on port 111 for the NFS and MOUNT ports (`port=0,mountport=0` override the ports
/// nfsvm passes, and 0 means "ask the portmapper").
#[test]
fn plain_mount_finds_the_ports_through_the_portmapper() {
    let mut fixture = KernelFixture::start_with("portmap", |config| config.portmap = true);
    assert!(
        fixture.server.ready_line.contains("portmap=0.0.0.0:111"),
        "the server did not bind the portmapper on 111: {}",
        fixture.server.ready_line
    );
    fixture.vm.mount_options = Some("port=0,mountport=0".to_owned());
    let run = fixture.vm.run(
        "check_eq no-explicit-port '' \"$(grep ' /mnt ' /proc/mounts | grep -o 'port=[0-9]*' | grep -v '^port=0$' | grep -v mountport)\"\n\
         echo through-portmapper > pm.txt\n\
         check_eq write-read through-portmapper \"$(cat pm.txt)\"\n\
         finish\n",
    );
    run.assert_checks(&["no-explicit-port", "write-read"]);
}
