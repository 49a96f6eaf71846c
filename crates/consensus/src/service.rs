//! The server side of the node-to-node `Peer` service.

use conclave_proto::peer::peer_server::{Peer, PeerServer};
use conclave_proto::peer::{
    ForwardRequest, ForwardResponse, IdentifyRequest, IdentifyResponse, RaftMessage,
    TimeoutNowRequest, TimeoutNowResponse,
};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use tonic::{Request, Response, Status};

use crate::codec::{decode, encode};
use crate::leader::LeaderRequest;
use crate::{NodeId, TypeConfig};

/// Serves other nodes: Raft RPCs into the local openraft instance, forwarded requests into the
/// local leader, and identity probes.
#[derive(Clone)]
pub struct PeerService {
    node: crate::Node,
}

impl PeerService {
    pub(crate) fn new(node: crate::Node) -> Self {
        PeerService { node }
    }

    /// The tonic service to mount on the node's listener.
    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self).max_decoding_message_size(crate::network::MAX_PEER_MESSAGE_BYTES)
    }

    async fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.node.admit(request).await
    }

    /// Admits a Raft message: refused while this fresh node is still deciding how it comes
    /// into the cluster (see `Node::form`).
    async fn admit_raft<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.admit(request).await?;
        if self.node.takes_part() {
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "node {} is still asking the other nodes how it comes into the cluster",
                self.node.id()
            )))
        }
    }
}

impl PeerService {
    /// Refuses entries and snapshots while this node is low on disk; UNAVAILABLE, so that the
    /// leader backs off and tries again later.
    fn refuse_if_low_on_disk(&self) -> Result<(), Status> {
        match self.node.disk_refusal() {
            Some(reason) => Err(Status::unavailable(format!(
                "node {}: {reason}",
                self.node.id()
            ))),
            None => Ok(()),
        }
    }
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        payload: encode(value),
    }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit_raft(&request).await?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&request.into_inner().payload)?;
        self.node.heard_from_leader();
        // Heartbeats are answered: the leader stays in place while this node falls behind.
        if !rpc.entries.is_empty() {
            self.refuse_if_low_on_disk()?;
        }
        let answer = self.node.raft().append_entries(rpc).await;
        // Only an AppendEntries openraft took from its current leader restarted its election
        // timer (one from a deposed leader is answered HigherVote).
        if matches!(
            answer,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.node.handled_leader_append();
        }
        reply(&answer)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit_raft(&request).await?;
        self.refuse_if_low_on_disk()?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&request.into_inner().payload)?;
        reply(&self.node.raft().install_snapshot(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit_raft(&request).await?;
        if !self.node.may_vote() {
            return Err(Status::unavailable(format!(
                "node {} has no Raft state yet, so it does not vote",
                self.node.id()
            )));
        }
        let rpc: VoteRequest<NodeId> = decode(&request.into_inner().payload)?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        self.admit(&request).await?;
        let leader_request: LeaderRequest = decode(&request.into_inner().request)?;
        let result = self.node.execute_as_leader(leader_request).await;
        Ok(Response::new(ForwardResponse {
            reply: encode(&result),
        }))
    }

    async fn identify(
        &self,
        request: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        self.node.admit_probe(&request).await?;
        let caller = request.get_ref().caller_id;
        Ok(Response::new(self.node.identify(caller)))
    }

    async fn timeout_now(
        &self,
        request: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowResponse>, Status> {
        self.admit(&request).await?;
        let TimeoutNowRequest { leader_id, term } = request.into_inner();
        self.node.timeout_now(leader_id, term).await?;
        Ok(Response::new(TimeoutNowResponse {}))
    }
}
