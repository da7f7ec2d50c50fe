//! The web console: server-rendered HTML pages (no JavaScript, no build step) and a JSON REST API
//! under `/api/` over the CLDB, plus the node's Prometheus metrics on `/metrics`.
//!
//! - [`Console`] serves one node's console; [`ConsoleConfig`] says where and for which cluster.
//! - `api.rs`: the REST API. Its bodies are the CLDB's own message types (`cairn_cldb::proto`),
//!   and its one mapping from errors to HTTP status codes is [`api::ApiError`].
//! - `pages.rs` and `html.rs`: the pages, rendered with `format!` and escaped by `html::esc`.
//! - `users.rs`: users and roles in coord (argon2id hashes), the first admin at first start.
//! - `auth.rs`: sessions (an HttpOnly, SameSite=Strict cookie, memory only) and HTTP Basic.
//! - `metrics.rs`: `/metrics`, this process's families merged with those of the node's other
//!   service processes (their loopback endpoints are listed in `DATA_DIR/run/`).
//! - `webhdfs.rs`: the WebHDFS-compatible REST API on `/webhdfs/v1/`, over the files of the
//!   cluster's volumes (`cairn_client::namespace`).
//!
//! It reaches the cluster through `CldbClient`, for its users a coord client, and for WebHDFS
//! the client library's `ClusterFs`; it knows nothing of NFS.

pub mod api;
pub mod auth;
pub mod html;
pub mod metrics;
pub mod pages;
pub mod users;
pub mod webhdfs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cairn_cldb::CldbClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pause between attempts at creating the first admin while coord is not ready.
const BOOTSTRAP_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Most bytes of one request body.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// Where a console listens and which cluster it shows.
#[derive(Clone)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// This node's name (shown in the page header).
    pub node: String,
    pub cldb: CldbClient,
    /// Every coord member, `HOST:PORT`: users and VIP pools are read there.
    pub coord: Vec<String>,
    /// This node's data directory, whose `run/` names the metrics endpoints of its services.
    pub data_dir: Option<PathBuf>,
}

/// What every handler shares.
pub struct Shared {
    pub config: ConsoleConfig,
    pub users: users::Users,
    pub sessions: auth::Sessions,
    /// The cluster namespace WebHDFS requests share.
    pub webhdfs: webhdfs::NamespaceCache,
}

pub type State = Arc<Shared>;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// A running console. Stop it with [`Console::shutdown`].
pub struct Console {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    bootstrap: JoinHandle<()>,
}

impl Console {
    /// Binds the port and serves; creates the first admin in the background once coord answers.
    pub async fn start(config: ConsoleConfig) -> Result<Console, ConsoleError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ConsoleError::Bind { address: config.listen, source })?;
        let address =
            listener.local_addr().map_err(|source| ConsoleError::Bind { address: config.listen, source })?;
        let shared = Arc::new(Shared {
            users: users::Users::new(config.coord.clone()),
            sessions: auth::Sessions::default(),
            webhdfs: webhdfs::NamespaceCache::default(),
            config,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut bootstrap_stop = stop_rx.clone();
        let bootstrap_shared = shared.clone();
        let bootstrap = tokio::spawn(async move {
            loop {
                match bootstrap_shared.users.ensure_admin().await {
                    Ok(_) => return,
                    Err(users::UsersError::Invalid(why)) => {
                        tracing::error!("console: cannot create the first admin: {why}");
                        return;
                    }
                    Err(error) => tracing::debug!(%error, "console: waiting for coord"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(BOOTSTRAP_RETRY_PAUSE) => {}
                    _ = bootstrap_stop.wait_for(|stop| *stop) => return,
                }
            }
        });
        let app = router(shared);
        let mut server_stop = stop_rx;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(%error, "console server failed");
            }
        });
        tracing::info!("console listening on http://{address}");
        Ok(Console { address, stop, server, bootstrap })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, lets requests in flight finish, and joins the tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.bootstrap.await;
        let _ = self.server.await;
    }
}

/// Every route: `/api/...`, `/metrics`, the pages, and WebHDFS (`/webhdfs/v1/...`, whose
/// uploads are streamed, without the body limit).
pub fn router(state: State) -> Router {
    Router::new()
        .nest("/api", api::router())
        .merge(pages::router())
        .route("/metrics", axum::routing::get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .merge(webhdfs::router())
        .with_state(state)
}

/// The node's metrics in the text exposition format (see [`metrics::node_metrics`]); no login, as
/// Prometheus scrapes it.
async fn metrics(
    axum::extract::State(state): axum::extract::State<State>,
) -> impl axum::response::IntoResponse {
    let text = metrics::node_metrics(state.config.data_dir.as_deref()).await;
    ([(axum::http::header::CONTENT_TYPE, cairn_metrics::CONTENT_TYPE)], text)
}
