//! The write side of a connection: replies go straight to the socket from whichever thread
//! finished them when the socket is idle, and through a writer task only when it is busy.
//!
//! Why not always a writer task behind a channel: on the hot path that is one more task wake-up
//! (a futex and a context switch on another core) per reply, which costs more than a small call
//! itself. Here a reply finished on a blocking thread, or a batch of replies finished in the
//! connection task, is written with one non-blocking vectored write; only what the socket does
//! not take at once is queued, and the writer task finishes it, in order, while later replies
//! queue behind it.
//!
//! Invariant: while `queue` is non-empty, `writer_active` is true, and nobody but the writer task
//! writes to the socket (a partly written reply is always the head of the queue).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::connection::Reply;
use crate::xdr::padding;

/// Most replies gathered into one vectored write.
const WRITE_BATCH_REPLIES_MAX: usize = 32;

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
    /// Writing failed (the client is gone): replies are dropped.
    failed: bool,
    /// No more replies will come; the writer task ends once the queue is empty.
    closing: bool,
}

pub struct ReplySink {
    stream: OwnedWriteHalf,
    state: Mutex<SinkState>,
    wake_writer: Notify,
}

impl ReplySink {
    pub fn new(stream: OwnedWriteHalf) -> Arc<ReplySink> {
        Arc::new(ReplySink { stream, state: Mutex::new(SinkState::default()), wake_writer: Notify::new() })
    }

    pub fn has_failed(&self) -> bool {
        self.state.lock().failed
    }

    /// Sends replies (in this order), writing them now if the socket is idle. Empties `batch`.
    pub fn send(&self, batch: &mut Vec<Outgoing>) {
        if batch.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        if state.failed {
            batch.clear();
            return;
        }
        if state.writer_active {
            state.queue.extend(batch.drain(..));
            return;
        }
        // The socket is idle: one non-blocking vectored write, under the lock so that no other
        // thread's bytes can interleave.
        let written = {
            let mut slices = Vec::with_capacity(batch.len() * 3);
            for outgoing in batch.iter() {
                push_slices(&mut slices, &outgoing.reply);
            }
            match self.stream.try_write_vectored(&slices) {
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => {
                    tracing::debug!(%error, "writing replies failed");
                    state.failed = true;
                    batch.clear();
                    drop(state);
                    self.wake_writer.notify_one();
                    return;
                }
            }
        };
        // Drop what was written completely; queue the rest for the writer task.
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
        if batch.is_empty() {
            return;
        }
        state.queue.extend(batch.drain(..));
        state.head_written_bytes = left;
        state.writer_active = true;
        drop(state);
        self.wake_writer.notify_one();
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
                if state.queue.is_empty() {
                    state.writer_active = false;
                    if state.closing {
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
