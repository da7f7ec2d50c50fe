//! The answers of recent changes, by request id, so that a retried change gets its first answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::proto::{FsReply, WireError};

/// Most answers remembered.
pub const REPLIES_MAX: usize = 65_536;
/// How long an answer is remembered. NFS clients retransmit within a minute or two.
pub const REPLY_LIFETIME: Duration = Duration::from_secs(600);

type Answer = Result<FsReply, WireError>;

enum Slot {
    /// The first attempt is still running; retries wait for it.
    Running(Arc<Notify>),
    Done(Box<Answer>),
}

/// What [`ReplyCache::begin`] found.
pub enum Begin {
    /// Nobody ran this request: run it, then call [`ReplyCache::finish`].
    Run,
    /// It ran already: its answer.
    Answered(Box<Answer>),
    /// It is running: wait on this, then ask again.
    Wait(Arc<Notify>),
}

#[derive(Default)]
pub struct ReplyCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<u128, Slot>,
    order: VecDeque<(Instant, u128)>,
}

impl ReplyCache {
    pub fn begin(&self, request_id: u128) -> Begin {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now());
        match inner.slots.get(&request_id) {
            Some(Slot::Done(answer)) => Begin::Answered(answer.clone()),
            Some(Slot::Running(notify)) => Begin::Wait(notify.clone()),
            None => {
                inner.slots.insert(request_id, Slot::Running(Arc::new(Notify::new())));
                inner.order.push_back((Instant::now(), request_id));
                Begin::Run
            }
        }
    }

    /// Records the answer of a request that [`ReplyCache::begin`] said to run. Answers that ask
    /// the caller to go elsewhere are not kept: the retry must run again.
    pub fn finish(&self, request_id: u128, answer: &Answer) {
        let mut inner = self.inner.lock();
        let keep = !matches!(answer, Err(error) if error.is_retryable());
        let previous = if keep {
            inner.slots.insert(request_id, Slot::Done(Box::new(answer.clone())))
        } else {
            inner.slots.remove(&request_id)
        };
        if let Some(Slot::Running(notify)) = previous {
            notify.notify_waiters();
        }
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.order.front() {
            if self.order.len() <= REPLIES_MAX && now.duration_since(at) < REPLY_LIFETIME {
                break;
            }
            self.order.pop_front();
            if let Some(Slot::Done(_)) = self.slots.get(&id) {
                self.slots.remove(&id);
            }
        }
    }
}
