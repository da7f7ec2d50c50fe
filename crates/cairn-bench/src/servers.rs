//! Starting and stopping the two servers, each in a network namespace of its own with only a
//! loopback interface, listening on 127.0.0.1 there; both sides are otherwise set up alike.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::nfs::Endpoint;
use crate::system::run_checked;

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

const NFS_PORT: u16 = 2049;
/// ganesha-server's MOUNT port; Cairn serves MOUNT on the NFS port.
const GANESHA_MOUNT_PORT: u16 = 20048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Cairn,
    Ganesha,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cairn => "cairn",
            Self::Ganesha => "ganesha",
        }
    }
}

pub struct Tools {
    pub ganesha_script: PathBuf,
    pub cairn_binary: PathBuf,
}

pub struct RunningServer {
    pub endpoint: Endpoint,
    guard: Guard,
}

enum Guard {
    Ganesha { script: PathBuf, netns: String },
    Cairn { child: Child, log: PathBuf, _netns: Netns },
}

impl RunningServer {
    /// Starts `side` serving from `dir` (created if missing), in a namespace named `netns`.
    pub fn start(side: Side, tools: &Tools, dir: &Path, netns: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        match side {
            Side::Ganesha => start_ganesha(&tools.ganesha_script, dir, netns),
            Side::Cairn => start_cairn(&tools.cairn_binary, dir, netns),
        }
    }

    /// Fails if the server process is gone (Cairn only; ganesha-server watches its own).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Guard::Cairn { child, log, .. } = &mut self.guard
            && let Some(status) = child.try_wait()?
        {
            bail!("cairn exited ({status}); the end of its log:\n{}", log_tail(log));
        }
        Ok(())
    }
}

fn start_ganesha(script: &Path, dir: &Path, netns: &str) -> Result<RunningServer> {
    run_checked(
        Command::new(script)
            .arg("start")
            .arg(dir)
            .arg(netns)
            .env("NFS_PORT", NFS_PORT.to_string())
            .env("MNT_PORT", GANESHA_MOUNT_PORT.to_string()),
    )
    .context("starting ganesha")?;
    let guard = Guard::Ganesha { script: script.to_owned(), netns: netns.to_owned() };
    let export = std::fs::canonicalize(dir)?.to_str().context("export path is not UTF-8")?.to_owned();
    Ok(RunningServer {
        endpoint: Endpoint {
            netns: netns.to_owned(),
            nfs_port: NFS_PORT,
            mount_port: GANESHA_MOUNT_PORT,
            export,
        },
        guard,
    })
}

fn start_cairn(binary: &Path, dir: &Path, netns_name: &str) -> Result<RunningServer> {
    let netns = Netns::create(netns_name)?;
    let log = std::env::temp_dir().join(format!("cairn-bench.{}.cairn.log", std::process::id()));
    let log_file = std::fs::File::create(&log)?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns_name])
        .arg(binary)
        .arg("up")
        .arg("--data-dir")
        .arg(dir)
        .args(["--nfs-port", &NFS_PORT.to_string(), "--bind", "127.0.0.1", "--no-portmap"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("cairn stdout")?;
    let mut server = RunningServer {
        endpoint: Endpoint {
            netns: netns_name.to_owned(),
            nfs_port: NFS_PORT,
            mount_port: NFS_PORT,
            export: "/".to_owned(),
        },
        guard: Guard::Cairn { child, log: log.clone(), _netns: netns },
    };
    // A thread owns stdout for the server's life (so the pipe never fills) and reports the
    // ready line; it ends at EOF, when the server exits.
    let (ready_sender, ready_receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Cairn is ready:") {
                let _ = ready_sender.send(line);
            }
        }
    });
    let start = Instant::now();
    loop {
        match ready_receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(port) = ready_port(&line) {
                    server.endpoint.nfs_port = port;
                    server.endpoint.mount_port = port;
                }
                return Ok(server);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("cairn exited before it was ready; the end of its log:\n{}", log_tail(&log))
            }
        }
        server.check_alive()?;
        if start.elapsed() > START_TIMEOUT {
            bail!("cairn not ready after {START_TIMEOUT:?}; the end of its log:\n{}", log_tail(&log));
        }
    }
}

/// The last lines of Cairn's stderr, for error messages (the file goes when the server does).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The port in a ready line such as `Cairn is ready: nfs=127.0.0.1:2049 ...`.
fn ready_port(line: &str) -> Option<u16> {
    let address = line.split_whitespace().find_map(|word| word.strip_prefix("nfs="))?;
    address.trim_end_matches([',', ';']).rsplit_once(':')?.1.parse().ok()
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        match &mut self.guard {
            Guard::Ganesha { script, netns } => {
                if let Err(error) = run_checked(Command::new(&*script).arg("stop").arg(&*netns)) {
                    eprintln!("cairn-bench: stopping ganesha: {error:#}");
                }
            }
            Guard::Cairn { child, log, .. } => {
                let _ = std::fs::remove_file(&*log);
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet,
                    // so the pid cannot have been reused.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
                let start = Instant::now();
                while start.elapsed() < STOP_TIMEOUT {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                eprintln!("cairn-bench: cairn did not exit after SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_of_the_ready_line() {
        assert_eq!(ready_port("Cairn is ready: nfs=127.0.0.1:2049 mount=same"), Some(2049));
        assert_eq!(ready_port("Cairn is ready: data=/x nfs=[::1]:3049, exports=/"), Some(3049));
        assert_eq!(ready_port("Cairn is ready"), None);
    }
}
