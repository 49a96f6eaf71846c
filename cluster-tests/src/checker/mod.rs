//! Checkers: each reads a history (and, for sets and counters, the final state read after the
//! faults healed) and says whether the system kept its promises.

pub mod counter;
pub mod linearizable;
pub mod locks;
pub mod pubsub;
pub mod set;
pub mod watch;
