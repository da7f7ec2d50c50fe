//! Persisted byte layouts: inode records, directory entries, inline blocks, checksum sidecar
//! entries and container metadata files. `docs/format.md` describes them; keep the two in step.
//!
//! Every decoder returns [`StoreError::Corrupt`] on bytes it does not understand and never
//! panics on input read from disk.

use std::path::Path;

use cairn_types::limits::BLOCK_SIZE_BYTES;

use crate::api::{FileKind, StoreError, StoreResult, Timestamp};

/// Version of the name container's database layout (meta key `format_version`).
pub(crate) const DATABASE_FORMAT_VERSION: u64 = 1;
/// Version of the inode record encoding.
pub(crate) const INODE_RECORD_VERSION: u8 = 1;
/// Version of the directory entry encoding.
pub(crate) const DIRENT_RECORD_VERSION: u8 = 1;
/// Version of the inline block encoding.
pub(crate) const INLINE_RECORD_VERSION: u8 = 1;
/// Version of the checksum sidecar file layout.
pub(crate) const CHECKSUM_FILE_VERSION: u32 = 1;
/// Version of `container.meta`.
pub(crate) const CONTAINER_META_VERSION: u32 = 1;

pub(crate) const CHECKSUM_FILE_MAGIC: &[u8; 8] = b"CAIRNCRC";
pub(crate) const CONTAINER_META_MAGIC: &[u8; 8] = b"CAIRNCTR";
/// Bytes before the first entry of a checksum sidecar file.
pub(crate) const CHECKSUM_HEADER_BYTES: u64 = 64;
/// Bytes of one checksum sidecar entry: CRC-32C (u32 LE) and flags (u32 LE).
pub(crate) const CHECKSUM_ENTRY_BYTES: u64 = 8;
/// Flag bit of a checksum entry: the block holds written data (otherwise it is a hole).
pub(crate) const CHECKSUM_FLAG_WRITTEN: u32 = 1;
/// Size of `container.meta`.
pub(crate) const CONTAINER_META_BYTES: usize = 64;

pub(crate) const BLOCK: usize = BLOCK_SIZE_BYTES as usize;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt { what: what.to_string(), offset: 0 }
}

/// One inode as stored in the `inodes` table (the mutable part of a file's identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inode {
    pub kind: FileKind,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size_bytes: u64,
    /// Number of 8 KiB blocks holding written data (inline and chunk blocks).
    pub blocks_used: u64,
    pub rdev: (u32, u32),
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub uniquifier: u32,
    /// Directories: the parent directory's inode number (the root is its own parent).
    pub parent: u64,
    /// Directories: the cookie the next entry gets. Invariant: greater than every cookie used.
    pub next_cookie: u64,
    /// Directories: number of entries, `.` and `..` not counted.
    pub entries: u64,
    /// Exclusive CREATE verifier.
    pub create_verifier: Option<[u8; 8]>,
    /// Symbolic links: the target.
    pub target: Vec<u8>,
}

pub(crate) fn kind_code(kind: FileKind) -> u8 {
    match kind {
        FileKind::Regular => 1,
        FileKind::Directory => 2,
        FileKind::Symlink => 3,
        FileKind::BlockDevice => 4,
        FileKind::CharDevice => 5,
        FileKind::Socket => 6,
        FileKind::Fifo => 7,
    }
}

pub(crate) fn kind_from_code(code: u8) -> Option<FileKind> {
    Some(match code {
        1 => FileKind::Regular,
        2 => FileKind::Directory,
        3 => FileKind::Symlink,
        4 => FileKind::BlockDevice,
        5 => FileKind::CharDevice,
        6 => FileKind::Socket,
        7 => FileKind::Fifo,
        _ => return None,
    })
}

/// Little-endian writer.
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn time(&mut self, value: Timestamp) {
        self.u32(value.seconds);
        self.u32(value.nanoseconds);
    }
}

/// Little-endian reader that fails instead of panicking on short input.
struct In<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> In<'a> {
    fn take(&mut self, count: usize) -> StoreResult<&'a [u8]> {
        if self.bytes.len() < count {
            return Err(corrupt(self.what));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> StoreResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> StoreResult<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
    fn u64(&mut self) -> StoreResult<u64> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }
    fn time(&mut self) -> StoreResult<Timestamp> {
        Ok(Timestamp { seconds: self.u32()?, nanoseconds: self.u32()? })
    }
}

impl Inode {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out(Vec::with_capacity(112 + self.target.len()));
        out.u8(INODE_RECORD_VERSION);
        out.u8(kind_code(self.kind));
        out.u32(self.mode);
        out.u32(self.nlink);
        out.u32(self.uid);
        out.u32(self.gid);
        out.u64(self.size_bytes);
        out.u64(self.blocks_used);
        out.u32(self.rdev.0);
        out.u32(self.rdev.1);
        out.time(self.atime);
        out.time(self.mtime);
        out.time(self.ctime);
        out.u32(self.uniquifier);
        out.u64(self.parent);
        out.u64(self.next_cookie);
        out.u64(self.entries);
        match self.create_verifier {
            Some(verifier) => {
                out.u8(1);
                out.0.extend_from_slice(&verifier);
            }
            None => {
                out.u8(0);
                out.0.extend_from_slice(&[0; 8]);
            }
        }
        out.u32(u32::try_from(self.target.len()).expect("symlink targets are at most 4096 bytes"));
        out.0.extend_from_slice(&self.target);
        out.0
    }

    /// What an encoded inode record adds to the volume's used bytes: its size if it is a
    /// regular file, else 0. Reads only the record's header.
    pub fn used_bytes_of(bytes: &[u8]) -> StoreResult<u64> {
        let mut input = In { bytes, what: "inode record" };
        if input.u8()? != INODE_RECORD_VERSION {
            return Err(corrupt("inode record version"));
        }
        if input.u8()? != kind_code(FileKind::Regular) {
            return Ok(0);
        }
        let _mode_nlink_uid_gid = (input.u32()?, input.u32()?, input.u32()?, input.u32()?);
        input.u64()
    }

    pub fn decode(bytes: &[u8]) -> StoreResult<Inode> {
        let mut input = In { bytes, what: "inode record" };
        let version = input.u8()?;
        if version != INODE_RECORD_VERSION {
            return Err(corrupt("inode record version"));
        }
        let kind = kind_from_code(input.u8()?).ok_or_else(|| corrupt("inode kind"))?;
        let mode = input.u32()?;
        let nlink = input.u32()?;
        let uid = input.u32()?;
        let gid = input.u32()?;
        let size_bytes = input.u64()?;
        let blocks_used = input.u64()?;
        let rdev = (input.u32()?, input.u32()?);
        let atime = input.time()?;
        let mtime = input.time()?;
        let ctime = input.time()?;
        let uniquifier = input.u32()?;
        let parent = input.u64()?;
        let next_cookie = input.u64()?;
        let entries = input.u64()?;
        let has_verifier = input.u8()?;
        let mut verifier = [0u8; 8];
        verifier.copy_from_slice(input.take(8)?);
        let target_len = input.u32()? as usize;
        let target = input.take(target_len)?.to_vec();
        Ok(Inode {
            kind,
            mode,
            nlink,
            uid,
            gid,
            size_bytes,
            blocks_used,
            rdev,
            atime,
            mtime,
            ctime,
            uniquifier,
            parent,
            next_cookie,
            entries,
            create_verifier: (has_verifier != 0).then_some(verifier),
            target,
        })
    }
}

/// A directory entry's value in the `dirents` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dirent {
    pub cookie: u64,
    pub inode: u64,
    pub uniquifier: u32,
    pub kind: FileKind,
}

impl Dirent {
    pub fn encode(&self) -> [u8; 22] {
        let mut out = [0u8; 22];
        out[0] = DIRENT_RECORD_VERSION;
        out[1..9].copy_from_slice(&self.cookie.to_le_bytes());
        out[9..17].copy_from_slice(&self.inode.to_le_bytes());
        out[17..21].copy_from_slice(&self.uniquifier.to_le_bytes());
        out[21] = kind_code(self.kind);
        out
    }

    pub fn decode(bytes: &[u8]) -> StoreResult<Dirent> {
        let mut input = In { bytes, what: "directory entry" };
        if input.u8()? != DIRENT_RECORD_VERSION {
            return Err(corrupt("directory entry version"));
        }
        Ok(Dirent {
            cookie: input.u64()?,
            inode: input.u64()?,
            uniquifier: input.u32()?,
            kind: kind_from_code(input.u8()?).ok_or_else(|| corrupt("directory entry kind"))?,
        })
    }
}

/// Encodes an inline block: version, CRC-32C of the whole 8 KiB block, then the block's bytes
/// without trailing zeros.
pub(crate) fn encode_inline(block: &[u8]) -> Vec<u8> {
    debug_assert_eq!(block.len(), BLOCK);
    let crc = crc32c::crc32c(block);
    let used = block.iter().rposition(|&byte| byte != 0).map_or(0, |position| position + 1);
    let mut out = Vec::with_capacity(5 + used);
    out.push(INLINE_RECORD_VERSION);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&block[..used]);
    out
}

/// Decodes an inline block into a full 8 KiB block, verifying its checksum.
pub(crate) fn decode_inline(bytes: &[u8], inode: u64, block_index: u32) -> StoreResult<Vec<u8>> {
    let bad = || StoreError::Corrupt {
        what: format!("inline block {block_index} of inode {inode}"),
        offset: u64::from(block_index) * BLOCK_SIZE_BYTES,
    };
    if bytes.len() < 5 || bytes[0] != INLINE_RECORD_VERSION || bytes.len() - 5 > BLOCK {
        return Err(bad());
    }
    let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let mut block = vec![0u8; BLOCK];
    block[..bytes.len() - 5].copy_from_slice(&bytes[5..]);
    if crc32c::crc32c(&block) != crc {
        return Err(bad());
    }
    Ok(block)
}

/// One entry of a checksum sidecar file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct BlockSum {
    pub crc: u32,
    pub written: bool,
}

impl BlockSum {
    pub fn encode(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0..4].copy_from_slice(&self.crc.to_le_bytes());
        let flags = if self.written { CHECKSUM_FLAG_WRITTEN } else { 0 };
        out[4..8].copy_from_slice(&flags.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> BlockSum {
        let crc = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let flags = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        BlockSum { crc, written: flags & CHECKSUM_FLAG_WRITTEN != 0 }
    }
}

/// Header of a checksum sidecar file.
pub(crate) fn checksum_header(
    container: u32,
    inode: u64,
    chunk: u64,
) -> [u8; CHECKSUM_HEADER_BYTES as usize] {
    let mut out = [0u8; CHECKSUM_HEADER_BYTES as usize];
    out[0..8].copy_from_slice(CHECKSUM_FILE_MAGIC);
    out[8..12].copy_from_slice(&CHECKSUM_FILE_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&container.to_le_bytes());
    out[16..24].copy_from_slice(&inode.to_le_bytes());
    out[24..32].copy_from_slice(&chunk.to_le_bytes());
    out[32..36].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[..60]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What kind of container a `container.meta` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContainerKind {
    Name,
    Data,
}

/// The persistent metadata of one container (`containers/<id>/container.meta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ContainerMeta {
    pub container: u32,
    pub kind: ContainerKind,
    pub volume: u32,
    pub epoch: u64,
    /// Data containers: every transaction id below this may have been handed out; the next
    /// incarnation starts here. Name container: 0 (its transaction id lives in the database).
    pub txn_reserved_until: u64,
}

impl ContainerMeta {
    pub fn encode(&self) -> [u8; CONTAINER_META_BYTES] {
        let mut out = [0u8; CONTAINER_META_BYTES];
        out[0..8].copy_from_slice(CONTAINER_META_MAGIC);
        out[8..12].copy_from_slice(&CONTAINER_META_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.container.to_le_bytes());
        out[16] = match self.kind {
            ContainerKind::Name => 1,
            ContainerKind::Data => 2,
        };
        out[20..24].copy_from_slice(&self.volume.to_le_bytes());
        out[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        out[32..40].copy_from_slice(&self.txn_reserved_until.to_le_bytes());
        let crc = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], path: &Path) -> StoreResult<ContainerMeta> {
        let bad =
            || StoreError::Corrupt { what: format!("container metadata {}", path.display()), offset: 0 };
        if bytes.len() != CONTAINER_META_BYTES || &bytes[0..8] != CONTAINER_META_MAGIC {
            return Err(bad());
        }
        let mut input = In { bytes: &bytes[8..], what: "container metadata" };
        let version = input.u32()?;
        if version != CONTAINER_META_VERSION {
            return Err(bad());
        }
        let crc = u32::from_le_bytes([bytes[60], bytes[61], bytes[62], bytes[63]]);
        if crc32c::crc32c(&bytes[..60]) != crc {
            return Err(bad());
        }
        let container = input.u32()?;
        let kind = match input.u8()? {
            1 => ContainerKind::Name,
            2 => ContainerKind::Data,
            _ => return Err(bad()),
        };
        input.take(3)?;
        let volume = input.u32()?;
        let epoch = input.u64()?;
        let txn_reserved_until = input.u64()?;
        Ok(ContainerMeta { container, kind, volume, epoch, txn_reserved_until })
    }
}

/// Value of a `pending_delete` row: the chunks whose files must still be removed.
pub(crate) fn encode_chunk_list(chunks: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + chunks.len() * 12);
    out.push(1);
    for &(chunk, container) in chunks {
        out.extend_from_slice(&chunk.to_le_bytes());
        out.extend_from_slice(&container.to_le_bytes());
    }
    out
}

pub(crate) fn decode_chunk_list(bytes: &[u8]) -> StoreResult<Vec<(u64, u32)>> {
    let mut input = In { bytes, what: "pending delete list" };
    if input.u8()? != 1 || !(bytes.len() - 1).is_multiple_of(12) {
        return Err(corrupt("pending delete list"));
    }
    let mut out = Vec::new();
    while !input.bytes.is_empty() {
        out.push((input.u64()?, input.u32()?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trip_and_short_input() {
        let inode = Inode {
            kind: FileKind::Symlink,
            mode: 0o777,
            nlink: 1,
            uid: 5,
            gid: 6,
            size_bytes: 3,
            blocks_used: 0,
            rdev: (1, 2),
            atime: Timestamp { seconds: 1, nanoseconds: 2 },
            mtime: Timestamp { seconds: 3, nanoseconds: 4 },
            ctime: Timestamp { seconds: 5, nanoseconds: 6 },
            uniquifier: 77,
            parent: 0,
            next_cookie: 0,
            entries: 0,
            create_verifier: Some([9; 8]),
            target: b"abc".to_vec(),
        };
        let bytes = inode.encode();
        assert_eq!(Inode::decode(&bytes).unwrap(), inode);
        for cut in 0..bytes.len() {
            assert!(Inode::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn inline_block_checksum() {
        let mut block = vec![0u8; BLOCK];
        block[10] = 7;
        let encoded = encode_inline(&block);
        assert_eq!(encoded.len(), 5 + 11);
        assert_eq!(decode_inline(&encoded, 1, 0).unwrap(), block);
        let mut bad = encoded.clone();
        bad[15] ^= 1;
        assert!(matches!(decode_inline(&bad, 1, 0), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn container_meta_round_trip() {
        let meta = ContainerMeta {
            container: 3,
            kind: ContainerKind::Data,
            volume: 1,
            epoch: 1,
            txn_reserved_until: 1 << 20,
        };
        let path = Path::new("x");
        assert_eq!(ContainerMeta::decode(&meta.encode(), path).unwrap(), meta);
        let mut bad = meta.encode();
        bad[30] ^= 1;
        assert!(ContainerMeta::decode(&bad, path).is_err());
    }
}
