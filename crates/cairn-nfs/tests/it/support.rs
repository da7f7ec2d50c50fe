//! A real gateway on 127.0.0.1 over a real store in a temporary directory, and clients for it:
//! `nfs3_client` for ordinary calls and [`RawConnection`] for hand-built records.

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_nfs::{Gateway, GatewayConfig};
use cairn_store::{Store, StoreConfig};
use nfs3_client::nfs3_types::nfs3::{self, Nfs3Result, diropargs3, filename3, nfs_fh3};
use nfs3_client::nfs3_types::rpc::{
    RPC_VERSION_2, accept_stat_data, auth_unix, call_body, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack, Unpack};
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type Connection = Nfs3Connection<TokioIo<TcpStream>>;

/// Bound on every network wait of a test, so a hung server fails the test instead of hanging it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct TestGateway {
    gateway: Option<Gateway>,
    pub store: Arc<Store>,
    exports_path: PathBuf,
    _directory: tempfile::TempDir,
}

impl TestGateway {
    /// A gateway whose exports file holds `exports`, with a portmapper on a free port.
    pub async fn start(exports: &str) -> TestGateway {
        let directory = tempfile::tempdir().expect("temporary directory");
        let exports_path = directory.path().join("exports");
        std::fs::write(&exports_path, exports).expect("write exports");
        let store_directory = directory.path().join("store");
        let store = tokio::task::spawn_blocking(move || Store::open(StoreConfig::new(store_directory)))
            .await
            .expect("store open task")
            .expect("open store");
        let store = Arc::new(store);
        let config = GatewayConfig {
            bind_address: "127.0.0.1".parse().expect("address"),
            nfs_port: 0,
            portmap_port: Some(0),
            exports_file: exports_path.clone(),
        };
        let gateway = Gateway::start(store.clone() as Arc<dyn cairn_store::FileSystem>, config)
            .await
            .expect("start gateway");
        TestGateway { gateway: Some(gateway), store, exports_path, _directory: directory }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    pub fn nfs_address(&self) -> SocketAddr {
        self.gateway().nfs_address()
    }

    /// Rewrites the exports file and reloads it.
    pub fn set_exports(&self, exports: &str) -> Result<(), cairn_nfs::exports::ExportsError> {
        std::fs::write(&self.exports_path, exports).expect("write exports");
        self.gateway().reload_exports()
    }

    /// Mounts `path` with `credential` from an unprivileged port.
    pub async fn mount(
        &self,
        path: &str,
        credential: opaque_auth<'static>,
    ) -> Result<Connection, nfs3_client::ConnectError> {
        self.mount_from(path, credential, false).await
    }

    pub async fn mount_from(
        &self,
        path: &str,
        credential: opaque_auth<'static>,
        privileged_port: bool,
    ) -> Result<Connection, nfs3_client::ConnectError> {
        let port = self.nfs_address().port();
        let builder = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", path)
            .mount_port(port)
            .nfs3_port(port)
            .connect_from_privileged_port(privileged_port)
            .credential(credential);
        tokio::time::timeout(REPLY_TIMEOUT, builder.mount()).await.expect("mount timed out")
    }

    /// Mounts `/` as root.
    pub async fn mount_root(&self) -> Connection {
        self.mount("/", unix(0, 0, &[])).await.expect("mount /")
    }

    pub async fn raw(&self) -> RawConnection {
        RawConnection::connect(self.nfs_address()).await
    }

    pub async fn stop(mut self) {
        let gateway = self.gateway.take().expect("running");
        tokio::time::timeout(REPLY_TIMEOUT, gateway.shutdown()).await.expect("shutdown timed out");
    }
}

/// AUTH_UNIX credentials.
pub fn unix(uid: u32, gid: u32, groups: &[u32]) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"test-client".to_vec()),
        uid,
        gid,
        gids: groups.to_vec(),
    })
}

pub fn fh(handle: &nfs_fh3) -> nfs_fh3 {
    handle.clone()
}

pub fn dirop<'a>(directory: &nfs_fh3, name: &'a str) -> diropargs3<'a> {
    diropargs3 { dir: directory.clone(), name: filename3(Opaque::borrowed(name.as_bytes())) }
}

/// Unwraps a successful NFS result, naming the status otherwise.
pub fn ok<T, E: std::fmt::Debug>(result: Nfs3Result<T, E>) -> T {
    match result {
        Nfs3Result::Ok(value) => value,
        Nfs3Result::Err((status, body)) => panic!("NFS error {status:?}: {body:?}"),
    }
}

/// The status of an NFS result.
pub fn status<T, E>(result: &Nfs3Result<T, E>) -> nfs3::nfsstat3 {
    match result {
        Nfs3Result::Ok(_) => nfs3::nfsstat3::NFS3_OK,
        Nfs3Result::Err((status, _)) => *status,
    }
}

/// Creates (UNCHECKED) a regular file with `mode` and returns its handle.
pub async fn create_file(connection: &mut Connection, directory: &nfs_fh3, name: &str, mode: u32) -> nfs_fh3 {
    let attributes = nfs3::sattr3 { mode: nfs3::Nfs3Option::Some(mode), ..Default::default() };
    let created = connection
        .create(&nfs3::CREATE3args {
            where_: dirop(directory, name),
            how: nfs3::createhow3::UNCHECKED(attributes),
        })
        .await
        .expect("CREATE call");
    match ok(created).obj {
        nfs3::Nfs3Option::Some(handle) => handle,
        nfs3::Nfs3Option::None => panic!("CREATE returned no handle"),
    }
}

pub async fn mkdir(connection: &mut Connection, directory: &nfs_fh3, name: &str, mode: u32) -> nfs_fh3 {
    let attributes = nfs3::sattr3 { mode: nfs3::Nfs3Option::Some(mode), ..Default::default() };
    let created = connection
        .mkdir(&nfs3::MKDIR3args { where_: dirop(directory, name), attributes })
        .await
        .expect("MKDIR call");
    match ok(created).obj {
        nfs3::Nfs3Option::Some(handle) => handle,
        nfs3::Nfs3Option::None => panic!("MKDIR returned no handle"),
    }
}

/// Builds one RPC call record (record mark included, one fragment).
pub fn call_record(
    xid: u32,
    program: u32,
    version: u32,
    procedure: u32,
    credential: &opaque_auth<'_>,
    arguments: &impl Pack,
) -> Vec<u8> {
    let message = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: RPC_VERSION_2,
            prog: program,
            vers: version,
            proc: procedure,
            cred: credential.borrow_any(),
            verf: opaque_auth::default(),
        }),
    };
    let mut body = Vec::new();
    message.pack(&mut body).expect("pack call");
    arguments.pack(&mut body).expect("pack arguments");
    with_record_mark(&body)
}

/// Prefixes `body` with a last-fragment record mark.
pub fn with_record_mark(body: &[u8]) -> Vec<u8> {
    let mut record = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(body);
    record
}

trait BorrowAny {
    fn borrow_any(&self) -> opaque_auth<'_>;
}

impl BorrowAny for opaque_auth<'_> {
    fn borrow_any(&self) -> opaque_auth<'_> {
        opaque_auth { flavor: self.flavor, body: Opaque::borrowed(self.body.as_ref()) }
    }
}

/// A decoded reply header and the bytes after it.
pub struct RawReply {
    pub xid: u32,
    pub body: RawReplyBody,
    pub results: Vec<u8>,
    /// The whole record, record mark excluded.
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
pub enum RawReplyBody {
    Accepted(accept_stat_data),
    Denied(nfs3_client::nfs3_types::rpc::rejected_reply),
}

impl RawReply {
    pub fn parse(bytes: Vec<u8>) -> RawReply {
        let mut cursor = Cursor::new(&bytes[..]);
        let (message, _) = rpc_msg::unpack(&mut cursor).expect("reply header");
        let position = cursor.position() as usize;
        let body = match message.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted)) => {
                RawReplyBody::Accepted(accepted.reply_data)
            }
            msg_body::REPLY(reply_body::MSG_DENIED(rejected)) => RawReplyBody::Denied(rejected),
            msg_body::CALL(_) => panic!("server sent a call"),
        };
        RawReply { xid: message.xid, body, results: bytes[position..].to_vec(), bytes }
    }

    pub fn is_success(&self) -> bool {
        matches!(self.body, RawReplyBody::Accepted(accept_stat_data::SUCCESS))
    }

    /// Decodes the results of a successful reply.
    pub fn results<T: Unpack>(&self) -> T {
        assert!(self.is_success(), "reply is not SUCCESS: {:?}", self.body);
        let mut cursor = Cursor::new(&self.results[..]);
        let (value, _) = T::unpack(&mut cursor).expect("decode results");
        assert_eq!(cursor.position() as usize, self.results.len(), "results fully decoded");
        value
    }
}

/// A TCP connection that speaks raw records.
pub struct RawConnection {
    pub stream: TcpStream,
}

impl RawConnection {
    pub async fn connect(address: SocketAddr) -> RawConnection {
        let stream = TcpStream::connect(address).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawConnection { stream }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads one reply record, or None if the server closed the connection.
    pub async fn receive(&mut self) -> Option<RawReply> {
        tokio::time::timeout(REPLY_TIMEOUT, self.receive_untimed()).await.expect("reply timed out")
    }

    async fn receive_untimed(&mut self) -> Option<RawReply> {
        let mut record = Vec::new();
        loop {
            let mut mark = [0u8; 4];
            self.stream.read_exact(&mut mark).await.ok()?;
            let mark = u32::from_be_bytes(mark);
            let start = record.len();
            record.resize(start + (mark & 0x7fff_ffff) as usize, 0);
            self.stream.read_exact(&mut record[start..]).await.ok()?;
            if mark & 0x8000_0000 != 0 {
                return Some(RawReply::parse(record));
            }
        }
    }

    pub async fn call(
        &mut self,
        xid: u32,
        program: u32,
        version: u32,
        procedure: u32,
        credential: &opaque_auth<'_>,
        arguments: &impl Pack,
    ) -> RawReply {
        self.send(&call_record(xid, program, version, procedure, credential, arguments)).await;
        let reply = self.receive().await.expect("reply");
        assert_eq!(reply.xid, xid);
        reply
    }

    /// True when the server closed the connection (end of stream or reset) within the timeout.
    pub async fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    }
}

pub const NFS: u32 = 100_003;
pub const MOUNT: u32 = 100_005;
pub const PORTMAP: u32 = 100_000;

/// Arguments already encoded by hand.
pub struct RawArguments(pub Vec<u8>);

impl Pack for RawArguments {
    fn packed_size(&self) -> usize {
        self.0.len()
    }

    fn pack(&self, out: &mut impl std::io::Write) -> nfs3_client::nfs3_types::xdr_codec::Result<usize> {
        out.write_all(&self.0).map_err(nfs3_client::nfs3_types::xdr_codec::Error::Io)?;
        Ok(self.0.len())
    }
}

/// Packs any XDR value into bytes.
pub fn packed(value: &impl Pack) -> Vec<u8> {
    let mut out = Vec::new();
    value.pack(&mut out).expect("pack");
    out
}
