//! The one way services reach the node: writes with their failures mapped to gRPC statuses,
//! reads behind a read barrier, response headers and deadlines.

use std::time::Instant;

use conclave_consensus::{Consistency, Node};
use conclave_proto::v1::{ResponseHeader, WriteOptions};
use conclave_state::{
    Command, Machine, Outcome, Revision, WriteReply, WriteRequest, FORGOTTEN_REPLY,
};
use tonic::{Request, Status};

use crate::convert::{self, checked, node_error, request_id};

#[derive(Clone)]
pub(crate) struct Gateway {
    node: Node,
}

impl Gateway {
    pub(crate) fn new(node: Node) -> Self {
        Gateway { node }
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Proposes a write and returns its reply. A reply that reports a failure of the command
    /// (wrong type, unknown lease) becomes the matching status.
    pub(crate) async fn write(
        &self,
        options: Option<WriteOptions>,
        command: Command,
        deadline: Instant,
    ) -> Result<WriteReply, Status> {
        let reply = self
            .write_unchecked_outcome(options, command, deadline)
            .await?;
        outcome_status(&reply.outcome)?;
        Ok(reply)
    }

    /// Proposes a write and returns its reply whatever the outcome (transactions report the
    /// failures of their commands one by one).
    pub(crate) async fn write_unchecked_outcome(
        &self,
        options: Option<WriteOptions>,
        command: Command,
        deadline: Instant,
    ) -> Result<WriteReply, Status> {
        let request = checked(WriteRequest {
            id: request_id(options),
            stamp: 0,
            command,
        })?;
        let reply = self
            .node
            .write(request, deadline)
            .await
            .map_err(node_error)?;
        if reply.outcome == Outcome::Forgotten {
            return Err(Status::failed_precondition(format!(
                "{FORGOTTEN_REPLY}; it was applied at revision {}",
                reply.revision
            )));
        }
        Ok(reply)
    }

    /// Waits for the read barrier, then runs `read` on the replica at its replicated clock (the
    /// largest stamp applied: every replica at one revision judges expiry alike); returns the
    /// revision read with the answer.
    pub(crate) async fn read<R>(
        &self,
        consistency: Consistency,
        deadline: Instant,
        read: impl FnOnce(&Machine, u64) -> Result<R, Status>,
    ) -> Result<(Revision, R), Status> {
        self.node
            .read_barrier(consistency, deadline)
            .await
            .map_err(node_error)?;
        self.node
            .view()
            .read(|m| read(m, m.clock()).map(|r| (m.revision(), r)))
    }

    pub(crate) fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision,
            node_id: self.node.id(),
        })
    }

    pub(crate) fn deadline<T>(&self, request: &Request<T>) -> Instant {
        convert::deadline(request, self.node.request_timeout())
    }
}

/// The status for an outcome that reports a failed command; Ok for every other outcome.
pub(crate) fn outcome_status(outcome: &Outcome) -> Result<(), Status> {
    match outcome {
        Outcome::WrongType => Err(convert::wrong_type(conclave_state::ReadError)),
        Outcome::LeaseNotFound => Err(Status::not_found(
            "the lease does not exist (it expired or was revoked)",
        )),
        _ => Ok(()),
    }
}
