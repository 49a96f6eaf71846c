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
use std::time::Instant;

use conclave_consensus::{Node, NodeError};
use conclave_state::{Command, Limits, Outcome, Revision, Transaction, WriteRequest};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Batches in flight at once per node: while they wait for the leader, the next batch fills.
const MAX_IN_FLIGHT: usize = 4;
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
            while let Ok(next) = submissions.try_recv() {
                let fits = next.mergeable()
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

/// Sends one batch to the leader and hands each submission its outcomes.
async fn execute(node: &Node, batch: Vec<Submission>) {
    let deadline = batch
        .iter()
        .map(|s| s.deadline)
        .min()
        .expect("a batch is never empty");
    let sizes: Vec<usize> = batch.iter().map(|s| s.commands.len()).collect();
    let mut replies = Vec::with_capacity(batch.len());
    let mut commands = Vec::with_capacity(sizes.iter().sum());
    for submission in batch {
        commands.extend(submission.commands);
        replies.push(submission.done);
    }
    let single = commands.len() == 1;
    let command = if single {
        commands.pop().expect("one command")
    } else {
        Command::Txn(Box::new(Transaction {
            compares: vec![],
            success: commands,
            failure: vec![],
        }))
    };
    let request = WriteRequest {
        id: None,
        stamp: 0,
        command,
    };
    let answer = node.write(request, deadline).await.map(|reply| {
        let outcomes = match reply.outcome {
            Outcome::Txn { outcomes, .. } if !single => outcomes,
            other => vec![other],
        };
        (reply.revision, outcomes)
    });
    match answer {
        Ok((revision, outcomes)) => {
            let mut outcomes = outcomes.into_iter();
            for (done, size) in replies.into_iter().zip(sizes) {
                let mine = outcomes.by_ref().take(size).collect();
                let _ = done.send(Ok((revision, mine)));
            }
        }
        Err(error) => {
            for done in replies {
                let _ = done.send(Err(error.clone()));
            }
        }
    }
}
