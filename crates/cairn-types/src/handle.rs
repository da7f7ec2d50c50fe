//! The NFS file handle: versioned, built from cluster, volume and FID, valid on every gateway
//! forever.
//!
//! Byte layout of version 1 (all integers big-endian, 32 bytes):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | format version (1) |
//! | 1 | 1 | reserved, 0 |
//! | 2 | 2 | low 16 bits of CRC-32C over bytes 4..32 (catches truncated or mangled handles) |
//! | 4 | 8 | cluster id |
//! | 12 | 4 | volume id |
//! | 16 | 4 | name container id |
//! | 20 | 8 | inode number |
//! | 28 | 4 | uniquifier |
//!
//! Invariant: no boot time, gateway id or local device number is ever part of a handle.

use crate::{ClusterId, ContainerId, Fid, VolumeId};

/// Current handle format version. Older versions must keep decoding.
pub const FILE_HANDLE_VERSION: u8 = 1;
/// Encoded length of a version-1 handle.
pub const FILE_HANDLE_LEN: usize = 32;

/// A decoded file handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    pub cluster: ClusterId,
    pub volume: VolumeId,
    pub fid: Fid,
}

/// Why a handle could not be decoded. Both map to NFS3ERR_BADHANDLE.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("file handle has length {0}, expected {FILE_HANDLE_LEN}")]
    Length(usize),
    #[error("file handle format version {0} is unknown")]
    Version(u8),
    #[error("file handle check bits do not match")]
    Check,
}

impl FileHandle {
    pub fn encode(&self) -> [u8; FILE_HANDLE_LEN] {
        let mut out = [0u8; FILE_HANDLE_LEN];
        out[0] = FILE_HANDLE_VERSION;
        out[4..12].copy_from_slice(&self.cluster.0.to_be_bytes());
        out[12..16].copy_from_slice(&self.volume.0.to_be_bytes());
        out[16..20].copy_from_slice(&self.fid.container.0.to_be_bytes());
        out[20..28].copy_from_slice(&self.fid.inode.to_be_bytes());
        out[28..32].copy_from_slice(&self.fid.uniquifier.to_be_bytes());
        let check = (crc32c::crc32c(&out[4..]) & 0xffff) as u16;
        out[2..4].copy_from_slice(&check.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<FileHandle, HandleError> {
        let Some(&version) = bytes.first() else {
            return Err(HandleError::Length(0));
        };
        if version != FILE_HANDLE_VERSION {
            return Err(HandleError::Version(version));
        }
        let bytes: &[u8; FILE_HANDLE_LEN] = bytes.try_into().map_err(|_| HandleError::Length(bytes.len()))?;
        let check = (crc32c::crc32c(&bytes[4..]) & 0xffff) as u16;
        if bytes[1] != 0 || u16::from_be_bytes([bytes[2], bytes[3]]) != check {
            return Err(HandleError::Check);
        }
        let u32_at = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| (u64::from(u32_at(at)) << 32) | u64::from(u32_at(at + 4));
        Ok(FileHandle {
            cluster: ClusterId(u64_at(4)),
            volume: VolumeId(u32_at(12)),
            fid: Fid { container: ContainerId(u32_at(16)), inode: u64_at(20), uniquifier: u32_at(28) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FileHandle {
        FileHandle {
            cluster: ClusterId(0x0102_0304_0506_0708),
            volume: VolumeId(7),
            fid: Fid { container: ContainerId(1), inode: 123_456_789, uniquifier: 0xdead_beef },
        }
    }

    #[test]
    fn round_trip() {
        let handle = sample();
        assert_eq!(FileHandle::decode(&handle.encode()), Ok(handle));
    }

    #[test]
    fn rejects_wrong_length_version_and_mangled_bytes() {
        let bytes = sample().encode();
        assert_eq!(FileHandle::decode(&bytes[..31]), Err(HandleError::Length(31)));
        assert_eq!(FileHandle::decode(&[]), Err(HandleError::Length(0)));
        let mut wrong_version = bytes;
        wrong_version[0] = 9;
        assert_eq!(FileHandle::decode(&wrong_version), Err(HandleError::Version(9)));
        for position in 4..FILE_HANDLE_LEN {
            let mut mangled = bytes;
            mangled[position] ^= 0x40;
            assert_eq!(FileHandle::decode(&mangled), Err(HandleError::Check), "byte {position}");
        }
    }
}
