//! One client type over both systems, so that every test runs the same logic against each: a
//! session on a list of members, and `set`, `get` and `create` of persistent znodes.

use std::time::Duration;

use anyhow::{Result, anyhow};
use cairn_coord::api::{CoordError, CreateMode};
use cairn_coord::client::{ClientOptions, CoordClient};
use zookeeper_client as zk;

use super::cluster::System;

/// Both clients ask for this session timeout.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub enum Client {
    Cairn(CoordClient),
    ZooKeeper(zk::Client),
}

impl Client {
    /// Opens a session on one of `members` (host:port). Cairn's client tries them in order,
    /// ZooKeeper's in a random order.
    pub async fn connect(system: System, members: &[String]) -> Result<Self> {
        match system {
            System::Cairn => {
                let options =
                    ClientOptions { session_timeout: Some(SESSION_TIMEOUT), ..ClientOptions::default() };
                let client = CoordClient::connect(members, options)
                    .await
                    .map_err(|e| anyhow!("connecting to cairn coord {}: {e}", members.join(",")))?;
                Ok(Self::Cairn(client))
            }
            System::ZooKeeper => {
                let cluster = members.join(",");
                let connect = zk::Client::connector().with_session_timeout(SESSION_TIMEOUT).connect(&cluster);
                // The connector retries for up to the session timeout; bound it anyway.
                let client = tokio::time::timeout(SESSION_TIMEOUT * 2, connect)
                    .await
                    .map_err(|_| anyhow!("connecting to zookeeper {} timed out", members.join(",")))?
                    .map_err(|e| anyhow!("connecting to zookeeper {}: {e}", members.join(",")))?;
                Ok(Self::ZooKeeper(client))
            }
        }
    }

    /// Replaces a znode's data, whatever its version; returns once the write is committed.
    pub async fn set(&self, path: &str, data: &[u8]) -> Result<()> {
        match self {
            Self::Cairn(client) => {
                client.set(path, data, None).await.map(drop).map_err(|e| anyhow!("set {path}: {e}"))
            }
            Self::ZooKeeper(client) => {
                client.set_data(path, data, None).await.map(drop).map_err(|e| anyhow!("set {path}: {e}"))
            }
        }
    }

    /// Reads a znode's data from the member the client is connected to; returns its length.
    pub async fn get(&self, path: &str) -> Result<usize> {
        match self {
            Self::Cairn(client) => {
                client.get(path).await.map(|(data, _)| data.len()).map_err(|e| anyhow!("get {path}: {e}"))
            }
            Self::ZooKeeper(client) => client
                .get_data(path)
                .await
                .map(|(data, _)| data.len())
                .map_err(|e| anyhow!("get {path}: {e}")),
        }
    }

    /// Creates a persistent znode with `data`, or sets its data if it exists.
    pub async fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        let created = match self {
            Self::Cairn(client) => match client.create(path, data, CreateMode::Persistent).await {
                Ok(_) => true,
                Err(CoordError::NodeExists { .. }) => false,
                Err(e) => return Err(anyhow!("create {path}: {e}")),
            },
            Self::ZooKeeper(client) => {
                let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                match client.create(path, data, &options).await {
                    Ok(_) => true,
                    Err(zk::Error::NodeExists) => false,
                    Err(e) => return Err(anyhow!("create {path}: {e}")),
                }
            }
        };
        if !created {
            self.set(path, data).await?;
        }
        Ok(())
    }

    /// The member this client is connected to, when the client says (Cairn only).
    pub fn connected_to(&self) -> Option<String> {
        match self {
            Self::Cairn(client) => client.connected_to(),
            Self::ZooKeeper(_) => None,
        }
    }

    /// Ends the session (Cairn: a CloseSession write; ZooKeeper: closed when the last clone goes).
    pub async fn close(self) {
        match self {
            Self::Cairn(client) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
            }
            Self::ZooKeeper(client) => drop(client),
        }
    }
}
