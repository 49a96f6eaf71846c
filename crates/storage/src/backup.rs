//! Backups: a whole replica in one file, taken from any node (`conclave ctl snapshot save`), and
//! the seeding of a new node's data directory from one (`conclave server --restore`).
//!
//! Format: `CBAK`, a format version (u32), the header's length (u64) and bytes ([`BackupHeader`],
//! bincode), the machine's length (u64) and bytes (bincode, as in snapshots), then the SHA-256 of
//! everything before it; integers little-endian. A reader checks the magic, the version and the
//! checksum before it decodes anything.

use std::io;
use std::path::Path;

use conclave_state::Machine;
use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::snapshot_file::{SnapshotFile, Stored};
use crate::{decode, encode, StoreConfig};

const MAGIC: &[u8; 4] = b"CBAK";
/// The format version this build writes and reads.
pub const BACKUP_VERSION: u32 = 1;
const CHECKSUM_BYTES: usize = 32;

/// What a backup says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The revision (applied log index) of the replica it holds.
    pub revision: u64,
    /// Keys held, expired ones included until they are reaped.
    pub keys: u64,
    /// The node it was taken from, and the cluster that node belonged to.
    pub node: u64,
    pub cluster_id: u64,
    /// When it was taken, in milliseconds since the Unix epoch (the node's clock).
    pub taken_at_ms: u64,
}

/// A backup read back and checked.
pub struct Backup {
    pub header: BackupHeader,
    pub machine: Machine,
    /// The SHA-256 of the file's contents before it.
    pub checksum: [u8; CHECKSUM_BYTES],
}

impl Backup {
    /// The checksum in hex, as `ctl snapshot save` prints it.
    pub fn checksum_hex(&self) -> String {
        self.checksum.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why a file is not a backup this build can restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a Conclave backup (it does not start with CBAK)")]
    NotABackup,
    #[error("backup format version {0}; this build reads version {BACKUP_VERSION}")]
    UnknownVersion(u32),
    #[error("the backup is cut short or corrupt: {0}")]
    Corrupt(String),
    #[error("the backup's checksum does not match its contents: it is corrupt")]
    ChecksumMismatch,
}

/// The backup file of `machine`, taken now from `node` of `cluster_id`.
pub fn write_backup(machine: &Machine, node: u64, cluster_id: u64, taken_at_ms: u64) -> Vec<u8> {
    let header = BackupHeader {
        revision: machine.revision(),
        keys: machine.len() as u64,
        node,
        cluster_id,
        taken_at_ms,
    };
    let header = encode(&header);
    let data = encode(machine);
    let mut bytes = Vec::with_capacity(4 + 4 + 16 + header.len() + data.len() + CHECKSUM_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&BACKUP_VERSION.to_le_bytes());
    for part in [&header, &data] {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    let checksum = ring::digest::digest(&ring::digest::SHA256, &bytes);
    bytes.extend_from_slice(checksum.as_ref());
    bytes
}

/// Reads and checks a backup file's contents.
pub fn read_backup(bytes: &[u8]) -> Result<Backup, BackupError> {
    if bytes.len() < 4 || &bytes[..4] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let short = || BackupError::Corrupt(format!("{} bytes", bytes.len()));
    let version = u32::from_le_bytes(bytes.get(4..8).ok_or_else(short)?.try_into().unwrap());
    if version != BACKUP_VERSION {
        return Err(BackupError::UnknownVersion(version));
    }
    let body_end = bytes.len().checked_sub(CHECKSUM_BYTES).ok_or_else(short)?;
    let (body, checksum) = bytes.split_at(body_end);
    let computed = ring::digest::digest(&ring::digest::SHA256, body);
    if computed.as_ref() != checksum {
        return Err(BackupError::ChecksumMismatch);
    }
    let mut rest = &body[8..];
    let mut part = || -> Result<&[u8], BackupError> {
        let len = rest.get(..8).ok_or_else(short)?;
        let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
        let end = len.checked_add(8).ok_or_else(short)?;
        let value = rest.get(8..end).ok_or_else(short)?;
        rest = &rest[end..];
        Ok(value)
    };
    let header = part()?;
    let data = part()?;
    let corrupt = |e: bincode::Error| BackupError::Corrupt(e.to_string());
    Ok(Backup {
        header: decode(header).map_err(corrupt)?,
        machine: decode(data).map_err(corrupt)?,
        checksum: checksum.try_into().expect("32 bytes"),
    })
}

/// Makes `machine` the snapshot of the data directory `dir` (which must hold no node yet), as
/// `meta` describes it: opening the directory then finds a replica at that log position, with
/// that membership, and an empty log after it.
pub fn seed_snapshot<C: StoreConfig>(
    dir: &Path,
    meta: &SnapshotMeta<C::NodeId, C::Node>,
    machine: &Machine,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    SnapshotFile::at(dir).save(&Stored {
        meta: encode(meta),
        data: encode(machine),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_state::{Command, Expiry, SetCondition, WriteRequest};

    fn machine() -> Machine {
        let mut m = Machine::new();
        for i in 0..10u64 {
            let set = Command::Set {
                key: format!("k{i}").into_bytes().into(),
                value: vec![i as u8; 100].into(),
                condition: SetCondition::Always,
                expiry: Expiry::Never,
                return_previous: false,
                lease: None,
            };
            m.apply(
                i + 1,
                &WriteRequest {
                    id: None,
                    stamp: i,
                    command: set,
                },
            );
        }
        m
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let m = machine();
        let bytes = write_backup(&m, 2, 7, 1234);
        let backup = read_backup(&bytes).unwrap();
        assert_eq!(backup.machine, m);
        assert_eq!(
            backup.header,
            BackupHeader {
                revision: 10,
                keys: 10,
                node: 2,
                cluster_id: 7,
                taken_at_ms: 1234
            }
        );
        assert_eq!(backup.checksum_hex().len(), 64);
    }

    #[test]
    fn a_damaged_backup_is_refused_before_it_is_decoded() {
        let bytes = write_backup(&machine(), 1, 1, 0);
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        assert!(matches!(
            read_backup(&flipped),
            Err(BackupError::ChecksumMismatch)
        ));
        assert!(matches!(
            read_backup(&bytes[..bytes.len() - 1]),
            Err(BackupError::ChecksumMismatch)
        ));
        assert!(matches!(
            read_backup(&bytes[..6]),
            Err(BackupError::Corrupt(_))
        ));
        assert!(matches!(
            read_backup(b"CSNP...."),
            Err(BackupError::NotABackup)
        ));
        let mut newer = bytes.clone();
        newer[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            read_backup(&newer),
            Err(BackupError::UnknownVersion(2))
        ));
    }
}
