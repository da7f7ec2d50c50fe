//! The Wardens' records in coord, which any CLDB reads for `cairn service` and the console: each
//! node's Warden publishes its services at `NODES/<node>` (ephemeral), takes operators' requests
//! from `REQUESTS/<node>/`, and raises its alarms under `ALARMS`, apart from the ones the CLDB
//! master computes (which it rewrites from its own tables).

use std::time::Duration;

use cairn_coord::api::CreateMode;
use cairn_coord::client::CoordClient;

use crate::proto::{Alarm, CldbError, NodeServices, ServiceRequest};
use crate::store::{create_if_missing, decode, read_dir, to_json, unavailable};

/// Where every node's Warden publishes its services.
pub const NODES: &str = "/cairn/warden/nodes";
/// Operators' requests to a node's Warden: `REQUESTS/<node>/request-<sequence>`.
pub const REQUESTS: &str = "/cairn/warden/requests";
/// The Wardens' alarms, by [`Alarm::key`].
pub const ALARMS: &str = "/cairn/warden/alarms";
/// How long a `ServiceCommand` waits for the Warden to take the request (under the clients'
/// per-call timeout).
pub const SERVICE_COMMAND_WAIT: Duration = Duration::from_secs(4);

/// Every published node, by name.
pub async fn list(client: &CoordClient) -> Result<Vec<NodeServices>, CldbError> {
    let mut nodes: Vec<NodeServices> = read_records(client, NODES).await?;
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// The Wardens' alarms.
pub async fn alarms(client: &CoordClient) -> Result<Vec<Alarm>, CldbError> {
    read_records(client, ALARMS).await
}

/// The JSON records under `dir` (none if it does not exist yet); one that does not decode is
/// left out with a warning.
async fn read_records<T: serde::de::DeserializeOwned>(
    client: &CoordClient,
    dir: &str,
) -> Result<Vec<T>, CldbError> {
    if client.exists(dir).await.map_err(unavailable)?.is_none() {
        return Ok(Vec::new());
    }
    let mut records = Vec::new();
    for (name, data) in read_dir(client, dir).await? {
        match decode::<T>(&format!("{dir}/{name}"), &data) {
            Ok(record) => records.push(record),
            Err(error) => tracing::warn!("{error}"),
        }
    }
    Ok(records)
}

/// Queues a request for the node's Warden and waits until it took it; answers the node's
/// services as then published.
pub async fn command(client: &CoordClient, request: ServiceRequest) -> Result<Vec<NodeServices>, CldbError> {
    let published = list(client).await?;
    let Some(node) = published.iter().find(|n| n.node == request.node) else {
        return Err(CldbError::InvalidSpec(format!(
            "no Warden runs on node {:?} (nodes with one: {})",
            request.node,
            published.iter().map(|n| n.node.as_str()).collect::<Vec<_>>().join(", ")
        )));
    };
    if !node.services.iter().any(|s| s.name == request.service) {
        return Err(CldbError::InvalidSpec(format!(
            "node {} has no service {:?} (it has {})",
            request.node,
            request.service,
            node.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let dir = format!("{REQUESTS}/{}", request.node);
    for path in ["/cairn", "/cairn/warden", REQUESTS, dir.as_str()] {
        create_if_missing(client, path, b"").await.map_err(unavailable)?;
    }
    let (created, _) = client
        .create(&format!("{dir}/request-"), &to_json(&request), CreateMode::PersistentSequential)
        .await
        .map_err(unavailable)?;
    let deadline = tokio::time::Instant::now() + SERVICE_COMMAND_WAIT;
    loop {
        if client.exists(&created).await.map_err(unavailable)?.is_none() {
            let nodes = list(client).await?;
            return Ok(nodes.into_iter().filter(|n| n.node == request.node).collect());
        }
        if tokio::time::Instant::now() >= deadline {
            // Not taken: withdraw it, so that it does not act long after the operator gave up.
            let _ = client.delete(&created, None).await;
            return Err(CldbError::Unavailable(format!(
                "the Warden of node {} did not take the request within {SERVICE_COMMAND_WAIT:?}",
                request.node
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
