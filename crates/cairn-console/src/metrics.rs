//! The node's `/metrics`: this process's own families plus those of every service process of the
//! node, read from the loopback endpoints named in `DATA_DIR/run/<service>.metrics`
//! (`cairn_metrics::serve` and `cairn_metrics::write_endpoint_file`), so one scrape per node sees
//! everything.
//!
//! The processes register disjoint sets of families (`cairn_metrics::init`), so their texts are
//! concatenated as they are; only each text's closing `# EOF` is dropped and one put at the end.
//! A service that does not answer must not cost the scrape the others' metrics: it is reported
//! in `cairn_metrics_endpoint_up` (0) and in the log, never as an error status.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;

/// How long one service process may take to answer, body included.
pub const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of one service process's metrics text (a node's text is tens of KiB).
pub const ENDPOINT_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The console's own service name: its families are rendered in process, so an endpoint file
/// under this name (which would only repeat them) is not fetched.
const CONSOLE_SERVICE: &str = "console";
/// The closing line of an OpenMetrics text.
const EOF_LINE: &str = "# EOF";

/// What one service process's endpoint gave.
#[derive(Debug)]
pub struct EndpointText {
    pub service: String,
    pub address: SocketAddr,
    /// The metrics text, or why there is none.
    pub text: Result<String, String>,
}

/// The whole node's metrics text: this process's [`cairn_metrics::render`] plus the text of every
/// endpoint file under `data_dir/run` (none without a data directory), fetched concurrently.
pub async fn node_metrics(data_dir: Option<&Path>) -> String {
    let own = cairn_metrics::render();
    let Some(data_dir) = data_dir else {
        return own;
    };
    let run_dir = data_dir.join("run");
    // Listing and reading a handful of tiny files; off the async threads all the same.
    let endpoints = tokio::task::spawn_blocking(move || cairn_metrics::read_endpoint_files(&run_dir))
        .await
        .unwrap_or_default();
    let endpoints: Vec<_> =
        endpoints.into_iter().filter(|(service, _)| service.as_str() != CONSOLE_SERVICE).collect();
    if endpoints.is_empty() {
        return own;
    }
    let client = reqwest::Client::builder().timeout(ENDPOINT_TIMEOUT).no_proxy().build();
    let fetched = match &client {
        Ok(client) => {
            join_all(endpoints.into_iter().map(|(service, address)| async move {
                let text = fetch(client, address).await;
                EndpointText { service, address, text }
            }))
            .await
        }
        Err(error) => endpoints
            .into_iter()
            .map(|(service, address)| EndpointText {
                service,
                address,
                text: Err(format!("no HTTP client: {error}")),
            })
            .collect(),
    };
    for endpoint in &fetched {
        if let Err(why) = &endpoint.text {
            tracing::warn!(service = %endpoint.service, address = %endpoint.address, "metrics: service did not answer: {why}");
        }
    }
    merge(&own, &fetched)
}

/// `GET http://address/metrics`: the body of a 200 answer, or why there is none.
async fn fetch(client: &reqwest::Client, address: SocketAddr) -> Result<String, String> {
    let mut response =
        client.get(format!("http://{address}/metrics")).send().await.map_err(|error| error.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
        if body.len() + chunk.len() > ENDPOINT_BODY_BYTES_MAX {
            return Err(format!("more than {ENDPOINT_BODY_BYTES_MAX} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "the text is not UTF-8".to_owned())
}

/// `own` and every endpoint's text without their `# EOF` lines, then `cairn_metrics_endpoint_up`
/// (1 or 0 per endpoint), then one `# EOF`.
///
/// A failed endpoint is reported as a sample rather than as a `#` comment: the text is served as
/// OpenMetrics, whose parsers (Prometheus's among them) reject any `#` line other than HELP,
/// TYPE, UNIT and EOF, which would fail the whole scrape just when a service is down.
pub fn merge(own: &str, endpoints: &[EndpointText]) -> String {
    let mut merged = String::with_capacity(
        own.len() + endpoints.iter().map(|e| e.text.as_ref().map_or(0, String::len)).sum::<usize>(),
    );
    push_without_eof(&mut merged, own);
    for endpoint in endpoints {
        if let Ok(text) = &endpoint.text {
            push_without_eof(&mut merged, text);
        }
    }
    if !endpoints.is_empty() {
        merged.push_str(
            "# HELP cairn_metrics_endpoint_up 1 if the console read this service process's metrics, \
             0 if it did not answer (the console's log says why).\n",
        );
        merged.push_str("# TYPE cairn_metrics_endpoint_up gauge\n");
        for endpoint in endpoints {
            let up = u8::from(endpoint.text.is_ok());
            // Writing into a String cannot fail.
            let _ = writeln!(
                merged,
                "cairn_metrics_endpoint_up{{service=\"{}\"}} {up}",
                escape_label_value(&endpoint.service)
            );
        }
    }
    merged.push_str(EOF_LINE);
    merged.push('\n');
    merged
}

/// Appends `text` without its closing `# EOF` line (and anything after it), ending in a newline.
fn push_without_eof(merged: &mut String, text: &str) {
    for line in text.lines() {
        if line == EOF_LINE {
            break;
        }
        if !line.is_empty() {
            merged.push_str(line);
            merged.push('\n');
        }
    }
}

/// A label value as the exposition format quotes it.
fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFS_TEXT: &str = "# HELP cairn_nfs_connections Open NFS client connections.\n\
                            # TYPE cairn_nfs_connections gauge\n\
                            cairn_nfs_connections 2\n\
                            # EOF\n";
    const CLDB_TEXT: &str = "# HELP cairn_cldb_master 1 while this node's CLDB is the master.\n\
                             # TYPE cairn_cldb_master gauge\n\
                             cairn_cldb_master 1\n\
                             # EOF\n";

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .unwrap_or_else(|error| panic!("not Prometheus text ({error}):\n{text}"))
    }

    fn endpoint(service: &str, port: u16, text: Result<&str, &str>) -> EndpointText {
        EndpointText {
            service: service.to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            text: text.map(str::to_owned).map_err(str::to_owned),
        }
    }

    fn sample(scrape: &prometheus_parse::Scrape, name: &str, service: Option<&str>) -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name && service.is_none_or(|service| s.labels.get("service") == Some(service))
            })
            .and_then(|s| match s.value {
                prometheus_parse::Value::Gauge(value) | prometheus_parse::Value::Untyped(value) => {
                    Some(value)
                }
                _ => None,
            })
    }

    #[test]
    fn merged_texts_parse_and_end_with_one_eof() {
        let endpoints =
            [endpoint("cldb", 4001, Ok(CLDB_TEXT)), endpoint("coord", 4002, Err("connection refused"))];
        let merged = merge(NFS_TEXT, &endpoints);
        assert_eq!(merged.matches(EOF_LINE).count(), 1, "{merged}");
        assert!(merged.ends_with("\n# EOF\n"), "{merged}");
        let scrape = parse(&merged);
        assert_eq!(sample(&scrape, "cairn_nfs_connections", None), Some(2.0), "{merged}");
        assert_eq!(sample(&scrape, "cairn_cldb_master", None), Some(1.0), "{merged}");
        assert_eq!(sample(&scrape, "cairn_metrics_endpoint_up", Some("cldb")), Some(1.0), "{merged}");
        assert_eq!(sample(&scrape, "cairn_metrics_endpoint_up", Some("coord")), Some(0.0), "{merged}");
        // Only HELP, TYPE and EOF lines start with '#', as OpenMetrics requires.
        for line in merged.lines().filter(|line| line.starts_with('#')) {
            assert!(line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == EOF_LINE, "{line}");
        }
    }

    #[test]
    fn without_endpoints_the_own_text_is_kept() {
        assert_eq!(merge(NFS_TEXT, &[]), NFS_TEXT);
        assert_eq!(merge("", &[]), "# EOF\n");
    }

    #[tokio::test]
    async fn node_metrics_fetches_the_endpoints_and_survives_a_dead_one() {
        let (address, server) =
            cairn_metrics::serve("127.0.0.1:0".parse().expect("address")).await.expect("serve");
        // A port that was free a moment ago: nothing answers there.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let run_dir = data_dir.path().join("run");
        cairn_metrics::write_endpoint_file(&run_dir, "fileserver", address).expect("endpoint file");
        cairn_metrics::write_endpoint_file(&run_dir, "coord", dead).expect("endpoint file");

        let merged = node_metrics(Some(data_dir.path())).await;
        server.abort();
        assert_eq!(merged.matches(EOF_LINE).count(), 1, "{merged}");
        let scrape = parse(&merged);
        assert_eq!(sample(&scrape, "cairn_metrics_endpoint_up", Some("fileserver")), Some(1.0), "{merged}");
        assert_eq!(sample(&scrape, "cairn_metrics_endpoint_up", Some("coord")), Some(0.0), "{merged}");
        // This test process registers every family, so the served text repeats the own one.
        assert_eq!(merged.matches("# TYPE cairn_nfs_connections gauge").count(), 2, "{merged}");

        assert_eq!(node_metrics(None).await, cairn_metrics::render());
    }
}
