//! The `cairn` binary: parses the command line and hands over to the subcommand's `run`.

mod admin;
mod config;
mod coord;
mod distcp;
mod fs_cli;
mod node;
mod rest;
mod up;
mod vip_agent;
mod warden;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: a distributed file system any machine mounts over NFS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cluster on this machine in the foreground: one node by default (coord, CLDB, file
    /// server, NFS gateway and web console under its Warden), `--nodes N` for more.
    Up(UpArgs),
    /// The coordination quorum: run a member, inspect and change the znode tree.
    Coord(coord::CoordArgs),
    /// The services every node's Warden runs: list them, start, stop or restart one.
    Service(admin::ServiceArgs),
    /// One node of a multi-node cluster.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Manage the exports file of a running node.
    Exports {
        #[command(subcommand)]
        command: ExportsCommand,
    },
    /// Volumes of a cluster: create, list, info, modify, remove (asks the CLDB, or a console).
    Volume(admin::VolumeArgs),
    /// Containers of a cluster: where each lives, its master and epoch (asks the CLDB, or a
    /// console).
    Container(admin::ContainerArgs),
    /// Alarms raised by the CLDB.
    Alarm(admin::AlarmArgs),
    /// Virtual IPs: pools of addresses the NFS gateways hold, moved to a healthy gateway when
    /// theirs fails (asks the CLDB master, or a console).
    Vip(admin::VipArgs),
    /// Users of the web console and its API: list, add, remove, set a password (through a
    /// node's console).
    User(admin::UserArgs),
    /// Files of a cluster without an NFS mount: put, get, ls, cat, rm, ... (Hadoop's `-put`,
    /// `-ls`, ... spellings too).
    Fs(fs_cli::FsArgs),
    /// Central configuration: files kept in the cluster's configuration volume and pulled by
    /// every node's Warden (push, pull, ls, cat).
    Config(config::ConfigArgs),
    /// Copy directory trees in parallel within a cluster, between clusters, or to and from the
    /// local file system; a second run copies only what is missing or changed.
    Distcp(distcp::DistcpArgs),
}

#[derive(Args)]
struct UpArgs {
    /// Where the node keeps its containers.
    #[arg(long, default_value = "./cairn-data")]
    data_dir: PathBuf,
    /// Port for NFS and MOUNT.
    #[arg(long, default_value_t = 2049)]
    nfs_port: u16,
    /// Address to listen on. The default keeps a trial off the network.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port for the portmapper; skipped with a warning when it cannot be bound.
    #[arg(long, default_value_t = 111, conflicts_with = "no_portmap")]
    portmap_port: u16,
    /// Do not run a portmapper.
    #[arg(long)]
    no_portmap: bool,
    /// Exports file in /etc/exports syntax [default: DATA_DIR/exports, created as
    /// `/ *(rw,no_root_squash)` when absent].
    #[arg(long)]
    exports: Option<PathBuf>,
    /// Nodes to run on this machine, each a Warden with its services as child processes: 1
    /// (coord, CLDB, file server, NFS gateway and console on one node), or 3 to 9 (coord and
    /// CLDB on the first 3, or 5 from 5 nodes on).
    #[arg(long, default_value_t = 1)]
    nodes: u16,
    /// One process instead: the store and the NFS gateway with a one-member coord, and no
    /// CLDB, Warden or console (the NFS benchmarks' and kernel-client tests' server).
    #[arg(long, conflicts_with_all = ["nodes", "replication", "console_port", "no_console"])]
    embedded: bool,
    /// Port of the first coord member; the others use the next ports.
    #[arg(long, default_value_t = coord::COORD_PORT_DEFAULT)]
    coord_port: u16,
    /// Port of the first node's CLDB; the others use the next ports.
    #[arg(long, default_value_t = 7222)]
    cldb_port: u16,
    /// Port of the first node's file server; the others use the next ports.
    /// (NFS too: node i serves NFS on --nfs-port + i.)
    #[arg(long, default_value_t = 5660)]
    fileserver_port: u16,
    /// Seconds a volume may lack copies (a node down) before the CLDB makes
    /// new ones on other nodes.
    #[arg(long, default_value_t = 60)]
    rereplication_timeout: u64,
    /// Copies of the default volume [default: 3 (DESIGN.md), at most the nodes].
    #[arg(long)]
    replication: Option<u32>,
    /// How the default volume's writes travel to its replicas.
    #[arg(long, value_enum, default_value = "chain")]
    replication_type: admin::ReplicationTypeArg,
    /// Seconds between two scrub passes (every block checked against its
    /// checksum, bad ones repaired from another copy) over each copy [default: one day].
    #[arg(long)]
    scrub_interval: Option<u64>,
    /// Port of the first node's web console (plain HTTP on --bind); node i serves it on this
    /// port + i.
    #[arg(long, default_value_t = 8443, conflicts_with = "no_console")]
    console_port: u16,
    /// Run no web console.
    #[arg(long)]
    no_console: bool,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run a node's Warden in the foreground: it starts the node's services (coord member and
    /// CLDB if configured, file server, NFS gateway, console, pluggable ones) as child processes.
    Start {
        /// The node's configuration (JSON; see ARCHITECTURE.md and `cairn up --nodes 3`, which
        /// writes one per node under DATA_DIR/nodes/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Every node of the cluster: state, last heartbeat, services, addresses, topology (asks the
    /// CLDB).
    List(admin::NodeListArgs),
    /// One built-in service of a node, in the foreground (the Warden runs these).
    #[command(hide = true)]
    Service {
        #[arg(long)]
        config: PathBuf,
        /// coord, cldb, fileserver, nfs or console.
        #[arg(long)]
        service: String,
    },
}

#[derive(Subcommand)]
enum ExportsCommand {
    /// Make a running `cairn up` re-read its exports file (same as sending it SIGHUP).
    Reload {
        #[arg(long, default_value = "./cairn-data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(fs_cli::hadoop_spellings(std::env::args_os()));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Up(args) => {
            let config = up::UpConfig {
                data_dir: args.data_dir,
                nfs_port: args.nfs_port,
                bind_address: args.bind,
                portmap_port: (!args.no_portmap).then_some(args.portmap_port),
                exports_file: args.exports,
                nodes: args.nodes,
                coord_port: args.coord_port,
            };
            if args.embedded {
                up::run(config)
            } else {
                up::run_cluster(up::ClusterUpConfig {
                    up: config,
                    cldb_port: args.cldb_port,
                    fileserver_port: args.fileserver_port,
                    rereplication_timeout: std::time::Duration::from_secs(args.rereplication_timeout),
                    replication: args.replication.unwrap_or(3.min(u32::from(args.nodes))),
                    replication_type: args.replication_type.into(),
                    scrub_interval: args
                        .scrub_interval
                        .map_or(cairn_fileserver::SCRUB_INTERVAL_DEFAULT, std::time::Duration::from_secs),
                    console_port: (!args.no_console).then_some(args.console_port),
                })
            }
        }
        Command::Coord(args) => coord::run(args),
        Command::Node { command: NodeCommand::Start { config } } => node::run(&config),
        Command::Exports { command: ExportsCommand::Reload { data_dir } } => up::signal_reload(&data_dir),
        Command::Node { command: NodeCommand::List(args) } => admin::node_list(args),
        Command::Node { command: NodeCommand::Service { config, service } } => {
            node::run_service(&config, &service)
        }
        Command::Service(args) => admin::service(args),
        Command::Volume(args) => admin::volume(args),
        Command::Container(args) => admin::container(args),
        Command::Alarm(args) => admin::alarm(args),
        Command::Vip(args) => admin::vip(args),
        Command::User(args) => admin::user(args),
        Command::Config(args) => config::run(args),
        Command::Fs(args) => return fs_cli::main(args),
        Command::Distcp(args) => return distcp::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn: {error:#}");
            ExitCode::FAILURE
        }
    }
}
