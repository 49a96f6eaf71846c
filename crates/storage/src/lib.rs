//! Durable storage for a Conclave node: the Raft log in segment files of its own, everything
//! else in sled.
//!
//! Owns: the data directory's layout, the Raft log and vote ([`LogStore`], openraft's
//! `RaftLogStorage`; entries in `segments.rs`), the state machine with its snapshots
//! ([`StateMachineStore`], openraft's `RaftStateMachine`), the node's identity record
//! ([`Identity`]), and the backup file format with the seeding of a data directory from one
//! (`backup.rs`). sled and the segment files are used only here, so that the engines can change
//! without touching consensus or API code.
//!
//! Does not own: the openraft type configuration (the consensus crate declares it; these stores
//! are generic over any config whose application data is [`conclave_state::WriteRequest`]),
//! networking, clocks.
//!
//! Durability: appends are acknowledged after `fdatasync` of the segment files written, one sync
//! covering every append that arrived while the previous one ran; truncations sync before they
//! return. Votes, purge points and the identity record (node id, incarnation, cluster id) are
//! acknowledged only after `sled::Db::flush` and a `syncfs(2)` of the data directory's
//! filesystem (module `durable`); a snapshot after its file is synced and renamed into place and
//! the directory synced (module `snapshot_file`). They survive `kill -9` and power loss.
//!
//! The state machine lives in memory and is persisted as snapshots. On restart the last snapshot is
//! loaded and openraft re-applies the log from there up to the saved commit index.
//!
//! Known to be missing: snapshots are built and shipped whole in memory (fine for room state of
//! tens of megabytes, not for gigabytes); `syncfs` also flushes other programs' writes on the
//! same filesystem, so give the data directory a filesystem of its own in production.

// openraft's StorageError is large, and its traits dictate that our helpers return it.
#![allow(clippy::result_large_err)]

mod backup;
mod coverage;
mod durable;
mod identity;
mod log_store;
mod segments;
mod snapshot_file;
mod space;
mod state_machine;

use std::io::Cursor;
use std::path::Path;

use conclave_state::{WriteReply, WriteRequest};
use openraft::{Entry, RaftTypeConfig};

pub use backup::{
    read_backup, seed_snapshot, write_backup, Backup, BackupError, BackupHeader, BACKUP_VERSION,
};
pub use identity::{Identity, IdentityError};
pub use log_store::{LogStats, LogStore};
pub use space::available_bytes;
pub use state_machine::SnapshotStats;
pub use state_machine::{StateMachineStore, StateView};

/// The openraft configurations these stores serve.
pub trait StoreConfig:
    RaftTypeConfig<
    NodeId = u64,
    D = WriteRequest,
    R = WriteReply,
    Entry = Entry<Self>,
    SnapshotData = Cursor<Vec<u8>>,
>
{
}

impl<C> StoreConfig for C where
    C: RaftTypeConfig<
        NodeId = u64,
        D = WriteRequest,
        R = WriteReply,
        Entry = Entry<C>,
        SnapshotData = Cursor<Vec<u8>>,
    >
{
}

/// Everything a node keeps in its data directory.
pub struct Storage<C: StoreConfig> {
    pub log: LogStore<C>,
    pub state: StateMachineStore<C>,
    pub identity: Identity,
}

/// Settings of the storage engine.
#[derive(Clone, Copy, Debug)]
pub struct StorageOptions {
    /// Bytes of sled's page cache.
    pub cache_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the data directory: {0}")]
    Engine(#[from] sled::Error),
    #[error("cannot open the data directory's log file: {0}")]
    File(#[from] std::io::Error),
    #[error("the data directory's snapshot is unreadable: {0}")]
    Snapshot(String),
}

/// Opens (or creates) the data directory at `dir`.
pub fn open<C: StoreConfig>(dir: &Path, options: StorageOptions) -> Result<Storage<C>, OpenError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(options.cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let disk = durable::Disk::open(&db, dir)?;
    let state = StateMachineStore::open(&db, dir)?;
    Ok(Storage {
        log: LogStore::open(&db, dir, disk.clone(), state.coverage())?,
        state,
        identity: Identity::open(&db, disk)?,
    })
}

/// Encodes a value for storage.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory serialization cannot fail")
}

/// Decodes a stored value.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}
