//! The web console of `cairn up --nodes 3`: its JSON API (login, roles, volumes, VIP pools),
//! `/metrics` parsed as Prometheus text, and the pages driven in headless Chromium through
//! chromedriver (Debian's `chromium` and `chromium-driver`).
//!
//! The first admin's password is the generated one each cluster prints once in a node log: the
//! tests read it there, as an operator would.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_cldb::proto::{NodeInfo, NodeState, VipInfo, VipPool, VolumeInfo};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::support::{free_port, require_command, test_dir};

/// How long the first admin may take to appear after the cluster is ready.
const ADMIN_CREATED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a page may take to show an element.
const ELEMENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long chromedriver may take to listen.
const CHROMEDRIVER_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A `cairn up --nodes 3` with consoles, the admin's password and an HTTP client.
struct ConsoleCluster {
    _cluster: Cluster,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of node 1's console.
    base: String,
    admin_password: String,
    http: reqwest::Client,
}

impl ConsoleCluster {
    fn start(tag: &str) -> ConsoleCluster {
        let dir = test_dir(tag);
        let data = dir.path().join("data");
        // Below the ephemeral range (see `cluster_port_args`).
        let console_port = crate::support::port_run_base() + 4 * 6_100;
        let cluster = Cluster::start_with(&data, 3, &["--console-port", &console_port.to_string()]);
        let port =
            cluster.cluster["nodes"][0]["console_port"].as_u64().expect("console_port in cluster.json");
        assert_eq!(port, u64::from(console_port), "{}", cluster.cluster);
        let admin_password = generated_admin_password(&data);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        ConsoleCluster {
            _cluster: cluster,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            admin_password,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The password the console printed, once, in the log of the node that created `admin`.
pub(crate) fn generated_admin_password(data: &Path) -> String {
    let deadline = Instant::now() + ADMIN_CREATED_TIMEOUT;
    loop {
        let mut printed = Vec::new();
        for node in ["n1", "n2", "n3"] {
            let log =
                std::fs::read_to_string(data.join("nodes").join(node).join("node.log")).unwrap_or_default();
            for line in log.lines() {
                if let Some((_, rest)) = line.split_once("with the generated password ") {
                    printed.push(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
        }
        match printed.len() {
            0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            0 => panic!("no node printed the generated admin password within {ADMIN_CREATED_TIMEOUT:?}"),
            1 => return printed.remove(0),
            _ => panic!("several nodes created the first admin: {printed:?}"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// The status and JSON body of a response.
async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no \"error\" in {body}"))
}

#[test]
fn the_api_needs_a_login_and_refuses_a_read_only_user_any_change() {
    let console = ConsoleCluster::start("console-api");
    runtime().block_on(async {
        let http = &console.http;
        // Without a login: 401 with a JSON error, on every route.
        for path in ["/api/nodes", "/api/volumes", "/api/cluster", "/api/vips", "/api/users"] {
            let (status, body) = answer(http.get(console.url(path)).send().await.expect("GET")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            assert!(error_of(&body).contains("not logged in"), "{body}");
        }
        let wrong = json!({"name": "admin", "password": "not-the-password"});
        let (status, body) =
            answer(http.post(console.url("/api/login")).json(&wrong).send().await.expect("login")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

        // Log in: a session cookie, HttpOnly and SameSite=Strict.
        let login = json!({"name": "admin", "password": console.admin_password});
        let response = http.post(console.url("/api/login")).json(&login).send().await.expect("login");
        let cookie = response
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("a Set-Cookie header")
            .to_owned();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        let (status, body) = answer(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"user": "admin", "role": "admin"}));
        let session = cookie.split(';').next().expect("cookie pair").to_owned();
        let get = |path: &str| http.get(console.url(path)).header(reqwest::header::COOKIE, &session);

        let nodes: Vec<NodeInfo> =
            get("/api/nodes").send().await.expect("nodes").json().await.expect("NodeInfo");
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        assert!(nodes.iter().all(|n| n.record.state == NodeState::Up), "{nodes:?}");
        let volumes: Vec<VolumeInfo> =
            get("/api/volumes").send().await.expect("volumes").json().await.expect("VolumeInfo");
        assert!(volumes.iter().any(|v| v.volume.name == "default"), "{volumes:?}");
        let (status, summary) = answer(get("/api/cluster").send().await.expect("cluster")).await;
        assert_eq!(status, StatusCode::OK, "{summary}");
        assert_eq!(summary["nodes_up"], 3, "{summary}");
        assert_eq!(summary["nodes_down"], 0, "{summary}");
        // Every node's disk, from its heartbeats to the CLDB master (nodes share this one).
        assert!(summary["capacity"]["total_bytes"].as_u64().is_some_and(|b| b > 0), "{summary}");
        assert_eq!(summary["capacity"]["nodes"], 3, "{summary}");
        let disk = nodes[0].disk.expect("the master knows node 1's disk");
        assert!(disk.free_bytes > 0 && disk.free_bytes <= disk.total_bytes, "{disk:?}");
        let (status, gateways) = answer(get("/api/nfs").send().await.expect("nfs")).await;
        assert_eq!(status, StatusCode::OK, "{gateways}");
        assert_eq!(gateways.as_array().map(Vec::len), Some(3), "{gateways}");
        let (status, containers) =
            answer(get("/api/containers?volume=default").send().await.expect("containers")).await;
        assert_eq!(status, StatusCode::OK, "{containers}");
        assert!(containers.as_array().is_some_and(|c| !c.is_empty()), "{containers}");

        // An admin creates, changes and looks up a volume.
        let spec = json!({"name": "projects", "replication": 2, "quota_bytes": 1u64 << 30});
        let response =
            http.post(console.url("/api/volumes")).header(reqwest::header::COOKIE, &session).json(&spec);
        let (status, created) = answer(response.send().await.expect("create")).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["volume"]["name"], "projects");
        assert_eq!(created["volume"]["replication"], 2);
        let change = json!({"quota": {"Set": 2u64 << 30}});
        let response = http
            .patch(console.url("/api/volumes/projects"))
            .header(reqwest::header::COOKIE, &session)
            .json(&change);
        let (status, changed) = answer(response.send().await.expect("modify")).await;
        assert_eq!(status, StatusCode::OK, "{changed}");
        assert_eq!(changed["volume"]["quota_bytes"], 2u64 << 30);
        let (status, body) = answer(get("/api/volumes/nope").send().await.expect("info")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let response = http
            .post(console.url("/api/volumes"))
            .header(reqwest::header::COOKIE, &session)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{\"name\": 7}");
        let (status, body) = answer(response.send().await.expect("bad body")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let response =
            http.post(console.url("/api/volumes")).header(reqwest::header::COOKIE, &session).json(&spec);
        let (status, body) = answer(response.send().await.expect("again")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");

        // A read-only user (added by the admin, used with HTTP Basic) sees but cannot change.
        let viewer = json!({"name": "viewer", "password": "viewer-password", "role": "readonly"});
        let response =
            http.post(console.url("/api/users")).header(reqwest::header::COOKIE, &session).json(&viewer);
        let (status, body) = answer(response.send().await.expect("add user")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["role"], "readonly");
        let (status, body) = answer(get("/api/users").send().await.expect("users")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.to_string().contains("argon2") && !body.to_string().contains("password"), "{body}");
        let as_viewer =
            |request: reqwest::RequestBuilder| request.basic_auth("viewer", Some("viewer-password"));
        let volumes: Vec<VolumeInfo> = as_viewer(http.get(console.url("/api/volumes")))
            .send()
            .await
            .expect("volumes")
            .json()
            .await
            .expect("json");
        assert!(volumes.iter().any(|v| v.volume.name == "projects"));
        let refused = [
            as_viewer(http.post(console.url("/api/volumes"))).json(&json!({"name": "other"})),
            as_viewer(http.patch(console.url("/api/volumes/projects"))).json(&change),
            as_viewer(http.delete(console.url("/api/volumes/projects"))),
            as_viewer(http.post(console.url("/api/vip-pools")))
                .json(&json!({"start": "10.9.0.1", "prefix": 24})),
            as_viewer(http.post(console.url("/api/users")))
                .json(&json!({"name": "x", "password": "12345678"})),
        ];
        for request in refused {
            let (status, body) = answer(request.send().await.expect("refused change")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert!(error_of(&body).contains("read-only"), "{body}");
        }
        let (status, _) = answer(
            http.get(console.url("/api/volumes"))
                .basic_auth("viewer", Some("wrong-pass"))
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // The admin removes the volume; after logging out the cookie is worth nothing.
        let response =
            http.delete(console.url("/api/volumes/projects")).header(reqwest::header::COOKIE, &session);
        let (status, body) = answer(response.send().await.expect("remove")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let response = http.post(console.url("/api/logout")).header(reqwest::header::COOKIE, &session);
        assert_eq!(response.send().await.expect("logout").status(), StatusCode::OK);
        let (status, _) = answer(get("/api/nodes").send().await.expect("nodes")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    });
    drop(console);
}

#[test]
fn vip_ranges_are_added_listed_edited_moved_and_removed_and_metrics_parse() {
    let console = ConsoleCluster::start("console-vip");
    runtime().block_on(async {
        let http = &console.http;
        let admin =
            |request: reqwest::RequestBuilder| request.basic_auth("admin", Some(&console.admin_password));

        // No VIP agents run in `cairn up` (they need one node per host), so the pool is outside
        // every reported subnet: --any-subnet.
        let spec = json!({"start": "10.77.0.10", "end": "10.77.0.12", "prefix": 24, "any_subnet": true});
        let (status, pool) =
            answer(admin(http.post(console.url("/api/vip-pools"))).json(&spec).send().await.expect("add"))
                .await;
        assert_eq!(status, StatusCode::CREATED, "{pool}");
        let pools: Vec<VipPool> = admin(http.get(console.url("/api/vip-pools")))
            .send()
            .await
            .expect("pools")
            .json()
            .await
            .expect("VipPool");
        assert_eq!(pools.len(), 1, "{pools:?}");
        assert_eq!((pools[0].start, pools[0].end, pools[0].prefix), (ip("10.77.0.10"), ip("10.77.0.12"), 24));
        let (status, vips) =
            answer(admin(http.get(console.url("/api/vips"))).send().await.expect("vips")).await;
        assert_eq!(status, StatusCode::OK, "{vips}");
        let list = vips.as_array().expect("a list");
        assert_eq!(list.len(), 3, "{vips}");
        for vip in list {
            for field in ["vip", "pool", "node", "interface", "mac", "physical_ip", "held"] {
                assert!(vip.get(field).is_some(), "no {field} in {vip}");
            }
        }
        let _: Vec<VipInfo> = serde_json::from_value(vips.clone()).expect("VipInfo");

        // An overlapping range is refused with the reason; the edit widens the range.
        let overlap = json!({"start": "10.77.0.12", "prefix": 24, "any_subnet": true});
        let (status, body) =
            answer(admin(http.post(console.url("/api/vip-pools"))).json(&overlap).send().await.expect("add"))
                .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_of(&body).contains("overlaps"), "{body}");
        let edit = json!({"end": "10.77.0.13"});
        let (status, body) = answer(
            admin(http.patch(console.url("/api/vip-pools/10.77.0.10")))
                .json(&edit)
                .send()
                .await
                .expect("edit"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["end"], "10.77.0.13");
        let vips: Vec<VipInfo> =
            admin(http.get(console.url("/api/vips"))).send().await.expect("vips").json().await.expect("json");
        assert_eq!(vips.len(), 4, "{vips:?}");

        // A move reaches the CLDB master, which checks the MAC against what the agents report:
        // here no node reports one, so the move is refused with the CLDB's reason.
        let to = json!({"to_mac": "02:00:00:00:00:99"});
        let (status, body) = answer(
            admin(http.post(console.url("/api/vips/10.77.0.11/move"))).json(&to).send().await.expect("move"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_of(&body).contains("no node has an interface with MAC 02:00:00:00:00:99"), "{body}");
        let (status, body) = answer(
            admin(http.post(console.url("/api/vips/not-an-ip/move"))).json(&to).send().await.expect("move"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        let (status, body) = answer(
            admin(http.delete(console.url("/api/vip-pools/10.77.0.10"))).send().await.expect("remove"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let pools: Vec<VipPool> = admin(http.get(console.url("/api/vip-pools")))
            .send()
            .await
            .expect("pools")
            .json()
            .await
            .expect("json");
        assert!(pools.is_empty(), "{pools:?}");
        let vips: Vec<VipInfo> =
            admin(http.get(console.url("/api/vips"))).send().await.expect("vips").json().await.expect("json");
        assert!(vips.is_empty(), "{vips:?}");

        // /metrics needs no login and parses as Prometheus text.
        let response = http.get(console.url("/metrics")).send().await.expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type =
            response.headers()[reqwest::header::CONTENT_TYPE].to_str().expect("type").to_owned();
        assert!(content_type.contains("text"), "{content_type}");
        let text = response.text().await.expect("metrics text");
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        assert!(!scrape.samples.is_empty(), "no samples in:\n{text}");
        assert!(scrape.samples.iter().all(|s| s.metric.starts_with("cairn_")), "{text}");
    });
    drop(console);
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("IPv4 address")
}

// ------------------------------------------------------------------------------------------
// Headless Chromium

/// A chromedriver child process, killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let driver = require_command(
            "chromedriver",
            "install Debian's chromium-driver (`apt-get install chromium chromium-driver`)",
        );
        require_command("chromium", "install Debian's chromium (`apt-get install chromium chromium-driver`)");
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + CHROMEDRIVER_READY_TIMEOUT;
        while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver { child, port }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &ChromeDriver) -> fantoccini::Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": require_command("chromium", "install chromium").to_string_lossy(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"],
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless Chromium")
}

async fn screenshot(client: &fantoccini::Client, dir: &Path, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    path
}

/// The text of the element `css`, waiting for it: a click that submits a form returns before the
/// next page has loaded.
async fn text_of(client: &fantoccini::Client, css: &str) -> String {
    let found = client.wait().at_most(ELEMENT_TIMEOUT).for_element(fantoccini::Locator::Css(css)).await;
    match found {
        Ok(element) => element.text().await.expect("element text"),
        Err(error) => {
            let url = client.current_url().await.map(|u| u.to_string());
            let source = client.source().await.unwrap_or_default();
            panic!("no {css} on {url:?}: {error}\n{source}")
        }
    }
}

#[test]
fn in_chromium_a_page_sends_to_login_and_a_vip_range_added_through_the_form_is_listed() {
    let driver = ChromeDriver::start();
    let console = ConsoleCluster::start("console-chromium");
    let shots = console.dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    runtime().block_on(async {
        let client = browser(&driver).await;
        use fantoccini::Locator::Css;

        // Not logged in: the VIP page sends to the login page, which comes back to it.
        client.goto(&console.url("/vips")).await.expect("open /vips");
        let url = client.current_url().await.expect("url");
        assert_eq!(url.path(), "/login", "{url}");
        assert_eq!(url.query(), Some("next=/vips"), "{url}");
        screenshot(&client, &shots, "1-login.png").await;
        client.find(Css("#name")).await.expect("name field").send_keys("admin").await.expect("type");
        client
            .find(Css("#password"))
            .await
            .expect("password field")
            .send_keys("wrong-password")
            .await
            .expect("type");
        client.find(Css("#login-submit")).await.expect("submit").click().await.expect("click");
        assert!(text_of(&client, "#login-error").await.contains("Wrong user name or password"));
        client.find(Css("#name")).await.expect("name field").send_keys("admin").await.expect("type");
        client
            .find(Css("#password"))
            .await
            .expect("password field")
            .send_keys(&console.admin_password)
            .await
            .expect("type");
        client.find(Css("#login-submit")).await.expect("submit").click().await.expect("click");
        let url = client.current_url().await.expect("url");
        assert_eq!(url.path(), "/vips", "{url}");

        // Add a range through the form; it is listed with its VIPs.
        client.find(Css("#vip-start")).await.expect("start").send_keys("10.88.0.20").await.expect("type");
        client.find(Css("#vip-end")).await.expect("end").send_keys("10.88.0.22").await.expect("type");
        client
            .find(Css("#vip-netmask"))
            .await
            .expect("netmask")
            .send_keys("255.255.255.0")
            .await
            .expect("type");
        client.find(Css("#vip-any-subnet")).await.expect("checkbox").click().await.expect("click");
        client.find(Css("#vip-add-submit")).await.expect("add").click().await.expect("click");
        assert!(text_of(&client, "#flash-ok").await.contains("Added the VIPs 10.88.0.20 – 10.88.0.22"));
        let pools = text_of(&client, "#pools").await;
        assert!(pools.contains("10.88.0.20 – 10.88.0.22") && pools.contains("/24"), "{pools}");
        let vips = text_of(&client, "#vips").await;
        for vip in ["10.88.0.20/24", "10.88.0.21/24", "10.88.0.22/24"] {
            assert!(vips.contains(vip), "{vip} not in {vips}");
        }
        for header in ["Node", "Physical IP", "MAC"] {
            assert!(vips.contains(header), "{header} not in {vips}");
        }
        screenshot(&client, &shots, "2-vips.png").await;

        // A bad range comes back with the CLDB's reason.
        client.find(Css("#vip-start")).await.expect("start").send_keys("10.88.0.21").await.expect("type");
        client.find(Css("#vip-netmask")).await.expect("netmask").send_keys("24").await.expect("type");
        client.find(Css("#vip-any-subnet")).await.expect("checkbox").click().await.expect("click");
        client.find(Css("#vip-add-submit")).await.expect("add").click().await.expect("click");
        assert!(text_of(&client, "#flash-error").await.contains("overlaps"));

        for (path, table, name) in [
            ("/", "#alarms", "3-dashboard.png"),
            ("/nodes", "#nodes", "4-nodes.png"),
            ("/volumes", "#volumes", "5-volumes.png"),
            ("/services", "#services", "6-services.png"),
            ("/nfs", "#gateways", "7-nfs.png"),
            ("/containers", "#containers", "8-containers.png"),
        ] {
            client.goto(&console.url(path)).await.expect("open a page");
            text_of(&client, table).await;
            screenshot(&client, &shots, name).await;
        }

        // Logging out ends the session: the pages send to the login page again.
        client.goto(&console.url("/")).await.expect("open /");
        client.find(Css("header button")).await.expect("log out button").click().await.expect("click");
        client.goto(&console.url("/volumes")).await.expect("open /volumes");
        assert_eq!(client.current_url().await.expect("url").path(), "/login");
        client.close().await.expect("close the browser");
    });
    eprintln!("screenshots in {}", shots.display());
    drop(console);
}
