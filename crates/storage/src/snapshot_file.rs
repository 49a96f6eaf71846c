//! The current snapshot, in a file of its own: `state.snapshot` in the data directory.
//!
//! Format: `CSNP`, a format version (u32), the meta's length (u64) and bytes, the data's length
//! (u64) and bytes, then a CRC32 of everything before it; integers little-endian. A save writes
//! `state.snapshot.tmp`, syncs it, renames it over `state.snapshot` and syncs the directory, so
//! the file is
//! always one whole snapshot, the old or the new. A reader opens the file once: a save renaming
//! a newer one over it meanwhile does not change what the open file holds.
//!
//! Earlier versions kept the snapshot in sled (tree `snapshots`), where every save of a large
//! snapshot left a blob behind for sled to reclaim and kept it in sled's cache. Such a snapshot
//! is moved into the file when the directory is opened, then removed from sled. An earlier
//! version cannot run on a directory moved over (it would find no snapshot and a purged log,
//! and stop with an error).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sled::Tree;

/// The snapshot's file name in the data directory.
pub const FILE_NAME: &str = "state.snapshot";
const MAGIC: &[u8; 4] = b"CSNP";
/// The format version this build writes; it reads every one from [`OLDEST_VERSION`] on.
/// - 1: the first.
/// - 2: the machine's remembered replies may hold `Outcome::Forgotten` (a build reading only
///   version 1 would fail to decode it, so it refuses the file instead).
const VERSION: u32 = 2;
const OLDEST_VERSION: u32 = 1;
/// sled's keys of an earlier version's snapshot.
const LEGACY_META: &[u8] = b"meta";
const LEGACY_DATA: &[u8] = b"data";

/// A snapshot as stored: its encoded meta and data.
pub struct Stored {
    pub meta: Vec<u8>,
    pub data: Vec<u8>,
}

/// The snapshot file of one data directory.
#[derive(Clone)]
pub struct SnapshotFile {
    dir: PathBuf,
}

impl SnapshotFile {
    /// The snapshot file in `dir`, with an earlier version's snapshot moved into it from `legacy`.
    pub fn open(dir: &Path, legacy: &Tree) -> io::Result<Self> {
        let file = SnapshotFile {
            dir: dir.to_path_buf(),
        };
        let _ = fs::remove_file(file.temporary());
        let meta = legacy.get(LEGACY_META).map_err(io::Error::other)?;
        let data = legacy.get(LEGACY_DATA).map_err(io::Error::other)?;
        if let (Some(meta), Some(data)) = (meta, data) {
            // Whenever sled holds one it is the latest: it is moved again after a crash between
            // the move and the clearing, and an earlier version run on this directory since
            // wrote it after this file.
            file.save(&Stored {
                meta: meta.to_vec(),
                data: data.to_vec(),
            })?;
        }
        if !legacy.is_empty() {
            // Not synced on its own: if the clear is lost, the next open moves the same snapshot
            // again, and any later purge's sync makes it durable before the log shrinks.
            legacy.clear().map_err(io::Error::other)?;
            legacy.flush().map_err(io::Error::other)?;
        }
        Ok(file)
    }

    /// The snapshot file of a data directory no node has opened yet (no earlier version's
    /// snapshot to move), for seeding it.
    pub(crate) fn at(dir: &Path) -> Self {
        SnapshotFile {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn temporary(&self) -> PathBuf {
        self.dir.join(format!("{FILE_NAME}.tmp"))
    }

    /// Opens the current snapshot for reading, if there is one.
    pub fn open_current(&self) -> io::Result<Option<File>> {
        match File::open(self.path()) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a snapshot from a file [`SnapshotFile::open_current`] opened.
    pub fn read(mut file: File) -> io::Result<Stored> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        decode(bytes)
    }

    /// The current snapshot, if there is one.
    #[cfg(test)]
    pub fn load(&self) -> io::Result<Option<Stored>> {
        self.open_current()?.map(Self::read).transpose()
    }

    /// Replaces the current snapshot by `stored`, durably (blocks: call off the runtime).
    pub fn save(&self, stored: &Stored) -> io::Result<()> {
        let temporary = self.temporary();
        let mut file = BufWriter::new(File::create(&temporary)?);
        write(&mut file, stored)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, self.path())?;
        File::open(&self.dir)?.sync_all()
    }
}

/// Writes `stored` in the file format, streaming (no second copy of the data).
pub(crate) fn write(out: &mut impl Write, stored: &Stored) -> io::Result<()> {
    let mut crc = crc32fast::Hasher::new();
    let mut put = |bytes: &[u8]| {
        crc.update(bytes);
        out.write_all(bytes)
    };
    put(MAGIC)?;
    put(&VERSION.to_le_bytes())?;
    for part in [&stored.meta, &stored.data] {
        put(&(part.len() as u64).to_le_bytes())?;
        put(part)?;
    }
    out.write_all(&crc.finalize().to_le_bytes())
}

/// Reads the file format, keeping the data in the buffer it was read into.
pub(crate) fn decode(mut bytes: Vec<u8>) -> io::Result<Stored> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {what}"));
    if bytes.len() < 4 + 4 + 8 + 8 + 4 || &bytes[..4] != MAGIC {
        return Err(invalid("not a Conclave snapshot"));
    }
    // The version first: another version may lay out the rest (the checksum too) otherwise.
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(invalid(&format!(
            "format version {version}; this build reads versions {OLDEST_VERSION} to {VERSION}"
        )));
    }
    let body = bytes.len() - 4;
    if crc32fast::hash(&bytes[..body]).to_le_bytes() != bytes[body..] {
        return Err(invalid("checksum mismatch (damaged)"));
    }
    let length_at = |at: usize| -> io::Result<usize> {
        let length = bytes.get(at..at + 8).ok_or_else(|| invalid("truncated"))?;
        Ok(u64::from_le_bytes(length.try_into().expect("8 bytes")) as usize)
    };
    let meta_at: usize = 16;
    let meta_end = meta_at
        .checked_add(length_at(8)?)
        .filter(|end| end.saturating_add(8) <= body)
        .ok_or_else(|| invalid("truncated"))?;
    let data_at = meta_end + 8;
    let data_end = data_at
        .checked_add(length_at(meta_end)?)
        .ok_or_else(|| invalid("truncated"))?;
    if data_end != body {
        return Err(invalid("lengths do not match the file's size"));
    }
    let meta = bytes[meta_at..meta_end].to_vec();
    bytes.truncate(data_end);
    bytes.drain(..data_at);
    Ok(Stored { meta, data: bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(meta: &str, data: &str) -> Stored {
        Stored {
            meta: meta.as_bytes().to_vec(),
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_saved_snapshot_replaces_the_last_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let file = SnapshotFile::open(dir.path(), &db.open_tree("snapshots").unwrap()).unwrap();
        assert!(file.load().unwrap().is_none());
        file.save(&stored("m1", "first")).unwrap();
        file.save(&stored("m2", "second")).unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!(
            (loaded.meta, loaded.data),
            (b"m2".to_vec(), b"second".to_vec())
        );
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let file = SnapshotFile::open(dir.path(), &db.open_tree("snapshots").unwrap()).unwrap();
        file.save(&stored("meta", "data")).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let error = file
            .load()
            .err()
            .expect("a flipped bit is noticed")
            .to_string();
        assert!(error.contains("checksum"), "{error}");

        // The file as another version wrote it: the same layout, another version number.
        let as_version = |version: u32| {
            let mut bytes = Vec::new();
            write(&mut bytes, &stored("meta", "data")).unwrap();
            bytes[4..8].copy_from_slice(&version.to_le_bytes());
            let body = bytes.len() - 4;
            let crc = crc32fast::hash(&bytes[..body]);
            bytes[body..].copy_from_slice(&crc.to_le_bytes());
            fs::write(&path, &bytes).unwrap();
        };
        as_version(VERSION + 1);
        let error = file
            .load()
            .err()
            .expect("a later version is refused")
            .to_string();
        assert!(
            error.contains(&format!(
                "format version {}; this build reads versions 1 to {VERSION}",
                VERSION + 1
            )),
            "{error}"
        );
        as_version(OLDEST_VERSION);
        let read = file.load().unwrap().expect("an earlier version is read");
        assert_eq!((read.meta, read.data), (b"meta".to_vec(), b"data".to_vec()));
    }

    /// A crash while a save was writing its temporary file leaves the previous snapshot whole
    /// (the temporary is removed on open); after the next save the new one is read.
    #[test]
    fn a_save_cut_short_leaves_the_previous_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let legacy = db.open_tree("snapshots").unwrap();
        let file = SnapshotFile::open(dir.path(), &legacy).unwrap();
        file.save(&stored("m1", "first")).unwrap();
        // What a save writes before its rename, cut in the middle.
        let mut partial = Vec::new();
        write(&mut partial, &stored("m2", "second, longer")).unwrap();
        partial.truncate(partial.len() / 2);
        let temporary = dir.path().join(format!("{FILE_NAME}.tmp"));
        fs::write(&temporary, &partial).unwrap();
        let file = SnapshotFile::open(dir.path(), &legacy).unwrap();
        assert_eq!(file.load().unwrap().unwrap().data, b"first");
        assert!(!temporary.exists());
        file.save(&stored("m2", "second")).unwrap();
        assert_eq!(file.load().unwrap().unwrap().data, b"second");
    }

    #[test]
    fn a_snapshot_kept_in_sled_by_an_earlier_version_moves_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let legacy = db.open_tree("snapshots").unwrap();
        legacy.insert(LEGACY_META, b"old meta".to_vec()).unwrap();
        legacy.insert(LEGACY_DATA, b"old data".to_vec()).unwrap();
        let file = SnapshotFile::open(dir.path(), &legacy).unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!(loaded.data, b"old data");
        assert!(legacy.is_empty(), "sled no longer holds it");
        // Opened again (as after a restart), the file is kept.
        let file = SnapshotFile::open(dir.path(), &legacy).unwrap();
        assert_eq!(file.load().unwrap().unwrap().meta, b"old meta");
    }
}
