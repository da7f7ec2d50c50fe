//! Leader election with a fencing epoch, the way the CLDB master and other singletons use coord.
//!
//! The leader holds an ephemeral znode; its `czxid` (the Raft index that created it) is the epoch.
//! Every later holder gets a larger one. A service that takes orders from the leader keeps a
//! [`Fence`] and refuses any order carrying an epoch lower than the highest it has seen, so a
//! deposed leader that still believes it leads (a paused process, a partition) cannot act.

use std::sync::atomic::{AtomicU64, Ordering};

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
