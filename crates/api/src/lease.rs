//! The `Lease` service: grant, keep alive, revoke and inspect leases.

use conclave_proto::v1::lease_server::{Lease, LeaseServer};
use conclave_proto::v1::*;
use conclave_state::{Command, Outcome, WriteReply};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::consistency;
use crate::gateway::Gateway;

/// Serves `conclave.v1.Lease` from one node.
#[derive(Clone)]
pub struct LeaseService {
    gw: Gateway,
}

impl LeaseService {
    pub fn new(node: conclave_consensus::Node) -> Self {
        LeaseService {
            gw: Gateway::new(node),
        }
    }

    pub fn into_server(self) -> LeaseServer<Self> {
        LeaseServer::new(self).max_decoding_message_size(crate::MAX_REQUEST_BYTES)
    }

    /// Restarts lease `id`'s TTL; the answer has ttl_ms 0 when the lease no longer exists.
    async fn keep_alive(&self, id: u64) -> Result<LeaseKeepAliveResponse, Status> {
        let deadline = std::time::Instant::now() + self.gw.node().request_timeout();
        let reply = self
            .gw
            .write_unchecked_outcome(None, Command::LeaseKeepAlive { lease: id }, deadline)
            .await?;
        let ttl_ms = match reply.outcome {
            Outcome::Lease { ttl_ms, .. } => ttl_ms,
            _ => 0,
        };
        Ok(LeaseKeepAliveResponse {
            header: self.gw.header(reply.revision),
            id,
            ttl_ms,
        })
    }
}

type Reply<T> = Result<Response<T>, Status>;
type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn grant(&self, request: Request<LeaseGrantRequest>) -> Reply<LeaseGrantResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let command = Command::LeaseGrant { ttl_ms: r.ttl_ms };
        let WriteReply { revision, outcome } = self.gw.write(r.write, command, deadline).await?;
        let Outcome::Lease { id, ttl_ms } = outcome else {
            return Err(Status::internal(format!("unexpected outcome {outcome:?}")));
        };
        Ok(Response::new(LeaseGrantResponse {
            header: self.gw.header(revision),
            id,
            ttl_ms,
        }))
    }

    async fn revoke(&self, request: Request<LeaseRevokeRequest>) -> Reply<LeaseRevokeResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let command = Command::LeaseRevoke { lease: r.id };
        let reply = self.gw.write(r.write, command, deadline).await?;
        let deleted = match reply.outcome {
            Outcome::Count(n) => n,
            _ => 0,
        };
        Ok(Response::new(LeaseRevokeResponse {
            header: self.gw.header(reply.revision),
            deleted,
        }))
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Reply<Self::KeepAliveStream> {
        let service = self.clone();
        let requests = request.into_inner();
        let answers = requests.then(move |request| {
            let service = service.clone();
            async move { service.keep_alive(request?.id).await }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn keep_alive_once(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Reply<LeaseKeepAliveResponse> {
        Ok(Response::new(
            self.keep_alive(request.into_inner().id).await?,
        ))
    }

    async fn time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Reply<LeaseTimeToLiveResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let (revision, lease) = self
            .gw
            .read(consistency(r.read), deadline, |m, now| {
                Ok(m.lease(r.id).map(|lease| {
                    let keys = lease.keys.iter().map(|key| LeaseAttachment {
                        key: key.to_vec(),
                        field: None,
                    });
                    let fields = lease.fields.iter().map(|(key, field)| LeaseAttachment {
                        key: key.to_vec(),
                        field: Some(field.to_vec()),
                    });
                    let remaining = lease.deadline.saturating_sub(now);
                    (lease.ttl_ms, remaining, keys.chain(fields).collect())
                }))
            })
            .await?;
        let found = lease.is_some();
        let (granted_ttl_ms, remaining_ms, attached) = lease.unwrap_or_default();
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.gw.header(revision),
            id: r.id,
            found,
            granted_ttl_ms,
            remaining_ms,
            attached,
        }))
    }

    async fn list(&self, request: Request<LeaseListRequest>) -> Reply<LeaseListResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let (revision, ids) = self
            .gw
            .read(consistency(r.read), deadline, |m, _| {
                Ok(m.leases().map(|(id, _)| id).collect())
            })
            .await?;
        Ok(Response::new(LeaseListResponse {
            header: self.gw.header(revision),
            ids,
        }))
    }
}
