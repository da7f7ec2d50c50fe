//! Metadata tests with the pipelined client: CREATE, LOOKUP, GETATTR and REMOVE of many empty
//! files with 1 or more requests in flight on one TCP connection, and listing a large folder
//! with READDIRPLUS and READDIR.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use nfs3_types::nfs3::{
    CREATE3args, CREATE3res, GETATTR3args, GETATTR3res, LOOKUP3args, LOOKUP3res, NFS_PROGRAM, Nfs3Option,
    Nfs3Result, READDIR3args, READDIR3res, READDIRPLUS3args, READDIRPLUS3res, REMOVE3args, REMOVE3res,
    cookieverf3, createhow3, nfs_fh3, sattr3,
};

use crate::nfs::{NfsSession, dir_op, procedure};

/// READDIRPLUS `dircount` (bytes of names and cookies per reply).
pub const READDIRPLUS_DIRCOUNT_BYTES: u32 = 64 << 10;
/// READDIRPLUS `maxcount` and READDIR `count` (bytes per reply); servers may return less.
pub const READDIR_MAXCOUNT_BYTES: u32 = 1 << 20;
/// Requests in flight while filling the folder for the listing test (not a reported figure
/// beyond "how long filling took").
pub const LISTING_FILL_DEPTH: usize = 16;

/// Operations per second.
#[derive(Clone, Copy, Debug)]
pub struct MetadataFigures {
    pub create: f64,
    pub lookup: f64,
    pub getattr: f64,
    pub remove: f64,
}

fn file_name(i: usize) -> String {
    format!("f{i:07}")
}

fn create_args<'a>(dir: &nfs_fh3, name: &'a str) -> CREATE3args<'a> {
    CREATE3args {
        where_: dir_op(dir, name),
        how: createhow3::UNCHECKED(sattr3 { mode: Nfs3Option::Some(0o644), ..sattr3::default() }),
    }
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Creates `names` in `dir` with `depth` calls in flight; returns the elapsed time.
fn create_all(session: &mut NfsSession, dir: &nfs_fh3, names: &[String], depth: usize) -> Result<Duration> {
    session.rpc.pipeline(
        procedure(NFS_PROGRAM::NFSPROC3_CREATE),
        names.len(),
        depth,
        |i| create_args(dir, &names[i]),
        |i, reply| match reply.decode::<CREATE3res>()? {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((status, _)) => bail!("CREATE {}: {status}", names[i]),
        },
    )
}

/// CREATE, LOOKUP, GETATTR and REMOVE of `files` files in a new folder, `depth` in flight.
pub fn metadata(session: &mut NfsSession, files: usize, depth: usize) -> Result<MetadataFigures> {
    let root = session.root.clone();
    let dir_name = format!("meta-qd{depth}");
    let dir = session.mkdir(&root, &dir_name)?;
    let names: Vec<String> = (0..files).map(file_name).collect();

    let create = create_all(session, &dir, &names, depth)?;

    let mut handles: Vec<Option<nfs_fh3>> = vec![None; files];
    let lookup = session.rpc.pipeline(
        procedure(NFS_PROGRAM::NFSPROC3_LOOKUP),
        files,
        depth,
        |i| LOOKUP3args { what: dir_op(&dir, &names[i]) },
        |i, reply| match reply.decode::<LOOKUP3res>()? {
            Nfs3Result::Ok(ok) => {
                handles[i] = Some(ok.object);
                Ok(())
            }
            Nfs3Result::Err((status, _)) => bail!("LOOKUP {}: {status}", names[i]),
        },
    )?;
    let handles: Vec<nfs_fh3> = handles.into_iter().flatten().collect();
    ensure!(handles.len() == files, "LOOKUP returned {} handles for {files} files", handles.len());

    let getattr = session.rpc.pipeline(
        procedure(NFS_PROGRAM::NFSPROC3_GETATTR),
        files,
        depth,
        |i| GETATTR3args { object: handles[i].clone() },
        |i, reply| match reply.decode::<GETATTR3res>()? {
            Nfs3Result::Ok(ok) => {
                ensure!(ok.obj_attributes.size == 0, "{} is not empty", names[i]);
                Ok(())
            }
            Nfs3Result::Err((status, _)) => bail!("GETATTR {}: {status}", names[i]),
        },
    )?;

    let remove = session.rpc.pipeline(
        procedure(NFS_PROGRAM::NFSPROC3_REMOVE),
        files,
        depth,
        |i| REMOVE3args { object: dir_op(&dir, &names[i]) },
        |i, reply| match reply.decode::<REMOVE3res>()? {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((status, _)) => bail!("REMOVE {}: {status}", names[i]),
        },
    )?;
    session.rmdir(&root, &dir_name)?;

    Ok(MetadataFigures {
        create: rate(files, create),
        lookup: rate(files, lookup),
        getattr: rate(files, getattr),
        remove: rate(files, remove),
    })
}

#[derive(Clone, Copy, Debug)]
pub struct ListingFigures {
    /// Files per second while filling the folder (context, not a target).
    pub fill_rate: f64,
    pub readdirplus: Duration,
    pub readdir: Duration,
    /// Calls each full listing took (servers cap replies below what was asked for).
    pub readdirplus_calls: usize,
    pub readdir_calls: usize,
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// Fills a new folder with `entries` empty files, then lists it completely once with
/// READDIRPLUS and once with READDIR.
pub fn listing(session: &mut NfsSession, entries: usize) -> Result<ListingFigures> {
    let root = session.root.clone();
    let dir = session.mkdir(&root, "listing")?;
    let names: Vec<String> = (0..entries).map(file_name).collect();
    let fill = create_all(session, &dir, &names, LISTING_FILL_DEPTH)?;
    drop(names);

    let (readdirplus, readdirplus_calls) = {
        let start = Instant::now();
        let mut cookie = 0;
        let mut cookieverf = cookieverf3::default();
        let mut seen = 0usize;
        let mut calls = 0usize;
        loop {
            calls += 1;
            let args = READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf,
                dircount: READDIRPLUS_DIRCOUNT_BYTES,
                maxcount: READDIR_MAXCOUNT_BYTES,
            };
            let result: READDIRPLUS3res =
                session.rpc.call(procedure(NFS_PROGRAM::NFSPROC3_READDIRPLUS), &args)?;
            let ok = match result {
                Nfs3Result::Ok(ok) => ok,
                Nfs3Result::Err((status, _)) => bail!("READDIRPLUS at cookie {cookie}: {status}"),
            };
            cookieverf = ok.cookieverf;
            let page = ok.reply.entries.0;
            ensure!(!page.is_empty() || ok.reply.eof, "READDIRPLUS returned an empty page before the end");
            for entry in &page {
                if !is_dot(entry.name.as_ref()) {
                    // Without attributes and handles the call would be a cheaper READDIR, and
                    // the comparison unfair.
                    ensure!(
                        entry.name_handle.is_some() && entry.name_attributes.is_some(),
                        "READDIRPLUS entry without a handle or attributes"
                    );
                    seen += 1;
                }
                cookie = entry.cookie;
            }
            if ok.reply.eof {
                break;
            }
        }
        ensure!(seen == entries, "READDIRPLUS listed {seen} entries, expected {entries}");
        (start.elapsed(), calls)
    };

    let (readdir, readdir_calls) = {
        let start = Instant::now();
        let mut cookie = 0;
        let mut cookieverf = cookieverf3::default();
        let mut seen = 0usize;
        let mut calls = 0usize;
        loop {
            calls += 1;
            let args = READDIR3args { dir: dir.clone(), cookie, cookieverf, count: READDIR_MAXCOUNT_BYTES };
            let result: READDIR3res = session.rpc.call(procedure(NFS_PROGRAM::NFSPROC3_READDIR), &args)?;
            let ok = match result {
                Nfs3Result::Ok(ok) => ok,
                Nfs3Result::Err((status, _)) => bail!("READDIR at cookie {cookie}: {status}"),
            };
            cookieverf = ok.cookieverf;
            let page = ok.reply.entries.0;
            ensure!(!page.is_empty() || ok.reply.eof, "READDIR returned an empty page before the end");
            for entry in &page {
                if !is_dot(entry.name.as_ref()) {
                    seen += 1;
                }
                cookie = entry.cookie;
            }
            if ok.reply.eof {
                break;
            }
        }
        ensure!(seen == entries, "READDIR listed {seen} entries, expected {entries}");
        (start.elapsed(), calls)
    };

    Ok(ListingFigures {
        fill_rate: rate(entries, fill),
        readdirplus,
        readdir,
        readdirplus_calls,
        readdir_calls,
    })
}
