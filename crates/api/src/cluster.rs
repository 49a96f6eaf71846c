//! The `Cluster` service: status, membership, leadership transfer and backups.

use conclave_consensus::{AdminRequest, MemberView, MembershipView, Node};
use conclave_proto::v1::cluster_server::{Cluster, ClusterServer};
use conclave_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::convert::{deadline, node_error};

/// Serves `conclave.v1.Cluster` from one node.
#[derive(Clone)]
pub struct ClusterService {
    node: Node,
}

impl ClusterService {
    pub fn new(node: Node) -> Self {
        ClusterService { node }
    }

    /// The tonic service to mount on the node's listener.
    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self).max_decoding_message_size(crate::MAX_REQUEST_BYTES)
    }

    async fn change<T>(
        &self,
        request: Request<T>,
        change: AdminRequest,
    ) -> Result<Response<MembershipResponse>, Status> {
        let deadline = deadline(&request, self.node.request_timeout());
        let view: MembershipView = self
            .node
            .change_membership(change, deadline)
            .await
            .map_err(node_error)?;
        Ok(Response::new(MembershipResponse {
            revision: view.revision,
            members: members(view.members),
        }))
    }
}

fn members(members: Vec<MemberView>) -> Vec<Member> {
    members
        .into_iter()
        .map(|m| Member {
            id: m.id,
            address: m.address,
            voter: m.voter,
        })
        .collect()
}

/// Bytes of a backup per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

#[tonic::async_trait]
impl Cluster for ClusterService {
    type SnapshotStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<SnapshotChunk, Status>> + Send + 'static>,
    >;

    /// A backup of this node's replica as it is now: a copy taken under the replica's lock (its
    /// maps are shared, copied on write), encoded off the runtime's threads.
    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let machine = self.node.view().read(|m| m.clone());
        let (node, cluster_id) = (self.node.id(), self.node.peers().cluster_id().unwrap_or(0));
        let taken_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let revision = machine.revision();
        let file = tokio::task::spawn_blocking(move || {
            conclave_storage::write_backup(&machine, node, cluster_id, taken_at_ms)
        })
        .await
        .map_err(|e| Status::internal(format!("encoding the backup failed: {e}")))?;
        let total_bytes = file.len() as u64;
        let chunks: Vec<SnapshotChunk> = file
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .enumerate()
            .map(|(i, data)| SnapshotChunk {
                data: data.to_vec(),
                revision: if i == 0 { revision } else { 0 },
                total_bytes: if i == 0 { total_bytes } else { 0 },
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = self.node.status();
        Ok(Response::new(StatusResponse {
            id: s.id,
            leader: s.leader,
            term: s.term,
            applied: s.applied,
            last_log_index: s.last_log_index,
            role: s.role.to_string(),
            members: members(s.members),
            cluster_id: s
                .cluster_id
                .map(|c| format!("{c:016x}"))
                .unwrap_or_default(),
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            keys: s.keys,
            log_entries_appended: s.log_entries_appended,
            log_flushes: s.log_flushes,
            committed: s.committed,
        }))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let r = request.get_ref().clone();
        if r.id == 0 {
            return Err(Status::invalid_argument("node ids start at 1"));
        }
        if !r.address.contains(':') {
            return Err(Status::invalid_argument(format!(
                "'{}' is not HOST:PORT",
                r.address
            )));
        }
        let change = AdminRequest::Add {
            id: r.id,
            address: r.address,
            learner_only: r.learner_only,
        };
        self.change(request, change).await
    }

    async fn promote_member(
        &self,
        request: Request<PromoteMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let id = request.get_ref().id;
        self.change(request, AdminRequest::Promote { id }).await
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let id = request.get_ref().id;
        self.change(request, AdminRequest::Remove { id }).await
    }

    async fn transfer_leadership(
        &self,
        request: Request<TransferLeadershipRequest>,
    ) -> Result<Response<TransferLeadershipResponse>, Status> {
        let deadline = deadline(&request, self.node.request_timeout());
        let (leader, term) = self
            .node
            .transfer_leadership(request.get_ref().to, deadline)
            .await
            .map_err(node_error)?;
        Ok(Response::new(TransferLeadershipResponse { leader, term }))
    }
}
