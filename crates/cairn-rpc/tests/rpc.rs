//! End-to-end tests of cairn-rpc over real TCP (127.0.0.1) and in-memory duplex streams.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_rpc::{
    Client, Connection, FRAME_BYTES_MAX, Handler, IN_FLIGHT_MAX, PROTOCOL_VERSION, PUSH_QUEUE_MAX, RpcError,
    serve_connection, serve_tcp,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LONG: Duration = Duration::from_secs(30);
const PROMPT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    /// Answer `n * 3` after `delay_ms`.
    Echo {
        n: u64,
        delay_ms: u64,
    },
    /// Push `count` notes, then answer how many pushes failed.
    Pushes {
        count: u64,
    },
    Hang,
    Panic,
    Blob(Vec<u8>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Resp {
    Echo { n: u64, finished: u64 },
    Pushed { failed: u64 },
    Done,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    seq: u64,
}

type TestClient = Client<Req, Resp, Note>;

struct TestHandler {
    finished: AtomicU64,
    hanging: AtomicU64,
    connections: Mutex<Vec<Connection<Note>>>,
    disconnects: mpsc::UnboundedSender<u64>,
}

impl Handler for TestHandler {
    type Req = Req;
    type Resp = Resp;
    type Push = Note;

    async fn call(&self, conn: &Connection<Note>, req: Req) -> Resp {
        {
            let mut conns = self.connections.lock();
            if !conns.iter().any(|c| c.id() == conn.id()) {
                conns.push(conn.clone());
            }
        }
        match req {
            Req::Echo { n, delay_ms } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Resp::Echo { n: n * 3, finished: self.finished.fetch_add(1, Ordering::SeqCst) }
            }
            Req::Pushes { count } => {
                let failed = (0..count).filter(|&seq| conn.push(&Note { seq }).is_err()).count() as u64;
                Resp::Pushed { failed }
            }
            Req::Hang => {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                std::future::pending().await
            }
            Req::Panic => panic!("handler panics on purpose"),
            Req::Blob(_) => Resp::Done,
        }
    }

    fn disconnected(&self, conn: &Connection<Note>) {
        assert!(conn.is_closed());
        let _ = self.disconnects.send(conn.id());
    }
}

fn handler() -> (Arc<TestHandler>, mpsc::UnboundedReceiver<u64>) {
    let (disconnects, rx) = mpsc::unbounded_channel();
    let h = TestHandler {
        finished: AtomicU64::new(0),
        hanging: AtomicU64::new(0),
        connections: Mutex::new(Vec::new()),
        disconnects,
    };
    (Arc::new(h), rx)
}

struct TcpServer {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    disconnects: mpsc::UnboundedReceiver<u64>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn tcp_server() -> TcpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handler, disconnects) = handler();
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_tcp(listener, handler.clone(), async {
        let _ = shutdown_rx.await;
    }));
    TcpServer { addr, handler, disconnects, shutdown: Some(shutdown), task }
}

async fn connect(addr: SocketAddr, pushes: Option<mpsc::UnboundedSender<Note>>) -> TestClient {
    Client::connect_tcp(addr, PROMPT, pushes).await.unwrap()
}

/// A client over an in-memory stream, served by a `serve_connection` task.
async fn duplex_pair(
    h: &Arc<TestHandler>,
    pushes: Option<mpsc::UnboundedSender<Note>>,
) -> (TestClient, JoinHandle<Result<(), RpcError>>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve_connection(b, "duplex-client", h.clone()));
    let client = Client::handshake(a, "duplex-server", pushes).await.unwrap();
    (client, server)
}

async fn echo(client: &TestClient, n: u64) -> u64 {
    match client.call(Req::Echo { n, delay_ms: 0 }, PROMPT).await.unwrap() {
        Resp::Echo { n, .. } => n,
        other => panic!("unexpected {other:?}"),
    }
}

// ---- raw wire helpers: an independent encoding of the documented wire format ----

#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Hello { version: u16 },
    Request { id: u64, body: Req },
    Response { id: u64, body: Resp },
    Push { body: Note },
    Bogus { x: u8 },
}

async fn write_wire<W: AsyncWrite + Unpin>(w: &mut W, env: &Wire) {
    let payload = rmp_serde::to_vec_named(env).unwrap();
    w.write_all(&(payload.len() as u32).to_be_bytes()).await.unwrap();
    w.write_all(&payload).await.unwrap();
}

async fn read_wire<R: AsyncRead + Unpin>(r: &mut R) -> Wire {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut payload).await.unwrap();
    rmp_serde::from_slice(&payload).unwrap()
}

/// Connects with a raw socket and completes the handshake.
async fn raw_tcp(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    write_wire(&mut s, &Wire::Hello { version: PROTOCOL_VERSION }).await;
    assert!(matches!(read_wire(&mut s).await, Wire::Hello { version: PROTOCOL_VERSION }));
    s
}

/// The peer must close the stream promptly (EOF or reset) without sending anything more.
async fn assert_closed_by_peer<R: AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 16];
    let read = timeout(PROMPT, r.read(&mut buf)).await.expect("peer did not close the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "unexpected data: {read:?}");
}

async fn next_disconnect(rx: &mut mpsc::UnboundedReceiver<u64>) -> u64 {
    timeout(PROMPT, rx.recv()).await.expect("disconnected() not called").unwrap()
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_complete_out_of_order_over_tcp() {
    let server = tcp_server().await;
    let client = connect(server.addr, None).await;
    assert_eq!(client.peer(), server.addr.to_string());
    let calls: Vec<_> = (0..500u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(
                async move { (i, client.call(Req::Echo { n: i, delay_ms: (i * 37) % 50 }, LONG).await) },
            )
        })
        .collect();
    let mut finished = Vec::new();
    for call in calls {
        let (i, resp) = call.await.unwrap();
        match resp.unwrap() {
            Resp::Echo { n, finished: f } => {
                assert_eq!(n, i * 3);
                finished.push(f);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every call got its own answer, and completions really happened out of request order.
    let mut sorted = finished.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..500).collect::<Vec<_>>());
    assert!(finished.windows(2).any(|w| w[0] > w[1]));
    assert!(!client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_calls_than_in_flight_max_over_duplex() {
    let (h, _disconnects) = handler();
    let (client, _server) = duplex_pair(&h, None).await;
    let total = IN_FLIGHT_MAX as u64 + 1000;
    let calls: Vec<_> = (0..total)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i, client.call(Req::Echo { n: i, delay_ms: i % 4 }, LONG).await) })
        })
        .collect();
    for call in calls {
        let (i, resp) = call.await.unwrap();
        assert!(matches!(resp.unwrap(), Resp::Echo { n, .. } if n == i * 3));
    }
}

#[tokio::test]
async fn server_stops_reading_beyond_in_flight_max() {
    let server = tcp_server().await;
    let mut raw = raw_tcp(server.addr).await;
    let extra = 10u64;
    for id in 0..IN_FLIGHT_MAX as u64 + extra {
        write_wire(&mut raw, &Wire::Request { id, body: Req::Hang }).await;
    }
    raw.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.handler.hanging.load(Ordering::SeqCst), IN_FLIGHT_MAX as u64);
}

#[tokio::test]
async fn pushes_arrive_in_order_before_the_response() {
    let server = tcp_server().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = connect(server.addr, Some(tx)).await;
    let resp = client.call(Req::Pushes { count: 2000 }, LONG).await.unwrap();
    assert_eq!(resp, Resp::Pushed { failed: 0 });
    for seq in 0..2000 {
        assert_eq!(rx.try_recv().unwrap(), Note { seq });
    }
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn push_queue_overflow_closes_the_connection() {
    // Current-thread runtime: the writer cannot drain while the handler pushes without yielding.
    let (h, mut disconnects) = handler();
    let (client, server) = duplex_pair(&h, None).await;
    let at_limit = client.call(Req::Pushes { count: PUSH_QUEUE_MAX as u64 }, LONG).await.unwrap();
    assert_eq!(at_limit, Resp::Pushed { failed: 0 });
    let count = PUSH_QUEUE_MAX as u64 + 10;
    let result = client.call(Req::Pushes { count }, LONG).await;
    assert!(matches!(result, Err(RpcError::Closed)), "{result:?}");
    next_disconnect(&mut disconnects).await;
    assert!(server.await.unwrap().is_ok());
}

#[tokio::test]
async fn server_shutdown_fails_pending_calls_promptly() {
    let mut server = tcp_server().await;
    let client = connect(server.addr, None).await;
    let pending: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call(Req::Hang, LONG).await })
        })
        .collect();
    while server.handler.hanging.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    server.shutdown.take().unwrap().send(()).unwrap();
    for call in pending {
        assert!(matches!(call.await.unwrap(), Err(RpcError::Closed)));
    }
    assert!(start.elapsed() < PROMPT);
    assert!(client.is_closed());
    assert!(matches!(client.call(Req::Hang, LONG).await, Err(RpcError::Closed)));
    next_disconnect(&mut server.disconnects).await;
    timeout(PROMPT, server.task).await.unwrap().unwrap();
    // The listener is closed too.
    assert!(Client::<Req, Resp, Note>::connect_tcp(server.addr, PROMPT, None).await.is_err());
}

#[tokio::test]
async fn dropped_server_task_fails_pending_calls_over_duplex() {
    let (h, mut disconnects) = handler();
    let (client, server) = duplex_pair(&h, None).await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.call(Req::Hang, LONG).await }
    });
    while h.hanging.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.abort();
    let result = timeout(PROMPT, pending).await.expect("pending call not failed").unwrap();
    assert!(matches!(result, Err(RpcError::Closed)));
    next_disconnect(&mut disconnects).await;
}

#[tokio::test]
async fn malformed_frames_close_only_their_connection() {
    let mut server = tcp_server().await;
    let good = connect(server.addr, None).await;
    assert_eq!(echo(&good, 1).await, 3);

    // Bytes that are not MessagePack (0xc1 is never used).
    let mut garbage = raw_tcp(server.addr).await;
    garbage.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await.unwrap();
    assert_closed_by_peer(&mut garbage).await;

    // A length prefix over the limit.
    let mut oversized = raw_tcp(server.addr).await;
    oversized.write_all(&(FRAME_BYTES_MAX as u32 + 1).to_be_bytes()).await.unwrap();
    assert_closed_by_peer(&mut oversized).await;

    // Well-formed MessagePack, unknown envelope.
    let mut unknown = raw_tcp(server.addr).await;
    write_wire(&mut unknown, &Wire::Bogus { x: 1 }).await;
    assert_closed_by_peer(&mut unknown).await;

    // A client must not send responses.
    let mut reversed = raw_tcp(server.addr).await;
    write_wire(&mut reversed, &Wire::Response { id: 1, body: Resp::Done }).await;
    assert_closed_by_peer(&mut reversed).await;

    let mut closed: Vec<u64> = Vec::new();
    for _ in 0..4 {
        closed.push(next_disconnect(&mut server.disconnects).await);
    }
    closed.sort_unstable();
    closed.dedup();
    assert_eq!(closed.len(), 4);

    // The server still serves: the old client, a new one, and a raw client speaking the documented format.
    assert_eq!(echo(&good, 2).await, 6);
    assert_eq!(echo(&connect(server.addr, None).await, 3).await, 9);
    let mut raw = raw_tcp(server.addr).await;
    write_wire(&mut raw, &Wire::Request { id: 77, body: Req::Echo { n: 5, delay_ms: 0 } }).await;
    assert!(matches!(read_wire(&mut raw).await, Wire::Response { id: 77, body: Resp::Echo { n: 15, .. } }));
}

#[tokio::test]
async fn garbage_from_server_closes_client() {
    let (a, mut b) = tokio::io::duplex(4096);
    let fake_server = tokio::spawn(async move {
        write_wire(&mut b, &Wire::Hello { version: PROTOCOL_VERSION }).await;
        assert!(matches!(read_wire(&mut b).await, Wire::Hello { .. }));
        assert!(matches!(read_wire(&mut b).await, Wire::Request { id: 1, body: Req::Hang }));
        b.write_all(&[0, 0, 0, 2, 0xc1, 0xc1]).await.unwrap();
        b
    });
    let client: TestClient = Client::handshake(a, "fake", None).await.unwrap();
    let result = client.call(Req::Hang, LONG).await;
    assert!(matches!(result, Err(RpcError::Closed)), "{result:?}");
    assert!(client.is_closed());
    drop(fake_server.await.unwrap());
}

#[tokio::test]
async fn version_mismatch_is_rejected_by_server() {
    let (h, mut disconnects) = handler();
    let (mut a, b) = tokio::io::duplex(4096);
    let server = tokio::spawn(serve_connection(b, "old-client", h.clone()));
    write_wire(&mut a, &Wire::Hello { version: PROTOCOL_VERSION + 1 }).await;
    assert!(matches!(read_wire(&mut a).await, Wire::Hello { version: PROTOCOL_VERSION }));
    let result = timeout(PROMPT, server).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(RpcError::VersionMismatch { ours: PROTOCOL_VERSION, theirs }) if theirs == PROTOCOL_VERSION + 1),
        "{result:?}"
    );
    assert_closed_by_peer(&mut a).await;
    // No connection was established, so no disconnected() call.
    assert!(disconnects.try_recv().is_err());
}

#[tokio::test]
async fn version_mismatch_is_rejected_by_client() {
    let (a, mut b) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        write_wire(&mut b, &Wire::Hello { version: 7 }).await;
        let _ = read_wire(&mut b).await;
    });
    let result = TestClient::handshake(a, "future-server", None).await;
    assert!(matches!(result, Err(RpcError::VersionMismatch { ours: 1, theirs: 7 })), "{result:?}");
}

#[tokio::test]
async fn hello_frame_bytes_are_frozen() {
    let (h, _disconnects) = handler();
    let (mut a, b) = tokio::io::duplex(4096);
    tokio::spawn(serve_connection(b, "byte-checker", h));
    let mut hello = [0u8; 21];
    a.read_exact(&mut hello).await.unwrap();
    // Length 17, then MessagePack {"Hello": {"version": 1}} (see README.md).
    let mut expected = vec![0, 0, 0, 17, 0x81, 0xa5];
    expected.extend_from_slice(b"Hello");
    expected.extend_from_slice(&[0x81, 0xa7]);
    expected.extend_from_slice(b"version");
    expected.push(0x01);
    assert_eq!(hello.as_slice(), expected.as_slice());
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let (h, _disconnects) = handler();
    let (mut a, b) = tokio::io::duplex(4096);
    let server = tokio::spawn(serve_connection(b, "rude-client", h));
    write_wire(&mut a, &Wire::Request { id: 1, body: Req::Hang }).await;
    let result = timeout(PROMPT, server).await.unwrap().unwrap();
    assert!(matches!(result, Err(RpcError::Protocol(_))), "{result:?}");
}

#[tokio::test]
async fn timed_out_call_ignores_its_late_response() {
    let (h, _disconnects) = handler();
    let (client, _server) = duplex_pair(&h, None).await;
    let slow = client.call(Req::Echo { n: 1, delay_ms: 300 }, Duration::from_millis(50)).await;
    assert!(matches!(slow, Err(RpcError::Timeout)), "{slow:?}");
    // Let the late response arrive, then check the connection still works with the right answers.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.finished.load(Ordering::SeqCst), 1);
    assert!(!client.is_closed());
    assert_eq!(echo(&client, 2).await, 6);
    assert_eq!(echo(&client, 4).await, 12);
}

#[tokio::test]
async fn handler_panic_fails_the_call_promptly() {
    let (h, mut disconnects) = handler();
    let (client, _server) = duplex_pair(&h, None).await;
    let result = timeout(PROMPT, client.call(Req::Panic, LONG)).await.unwrap();
    assert!(matches!(result, Err(RpcError::Closed)), "{result:?}");
    next_disconnect(&mut disconnects).await;
}

#[tokio::test]
async fn oversized_request_fails_locally_and_keeps_connection() {
    let (h, _disconnects) = handler();
    let (client, _server) = duplex_pair(&h, None).await;
    let result = client.call(Req::Blob(vec![0; FRAME_BYTES_MAX + 1]), LONG).await;
    assert!(matches!(result, Err(RpcError::TooLarge { max: FRAME_BYTES_MAX, .. })), "{result:?}");
    assert_eq!(echo(&client, 5).await, 15);
}

#[tokio::test]
async fn dropping_the_client_calls_disconnected() {
    let (h, mut disconnects) = handler();
    let (client, server) = duplex_pair(&h, None).await;
    let second = client.clone();
    assert_eq!(echo(&client, 1).await, 3);
    let conn = h.connections.lock()[0].clone();
    assert!(!conn.is_closed());
    drop(client);
    assert_eq!(echo(&second, 2).await, 6);
    drop(second);
    assert_eq!(next_disconnect(&mut disconnects).await, conn.id());
    assert!(conn.is_closed());
    assert!(matches!(conn.push(&Note { seq: 0 }), Err(RpcError::Closed)));
    assert!(timeout(PROMPT, server).await.unwrap().unwrap().is_ok());
}

#[tokio::test]
async fn explicit_close_fails_pending_calls() {
    let (h, _disconnects) = handler();
    let (client, _server) = duplex_pair(&h, None).await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.call(Req::Hang, LONG).await }
    });
    while h.hanging.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.close();
    let result = timeout(PROMPT, pending).await.unwrap().unwrap();
    assert!(matches!(result, Err(RpcError::Closed)));
}

#[allow(dead_code)]
fn assert_types_are_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<TestClient>();
    check::<Connection<Note>>();
    fn check_stream<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>() {}
    check_stream::<DuplexStream>();
}
