//! `cairn node start`: the node's Warden (crate `cairn-warden`), given this node's built-in
//! services as `cairn node service --service S` commands, its configuration directory
//! (`DATA_DIR/conf`, or the node configuration's `conf_dir`; a default `warden.conf` is written
//! when there is none), and its own metrics endpoint.

use std::ffi::OsString;
use std::path::Path;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::node::NodeConfig;

pub async fn run(config: NodeConfig, config_path: &Path) -> anyhow::Result<()> {
    let config_path = std::path::absolute(config_path)
        .with_context(|| format!("cannot resolve {}", config_path.display()))?;
    let conf_dir = config.conf_dir();
    std::fs::create_dir_all(conf_dir.join("conf.d"))
        .with_context(|| format!("cannot create {}", conf_dir.display()))?;
    let warden_conf = conf_dir.join("warden.conf");
    if !warden_conf.exists() {
        std::fs::write(&warden_conf, cairn_warden::conf::DEFAULT_WARDEN_CONF)
            .with_context(|| format!("cannot write {}", warden_conf.display()))?;
    }
    let program = std::env::current_exe().context("cannot find the cairn executable")?;
    let builtins = config
        .services()
        .into_iter()
        .map(|service| cairn_warden::Builtin {
            name: service.to_owned(),
            program: program.clone(),
            args: ["node", "service", "--service", service, "--config"]
                .into_iter()
                .map(OsString::from)
                .chain([config_path.clone().into_os_string()])
                .collect(),
            ports: config.ports(service),
        })
        .collect();
    let run_dir = config.data_dir.join("run");
    cairn_metrics::init(&[cairn_metrics::Group::Warden]);
    crate::node::publish_metrics(&config, "warden").await;
    let warden = cairn_warden::WardenConfig {
        node: config.name.clone(),
        host: config.host(),
        conf_dir,
        run_dir,
        coord: config.coord_addresses(),
        builtins,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("stopping the node's services");
        let _ = stop_tx.send(true);
    });
    // Central configuration (config.rs): pulls the cluster's files into conf_dir until stopped;
    // the Warden's live reload applies what changed.
    let puller = tokio::spawn(crate::config::run_pull_task(config.clone(), stop_rx.clone()));
    println!("node {} warden running: configuration in {}", config.name, warden.conf_dir.display());
    let result = cairn_warden::run(warden, stop_rx).await;
    // The puller has seen the stop too (or the Warden failed: stop it with it).
    puller.abort();
    let _ = puller.await;
    result?;
    println!("node {} stopped", config.name);
    Ok(())
}
