//! Requests that only the leader can execute, whichever node received them: writes, read-index
//! and membership changes. One enum travels over `Peer.Forward`, so there is one forwarding path.

use std::collections::BTreeSet;

use conclave_state::{WriteReply, WriteRequest};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Membership};
use serde::{Deserialize, Serialize};

use crate::{NodeId, Raft};

/// What a node asks the leader to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    /// Stamp and propose a write.
    Write(WriteRequest),
    /// Confirm leadership with a quorum and return the index a linearizable read must wait for.
    ReadIndex,
    /// Change the membership.
    Admin(AdminRequest),
    /// Hand the leadership to voter `to` (any caught-up voter if None); see `Node::hand_over`.
    /// Asked in term `asked_in`: retried after the leadership has moved, a transfer to any voter
    /// is done already. Run by the node itself, not by [`execute`].
    Transfer { to: Option<NodeId>, asked_in: u64 },
}

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Add a learner; unless `learner_only`, promote it to voter once it has caught up.
    Add {
        id: NodeId,
        address: String,
        learner_only: bool,
    },
    /// Promote a learner to voter.
    Promote { id: NodeId },
    /// Remove a voter or learner.
    Remove { id: NodeId },
}

/// The leader's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum LeaderReply {
    Write(WriteReply),
    ReadIndex(u64),
    Admin(MembershipView),
    /// The leader after a transfer, and its term.
    Transferred {
        leader: NodeId,
        term: u64,
    },
}

/// Why the leader did not execute a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LeaderError {
    /// The addressee is not (or no longer) the leader: retry where the leader is now.
    NotLeader,
    /// Retrying elsewhere may succeed (no quorum right now, shutting down).
    Unavailable(String),
    /// The request is wrong and will stay wrong (e.g. removing an unknown node).
    Rejected(String),
    /// The leader is low on disk: the write was not proposed (see `node/disk.rs`).
    NoSpace(String),
}

pub(crate) type LeaderResult = Result<LeaderReply, LeaderError>;

/// One member in a membership view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
}

/// The membership after a change, and the revision of the entry that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    pub revision: u64,
    pub members: Vec<MemberView>,
}

impl MembershipView {
    pub(crate) fn of(revision: u64, membership: &Membership<NodeId, BasicNode>) -> Self {
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberView {
                id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        MembershipView { revision, members }
    }
}

pub(crate) fn write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> LeaderError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => LeaderError::NotLeader,
        // Another membership change is still being committed: wait and retry.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => LeaderError::Unavailable(e.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            LeaderError::Rejected(e.to_string())
        }
        RaftError::Fatal(e) => LeaderError::Unavailable(e.to_string()),
    }
}

/// The error of a leadership check (read index).
pub(crate) fn read_error(
    e: RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, BasicNode>>,
) -> LeaderError {
    match e {
        RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_)) => {
            LeaderError::NotLeader
        }
        other => LeaderError::Unavailable(other.to_string()),
    }
}

/// Executes `request` on this node, which must be the leader; a write is stamped `now`.
pub(crate) async fn execute(raft: &Raft, request: LeaderRequest, now: u64) -> LeaderResult {
    match request {
        LeaderRequest::Write(mut write) => {
            write.stamp = now;
            let response = raft.client_write(write).await.map_err(write_error)?;
            Ok(LeaderReply::Write(response.data))
        }
        LeaderRequest::ReadIndex => {
            let (read_log_id, _applied) = raft.get_read_log_id().await.map_err(read_error)?;
            Ok(LeaderReply::ReadIndex(read_log_id.map_or(0, |id| id.index)))
        }
        LeaderRequest::Transfer { .. } => Err(LeaderError::Rejected(
            "a leadership transfer is run by the node, not as a log write".into(),
        )),
        LeaderRequest::Admin(admin) => {
            let response = match admin {
                AdminRequest::Add {
                    id,
                    address,
                    learner_only,
                } => {
                    // Adding a member again is a no-op (an operator's retry after a timeout).
                    let current = raft.metrics().borrow().membership_config.clone();
                    let membership = current.membership();
                    if let Some((other, _)) = membership
                        .nodes()
                        .find(|(other, node)| **other != id && node.addr == address)
                    {
                        return Err(LeaderError::Rejected(format!(
                            "node {other} is already a member at {address}"
                        )));
                    }
                    if let Some(node) = membership.get_node(&id) {
                        if node.addr != address {
                            return Err(LeaderError::Rejected(format!(
                                "node {id} is already a member at {}; remove it first",
                                node.addr
                            )));
                        }
                        let is_voter = membership.voter_ids().any(|v| v == id);
                        if is_voter || learner_only {
                            return Ok(LeaderReply::Admin(MembershipView::of(
                                current.log_id().map_or(0, |l| l.index),
                                membership,
                            )));
                        }
                    }
                    let added = raft
                        .add_learner(id, BasicNode::new(address), true)
                        .await
                        .map_err(write_error)?;
                    if learner_only {
                        added
                    } else {
                        raft.change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                            false,
                        )
                        .await
                        .map_err(write_error)?
                    }
                }
                AdminRequest::Promote { id } => raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_error)?,
                AdminRequest::Remove { id } => {
                    let metrics = raft.metrics().borrow().clone();
                    let membership = metrics.membership_config.membership();
                    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                    if membership.get_node(&id).is_none() {
                        return Err(LeaderError::Rejected(format!("node {id} is not a member")));
                    }
                    if voters.len() == 1 && voters.contains(&id) {
                        return Err(LeaderError::Rejected("cannot remove the last voter".into()));
                    }
                    let change = if voters.contains(&id) {
                        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                    } else {
                        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                    };
                    // Applying the new membership forgets the node's data directory too.
                    raft.change_membership(change, false)
                        .await
                        .map_err(write_error)?
                }
            };
            let membership = match response.membership {
                Some(m) => m,
                None => raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .clone(),
            };
            Ok(LeaderReply::Admin(MembershipView::of(
                response.log_id.index,
                &membership,
            )))
        }
    }
}
