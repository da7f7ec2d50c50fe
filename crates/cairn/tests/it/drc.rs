//! Retransmissions that reach another gateway (as after a virtual IP moved): the same RPC call
//! (same client address, xid and arguments) sent to node 1's gateway and then to node 2's gets
//! the first answer again, not a wrong error: CREATE (guarded) is not answered NFS3ERR_EXIST,
//! REMOVE and RENAME not NFS3ERR_NOENT. A new call (new xid) with the same arguments does get the
//! error, which shows the first answer comes from the volume master's memory of the call.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::{
    CREATE3args, REMOVE3args, RENAME3args, createhow3, diropargs3, filename3, nfs_fh3, sattr3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, call_body, msg_body, opaque_auth, rpc_msg};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack};

use crate::cluster::Cluster;
use crate::libnfs::with_nfs3_client;
use crate::support::test_dir;

const NFS_PROGRAM: u32 = 100_003;
const CREATE: u32 = 8;
const REMOVE: u32 = 12;
const RENAME: u32 = 14;
const NFS3_OK: u32 = 0;
const NFS3ERR_NOENT: u32 = 2;
const NFS3ERR_EXIST: u32 = 17;

/// One NFSv3 call as a whole RPC record (record mark included).
fn call_record(xid: u32, procedure: u32, arguments: &impl Pack) -> Vec<u8> {
    let credential = opaque_auth::auth_unix(&auth_unix {
        stamp: 7,
        machinename: Opaque::borrowed(b"drc-test"),
        uid: 0,
        gid: 0,
        gids: vec![],
    });
    let message = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog: NFS_PROGRAM,
            vers: 3,
            proc: procedure,
            cred: credential,
            verf: opaque_auth::default(),
        }),
    };
    let mut body = Vec::new();
    message.pack(&mut body).expect("pack the RPC header");
    arguments.pack(&mut body).expect("pack the arguments");
    let mut record = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(&body);
    record
}

/// Sends `record` on a new connection to `gateway` and returns the reply's nfsstat3.
fn send(gateway: SocketAddr, record: &[u8]) -> u32 {
    let mut stream = TcpStream::connect(gateway).expect("connect to the gateway");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    stream.write_all(record).expect("send the call");
    let mut mark = [0u8; 4];
    stream.read_exact(&mut mark).expect("read the record mark");
    let length = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
    let mut reply = vec![0u8; length];
    stream.read_exact(&mut reply).expect("read the reply");
    let word =
        |index: usize| u32::from_be_bytes(reply[index * 4..index * 4 + 4].try_into().expect("4 bytes"));
    // xid, REPLY (1), MSG_ACCEPTED (0), verifier flavor, verifier length (0), accept_stat, status.
    assert_eq!((word(1), word(2)), (1, 0), "not an accepted reply: {reply:?}");
    let verifier_words = (word(4) as usize).div_ceil(4);
    assert_eq!(word(5 + verifier_words), 0, "the call was not executed: {reply:?}");
    word(6 + verifier_words)
}

fn name(text: &'static str) -> filename3<'static> {
    filename3(Opaque::borrowed(text.as_bytes()))
}

#[test]
fn a_retransmission_through_another_gateway_gets_the_first_answer() {
    crate::support::require_libnfs_utils();
    let dir = test_dir("drc");
    let cluster = Cluster::start(&dir.path().join("data"));
    let (first, second) = (cluster.nfs[0], cluster.nfs[1]);
    let root: nfs_fh3 = with_nfs3_client(first, async |_connection, root| root);
    let directory = |file: &'static str| diropargs3 { dir: root.clone(), name: name(file) };

    // CREATE, guarded: a second execution would say NFS3ERR_EXIST.
    let create = CREATE3args { where_: directory("created"), how: createhow3::GUARDED(sattr3::default()) };
    let record = call_record(0x0c0f_fee1, CREATE, &create);
    assert_eq!(send(first, &record), NFS3_OK, "CREATE through {first}");
    assert_eq!(send(second, &record), NFS3_OK, "the same CREATE retransmitted through {second}");
    let again = call_record(0x0c0f_fee2, CREATE, &create);
    assert_eq!(send(second, &again), NFS3ERR_EXIST, "a new guarded CREATE of an existing name");

    // REMOVE: a second execution would say NFS3ERR_NOENT.
    let remove = REMOVE3args { object: directory("created") };
    let record = call_record(0x0c0f_fee3, REMOVE, &remove);
    assert_eq!(send(first, &record), NFS3_OK, "REMOVE through {first}");
    assert_eq!(send(second, &record), NFS3_OK, "the same REMOVE retransmitted through {second}");
    let again = call_record(0x0c0f_fee4, REMOVE, &remove);
    assert_eq!(send(second, &again), NFS3ERR_NOENT, "a new REMOVE of a removed name");

    // RENAME: a second execution would say NFS3ERR_NOENT (the source is gone).
    let create = CREATE3args { where_: directory("before"), how: createhow3::GUARDED(sattr3::default()) };
    assert_eq!(send(first, &call_record(0x0c0f_fee5, CREATE, &create)), NFS3_OK);
    let rename = RENAME3args { from: directory("before"), to: directory("after") };
    let record = call_record(0x0c0f_fee6, RENAME, &rename);
    assert_eq!(send(first, &record), NFS3_OK, "RENAME through {first}");
    assert_eq!(
        send(cluster.nfs[2], &record),
        NFS3_OK,
        "the same RENAME retransmitted through a third gateway"
    );
    let again = call_record(0x0c0f_fee7, RENAME, &rename);
    assert_eq!(send(second, &again), NFS3ERR_NOENT, "a new RENAME of a moved name");
}
