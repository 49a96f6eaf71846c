//! Requests executed by this node as leader: writes stamped with the replicated time, read
//! indexes (committing a `Tick` first when the replicated clock lags), membership changes, and
//! transfers (handed to `handover.rs`). Each is counted while it runs, so a handover can wait
//! until nothing more is being appended (see `lifecycle.rs`).
//!
//! Does not own: the openraft calls behind each request (`crate::leader`), nor finding the
//! leader (`routing.rs`).

use conclave_state::{Command, Millis, WriteRequest};

use super::Node;
use crate::leader::{self, LeaderError, LeaderReply, LeaderRequest};

/// A linearizable read commits a `Tick` first when the replicated clock lags the leader's time
/// by more than this, so every replica judges TTLs at about the same, current, time.
const READ_CLOCK_LAG_MS: Millis = 20;

impl Node {
    /// Executes a request forwarded by another node, if this node leads.
    pub(crate) async fn execute_as_leader(
        &self,
        request: LeaderRequest,
    ) -> Result<LeaderReply, LeaderError> {
        let leads = self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id);
        if !leads {
            return Err(LeaderError::NotLeader);
        }
        self.execute_here(request).await
    }

    /// Executes `request` on this node, the leader.
    pub(super) async fn execute_here(
        &self,
        request: LeaderRequest,
    ) -> Result<LeaderReply, LeaderError> {
        match request {
            LeaderRequest::Transfer { to, asked_in } => self.transfer(to, asked_in).await,
            request => self.lead(request).await,
        }
    }

    /// Executes `request` as leader, unless a handover has begun; counted while it runs, so a
    /// handover can wait until nothing more is being appended.
    async fn lead(&self, request: LeaderRequest) -> Result<LeaderReply, LeaderError> {
        let Some(_leading) = self.inner.lifecycle.lead() else {
            return Err(LeaderError::Unavailable(
                "the leader is handing its leadership over".into(),
            ));
        };
        match request {
            LeaderRequest::ReadIndex => self.read_index_as_leader().await,
            LeaderRequest::Write(write) => {
                let stamp = self.leader_time().await?;
                leader::execute(&self.inner.raft, LeaderRequest::Write(write), stamp).await
            }
            request => leader::execute(&self.inner.raft, request, 0).await,
        }
    }

    /// The replicated time this node stamps now, as leader of its current term. The first stamp
    /// of a term waits until this replica has applied every entry committed before the term
    /// (`ensure_linearizable`): the term's time continues from their largest stamp.
    pub(super) async fn leader_time(&self) -> Result<Millis, LeaderError> {
        let term = self.inner.raft.metrics().borrow().current_term;
        if !self.inner.time.started(term) {
            self.inner
                .raft
                .ensure_linearizable()
                .await
                .map_err(leader::read_error)?;
        }
        let floor = self.inner.view.read(|m| m.clock());
        Ok(self.inner.time.stamp(term, floor))
    }

    /// How far the replicated clock of this replica lags the leader's time.
    async fn clock_lag(&self) -> Result<Millis, LeaderError> {
        let now = self.leader_time().await?;
        Ok(now.saturating_sub(self.inner.view.read(|m| m.clock())))
    }

    /// The index a linearizable read waits for. If the replicated clock lags this leader's time
    /// by more than [`READ_CLOCK_LAG_MS`], the index of a `Tick` committed now (in this term,
    /// so it confirms the leadership too), so the read judges TTLs at the current time on any
    /// replica; reads arriving meanwhile wait for that `Tick` rather than commit their own.
    async fn read_index_as_leader(&self) -> Result<LeaderReply, LeaderError> {
        if self.clock_lag().await? > READ_CLOCK_LAG_MS {
            let _tick = self.inner.read_tick.lock().await;
            if self.clock_lag().await? > READ_CLOCK_LAG_MS {
                let tick = LeaderRequest::Write(WriteRequest {
                    id: None,
                    stamp: 0,
                    command: Command::Tick,
                });
                let stamp = self.leader_time().await?;
                return match leader::execute(&self.inner.raft, tick, stamp).await? {
                    LeaderReply::Write(reply) => Ok(LeaderReply::ReadIndex(reply.revision)),
                    other => unreachable!("a tick answered with {other:?}"),
                };
            }
        }
        leader::execute(&self.inner.raft, LeaderRequest::ReadIndex, 0).await
    }
}
