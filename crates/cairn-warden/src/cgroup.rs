//! Memory cgroups that enforce each service's memory share, on cgroup v1 (the `memory`
//! hierarchy) or v2 (the unified hierarchy with the `memory` controller).
//!
//! A service's group is `cairn/<node>/<service>` below the hierarchy's root. The child joins it
//! itself between fork and exec (see [`crate::process`]), so every byte the service allocates is
//! charged from the start, and a service that blows its limit is OOM-killed inside its own group
//! instead of the kernel picking a victim on the whole node. The group also lists every process of
//! the service, even those that left its process group, so [`MemoryCgroup::kill_all`] leaves no
//! orphan behind.
//!
//! Everything is plain file reads and writes under /sys/fs/cgroup; the root of the hierarchy is
//! a parameter internally so the layout logic can be tested on an ordinary directory.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Where cgroup v2 is mounted when it is the only (unified) hierarchy.
const V2_ROOT: &str = "/sys/fs/cgroup";
/// Where the cgroup v1 memory hierarchy is mounted.
const V1_ROOT: &str = "/sys/fs/cgroup/memory";
/// The directory below the hierarchy's root holding every node's groups.
const CAIRN_DIR: &str = "cairn";

/// How long [`MemoryCgroup::kill_all`] keeps killing before it gives up.
pub const KILL_ALL_WAIT_MAX: Duration = Duration::from_secs(2);
/// Pause between kill rounds: long enough for the kernel to tear down killed processes.
pub const KILL_ALL_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many times [`MemoryCgroup::remove`] retries an `rmdir` that fails with EBUSY (processes
/// that are exiting still count as members for a moment).
const REMOVE_ATTEMPTS_MAX: u32 = 50;

/// Which cgroup interface the machine offers for memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The memory cgroup interface this machine offers: V2 when the unified hierarchy at
/// /sys/fs/cgroup has the `memory` controller, else V1 when the v1 memory hierarchy is mounted,
/// else `None` (limits cannot be enforced; the caller decides whether that is fatal).
pub fn available() -> Option<CgroupVersion> {
    available_at(Path::new(V2_ROOT), Path::new(V1_ROOT))
}

fn available_at(v2_root: &Path, v1_root: &Path) -> Option<CgroupVersion> {
    let controllers = std::fs::read_to_string(v2_root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        return Some(CgroupVersion::V2);
    }
    if v1_root.join("memory.limit_in_bytes").exists() {
        return Some(CgroupVersion::V1);
    }
    None
}

/// One service's memory cgroup. Dropping it leaves the group in place (a restarted service
/// reuses it); call [`MemoryCgroup::remove`] to delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    version: CgroupVersion,
    /// The group's directory.
    dir: PathBuf,
    /// `dir/cgroup.procs`.
    procs: PathBuf,
}

impl MemoryCgroup {
    /// Creates (or reuses) the group of `service` on `node` with a limit of `limit_bytes`, swap
    /// included, so swapping cannot dodge the limit. An existing group's processes (left by a
    /// previous Warden) are killed first, so the new service starts alone in it.
    pub fn create(node: &str, service: &str, limit_bytes: u64) -> io::Result<MemoryCgroup> {
        match available() {
            Some(CgroupVersion::V2) => {
                Self::create_at(CgroupVersion::V2, Path::new(V2_ROOT), node, service, limit_bytes)
            }
            Some(CgroupVersion::V1) => {
                Self::create_at(CgroupVersion::V1, Path::new(V1_ROOT), node, service, limit_bytes)
            }
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "no memory cgroup controller: {V2_ROOT}/cgroup.controllers does not list `memory` \
                     and {V1_ROOT}/memory.limit_in_bytes does not exist"
                ),
            )),
        }
    }

    fn create_at(
        version: CgroupVersion,
        root: &Path,
        node: &str,
        service: &str,
        limit_bytes: u64,
    ) -> io::Result<MemoryCgroup> {
        let node_dir = root.join(CAIRN_DIR).join(sanitize(node));
        let dir = node_dir.join(sanitize(service));
        if version == CgroupVersion::V2 {
            enable_memory_controller(root, &node_dir)?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| annotate(e, "cannot create", &dir))?;
        let group = MemoryCgroup { version, procs: dir.join("cgroup.procs"), dir };
        group.kill_all();
        match version {
            CgroupVersion::V1 => group.write_limit_v1(limit_bytes)?,
            CgroupVersion::V2 => group.write_limit_v2(limit_bytes)?,
        }
        Ok(group)
    }

    /// v1: `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` (memory + swap) when the
    /// kernel accounts swap. The kernel requires limit <= memsw limit at every moment, so the
    /// order of the two writes depends on whether the limit grows or shrinks.
    fn write_limit_v1(&self, limit_bytes: u64) -> io::Result<()> {
        let memsw = self.dir.join("memory.memsw.limit_in_bytes");
        if !memsw.exists() {
            return self.write_file("memory.limit_in_bytes", &limit_bytes.to_string());
        }
        let memsw_now = read_u64(&memsw).unwrap_or(u64::MAX);
        if limit_bytes > memsw_now {
            self.write_file("memory.memsw.limit_in_bytes", &limit_bytes.to_string())?;
            self.write_file("memory.limit_in_bytes", &limit_bytes.to_string())
        } else {
            self.write_file("memory.limit_in_bytes", &limit_bytes.to_string())?;
            self.write_file("memory.memsw.limit_in_bytes", &limit_bytes.to_string())
        }
    }

    /// v2: `memory.max`, no swap (`memory.swap.max`, when swap is accounted), and
    /// `memory.oom.group` so an OOM kill takes the whole service rather than one of its processes.
    fn write_limit_v2(&self, limit_bytes: u64) -> io::Result<()> {
        self.write_file("memory.max", &limit_bytes.to_string())?;
        if self.dir.join("memory.swap.max").exists() {
            self.write_file("memory.swap.max", "0")?;
        }
        if self.dir.join("memory.oom.group").exists() {
            self.write_file("memory.oom.group", "1")?;
        }
        Ok(())
    }

    /// Which interface this group uses.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The group's `cgroup.procs`: a process joins the group by writing its pid there.
    pub fn procs_path(&self) -> &Path {
        &self.procs
    }

    /// The processes in the group now (empty when the group cannot be read).
    pub fn pids(&self) -> Vec<i32> {
        let text = std::fs::read_to_string(&self.procs).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// The memory charged to the group now, in bytes.
    pub fn usage_bytes(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        read_u64(&self.dir.join(file))
    }

    /// How many processes of the group the kernel OOM-killed since the group was created.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        keyed_value(&text, "oom_kill").unwrap_or(0)
    }

    /// Sends `signal` to every process in the group once; returns how many there were.
    pub fn signal_all(&self, signal: i32) -> usize {
        let pids = self.pids();
        for &pid in &pids {
            // A pid of 0 or below would address a process group or everything; the kernel never
            // lists such pids, but a corrupt read must not turn into a broadcast.
            if pid > 0 {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, signal) };
            }
        }
        pids.len()
    }

    /// Kills every process in the group, repeating until it is empty (processes may fork while
    /// being killed) or [`KILL_ALL_WAIT_MAX`] has passed. Blocks the calling thread for that long
    /// at most; async callers use [`crate::process::stop_tree`], which polls without blocking.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + KILL_ALL_WAIT_MAX;
        while self.kill_round() > 0 && Instant::now() < deadline {
            std::thread::sleep(KILL_ALL_POLL_INTERVAL);
        }
    }

    /// One round of killing: v2's `cgroup.kill` when the kernel has it (it also catches
    /// processes forked during the round), SIGKILL to each listed pid in any case. Returns how
    /// many processes were listed.
    pub(crate) fn kill_round(&self) -> usize {
        if self.version == CgroupVersion::V2 && self.dir.join("cgroup.kill").exists() {
            let _ = self.write_file("cgroup.kill", "1");
        }
        self.signal_all(libc::SIGKILL)
    }

    /// Kills the group's processes and deletes the group. A group that is already gone is fine.
    pub fn remove(&self) -> io::Result<()> {
        let mut attempts = 0;
        loop {
            self.kill_all();
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < REMOVE_ATTEMPTS_MAX => {
                    attempts += 1;
                    std::thread::sleep(KILL_ALL_POLL_INTERVAL);
                }
                Err(e) => return Err(annotate(e, "cannot remove", &self.dir)),
            }
        }
    }

    fn write_file(&self, name: &str, value: &str) -> io::Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, value).map_err(|e| annotate(e, &format!("cannot write `{value}` to"), &path))
    }
}

/// Deletes `cairn/<node>` once its services' groups are gone; best effort (a group still in it
/// keeps it). Not part of [`MemoryCgroup::remove`] because another service of the node may be
/// creating its group at the same moment.
pub fn remove_node_dir(node: &str) {
    let root = match available() {
        Some(CgroupVersion::V2) => V2_ROOT,
        Some(CgroupVersion::V1) => V1_ROOT,
        None => return,
    };
    let _ = std::fs::remove_dir(Path::new(root).join(CAIRN_DIR).join(sanitize(node)));
}

/// v2 only lets a group use a controller its parent enabled for its children, so `+memory` goes
/// into `cgroup.subtree_control` of every level from the root down to the node's directory.
fn enable_memory_controller(root: &Path, node_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(node_dir).map_err(|e| annotate(e, "cannot create", node_dir))?;
    let cairn_dir = root.join(CAIRN_DIR);
    for level in [root, cairn_dir.as_path(), node_dir] {
        let control = level.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        if enabled.split_whitespace().any(|c| c == "memory") {
            continue;
        }
        std::fs::write(&control, "+memory")
            .map_err(|e| annotate(e, "cannot write `+memory` to", &control))?;
    }
    Ok(())
}

/// A node or service name as one safe path component: only `[A-Za-z0-9._-]`, everything else
/// becomes `_`; a leading `.` too, so the result is never `.`, `..` or hidden, and never empty.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The number after `key` in `key value` lines (memory.oom_control, memory.events).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == key).then_some(())?;
        words.next()?.parse().ok()
    })
}

fn annotate(error: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Spawn, describe_exit, spawn};
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize("node-1.example_com"), "node-1.example_com");
        assert_eq!(sanitize("a/b c"), "a_b_c");
        assert_eq!(sanitize(".."), "_.");
        assert_eq!(sanitize("."), "_");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("nœud"), "n_ud");
    }

    #[test]
    fn parses_keyed_values() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        assert_eq!(keyed_value("oom_kill_disable 0\n", "oom_kill"), None);
    }

    #[test]
    fn detects_versions() {
        let dir = tempfile::tempdir().unwrap();
        let (v2, v1) = (dir.path().join("v2"), dir.path().join("v1"));
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::create_dir_all(&v1).unwrap();
        assert_eq!(available_at(&v2, &v1), None);
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(available_at(&v2, &v1), Some(CgroupVersion::V1));
        std::fs::write(v2.join("cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(available_at(&v2, &v1), Some(CgroupVersion::V1), "v2 without memory is not enough");
        std::fs::write(v2.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        assert_eq!(available_at(&v2, &v1), Some(CgroupVersion::V2));
    }

    /// The v2 layout on an ordinary directory (this machine has no v2 memory controller):
    /// parents get `+memory`, the group gets its limit and no swap.
    #[test]
    fn v2_layout_on_a_plain_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "cpu memory").unwrap();
        let service_dir = root.path().join("cairn/n_1/svc");
        std::fs::create_dir_all(&service_dir).unwrap();
        std::fs::write(service_dir.join("memory.swap.max"), "max").unwrap();
        std::fs::write(service_dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(service_dir.join("memory.events"), "oom 1\noom_kill 3\n").unwrap();
        let group = MemoryCgroup::create_at(CgroupVersion::V2, root.path(), "n 1", "svc", 64 << 20).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "cpu memory", "already enabled: left alone");
        assert_eq!(read("cairn/cgroup.subtree_control"), "+memory");
        assert_eq!(read("cairn/n_1/cgroup.subtree_control"), "+memory");
        assert_eq!(read("cairn/n_1/svc/memory.max"), "67108864");
        assert_eq!(read("cairn/n_1/svc/memory.swap.max"), "0");
        assert_eq!(group.procs_path(), service_dir.join("cgroup.procs"));
        assert_eq!(group.usage_bytes(), Some(4096));
        assert_eq!(group.oom_kills(), 3);
        assert!(group.pids().is_empty());
    }

    #[test]
    fn v1_limit_order_on_a_plain_directory() {
        let root = tempfile::tempdir().unwrap();
        let service_dir = root.path().join("cairn/n/svc");
        std::fs::create_dir_all(&service_dir).unwrap();
        std::fs::write(service_dir.join("memory.memsw.limit_in_bytes"), "1000").unwrap();
        let group = MemoryCgroup::create_at(CgroupVersion::V1, root.path(), "n", "svc", 5000).unwrap();
        let read = |p: &str| std::fs::read_to_string(service_dir.join(p)).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), "5000");
        assert_eq!(read("memory.memsw.limit_in_bytes"), "5000");
        assert_eq!(group.oom_kills(), 0, "no memory.oom_control file means no kills");
        assert_eq!(group.usage_bytes(), None);
    }

    /// The real thing: a 64 MiB group OOM-kills a pipeline that buffers 300 MB.
    #[tokio::test]
    async fn a_memory_hog_is_oom_killed_in_its_group() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test needs root to create memory cgroups (running as uid {euid})");
        let version = available().expect(
            "this test needs a memory cgroup controller: cgroup v2 with `memory` in \
             /sys/fs/cgroup/cgroup.controllers, or cgroup v1 at /sys/fs/cgroup/memory",
        );
        let node = format!("test-{}", std::process::id());
        let group = MemoryCgroup::create(&node, "hog", 64 << 20).unwrap();
        assert_eq!(group.version(), version);
        let mut spec = Spawn::shell("head -c 300000000 /dev/zero | tail");
        spec.cgroup = Some(&group);
        // `sh` reports the killed `tail` on stderr; keep it out of the test output.
        let logs = tempfile::tempdir().unwrap();
        spec.log_file = Some(logs.path().join("hog.log"));
        let mut child = spawn(&spec).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.unwrap().unwrap();
        let oom_kills = group.oom_kills();
        let pids_left = group.pids();
        group.remove().unwrap();
        remove_node_dir(&node);
        // `tail` is the process that grows; the OOM killer picks it and `sh` reports its death as
        // exit code 137 (128 + SIGKILL), unless `sh` itself was the victim.
        let killed = status.signal() == Some(libc::SIGKILL) || status.code() == Some(128 + libc::SIGKILL);
        assert!(killed, "expected death by SIGKILL, got {}", describe_exit(status));
        assert!(oom_kills >= 1, "memory.oom_control/events reports {oom_kills} OOM kills");
        assert!(pids_left.is_empty(), "processes left in the group: {pids_left:?}");
        assert!(!group.path().exists());
    }
}
