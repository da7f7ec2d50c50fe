//! Injected I/O failures, so tests can prove that a failed fsync poisons the store, and a
//! simulated crash (every later I/O of this incarnation fails and nothing more reaches disk).
//!
//! Also the redb storage backend: redb's own file backend wrapped so that its fsyncs and writes
//! pass through the same failure points.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use redb::StorageBackend;
use redb::backends::FileBackend;

/// Where a test can make the store's I/O fail. `#[doc(hidden)]` on the public re-export: this is
/// for tests, not for callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// The next fdatasync of a chunk file fails with EIO.
    DataSync,
    /// The next fsync of the name container's database fails with EIO.
    MetadataSync,
    /// The next write into a chunk file fails with EIO.
    DataWrite,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    data_sync: AtomicU32,
    metadata_sync: AtomicU32,
    data_write: AtomicU32,
    /// Set by a simulated crash: every I/O fails from now on.
    crashed: AtomicBool,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected failure: {what}"))
}

fn take(counter: &AtomicU32) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| count.checked_sub(1)).is_ok()
}

impl Faults {
    pub fn arm(&self, point: FailPoint) {
        let counter = match point {
            FailPoint::DataSync => &self.data_sync,
            FailPoint::MetadataSync => &self.metadata_sync,
            FailPoint::DataWrite => &self.data_write,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    pub fn check_data_sync(&self) -> io::Result<()> {
        if self.crashed() {
            return Err(injected("crashed"));
        }
        if take(&self.data_sync) {
            return Err(injected("data fdatasync"));
        }
        Ok(())
    }

    pub fn check_data_write(&self) -> io::Result<()> {
        if self.crashed() {
            return Err(injected("crashed"));
        }
        if take(&self.data_write) {
            return Err(injected("data write"));
        }
        Ok(())
    }

    pub fn check_metadata_sync(&self) -> io::Result<()> {
        if self.crashed() {
            return Err(injected("crashed"));
        }
        if take(&self.metadata_sync) {
            return Err(injected("metadata fsync"));
        }
        Ok(())
    }
}

/// redb's file backend, with failure injection.
#[derive(Debug)]
pub(crate) struct DatabaseBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl DatabaseBackend {
    pub fn new(file: File, faults: Arc<Faults>) -> Result<DatabaseBackend, redb::DatabaseError> {
        Ok(DatabaseBackend { inner: FileBackend::new(file)?, faults })
    }
}

impl StorageBackend for DatabaseBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if self.faults.crashed() {
            return Err(injected("crashed"));
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.faults.check_metadata_sync()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if self.faults.crashed() {
            return Err(injected("crashed"));
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
