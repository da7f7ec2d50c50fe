//! Export rules seen through the Linux kernel client: read-only exports, root squash, all squash
//! with anonuid/anongid, a client the exports do not list, subdirectory mounts; and the three
//! ways of changing the rules: `cairn exports reload`, SIGHUP and a restart with another
//! `--exports` file.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{KernelFixture, ServerConfig};

/// nfsvm's exit code when the guest could not mount the export.
const NFSVM_MOUNT_FAILED: i32 = 111;

fn write_exports(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

/// The default exports file of a server (`<data-dir>/exports`).
fn default_exports(config: &ServerConfig) -> PathBuf {
    config.data_dir.join("exports")
}

#[test]
fn read_only_export_after_cli_reload() {
    let fixture = KernelFixture::start("ro");
    let exports = default_exports(&fixture.server.config);
    let created = std::fs::read_to_string(&exports).unwrap_or_else(|error| {
        panic!("cairn up did not create the default exports file {}: {error}", exports.display())
    });
    assert!(
        created
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["/", "*(rw,no_root_squash)"]),
        "the default exports file should be `/ *(rw,no_root_squash)`, it is:\n{created}"
    );

    // A mounted client writes, then keeps trying to create files while the host switches the
    // export to read-only: the rules apply to existing mounts, without a remount.
    let mut guest = fixture.vm.spawn(
        r#"
echo "kept content" > kept.txt && mkdir kept-dir
check write-while-rw test -f kept.txt
sync
echo "written"
became_read_only=no
for i in $(seq 1 120); do
    if ! touch "probe-$i" 2> /tmp/probe.err; then
        grep -q "Read-only file system" /tmp/probe.err && became_read_only=yes
        break
    fi
    sleep 0.5
done
check_eq mounted-client-sees-read-only yes "$became_read_only"
check_eq mounted-client-still-reads "kept content" "$(cat kept.txt)"
finish
"#,
    );
    guest.wait_for_line("written", Duration::from_secs(120));
    write_exports(&exports, "/ *(ro)\n");
    fixture.server.reload_exports_with_cli();
    guest.finish().assert_checks(&[
        "write-while-rw",
        "mounted-client-sees-read-only",
        "mounted-client-still-reads",
    ]);

    // A fresh mount of the read-only export: reads work, every kind of change fails with EROFS.
    let run = fixture.vm.run(
        r#"
check_eq read-works "kept content" "$(cat kept.txt)"
check_eq listing-works "kept-dir kept.txt" "$(ls | grep kept | tr '\n' ' ' | sed 's/ $//')"
check_fails touch-new-erofs "Read-only file system" touch new.txt
# Opening an existing file for writing: the client asks ACCESS first, and a read-only export
# grants no MODIFY/EXTEND there (as knfsd does), so EACCES is as right as EROFS.
check_fails append-denied "Read-only file system|Permission denied" sh -c 'echo more >> kept.txt'
check_fails truncate-denied "Read-only file system|Permission denied" truncate -s 0 kept.txt
check_fails mkdir-erofs "Read-only file system" mkdir new-dir
check_fails rm-erofs "Read-only file system" rm kept.txt
check_fails rmdir-erofs "Read-only file system" rmdir kept-dir
check_fails mv-erofs "Read-only file system" mv kept.txt moved.txt
check_fails chmod-erofs "Read-only file system" chmod 600 kept.txt
check_fails symlink-erofs "Read-only file system" ln -s kept.txt link
check_fails hardlink-erofs "Read-only file system" ln kept.txt hard
drop_caches
check_eq content-unchanged "kept content" "$(cat kept.txt)"
finish
"#,
    );
    run.assert_checks(&[
        "read-works",
        "listing-works",
        "touch-new-erofs",
        "append-denied",
        "truncate-denied",
        "mkdir-erofs",
        "rm-erofs",
        "rmdir-erofs",
        "mv-erofs",
        "chmod-erofs",
        "symlink-erofs",
        "hardlink-erofs",
        "content-unchanged",
    ]);
}

#[test]
fn root_squash_after_sighup_reload() {
    let fixture = KernelFixture::start("rootsquash");
    let setup = fixture.vm.run(
        r#"
mkdir open closed && chmod 777 open && chmod 755 closed
echo secret > root-only.txt && chmod 600 root-only.txt
echo readable > readable.txt && chmod 644 readable.txt
check_eq setup-root-dir "0 0 755" "$(stat -c '%u %g %a' .)"
check_eq setup-open-dir "0 777" "$(stat -c '%u %a' open)"
finish
"#,
    );
    setup.assert_checks(&["setup-root-dir", "setup-open-dir"]);

    // `/ *(rw)`: root_squash is the default.
    write_exports(&default_exports(&fixture.server.config), "/ *(rw)\n");
    fixture.server.reload_exports_with_sighup();

    let run = fixture.vm.run(
        r#"
check_fails root-cannot-create-in-root-dir "Permission denied" touch new.txt
check_fails root-cannot-mkdir-in-755-dir "Permission denied" mkdir closed/sub
check_fails root-cannot-read-root-0600 "Permission denied" cat root-only.txt
check_eq root-reads-0644 readable "$(cat readable.txt)"
check root-creates-in-0777-dir touch open/squashed.txt
check_eq squashed-to-nobody "65534 65534" "$(stat -c '%u %g' open/squashed.txt)"
check root-mkdir-in-0777-dir mkdir open/squashed-dir
check_eq squashed-dir-owner "65534 65534" "$(stat -c '%u %g' open/squashed-dir)"
check_fails root-cannot-chmod-root-file "Operation not permitted" chmod 666 readable.txt
check_fails root-cannot-chown "Operation not permitted" chown 0 open/squashed.txt
check_eq non-root-not-squashed "1000 1000" "$(setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'touch open/by-1000 && stat -c "%u %g" open/by-1000')"
drop_caches
check_eq nothing-created-in-root-dir "" "$(ls | grep -x new.txt)"
finish
"#,
    );
    run.assert_checks(&[
        "root-cannot-create-in-root-dir",
        "root-cannot-mkdir-in-755-dir",
        "root-cannot-read-root-0600",
        "root-reads-0644",
        "root-creates-in-0777-dir",
        "squashed-to-nobody",
        "root-mkdir-in-0777-dir",
        "squashed-dir-owner",
        "root-cannot-chmod-root-file",
        "root-cannot-chown",
        "non-root-not-squashed",
        "nothing-created-in-root-dir",
    ]);
}

#[test]
fn all_squash_with_anonuid_after_restart_with_other_exports_file() {
    let mut fixture = KernelFixture::start_with("allsquash", |config| {
        let exports = config.data_dir.parent().expect("parent of the data dir").join("exports-open");
        write_exports(&exports, "/ *(rw,no_root_squash)\n");
        config.exports = Some(exports);
    });
    let setup = fixture
        .vm
        .run("mkdir open && chmod 777 open\ncheck_eq setup-open-dir 777 \"$(stat -c %a open)\"\nfinish\n");
    setup.assert_checks(&["setup-open-dir"]);

    // A clean stop, then the same data under `all_squash,anonuid=1234,anongid=1234`.
    let status = fixture.server.stop();
    assert!(
        status.success(),
        "cairn up should exit 0 on SIGTERM, got {status}\n{}",
        fixture.server.log_tail()
    );
    let squashing = fixture.dir.path().join("exports-all-squash");
    write_exports(&squashing, "/ *(rw,all_squash,anonuid=1234,anongid=1234)\n");
    fixture.server.restart_with_exports(Some(squashing));

    let run = fixture.vm.run(
        r#"
as_user() { local uid=$1; shift; setpriv --reuid="$uid" --regid="$uid" --clear-groups "$@"; }
check_eq open-dir-survived-restart 777 "$(stat -c %a open)"
check root-creates touch open/by-root.txt
check_eq root-file-owner "1234 1234" "$(stat -c '%u %g' open/by-root.txt)"
check user-creates as_user 1000 touch open/by-1000.txt
check_eq user-file-owner "1234 1234" "$(stat -c '%u %g' open/by-1000.txt)"
check user-mkdir as_user 1000 mkdir open/dir-by-1000
check_eq user-dir-owner "1234 1234" "$(stat -c '%u %g' open/dir-by-1000)"
check_fails squashed-root-cannot-create-in-root-dir "Permission denied" touch in-root.txt
finish
"#,
    );
    run.assert_checks(&[
        "open-dir-survived-restart",
        "root-creates",
        "root-file-owner",
        "user-creates",
        "user-file-owner",
        "user-mkdir",
        "user-dir-owner",
        "squashed-root-cannot-create-in-root-dir",
    ]);
}

#[test]
fn unlisted_client_cannot_mount_until_its_network_is_added() {
    let fixture = KernelFixture::start_with("denied", |config| {
        let path = config.data_dir.parent().expect("parent of the data dir").join("exports-denied");
        write_exports(&path, "/ 192.0.2.1(rw,no_root_squash)\n");
        config.exports = Some(path);
    });
    let exports = fixture.server.config.exports.clone().expect("the exports file given to the server");
    let denied = fixture.vm.run("echo mounted-although-denied; finish");
    assert_eq!(
        denied.exit_code,
        Some(NFSVM_MOUNT_FAILED),
        "a client the exports do not list must fail to mount (nfsvm exit 111):\n{}",
        denied.describe()
    );
    assert!(!denied.output.contains("mounted-although-denied"), "the script ran:\n{}", denied.describe());

    // nfsvm's guests live in 10.213.0.0/16 (tap mode).
    write_exports(&exports, "/ 192.0.2.1(rw,no_root_squash) 10.213.0.0/16(rw,no_root_squash)\n");
    fixture.server.reload_exports_with_sighup();
    let allowed = fixture.vm.run("check now-allowed touch allowed.txt\nfinish\n");
    allowed.assert_checks(&["now-allowed"]);
}

#[test]
fn mount_of_a_subdirectory_and_of_a_missing_path() {
    let mut fixture = KernelFixture::start("subdir");
    let setup = fixture.vm.run(
        "mkdir -p projects/alpha/inner && echo alpha > projects/alpha/file.txt && echo top > top.txt\n\
         check setup test -f projects/alpha/file.txt\nfinish\n",
    );
    setup.assert_checks(&["setup"]);

    fixture.vm.export = "/no/such/path".to_owned();
    let missing = fixture.vm.run("echo mounted-a-missing-path; finish");
    assert_eq!(
        missing.exit_code,
        Some(NFSVM_MOUNT_FAILED),
        "mounting a missing path must fail:\n{}",
        missing.describe()
    );

    // Any existing folder under an exported path can be mounted (here under `/`).
    fixture.vm.export = "/projects/alpha".to_owned();
    let run = fixture.vm.run(
        r#"
check_eq subdir-content alpha "$(cat file.txt)"
check_eq subdir-listing "file.txt inner" "$(ls | tr '\n' ' ' | sed 's/ $//')"
check subdir-write sh -c 'echo beta > new.txt'
finish
"#,
    );
    run.assert_checks(&["subdir-content", "subdir-listing", "subdir-write"]);

    fixture.vm.export = "/".to_owned();
    let back = fixture.vm.run("check_eq written-in-subdir beta \"$(cat projects/alpha/new.txt)\"\nfinish\n");
    back.assert_checks(&["written-in-subdir"]);
}
