//! A WebHDFS-compatible REST API, `/webhdfs/v1/<path>?op=...`, over the cluster namespace
//! ([`cairn_client::namespace`]: every volume at its mount path), as Hadoop's WebHDFS clients
//! (HdfsCLI, fsspec, `hadoop fs -ls webhdfs://...`) expect it.
//!
//! - Ops: LISTSTATUS, GETFILESTATUS, GETCONTENTSUMMARY, GETFILECHECKSUM (COMPOSITE-CRC32C: the
//!   CRC32C of the whole file), GETFILEBLOCKLOCATIONS, OPEN (`offset`, `length`) on GET; MKDIRS,
//!   CREATE (`overwrite`, `permission`), RENAME (`destination`), SETPERMISSION, SETOWNER on PUT;
//!   APPEND on POST; DELETE (`recursive`) on DELETE.
//! - CREATE and APPEND take two steps, as with a name node: the request without `data=true`
//!   answers 307 with a `Location` to this same node (the `Host` the client used) plus
//!   `&data=true`; that second request carries the bytes, streamed in 1 MiB writes.
//! - Identity: a console login (session or HTTP Basic) acts as root if admin, as the anonymous
//!   user if read-only; otherwise `user.name=NAME` (Hadoop's pseudo authentication) acts as that
//!   user of this machine's /etc/passwd (its uid, primary gid and the groups listing NAME); without
//!   `user.name`, the anonymous user, uid and gid 65534 (Hadoop's `dr.who`). Bad credentials are
//!   refused. The names are read with the mount table, not per request.
//! - Paths above mount points that no volume holds (`/` without a root volume, `/var` above
//!   `/var/cairn/configuration`) are directories: they list the volumes below them.
//! - Errors are Hadoop's `{"RemoteException": {...}}` with its status codes.
//!
//! The file calls block ([`ClusterFs`]), so each op runs on a blocking thread.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State as Ctx};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use cairn_client::namespace::{Names, Namespace, Node, PathError, normalize, virtual_directory_attributes};
use cairn_store::{
    Attributes, Caller, CreateHow, FileKind, FileSystem, SetAttributes, Stability, StoreError,
};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::State;
use crate::auth::{AuthFailure, authenticate};
use crate::users::Role;

/// The URL prefix.
pub const PREFIX: &str = "/webhdfs/v1";
/// Bytes of one READ or WRITE.
const IO_BYTES: usize = cairn_types::limits::IO_SIZE_BYTES_MAX as usize;
/// How long the list of volumes (and the names of /etc/passwd and /etc/group) is reused before
/// it is read again.
const NAMESPACE_TTL: Duration = Duration::from_secs(5);
/// Files a recursive DELETE removes at a time.
const DELETE_FILES_PARALLEL: usize = 8;
/// The anonymous user (Hadoop's `dr.who`): `nobody`.
const ANONYMOUS_ID: u32 = 65534;
/// The block size reported: a volume's chunk.
const BLOCK_BYTES: u64 = cairn_types::limits::CHUNK_SIZE_BYTES_DEFAULT;

/// The namespace the WebHDFS requests share: its mount table and names are refreshed every
/// [`NAMESPACE_TTL`]; its connections and opened volumes live as long as the console.
#[derive(Default)]
pub struct NamespaceCache(Mutex<Option<(Instant, Arc<Namespace>)>>);

pub fn router() -> Router<State> {
    Router::new()
        .route(PREFIX, any(handle))
        .route(&format!("{PREFIX}/"), any(handle))
        .route(&format!("{PREFIX}/{{*path}}"), any(handle))
}

/// A WebHDFS failure: Hadoop's exception class and a message.
#[derive(Debug)]
pub struct HdfsError {
    status: StatusCode,
    exception: &'static str,
    java_class: &'static str,
    message: String,
}

impl HdfsError {
    fn new(status: StatusCode, exception: &'static str, java_class: &'static str, message: String) -> Self {
        HdfsError { status, exception, java_class, message }
    }

    fn illegal(message: impl Into<String>) -> Self {
        HdfsError::new(
            StatusCode::BAD_REQUEST,
            "IllegalArgumentException",
            "java.lang.IllegalArgumentException",
            message.into(),
        )
    }

    fn not_found(message: impl Into<String>) -> Self {
        HdfsError::new(
            StatusCode::NOT_FOUND,
            "FileNotFoundException",
            "java.io.FileNotFoundException",
            message.into(),
        )
    }

    fn access(message: impl Into<String>) -> Self {
        HdfsError::new(
            StatusCode::FORBIDDEN,
            "AccessControlException",
            "org.apache.hadoop.security.AccessControlException",
            message.into(),
        )
    }

    fn io(message: impl Into<String>) -> Self {
        HdfsError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "IOException",
            "java.io.IOException",
            message.into(),
        )
    }

    /// The one mapping from store errors to Hadoop's exceptions.
    fn store(path: &Path, error: &StoreError) -> Self {
        let message = format!("{}: {}", path.display(), cairn_client::namespace::store_error_text(error));
        match error {
            StoreError::NotFound | StoreError::Stale(_) => HdfsError::not_found(message),
            StoreError::Exists => HdfsError::new(
                StatusCode::FORBIDDEN,
                "FileAlreadyExistsException",
                "org.apache.hadoop.fs.FileAlreadyExistsException",
                message,
            ),
            StoreError::AccessDenied | StoreError::NotOwner => HdfsError::access(message),
            StoreError::NotDirectory => HdfsError::new(
                StatusCode::FORBIDDEN,
                "ParentNotDirectoryException",
                "org.apache.hadoop.fs.ParentNotDirectoryException",
                message,
            ),
            StoreError::NotEmpty => HdfsError::new(
                StatusCode::FORBIDDEN,
                "PathIsNotEmptyDirectoryException",
                "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
                message,
            ),
            StoreError::Invalid(_) | StoreError::NameTooLong => HdfsError::illegal(message),
            _ => HdfsError::io(message),
        }
    }
}

impl From<PathError> for HdfsError {
    fn from(error: PathError) -> Self {
        if error.is_mount_point() {
            return HdfsError::access(error.to_string());
        }
        match error.store_error() {
            Some(store) => {
                let mut mapped = HdfsError::store(Path::new(""), store);
                mapped.message = error.to_string();
                mapped
            }
            None => HdfsError::io(error.to_string()),
        }
    }
}

impl IntoResponse for HdfsError {
    fn into_response(self) -> Response {
        let body = json!({"RemoteException": {
            "exception": self.exception,
            "javaClassName": self.java_class,
            "message": self.message,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

type HdfsResult<T> = Result<T, HdfsError>;

/// One request, as the blocking side sees it.
struct Call {
    namespace: Namespace,
    path: PathBuf,
    params: HashMap<String, String>,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str, default: bool) -> HdfsResult<bool> {
        match self.param(name) {
            None | Some("") => Ok(default),
            Some(text) if text.eq_ignore_ascii_case("true") => Ok(true),
            Some(text) if text.eq_ignore_ascii_case("false") => Ok(false),
            Some(text) => Err(HdfsError::illegal(format!("{name}={text}: expected true or false"))),
        }
    }

    fn number(&self, name: &str) -> HdfsResult<Option<u64>> {
        match self.param(name) {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| HdfsError::illegal(format!("{name}={text}: expected a non-negative number"))),
        }
    }

    fn permission(&self, default: u32) -> HdfsResult<u32> {
        match self.param("permission") {
            None | Some("") => Ok(default),
            Some(text) => u32::from_str_radix(text, 8)
                .ok()
                .filter(|mode| *mode <= 0o1777)
                .ok_or_else(|| HdfsError::illegal(format!("permission={text}: expected octal 0 to 1777"))),
        }
    }

    fn lookup(&self, path: &Path) -> HdfsResult<Node> {
        Ok(self.namespace.lookup(path)?)
    }
}

async fn handle(
    Ctx(state): Ctx<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    match serve(state, method, uri, headers, params, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn serve(
    state: State,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    params: HashMap<String, String>,
    body: Body,
) -> HdfsResult<Response> {
    let raw = uri.path().strip_prefix(PREFIX).unwrap_or("/");
    let path = normalize(Path::new(OsStr::from_bytes(&percent_decode(raw))));
    let op = params.get("op").map(|op| op.to_ascii_uppercase()).unwrap_or_default();
    let shared = namespace(&state).await?;
    let caller = caller_of(&state, &headers, &params, shared.names()).await?;
    let namespace = shared.as_caller(caller);
    let call = Call { namespace, path, params };
    let data = call.flag("data", false)?;
    match (method, op.as_str()) {
        (Method::GET, "GETFILESTATUS") => blocking(call, file_status).await,
        (Method::GET, "LISTSTATUS") => blocking(call, list_status).await,
        (Method::GET, "GETCONTENTSUMMARY") => blocking(call, content_summary).await,
        (Method::GET, "GETFILECHECKSUM") => blocking(call, checksum).await,
        (Method::GET, "GETFILEBLOCKLOCATIONS") => block_locations(&state, call).await,
        (Method::GET, "OPEN") => open(call).await,
        (Method::PUT, "MKDIRS") => blocking(call, mkdirs).await,
        (Method::PUT, "RENAME") => blocking(call, rename).await,
        (Method::PUT, "SETPERMISSION") => blocking(call, set_permission).await,
        (Method::PUT, "SETOWNER") => blocking(call, set_owner).await,
        (Method::DELETE, "DELETE") => blocking(call, delete).await,
        (Method::PUT, "CREATE") | (Method::POST, "APPEND") if !data => Ok(redirect(&state, &uri, &headers)),
        (Method::PUT, "CREATE") => write(call, body, true).await,
        (Method::POST, "APPEND") => write(call, body, false).await,
        (method, "") => Err(HdfsError::illegal(format!("{method}: no op given"))),
        (method, op) => {
            Err(HdfsError::illegal(format!("Invalid value for webhdfs parameter \"op\": {method} {op}")))
        }
    }
}

/// The caller: a console login first, else `user.name`, else anonymous.
async fn caller_of(
    state: &State,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    names: &Names,
) -> HdfsResult<Caller> {
    let anonymous = Caller { uid: ANONYMOUS_ID, gid: ANONYMOUS_ID, groups: Vec::new() };
    let has_credentials = headers.contains_key(axum::http::header::AUTHORIZATION)
        || crate::auth::session_token(headers).is_some();
    if has_credentials {
        return match authenticate(state, headers).await {
            Ok(principal) if principal.role == Role::Admin => Ok(Caller::root()),
            Ok(_) => Ok(anonymous),
            Err(AuthFailure::NotLoggedIn) => Err(HdfsError::access("bad credentials or expired session")),
            Err(AuthFailure::Unavailable(why)) => {
                Err(HdfsError::io(format!("cannot check the credentials: {why}")))
            }
        };
    }
    match params.get("user.name").map(String::as_str) {
        None | Some("") => Ok(anonymous),
        // A name, never a number or NAME:GROUP: the user must exist on this node.
        Some(name) if name.contains(':') || name.parse::<u32>().is_ok() => {
            Err(HdfsError::access(format!("user.name={name}: give a user name")))
        }
        Some(name) => names.caller_for(name).map_err(HdfsError::access),
    }
}

/// The shared namespace: connected on first use, its mount table and names read again once it
/// is older than [`NAMESPACE_TTL`] (connections and opened volumes kept).
async fn namespace(state: &State) -> HdfsResult<Arc<Namespace>> {
    let previous = state.webhdfs.0.lock().clone();
    if let Some((at, namespace)) = &previous
        && at.elapsed() < NAMESPACE_TTL
    {
        return Ok(namespace.clone());
    }
    let handle = tokio::runtime::Handle::current();
    let cldb = state.config.cldb.clone();
    // Both block (a CLDB request, /etc/passwd and /etc/group read): not on an async worker.
    let connected = tokio::task::spawn_blocking(move || match previous {
        Some((_, namespace)) => namespace.refreshed(),
        None => Namespace::connect_on(handle, cldb.clone(), cldb, Caller::root()),
    })
    .await
    .map_err(|error| HdfsError::io(error.to_string()))?
    .map_err(|error| HdfsError::io(format!("cannot list the volumes: {error}")))?;
    let namespace = Arc::new(connected);
    *state.webhdfs.0.lock() = Some((Instant::now(), namespace.clone()));
    Ok(namespace)
}

/// Runs an op that answers JSON on a blocking thread.
async fn blocking(call: Call, op: fn(&Call) -> HdfsResult<Value>) -> HdfsResult<Response> {
    let value = tokio::task::spawn_blocking(move || op(&call))
        .await
        .map_err(|error| HdfsError::io(error.to_string()))??;
    if value.is_null() {
        return Ok(StatusCode::OK.into_response());
    }
    Ok(axum::Json(value).into_response())
}

/// The first step of CREATE and APPEND: 307 to this node with `data=true`.
fn redirect(state: &State, uri: &Uri, headers: &HeaderMap) -> Response {
    let host = headers
        .get(HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.listen.to_string());
    let query = uri.query().map(|query| format!("{query}&")).unwrap_or_default();
    let location = format!("http://{host}{}?{query}data=true", uri.path());
    (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, location), (CONTENT_LENGTH, "0".to_owned())]).into_response()
}

// ------------------------------------------------------------------------------------------
// Status

/// Hadoop's FileStatus of one object.
fn status_json(names: &Names, suffix: &[u8], attributes: &Attributes, replication: u32) -> Value {
    let kind = match attributes.kind {
        FileKind::Directory => "DIRECTORY",
        FileKind::Symlink => "SYMLINK",
        _ => "FILE",
    };
    let file = kind == "FILE";
    let millis =
        |t: cairn_store::Timestamp| u64::from(t.seconds) * 1000 + u64::from(t.nanoseconds) / 1_000_000;
    json!({
        "accessTime": if file { millis(attributes.atime) } else { 0 },
        "blockSize": if file { BLOCK_BYTES } else { 0 },
        "childrenNum": 0,
        "fileId": attributes.fileid,
        "group": names.group(attributes.gid),
        "length": if file { attributes.size_bytes } else { 0 },
        "modificationTime": millis(attributes.mtime),
        "owner": names.user(attributes.uid),
        "pathSuffix": String::from_utf8_lossy(suffix),
        "permission": format!("{:o}", attributes.mode & 0o7777),
        "replication": if file { replication } else { 0 },
        "storagePolicy": 0,
        "type": kind,
    })
}

/// The path's attributes and its volume's replication; a virtual directory has made-up
/// attributes (and no replication: directories show 0 anyway).
fn path_status(call: &Call) -> HdfsResult<(Attributes, u32)> {
    Ok(match call.namespace.lookup_or_virtual(&call.path)? {
        Some(node) => (node.attributes, node.mount.replication),
        None => (virtual_directory_attributes(), 0),
    })
}

fn file_status(call: &Call) -> HdfsResult<Value> {
    let (attributes, replication) = path_status(call)?;
    let status = status_json(call.namespace.names(), b"", &attributes, replication);
    Ok(json!({ "FileStatus": status }))
}

fn list_status(call: &Call) -> HdfsResult<Value> {
    let (attributes, replication) = path_status(call)?;
    let names = call.namespace.names();
    if attributes.kind != FileKind::Directory {
        let status = status_json(names, b"", &attributes, replication);
        return Ok(json!({ "FileStatuses": { "FileStatus": [status] } }));
    }
    // Volumes mounted below show as their root directories.
    let statuses: Vec<Value> = call
        .namespace
        .list_directory(&call.path)?
        .iter()
        .map(|entry| {
            let replication = entry.mount.as_ref().map_or(0, |mount| mount.replication);
            status_json(names, &entry.name, &entry.attributes, replication)
        })
        .collect();
    Ok(json!({ "FileStatuses": { "FileStatus": statuses } }))
}

fn content_summary(call: &Call) -> HdfsResult<Value> {
    let node = call.lookup(&call.path)?;
    let (mut directories, mut files, mut length, mut consumed) = (0u64, 0u64, 0u64, 0u64);
    let mut pending = vec![(call.path.clone(), node.fid, node.attributes)];
    while let Some((path, fid, attributes)) = pending.pop() {
        if attributes.kind != FileKind::Directory {
            files += 1;
            length += attributes.size_bytes;
            consumed += attributes.size_bytes * u64::from(node.mount.replication.max(1));
            continue;
        }
        directories += 1;
        let children = call.namespace.list(&node.fs, fid).map_err(|error| HdfsError::store(&path, &error))?;
        for (name, child, attributes) in children {
            pending.push((path.join(OsStr::from_bytes(&name)), child, attributes));
        }
    }
    Ok(json!({ "ContentSummary": {
        "directoryCount": directories,
        "fileCount": files,
        "length": length,
        "quota": -1,
        "spaceConsumed": consumed,
        "spaceQuota": -1,
    }}))
}

/// A regular file, or FileNotFoundException as Hadoop answers for a directory.
fn regular_file(call: &Call) -> HdfsResult<Node> {
    let node = call.lookup(&call.path)?;
    if node.attributes.kind != FileKind::Regular {
        return Err(HdfsError::not_found(format!("Path is not a file: {}", call.path.display())));
    }
    Ok(node)
}

fn checksum(call: &Call) -> HdfsResult<Value> {
    let node = regular_file(call)?;
    let mut crc = 0u32;
    let mut offset = 0u64;
    loop {
        let read = node
            .fs
            .read(&call.namespace.caller, node.fid, offset, IO_BYTES as u32)
            .map_err(|error| HdfsError::store(&call.path, &error))?;
        crc = crc32c::crc32c_append(crc, &read.data);
        offset += read.data.len() as u64;
        if read.eof || read.data.is_empty() {
            break;
        }
    }
    Ok(json!({ "FileChecksum": {
        "algorithm": "COMPOSITE-CRC32C",
        "bytes": format!("{crc:08x}"),
        "length": 4,
    }}))
}

async fn block_locations(state: &State, call: Call) -> HdfsResult<Response> {
    let path = call.path.clone();
    let offset = call.number("offset")?.unwrap_or(0);
    let length = call.number("length")?;
    let (node, call) = tokio::task::spawn_blocking(move || regular_file(&call).map(|node| (node, call)))
        .await
        .map_err(|error| HdfsError::io(error.to_string()))??;
    let location =
        state.config.cldb.lookup_volume(node.mount.id).await.map_err(|error| {
            HdfsError::io(format!("{}: cannot locate its volume: {error}", path.display()))
        })?;
    drop(call);
    let size = node.attributes.size_bytes;
    let end = length.map_or(size, |length| offset.saturating_add(length).min(size));
    let hosts: Vec<String> = location
        .replicas
        .iter()
        .map(|replica| {
            let address = &replica.fileserver_address;
            address.rsplit_once(':').map_or(address.as_str(), |(host, _)| host).to_owned()
        })
        .collect();
    let names: Vec<&str> = location.replicas.iter().map(|r| r.fileserver_address.as_str()).collect();
    let topology: Vec<String> = names.iter().map(|name| format!("/default-rack/{name}")).collect();
    let mut blocks = Vec::new();
    let mut start = offset - offset % BLOCK_BYTES;
    while start < end {
        blocks.push(json!({
            "cachedHosts": [],
            "corrupt": false,
            "hosts": hosts,
            "length": (size - start).min(BLOCK_BYTES),
            "names": names,
            "offset": start,
            "storageTypes": vec!["DISK"; names.len()],
            "topologyPaths": topology,
        }));
        start += BLOCK_BYTES;
    }
    Ok(axum::Json(json!({ "BlockLocations": { "BlockLocation": blocks } })).into_response())
}

// ------------------------------------------------------------------------------------------
// Reading and writing

async fn open(call: Call) -> HdfsResult<Response> {
    let offset = call.number("offset")?.unwrap_or(0);
    let length = call.number("length")?;
    let (node, call) = tokio::task::spawn_blocking(move || regular_file(&call).map(|node| (node, call)))
        .await
        .map_err(|error| HdfsError::io(error.to_string()))??;
    let size = node.attributes.size_bytes;
    if offset > size {
        return Err(HdfsError::io(format!("Offset={offset} out of the range [0, {size}]")));
    }
    let end = length.map_or(size, |length| offset.saturating_add(length).min(size));
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut at = offset;
        while at < end {
            let want = (end - at).min(IO_BYTES as u64) as u32;
            let piece = match node.fs.read(&call.namespace.caller, node.fid, at, want) {
                Ok(read) if read.data.is_empty() => break,
                Ok(read) => Ok(read.data),
                Err(error) => Err(std::io::Error::other(format!("{}: {error}", call.path.display()))),
            };
            let failed = piece.is_err();
            if let Ok(data) = &piece {
                at += data.len() as u64;
            }
            if sender.blocking_send(piece).is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|piece| (piece, receiver))
    });
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/octet-stream".to_owned()), (CONTENT_LENGTH, (end - offset).to_string())],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The second step of CREATE (`create`) or APPEND: the body, written in 1 MiB pieces.
async fn write(call: Call, body: Body, create: bool) -> HdfsResult<Response> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let writer = tokio::task::spawn_blocking(move || -> HdfsResult<()> {
        let node = if create { create_file(&call)? } else { regular_file(&call)? };
        let caller = &call.namespace.caller;
        let mut offset = node.attributes.size_bytes;
        let start = offset;
        while let Some(piece) = receiver.blocking_recv() {
            node.fs
                .write(caller, node.fid, offset, &piece, Stability::Unstable)
                .map_err(|error| HdfsError::store(&call.path, &error))?;
            offset += piece.len() as u64;
        }
        let count = u32::try_from(offset - start).unwrap_or(0);
        node.fs.commit(node.fid, start, count).map_err(|error| HdfsError::store(&call.path, &error))?;
        Ok(())
    });
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::with_capacity(IO_BYTES);
    let mut body_error = None;
    // The writer gone (it failed): stop reading the body, its error is the answer.
    'body: while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                let mut bytes = &bytes[..];
                while !bytes.is_empty() {
                    let take = (IO_BYTES - buffer.len()).min(bytes.len());
                    buffer.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if buffer.len() == IO_BYTES {
                        let full = std::mem::replace(&mut buffer, Vec::with_capacity(IO_BYTES));
                        if sender.send(full).await.is_err() {
                            break 'body;
                        }
                    }
                }
            }
            Err(error) => {
                body_error = Some(error.to_string());
                break;
            }
        }
    }
    if body_error.is_none() && !buffer.is_empty() {
        let _ = sender.send(buffer).await;
    }
    drop(sender);
    writer.await.map_err(|error| HdfsError::io(error.to_string()))??;
    if let Some(error) = body_error {
        return Err(HdfsError::io(format!("reading the request body: {error}")));
    }
    Ok(if create { StatusCode::CREATED.into_response() } else { StatusCode::OK.into_response() })
}

/// CREATE's file: parents made as needed, an existing file emptied if `overwrite=true`.
fn create_file(call: &Call) -> HdfsResult<Node> {
    let overwrite = call.flag("overwrite", false)?;
    let mode = call.permission(0o644)?;
    if let Some(existing) = call.namespace.lookup_optional(&call.path)? {
        if existing.attributes.kind == FileKind::Directory || !overwrite {
            return Err(HdfsError::store(&call.path, &StoreError::Exists));
        }
        let changes = SetAttributes { size_bytes: Some(0), mode: Some(mode), ..SetAttributes::default() };
        existing
            .fs
            .setattr(&call.namespace.caller, existing.fid, changes, None)
            .map_err(|error| HdfsError::store(&call.path, &error))?;
        return call.lookup(&call.path);
    }
    if let Some(parent) = call.path.parent() {
        call.namespace.make_directories(parent, 0o755)?;
    }
    let (parent, name) = call.namespace.parent(&call.path)?;
    let attributes = SetAttributes { mode: Some(mode), ..SetAttributes::default() };
    parent
        .fs
        .create(&call.namespace.caller, parent.fid, &name, CreateHow::Guarded(attributes))
        .map_err(|error| HdfsError::store(&call.path, &error))?;
    call.lookup(&call.path)
}

// ------------------------------------------------------------------------------------------
// Changes

fn mkdirs(call: &Call) -> HdfsResult<Value> {
    call.namespace.make_directories(&call.path, call.permission(0o755)?)?;
    Ok(json!({ "boolean": true }))
}

fn set_permission(call: &Call) -> HdfsResult<Value> {
    let mode = call.permission(0o755)?;
    set_attributes(call, SetAttributes { mode: Some(mode), ..SetAttributes::default() })
}

fn set_owner(call: &Call) -> HdfsResult<Value> {
    let names = call.namespace.names();
    let uid = match call.param("owner") {
        None | Some("") => None,
        Some(owner) => Some(names.user_id(owner).map_err(HdfsError::illegal)?.0),
    };
    let gid = match call.param("group") {
        None | Some("") => None,
        Some(group) => Some(names.group_id(group).map_err(HdfsError::illegal)?),
    };
    if uid.is_none() && gid.is_none() {
        return Err(HdfsError::illegal("SETOWNER: give owner, group or both"));
    }
    set_attributes(call, SetAttributes { uid, gid, ..SetAttributes::default() })
}

fn set_attributes(call: &Call, changes: SetAttributes) -> HdfsResult<Value> {
    let node = call.lookup(&call.path)?;
    node.fs
        .setattr(&call.namespace.caller, node.fid, changes, None)
        .map_err(|error| HdfsError::store(&call.path, &error))?;
    Ok(Value::Null)
}

/// DELETE: `false` for a path that does not exist; mount points and paths above them are
/// refused (AccessControlException).
fn delete(call: &Call) -> HdfsResult<Value> {
    let recursive = call.flag("recursive", false)?;
    let removed = if recursive {
        call.namespace.remove_tree(&call.path, DELETE_FILES_PARALLEL)
    } else {
        call.namespace.remove(&call.path)
    };
    match removed {
        Ok(()) => Ok(json!({ "boolean": true })),
        Err(error) if error.is_not_found() => Ok(json!({ "boolean": false })),
        Err(error) => Err(error.into()),
    }
}

fn rename(call: &Call) -> HdfsResult<Value> {
    let Some(destination) = call.param("destination").filter(|d| d.starts_with('/')) else {
        return Err(HdfsError::illegal("RENAME: give an absolute destination"));
    };
    let mut destination = normalize(Path::new(destination));
    if call.namespace.lookup_optional(&call.path)?.is_none() {
        return Ok(json!({ "boolean": false }));
    }
    // Into an existing directory, as Hadoop does; never over an existing file.
    match call.namespace.lookup_optional(&destination)? {
        Some(node) if node.attributes.kind == FileKind::Directory => {
            let Some(name) = call.path.file_name() else { return Ok(json!({ "boolean": false })) };
            destination.push(name);
            if call.namespace.lookup_optional(&destination)?.is_some() {
                return Ok(json!({ "boolean": false }));
            }
        }
        Some(_) => return Ok(json!({ "boolean": false })),
        None => {}
    }
    if destination.starts_with(&call.path) {
        return Ok(json!({ "boolean": false }));
    }
    let (from, from_name) = call.namespace.parent(&call.path)?;
    let to = match call.namespace.parent(&destination) {
        Ok(to) => to,
        Err(error) if error.is_not_found() => return Ok(json!({ "boolean": false })),
        Err(error) => return Err(error.into()),
    };
    if from.mount.id != to.0.mount.id {
        return Err(HdfsError::store(&call.path, &StoreError::CrossVolume));
    }
    from.fs
        .rename(&call.namespace.caller, from.fid, &from_name, to.0.fid, &to.1)
        .map_err(|error| HdfsError::store(&call.path, &error))?;
    call.namespace.forget(&call.path);
    Ok(json!({ "boolean": true }))
}

/// `%2F` → `/`, `+` kept (a path, not a form).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = text.get(index + 1..index + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_keeps_plain_text_and_decodes_escapes() {
        assert_eq!(percent_decode("/a%20b/c%2Fd+e"), b"/a b/c/d+e");
        assert_eq!(percent_decode("/x%zz%4"), b"/x%zz%4");
    }
}
