//! Spawning a service's process tree and stopping all of it.
//!
//! Each service runs in its own process group (so one signal reaches every process it forked)
//! and, when its memory is enforced, in its own memory cgroup (which also holds processes that
//! left the group with `setsid`). The child sets `PR_SET_PDEATHSIG` to SIGKILL before exec, so if
//! the Warden dies, even by SIGKILL, its services die with it instead of running unsupervised
//! next to the services a restarted Warden starts.
//!
//! Stopping is SIGTERM to the group, a grace period, then SIGKILL to the group and to every
//! process left in the cgroup, until nothing of the service is alive.

use std::ffi::{CString, OsString};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::cgroup::{KILL_ALL_POLL_INTERVAL, KILL_ALL_WAIT_MAX, MemoryCgroup};

/// The shell that runs pluggable services' command lines.
pub const SHELL: &str = "/bin/sh";

/// How long [`stop_tree`] waits for the main process to be reaped after SIGKILL. Only a process
/// stuck in the kernel (uninterruptible I/O) takes longer; then stopping fails instead of hanging.
pub const REAP_AFTER_KILL_WAIT_MAX: Duration = Duration::from_secs(10);

/// Log files are created readable by the owner and group only: logs may hold file names and
/// user names.
const LOG_FILE_MODE: u32 = 0o640;

/// What to run and how. `env` is added to the Warden's environment.
#[derive(Clone, Debug, Default)]
pub struct Spawn<'a> {
    /// Looked up in `PATH` when it has no `/`.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Appended to (created if missing, with its directory); stdout and stderr both go there.
    /// `None` inherits the Warden's.
    pub log_file: Option<PathBuf>,
    /// The child joins this group before exec, so all its memory is charged to it.
    pub cgroup: Option<&'a MemoryCgroup>,
}

impl<'a> Spawn<'a> {
    /// Runs `program` with no arguments.
    pub fn new(program: impl Into<PathBuf>) -> Spawn<'a> {
        Spawn { program: program.into(), ..Spawn::default() }
    }

    /// Runs `command` with `/bin/sh -c`, as pluggable services' `service.command` is run.
    pub fn shell(command: &str) -> Spawn<'a> {
        let args = vec![OsString::from("-c"), OsString::from(command)];
        Spawn { program: PathBuf::from(SHELL), args, ..Spawn::default() }
    }
}

/// Starts the child described by `spec`: in its own process group (its pgid is its pid), with
/// stdin from /dev/null, killed by the kernel if the Warden dies, and in `spec.cgroup` if set.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Call
/// this from a thread that lives as long as the Warden (a worker of the main tokio runtime, or
/// the main thread), never from a `spawn_blocking` thread, which the runtime retires when idle
/// and which would take the service with it.
///
/// The child is not killed when the returned [`Child`] is dropped: stopping is explicit, through
/// [`stop_tree`].
pub fn spawn(spec: &Spawn) -> io::Result<Child> {
    let mut command = Command::new(&spec.program);
    command.args(&spec.args).envs(spec.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    if let Some(path) = &spec.log_file {
        let log = open_log(path)?;
        let log_for_stderr = log.try_clone()?;
        command.stdout(log).stderr(log_for_stderr);
    }
    command.process_group(0).kill_on_drop(false);
    let join = ChildSetup::new(spec.cgroup.map(MemoryCgroup::procs_path))?;
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed. `ChildSetup::run` uses prctl, getpid, getppid, open, write and close on
    // data prepared before the fork, and does not allocate.
    unsafe {
        command.pre_exec(move || join.run());
    }
    command
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", spec.program.display())))
}

fn open_log(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create log directory {}: {e}", dir.display()))
        })?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open log file {}: {e}", path.display())))
}

/// What the child does between fork and exec, with everything it needs prepared in the parent.
struct ChildSetup {
    /// The Warden's pid: if the child's parent is not this any more, the Warden died before
    /// PR_SET_PDEATHSIG took effect.
    parent_pid: libc::pid_t,
    /// The cgroup's `cgroup.procs`, if the child joins a group.
    cgroup_procs: Option<CString>,
}

impl ChildSetup {
    fn new(cgroup_procs: Option<&Path>) -> io::Result<ChildSetup> {
        let cgroup_procs = match cgroup_procs {
            Some(path) => Some(CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("a NUL byte in {}", path.display()))
            })?),
            None => None,
        };
        // SAFETY: getpid has no preconditions.
        let parent_pid = unsafe { libc::getpid() };
        Ok(ChildSetup { parent_pid, cgroup_procs })
    }

    /// Runs in the child. Async-signal-safe only; errors are raw OS errors, which need no
    /// allocation and make `spawn` fail in the parent.
    fn run(&self) -> io::Result<()> {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; no memory is passed.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The Warden may have died between fork and prctl; then nobody would kill us.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent_pid {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        match &self.cgroup_procs {
            Some(procs) => join_cgroup(procs),
            None => Ok(()),
        }
    }
}

/// Writes the calling process's pid to `procs` (a cgroup's `cgroup.procs`). Async-signal-safe.
fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut buffer = [0u8; 20];
    let digits = format_decimal(pid.unsigned_abs(), &mut buffer);
    // SAFETY: `procs` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `digits` is a valid buffer of `digits.len()` bytes; `fd` is open.
    let written = unsafe { libc::write(fd, digits.as_ptr().cast(), digits.len()) };
    let result = if written < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: `fd` is open and not used after this.
    unsafe { libc::close(fd) };
    result
}

/// `n` in decimal in the end of `buffer`, without allocating (for use after fork).
fn format_decimal(mut n: u32, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buffer[start..]
}

/// Sends `signal` to process group `pgid`; false if there is no such group (or no permission).
/// Groups 0 and 1 are refused: 0 means the Warden's own group, 1 is init's.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Stops a service: SIGTERM to its process group `pgid` (and to its cgroup's processes), up to
/// `grace` for all of them to exit, then SIGKILL to the group and the cgroup until none is left.
/// Returns how the main process `child` ended (possibly before this was called).
///
/// The caller passes `pgid` because `child.id()` is gone once the child has been reaped; with
/// [`spawn`] it is the child's pid.
pub async fn stop_tree(
    child: &mut Child,
    pgid: i32,
    cgroup: Option<&MemoryCgroup>,
    grace: Duration,
) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + grace;
    signal_group(pgid, libc::SIGTERM);
    if let Some(group) = cgroup {
        group.signal_all(libc::SIGTERM);
    }
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_elapsed) => None,
    };
    // The main process is gone, but processes it forked may still be finishing their SIGTERM.
    while Instant::now() < deadline && tree_alive(pgid, cgroup) {
        tokio::time::sleep(KILL_ALL_POLL_INTERVAL).await;
    }
    kill_tree(pgid, cgroup).await;
    let status = match status {
        Some(status) => status,
        None => match tokio::time::timeout(REAP_AFTER_KILL_WAIT_MAX, child.wait()).await {
            Ok(status) => status?,
            Err(_elapsed) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("process {pgid} did not exit within {REAP_AFTER_KILL_WAIT_MAX:?} of SIGKILL"),
                ));
            }
        },
    };
    // Reaping the main process can race with its children being re-parented; one more pass.
    kill_tree(pgid, cgroup).await;
    if tree_alive(pgid, cgroup) {
        return Err(io::Error::other(format!(
            "processes of group {pgid} survived SIGKILL for {KILL_ALL_WAIT_MAX:?}: {:?}",
            live_group_members(pgid)
        )));
    }
    Ok(status)
}

/// SIGKILL to the group and the cgroup, repeated until neither has a live process or
/// [`KILL_ALL_WAIT_MAX`] passed; sleeps without blocking the runtime.
async fn kill_tree(pgid: i32, cgroup: Option<&MemoryCgroup>) {
    let deadline = Instant::now() + KILL_ALL_WAIT_MAX;
    loop {
        signal_group(pgid, libc::SIGKILL);
        if let Some(group) = cgroup {
            group.kill_round();
        }
        if !tree_alive(pgid, cgroup) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(KILL_ALL_POLL_INTERVAL).await;
    }
}

fn tree_alive(pgid: i32, cgroup: Option<&MemoryCgroup>) -> bool {
    let cgroup_alive = cgroup.is_some_and(|group| group.pids().iter().any(|&pid| is_live(pid)));
    cgroup_alive || !live_group_members(pgid).is_empty()
}

/// The running (not zombie) processes whose process group is `pgid`, from /proc. Zombies are
/// left out: they hold no memory and run no code, and their reaper (init, here) may be slow.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    proc_stats().filter(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X').map(|s| s.pid).collect()
}

fn is_live(pid: i32) -> bool {
    read_stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// The fields of /proc/<pid>/stat we use.
struct ProcStat {
    pid: i32,
    state: char,
    pgrp: i32,
}

fn proc_stats() -> impl Iterator<Item = ProcStat> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries.filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter_map(read_stat)
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses, so the fields are
/// counted from the last `)`.
fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { pid, state, pgrp })
}

/// The resident memory of process `pid` (`VmRSS` in /proc/<pid>/status), in bytes. `None` for a
/// process that is gone, or a zombie or kernel thread (no `VmRSS` line).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&text)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(())?;
    kib.checked_mul(1024)
}

/// The resident memory of every process in group `pgid`, in bytes. Pages shared between them are
/// counted once per process, so this over-estimates; the cgroup's usage is the exact figure.
pub fn group_rss_bytes(pgid: i32) -> u64 {
    proc_stats().filter(|s| s.pgrp == pgid).filter_map(|s| rss_bytes(s.pid)).fold(0, u64::saturating_add)
}

/// How a process ended, for logs and the service's status: "exit code 3", "killed by SIGKILL",
/// "killed by SIGSEGV (core dumped)".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    if let Some(signal) = status.signal() {
        let core = if status.core_dumped() { " (core dumped)" } else { "" };
        return format!("killed by {}{core}", signal_name(signal));
    }
    if let Some(signal) = status.stopped_signal() {
        return format!("stopped by {}", signal_name(signal));
    }
    format!("ended with wait status {}", status.into_raw())
}

/// `SIGKILL` for 9; `signal 42` for numbers without a common name.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pgid_of(child: &Child) -> i32 {
        i32::try_from(child.id().expect("the child has not been reaped yet")).unwrap()
    }

    /// Waits until `pgid` has `count` live members (the shell has forked its children).
    async fn wait_for_members(pgid: i32, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while live_group_members(pgid).len() < count {
            assert!(
                Instant::now() < deadline,
                "group {pgid} has {:?}, expected {count}",
                live_group_members(pgid)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn stop_tree_leaves_no_process_of_the_group() {
        let mut child = spawn(&Spawn::shell("sleep 1000 & sleep 1000 & wait")).unwrap();
        let pgid = pgid_of(&child);
        wait_for_members(pgid, 3).await;
        assert!(group_rss_bytes(pgid) > 0);
        assert!(rss_bytes(pgid).is_some_and(|rss| rss > 0));
        let status = stop_tree(&mut child, pgid, None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(describe_exit(status), "killed by SIGTERM");
        assert_eq!(live_group_members(pgid), Vec::<i32>::new());
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
        let mut child = spawn(&Spawn::shell("trap '' TERM; sleep 1000")).unwrap();
        let pgid = pgid_of(&child);
        wait_for_members(pgid, 2).await;
        let started = Instant::now();
        let grace = Duration::from_millis(300);
        let status = stop_tree(&mut child, pgid, None, grace).await.unwrap();
        assert!(started.elapsed() >= grace, "killed after {:?}, before the grace", started.elapsed());
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", describe_exit(status));
        assert!(live_group_members(pgid).is_empty());
    }

    #[tokio::test]
    async fn stop_tree_after_the_main_process_exited_kills_the_rest() {
        // The shell exits at once, leaving a sleep behind in its group.
        let mut child = spawn(&Spawn::shell("sleep 1000 & exit 3")).unwrap();
        let pgid = pgid_of(&child);
        let status = child.wait().await.unwrap();
        assert_eq!(describe_exit(status), "exit code 3");
        wait_for_members(pgid, 1).await;
        let status = stop_tree(&mut child, pgid, None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(live_group_members(pgid).is_empty());
    }

    #[tokio::test]
    async fn spawn_writes_the_log_and_sets_env_and_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/svc.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "before\n").unwrap();
        let mut spec = Spawn::shell("echo \"$GREETING $(pwd)\"; echo oops >&2; read x; echo \"stdin:$x\"");
        spec.env.push(("GREETING".into(), "hello".into()));
        spec.cwd = Some(dir.path().to_path_buf());
        spec.log_file = Some(log.clone());
        let status = spawn(&spec).unwrap().wait().await.unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&log).unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(text, format!("before\nhello {}\noops\nstdin:\n", cwd.display()));
    }

    #[test]
    fn spawn_reports_a_missing_program() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let err = spawn(&Spawn::new("/nonexistent/program")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/program"));
    }

    /// PR_SET_PDEATHSIG is tied to the forking thread: when it exits, the child is SIGKILLed.
    /// This is the documented caveat of `spawn`, and the mechanism that takes services down with a
    /// killed Warden.
    #[test]
    fn the_child_dies_with_the_thread_that_spawned_it() {
        let spawner = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _guard = runtime.enter();
            let child = spawn(&Spawn::shell("exec sleep 1000")).unwrap();
            i32::try_from(child.id().unwrap()).unwrap()
        });
        let pid = spawner.join().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while is_live(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} outlived the thread that spawned it"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn describes_exits() {
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "exit code 0");
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(libc::SIGKILL)), "killed by SIGKILL");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "killed by SIGSEGV (core dumped)"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(42)), "killed by signal 42");
        assert_eq!(describe_exit(ExitStatus::from_raw((libc::SIGSTOP << 8) | 0x7f)), "stopped by SIGSTOP");
    }

    #[test]
    fn parses_proc_files() {
        let stat = parse_stat(7, "7 (a (weird) name) S 1 7 7 0 -1").unwrap();
        assert_eq!((stat.pid, stat.state, stat.pgrp), (7, 'S', 7));
        assert!(parse_stat(7, "garbage").is_none());
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t    1234 kB\n"), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let mut buffer = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buffer), b"0");
        assert_eq!(format_decimal(4_294_967_295, &mut buffer), b"4294967295");
    }

    #[test]
    fn refuses_to_signal_groups_0_and_1() {
        assert!(!signal_group(0, 0));
        assert!(!signal_group(1, 0));
        assert!(!signal_group(-5, 0));
    }
}
