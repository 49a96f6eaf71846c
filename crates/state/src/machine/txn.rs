//! Transactions: comparisons against the state as of the entry, then one branch of writes, all at
//! one revision.

use super::Machine;
use crate::command::{Check, CmpOp, Compare, Transaction};
use crate::{Millis, Outcome, Record, Revision, Value};

impl Machine {
    pub(super) fn transaction(
        &mut self,
        index: Revision,
        now: Millis,
        txn: &Transaction,
    ) -> Outcome {
        let succeeded = txn.compares.iter().all(|c| self.holds(c, now));
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let outcomes = branch
            .iter()
            .map(|command| self.execute(index, now, command))
            .collect();
        Outcome::Txn {
            succeeded,
            outcomes,
        }
    }

    /// Whether one comparison holds. A key past its deadline counts as absent.
    fn holds(&self, compare: &Compare, now: Millis) -> bool {
        let record = self.record(&compare.key, now);
        match &compare.check {
            Check::Exists(wanted) => {
                let exists = match (&compare.field, record) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(field), Some(r)) => field_value(r, field).is_some(),
                };
                exists == *wanted
            }
            Check::Value(op, expected) => {
                let actual = match (&compare.field, record) {
                    (_, None) => None,
                    (None, Some(r)) => match &r.value {
                        Value::String(v) => Some(v.as_slice()),
                        _ => None,
                    },
                    (Some(field), Some(r)) => field_value(r, field),
                };
                match actual {
                    Some(actual) => op.holds(actual, expected.as_slice()),
                    None => *op == CmpOp::NotEqual,
                }
            }
            Check::Modified(op, revision) => op.holds(&record.map_or(0, |r| r.modified), revision),
            Check::Created(op, revision) => op.holds(&record.map_or(0, |r| r.created), revision),
            Check::UnchangedSince(since) => {
                let modified = self.keys.get(&compare.key).map_or(0, |r| r.modified);
                modified <= *since
                    && self.history.touched_since(&compare.key, *since) == Some(false)
            }
        }
    }
}

/// The value of a hash field, or an empty value for a set member that is present.
fn field_value<'a>(record: &'a Record, field: &[u8]) -> Option<&'a [u8]> {
    let field = serde_bytes::Bytes::new(field);
    match &record.value {
        Value::Hash(map) => map.get(field).map(|v| v.as_slice()),
        Value::Set(set) => set.contains(field).then_some(&[][..]),
        Value::String(_) => None,
    }
}
