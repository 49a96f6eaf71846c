//! The `Lock` service: named locks with fencing tokens, built from one transaction each.
//!
//! A lock is the key `conclave:lock:<name>` holding its owner. Acquiring is a transaction "if the
//! key is absent (or past its TTL), set it to the owner with the TTL or lease"; the revision of
//! that entry is the fencing token (it grows with every acquisition). Releasing is "if the key
//! holds this owner, delete it". Both are decided inside `apply`, so they are linearizable.

use std::time::{Duration, Instant};

use conclave_proto::v1::lock_server::{Lock, LockServer};
use conclave_proto::v1::*;
use conclave_state::{
    Bytes, Check, CmpOp, Command, Compare, Expiry, Outcome, SetCondition, Transaction, Value,
};
use tonic::{Request, Response, Status};

use crate::convert::lease;
use crate::gateway::Gateway;

/// The key holding lock `name`.
pub fn lock_key(name: &str) -> Bytes {
    Bytes::from(format!("conclave:lock:{name}").into_bytes())
}

/// While waiting for a held lock, how often the holder's TTL is checked against the clock (a
/// release or lease end wakes the waiter at once).
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Serves `conclave.v1.Lock` from one node.
#[derive(Clone)]
pub struct LockService {
    gw: Gateway,
}

/// Who holds a lock, as read from the local replica.
struct Holder {
    owner: Vec<u8>,
    token: u64,
}

impl LockService {
    pub fn new(node: conclave_consensus::Node) -> Self {
        LockService {
            gw: Gateway::new(node),
        }
    }

    pub fn into_server(self) -> LockServer<Self> {
        LockServer::new(self).max_decoding_message_size(crate::MAX_REQUEST_BYTES)
    }

    /// The holder of `key` once this replica has applied `revision`.
    async fn holder(
        &self,
        key: &Bytes,
        revision: u64,
        deadline: Instant,
    ) -> Result<Option<Holder>, Status> {
        let consistency = conclave_consensus::Consistency::Session {
            min_revision: revision,
        };
        let (_, holder) = self
            .gw
            .read(consistency, deadline, |m, now| {
                Ok(m.record(key, now).and_then(|r| match &r.value {
                    Value::String(owner) => Some(Holder {
                        owner: owner.to_vec(),
                        token: r.created,
                    }),
                    _ => None,
                }))
            })
            .await?;
        Ok(holder)
    }

    /// Waits until `key` is absent on this replica (released, expired or its lease ended), or
    /// until `until`.
    async fn wait_for_release(&self, key: &Bytes, until: Instant) {
        let view = self.gw.node().view();
        loop {
            if view.read(|m| m.record(key, m.clock()).is_none()) {
                return;
            }
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return;
            }
            let next = view.applied() + 1;
            view.wait_applied(next, remaining.min(WAIT_POLL)).await;
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Lock for LockService {
    async fn acquire(&self, request: Request<LockAcquireRequest>) -> Reply<LockAcquireResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("a lock needs a name"));
        }
        if r.owner.is_empty() {
            return Err(Status::invalid_argument("a lock needs an owner"));
        }
        if r.ttl_ms == 0 && r.lease == 0 {
            return Err(Status::invalid_argument(
                "a lock needs a TTL or a lease, or a holder that dies would keep it forever",
            ));
        }
        let key = lock_key(&r.name);
        let wait_until = (Instant::now() + Duration::from_millis(r.wait_ms)).min(deadline);
        let take = Command::Txn(Box::new(Transaction {
            compares: vec![Compare {
                key: key.clone(),
                field: None,
                check: Check::Exists(false),
            }],
            success: vec![Command::Set {
                key: key.clone(),
                value: Bytes::from(r.owner.clone()),
                condition: SetCondition::Always,
                expiry: match r.ttl_ms {
                    0 => Expiry::Never,
                    ms => Expiry::AfterMillis(ms),
                },
                return_previous: false,
                lease: lease(r.lease),
            }],
            failure: vec![],
        }));
        // The client's write id covers the first attempt only; later attempts are new writes.
        let mut options = r.write;
        loop {
            let reply = self
                .gw
                .write_unchecked_outcome(options.take(), take.clone(), deadline)
                .await?;
            match &reply.outcome {
                Outcome::Txn {
                    succeeded: true,
                    outcomes,
                } => {
                    crate::gateway::outcome_status(&outcomes[0])?;
                    return Ok(Response::new(LockAcquireResponse {
                        header: self.gw.header(reply.revision),
                        acquired: true,
                        token: reply.revision,
                        holder: Vec::new(),
                    }));
                }
                Outcome::Txn { .. } => {}
                other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
            }
            let holder = self.holder(&key, reply.revision, deadline).await?;
            match holder {
                // Already held by this owner (a retry, or re-entry): its current token.
                Some(h) if h.owner == r.owner => {
                    return Ok(Response::new(LockAcquireResponse {
                        header: self.gw.header(reply.revision),
                        acquired: true,
                        token: h.token,
                        holder: Vec::new(),
                    }))
                }
                Some(h) if Instant::now() >= wait_until => {
                    return Ok(Response::new(LockAcquireResponse {
                        header: self.gw.header(reply.revision),
                        acquired: false,
                        token: 0,
                        holder: h.owner,
                    }))
                }
                Some(_) => self.wait_for_release(&key, wait_until).await,
                // Released between the attempt and the read: try again at once.
                None => {}
            }
        }
    }

    async fn release(&self, request: Request<LockReleaseRequest>) -> Reply<LockReleaseResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let key = lock_key(&r.name);
        let release = Command::Txn(Box::new(Transaction {
            compares: vec![Compare {
                key: key.clone(),
                field: None,
                check: Check::Value(CmpOp::Equal, Bytes::from(r.owner)),
            }],
            success: vec![Command::Delete { keys: vec![key] }],
            failure: vec![],
        }));
        let reply = self
            .gw
            .write_unchecked_outcome(r.write, release, deadline)
            .await?;
        match reply.outcome {
            Outcome::Txn {
                succeeded: true, ..
            } => Ok(Response::new(LockReleaseResponse {
                header: self.gw.header(reply.revision),
            })),
            Outcome::Txn { .. } => Err(Status::failed_precondition(format!(
                "lock {:?} is not held by this owner",
                r.name
            ))),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}
