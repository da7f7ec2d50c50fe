//! Basic semantics through the public API: namespace operations, data at any offset, sparse
//! files, truncation, names, cookies.

use cairn_store::{
    CreateHow, FileKind, SetAttributes, SetTime, SpecialKind, Stability, StoreError, Timestamp,
};
use cairn_types::limits::INLINE_DATA_BYTES_MAX;

use crate::common::{self, TEST_CHUNK_BYTES, create_file, open, read_all, root, write_all};

#[test]
fn root_directory_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, root_fid, fsid) = {
        let store = open(dir.path());
        let attributes = store.getattr(store.root()).unwrap();
        assert_eq!(attributes.kind, FileKind::Directory);
        assert_eq!(attributes.mode, 0o755);
        assert_eq!((attributes.uid, attributes.gid), (0, 0));
        assert_eq!(attributes.fileid, store.root().inode);
        let dotdot = store.lookup(&root(), store.root(), b"..").unwrap();
        assert_eq!(dotdot.fid, store.root());
        assert_ne!(store.root().uniquifier, 0);
        (store.cluster_id(), store.root(), attributes.fsid)
    };
    let store = open(dir.path());
    assert_eq!(store.cluster_id(), cluster);
    assert_eq!(store.root(), root_fid);
    assert_eq!(store.getattr(store.root()).unwrap().fsid, fsid);
}

#[test]
fn write_read_sparse_and_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let fid = create_file(&store, &root(), store.root(), "f");
    // Small write inside the inline part.
    write_all(&store, fid, 10, b"hello", Stability::Unstable);
    assert_eq!(store.getattr(fid).unwrap().size_bytes, 15);
    let data = read_all(&store, fid);
    assert_eq!(&data[..10], &[0; 10]);
    assert_eq!(&data[10..], b"hello");
    // A write across the inline boundary and a chunk boundary.
    let far = TEST_CHUNK_BYTES * 3 - 100;
    let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    write_all(&store, fid, INLINE_DATA_BYTES_MAX - 50, &payload, Stability::FileSync);
    write_all(&store, fid, far, &payload, Stability::Unstable);
    let size = far + 300;
    assert_eq!(store.getattr(fid).unwrap().size_bytes, size);
    let hole = store.read(&root(), fid, TEST_CHUNK_BYTES + 5, 1000).unwrap();
    assert_eq!(hole.data, vec![0; 1000]);
    let back = store.read(&root(), fid, far, 300).unwrap();
    assert_eq!(back.data, payload);
    assert!(back.eof);
    let back = store.read(&root(), fid, INLINE_DATA_BYTES_MAX - 50, 300).unwrap();
    assert_eq!(back.data, payload);
    // Sparse: only a few blocks are used.
    assert!(store.getattr(fid).unwrap().used_bytes <= 8 * 8192);
    store.commit(fid, 0, 0).unwrap();

    // Shrink into the middle of a block, then grow again: zeros after the cut.
    let wcc = store
        .setattr(&root(), fid, SetAttributes { size_bytes: Some(12), ..Default::default() }, None)
        .unwrap();
    assert_eq!(wcc.after.unwrap().size_bytes, 12);
    store
        .setattr(&root(), fid, SetAttributes { size_bytes: Some(size), ..Default::default() }, None)
        .unwrap();
    let data = read_all(&store, fid);
    assert_eq!(data.len() as u64, size);
    assert_eq!(&data[10..12], b"he");
    assert!(data[12..].iter().all(|&byte| byte == 0));
    // The same across the inline boundary and inside a chunk.
    write_all(&store, fid, INLINE_DATA_BYTES_MAX + 8000, &[7u8; 1000], Stability::Unstable);
    store
        .setattr(
            &root(),
            fid,
            SetAttributes { size_bytes: Some(INLINE_DATA_BYTES_MAX + 8100), ..Default::default() },
            None,
        )
        .unwrap();
    store
        .setattr(&root(), fid, SetAttributes { size_bytes: Some(size), ..Default::default() }, None)
        .unwrap();
    let tail = store.read(&root(), fid, INLINE_DATA_BYTES_MAX + 8000, 2000).unwrap().data;
    assert_eq!(&tail[..100], &[7u8; 100]);
    assert!(tail[100..].iter().all(|&byte| byte == 0));
    drop(store);
    let store = open(dir.path());
    let tail = store.read(&root(), fid, INLINE_DATA_BYTES_MAX + 8000, 2000).unwrap().data;
    assert_eq!(&tail[..100], &[7u8; 100]);
    assert!(tail[100..].iter().all(|&byte| byte == 0));
}

#[test]
fn large_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let fid = create_file(&store, &root(), store.root(), "big");
    let mut rng = common::Rng(7);
    let data = rng.bytes(5 * 1024 * 1024 + 12345);
    for (index, piece) in data.chunks(1 << 20).enumerate() {
        write_all(&store, fid, (index << 20) as u64, piece, Stability::Unstable);
    }
    store.commit(fid, 0, 0).unwrap();
    assert_eq!(read_all(&store, fid), data);
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, fid), data);
}

#[test]
fn namespace_operations() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let top = store.root();
    let a = store.mkdir(&r, top, b"a", SetAttributes::default()).unwrap();
    assert_eq!(a.attributes.nlink, 2);
    assert_eq!(store.getattr(top).unwrap().nlink, 3);
    let b = store.mkdir(&r, a.fid, b"b", SetAttributes { mode: Some(0o700), ..Default::default() }).unwrap();
    assert_eq!(b.attributes.mode, 0o700);
    assert_eq!(store.lookup(&r, b.fid, b"..").unwrap().fid, a.fid);
    assert_eq!(store.lookup(&r, b.fid, b".").unwrap().fid, b.fid);
    let f = create_file(&store, &r, a.fid, "f");
    write_all(&store, f, 0, b"data", Stability::Unstable);

    // Hard links.
    let linked = store.link(&r, f, top, b"g").unwrap();
    assert_eq!(linked.file.nlink, 2);
    assert!(matches!(store.link(&r, a.fid, top, b"dirlink"), Err(StoreError::IsDirectory)));
    // Rename onto another link of the same inode: a no-op.
    store.rename(&r, a.fid, b"f", top, b"g").unwrap();
    assert_eq!(store.lookup(&r, a.fid, b"f").unwrap().fid, f);
    // Rename over an existing file.
    let other = create_file(&store, &r, top, "other");
    store.rename(&r, top, b"g", top, b"other").unwrap();
    assert!(matches!(store.getattr(other), Err(StoreError::Stale(_))));
    assert_eq!(store.lookup(&r, top, b"other").unwrap().fid, f);
    assert!(matches!(store.lookup(&r, top, b"g"), Err(StoreError::NotFound)));
    // Directory into its own subtree.
    assert!(matches!(store.rename(&r, top, b"a", b.fid, b"x"), Err(StoreError::Invalid(_))));
    assert!(matches!(store.rename(&r, top, b"a", a.fid, b"x"), Err(StoreError::Invalid(_))));
    // Directory over an empty directory, and not over a non-empty one.
    let empty = store.mkdir(&r, top, b"empty", SetAttributes::default()).unwrap();
    assert!(matches!(store.rename(&r, top, b"empty", top, b"a"), Err(StoreError::NotEmpty)));
    let c = store.mkdir(&r, top, b"c", SetAttributes::default()).unwrap();
    store.rename(&r, top, b"c", top, b"empty").unwrap();
    assert!(matches!(store.getattr(empty.fid), Err(StoreError::Stale(_))));
    assert_eq!(store.lookup(&r, top, b"empty").unwrap().fid, c.fid);
    // Directory over file and file over directory.
    assert!(matches!(store.rename(&r, top, b"empty", top, b"other"), Err(StoreError::NotDirectory)));
    assert!(matches!(store.rename(&r, top, b"other", top, b"empty"), Err(StoreError::IsDirectory)));
    // Moving a directory fixes `..` and link counts.
    store.rename(&r, top, b"empty", b.fid, b"moved").unwrap();
    assert_eq!(store.lookup(&r, c.fid, b"..").unwrap().fid, b.fid);
    assert_eq!(store.getattr(b.fid).unwrap().nlink, 3);

    // Remove and rmdir.
    assert!(matches!(store.remove(&r, top, b"a"), Err(StoreError::IsDirectory)));
    assert!(matches!(store.rmdir(&r, top, b"a"), Err(StoreError::NotEmpty)));
    assert!(matches!(store.rmdir(&r, top, b"other"), Err(StoreError::NotDirectory)));
    store.remove(&r, top, b"other").unwrap();
    assert_eq!(store.getattr(f).unwrap().nlink, 1);
    assert_eq!(read_all(&store, f), b"data");
    store.remove(&r, a.fid, b"f").unwrap();
    assert!(matches!(store.getattr(f), Err(StoreError::Stale(_))));
    assert!(matches!(store.read(&r, f, 0, 10), Err(StoreError::Stale(_))));

    // Symlinks and special files.
    let link = store.symlink(&r, top, b"sl", b"a/b/target", SetAttributes::default()).unwrap();
    assert_eq!(store.readlink(&r, link.fid).unwrap().0, b"a/b/target");
    assert_eq!(link.attributes.size_bytes, 10);
    let long = vec![b'x'; 4097];
    assert!(matches!(
        store.symlink(&r, top, b"sl2", &long, SetAttributes::default()),
        Err(StoreError::NameTooLong)
    ));
    let fifo = store.mknod(&r, top, b"fifo", SpecialKind::Fifo, SetAttributes::default()).unwrap();
    assert_eq!(fifo.attributes.kind, FileKind::Fifo);
    let device = store
        .mknod(&r, top, b"dev", SpecialKind::CharDevice { major: 1, minor: 3 }, SetAttributes::default())
        .unwrap();
    assert_eq!(device.attributes.rdev, (1, 3));

    // Names.
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert!(
            matches!(
                store.create(&r, top, bad, CreateHow::Unchecked(SetAttributes::default())),
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let long_name = vec![b'n'; 256];
    assert!(matches!(
        store.create(&r, top, &long_name, CreateHow::Unchecked(SetAttributes::default())),
        Err(StoreError::NameTooLong)
    ));
    assert!(store.create(&r, top, &long_name[..255], CreateHow::Unchecked(SetAttributes::default())).is_ok());

    // Everything survives a reopen.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.lookup(&r, b.fid, b"moved").unwrap().fid, c.fid);
    assert_eq!(store.readlink(&r, link.fid).unwrap().0, b"a/b/target");
    assert_eq!(store.getattr(top).unwrap().nlink, 3);
}

#[test]
fn create_modes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let top = store.root();
    let guarded = store
        .create(&r, top, b"f", CreateHow::Guarded(SetAttributes { mode: Some(0o600), ..Default::default() }))
        .unwrap();
    assert_eq!(guarded.attributes.mode, 0o600);
    assert!(matches!(
        store.create(&r, top, b"f", CreateHow::Guarded(SetAttributes::default())),
        Err(StoreError::Exists)
    ));
    write_all(&store, guarded.fid, 0, b"content", Stability::FileSync);
    // Unchecked on an existing file: succeeds, applies size 0 when asked.
    let again = store.create(&r, top, b"f", CreateHow::Unchecked(SetAttributes::default())).unwrap();
    assert_eq!(again.fid, guarded.fid);
    assert_eq!(again.attributes.size_bytes, 7);
    let truncated = store
        .create(
            &r,
            top,
            b"f",
            CreateHow::Unchecked(SetAttributes { size_bytes: Some(0), ..Default::default() }),
        )
        .unwrap();
    assert_eq!(truncated.attributes.size_bytes, 0);
    // Exclusive: the verifier makes a retransmission succeed.
    let first = store.create(&r, top, b"x", CreateHow::Exclusive([1; 8])).unwrap();
    let retry = store.create(&r, top, b"x", CreateHow::Exclusive([1; 8])).unwrap();
    assert_eq!(first.fid, retry.fid);
    assert!(matches!(store.create(&r, top, b"x", CreateHow::Exclusive([2; 8])), Err(StoreError::Exists)));
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.create(&r, top, b"x", CreateHow::Exclusive([1; 8])).unwrap().fid, first.fid);
}

#[test]
fn times_and_guard() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let fid = create_file(&store, &r, store.root(), "t");
    let before = store.getattr(fid).unwrap();
    write_all(&store, fid, 0, b"x", Stability::Unstable);
    let after = store.getattr(fid).unwrap();
    assert!(after.ctime > before.ctime);
    assert!(after.mtime >= before.mtime);
    let client = Timestamp { seconds: 1000, nanoseconds: 123_456_789 };
    store
        .setattr(
            &r,
            fid,
            SetAttributes {
                atime: SetTime::ClientTime(client),
                mtime: SetTime::ClientTime(client),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let set = store.getattr(fid).unwrap();
    assert_eq!((set.atime, set.mtime), (client, client));
    assert!(matches!(
        store.setattr(&r, fid, SetAttributes { mode: Some(0o600), ..Default::default() }, Some(before.ctime)),
        Err(StoreError::NotSync)
    ));
    store
        .setattr(&r, fid, SetAttributes { mode: Some(0o600), ..Default::default() }, Some(set.ctime))
        .unwrap();
    assert_eq!(store.getattr(fid).unwrap().mode, 0o600);
}

#[test]
fn readdir_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let top = store.root();
    for index in 0..10 {
        create_file(&store, &r, top, &format!("file{index}"));
    }
    let page = store.readdir(&r, top, 0, 3, true).unwrap();
    let names: Vec<&[u8]> = page.entries.iter().map(|entry| entry.name.as_slice()).collect();
    assert_eq!(names, vec![&b"."[..], b"..", b"file0"]);
    assert_eq!(page.entries[0].cookie, 1);
    assert_eq!(page.entries[1].cookie, 2);
    assert!(page.entries[2].cookie >= 3);
    assert!(page.entries[2].attributes.is_some());
    assert!(!page.eof);
    // Delete the entry the cookie points at: the listing continues after it.
    store.remove(&r, top, b"file0").unwrap();
    let rest = store.readdir(&r, top, page.entries[2].cookie, 100, false).unwrap();
    assert_eq!(rest.entries.len(), 9);
    assert!(rest.eof);
    let empty_dir = store.mkdir(&r, top, b"d", SetAttributes::default()).unwrap();
    let listing = store.readdir(&r, empty_dir.fid, 0, 2, false).unwrap();
    assert_eq!(listing.entries.len(), 2);
    assert!(listing.eof);
    assert_eq!(listing.entries[1].fid, top);
}

#[test]
fn crash_then_extend_reads_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let (fid, other) = {
        let store = open(dir.path());
        let fid = create_file(&store, &root(), store.root(), "f");
        write_all(&store, fid, 0, &vec![0xaa; 164_000], Stability::FileSync);
        // Unstable bytes past the durable end, in the inline part and in a chunk.
        write_all(&store, fid, 164_000, &vec![0xbb; 150_000], Stability::Unstable);
        let other = create_file(&store, &root(), store.root(), "g");
        write_all(&store, other, 0, &vec![0xcc; 300_000], Stability::FileSync);
        store
            .setattr(&root(), other, SetAttributes { size_bytes: Some(30_000), ..Default::default() }, None)
            .unwrap();
        write_all(&store, other, 40_000, &[0xdd; 10], Stability::Unstable);
        store.simulate_crash();
        (fid, other)
    };
    let store = open(dir.path());
    let size = store.getattr(fid).unwrap().size_bytes;
    assert!(size == 164_000 || size == 314_000, "size {size}");
    store
        .setattr(&root(), fid, SetAttributes { size_bytes: Some(400_000), ..Default::default() }, None)
        .unwrap();
    let data = read_all(&store, fid);
    assert!(data[..164_000].iter().all(|&byte| byte == 0xaa));
    assert!(data[164_000..size as usize].iter().all(|&byte| byte == 0xbb || byte == 0));
    assert!(data[size as usize..].iter().all(|&byte| byte == 0), "stale bytes after the durable end");
    // The truncated file: zeros after the cut, whatever the lost unstable write did.
    let other_size = store.getattr(other).unwrap().size_bytes;
    store
        .setattr(&root(), other, SetAttributes { size_bytes: Some(300_000), ..Default::default() }, None)
        .unwrap();
    let data = read_all(&store, other);
    assert!(data[..30_000].iter().all(|&byte| byte == 0xcc));
    assert!(data[30_000..].iter().enumerate().all(|(index, &byte)| byte == 0
        || (other_size > 30_000 && (10_000..10_010).contains(&index) && byte == 0xdd)));
}
