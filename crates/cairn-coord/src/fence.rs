//! Leader election with a fencing epoch, the way the CLDB master and other singletons use coord.
//!
//! The leader holds an ephemeral znode; its `czxid` (the Raft index that created it) is the epoch.
//! Every later holder gets a larger one. A service that takes orders from the leader keeps a
//! [`Fence`] and refuses any order carrying an epoch lower than the highest it has seen, so a
//! deposed leader that still believes it leads (a paused process, a partition) cannot act.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::api::{CoordError, CreateMode};
use crate::client::CoordClient;

/// Held leadership: the lock znode and its epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub path: String,
    pub epoch: u64,
}

/// Takes the lock at `path` if it is free; `None` if another session holds it.
pub async fn try_acquire(
    client: &CoordClient,
    path: &str,
    data: &[u8],
) -> Result<Option<Leadership>, CoordError> {
    match client.create(path, data, CreateMode::Ephemeral).await {
        Ok((_, stat)) => Ok(Some(Leadership { path: path.to_owned(), epoch: stat.czxid })),
        Err(CoordError::NodeExists { .. }) => held_by_us(client, path).await,
        // The create may have been applied before the connection broke: look.
        Err(CoordError::ConnectionLoss { .. }) => held_by_us(client, path).await,
        Err(e) => Err(e),
    }
}

async fn held_by_us(client: &CoordClient, path: &str) -> Result<Option<Leadership>, CoordError> {
    match client.exists(path).await? {
        Some(stat) if stat.ephemeral_owner == client.session() => {
            Ok(Some(Leadership { path: path.to_owned(), epoch: stat.czxid }))
        }
        _ => Ok(None),
    }
}

/// Waits until the lock at `path` is ours.
pub async fn acquire(client: &CoordClient, path: &str, data: &[u8]) -> Result<Leadership, CoordError> {
    loop {
        if let Some(leadership) = try_acquire(client, path, data).await? {
            return Ok(leadership);
        }
        let (stat, watch) = client.exists_watch(path).await?;
        if stat.is_some() {
            watch.wait().await?;
        }
    }
}

/// How often [`acquire_or_take_over`] asks whether the lock's holder is gone.
pub const TAKE_OVER_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Like [`acquire`], but while another session holds the lock it asks `holder_gone`, with the
/// lock's data (the holder's address, say), every [`TAKE_OVER_PROBE_INTERVAL`]. When the answer
/// is yes twice in a row, the holder's session is ended ([`CoordClient::expire_session`]) and the
/// lock taken without waiting out the session timeout.
///
/// `holder_gone` must answer yes only on proof that the holder's process is gone, such as a port
/// it listens on refusing connections; never on silence (a slow or partitioned holder is not a
/// dead one: its session timeout decides). Ending the session of a holder that is in fact alive
/// is safe, only costly: it finds its session gone and stops leading, and the epoch fences off
/// whatever it still sends.
pub async fn acquire_or_take_over<F, Fut>(
    client: &CoordClient,
    path: &str,
    data: &[u8],
    holder_gone: F,
) -> Result<Leadership, CoordError>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if let Some(leadership) = try_acquire(client, path, data).await? {
            return Ok(leadership);
        }
        let (held, stat, watch) = match client.get_watch(path).await {
            Ok(found) => found,
            Err(CoordError::NoNode { .. }) => continue,
            Err(e) => return Err(e),
        };
        let changed = watch.wait();
        tokio::pin!(changed);
        let mut strikes = 0;
        loop {
            tokio::select! {
                event = &mut changed => {
                    event?;
                    break;
                }
                () = tokio::time::sleep(TAKE_OVER_PROBE_INTERVAL) => {}
            }
            if !holder_gone(held.clone()).await {
                strikes = 0;
                continue;
            }
            strikes += 1;
            if strikes >= 2 {
                tracing::warn!(
                    "{path}: the holder (session {:#x}) is gone; ending its session to take over",
                    stat.ephemeral_owner
                );
                client.expire_session(stat.ephemeral_owner).await?;
                break;
            }
        }
    }
}

/// An order came with an epoch older than one already seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stale epoch {epoch}: epoch {highest} has taken over")]
pub struct StaleEpoch {
    pub epoch: u64,
    pub highest: u64,
}

/// The highest epoch seen by a service that takes orders from a leader.
#[derive(Debug, Default)]
pub struct Fence {
    highest: AtomicU64,
}

impl Fence {
    pub fn new() -> Fence {
        Fence::default()
    }

    /// Admits an order carrying `epoch` if no newer epoch has been seen, and remembers it.
    pub fn admit(&self, epoch: u64) -> Result<(), StaleEpoch> {
        let previous = self.highest.fetch_max(epoch, Ordering::SeqCst);
        if epoch < previous { Err(StaleEpoch { epoch, highest: previous }) } else { Ok(()) }
    }

    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_admits_equal_or_newer_and_refuses_older() {
        let fence = Fence::new();
        assert_eq!(fence.admit(5), Ok(()));
        assert_eq!(fence.admit(5), Ok(()));
        assert_eq!(fence.admit(9), Ok(()));
        assert_eq!(fence.admit(5), Err(StaleEpoch { epoch: 5, highest: 9 }));
        assert_eq!(fence.highest(), 9);
    }
}
