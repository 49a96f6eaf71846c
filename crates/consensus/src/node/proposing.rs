//! The leader's proposer: every write this node makes as leader (a client's, one forwarded by
//! another node, its own housekeeping and read ticks) goes through one queue, and the writes
//! queued while earlier entries are in flight go into the log together as one entry, a
//! [`Command::Batch`].
//!
//! Why: openraft 0.9's core appends one entry per `client_write` and waits for that append's
//! flush before it does anything else, so one entry per write bounds the leader at one write per
//! flush, whoever sends them. With [`MAX_IN_FLIGHT`] entries on their way, each next entry holds
//! every write that arrived meanwhile.
//!
//! What holds, write by write:
//! - each write keeps its request id and is de-duplicated on its own when applied, so a retry of
//!   one write in a batch is applied once, whichever entry carries it;
//! - each gets its own reply (its outcome, and the batch's revision, or its first revision if it
//!   was a retry of an applied write);
//! - writes are proposed in the order they were queued; writes queued together were concurrent,
//!   so applying them one after the other is an order Redis could have run them in;
//! - no two writes in one entry touch the same key: every write in an entry gets the entry's
//!   index as its revision, and a key's revision must name one value (a compare on a key's
//!   modification revision, a lock's creation revision as a fencing token). A write that
//!   touches a key already in the entry, or keys it cannot name (ending a lease), starts the
//!   next entry;
//! - a write whose caller has gone (its deadline passed, its connection closed) before it was
//!   proposed is dropped unproposed: nobody can be told it was applied;
//! - an error is each write's own: a batch fails as a whole only as a single write would.
//!
//! Does not own: the stamp (`leading.rs`), finding the leader (`routing.rs`), and the front
//! ends' own batching of one connection's commands (the RESP batcher), which this composes with.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Weak};

use conclave_state::{Command, Outcome, WriteReply, WriteRequest};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Inner, Node};
use crate::leader::{write_error, LeaderError};
use crate::NodeId;

/// Entries proposed and not yet applied at once. The first waits for its flush and round trip
/// while the next ones fill.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// Writes per entry, at most.
const MAX_BATCH_WRITES: usize = 4096;
/// Bytes of keys and values per entry, at most (a single larger write goes alone). Matches the
/// largest AppendEntries payload, so a batch never needs an AppendEntries to itself.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Answer = Result<WriteReply, LeaderError>;

/// A write waiting to be proposed.
pub(super) struct Proposal {
    request: WriteRequest,
    answer: oneshot::Sender<Answer>,
}

impl Proposal {
    /// Hashes of the keys the write touches (a collision only ends an entry early), or None
    /// when the write must be an entry of its own: a lease's id is its entry's index, and a
    /// write that ends leases changes keys it cannot name.
    fn key_hashes(&self, hasher: &RandomState) -> Option<Vec<u64>> {
        if matches!(
            self.request.command,
            Command::LeaseGrant { .. } | Command::Batch(_)
        ) {
            return None;
        }
        let keys = self.request.command.keys()?;
        Some(keys.into_iter().map(|k| hasher.hash_one(k)).collect())
    }

    fn bytes(&self) -> usize {
        self.request.command.payload_bytes()
    }
}

/// The queue into the proposer.
pub(super) type ProposalQueue = mpsc::UnboundedSender<Proposal>;

/// Starts the proposer of `node`; it ends when the node is dropped.
pub(super) fn start(node: &Node, proposals: mpsc::UnboundedReceiver<Proposal>) {
    tokio::spawn(run(Arc::downgrade(&node.inner), proposals));
}

impl Node {
    /// Proposes `request` as leader and returns its reply once applied. The caller holds the
    /// lifecycle's `lead` guard.
    pub(super) async fn propose_write(&self, request: WriteRequest) -> Answer {
        let (answer, reply) = oneshot::channel();
        let stopped = || LeaderError::Unavailable("the node is shutting down".into());
        self.inner
            .proposals
            .send(Proposal { request, answer })
            .map_err(|_| stopped())?;
        reply.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run(node: Weak<Inner>, mut proposals: mpsc::UnboundedReceiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let hasher = RandomState::new();
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match proposals.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        // Wait for a slot first: writes arriving meanwhile join this entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first_keys = first.key_hashes(&hasher);
        let mut batch = vec![first];
        if let Some(first_keys) = first_keys {
            let mut bytes = batch[0].bytes();
            let mut keys: HashSet<u64> = first_keys.into_iter().collect();
            while let Ok(next) = proposals.try_recv() {
                if next.answer.is_closed() {
                    continue;
                }
                let fits =
                    batch.len() < MAX_BATCH_WRITES && bytes + next.bytes() <= MAX_BATCH_BYTES;
                match next.key_hashes(&hasher) {
                    Some(next_keys) if fits && !next_keys.iter().any(|k| keys.contains(k)) => {
                        bytes += next.bytes();
                        keys.extend(next_keys);
                        batch.push(next);
                    }
                    _ => {
                        carried = Some(next);
                        break;
                    }
                }
            }
        }
        batch.retain(|p| !p.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(inner) = node.upgrade() else {
            return;
        };
        Node { inner }.propose_batch(batch, permit).await;
    }
}

impl Node {
    /// Stamps `batch` and hands it to Raft as one entry, in queue order; a task answers each
    /// write once the entry is applied and then frees `permit`.
    async fn propose_batch(&self, batch: Vec<Proposal>, permit: OwnedSemaphorePermit) {
        let stamp = match self.leader_time().await {
            Ok(stamp) => stamp,
            Err(error) => return answer_all(batch, &error),
        };
        let requests = batch.len();
        let (request, answers) = entry_of(batch, stamp);
        let applied = match self.inner.raft.client_write_ff(request).await {
            Ok(applied) => {
                self.inner
                    .metrics
                    .requests_per_entry
                    .observe(requests as f64);
                applied
            }
            Err(fatal) => {
                return answer_all_senders(answers, &LeaderError::Unavailable(fatal.to_string()))
            }
        };
        tokio::spawn(async move {
            let result = match applied.await {
                Ok(Ok(response)) => Ok(response.data),
                Ok(Err(e)) => Err(write_error(
                    RaftError::<NodeId, ClientWriteError<_, _>>::APIError(e),
                )),
                Err(_) => Err(LeaderError::Unavailable(
                    "raft stopped before the write's outcome was known".into(),
                )),
            };
            answer_applied(answers, result);
            drop(permit);
        });
    }
}

/// The entry carrying `batch`: the write itself if it is alone, else a [`Command::Batch`].
fn entry_of(mut batch: Vec<Proposal>, stamp: u64) -> (WriteRequest, Vec<oneshot::Sender<Answer>>) {
    if batch.len() == 1 {
        let Proposal {
            mut request,
            answer,
        } = batch.pop().expect("one write");
        request.stamp = stamp;
        return (request, vec![answer]);
    }
    let mut answers = Vec::with_capacity(batch.len());
    let requests = batch
        .into_iter()
        .map(|Proposal { request, answer }| {
            answers.push(answer);
            WriteRequest {
                stamp: 0,
                ..request
            }
        })
        .collect();
    let request = WriteRequest {
        id: None,
        stamp,
        command: Command::Batch(requests),
    };
    (request, answers)
}

/// Hands each write its own reply out of the entry's.
fn answer_applied(answers: Vec<oneshot::Sender<Answer>>, result: Answer) {
    match result {
        Ok(reply) if answers.len() == 1 => {
            let _ = answers.into_iter().next().expect("one").send(Ok(reply));
        }
        Ok(WriteReply {
            outcome: Outcome::Batch(replies),
            ..
        }) if replies.len() == answers.len() => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = answer.send(Ok(reply));
            }
        }
        Ok(other) => unreachable!(
            "a batch of {} writes answered with {other:?}",
            answers.len()
        ),
        Err(error) => answer_all_senders(answers, &error),
    }
}

fn answer_all(batch: Vec<Proposal>, error: &LeaderError) {
    answer_all_senders(batch.into_iter().map(|p| p.answer).collect(), error);
}

fn answer_all_senders(answers: Vec<oneshot::Sender<Answer>>, error: &LeaderError) {
    for answer in answers {
        let _ = answer.send(Err(error.clone()));
    }
}
