//! A request's way to the leader: run here if this node leads, else forwarded over
//! `Peer.Forward`, held through elections and retried until its deadline. Owns the public
//! write and membership entry points and the line between a write that certainly was not
//! applied ([`NodeError::Unavailable`]) and one that may still be ([`NodeError::Indeterminate`]).
//!
//! Does not own: what the leader does with a request (`leading.rs`), reads (`reads.rs`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use conclave_state::{RequestId, WriteReply, WriteRequest};
use tonic::Status;

use super::{Node, NodeError, RETRY_PAUSE};
use crate::leader::{AdminRequest, LeaderError, LeaderReply, LeaderRequest, MembershipView};
use crate::NodeId;

impl Node {
    /// A request id of this node's own, for a write that will be sent again after an
    /// [`NodeError::Indeterminate`] answer (the retry then applies at most once).
    pub fn next_request_id(&self) -> RequestId {
        RequestId {
            client_id: self.inner.client_id,
            sequence: self.inner.sequence.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Applies a write through the leader and returns its reply, waiting through elections until
    /// `deadline`. A request without an id gets one, so internal retries apply it once. At the
    /// deadline the error says whether the write may still be applied
    /// ([`NodeError::Indeterminate`]) or certainly will not be ([`NodeError::Unavailable`]).
    pub async fn write(
        &self,
        mut request: WriteRequest,
        deadline: Instant,
    ) -> Result<WriteReply, NodeError> {
        // One log entry per write: bounded here for every front end (batches merged by one
        // included), so that every entry can replicate (see `network::append_timeout`).
        let bytes = request.command.payload_bytes();
        let max = conclave_state::Limits::DEFAULT.max_command_bytes;
        if bytes > max {
            return Err(NodeError::Rejected(format!(
                "a write holds at most {max} bytes of keys and values; this one holds {bytes}"
            )));
        }
        if self.disk_low() {
            // A retry of a write applied before is answered as any replica would; any other
            // write that adds data is refused.
            if let Some(reply) = request
                .id
                .and_then(|id| self.view().read(|m| m.remembered_reply(id)))
            {
                return Ok(reply);
            }
            self.check_room_for(&request.command)?;
        }
        if request.id.is_none() {
            request.id = Some(self.next_request_id());
        }
        match self
            .on_leader(LeaderRequest::Write(request), deadline)
            .await?
        {
            LeaderReply::Write(reply) => {
                self.record_acknowledged(reply.revision);
                Ok(reply)
            }
            other => unreachable!("a write answered with {other:?}"),
        }
    }

    /// Changes the membership through the leader.
    pub async fn change_membership(
        &self,
        request: AdminRequest,
        deadline: Instant,
    ) -> Result<MembershipView, NodeError> {
        match self
            .on_leader(LeaderRequest::Admin(request), deadline)
            .await?
        {
            LeaderReply::Admin(view) => {
                self.record_acknowledged(view.revision);
                Ok(view)
            }
            other => unreachable!("a membership change answered with {other:?}"),
        }
    }

    /// The leader this node currently knows of, with its address.
    fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, address))
    }

    /// Runs `request` on the leader: here if this node leads, else over `Peer.Forward`. Holds it
    /// through elections and retries until `deadline`.
    pub(super) async fn on_leader(
        &self,
        request: LeaderRequest,
        deadline: Instant,
    ) -> Result<LeaderReply, NodeError> {
        let mut problem = String::from("no leader is known");
        // Whether a leader may have been handed this request (then a write may commit later,
        // even after this call gave up on it).
        let mut handed_over = false;
        let writes = matches!(request, LeaderRequest::Write(_));
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if writes && handed_over {
                    NodeError::Indeterminate(format!(
                        "no leader confirmed the write in time, and it may still be applied: {problem}"
                    ))
                } else {
                    NodeError::Unavailable(format!("no leader answered in time: {problem}"))
                });
            }
            // Whether an earlier attempt may have reached a leader, which may still commit it.
            let maybe_proposed = handed_over;
            let outcome = match self.leader() {
                Some((leader, _)) if leader == self.inner.id => {
                    handed_over = true;
                    match tokio::time::timeout(remaining, self.execute_here(request.clone())).await
                    {
                        Ok(result) => Ok(result),
                        Err(_) => Err("the leader (this node) did not commit in time".to_string()),
                    }
                }
                Some((leader, address)) => {
                    let forwarded = self
                        .inner
                        .peers
                        .forward(leader, &address, &request, remaining);
                    // A leader that vanished without closing its connections (its host or
                    // container gone) never answers: give up on it once the others replace it,
                    // and send the request again (a write with its id applies once).
                    tokio::select! {
                        answer = forwarded => answer.map_err(|status| {
                            handed_over |= !never_sent(&status);
                            format!("leader {leader} at {address}: {}", status.message())
                        }),
                        () = self.leader_replaced(leader) => {
                            handed_over = true;
                            Err(format!("leader {leader} was replaced before it answered"))
                        }
                    }
                }
                None => Err("no leader is known (election in progress)".to_string()),
            };
            if outcome.is_ok() {
                handed_over = true;
            }
            match outcome {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(LeaderError::Rejected(reason))) => return Err(NodeError::Rejected(reason)),
                // A refusal for disk says this attempt was not proposed; after an earlier one
                // that may have been, the outcome stays unknown: retried until the deadline,
                // then answered as indeterminate.
                Ok(Err(LeaderError::NoSpace(reason))) if maybe_proposed => problem = reason,
                Ok(Err(LeaderError::NoSpace(reason))) => return Err(NodeError::NoSpace(reason)),
                Ok(Err(LeaderError::NotLeader)) => problem = "leadership moved".into(),
                Ok(Err(LeaderError::Unavailable(reason))) => problem = reason,
                Err(reason) => problem = reason,
            }
            tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
        }
    }

    /// Resolves once this node no longer takes `leader` for the leader.
    async fn leader_replaced(&self, leader: NodeId) {
        let mut metrics = self.inner.raft.metrics();
        while metrics.borrow_and_update().current_leader == Some(leader) {
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Whether a failed call certainly never reached its peer: no TCP connection to it could be
/// made (refused, or timed out connecting), so nothing was sent.
fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let refused = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        // hyper-util's connector reports every failure to connect so (its `ConnectError`).
        if refused || error.to_string().starts_with("tcp connect error") {
            return true;
        }
        source = error.source();
    }
    false
}
