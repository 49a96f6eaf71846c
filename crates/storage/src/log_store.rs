//! The Raft log and vote, in two sled trees.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use sled::{Db, Tree};

use crate::coverage::SnapshotCoverage;
use crate::durable::Disk;
use tokio::sync::mpsc;

use crate::{decode, encode, StoreConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T, C> = Result<T, StorageError<<C as openraft::RaftTypeConfig>::NodeId>>;

/// openraft's log storage: entries keyed by big-endian index (so iteration is numeric), plus the
/// vote, the commit index and the last purged log id.
pub struct LogStore<C: StoreConfig> {
    disk: Disk,
    entries: Tree,
    meta: Tree,
    flusher: mpsc::UnboundedSender<LogFlushed<C>>,
    stats: Arc<LogStats>,
    /// How far the saved snapshot reaches: a purge never runs ahead of it.
    coverage: SnapshotCoverage,
}

/// Counters of the log's disk work, to see group commit at work.
#[derive(Debug, Default)]
pub struct LogStats {
    appended: AtomicU64,
    flushes: AtomicU64,
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
}

impl<C: StoreConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            disk: self.disk.clone(),
            entries: self.entries.clone(),
            meta: self.meta.clone(),
            flusher: self.flusher.clone(),
            stats: self.stats.clone(),
            coverage: self.coverage.clone(),
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl<C: StoreConfig> LogStore<C> {
    /// Opens the log trees and starts the group-commit flusher (needs a Tokio runtime).
    pub(crate) fn open(
        db: &Db,
        disk: Disk,
        coverage: SnapshotCoverage,
    ) -> Result<Self, sled::Error> {
        let (flusher, pending) = mpsc::unbounded_channel();
        let stats = Arc::new(LogStats::default());
        tokio::spawn(group_commit::<C>(disk.clone(), pending, stats.clone()));
        Ok(LogStore {
            disk,
            entries: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
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

    /// Removes the entries whose keys fall in `range`, in one batch.
    fn remove_entries(&self, range: impl RangeBounds<[u8; 8]>) -> StorageResult<(), C> {
        let mut batch = sled::Batch::default();
        for key in self.entries.range(range).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// The id of the last entry kept, or of the last purged one when no entry past it is kept.
    /// (A purge deletes its entries after flushing the purge point, without a flush of its own: a
    /// crash can bring some of them back, and they are not the log's end.)
    fn last_log_id(&self) -> StorageResult<Option<LogId<C::NodeId>>, C> {
        let last = self
            .entries
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = match last {
            Some((_, bytes)) => Some(*Self::decode_entry(&bytes)?.get_log_id()),
            None => None,
        };
        let purged: Option<LogId<C::NodeId>> = self.read_meta(LAST_PURGED)?;
        Ok(last.max(purged))
    }

    fn decode_entry(bytes: &[u8]) -> StorageResult<Entry<C>, C> {
        decode(bytes).map_err(|e| StorageIOError::read_logs(&*e).into())
    }
}

/// Completes append callbacks in order, with one flush for every batch of appends that queued up
/// while the previous flush ran.
async fn group_commit<C: StoreConfig>(
    disk: Disk,
    mut pending: mpsc::UnboundedReceiver<LogFlushed<C>>,
    stats: Arc<LogStats>,
) {
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = pending.try_recv() {
            batch.push(more);
        }
        let result = disk.persist().await;
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        for callback in batch {
            let outcome = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
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
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.entries
            .range((start, end))
            .map(|item| {
                let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                Self::decode_entry(&bytes)
            })
            .collect()
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
        // Not flushed on its own: sled persists writes in order, so a durable commit index
        // never points past durable entries, and losing the latest value only means re-applying
        // less on restart.
        self.write_meta(COMMITTED, &committed)
    }

    /// The commit index as saved. A saved commit index past the durable log would mean entries
    /// the node acknowledged were lost: the node then refuses to start rather than guess which
    /// of its entries are committed.
    async fn read_committed(&mut self) -> StorageResult<Option<LogId<C::NodeId>>, C> {
        Ok(self
            .read_meta::<Option<LogId<C::NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StorageResult<(), C>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for entry in entries {
            batch.insert(&index_key(entry.get_log_id().index), encode(&entry));
            count += 1;
        }
        self.stats.appended.fetch_add(count, Ordering::Relaxed);
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // The entries are readable now; they are acknowledged once the flusher has synced them.
        if let Err(mpsc::error::SendError(callback)) = self.flusher.send(callback) {
            callback.log_io_completed(Err(io::Error::other("the log flusher has stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> StorageResult<(), C> {
        self.remove_entries(index_key(log_id.index)..)?;
        self.flush().await
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
        self.remove_entries(..=index_key(log_id.index))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::time::Duration;

    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta};

    use super::{index_key, LAST_PURGED};
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
            storage
                .log
                .entries
                .insert(index_key(index), encode(&entry))
                .unwrap();
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
