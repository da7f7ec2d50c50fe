//! TEMPORARY local throughput probe (not for commit).

use std::sync::Arc;
use std::time::Instant;

use nfs3_client::nfs3_types::nfs3::{self, nfs_fh3, stable_how};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::support::*;

async fn run(
    gateway: &TestGateway,
    calls: usize,
    in_flight: usize,
    make: impl Fn(u32) -> Vec<u8> + Send + 'static,
) -> f64 {
    let raw = gateway.raw().await;
    let (mut reader, mut writer) = raw.stream.into_split();
    let window = Arc::new(Semaphore::new(in_flight));
    let w = window.clone();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for xid in 0..calls as u32 {
            w.acquire().await.unwrap().forget();
            writer.write_all(&make(xid)).await.unwrap();
        }
        writer
    });
    let mut buffer = Vec::new();
    for _ in 0..calls {
        let mut mark = [0u8; 4];
        reader.read_exact(&mut mark).await.unwrap();
        buffer.resize((u32::from_be_bytes(mark) & 0x7fff_ffff) as usize, 0);
        reader.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer[20..24], &[0, 0, 0, 0]);
        window.add_permits(1);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = sender.await.unwrap();
    calls as f64 / elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn perf_probe() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let mut c = gateway.mount_root().await;
    let root = c.root_nfs_fh3();
    let credential = unix(0, 0, &[]);

    let getattr_args = nfs3::GETATTR3args { object: root.clone() };
    let cred = credential.clone();
    let rate = run(&gateway, 100_000, 16, move |xid| call_record(xid, NFS, 3, 1, &cred, &getattr_args)).await;
    println!("GETATTR: {rate:.0}/s");

    let r = root.clone();
    let cred = credential.clone();
    let rate = run(&gateway, 20_000, 16, move |xid| {
        let name = format!("f{xid}");
        let args = nfs3::CREATE3args {
            where_: dirop(&r, &name),
            how: nfs3::createhow3::UNCHECKED(nfs3::sattr3::default()),
        };
        call_record(xid + 1_000_000, NFS, 3, 8, &cred, &args)
    })
    .await;
    println!("CREATE: {rate:.0}/s");

    let file = create_file(&mut c, &root, "big", 0o644).await;
    let data = vec![7u8; 1 << 20];
    for chunk in 0..64u64 {
        ok(c.write(&nfs3::WRITE3args {
            file: fh(&file),
            offset: chunk << 20,
            count: 1 << 20,
            stable: stable_how::UNSTABLE,
            data: Opaque::borrowed(&data),
        })
        .await
        .unwrap());
    }
    ok(c.commit(&nfs3::COMMIT3args { file: fh(&file), offset: 0, count: 0 }).await.unwrap());
    let f: nfs_fh3 = file.clone();
    let cred = credential.clone();
    let rate = run(&gateway, 2000, 16, move |xid| {
        let args = nfs3::READ3args { file: f.clone(), offset: u64::from(xid % 64) << 20, count: 1 << 20 };
        call_record(xid + 2_000_000, NFS, 3, 6, &cred, &args)
    })
    .await;
    println!("READ 1 MiB: {:.0} MB/s", rate * 1.048576);
    let f: nfs_fh3 = file.clone();
    let cred = credential.clone();
    let rate = run(&gateway, 100_000, 16, move |xid| {
        let offset = (u64::from(xid).wrapping_mul(2_654_435_761) % (16384 - 1)) * 4096;
        let args = nfs3::READ3args { file: f.clone(), offset, count: 4096 };
        call_record(xid + 4_000_000, NFS, 3, 6, &cred, &args)
    })
    .await;
    println!("READ 4 KiB random x16: {rate:.0}/s");
    let getattr_args = nfs3::GETATTR3args { object: root.clone() };
    let cred = credential.clone();
    let rate = run(&gateway, 30_000, 1, move |xid| call_record(xid, NFS, 3, 1, &cred, &getattr_args)).await;
    println!("GETATTR x1: {rate:.0}/s");

    let f: nfs_fh3 = file.clone();
    let cred = credential.clone();
    let rate = run(&gateway, 1000, 16, move |xid| {
        let args = nfs3::WRITE3args {
            file: f.clone(),
            offset: u64::from(xid % 64) << 20,
            count: 1 << 20,
            stable: stable_how::UNSTABLE,
            data: Opaque::borrowed(&data),
        };
        let _ = args.packed_size();
        call_record(xid + 3_000_000, NFS, 3, 7, &cred, &args)
    })
    .await;
    println!("WRITE 1 MiB unstable: {:.0} MB/s", rate * 1.048576);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn store_probe() {
    let gateway = TestGateway::start("/ 127.0.0.1(rw,no_root_squash)\n").await;
    let store = gateway.store.clone();
    let root = store.root();
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        for _ in 0..200_000 {
            s.getattr(root).unwrap();
        }
        println!("store getattr 1 thread: {:.0}/s", 200_000.0 / start.elapsed().as_secs_f64());
    })
    .await
    .unwrap();
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        let caller = cairn_store::Caller::root();
        let created =
            s.create(&caller, root, b"rfile", cairn_store::CreateHow::Unchecked(Default::default())).unwrap();
        let data = vec![3u8; 1 << 20];
        for chunk in 0..64u64 {
            s.write(&caller, created.fid, chunk << 20, &data, cairn_store::Stability::Unstable).unwrap();
        }
        s.commit(created.fid, 0, 0).unwrap();
        let start = Instant::now();
        for i in 0..50_000u64 {
            let offset = (i.wrapping_mul(2_654_435_761) % 16383) * 4096;
            s.read(&caller, created.fid, offset, 4096).unwrap();
        }
        println!("store read 4 KiB 1 thread: {:.0}/s", 50_000.0 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for i in 0..500u64 {
            s.read(&caller, created.fid, (i % 64) << 20, 1 << 20).unwrap();
        }
        println!("store read 1 MiB 1 thread: {:.0} MB/s", 500.0 * 1.048576 / start.elapsed().as_secs_f64());
    })
    .await
    .unwrap();
    let start = Instant::now();
    let mut threads = Vec::new();
    for t in 0..16 {
        let s = store.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..1000 {
                s.create(
                    &cairn_store::Caller::root(),
                    root,
                    format!("t{t}-{i}").as_bytes(),
                    cairn_store::CreateHow::Unchecked(Default::default()),
                )
                .unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    println!("store create 16 threads: {:.0}/s", 16_000.0 / start.elapsed().as_secs_f64());
    gateway.stop().await;
}
