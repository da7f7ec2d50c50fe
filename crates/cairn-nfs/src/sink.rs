//! The write side of a connection: replies go straight to the socket from whichever thread
//! finished them when the socket is idle, and through a writer task only when it is busy.
//!
//! Why not always a writer task behind a channel: on the hot path that is one more task wake-up
//! (a futex and a context switch on another core) per reply, which costs more than a small call
//! itself. Here a reply finished on a blocking thread, or a batch of replies finished in the
//! connection task, is written with one non-blocking vectored write; only what the socket does
//! not take at once is queued, and the writer task finishes it, in order, while later replies
//! queue behind it. A thread that finds another one writing leaves small replies to it (the
//! replies a group commit releases at once then go out in one write, without the threads
//! spinning on a lock); a blocking thread waits its turn with a large one (a READ's: measured
//! faster for streaming reads). The connection task never waits.
//!
//! Invariant: at most one of `writer_active` (the writer task owns the socket) and
//! `direct_writer` (a thread in `send` does) is true; while `queue` is non-empty one of them is,
//! and only its owner writes to the socket (a partly written reply is always the head of the
//! queue).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::connection::Reply;
use crate::xdr::padding;

/// Most replies gathered into one vectored write.
const WRITE_BATCH_REPLIES_MAX: usize = 32;
/// Largest replies a thread leaves to the thread writing instead of waiting for its turn.
const LEAVE_BYTES_MAX: usize = 64 * 1024;

/// A reply and the in-flight permit it releases once written.
pub struct Outgoing {
    pub reply: Reply,
    /// Released when the reply is dropped: after it was written (or given up).
    pub _permit: OwnedSemaphorePermit,
}

impl Outgoing {
    fn total_bytes(&self) -> usize {
        let payload = self.reply.payload.len();
        self.reply.head.len() + payload + padding(payload).len()
    }
}

#[derive(Default)]
struct SinkState {
    queue: VecDeque<Outgoing>,
    /// Bytes of the head of `queue` already written.
    head_written_bytes: usize,
    /// The writer task owns the socket.
    writer_active: bool,
    /// A thread in [`ReplySink::send`] owns the socket (never together with `writer_active`).
    direct_writer: bool,
    /// Writing failed (the client is gone): replies are dropped.
    failed: bool,
    /// No more replies will come; the writer task ends once the queue is empty.
    closing: bool,
}

pub struct ReplySink {
    stream: OwnedWriteHalf,
    state: Mutex<SinkState>,
    wake_writer: Notify,
    /// Signalled when a thread in `send` gives up the socket.
    turn: Condvar,
}

impl ReplySink {
    pub fn new(stream: OwnedWriteHalf) -> Arc<ReplySink> {
        Arc::new(ReplySink {
            stream,
            state: Mutex::new(SinkState::default()),
            wake_writer: Notify::new(),
            turn: Condvar::new(),
        })
    }

    pub fn has_failed(&self) -> bool {
        self.state.lock().failed
    }

    /// Sends replies (in this order), writing them now if the socket is idle. Empties `batch`.
    /// Never waits: for the connection task. A thread that finds another one writing leaves its
    /// replies in the queue and returns at once: the writing thread takes them in its next
    /// write.
    pub fn send(&self, batch: &mut Vec<Outgoing>) {
        self.send_inner(batch, false);
    }

    /// [`send`](ReplySink::send) for a blocking thread: a large reply (a READ's) that finds
    /// another thread writing waits its turn and is written by this thread (measured faster for
    /// streaming reads than leaving it to the writing thread). Small replies are left as with
    /// `send`; waiting for the lock through a system call instead made the threads a group
    /// commit answers at once spin and yield against each other.
    pub fn send_from_thread(&self, batch: &mut Vec<Outgoing>) {
        self.send_inner(batch, true);
    }

    fn send_inner(&self, batch: &mut Vec<Outgoing>, may_wait: bool) {
        if batch.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        if state.failed {
            batch.clear();
            return;
        }
        if may_wait && state.direct_writer && !state.writer_active {
            let bytes: usize = batch.iter().map(Outgoing::total_bytes).sum();
            if bytes > LEAVE_BYTES_MAX {
                while state.direct_writer && !state.writer_active && !state.failed {
                    self.turn.wait(&mut state);
                }
                if state.failed {
                    batch.clear();
                    return;
                }
            }
        }
        if state.writer_active || state.direct_writer {
            state.queue.extend(batch.drain(..));
            return;
        }
        state.direct_writer = true;
        drop(state);
        loop {
            // One non-blocking vectored write, outside the lock: only the direct writer writes.
            let outcome = {
                let mut slices = Vec::with_capacity(batch.len() * 3);
                for outgoing in batch.iter() {
                    push_slices(&mut slices, &outgoing.reply);
                }
                match self.stream.try_write_vectored(&slices) {
                    Ok(written) => Ok(written),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(error) => Err(error),
                }
            };
            let mut state = self.state.lock();
            let written = match outcome {
                Ok(written) => written,
                Err(error) => {
                    tracing::debug!(%error, "writing replies failed");
                    state.failed = true;
                    state.direct_writer = false;
                    state.queue.clear();
                    batch.clear();
                    drop(state);
                    self.turn.notify_all();
                    self.wake_writer.notify_one();
                    return;
                }
            };
            // Drop what was written completely.
            let mut left = written;
            let mut fully_written = 0;
            for outgoing in batch.iter() {
                let total = outgoing.total_bytes();
                if left < total {
                    break;
                }
                left -= total;
                fully_written += 1;
            }
            batch.drain(..fully_written);
            if !batch.is_empty() {
                // The socket is full: the writer task finishes, this batch's rest first.
                let queued = std::mem::take(&mut state.queue);
                state.queue.extend(batch.drain(..));
                state.queue.extend(queued);
                state.head_written_bytes = left;
                state.writer_active = true;
                state.direct_writer = false;
                drop(state);
                self.turn.notify_all();
                self.wake_writer.notify_one();
                return;
            }
            if state.queue.is_empty() {
                state.direct_writer = false;
                let closing = state.closing;
                drop(state);
                self.turn.notify_all();
                if closing {
                    self.wake_writer.notify_one();
                }
                return;
            }
            // Replies other threads left while this one wrote.
            let count = state.queue.len().min(WRITE_BATCH_REPLIES_MAX);
            batch.extend(state.queue.drain(..count));
        }
    }

    /// Tells the writer task that no more replies will come.
    pub fn close(&self) {
        self.state.lock().closing = true;
        self.wake_writer.notify_one();
    }

    /// The writer task: finishes what [`send`](ReplySink::send) could not write at once. Ends
    /// after [`close`](ReplySink::close) once everything is written, or when writing fails.
    pub async fn write_loop(self: Arc<ReplySink>) {
        let mut batch: Vec<Outgoing> = Vec::with_capacity(WRITE_BATCH_REPLIES_MAX);
        loop {
            let skip_bytes = {
                let mut state = self.state.lock();
                if state.failed {
                    state.queue.clear();
                    return;
                }
                if state.queue.is_empty() || !state.writer_active {
                    // Nothing to write, or a direct writer owns the socket and the queue.
                    state.writer_active = false;
                    if state.closing && state.queue.is_empty() && !state.direct_writer {
                        return;
                    }
                    None
                } else {
                    let count = state.queue.len().min(WRITE_BATCH_REPLIES_MAX);
                    batch.extend(state.queue.drain(..count));
                    Some(std::mem::take(&mut state.head_written_bytes))
                }
            };
            let Some(skip_bytes) = skip_bytes else {
                self.wake_writer.notified().await;
                continue;
            };
            if let Err(error) = self.write_all(&batch, skip_bytes).await {
                tracing::debug!(%error, "writing replies failed; closing connection");
                let mut state = self.state.lock();
                state.failed = true;
                state.queue.clear();
                return;
            }
            batch.clear();
        }
    }

    async fn write_all(&self, batch: &[Outgoing], skip_bytes: usize) -> io::Result<()> {
        let mut slices = Vec::with_capacity(batch.len() * 3);
        for outgoing in batch {
            push_slices(&mut slices, &outgoing.reply);
        }
        let mut slices = &mut slices[..];
        IoSlice::advance_slices(&mut slices, skip_bytes);
        while !slices.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => IoSlice::advance_slices(&mut slices, written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

fn push_slices<'a>(slices: &mut Vec<IoSlice<'a>>, reply: &'a Reply) {
    slices.push(IoSlice::new(&reply.head));
    if !reply.payload.is_empty() {
        slices.push(IoSlice::new(&reply.payload));
        slices.push(IoSlice::new(padding(reply.payload.len())));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use tokio::sync::Semaphore;

    use super::*;

    /// Threads sending small and large replies at once, through a socket that fills up (the
    /// reader starts late): every reply arrives whole, once, and each thread's in the order it
    /// sent them.
    #[test]
    fn concurrent_senders_and_a_full_socket() {
        const THREADS: u32 = 8;
        const REPLIES: u32 = 400;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let (sink, writer) = runtime.block_on(async {
            let (_read_half, write_half) = tokio::net::TcpStream::from_std(server).unwrap().into_split();
            let sink = ReplySink::new(write_half);
            let writer = tokio::spawn(sink.clone().write_loop());
            (sink, writer)
        });
        let permits = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        let senders: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (sink, permits) = (sink.clone(), permits.clone());
                std::thread::spawn(move || {
                    for sequence in 0..REPLIES {
                        // Mostly small replies, and every tenth one large (it waits its turn).
                        let length = if sequence % 10 == 0 {
                            100_000 + thread * 3
                        } else {
                            (sequence * 37 + thread * 11) % 3000
                        };
                        let mut head = thread.to_be_bytes().to_vec();
                        head.extend_from_slice(&sequence.to_be_bytes());
                        head.extend_from_slice(&length.to_be_bytes());
                        let reply = Reply { head, payload: vec![thread as u8; length as usize] };
                        let permit = permits.clone().try_acquire_owned().unwrap();
                        sink.send_from_thread(&mut vec![Outgoing { reply, _permit: permit }]);
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut next = [0u32; THREADS as usize];
        for _ in 0..THREADS * REPLIES {
            let mut head = [0u8; 12];
            client.read_exact(&mut head).unwrap();
            let field = |index: usize| u32::from_be_bytes(head[index * 4..index * 4 + 4].try_into().unwrap());
            let (thread, sequence, length) = (field(0), field(1), field(2));
            assert!(thread < THREADS, "garbled reply head {head:?}");
            assert_eq!(sequence, next[thread as usize], "thread {thread}'s replies out of order");
            next[thread as usize] += 1;
            let mut payload = vec![0u8; length as usize + padding(length as usize).len()];
            client.read_exact(&mut payload).unwrap();
            assert!(payload[..length as usize].iter().all(|&byte| byte == thread as u8), "garbled payload");
        }
        for sender in senders {
            sender.join().unwrap();
        }
        assert_eq!(next, [REPLIES; THREADS as usize]);
        sink.close();
        runtime.block_on(writer).unwrap();
        assert!(!sink.has_failed());
        // Every reply was written and dropped: all permits are back.
        assert_eq!(permits.available_permits(), Semaphore::MAX_PERMITS);
    }
}
