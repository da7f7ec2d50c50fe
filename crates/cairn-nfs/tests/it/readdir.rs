//! READDIR and READDIRPLUS paging over a large directory with small replies.

use std::collections::BTreeSet;
use std::sync::Arc;

use cairn_store::{Caller, CreateHow, SetAttributes};
use cairn_types::FileHandle;
use nfs3_client::nfs3_types::nfs3::{self, cookieverf3, nfs_fh3, nfsstat3};

use crate::support::*;

const ENTRIES: usize = 3000;

fn entry_name(index: usize) -> String {
    // Some long names, so entries have different sizes.
    if index.is_multiple_of(7) {
        format!("entry-{index:05}-{}", "x".repeat(150))
    } else {
        format!("entry-{index:05}")
    }
}

/// Fills a new directory through the store directly (much faster than 3000 NFS round trips).
async fn big_directory(gateway: &TestGateway, connection: &mut Connection) -> nfs_fh3 {
    let root = connection.root_nfs_fh3();
    let directory = mkdir(connection, &root, "big", 0o755).await;
    let fid = FileHandle::decode(&directory.data).expect("handle").fid;
    let mut threads = Vec::new();
    for thread in 0..8 {
        let store = Arc::clone(&gateway.store);
        threads.push(tokio::task::spawn_blocking(move || {
            for index in (thread..ENTRIES).step_by(8) {
                store
                    .create(
                        &Caller::root(),
                        fid,
                        entry_name(index).as_bytes(),
                        CreateHow::Unchecked(SetAttributes::default()),
                    )
                    .expect("create entry");
            }
        }));
    }
    for thread in threads {
        thread.await.expect("create thread");
    }
    directory
}

fn expected_names() -> BTreeSet<String> {
    (0..ENTRIES).map(entry_name).chain([".".to_string(), "..".to_string()]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_pages_return_every_name_exactly_once() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let mut c = gateway.mount_root().await;
    let directory = big_directory(&gateway, &mut c).await;

    for count in [512u32, 1024, 4096] {
        let mut seen = BTreeSet::new();
        let mut cookie = 0;
        let mut pages = 0;
        loop {
            let page = ok(c
                .readdir(&nfs3::READDIR3args {
                    dir: fh(&directory),
                    cookie,
                    cookieverf: cookieverf3::default(),
                    count,
                })
                .await
                .expect("READDIR"));
            pages += 1;
            assert!(!page.reply.entries.0.is_empty() || page.reply.eof, "an empty page that is not the last");
            assert!(crate::support::packed(&page).len() + 4 <= count as usize, "the reply fits in count");
            for entry in &page.reply.entries.0 {
                let name = String::from_utf8(entry.name.as_ref().to_vec()).expect("UTF-8 name");
                assert!(seen.insert(name.clone()), "{name} listed twice (count {count})");
                cookie = entry.cookie;
            }
            if page.reply.eof {
                break;
            }
            assert!(pages < 10 * ENTRIES, "no end");
        }
        assert_eq!(seen, expected_names(), "count {count}");
        assert!(pages > 10, "small counts need many pages");
    }

    let too_small = c
        .readdir(&nfs3::READDIR3args {
            dir: fh(&directory),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 100,
        })
        .await
        .expect("READDIR");
    assert_eq!(status(&too_small), nfsstat3::NFS3ERR_TOOSMALL);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdirplus_pages_return_every_name_exactly_once() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let mut c = gateway.mount_root().await;
    let directory = big_directory(&gateway, &mut c).await;

    let (dircount, maxcount) = (1024u32, 4096u32);
    let mut seen = BTreeSet::new();
    let mut cookie = 0;
    // Any cookie verifier is accepted: cookies are stateless.
    let mut verifier = cookieverf3([0xab; 8]);
    loop {
        let page = ok(c
            .readdirplus(&nfs3::READDIRPLUS3args {
                dir: fh(&directory),
                cookie,
                cookieverf: verifier,
                dircount,
                maxcount,
            })
            .await
            .expect("READDIRPLUS"));
        assert!(!page.reply.entries.0.is_empty() || page.reply.eof, "an empty page that is not the last");
        assert!(crate::support::packed(&page).len() + 4 <= maxcount as usize, "the reply fits in maxcount");
        verifier = page.cookieverf;
        for entry in &page.reply.entries.0 {
            let name = String::from_utf8(entry.name.as_ref().to_vec()).expect("UTF-8 name");
            assert!(entry.name_attributes.is_some(), "{name} without attributes");
            assert!(entry.name_handle.is_some(), "{name} without handle");
            assert!(seen.insert(name.clone()), "{name} listed twice");
            cookie = entry.cookie;
        }
        if page.reply.eof {
            break;
        }
    }
    assert_eq!(seen, expected_names());
    gateway.stop().await;
}
