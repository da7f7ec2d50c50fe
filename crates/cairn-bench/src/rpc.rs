//! A minimal blocking ONC RPC client over one TCP connection (RFC 5531): record marking, xids,
//! AUTH_UNIX credentials (uid 0), and pipelining (many calls sent before their replies are read).

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Cursor, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nfs3_types::rpc::{
    RPC_VERSION_2, accept_stat_data, auth_unix, call_body, fragment_header, msg_body, opaque_auth,
    reply_body, rpc_msg,
};
use nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

/// Largest reply record accepted: a READDIRPLUS reply is at most about 1 MiB, a READ 1 MiB.
const RECORD_BYTES_MAX: usize = 16 << 20;

/// Largest pipelining depth the benchmark asks for.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// One decoded reply: the xid and the procedure's result bytes.
pub struct Reply {
    pub xid: u32,
    record: Vec<u8>,
    result_offset: usize,
}

impl Reply {
    /// Decodes the procedure's result (what follows the accepted-reply header).
    pub fn decode<T: Unpack>(&self) -> Result<T> {
        let mut cursor = Cursor::new(&self.record[self.result_offset..]);
        let (value, _) = T::unpack(&mut cursor).context("decoding an RPC result")?;
        Ok(value)
    }
}

pub struct RpcClient {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    program: u32,
    version: u32,
    xid_next: u32,
    credential: opaque_auth<'static>,
    send_buffer: Vec<u8>,
}

impl RpcClient {
    /// Wraps a connected stream; every call goes to `program`/`version`.
    pub fn new(stream: TcpStream, program: u32, version: u32) -> Result<Self> {
        stream.set_nodelay(true)?;
        // A server that stops answering must not hang the benchmark forever.
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let reader = BufReader::with_capacity(1 << 20, stream.try_clone()?);
        let writer = BufWriter::with_capacity(256 << 10, stream);
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::borrowed(b"cairn-bench"),
            uid: 0,
            gid: 0,
            gids: vec![0],
        });
        // Start xids somewhere other than 0 so that replies to another client are not mistaken
        // for ours if a server ever mixed connections up.
        let xid_next = std::process::id().wrapping_mul(0x9E37_79B9);
        Ok(Self { reader, writer, program, version, xid_next, credential, send_buffer: Vec::new() })
    }

    /// Encodes one call into the send buffer (not flushed) and returns its xid.
    pub fn send<A: Pack>(&mut self, procedure: u32, args: &A) -> Result<u32> {
        let xid = self.xid_next;
        self.xid_next = self.xid_next.wrapping_add(1);
        let message = rpc_msg {
            xid,
            body: msg_body::CALL(call_body {
                rpcvers: RPC_VERSION_2,
                prog: self.program,
                vers: self.version,
                proc: procedure,
                cred: self.credential.borrow(),
                verf: opaque_auth::default(),
            }),
        };
        let buffer = &mut self.send_buffer;
        buffer.clear();
        buffer.extend_from_slice(&[0; 4]);
        message.pack(buffer)?;
        args.pack(buffer)?;
        let length = u32::try_from(buffer.len() - 4).context("call too large")?;
        buffer[..4].copy_from_slice(&fragment_header::new(length, true).into_xdr_buf());
        self.writer.write_all(buffer)?;
        Ok(xid)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush()?;
        Ok(())
    }

    /// Reads one reply record and checks that the call was accepted and succeeded at the RPC
    /// level (the procedure's own status is in the result).
    pub fn receive(&mut self) -> Result<Reply> {
        let mut record = Vec::new();
        loop {
            let mut header = [0u8; 4];
            self.reader.read_exact(&mut header).context("reading an RPC record header")?;
            let header = fragment_header::from(header);
            let length = header.fragment_length() as usize;
            ensure!(record.len() + length <= RECORD_BYTES_MAX, "RPC record larger than {RECORD_BYTES_MAX}");
            let start = record.len();
            record.resize(start + length, 0);
            self.reader.read_exact(&mut record[start..]).context("reading an RPC record")?;
            if header.eof() {
                break;
            }
        }
        let mut cursor = Cursor::new(&record[..]);
        let (message, _) = rpc_msg::unpack(&mut cursor).context("decoding an RPC reply header")?;
        let result_offset = usize::try_from(cursor.position())?;
        let xid = message.xid;
        match message.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted)) => match accepted.reply_data {
                accept_stat_data::SUCCESS => {}
                other => bail!("RPC call xid {xid} not executed: {other:?}"),
            },
            msg_body::REPLY(reply_body::MSG_DENIED(denied)) => bail!("RPC call xid {xid} denied: {denied:?}"),
            msg_body::CALL(_) => bail!("got an RPC call where a reply was expected"),
        }
        Ok(Reply { xid, record, result_offset })
    }

    /// One call, waiting for its reply.
    pub fn call<A: Pack, R: Unpack>(&mut self, procedure: u32, args: &A) -> Result<R> {
        let xid = self.send(procedure, args)?;
        self.flush()?;
        let reply = self.receive()?;
        ensure!(reply.xid == xid, "reply xid {} does not match call xid {xid}", reply.xid);
        reply.decode()
    }

    /// Issues `count` calls of `procedure` with at most `depth` outstanding on this connection;
    /// `make_args(i)` builds call i and `on_reply(i, reply)` checks its reply (replies may come
    /// back in any order). Returns the time from the first send to the last reply.
    pub fn pipeline<A: Pack>(
        &mut self,
        procedure: u32,
        count: usize,
        depth: usize,
        mut make_args: impl FnMut(usize) -> A,
        mut on_reply: impl FnMut(usize, &Reply) -> Result<()>,
    ) -> Result<Duration> {
        ensure!((1..=REQUESTS_IN_FLIGHT_MAX).contains(&depth), "depth {depth} out of range");
        let mut in_flight: HashMap<u32, usize> = HashMap::with_capacity(depth);
        let mut sent = 0;
        let mut done = 0;
        let start = Instant::now();
        while done < count {
            while in_flight.len() < depth && sent < count {
                let xid = self.send(procedure, &make_args(sent))?;
                in_flight.insert(xid, sent);
                sent += 1;
            }
            self.flush()?;
            let reply = self.receive()?;
            let Some(index) = in_flight.remove(&reply.xid) else {
                bail!("reply with unknown xid {}", reply.xid);
            };
            on_reply(index, &reply)?;
            done += 1;
        }
        Ok(start.elapsed())
    }
}
