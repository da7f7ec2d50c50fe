//! The simulated network the turmoil tests share (`sim.rs`, `restart.rs`): member host names,
//! their addresses, and a [`Dialer`] over turmoil's TCP.

use cairn_coord::proto::{BoxStream, DialFuture, Dialer};

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
