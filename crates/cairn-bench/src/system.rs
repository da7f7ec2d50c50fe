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
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal ...: idle time is idle + iowait.
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some((fields.iter().take(8).sum(), idle))
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let Some((total_before, idle_before)) = sample() else { return f64::NAN };
    std::thread::sleep(Duration::from_secs(1));
    let Some((total_after, idle_after)) = sample() else { return f64::NAN };
    let total = total_after.saturating_sub(total_before) as f64;
    let idle = idle_after.saturating_sub(idle_before) as f64;
    if total == 0.0 { f64::NAN } else { cpus * (total - idle) / total }
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
