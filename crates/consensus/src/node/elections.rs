//! Elections on and off. A node opens with elections off; one with Raft state turns them on once
//! a leader reaches it or a grace passes, a fresh one at once (see `Node::open`), and a stopping
//! node turns them off for good.
//!
//! Does not own: the stopping flag itself (`lifecycle.rs`), leadership handover (`handover.rs`).

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
        // A node told to stop during its grace never turns elections back on (the second check
        // covers a stop that lands between the first and `elect(true)`).
        if !self.inner.lifecycle.stopping() {
            self.inner.raft.runtime_config().elect(true);
            if self.inner.lifecycle.stopping() {
                self.inner.raft.runtime_config().elect(false);
            }
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
}
