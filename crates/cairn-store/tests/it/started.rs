//! Started changes (`Store::start_change`): the submitter never waits, a committer thread leads
//! the batch, and the callback gets the result once it is durable. They share batches with
//! callers that wait, fail like them after a failed fdatasync, and never keep the store alive.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use cairn_store::{Change, Changed, CreateHow, FailPoint, SetAttributes, Store, StoreError, StoreResult};

use crate::common::{open, root};

/// Most started changes not yet answered, like a connection's in-flight window.
const WINDOW: usize = 32;

/// One started change's answer: its name, when it was started and answered, the result, and
/// the thread that ran the callback.
type Answer = (String, Duration, Duration, StoreResult<Changed>, ThreadId);

/// Starts creates of `names` from this thread, at most [`WINDOW`] unanswered, stopping after the
/// first failure; returns every answer.
fn start_creates(store: &Arc<Store>, names: impl Iterator<Item = String>, clock: Instant) -> Vec<Answer> {
    let (sender, answers) = mpsc::channel::<Answer>();
    let mut received = Vec::new();
    let mut unanswered = 0;
    for name in names {
        while unanswered >= WINDOW {
            received.push(answers.recv().unwrap());
            unanswered -= 1;
        }
        if received.iter().any(|answer| answer.3.is_err()) {
            break;
        }
        let change = Change::Create {
            caller: root(),
            directory: store.root(),
            name: name.clone().into_bytes(),
            how: CreateHow::Guarded(SetAttributes::default()),
        };
        let sender = sender.clone();
        let started = clock.elapsed();
        let done = Box::new(move |result: StoreResult<Changed>| {
            let answer = (name, started, clock.elapsed(), result, std::thread::current().id());
            sender.send(answer).unwrap();
        });
        assert!(store.start_change(change, done).is_ok(), "a single-node store starts changes");
        unanswered += 1;
    }
    for _ in 0..unanswered {
        received.push(
            answers.recv_timeout(Duration::from_secs(30)).expect("a started change was never answered"),
        );
    }
    received
}

/// Drops the last handle on the store; committer threads hold it only while leading.
fn unwrap_store(mut store: Arc<Store>) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(store) {
            Ok(store) => return store,
            Err(shared) if Instant::now() < deadline => {
                store = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => panic!("a committer thread keeps the store alive"),
        }
    }
}

#[test]
fn started_changes_share_batches_with_waiting_callers_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let clock = Instant::now();
    let submitter = std::thread::current().id();
    let waited: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let answers = std::thread::scope(|scope| {
        for thread in 0..4 {
            let (store, waited) = (&store, &waited);
            scope.spawn(move || {
                for n in 0..150 {
                    let name = format!("w{thread}-{n}");
                    let how = CreateHow::Guarded(SetAttributes::default());
                    store.create(&root(), store.root(), name.as_bytes(), how).unwrap();
                    waited.lock().unwrap().push(name);
                }
            });
        }
        start_creates(&store, (0..2000).map(|n| format!("s{n}")), clock)
    });
    assert_eq!(answers.len(), 2000);
    let mut fids = std::collections::HashSet::new();
    for (name, _, _, result, thread) in &answers {
        match result {
            Ok(Changed::Created(created)) => assert!(fids.insert(created.fid), "{name}: a FID given twice"),
            other => panic!("{name}: {other:?}"),
        }
        assert_ne!(*thread, submitter, "{name}: the callback ran on the submitting thread");
    }
    // A started change answers like the same change made by a waiting caller.
    let (_, _, _, first, _) = &answers[0];
    let again = store.change(Change::Create {
        caller: root(),
        directory: store.root(),
        name: answers[0].0.clone().into_bytes(),
        how: CreateHow::Guarded(SetAttributes::default()),
    });
    assert!(first.is_ok() && matches!(again, Err(StoreError::Exists)), "{again:?}");
    let (batches, operations) = store.group_commit_stats();
    assert!(
        batches * 2 < operations,
        "started changes rarely shared a batch: {batches} batches, {operations} operations"
    );

    let store = unwrap_store(store);
    drop(store);
    let store = open(dir.path());
    let names = answers.iter().map(|answer| answer.0.clone()).chain(waited.into_inner().unwrap());
    let mut count = 0;
    for name in names {
        assert!(store.lookup(&root(), store.root(), name.as_bytes()).is_ok(), "{name} was lost");
        count += 1;
    }
    assert_eq!(count, 2600);
}

/// A failed metadata fdatasync fails the started changes it did not make durable; none started
/// after a failure was answered succeeds, and every one answered with success survives.
#[test]
fn failed_metadata_fsync_fails_started_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let clock = Instant::now();
    let before = start_creates(&store, (0..400).map(|n| format!("a{n}")), clock);
    assert!(before.iter().all(|answer| answer.3.is_ok()));
    let injector = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            store.inject_failure(FailPoint::MetadataSync);
        })
    };
    let after = start_creates(&store, (0..).map(|n| format!("b{n}")), clock);
    injector.join().unwrap();
    let first_failure = after.iter().filter(|answer| answer.3.is_err()).map(|answer| answer.2).min();
    let first_failure = first_failure.expect("the failed fdatasync failed no started change");
    for (name, started, _, result, _) in &after {
        match result {
            Ok(_) => assert!(*started < first_failure, "{name} succeeded though started after a failure"),
            Err(StoreError::Poisoned(_)) => {}
            Err(error) => panic!("{name}: {error:?}"),
        }
    }
    assert!(store.is_poisoned());

    drop(unwrap_store(store));
    let store = open(dir.path());
    for (name, _, _, result, _) in before.iter().chain(&after) {
        if result.is_ok() {
            assert!(store.lookup(&root(), store.root(), name.as_bytes()).is_ok(), "{name} was lost");
        }
    }
}
