//! What the node counts of its own work beyond [`NodeStatus`](super::NodeStatus): write
//! requests per proposed entry, leader changes seen, snapshots; and its figures as Prometheus
//! families.

use std::sync::Arc;

use conclave_metrics::{Counter, Exposition, Histogram, Kind, SIZE_BUCKETS};
use conclave_storage::SnapshotStats;

use super::Node;

/// Counters the node updates as it works.
#[derive(Debug)]
pub(super) struct NodeMetrics {
    /// Write requests carried by each entry this node proposed as leader (a RESP batch of many
    /// commands, or a forwarded one, is one request).
    pub(super) requests_per_entry: Histogram,
    /// Times this node saw a new leader (a term with a leader it had not seen lead it before).
    pub(super) leader_changes: Counter,
    pub(super) snapshots: Arc<SnapshotStats>,
}

impl NodeMetrics {
    pub(super) fn new(snapshots: Arc<SnapshotStats>) -> Self {
        NodeMetrics {
            requests_per_entry: Histogram::new(SIZE_BUCKETS),
            leader_changes: Counter::default(),
            snapshots,
        }
    }
}

impl NodeMetrics {
    /// Counts leader changes as `raft` reports them, until Raft stops (holding no handle on the
    /// node, so a dropped node is not kept alive by this).
    pub(super) async fn count_leader_changes(
        self: Arc<Self>,
        mut metrics: tokio::sync::watch::Receiver<
            openraft::RaftMetrics<crate::NodeId, openraft::BasicNode>,
        >,
    ) {
        let mut seen: Option<(u64, u64)> = None;
        loop {
            let now = {
                let m = metrics.borrow_and_update();
                m.current_leader.map(|leader| (m.current_term, leader))
            };
            if now.is_some() && now != seen {
                self.leader_changes.inc();
                seen = now;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Node {
    /// Writes the node's Raft, log and snapshot figures.
    pub fn encode_metrics(&self, out: &mut Exposition) {
        let status = self.status();
        let metrics = &self.inner.metrics;
        out.family(
            "conclave_raft_role",
            Kind::Gauge,
            "1 for this node's current Raft role.",
        );
        for role in ["leader", "follower", "candidate", "learner", "shutdown"] {
            let value = if role == status.role { 1.0 } else { 0.0 };
            out.sample("conclave_raft_role", &[("role", role)], value);
        }
        let gauges: [(&str, &str, u64); 7] = [
            ("conclave_node_id", "This node's id.", status.id),
            ("conclave_raft_term", "The current Raft term.", status.term),
            (
                "conclave_raft_leader_id",
                "The leader this node knows of (0: none).",
                status.leader.unwrap_or(0),
            ),
            (
                "conclave_raft_members",
                "Voters and learners in the membership.",
                status.members.len() as u64,
            ),
            (
                "conclave_raft_last_log_index",
                "The last entry in this node's log.",
                status.last_log_index,
            ),
            (
                "conclave_raft_commit_index",
                "The last commit index this node saved.",
                status.committed,
            ),
            (
                "conclave_raft_applied_index",
                "The last entry applied to this node's state machine (its revision).",
                status.applied,
            ),
        ];
        for (name, help, value) in gauges {
            out.single(name, Kind::Gauge, help, value as f64);
        }
        out.single(
            "conclave_raft_leader_changes_total",
            Kind::Counter,
            "New leaders this node has seen since it started.",
            metrics.leader_changes.get() as f64,
        );
        out.family(
            "conclave_raft_replication_lag_entries",
            Kind::Gauge,
            "On the leader: entries each member's log is behind the leader's.",
        );
        for (member, lag) in &status.replication_lag {
            out.sample(
                "conclave_raft_replication_lag_entries",
                &[("member", &member.to_string())],
                *lag as f64,
            );
        }
        out.family(
            "conclave_peer_reachable",
            Kind::Gauge,
            "1 if the member answered this node's last Raft RPC to it, 0 if it was unreachable.",
        );
        for (member, reachable) in self.inner.peers.reachability() {
            out.sample(
                "conclave_peer_reachable",
                &[("member", &member.to_string())],
                if reachable { 1.0 } else { 0.0 },
            );
        }
        if let Some(ms) = status.millis_since_quorum_ack {
            out.single(
                "conclave_raft_quorum_ack_age_seconds",
                Kind::Gauge,
                "On the leader: time since a quorum last acknowledged it.",
                ms as f64 / 1000.0,
            );
        }
        out.single(
            "conclave_log_entries_appended_total",
            Kind::Counter,
            "Log entries appended since the node started.",
            status.log_entries_appended as f64,
        );
        out.single(
            "conclave_log_flushes_total",
            Kind::Counter,
            "Log flushes (fdatasync rounds) since the node started; entries over flushes is the group-commit size.",
            status.log_flushes as f64,
        );
        out.family(
            "conclave_raft_requests_per_entry",
            Kind::Histogram,
            "Write requests carried by each log entry this node proposed as leader (a RESP batch of many commands is one request).",
        );
        out.histogram(
            "conclave_raft_requests_per_entry",
            &[],
            &metrics.requests_per_entry,
        );
        out.single(
            "conclave_keys",
            Kind::Gauge,
            "Keys in this node's replica.",
            status.keys as f64,
        );
        out.single(
            "conclave_disk_available_bytes",
            Kind::Gauge,
            "Bytes available on the data directory's filesystem, as last measured.",
            self.disk_available() as f64,
        );
        out.single(
            "conclave_disk_low",
            Kind::Gauge,
            "1 while less than --disk-reserve is available: writes are refused and the node takes no entries.",
            f64::from(u8::from(self.disk_low())),
        );
        out.single(
            "conclave_retry_reply_bytes",
            Kind::Gauge,
            &format!(
                "Bytes of values held in the replies remembered for retried writes (at most {}).",
                conclave_state::MAX_KEPT_REPLIES_BYTES
            ),
            self.inner.view.read(|m| m.kept_reply_bytes()) as f64,
        );
        let snapshots = &metrics.snapshots;
        let snapshot_gauges: [(&str, Kind, &str, f64); 6] = [
            (
                "conclave_snapshot_index",
                Kind::Gauge,
                "The last entry the current snapshot covers.",
                status.snapshot_index as f64,
            ),
            (
                "conclave_log_purged_index",
                Kind::Gauge,
                "The last entry compacted out of the log.",
                status.purged_index as f64,
            ),
            (
                "conclave_snapshots_built_total",
                Kind::Counter,
                "Snapshots this node built since it started.",
                snapshots.built() as f64,
            ),
            (
                "conclave_snapshots_saved_total",
                Kind::Counter,
                "Snapshots saved since the node started (built or installed from the leader).",
                snapshots.saved() as f64,
            ),
            (
                "conclave_snapshot_bytes",
                Kind::Gauge,
                "Size of the last snapshot saved.",
                snapshots.bytes() as f64,
            ),
            (
                "conclave_snapshot_build_seconds",
                Kind::Gauge,
                "How long the last snapshot build took, to the synced file.",
                snapshots.last_build().as_secs_f64(),
            ),
        ];
        for (name, kind, help, value) in snapshot_gauges {
            out.single(name, kind, help, value);
        }
    }
}
