//! `cairn distcp SRC... DST`: copies directory trees in parallel within a cluster, between two
//! clusters, or between a cluster and the local file system, with the engine of `cairn fs`
//! ([`crate::fs_cli::transfer`]).
//!
//! Locations: `/path` is in the default cluster (`--cldb`, or DATA_DIR/cluster.json);
//! `cairn://HOST:PORT[,HOST:PORT...]/path` in the cluster whose CLDBs are named;
//! `file:///path` (or `file:path`) on the local file system.
//!
//! DST is a directory (made when missing) and each SRC is copied to DST/<last name of SRC>, on
//! every run, so that a run can be repeated: a file whose copy has the same size and modification
//! time is checksummed on both sides (CRC-32C) and copied again only when they differ; any other
//! file is copied (a run stopped halfway leaves files whose modification time is not the
//! source's yet: the copy's time is set last, after its read-back check). Every copied file is
//! read back from the destination and its CRC-32C compared with the source's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::namespace::normalize;
use clap::Args;

use crate::admin::Target;
use crate::fs_cli::PathError;
use crate::fs_cli::cluster;
use crate::fs_cli::transfer::{self, ClusterTree, CopyConfig, LocalTree, Tree};

#[derive(Args)]
#[command(after_help = "\
Locations: /path is in the default cluster (--cldb, or DATA_DIR/cluster.json); \
cairn://HOST:PORT[,HOST:PORT...]/path in the cluster with those CLDBs; file:///path on this \
machine's file system.

DST is a directory (made when missing); each SRC is copied to DST/<its last name>. A second run \
copies only what is missing or changed (size, modification time, then CRC-32C); every copy is \
read back and checked against the source's CRC-32C.

Exit codes: 0 success, 1 some file failed, 2 bad usage, 3 a source does not exist.")]
pub struct DistcpArgs {
    #[command(flatten)]
    target: Target,
    /// Act as this user on the clusters (see `cairn fs --help`) [default: root].
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Files copied at a time.
    #[arg(long, default_value_t = 16, value_name = "N")]
    parallel: usize,
    /// Pieces of one large file in flight.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pieces: usize,
    /// Bytes of each READ and WRITE.
    #[arg(long, default_value_t = cairn_types::limits::IO_SIZE_BYTES_MAX as u64, value_parser = cairn_types::text::parse_size, value_name = "BYTES")]
    piece_size: u64,
    /// Sources, then the destination directory.
    #[arg(required = true, num_args = 1..)]
    sources: Vec<String>,
    destination: String,
}

/// Where a location is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Place {
    Local,
    DefaultCluster,
    /// CLDB addresses.
    Cluster(Vec<String>),
}

/// `file:///x`, `cairn://h:p/x`, `/x`.
fn parse_location(text: &str) -> Result<(Place, PathBuf), String> {
    if let Some(rest) = text.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!("{text}: file:// needs an absolute path (file:///path)"));
        }
        return Ok((Place::Local, PathBuf::from(rest)));
    }
    if let Some(rest) = text.strip_prefix("file:") {
        return Ok((Place::Local, PathBuf::from(rest)));
    }
    if let Some(rest) = text.strip_prefix("cairn://") {
        let (hosts, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        let addresses: Vec<String> = hosts.split(',').filter(|a| !a.is_empty()).map(str::to_owned).collect();
        if addresses.is_empty() {
            return Err(format!("{text}: cairn:// needs a CLDB address (cairn://HOST:PORT/path)"));
        }
        return Ok((Place::Cluster(addresses), normalize(Path::new(path))));
    }
    if text.contains("://") {
        return Err(format!("{text}: unknown scheme (use file:// or cairn://)"));
    }
    Ok((Place::DefaultCluster, normalize(Path::new(text))))
}

/// `cairn distcp ...`.
pub fn main(args: DistcpArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            match error.downcast_ref::<PathError>() {
                Some(error) => eprintln!("cairn distcp: {error}"),
                None => eprintln!("cairn distcp: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: DistcpArgs) -> anyhow::Result<ExitCode> {
    let caller = match &args.user {
        Some(user) => crate::fs_cli::caller_for(user)?,
        None => cairn_store::Caller::root(),
    };
    let timeout = Duration::from_secs(args.target.timeout.max(1));
    let mut locations = Vec::new();
    for text in args.sources.iter().chain(std::iter::once(&args.destination)) {
        locations.push(parse_location(text).map_err(anyhow::Error::msg)?);
    }
    // One tree per place.
    let mut trees: Vec<(Place, Box<dyn Tree>)> = Vec::new();
    for (place, _) in &locations {
        if trees.iter().any(|(p, _)| p == place) {
            continue;
        }
        let tree: Box<dyn Tree> = match place {
            Place::Local => Box::new(LocalTree { sync: false }),
            Place::DefaultCluster => {
                let addresses = crate::admin::cldb_addresses(&args.target)?;
                let namespace = cluster::connect(addresses, timeout, caller.clone())?;
                Box::new(ClusterTree { namespace: Arc::new(namespace), label: String::new() })
            }
            Place::Cluster(addresses) => {
                let namespace = cluster::connect(addresses.clone(), timeout, caller.clone())?;
                Box::new(ClusterTree {
                    namespace: Arc::new(namespace),
                    label: format!("cairn://{}", addresses.join(",")),
                })
            }
        };
        trees.push((place.clone(), tree));
    }
    let tree_of = |place: &Place| -> &dyn Tree {
        trees.iter().find(|(p, _)| p == place).map(|(_, t)| t.as_ref()).expect("every place has a tree")
    };
    let (destination_place, destination) = locations.pop().expect("clap requires a destination");
    let to = tree_of(&destination_place);
    to.make_directories(&destination, 0o755)?;

    let config = CopyConfig {
        overwrite: true,
        preserve: true,
        update: true,
        verify: true,
        files_parallel: args.parallel.max(1),
        pieces_parallel: args.pieces.max(1),
        piece_bytes: usize::try_from(args.piece_size.clamp(4096, 64 << 20)).unwrap_or(1 << 20),
    };
    let started = Instant::now();
    let progress = transfer::progress_bar();
    progress.set_message("distcp");
    let mut total = transfer::Summary::default();
    let mut not_found = false;
    for (place, source) in &locations {
        let from = tree_of(place);
        let target = match source.file_name() {
            Some(name) => destination.join(name),
            None => destination.clone(),
        };
        match transfer::copy_tree(from, source, to, &target, &config, &progress) {
            Ok(summary) => {
                total.files_copied += summary.files_copied;
                total.files_skipped += summary.files_skipped;
                total.directories += summary.directories;
                total.bytes_copied += summary.bytes_copied;
                total.errors.extend(summary.errors);
            }
            Err(error) => {
                not_found |= error.is_not_found();
                total.errors.push(error);
            }
        }
    }
    progress.finish_and_clear();
    for error in &total.errors {
        eprintln!("cairn distcp: {error}");
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "copied {} files ({}, {}/s), {} unchanged, {} directories, {} failed, in {:.1} s",
        total.files_copied,
        cairn_types::text::size(total.bytes_copied),
        cairn_types::text::size((total.bytes_copied as f64 / seconds.max(0.001)) as u64),
        total.files_skipped,
        total.directories,
        total.errors.len(),
        seconds
    );
    Ok(if total.errors.is_empty() {
        ExitCode::SUCCESS
    } else if not_found && total.errors.iter().all(PathError::is_not_found) {
        ExitCode::from(crate::fs_cli::EXIT_NOT_FOUND)
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(parse_location("/a/b/"), Ok((Place::DefaultCluster, PathBuf::from("/a/b"))));
        assert_eq!(parse_location("file:///tmp/x"), Ok((Place::Local, PathBuf::from("/tmp/x"))));
        assert_eq!(parse_location("file:rel/x"), Ok((Place::Local, PathBuf::from("rel/x"))));
        assert_eq!(
            parse_location("cairn://h:1,h:2/data"),
            Ok((Place::Cluster(vec!["h:1".into(), "h:2".into()]), PathBuf::from("/data")))
        );
        assert_eq!(
            parse_location("cairn://h:1"),
            Ok((Place::Cluster(vec!["h:1".into()]), PathBuf::from("/")))
        );
        assert!(parse_location("hdfs://x/y").is_err());
        assert!(parse_location("file://relative").is_err());
        assert!(parse_location("cairn:///x").is_err());
    }
}
