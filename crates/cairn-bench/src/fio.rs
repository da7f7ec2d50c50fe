//! Data-path tests with fio's `nfs` ioengine (libnfs, a userspace NFSv3 client), run inside the
//! server's network namespace.
//!
//! fio 3.33's `nfs` engine has two quirks that shape how it is used here:
//! - it cannot fsync (`end_fsync=1` fails with "nfs: unhandled io 3" and aborts the job), and
//!   libnfs writes UNSTABLE; so the benchmark sends a COMMIT itself after a write job and adds
//!   its time to the job's;
//! - at the end of a job it does not wait for the last requests in flight (up to `iodepth`);
//!   they are dropped, fio counts only completed bytes, and the sequential write therefore
//!   writes `iodepth` MiB more than the read needs, so the file is complete where it is read.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::json::{self, Json};
use crate::nfs::Endpoint;

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

/// Completed bytes and the job's run time as fio measured them.
#[derive(Clone, Copy, Debug)]
pub struct FioFigures {
    pub bytes: u64,
    pub runtime: Duration,
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
) -> Result<FioFigures> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &endpoint.netns])
        .arg(fio)
        .args(["--output-format=json", &format!("--name={name}"), "--ioengine=nfs"])
        .arg(format!("--nfs_url={}", endpoint.libnfs_url()))
        .arg(format!("--filename={file_name}"))
        .args(job);
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("fio {name} failed ({}): {}", output.status, tail(&stderr));
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
    Ok(FioFigures { bytes: bytes as u64, runtime: Duration::from_secs_f64(runtime_ms / 1000.0) })
}

/// The last few lines of fio's stderr, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
