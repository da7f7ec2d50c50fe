//! The machine side: commands, a fresh loop-mounted ext4 per server, dropping the page cache,
//! and the machine's own limits (`dd` with fsync, loopback TCP).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::netns;

pub const MIB: f64 = 1024.0 * 1024.0;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag that the benchmark checks between steps, so that it stops
/// at the next step and its guards unmount and delete what it created.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// CPUs kept busy by others: sampled over one second while the benchmark itself is idle (no
/// server running). The machine is shared, and a busy one makes the figures noisy.
pub fn busy_cpus_elsewhere() -> f64 {
    let Some(before) = CpuSample::take() else { return f64::NAN };
    std::thread::sleep(Duration::from_secs(1));
    CpuSample::take().map_or(f64::NAN, |after| after.since(&before).busy)
}

/// The machine's CPU time counters (`/proc/stat`'s first line), in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    total: u64,
    idle: u64,
    iowait: u64,
}

/// CPUs in use between two [`CpuSample`]s: busy (everything but idle and iowait), and idle
/// waiting for I/O.
#[derive(Clone, Copy, Debug)]
pub struct CpuUse {
    pub busy: f64,
    pub iowait: f64,
}

impl CpuSample {
    pub fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal ...
        Some(Self {
            total: fields.iter().take(8).sum(),
            idle: *fields.get(3)?,
            iowait: fields.get(4).copied().unwrap_or(0),
        })
    }

    pub fn since(&self, before: &Self) -> CpuUse {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let total = self.total.saturating_sub(before.total) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        let iowait = self.iowait.saturating_sub(before.iowait) as f64;
        if total == 0.0 {
            return CpuUse { busy: f64::NAN, iowait: f64::NAN };
        }
        CpuUse { busy: cpus * (total - idle - iowait) / total, iowait: cpus * iowait / total }
    }
}

/// Runs a command to completion; fails with its stderr when it fails.
pub fn run_checked(command: &mut Command) -> Result<Output> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Writes dirty pages out and drops the page, dentry and inode caches of the whole machine (so
/// of both servers' disks alike).
pub fn drop_caches() -> Result<()> {
    run_checked(&mut Command::new("sync"))?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("writing /proc/sys/vm/drop_caches")?;
    Ok(())
}

/// A sparse image file formatted as ext4 and loop-mounted under a temporary folder; unmounted
/// and deleted on drop. Every server gets a fresh one: this machine's root file system slows
/// down after large deletions (DESIGN.md section 10), and a fresh file system treats both
/// sides the same.
pub struct LoopFs {
    dir: Option<TempDir>,
    mount_point: PathBuf,
}

impl LoopFs {
    pub fn create(parent: &Path, image_bytes: u64) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-bench.")
            .tempdir_in(parent)
            .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
        let image = dir.path().join("ext4.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point)?;
        std::fs::File::create(&image)?.set_len(image_bytes)?;
        // Inode tables and journal are initialised now rather than by a background thread after
        // mount, whose writes would compete with the first test.
        run_checked(
            Command::new("mkfs.ext4")
                .args(["-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(&image),
        )?;
        run_checked(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount_point))?;
        Ok(Self { dir: Some(dir), mount_point })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mut unmounted = false;
        for _ in 0..20 {
            if run_checked(Command::new("umount").arg(&self.mount_point)).is_ok() {
                unmounted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if !unmounted {
            // Busy (a server that would not die): detach it lazily; the image can go anyway,
            // its blocks are freed when the last user lets go.
            let lazy = run_checked(Command::new("umount").arg("-l").arg(&self.mount_point));
            if let Err(error) = lazy {
                eprintln!("cairn-bench: could not unmount {}: {error:#}", self.mount_point.display());
                if let Some(dir) = self.dir.take() {
                    eprintln!("cairn-bench: leaving {} in place", dir.keep().display());
                }
            }
        }
        // Dropping the TempDir deletes the image and the (now empty) mount point.
        self.dir.take();
    }
}

/// `dd if=/dev/zero of=FILE bs=1M count=N conv=fsync`: MiB/s of the write including the fsync,
/// then the same file read back after dropping caches.
pub struct DdFigures {
    pub write_mib_per_second: f64,
    pub read_mib_per_second: f64,
}

pub fn dd(dir: &Path, bytes: u64) -> Result<DdFigures> {
    let file = dir.join("dd.bin");
    let count = bytes.div_ceil(1 << 20);
    let mebibytes = count as f64;
    let start = Instant::now();
    run_checked(Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", file.display())).args([
        "bs=1M",
        &format!("count={count}"),
        "conv=fsync",
    ]))?;
    let write_mib_per_second = mebibytes / start.elapsed().as_secs_f64();
    drop_caches()?;
    let start = Instant::now();
    run_checked(Command::new("dd").arg(format!("if={}", file.display())).args(["of=/dev/null", "bs=1M"]))?;
    let read_mib_per_second = mebibytes / start.elapsed().as_secs_f64();
    std::fs::remove_file(&file)?;
    Ok(DdFigures { write_mib_per_second, read_mib_per_second })
}

/// TCP bandwidth over loopback inside `netns_name`: one connection, 1 MiB writes for
/// `duration`, counted at the receiver. MiB/s.
pub fn loopback_bandwidth(netns_name: &str, duration: Duration) -> Result<f64> {
    let (listener, sender) = netns::run_in(netns_name, || {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let sender = TcpStream::connect(listener.local_addr()?)?;
        Ok((listener, sender))
    })?;
    let (mut receiver, _) = listener.accept()?;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let mut buffer = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = receiver.read(&mut buffer)?;
            if n == 0 {
                return Ok((bytes, Instant::now()));
            }
            bytes += n as u64;
        }
    });
    let mut sender = sender;
    let buffer = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    while start.elapsed() < duration {
        sender.write_all(&buffer)?;
    }
    sender.shutdown(std::net::Shutdown::Write)?;
    drop(sender);
    let (bytes, end) = reader.join().map_err(|_| anyhow!("loopback reader panicked"))??;
    Ok(bytes as f64 / MIB / end.duration_since(start).as_secs_f64())
}

/// CPU time (user + system) and bytes written to storage by a set of processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub write_bytes: u64,
}

impl Usage {
    /// What was used between `before` and `self`.
    pub fn since(&self, before: &Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
        }
    }
}

/// Sums [`Usage`] over `pids` from /proc (a process that is gone counts nothing).
pub fn usage(pids: &[u32]) -> Usage {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = Usage::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            // Fields after the command name start at field 3 (state); utime and stime are 14, 15.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            total.cpu_seconds += (tick(11) + tick(12)) as f64 / ticks;
        }
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            total.write_bytes += io
                .lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The children of process `parent` and the CPU time (user + system, in clock ticks) of each.
pub fn child_processes(parent: u32) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may contain spaces and parentheses: the fields start after the last ')'.
        let Some((_, fields)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        // fields[0] is the state (field 3 of proc(5)), so field N is fields[N - 3].
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if field(4) == Some(u64::from(parent))
            && let (Some(user), Some(system)) = (field(14), field(15))
        {
            children.push((pid, user + system));
        }
    }
    children
}

/// Whether process `pid` exists and has not exited (a zombie that its parent has not reaped yet
/// counts as exited).
pub fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .is_some_and(|exited| !exited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process() {
        let used = usage(&[std::process::id()]);
        assert!(used.cpu_seconds >= 0.0);
        assert_eq!(usage(&[]).write_bytes, 0);
    }

    #[test]
    fn this_process_runs() {
        assert!(process_running(std::process::id()));
        assert!(!process_running(0));
    }
}
