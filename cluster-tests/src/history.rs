//! Histories: every operation a client invoked, with what came of it and when.
//!
//! An operation ends in one of three ways, as Jepsen records them: `Ok` (it happened, with this
//! result), `Fail` (it certainly did not happen) or `Unknown` (the client cannot tell: a lost
//! connection, a timeout, an error that does not say). Checkers treat `Unknown` writes as
//! may-have-happened, at any time after their invocation.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// What an operation did, as the register, set and counter models see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    /// Read a register: the value seen (None: absent).
    Read { value: Option<String> },
    /// Set a register.
    Write { value: String },
    /// Set a register to `new` if it holds `old`.
    Cas { old: String, new: String },
    /// Add a unique element to a set (or a field to a hash).
    Add { element: String },
    /// Increment a counter by one (retried by the client on TRYAGAIN).
    Incr,
    /// Acquire a lock: the fencing token got (0 when none).
    Acquire { token: u64 },
    /// A write fenced by a lock's token, and the revision it was answered at.
    Fenced { token: u64, revision: u64 },
    /// After the faults: whether a lease kept alive all along (and its key) still exists.
    LeaseKept { alive: bool },
    /// Put a new field of a watched hash (its value starts with the field's name), answered at
    /// `revision` (0 when the reply does not say: RESP).
    Put { field: String, revision: u64 },
    /// One watcher's stream, from revision `start`: every event through `through` delivered,
    /// these in the order received.
    Watch {
        start: u64,
        through: u64,
        events: Vec<Seen>,
        /// Whether it caught up with the last acknowledged write after the faults.
        caught_up: bool,
    },
    /// Publish message `seq` of this client on the chaos channel; `marked`: the client's write
    /// of `seq` to its marker key was acknowledged just before (a causal message).
    Publish { seq: u64, marked: bool },
    /// One subscription, from confirmed to ended: the messages in the order received.
    Subscription { messages: Vec<Received> },
}

/// A watch event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub revision: u64,
    pub key: String,
    pub field: String,
    /// What the value starts with (up to its `|`): the field's name when intact.
    pub tag: String,
}

/// A pub/sub message as a subscriber received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Received {
    pub publisher: usize,
    pub seq: u64,
    /// For a causal message: whether the subscriber's node, read locally on receipt, already
    /// had the publisher's marker write (None: not read, or the read failed).
    pub causal: Option<bool>,
    /// When that read completed (microseconds since the run began; 0: not read).
    pub checked_us: u64,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Fail(String),
    Unknown(String),
}

/// One operation of one client.
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    /// The client (one connection or SDK session) that ran it.
    pub client: usize,
    /// The node the client talks to.
    pub node: u64,
    /// How it reached the node: "resp" or "grpc".
    pub protocol: &'static str,
    /// The key (register, set or counter) it concerns.
    pub key: String,
    pub call: Call,
    pub outcome: Outcome,
    /// Microseconds since the run began.
    pub invoked_us: u64,
    pub completed_us: u64,
}

impl Op {
    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// The shared recorder of a run; cheap to clone.
#[derive(Clone)]
pub struct History {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

/// An operation invoked and not yet recorded.
pub struct Pending {
    pub client: usize,
    pub node: u64,
    pub protocol: &'static str,
    pub key: String,
    invoked_us: u64,
}

impl History {
    pub fn new(start: Instant) -> History {
        History {
            start,
            ops: Arc::default(),
        }
    }

    /// Microseconds since the run began.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Notes the invocation of an operation.
    pub fn invoke(&self, client: usize, node: u64, protocol: &'static str, key: &str) -> Pending {
        Pending {
            client,
            node,
            protocol,
            key: key.to_string(),
            invoked_us: self.now_us(),
        }
    }

    /// Records how an invoked operation ended.
    pub fn complete(&self, pending: Pending, call: Call, outcome: Outcome) {
        let op = Op {
            client: pending.client,
            node: pending.node,
            protocol: pending.protocol,
            key: pending.key,
            call,
            outcome,
            invoked_us: pending.invoked_us,
            completed_us: self.now_us(),
        };
        self.ops.lock().expect("history lock").push(op);
    }

    /// Every operation recorded so far, in completion order.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock").clone()
    }
}
