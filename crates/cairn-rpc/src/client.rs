//! The calling side of a connection.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::frame::{self, Envelope, IO_BUFFER_BYTES, Outgoing};
use crate::{IN_FLIGHT_MAX, RpcError};

/// A cloneable handle on one client connection.
///
/// The connection's reader and writer tasks end when the last handle is dropped, when [`Client::close`]
/// is called, or when the connection breaks; every pending [`Client::call`] then fails with
/// [`RpcError::Closed`].
pub struct Client<Req, Resp, Push> {
    inner: Arc<ClientInner<Resp>>,
    _types: PhantomData<fn(Req) -> Push>,
}

struct ClientInner<Resp> {
    shared: Arc<Shared<Resp>>,
    queue: mpsc::UnboundedSender<Outgoing>,
    next_id: AtomicU64,
    peer: String,
}

/// State shared by the handles and the reader task.
struct Shared<Resp> {
    pending: Mutex<Pending<Resp>>,
    in_flight: Semaphore,
    closed: watch::Sender<bool>,
}

struct Pending<Resp> {
    waiters: HashMap<u64, oneshot::Sender<Resp>>,
    closed: bool,
}

impl<Resp> Shared<Resp> {
    /// Marks the connection closed and fails every pending call. Idempotent.
    fn close(&self) {
        self.closed.send_replace(true);
        self.in_flight.close();
        let mut pending = self.pending.lock();
        pending.closed = true;
        pending.waiters.clear();
    }
}

impl<Resp> Drop for ClientInner<Resp> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Closes the connection when the reader task ends, however it ends.
struct CloseOnDrop<Resp>(Arc<Shared<Resp>>);

impl<Resp> Drop for CloseOnDrop<Resp> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Forgets a call's waiter when the call completes, times out or is cancelled.
struct ForgetOnDrop<'a, Resp> {
    shared: &'a Shared<Resp>,
    id: u64,
}

impl<Resp> Drop for ForgetOnDrop<'_, Resp> {
    fn drop(&mut self) {
        self.shared.pending.lock().waiters.remove(&self.id);
    }
}

impl<Req, Resp, Push> Clone for Client<Req, Resp, Push> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), _types: PhantomData }
    }
}

impl<Req, Resp, Push> fmt::Debug for Client<Req, Resp, Push> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.inner.peer)
            .field("closed", &*self.inner.shared.closed.borrow())
            .finish()
    }
}

impl<Req, Resp, Push> Client<Req, Resp, Push>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
    Push: DeserializeOwned + Send + 'static,
{
    /// Runs the handshake on an already-connected stream and spawns the connection's reader and writer
    /// tasks. `peer` only describes the other end (for logs and [`Client::peer`]). Server pushes are
    /// sent to `pushes`, in order; without it (or once its receiver is dropped) they are discarded.
    pub async fn handshake<S>(
        stream: S,
        peer: impl Into<String>,
        pushes: Option<mpsc::UnboundedSender<Push>>,
    ) -> Result<Self, RpcError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let peer = peer.into();
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(IO_BUFFER_BYTES, rd);
        frame::handshake(&mut rd, &mut wr).await?;

        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending { waiters: HashMap::new(), closed: false }),
            in_flight: Semaphore::new(IN_FLIGHT_MAX),
            closed,
        });
        let (queue, queue_rx) = mpsc::unbounded_channel();
        frame::spawn_writer(wr, queue_rx, shared.closed.clone());
        tokio::spawn(run_reader(rd, shared.clone(), pushes, peer.clone()));
        let inner = ClientInner { shared, queue, next_id: AtomicU64::new(1), peer };
        Ok(Self { inner: Arc::new(inner), _types: PhantomData })
    }

    /// Connects over TCP (with `TCP_NODELAY`) and runs the handshake, all within `timeout`.
    pub async fn connect_tcp(
        addr: impl tokio::net::ToSocketAddrs,
        timeout: Duration,
        pushes: Option<mpsc::UnboundedSender<Push>>,
    ) -> Result<Self, RpcError> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let peer = stream.peer_addr()?.to_string();
            Self::handshake(stream, peer, pushes).await
        };
        tokio::time::timeout(timeout, connect).await.map_err(|_| RpcError::Timeout)?
    }

    /// Sends `req` and waits for its response, for at most `timeout` (which includes waiting for an
    /// in-flight slot when [`IN_FLIGHT_MAX`](crate::IN_FLIGHT_MAX) calls are already outstanding).
    /// A response arriving after the timeout is discarded.
    pub async fn call(&self, req: Req, timeout: Duration) -> Result<Resp, RpcError> {
        tokio::time::timeout(timeout, self.call_untimed(&req)).await.map_err(|_| RpcError::Timeout)?
    }

    async fn call_untimed(&self, req: &Req) -> Result<Resp, RpcError> {
        let shared = &*self.inner.shared;
        let _slot = shared.in_flight.acquire().await.map_err(|_| RpcError::Closed)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = frame::encode(&Envelope::<&Req, (), ()>::Request { id, body: req })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = shared.pending.lock();
            if pending.closed {
                return Err(RpcError::Closed);
            }
            pending.waiters.insert(id, tx);
        }
        let _forget = ForgetOnDrop { shared, id };
        self.inner.queue.send(Outgoing { frame, _permit: None }).map_err(|_| RpcError::Closed)?;
        rx.await.map_err(|_| RpcError::Closed)
    }
}

impl<Req, Resp, Push> Client<Req, Resp, Push> {
    /// True once the connection is closed; every later call fails with [`RpcError::Closed`].
    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.borrow()
    }

    /// Closes the connection for every handle; pending calls fail with [`RpcError::Closed`].
    pub fn close(&self) {
        self.inner.shared.close();
    }

    /// Description of the other end, as given at handshake (the socket address for TCP).
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }
}

async fn run_reader<R, Resp, Push>(
    mut rd: R,
    shared: Arc<Shared<Resp>>,
    pushes: Option<mpsc::UnboundedSender<Push>>,
    peer: String,
) where
    R: AsyncRead + Unpin,
    Resp: DeserializeOwned,
    Push: DeserializeOwned,
{
    let _close = CloseOnDrop(shared.clone());
    let mut closed = shared.closed.subscribe();
    let result = tokio::select! {
        r = read_responses(&mut rd, &shared, pushes) => r,
        () = frame::wait_closed(&mut closed) => Ok(()),
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "rpc client connection closed"),
        Err(e) => tracing::warn!(%peer, error = %e, "rpc client connection closed"),
    }
}

async fn read_responses<R, Resp, Push>(
    rd: &mut R,
    shared: &Shared<Resp>,
    pushes: Option<mpsc::UnboundedSender<Push>>,
) -> Result<(), RpcError>
where
    R: AsyncRead + Unpin,
    Resp: DeserializeOwned,
    Push: DeserializeOwned,
{
    while let Some(payload) = frame::read_frame(rd).await? {
        match frame::decode::<Envelope<IgnoredAny, Resp, Push>>(&payload)? {
            Envelope::Response { id, body } => {
                let waiter = shared.pending.lock().waiters.remove(&id);
                match waiter {
                    Some(waiter) => drop(waiter.send(body)),
                    None => tracing::debug!(id, "response to an abandoned call discarded"),
                }
            }
            Envelope::Push { body } => {
                if let Some(pushes) = &pushes {
                    let _ = pushes.send(body);
                }
            }
            Envelope::Hello { .. } => return Err(RpcError::Protocol("Hello after the handshake".into())),
            Envelope::Request { .. } => return Err(RpcError::Protocol("server sent a Request".into())),
        }
    }
    Ok(())
}
