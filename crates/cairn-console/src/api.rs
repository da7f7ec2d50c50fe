//! The JSON REST API under `/api/`. Request and response bodies are the CLDB's message types
//! (`cairn_cldb::proto`: `VolumeSpec`, `VolumeChange`, `VolumeInfo`, `NodeInfo`, `VipPoolSpec`,
//! `VipPoolEdit`, `VipPool`, `VipInfo`, `Alarm`, ...), serialized by serde as they are; only the
//! summaries that have no CLDB type ([`ClusterSummary`], [`NfsGateway`]) are defined here.
//!
//! Errors are `{"error": "..."}` with the status chosen in one place, [`ApiError`]'s `From`
//! impls: 400 bad input, 401 not logged in, 403 read-only user, 404 unknown, 409 already exists or
//! not enough nodes, 503 CLDB or coord unreachable.

use std::net::Ipv4Addr;

use axum::extract::{FromRequest, Path, Query, Request, State as Ctx};
use axum::http::header::{SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cairn_cldb::proto::{
    Alarm, ContainerInfo, NodeInfo, NodeServices, NodeState, ServiceRequest, VipInfo, VipPool, VipPoolEdit,
    VipPoolSpec, VolumeChange, VolumeInfo, VolumeSpec,
};
use cairn_cldb::{CldbClient, CldbError};
use cairn_coord::api::CoordError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::State;
use crate::auth::{ApiUser, clear_cookie, session_cookie, session_token};
use crate::users::{NewUser, Role, UserChange, UserView, UsersError};

/// An API failure: an HTTP status and a sentence, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not logged in: POST /api/login, or send HTTP Basic credentials",
        )
    }
}

impl From<CldbError> for ApiError {
    fn from(error: CldbError) -> ApiError {
        let status = match &error {
            CldbError::NoSuchVolume { .. } | CldbError::NoSuchContainer { .. } => StatusCode::NOT_FOUND,
            CldbError::InvalidSpec(_) => StatusCode::BAD_REQUEST,
            CldbError::VolumeExists { .. } | CldbError::NotEnoughNodes { .. } => StatusCode::CONFLICT,
            CldbError::NotMaster { .. } | CldbError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CldbError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<UsersError> for ApiError {
    fn from(error: UsersError) -> ApiError {
        let status = match &error {
            UsersError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            UsersError::Invalid(_) => StatusCode::BAD_REQUEST,
            UsersError::NoSuchUser(_) => StatusCode::NOT_FOUND,
            UsersError::UserExists(_) => StatusCode::CONFLICT,
            UsersError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<CoordError> for ApiError {
    fn from(error: CoordError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("coord: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(WWW_AUTHENTICATE, "Basic realm=\"cairn\"")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// A JSON body whose rejection is an [`ApiError`] (400 with serde's reason), not axum's text.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            // Unreadable or mistyped JSON is bad input (400), whatever axum's own status;
            // a missing content type (415) or an oversized body (413) keep theirs.
            Err(rejection) => {
                let status = match rejection.status() {
                    status @ (StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::PAYLOAD_TOO_LARGE) => status,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(ApiError::new(status, rejection.body_text()))
            }
        }
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router() -> Router<State> {
    Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/whoami", get(whoami))
        .route("/cluster", get(cluster))
        .route("/nodes", get(nodes))
        .route("/services", get(services).post(service_command))
        .route("/volumes", get(volumes).post(create_volume))
        .route("/volumes/{name}", get(volume).patch(modify_volume).delete(remove_volume))
        .route("/containers", get(containers))
        .route("/containers/{id}", get(container))
        .route("/nfs", get(nfs_gateways))
        .route("/vips", get(vips))
        .route("/vips/{vip}/move", post(move_vip))
        .route("/vip-pools", get(vip_pools).post(add_vip_pool))
        .route("/vip-pools/{start}", axum::routing::patch(edit_vip_pool).delete(remove_vip_pool))
        .route("/alarms", get(alarms))
        .route("/users", get(list_users).post(add_user))
        .route("/users/{name}", put(change_user).delete(remove_user))
        .fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such API route (see docs/operations.md, \"Web console\")")
}

// ------------------------------------------------------------------------------------------
// Login

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WhoAmI {
    pub user: String,
    pub role: Role,
}

async fn login(Ctx(state): Ctx<State>, JsonBody(request): JsonBody<LoginRequest>) -> Response {
    match state.users.verify(&request.name, &request.password).await {
        Ok(Some(role)) => {
            let token = state.sessions.open(&request.name, role);
            ([(SET_COOKIE, session_cookie(&token))], Json(WhoAmI { user: request.name, role }))
                .into_response()
        }
        Ok(None) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name or password").into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

async fn logout(Ctx(state): Ctx<State>, headers: HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        state.sessions.close(&token);
    }
    ([(SET_COOKIE, clear_cookie())], Json(serde_json::json!({}))).into_response()
}

async fn whoami(ApiUser(user): ApiUser) -> Json<WhoAmI> {
    Json(WhoAmI { user: user.user, role: user.role })
}

// ------------------------------------------------------------------------------------------
// Reads

/// The dashboard's figures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterSummary {
    /// Hexadecimal, as `cairn up` prints it.
    pub cluster_id: String,
    /// The CLDB master's RPC address, if one is known.
    pub cldb_master: Option<String>,
    pub nodes_up: usize,
    pub nodes_down: usize,
    pub volumes: usize,
    /// Bytes used by every volume (one copy), from the volume masters' last reports.
    pub used_bytes: u64,
    /// Sum of the volumes' hard quotas (volumes without one count for nothing).
    pub quota_bytes: u64,
    /// The disks of the nodes up, as their file servers last reported them (none known: `None`).
    pub capacity: Option<Capacity>,
    pub alarms: usize,
}

/// The sum of the disks the nodes up report. Nodes that share a file system (several nodes of
/// `cairn up` on one machine) each count it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// How many nodes' disks are in the sum.
    pub nodes: usize,
}

/// The nodes as the CLDB master sees them: the last heartbeats and the disks are in its memory,
/// and another CLDB answers from coord without them. Any CLDB's answer when no master does.
pub async fn nodes_from_master(cldb: &CldbClient) -> Result<Vec<NodeInfo>, CldbError> {
    if let Ok(status) = cldb.status().await
        && !status.is_master
        && let Some(master) = status.master
        && let Ok(nodes) = CldbClient::new(vec![master]).list_nodes().await
    {
        return Ok(nodes);
    }
    cldb.list_nodes().await
}

pub async fn summary(state: &State) -> Result<ClusterSummary, ApiError> {
    let cldb = &state.config.cldb;
    let (status, nodes, volumes, alarms) =
        tokio::try_join!(cldb.status(), nodes_from_master(cldb), cldb.list_volumes(), cldb.list_alarms())?;
    let nodes_up = nodes.iter().filter(|n| n.record.state == NodeState::Up).count();
    let live: Vec<&VolumeInfo> = volumes.iter().filter(|v| !v.volume.removed).collect();
    Ok(ClusterSummary {
        cluster_id: format!("{:016x}", status.cluster_id),
        cldb_master: if status.is_master { Some(status.address) } else { status.master },
        nodes_up,
        nodes_down: nodes.len() - nodes_up,
        volumes: live.len(),
        used_bytes: live.iter().filter_map(|v| v.size_bytes).sum(),
        quota_bytes: live.iter().filter_map(|v| v.volume.quota_bytes).sum(),
        capacity: capacity(&nodes),
        alarms: alarms.len(),
    })
}

/// The sum of the disks of the nodes up that reported one.
fn capacity(nodes: &[NodeInfo]) -> Option<Capacity> {
    let disks: Vec<_> =
        nodes.iter().filter(|n| n.record.state == NodeState::Up).filter_map(|n| n.disk).collect();
    (!disks.is_empty()).then(|| Capacity {
        total_bytes: disks.iter().map(|d| d.total_bytes).sum(),
        free_bytes: disks.iter().map(|d| d.free_bytes).sum(),
        nodes: disks.len(),
    })
}

async fn cluster(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<ClusterSummary> {
    Ok(Json(summary(&state).await?))
}

async fn nodes(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<Vec<NodeInfo>> {
    Ok(Json(nodes_from_master(&state.config.cldb).await?))
}

/// Every node's services as its Warden published them.
async fn services(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<Vec<NodeServices>> {
    Ok(Json(state.config.cldb.list_services().await?))
}

async fn volumes(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<Vec<VolumeInfo>> {
    Ok(Json(state.config.cldb.list_volumes().await?))
}

async fn volume(Ctx(state): Ctx<State>, _user: ApiUser, Path(name): Path<String>) -> ApiResult<VolumeInfo> {
    Ok(Json(state.config.cldb.volume_info(&name).await?))
}

#[derive(Deserialize)]
struct ContainerFilter {
    volume: Option<String>,
}

async fn containers(
    Ctx(state): Ctx<State>,
    _user: ApiUser,
    Query(filter): Query<ContainerFilter>,
) -> ApiResult<Vec<ContainerInfo>> {
    let mut list = state.config.cldb.list_containers().await?;
    if let Some(volume) = filter.volume {
        list.retain(|c| c.volume_name == volume);
    }
    Ok(Json(list))
}

async fn container(
    Ctx(state): Ctx<State>,
    _user: ApiUser,
    Path(id): Path<String>,
) -> ApiResult<ContainerInfo> {
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request(format!("{id:?} is not a container id")))?;
    Ok(Json(state.config.cldb.container_info(id).await?))
}

/// One node's NFS gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NfsGateway {
    pub node: String,
    /// Where it serves NFS (host:port).
    pub nfs_address: String,
    /// The node's state (a gateway is served by its node's process).
    pub state: NodeState,
    pub last_heartbeat_ms: u64,
    /// The VIPs granted to the node.
    pub vips: Vec<Ipv4Addr>,
}

pub async fn gateways(state: &State) -> Result<Vec<NfsGateway>, ApiError> {
    let cldb = &state.config.cldb;
    let nodes = nodes_from_master(cldb).await?;
    // Only the CLDB master knows the grants; without one the gateways are still listed.
    let vips = cldb.list_vips().await.unwrap_or_default();
    Ok(nodes
        .into_iter()
        .filter(|n| n.record.services.iter().any(|s| s == "nfs") || !n.record.nfs_address.is_empty())
        .map(|n| NfsGateway {
            vips: vips.iter().filter(|v| v.node == n.record.name).map(|v| v.vip).collect(),
            node: n.record.name,
            nfs_address: n.record.nfs_address,
            state: n.record.state,
            last_heartbeat_ms: n.last_heartbeat_ms,
        })
        .collect())
}

async fn nfs_gateways(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<Vec<NfsGateway>> {
    Ok(Json(gateways(&state).await?))
}

async fn vips(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<Vec<VipInfo>> {
    Ok(Json(state.config.cldb.list_vips().await?))
}

/// Every VIP pool, in address order.
pub async fn pools(state: &State) -> Result<Vec<VipPool>, ApiError> {
    Ok(state.config.cldb.list_vip_pools().await?)
}

async fn vip_pools(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<Vec<VipPool>> {
    Ok(Json(pools(&state).await?))
}

async fn alarms(Ctx(state): Ctx<State>, _user: ApiUser) -> ApiResult<Vec<Alarm>> {
    Ok(Json(state.config.cldb.list_alarms().await?))
}

// ------------------------------------------------------------------------------------------
// Changes (admin only)

async fn create_volume(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    JsonBody(spec): JsonBody<VolumeSpec>,
) -> Result<(StatusCode, Json<VolumeInfo>), ApiError> {
    user.require_admin()?;
    let info = state.config.cldb.create_volume(spec).await?;
    tracing::info!(user = user.user, volume = info.volume.name, "console: volume created");
    Ok((StatusCode::CREATED, Json(info)))
}

/// The body is a `VolumeChange` whose `name` may be left out (the path names the volume).
async fn modify_volume(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
    JsonBody(mut body): JsonBody<serde_json::Value>,
) -> ApiResult<VolumeInfo> {
    user.require_admin()?;
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object (a VolumeChange)"));
    };
    fields.insert("name".to_owned(), serde_json::Value::String(name));
    let change: VolumeChange = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("not a VolumeChange: {e}")))?;
    Ok(Json(state.config.cldb.modify_volume(change).await?))
}

async fn remove_volume(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user.require_admin()?;
    let id = state.config.cldb.remove_volume(&name).await?;
    tracing::info!(user = user.user, volume = name, "console: volume removed");
    Ok(Json(serde_json::json!({ "id": id })))
}

fn parse_ip(text: &str) -> Result<Ipv4Addr, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("{text:?} is not an IPv4 address")))
}

async fn add_vip_pool(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    JsonBody(spec): JsonBody<VipPoolSpec>,
) -> Result<(StatusCode, Json<VipPool>), ApiError> {
    user.require_admin()?;
    let pool = state.config.cldb.add_vip_pool(spec).await?;
    tracing::info!(user = user.user, start = %pool.start, end = %pool.end, "console: VIP pool added");
    Ok((StatusCode::CREATED, Json(pool)))
}

/// The body is a `VipPoolEdit`; its `start` may be left out (the path names the pool).
async fn edit_vip_pool(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    Path(start): Path<String>,
    JsonBody(mut edit): JsonBody<VipPoolEdit>,
) -> ApiResult<VipPool> {
    user.require_admin()?;
    edit.start = Some(parse_ip(&start)?);
    Ok(Json(state.config.cldb.edit_vip_pool(edit).await?))
}

async fn remove_vip_pool(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    Path(start): Path<String>,
) -> ApiResult<VipPool> {
    user.require_admin()?;
    let pool = state.config.cldb.remove_vip_pool(parse_ip(&start)?).await?;
    tracing::info!(user = user.user, start = %pool.start, "console: VIP pool removed");
    Ok(Json(pool))
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MoveVip {
    pub to_mac: String,
}

async fn move_vip(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    Path(vip): Path<String>,
    JsonBody(request): JsonBody<MoveVip>,
) -> ApiResult<Vec<VipInfo>> {
    user.require_admin()?;
    Ok(Json(state.config.cldb.move_vip(parse_ip(&vip)?, &request.to_mac).await?))
}

/// The body is a `ServiceRequest` (node, service, action); the answer is every node's services
/// once the node's Warden has taken the request (it acts on it within a tick or two).
async fn service_command(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    JsonBody(request): JsonBody<ServiceRequest>,
) -> ApiResult<Vec<NodeServices>> {
    user.require_admin()?;
    let nodes = state.config.cldb.service_command(request.clone()).await?;
    tracing::info!(
        user = user.user,
        node = request.node,
        service = request.service,
        action = ?request.action,
        "console: service request"
    );
    Ok(Json(nodes))
}

// ------------------------------------------------------------------------------------------
// Users (admin only, listing included)

async fn list_users(Ctx(state): Ctx<State>, ApiUser(user): ApiUser) -> ApiResult<Vec<UserView>> {
    user.require_admin()?;
    Ok(Json(state.users.list().await?.iter().map(UserView::from).collect()))
}

async fn add_user(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    JsonBody(new): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    user.require_admin()?;
    let view = state.users.add(new).await?;
    tracing::info!(user = user.user, added = view.name, role = view.role.as_str(), "console: user added");
    Ok((StatusCode::CREATED, Json(view)))
}

async fn change_user(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
    JsonBody(change): JsonBody<UserChange>,
) -> ApiResult<UserView> {
    user.require_admin()?;
    let view = state.users.change(&name, change).await?;
    state.sessions.close_user(&name);
    Ok(Json(view))
}

async fn remove_user(
    Ctx(state): Ctx<State>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user.require_admin()?;
    state.users.remove(&name).await?;
    state.sessions.close_user(&name);
    Ok(Json(serde_json::json!({})))
}
