//! Admission of node-to-node calls: the cluster id a call must announce, the identity this node
//! gives a probing peer, and whether it answers Raft messages at all and may vote.
//!
//! Does not own: the gRPC service that asks these questions (`crate::service`), nor the
//! survey a fresh node makes of the others (`forming.rs`).

use conclave_proto::peer::IdentifyResponse;
use tonic::Status;

use super::{has_raft_state, Node};
use crate::NodeId;

impl Node {
    /// Admits a node-to-node call: refuses one that does not announce its cluster (UNAUTHENTICATED),
    /// comes from another cluster or is meant for another node (FAILED_PRECONDITION); a node that
    /// does not know its cluster yet (it was started with `--join`) adopts the first cluster id
    /// it hears.
    pub async fn admit<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        self.admit_version(request)?;
        if let Some(target) = addressed_to(request)? {
            if target != self.inner.id {
                return Err(Status::failed_precondition(format!(
                    "a call meant for node {target} reached node {} (two members at one address?)",
                    self.inner.id
                )));
            }
        }
        match announced_cluster(request)? {
            Some(theirs) => self.admit_cluster(theirs).await,
            None => Err(Status::unauthenticated(format!(
                "node {} refuses a node-to-node call without the {} header",
                self.inner.id,
                conclave_proto::CLUSTER_ID_HEADER
            ))),
        }
    }

    /// Admits an identity probe: like [`Node::admit`], except that one without the header is
    /// answered (a `--join` node probes before it knows its cluster; the answer is read-only).
    pub async fn admit_probe<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        self.admit_version(request)?;
        match announced_cluster(request)? {
            Some(theirs) => self.admit_cluster(theirs).await,
            None => Ok(()),
        }
    }

    /// Refuses a call in a node-to-node format later than this build's (FAILED_PRECONDITION,
    /// naming both): its messages may hold what this node cannot read.
    fn admit_version<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        let version = match request.metadata().get(conclave_proto::WIRE_VERSION_HEADER) {
            None => 1,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| Status::invalid_argument("malformed wire version header"))?,
        };
        if version > conclave_proto::WIRE_VERSION {
            return Err(Status::failed_precondition(format!(
                "the caller speaks node-to-node format {version}; node {} (format {}) cannot \
                 read it: upgrade this node",
                self.inner.id,
                conclave_proto::WIRE_VERSION
            )));
        }
        Ok(())
    }

    /// Admits a call from a node announcing `cluster_id`.
    async fn admit_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        match self.inner.peers.cluster_id() {
            Some(ours) if ours != cluster_id => Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {ours:016x}, the caller to cluster {cluster_id:016x}",
                self.inner.id
            ))),
            Some(_) => Ok(()),
            None => {
                self.inner
                    .identity
                    .claim_cluster(cluster_id)
                    .await
                    .map_err(|e| Status::failed_precondition(e.to_string()))?;
                self.inner.peers.set_cluster_id(cluster_id);
                Ok(())
            }
        }
    }

    /// Answers another node's identity probe.
    pub(crate) fn identify(&self, caller: NodeId) -> IdentifyResponse {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let replicated_to_caller = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&caller).cloned().flatten())
            .map(|log_id| log_id.index);
        IdentifyResponse {
            node_id: self.inner.id,
            cluster_id: self.inner.peers.cluster_id().unwrap_or(0),
            replicated_to_caller,
            recorded_incarnation: self.inner.view.read(|m| m.incarnation(caller)),
            last_log_index: has_raft_state(&metrics).then(|| metrics.last_log_index.unwrap_or(0)),
            incarnation: self.inner.incarnation,
            founded_with_caller: self
                .inner
                .identity
                .founders()
                .ok()
                .flatten()
                .and_then(|f| f.iter().find(|(id, _)| *id == caller).map(|(_, i)| *i)),
        }
    }

    /// Whether this node answers Raft messages: it had Raft state when it started, or
    /// [`Node::form`] has decided how it comes into the cluster.
    pub(crate) fn takes_part(&self) -> bool {
        self.inner.lifecycle.takes_part()
    }

    /// Whether this node has Raft state: it created the cluster or a leader brought it in. One
    /// without must not vote: it may be a node whose data was lost, not yet refused, and its
    /// vote could elect a leader missing acknowledged writes.
    pub(crate) fn may_vote(&self) -> bool {
        self.takes_part() && has_raft_state(&self.inner.raft.metrics().borrow())
    }
}

/// The node a node-to-node call says it is meant for, if it says.
fn addressed_to<T>(request: &tonic::Request<T>) -> Result<Option<NodeId>, Status> {
    let Some(value) = request.metadata().get(conclave_proto::TARGET_NODE_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("malformed target node header"))
}

/// The cluster id a node-to-node call announces in its header, if it has one.
fn announced_cluster<T>(request: &tonic::Request<T>) -> Result<Option<u64>, Status> {
    let Some(value) = request.metadata().get(conclave_proto::CLUSTER_ID_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("malformed cluster id header"))
}
