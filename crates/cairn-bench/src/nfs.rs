//! NFSv3 and MOUNT v3 calls on top of [`RpcClient`]: just what the benchmark needs.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nfs3_types::mount::{self, dirpath, mountres3};
use nfs3_types::nfs3::{
    self, COMMIT3args, COMMIT3res, LOOKUP3args, LOOKUP3res, MKDIR3args, MKDIR3res, NFS_PROGRAM, Nfs3Option,
    Nfs3Result, RMDIR3args, RMDIR3res, diropargs3, filename3, nfs_fh3, sattr3,
};
use nfs3_types::xdr_codec::Opaque;

use crate::netns;
use crate::rpc::RpcClient;

/// Where a server listens: a network namespace, ports on its loopback, and the export to mount.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub netns: String,
    pub nfs_port: u16,
    pub mount_port: u16,
    pub export: String,
}

impl Endpoint {
    /// The libnfs URL of the export (for fio's `nfs` engine).
    pub fn libnfs_url(&self) -> String {
        format!("nfs://127.0.0.1{}?nfsport={}&mountport={}", self.export, self.nfs_port, self.mount_port)
    }

    fn connect(&self, port: u16) -> Result<TcpStream> {
        netns::connect(&self.netns, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }
}

pub fn procedure(p: NFS_PROGRAM) -> u32 {
    p as u32
}

/// A mounted export: an NFS connection and the export's root handle.
pub struct NfsSession {
    pub rpc: RpcClient,
    pub root: nfs_fh3,
}

impl NfsSession {
    /// MOUNTs the export (on its own connection) and opens the NFS connection.
    pub fn open(endpoint: &Endpoint) -> Result<Self> {
        let mut mount_rpc =
            RpcClient::new(endpoint.connect(endpoint.mount_port)?, mount::PROGRAM, mount::VERSION)?;
        let path = dirpath(Opaque::borrowed(endpoint.export.as_bytes()));
        let result: mountres3 = mount_rpc.call(mount::MOUNT_PROGRAM::MOUNTPROC3_MNT as u32, &path)?;
        let root = match result {
            mountres3::Ok(ok) => nfs_fh3 { data: Opaque::owned(ok.fhandle.0.into_owned()) },
            mountres3::Err(status) => bail!("MOUNT {} failed: {status}", endpoint.export),
        };
        let rpc = RpcClient::new(endpoint.connect(endpoint.nfs_port)?, nfs3::PROGRAM, nfs3::VERSION)?;
        Ok(Self { rpc, root })
    }

    pub fn lookup(&mut self, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3> {
        let args = LOOKUP3args { what: dir_op(dir, name) };
        match self.rpc.call::<_, LOOKUP3res>(procedure(NFS_PROGRAM::NFSPROC3_LOOKUP), &args)? {
            Nfs3Result::Ok(ok) => Ok(ok.object),
            Nfs3Result::Err((status, _)) => bail!("LOOKUP {name}: {status}"),
        }
    }

    pub fn mkdir(&mut self, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3> {
        let args = MKDIR3args {
            where_: dir_op(dir, name),
            attributes: sattr3 { mode: Nfs3Option::Some(0o755), ..sattr3::default() },
        };
        match self.rpc.call::<_, MKDIR3res>(procedure(NFS_PROGRAM::NFSPROC3_MKDIR), &args)? {
            Nfs3Result::Ok(ok) => match ok.obj {
                Nfs3Option::Some(handle) => Ok(handle),
                Nfs3Option::None => self.lookup(dir, name),
            },
            Nfs3Result::Err((status, _)) => bail!("MKDIR {name}: {status}"),
        }
    }

    pub fn rmdir(&mut self, dir: &nfs_fh3, name: &str) -> Result<()> {
        let args = RMDIR3args { object: dir_op(dir, name) };
        match self.rpc.call::<_, RMDIR3res>(procedure(NFS_PROGRAM::NFSPROC3_RMDIR), &args)? {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((status, _)) => bail!("RMDIR {name}: {status}"),
        }
    }

    /// COMMITs the whole file (offset 0, count 0) and returns how long the server took.
    pub fn commit(&mut self, file: &nfs_fh3) -> Result<Duration> {
        let args = COMMIT3args { file: file.clone(), offset: 0, count: 0 };
        let start = Instant::now();
        match self.rpc.call::<_, COMMIT3res>(procedure(NFS_PROGRAM::NFSPROC3_COMMIT), &args)? {
            Nfs3Result::Ok(_) => Ok(start.elapsed()),
            Nfs3Result::Err((status, _)) => bail!("COMMIT: {status}"),
        }
    }
}

pub fn dir_op<'a>(dir: &nfs_fh3, name: &'a str) -> diropargs3<'a> {
    diropargs3 { dir: dir.clone(), name: filename3(Opaque::borrowed(name.as_bytes())) }
}
