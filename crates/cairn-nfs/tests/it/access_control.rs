//! Exports (checked at MNT and on every request, reloaded without restart), squashing, and the
//! store's permission checks seen through NFS.

use nfs3_client::nfs3_types::mount::mountstat3;
use nfs3_client::nfs3_types::nfs3::{self, Nfs3Option, nfs_fh3, nfsstat3, stable_how};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{ConnectError, MountError};

use crate::support::*;

fn mount_refused_with(result: Result<Connection, ConnectError>) -> mountstat3 {
    match result {
        Err(ConnectError::Mount(MountError::Denied(status))) => status,
        Err(other) => panic!("mount failed otherwise: {other}"),
        Ok(_) => panic!("mount succeeded"),
    }
}

async fn owner_of(connection: &mut Connection, handle: &nfs_fh3) -> (u32, u32) {
    let attributes =
        ok(connection.getattr(&nfs3::GETATTR3args { object: fh(handle) }).await.expect("GETATTR"));
    (attributes.obj_attributes.uid, attributes.obj_attributes.gid)
}

async fn try_create(connection: &mut Connection, directory: &nfs_fh3, name: &str) -> nfsstat3 {
    let result = connection
        .create(&nfs3::CREATE3args {
            where_: dirop(directory, name),
            how: nfs3::createhow3::UNCHECKED(nfs3::sattr3::default()),
        })
        .await
        .expect("CREATE call");
    status(&result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_checked_at_mount_and_on_every_request_and_reload() {
    let gateway = TestGateway::start("/ 10.9.9.9(rw)\n").await;
    let refused = mount_refused_with(gateway.mount("/", unix(0, 0, &[])).await);
    assert!(matches!(refused, mountstat3::MNT3ERR_ACCES), "{refused}");

    gateway
        .set_exports("/ 127.0.0.1(rw,no_root_squash)\n/missing 127.0.0.1(rw,no_root_squash)\n")
        .expect("reload");
    let mut c = gateway.mount_root().await;
    let root = c.root_nfs_fh3();
    ok(c.getattr(&nfs3::GETATTR3args { object: fh(&root) }).await.expect("GETATTR"));
    let missing = mount_refused_with(gateway.mount("/missing", unix(0, 0, &[])).await);
    assert!(matches!(missing, mountstat3::MNT3ERR_NOENT), "{missing}");
    // A folder below an export mounts, with the folder's handle.
    let sub = mkdir(&mut c, &root, "sub", 0o755).await;
    let sub_mount = gateway.mount("/sub/", unix(0, 0, &[])).await.expect("mount a folder below /");
    assert_eq!(sub_mount.root_nfs_fh3(), sub);
    gateway.set_exports("/missing 127.0.0.1(rw)\n").expect("reload");
    let not_exported = mount_refused_with(gateway.mount("/sub", unix(0, 0, &[])).await);
    assert!(matches!(not_exported, mountstat3::MNT3ERR_ACCES), "{not_exported}");

    // The rules change under an existing mount: the next request is refused.
    gateway.set_exports("/ 10.9.9.9(rw)\n").expect("reload");
    let refused = c.getattr(&nfs3::GETATTR3args { object: fh(&root) }).await.expect("GETATTR");
    assert_eq!(status(&refused), nfsstat3::NFS3ERR_ACCES);
    let refused = c.lookup(&nfs3::LOOKUP3args { what: dirop(&root, "x") }).await.expect("LOOKUP");
    assert_eq!(status(&refused), nfsstat3::NFS3ERR_ACCES);

    // An invalid file is refused and the previous rules stay.
    assert!(gateway.set_exports("/ 127.0.0.1(bogus_option)\n").is_err());
    let still_refused = c.getattr(&nfs3::GETATTR3args { object: fh(&root) }).await.expect("GETATTR");
    assert_eq!(status(&still_refused), nfsstat3::NFS3ERR_ACCES);

    gateway.set_exports("/ 127.0.0.0/8(rw,no_root_squash)\n").expect("reload");
    ok(c.getattr(&nfs3::GETATTR3args { object: fh(&root) }).await.expect("GETATTR"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_exports_refuse_every_change() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let mut c = gateway.mount_root().await;
    let root = c.root_nfs_fh3();
    let file = create_file(&mut c, &root, "file", 0o666).await;
    let directory = mkdir(&mut c, &root, "dir", 0o777).await;

    gateway.set_exports("/ 127.0.0.1(ro,no_root_squash)\n").expect("reload");
    let access = ok(c.access(&nfs3::ACCESS3args { object: fh(&root), access: 0x3f }).await.expect("ACCESS"));
    assert_eq!(access.access & (0x4 | 0x8 | 0x10), 0, "no MODIFY, EXTEND or DELETE on a read-only export");
    assert_eq!(access.access & 0x3, 0x3, "READ and LOOKUP stay");
    let file_access =
        ok(c.access(&nfs3::ACCESS3args { object: fh(&file), access: 0x3f }).await.expect("ACCESS"));
    assert_eq!(file_access.access & (0x4 | 0x8 | 0x10), 0);

    let rofs = nfsstat3::NFS3ERR_ROFS;
    assert_eq!(try_create(&mut c, &root, "new").await, rofs);
    let set = nfs3::SETATTR3args {
        object: fh(&file),
        new_attributes: nfs3::sattr3 { mode: Nfs3Option::Some(0o600), ..Default::default() },
        guard: Nfs3Option::None,
    };
    assert_eq!(status(&c.setattr(&set).await.expect("SETATTR")), rofs);
    let write = nfs3::WRITE3args {
        file: fh(&file),
        offset: 0,
        count: 1,
        stable: stable_how::FILE_SYNC,
        data: Opaque::borrowed(b"x"),
    };
    assert_eq!(status(&c.write(&write).await.expect("WRITE")), rofs);
    let mkdir_args = nfs3::MKDIR3args { where_: dirop(&root, "d2"), attributes: nfs3::sattr3::default() };
    assert_eq!(status(&c.mkdir(&mkdir_args).await.expect("MKDIR")), rofs);
    let symlink = nfs3::SYMLINK3args {
        where_: dirop(&root, "s"),
        symlink: nfs3::symlinkdata3 {
            symlink_attributes: nfs3::sattr3::default(),
            symlink_data: nfs3::nfspath3(Opaque::borrowed(b"t")),
        },
    };
    assert_eq!(status(&c.symlink(&symlink).await.expect("SYMLINK")), rofs);
    let mknod = nfs3::MKNOD3args {
        where_: dirop(&root, "p"),
        what: nfs3::mknoddata3::NF3FIFO(nfs3::sattr3::default()),
    };
    assert_eq!(status(&c.mknod(&mknod).await.expect("MKNOD")), rofs);
    assert_eq!(
        status(&c.remove(&nfs3::REMOVE3args { object: dirop(&root, "file") }).await.expect("REMOVE")),
        rofs
    );
    assert_eq!(
        status(&c.rmdir(&nfs3::RMDIR3args { object: dirop(&root, "dir") }).await.expect("RMDIR")),
        rofs
    );
    let rename = nfs3::RENAME3args { from: dirop(&root, "file"), to: dirop(&directory, "moved") };
    assert_eq!(status(&c.rename(&rename).await.expect("RENAME")), rofs);
    let link = nfs3::LINK3args { file: fh(&file), link: dirop(&directory, "hard") };
    assert_eq!(status(&c.link(&link).await.expect("LINK")), rofs);

    // Reading still works, and COMMIT is harmless.
    ok(c.read(&nfs3::READ3args { file: fh(&file), offset: 0, count: 10 }).await.expect("READ"));
    ok(c.commit(&nfs3::COMMIT3args { file: fh(&file), offset: 0, count: 0 }).await.expect("COMMIT"));
    ok(c.lookup(&nfs3::LOOKUP3args { what: dirop(&root, "file") }).await.expect("LOOKUP"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_squash_maps_root_to_nobody_and_no_root_squash_does_not() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let mut admin = gateway.mount_root().await;
    let root = admin.root_nfs_fh3();
    let open = mkdir(&mut admin, &root, "open", 0o777).await;

    gateway.set_exports("/ 127.0.0.1(rw,root_squash)\n").expect("reload");
    let mut squashed = gateway.mount("/", unix(0, 0, &[])).await.expect("mount");
    // The root directory is 0755 and owned by root: nobody may not create in it.
    assert_eq!(try_create(&mut squashed, &root, "as-squashed-root").await, nfsstat3::NFS3ERR_ACCES);
    let file = create_file(&mut squashed, &open, "squashed", 0o644).await;
    assert_eq!(owner_of(&mut squashed, &file).await, (65534, 65534));

    gateway.set_exports("/ 127.0.0.1(rw,no_root_squash)\n").expect("reload");
    let file = create_file(&mut squashed, &root, "as-real-root", 0o644).await;
    assert_eq!(owner_of(&mut squashed, &file).await, (0, 0));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_squash_uses_the_anonymous_ids() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let mut admin = gateway.mount_root().await;
    let root = admin.root_nfs_fh3();
    let open = mkdir(&mut admin, &root, "open", 0o777).await;

    gateway.set_exports("/ 127.0.0.1(rw,all_squash,anonuid=1234,anongid=4321)\n").expect("reload");
    let mut user = gateway.mount("/", unix(1000, 1000, &[1000])).await.expect("mount");
    let file = create_file(&mut user, &open, "by-user", 0o644).await;
    assert_eq!(owner_of(&mut user, &file).await, (1234, 4321));
    let mut root_user = gateway.mount("/", unix(0, 0, &[])).await.expect("mount");
    let file = create_file(&mut root_user, &open, "by-root", 0o644).await;
    assert_eq!(owner_of(&mut root_user, &file).await, (1234, 4321));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_bits_deny_a_plain_user() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let mut admin = gateway.mount_root().await;
    let root = admin.root_nfs_fh3();
    let secret = create_file(&mut admin, &root, "secret", 0o600).await;
    let shared = create_file(&mut admin, &root, "group-readable", 0o640).await;
    let set_group = nfs3::SETATTR3args {
        object: fh(&shared),
        new_attributes: nfs3::sattr3 { gid: Nfs3Option::Some(50), ..Default::default() },
        guard: Nfs3Option::None,
    };
    ok(admin.setattr(&set_group).await.expect("SETATTR"));

    let mut user = gateway.mount("/", unix(1000, 1000, &[1000])).await.expect("mount");
    let read = user.read(&nfs3::READ3args { file: fh(&secret), offset: 0, count: 10 }).await.expect("READ");
    assert_eq!(status(&read), nfsstat3::NFS3ERR_ACCES);
    let access =
        ok(user.access(&nfs3::ACCESS3args { object: fh(&secret), access: 0x3f }).await.expect("ACCESS"));
    assert_eq!(access.access & (0x1 | 0x4 | 0x8), 0, "ACCESS tells the truth");
    assert_eq!(try_create(&mut user, &root, "mine").await, nfsstat3::NFS3ERR_ACCES);
    let chmod = nfs3::SETATTR3args {
        object: fh(&secret),
        new_attributes: nfs3::sattr3 { mode: Nfs3Option::Some(0o666), ..Default::default() },
        guard: Nfs3Option::None,
    };
    assert_eq!(status(&user.setattr(&chmod).await.expect("SETATTR")), nfsstat3::NFS3ERR_PERM);

    let mut member = gateway.mount("/", unix(1000, 1000, &[1000, 50])).await.expect("mount");
    ok(member.read(&nfs3::READ3args { file: fh(&shared), offset: 0, count: 10 }).await.expect("READ"));
    let not_member =
        user.read(&nfs3::READ3args { file: fh(&shared), offset: 0, count: 10 }).await.expect("READ");
    assert_eq!(status(&not_member), nfsstat3::NFS3ERR_ACCES);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_exports_require_a_privileged_source_port() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash,secure)\n").await;
    let refused = mount_refused_with(gateway.mount("/", unix(0, 0, &[])).await);
    assert!(matches!(refused, mountstat3::MNT3ERR_ACCES), "{refused}");
    let mut c = gateway.mount_from("/", unix(0, 0, &[]), true).await.expect("mount from a privileged port");
    let root = c.root_nfs_fh3();
    ok(c.getattr(&nfs3::GETATTR3args { object: fh(&root) }).await.expect("GETATTR"));
    // The same handle from an unprivileged port is refused.
    let mut raw = gateway.raw().await;
    let arguments = RawArguments(packed(&root));
    let reply = raw.call(1, NFS, 3, 1, &unix(0, 0, &[]), &arguments).await;
    assert_eq!(&reply.results[..4], &1u32.to_be_bytes(), "NFS3ERR_PERM");
    gateway.stop().await;
}
