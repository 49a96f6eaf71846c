//! Elections on and off. A node opens with elections off; one with Raft state turns them on once
//! a leader reaches it or a grace passes, a fresh one at once (see `Node::open`), and a stopping
//! node turns them off for good. A node low on disk has them off while it is (`disk.rs`).
//!
//! Does not own: the stopping flag itself (`lifecycle.rs`), leadership handover (`handover.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Node;

impl Node {
    /// A restarted node first gives the leader time to reach it: openraft has no pre-vote, so an
    /// election started by a node that merely restarted raises the term, and the healthy leader
    /// steps down when it hears of it. Elections are enabled once a leader's AppendEntries
    /// arrives, or after the grace (no leader: the whole cluster is starting, or it is gone).
    pub(super) async fn enable_elections(self) {
        let grace = Duration::from_millis((4 * self.inner.timing.election_max_ms).max(1000));
        let _ = tokio::time::timeout(grace, self.inner.leader_heard.notified()).await;
        self.open_elections();
    }

    /// Lets this node start elections from now on (unless it stops, or while it is low on
    /// disk).
    pub(super) fn open_elections(&self) {
        self.inner.elections_open.store(true, Ordering::Relaxed);
        self.refresh_elections();
    }

    /// Turns elections on or off as the node's state asks: on once opened, unless it is
    /// stopping or low on disk.
    pub(super) fn refresh_elections(&self) {
        let on = || {
            self.inner.elections_open.load(Ordering::Relaxed)
                && !self.inner.lifecycle.stopping()
                && !self.disk_low()
        };
        self.inner.raft.runtime_config().elect(on());
        // A stop (or a change of room) that lands between the check and `elect` is caught by
        // the second look.
        if !on() {
            self.inner.raft.runtime_config().elect(false);
        }
    }

    /// Stops this node from starting elections: it is about to stop. Once its listener closes
    /// the leader cannot reach it, and an election it started while winding down would raise
    /// the term and depose the healthy leader.
    pub fn stop_elections(&self) {
        self.inner.lifecycle.stop();
        self.inner.raft.runtime_config().elect(false);
    }

    /// Records that a leader reached this node.
    pub(crate) fn heard_from_leader(&self) {
        self.inner.leader_heard.notify_one();
    }

    /// Records that openraft has handled an AppendEntries from a leader (and so restarted its
    /// election timer).
    pub(crate) fn handled_leader_append(&self) {
        self.inner.leader_appends.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns elections back on once the leader is heard again (or a grace passes): after a
    /// while with elections off and no entries taken, openraft's election timer ran out long
    /// ago, and an election started at once would depose a healthy leader.
    /// Only the task of the latest `recovery` acts: after a later one, its own task waits for
    /// an AppendEntries handled since.
    pub(super) async fn refresh_elections_once_led(self, recovery: u64) {
        let seen = self.inner.leader_appends.load(Ordering::Relaxed);
        let grace = Duration::from_millis((4 * self.inner.timing.election_max_ms).max(1000));
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.leader_appends.load(Ordering::Relaxed) == seen
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.inner.disk.recoveries.load(Ordering::Relaxed) == recovery {
            self.refresh_elections();
        }
    }
}
