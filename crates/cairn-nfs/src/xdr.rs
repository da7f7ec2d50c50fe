//! A bounds-checked XDR reader over a byte slice, and the few writer helpers the reply encoders
//! need on top of `nfs3_types`' `Pack`.
//!
//! Why not `nfs3_types`' `Unpack` for requests: it reads from `impl Read` and allocates
//! `vec![0; len]` from a wire length before reading, so a forged 4 GiB length allocates 4 GiB, and
//! every name or WRITE payload is copied into a fresh `Vec`. This reader checks every length
//! against the bytes that are really left and hands out borrowed slices of the record, so
//! decoding allocates nothing and the WRITE payload goes to the store without a copy.

use nfs3_types::xdr_codec::Pack;

/// Malformed XDR: too short, a length past the end of the record, or an invalid enum value.
/// Becomes GARBAGE_ARGS (or a closed connection for a malformed RPC header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdrError;

pub type XdrResult<T> = Result<T, XdrError>;

/// Reads XDR items from a byte slice, front to back.
pub struct XdrReader<'a> {
    bytes: &'a [u8],
    // Invariant: position <= bytes.len().
    position: usize,
}

impl<'a> XdrReader<'a> {
    pub fn new(bytes: &'a [u8]) -> XdrReader<'a> {
        XdrReader { bytes, position: 0 }
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take(&mut self, length: usize) -> XdrResult<&'a [u8]> {
        if length > self.remaining() {
            return Err(XdrError);
        }
        let taken = &self.bytes[self.position..self.position + length];
        self.position += length;
        Ok(taken)
    }

    pub fn u32(&mut self) -> XdrResult<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn u64(&mut self) -> XdrResult<u64> {
        let high = self.u32()?;
        let low = self.u32()?;
        Ok((u64::from(high) << 32) | u64::from(low))
    }

    pub fn bool(&mut self) -> XdrResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(XdrError),
        }
    }

    /// Fixed-length opaque data of `length` bytes, plus its padding to a multiple of 4.
    pub fn fixed(&mut self, length: usize) -> XdrResult<&'a [u8]> {
        let padded = padded_length(length).ok_or(XdrError)?;
        let bytes = self.take(padded)?;
        Ok(&bytes[..length])
    }

    /// Variable-length opaque data (or a string) of at most `length_max` bytes. The length is
    /// checked against `length_max` and the bytes left before anything else happens.
    pub fn opaque(&mut self, length_max: usize) -> XdrResult<&'a [u8]> {
        let length = self.u32()? as usize;
        if length > length_max {
            return Err(XdrError);
        }
        self.fixed(length)
    }
}

/// `length` rounded up to a multiple of 4, or None on overflow.
pub fn padded_length(length: usize) -> Option<usize> {
    length.checked_add(3).map(|rounded| rounded & !3)
}

/// Appends XDR items to a reply buffer. `Vec<u8>` as `io::Write` never fails, so packing
/// `nfs3_types` values into it cannot fail either; a failure would be a bug in the type's `Pack`.
pub trait XdrWrite {
    fn put_u32(&mut self, value: u32);
    fn put_u64(&mut self, value: u64);
    fn put_bool(&mut self, value: bool);
    /// Variable-length opaque data with its length and padding.
    fn put_opaque(&mut self, bytes: &[u8]);
    fn put<T: Pack>(&mut self, value: &T);
}

impl XdrWrite for Vec<u8> {
    fn put_u32(&mut self, value: u32) {
        self.extend_from_slice(&value.to_be_bytes());
    }

    fn put_u64(&mut self, value: u64) {
        self.extend_from_slice(&value.to_be_bytes());
    }

    fn put_bool(&mut self, value: bool) {
        self.put_u32(u32::from(value));
    }

    fn put_opaque(&mut self, bytes: &[u8]) {
        // Callers only pass names, paths and handles bounded far below 4 GiB.
        self.put_u32(bytes.len() as u32);
        self.extend_from_slice(bytes);
        self.extend_from_slice(padding(bytes.len()));
    }

    fn put<T: Pack>(&mut self, value: &T) {
        // Writing into a Vec cannot fail; the types packed here have no fallible fields.
        let _ = value.pack(self);
    }
}

/// The zero bytes that pad `length` bytes to a multiple of 4.
pub fn padding(length: usize) -> &'static [u8] {
    const ZEROES: [u8; 3] = [0; 3];
    &ZEROES[..(4 - length % 4) % 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_items_and_rejects_lengths_past_the_end() {
        let mut bytes = Vec::new();
        bytes.put_u32(7);
        bytes.put_u64(0x0102_0304_0506_0708);
        bytes.put_bool(true);
        bytes.put_opaque(b"abcde");
        let mut reader = XdrReader::new(&bytes);
        assert_eq!(reader.u32(), Ok(7));
        assert_eq!(reader.u64(), Ok(0x0102_0304_0506_0708));
        assert_eq!(reader.bool(), Ok(true));
        assert_eq!(reader.opaque(5), Ok(&b"abcde"[..]));
        assert_eq!(reader.remaining(), 0);
        assert_eq!(reader.u32(), Err(XdrError));

        let forged = [0xff, 0xff, 0xff, 0xfc, 1, 2, 3, 4];
        assert_eq!(XdrReader::new(&forged).opaque(usize::MAX), Err(XdrError));
        assert_eq!(XdrReader::new(&forged).opaque(16), Err(XdrError));
        assert_eq!(XdrReader::new(&[0, 0, 0, 2]).bool(), Err(XdrError));
    }

    #[test]
    fn padding_rounds_to_four() {
        assert_eq!(padding(0).len(), 0);
        assert_eq!(padding(1).len(), 3);
        assert_eq!(padding(4).len(), 0);
        assert_eq!(padded_length(5), Some(8));
        assert_eq!(padded_length(usize::MAX), None);
    }
}
