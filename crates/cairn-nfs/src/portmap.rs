//! A portmapper v2 (RFC 1833 section 3) that knows only this gateway: NFS v3 and MOUNT v1-v3 over
//! TCP on the NFS port, and itself. SET and UNSET answer false; CALLIT is not offered.

use crate::rpc::{self, AcceptStatus};
use crate::xdr::{XdrError, XdrReader, XdrWrite};

pub const PROGRAM: u32 = 100_000;
pub const VERSION: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

pub mod procedure {
    pub const NULL: u32 = 0;
    pub const SET: u32 = 1;
    pub const UNSET: u32 = 2;
    pub const GETPORT: u32 = 3;
    pub const DUMP: u32 = 4;
}

/// What the portmapper advertises.
#[derive(Clone, Copy, Debug)]
pub struct PortmapTable {
    pub nfs_port: u16,
    pub portmap_tcp_port: Option<u16>,
    pub portmap_udp_port: Option<u16>,
}

/// (program, version, protocol, port)
type Mapping = (u32, u32, u32, u32);

impl PortmapTable {
    fn mappings(&self) -> Vec<Mapping> {
        let nfs = u32::from(self.nfs_port);
        let mut mappings = Vec::with_capacity(8);
        if let Some(port) = self.portmap_tcp_port {
            mappings.push((PROGRAM, VERSION, IPPROTO_TCP, u32::from(port)));
        }
        if let Some(port) = self.portmap_udp_port {
            mappings.push((PROGRAM, VERSION, IPPROTO_UDP, u32::from(port)));
        }
        mappings.push((crate::NFS_PROGRAM, crate::NFS_VERSION, IPPROTO_TCP, nfs));
        for version in crate::mount::VERSION_LOW..=crate::mount::VERSION_HIGH {
            mappings.push((crate::mount::PROGRAM, version, IPPROTO_TCP, nfs));
        }
        mappings
    }

    /// GETPORT: the port, or 0 when not registered (the version of the mapping must match).
    pub fn port_of(&self, program: u32, version: u32, protocol: u32) -> u32 {
        self.mappings()
            .into_iter()
            .find(|&(p, v, proto, _)| p == program && v == version && proto == protocol)
            .map_or(0, |(_, _, _, port)| port)
    }
}

fn decode_mapping(arguments: &[u8]) -> Result<Mapping, XdrError> {
    let mut r = XdrReader::new(arguments);
    Ok((r.u32()?, r.u32()?, r.u32()?, r.u32()?))
}

/// Decodes a portmap call's arguments without executing it (for the fuzz target).
pub fn decode(procedure_number: u32, arguments: &[u8]) -> Result<(), XdrError> {
    match procedure_number {
        procedure::SET | procedure::UNSET | procedure::GETPORT => decode_mapping(arguments).map(|_| ()),
        procedure::NULL | procedure::DUMP => Ok(()),
        _ => Err(XdrError),
    }
}

/// Answers one portmap call; `header` has been decoded by [`rpc::decode_call`]. Returns the whole
/// reply record.
pub fn execute(table: &PortmapTable, header: &rpc::CallHeader, arguments: &[u8]) -> Vec<u8> {
    let xid = header.xid;
    if header.version != VERSION {
        return rpc::accepted_reply(xid, AcceptStatus::ProgramMismatch { low: VERSION, high: VERSION });
    }
    if !matches!(header.procedure, procedure::NULL..=procedure::DUMP) {
        return rpc::accepted_reply(xid, AcceptStatus::ProcedureUnavailable);
    }
    let mut out = Vec::with_capacity(rpc::SUCCESS_HEADER_BYTES + 200);
    match header.procedure {
        procedure::SET | procedure::UNSET => {
            if decode_mapping(arguments).is_err() {
                return rpc::accepted_reply(xid, AcceptStatus::GarbageArguments);
            }
            rpc::begin_accepted_reply(&mut out, xid, AcceptStatus::Success);
            out.put_bool(false);
        }
        procedure::GETPORT => {
            let Ok((program, version, protocol, _)) = decode_mapping(arguments) else {
                return rpc::accepted_reply(xid, AcceptStatus::GarbageArguments);
            };
            rpc::begin_accepted_reply(&mut out, xid, AcceptStatus::Success);
            out.put_u32(table.port_of(program, version, protocol));
        }
        procedure::DUMP => {
            rpc::begin_accepted_reply(&mut out, xid, AcceptStatus::Success);
            for (program, version, protocol, port) in table.mappings() {
                out.put_bool(true);
                out.put_u32(program);
                out.put_u32(version);
                out.put_u32(protocol);
                out.put_u32(port);
            }
            out.put_bool(false);
        }
        _ => rpc::begin_accepted_reply(&mut out, xid, AcceptStatus::Success),
    }
    rpc::finish_record(&mut out, 0);
    out
}
