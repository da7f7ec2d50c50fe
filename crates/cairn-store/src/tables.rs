//! The name container's redb tables, and conversions of redb's errors.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::api::{StoreError, StoreResult};
use crate::format::{Dirent, Inode};

/// Counters and identity: `format_version`, `cluster_id`, `volume_id`, `next_inode`, `txn_id`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// inode number → [`Inode`] record.
pub(crate) const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// (directory inode, name) → [`Dirent`].
pub(crate) const DIRENTS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("dirents");
/// (directory inode, cookie) → name: the listing order.
pub(crate) const COOKIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("cookies");
/// (inode, block index 0..8) → inline block (version, CRC-32C, bytes without trailing zeros).
pub(crate) const INLINE: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("inline");
/// (inode, chunk index) → data container id: the chunk map.
pub(crate) const CHUNKS: TableDefinition<(u64, u64), u32> = TableDefinition::new("chunks");
/// (inode, chunk index, region index) → (): a region written since its last commit.
pub(crate) const DIRTY: TableDefinition<(u64, u64, u32), ()> = TableDefinition::new("dirty_regions");
/// inode → chunk list: a removed inode whose chunk files may still exist.
pub(crate) const PENDING_DELETE: TableDefinition<u64, &[u8]> = TableDefinition::new("pending_delete");

pub(crate) fn storage_error(error: impl Into<redb::Error>) -> StoreError {
    match error.into() {
        redb::Error::Io(io) => StoreError::Io(io),
        redb::Error::PreviousIo => StoreError::Io(std::io::Error::other("earlier I/O error in the database")),
        other => StoreError::Io(std::io::Error::other(format!("database: {other}"))),
    }
}

pub(crate) trait Db<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T, E: Into<redb::Error>> Db<T> for Result<T, E> {
    fn db(self) -> StoreResult<T> {
        self.map_err(storage_error)
    }
}

pub(crate) fn begin_read(db: &redb::Database) -> StoreResult<redb::ReadTransaction> {
    db.begin_read().db()
}

pub(crate) fn read_inode(read: &redb::ReadTransaction, number: u64) -> StoreResult<Option<Inode>> {
    let table = read.open_table(INODES).db()?;
    get_inode(&table, number)
}

pub(crate) fn get_inode(
    table: &impl ReadableTable<u64, &'static [u8]>,
    number: u64,
) -> StoreResult<Option<Inode>> {
    match table.get(number).db()? {
        Some(bytes) => Ok(Some(Inode::decode(bytes.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn get_dirent(
    table: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    directory: u64,
    name: &[u8],
) -> StoreResult<Option<Dirent>> {
    match table.get((directory, name)).db()? {
        Some(bytes) => Ok(Some(Dirent::decode(bytes.value())?)),
        None => Ok(None),
    }
}
