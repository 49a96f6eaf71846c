//! The Raft log (entries in segment files, `segments.rs`) and the vote, commit index and purge
//! point (in a sled tree), as openraft's `RaftLogStorage`.
//!
//! Appends are written at once and acknowledged by the log flusher, a thread of its own that
//! `fdatasync`s every segment written since its last round, one round for all the appends that
//! queued up while the previous one ran (group commit).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use sled::{Db, Tree};

use crate::coverage::SnapshotCoverage;
use crate::durable::Disk;
use crate::heavy;
use crate::segments::{self, SegmentLog};

use crate::{decode, encode, StoreConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
/// Set, durably, once the entries are in segment files: from then on the sled tree of earlier
/// versions is never read again.
const LOG_IN_SEGMENTS: &[u8] = b"log_in_segments";

type StorageResult<T, C> = Result<T, StorageError<<C as openraft::RaftTypeConfig>::NodeId>>;

/// openraft's log storage: the entries, plus the vote, the commit index and the last purged log
/// id.
pub struct LogStore<C: StoreConfig> {
    disk: Disk,
    segments: Arc<Mutex<SegmentLog>>,
    meta: Tree,
    flusher: mpsc::Sender<LogFlushed<C>>,
    stats: Arc<LogStats>,
    /// How far the saved snapshot reaches: a purge never runs ahead of it.
    coverage: SnapshotCoverage,
}

/// Counters of the log's disk work, to see group commit at work.
#[derive(Debug, Default)]
pub struct LogStats {
    appended: AtomicU64,
    flushes: AtomicU64,
    committed: AtomicU64,
}

impl LogStats {
    /// Entries appended since the node started.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Flushes of appended entries since the node started (one per group commit).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// The last commit index openraft saved (0 before the first).
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
}

impl<C: StoreConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            disk: self.disk.clone(),
            segments: self.segments.clone(),
            meta: self.meta.clone(),
            flusher: self.flusher.clone(),
            stats: self.stats.clone(),
            coverage: self.coverage.clone(),
        }
    }
}

impl<C: StoreConfig> LogStore<C> {
    /// Opens the log under `dir` and starts its flusher thread. A log kept in sled by earlier
    /// versions (the `raft_log` tree) is moved into segment files first.
    pub(crate) fn open(
        db: &Db,
        dir: &Path,
        disk: Disk,
        coverage: SnapshotCoverage,
    ) -> Result<Self, crate::OpenError> {
        let meta = db.open_tree("raft_meta")?;
        let purged: Option<LogId<C::NodeId>> = match meta.get(LAST_PURGED)? {
            Some(bytes) => Some(
                decode(&bytes)
                    .map_err(|e| crate::OpenError::Snapshot(format!("purge point: {e}")))?,
            ),
            None => None,
        };
        let log_dir = dir.join(segments::DIR_NAME);
        let purged_index = purged.map(|p| p.index);
        let legacy = db.open_tree("raft_log")?;
        let log = if meta.get(LOG_IN_SEGMENTS)?.is_some() {
            SegmentLog::open(&log_dir, purged_index)?
        } else {
            let log = migrate(&legacy, &log_dir, purged_index)?;
            meta.insert(LOG_IN_SEGMENTS, &[1u8][..])?;
            disk.persist_now()?;
            log
        };
        if !legacy.is_empty() {
            legacy.clear()?;
        }
        let segments = Arc::new(Mutex::new(log));
        let (flusher, pending) = mpsc::channel();
        let stats = Arc::new(LogStats::default());
        let (flushed, counted) = (segments.clone(), stats.clone());
        std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || group_commit::<C>(&flushed, &pending, &counted))?;
        Ok(LogStore {
            disk,
            segments,
            meta,
            flusher,
            stats,
            coverage,
        })
    }

    /// Counters of this log's appends and flushes.
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>, C> {
        let bytes = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| decode(&b).map_err(|e| StorageIOError::read(&*e).into()))
            .transpose()
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> StorageResult<(), C> {
        self.meta
            .insert(key, encode(value))
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn flush(&self) -> StorageResult<(), C> {
        self.disk
            .persist()
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        self.segments.lock().expect("log lock poisoned")
    }

    /// The id of the last entry kept, or the last purged one when no entry past it is kept.
    fn last_log_id(&self) -> StorageResult<Option<LogId<C::NodeId>>, C> {
        let last_index = self.log().last_index();
        let last = match last_index {
            Some(index) => self.read_entries(index, index + 1)?.pop().map(|e| e.log_id),
            None => None,
        };
        let purged: Option<LogId<C::NodeId>> = self.read_meta(LAST_PURGED)?;
        Ok(last.max(purged))
    }

    /// Entries `from..to`, as many of them as the log holds.
    ///
    /// The positions are taken under the lock, the reads made without it, so appends never wait
    /// for a read. A purge deletes whole files, which open handles still read; a truncation cuts
    /// a file, and a read that fails while one happened (a deposed leader's replication reading
    /// what the new leader's entries replace) ends short, as a read made after it would.
    fn read_entries(&self, from: u64, to: u64) -> StorageResult<Vec<Entry<C>>, C> {
        let (spans, generation) = {
            let log = self.log();
            (log.spans(from, to), log.generation())
        };
        let mut entries = Vec::new();
        for span in spans {
            let payloads = match span.read() {
                Ok(payloads) => payloads,
                Err(_) if self.log().generation() != generation => return Ok(entries),
                Err(e) => return Err(StorageIOError::read_logs(&e).into()),
            };
            for payload in payloads {
                entries.push(decode(&payload).map_err(|e| StorageIOError::read_logs(&*e))?);
            }
        }
        Ok(entries)
    }
}

/// Copies the entries of an earlier version's sled tree (none in a new data directory) into a
/// fresh segment log, synced. Runs until [`LOG_IN_SEGMENTS`] is durable, and the tree is cleared
/// only after that, so a crash midway copies everything again.
fn migrate(
    legacy: &Tree,
    log_dir: &Path,
    purged: Option<u64>,
) -> Result<SegmentLog, crate::OpenError> {
    if log_dir.exists() {
        std::fs::remove_dir_all(log_dir)?;
    }
    let mut log = SegmentLog::open(log_dir, purged)?;
    for item in legacy.iter() {
        let (key, bytes) = item?;
        let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
            crate::OpenError::Snapshot("a Raft log key that is not an index".into())
        })?);
        if purged.is_some_and(|p| index <= p) {
            continue;
        }
        log.append(index, &bytes)?;
    }
    for file in log.unsynced() {
        file.sync_data()?;
    }
    if !legacy.is_empty() {
        tracing::info!("moved the Raft log from sled into {}", log_dir.display());
    }
    Ok(log)
}

/// Completes append callbacks in order, with one sync of the segments written for every batch
/// of appends that queued up while the previous sync ran. Ends when every log handle is gone.
fn group_commit<C: StoreConfig>(
    segments: &Mutex<SegmentLog>,
    pending: &mpsc::Receiver<LogFlushed<C>>,
    stats: &LogStats,
) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        // Every append whose callback is here wrote its record before sending it, so the files
        // taken now hold it.
        let files = segments.lock().expect("log lock poisoned").unsynced();
        let result = files.iter().try_for_each(|f| f.sync_data());
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        for callback in batch {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
    }
}

impl<C: StoreConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<C>>, C> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_entries(from, to)
    }
}

impl<C: StoreConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C>, C> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.read_meta(LAST_PURGED)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: self.last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> StorageResult<(), C> {
        self.meta
            .insert(VOTE, encode(vote))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<C::NodeId>>, C> {
        self.read_meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> StorageResult<(), C> {
        // Not flushed on its own: losing the latest value only means re-applying less on
        // restart. It never points past this node's durable entries: openraft 0.9 waits for an
        // append's flush before this node counts the entries, as leader or follower, so a commit
        // index is saved only after the entries it covers were synced (a non-blocking append,
        // as in openraft 0.10, would need this flushed after the entries).
        self.write_meta(COMMITTED, &committed)?;
        if let Some(committed) = committed {
            self.stats
                .committed
                .store(committed.index, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The commit index as saved. A saved commit index past the durable log would mean entries
    /// the node acknowledged were lost: the node then refuses to start rather than guess which
    /// of its entries are committed.
    async fn read_committed(&mut self) -> StorageResult<Option<LogId<C::NodeId>>, C> {
        let committed = self
            .read_meta::<Option<LogId<C::NodeId>>>(COMMITTED)?
            .flatten();
        if let Some(committed) = committed {
            self.stats
                .committed
                .store(committed.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StorageResult<(), C>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        let count = entries.len() as u64;
        let bytes = entries.iter().map(heavy::entry_bytes).sum();
        heavy::run(bytes, || {
            let mut log = self.log();
            for entry in &entries {
                log.append(entry.get_log_id().index, &encode(entry))
                    .map_err(|e| StorageIOError::write_logs(&e))?;
            }
            Ok::<_, StorageError<C::NodeId>>(())
        })?;
        self.stats.appended.fetch_add(count, Ordering::Relaxed);
        // The entries are readable now; they are acknowledged once the flusher has synced them.
        if let Err(mpsc::SendError(callback)) = self.flusher.send(callback) {
            callback.log_io_completed(Err(io::Error::other("the log flusher has stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> StorageResult<(), C> {
        self.log()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> StorageResult<(), C> {
        // Never ahead of the snapshot that covers the entries (see `coverage`).
        self.coverage
            .wait_covered(log_id.index)
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        // Record the purge point first: a crash halfway leaves stale entries below the purge
        // point, which are never read, and never a log that claims entries it no longer has.
        self.write_meta(LAST_PURGED, &log_id)?;
        self.flush().await?;
        self.log()
            .purge(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::time::Duration;

    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta};

    use super::LAST_PURGED;
    use crate::state_machine::tests::Config;
    use crate::{encode, StorageOptions};

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 0), index)
    }

    fn put_entries(storage: &crate::Storage<Config>, indexes: std::ops::RangeInclusive<u64>) {
        for index in indexes {
            let entry = Entry::<Config> {
                log_id: log_id(index),
                payload: EntryPayload::Blank,
            };
            storage.log.log().append(index, &encode(&entry)).unwrap();
        }
    }

    /// Opens `dir` again once the store closed before has let go of sled's file lock (its
    /// flusher task ends a moment after the last handle drops).
    async fn reopen(dir: &std::path::Path) -> crate::Storage<Config> {
        let mut attempts = 0;
        loop {
            match crate::open::<Config>(dir, StorageOptions::default()) {
                Ok(storage) => return storage,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("reopening the data directory: {e}"),
            }
        }
    }

    /// openraft installs a snapshot from the leader on its state-machine task and asks the log to
    /// purge what the snapshot covers without waiting for it. The purge must wait until the
    /// snapshot is saved: a crash in between would leave the log purged past the snapshot the
    /// node restarts from, and it could never start again (the chaos suite's 700-second run
    /// ended on such a node after a membership change).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_during_a_snapshot_install_waits_until_the_snapshot_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = crate::open::<Config>(dir.path(), StorageOptions::default()).unwrap();
            put_entries(&storage, 1..=3);
            let mut state = storage.state;
            let mut log = storage.log;
            let received = state.begin_receiving_snapshot().await.unwrap();

            let purge = tokio::spawn(async move { log.purge(log_id(10)).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !purge.is_finished(),
                "the log was purged to 10 while the snapshot covering it was not saved"
            );

            let machine = conclave_state::Machine::new();
            let meta = SnapshotMeta {
                last_log_id: Some(log_id(10)),
                last_membership: Default::default(),
                snapshot_id: "leader-10".into(),
            };
            drop(received);
            state
                .install_snapshot(&meta, Box::new(Cursor::new(encode(&machine))))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(5), purge)
                .await
                .expect("the purge goes on once the snapshot is saved")
                .unwrap()
                .unwrap();
        }
        // What a restart finds: the log purged no further than the snapshot reaches.
        let mut storage = reopen(dir.path()).await;
        let purged = storage
            .log
            .get_log_state()
            .await
            .unwrap()
            .last_purged_log_id;
        let (applied, _) = storage.state.applied_state().await.unwrap();
        assert_eq!(purged, Some(log_id(10)));
        assert_eq!(applied, Some(log_id(10)));
    }

    /// A data directory written by a version that kept the log in sled: its entries move into
    /// segment files, and stay there across a restart.
    #[tokio::test]
    async fn a_log_kept_in_sled_by_an_earlier_version_is_moved_into_segments() {
        use openraft::RaftLogReader;
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("raft_log").unwrap();
            for index in 1..=5u64 {
                let entry = Entry::<Config> {
                    log_id: log_id(index),
                    payload: EntryPayload::Blank,
                };
                tree.insert(index.to_be_bytes(), encode(&entry)).unwrap();
            }
            db.flush().unwrap();
        }
        for _ in 0..2 {
            let mut storage = reopen(dir.path()).await;
            let entries = storage.log.try_get_log_entries(1..=5).await.unwrap();
            let ids: Vec<LogId<u64>> = entries.iter().map(|e| e.log_id).collect();
            assert_eq!(ids, (1..=5).map(log_id).collect::<Vec<_>>());
            let state = storage.log.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(log_id(5)));
        }
    }

    /// Outside a snapshot install, a purge does not wait (openraft's own storage suite purges
    /// logs that no snapshot covers).
    #[tokio::test]
    async fn a_purge_outside_a_snapshot_install_runs_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = crate::open::<Config>(dir.path(), StorageOptions::default()).unwrap();
        put_entries(&storage, 1..=3);
        tokio::time::timeout(Duration::from_secs(5), storage.log.purge(log_id(2)))
            .await
            .expect("purge waited")
            .unwrap();
        let state = storage.log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2)));
        assert_eq!(state.last_log_id, Some(log_id(3)));
    }

    /// A purge deletes its entries without a flush of its own, after the purge point is flushed:
    /// a crash can bring some of them back. They are not the end of the log.
    #[tokio::test]
    async fn entries_a_crash_brought_back_below_the_purge_point_do_not_end_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = crate::open::<Config>(dir.path(), StorageOptions::default()).unwrap();
        put_entries(&storage, 1..=3);
        storage
            .log
            .meta
            .insert(LAST_PURGED, encode(&log_id(5)))
            .unwrap();
        let state = storage.log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(5)));
        assert_eq!(state.last_log_id, Some(log_id(5)));
    }
}
