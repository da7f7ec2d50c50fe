//! The client against a real file server over TCP.

use std::sync::Arc;

use cairn_client::{ClusterFs, Connections, FixedLocator};
use cairn_fileserver::{FileServer, FileServerConfig};
use cairn_store::{Caller, CreateHow, FileSystem, SetAttributes, Stability, StoreConfig, StoreError};
use cairn_types::{ClusterId, VolumeId};

async fn server(dir: &std::path::Path, port: u16) -> FileServer {
    let config = FileServerConfig {
        node: "n1".to_string(),
        data_dir: dir.to_path_buf(),
        listen: format!("127.0.0.1:{port}").parse().expect("address"),
        advertise: None,
        store: StoreConfig::new(dir),
        scrub_interval: cairn_fileserver::SCRUB_INTERVAL_DEFAULT,
    };
    let server = FileServer::start(config).await.expect("start file server");
    server.open_master(ClusterId(7), VolumeId(3), 1).expect("open volume");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_master_and_survive_its_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = server(dir.path(), 0).await;
    let address = first.address();
    let locator = Arc::new(FixedLocator(address.to_string()));
    let fs =
        Arc::new(ClusterFs::open(locator, Arc::new(Connections::default()), 3).await.expect("open volume"));
    assert_eq!(fs.cluster_id(), ClusterId(7));
    assert_eq!(fs.volume_id(), VolumeId(3));

    let blocking = fs.clone();
    let fid = tokio::task::spawn_blocking(move || {
        let caller = Caller::root();
        let created = blocking
            .create(&caller, blocking.root(), b"a", CreateHow::Guarded(SetAttributes::default()))
            .expect("create");
        blocking.write(&caller, created.fid, 0, &vec![7u8; 300_000], Stability::FileSync).expect("write");
        // A second guarded create of the same name is a real EEXIST (a new request, not a retry).
        let again =
            blocking.create(&caller, blocking.root(), b"a", CreateHow::Guarded(SetAttributes::default()));
        assert!(matches!(again, Err(StoreError::Exists)), "{again:?}");
        created.fid
    })
    .await
    .expect("join");

    // The server goes away and comes back on the same port: calls wait, reconnect and go on.
    first.shutdown().await;
    let restarted = tokio::spawn({
        let dir = dir.path().to_path_buf();
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            server(&dir, address.port()).await
        }
    });
    let blocking = fs.clone();
    let data = tokio::task::spawn_blocking(move || {
        let read = blocking.read(&Caller::root(), fid, 0, 300_000).expect("read after restart");
        read.data
    })
    .await
    .expect("join");
    assert_eq!(data, vec![7u8; 300_000]);
    restarted.await.expect("join").shutdown().await;
}
