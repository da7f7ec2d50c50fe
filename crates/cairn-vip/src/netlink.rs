//! The rtnetlink requests: list links and IPv4 addresses, bring the holder up, add (or renew),
//! and delete a leased /32. Every request is bounded by [`NETLINK_TIMEOUT`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, CacheInfo};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkUnspec};
use tokio::task::JoinHandle;

use crate::{NETLINK_TIMEOUT, VipError};

/// One rtnetlink connection; its background task is ended when this is dropped.
pub(crate) struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An IPv4 address as the kernel lists it.
pub(crate) struct AddressEntry {
    pub(crate) index: u32,
    pub(crate) address: Ipv4Addr,
    pub(crate) prefix_len: u8,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket (in the calling thread's network namespace) and spawns its
    /// connection task on the current tokio runtime.
    pub(crate) fn open() -> Result<Netlink, VipError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| VipError::Netlink {
            action: "cannot open a netlink socket".to_owned(),
            source,
        })?;
        let task = tokio::spawn(connection);
        Ok(Netlink { handle, task })
    }

    pub(crate) async fn links(&self) -> Result<Vec<LinkMessage>, VipError> {
        let request = self.handle.link().get().execute().try_collect::<Vec<_>>();
        bounded("cannot list the network interfaces", request).await
    }

    /// The IPv4 addresses of every interface, or of interface `index` only.
    pub(crate) async fn ipv4_addresses(&self, index: Option<u32>) -> Result<Vec<AddressEntry>, VipError> {
        let mut request = self.handle.address().get();
        request.message_mut().header.family = AddressFamily::Inet;
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let messages =
            bounded("cannot list the IPv4 addresses", request.execute().try_collect::<Vec<AddressMessage>>())
                .await?;
        Ok(messages.iter().filter_map(address_entry).collect())
    }

    /// Brings interface `index` up and sets its alias.
    pub(crate) async fn set_up(&self, index: u32, alias: &str, name: &str) -> Result<(), VipError> {
        let message = LinkUnspec::new_with_index(index).up().alias(alias).build();
        let action = format!("cannot bring the VIP device {name} up");
        bounded(&action, self.handle.link().set(message).execute()).await
    }

    /// Adds `address/32` to interface `index` with both lifetimes `lifetime_s`, or, if it is
    /// there already, replaces its lifetimes (NLM_F_CREATE | NLM_F_REPLACE).
    pub(crate) async fn add_leased(
        &self,
        index: u32,
        address: Ipv4Addr,
        lifetime_s: u32,
        name: &str,
    ) -> Result<(), VipError> {
        let mut request = self.handle.address().add(index, IpAddr::V4(address), 32).replace();
        let mut cache_info = CacheInfo::default();
        cache_info.ifa_valid = lifetime_s;
        cache_info.ifa_preferred = lifetime_s;
        request.message_mut().attributes.push(AddressAttribute::CacheInfo(cache_info));
        let action = format!("cannot add {address}/32 to the VIP device {name}");
        bounded(&action, request.execute()).await
    }

    /// Deletes `address/prefix_len` from interface `index`; an absent address is success.
    pub(crate) async fn delete(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
        name: &str,
    ) -> Result<(), VipError> {
        let message = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(address, prefix_len)
            .build();
        let action = format!("cannot remove {address}/{prefix_len} from the VIP device {name}");
        match bounded(&action, self.handle.address().del(message).execute()).await {
            Err(VipError::Netlink { source, .. }) if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                Ok(())
            }
            other => other,
        }
    }
}

/// Awaits a netlink request for at most [`NETLINK_TIMEOUT`] and names the failed action.
async fn bounded<T>(
    action: &str,
    request: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, VipError> {
    match tokio::time::timeout(NETLINK_TIMEOUT, request).await {
        Err(_) => Err(VipError::NetlinkTimeout { action: action.to_owned(), timeout: NETLINK_TIMEOUT }),
        Ok(Err(error)) => Err(VipError::Netlink { action: action.to_owned(), source: io_error(error) }),
        Ok(Ok(value)) => Ok(value),
    }
}

/// The kernel's errno when there is one (so that callers can match on it), else the message.
fn io_error(error: rtnetlink::Error) -> io::Error {
    match error {
        rtnetlink::Error::NetlinkError(message) if message.raw_code() != 0 => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn address_entry(message: &AddressMessage) -> Option<AddressEntry> {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    Some(AddressEntry {
        index: message.header.index,
        address: local.or(address)?,
        prefix_len: message.header.prefix_len,
    })
}
