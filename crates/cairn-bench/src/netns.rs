//! Network namespaces: each server runs in its own, with only a loopback interface, and the
//! clients connect from inside it. A socket keeps the namespace it was created in, so the
//! benchmark opens its sockets on a short-lived thread that has entered the namespace and then
//! uses them from anywhere.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::system::run_checked;

/// Moves the calling thread into network namespace `name` (as `ip netns exec` would).
fn enter(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid, open namespace file descriptor; it changes only the calling
    // thread's network namespace, which the callers below confine to a thread of their own.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `name` and returns its result.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in netns panicked"))?
}

/// Opens a TCP connection from inside network namespace `name`.
pub fn connect(name: &str, address: SocketAddr) -> Result<TcpStream> {
    run_in(name, move || {
        TcpStream::connect_timeout(&address, Duration::from_secs(10))
            .with_context(|| format!("connecting to {address}"))
    })
    .with_context(|| format!("in netns {name}"))
}

/// A network namespace with only `lo` (up), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        run_checked(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Self { name: name.to_owned() };
        run_checked(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = run_checked(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cairn-bench: could not delete netns {}: {error:#}", self.name);
        }
    }
}
