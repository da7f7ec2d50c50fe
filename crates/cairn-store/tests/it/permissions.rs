//! POSIX permissions as the store enforces them, atomically with each operation.

use cairn_store::{
    Caller, CreateHow, SetAttributes, SetTime, SpecialKind, Stability, StoreError, Timestamp, access,
};
use cairn_types::Fid;

use crate::common::{open, root, user};

fn mode(mode: u32) -> SetAttributes {
    SetAttributes { mode: Some(mode), ..Default::default() }
}

fn create(
    store: &cairn_store::Store,
    caller: &Caller,
    dir: Fid,
    name: &str,
    attributes: SetAttributes,
) -> Result<Fid, StoreError> {
    store.create(caller, dir, name.as_bytes(), CreateHow::Guarded(attributes)).map(|created| created.fid)
}

#[test]
fn directory_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let alice = user(1000, 100);
    let bob = user(1001, 101);
    let top = store.root();
    // The root directory is 0755 root: others may look up and list, not create.
    assert!(matches!(
        create(&store, &alice, top, "x", SetAttributes::default()),
        Err(StoreError::AccessDenied)
    ));
    let private = store.mkdir(&r, top, b"private", mode(0o700)).unwrap().fid;
    create(&store, &r, private, "secret", SetAttributes::default()).unwrap();
    assert!(matches!(store.lookup(&alice, private, b"secret"), Err(StoreError::AccessDenied)));
    assert!(matches!(store.readdir(&alice, private, 0, 10, false), Err(StoreError::AccessDenied)));
    assert!(store.lookup(&r, private, b"secret").is_ok());
    let search_only = store.mkdir(&r, top, b"search", mode(0o711)).unwrap().fid;
    create(&store, &r, search_only, "known", SetAttributes::default()).unwrap();
    assert!(store.lookup(&alice, search_only, b"known").is_ok());
    assert!(matches!(store.readdir(&alice, search_only, 0, 10, false), Err(StoreError::AccessDenied)));

    // A shared directory: new objects belong to the caller.
    let shared = store.mkdir(&r, top, b"shared", mode(0o777)).unwrap().fid;
    let file = store.create(&alice, shared, b"a", CreateHow::Guarded(SetAttributes::default())).unwrap();
    assert_eq!((file.attributes.uid, file.attributes.gid), (1000, 100));
    // Removing and renaming need write and search on the directories.
    assert!(matches!(store.remove(&alice, search_only, b"known"), Err(StoreError::AccessDenied)));
    assert!(matches!(store.rename(&alice, shared, b"a", search_only, b"a"), Err(StoreError::AccessDenied)));
    assert!(matches!(store.link(&alice, file.fid, search_only, b"l"), Err(StoreError::AccessDenied)));
    store.rename(&bob, shared, b"a", shared, b"b").unwrap();
    // Devices only by root.
    assert!(matches!(
        store.mknod(
            &alice,
            shared,
            b"dev",
            SpecialKind::BlockDevice { major: 8, minor: 0 },
            SetAttributes::default()
        ),
        Err(StoreError::NotOwner)
    ));
    store.mknod(&alice, shared, b"fifo", SpecialKind::Fifo, SetAttributes::default()).unwrap();
}

#[test]
fn setgid_directories_and_sticky_bit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let alice = user(1000, 100);
    let bob = Caller { uid: 1001, gid: 101, groups: vec![100] };
    let carol = user(1002, 102);
    let top = store.root();
    let project = store
        .mkdir(&r, top, b"project", SetAttributes { mode: Some(0o2777), gid: Some(50), ..Default::default() })
        .unwrap();
    assert_eq!(project.attributes.mode, 0o2777);
    let file = store.create(&alice, project.fid, b"f", CreateHow::Guarded(SetAttributes::default())).unwrap();
    assert_eq!(file.attributes.gid, 50);
    let sub = store.mkdir(&alice, project.fid, b"sub", mode(0o755)).unwrap();
    assert_eq!(sub.attributes.gid, 50);
    assert_eq!(sub.attributes.mode & 0o2000, 0o2000, "subdirectories inherit setgid");

    let tmp = store.mkdir(&r, top, b"tmp", mode(0o1777)).unwrap().fid;
    let alice_file = create(&store, &alice, tmp, "alice", SetAttributes::default()).unwrap();
    create(&store, &bob, tmp, "bob", SetAttributes::default()).unwrap();
    assert!(matches!(store.remove(&carol, tmp, b"alice"), Err(StoreError::NotOwner)));
    assert!(matches!(store.rename(&carol, tmp, b"alice", tmp, b"mine"), Err(StoreError::NotOwner)));
    // Renaming over someone else's file is removing it.
    create(&store, &carol, tmp, "carol", SetAttributes::default()).unwrap();
    assert!(matches!(store.rename(&carol, tmp, b"carol", tmp, b"bob"), Err(StoreError::NotOwner)));
    store.rename(&alice, tmp, b"alice", tmp, b"alice2").unwrap();
    store.remove(&alice, tmp, b"alice2").unwrap();
    assert!(matches!(store.getattr(alice_file), Err(StoreError::Stale(_))));
    store.remove(&r, tmp, b"bob").unwrap();
}

#[test]
fn setattr_rules() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let alice = Caller { uid: 1000, gid: 100, groups: vec![200] };
    let bob = user(1001, 101);
    let shared = store.mkdir(&r, store.root(), b"shared", mode(0o777)).unwrap().fid;
    let fid = create(&store, &alice, shared, "f", mode(0o644)).unwrap();
    // chmod: owner or root.
    assert!(matches!(store.setattr(&bob, fid, mode(0o666), None), Err(StoreError::NotOwner)));
    store.setattr(&alice, fid, mode(0o640), None).unwrap();
    // chown: root only; chgrp: owner to one of their groups.
    assert!(matches!(
        store.setattr(&alice, fid, SetAttributes { uid: Some(1001), ..Default::default() }, None),
        Err(StoreError::NotOwner)
    ));
    assert!(matches!(
        store.setattr(&alice, fid, SetAttributes { gid: Some(300), ..Default::default() }, None),
        Err(StoreError::NotOwner)
    ));
    assert!(matches!(
        store.setattr(&bob, fid, SetAttributes { gid: Some(101), ..Default::default() }, None),
        Err(StoreError::NotOwner)
    ));
    store.setattr(&alice, fid, SetAttributes { gid: Some(200), ..Default::default() }, None).unwrap();
    assert_eq!(store.getattr(fid).unwrap().gid, 200);
    // Non-root chmod +setgid on a file of a group the owner is not in: setgid is cleared.
    store.setattr(&r, fid, SetAttributes { gid: Some(300), ..Default::default() }, None).unwrap();
    store.setattr(&alice, fid, mode(0o2755), None).unwrap();
    assert_eq!(store.getattr(fid).unwrap().mode, 0o755);
    // chown clears setuid/setgid.
    store.setattr(&r, fid, mode(0o6755), None).unwrap();
    store.setattr(&r, fid, SetAttributes { uid: Some(1001), ..Default::default() }, None).unwrap();
    assert_eq!(store.getattr(fid).unwrap().mode, 0o755);
    store
        .setattr(
            &r,
            fid,
            SetAttributes { uid: Some(1000), gid: Some(100), mode: Some(0o644), ..Default::default() },
            None,
        )
        .unwrap();
    // Size needs write permission.
    let size = SetAttributes { size_bytes: Some(10), ..Default::default() };
    assert!(matches!(store.setattr(&bob, fid, size, None), Err(StoreError::AccessDenied)));
    store.setattr(&alice, fid, size, None).unwrap();
    // Times: client times by the owner only; server time also with write permission.
    let client = SetAttributes {
        mtime: SetTime::ClientTime(Timestamp { seconds: 5, nanoseconds: 6 }),
        ..Default::default()
    };
    let server = SetAttributes { mtime: SetTime::ServerTime, ..Default::default() };
    assert!(matches!(store.setattr(&bob, fid, client, None), Err(StoreError::NotOwner)));
    assert!(matches!(store.setattr(&bob, fid, server, None), Err(StoreError::AccessDenied)));
    store.setattr(&alice, fid, mode(0o666), None).unwrap();
    store.setattr(&bob, fid, server, None).unwrap();
    assert!(matches!(store.setattr(&bob, fid, client, None), Err(StoreError::NotOwner)));
    store.setattr(&alice, fid, client, None).unwrap();
}

#[test]
fn data_access_and_access_bits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = root();
    let alice = user(1000, 100);
    let bob = user(1001, 101);
    let member = Caller { uid: 1002, gid: 7, groups: vec![100] };
    let shared = store.mkdir(&r, store.root(), b"shared", mode(0o777)).unwrap().fid;
    // Owner override: the owner writes and reads a 0444 file (NFS has no open).
    let readonly = create(&store, &alice, shared, "ro", mode(0o444)).unwrap();
    store.write(&alice, readonly, 0, b"data", Stability::Unstable).unwrap();
    assert!(matches!(
        store.write(&bob, readonly, 0, b"x", Stability::Unstable),
        Err(StoreError::AccessDenied)
    ));
    assert_eq!(store.read(&bob, readonly, 0, 10).unwrap().data, b"data");
    let hidden = create(&store, &alice, shared, "hidden", mode(0o000)).unwrap();
    store.write(&alice, hidden, 0, b"mine", Stability::Unstable).unwrap();
    assert_eq!(store.read(&alice, hidden, 0, 10).unwrap().data, b"mine");
    assert!(matches!(store.read(&bob, hidden, 0, 10), Err(StoreError::AccessDenied)));
    assert_eq!(store.read(&r, hidden, 0, 10).unwrap().data, b"mine");
    // Execute allows read (to run binaries).
    let binary = create(&store, &alice, shared, "bin", mode(0o711)).unwrap();
    store.write(&alice, binary, 0, b"\x7fELF", Stability::Unstable).unwrap();
    assert_eq!(store.read(&bob, binary, 0, 4).unwrap().data, b"\x7fELF");
    // A write by someone else clears setuid and setgid (with group execute).
    let privileged = create(&store, &alice, shared, "suid", mode(0o6777)).unwrap();
    store.write(&alice, privileged, 0, b"x", Stability::Unstable).unwrap();
    assert_eq!(store.getattr(privileged).unwrap().mode, 0o6777);
    let after = store.write(&bob, privileged, 0, b"y", Stability::Unstable).unwrap();
    assert_eq!(after.file.after.unwrap().mode, 0o777);

    // ACCESS answers with the mode bits.
    let all =
        access::READ | access::LOOKUP | access::MODIFY | access::EXTEND | access::DELETE | access::EXECUTE;
    let group_file = create(&store, &alice, shared, "group", mode(0o640)).unwrap();
    assert_eq!(store.access(&member, group_file, all).unwrap().0, access::READ);
    assert_eq!(store.access(&bob, group_file, all).unwrap().0, 0);
    assert_eq!(
        store.access(&alice, group_file, all).unwrap().0,
        access::READ | access::MODIFY | access::EXTEND
    );
    assert_eq!(store.access(&alice, readonly, access::MODIFY | access::READ).unwrap().0, access::READ);
    // Root: everything but executing a file without any execute bit.
    assert_eq!(store.access(&r, group_file, all).unwrap().0, access::READ | access::MODIFY | access::EXTEND);
    assert_eq!(store.access(&r, binary, access::EXECUTE).unwrap().0, access::EXECUTE);
    assert_eq!(store.access(&bob, binary, access::EXECUTE | access::READ).unwrap().0, access::EXECUTE);
    // Directories: LOOKUP from x, MODIFY/EXTEND/DELETE from w (with x).
    let top = store.root();
    assert_eq!(store.access(&bob, top, all).unwrap().0, access::READ | access::LOOKUP | access::EXECUTE);
    assert_eq!(store.access(&bob, shared, all).unwrap().0, all);
    assert_eq!(store.access(&r, top, all).unwrap().0, all);
    // Only requested bits are answered.
    assert_eq!(store.access(&bob, shared, access::DELETE).unwrap().0, access::DELETE);
}
