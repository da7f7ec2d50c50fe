//! The duplicate request cache (RFC 1813 section 4.5): replies to non-idempotent calls, replayed
//! byte for byte when the client retransmits.
//!
//! Key: client IP address (port stripped, since a client may reconnect from another port), xid,
//! program, version, procedure, and a CRC-32C of the first [`DRC_CHECKSUM_BYTES`] bytes of the
//! arguments (so a reused xid with other arguments is a miss). Bounded to [`DRC_ENTRIES_MAX`]
//! entries in [`DRC_SHARDS`] shards evicted oldest first, each entry living at most
//! [`DRC_ENTRY_LIFETIME`]. A lookup touches one shard's hash map under its own mutex: no scans.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const DRC_ENTRIES_MAX: usize = 8192;
pub const DRC_SHARDS: usize = 16;
pub const DRC_ENTRY_LIFETIME: Duration = Duration::from_secs(120);
pub const DRC_CHECKSUM_BYTES: usize = 256;

const SHARD_ENTRIES_MAX: usize = DRC_ENTRIES_MAX / DRC_SHARDS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DrcKey {
    client: IpAddr,
    xid: u32,
    program: u32,
    version: u32,
    procedure: u32,
    checksum: u32,
}

impl DrcKey {
    pub fn new(
        client: IpAddr,
        xid: u32,
        program: u32,
        version: u32,
        procedure: u32,
        arguments: &[u8],
    ) -> DrcKey {
        let checked = &arguments[..arguments.len().min(DRC_CHECKSUM_BYTES)];
        DrcKey { client, xid, program, version, procedure, checksum: crc32c::crc32c(checked) }
    }

    fn shard(&self) -> usize {
        (self.xid ^ self.checksum.rotate_left(16)) as usize % DRC_SHARDS
    }
}

enum Slot {
    InProgress,
    Done(Arc<[u8]>),
}

struct Entry {
    slot: Slot,
    /// When the call arrived (in progress) or its reply was stored (done).
    stamp: Instant,
    /// Tells this entry from an older one under the same key in `Shard::order`.
    sequence: u64,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<DrcKey, Entry>,
    /// Keys in insertion order, for eviction; may hold superseded (key, sequence) pairs.
    order: VecDeque<(DrcKey, u64)>,
    next_sequence: u64,
}

impl Shard {
    fn evict(&mut self) {
        // Invariant after this: entries.len() <= SHARD_ENTRIES_MAX and order.len() <= 2 * that.
        while self.entries.len() > SHARD_ENTRIES_MAX || self.order.len() > 2 * SHARD_ENTRIES_MAX {
            let Some((key, sequence)) = self.order.pop_front() else { break };
            if self.entries.get(&key).is_some_and(|entry| entry.sequence == sequence) {
                self.entries.remove(&key);
            }
        }
    }
}

pub struct Drc {
    shards: Vec<Mutex<Shard>>,
}

/// What to do with a non-idempotent call.
pub enum DrcLookup {
    /// First time seen (or expired): execute it, then [`DrcTicket::complete`] with the reply.
    Execute(DrcTicket),
    /// Already answered: send these bytes again.
    Replay(Arc<[u8]>),
    /// The original is still being executed: drop this copy; the client will retransmit.
    InProgress,
}

impl Default for Drc {
    fn default() -> Drc {
        Drc { shards: (0..DRC_SHARDS).map(|_| Mutex::new(Shard::default())).collect() }
    }
}

impl Drc {
    pub fn begin(self: &Arc<Drc>, key: DrcKey, now: Instant) -> DrcLookup {
        let mut shard = self.shards[key.shard()].lock();
        if let Some(entry) = shard.entries.get(&key) {
            match &entry.slot {
                Slot::InProgress => return DrcLookup::InProgress,
                Slot::Done(reply) if now.saturating_duration_since(entry.stamp) < DRC_ENTRY_LIFETIME => {
                    return DrcLookup::Replay(reply.clone());
                }
                Slot::Done(_) => {}
            }
        }
        let sequence = shard.next_sequence;
        shard.next_sequence += 1;
        shard.entries.insert(key, Entry { slot: Slot::InProgress, stamp: now, sequence });
        shard.order.push_back((key, sequence));
        shard.evict();
        DrcLookup::Execute(DrcTicket { drc: self.clone(), key, sequence, completed: false })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().entries.len()).sum()
    }
}

/// The right to execute a call and record its reply. Dropped without
/// [`complete`](DrcTicket::complete) (the call produced no reply), it forgets the call so a
/// retransmission executes it.
pub struct DrcTicket {
    drc: Arc<Drc>,
    key: DrcKey,
    sequence: u64,
    completed: bool,
}

impl DrcTicket {
    pub fn complete(mut self, reply: &[u8], now: Instant) {
        self.completed = true;
        let mut shard = self.drc.shards[self.key.shard()].lock();
        if let Some(entry) = shard.entries.get_mut(&self.key)
            && entry.sequence == self.sequence
        {
            entry.slot = Slot::Done(Arc::from(reply));
            entry.stamp = now;
        }
    }
}

impl Drop for DrcTicket {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let mut shard = self.drc.shards[self.key.shard()].lock();
        if shard.entries.get(&self.key).is_some_and(|entry| entry.sequence == self.sequence) {
            shard.entries.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(xid: u32, arguments: &[u8]) -> DrcKey {
        DrcKey::new(IpAddr::V4(Ipv4Addr::LOCALHOST), xid, 100_003, 3, 8, arguments)
    }

    #[test]
    fn replays_after_completion_and_drops_while_in_progress() {
        let drc = Arc::new(Drc::default());
        let now = Instant::now();
        let DrcLookup::Execute(ticket) = drc.begin(key(1, b"args"), now) else { panic!("not a miss") };
        assert!(matches!(drc.begin(key(1, b"args"), now), DrcLookup::InProgress));
        ticket.complete(b"reply", now);
        let DrcLookup::Replay(reply) = drc.begin(key(1, b"args"), now) else { panic!("no replay") };
        assert_eq!(&reply[..], b"reply");
        // The same xid with other arguments is another call.
        assert!(matches!(drc.begin(key(1, b"other"), now), DrcLookup::Execute(_)));
        // Expired entries are executed again.
        let later = now + DRC_ENTRY_LIFETIME + Duration::from_secs(1);
        assert!(matches!(drc.begin(key(1, b"args"), later), DrcLookup::Execute(_)));
    }

    #[test]
    fn a_dropped_ticket_forgets_the_call() {
        let drc = Arc::new(Drc::default());
        let now = Instant::now();
        let DrcLookup::Execute(ticket) = drc.begin(key(2, b"x"), now) else { panic!("not a miss") };
        drop(ticket);
        assert!(matches!(drc.begin(key(2, b"x"), now), DrcLookup::Execute(_)));
    }

    #[test]
    fn stays_bounded() {
        let drc = Arc::new(Drc::default());
        let now = Instant::now();
        for xid in 0..(DRC_ENTRIES_MAX as u32 * 3) {
            if let DrcLookup::Execute(ticket) = drc.begin(key(xid, b"a"), now) {
                ticket.complete(b"r", now);
            }
        }
        assert!(drc.len() <= DRC_ENTRIES_MAX);
        assert!(drc.len() >= DRC_ENTRIES_MAX / 2);
    }
}
