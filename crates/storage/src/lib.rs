//! Durable storage for a Conclave node, on sled.
//!
//! Owns: the data directory's layout, the Raft log and vote ([`LogStore`], openraft's
//! `RaftLogStorage`), the state machine with its snapshots ([`StateMachineStore`], openraft's
//! `RaftStateMachine`), and the node's identity record ([`Identity`]). sled is used only here, so
//! that the engine can change without touching consensus or API code.
//!
//! Does not own: the openraft type configuration (the consensus crate declares it; these stores
//! are generic over any config whose application data is [`conclave_state::WriteRequest`]),
//! networking, clocks.
//!
//! Durability: appends and votes are acknowledged only after `sled::Db::flush_async` has
//! returned, with one flush covering every append that arrived while the previous flush ran. On
//! Linux sled writes its log with `sync_file_range` and calls `sync_all` only from its periodic
//! flusher, so an acknowledged write survives `kill -9` of the process at any moment. A power loss
//! may make the node forget its latest entries and its latest vote; see docs/architecture.md.
//!
//! The state machine lives in memory and is persisted as snapshots. On restart the last snapshot is
//! loaded and openraft re-applies the log from there up to the saved commit index.
//!
//! Known to be missing: an fsync per flush (power-loss durability); snapshots are built and
//! shipped whole in memory (fine for room state of tens of megabytes, not for gigabytes).

// openraft's StorageError is large, and its traits dictate that our helpers return it.
#![allow(clippy::result_large_err)]

mod identity;
mod log_store;
mod state_machine;

use std::io::Cursor;
use std::path::Path;

use conclave_state::{WriteReply, WriteRequest};
use openraft::{Entry, RaftTypeConfig};

pub use identity::{Identity, IdentityError};
pub use log_store::{LogStats, LogStore};
pub use state_machine::{StateMachineStore, StateView};

/// The openraft configurations these stores serve.
pub trait StoreConfig:
    RaftTypeConfig<
    D = WriteRequest,
    R = WriteReply,
    Entry = Entry<Self>,
    SnapshotData = Cursor<Vec<u8>>,
>
{
}

impl<C> StoreConfig for C where
    C: RaftTypeConfig<
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
    Ok(Storage {
        log: LogStore::open(&db)?,
        state: StateMachineStore::open(&db)?,
        identity: Identity::open(&db)?,
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
