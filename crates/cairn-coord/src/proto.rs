//! The messages a coord member answers, on its one port: Raft traffic between members, requests
//! forwarded from a follower to the leader, and client requests. They ride on `cairn-rpc` frames
//! (MessagePack with named fields); new variants go at the end.

use std::future::Future;
use std::io;
use std::pin::Pin;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::api::{Command, CommandResult, CoordError, SessionId, Stat, WatchEvent, WatchKind, Zxid};
use crate::raft::{NodeId, TypeConfig};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum ReadOp {
    Get,
    Exists,
    Children,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ReadOk {
    Data {
        #[serde(with = "crate::api::bytes")]
        data: Vec<u8>,
        stat: Stat,
    },
    Exists {
        stat: Option<Stat>,
    },
    Children {
        names: Vec<String>,
        stat: Stat,
    },
}

/// A watch a client re-registers after reconnecting. `existed` says whether the znode existed when
/// the data watch was set (a data watch on a missing znode waits for its creation).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub path: String,
    pub kind: WatchKind,
    pub existed: bool,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    // Between members.
    RaftAppend(AppendEntriesRequest<TypeConfig>),
    RaftVote(VoteRequest<NodeId>),
    RaftSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower hands a client's write to the leader.
    Forward {
        command: Command,
    },
    /// A follower passes on the sessions its clients pinged.
    Touch {
        sessions: Vec<SessionId>,
    },
    /// A follower asks the leader for a linearizable read point (ReadIndex).
    ReadIndex,

    // From clients.
    /// Which member is this, and who leads.
    Hello,
    Write {
        command: Command,
    },
    Ping {
        session: SessionId,
    },
    Read {
        op: ReadOp,
        path: String,
        watch: bool,
        min_zxid: Zxid,
        linearizable: bool,
    },
    /// Re-registers watches after a reconnect; those whose znode changed after `last_zxid` fire at
    /// once.
    SetWatches {
        watches: Vec<WatchSpec>,
        last_zxid: Zxid,
    },
    Status,
    AddMember {
        id: NodeId,
        address: String,
    },
    RemoveMember {
        id: NodeId,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub address: String,
    /// Leader, Follower, Candidate or Learner.
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// Voters, by id and address.
    pub voters: Vec<(NodeId, String)>,
    /// Learners (non-voting members catching up).
    pub learners: Vec<(NodeId, String)>,
    pub znodes: usize,
    pub sessions: usize,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Response {
    RaftAppend(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    RaftVote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    RaftSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Written {
        result: CommandResult,
        zxid: Zxid,
    },
    Welcome {
        id: NodeId,
        leader: Option<(NodeId, String)>,
    },
    Pong(Result<(), CoordError>),
    Read {
        result: Result<ReadOk, CoordError>,
        zxid: Zxid,
    },
    ReadIndex(Result<Zxid, CoordError>),
    Status(MemberStatus),
    Done(Result<(), CoordError>),
    /// The request could not be handled at all.
    Failed(CoordError),
}

/// Pushed by a member to a client connection: a watch fired.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WatchFired {
    pub kind: WatchKind,
    pub event: WatchEvent,
}

pub type Client = cairn_rpc::Client<Request, Response, WatchFired>;

/// A byte stream a member or client talks over: TCP in production, simulated TCP in tests.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Box<dyn Stream>;
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// Opens connections to members.
pub trait Dialer: Send + Sync + 'static {
    fn dial<'a>(&'a self, address: &'a str) -> DialFuture<'a>;
}

/// Dials over TCP with `TCP_NODELAY`.
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial<'a>(&'a self, address: &'a str) -> DialFuture<'a> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}
