//! Data-path tests with fio's `nfs` ioengine (libnfs, a userspace NFSv3 client), run inside the
//! server's network namespace.
//!
//! fio 3.33's `nfs` engine has two quirks that shape how it is used here:
//! - it cannot fsync (`end_fsync=1` fails with "nfs: unhandled io 3" and aborts the job), and
//!   libnfs writes UNSTABLE; so the benchmark sends a COMMIT itself after a write job and adds
//!   its time to the job's;
//! - at the end of a job it does not wait for the last requests in flight (up to `iodepth`);
//!   they are dropped, fio counts only completed bytes, and the sequential write therefore
//!   writes `iodepth` MiB more than the read needs, so the file is complete where it is read;
//! - now and then (a few jobs in a hundred here) the job process then hangs for good in libnfs's
//!   unmount, after its I/O is done and measured. A watchdog kills a job process that has used
//!   no CPU for [`STALL_TIMEOUT`]; fio's main process then prints the job's figures as usual.
//!   So that a server that stalls mid-job is not mistaken for that, a job's figures are only
//!   accepted when it moved (nearly) everything it was asked to, or ran (nearly) its full time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::json::{self, Json};
use crate::nfs::Endpoint;
use crate::system::child_processes;

#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Read,
    Write,
}

impl Direction {
    fn key(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// A job process that uses no CPU for this long is taken to be hung (see the module docs).
const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// No fio job may take longer than this in all.
const JOB_TIMEOUT: Duration = Duration::from_secs(900);

/// What a job must have achieved for its figures to count.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// At least this many bytes completed.
    Bytes(u64),
    /// Ran for at least (about) this long.
    Runtime(Duration),
}

/// Completed bytes and the job's run time as fio measured them.
#[derive(Clone, Copy, Debug)]
pub struct FioFigures {
    pub bytes: u64,
    pub runtime: Duration,
    /// The watchdog killed the job process after it stopped using CPU.
    pub hung_job_killed: bool,
}

/// Runs one fio job against `endpoint` on file `file_name` in the export; `job` holds the
/// job's own options (`--rw=...` etc.).
pub fn run(
    fio: &Path,
    endpoint: &Endpoint,
    name: &str,
    file_name: &str,
    direction: Direction,
    job: &[String],
    expect: Expect,
) -> Result<FioFigures> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &endpoint.netns])
        .arg(fio)
        .args(["--output-format=json", &format!("--name={name}"), "--ioengine=nfs"])
        .arg(format!("--nfs_url={}", endpoint.libnfs_url()))
        .arg(format!("--filename={file_name}"))
        .args(job);
    execute(command, name, direction, expect, true)
}

/// Runs one fio job on a local file (no network namespace, no watchdog: the job's own engine,
/// e.g. `--ioengine=psync`, and file, `--filename=...`, are in `job`).
pub fn run_local(
    fio: &Path,
    name: &str,
    direction: Direction,
    job: &[String],
    expect: Expect,
) -> Result<FioFigures> {
    let mut command = Command::new(fio);
    command.args(["--output-format=json", &format!("--name={name}")]).args(job);
    execute(command, name, direction, expect, false)
}

/// Runs `command` (fio with `--output-format=json` and one job) and reads the job's figures.
/// With `watchdog`, a job process that uses no CPU for [`STALL_TIMEOUT`] is killed (see the
/// module docs).
fn execute(
    mut command: Command,
    name: &str,
    direction: Direction,
    expect: Expect,
    watchdog: bool,
) -> Result<FioFigures> {
    let output_dir = tempfile::tempdir()?;
    let stdout_path = output_dir.path().join("stdout");
    let stderr_path = output_dir.path().join("stderr");
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?);
    let mut child = command.spawn().with_context(|| format!("running {command:?}"))?;
    // `ip netns exec` execs fio, so the child is fio's main process; its children are the jobs.
    let fio_pid = child.id();
    let start = Instant::now();
    let mut last_cpu_ticks = None;
    let mut last_progress = Instant::now();
    let mut hung_job_killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > JOB_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("fio {name} did not finish within {JOB_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
        if !watchdog {
            continue;
        }
        let jobs = child_processes(fio_pid);
        let cpu_ticks: u64 = jobs.iter().map(|(_, ticks)| ticks).sum();
        if jobs.is_empty() || last_cpu_ticks != Some(cpu_ticks) {
            last_cpu_ticks = Some(cpu_ticks);
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_TIMEOUT {
            for (pid, _) in &jobs {
                if let Ok(pid) = libc::pid_t::try_from(*pid) {
                    // SAFETY: kill(2) of a job process of the fio we started (just read from
                    // /proc as its child); no memory is involved.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            hung_job_killed = true;
            last_progress = Instant::now();
        }
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    if !status.success() && !hung_job_killed {
        bail!("fio {name} failed ({status}): {}", tail(&stderr));
    }
    let Some(start) = stdout.find('{') else {
        bail!("fio {name} printed no JSON: {}", tail(&stderr));
    };
    let report = json::parse(&stdout[start..]).with_context(|| format!("parsing fio {name}'s output"))?;
    let job_report = report.get("jobs").and_then(|jobs| jobs.index(0)).context("fio output without jobs")?;
    let error = job_report.get("error").and_then(Json::as_f64).unwrap_or(0.0);
    if error != 0.0 {
        bail!("fio {name} reported error {error}: {}", tail(&stderr));
    }
    let number = |key: &str| {
        job_report
            .path(&[direction.key(), key])
            .and_then(Json::as_f64)
            .with_context(|| format!("fio output without {}.{key}", direction.key()))
    };
    let bytes = number("io_bytes")?;
    let runtime_ms = number("runtime")?;
    if bytes <= 0.0 || runtime_ms <= 0.0 {
        bail!("fio {name} moved no data: {}", tail(&stderr));
    }
    let figures = FioFigures {
        bytes: bytes as u64,
        runtime: Duration::from_secs_f64(runtime_ms / 1000.0),
        hung_job_killed,
    };
    let complete = match expect {
        Expect::Bytes(minimum) => figures.bytes >= minimum,
        Expect::Runtime(minimum) => figures.runtime >= minimum.mul_f64(0.95),
    };
    if !complete {
        bail!(
            "fio {name} stopped early ({} bytes in {:?}, expected {expect:?}){}: {}",
            figures.bytes,
            figures.runtime,
            if hung_job_killed {
                "; its job made no progress and was killed (a stalled server?)"
            } else {
                ""
            },
            tail(&stderr)
        );
    }
    Ok(figures)
}

/// The last few lines of fio's stderr, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
