//! ONC RPC v2 (RFC 5531): the call header, credentials, and the reply headers.
//!
//! Replies are built in one `Vec<u8>` that starts with a 4-byte record mark placeholder, filled in
//! by [`finish_record`] once the length is known, so a reply goes out in one write (plus the READ
//! payload as a second slice of the same vectored write).

use nfs3_types::rpc::auth_stat;

use crate::xdr::{XdrError, XdrReader, XdrResult, XdrWrite};

pub const RPC_VERSION: u32 = 2;

/// RFC 5531 section 8.2: opaque_auth bodies are at most 400 bytes.
pub const AUTH_BODY_BYTES_MAX: usize = 400;
/// RFC 5531 appendix A: AUTH_UNIX machine names are at most 255 bytes.
pub const MACHINE_NAME_BYTES_MAX: usize = 255;
/// RFC 5531 appendix A: at most 16 supplementary groups.
pub const AUTH_UNIX_GROUPS_MAX: usize = 16;

const AUTH_NONE: u32 = 0;
const AUTH_UNIX: u32 = 1;
const AUTH_SHORT: u32 = 2;

const MSG_CALL: u32 = 0;
const MSG_REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;
const REJECT_RPC_MISMATCH: u32 = 0;
const REJECT_AUTH_ERROR: u32 = 1;

/// The accept_stat of an accepted reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptStatus {
    Success,
    ProgramUnavailable,
    ProgramMismatch { low: u32, high: u32 },
    ProcedureUnavailable,
    GarbageArguments,
    SystemError,
}

/// AUTH_UNIX (AUTH_SYS) credentials, without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixCredential {
    pub uid: u32,
    pub gid: u32,
    // Invariant: group_count <= AUTH_UNIX_GROUPS_MAX.
    group_count: u8,
    groups: [u32; AUTH_UNIX_GROUPS_MAX],
}

impl UnixCredential {
    pub fn new(uid: u32, gid: u32, groups: &[u32]) -> UnixCredential {
        let mut credential = UnixCredential { uid, gid, group_count: 0, groups: [0; AUTH_UNIX_GROUPS_MAX] };
        let count = groups.len().min(AUTH_UNIX_GROUPS_MAX);
        credential.groups[..count].copy_from_slice(&groups[..count]);
        credential.group_count = count as u8;
        credential
    }

    pub fn groups(&self) -> &[u32] {
        &self.groups[..usize::from(self.group_count)]
    }
}

/// Who the call claims to come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// AUTH_NONE: anonymous.
    None,
    Unix(UnixCredential),
}

impl Credential {
    /// The form `ExportOptions::caller_for` takes.
    pub fn as_unix(&self) -> Option<(u32, u32, &[u32])> {
        match self {
            Credential::None => None,
            Credential::Unix(unix) => Some((unix.uid, unix.gid, unix.groups())),
        }
    }
}

/// A decoded call header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallHeader {
    pub xid: u32,
    pub program: u32,
    pub version: u32,
    pub procedure: u32,
    pub credential: Credential,
    /// Where the procedure's arguments start in the record.
    pub arguments_offset: usize,
}

/// What to do with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Call(CallHeader),
    /// Answer with this reply (a rejected call) and go on reading.
    Reject(Vec<u8>),
    /// The record is not an RPC call at all: close the connection.
    Unparseable,
}

/// Decodes the call header of one record.
pub fn decode_call(record: &[u8]) -> CallOutcome {
    match decode_call_fields(record) {
        Ok(outcome) => outcome,
        // Too short for the fixed fields, or an auth body past the end of the record.
        Err(XdrError) => CallOutcome::Unparseable,
    }
}

fn decode_call_fields(record: &[u8]) -> XdrResult<CallOutcome> {
    let mut reader = XdrReader::new(record);
    let xid = reader.u32()?;
    if reader.u32()? != MSG_CALL {
        return Err(XdrError);
    }
    if reader.u32()? != RPC_VERSION {
        return Ok(CallOutcome::Reject(rpc_mismatch_reply(xid)));
    }
    let (program, version, procedure) = (reader.u32()?, reader.u32()?, reader.u32()?);
    let credential_flavor = reader.u32()?;
    let credential_length = reader.u32()? as usize;
    if credential_length > AUTH_BODY_BYTES_MAX {
        return Ok(CallOutcome::Reject(auth_error_reply(xid, auth_stat::AUTH_BADCRED)));
    }
    let credential_body = reader.fixed(credential_length)?;
    let _verifier_flavor = reader.u32()?;
    let verifier_length = reader.u32()? as usize;
    if verifier_length > AUTH_BODY_BYTES_MAX {
        return Ok(CallOutcome::Reject(auth_error_reply(xid, auth_stat::AUTH_BADVERF)));
    }
    let _verifier_body = reader.fixed(verifier_length)?;
    let credential = match credential_flavor {
        AUTH_NONE => Credential::None,
        AUTH_UNIX => match decode_auth_unix(credential_body) {
            Ok(unix) => Credential::Unix(unix),
            Err(_) => return Ok(CallOutcome::Reject(auth_error_reply(xid, auth_stat::AUTH_BADCRED))),
        },
        // A client that got an AUTH_SHORT verifier from another server: make it send AUTH_UNIX.
        AUTH_SHORT => return Ok(CallOutcome::Reject(auth_error_reply(xid, auth_stat::AUTH_REJECTEDCRED))),
        _ => return Ok(CallOutcome::Reject(auth_error_reply(xid, auth_stat::AUTH_TOOWEAK))),
    };
    Ok(CallOutcome::Call(CallHeader {
        xid,
        program,
        version,
        procedure,
        credential,
        arguments_offset: reader.position(),
    }))
}

fn decode_auth_unix(body: &[u8]) -> XdrResult<UnixCredential> {
    let mut reader = XdrReader::new(body);
    let _stamp = reader.u32()?;
    let _machine_name = reader.opaque(MACHINE_NAME_BYTES_MAX)?;
    let uid = reader.u32()?;
    let gid = reader.u32()?;
    let group_count = reader.u32()? as usize;
    if group_count > AUTH_UNIX_GROUPS_MAX {
        return Err(XdrError);
    }
    let mut groups = [0u32; AUTH_UNIX_GROUPS_MAX];
    for group in groups.iter_mut().take(group_count) {
        *group = reader.u32()?;
    }
    if reader.remaining() != 0 {
        return Err(XdrError);
    }
    Ok(UnixCredential::new(uid, gid, &groups[..group_count]))
}

/// Size of an accepted reply header with the SUCCESS status, record mark included.
pub const SUCCESS_HEADER_BYTES: usize = 4 + 24;

/// Starts a reply: record mark placeholder, xid, MSG_ACCEPTED, an AUTH_NONE verifier and the
/// accept status with its mismatch range. The procedure's results follow for `Success`.
pub fn begin_accepted_reply(out: &mut Vec<u8>, xid: u32, status: AcceptStatus) {
    out.put_u32(0);
    out.put_u32(xid);
    out.put_u32(MSG_REPLY);
    out.put_u32(MSG_ACCEPTED);
    out.put_u32(AUTH_NONE);
    out.put_u32(0);
    match status {
        AcceptStatus::Success => out.put_u32(0),
        AcceptStatus::ProgramUnavailable => out.put_u32(1),
        AcceptStatus::ProgramMismatch { low, high } => {
            out.put_u32(2);
            out.put_u32(low);
            out.put_u32(high);
        }
        AcceptStatus::ProcedureUnavailable => out.put_u32(3),
        AcceptStatus::GarbageArguments => out.put_u32(4),
        AcceptStatus::SystemError => out.put_u32(5),
    }
}

/// A complete accepted reply without results (any status but a successful procedure).
pub fn accepted_reply(xid: u32, status: AcceptStatus) -> Vec<u8> {
    let mut out = Vec::with_capacity(SUCCESS_HEADER_BYTES + 8);
    begin_accepted_reply(&mut out, xid, status);
    finish_record(&mut out, 0);
    out
}

fn rpc_mismatch_reply(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.put_u32(0);
    out.put_u32(xid);
    out.put_u32(MSG_REPLY);
    out.put_u32(MSG_DENIED);
    out.put_u32(REJECT_RPC_MISMATCH);
    out.put_u32(RPC_VERSION);
    out.put_u32(RPC_VERSION);
    finish_record(&mut out, 0);
    out
}

pub fn auth_error_reply(xid: u32, status: auth_stat) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.put_u32(0);
    out.put_u32(xid);
    out.put_u32(MSG_REPLY);
    out.put_u32(MSG_DENIED);
    out.put_u32(REJECT_AUTH_ERROR);
    out.put_u32(status as u32);
    finish_record(&mut out, 0);
    out
}

/// Fills in the record mark at the start of `out`: one last fragment holding the rest of `out`
/// plus `payload_bytes` more bytes sent after it (a READ payload and its padding).
pub fn finish_record(out: &mut [u8], payload_bytes: usize) {
    debug_assert!(out.len() >= 4, "a reply starts with its record mark placeholder");
    let length = out.len() - 4 + payload_bytes;
    // Replies are bounded by the 1 MiB READ payload plus small headers, far below 2 GiB.
    let mark = 0x8000_0000u32 | (length as u32 & 0x7fff_ffff);
    out[..4].copy_from_slice(&mark.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(credential_flavor: u32, credential: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u32(0x1234);
        out.put_u32(MSG_CALL);
        out.put_u32(2);
        out.put_u32(100_003);
        out.put_u32(3);
        out.put_u32(1);
        out.put_u32(credential_flavor);
        out.put_opaque(credential);
        out.put_u32(0);
        out.put_u32(0);
        out
    }

    fn auth_unix_body(groups: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u32(0);
        body.put_opaque(b"host");
        body.put_u32(1000);
        body.put_u32(100);
        body.put_u32(groups);
        for group in 0..groups {
            body.put_u32(group);
        }
        body
    }

    #[test]
    fn decodes_auth_unix() {
        let record = call(AUTH_UNIX, &auth_unix_body(3));
        let CallOutcome::Call(header) = decode_call(&record) else { panic!("not a call") };
        assert_eq!(header.xid, 0x1234);
        assert_eq!(header.arguments_offset, record.len());
        let Credential::Unix(unix) = header.credential else { panic!("not AUTH_UNIX") };
        assert_eq!((unix.uid, unix.gid, unix.groups()), (1000, 100, &[0, 1, 2][..]));
    }

    #[test]
    fn rejects_bad_credentials() {
        let too_many_groups = call(AUTH_UNIX, &auth_unix_body(17));
        assert!(matches!(decode_call(&too_many_groups), CallOutcome::Reject(_)));
        let gss = call(6, &[]);
        assert!(matches!(decode_call(&gss), CallOutcome::Reject(_)));
        assert_eq!(decode_call(&[0, 0, 0, 1]), CallOutcome::Unparseable);
        let mut reply = call(AUTH_NONE, &[]);
        reply[7] = 1;
        assert_eq!(decode_call(&reply), CallOutcome::Unparseable);
    }
}
