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
pub mod fuzzing;
mod heavy;
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
    #[error(
        "the data directory is in format {found}, written by a later Conclave; this build reads \
         formats up to {DATA_FORMAT}: run the later build, or restore a backup into a new directory"
    )]
    LaterFormat { found: u32 },
    #[error("the data directory's {FORMAT_FILE} file is unreadable: {0:?}")]
    BadFormatFile(String),
}

/// The file naming the format of the data directory's layout: its log segments and their
/// records, the encoding of log entries, and sled's trees (the snapshot file has a version of
/// its own).
pub const FORMAT_FILE: &str = "FORMAT";

/// The data directory format this build writes; it reads every earlier one.
/// - 1: 64 MiB log segments of (length, CRC32, index) records holding bincode entries; votes,
///   purge points and the identity in sled. A directory from before the file existed is 1.
pub const DATA_FORMAT: u32 = 1;

/// Refuses a data directory of a later format; records this build's in a new one.
fn check_format(dir: &Path) -> Result<(), OpenError> {
    let path = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: u32 = text
                .trim()
                .parse()
                .map_err(|_| OpenError::BadFormatFile(text.clone()))?;
            if found > DATA_FORMAT {
                return Err(OpenError::LaterFormat { found });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let mut file = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut file, format!("{DATA_FORMAT}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens (or creates) the data directory at `dir`.
pub fn open<C: StoreConfig>(dir: &Path, options: StorageOptions) -> Result<Storage<C>, OpenError> {
    check_format(dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_records_its_format_and_a_later_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        check_format(&path).unwrap();
        let recorded = std::fs::read_to_string(path.join(FORMAT_FILE)).unwrap();
        assert_eq!(recorded.trim(), DATA_FORMAT.to_string());
        check_format(&path).expect("its own format, again");

        std::fs::write(path.join(FORMAT_FILE), format!("{}\n", DATA_FORMAT + 1)).unwrap();
        let error = check_format(&path).unwrap_err().to_string();
        assert!(
            error.contains(&format!("format {}", DATA_FORMAT + 1))
                && error.contains(&format!("up to {DATA_FORMAT}")),
            "{error}"
        );
        std::fs::write(path.join(FORMAT_FILE), "one").unwrap();
        assert!(matches!(
            check_format(&path),
            Err(OpenError::BadFormatFile(_))
        ));
    }
}
