//! The state machine store: the in-memory [`Machine`], its applied position and membership, and
//! its snapshots (persisted by [`crate::snapshot_file`]).

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use conclave_state::{Machine, Outcome, Revision, WriteReply};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, LogId, RaftLogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use sled::Db;

use crate::coverage::SnapshotCoverage;
use crate::heavy;
use crate::snapshot_file::{self, SnapshotFile};
use tokio::sync::watch;

use crate::{decode, encode, OpenError, StoreConfig};

type StorageResult<T, C> = Result<T, StorageError<<C as openraft::RaftTypeConfig>::NodeId>>;
type Meta<C> =
    SnapshotMeta<<C as openraft::RaftTypeConfig>::NodeId, <C as openraft::RaftTypeConfig>::Node>;

/// The replica: what has been applied, and up to where.
struct Replica<C: StoreConfig> {
    machine: Machine,
    last_applied: Option<LogId<C::NodeId>>,
    membership: StoredMembership<C::NodeId, C::Node>,
}

/// A snapshot as kept on disk.
struct StoredSnapshot<C: StoreConfig> {
    meta: Meta<C>,
    /// The encoded [`Machine`].
    data: Vec<u8>,
}

/// openraft's state machine store.
pub struct StateMachineStore<C: StoreConfig> {
    replica: Arc<RwLock<Replica<C>>>,
    applied: watch::Sender<Revision>,
    snapshots: Snapshots,
}

/// Where the current snapshot is persisted (its own file, see [`crate::snapshot_file`]).
/// Building (in openraft's background task) and installing (from the leader) may overlap: saves
/// are serialized, and a snapshot never replaces a newer one, or a restart would find the log
/// purged past the snapshot it loads.
#[derive(Clone)]
struct Snapshots {
    file: SnapshotFile,
    saving: Arc<tokio::sync::Mutex<()>>,
    /// The last log id of the snapshot in the file (None: no snapshot, or an empty one).
    kept: Arc<std::sync::Mutex<Option<u64>>>,
    stats: Arc<SnapshotStats>,
    /// Told of every save, for the log's purges.
    coverage: SnapshotCoverage,
    /// Run once, between opening the file and reading it, by the next `load` (tests widen the
    /// window a concurrent save could slip into).
    #[cfg(test)]
    between_reads: Arc<std::sync::Mutex<Option<TestHook>>>,
    /// Run once by the next build, on its blocking thread, before it encodes the machine (tests
    /// hold the encoding there).
    #[cfg(test)]
    while_encoding: Arc<std::sync::Mutex<Option<TestHook>>>,
}

#[cfg(test)]
type TestHook = Box<dyn FnOnce() + Send>;

impl Snapshots {
    /// The current snapshot (blocks: reads the file).
    fn load<C: StoreConfig>(&self) -> Result<Option<StoredSnapshot<C>>, String> {
        let Some(file) = self.file.open_current().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        #[cfg(test)]
        if let Some(hook) = self.between_reads.lock().expect("hook lock").take() {
            hook();
        }
        let stored = SnapshotFile::read(file).map_err(|e| e.to_string())?;
        Ok(Some(StoredSnapshot {
            meta: decode(&stored.meta).map_err(|e| e.to_string())?,
            data: stored.data,
        }))
    }

    /// [`Snapshots::load`] on a blocking thread.
    async fn load_in_background<C: StoreConfig>(
        &self,
    ) -> StorageResult<Option<StoredSnapshot<C>>, C> {
        let snapshots = self.clone();
        tokio::task::spawn_blocking(move || snapshots.load::<C>())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)).into())
    }

    /// Persists `stored` unless the snapshot already kept is at least as recent; hands it back.
    async fn save<C: StoreConfig>(
        &self,
        stored: StoredSnapshot<C>,
    ) -> StorageResult<StoredSnapshot<C>, C> {
        let _saving = self.saving.lock().await;
        let index = stored.meta.last_log_id.map(|id| id.index);
        let kept = *self.kept.lock().expect("kept lock");
        if kept.is_some() && kept >= index {
            // Saved (and synced) by an earlier save, under this same lock.
            return Ok(stored);
        }
        let signature = Some(stored.meta.signature());
        let file = self.file.clone();
        let on_disk = snapshot_file::Stored {
            meta: encode(&stored.meta),
            data: stored.data,
        };
        // A snapshot may be large: it is written and synced off the runtime's threads.
        let (written, data) = tokio::task::spawn_blocking(move || {
            let written = file.save(&on_disk);
            (written, on_disk.data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), AnyError::error(e)))?;
        written.map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        *self.kept.lock().expect("kept lock") = index;
        self.stats.saved.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.store(data.len() as u64, Ordering::Relaxed);
        if let Some(index) = index {
            self.coverage.saved(index);
        }
        Ok(StoredSnapshot {
            meta: stored.meta,
            data,
        })
    }
}

/// Counters of the node's snapshots, for its metrics.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    built: AtomicU64,
    saved: AtomicU64,
    bytes: AtomicU64,
    last_build_micros: AtomicU64,
}

impl SnapshotStats {
    /// Snapshots this node built since it started.
    pub fn built(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }

    /// Snapshots saved since the node started: built here or installed from the leader.
    pub fn saved(&self) -> u64 {
        self.saved.load(Ordering::Relaxed)
    }

    /// The size of the last snapshot saved (0 before the first).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How long the last build took, from cloning the machine to the synced file.
    pub fn last_build(&self) -> Duration {
        Duration::from_micros(self.last_build_micros.load(Ordering::Relaxed))
    }
}

/// A read-only handle on the replica, for serving reads.
#[derive(Clone)]
pub struct StateView<C: StoreConfig> {
    replica: Arc<RwLock<Replica<C>>>,
    applied: watch::Receiver<Revision>,
}

impl<C: StoreConfig> StateView<C> {
    /// Runs `read` against the machine as applied so far.
    pub fn read<R>(&self, read: impl FnOnce(&Machine) -> R) -> R {
        read(&self.replica.read().expect("replica lock poisoned").machine)
    }

    /// The revision applied so far.
    pub fn applied(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Waits until the replica has applied `revision`; false if `timeout` passed first.
    pub async fn wait_applied(&self, revision: Revision, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl<C: StoreConfig> StateMachineStore<C> {
    /// Opens the snapshot file and restores the replica from the latest snapshot, if any.
    pub(crate) fn open(db: &Db, dir: &Path) -> Result<Self, OpenError> {
        let snapshots = Snapshots {
            file: SnapshotFile::open(dir, &db.open_tree("snapshots")?)?,
            saving: Arc::default(),
            kept: Arc::default(),
            stats: Arc::default(),
            coverage: SnapshotCoverage::default(),
            #[cfg(test)]
            between_reads: Arc::default(),
            #[cfg(test)]
            while_encoding: Arc::default(),
        };
        let loaded = snapshots.load::<C>().map_err(OpenError::Snapshot)?;
        if let Some(last) = loaded.as_ref().and_then(|s| s.meta.last_log_id) {
            snapshots.coverage.saved(last.index);
            *snapshots.kept.lock().expect("kept lock") = Some(last.index);
        }
        let replica = match loaded {
            Some(stored) => Replica {
                machine: decode(&stored.data).map_err(|e| OpenError::Snapshot(e.to_string()))?,
                last_applied: stored.meta.last_log_id,
                membership: stored.meta.last_membership,
            },
            None => Replica {
                machine: Machine::new(),
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        let (applied, _) = watch::channel(replica.machine.revision());
        Ok(StateMachineStore {
            replica: Arc::new(RwLock::new(replica)),
            applied,
            snapshots,
        })
    }

    /// How far the saved snapshot reaches, for the log's purges.
    pub(crate) fn coverage(&self) -> SnapshotCoverage {
        self.snapshots.coverage.clone()
    }

    /// The snapshot counters (shared with the store's builders).
    pub fn snapshot_stats(&self) -> Arc<SnapshotStats> {
        self.snapshots.stats.clone()
    }

    /// A read handle that follows this store.
    pub fn view(&self) -> StateView<C> {
        StateView {
            replica: self.replica.clone(),
            applied: self.applied.subscribe(),
        }
    }

    fn snapshot_builder(&self) -> SnapshotBuilder<C> {
        SnapshotBuilder {
            replica: self.replica.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// Builds a snapshot of the replica and keeps it as the current one.
pub struct SnapshotBuilder<C: StoreConfig> {
    replica: Arc<RwLock<Replica<C>>>,
    snapshots: Snapshots,
}

impl<C: StoreConfig> RaftSnapshotBuilder<C> for SnapshotBuilder<C> {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<C>, C> {
        let started = std::time::Instant::now();
        // The machine's maps share their nodes with the clone (copy on write), so the lock is
        // held only for the clone; the encoding runs on a blocking thread while the replica
        // keeps applying and serving reads.
        let (machine, last_applied, membership) = {
            let replica = self.replica.read().expect("replica lock poisoned");
            (
                replica.machine.clone(),
                replica.last_applied,
                replica.membership.clone(),
            )
        };
        #[cfg(test)]
        let hook = self
            .snapshots
            .while_encoding
            .lock()
            .expect("hook lock")
            .take();
        let data = tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            if let Some(hook) = hook {
                hook();
            }
            encode(&machine)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))?;
        let built = self.snapshots.stats.built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_applied {
            Some(id) => format!("{}-{}-{built}", id.leader_id, id.index),
            None => format!("empty-{built}"),
        };
        let stored = StoredSnapshot::<C> {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            data,
        };
        let stored = self.snapshots.save(stored).await?;
        self.snapshots
            .stats
            .last_build_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl<C: StoreConfig> RaftStateMachine<C> for StateMachineStore<C> {
    type SnapshotBuilder = SnapshotBuilder<C>;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<
        (
            Option<LogId<C::NodeId>>,
            StoredMembership<C::NodeId, C::Node>,
        ),
        C,
    > {
        let replica = self.replica.read().expect("replica lock poisoned");
        Ok((replica.last_applied, replica.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<WriteReply>, C>
    where
        I: IntoIterator<Item = C::Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let bytes = entries.iter().map(heavy::entry_bytes).sum();
        let mut replies = Vec::with_capacity(entries.len());
        let revision = heavy::run(bytes, || {
            let mut replica = self.replica.write().expect("replica lock poisoned");
            for entry in entries {
                let log_id = *entry.get_log_id();
                let index = log_id.index;
                replica.last_applied = Some(log_id);
                let reply = match entry.payload {
                    EntryPayload::Normal(request) => replica.machine.apply(index, &request),
                    EntryPayload::Membership(membership) => {
                        let members = membership.nodes().map(|(id, _)| *id).collect();
                        replica.machine.apply_membership(index, &members);
                        replica.membership = StoredMembership::new(Some(log_id), membership);
                        WriteReply {
                            revision: index,
                            outcome: Outcome::None,
                        }
                    }
                    EntryPayload::Blank => {
                        replica.machine.apply_blank(index);
                        WriteReply {
                            revision: index,
                            outcome: Outcome::None,
                        }
                    }
                };
                replies.push(reply);
            }
            replica.machine.revision()
        });
        self.applied.send_replace(revision);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>, C> {
        self.snapshots.coverage.receiving();
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta<C>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<(), C> {
        let data = snapshot.into_inner();
        let signature = Some(meta.signature());
        let (data, machine) = tokio::task::spawn_blocking(move || {
            let machine: Result<Machine, _> = decode(&data);
            (data, machine.map_err(|e| e.to_string()))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(signature.clone(), AnyError::error(e)))?;
        let machine =
            machine.map_err(|e| StorageIOError::read_snapshot(signature, AnyError::error(e)))?;
        let stored = StoredSnapshot::<C> {
            meta: meta.clone(),
            data,
        };
        self.snapshots.save(stored).await?;
        let revision = machine.revision();
        let replaced = {
            let mut replica = self.replica.write().expect("replica lock poisoned");
            replica.last_applied = meta.last_log_id;
            replica.membership = meta.last_membership.clone();
            std::mem::replace(&mut replica.machine, machine)
        };
        // Freeing a large machine takes a while: not under the lock, not on the runtime.
        tokio::task::spawn_blocking(move || drop(replaced));
        self.applied.send_replace(revision);
        self.snapshots.coverage.installed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<C>>, C> {
        // No lock: a save renames a whole new file over the one this read opened.
        let Some(stored) = self.snapshots.load_in_background::<C>().await? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Cursor;
    use std::time::Duration;

    use conclave_state::{Machine, WriteReply, WriteRequest};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

    openraft::declare_raft_types!(
        pub Config:
            D = WriteRequest,
            R = WriteReply,
            NodeId = u64,
            Node = openraft::BasicNode,
            Entry = openraft::Entry<Config>,
            SnapshotData = Cursor<Vec<u8>>,
    );

    fn blanks(from: u64, to: u64) -> Vec<Entry<Config>> {
        (from..=to)
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    /// A snapshot read while a newer one is being saved is one snapshot, not the old meta with
    /// the new data: the read stops between opening the file and reading it while a build saves a
    /// newer one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_read_during_a_save_is_never_torn() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::open::<Config>(dir.path(), Default::default()).unwrap();
        let mut store = storage.state;
        store.apply(blanks(1, 1)).await.unwrap();
        let mut builder = store.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        store.apply(blanks(2, 3)).await.unwrap();

        let (paused, on_pause) = tokio::sync::oneshot::channel::<()>();
        let (go, wait_go) = std::sync::mpsc::channel::<()>();
        *store.snapshots.between_reads.lock().unwrap() = Some(Box::new(move || {
            let _ = paused.send(());
            let _ = wait_go.recv_timeout(Duration::from_secs(10));
        }));
        let read = tokio::spawn(async move { store.get_current_snapshot().await });
        on_pause.await.unwrap();

        // A newer snapshot is built meanwhile (it may wait for the read to finish).
        let mut build = tokio::spawn(async move { builder.build_snapshot().await });
        let built_during_read = tokio::time::timeout(Duration::from_millis(500), &mut build)
            .await
            .is_ok();
        go.send(()).unwrap();
        let snapshot = read.await.unwrap().unwrap().expect("a snapshot is kept");
        if !built_during_read {
            build.await.unwrap().unwrap();
        }

        let index = snapshot.meta.last_log_id.expect("not empty").index;
        let machine: Machine = crate::decode(snapshot.snapshot.get_ref()).unwrap();
        assert_eq!(
            machine.revision(),
            index,
            "the snapshot's data is at revision {} but its meta says {index}",
            machine.revision()
        );
    }

    fn sets(from: u64, to: u64, tag: &str) -> Vec<Entry<Config>> {
        (from..=to)
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
                payload: EntryPayload::Normal(WriteRequest {
                    id: None,
                    stamp: index,
                    command: conclave_state::Command::Set {
                        key: conclave_state::Bytes::from(format!("key{}", index % 2).into_bytes()),
                        value: conclave_state::Bytes::from(format!("{tag}{index}").into_bytes()),
                        condition: conclave_state::SetCondition::Always,
                        expiry: conclave_state::Expiry::Never,
                        return_previous: false,
                        lease: None,
                    },
                }),
            })
            .collect()
    }

    /// Encoding a snapshot holds nothing the replica needs: while a build is stopped in the
    /// middle of encoding, the keys it holds are overwritten and read, and the snapshot still
    /// holds exactly the state it started from.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn a_snapshot_being_encoded_never_holds_up_applying_or_reading() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::open::<Config>(dir.path(), Default::default()).unwrap();
        let mut store = storage.state;
        let view = store.view();
        store.apply(sets(1, 5, "v")).await.unwrap();
        let mut reference = Machine::new();
        for entry in sets(1, 5, "v") {
            if let EntryPayload::Normal(request) = &entry.payload {
                reference.apply(entry.log_id.index, request);
            }
        }

        let (paused, on_pause) = tokio::sync::oneshot::channel::<()>();
        let (go, wait_go) = std::sync::mpsc::channel::<()>();
        *store.snapshots.while_encoding.lock().unwrap() = Some(Box::new(move || {
            let _ = paused.send(());
            let _ = wait_go.recv();
        }));
        let mut builder = store.get_snapshot_builder().await;
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        on_pause.await.unwrap();

        let applying = tokio::spawn(async move {
            store.apply(sets(6, 8, "w")).await.unwrap();
        });
        // Judged by the wall clock on this thread: a worker blocked on the replica's lock
        // would not run the timer of a Tokio timeout.
        let started = std::time::Instant::now();
        while !applying.is_finished() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let applied_meanwhile = applying.is_finished();
        let read_meanwhile =
            applied_meanwhile.then(|| view.read(|m| m.record(b"key0", 0).map(|r| r.value.clone())));
        go.send(()).unwrap();
        assert!(
            applied_meanwhile,
            "applying waited for the snapshot's encoding"
        );
        assert_eq!(
            read_meanwhile.flatten(),
            Some(conclave_state::Value::String(conclave_state::Bytes::from(
                b"w8".to_vec()
            )))
        );

        let snapshot = build.await.unwrap().unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(5));
        let machine: Machine = crate::decode(snapshot.snapshot.get_ref()).unwrap();
        assert_eq!(
            machine, reference,
            "the snapshot holds the state at entry 5"
        );
    }
}
