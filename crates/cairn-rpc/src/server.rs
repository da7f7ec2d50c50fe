//! The serving side of a connection.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::frame::{self, Envelope, IO_BUFFER_BYTES, Outgoing};
use crate::{IN_FLIGHT_MAX, PUSH_QUEUE_MAX, RpcError};

/// A service answering requests.
pub trait Handler: Send + Sync + 'static {
    type Req: DeserializeOwned + Send + 'static;
    type Resp: Serialize + Send + 'static;
    type Push: Serialize + Send + 'static;

    /// Answers one request. Requests run concurrently, each in its own task, at most
    /// [`IN_FLIGHT_MAX`] per connection (beyond that the connection is not read: backpressure).
    /// A request already running when its connection closes still runs to completion; its response is
    /// dropped. If the task panics, the connection is closed so the caller fails promptly.
    fn call(&self, conn: &Connection<Self::Push>, req: Self::Req) -> impl Future<Output = Self::Resp> + Send;

    /// Called once when a connection that completed its handshake ends (clean close, error, or
    /// cancellation of [`serve_connection`]).
    fn disconnected(&self, conn: &Connection<Self::Push>) {
        let _ = conn;
    }
}

/// The server's handle on one connection, given to the [`Handler`]. Cloneable, so a handler may keep
/// it (e.g. to push watch notifications later).
pub struct Connection<Push> {
    inner: Arc<ConnInner>,
    _push: PhantomData<fn(Push)>,
}

struct ConnInner {
    id: u64,
    peer: String,
    queue: mpsc::UnboundedSender<Outgoing>,
    push_slots: Arc<Semaphore>,
    closed: watch::Sender<bool>,
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

impl<Push> Clone for Connection<Push> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), _push: PhantomData }
    }
}

impl<Push> fmt::Debug for Connection<Push> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<Push> Connection<Push> {
    /// Identifier of this connection, unique within the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Description of the client, as given to [`serve_connection`].
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Closes the connection (its reader and writer stop; queued frames are dropped).
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }
}

impl<Push: Serialize> Connection<Push> {
    /// Queues a push to the client without waiting. Pushes are written in the order queued. The queue is
    /// bounded: if [`PUSH_QUEUE_MAX`] pushes are already waiting (a client not reading), the connection
    /// is closed and `Err(Closed)` returned. A push larger than the frame limit fails with `TooLarge`
    /// and leaves the connection open.
    pub fn push(&self, body: &Push) -> Result<(), RpcError> {
        if self.is_closed() {
            return Err(RpcError::Closed);
        }
        let frame = frame::encode(&Envelope::<(), (), &Push>::Push { body })?;
        let Ok(slot) = self.inner.push_slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %self.peer(), conn = self.id(), "push queue full, closing rpc connection");
            self.close();
            return Err(RpcError::Closed);
        };
        self.inner.queue.send(Outgoing { frame, _permit: Some(slot) }).map_err(|_| RpcError::Closed)
    }
}

/// Ends a connection however `serve_connection` ends: closes it and tells the handler.
struct EndGuard<H: Handler> {
    conn: Connection<H::Push>,
    handler: Arc<H>,
}

impl<H: Handler> Drop for EndGuard<H> {
    fn drop(&mut self) {
        self.conn.close();
        self.handler.disconnected(&self.conn);
    }
}

/// Closes the connection if a handler task ends without producing its response (panic, cancellation).
struct UnfinishedGuard<'a, Push> {
    conn: &'a Connection<Push>,
    finished: bool,
}

impl<Push> Drop for UnfinishedGuard<'_, Push> {
    fn drop(&mut self) {
        if !self.finished {
            tracing::warn!(peer = %self.conn.peer(), conn = self.conn.id(), "rpc handler did not finish, closing connection");
            self.conn.close();
        }
    }
}

/// Serves one already-established stream until it closes. `peer` only describes the client (logs,
/// [`Connection::peer`]). Returns `Ok` on a clean close and the reason otherwise (also logged with
/// `tracing::warn`). A malformed frame, a frame over the size limit, an unexpected envelope or a version
/// mismatch closes only this connection.
pub async fn serve_connection<S, H>(
    stream: S,
    peer: impl Into<String>,
    handler: Arc<H>,
) -> Result<(), RpcError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    let peer = peer.into();
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(IO_BUFFER_BYTES, rd);
    if let Err(e) = frame::handshake(&mut rd, &mut wr).await {
        let hung_up = match &e {
            RpcError::Closed => true,
            RpcError::Io(io) => io.kind() == std::io::ErrorKind::ConnectionReset,
            _ => false,
        };
        if hung_up {
            // Closed before a word: a liveness probe (is anyone listening here?), not a client.
            tracing::debug!(%peer, "connection closed before the handshake");
        } else {
            tracing::warn!(%peer, error = %e, "rpc handshake failed");
        }
        return Err(e);
    }

    let (queue, queue_rx) = mpsc::unbounded_channel();
    let (closed, mut closed_rx) = watch::channel(false);
    let inner = ConnInner {
        id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
        peer,
        queue,
        push_slots: Arc::new(Semaphore::new(PUSH_QUEUE_MAX)),
        closed,
    };
    let conn = Connection { inner: Arc::new(inner), _push: PhantomData };
    frame::spawn_writer(wr, queue_rx, conn.inner.closed.clone());
    let _end = EndGuard { conn: conn.clone(), handler: handler.clone() };

    let result = tokio::select! {
        r = read_requests(&mut rd, &conn, &handler) => r,
        () = frame::wait_closed(&mut closed_rx) => Ok(()),
    };
    match &result {
        Ok(()) => tracing::debug!(peer = %conn.peer(), conn = conn.id(), "rpc connection closed"),
        Err(e) => tracing::warn!(peer = %conn.peer(), conn = conn.id(), error = %e, "closing rpc connection"),
    }
    result
}

async fn read_requests<R, H>(rd: &mut R, conn: &Connection<H::Push>, handler: &Arc<H>) -> Result<(), RpcError>
where
    R: AsyncRead + Unpin,
    H: Handler,
{
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    loop {
        // Take the slot before reading: with IN_FLIGHT_MAX requests running, the socket is left unread.
        let slot = in_flight.clone().acquire_owned().await.map_err(|_| RpcError::Closed)?;
        let Some(payload) = frame::read_frame(rd).await? else {
            return Ok(());
        };
        let (id, req) = match frame::decode::<Envelope<H::Req, IgnoredAny, IgnoredAny>>(&payload)? {
            Envelope::Request { id, body } => (id, body),
            Envelope::Hello { .. } => return Err(RpcError::Protocol("Hello after the handshake".into())),
            Envelope::Response { .. } | Envelope::Push { .. } => {
                return Err(RpcError::Protocol("client sent a Response or Push".into()));
            }
        };
        let (conn, handler) = (conn.clone(), handler.clone());
        tokio::spawn(async move {
            let mut unfinished = UnfinishedGuard { conn: &conn, finished: false };
            let resp = handler.call(&conn, req).await;
            unfinished.finished = true;
            match frame::encode(&Envelope::<(), &H::Resp, ()>::Response { id, body: &resp }) {
                Ok(frame) => drop(conn.inner.queue.send(Outgoing { frame, _permit: Some(slot) })),
                Err(e) => {
                    tracing::warn!(peer = %conn.peer(), conn = conn.id(), error = %e, "cannot send rpc response, closing connection");
                    conn.close();
                }
            }
        });
    }
}

/// Accepts TCP connections (with `TCP_NODELAY`) and serves each with [`serve_connection`] in its own
/// task until `shutdown` completes; then closes the listener and aborts (and awaits) every connection
/// task, which runs [`Handler::disconnected`] for each.
pub async fn serve_tcp<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
                    }
                    connections.spawn(serve_connection(stream, addr.to_string(), handler.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "rpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}
