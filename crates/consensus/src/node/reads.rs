//! Read barriers: when a read at a given [`Consistency`] may be served from this replica. Owns
//! the revision this process has acknowledged to anyone, the startup floor (a leader's read
//! index learned after this process started), and the leader read index behind linearizable
//! reads.
//!
//! Does not own: the read itself (the API crates read the replica through `Node::view`), nor
//! how the leader answers a read index (`leading.rs`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use conclave_state::Revision;
use openraft::ServerState;

use super::{Node, NodeError, RETRY_PAUSE};
use crate::leader::{LeaderReply, LeaderRequest};

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever this replica has applied.
    Local,
    /// At least `min_revision` (read-your-writes for a client that passes its last revision),
    /// every write this node has acknowledged to anyone, and everything committed before this
    /// node's process started (see `Node::read_barrier`).
    Session { min_revision: Revision },
    /// Everything committed before the read began, confirmed with a quorum.
    Linearizable,
}

impl Node {
    /// The newest revision this process has acknowledged to anyone, on any front end: a write
    /// (or membership change) answered here, even before this replica has applied it (a
    /// follower's write returns when the leader answers).
    pub fn acknowledged(&self) -> Revision {
        self.inner.acknowledged.load(Ordering::Acquire)
    }

    /// Records a reply at `revision` about to be returned to a client.
    pub(super) fn record_acknowledged(&self, revision: Revision) {
        self.inner
            .acknowledged
            .fetch_max(revision, Ordering::AcqRel);
    }

    /// The revision every session read in this process must reach: a leader's read index,
    /// obtained once after the process started (by [`Node::learn_startup_floor`], or by the first
    /// read that finds it missing). An entry committed before then, such as a write this node
    /// acknowledged before it crashed, is at or below it; a restarted node has forgotten what it
    /// acknowledged and may not have applied it yet. Until a leader answers, session reads fail
    /// Unavailable rather than answer from a replica that may be behind them.
    async fn startup_floor(&self, deadline: Instant) -> Result<Revision, NodeError> {
        if let Some(floor) = self.inner.startup_floor.get() {
            return Ok(*floor);
        }
        self.read_index(deadline).await.map_err(|e| match e {
            NodeError::Unavailable(reason) => NodeError::Unavailable(format!(
                "node {} has not yet learned what was committed before it started: {reason}",
                self.inner.id
            )),
            other => other,
        })
    }

    /// The leader's read index: everything committed before this call. It also serves as this
    /// process's startup floor if it has none yet.
    async fn read_index(&self, deadline: Instant) -> Result<Revision, NodeError> {
        match self.on_leader(LeaderRequest::ReadIndex, deadline).await? {
            LeaderReply::ReadIndex(index) => {
                let _ = self.inner.startup_floor.set(index);
                Ok(index)
            }
            other => unreachable!("a read index answered with {other:?}"),
        }
    }

    /// Obtains the startup floor as soon as a leader answers, so the first session read does
    /// not wait for it; retried until then (a fresh node waits to be added).
    pub(super) async fn learn_startup_floor(self) {
        while self.inner.startup_floor.get().is_none() {
            if self.inner.raft.metrics().borrow().state == ServerState::Shutdown {
                return;
            }
            let deadline = Instant::now() + self.inner.timing.request_timeout;
            if let Err(e) = self.read_index(deadline).await {
                tracing::debug!("learning the startup floor failed: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Waits until a read at `consistency` may be served from this replica, then returns the
    /// revision applied here. A session read waits for the newest of its `min_revision`, what
    /// this node has acknowledged (so every front end and connection of one node is one
    /// session), and the startup floor (so a restarted node never answers below what it
    /// acknowledged before it crashed).
    pub async fn read_barrier(
        &self,
        consistency: Consistency,
        deadline: Instant,
    ) -> Result<Revision, NodeError> {
        let wanted = match consistency {
            Consistency::Local => return Ok(self.inner.view.applied()),
            Consistency::Session { min_revision } => min_revision
                .max(self.acknowledged())
                .max(self.startup_floor(deadline).await?),
            Consistency::Linearizable => self.read_index(deadline).await?,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.inner.view.wait_applied(wanted, remaining).await {
            Ok(self.inner.view.applied())
        } else {
            Err(NodeError::Unavailable(format!(
                "node {} has applied revision {}, and did not reach revision {wanted} in time",
                self.inner.id,
                self.inner.view.applied()
            )))
        }
    }
}
