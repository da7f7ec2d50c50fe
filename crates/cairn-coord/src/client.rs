//! The coord client library: a session, kept alive by pings, over a connection to any member.
//!
//! When the connection breaks the client connects to another member (round robin over the list it
//! was given), re-registers its watches with the last zxid it saw, and carries on: the session
//! survives as long as a ping gets through within its timeout. Reads never go back in time: each
//! carries the last zxid this client saw, and the member waits until it has applied that far.
//!
//! Writes are not retried once sent: if the connection breaks after sending one, the caller gets
//! [`CoordError::ConnectionLoss`] and must read back to learn the outcome (ZooKeeper does the same).
//! A write that could not be sent at all is retried on another member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{
    Command, CommandOk, CoordError, CreateMode, NO_SESSION, Op, OpResult, SessionId, Stat, WatchEvent,
    WatchKind, Zxid,
};
use crate::proto::{
    Client as Rpc, Dialer, MemberStatus, ReadOk, ReadOp, Request, Response, TcpDialer, WatchFired, WatchSpec,
};

/// Time allowed to open one connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds over the member list when none answers.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `None`: no session (one-shot tools; cannot create ephemerals).
    pub session_timeout: Option<Duration>,
    /// Longest any one call may take, reconnection included.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            session_timeout: Some(Duration::from_secs(10)),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// A one-shot watch: resolves with the first event for the path and kind it was set on.
pub struct Watch {
    rx: oneshot::Receiver<WatchEvent>,
}

impl Watch {
    /// Waits for the event. Fails with [`CoordError::Closed`] if the client is closed or its
    /// session expires first.
    pub async fn wait(self) -> Result<WatchEvent, CoordError> {
        self.rx.await.map_err(|_| CoordError::Closed)
    }
}

struct Waiter {
    id: u64,
    existed: bool,
    tx: oneshot::Sender<WatchEvent>,
}

struct Inner {
    members: Vec<String>,
    dialer: Arc<dyn Dialer>,
    options: ClientOptions,
    session: AtomicU64,
    session_timeout_ms: AtomicU64,
    last_zxid: AtomicU64,
    next_member: AtomicUsize,
    connection: Mutex<Option<Rpc>>,
    /// Serializes reconnection.
    reconnecting: tokio::sync::Mutex<()>,
    watchers: Mutex<HashMap<(String, WatchKind), Vec<Waiter>>>,
    next_waiter: AtomicU64,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When the last acknowledged ping (or the session's creation) was sent.
    last_renewal: Mutex<Instant>,
}

/// A coord client. Cheap to clone; the session ends when [`CoordClient::close`] is called or every
/// clone is dropped (then it expires after its timeout).
#[derive(Clone)]
pub struct CoordClient {
    inner: Arc<Inner>,
}

impl Inner {
    fn saw(&self, zxid: Zxid) {
        self.last_zxid.fetch_max(zxid, Ordering::SeqCst);
    }

    fn fire(&self, fired: WatchFired) {
        self.saw(fired.event.zxid);
        let waiters = self.watchers.lock().remove(&(fired.event.path.clone(), fired.kind));
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.tx.send(fired.event.clone());
        }
    }

    /// The current connection, or a new one to the next member that answers.
    async fn connection(self: &Arc<Self>, deadline: Instant) -> Result<Rpc, CoordError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(CoordError::Closed);
        }
        if let Some(rpc) = self.connection.lock().as_ref()
            && !rpc.is_closed()
        {
            return Ok(rpc.clone());
        }
        let _serial = self.reconnecting.lock().await;
        if let Some(rpc) = self.connection.lock().as_ref()
            && !rpc.is_closed()
        {
            return Ok(rpc.clone());
        }
        let mut last_error = String::from("no member address given");
        loop {
            for _ in 0..self.members.len() {
                let i = self.next_member.fetch_add(1, Ordering::SeqCst) % self.members.len();
                let address = &self.members[i];
                match self.open(address).await {
                    Ok(rpc) => {
                        *self.connection.lock() = Some(rpc.clone());
                        return Ok(rpc);
                    }
                    Err(e) => {
                        tracing::debug!("coord member {address}: {e}");
                        last_error = format!("{address}: {e}");
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            if Instant::now() + RECONNECT_PAUSE >= deadline {
                return Err(CoordError::Unavailable {
                    reason: format!("no coord member answered ({last_error})"),
                });
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// Connects to one member and re-registers this client's watches there.
    async fn open(self: &Arc<Self>, address: &str) -> Result<Rpc, String> {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<WatchFired>();
        let open = async {
            let stream = self.dialer.dial(address).await.map_err(|e| e.to_string())?;
            Rpc::handshake(stream, address.to_owned(), Some(push_tx)).await.map_err(|e| e.to_string())
        };
        let rpc = tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| "connect timed out".to_owned())??;
        let weak: Weak<Inner> = Arc::downgrade(self);
        let dispatch = tokio::spawn(async move {
            while let Some(fired) = push_rx.recv().await {
                match weak.upgrade() {
                    Some(inner) => inner.fire(fired),
                    None => return,
                }
            }
        });
        {
            let mut tasks = self.tasks.lock();
            tasks.retain(|t| !t.is_finished());
            tasks.push(dispatch);
        }

        let watches: Vec<WatchSpec> = {
            let watchers = self.watchers.lock();
            watchers
                .iter()
                .filter(|(_, w)| !w.is_empty())
                .map(|((path, kind), w)| WatchSpec {
                    path: path.clone(),
                    kind: *kind,
                    existed: w.iter().any(|w| w.existed),
                })
                .collect()
        };
        if !watches.is_empty() {
            let last_zxid = self.last_zxid.load(Ordering::SeqCst);
            match rpc.call(Request::SetWatches { watches, last_zxid }, self.options.request_timeout).await {
                Ok(Response::Done(Ok(()))) => {}
                Ok(other) => return Err(format!("re-registering watches: {other:?}")),
                Err(e) => return Err(format!("re-registering watches: {e}")),
            }
        }
        Ok(rpc)
    }

    fn drop_connection(&self, rpc: &Rpc) {
        rpc.close();
        let mut current = self.connection.lock();
        if current.as_ref().is_some_and(|c| c.peer() == rpc.peer()) {
            *current = None;
        }
    }

    /// Sends a request that is safe to repeat, reconnecting as needed until the deadline.
    async fn call_idempotent(self: &Arc<Self>, req: impl Fn() -> Request) -> Result<Response, CoordError> {
        let deadline = Instant::now() + self.options.request_timeout;
        loop {
            let rpc = self.connection(deadline).await?;
            let ttl = deadline.saturating_duration_since(Instant::now());
            match rpc.call(req(), ttl).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    self.drop_connection(&rpc);
                    if Instant::now() >= deadline {
                        return Err(CoordError::Unavailable { reason: format!("request failed: {e}") });
                    }
                }
            }
        }
    }

    /// Sends a write once. Only a failure to connect is retried.
    async fn call_write(self: &Arc<Self>, command: Command) -> Result<CommandOk, CoordError> {
        let deadline = Instant::now() + self.options.request_timeout;
        let rpc = self.connection(deadline).await?;
        let ttl = deadline.saturating_duration_since(Instant::now());
        match rpc.call(Request::Write { command }, ttl).await {
            Ok(Response::Written { result, zxid }) => {
                self.saw(zxid);
                result
            }
            Ok(Response::Failed(e)) => Err(e),
            Ok(other) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
            Err(e) => {
                self.drop_connection(&rpc);
                Err(CoordError::ConnectionLoss { reason: e.to_string() })
            }
        }
    }

    fn expire(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.watchers.lock().clear();
        if let Some(rpc) = self.connection.lock().take() {
            rpc.close();
        }
    }
}

impl CoordClient {
    /// Connects to one of `members` (host:port) and, unless `options.session_timeout` is `None`,
    /// opens a session.
    pub async fn connect(members: &[String], options: ClientOptions) -> Result<CoordClient, CoordError> {
        Self::connect_with(members, options, Arc::new(TcpDialer)).await
    }

    /// Same, over a caller-chosen transport (the simulation uses its own).
    pub async fn connect_with(
        members: &[String],
        options: ClientOptions,
        dialer: Arc<dyn Dialer>,
    ) -> Result<CoordClient, CoordError> {
        if members.is_empty() {
            return Err(CoordError::BadRequest { reason: "no coord member address given".into() });
        }
        let inner = Arc::new(Inner {
            members: members.to_vec(),
            dialer,
            options: options.clone(),
            session: AtomicU64::new(NO_SESSION),
            session_timeout_ms: AtomicU64::new(0),
            last_zxid: AtomicU64::new(0),
            next_member: AtomicUsize::new(0),
            connection: Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
            watchers: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            last_renewal: Mutex::new(Instant::now()),
        });
        let client = CoordClient { inner };
        if let Some(timeout) = options.session_timeout {
            let timeout_ms = timeout.as_millis() as u64;
            *client.inner.last_renewal.lock() = Instant::now();
            match client.inner.call_write(Command::CreateSession { timeout_ms }).await? {
                CommandOk::SessionCreated { session, timeout_ms } => {
                    client.inner.session.store(session, Ordering::SeqCst);
                    client.inner.session_timeout_ms.store(timeout_ms, Ordering::SeqCst);
                }
                other => {
                    return Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") });
                }
            }
            let pinger = tokio::spawn(ping_loop(Arc::downgrade(&client.inner)));
            client.inner.tasks.lock().push(pinger);
        }
        Ok(client)
    }

    /// This client's session (`NO_SESSION` without one).
    pub fn session(&self) -> SessionId {
        self.inner.session.load(Ordering::SeqCst)
    }

    /// The negotiated session timeout.
    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.session_timeout_ms.load(Ordering::SeqCst))
    }

    /// Until when the session surely lives: the send time of the last ping the cluster
    /// acknowledged, plus the timeout (the leader counts the timeout from the ping's arrival,
    /// which is later). `None` without a session or once it is closed or expired. A holder of
    /// anything tied to the session (a VIP) must let it go before this instant.
    pub fn session_valid_until(&self) -> Option<Instant> {
        if !self.is_alive() || self.session() == NO_SESSION {
            return None;
        }
        Some(*self.inner.last_renewal.lock() + self.session_timeout())
    }

    /// The highest zxid this client has seen.
    pub fn last_zxid(&self) -> Zxid {
        self.inner.last_zxid.load(Ordering::SeqCst)
    }

    /// False once closed or expired.
    pub fn is_alive(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst)
    }

    /// The address of the member currently connected to, if any.
    pub fn connected_to(&self) -> Option<String> {
        self.inner.connection.lock().as_ref().filter(|c| !c.is_closed()).map(|c| c.peer().to_owned())
    }

    async fn write(&self, op: Op) -> Result<OpResult, CoordError> {
        let command = Command::Write { session: self.session(), op, time_ms: 0 };
        match self.inner.call_write(command).await? {
            CommandOk::Write(result) => Ok(result),
            other => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// Creates a znode; returns the name actually created (sequential suffix included) and its stat.
    /// The stat's `czxid` is a fencing epoch: later creations always have a larger one.
    pub async fn create(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<(String, Stat), CoordError> {
        match self.write(Op::Create { path: path.to_owned(), data: data.to_vec(), mode }).await? {
            OpResult::Created { path, stat } => Ok((path, stat)),
            other => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// Deletes a znode; `version: None` deletes whatever its version.
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<(), CoordError> {
        self.write(Op::Delete { path: path.to_owned(), version }).await.map(|_| ())
    }

    /// Replaces a znode's data if its version matches (`None`: any version).
    pub async fn set(&self, path: &str, data: &[u8], version: Option<i32>) -> Result<Stat, CoordError> {
        match self.write(Op::SetData { path: path.to_owned(), data: data.to_vec(), version }).await? {
            OpResult::Set { stat } => Ok(stat),
            other => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// Applies all `ops` or none.
    pub async fn multi(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError> {
        let command = Command::Multi { session: self.session(), ops, time_ms: 0 };
        match self.inner.call_write(command).await? {
            CommandOk::Multi(results) => Ok(results),
            other => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// A read. `linearizable` makes it see every write committed before it started, at the cost of
    /// a round trip to the leader; otherwise it sees at least everything this client saw.
    pub async fn read(
        &self,
        op: ReadOp,
        path: &str,
        watch: bool,
        linearizable: bool,
    ) -> Result<(ReadOk, Option<Watch>), CoordError> {
        let kind = match op {
            ReadOp::Children => WatchKind::Children,
            ReadOp::Get | ReadOp::Exists => WatchKind::Data,
        };
        // Register the waiter before asking: the event may be pushed right behind the answer and
        // be dispatched before this task runs again.
        let (tx, rx) = oneshot::channel();
        let key = (path.to_owned(), kind);
        let waiter_id = self.inner.next_waiter.fetch_add(1, Ordering::SeqCst);
        if watch {
            self.inner.watchers.lock().entry(key.clone()).or_default().push(Waiter {
                id: waiter_id,
                existed: true,
                tx,
            });
        }
        let forget = || {
            if let Some(waiters) = self.inner.watchers.lock().get_mut(&key) {
                waiters.retain(|w| w.id != waiter_id);
            }
        };
        let resp = self
            .inner
            .call_idempotent(|| Request::Read {
                op: op.clone(),
                path: path.to_owned(),
                watch,
                min_zxid: self.last_zxid(),
                linearizable,
            })
            .await;
        let result = match resp {
            Ok(Response::Read { result, zxid }) => {
                self.inner.saw(zxid);
                result
            }
            Ok(Response::Failed(e)) => Err(e),
            Ok(other) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
            Err(e) => Err(e),
        };
        match result {
            Ok(ok) if watch => {
                let existed = !matches!(ok, ReadOk::Exists { stat: None });
                if let Some(waiters) = self.inner.watchers.lock().get_mut(&key)
                    && let Some(waiter) = waiters.iter_mut().find(|w| w.id == waiter_id)
                {
                    waiter.existed = existed;
                }
                Ok((ok, Some(Watch { rx })))
            }
            Ok(ok) => Ok((ok, None)),
            Err(e) => {
                forget();
                Err(e)
            }
        }
    }

    pub async fn get(&self, path: &str) -> Result<(Vec<u8>, Stat), CoordError> {
        match self.read(ReadOp::Get, path, false, false).await? {
            (ReadOk::Data { data, stat }, _) => Ok((data, stat)),
            (other, _) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// `get`, and a watch that fires when the znode changes or is deleted.
    pub async fn get_watch(&self, path: &str) -> Result<(Vec<u8>, Stat, Watch), CoordError> {
        match self.read(ReadOp::Get, path, true, false).await? {
            (ReadOk::Data { data, stat }, Some(watch)) => Ok((data, stat, watch)),
            (other, _) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    pub async fn exists(&self, path: &str) -> Result<Option<Stat>, CoordError> {
        match self.read(ReadOp::Exists, path, false, false).await? {
            (ReadOk::Exists { stat }, _) => Ok(stat),
            (other, _) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// `exists`, and a watch that fires when the znode is created, changed or deleted.
    pub async fn exists_watch(&self, path: &str) -> Result<(Option<Stat>, Watch), CoordError> {
        match self.read(ReadOp::Exists, path, true, false).await? {
            (ReadOk::Exists { stat }, Some(watch)) => Ok((stat, watch)),
            (other, _) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    pub async fn children(&self, path: &str) -> Result<Vec<String>, CoordError> {
        match self.read(ReadOp::Children, path, false, false).await? {
            (ReadOk::Children { names, .. }, _) => Ok(names),
            (other, _) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// `children`, and a watch that fires when a child is added or removed, or the znode deleted.
    pub async fn children_watch(&self, path: &str) -> Result<(Vec<String>, Watch), CoordError> {
        match self.read(ReadOp::Children, path, true, false).await? {
            (ReadOk::Children { names, .. }, Some(watch)) => Ok((names, watch)),
            (other, _) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// Waits until this client's reads see every write committed before the call.
    pub async fn sync(&self) -> Result<(), CoordError> {
        self.read(ReadOp::Exists, "/", false, true).await.map(|_| ())
    }

    /// Asks the connected member to add a voting member (it forwards to the leader).
    pub async fn add_member(&self, id: u64, address: &str) -> Result<(), CoordError> {
        match self.inner.call_idempotent(|| Request::AddMember { id, address: address.to_owned() }).await? {
            Response::Done(r) => r,
            other => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    pub async fn remove_member(&self, id: u64) -> Result<(), CoordError> {
        match self.inner.call_idempotent(|| Request::RemoveMember { id }).await? {
            Response::Done(r) => r,
            other => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// Ends another client's session now, as if it had expired: its ephemerals are deleted at
    /// once and its holder, if it still runs, finds its session gone. For a caller with proof
    /// that the holder is dead (say, the holder's own ports refuse connections), so that what it
    /// held need not wait out the session timeout. True if the session existed.
    pub async fn expire_session(&self, session: SessionId) -> Result<bool, CoordError> {
        match self.inner.call_write(Command::ExpireSessions { sessions: vec![session] }).await? {
            CommandOk::SessionsExpired { sessions } => Ok(sessions.contains(&session)),
            other => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        }
    }

    /// Ends the session now: its ephemerals are deleted at once.
    pub async fn close(&self) -> Result<(), CoordError> {
        let session = self.session();
        let result = if session != NO_SESSION && self.is_alive() {
            self.inner.call_write(Command::CloseSession { session }).await.map(|_| ())
        } else {
            Ok(())
        };
        self.inner.expire();
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// Pings every third of the session timeout; on a broken connection, reconnects at once.
async fn ping_loop(inner: Weak<Inner>) {
    loop {
        let (interval, session) = match inner.upgrade() {
            Some(i) => (
                Duration::from_millis(i.session_timeout_ms.load(Ordering::SeqCst) / 3),
                i.session.load(Ordering::SeqCst),
            ),
            None => return,
        };
        tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let sent = Instant::now();
        match inner.call_idempotent(|| Request::Ping { session }).await {
            Ok(Response::Pong(Ok(()))) => {
                let mut last = inner.last_renewal.lock();
                *last = (*last).max(sent);
            }
            Ok(Response::Pong(Err(CoordError::SessionExpired { .. }))) => {
                tracing::warn!("coord session {session:#x} expired");
                inner.expire();
                return;
            }
            Ok(Response::Pong(Err(e))) => {
                // The member cannot vouch for the session (cut off from the leader, or behind):
                // try another one.
                tracing::debug!("ping: {e}; moving to another member");
                if let Some(rpc) = inner.connection.lock().clone() {
                    inner.drop_connection(&rpc);
                }
            }
            Ok(other) => tracing::debug!("ping: {other:?}"),
            Err(e) => tracing::debug!("ping failed: {e}"),
        }
    }
}

/// Asks one member for its status.
pub async fn member_status(address: &str, timeout: Duration) -> Result<MemberStatus, CoordError> {
    let rpc = Rpc::connect_tcp(address, timeout, None)
        .await
        .map_err(|e| CoordError::Unavailable { reason: format!("{address}: {e}") })?;
    match rpc.call(Request::Status, timeout).await {
        Ok(Response::Status(s)) => Ok(s),
        Ok(other) => Err(CoordError::BadRequest { reason: format!("unexpected answer: {other:?}") }),
        Err(e) => Err(CoordError::Unavailable { reason: format!("{address}: {e}") }),
    }
}
