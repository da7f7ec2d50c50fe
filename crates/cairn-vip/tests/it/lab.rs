//! The test network: network namespaces joined by a bridge, threads that run async code inside a
//! namespace, and a holder child process (this test binary, re-executed).
//!
//! A [`Lab`] has a bridge `br0` in its own namespace and one namespace per host, each with a veth
//! `eth0` plugged into the bridge, a fixed MAC (`02:31:00:00:00:0N`) and address `10.231.0.1N/24`
//! (N = 1, 2, ... in the order given). Nothing touches the root namespace; everything is deleted
//! when the `Lab` is dropped.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::holder::HOLDER_READY;

/// The VIP most tests move around (outside every host's own addresses).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 50);
/// A second VIP nobody holds unless a test says so.
pub const VIP2: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 51);

/// Panics (never skips) unless we are root: namespaces, TAP devices and raw sockets need it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the cairn-vip tests need root (network namespaces, TAP devices, AF_PACKET and raw sockets); \
         run them as root"
    );
}

pub struct Lab {
    prefix: String,
    hosts: Vec<String>,
}

impl Lab {
    pub fn new(hosts: &[&str]) -> Lab {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        remove_stale_namespaces();
        let prefix = format!("cvt{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let lab = Lab { prefix, hosts: hosts.iter().map(|host| host.to_string()).collect() };
        let bridge = lab.bridge_ns();
        run("ip", &["netns", "add", &bridge]);
        lab.ip_in(&bridge, &["link", "add", "br0", "type", "bridge"]);
        lab.ip_in(&bridge, &["link", "set", "br0", "up"]);
        for host in hosts {
            let ns = lab.ns(host);
            let port = format!("p-{host}");
            run("ip", &["netns", "add", &ns]);
            run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
                    &bridge,
                ],
            );
            lab.ip(host, &["link", "set", "eth0", "address", &lab.mac_text(host)]);
            lab.ip(host, &["addr", "add", &format!("{}/24", lab.host_ip(host)), "dev", "eth0"]);
            lab.ip(host, &["link", "set", "eth0", "up"]);
            lab.ip(host, &["link", "set", "lo", "up"]);
            lab.ip_in(&bridge, &["link", "set", &port, "master", "br0", "up"]);
        }
        lab
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn number(&self, host: &str) -> u8 {
        let position = self.hosts.iter().position(|name| name == host).expect("a host of this lab");
        u8::try_from(position + 1).expect("few hosts")
    }

    pub fn host_ip(&self, host: &str) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, 0, 10 + self.number(host))
    }

    pub fn mac(&self, host: &str) -> [u8; 6] {
        [0x02, 0x31, 0, 0, 0, self.number(host)]
    }

    pub fn mac_text(&self, host: &str) -> String {
        cairn_vip::format_mac(&self.mac(host))
    }

    /// `ip -n <host's namespace> args...`, its standard output; panics on failure.
    pub fn ip(&self, host: &str, args: &[&str]) -> String {
        self.ip_in(&self.ns(host), args)
    }

    fn ip_in(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The IPv4 addresses in `host`'s namespace: (device, address, prefix, valid lifetime in s).
    pub fn addresses(&self, host: &str) -> Vec<(String, Ipv4Addr, u8, Option<u64>)> {
        let text = self.ip(host, &["-o", "-4", "addr", "show"]);
        let mut found = Vec::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = words.iter().position(|word| *word == "inet") else { continue };
            let (Some(device), Some(cidr)) = (words.get(1), words.get(at + 1)) else { continue };
            let Some((address, prefix)) = cidr.split_once('/') else { continue };
            let valid_s = words
                .iter()
                .position(|word| *word == "valid_lft")
                .and_then(|at| words.get(at + 1))
                .and_then(|text| text.strip_suffix("sec"))
                .and_then(|text| text.parse().ok());
            found.push((
                device.to_string(),
                address.parse().expect("an IPv4 address"),
                prefix.parse().expect("a prefix length"),
                valid_s,
            ));
        }
        found
    }

    /// Whether `address` is on any interface of `host`.
    pub fn has_address(&self, host: &str, address: Ipv4Addr) -> bool {
        self.addresses(host).iter().any(|(_, found, _, _)| *found == address)
    }

    pub fn has_link(&self, host: &str, device: &str) -> bool {
        self.ip(host, &["-o", "link", "show"]).lines().any(|line| {
            line.split_whitespace().nth(1).is_some_and(|name| name.trim_end_matches(':') == device)
        })
    }

    /// The MAC `host`'s neighbour table has for `address`, if any.
    pub fn neighbour_mac(&self, host: &str, address: Ipv4Addr) -> Option<String> {
        let text = self.ip(host, &["neigh", "show", &address.to_string()]);
        let words: Vec<&str> = text.split_whitespace().collect();
        let at = words.iter().position(|word| *word == "lladdr")?;
        words.get(at + 1).map(|mac| mac.to_string())
    }

    /// A thread inside `host`'s namespace that runs jobs on its own tokio runtime.
    pub fn worker(&self, host: &str) -> Worker {
        Worker::new(self.ns(host))
    }

    /// Starts this test binary again as a holder process inside `host`'s namespace (see
    /// [`holder_child`](crate::holder::holder_child)) and waits until it holds `vip`.
    pub fn holder(
        &self,
        host: &str,
        device: &str,
        vip: Ipv4Addr,
        lifetime: Duration,
        renew: Duration,
    ) -> Holder {
        let spec = format!("{} {device} {vip} {} {}", self.ns(host), lifetime.as_millis(), renew.as_millis());
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["holder::holder_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(crate::holder::HOLDER_ENV, spec)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the holder process");
        let stdout = child.stdout.take().expect("piped");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // libtest may have written "test holder::holder_child ... " on the same line.
            let ready =
                BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains(HOLDER_READY));
            let _ = ready_tx.send(ready);
        });
        let mut holder = Holder { child };
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(true) => {}
            outcome => {
                let _ = holder.child.kill();
                panic!("the holder process did not hold {vip} ({outcome:?}): {:?}", holder.child.wait());
            }
        }
        holder
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut all = vec![self.bridge_ns()];
        all.extend(self.hosts.iter().map(|host| self.ns(host)));
        for ns in all {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Deletes the namespaces of labs whose test process is gone (killed by a timeout, so its `Drop`
/// never ran): `cvt<pid>x<n>-<host>` with no process `<pid>`.
fn remove_stale_namespaces() {
    for line in run("ip", &["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix("cvt").and_then(|rest| rest.split_once('x')).map(|(pid, _)| pid)
        else {
            continue;
        };
        let ours = name.split_once('-').is_some_and(|(head, _)| {
            head[3..].split('x').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        });
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs a command; panics with its standard error if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace exists");
    // SAFETY: setns on a descriptor of a network namespace; only this thread moves.
    let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(entered, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A thread in a namespace with a current-thread tokio runtime and a `LocalSet`: each job is
/// spawned there (so jobs run concurrently, and tasks they spawn keep running between jobs).
pub struct Worker {
    ns: String,
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn new(ns: String) -> Worker {
        let (jobs, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let thread_ns = ns.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{ns}"))
            .spawn(move || {
                enter_netns(&thread_ns);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = receiver.recv().await {
                        tokio::task::spawn_local(job());
                    }
                });
            })
            .expect("spawn a worker thread");
        Worker { ns, jobs: Some(jobs), thread: Some(thread) }
    }

    /// Starts `job` in the namespace; its result comes through the returned [`Pending`].
    pub fn start<T, F, Fut>(&self, job: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (sender, receiver) = std::sync::mpsc::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = sender.send(job().await);
            })
        });
        self.jobs.as_ref().expect("running").send(job).expect("the worker is alive");
        Pending { receiver, ns: self.ns.clone() }
    }

    /// Runs `job` in the namespace and returns its result.
    pub fn run<T, F, Fut>(&self, job: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        self.start(job).wait()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct Pending<T> {
    receiver: std::sync::mpsc::Receiver<T>,
    ns: String,
}

impl<T> Pending<T> {
    pub fn wait(self) -> T {
        self.receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("a job in namespace {} did not finish (panicked?): {e}", self.ns))
    }

    /// The result if it comes within `timeout`.
    pub fn wait_for(&self, timeout: Duration) -> Option<T> {
        self.receiver.recv_timeout(timeout).ok()
    }
}

/// The holder child process; SIGKILLed and reaped when dropped.
pub struct Holder {
    child: Child,
}

impl Holder {
    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("a pid")
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every millisecond until it holds; the time it took, or `None` after
/// `timeout`.
pub fn time_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
