//! What the turmoil tests share (`sim.rs`, `restart.rs`): member host names, their addresses, a
//! [`Dialer`] over turmoil's TCP, and a member's life on its simulated host.

use std::path::PathBuf;
use std::sync::Arc;

use cairn_coord::member::{Member, MemberConfig};
use cairn_coord::proto::{BoxStream, DialFuture, Dialer};
use cairn_coord::store::FlushMode;

/// The port every simulated member listens on.
pub const PORT: u16 = 7000;

/// The simulated host of member `id`.
pub fn host_name(id: u64) -> String {
    format!("m{id}")
}

/// Member `id`'s address.
pub fn address(id: u64) -> String {
    format!("m{id}:{PORT}")
}

/// Connects over turmoil's simulated TCP.
pub struct SimDialer;

impl Dialer for SimDialer {
    fn dial<'a>(&'a self, address: &'a str) -> DialFuture<'a> {
        Box::pin(async move {
            let (host, port) = address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| std::io::Error::other(format!("bad address {address:?}")))?;
            let stream = turmoil::net::TcpStream::connect((host, port)).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// Member `id` of `members` on its simulated host: listens, starts, hands the member to `started`
/// (where the test keeps its handles), then serves connections until the host is crashed.
pub async fn run_member(
    id: u64,
    members: &[u64],
    cluster_name: &str,
    snapshot_every_entries: u64,
    data_dir: PathBuf,
    started: impl FnOnce(&Member),
) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let config = MemberConfig {
        id,
        data_dir,
        address: address(id),
        initial_members: members.iter().map(|m| (*m, address(*m))).collect(),
        cluster_name: cluster_name.to_owned(),
        flush: FlushMode::Inline,
        snapshot_every_entries,
    };
    let member = Member::start(config, Arc::new(SimDialer))
        .await
        .map_err(|e| format!("member {id} did not start: {e}"))?;
    started(&member);
    let handler = member.handler();
    loop {
        let (stream, peer) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = cairn_rpc::serve_connection(stream, peer.to_string(), handler).await;
        });
    }
}
