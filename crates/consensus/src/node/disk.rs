//! Room on the data directory's filesystem. A node with less than its reserve available
//! (`NodeOptions::disk_reserve`) is low on disk until space returns, and meanwhile:
//! - refuses the writes that add data ([`NodeError::NoSpace`]), from its own clients and, as
//!   leader, from every node: lease keep-alives and revocations and the leader's own
//!   housekeeping (reaping, lease expiry, ticks) still go through, so leases held by live
//!   clients are not lost to a full disk;
//! - takes no entries or snapshots from the leader (the leader retries; the node falls behind
//!   instead of failing on a full disk), and starts no elections (a leader low on disk could
//!   take no writes).
//!
//! The reserve is what these writes, a new log segment and a snapshot may still need: space
//! runs out inside it only when something else fills the disk faster than it is checked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use conclave_state::Command;
use openraft::ServerState;

use super::{Node, NodeError};

/// How often the available space is measured.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The data directory's room, as last measured.
pub(super) struct DiskWatch {
    dir: PathBuf,
    reserve: u64,
    available: AtomicU64,
    low: AtomicBool,
    /// Times the node stopped being low: only the latest recovery turns elections back on.
    pub(super) recoveries: AtomicU64,
}

impl DiskWatch {
    pub(super) fn new(dir: PathBuf, reserve: u64) -> Self {
        let watch = DiskWatch {
            dir,
            reserve,
            available: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
        };
        watch.measure();
        watch
    }

    /// Measures the room left; returns whether the node is low on disk now, if that changed.
    fn measure(&self) -> Option<bool> {
        let available = match conclave_storage::available_bytes(&self.dir) {
            Ok(available) => available,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot measure the room on the data directory's disk");
                return None;
            }
        };
        self.available.store(available, Ordering::Relaxed);
        // Once low, the node stays so until a sixteenth of the reserve more is free, so that
        // space hovering at the reserve does not turn writes and elections on and off.
        let was_low = self.low.load(Ordering::Relaxed);
        let threshold = if was_low {
            self.reserve.saturating_add(self.reserve / 16)
        } else {
            self.reserve
        };
        let low = self.reserve > 0 && available < threshold;
        (self.low.swap(low, Ordering::Relaxed) != low).then_some(low)
    }

    fn reason(&self) -> String {
        format!(
            "the node's disk is nearly full ({} bytes available to {}, under the reserve of {}): \
             writes are refused until space returns",
            self.available.load(Ordering::Relaxed),
            self.dir.display(),
            self.reserve
        )
    }
}

impl Node {
    /// Measures the room on the data directory's disk until the node shuts down, and acts on a
    /// change (logging it and turning elections off or on).
    pub(super) async fn watch_disk(self) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.inner.raft.metrics().borrow().state == ServerState::Shutdown {
                return;
            }
            let disk = &self.inner.disk;
            match disk.measure() {
                Some(true) => {
                    tracing::warn!(reserve = disk.reserve, "{}", disk.reason());
                    self.refresh_elections();
                }
                Some(false) => {
                    tracing::info!(
                        available = disk.available.load(Ordering::Relaxed),
                        "room on the data directory's disk again: taking writes"
                    );
                    let recovery = disk.recoveries.fetch_add(1, Ordering::Relaxed) + 1;
                    tokio::spawn(self.clone().refresh_elections_once_led(recovery));
                }
                None => {}
            }
        }
    }

    /// Whether the node is low on disk (see the module docs).
    pub fn disk_low(&self) -> bool {
        self.inner.disk.low.load(Ordering::Relaxed)
    }

    /// Bytes available on the data directory's filesystem, as last measured.
    pub fn disk_available(&self) -> u64 {
        self.inner.disk.available.load(Ordering::Relaxed)
    }

    /// Why this node takes no entries from the leader now, if it does not.
    pub(crate) fn disk_refusal(&self) -> Option<String> {
        self.disk_low().then(|| self.inner.disk.reason())
    }

    /// Refuses `command` if it adds data while this node is low on disk.
    pub(super) fn check_room_for(&self, command: &Command) -> Result<(), NodeError> {
        if self.disk_low() && adds_data(command) {
            return Err(NodeError::NoSpace(self.inner.disk.reason()));
        }
        Ok(())
    }
}

/// Whether a write may add data: all but lease keep-alives and revocations and the leader's
/// housekeeping (see the module docs).
fn adds_data(command: &Command) -> bool {
    match command {
        Command::LeaseKeepAlive { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseExpire { .. }
        | Command::LeaseRenewAll
        | Command::Reap { .. }
        | Command::Tick
        | Command::RegisterNode { .. }
        | Command::ForgetNode { .. } => false,
        Command::Batch(writes) => writes.iter().any(|w| adds_data(&w.command)),
        _ => true,
    }
}
