//! `CldbClient`: what gateways, fileservers and the CLI use to talk to the CLDBs.
//!
//! It is given the addresses of every CLDB. Writes and heartbeats go to the master: the client
//! remembers the last one that answered and follows `NotMaster` hints (a hint may name an address
//! that is not in the list). Reads go to the last CLDB that answered, whichever it is. Connections
//! are opened lazily, kept, and replaced when they break. Every call has an overall deadline.
//!
//! Requests that are safe to repeat (reads, heartbeats) are retried on another CLDB after a
//! broken connection, and so is ModifyVolume (it sets values: applied twice, it changes nothing
//! more). CreateVolume and RemoveVolume are not: if the connection breaks after one was sent,
//! the call fails with `Unavailable` and the caller must look before retrying.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::proto::{
    Alarm, CldbError, CldbStatus, ContainerInfo, Heartbeat, HeartbeatReply, NodeInfo, NodeServices, Request,
    Response, RpcClient, ServiceRequest, VipAgentReport, VipGrant, VipInfo, VipPool, VipPoolEdit,
    VipPoolSpec, VolumeChange, VolumeInfo, VolumeLocation, VolumeSpec,
};
use std::net::Ipv4Addr;

/// Pause after a pass over every CLDB without an answer, or while a master is being elected.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct CldbClientOptions {
    /// Longest a call may take, retries and redirections included.
    pub request_timeout: Duration,
    /// Longest to open one connection (handshake included).
    pub connect_timeout: Duration,
    /// Longest to wait for one answer.
    pub call_timeout: Duration,
}

impl Default for CldbClientOptions {
    fn default() -> Self {
        CldbClientOptions {
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
        }
    }
}

struct Inner {
    addresses: Vec<String>,
    options: CldbClientOptions,
    connections: Mutex<HashMap<String, RpcClient>>,
    /// The last CLDB known to be master.
    master: Mutex<Option<String>>,
    /// The last CLDB that answered anything.
    last: Mutex<Option<String>>,
    next: AtomicUsize,
}

/// A client of the CLDB service. Cheap to clone.
#[derive(Clone)]
pub struct CldbClient {
    inner: Arc<Inner>,
}

impl CldbClient {
    /// A client of the CLDBs at `addresses` (host:port). Nothing is connected until the first call.
    pub fn new(addresses: Vec<String>) -> CldbClient {
        Self::with_options(addresses, CldbClientOptions::default())
    }

    pub fn with_options(addresses: Vec<String>, options: CldbClientOptions) -> CldbClient {
        CldbClient {
            inner: Arc::new(Inner {
                addresses,
                options,
                connections: Mutex::new(HashMap::new()),
                master: Mutex::new(None),
                last: Mutex::new(None),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The CLDB that last answered as master.
    pub fn master(&self) -> Option<String> {
        self.inner.master.lock().clone()
    }

    async fn connection(&self, address: &str) -> Result<RpcClient, CldbError> {
        if let Some(c) = self.inner.connections.lock().get(address)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let c = RpcClient::connect_tcp(address, self.inner.options.connect_timeout, None)
            .await
            .map_err(|e| CldbError::Unavailable(format!("{address}: {e}")))?;
        self.inner.connections.lock().insert(address.to_owned(), c.clone());
        Ok(c)
    }

    fn drop_connection(&self, address: &str) {
        if let Some(c) = self.inner.connections.lock().remove(address) {
            c.close();
        }
    }

    /// The next address in round-robin order.
    fn next_address(&self) -> Option<String> {
        let n = self.inner.addresses.len();
        if n == 0 {
            return None;
        }
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        Some(self.inner.addresses[i].clone())
    }

    /// Sends one request to the right CLDB: the master for writes and heartbeats, any for reads.
    pub async fn call(&self, req: Request) -> Result<Response, CldbError> {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.request_timeout;
        let needs_master = req.needs_master();
        let repeatable = !matches!(req, Request::CreateVolume(_) | Request::RemoveVolume { .. });
        let mut target = if needs_master {
            self.master()
        } else {
            self.inner.last.lock().clone().or_else(|| self.master())
        };
        let mut last_error = CldbError::Unavailable("no CLDB address given".into());
        let mut misses = 0usize;
        let mut redirects = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last_error);
            }
            if misses >= self.inner.addresses.len().max(1) {
                misses = 0;
                tokio::time::sleep(RETRY_PAUSE.min(deadline - now)).await;
                continue;
            }
            let Some(address) = target.take().or_else(|| self.next_address()) else {
                return Err(last_error);
            };
            let conn = match self.connection(&address).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("CLDB {address}: {e}");
                    last_error = e;
                    misses += 1;
                    continue;
                }
            };
            let ttl = options.call_timeout.min(deadline.saturating_duration_since(Instant::now()));
            match conn.call(req.clone(), ttl).await {
                Ok(Ok(resp)) => {
                    *self.inner.last.lock() = Some(address.clone());
                    if needs_master {
                        *self.inner.master.lock() = Some(address);
                    }
                    return Ok(resp);
                }
                Ok(Err(CldbError::NotMaster { master })) => {
                    {
                        let mut known = self.inner.master.lock();
                        if known.as_deref() == Some(address.as_str()) {
                            *known = None;
                        }
                    }
                    last_error = CldbError::NotMaster { master: master.clone() };
                    redirects += 1;
                    match master.filter(|m| *m != address) {
                        // Two CLDBs pointing at each other (a stale lock read) must not spin.
                        Some(hint) if redirects <= 2 * self.inner.addresses.len().max(1) => {
                            target = Some(hint)
                        }
                        Some(hint) => {
                            redirects = 0;
                            target = Some(hint);
                            misses = self.inner.addresses.len().max(1);
                        }
                        // No master known: an election is under way, or coord is unreachable.
                        None => misses += 1,
                    }
                }
                Ok(Err(e @ CldbError::Unavailable(_))) if repeatable => {
                    last_error = e;
                    misses += 1;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    self.drop_connection(&address);
                    if !repeatable {
                        return Err(CldbError::Unavailable(format!(
                            "{address}: {e}; the request may or may not have been applied"
                        )));
                    }
                    last_error = CldbError::Unavailable(format!("{address}: {e}"));
                    misses += 1;
                }
            }
        }
    }

    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatReply, CldbError> {
        match self.call(Request::Heartbeat(hb)).await? {
            Response::Heartbeat(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn add_vip_pool(&self, spec: VipPoolSpec) -> Result<VipPool, CldbError> {
        match self.call(Request::AddVipPool(spec)).await? {
            Response::VipPool(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn edit_vip_pool(&self, edit: VipPoolEdit) -> Result<VipPool, CldbError> {
        match self.call(Request::EditVipPool(edit)).await? {
            Response::VipPool(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn remove_vip_pool(&self, start: Ipv4Addr) -> Result<VipPool, CldbError> {
        match self.call(Request::RemoveVipPool { start }).await? {
            Response::VipPool(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn move_vip(&self, vip: Ipv4Addr, to_mac: &str) -> Result<Vec<VipInfo>, CldbError> {
        match self.call(Request::MoveVip { vip, to_mac: to_mac.to_owned() }).await? {
            Response::Vips(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_vips(&self) -> Result<Vec<VipInfo>, CldbError> {
        match self.call(Request::ListVips).await? {
            Response::Vips(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// A VIP agent's report; the answer may be held back up to `report.wait_ms`.
    pub async fn vip_agent(&self, report: VipAgentReport) -> Result<VipGrant, CldbError> {
        match self.call(Request::VipAgent(report)).await? {
            Response::VipGrant(g) => Ok(g),
            other => Err(unexpected(other)),
        }
    }

    pub async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeInfo, CldbError> {
        match self.call(Request::CreateVolume(spec)).await? {
            Response::Volume(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a volume; returns its id.
    pub async fn remove_volume(&self, name: &str) -> Result<u32, CldbError> {
        match self.call(Request::RemoveVolume { name: name.to_owned() }).await? {
            Response::Removed { id } => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Changes a volume's quotas or replication; returns the new record.
    pub async fn modify_volume(&self, change: VolumeChange) -> Result<VolumeInfo, CldbError> {
        match self.call(Request::ModifyVolume(change)).await? {
            Response::Volume(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, CldbError> {
        match self.call(Request::ListVolumes).await? {
            Response::Volumes(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn volume_info(&self, name: &str) -> Result<VolumeInfo, CldbError> {
        match self.call(Request::VolumeInfo { name: name.to_owned() }).await? {
            Response::Volume(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn lookup_volume(&self, id: u32) -> Result<VolumeLocation, CldbError> {
        match self.call(Request::LookupVolume { id }).await? {
            Response::Location(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>, CldbError> {
        match self.call(Request::ListNodes).await? {
            Response::Nodes(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, CldbError> {
        match self.call(Request::ListContainers).await? {
            Response::Containers(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    pub async fn container_info(&self, id: u64) -> Result<ContainerInfo, CldbError> {
        match self.call(Request::ContainerInfo { id }).await? {
            Response::Container(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_alarms(&self) -> Result<Vec<Alarm>, CldbError> {
        match self.call(Request::ListAlarms).await? {
            Response::Alarms(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Every VIP pool, in address order.
    pub async fn list_vip_pools(&self) -> Result<Vec<VipPool>, CldbError> {
        match self.call(Request::ListVipPools).await? {
            Response::VipPools(pools) => Ok(pools),
            other => Err(unexpected(other)),
        }
    }

    /// Every node's services, as their Wardens published them.
    pub async fn list_services(&self) -> Result<Vec<NodeServices>, CldbError> {
        match self.call(Request::ListServices).await? {
            Response::Services(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    /// Has a node's Warden start, stop or restart a service; answers that node's services once
    /// the Warden took the request.
    pub async fn service_command(&self, request: ServiceRequest) -> Result<Vec<NodeServices>, CldbError> {
        match self.call(Request::ServiceCommand(request)).await? {
            Response::Services(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    /// The status of whichever CLDB answers.
    pub async fn status(&self) -> Result<CldbStatus, CldbError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The status of the CLDB at `address`, without retries.
    pub async fn status_of(&self, address: &str) -> Result<CldbStatus, CldbError> {
        let conn = self.connection(address).await?;
        match conn.call(Request::Status, self.inner.options.call_timeout).await {
            Ok(Ok(Response::Status(s))) => Ok(s),
            Ok(Ok(other)) => Err(unexpected(other)),
            Ok(Err(e)) => Err(e),
            Err(e) => {
                self.drop_connection(address);
                Err(CldbError::Unavailable(format!("{address}: {e}")))
            }
        }
    }
}

fn unexpected(resp: Response) -> CldbError {
    CldbError::Unavailable(format!("unexpected answer: {resp:?}"))
}
