//! The name container's metadata journal: a redo log of the physical table changes of each
//! batch, so that a batch is durable after one sequential append and one fdatasync, instead of a
//! durable redb commit (which writes tens of scattered B-tree pages).
//!
//! Each batch commits to redb with `Durability::None`; every [`CHECKPOINT_BATCHES`] batches, or
//! when the journal is full, a batch commits with `Durability::Immediate` instead and starts a
//! new journal generation. After a crash redb comes back at its last durable commit, whose
//! `journal_generation` names the records to replay.
//!
//! Layout: a preallocated, zero-filled file (`containers/1/journal`) of records from offset 0:
//!
//! | size | field |
//! | --- | --- |
//! | 4 | magic `CJR1` |
//! | 8 | generation |
//! | 8 | sequence (0, 1, 2, … within a generation) |
//! | 4 | payload length |
//! | 4 | CRC-32C of the 24 bytes before it and the payload |
//! | n | payload: changes |
//!
//! A change: table (u8), kind (u8: 1 put, 2 delete), key length (u32), key, and for a put value
//! length (u32) and value. Replay stops at the first record whose magic, generation, sequence or
//! checksum does not match: a torn tail, or records of an older generation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::api::{StoreError, StoreResult};

pub(crate) const JOURNAL_MAGIC: &[u8; 4] = b"CJR1";
const HEADER_BYTES: usize = 28;
/// Batches between durable redb commits (checkpoints).
pub(crate) const CHECKPOINT_BATCHES: u64 = 512;

/// Tables a change can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum TableId {
    Meta = 1,
    Inodes = 2,
    Dirents = 3,
    Cookies = 4,
    Inline = 5,
    Chunks = 6,
    Dirty = 7,
    PendingDelete = 8,
}

impl TableId {
    pub(crate) fn from_code(code: u8) -> Option<TableId> {
        Some(match code {
            1 => TableId::Meta,
            2 => TableId::Inodes,
            3 => TableId::Dirents,
            4 => TableId::Cookies,
            5 => TableId::Inline,
            6 => TableId::Chunks,
            7 => TableId::Dirty,
            8 => TableId::PendingDelete,
            _ => return None,
        })
    }
}

/// Key encodings of the journal (little-endian integers, names last).
pub(crate) mod keys {
    pub fn inode(number: u64) -> Vec<u8> {
        number.to_le_bytes().to_vec()
    }

    pub fn pair(first: u64, second: u64) -> Vec<u8> {
        let mut out = first.to_le_bytes().to_vec();
        out.extend_from_slice(&second.to_le_bytes());
        out
    }

    pub fn dirent(directory: u64, name: &[u8]) -> Vec<u8> {
        let mut out = directory.to_le_bytes().to_vec();
        out.extend_from_slice(name);
        out
    }

    pub fn inline(number: u64, index: u32) -> Vec<u8> {
        let mut out = number.to_le_bytes().to_vec();
        out.extend_from_slice(&index.to_le_bytes());
        out
    }

    pub fn dirty(number: u64, chunk: u64, region: u32) -> Vec<u8> {
        let mut out = pair(number, chunk);
        out.extend_from_slice(&region.to_le_bytes());
        out
    }
}

/// One physical change: a put (with value) or a delete (without).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub table: TableId,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub(crate) fn encode_changes(changes: &[Change], out: &mut Vec<u8>) {
    for change in changes {
        out.push(change.table as u8);
        out.push(if change.value.is_some() { 1 } else { 2 });
        out.extend_from_slice(&(change.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&change.key);
        if let Some(value) = &change.value {
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
}

fn decode_changes(mut bytes: &[u8]) -> Option<Vec<Change>> {
    let mut changes = Vec::new();
    let take = |count: usize, bytes: &mut &[u8]| -> Option<Vec<u8>> {
        if bytes.len() < count {
            return None;
        }
        let (head, tail) = bytes.split_at(count);
        *bytes = tail;
        Some(head.to_vec())
    };
    let length = |raw: Vec<u8>| u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    while !bytes.is_empty() {
        let head = take(2, &mut bytes)?;
        let table = TableId::from_code(head[0])?;
        let key_length = length(take(4, &mut bytes)?);
        let key = take(key_length, &mut bytes)?;
        let value = match head[1] {
            1 => {
                let value_length = length(take(4, &mut bytes)?);
                Some(take(value_length, &mut bytes)?)
            }
            2 => None,
            _ => return None,
        };
        changes.push(Change { table, key, value });
    }
    Some(changes)
}

/// The journal file and where the next record goes. Only the group-commit leader uses it.
pub(crate) struct Journal {
    file: Arc<File>,
    capacity_bytes: u64,
    pub generation: u64,
    offset: u64,
    sequence: u64,
    /// Batches since the last checkpoint.
    pub batches: u64,
}

impl Journal {
    /// Opens (creating and zero-filling it if needed) the journal at `path`.
    pub fn open(path: &Path, capacity_bytes: u64) -> StoreResult<Journal> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let length = file.metadata()?.len();
        if length < capacity_bytes {
            // Zero-filled rather than fallocated, so that an append never changes file
            // metadata and fdatasync writes only the record.
            let zeros = vec![0u8; 1 << 20];
            let mut position = length;
            while position < capacity_bytes {
                let count = (capacity_bytes - position).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..count], position).map_err(crate::data::io_error)?;
                position += count as u64;
            }
            file.sync_all()?;
            if let Some(parent) = path.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(Journal {
            file: Arc::new(file),
            capacity_bytes: capacity_bytes.max(length),
            generation: 0,
            offset: 0,
            sequence: 0,
            batches: 0,
        })
    }

    /// The records of `generation`, in order, up to the first that does not continue the chain.
    pub fn replay(&self, generation: u64) -> StoreResult<Vec<Vec<Change>>> {
        let mut records = Vec::new();
        let mut offset = 0u64;
        let mut header = [0u8; HEADER_BYTES];
        loop {
            if offset + HEADER_BYTES as u64 > self.capacity_bytes {
                break;
            }
            self.file.read_exact_at(&mut header, offset)?;
            let generation_found = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
            let sequence = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
            let length = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
            if &header[0..4] != JOURNAL_MAGIC
                || generation_found != generation
                || sequence != records.len() as u64
                || offset + HEADER_BYTES as u64 + length > self.capacity_bytes
            {
                break;
            }
            let mut payload = vec![0u8; length as usize];
            self.file.read_exact_at(&mut payload, offset + HEADER_BYTES as u64)?;
            let mut digest = crc32c::crc32c(&header[..24]);
            digest = crc32c::crc32c_append(digest, &payload);
            if digest != crc {
                break;
            }
            let Some(changes) = decode_changes(&payload) else {
                return Err(StoreError::Corrupt { what: "metadata journal record".to_string(), offset });
            };
            records.push(changes);
            offset += HEADER_BYTES as u64 + length;
        }
        Ok(records)
    }

    /// Starts `generation` at the beginning of the file (after a checkpoint).
    pub fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
        self.sequence = 0;
        self.batches = 0;
    }

    /// Whether a record with this payload fits.
    pub fn fits(&self, payload_bytes: usize) -> bool {
        self.offset + (HEADER_BYTES + payload_bytes) as u64 <= self.capacity_bytes
    }

    /// Appends a record; the caller makes it durable with [`Journal::sync`].
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
        record.extend_from_slice(JOURNAL_MAGIC);
        record.extend_from_slice(&self.generation.to_le_bytes());
        record.extend_from_slice(&self.sequence.to_le_bytes());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let digest = crc32c::crc32c_append(crc32c::crc32c(&record[..24]), payload);
        record.extend_from_slice(&digest.to_le_bytes());
        record.extend_from_slice(payload);
        self.file.write_all_at(&record, self.offset)?;
        self.offset += record.len() as u64;
        self.sequence += 1;
        self.batches += 1;
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The journal file, to make appended records durable without holding the journal (the
    /// next batch appends meanwhile).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_replay_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut journal = Journal::open(&path, 1 << 16).unwrap();
        journal.restart(3);
        let first = vec![Change { table: TableId::Inodes, key: vec![1; 8], value: Some(b"abc".to_vec()) }];
        let second = vec![Change { table: TableId::Dirents, key: b"key".to_vec(), value: None }];
        for changes in [&first, &second] {
            let mut payload = Vec::new();
            encode_changes(changes, &mut payload);
            journal.append(&payload).unwrap();
        }
        journal.sync().unwrap();
        assert_eq!(journal.replay(3).unwrap(), vec![first.clone(), second]);
        assert!(journal.replay(2).unwrap().is_empty());
        // Tear the second record: replay stops before it.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let second_offset = (HEADER_BYTES + 2 + 4 + 8 + 4 + 3) as u64;
        file.write_all_at(&[0xff], second_offset + HEADER_BYTES as u64 + 3).unwrap();
        assert_eq!(journal.replay(3).unwrap(), vec![first]);
    }
}
