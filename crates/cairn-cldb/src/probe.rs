//! The master's watch over the NFS gateways: one task per node keeps a TCP connection to the
//! node's NFS port and sends the NFS NULL procedure on it every [`PING_INTERVAL`].
//!
//! - An answer within [`PING_TIMEOUT`]: the gateway is healthy (VIPs may stay or go there).
//! - No answer in time: it is not (its VIPs are taken back once it lets go or its session ends).
//! - The connection breaks and a new one is **refused**: nothing listens on the port any more,
//!   so the gateway's process is gone, and with it the device its VIPs were on. The node is
//!   *proven dead*: its VIPs move at once, without waiting for its session to expire. If the
//!   node's file server port refuses too, the node is treated as down at once (its volumes fail
//!   over) instead of after the heartbeat timeout.
//!
//! A refused connection is only ever proof for a port we were connected to a moment ago; a
//! timeout proves nothing (a busy or partitioned node), so it only costs health.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Between two NULL pings on one connection.
pub const PING_INTERVAL: Duration = Duration::from_millis(250);
/// A ping without an answer after this long marks the gateway unhealthy.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before trying again after a failed connection.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

const NFS_PROGRAM: u32 = 100_003;
const NFS_VERSION: u32 = 3;

/// What the pings say about one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeState {
    pub ping_ok: bool,
    /// The NFS port refused a connection right after ours broke.
    pub proven_dead: bool,
    /// The file server port refused too.
    pub fileserver_refused: bool,
}

impl Default for ProbeState {
    fn default() -> Self {
        ProbeState { ping_ok: true, proven_dead: false, fileserver_refused: false }
    }
}

/// Why a ping failed.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("connection refused")]
    Refused,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// The record-marked ONC RPC call of NFSv3 NULL with AUTH_NONE.
fn null_call(xid: u32) -> [u8; 44] {
    let words: [u32; 11] = [0x8000_0000 | 40, xid, 0, 2, NFS_PROGRAM, NFS_VERSION, 0, 0, 0, 0, 0];
    let mut out = [0u8; 44];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Sends NFS NULL on `stream` and reads the answer (accepted, success, same xid).
pub async fn null_ping(stream: &mut TcpStream, xid: u32, timeout: Duration) -> Result<(), PingError> {
    let exchange = async {
        stream.write_all(&null_call(xid)).await?;
        let mut mark = [0u8; 4];
        stream.read_exact(&mut mark).await?;
        let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
        if !(24..=4096).contains(&len) {
            return Err(PingError::Malformed("record length"));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let word =
            |i: usize| u32::from_be_bytes([body[4 * i], body[4 * i + 1], body[4 * i + 2], body[4 * i + 3]]);
        // xid, REPLY, MSG_ACCEPTED, verifier flavor, verifier length (0), SUCCESS.
        if word(0) != xid || word(1) != 1 || word(2) != 0 || word(4) != 0 || word(5) != 0 {
            return Err(PingError::Malformed("not an accepted, successful reply to our call"));
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(PingError::Timeout(timeout)),
    }
}

/// Opens a connection; `Refused` is told apart from other failures.
pub async fn connect(address: &str) -> Result<TcpStream, PingError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => Err(PingError::Refused),
        Ok(Err(e)) => Err(PingError::Io(e)),
        Err(_) => Err(PingError::Timeout(CONNECT_TIMEOUT)),
    }
}

/// One node to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub nfs_address: String,
    pub fileserver_address: String,
}

/// The set of probe tasks; dropping it stops them.
#[derive(Default)]
pub struct Prober {
    states: Arc<Mutex<BTreeMap<String, ProbeState>>>,
    tasks: Mutex<BTreeMap<String, (Target, JoinHandle<()>)>>,
    /// Woken when a state changes.
    pub changed: Arc<Notify>,
}

impl Prober {
    /// Starts watching new targets, stops watching the ones no longer given.
    pub fn sync(&self, targets: &BTreeMap<String, Target>) {
        let mut tasks = self.tasks.lock();
        tasks.retain(|node, (target, task)| {
            let keep = targets.get(node) == Some(target);
            if !keep {
                task.abort();
                self.states.lock().remove(node);
            }
            keep
        });
        for (node, target) in targets {
            if !tasks.contains_key(node) {
                let task = tokio::spawn(watch(
                    node.clone(),
                    target.clone(),
                    self.states.clone(),
                    self.changed.clone(),
                ));
                tasks.insert(node.clone(), (target.clone(), task));
            }
        }
    }

    /// What the pings say about `node` (healthy until shown otherwise).
    pub fn state(&self, node: &str) -> ProbeState {
        self.states.lock().get(node).copied().unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut *self.tasks.lock()) {
            task.abort();
        }
    }
}

fn set(states: &Mutex<BTreeMap<String, ProbeState>>, changed: &Notify, node: &str, state: ProbeState) {
    let old = states.lock().insert(node.to_owned(), state);
    if old.unwrap_or_default() != state {
        if state.proven_dead && !old.unwrap_or_default().proven_dead {
            tracing::warn!("node {node}: NFS connection closed and the port refuses: the gateway is gone");
        }
        changed.notify_one();
    }
}

async fn watch(
    node: String,
    target: Target,
    states: Arc<Mutex<BTreeMap<String, ProbeState>>>,
    changed: Arc<Notify>,
) {
    let mut xid: u32 = rand::random();
    // Only a refusal right after a connection of ours broke counts as proof of death.
    let mut was_connected = false;
    loop {
        let mut stream = match connect(&target.nfs_address).await {
            Ok(stream) => stream,
            Err(PingError::Refused) if was_connected => {
                let fileserver_refused =
                    matches!(connect(&target.fileserver_address).await, Err(PingError::Refused));
                set(
                    &states,
                    &changed,
                    &node,
                    ProbeState { ping_ok: false, proven_dead: true, fileserver_refused },
                );
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(_) => {
                let mut state = states.lock().get(&node).copied().unwrap_or_default();
                state.ping_ok = false;
                set(&states, &changed, &node, state);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        loop {
            xid = xid.wrapping_add(1);
            match null_ping(&mut stream, xid, PING_TIMEOUT).await {
                Ok(()) => {
                    was_connected = true;
                    set(&states, &changed, &node, ProbeState::default());
                }
                Err(PingError::Timeout(_)) => {
                    // A slow gateway: unhealthy, but no proof of anything; start afresh.
                    let mut state = states.lock().get(&node).copied().unwrap_or_default();
                    state.ping_ok = false;
                    set(&states, &changed, &node, state);
                    was_connected = false;
                    break;
                }
                Err(_) => break,
            }
            // Between pings, anything from the gateway (its FIN or RST when its process dies)
            // ends the connection at once.
            let mut unasked = [0u8; 1];
            tokio::select! {
                () = tokio::time::sleep(PING_INTERVAL) => {}
                _ = stream.read(&mut unasked) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_null_call_is_well_formed() {
        let call = null_call(7);
        assert_eq!(&call[0..4], &(0x8000_0000u32 | 40).to_be_bytes());
        assert_eq!(&call[4..8], &7u32.to_be_bytes());
        assert_eq!(&call[16..20], &NFS_PROGRAM.to_be_bytes());
    }
}
