//! Write batching: plain writes from every connection of this node that arrive while earlier
//! batches are in flight go to the leader together, as one transaction and so one log entry.
//!
//! Why: the leader flushes its log once per entry, so a node sending one entry per client write
//! is bound by flush latency (see the README's figures). A batch keeps each submission's
//! commands in order and contiguous, and submissions from different connections were concurrent
//! anyway, so the batch is one of the orders Redis itself could have executed them in. Each
//! command still reports its own outcome (a wrong type fails that command only, as in EXEC).
//! Transactions with comparisons (EXEC after WATCH, scripts) are never merged: they are sent
//! alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_consensus::{Node, NodeError};
use conclave_state::{Command, Limits, Outcome, Revision, Transaction, WriteRequest};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Batches in flight at once per node: while they wait for the leader, the next batch fills.
/// The leader's proposer merges what several nodes send, so this only needs to keep the way to
/// the leader busy. With 2 rather than 4, a batch carries about twice the commands and a
/// command costs the cluster 0.8 as many context switches and 0.75-0.9 as much CPU
/// (`scripts/write-cost.sh` with 4, 2 and 1, SET through a follower, 50 clients); 1 costs less
/// still, but a write arriving just after a batch left then waits a whole round more.
const MAX_IN_FLIGHT: usize = 2;
/// Submissions join a batch only if their deadline is at most this much after its first's: a
/// batch whose outcome is unknown at that deadline is answered as a whole then, so no member is
/// answered more than this before its own deadline.
const MERGE_WINDOW: Duration = Duration::from_millis(50);
/// Bytes of keys and values per batch: well under the 16 MiB a command may carry.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Answer = Result<(Revision, Vec<Outcome>), NodeError>;

struct Submission {
    commands: Vec<Command>,
    deadline: Instant,
    done: oneshot::Sender<Answer>,
}

impl Submission {
    fn mergeable(&self) -> bool {
        self.commands.iter().all(Command::allowed_in_transaction)
    }

    fn bytes(&self) -> usize {
        self.commands.iter().map(Command::payload_bytes).sum()
    }
}

/// The node's write batcher; cheap to clone.
#[derive(Clone)]
pub(crate) struct WriteBatcher {
    queue: mpsc::UnboundedSender<Submission>,
}

impl WriteBatcher {
    pub fn start(node: Node) -> WriteBatcher {
        let (queue, submissions) = mpsc::unbounded_channel();
        tokio::spawn(run(node, submissions));
        WriteBatcher { queue }
    }

    /// Applies `commands` (already checked against the limits) in order, contiguously, and
    /// returns the revision they were applied at with one outcome per command.
    pub async fn write(&self, commands: Vec<Command>, deadline: Instant) -> Answer {
        let (done, answer) = oneshot::channel();
        let submission = Submission {
            commands,
            deadline,
            done,
        };
        if self.queue.send(submission).is_err() {
            return Err(NodeError::Unavailable("the node is shutting down".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(NodeError::Unavailable("the node is shutting down".into())))
    }
}

async fn run(node: Node, mut submissions: mpsc::UnboundedReceiver<Submission>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let max_ops = Limits::DEFAULT.max_txn_ops;
    let mut carried: Option<Submission> = None;
    loop {
        let first = match carried.take() {
            Some(submission) => submission,
            None => match submissions.recv().await {
                Some(submission) => submission,
                None => return,
            },
        };
        // Wait for a slot first: submissions arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        if batch[0].mergeable() {
            let mut ops = batch[0].commands.len();
            let mut bytes = batch[0].bytes();
            let merge_until = batch[0].deadline + MERGE_WINDOW;
            while let Ok(next) = submissions.try_recv() {
                let fits = next.mergeable()
                    && next.deadline <= merge_until
                    && ops + next.commands.len() <= max_ops
                    && bytes + next.bytes() <= MAX_BATCH_BYTES;
                if !fits {
                    carried = Some(next);
                    break;
                }
                ops += next.commands.len();
                bytes += next.bytes();
                batch.push(next);
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            execute(&node, batch).await;
            drop(permit);
        });
    }
}

/// Sends one batch to the leader and hands each submission its outcomes, each by its own
/// deadline.
///
/// The batch is one write with one request id, sent (and re-sent under that id by
/// `Node::write`) until the earliest deadline among the submissions still waiting. When that
/// passes:
/// - if no leader was ever handed the write, it was not applied and will not be: the expired
///   submissions are answered `Unavailable` (TRYAGAIN) and the others go on as a new write;
/// - otherwise the write may still be applied: every submission left is answered
///   `Indeterminate` at once (their deadlines are within [`MERGE_WINDOW`]). Nothing of it is sent
///   again: a connection told UNCERTAIN may write the key again, and a re-sent copy landing
///   after that write would undo it.
async fn execute(node: &Node, batch: Vec<Submission>) {
    let mut waiting: Vec<Submission> = batch;
    while !waiting.is_empty() {
        let write = Write::of(node, &mut waiting);
        waiting = write.run(node).await;
    }
}

/// One log write carrying the commands of several submissions, in order.
struct Write {
    request: WriteRequest,
    /// Each submission's command count and, until answered, the submission.
    members: Vec<(usize, Option<Submission>)>,
    /// Whether the request's commands are wrapped in a transaction (more than one).
    wrapped: bool,
}

impl Write {
    /// Takes every submission of `waiting` into one write with a fresh request id.
    fn of(node: &Node, waiting: &mut Vec<Submission>) -> Write {
        let mut members = Vec::with_capacity(waiting.len());
        let mut commands = Vec::new();
        for mut submission in waiting.drain(..) {
            let size = submission.commands.len();
            commands.append(&mut submission.commands);
            members.push((size, Some(submission)));
        }
        let wrapped = commands.len() != 1;
        let command = if wrapped {
            Command::Txn(Box::new(Transaction {
                compares: vec![],
                success: commands,
                failure: vec![],
            }))
        } else {
            commands.pop().expect("one command")
        };
        let request = WriteRequest {
            id: Some(node.next_request_id()),
            stamp: 0,
            command,
        };
        Write {
            request,
            members,
            wrapped,
        }
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(|(_, s)| s.as_ref().map(|s| s.deadline))
            .min()
    }

    /// Answers the members whose deadline has passed with `error`.
    fn expire(&mut self, error: &NodeError) {
        let now = Instant::now();
        for (_, member) in &mut self.members {
            if member.as_ref().is_some_and(|s| s.deadline <= now) {
                let submission = member.take().expect("checked");
                let _ = submission.done.send(Err(error.clone()));
            }
        }
    }

    /// Sends the write until every member is answered; returns the members to send again as a
    /// new write (the write was certainly not applied).
    async fn run(mut self, node: &Node) -> Vec<Submission> {
        let Some(deadline) = self.earliest_deadline() else {
            return Vec::new();
        };
        let error = match node.write(self.request.clone(), deadline).await {
            Ok(reply) => {
                let outcomes = match reply.outcome {
                    Outcome::Txn { outcomes, .. } if self.wrapped => outcomes,
                    other => vec![other],
                };
                let forgotten = outcomes == [Outcome::Forgotten];
                let mut outcomes = outcomes.into_iter();
                for (size, member) in self.members {
                    let mine: Vec<Outcome> = if forgotten {
                        // A retry of the whole batch: every member was applied, none answered.
                        vec![Outcome::Forgotten; size]
                    } else {
                        outcomes.by_ref().take(size).collect()
                    };
                    if let Some(submission) = member {
                        let _ = submission.done.send(Ok((reply.revision, mine)));
                    }
                }
                return Vec::new();
            }
            Err(NodeError::Unavailable(reason)) => {
                self.expire(&NodeError::Unavailable(reason));
                // Not applied, never to be: the rest go out as a new write.
                return self.members.into_iter().filter_map(|(_, s)| s).collect();
            }
            Err(error) => error,
        };
        for submission in self.members.into_iter().filter_map(|(_, s)| s) {
            let _ = submission.done.send(Err(error.clone()));
        }
        Vec::new()
    }
}
