//! The node's view of the cluster, for the cluster API (`ctl status`) and RESP introspection.

use conclave_state::Revision;
use openraft::ServerState;

use super::Node;
use crate::leader::MembershipView;
use crate::{MemberView, NodeId};

/// A snapshot of the node's view of the cluster.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied: Revision,
    pub last_log_index: u64,
    pub role: &'static str,
    pub members: Vec<MemberView>,
    pub cluster_id: Option<u64>,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub keys: u64,
    /// Log entries appended and log flushes since start: their ratio is the group-commit batch.
    pub log_entries_appended: u64,
    pub log_flushes: u64,
    /// The last commit index this node saved.
    pub committed: u64,
    /// On the leader: how many entries each member's log is behind the leader's (the leader
    /// itself 0); empty elsewhere.
    pub replication_lag: Vec<(NodeId, u64)>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
}

impl Node {
    /// The node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = metrics.membership_config.membership();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let replication_lag = metrics
            .replication
            .iter()
            .flatten()
            .map(|(member, matched)| {
                let matched = matched.map_or(0, |id| id.index);
                (*member, last_log_index.saturating_sub(matched))
            })
            .collect();
        NodeStatus {
            id: self.inner.id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            applied: self.inner.view.applied(),
            last_log_index,
            role,
            members: MembershipView::of(0, membership).members,
            cluster_id: self.inner.peers.cluster_id(),
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            keys: self.inner.view.read(|m| m.len() as u64),
            log_entries_appended: self.inner.log_stats.appended(),
            log_flushes: self.inner.log_stats.flushes(),
            committed: self.inner.log_stats.committed(),
            replication_lag,
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
        }
    }
}
