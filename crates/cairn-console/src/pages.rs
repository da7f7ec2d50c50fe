//! The HTML pages: plain server-rendered documents and forms that POST, then redirect back with a
//! message (post/redirect/get). A page without a session sends the browser to `/login`; a form
//! sent by a read-only user is refused with 403. Forms need no CSRF token: the session cookie is
//! `SameSite=Strict`, so another site's form never carries it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use axum::Router;
use axum::extract::{Form, Query, State as Ctx};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cairn_cldb::proto::{
    NodeState, QuotaChange, ReplicationType, VipPoolEdit, VipPoolSpec, VolumeChange, VolumeSpec,
};
use serde::Deserialize;

use crate::State;
use crate::api::{self, ApiError};
use crate::auth::{PageUser, Principal, clear_cookie, session_cookie, session_token};
use crate::html::{self, Flash, badge, esc, table, url_encode};
use crate::users::{NewUser, Role, now_ms};

pub fn router() -> Router<State> {
    Router::new()
        .route("/style.css", get(style))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(dashboard))
        .route("/nodes", get(nodes))
        .route("/services", get(services))
        .route("/volumes", get(volumes))
        .route("/volumes/create", post(volume_create))
        .route("/volumes/modify", post(volume_modify))
        .route("/volumes/remove", post(volume_remove))
        .route("/containers", get(containers))
        .route("/nfs", get(nfs))
        .route("/vips", get(vips))
        .route("/vips/add", post(vip_add))
        .route("/vips/edit", post(vip_edit))
        .route("/vips/move", post(vip_move))
        .route("/vips/remove", post(vip_remove))
        .route("/alarms", get(alarms))
        .route("/users", get(users))
        .route("/users/add", post(user_add))
        .route("/users/remove", post(user_remove))
}

async fn style() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], html::STYLE).into_response()
}

/// A page whose body could not be built: the layout with the error, and its status.
fn render(
    state: &State,
    user: &Principal,
    title: &str,
    current: &str,
    mut flash: Flash,
    body: Result<String, ApiError>,
) -> Response {
    match body {
        Ok(body) => Html(html::page(title, current, &state.config.node, user, &flash, &body)).into_response(),
        Err(error) => {
            flash.error = Some(error.message);
            (error.status, Html(html::page(title, current, &state.config.node, user, &flash, "")))
                .into_response()
        }
    }
}

/// The answer to a form: back to `page` with the outcome as its message, or 403 for a
/// read-only user.
fn outcome(page: &str, result: Result<String, ApiError>) -> Response {
    match result {
        Ok(message) => Redirect::to(&format!("{page}?ok={}", url_encode(&message))).into_response(),
        Err(error) if error.status == StatusCode::FORBIDDEN => (
            StatusCode::FORBIDDEN,
            Html(format!(
                "<!DOCTYPE html><html><head><title>Forbidden</title><link rel=\"stylesheet\" \
                 href=\"/style.css\"></head><body><main><h1>Forbidden</h1><p class=\"flash error\" \
                 id=\"flash-error\">{}</p><p><a href=\"{page}\">Back</a></p></main></body></html>",
                esc(&error.message)
            )),
        )
            .into_response(),
        Err(error) => Redirect::to(&format!("{page}?error={}", url_encode(&error.message))).into_response(),
    }
}

/// Empty form fields are "not given".
fn given(field: &str) -> Option<&str> {
    let field = field.trim();
    (!field.is_empty()).then_some(field)
}

fn read_only_note(user: &Principal) -> &'static str {
    match user.role {
        Role::Admin => "",
        Role::Readonly => "<p class=\"note\">You are logged in read-only: changes are disabled.</p>",
    }
}

// ------------------------------------------------------------------------------------------
// Login

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

/// Only a path on this site, never `//host` or `https://...`.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') { next } else { "/" }
}

fn login_form(next: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"flash error\" id=\"login-error\">{}</p>", esc(e)));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · Cairn</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head><body><header><span class=\"brand\">Cairn\
         </span></header><form class=\"login\" method=\"post\" action=\"/login\" id=\"login\">\
         <h1>Log in</h1>{}<label>User <input name=\"name\" id=\"name\" autocomplete=\"username\" \
         required autofocus></label><label>Password <input name=\"password\" id=\"password\" \
         type=\"password\" autocomplete=\"current-password\" required></label>\
         <input type=\"hidden\" name=\"next\" value=\"{}\"><p><button type=\"submit\" id=\"login-submit\">\
         Log in</button></p><p class=\"note\">The first user is <code>admin</code>; its password is \
         <code>$CAIRN_ADMIN_PASSWORD</code>, or was printed once in the log of the node that created \
         it.</p></form></body></html>\n",
        error.unwrap_or_default(),
        esc(safe_next(next))
    )
}

async fn login_page(Query(query): Query<LoginQuery>) -> Html<String> {
    Html(login_form(query.next.as_deref().unwrap_or("/"), None))
}

async fn login(Ctx(state): Ctx<State>, Form(form): Form<LoginForm>) -> Response {
    match state.users.verify(&form.name, &form.password).await {
        Ok(Some(role)) => {
            let token = state.sessions.open(&form.name, role);
            ([(SET_COOKIE, session_cookie(&token))], Redirect::to(safe_next(&form.next))).into_response()
        }
        Ok(None) => {
            (StatusCode::UNAUTHORIZED, Html(login_form(&form.next, Some("Wrong user name or password."))))
                .into_response()
        }
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(login_form(&form.next, Some(&format!("Cannot check the password: {error}")))),
        )
            .into_response(),
    }
}

async fn logout(Ctx(state): Ctx<State>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        state.sessions.close(&token);
    }
    ([(SET_COOKIE, clear_cookie())], Redirect::to("/login")).into_response()
}

// ------------------------------------------------------------------------------------------
// Dashboard, nodes, services

async fn dashboard(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let body = async {
        let summary = api::summary(&state).await?;
        let alarms = state.config.cldb.list_alarms().await?;
        let mut out = String::from("<div class=\"cards\">");
        let card = |out: &mut String, id: &str, value: String, label: &str, extra: String| {
            let _ = write!(
                out,
                "<div class=\"card\" id=\"{id}\"><div class=\"value\">{value}</div>\
                 <div class=\"label\">{}</div>{extra}</div>",
                esc(label)
            );
        };
        match &summary.capacity {
            Some(disk) => {
                let used = disk.total_bytes.saturating_sub(disk.free_bytes);
                let percent = (used.saturating_mul(100)).checked_div(disk.total_bytes).unwrap_or(0);
                card(
                    &mut out,
                    "capacity",
                    esc(&html::bytes(disk.total_bytes)),
                    &format!("capacity ({} node disk{})", disk.nodes, if disk.nodes == 1 { "" } else { "s" }),
                    format!(
                        "<div class=\"bar\"><span style=\"width:{percent}%\"></span></div>\
                         <div class=\"label\">{} free, {percent}% used</div>",
                        esc(&html::bytes(disk.free_bytes))
                    ),
                );
            }
            None => card(&mut out, "capacity", "?".into(), "capacity (unknown)", String::new()),
        }
        card(
            &mut out,
            "used",
            esc(&html::bytes(summary.used_bytes)),
            "used by volumes",
            format!("<div class=\"label\">{} volumes</div>", summary.volumes),
        );
        card(&mut out, "nodes-up", summary.nodes_up.to_string(), "nodes up", String::new());
        card(
            &mut out,
            "nodes-down",
            if summary.nodes_down == 0 { "0".into() } else { badge(&summary.nodes_down.to_string(), false) },
            "nodes down",
            String::new(),
        );
        card(&mut out, "alarm-count", summary.alarms.to_string(), "alarms", String::new());
        out.push_str("</div>");
        let _ = write!(
            out,
            "<p class=\"note\">Cluster <code>{}</code>, CLDB master <code>{}</code>.</p>",
            esc(&summary.cluster_id),
            esc(summary.cldb_master.as_deref().unwrap_or("none"))
        );
        out.push_str("<h2>Alarms</h2>");
        out.push_str(&alarm_table(&alarms));
        Ok(out)
    }
    .await;
    render(&state, &user, "Dashboard", "/", flash, body)
}

async fn nodes(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let body = async {
        let nodes = api::nodes_from_master(&state.config.cldb).await?;
        let now = now_ms();
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let r = &n.record;
                vec![
                    esc(&r.name),
                    badge(if r.state == NodeState::Up { "up" } else { "down" }, r.state == NodeState::Up),
                    esc(&html::time(r.state_since_ms)),
                    esc(&html::age(n.last_heartbeat_ms, now)),
                    esc(&r.services.join(", ")),
                    n.volumes.to_string(),
                    esc(&n.disk.map_or_else(
                        || "?".to_owned(),
                        |d| format!("{} free of {}", html::bytes(d.free_bytes), html::bytes(d.total_bytes)),
                    )),
                    esc(&r.fileserver_address),
                    esc(&r.nfs_address),
                    esc(if r.topology.is_empty() { "/default-rack" } else { &r.topology }),
                ]
            })
            .collect();
        Ok(table(
            "nodes",
            &[
                "Node",
                "Health",
                "Since",
                "Last heartbeat",
                "Services",
                "Volumes",
                "Disk",
                "File server",
                "NFS",
                "Topology",
            ],
            &rows,
        ))
    }
    .await;
    render(&state, &user, "Nodes", "/nodes", flash, body)
}

async fn services(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let body = async {
        let nodes = state.config.cldb.list_services().await?;
        let mut rows = Vec::new();
        for node in &nodes {
            for s in &node.services {
                let dash = || "—".to_owned();
                rows.push(vec![
                    esc(&node.node),
                    esc(&s.name),
                    badge(&s.state, s.state == "running"),
                    s.pid.map_or_else(dash, |pid| pid.to_string()),
                    s.memory_bytes.map_or_else(dash, cairn_types::text::size),
                    s.heap_bytes.map_or_else(dash, cairn_types::text::size),
                    s.restarts.to_string(),
                    s.started_ms.map_or_else(dash, |at| esc(&html::time(at))),
                    esc(&s.detail),
                ]);
            }
        }
        let mut out = String::from(
            "<p class=\"note\">Each node's Warden runs its services as processes and publishes their \
             state; start, stop or restart one with <code>cairn service</code>.</p>",
        );
        out.push_str(&table(
            "services",
            &["Node", "Service", "State", "PID", "Memory", "Heap", "Restarts", "Since", "Detail"],
            &rows,
        ));
        Ok(out)
    }
    .await;
    render(&state, &user, "Services", "/services", flash, body)
}

// ------------------------------------------------------------------------------------------
// Volumes and containers

fn quota(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "none".to_owned(), html::bytes)
}

async fn volumes(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let body = async {
        let volumes = state.config.cldb.list_volumes().await?;
        let admin = user.role == Role::Admin;
        let rows: Vec<Vec<String>> = volumes
            .iter()
            .filter(|v| !v.volume.removed)
            .map(|info| {
                let v = &info.volume;
                let remove = if admin {
                    format!(
                        "<form class=\"inline\" method=\"post\" action=\"/volumes/remove\">\
                         <input type=\"hidden\" name=\"name\" value=\"{}\">\
                         <button class=\"danger\" type=\"submit\">Remove</button></form>",
                        esc(&v.name)
                    )
                } else {
                    String::new()
                };
                vec![
                    esc(&v.name),
                    v.id.to_string(),
                    esc(&v.mount_path),
                    format!("{} (min {})", v.replication, v.min_replication),
                    format!("{:?}", v.replication_type).to_lowercase(),
                    esc(&info.size_bytes.map_or_else(|| "?".to_owned(), html::bytes)),
                    esc(&quota(v.quota_bytes)),
                    esc(&quota(v.advisory_quota_bytes)),
                    esc(&v.placement.master),
                    esc(&v.placement.replicas.join(", ")),
                    v.placement.epoch.to_string(),
                    remove,
                ]
            })
            .collect();
        let mut out = table(
            "volumes",
            &[
                "Name",
                "Id",
                "Mount",
                "Replication",
                "Type",
                "Used",
                "Quota",
                "Advisory quota",
                "Master",
                "Replicas",
                "Epoch",
                "",
            ],
            &rows,
        );
        out.push_str(read_only_note(&user));
        if admin {
            let options: String = volumes
                .iter()
                .filter(|v| !v.volume.removed)
                .map(|v| format!("<option>{}</option>", esc(&v.volume.name)))
                .collect();
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/volumes/create\" id=\"volume-create\"><fieldset>\
                 <legend>Create a volume</legend>\
                 <label>Name <input name=\"name\" required></label>\
                 <label>Mount path <input name=\"mount_path\" placeholder=\"/NAME\"></label>\
                 <label>Replication <input name=\"replication\" size=\"2\" placeholder=\"3\"></label>\
                 <label>Min replication <input name=\"min_replication\" size=\"2\" placeholder=\"1\"></label>\
                 <label>Type <select name=\"replication_type\"><option value=\"chain\">chain</option>\
                 <option value=\"star\">star</option></select></label>\
                 <label>Quota <input name=\"quota\" size=\"8\" placeholder=\"10G\"></label>\
                 <label>Advisory quota <input name=\"advisory_quota\" size=\"8\" placeholder=\"8G\"></label>\
                 <button type=\"submit\">Create</button></fieldset></form>\
                 <form method=\"post\" action=\"/volumes/modify\" id=\"volume-modify\"><fieldset>\
                 <legend>Change a volume (empty fields are left as they are; <code>none</code> \
                 removes a quota)</legend>\
                 <label>Volume <select name=\"name\">{options}</select></label>\
                 <label>Quota <input name=\"quota\" size=\"8\"></label>\
                 <label>Advisory quota <input name=\"advisory_quota\" size=\"8\"></label>\
                 <label>Replication <input name=\"replication\" size=\"2\"></label>\
                 <button type=\"submit\">Change</button></fieldset></form>"
            );
        }
        Ok(out)
    }
    .await;
    render(&state, &user, "Volumes", "/volumes", flash, body)
}

#[derive(Deserialize)]
struct VolumeCreateForm {
    name: String,
    #[serde(default)]
    mount_path: String,
    #[serde(default)]
    replication: String,
    #[serde(default)]
    min_replication: String,
    #[serde(default)]
    replication_type: String,
    #[serde(default)]
    quota: String,
    #[serde(default)]
    advisory_quota: String,
}

fn number<T: std::str::FromStr>(field: &str, what: &str) -> Result<Option<T>, ApiError> {
    given(field)
        .map(|text| {
            text.parse().map_err(|_| ApiError::bad_request(format!("{what}: {text:?} is not a number")))
        })
        .transpose()
}

fn size(field: &str, what: &str) -> Result<Option<u64>, ApiError> {
    given(field)
        .map(|text| {
            html::parse_bytes(text)
                .ok_or_else(|| ApiError::bad_request(format!("{what}: {text:?} is not a size like 10G")))
        })
        .transpose()
}

fn quota_change(field: &str, what: &str) -> Result<QuotaChange, ApiError> {
    match given(field) {
        None => Ok(QuotaChange::Keep),
        Some("none") => Ok(QuotaChange::Remove),
        Some(_) => Ok(QuotaChange::Set(size(field, what)?.unwrap_or_default())),
    }
}

async fn volume_create(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<VolumeCreateForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        let spec = VolumeSpec {
            name: form.name.trim().to_owned(),
            mount_path: given(&form.mount_path).map(str::to_owned),
            replication: number(&form.replication, "replication")?,
            min_replication: number(&form.min_replication, "min replication")?,
            replication_type: match form.replication_type.as_str() {
                "star" => ReplicationType::Star,
                _ => ReplicationType::Chain,
            },
            quota_bytes: size(&form.quota, "quota")?,
            advisory_quota_bytes: size(&form.advisory_quota, "advisory quota")?,
            data_containers: None,
        };
        let info = state.config.cldb.create_volume(spec).await?;
        Ok(format!("Created volume {} (id {}).", info.volume.name, info.volume.id))
    }
    .await;
    outcome("/volumes", result)
}

#[derive(Deserialize)]
struct VolumeModifyForm {
    name: String,
    #[serde(default)]
    quota: String,
    #[serde(default)]
    advisory_quota: String,
    #[serde(default)]
    replication: String,
}

async fn volume_modify(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<VolumeModifyForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        let change = VolumeChange {
            name: form.name.clone(),
            quota: quota_change(&form.quota, "quota")?,
            advisory_quota: quota_change(&form.advisory_quota, "advisory quota")?,
            replication: number(&form.replication, "replication")?,
            min_replication: None,
        };
        state.config.cldb.modify_volume(change).await?;
        Ok(format!("Changed volume {}.", form.name))
    }
    .await;
    outcome("/volumes", result)
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn volume_remove(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<NameForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        state.config.cldb.remove_volume(&form.name).await?;
        Ok(format!("Removed volume {}.", form.name))
    }
    .await;
    outcome("/volumes", result)
}

#[derive(Deserialize, Default)]
struct ContainerQuery {
    volume: Option<String>,
    #[serde(flatten)]
    flash: FlashFields,
}

#[derive(Deserialize, Default)]
struct FlashFields {
    ok: Option<String>,
    error: Option<String>,
}

async fn containers(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Query(query): Query<ContainerQuery>,
) -> Response {
    let body = async {
        let mut list = state.config.cldb.list_containers().await?;
        if let Some(volume) = query.volume.as_deref().and_then(given) {
            list.retain(|c| c.volume_name == volume);
        }
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|c| {
                vec![
                    c.id.to_string(),
                    esc(&c.volume_name),
                    format!("{:?}", c.kind).to_lowercase(),
                    c.epoch.to_string(),
                    esc(&c.master),
                    esc(&c.replicas.join(", ")),
                    esc(&c.resyncing.join(", ")),
                ]
            })
            .collect();
        let mut out = format!(
            "<form method=\"get\" action=\"/containers\"><label>Volume <input name=\"volume\" value=\"{}\">\
             </label> <button type=\"submit\">Filter</button></form>",
            esc(query.volume.as_deref().unwrap_or(""))
        );
        out.push_str(&table(
            "containers",
            &["Id", "Volume", "Kind", "Epoch", "Master", "Replicas", "Resyncing"],
            &rows,
        ));
        Ok(out)
    }
    .await;
    let flash = Flash { ok: query.flash.ok, error: query.flash.error };
    render(&state, &user, "Containers", "/containers", flash, body)
}

// ------------------------------------------------------------------------------------------
// NFS gateways and VIP pools

async fn nfs(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let body = async {
        let gateways = api::gateways(&state).await?;
        let now = now_ms();
        let rows: Vec<Vec<String>> = gateways
            .iter()
            .map(|g| {
                let up = g.state == NodeState::Up;
                vec![
                    esc(&g.node),
                    esc(&g.nfs_address),
                    badge(if up { "up" } else { "down" }, up),
                    esc(&html::age(g.last_heartbeat_ms, now)),
                    esc(&g.vips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ")),
                ]
            })
            .collect();
        let mut out = table("gateways", &["Node", "NFS address", "State", "Last heartbeat", "VIPs"], &rows);
        out.push_str(
            "<p class=\"note\">Clients mount through a virtual IP: <a href=\"/vips\">add a VIP pool</a>.</p>",
        );
        Ok(out)
    }
    .await;
    render(&state, &user, "NFS gateways", "/nfs", flash, body)
}

async fn vips(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(mut flash): Query<Flash>) -> Response {
    let body = async {
        let pools = api::pools(&state).await?;
        // Only the CLDB master knows where each VIP is; show the pools even without one.
        let vips = match state.config.cldb.list_vips().await {
            Ok(vips) => vips,
            Err(error) => {
                flash.error.get_or_insert_with(|| format!("Where the VIPs are is unknown: {error}"));
                Vec::new()
            }
        };
        let admin = user.role == Role::Admin;
        let pool_rows: Vec<Vec<String>> = pools
            .iter()
            .map(|p| {
                let remove = if admin {
                    format!(
                        "<form class=\"inline\" method=\"post\" action=\"/vips/remove\">\
                         <input type=\"hidden\" name=\"start\" value=\"{}\">\
                         <button class=\"danger\" type=\"submit\">Remove</button></form>",
                        p.start
                    )
                } else {
                    String::new()
                };
                vec![
                    format!("{} – {}", p.start, p.end),
                    format!("/{}", p.prefix),
                    if p.macs.is_empty() {
                        "every interface in the subnet of a healthy NFS gateway".to_owned()
                    } else {
                        esc(&p.macs.join(", "))
                    },
                    esc(p.preferred_mac.as_deref().unwrap_or("")),
                    if p.any_subnet { "yes" } else { "no" }.to_owned(),
                    esc(&html::time(p.created_ms)),
                    remove,
                ]
            })
            .collect();
        let mut out = table(
            "pools",
            &["Range", "Netmask", "Interfaces", "Preferred MAC", "Any subnet", "Created", ""],
            &pool_rows,
        );
        out.push_str("<h2>Virtual IPs</h2>");
        let vip_rows: Vec<Vec<String>> = vips
            .iter()
            .map(|v| {
                vec![
                    format!("{}/{}", v.vip, v.prefix),
                    v.pool.to_string(),
                    if v.node.is_empty() { "<span class=\"note\">unassigned</span>".to_owned() } else { esc(&v.node) },
                    esc(&v.interface),
                    v.physical_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    esc(&v.mac),
                    if v.held { badge("held", true) } else { badge("not held", false) },
                    esc(v.preferred_mac.as_deref().unwrap_or("")),
                ]
            })
            .collect();
        out.push_str(&table(
            "vips",
            &["VIP", "Pool", "Node", "Interface", "Physical IP", "MAC", "State", "Returns to MAC"],
            &vip_rows,
        ));
        out.push_str(read_only_note(&user));
        if admin {
            let starts: String = pools.iter().map(|p| format!("<option>{}</option>", p.start)).collect();
            let vip_options: String = vips.iter().map(|v| format!("<option>{}</option>", v.vip)).collect();
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/vips/add\" id=\"vip-add\"><fieldset>\
                 <legend>Add virtual IPs</legend>\
                 <label>Start <input name=\"start\" id=\"vip-start\" required placeholder=\"10.0.0.50\"></label>\
                 <label>End <input name=\"end\" id=\"vip-end\" placeholder=\"same as start\"></label>\
                 <label>Netmask <input name=\"netmask\" id=\"vip-netmask\" required placeholder=\"255.255.255.0 or 24\"></label>\
                 <label>MACs <input name=\"macs\" size=\"30\" placeholder=\"empty: every NFS gateway interface\"></label>\
                 <label>Preferred MAC <input name=\"preferred_mac\"></label>\
                 <label><input type=\"checkbox\" name=\"any_subnet\" id=\"vip-any-subnet\"> outside the \
                 nodes' subnets (the network routes it)</label>\
                 <button type=\"submit\" id=\"vip-add-submit\">Add</button></fieldset></form>\
                 <form method=\"post\" action=\"/vips/edit\" id=\"vip-edit\"><fieldset>\
                 <legend>Edit a pool (empty fields are left as they are)</legend>\
                 <label>Pool <select name=\"start\">{starts}</select></label>\
                 <label>End <input name=\"end\"></label>\
                 <label>Netmask <input name=\"netmask\"></label>\
                 <label>MACs <input name=\"macs\" size=\"30\" placeholder=\"any: every interface\"></label>\
                 <label>Preferred MAC <input name=\"preferred_mac\" placeholder=\"none: remove\"></label>\
                 <label>Any subnet <select name=\"any_subnet\"><option value=\"\">keep</option>\
                 <option value=\"yes\">yes</option><option value=\"no\">no</option></select></label>\
                 <button type=\"submit\">Save</button></fieldset></form>\
                 <form method=\"post\" action=\"/vips/move\" id=\"vip-move\"><fieldset>\
                 <legend>Move a VIP to another interface</legend>\
                 <label>VIP <select name=\"vip\">{vip_options}</select></label>\
                 <label>To MAC <input name=\"to_mac\" required placeholder=\"aa:bb:cc:dd:ee:ff\"></label>\
                 <button type=\"submit\">Move</button></fieldset></form>"
            );
        }
        Ok(out)
    }
    .await;
    render(&state, &user, "VIP pools", "/vips", flash, body)
}

#[derive(Deserialize)]
struct VipAddForm {
    start: String,
    #[serde(default)]
    end: String,
    netmask: String,
    #[serde(default)]
    macs: String,
    #[serde(default)]
    preferred_mac: String,
    #[serde(default)]
    any_subnet: Option<String>,
}

fn ip(field: &str, what: &str) -> Result<Ipv4Addr, ApiError> {
    field
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{what}: {:?} is not an IPv4 address", field.trim())))
}

fn macs(field: &str) -> Vec<String> {
    field.split([',', ' ']).map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect()
}

async fn vip_add(Ctx(state): Ctx<State>, PageUser(user): PageUser, Form(form): Form<VipAddForm>) -> Response {
    let result = async {
        user.require_admin()?;
        let spec = VipPoolSpec {
            start: ip(&form.start, "start")?,
            end: given(&form.end).map(|end| ip(end, "end")).transpose()?,
            prefix: cairn_cldb::vip::parse_netmask(form.netmask.trim())?,
            macs: macs(&form.macs),
            preferred_mac: given(&form.preferred_mac).map(str::to_owned),
            any_subnet: form.any_subnet.is_some(),
        };
        let pool = state.config.cldb.add_vip_pool(spec).await?;
        Ok(format!("Added the VIPs {} – {}.", pool.start, pool.end))
    }
    .await;
    outcome("/vips", result)
}

#[derive(Deserialize)]
struct VipEditForm {
    start: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    netmask: String,
    #[serde(default)]
    macs: String,
    #[serde(default)]
    preferred_mac: String,
    #[serde(default)]
    any_subnet: String,
}

async fn vip_edit(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<VipEditForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        let edit = VipPoolEdit {
            start: Some(ip(&form.start, "pool")?),
            end: given(&form.end).map(|end| ip(end, "end")).transpose()?,
            prefix: given(&form.netmask).map(cairn_cldb::vip::parse_netmask).transpose()?,
            macs: match given(&form.macs) {
                None => None,
                Some("any") => Some(Vec::new()),
                Some(list) => Some(macs(list)),
            },
            preferred_mac: match given(&form.preferred_mac) {
                None => None,
                Some("none") => Some(None),
                Some(mac) => Some(Some(mac.to_owned())),
            },
            any_subnet: match form.any_subnet.as_str() {
                "yes" => Some(true),
                "no" => Some(false),
                _ => None,
            },
        };
        let pool = state.config.cldb.edit_vip_pool(edit).await?;
        Ok(format!("Changed the pool {} – {}.", pool.start, pool.end))
    }
    .await;
    outcome("/vips", result)
}

#[derive(Deserialize)]
struct VipMoveForm {
    vip: String,
    to_mac: String,
}

async fn vip_move(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<VipMoveForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        let vip = ip(&form.vip, "VIP")?;
        state.config.cldb.move_vip(vip, form.to_mac.trim()).await?;
        Ok(format!("Moving {vip} to {}.", form.to_mac.trim()))
    }
    .await;
    outcome("/vips", result)
}

#[derive(Deserialize)]
struct StartForm {
    start: String,
}

async fn vip_remove(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<StartForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        let pool = state.config.cldb.remove_vip_pool(ip(&form.start, "pool")?).await?;
        Ok(format!("Removed the VIPs {} – {}.", pool.start, pool.end))
    }
    .await;
    outcome("/vips", result)
}

// ------------------------------------------------------------------------------------------
// Alarms and users

fn alarm_table(alarms: &[cairn_cldb::proto::Alarm]) -> String {
    let rows: Vec<Vec<String>> = alarms
        .iter()
        .map(|a| {
            vec![
                badge(&format!("{:?}", a.kind), false),
                esc(&a.subject),
                esc(&html::time(a.since_ms)),
                esc(&a.message),
            ]
        })
        .collect();
    table("alarms", &["Alarm", "Subject", "Since", "Message"], &rows)
}

async fn alarms(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let body = async { Ok(alarm_table(&state.config.cldb.list_alarms().await?)) }.await;
    render(&state, &user, "Alarms", "/alarms", flash, body)
}

async fn users(Ctx(state): Ctx<State>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let body = async {
        if user.role != Role::Admin {
            return Ok(format!(
                "<p>You are <code>{}</code>, read-only. Only admins see and manage users.</p>",
                esc(&user.user)
            ));
        }
        let users = state.users.list().await?;
        let rows: Vec<Vec<String>> = users
            .iter()
            .map(|u| {
                vec![
                    esc(&u.name),
                    u.role.as_str().to_owned(),
                    esc(&html::time(u.created_ms)),
                    format!(
                        "<form class=\"inline\" method=\"post\" action=\"/users/remove\">\
                         <input type=\"hidden\" name=\"name\" value=\"{}\">\
                         <button class=\"danger\" type=\"submit\">Remove</button></form>",
                        esc(&u.name)
                    ),
                ]
            })
            .collect();
        let mut out = table("users", &["User", "Role", "Created", ""], &rows);
        out.push_str(
            "<form method=\"post\" action=\"/users/add\" id=\"user-add\"><fieldset><legend>Add a user</legend>\
             <label>Name <input name=\"name\" required></label>\
             <label>Password <input name=\"password\" type=\"password\" required minlength=\"8\"></label>\
             <label>Role <select name=\"role\"><option value=\"readonly\">read-only</option>\
             <option value=\"admin\">admin</option></select></label>\
             <button type=\"submit\">Add</button></fieldset></form>",
        );
        Ok(out)
    }
    .await;
    render(&state, &user, "Users", "/users", flash, body)
}

#[derive(Deserialize)]
struct UserAddForm {
    name: String,
    password: String,
    role: String,
}

async fn user_add(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<UserAddForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        let role = Role::parse(&form.role).ok_or_else(|| ApiError::bad_request("role: admin or readonly"))?;
        let added = state
            .users
            .add(NewUser { name: form.name.trim().to_owned(), password: form.password, role })
            .await?;
        Ok(format!("Added user {} ({}).", added.name, added.role.as_str()))
    }
    .await;
    outcome("/users", result)
}

async fn user_remove(
    Ctx(state): Ctx<State>,
    PageUser(user): PageUser,
    Form(form): Form<NameForm>,
) -> Response {
    let result = async {
        user.require_admin()?;
        state.users.remove(&form.name).await?;
        state.sessions.close_user(&form.name);
        Ok(format!("Removed user {}.", form.name))
    }
    .await;
    outcome("/users", result)
}
