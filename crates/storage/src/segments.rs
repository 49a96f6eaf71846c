//! The Raft log's entries, in segment files of their own: appended in place by one writer,
//! made durable by `fdatasync` of the files written since the last sync, read back with
//! positioned reads.
//!
//! Why not sled: every sled flush hands the sealed buffer to sled's thread pool, whose queue
//! wakes all seven of its idle threads for each job; under writes half of a node's context
//! switches were sled's (docs/bench/write-path.md). The log is append-mostly and read in ranges,
//! which a file does with one `pwrite` and one `fdatasync` per group of appends.
//!
//! Layout: `<data dir>/raft-log/<first index, 20 digits>.seg`, each preallocated to
//! [`SEGMENT_BYTES`] (zeros past the last record) and holding consecutive entries:
//!
//! ```text
//! record = length u32 LE | crc32 u32 LE (of index and payload) | index u64 LE | payload
//! ```
//!
//! A zero header ends a segment. Opening scans every segment; the first record that is torn
//! (short, or its checksum or index wrong), or missing (a header still zero, or a segment that
//! does not start where the one before ended), ends the log: it and anything after it were never
//! synced, so never acknowledged (acknowledgements are in log order, and each sync covers every
//! file written before it). Later segments are deleted and the last one is cut at its last valid
//! record, the rest zeroed again, so nothing past the end can come back once overwritten.
//!
//! Invariants that make every crash leave a prefix of some log this node held:
//! - past a segment's last record there are only zeros (preallocation, and every cut re-zeroes);
//! - a truncation deletes later segments (and syncs the directory) before cutting the segment
//!   that holds the truncation point, then syncs that cut before it returns;
//! - a new segment's directory entry is synced before any record in it can be acknowledged.
//!
//! Does not own: the vote, the commit index and the purge point (kept in sled's meta tree by
//! `log_store.rs`, which passes the purge point in), nor flushing policy (the log store's
//! flusher calls [`SegmentLog::unsynced`] and syncs what it returns).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes preallocated per segment; a record larger than this gets a segment to itself.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER_BYTES: usize = 16;
/// The directory under the data directory.
pub(crate) const DIR_NAME: &str = "raft-log";

/// Where one entry's record is.
#[derive(Clone, Copy, Debug)]
struct Location {
    /// The first index of the segment holding it (its key in `segments`).
    segment: u64,
    offset: u64,
    /// The payload's length.
    len: u32,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Where the next record goes: the end of the last record.
    end: u64,
}

/// The entries on disk and where each one is. Not synchronized: the log store holds it under a
/// mutex.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    dir: PathBuf,
    /// By first index; the last one is the one appended to.
    segments: BTreeMap<u64, Segment>,
    /// Where each entry held is. openraft's log is contiguous above the purge point (checked
    /// when opening); its storage suite also appends sparse indexes, which work too.
    locations: BTreeMap<u64, Location>,
    /// Files written since the flusher last took them.
    unsynced: Vec<Arc<File>>,
    /// Counts truncations: a read that fails while it changed was cut short by it.
    generation: u64,
}

/// Why the log on disk cannot be used.
fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl SegmentLog {
    /// Opens the log in `dir` (created if absent), ignoring entries at or below `purged`.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> io::Result<SegmentLog> {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            locations: BTreeMap::new(),
            unsynced: Vec::new(),
            generation: 0,
        };
        let mut ended = false;
        for first in firsts {
            let path = log.path(first);
            if let Some(last) = log.last_index() {
                // A new log may start anywhere past the purge point (a snapshot installed past
                // the log's end); otherwise a segment follows the one before it.
                let restarted = purged.is_some_and(|p| last <= p) && first > last;
                if first != last + 1 && !restarted && !ended {
                    tracing::warn!(
                        "the Raft log's segment {} starts at entry {first}, after entry {last}: \
                         what is missing between was never acknowledged; the log ends at {last}",
                        path.display()
                    );
                    ended = true;
                }
            }
            if ended {
                // Past the end of the log nothing was acknowledged.
                fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let (records, end, torn) = scan(&file, first)?;
            log.locations.extend(records);
            if torn {
                tracing::warn!(
                    "the Raft log's segment {} ends in a torn record (never acknowledged)",
                    path.display()
                );
                ended = true;
            }
            log.segments.insert(
                first,
                Segment {
                    file: Arc::new(file),
                    end,
                },
            );
        }
        // Whatever follows the last valid record (a torn one, records past a missing one) goes.
        if let Some((_, last)) = log.segments.last_key_value() {
            cut(&last.file, last.end)?;
        }
        if let Some(purged) = purged {
            log.forget_through(purged);
        }
        sync_dir(dir)?;
        Ok(log)
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.seg"))
    }

    /// The index of the last entry held, if any.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.locations.last_key_value().map(|(index, _)| *index)
    }

    /// Writes the record of entry `index` (encoded as `payload`) after the last one. openraft
    /// appends the entry after the last (or any entry once none is held: after a purge that
    /// reached past the log's end, as a snapshot install does); an entry at or before the last
    /// replaces the log from there, as a truncation and an append would.
    pub(crate) fn append(&mut self, index: u64, payload: &[u8]) -> io::Result<()> {
        if self.last_index().is_some_and(|last| index <= last) {
            self.truncate(index)?;
        }
        let record_bytes = (HEADER_BYTES + payload.len()) as u64;
        let rotate = match self.segments.last_key_value() {
            None => true,
            // A log emptied by a purge starts a new segment at the next entry's index.
            Some(_) if self.locations.is_empty() => true,
            // A segment's first record is the entry it is named after.
            Some((first, active)) if active.end == 0 && *first != index => true,
            Some((_, active)) => active.end > 0 && active.end + record_bytes > SEGMENT_BYTES,
        };
        if rotate {
            self.start_segment(index)?;
        }
        let mut active = self.segments.last_entry().expect("a segment");
        let segment = *active.key();
        let active = active.get_mut();
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("a log entry of 4 GiB or more"))?;
        let mut record = Vec::with_capacity(record_bytes as usize);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&checksum(index, payload).to_le_bytes());
        record.extend_from_slice(&index.to_le_bytes());
        record.extend_from_slice(payload);
        active.file.write_all_at(&record, active.end)?;
        self.locations.insert(
            index,
            Location {
                segment,
                offset: active.end,
                len,
            },
        );
        active.end += record_bytes;
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &active.file)) {
            self.unsynced.push(active.file.clone());
        }
        Ok(())
    }

    /// Creates the segment whose first entry is `first`, with its directory entry synced.
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        let path = self.path(first);
        if self.segments.contains_key(&first) {
            // Emptied by a purge, and the log starts again at the same index.
            self.segments.remove(&first);
            fs::remove_file(&path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        preallocate(&file, 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first,
            Segment {
                file: Arc::new(file),
                end: 0,
            },
        );
        Ok(())
    }

    /// Changes with every truncation (see [`Span::read`]'s callers).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The files written since the last call; syncing them makes every append before the call
    /// durable.
    pub(crate) fn unsynced(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.unsynced)
    }

    /// Where the payloads of entries `from..to` (clamped to what is held) are, grouped into runs
    /// that are contiguous in one file: (file, offset, total bytes, payload lengths).
    pub(crate) fn spans(&self, from: u64, to: u64) -> Vec<Span> {
        let mut spans: Vec<Span> = Vec::new();
        if from >= to {
            return spans;
        }
        for (&index, at) in self.locations.range(from..to) {
            let file = &self.segments[&at.segment].file;
            let record = HEADER_BYTES as u64 + u64::from(at.len);
            match spans.last_mut() {
                Some(span) if Arc::ptr_eq(&span.file, file) && span.end() == at.offset => {
                    span.records.push((index, at.len));
                    span.bytes += record;
                }
                _ => spans.push(Span {
                    file: file.clone(),
                    offset: at.offset,
                    bytes: record,
                    records: vec![(index, at.len)],
                }),
            }
        }
        spans
    }

    /// Removes entries from `index` on, durably.
    pub(crate) fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some((_, &at)) = self.locations.range(index..).next() else {
            return Ok(());
        };
        self.generation += 1;
        // Later segments first: a crash then leaves a prefix of the old log.
        let later: Vec<u64> = self
            .segments
            .range(at.segment + 1..)
            .map(|(first, _)| *first)
            .collect();
        for first in &later {
            self.segments.remove(first);
            fs::remove_file(self.path(*first))?;
        }
        if !later.is_empty() {
            sync_dir(&self.dir)?;
        }
        let segment = self.segments.get_mut(&at.segment).expect("held");
        cut(&segment.file, at.offset)?;
        segment.end = at.offset;
        self.locations.split_off(&index);
        Ok(())
    }

    /// Forgets entries up to `index` and deletes the segments holding nothing after it (no sync:
    /// entries at or below the purge point are ignored when the log is opened).
    pub(crate) fn purge(&mut self, index: u64) -> io::Result<()> {
        self.forget_through(index);
        let keep_from = match self.locations.first_key_value() {
            Some((_, at)) => at.segment,
            None => u64::MAX,
        };
        let doomed: Vec<u64> = self.segments.range(..keep_from).map(|(f, _)| *f).collect();
        for first in doomed {
            if let Some(segment) = self.segments.remove(&first) {
                self.unsynced.retain(|f| !Arc::ptr_eq(f, &segment.file));
            }
            fs::remove_file(self.path(first))?;
        }
        Ok(())
    }

    fn forget_through(&mut self, index: u64) {
        self.locations = self.locations.split_off(&index.saturating_add(1));
    }
}

/// Consecutive records in one file.
pub(crate) struct Span {
    file: Arc<File>,
    offset: u64,
    bytes: u64,
    /// Each record's index and payload length.
    records: Vec<(u64, u32)>,
}

impl Span {
    fn end(&self) -> u64 {
        self.offset + self.bytes
    }

    /// Reads the span and returns each entry's payload, checked against its checksum.
    pub(crate) fn read(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut bytes = vec![0u8; self.bytes as usize];
        self.file.read_exact_at(&mut bytes, self.offset)?;
        let mut payloads = Vec::with_capacity(self.records.len());
        let mut at = 0usize;
        for &(index, len) in &self.records {
            let len = &len;
            let header = &bytes[at..at + HEADER_BYTES];
            let payload = &bytes[at + HEADER_BYTES..at + HEADER_BYTES + *len as usize];
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            if crc != checksum(index, payload) {
                return Err(corrupt(format!(
                    "the Raft log's record of entry {index} fails its checksum"
                )));
            }
            payloads.push(payload.to_vec());
            at += HEADER_BYTES + *len as usize;
        }
        Ok(payloads)
    }
}

/// A segment's records by index, where they end, and whether a torn record follows.
type Scanned = (Vec<(u64, Location)>, u64, bool);

/// Reads a segment's records from the start: their indexes and locations, where the valid
/// records end, and whether something other than zeros follows them (a torn record). The first
/// record is entry `first`; each next one follows it.
fn scan(file: &File, first: u64) -> io::Result<Scanned> {
    let size = file.metadata()?.len();
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER_BYTES];
    loop {
        if offset + HEADER_BYTES as u64 > size {
            return Ok((records, offset, false));
        }
        file.read_exact_at(&mut header, offset)?;
        if header == [0u8; HEADER_BYTES] {
            return Ok((records, offset, false));
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let in_order = match records.last() {
            None => index == first,
            Some((previous, _)) => index == previous + 1,
        };
        let payload_at = offset + HEADER_BYTES as u64;
        if !in_order || len == 0 || payload_at + u64::from(len) > size {
            return Ok((records, offset, true));
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, payload_at)?;
        if checksum(index, &payload) != crc {
            return Ok((records, offset, true));
        }
        records.push((
            index,
            Location {
                segment: first,
                offset,
                len,
            },
        ));
        offset = payload_at + u64::from(len);
    }
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Cuts `file` at `end` and zeroes it again up to the segment size, durably.
fn cut(file: &File, end: u64) -> io::Result<()> {
    file.set_len(end)?;
    preallocate(file, end)?;
    file.sync_all()
}

/// Reserves the file's blocks up to [`SEGMENT_BYTES`] from `from` (they read as zeros), so that
/// appends do not grow the file.
fn preallocate(file: &File, from: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    if from >= SEGMENT_BYTES {
        return Ok(());
    }
    let len = (SEGMENT_BYTES - from) as libc::off_t;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), from as libc::off_t, len) };
    match result {
        0 => Ok(()),
        // Filesystems without fallocate: the file grows as it is written instead.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Makes the directory's entries (created and removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u64) -> Vec<u8> {
        format!("entry {index} ")
            .repeat(index as usize % 7 + 1)
            .into_bytes()
    }

    fn read_all(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for span in log.spans(0, u64::MAX) {
            let indexes: Vec<u64> = span.records.iter().map(|(i, _)| *i).collect();
            out.extend(indexes.into_iter().zip(span.read().unwrap()));
        }
        out
    }

    fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, payload(i))).collect()
    }

    #[test]
    fn entries_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), None).unwrap();
            for i in 1..=50 {
                log.append(i, &payload(i)).unwrap();
            }
            assert_eq!(read_all(&log), expected(1..=50));
        }
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last_index(), Some(50));
        assert_eq!(read_all(&log), expected(1..=50));
    }

    #[test]
    fn a_torn_last_record_ends_the_log_and_the_next_append_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = {
            let mut log = SegmentLog::open(dir.path(), None).unwrap();
            for i in 1..=10 {
                log.append(i, &payload(i)).unwrap();
            }
            log.segments[&1].file.clone()
        };
        // Entry 10's payload half overwritten, as a crash mid-write leaves it.
        let at = {
            let log = SegmentLog::open(dir.path(), None).unwrap();
            log.locations[&10].offset
        };
        file.write_all_at(b"garbage!", at + HEADER_BYTES as u64 + 2)
            .unwrap();
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last_index(), Some(9));
        log.append(10, b"again").unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path(), None).unwrap();
        let mut want = expected(1..=9);
        want.push((10, b"again".to_vec()));
        assert_eq!(read_all(&log), want);
    }

    /// A truncated entry with a record the same size as its replacement must not come back
    /// after the replacement (the zeroing after a cut sees to it).
    #[test]
    fn truncated_entries_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), None).unwrap();
            for i in 1..=10 {
                log.append(i, &payload(i)).unwrap();
            }
            log.truncate(6).unwrap();
            log.append(6, &payload(6)).unwrap();
        }
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(read_all(&log), expected(1..=6));
    }

    /// Power loss can keep a later record and lose an earlier one (its blocks still zero).
    /// Neither was acknowledged; the later one must not come back behind a new record of the
    /// lost one's size.
    #[test]
    fn a_record_past_a_lost_one_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (file, at) = {
            let mut log = SegmentLog::open(dir.path(), None).unwrap();
            for i in 1..=10 {
                log.append(i, &payload(i)).unwrap();
            }
            (log.segments[&1].file.clone(), log.locations[&5].offset)
        };
        let lost = HEADER_BYTES + payload(5).len();
        file.write_all_at(&vec![0u8; lost], at).unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), None).unwrap();
            assert_eq!(log.last_index(), Some(4));
            log.append(5, &payload(5)).unwrap();
        }
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(read_all(&log), expected(1..=5));
    }

    #[test]
    fn a_segment_after_a_lost_record_is_dropped_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
        let (file, at) = {
            let mut log = SegmentLog::open(dir.path(), None).unwrap();
            for i in 1..=5 {
                log.append(i, &big).unwrap();
            }
            let at = log.locations[&2];
            assert!(log.segments.len() >= 2 && log.locations[&3].segment != at.segment);
            (log.segments[&at.segment].file.clone(), at.offset)
        };
        file.write_all_at(&[0u8; HEADER_BYTES], at).unwrap();
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last_index(), Some(1));
        assert_eq!(log.segments.len(), 1);
    }

    #[test]
    fn segments_rotate_and_purge_and_truncate_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        for i in 1..=7 {
            log.append(i, &big).unwrap();
        }
        assert!(log.segments.len() >= 3, "{} segments", log.segments.len());
        log.truncate(4).unwrap();
        assert_eq!(log.last_index(), Some(3));
        log.append(4, b"four").unwrap();
        log.purge(2).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path(), Some(2)).unwrap();
        let entries = read_all(&log);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], (3, big.clone()));
        assert_eq!(entries[1], (4, b"four".to_vec()));
    }

    #[test]
    fn a_purge_past_the_end_restarts_the_log_at_any_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), None).unwrap();
            for i in 1..=5 {
                log.append(i, &payload(i)).unwrap();
            }
            log.purge(100).unwrap();
            assert_eq!(log.last_index(), None);
            log.append(101, &payload(101)).unwrap();
        }
        let log = SegmentLog::open(dir.path(), Some(100)).unwrap();
        assert_eq!(read_all(&log), expected(101..=101));
    }
}
