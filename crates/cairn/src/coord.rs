//! `cairn coord ...`: run a coord member, and the zkCli-like tool to look at and change the tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_coord::api::{CoordError, CreateMode, Stat};
use cairn_coord::client::{ClientOptions, CoordClient, member_status};
use cairn_coord::member::{Member, MemberConfig, StartError};
use cairn_coord::proto::TcpDialer;
use cairn_coord::store::FlushMode;
use clap::{Args, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// The port the first coord member listens on by default (MapR's ZooKeeper port).
pub const COORD_PORT_DEFAULT: u16 = 5181;
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a starting member waits for its port and store to be released by a dying predecessor.
const START_RETRY_TIME: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct CoordArgs {
    /// Coord members to talk to, host:port, comma-separated [default: from CAIRN_COORD, else from
    /// ./cairn-data/cluster.json, else 127.0.0.1:5181].
    #[arg(long, global = true, value_delimiter = ',')]
    coord: Vec<String>,
    #[command(subcommand)]
    command: CoordCommand,
}

#[derive(Subcommand)]
enum CoordCommand {
    /// Run one coord member in the foreground.
    Serve(ServeArgs),
    /// Members, leader, term, last applied index, and each member's state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List a znode's children.
    Ls { path: String },
    /// Print a znode's data (as text; `--hex` for bytes).
    Get {
        path: String,
        #[arg(long)]
        hex: bool,
        /// Read through the leader's read point: sees every write committed before it.
        #[arg(long)]
        linearizable: bool,
    },
    /// Replace a znode's data.
    Set {
        path: String,
        data: String,
        /// Only if the znode is at this version.
        #[arg(long)]
        version: Option<i32>,
    },
    /// Create a znode. An ephemeral one lives as long as this command: it holds the session open
    /// until interrupted.
    Create {
        path: String,
        #[arg(default_value = "")]
        data: String,
        #[arg(long)]
        ephemeral: bool,
        #[arg(long)]
        sequential: bool,
        /// Session timeout, for --ephemeral.
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u64,
    },
    /// Delete a znode.
    Rm {
        path: String,
        #[arg(long)]
        version: Option<i32>,
    },
    /// Print a znode's stat.
    Stat {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Print each change to a znode (data, or children with --children), one line per event.
    Watch {
        path: String,
        #[arg(long)]
        children: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Add a voting member (it must be running, started with the current members in --members).
    AddMember { id: u64, address: String },
    /// Remove a member from the quorum.
    RemoveMember { id: u64 },
}

#[derive(Args)]
pub struct ServeArgs {
    /// This member's id (a positive integer, unique in the quorum).
    #[arg(long)]
    pub id: u64,
    /// Where the Raft log and snapshots live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on, host:port.
    #[arg(long)]
    pub listen: String,
    /// Address other members and clients reach this one at [default: the listen address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// The initial members, `ID=HOST:PORT,...`, this one included. Only read when the quorum is
    /// new; later the membership comes from the log.
    #[arg(long, value_delimiter = ',')]
    pub members: Vec<String>,
    #[arg(long, default_value = "cairn")]
    pub cluster_name: String,
    /// Snapshot the tree and purge the log after this many entries.
    #[arg(long, default_value_t = cairn_coord::raft::SNAPSHOT_EVERY_ENTRIES)]
    pub snapshot_every: u64,
}

pub fn run(args: CoordArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-coord")
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        CoordCommand::Serve(serve) => runtime.block_on(serve_member(serve)),
        command => {
            let members = coord_addresses(&args.coord, Path::new("./cairn-data"));
            runtime.block_on(tool(members, command))
        }
    }
}

/// Parses `ID=HOST:PORT` items.
pub fn parse_members(items: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for item in items {
        let (id, address) =
            item.split_once('=').with_context(|| format!("member {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().with_context(|| format!("member id {id:?} is not a number"))?;
        if id == 0 {
            bail!("member ids start at 1");
        }
        if members.insert(id, address.trim().to_owned()).is_some() {
            bail!("member {id} is listed twice");
        }
    }
    Ok(members)
}

async fn serve_member(args: ServeArgs) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    };
    run_member(args, stop).await
}

/// Runs one coord member until `stop` completes.
pub async fn run_member(args: ServeArgs, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let address = args.advertise.clone().unwrap_or_else(|| args.listen.clone());
    let members = parse_members(&args.members)?;
    if !members.is_empty() && members.get(&args.id) != Some(&address) {
        bail!("--members must list this member as {}={address}", args.id);
    }
    // A member that just died (its `cairn up` was killed, say) may hold the port and the store for
    // a moment longer: wait for them rather than fail.
    let deadline = tokio::time::Instant::now() + START_RETRY_TIME;
    let listener = loop {
        match tokio::net::TcpListener::bind(&args.listen).await {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {}", args.listen)),
        }
    };
    let config = MemberConfig {
        id: args.id,
        data_dir: args.data_dir.clone(),
        address: address.clone(),
        initial_members: members,
        cluster_name: args.cluster_name,
        flush: FlushMode::Background,
        snapshot_every_entries: args.snapshot_every,
    };
    let member = loop {
        match Member::start(config.clone(), Arc::new(TcpDialer)).await {
            Ok(member) => break member,
            Err(StartError::Store(e)) if e.is_in_use() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("coord member {} cannot start", args.id)),
        }
    };
    println!("coord member {} serving on {address} (data in {})", args.id, args.data_dir.display());
    cairn_rpc::serve_tcp(listener, member.handler(), stop).await;
    tracing::info!("coord member {} stopping", member.id());
    member.shutdown().await;
    Ok(())
}

/// Where the tools find coord: the flag, then CAIRN_COORD, then the cluster.json of the
/// `cairn up` in `data_dir`, then the default port on loopback.
pub(crate) fn coord_addresses(flag: &[String], data_dir: &Path) -> Vec<String> {
    let given: Vec<String> = flag.iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
    if !given.is_empty() {
        return given;
    }
    if let Ok(env) = std::env::var("CAIRN_COORD") {
        let list: Vec<String> =
            env.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if !list.is_empty() {
            return list;
        }
    }
    if let Some(list) = crate::up::coord_addresses_from(data_dir) {
        return list;
    }
    vec![format!("127.0.0.1:{COORD_PORT_DEFAULT}")]
}

fn stat_json(stat: &Stat) -> serde_json::Value {
    serde_json::json!({
        "czxid": stat.czxid, "mzxid": stat.mzxid, "pzxid": stat.pzxid,
        "ctime_ms": stat.ctime_ms, "mtime_ms": stat.mtime_ms,
        "version": stat.version, "cversion": stat.cversion,
        "ephemeral_owner": stat.ephemeral_owner,
        "data_length": stat.data_length, "num_children": stat.num_children,
    })
}

async fn client(members: &[String], session: Option<Duration>) -> anyhow::Result<CoordClient> {
    let options = ClientOptions { session_timeout: session, ..ClientOptions::default() };
    CoordClient::connect(members, options)
        .await
        .with_context(|| format!("cannot reach coord at {}", members.join(",")))
}

fn failed(e: CoordError) -> anyhow::Error {
    anyhow::anyhow!(e)
}

async fn tool(members: Vec<String>, command: CoordCommand) -> anyhow::Result<()> {
    match command {
        CoordCommand::Serve(_) => unreachable!("handled by run"),
        CoordCommand::Status { json } => status(&members, json).await,
        CoordCommand::Ls { path } => {
            let c = client(&members, None).await?;
            for name in c.children(&path).await.map_err(failed)? {
                println!("{name}");
            }
            Ok(())
        }
        CoordCommand::Get { path, hex, linearizable } => {
            let c = client(&members, None).await?;
            let (ok, _) =
                c.read(cairn_coord::proto::ReadOp::Get, &path, false, linearizable).await.map_err(failed)?;
            let cairn_coord::proto::ReadOk::Data { data, .. } = ok else { bail!("unexpected answer") };
            if hex {
                println!("{}", data.iter().map(|b| format!("{b:02x}")).collect::<String>());
            } else {
                println!("{}", String::from_utf8_lossy(&data));
            }
            Ok(())
        }
        CoordCommand::Set { path, data, version } => {
            let c = client(&members, None).await?;
            let stat = c.set(&path, data.as_bytes(), version).await.map_err(failed)?;
            println!("{path} version {}", stat.version);
            Ok(())
        }
        CoordCommand::Create { path, data, ephemeral, sequential, session_timeout_ms } => {
            let mode = match (ephemeral, sequential) {
                (false, false) => CreateMode::Persistent,
                (true, false) => CreateMode::Ephemeral,
                (false, true) => CreateMode::PersistentSequential,
                (true, true) => CreateMode::EphemeralSequential,
            };
            let session = ephemeral.then(|| Duration::from_millis(session_timeout_ms));
            let c = client(&members, session).await?;
            let (created, _) = c.create(&path, data.as_bytes(), mode).await.map_err(failed)?;
            println!("{created}");
            if ephemeral {
                use std::io::Write;
                println!("holding session {:#x}; interrupt to end it", c.session());
                let _ = std::io::stdout().flush();
                let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = terminate.recv() => {},
                }
                c.close().await.map_err(failed)?;
            }
            Ok(())
        }
        CoordCommand::Rm { path, version } => {
            let c = client(&members, None).await?;
            c.delete(&path, version).await.map_err(failed)
        }
        CoordCommand::Stat { path, json } => {
            let c = client(&members, None).await?;
            let Some(stat) = c.exists(&path).await.map_err(failed)? else {
                return Err(failed(CoordError::NoNode { path }));
            };
            if json {
                println!("{}", stat_json(&stat));
            } else {
                for (key, value) in stat_json(&stat).as_object().into_iter().flatten() {
                    println!("{key} = {value}");
                }
            }
            Ok(())
        }
        CoordCommand::Watch { path, children, count } => watch(&members, &path, children, count).await,
        CoordCommand::AddMember { id, address } => {
            let c = client(&members, None).await?;
            c.add_member(id, &address).await.map_err(failed)?;
            println!("member {id} at {address} is a voter");
            Ok(())
        }
        CoordCommand::RemoveMember { id } => {
            let c = client(&members, None).await?;
            c.remove_member(id).await.map_err(failed)?;
            println!("member {id} removed");
            Ok(())
        }
    }
}

/// Re-arms the one-shot watch after each event, printing one JSON line per event.
async fn watch(members: &[String], path: &str, children: bool, count: Option<u64>) -> anyhow::Result<()> {
    use std::io::Write;
    let c = client(members, Some(Duration::from_secs(10))).await?;
    let mut seen = 0u64;
    println!("watching {path}");
    let _ = std::io::stdout().flush();
    while count.is_none_or(|n| seen < n) {
        let watch = if children {
            c.children_watch(path).await.map_err(failed)?.1
        } else {
            c.exists_watch(path).await.map_err(failed)?.1
        };
        let event = watch.wait().await.map_err(failed)?;
        println!(
            "{}",
            serde_json::json!({"path": event.path, "event": format!("{:?}", event.event), "zxid": event.zxid})
        );
        let _ = std::io::stdout().flush();
        seen += 1;
    }
    c.close().await.map_err(failed)
}

async fn status(members: &[String], json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for address in members {
        rows.push((address.clone(), member_status(address, STATUS_TIMEOUT).await));
    }
    // Members the quorum knows about but that were not asked.
    let known: Vec<(u64, String)> =
        rows.iter().filter_map(|(_, r)| r.as_ref().ok()).flat_map(|s| s.voters.clone()).collect();
    for (_, address) in known {
        if !rows.iter().any(|(a, _)| *a == address) {
            rows.push((address.clone(), member_status(&address, STATUS_TIMEOUT).await));
        }
    }
    let reachable = rows.iter().filter(|(_, r)| r.is_ok()).count();
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(address, r)| match r {
                Ok(s) => serde_json::json!({
                    "address": address, "reachable": true, "id": s.id, "state": s.state, "term": s.term,
                    "leader": s.leader, "last_log_index": s.last_log_index, "last_applied": s.last_applied,
                    "voters": s.voters, "learners": s.learners, "znodes": s.znodes, "sessions": s.sessions,
                }),
                Err(e) => serde_json::json!({"address": address, "reachable": false, "error": e.to_string()}),
            })
            .collect();
        let leader = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).find_map(|s| s.leader);
        println!("{}", serde_json::json!({"leader": leader, "members": list}));
    } else {
        println!(
            "{:<4} {:<22} {:<10} {:>6} {:>7} {:>10} {:>10}",
            "ID", "ADDRESS", "STATE", "TERM", "LEADER", "LAST LOG", "APPLIED"
        );
        for (address, r) in &rows {
            match r {
                Ok(s) => println!(
                    "{:<4} {:<22} {:<10} {:>6} {:>7} {:>10} {:>10}",
                    s.id,
                    address,
                    s.state,
                    s.term,
                    s.leader.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    s.last_log_index.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    s.last_applied.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                ),
                Err(e) => println!("{:<4} {:<22} {:<10} {e}", "?", address, "DOWN"),
            }
        }
    }
    if reachable == 0 {
        bail!("no coord member reachable");
    }
    Ok(())
}
