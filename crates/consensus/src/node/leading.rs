//! Requests executed by this node as leader: writes stamped with the replicated time, read
//! indexes (committing a `Tick` first when the replicated clock lags), membership changes, and
//! transfers (handed to `handover.rs`). Each is counted while it runs, so a handover can wait
//! until nothing more is being appended (see `lifecycle.rs`).
//!
//! Does not own: the openraft calls behind each request (`crate::leader`), nor finding the
//! leader (`routing.rs`).

use std::sync::atomic::Ordering;

use conclave_state::{Command, Millis, WriteRequest};

use super::{Node, NodeError};
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
                if let Err(NodeError::NoSpace(reason)) = self.check_room_for(&write.command) {
                    return Err(LeaderError::NoSpace(reason));
                }
                self.propose_write(write).await.map(LeaderReply::Write)
            }
            request => leader::execute(&self.inner.raft, request, 0).await,
        }
    }

    /// The replicated time this node stamps now, as leader of its current term. The first stamp
    /// of a term in this process waits until this replica has applied every entry before it
    /// (see [`Node::settle_term`]): the term's time continues from their largest stamp.
    pub(super) async fn leader_time(&self) -> Result<Millis, LeaderError> {
        let term = self.inner.raft.metrics().borrow().current_term;
        if !self.inner.time.started(term) {
            self.settle_term(term).await?;
        }
        let floor = self.inner.view.read(|m| m.clock());
        Ok(self.inner.time.stamp(term, floor))
    }

    /// Commits an entry of this term from this process (an unstamped `Tick`): once it is
    /// applied, so is every entry before it, and openraft's read index is at least its index.
    ///
    /// openraft's own barrier (`ensure_linearizable`) is not enough for a leader that restarted:
    /// it resumes its term from its saved vote without an election, with the term's first entry
    /// from before the restart and the commit index it last saved, which is not flushed by itself
    /// and can be older than writes it had acknowledged. Its read index was then too low: the
    /// chaos suite read, on a leader just restarted after every node was killed, a value older
    /// than a write acknowledged before the kill.
    ///
    /// Once per term: concurrent first requests wait for one `Tick`.
    async fn settle_term(&self, term: u64) -> Result<(), LeaderError> {
        let settled = || self.inner.settled_term.load(Ordering::Acquire) >= term;
        if settled() {
            return Ok(());
        }
        let _settling = self.inner.settling.lock().await;
        if settled() {
            return Ok(());
        }
        let tick = LeaderRequest::Write(WriteRequest {
            id: None,
            stamp: 0,
            command: Command::Tick,
        });
        leader::execute(&self.inner.raft, tick, 0).await?;
        self.inner.settled_term.fetch_max(term, Ordering::AcqRel);
        Ok(())
    }

    /// How far the replicated clock of this replica lags the leader's time.
    async fn clock_lag(&self) -> Result<Millis, LeaderError> {
        let now = self.leader_time().await?;
        Ok(now.saturating_sub(self.inner.view.read(|m| m.clock())))
    }

    /// The index a linearizable read waits for: openraft's read index, once this process has
    /// committed an entry of its term (`leader_time` sees to it). If the replicated clock lags this leader's time
    /// by more than [`READ_CLOCK_LAG_MS`], the index of a `Tick` committed now (in this term,
    /// so it confirms the leadership too), so the read judges TTLs at the current time on any
    /// replica; reads arriving meanwhile wait for that `Tick` rather than commit their own.
    async fn read_index_as_leader(&self) -> Result<LeaderReply, LeaderError> {
        if self.clock_lag().await? > READ_CLOCK_LAG_MS {
            let _tick = self.inner.read_tick.lock().await;
            if self.clock_lag().await? > READ_CLOCK_LAG_MS {
                let tick = WriteRequest {
                    id: None,
                    stamp: 0,
                    command: Command::Tick,
                };
                let reply = self.propose_write(tick).await?;
                return Ok(LeaderReply::ReadIndex(reply.revision));
            }
        }
        leader::execute(&self.inner.raft, LeaderRequest::ReadIndex, 0).await
    }
}
