//! What the log must know of snapshots before it purges: how far the snapshot on disk reaches,
//! and whether a snapshot received from the leader is still being installed.
//!
//! openraft 0.9 installs a received snapshot on its state-machine task and, without waiting for
//! that, tells the log to purge every entry the snapshot covers. A crash between the purge and the
//! snapshot's save would leave a log purged past the snapshot the node loads on restart, and the
//! node could never start again ("Failed to get log entries"). So a purge past the saved snapshot
//! waits while a received snapshot is being installed; the Raft core waits with it, so nothing that
//! depends on the new snapshot (a commit index past it, further purges) reaches the disk first.
//!
//! Every other purge openraft asks for is already covered by a saved snapshot (after its own
//! builds, which save before they return; at start-up, up to the snapshot loaded), so it never
//! waits. "Receiving" stays set when openraft turns a received snapshot down (not newer than what
//! it has committed): harmless for the same reason.

use std::time::Duration;

use tokio::sync::watch;

/// How long a purge waits for the snapshot that covers it before giving up with an error: a
/// snapshot's save is one file written, synced and renamed, far below this even at hundreds of
/// megabytes.
const COVER_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// The last index the snapshot on disk covers (0: no snapshot).
    saved: u64,
    /// A snapshot is being received or installed and is not on disk yet.
    receiving: bool,
}

/// Shared by the log and the state machine of one data directory.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotCoverage {
    progress: watch::Sender<Progress>,
}

/// A purge was asked for entries no saved snapshot covers while a received one never got saved.
#[derive(Debug, thiserror::Error)]
#[error(
    "purge up to index {index} waited {COVER_WAIT:?} for the received snapshot that covers it \
     to be saved (the snapshot on disk reaches index {saved})"
)]
pub(crate) struct NotCovered {
    index: u64,
    saved: u64,
}

impl Default for SnapshotCoverage {
    /// No snapshot saved, none being received.
    fn default() -> Self {
        SnapshotCoverage {
            progress: watch::channel(Progress::default()).0,
        }
    }
}

impl SnapshotCoverage {
    /// A snapshot from the leader is on its way in.
    pub(crate) fn receiving(&self) {
        self.progress.send_modify(|p| p.receiving = true);
    }

    /// A snapshot covering entries up to `index` is on disk.
    pub(crate) fn saved(&self, index: u64) {
        self.progress.send_modify(|p| p.saved = p.saved.max(index));
    }

    /// The received snapshot is installed (and was saved first).
    pub(crate) fn installed(&self) {
        self.progress.send_modify(|p| p.receiving = false);
    }

    /// Returns once entries up to `index` may be purged: a saved snapshot covers them, or no
    /// received snapshot is pending (openraft purges past the saved snapshot only while
    /// installing one; outside a node, e.g. openraft's storage suite, a log may be purged freely).
    pub(crate) async fn wait_covered(&self, index: u64) -> Result<(), NotCovered> {
        let mut progress = self.progress.subscribe();
        let covered = progress.wait_for(|p| !p.receiving || p.saved >= index);
        let waited = tokio::time::timeout(COVER_WAIT, covered).await.is_ok();
        if waited {
            return Ok(());
        }
        Err(NotCovered {
            index,
            saved: self.progress.borrow().saved,
        })
    }
}
