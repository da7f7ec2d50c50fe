//! RPC edge cases with hand-built records: malformed input, RPC errors, handles, the duplicate
//! request cache, pipelining, the portmapper.

use std::collections::HashSet;

use cairn_types::{ClusterId, FileHandle};
use nfs3_client::PortmapperClient;
use nfs3_client::nfs3_types::nfs3::{self, nfs_fh3, nfsstat3};
use nfs3_client::nfs3_types::rpc::{accept_stat_data, auth_stat, opaque_auth, rejected_reply};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Void};
use nfs3_client::tokio::TokioIo;

use crate::support::*;

const EXPORT_ALL_NO_SQUASH: &str = "/ 127.0.0.1(rw,no_root_squash)\n";

/// A call header written by hand, so every field can be wrong.
fn header(
    xid: u32,
    rpc_version: u32,
    program: u32,
    version: u32,
    procedure: u32,
    flavor: u32,
    credential: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [xid, 0, rpc_version, program, version, procedure, flavor, credential.len() as u32] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(credential);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(&[0; 8]); // AUTH_NONE verifier
    out
}

fn u32s(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|word| word.to_be_bytes()).collect()
}

fn handle_arguments(handle: &[u8]) -> Vec<u8> {
    packed(&nfs_fh3 { data: Opaque::owned(handle.to_vec()) })
}

fn accept_status(reply: &RawReply) -> &accept_stat_data {
    match &reply.body {
        RawReplyBody::Accepted(status) => status,
        RawReplyBody::Denied(denied) => panic!("call denied: {denied:?}"),
    }
}

fn nfs_status_of(reply: &RawReply) -> nfsstat3 {
    assert!(reply.is_success(), "{:?}", reply.body);
    let word = u32::from_be_bytes(reply.results[..4].try_into().expect("status word"));
    let mut cursor = std::io::Cursor::new(word.to_be_bytes());
    <nfsstat3 as nfs3_client::nfs3_types::xdr_codec::Unpack>::unpack(&mut cursor).expect("nfsstat3").0
}

/// Sends a burst of records while reading `count` replies, as they come (the server stops reading
/// when its in-flight window is full and catches up as replies drain).
async fn send_and_receive(raw: &mut RawConnection, burst: &[u8], count: usize) -> Vec<RawReply> {
    let (mut reader, mut writer) = raw.stream.split();
    let send = async {
        tokio::io::AsyncWriteExt::write_all(&mut writer, burst).await.expect("send burst");
    };
    let receive = async {
        let mut replies = Vec::with_capacity(count);
        for _ in 0..count {
            let mut mark = [0u8; 4];
            tokio::io::AsyncReadExt::read_exact(&mut reader, &mut mark).await.expect("mark");
            let mut record = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
            tokio::io::AsyncReadExt::read_exact(&mut reader, &mut record).await.expect("record");
            replies.push(RawReply::parse(record));
        }
        replies
    };
    let ((), replies) =
        tokio::time::timeout(REPLY_TIMEOUT, async { tokio::join!(send, receive) }).await.expect("burst");
    replies
}

async fn root_handle(gateway: &TestGateway) -> nfs_fh3 {
    gateway.mount_root().await.root_nfs_fh3()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_get_garbage_args_or_a_closed_connection() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let root = root_handle(&gateway).await;
    let credential = unix(0, 0, &[]);
    let mut raw = gateway.raw().await;

    // Truncated arguments: a handle length of 32 with 4 bytes behind it.
    let truncated = RawArguments(u32s(&[32, 0]));
    let reply = raw.call(1, NFS, 3, 1, &credential, &truncated).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::GARBAGE_ARGS));
    // A forged 4 GiB opaque length in a WRITE: refused without allocating it.
    let mut forged = handle_arguments(&root.data);
    forged.extend(u32s(&[0, 0, 16, 2, 0xffff_fff0, 1, 2, 3, 4]));
    let reply = raw.call(2, NFS, 3, 7, &credential, &RawArguments(forged)).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::GARBAGE_ARGS));
    // WRITE whose count is larger than its data.
    let mut short = handle_arguments(&root.data);
    short.extend(u32s(&[0, 0, 100, 2, 4, 0x6162_6364]));
    let reply = raw.call(3, NFS, 3, 7, &credential, &RawArguments(short)).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::GARBAGE_ARGS));
    // The connection still serves.
    let reply = raw.call(4, NFS, 3, 0, &credential, &Void).await;
    assert!(reply.is_success());

    // One call in three fragments is reassembled.
    let call = call_record(5, NFS, 3, 1, &credential, &RawArguments(handle_arguments(&root.data)));
    let body = &call[4..];
    let mut fragmented = Vec::new();
    for (index, piece) in [&body[..10], &body[10..30], &body[30..]].iter().enumerate() {
        let last = if index == 2 { 0x8000_0000 } else { 0 };
        fragmented.extend_from_slice(&(last | piece.len() as u32).to_be_bytes());
        fragmented.extend_from_slice(piece);
    }
    raw.send(&fragmented).await;
    let reply = raw.receive().await.expect("reply to a fragmented call");
    assert_eq!((reply.xid, nfs_status_of(&reply)), (5, nfsstat3::NFS3_OK));

    // Garbage bytes (not a call): the connection is closed.
    raw.send(&with_record_mark(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7, 1, 2, 3, 4])).await;
    assert!(raw.is_closed_by_server().await);

    // A giant fragment length: closed before anything is allocated.
    let mut giant = gateway.raw().await;
    giant.send(&0x7fff_ffffu32.to_be_bytes()).await;
    giant.send(&[0; 1024]).await;
    assert!(giant.is_closed_by_server().await);

    // A record just over the limit, in two fragments: closed too.
    let mut oversized = gateway.raw().await;
    let half = cairn_nfs::RECORD_BYTES_MAX / 2 + 8;
    let mut bytes = (half as u32).to_be_bytes().to_vec();
    bytes.extend(call_record(6, NFS, 3, 0, &credential, &Void)[4..].iter());
    bytes.resize(4 + half, 0);
    bytes.extend_from_slice(&(0x8000_0000u32 | half as u32).to_be_bytes());
    bytes.resize(bytes.len() + half, 0);
    tokio::io::AsyncWriteExt::write_all(&mut oversized.stream, &bytes).await.ok();
    assert!(oversized.is_closed_by_server().await);

    // Others are still served.
    let mut fresh = gateway.raw().await;
    let reply = fresh.call(7, NFS, 3, 1, &credential, &RawArguments(handle_arguments(&root.data))).await;
    assert_eq!(nfs_status_of(&reply), nfsstat3::NFS3_OK);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_level_errors() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let credential = unix(0, 0, &[]);
    let mut raw = gateway.raw().await;

    let reply = raw.call(1, 100_099, 1, 0, &credential, &Void).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::PROG_UNAVAIL));
    let reply = raw.call(2, NFS, 2, 0, &credential, &Void).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::PROG_MISMATCH { low: 3, high: 3 }));
    let reply = raw.call(3, MOUNT, 4, 0, &credential, &Void).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::PROG_MISMATCH { low: 1, high: 3 }));
    let reply = raw.call(4, NFS, 3, 22, &credential, &Void).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::PROC_UNAVAIL));
    let reply = raw.call(5, MOUNT, 3, 6, &credential, &Void).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::PROC_UNAVAIL));

    raw.send(&with_record_mark(&header(6, 3, NFS, 3, 0, 0, &[]))).await;
    let reply = raw.receive().await.expect("reply");
    assert!(matches!(reply.body, RawReplyBody::Denied(rejected_reply::RPC_MISMATCH { low: 2, high: 2 })));

    // RPCSEC_GSS is not offered.
    raw.send(&with_record_mark(&header(7, 2, NFS, 3, 0, 6, &[0; 8]))).await;
    let reply = raw.receive().await.expect("reply");
    assert!(matches!(reply.body, RawReplyBody::Denied(rejected_reply::AUTH_ERROR(auth_stat::AUTH_TOOWEAK))));

    // AUTH_UNIX with 17 groups, and AUTH_UNIX cut short.
    let mut body = u32s(&[1, 4, 0x6869_6869, 0, 0, 17]);
    body.extend(u32s(&[5; 17]));
    raw.send(&with_record_mark(&header(8, 2, NFS, 3, 0, 1, &body))).await;
    let reply = raw.receive().await.expect("reply");
    assert!(matches!(reply.body, RawReplyBody::Denied(rejected_reply::AUTH_ERROR(auth_stat::AUTH_BADCRED))));
    raw.send(&with_record_mark(&header(9, 2, NFS, 3, 0, 1, &u32s(&[1, 4])))).await;
    let reply = raw.receive().await.expect("reply");
    assert!(matches!(reply.body, RawReplyBody::Denied(rejected_reply::AUTH_ERROR(auth_stat::AUTH_BADCRED))));

    // AUTH_NONE is accepted (anonymous).
    let reply = raw.call(10, NFS, 3, 0, &opaque_auth::default(), &Void).await;
    assert!(reply.is_success());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_handles_are_bad_and_foreign_or_removed_ones_stale() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let mut c = gateway.mount_root().await;
    let root = c.root_nfs_fh3();
    let getattr = |handle: Vec<u8>| nfs3::GETATTR3args { object: nfs_fh3 { data: Opaque::owned(handle) } };

    for forged in [vec![1u8; 32], vec![1, 2, 3, 4, 5], Vec::new(), vec![9; 64]] {
        let reply = c.getattr(&getattr(forged.clone())).await.expect("GETATTR");
        assert_eq!(status(&reply), nfsstat3::NFS3ERR_BADHANDLE, "{forged:?}");
    }
    let mut foreign = FileHandle::decode(&root.data).expect("a Cairn handle");
    foreign.cluster = ClusterId(foreign.cluster.0 ^ 1);
    let reply = c.getattr(&getattr(foreign.encode().to_vec())).await.expect("GETATTR");
    assert_eq!(status(&reply), nfsstat3::NFS3ERR_STALE);

    let file = create_file(&mut c, &root, "doomed", 0o644).await;
    ok(c.remove(&nfs3::REMOVE3args { object: dirop(&root, "doomed") }).await.expect("REMOVE"));
    let read = c.read(&nfs3::READ3args { file: fh(&file), offset: 0, count: 10 }).await.expect("READ");
    assert_eq!(status(&read), nfsstat3::NFS3ERR_STALE);
    // A handle longer than NFS3_FHSIZE is not valid XDR for nfs_fh3.
    let mut raw = gateway.raw().await;
    let reply = raw.call(1, NFS, 3, 1, &unix(0, 0, &[]), &RawArguments(handle_arguments(&[0; 65]))).await;
    assert!(matches!(accept_status(&reply), accept_stat_data::GARBAGE_ARGS));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_non_idempotent_calls_get_the_original_reply() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let root = root_handle(&gateway).await;
    let credential = unix(0, 0, &[]);
    let create = |name: &'static str| nfs3::CREATE3args {
        where_: dirop(&root, name),
        how: nfs3::createhow3::GUARDED(nfs3::sattr3::default()),
    };

    let mut raw = gateway.raw().await;
    let create_record = call_record(1000, NFS, 3, 8, &credential, &create("dup"));
    raw.send(&create_record).await;
    let original = raw.receive().await.expect("reply");
    assert_eq!(nfs_status_of(&original), nfsstat3::NFS3_OK);
    raw.send(&create_record).await;
    let replayed = raw.receive().await.expect("reply");
    assert_eq!(replayed.bytes, original.bytes, "a retransmitted CREATE is answered from the cache");
    // Also after a reconnect from another port.
    let mut reconnected = gateway.raw().await;
    reconnected.send(&create_record).await;
    assert_eq!(reconnected.receive().await.expect("reply").bytes, original.bytes);
    // The same xid with other arguments is another call.
    let different = reconnected.call(1000, NFS, 3, 8, &credential, &create("other")).await;
    assert_eq!(nfs_status_of(&different), nfsstat3::NFS3_OK);
    // Without the cache a new xid sees the file.
    let again = reconnected.call(1001, NFS, 3, 8, &credential, &create("dup")).await;
    assert_eq!(nfs_status_of(&again), nfsstat3::NFS3ERR_EXIST);

    let remove = nfs3::REMOVE3args { object: dirop(&root, "dup") };
    let remove_record = call_record(2000, NFS, 3, 12, &credential, &remove);
    raw.send(&remove_record).await;
    let original = raw.receive().await.expect("reply");
    assert_eq!(nfs_status_of(&original), nfsstat3::NFS3_OK);
    raw.send(&remove_record).await;
    let replayed = raw.receive().await.expect("reply");
    assert_eq!(nfs_status_of(&replayed), nfsstat3::NFS3_OK, "not NOENT");
    assert_eq!(replayed.bytes, original.bytes);
    let again = raw.call(2001, NFS, 3, 12, &credential, &remove).await;
    assert_eq!(nfs_status_of(&again), nfsstat3::NFS3ERR_NOENT);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_are_all_answered() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let root = root_handle(&gateway).await;
    let credential = unix(0, 0, &[]);
    let mut raw = gateway.raw().await;
    const CALLS: u32 = 500;
    let mut burst = Vec::new();
    for xid in 0..CALLS {
        let procedure = if xid.is_multiple_of(5) { 0 } else { 1 };
        let arguments = if procedure == 0 { Vec::new() } else { handle_arguments(&root.data) };
        burst.extend(call_record(xid, NFS, 3, procedure, &credential, &RawArguments(arguments)));
    }
    // More calls than REQUESTS_IN_FLIGHT_MAX, sent before reading any reply: the server stops
    // reading when its window is full and catches up as replies drain.
    let replies = send_and_receive(&mut raw, &burst, CALLS as usize).await;
    let mut seen = HashSet::new();
    for reply in &replies {
        assert!(reply.is_success());
        assert!(seen.insert(reply.xid), "xid {} answered twice", reply.xid);
    }
    assert_eq!(seen.len(), CALLS as usize);
    gateway.stop().await;
}

/// Changes are handed to the store's group commit from the connection task and answered by the
/// thread that makes them durable: a burst of more CREATEs and REMOVEs than the in-flight window
/// gets every reply once, with the right status, and a client that hangs up with changes in
/// flight leaves a gateway that still serves and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_answered_once_each() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let root = root_handle(&gateway).await;
    let credential = unix(0, 0, &[]);
    const FILES: u32 = 300;
    let names: Vec<String> = (0..FILES).map(|n| format!("burst{n}")).collect();
    let mut burst = Vec::new();
    for (xid, name) in (0..).zip(&names) {
        let create = nfs3::CREATE3args {
            where_: dirop(&root, name),
            how: nfs3::createhow3::GUARDED(nfs3::sattr3::default()),
        };
        burst.extend(call_record(xid, NFS, 3, 8, &credential, &create));
    }
    // The same names again: GUARDED creates of existing files fail with EXIST.
    for (xid, name) in (FILES..).zip(&names) {
        let create = nfs3::CREATE3args {
            where_: dirop(&root, name),
            how: nfs3::createhow3::GUARDED(nfs3::sattr3::default()),
        };
        burst.extend(call_record(xid, NFS, 3, 8, &credential, &create));
    }
    // Every other file removed; a bad handle is refused before reaching the store.
    for (xid, name) in (2 * FILES..).zip(names.iter().step_by(2)) {
        let remove = nfs3::REMOVE3args { object: dirop(&root, name) };
        burst.extend(call_record(xid, NFS, 3, 12, &credential, &remove));
    }
    let forged = nfs_fh3 { data: Opaque::owned(vec![7u8; 32]) };
    let bad_xid = 2 * FILES + FILES.div_ceil(2);
    burst.extend(call_record(
        bad_xid,
        NFS,
        3,
        12,
        &credential,
        &nfs3::REMOVE3args { object: dirop(&forged, "x") },
    ));
    let calls = bad_xid + 1;

    let mut raw = gateway.raw().await;
    let mut statuses = std::collections::HashMap::new();
    for reply in send_and_receive(&mut raw, &burst, calls as usize).await {
        assert!(reply.is_success());
        assert!(
            statuses.insert(reply.xid, nfs_status_of(&reply)).is_none(),
            "xid {} answered twice",
            reply.xid
        );
    }
    assert_eq!(statuses.len(), calls as usize);
    for xid in 0..calls {
        let expected = match xid {
            _ if xid == bad_xid => nfsstat3::NFS3ERR_BADHANDLE,
            _ if xid < FILES => nfsstat3::NFS3_OK,
            _ if xid < 2 * FILES => nfsstat3::NFS3ERR_EXIST,
            _ => nfsstat3::NFS3_OK,
        };
        assert_eq!(statuses[&xid], expected, "xid {xid}");
    }
    let mut client = gateway.mount_root().await;
    for (index, name) in names.iter().enumerate() {
        let found = client.lookup(&nfs3::LOOKUP3args { what: dirop(&root, name) }).await.expect("LOOKUP");
        let expected = if index % 2 == 1 { nfsstat3::NFS3_OK } else { nfsstat3::NFS3ERR_NOENT };
        assert_eq!(status(&found), expected, "{name}");
    }

    // A client that sends changes and hangs up at once.
    let mut hasty = gateway.raw().await;
    let mut burst = Vec::new();
    for xid in 0..100u32 {
        let name = format!("hasty{xid}");
        let create = nfs3::CREATE3args {
            where_: dirop(&root, &name),
            how: nfs3::createhow3::UNCHECKED(nfs3::sattr3::default()),
        };
        burst.extend(call_record(xid, NFS, 3, 8, &credential, &create));
    }
    hasty.send(&burst).await;
    drop(hasty);
    let found = client.lookup(&nfs3::LOOKUP3args { what: dirop(&root, &names[1]) }).await.expect("LOOKUP");
    assert_eq!(status(&found), nfsstat3::NFS3_OK, "the gateway still serves");
    drop(client);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portmapper_answers_getport_over_tcp_and_udp() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let nfs_port = gateway.nfs_address().port();
    let portmap = gateway.gateway().portmap_address().expect("portmapper bound");
    let stream = tokio::net::TcpStream::connect(portmap).await.expect("connect portmapper");
    let mut client = PortmapperClient::new(TokioIo::new(stream));
    client.null().await.expect("NULL");
    assert_eq!(client.getport(NFS, 3, 6).await.expect("GETPORT nfs"), nfs_port);
    for version in 1..=3 {
        assert_eq!(client.getport(MOUNT, version, 6).await.expect("GETPORT mount"), nfs_port);
    }
    assert!(client.getport(NFS, 3, 17).await.is_err(), "no NFS over UDP");
    assert!(client.getport(NFS, 4, 6).await.is_err(), "no NFSv4");
    let mappings = client.dump().await.expect("DUMP");
    assert!(mappings.iter().any(|m| m.prog == NFS && m.vers == 3 && m.port == u32::from(nfs_port)));

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
    let mapping = nfs3_client::nfs3_types::portmap::mapping { prog: NFS, vers: 3, prot: 6, port: 0 };
    let datagram = call_record(77, PORTMAP, 2, 3, &opaque_auth::default(), &mapping);
    socket.send_to(&datagram[4..], portmap).await.expect("send datagram");
    let mut buffer = [0u8; 512];
    let (length, _) = tokio::time::timeout(REPLY_TIMEOUT, socket.recv_from(&mut buffer))
        .await
        .expect("UDP reply")
        .expect("recv");
    let reply = RawReply::parse(buffer[..length].to_vec());
    assert_eq!(reply.xid, 77);
    assert_eq!(reply.results::<u32>(), u32::from(nfs_port));
    // The NFS port answers portmap calls too.
    let mut raw = gateway.raw().await;
    let reply = raw.call(78, PORTMAP, 2, 3, &opaque_auth::default(), &mapping).await;
    assert_eq!(reply.results::<u32>(), u32::from(nfs_port));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mknod_of_a_regular_file_directory_or_symlink_is_badtype() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let root = root_handle(&gateway).await;
    let mut raw = gateway.raw().await;
    for (xid, file_type) in [(1u32, 1u32), (2, 2), (3, 5)] {
        let mut arguments = packed(&dirop(&root, "node"));
        arguments.extend(u32s(&[file_type]));
        let reply = raw.call(xid, NFS, 3, 11, &unix(0, 0, &[]), &RawArguments(arguments)).await;
        assert_eq!(nfs_status_of(&reply), nfsstat3::NFS3ERR_BADTYPE, "type {file_type}");
        // The failure still carries the directory's wcc data: pre-op FALSE, post-op TRUE.
        assert_eq!(&reply.results[4..12], &u32s(&[0, 1])[..]);
    }
    let mut arguments = packed(&dirop(&root, "chr"));
    arguments.extend(u32s(&[4, 0, 0, 0, 0, 0, 0, 1, 3]));
    let reply = raw.call(4, NFS, 3, 11, &unix(0, 0, &[]), &RawArguments(arguments)).await;
    let created = reply.results::<nfs3::MKNOD3res>();
    let nfs3::Nfs3Result::Ok(created) = created else { panic!("MKNOD of a character device failed") };
    let nfs3::Nfs3Option::Some(attributes) = created.obj_attributes else { panic!("no attributes") };
    assert_eq!(attributes.type_, nfs3::ftype3::NF3CHR);
    assert_eq!((attributes.rdev.specdata1, attributes.rdev.specdata2), (1, 3));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_replies_is_not_read_either() {
    let gateway = TestGateway::start(EXPORT_ALL_NO_SQUASH).await;
    let mut c = gateway.mount_root().await;
    let root = c.root_nfs_fh3();
    let file = create_file(&mut c, &root, "data", 0o644).await;
    let data = vec![5u8; 256 * 1024];
    ok(c.write(&nfs3::WRITE3args {
        file: fh(&file),
        offset: 0,
        count: data.len() as u32,
        stable: nfs3::stable_how::FILE_SYNC,
        data: Opaque::borrowed(&data),
    })
    .await
    .expect("WRITE"));

    // 400 READs of 256 KiB (100 MiB of replies, far more than socket buffers hold), sent while
    // nobody reads the replies for a while: the server must stop reading instead of queueing.
    const CALLS: u32 = 400;
    let credential = unix(0, 0, &[]);
    let read = nfs3::READ3args { file: fh(&file), offset: 0, count: data.len() as u32 };
    let mut burst = Vec::new();
    for xid in 0..CALLS {
        burst.extend(call_record(xid, NFS, 3, 6, &credential, &read));
    }
    let mut raw = gateway.raw().await;
    let (mut reader, mut writer) = raw.stream.split();
    let send = async {
        tokio::io::AsyncWriteExt::write_all(&mut writer, &burst).await.expect("send burst");
    };
    let receive = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let mut seen = HashSet::new();
        for _ in 0..CALLS {
            let mut mark = [0u8; 4];
            tokio::io::AsyncReadExt::read_exact(&mut reader, &mut mark).await.expect("mark");
            let mut record = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
            tokio::io::AsyncReadExt::read_exact(&mut reader, &mut record).await.expect("record");
            let reply = RawReply::parse(record);
            let result = reply.results::<nfs3::READ3res<'static>>();
            let nfs3::Nfs3Result::Ok(result) = result else { panic!("READ failed") };
            assert!(result.data.as_ref() == &data[..]);
            assert!(seen.insert(reply.xid), "xid {} answered twice", reply.xid);
        }
        seen.len()
    };
    let ((), answered) = tokio::time::timeout(REPLY_TIMEOUT * 3, async { tokio::join!(send, receive) })
        .await
        .expect("every call answered");
    assert_eq!(answered, CALLS as usize);
    gateway.stop().await;
}
