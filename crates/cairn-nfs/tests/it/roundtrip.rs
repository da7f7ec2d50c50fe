//! Mounting and using the file system through a real NFSv3 client: every procedure answers.

use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::nfs3::{self, Nfs3Option, cookieverf3, nfsstat3, stable_how};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use crate::support::*;

const EXPORT_ALL_NO_SQUASH: &str = "/ 127.0.0.1(rw,no_root_squash)\n";

fn names(list: &nfs3::dirlist3<'_>) -> Vec<String> {
    list.entries.0.iter().map(|entry| String::from_utf8_lossy(entry.name.as_ref()).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_create_write_read_lookup_readdir_remove() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let mut connection = gateway.mount_root().await;
    let root = connection.root_nfs_fh3();

    let file = create_file(&mut connection, &root, "hello.txt", 0o644).await;
    let written = ok(connection
        .write(&nfs3::WRITE3args {
            file: fh(&file),
            offset: 0,
            count: 11,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(b"hello world"),
        })
        .await
        .expect("WRITE"));
    assert_eq!(written.count, 11);
    assert_eq!(written.committed, stable_how::FILE_SYNC);

    let read = ok(connection
        .read(&nfs3::READ3args { file: fh(&file), offset: 0, count: 4096 })
        .await
        .expect("READ"));
    assert_eq!(read.data.as_ref(), b"hello world");
    assert!(read.eof);
    assert_eq!(read.count, 11);

    let found =
        ok(connection.lookup(&nfs3::LOOKUP3args { what: dirop(&root, "hello.txt") }).await.expect("LOOKUP"));
    assert_eq!(found.object, file);
    let Nfs3Option::Some(attributes) = found.obj_attributes else { panic!("LOOKUP without attributes") };
    assert_eq!(attributes.size, 11);
    assert_eq!(attributes.type_, nfs3::ftype3::NF3REG);
    assert_eq!(attributes.mode, 0o644);

    let listing = ok(connection
        .readdir(&nfs3::READDIR3args {
            dir: fh(&root),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 8192,
        })
        .await
        .expect("READDIR"));
    assert!(listing.reply.eof);
    assert!(names(&listing.reply).contains(&"hello.txt".to_string()), "{:?}", names(&listing.reply));

    ok(connection.remove(&nfs3::REMOVE3args { object: dirop(&root, "hello.txt") }).await.expect("REMOVE"));
    let missing =
        connection.lookup(&nfs3::LOOKUP3args { what: dirop(&root, "hello.txt") }).await.expect("LOOKUP");
    assert_eq!(status(&missing), nfsstat3::NFS3ERR_NOENT);
    // The file is gone: its handle is stale.
    let stale = connection.getattr(&nfs3::GETATTR3args { object: fh(&file) }).await.expect("GETATTR");
    assert_eq!(status(&stale), nfsstat3::NFS3ERR_STALE);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_procedure_answers() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let mut c = gateway.mount_root().await;
    let root = c.root_nfs_fh3();
    c.null().await.expect("NULL");

    // GETATTR, SETATTR
    let root_attributes = ok(c.getattr(&nfs3::GETATTR3args { object: fh(&root) }).await.expect("GETATTR"));
    assert_eq!(root_attributes.obj_attributes.type_, nfs3::ftype3::NF3DIR);
    let file = create_file(&mut c, &root, "f", 0o600).await;
    let set = nfs3::sattr3 { mode: Nfs3Option::Some(0o640), ..Default::default() };
    let wcc = ok(c
        .setattr(&nfs3::SETATTR3args { object: fh(&file), new_attributes: set, guard: Nfs3Option::None })
        .await
        .expect("SETATTR"));
    let Nfs3Option::Some(after) = wcc.obj_wcc.after else { panic!("SETATTR without post-op attributes") };
    assert_eq!(after.mode, 0o640);
    assert!(wcc.obj_wcc.before.is_some(), "SETATTR returns pre-op attributes from the store");
    // A guard that does not match: NOT_SYNC.
    let guarded = c
        .setattr(&nfs3::SETATTR3args {
            object: fh(&file),
            new_attributes: nfs3::sattr3::default(),
            guard: Nfs3Option::Some(nfs3::nfstime3 { seconds: 1, nseconds: 2 }),
        })
        .await
        .expect("SETATTR");
    assert_eq!(status(&guarded), nfsstat3::NFS3ERR_NOT_SYNC);

    // ACCESS
    let access = ok(c.access(&nfs3::ACCESS3args { object: fh(&file), access: 0x3f }).await.expect("ACCESS"));
    assert_eq!(access.access & 0x1, 0x1, "root may read");

    // WRITE UNSTABLE, COMMIT: same verifier
    let written = ok(c
        .write(&nfs3::WRITE3args {
            file: fh(&file),
            offset: 0,
            count: 5,
            stable: stable_how::UNSTABLE,
            data: Opaque::borrowed(b"abcde"),
        })
        .await
        .expect("WRITE"));
    let committed =
        ok(c.commit(&nfs3::COMMIT3args { file: fh(&file), offset: 0, count: 0 }).await.expect("COMMIT"));
    assert_eq!(written.verf, committed.verf);
    assert_ne!(written.verf.0, [0; 8], "the verifier is random, not zero");

    // CREATE GUARDED over an existing name: EXIST. EXCLUSIVE twice with one verifier: same file.
    let guarded = c
        .create(&nfs3::CREATE3args {
            where_: dirop(&root, "f"),
            how: nfs3::createhow3::GUARDED(nfs3::sattr3::default()),
        })
        .await
        .expect("CREATE");
    assert_eq!(status(&guarded), nfsstat3::NFS3ERR_EXIST);
    let exclusive = nfs3::createhow3::EXCLUSIVE(nfs3::createverf3([7; 8]));
    let first =
        ok(c.create(&nfs3::CREATE3args { where_: dirop(&root, "x"), how: exclusive }).await.expect("CREATE"));
    let exclusive = nfs3::createhow3::EXCLUSIVE(nfs3::createverf3([7; 8]));
    let second =
        ok(c.create(&nfs3::CREATE3args { where_: dirop(&root, "x"), how: exclusive }).await.expect("CREATE"));
    assert_eq!(first.obj, second.obj);

    // MKDIR, SYMLINK, READLINK, MKNOD
    let directory = mkdir(&mut c, &root, "d", 0o755).await;
    let symlink = ok(c
        .symlink(&nfs3::SYMLINK3args {
            where_: dirop(&root, "s"),
            symlink: nfs3::symlinkdata3 {
                symlink_attributes: nfs3::sattr3::default(),
                symlink_data: nfs3::nfspath3(Opaque::borrowed(b"/target/path")),
            },
        })
        .await
        .expect("SYMLINK"));
    let Nfs3Option::Some(symlink_handle) = symlink.obj else { panic!("SYMLINK without handle") };
    let target = ok(c.readlink(&nfs3::READLINK3args { symlink: symlink_handle }).await.expect("READLINK"));
    assert_eq!(target.data.as_ref(), b"/target/path");
    let fifo = c
        .mknod(&nfs3::MKNOD3args {
            where_: dirop(&root, "fifo"),
            what: nfs3::mknoddata3::NF3FIFO(nfs3::sattr3::default()),
        })
        .await
        .expect("MKNOD");
    let fifo = ok(fifo);
    let Nfs3Option::Some(fifo_attributes) = fifo.obj_attributes else { panic!("MKNOD without attributes") };
    assert_eq!(fifo_attributes.type_, nfs3::ftype3::NF3FIFO);

    // LINK, RENAME, REMOVE, RMDIR
    let linked = ok(c
        .link(&nfs3::LINK3args { file: fh(&file), link: dirop(&directory, "hard") })
        .await
        .expect("LINK"));
    let Nfs3Option::Some(linked_attributes) = linked.file_attributes else {
        panic!("LINK without attributes")
    };
    assert_eq!(linked_attributes.nlink, 2);
    let not_empty = c.rmdir(&nfs3::RMDIR3args { object: dirop(&root, "d") }).await.expect("RMDIR");
    assert_eq!(status(&not_empty), nfsstat3::NFS3ERR_NOTEMPTY);
    ok(c.rename(&nfs3::RENAME3args { from: dirop(&directory, "hard"), to: dirop(&root, "moved") })
        .await
        .expect("RENAME"));
    ok(c.rmdir(&nfs3::RMDIR3args { object: dirop(&root, "d") }).await.expect("RMDIR"));
    ok(c.remove(&nfs3::REMOVE3args { object: dirop(&root, "moved") }).await.expect("REMOVE"));
    let missing = c.remove(&nfs3::REMOVE3args { object: dirop(&root, "moved") }).await.expect("REMOVE");
    assert_eq!(status(&missing), nfsstat3::NFS3ERR_NOENT);

    // READDIR, READDIRPLUS
    let listing = ok(c
        .readdir(&nfs3::READDIR3args {
            dir: fh(&root),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 8192,
        })
        .await
        .expect("READDIR"));
    let mut listed = names(&listing.reply);
    listed.sort();
    assert_eq!(listed, [".", "..", "f", "fifo", "s", "x"]);
    let plus = ok(c
        .readdirplus(&nfs3::READDIRPLUS3args {
            dir: fh(&root),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            dircount: 8192,
            maxcount: 65536,
        })
        .await
        .expect("READDIRPLUS"));
    assert!(plus.reply.eof);
    assert_eq!(plus.reply.entries.0.len(), 6);
    for entry in &plus.reply.entries.0 {
        assert!(entry.name_attributes.is_some() && entry.name_handle.is_some(), "{entry:?}");
    }

    // FSSTAT, FSINFO, PATHCONF
    let statistics = ok(c.fsstat(&nfs3::FSSTAT3args { fsroot: fh(&root) }).await.expect("FSSTAT"));
    assert!(statistics.tbytes >= statistics.fbytes);
    let info = ok(c.fsinfo(&nfs3::FSINFO3args { fsroot: fh(&root) }).await.expect("FSINFO"));
    assert_eq!((info.rtmax, info.wtmax, info.rtpref, info.wtpref), (1 << 20, 1 << 20, 1 << 20, 1 << 20));
    assert_eq!((info.rtmult, info.wtmult, info.dtpref), (8192, 8192, 65536));
    assert_eq!(info.maxfilesize, i64::MAX as u64);
    assert_eq!(info.time_delta, nfs3::nfstime3 { seconds: 0, nseconds: 1 });
    assert_eq!(info.properties, 1 | 2 | 8 | 16);
    let pathconf = ok(c.pathconf(&nfs3::PATHCONF3args { object: fh(&root) }).await.expect("PATHCONF"));
    assert_eq!(pathconf.name_max, 255);
    assert!(
        pathconf.no_trunc
            && pathconf.chown_restricted
            && pathconf.case_preserving
            && !pathconf.case_insensitive
    );

    // MOUNT: EXPORT, DUMP, UMNT
    let exports = c.mount_client.export().await.expect("EXPORT");
    let exported: Vec<_> = exports.0.iter().map(|node| node.ex_dir.0.to_vec()).collect();
    assert_eq!(exported, [b"/".to_vec()]);
    assert_eq!(exports.0[0].ex_groups.0[0].0.as_ref(), b"127.0.0.1");
    let dump = c.mount_client.dump().await.expect("DUMP");
    assert_eq!(dump.0.len(), 1);
    assert_eq!(dump.0[0].ml_hostname.0.as_ref(), b"127.0.0.1");
    c.mount_client.umnt(dirpath(Opaque::borrowed(b"/"))).await.expect("UMNT");
    assert!(c.mount_client.dump().await.expect("DUMP").0.is_empty());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_write_and_read() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let mut c = gateway.mount_root().await;
    let root = c.root_nfs_fh3();
    let file = create_file(&mut c, &root, "big", 0o644).await;
    let data: Vec<u8> = (0..(1u32 << 20)).map(|index| (index % 251) as u8).collect();
    for chunk in 0..3u64 {
        let written = ok(c
            .write(&nfs3::WRITE3args {
                file: fh(&file),
                offset: chunk << 20,
                count: 1 << 20,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(&data),
            })
            .await
            .expect("WRITE"));
        assert_eq!(written.count, 1 << 20);
    }
    ok(c.commit(&nfs3::COMMIT3args { file: fh(&file), offset: 0, count: 0 }).await.expect("COMMIT"));
    // A READ larger than rtmax is clamped to 1 MiB.
    let read = ok(c
        .read(&nfs3::READ3args { file: fh(&file), offset: 1 << 20, count: 4 << 20 })
        .await
        .expect("READ"));
    assert_eq!(read.count, 1 << 20);
    assert!(!read.eof);
    assert!(read.data.as_ref() == &data[..], "READ returns what WRITE wrote");
    let tail = ok(c
        .read(&nfs3::READ3args { file: fh(&file), offset: (3 << 20) - 3, count: 100 })
        .await
        .expect("READ"));
    assert_eq!(tail.data.as_ref(), &data[data.len() - 3..]);
    assert!(tail.eof);
    gateway.stop().await;
}
