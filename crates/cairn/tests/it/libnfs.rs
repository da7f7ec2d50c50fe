//! libnfs-utils (`nfs-cp`, `nfs-ls`, `nfs-cat`, a userspace NFSv3 client) against `cairn up` on
//! 127.0.0.1 at a free port, without a portmapper (the ports are in the URL). Folders are made
//! with the `nfs3_client` crate, since libnfs-utils has no mkdir.

use std::net::SocketAddr;
use std::path::Path;

use nfs3_client::nfs3_types::nfs3::{
    MKDIR3args, Nfs3Option, Nfs3Result, SETATTR3args, diropargs3, filename3, nfs_fh3, sattr3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use nfs3_client::tokio::TokioIo;
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use tokio::net::TcpStream;

use crate::support::{
    CairnServer, describe_output, libnfs_ok, nfs_file_url, nfs_url, random_bytes, require_libnfs_utils,
    test_dir,
};

/// Runs `work` with an nfs3_client connection (AUTH_UNIX root, `/` mounted) to `server`.
pub(crate) fn with_nfs3_client<T>(
    server: SocketAddr,
    work: impl AsyncFnOnce(&mut Nfs3Connection<TokioIo<TcpStream>>, nfs_fh3) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: 1,
            machinename: Opaque::borrowed(b"cairn-it"),
            uid: 0,
            gid: 0,
            gids: vec![],
        });
        let mut connection = Nfs3ConnectionBuilder::new(TokioConnector, server.ip().to_string(), "/")
            .mount_port(server.port())
            .nfs3_port(server.port())
            .connect_from_privileged_port(false)
            .credential(credential)
            .mount()
            .await
            .unwrap_or_else(|error| panic!("nfs3_client cannot mount / from {server}: {error:?}"));
        let root = connection.root_nfs_fh3();
        let result = work(&mut connection, root).await;
        let _ = connection.unmount().await;
        result
    })
}

/// Creates the folders of `path` (each level in turn, under the export root `/`) with `mode`.
fn make_folders(server: SocketAddr, path: &str, mode: u32) {
    with_nfs3_client(server, async |connection, root| {
        let mut folder = root;
        for name in path.split('/').filter(|name| !name.is_empty()) {
            let arguments = MKDIR3args {
                where_: diropargs3 {
                    dir: folder.clone(),
                    name: filename3(Opaque::borrowed(name.as_bytes())),
                },
                attributes: sattr3 { mode: Nfs3Option::Some(mode), ..sattr3::default() },
            };
            let result =
                connection.mkdir(&arguments).await.unwrap_or_else(|error| panic!("MKDIR {name}: {error:?}"));
            folder = match result {
                Nfs3Result::Ok(created) => match created.obj {
                    Nfs3Option::Some(handle) => handle,
                    Nfs3Option::None => panic!("MKDIR {name} returned no file handle"),
                },
                Nfs3Result::Err((status, _)) => panic!("MKDIR {name} failed with {status:?}"),
            };
        }
    });
}

/// Sets the mode of the export root `/`.
fn chmod_root(server: SocketAddr, mode: u32) {
    with_nfs3_client(server, async |connection, root| {
        let arguments = SETATTR3args {
            object: root,
            new_attributes: sattr3 { mode: Nfs3Option::Some(mode), ..sattr3::default() },
            guard: Nfs3Option::None,
        };
        match connection.setattr(&arguments).await {
            Ok(Nfs3Result::Ok(_)) => {}
            Ok(Nfs3Result::Err((status, _))) => panic!("SETATTR mode {mode:o} of / failed with {status:?}"),
            Err(error) => panic!("SETATTR of /: {error:?}"),
        }
    });
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

/// nfs-ls lines are `MODE NLINK UID GID SIZE NAME`; the line of `name`, split into words.
fn listing_entry(listing: &str, name: &str) -> Vec<String> {
    listing
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|words| words.last().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("nfs-ls does not list {name}:\n{listing}"))
}

#[test]
fn copy_in_list_copy_out_and_cat() {
    require_libnfs_utils();
    let dir = test_dir("libnfs-copy");
    let server = CairnServer::start_on_loopback(dir.path().join("data"), None);
    let address = server.client_address();

    let original = random_bytes(3 * 1024 * 1024 + 12345);
    let local = dir.path().join("random.bin");
    std::fs::write(&local, &original).expect("write the local file");
    let copied = libnfs_ok(None, "nfs-cp", &[path_text(&local), &nfs_file_url(address, "/random.bin", "")]);
    assert!(
        String::from_utf8_lossy(&copied.stdout).contains(&original.len().to_string()),
        "{}",
        describe_output(&copied)
    );

    let listing = libnfs_ok(None, "nfs-ls", &[&nfs_url(address, "/", "")]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let entry = listing_entry(&listing, "random.bin");
    assert_eq!(entry[4], original.len().to_string(), "nfs-ls size of random.bin:\n{listing}");
    assert!(entry[0].starts_with('-'), "random.bin should be a regular file:\n{listing}");

    let back = dir.path().join("random.back");
    libnfs_ok(None, "nfs-cp", &[&nfs_file_url(address, "/random.bin", ""), path_text(&back)]);
    let read_back = std::fs::read(&back).expect("read the copy");
    assert!(
        read_back == original,
        "the file copied back differs ({} bytes, {} expected)",
        read_back.len(),
        original.len()
    );

    let small = dir.path().join("hello.txt");
    std::fs::write(&small, "hello from the host\nsecond line\n").expect("write hello.txt");
    libnfs_ok(None, "nfs-cp", &[path_text(&small), &nfs_file_url(address, "/hello.txt", "")]);
    let cat = libnfs_ok(None, "nfs-cat", &[&nfs_file_url(address, "/hello.txt", "")]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello from the host\nsecond line\n");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").expect("write an empty file");
    libnfs_ok(None, "nfs-cp", &[path_text(&empty), &nfs_file_url(address, "/empty", "")]);
    let cat = libnfs_ok(None, "nfs-cat", &[&nfs_file_url(address, "/empty", "")]);
    assert!(cat.stdout.is_empty(), "nfs-cat of an empty file printed {:?}", cat.stdout);

    // An existing name: nfs-cp creates exclusively, so the server must refuse (NFS3ERR_EXIST).
    let again = crate::support::run_libnfs(
        None,
        "nfs-cp",
        &[path_text(&small), &nfs_file_url(address, "/random.bin", "")],
    );
    assert!(!again.status.success(), "nfs-cp over an existing file should fail: {}", describe_output(&again));
    let back_again = dir.path().join("random.back2");
    libnfs_ok(None, "nfs-cp", &[&nfs_file_url(address, "/random.bin", ""), path_text(&back_again)]);
    assert!(
        std::fs::read(&back_again).expect("read the copy") == original,
        "random.bin changed after a refused nfs-cp"
    );
}

/// nfs-cp and nfs-cat MOUNT the folder part of the URL: the server must allow mounting any
/// existing folder under an exported path.
#[test]
fn files_in_subdirectories_through_subdirectory_mounts() {
    require_libnfs_utils();
    let dir = test_dir("libnfs-subdir");
    let server = CairnServer::start_on_loopback(dir.path().join("data"), None);
    let address = server.client_address();
    make_folders(address, "/projects/alpha", 0o755);

    let original = random_bytes(2 * 1024 * 1024 + 7);
    let local = dir.path().join("data.bin");
    std::fs::write(&local, &original).expect("write the local file");
    libnfs_ok(None, "nfs-cp", &[path_text(&local), &nfs_url(address, "/projects/alpha/data.bin", "")]);
    let back = dir.path().join("data.back");
    libnfs_ok(None, "nfs-cp", &[&nfs_url(address, "/projects/alpha/data.bin", ""), path_text(&back)]);
    assert!(std::fs::read(&back).expect("read the copy") == original, "the file copied back differs");

    let small = dir.path().join("note.txt");
    std::fs::write(&small, "a note one level down\n").expect("write note.txt");
    libnfs_ok(None, "nfs-cp", &[path_text(&small), &nfs_url(address, "/projects/note.txt", "")]);
    let cat = libnfs_ok(None, "nfs-cat", &[&nfs_url(address, "/projects/note.txt", "")]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "a note one level down\n");

    let listing = libnfs_ok(None, "nfs-ls", &[&nfs_url(address, "/projects/alpha", "")]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(listing_entry(&listing, "data.bin")[4], original.len().to_string(), "{listing}");
    let root = libnfs_ok(None, "nfs-ls", &[&nfs_url(address, "/", "")]);
    let root = String::from_utf8_lossy(&root.stdout).into_owned();
    assert!(listing_entry(&root, "projects")[0].starts_with('d'), "projects should be a folder:\n{root}");
}

/// AUTH_UNIX identities from the URL (`uid=`, `gid=`): the server enforces mode bits for them.
#[test]
fn uid_and_gid_from_the_url_are_enforced() {
    require_libnfs_utils();
    let dir = test_dir("libnfs-uid");
    let server = CairnServer::start_on_loopback(dir.path().join("data"), None);
    let address = server.client_address();
    let as_1000 = "&uid=1000&gid=1000";
    let local = dir.path().join("secret.txt");
    std::fs::write(&local, "root's secret\n").expect("write secret.txt");

    // As root (not squashed by the default exports): nfs-cp creates files with mode 0660.
    libnfs_ok(None, "nfs-cp", &[path_text(&local), &nfs_file_url(address, "/secret.txt", "")]);
    let listing = libnfs_ok(None, "nfs-ls", &[&nfs_url(address, "/", "")]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let entry = listing_entry(&listing, "secret.txt");
    assert_eq!(
        (entry[0].as_str(), entry[2].as_str(), entry[3].as_str()),
        ("-rw-rw----", "0", "0"),
        "{listing}"
    );

    // uid 1000 may neither read root's 0660 file nor create files in root's 0755 folder.
    let denied =
        crate::support::run_libnfs(None, "nfs-cat", &[&nfs_file_url(address, "/secret.txt", as_1000)]);
    assert!(!denied.status.success(), "uid 1000 read a 0660 file of root: {}", describe_output(&denied));
    assert!(!String::from_utf8_lossy(&denied.stdout).contains("secret"), "{}", describe_output(&denied));
    let denied = crate::support::run_libnfs(
        None,
        "nfs-cp",
        &[path_text(&local), &nfs_file_url(address, "/by-1000.txt", as_1000)],
    );
    assert!(
        !denied.status.success(),
        "uid 1000 created a file in root's 0755 folder: {}",
        describe_output(&denied)
    );

    // Root still reads it; once `/` is 0777, uid 1000 creates a file there and owns it.
    let cat = libnfs_ok(None, "nfs-cat", &[&nfs_file_url(address, "/secret.txt", "")]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "root's secret\n");
    chmod_root(address, 0o777);
    libnfs_ok(None, "nfs-cp", &[path_text(&local), &nfs_file_url(address, "/by-1000.txt", as_1000)]);
    let listing = libnfs_ok(None, "nfs-ls", &[&nfs_url(address, "/", "")]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let entry = listing_entry(&listing, "by-1000.txt");
    assert_eq!(
        (entry[2].as_str(), entry[3].as_str()),
        ("1000", "1000"),
        "owner of a file uid 1000 created:\n{listing}"
    );
    let cat = libnfs_ok(None, "nfs-cat", &[&nfs_file_url(address, "/by-1000.txt", as_1000)]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "root's secret\n");
    // ... and another user may not read that 0660 file.
    let denied = crate::support::run_libnfs(
        None,
        "nfs-cat",
        &[&nfs_file_url(address, "/by-1000.txt", "&uid=1001&gid=1001")],
    );
    assert!(!denied.status.success(), "uid 1001 read a 0660 file of uid 1000: {}", describe_output(&denied));
}
