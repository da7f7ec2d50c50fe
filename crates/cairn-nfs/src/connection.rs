//! Transport: accept loops, RFC 5531 record marking, per-connection dispatch, and the writer.
//!
//! Per connection, one reader (this task) and one writer task. The reader takes a permit of a
//! semaphore of [`REQUESTS_IN_FLIGHT_MAX`] before reading each record, so a client that sends
//! faster than it is served stops being read (TCP backpressure) instead of queueing without bound.
//! The store blocks, so calls run in four ways, chosen by procedure to keep thread hand-offs off
//! the hot path (each costs more than a small call):
//! - metadata reads that never wait (GETATTR, ACCESS, LOOKUP, ...) run in the connection task
//!   ([`runs_inline`]);
//! - changes (CREATE, REMOVE, RENAME, SETATTR, ...) of a local store are checked in the connection
//!   task and handed to the store's group commit without waiting (`Connection::start_change`);
//!   the thread that makes their batch durable encodes and sends their replies. No thread per
//!   call: a batch of changes costs one wake-up of a committer thread;
//! - other calls that may wait for the group commit (FILE_SYNC WRITE, COMMIT, and every change
//!   when the file system is remote) get a blocking thread each, so that concurrent ones share a
//!   commit ([`may_wait_for_a_commit`]);
//! - the other reads (READ, READDIR, ...) and UNSTABLE WRITEs queue for at most
//!   [`READ_WORKERS_MAX`] blocking threads per connection that take call after call (`ReadLane`).
//!
//! Replies go out as they complete through the connection's [`ReplySink`], written directly by
//! the thread that finished them when the socket is idle; replies made in the connection task are
//! gathered and written together once no complete record is left in the read buffer.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_store::Caller;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::drc::{DrcKey, DrcLookup, DrcTicket};
use crate::exports::ExportOptions;
use crate::rpc::{self, AcceptStatus, CallHeader, CallOutcome, Credential};
use crate::sink::{Outgoing, ReplySink};
use crate::{Shared, mount, nfs, nfs_args, portmap};

/// Calls read from one connection and not yet answered (executing or waiting to be written).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// The largest RPC record accepted: a 1 MiB WRITE plus generous room for headers. A client that
/// sends a larger one is disconnected.
pub const RECORD_BYTES_MAX: usize = cairn_types::limits::IO_SIZE_BYTES_MAX as usize + 64 * 1024;
/// Buffer of the socket reader: many small calls arrive with one read system call.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Blocking threads per connection that execute reading calls (see `ReadLane`).
const READ_WORKERS_MAX: usize = 4;
/// How long a stopping connection keeps trying to write its last replies to a client that does
/// not read them.
const SHUTDOWN_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest UDP datagram the portmapper reads.
const DATAGRAM_BYTES_MAX: usize = 8 * 1024;

/// One reply: `head` starts with its record mark; `payload` (a READ's data) follows it, then the
/// padding of the payload to a multiple of 4.
pub struct Reply {
    pub head: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Reply {
    pub fn new(head: Vec<u8>) -> Reply {
        Reply { head, payload: Vec::new() }
    }
}

/// The programs a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// NFS, MOUNT and (for convenience) the portmapper.
    Nfs,
    /// The portmapper only.
    Portmap,
}

/// Resolves when the gateway shuts down (or when its owner is gone).
pub async fn shutdown_signal(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts connections until shutdown, then waits for every connection to finish.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    service: Service,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown_signal(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, ?service, "connection accepted");
                    let connection = Connection::new(shared.clone(), peer, service);
                    connections.spawn(connection.serve(stream, shutdown.clone()));
                }
                Err(error) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "connection task failed");
                }
            }
        }
    }
    drop(listener);
    while let Some(joined) = connections.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "connection task failed");
        }
    }
}

/// Serves the portmapper over UDP until shutdown.
pub async fn portmap_udp_loop(socket: UdpSocket, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let (length, peer) = tokio::select! {
            () = shutdown_signal(&mut shutdown) => break,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "portmap UDP receive failed");
                    continue;
                }
            },
        };
        let datagram = &buffer[..length];
        let reply = match rpc::decode_call(datagram) {
            CallOutcome::Call(header) if header.program == portmap::PROGRAM => {
                portmap::execute(&shared.portmap, &header, &datagram[header.arguments_offset..])
            }
            CallOutcome::Call(header) => rpc::accepted_reply(header.xid, AcceptStatus::ProgramUnavailable),
            CallOutcome::Reject(reply) => reply,
            CallOutcome::Unparseable => continue,
        };
        // Datagrams carry no record mark.
        if let Err(error) = socket.send_to(&reply[4..], peer).await {
            tracing::debug!(%error, %peer, "portmap UDP send failed");
        }
    }
}

/// Reads one record (all its fragments). `Ok(None)` at a clean end of stream.
pub async fn read_record<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        match reader.read_exact(&mut mark).await {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && record.is_empty() => {
                return Ok(None);
            }
            Err(error) => return Err(error),
        }
        let mark = u32::from_be_bytes(mark);
        let last = mark & 0x8000_0000 != 0;
        let length = (mark & 0x7fff_ffff) as usize;
        if record.len() + length > RECORD_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record of more than {RECORD_BYTES_MAX} bytes"),
            ));
        }
        // 32 spare bytes: tokio's read_to_end probes with a 32-byte reserve, which would otherwise
        // reallocate (and copy) a full buffer. Reading into spare capacity skips zeroing it.
        record.reserve_exact(length + 32);
        let read = (&mut *reader).take(length as u64).read_to_end(&mut record).await?;
        if read != length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if last {
            return Ok(Some(record));
        }
    }
}

/// How long a connection with nothing in flight polls its socket for the client's next call
/// before sleeping in the reactor.
const POLL_BEFORE_SLEEP: Duration = Duration::from_micros(50);

/// The read half of a connection: when the connection has nothing in flight it polls the socket
/// for the client's next call for a short while ([`POLL_BEFORE_SLEEP`]) before sleeping in the
/// reactor. Why: in a VM a sleeping thread leaves its virtual CPU idle, and waking it costs tens
/// of microseconds, many times a small call (measured: GETATTR with one call in flight at
/// 13,000/s, and 110,000/s with both virtual CPUs kept busy). A client that sends one call at a
/// time then finds the server awake. The poll reads the non-blocking socket directly, so it
/// also sees data that tokio's reactor has not reported yet. A poll that finds nothing makes the
/// next ones rarer (a slow or idle client costs one poll in [`POLL_BACKOFF_MAX`] reads); one that
/// finds the next call resets that.
struct PollingRead {
    inner: tokio::net::tcp::OwnedReadHalf,
    /// The connection's in-flight permits: all free (but the one the reader holds) means
    /// nothing in flight.
    permits: Arc<Semaphore>,
    /// Reads to make without polling, and how many to skip after the next poll that misses.
    skip: u32,
    backoff: u32,
}

/// Most reads without polling after polls that found nothing.
const POLL_BACKOFF_MAX: u32 = 64;

impl AsyncRead for PollingRead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.skip > 0 {
            this.skip -= 1;
        } else if this.permits.available_permits() + 1 >= REQUESTS_IN_FLIGHT_MAX {
            let deadline = Instant::now() + POLL_BEFORE_SLEEP;
            let socket = socket2::SockRef::from(this.inner.as_ref());
            loop {
                // The socket is non-blocking (tokio's); the buffer is BufReader's, initialized.
                match io::Read::read(&mut &*socket, buffer.initialize_unfilled()) {
                    Ok(received) => {
                        buffer.advance(received);
                        this.backoff = 0;
                        return std::task::Poll::Ready(Ok(()));
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return std::task::Poll::Ready(Err(error)),
                }
                if Instant::now() >= deadline {
                    this.backoff = (this.backoff * 2).clamp(1, POLL_BACKOFF_MAX);
                    this.skip = this.backoff;
                    break;
                }
                std::hint::spin_loop();
            }
        }
        std::pin::Pin::new(&mut this.inner).poll_read(context, buffer)
    }
}

/// Per-connection state of the reader.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    client_ip: IpAddr,
    service: Service,
    /// The export options for this client, and the exports generation they were computed at.
    export_options: Option<(u64, Option<ExportOptions>)>,
    /// The last caller built, for the credential and options it was built from.
    last_caller: Option<(Credential, ExportOptions, Arc<Caller>)>,
}

enum Action {
    /// Send this reply now.
    Reply(Vec<u8>),
    /// Execute on a blocking thread.
    Execute(Job),
    /// Answer nothing (a retransmission of a call still in progress).
    Drop,
    /// Not an RPC call: close the connection.
    Close,
}

struct Job {
    header: CallHeader,
    caller: Arc<Caller>,
    read_only: bool,
    ticket: Option<DrcTicket>,
}

impl Connection {
    fn new(shared: Arc<Shared>, peer: SocketAddr, service: Service) -> Connection {
        let client_ip = peer.ip().to_canonical();
        Connection { shared, peer, client_ip, service, export_options: None, last_caller: None }
    }

    async fn serve(mut self, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
        let _counted = CountedConnection::open();
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let (read_half, write_half) = stream.into_split();
        let sink = ReplySink::new(write_half);
        let writer = tokio::spawn(sink.clone().write_loop());
        let permits = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        let polling = PollingRead { inner: read_half, permits: permits.clone(), skip: 0, backoff: 0 };
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, polling);
        let mut in_flight = JoinSet::new();
        let read_lane = Arc::new(ReadLane::default());
        // Each change handed to the store holds a clone until it is answered: the connection
        // ends only after all are (`recv` returns `None` once every clone is dropped).
        let (changes_pending, mut changes_answered) = tokio::sync::mpsc::channel::<()>(1);
        // Replies made in this task, sent together once no complete record is left in the read
        // buffer (one vectored write for a burst of small calls).
        let mut ready = Vec::new();
        loop {
            if !ready.is_empty() && !holds_complete_record(reader.buffer()) {
                sink.send(&mut ready);
            }
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // The window is full: what is ready must go out before waiting for a permit.
                    sink.send(&mut ready);
                    tokio::select! {
                        () = shutdown_signal(&mut shutdown) => break,
                        permit = permits.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    }
                }
            };
            let record = tokio::select! {
                () = shutdown_signal(&mut shutdown) => break,
                record = read_record(&mut reader) => record,
            };
            let record = match record {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(peer = %self.peer, %error, "closing connection");
                    break;
                }
            };
            match self.decide(&record) {
                Action::Reply(bytes) => ready.push(Outgoing { reply: Reply::new(bytes), _permit: permit }),
                Action::Execute(job) if self.shared.store.calls_are_cheap() && runs_inline(&job.header) => {
                    let reply = run_job(&self.shared, self.peer, &job, &record);
                    ready.push(Outgoing { reply, _permit: permit });
                }
                Action::Execute(job) if self.shared.store.calls_are_cheap() && is_change(&job.header) => {
                    let queued = Queued { job, record, permit };
                    if let Some(outgoing) = self.start_change(queued, &sink, &mut in_flight, &changes_pending)
                    {
                        ready.push(outgoing);
                    }
                }
                Action::Execute(job) => {
                    let shared = self.shared.clone();
                    let sink = sink.clone();
                    let peer = self.peer;
                    let queued = Queued { job, record, permit };
                    if may_wait_for_a_commit(&queued.job.header, &queued.record) {
                        // Mostly asleep in the store's group commit: one thread each, so that
                        // concurrent calls share commits.
                        in_flight.spawn_blocking(move || execute_and_send(&shared, peer, &sink, queued));
                    } else if read_lane.push(queued) {
                        let read_lane = read_lane.clone();
                        in_flight.spawn_blocking(move || read_lane.drain(&shared, peer, &sink));
                    }
                }
                Action::Drop => drop(permit),
                Action::Close => {
                    tracing::debug!(peer = %self.peer, "not an RPC call; closing connection");
                    break;
                }
            }
            while let Some(joined) = in_flight.try_join_next() {
                log_join_error(joined);
            }
            if sink.has_failed() {
                // The client is gone.
                break;
            }
        }
        sink.send(&mut ready);
        drop(reader);
        while let Some(joined) = in_flight.join_next().await {
            log_join_error(joined);
        }
        drop(changes_pending);
        let _ = changes_answered.recv().await;
        sink.close();
        let mut writer = writer;
        let written = match tokio::time::timeout(SHUTDOWN_WRITE_TIMEOUT, &mut writer).await {
            Ok(written) => written,
            Err(_) => {
                tracing::debug!(peer = %self.peer, "client does not read its replies; dropping them");
                writer.abort();
                writer.await
            }
        };
        if let Err(error) = written
            && !error.is_cancelled()
        {
            tracing::error!(%error, "connection writer failed");
        }
        tracing::debug!(peer = %self.peer, "connection closed");
    }

    /// Decides what to do with one record, in the reader (cheap checks only).
    fn decide(&mut self, record: &[u8]) -> Action {
        let header = match rpc::decode_call(record) {
            CallOutcome::Call(header) => header,
            CallOutcome::Reject(reply) => return Action::Reply(reply),
            CallOutcome::Unparseable => return Action::Close,
        };
        let xid = header.xid;
        match (header.program, self.service) {
            (crate::NFS_PROGRAM, Service::Nfs) => self.decide_nfs(header, record),
            (mount::PROGRAM, Service::Nfs) => {
                if !(mount::VERSION_LOW..=mount::VERSION_HIGH).contains(&header.version) {
                    let range =
                        AcceptStatus::ProgramMismatch { low: mount::VERSION_LOW, high: mount::VERSION_HIGH };
                    return Action::Reply(rpc::accepted_reply(xid, range));
                }
                if header.procedure > mount::procedure::LAST {
                    return Action::Reply(rpc::accepted_reply(xid, AcceptStatus::ProcedureUnavailable));
                }
                if header.procedure == mount::procedure::NULL {
                    return Action::Reply(rpc::accepted_reply(xid, AcceptStatus::Success));
                }
                Action::Execute(Job {
                    header,
                    caller: Arc::new(Caller::root()),
                    read_only: true,
                    ticket: None,
                })
            }
            (portmap::PROGRAM, _) => Action::Reply(portmap::execute(
                &self.shared.portmap,
                &header,
                &record[header.arguments_offset..],
            )),
            _ => Action::Reply(rpc::accepted_reply(xid, AcceptStatus::ProgramUnavailable)),
        }
    }

    fn decide_nfs(&mut self, header: CallHeader, record: &[u8]) -> Action {
        let xid = header.xid;
        if header.version != crate::NFS_VERSION {
            let range = AcceptStatus::ProgramMismatch { low: crate::NFS_VERSION, high: crate::NFS_VERSION };
            return Action::Reply(rpc::accepted_reply(xid, range));
        }
        let procedure = header.procedure;
        if procedure > nfs_args::procedure::LAST {
            return Action::Reply(rpc::accepted_reply(xid, AcceptStatus::ProcedureUnavailable));
        }
        if procedure == nfs_args::procedure::NULL {
            return Action::Reply(rpc::accepted_reply(xid, AcceptStatus::Success));
        }
        let Some(options) = self.export_options() else {
            tracing::debug!(peer = %self.peer, "NFS request refused: no export for this client");
            return Action::Reply(nfs::failure_reply(
                xid,
                procedure,
                nfs3_types::nfs3::nfsstat3::NFS3ERR_ACCES,
            ));
        };
        if options.secure && self.peer.port() >= 1024 {
            tracing::debug!(peer = %self.peer, "NFS request refused: secure export, unprivileged port");
            return Action::Reply(nfs::failure_reply(
                xid,
                procedure,
                nfs3_types::nfs3::nfsstat3::NFS3ERR_PERM,
            ));
        }
        if options.read_only && nfs_args::is_modifying(procedure) {
            return Action::Reply(nfs::failure_reply(
                xid,
                procedure,
                nfs3_types::nfs3::nfsstat3::NFS3ERR_ROFS,
            ));
        }
        let caller = self.caller(header.credential, options);
        let mut ticket = None;
        if nfs_args::is_non_idempotent(procedure) {
            let arguments = &record[header.arguments_offset..];
            let key = DrcKey::new(self.client_ip, xid, header.program, header.version, procedure, arguments);
            match self.shared.drc.begin(key, Instant::now()) {
                DrcLookup::Execute(new_ticket) => ticket = Some(new_ticket),
                DrcLookup::Replay(reply) => {
                    tracing::debug!(peer = %self.peer, xid, procedure, "replaying a cached reply");
                    return Action::Reply(reply.to_vec());
                }
                DrcLookup::InProgress => {
                    tracing::debug!(peer = %self.peer, xid, procedure, "dropping a retransmission in progress");
                    return Action::Drop;
                }
            }
        }
        Action::Execute(Job { header, caller, read_only: options.read_only, ticket })
    }

    /// Hands a change to the store without waiting for it ([`cairn_store::FileSystem::start_change`]):
    /// the thread that makes it durable encodes and sends the reply. Returns the reply when the
    /// arguments fail. A file system that cannot start changes gets a blocking thread for this
    /// one.
    fn start_change(
        &self,
        queued: Queued,
        sink: &Arc<ReplySink>,
        in_flight: &mut JoinSet<()>,
        changes_pending: &tokio::sync::mpsc::Sender<()>,
    ) -> Option<Outgoing> {
        let Queued { job, record, permit } = queued;
        let header = &job.header;
        let arguments = &record[header.arguments_offset..];
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
            nfs::start_change(
                &self.shared,
                &job.caller,
                job.read_only,
                header.xid,
                header.procedure,
                arguments,
            )
        }));
        let (change, pending) = match started {
            Ok(nfs::Started::Change(change, pending)) => (change, pending),
            Ok(nfs::Started::Reply(reply)) => return Some(complete(job.ticket, reply, permit)),
            Err(_) => return Some(complete(job.ticket, panicked(header), permit)),
        };
        let key = used_request_key(&self.shared, self.client_ip, header, arguments);
        let Job { header, caller, ticket, .. } = job;
        let shared = self.shared.clone();
        let sink = sink.clone();
        let answered = changes_pending.clone();
        let done: cairn_store::ChangeDone = Box::new(move |result| {
            let reply =
                std::panic::catch_unwind(AssertUnwindSafe(|| pending.finish(&shared, &caller, result)))
                    .unwrap_or_else(|_| panicked(&header));
            sink.send_from_thread(&mut vec![complete(ticket, reply, permit)]);
            drop(answered);
        });
        if let Err(not_started) = self.shared.store.clone().start_change(change, done) {
            let (change, done) = *not_started;
            let store = self.shared.store.clone();
            in_flight.spawn_blocking(move || done(serving(key, || store.change(change))));
        }
        None
    }

    /// This client's options for NFS requests, recomputed only when the exports changed.
    fn export_options(&mut self) -> Option<ExportOptions> {
        let generation = self.shared.exports_generation.load(Ordering::Acquire);
        match self.export_options {
            Some((cached_generation, options)) if cached_generation == generation => options,
            _ => {
                let options = self.shared.exports.read().options_for_request(self.client_ip);
                self.export_options = Some((generation, options));
                options
            }
        }
    }

    fn caller(&mut self, credential: Credential, options: ExportOptions) -> Arc<Caller> {
        if let Some((last_credential, last_options, caller)) = &self.last_caller
            && *last_credential == credential
            && *last_options == options
        {
            return caller.clone();
        }
        let caller = Arc::new(options.caller_for(credential.as_unix()));
        self.last_caller = Some((credential, options, caller.clone()));
        caller
    }
}

/// Whether a call runs in the connection task instead of on a blocking thread: the metadata reads
/// that never wait for a disk write or a group commit (the store answers them from its in-memory
/// hot table or a redb read transaction, ~1 us each), where the hop to a blocking thread and back
/// would cost several times the call itself (measured: GETATTR at 16 in flight runs about 3x faster
/// inline). Everything that may fsync, move file data or list a directory goes to the blocking pool.
fn runs_inline(header: &CallHeader) -> bool {
    use nfs_args::procedure::*;
    header.program == crate::NFS_PROGRAM
        && matches!(header.procedure, GETATTR | ACCESS | LOOKUP | READLINK | FSINFO | PATHCONF)
}

/// Calls that may wait for the store's group commit (an fsync): every change, and COMMIT. An
/// UNSTABLE WRITE is not one of them: it waits for a commit only on its file's first write into
/// a region, and goes through the lane with the reads.
fn may_wait_for_a_commit(header: &CallHeader, record: &[u8]) -> bool {
    use nfs_args::procedure::*;
    if header.program != crate::NFS_PROGRAM {
        return false;
    }
    match header.procedure {
        WRITE => !is_unstable_write(record.get(header.arguments_offset..).unwrap_or_default()),
        SETATTR | CREATE | MKDIR | SYMLINK | MKNOD | REMOVE | RMDIR | RENAME | LINK | COMMIT => true,
        _ => false,
    }
}

/// Whether WRITE arguments ask for UNSTABLE. Arguments that do not decode are not (the call
/// then fails to decode where it runs). Decoding borrows the data: it copies nothing.
fn is_unstable_write(arguments: &[u8]) -> bool {
    matches!(
        nfs_args::decode(nfs_args::procedure::WRITE, arguments),
        Ok(nfs_args::NfsArguments::Write { stable: cairn_store::Stability::Unstable, .. })
    )
}

/// A call waiting for a blocking thread, with its record and in-flight permit.
struct Queued {
    job: Job,
    record: Vec<u8>,
    permit: OwnedSemaphorePermit,
}

fn execute_and_send(shared: &Shared, peer: SocketAddr, sink: &ReplySink, queued: Queued) {
    let Queued { job, record, permit } = queued;
    let reply = run_job(shared, peer, &job, &record);
    sink.send_from_thread(&mut vec![complete(job.ticket, reply, permit)]);
}

/// A reply ready to send: remembered by the duplicate request cache first if the call is in it.
fn complete(ticket: Option<DrcTicket>, reply: Reply, permit: OwnedSemaphorePermit) -> Outgoing {
    if let Some(ticket) = ticket {
        ticket.complete(&reply.head, Instant::now());
    }
    Outgoing { reply, _permit: permit }
}

/// Changes of the local store: the connection task hands them over ([`Connection::start_change`]).
fn is_change(header: &CallHeader) -> bool {
    header.program == crate::NFS_PROGRAM && nfs_args::is_change(header.procedure)
}

/// The calls of one connection that read (READ, READDIR, READDIRPLUS, FSSTAT, MOUNT), and its
/// UNSTABLE WRITEs: they (almost) never wait for a commit, so a few blocking threads that each
/// take call after call from this queue serve a burst with a few thread wake-ups instead of one
/// per call (measured: 4 KiB READs at 16 in flight run about 3x faster than with a thread per
/// call on 2 cores; 4 KiB UNSTABLE WRITEs about 2.4x).
#[derive(Default)]
struct ReadLane {
    state: parking_lot::Mutex<ReadLaneState>,
}

#[derive(Default)]
struct ReadLaneState {
    queue: VecDeque<Queued>,
    // Invariant: workers > 0 whenever queue is non-empty; workers <= READ_WORKERS_MAX.
    workers: usize,
}

impl ReadLane {
    /// Queues a call; true when the caller must start a worker ([`ReadLane::drain`]).
    fn push(&self, queued: Queued) -> bool {
        let mut state = self.state.lock();
        state.queue.push_back(queued);
        if state.workers < READ_WORKERS_MAX {
            state.workers += 1;
            true
        } else {
            false
        }
    }

    /// A worker: executes queued calls until none is left.
    fn drain(&self, shared: &Shared, peer: SocketAddr, sink: &ReplySink) {
        loop {
            let next = {
                let mut state = self.state.lock();
                match state.queue.pop_front() {
                    Some(next) => next,
                    None => {
                        state.workers -= 1;
                        return;
                    }
                }
            };
            execute_and_send(shared, peer, sink, next);
        }
    }
}

/// Whether `buffer` starts with a whole single-fragment record, which the next read takes without
/// waiting for the socket.
fn holds_complete_record(buffer: &[u8]) -> bool {
    let Some(mark) = buffer.first_chunk::<4>() else { return false };
    let mark = u32::from_be_bytes(*mark);
    mark & 0x8000_0000 != 0 && buffer.len() - 4 >= (mark & 0x7fff_ffff) as usize
}

/// Most argument bytes that go into a request key.
const REQUEST_KEY_ARGUMENT_BYTES: usize = 4096;

/// The identity of one client call, the same on every gateway: a 128-bit FNV-1a hash of the
/// client's address, the xid, the program, version and procedure, the arguments' length and
/// their first bytes. The volume's master remembers the answers of changes by it (through
/// [`cairn_store::serving_request`]), so a retransmission that reaches another gateway (after a
/// virtual IP moved) gets the first answer again, not a wrong error.
fn request_key(client: IpAddr, header: &CallHeader, arguments: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let address = match client {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let numbers = [header.xid, header.program, header.version, header.procedure];
    let length = (arguments.len() as u64).to_be_bytes();
    let prefix = &arguments[..arguments.len().min(REQUEST_KEY_ARGUMENT_BYTES)];
    let bytes = address
        .into_iter()
        .chain(numbers.into_iter().flat_map(u32::to_be_bytes))
        .chain(length)
        .chain(prefix.iter().copied());
    bytes.fold(OFFSET, |hash, byte| (hash ^ u128::from(byte)).wrapping_mul(PRIME))
}

/// Executes one call (on a blocking thread unless [`runs_inline`]). A panic (a bug) becomes one SYSTEM_ERR reply.
fn run_job(shared: &Shared, peer: SocketAddr, job: &Job, record: &[u8]) -> Reply {
    let header = &job.header;
    let arguments = &record[header.arguments_offset..];
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| match header.program {
        crate::NFS_PROGRAM => {
            let key = used_request_key(shared, peer.ip().to_canonical(), header, arguments);
            serving(key, || {
                nfs::execute(shared, &job.caller, job.read_only, header.xid, header.procedure, arguments)
            })
        }
        _ => mount::execute(shared, peer, header.xid, header.version, header.procedure, arguments),
    }));
    result.unwrap_or_else(|_| panicked(header))
}

/// The call's [`request_key`], if the file system uses request ids (hashing a WRITE's 4 KiB of
/// arguments costs more than the rest of a small call).
fn used_request_key(shared: &Shared, client: IpAddr, header: &CallHeader, arguments: &[u8]) -> Option<u128> {
    shared.store.uses_request_ids().then(|| request_key(client, header, arguments))
}

/// Runs `work` as the serving of the request with `key` ([`cairn_store::serving_request`]), if any.
fn serving<T>(key: Option<u128>, work: impl FnOnce() -> T) -> T {
    match key {
        Some(key) => cairn_store::serving_request(key, work),
        None => work(),
    }
}

/// The reply to a call whose execution panicked (a bug).
fn panicked(header: &CallHeader) -> Reply {
    tracing::error!(
        xid = header.xid,
        program = header.program,
        procedure = header.procedure,
        "call panicked"
    );
    Reply::new(rpc::accepted_reply(header.xid, AcceptStatus::SystemError))
}

fn log_join_error(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(%error, "call task failed");
    }
}

/// Counts an open connection in the `cairn_nfs_connections` gauge for as long as it lives.
struct CountedConnection;

impl CountedConnection {
    fn open() -> CountedConnection {
        cairn_metrics::nfs_connections_add(1);
        CountedConnection
    }
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        cairn_metrics::nfs_connections_add(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::is_unstable_write;

    /// WRITE3args as XDR: handle (length, bytes, padding), offset, count, stable_how, data.
    fn write_arguments(handle: &[u8], stable: u32) -> Vec<u8> {
        let mut out = (handle.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(handle);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(&(1u64 << 40).to_be_bytes());
        out.extend_from_slice(&4096u32.to_be_bytes());
        out.extend_from_slice(&stable.to_be_bytes());
        out.extend_from_slice(&4096u32.to_be_bytes());
        out.extend_from_slice(&[0x5a; 4096]);
        out
    }

    #[test]
    fn the_stable_field_is_found_after_handles_of_any_length() {
        for handle_bytes in [0, 1, 3, 4, 31, 32, 64] {
            let handle = vec![0xffu8; handle_bytes];
            assert!(is_unstable_write(&write_arguments(&handle, 0)), "handle of {handle_bytes} bytes");
            for stable in [1, 2, 7] {
                assert!(!is_unstable_write(&write_arguments(&handle, stable)), "stable_how {stable}");
            }
        }
    }

    #[test]
    fn arguments_that_do_not_decode_are_not_unstable() {
        let full = write_arguments(&[7u8; 32], 0);
        assert!(is_unstable_write(&full));
        // Cut anywhere: in the handle, before stable_how, in the data.
        for length in [0, 3, 4, 36, 48, 52, full.len() - 1] {
            assert!(!is_unstable_write(&full[..length]), "{length} bytes");
        }
        // A handle length that points past the end.
        assert!(!is_unstable_write(&u32::MAX.to_be_bytes()));
    }
}
