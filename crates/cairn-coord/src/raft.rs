//! openraft's type configuration for coord, the runtime it runs on, and the Raft timing.
//!
//! The runtime is tokio with one change: the random numbers openraft draws (election timeouts)
//! come from a per-thread generator that a deterministic simulation can seed
//! ([`seed_thread_rng`]). In production it is seeded from the OS.

use std::cell::RefCell;
use std::future::Future;
use std::io::Cursor;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand08::{RngCore, SeedableRng};

use crate::api::{Command, CommandResult};

pub type NodeId = u64;
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// coord's Raft types: log entries carry a [`Command`], applying one yields a [`CommandResult`].
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = CoordRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Leader heartbeat interval.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(80);
/// Election timeouts are drawn from this range. A follower that hears nothing from a leader for
/// this long starts an election; it bounds how long writes stall after a leader dies.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(250);
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(500);
/// By default a snapshot is built after this many entries since the last one; the log before it is
/// purged, keeping a quarter of that for followers slightly behind.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 20_000;

/// The openraft configuration every member uses.
pub fn raft_config(
    cluster_name: &str,
    snapshot_every_entries: u64,
) -> Result<openraft::Config, Box<openraft::ConfigError>> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
        election_timeout_min: ELECTION_TIMEOUT_MIN.as_millis() as u64,
        election_timeout_max: ELECTION_TIMEOUT_MAX.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every_entries.max(1)),
        max_in_snapshot_log_to_keep: snapshot_every_entries / 4,
        enable_tick: true,
        enable_heartbeat: true,
        enable_elect: true,
        ..Default::default()
    };
    config.validate().map_err(Box::new)
}

thread_local! {
    static RNG: RefCell<Option<rand08::rngs::StdRng>> = const { RefCell::new(None) };
}

/// Seeds the generator openraft uses on this thread. The simulation calls it before starting
/// members so that elections draw the same timeouts for the same seed.
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|rng| *rng.borrow_mut() = Some(rand08::rngs::StdRng::seed_from_u64(seed)));
}

/// A handle on the per-thread generator.
pub struct CoordRng;

impl CoordRng {
    fn with<T>(f: impl FnOnce(&mut rand08::rngs::StdRng) -> T) -> T {
        RNG.with(|rng| f(rng.borrow_mut().get_or_insert_with(rand08::rngs::StdRng::from_entropy)))
    }
}

impl RngCore for CoordRng {
    fn next_u32(&mut self) -> u32 {
        Self::with(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        Self::with(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        Self::with(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        Self::with(|r| r.try_fill_bytes(dest))
    }
}

/// tokio, with [`CoordRng`] as openraft's random source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CoordRuntime;

impl AsyncRuntime for CoordRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = CoordRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        CoordRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
