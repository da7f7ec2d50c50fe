//! Connecting `cairn fs` and `cairn distcp` to a cluster's namespace
//! ([`cairn_client::namespace`]: volumes at their mount paths, paths resolved to FIDs).

use std::time::Duration;

pub(crate) use cairn_client::namespace::Mount;
use cairn_client::namespace::Namespace;
use cairn_store::Caller;

/// Longest wait for a volume's master when a volume is first opened: the locator's client
/// follows masters for as long as the retry window of ClusterFs.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the CLDBs at `addresses` for the volumes.
pub(crate) fn connect(
    addresses: Vec<String>,
    timeout: Duration,
    caller: Caller,
) -> anyhow::Result<Namespace> {
    let cldb = crate::admin::client(addresses.clone(), timeout);
    let locator = crate::admin::client(addresses.clone(), timeout.max(OPEN_TIMEOUT));
    Namespace::connect(cldb, locator, caller).map_err(|error| {
        anyhow::anyhow!("cannot list the volumes (asked the CLDBs {}): {error}", addresses.join(","))
    })
}
