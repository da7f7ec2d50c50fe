//! Three-member quorums of either system on loopback: starting, finding the leader, killing and
//! restarting one member, and the processes' CPU and disk counters. Every process is killed when
//! the [`Cluster`] is dropped, and also by the kernel if the benchmark itself dies
//! (PR_SET_PDEATHSIG), so nothing is left running.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::system::check_interrupted;
pub use crate::system::{Usage, usage};

/// Members in each quorum.
pub const MEMBERS: usize = 3;
/// How long a quorum may take to elect a leader and bring every member up to date.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Time allowed for one status query (Cairn's status call, ZooKeeper's four-letter words).
const STATUS_TIMEOUT: Duration = Duration::from_millis(1000);
/// The Debian package's ZooKeeper jar (its manifest names the libraries it needs).
const DEBIAN_ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// A logger for ZooKeeper's slf4j, so its log says something (without it slf4j discards all).
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
/// What the ZooKeeper side needs installed.
pub const ZOOKEEPER_PACKAGES: &str = "apt-get install -y zookeeper default-jre-headless";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    Cairn,
    ZooKeeper,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cairn => "cairn",
            Self::ZooKeeper => "zookeeper",
        }
    }
}

/// How to start a member of each system.
#[derive(Clone, Debug)]
pub struct Launchers {
    pub cairn_binary: PathBuf,
    pub java: PathBuf,
    /// ZooKeeper's jars (the member's own conf folder goes first on the class path).
    pub zookeeper_classpath: Vec<PathBuf>,
}

/// Finds java and ZooKeeper's jars, with an error naming the packages when they are missing.
pub fn find_zookeeper() -> Result<(PathBuf, Vec<PathBuf>)> {
    let install = || format!("install them with `{ZOOKEEPER_PACKAGES}`");
    ensure!(
        Path::new("/usr/share/zookeeper").is_dir(),
        "ZooKeeper is not installed (/usr/share/zookeeper is missing): the Debian package `zookeeper` \
         and a JRE are needed; {}",
        install()
    );
    let mut classpath = Vec::new();
    // An upstream-style layout keeps its jars in lib/; Debian's in /usr/share/java.
    if let Ok(entries) = std::fs::read_dir("/usr/share/zookeeper/lib") {
        let mut jars: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        jars.sort();
        classpath.extend(jars);
    }
    if Path::new(DEBIAN_ZOOKEEPER_JAR).exists() {
        classpath.push(PathBuf::from(DEBIAN_ZOOKEEPER_JAR));
    }
    ensure!(
        !classpath.is_empty(),
        "no ZooKeeper jar in /usr/share/zookeeper/lib or {DEBIAN_ZOOKEEPER_JAR} (package `zookeeper`); {}",
        install()
    );
    if Path::new(SLF4J_SIMPLE_JAR).exists() {
        classpath.push(PathBuf::from(SLF4J_SIMPLE_JAR));
    }
    let java = ["/usr/bin/java", "/usr/lib/jvm/default-java/bin/java"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| format!("no java found (package `default-jre-headless`); {}", install()))?;
    Ok((java, classpath))
}

/// One member: where clients reach it, its folder, and its process while it runs.
struct Member {
    id: u64,
    client_address: String,
    /// The member's own folder: data, configuration, log.
    dir: PathBuf,
    child: Option<Child>,
}

/// What a member's status says, for both systems alike.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MemberView {
    leading: bool,
    /// The member this one follows or is (Cairn); ZooKeeper's `srvr` does not say.
    leader: Option<u64>,
    /// Cairn: the last applied log index; ZooKeeper (leader only): followers in sync.
    progress: Option<u64>,
    serving: bool,
}

pub struct Cluster {
    pub system: System,
    launchers: Launchers,
    members: Vec<Member>,
    /// `ID=HOST:PORT,...` (Cairn) for every start.
    cairn_members: String,
}

/// `count` distinct free TCP ports on 127.0.0.1 (bound at once, then released).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
        .collect::<std::io::Result<_>>()
        .context("finding free ports")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl Cluster {
    /// Lays out and starts three members with their data under `dir` (created).
    pub fn start(system: System, launchers: &Launchers, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = Cluster {
            system,
            launchers: launchers.clone(),
            members: Vec::new(),
            cairn_members: String::new(),
        };
        match system {
            System::Cairn => {
                let ports = free_ports(MEMBERS)?;
                for (i, port) in ports.iter().enumerate() {
                    let id = i as u64 + 1;
                    let member_dir = dir.join(format!("member{id}"));
                    std::fs::create_dir_all(member_dir.join("data"))?;
                    cluster.members.push(Member {
                        id,
                        client_address: format!("127.0.0.1:{port}"),
                        dir: member_dir,
                        child: None,
                    });
                }
                cluster.cairn_members = cluster
                    .members
                    .iter()
                    .map(|m| format!("{}={}", m.id, m.client_address))
                    .collect::<Vec<_>>()
                    .join(",");
            }
            System::ZooKeeper => {
                let ports = free_ports(3 * MEMBERS)?;
                let mut servers = String::new();
                for i in 0..MEMBERS {
                    let _ = writeln!(
                        servers,
                        "server.{}=127.0.0.1:{}:{}",
                        i + 1,
                        ports[MEMBERS + i],
                        ports[2 * MEMBERS + i]
                    );
                }
                for (i, port) in ports.iter().take(MEMBERS).enumerate() {
                    let id = i as u64 + 1;
                    let member_dir = dir.join(format!("member{id}"));
                    let data = member_dir.join("data");
                    std::fs::create_dir_all(&data)?;
                    std::fs::create_dir_all(member_dir.join("conf"))?;
                    std::fs::write(data.join("myid"), format!("{id}\n"))?;
                    let config = format!(
                        "tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                         clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n4lw.commands.whitelist=*\n\
                         admin.enableServer=false\n{servers}",
                        data.display()
                    );
                    std::fs::write(member_dir.join("conf").join("zoo.cfg"), config)?;
                    cluster.members.push(Member {
                        id,
                        client_address: format!("127.0.0.1:{port}"),
                        dir: member_dir,
                        child: None,
                    });
                }
            }
        }
        for index in 0..MEMBERS {
            cluster.start_member(index)?;
        }
        Ok(cluster)
    }

    /// Every member's client address, in id order.
    pub fn addresses(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_address.clone()).collect()
    }

    pub fn address(&self, index: usize) -> &str {
        &self.members[index].client_address
    }

    pub fn id(&self, index: usize) -> u64 {
        self.members[index].id
    }

    /// Process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.child.as_ref().map(Child::id)).collect()
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.members[index].dir.join("member.log")
    }

    /// Starts (or restarts) member `index` on its existing data. Call it from the main thread:
    /// PR_SET_PDEATHSIG fires when the thread that started the process ends.
    pub fn start_member(&mut self, index: usize) -> Result<()> {
        let member = &self.members[index];
        ensure!(member.child.is_none(), "member {} is already running", member.id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(index))?;
        let mut command = match self.system {
            System::Cairn => {
                let mut command = Command::new(&self.launchers.cairn_binary);
                command
                    .args([
                        "coord",
                        "serve",
                        "--id",
                        &member.id.to_string(),
                        "--listen",
                        &member.client_address,
                    ])
                    .args(["--members", &self.cairn_members])
                    .arg("--data-dir")
                    .arg(member.dir.join("data"));
                command
            }
            System::ZooKeeper => {
                let mut classpath = vec![member.dir.join("conf")];
                classpath.extend(self.launchers.zookeeper_classpath.iter().cloned());
                let classpath = std::env::join_paths(classpath).context("ZooKeeper class path")?;
                let mut command = Command::new(&self.launchers.java);
                command
                    .args(["-Xmx512m", "-Dorg.slf4j.simpleLogger.showDateTime=true"])
                    .arg(format!("-Dzookeeper.log.dir={}", member.dir.display()))
                    .arg("-cp")
                    .arg(classpath)
                    .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                    .arg(member.dir.join("conf").join("zoo.cfg"));
                command
            }
        };
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).current_dir(&member.dir);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {} member {}", self.system.name(), member.id))?;
        self.members[index].child = Some(child);
        Ok(())
    }

    /// SIGKILLs member `index` and reaps it.
    pub fn kill_member(&mut self, index: usize) -> Result<()> {
        if let Some(mut child) = self.members[index].child.take() {
            child.kill().context("kill -9")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Fails, with the end of its log, if a member that should run has exited.
    fn check_alive(&mut self) -> Result<()> {
        for index in 0..self.members.len() {
            let Some(child) = self.members[index].child.as_mut() else { continue };
            if let Some(status) = child.try_wait()? {
                self.members[index].child = None;
                bail!(
                    "{} member {} exited ({status}); the end of {}:\n{}",
                    self.system.name(),
                    self.members[index].id,
                    self.log_path(index).display(),
                    log_tail(&self.log_path(index))
                );
            }
        }
        Ok(())
    }

    async fn view(&self, index: usize) -> Option<MemberView> {
        let address = &self.members[index].client_address;
        match self.system {
            System::Cairn => {
                let status = cairn_coord::client::member_status(address, STATUS_TIMEOUT).await.ok()?;
                Some(MemberView {
                    leading: status.state == "Leader",
                    leader: status.leader,
                    progress: status.last_applied,
                    serving: matches!(status.state.as_str(), "Leader" | "Follower"),
                })
            }
            System::ZooKeeper => {
                let srvr = four_letter_word(address, "srvr").await.ok()?;
                let mode = srvr.lines().find_map(|l| l.strip_prefix("Mode: ")).map(str::trim);
                let leading = mode == Some("leader");
                let progress = if leading {
                    let mntr = four_letter_word(address, "mntr").await.ok()?;
                    mntr.lines()
                        .find_map(|l| l.strip_prefix("zk_synced_followers"))
                        .and_then(|v| v.trim().parse().ok())
                } else {
                    None
                };
                Some(MemberView {
                    leading,
                    leader: None,
                    progress,
                    serving: matches!(mode, Some("leader" | "follower")),
                })
            }
        }
    }

    /// The leader's index once the quorum has settled: every running member serving under one
    /// leader and up to date (Cairn: the same last applied index on all; ZooKeeper: the leader
    /// counts every other running member as a synced follower). `None` while not settled.
    async fn settled_leader(&self) -> Option<usize> {
        let running: Vec<usize> =
            (0..self.members.len()).filter(|i| self.members[*i].child.is_some()).collect();
        let mut views = Vec::new();
        for &index in &running {
            views.push((index, self.view(index).await?));
        }
        if !views.iter().all(|(_, v)| v.serving) {
            return None;
        }
        let leaders: Vec<usize> = views.iter().filter(|(_, v)| v.leading).map(|(i, _)| *i).collect();
        let [leader] = leaders[..] else { return None };
        let settled = match self.system {
            System::Cairn => {
                let id = self.members[leader].id;
                let progress = views[0].1.progress;
                views.iter().all(|(_, v)| v.leader == Some(id) && v.progress == progress)
            }
            System::ZooKeeper => {
                let leader_view = &views.iter().find(|(i, _)| *i == leader)?.1;
                leader_view.progress == Some(running.len() as u64 - 1)
            }
        };
        settled.then_some(leader)
    }

    /// Waits until the quorum has settled (see [`Self::settled_leader`]); returns the leader's
    /// index. Fails if a member exits or it takes longer than [`SETTLE_TIMEOUT`].
    pub async fn wait_settled(&mut self) -> Result<usize> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            self.check_alive()?;
            check_interrupted()?;
            if let Some(leader) = self.settled_leader().await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} quorum did not settle within {SETTLE_TIMEOUT:?}; the end of member 1's log:\n{}",
                    self.system.name(),
                    log_tail(&self.log_path(0))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// ZooKeeper: the members holding a client connection with a session, from `cons` (Cairn's
    /// client says where it is connected itself).
    pub async fn zookeeper_members_with_sessions(&self) -> Vec<usize> {
        let mut found = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            if member.child.is_none() {
                continue;
            }
            if let Ok(cons) = four_letter_word(&member.client_address, "cons").await
                && cons.lines().any(|l| l.contains("sid=0x") && !l.contains("sid=0x0,"))
            {
                found.push(index);
            }
        }
        found
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends a ZooKeeper four-letter word and returns the whole answer.
pub async fn four_letter_word(address: &str, word: &str) -> Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(word.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    tokio::time::timeout(STATUS_TIMEOUT, exchange).await.with_context(|| format!("{word} to {address}"))?
}

/// The last lines of a member's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(9).expect("ports");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 9);
    }
}
