//! The process-wide registry through the public API: [`cairn_metrics::init`] with a subset of the
//! groups, and [`cairn_metrics::serve`] answering with those families only.
//!
//! Every test starts with the same `init`, so whichever runs first chooses the groups and the
//! others' calls are ignored (which also checks that a second call does not panic).

use cairn_metrics::Group;

fn init() {
    cairn_metrics::init(&[Group::Nfs, Group::Cldb]);
}

#[test]
fn init_with_a_subset_renders_only_those_families() {
    init();
    cairn_metrics::coord_raft(true, 5, Some(1), 10);
    cairn_metrics::cldb_master(true);
    let text = cairn_metrics::render();
    assert!(text.contains("cairn_cldb_master 1"), "{text}");
    assert!(text.contains("# TYPE cairn_nfs_connections gauge"), "{text}");
    assert!(!text.contains("cairn_coord_"), "{text}");
    assert!(!text.contains("cairn_local_copies"), "{text}");
    assert!(!text.contains("cairn_service_restarts"), "{text}");
}

#[test]
fn init_after_first_use_is_ignored() {
    init();
    let _ = cairn_metrics::render();
    cairn_metrics::init(&Group::ALL);
    assert!(!cairn_metrics::render().contains("cairn_coord_"));
}

#[tokio::test]
async fn serve_answers_with_the_families() {
    init();
    cairn_metrics::nfs_read_bytes(512);
    let (address, server) =
        cairn_metrics::serve("127.0.0.1:0".parse().expect("address")).await.expect("serve");
    assert_ne!(address.port(), 0);
    let response = reqwest::get(format!("http://{address}/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    assert_eq!(
        content_type.as_ref().and_then(|value| value.to_str().ok()),
        Some(cairn_metrics::CONTENT_TYPE)
    );
    let text = response.text().await.expect("body");
    assert!(text.contains("cairn_nfs_read_bytes_total "), "{text}");
    assert!(text.contains("# TYPE cairn_cldb_master gauge"), "{text}");
    assert!(!text.contains("cairn_coord_"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    server.abort();
}
