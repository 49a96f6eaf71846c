//! A linearizability checker for registers: the Wing-Gong search with Lowe's memoisation (as
//! Porcupine implements it), one key at a time (a register's history is linearizable exactly
//! when each key's is, because keys are independent objects).
//!
//! - `Ok` operations must take effect once, between their invocation and their completion.
//! - `Fail` operations certainly did not happen and are left out.
//! - `Unknown` writes and compare-and-sets may have happened at any time after their
//!   invocation, or never: their completion is at infinity, and the search succeeds once every
//!   `Ok` operation is placed. `Unknown` reads tell nothing and are left out.
//! - An `Unknown` write (or compare-and-set) of a value that no operation reads or compares
//!   against is left out too. Placing it is never needed: after it, until the next write, only
//!   operations that accept its value could be placed, and there are none (a compare-and-set
//!   that found another value is `Fail` and left out). Every operation of unknown outcome is
//!   concurrent with all that follow it, so without this a long run's timeouts (thousands on a
//!   key in ten minutes of faults) put the search out of budget.
//!
//! A history that is not linearizable is cut down to a small failing sub-history (the shortest
//! failing prefix, then every operation whose removal keeps it failing) for the report.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Call, Op, Outcome};

/// The most search steps spent on one key before the verdict is "unknown".
const STEP_BUDGET: u64 = 20_000_000;
/// How long the search for a small failing sub-history may take.
const MINIMISE_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// The verdict on one history.
#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    /// Key `key` is not linearizable; `witness` is a small failing sub-history of it.
    Violation {
        key: String,
        witness: Vec<Op>,
    },
    /// The search ran out of budget on `key`.
    Unknown {
        key: String,
    },
}

impl Verdict {
    pub fn holds(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks every key's register history.
pub fn check(ops: &[Op]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        if matches!(
            op.call,
            Call::Read { .. } | Call::Write { .. } | Call::Cas { .. }
        ) {
            by_key.entry(&op.key).or_default().push(op.clone());
        }
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match search(&ops) {
            Search::Linearizable => {}
            Search::OutOfBudget => unknown = Some(key.to_string()),
            Search::Violation => {
                return Verdict::Violation {
                    key: key.to_string(),
                    witness: minimise(ops),
                }
            }
        }
    }
    match unknown {
        Some(key) => Verdict::Unknown { key },
        None => Verdict::Linearizable,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Search {
    Linearizable,
    Violation,
    OutOfBudget,
}

/// A register operation with its values interned.
#[derive(Clone, Copy)]
enum Step {
    Read(Option<u32>),
    Write(u32),
    Cas(u32, u32),
}

impl Step {
    /// The register after this step from `state`, if the step is allowed there.
    fn apply(self, state: Option<u32>) -> Option<Option<u32>> {
        match self {
            Step::Read(value) => (state == value).then_some(state),
            Step::Write(value) => Some(Some(value)),
            Step::Cas(old, new) => (state == Some(old)).then_some(Some(new)),
        }
    }
}

/// One end of an operation in time.
struct Event {
    op: usize,
    call: bool,
    /// For a call: the index of its return event.
    matched: usize,
}

fn search<'a>(ops: &'a [Op]) -> Search {
    let mut values: HashMap<&str, u32> = HashMap::new();
    let mut intern = |v: &'a str| {
        let next = values.len() as u32;
        *values.entry(v).or_insert(next)
    };
    // (step, invoked, completed, ends at infinity)
    let mut kept = Vec::new();
    for op in ops {
        let step = match (&op.call, &op.outcome) {
            (_, Outcome::Fail(_)) => continue,
            (Call::Read { .. }, Outcome::Unknown(_)) => continue,
            (Call::Read { value }, _) => Step::Read(value.as_deref().map(&mut intern)),
            (Call::Write { value }, _) => Step::Write(intern(value)),
            (Call::Cas { old, new }, _) => Step::Cas(intern(old), intern(new)),
            _ => continue,
        };
        let open = matches!(op.outcome, Outcome::Unknown(_));
        let completed = if open { u64::MAX } else { op.completed_us };
        kept.push((step, op.invoked_us, completed));
    }
    let observed: HashSet<u32> = kept
        .iter()
        .filter_map(|(step, _, _)| match step {
            Step::Read(value) => *value,
            Step::Cas(old, _) => Some(*old),
            Step::Write(_) => None,
        })
        .collect();
    kept.retain(|(step, _, completed)| match step {
        Step::Write(value) | Step::Cas(_, value) if *completed == u64::MAX => {
            observed.contains(value)
        }
        _ => true,
    });
    if kept.is_empty() {
        return Search::Linearizable;
    }

    // Events in time order; at equal times calls come first (the operations overlap).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(kept.len() * 2);
    for (i, (_, invoked, completed)) in kept.iter().enumerate() {
        order.push((*invoked, false, i));
        order.push((*completed, true, i));
    }
    order.sort();
    let mut events: Vec<Event> = Vec::with_capacity(order.len());
    let mut return_of = vec![0; kept.len()];
    for (position, (_, is_return, op)) in order.iter().enumerate() {
        if *is_return {
            return_of[*op] = position;
        }
        events.push(Event {
            op: *op,
            call: !is_return,
            matched: 0,
        });
    }
    for event in &mut events {
        if event.call {
            event.matched = return_of[event.op];
        }
    }

    // A doubly linked list over the events, with a head sentinel at index n.
    let n = events.len();
    const NIL: usize = usize::MAX;
    let head = n;
    let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NIL } else { i }).collect();
    next.push(0);
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { head } else { i - 1 }).collect();
    prev.push(NIL);
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, q) = (prev[i], next[i]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, q) = (prev[i], next[i]);
        next[p] = i;
        if q != NIL {
            prev[q] = i;
        }
    };

    let mut state: Option<u32> = None;
    // The memo of (operations placed, register value) already explored. The set of operations
    // is kept as a 128-bit Zobrist hash (the XOR of a random key per operation), not the bitset
    // itself: a cache of bitsets grows with the square of the history (an 800,000-operation
    // run took 23 GB), this one linearly. A false "seen" needs a 128-bit collision.
    let zobrist: Vec<u128> = (0..kept.len() as u64).map(zobrist_key).collect();
    let mut placed_hash: u128 = 0;
    let mut cache: HashSet<(u128, Option<u32>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != NIL {
        steps += 1;
        if steps > STEP_BUDGET {
            return Search::OutOfBudget;
        }
        let event = &events[entry];
        if event.call {
            let op = event.op;
            if let Some(after) = kept[op].0.apply(state) {
                let candidate = placed_hash ^ zobrist[op];
                if cache.insert((candidate, after)) {
                    stack.push((entry, state));
                    state = after;
                    placed_hash = candidate;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, event.matched);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
            // (Every call's completion follows it in the list, so this is only a safeguard.)
            if entry != NIL {
                continue;
            }
        } else if kept[event.op].2 == u64::MAX {
            // The earliest completion of an operation not yet placed is at infinity: only
            // operations of unknown outcome are left, and they may never have happened.
            return Search::Linearizable;
        }
        // An operation completes unplaced, or nothing is left to try: undo the last placement.
        let Some((call, before)) = stack.pop() else {
            return Search::Violation;
        };
        let op = events[call].op;
        state = before;
        placed_hash ^= zobrist[op];
        relink(&mut next, &mut prev, events[call].matched);
        relink(&mut next, &mut prev, call);
        entry = next[call];
    }
    Search::Linearizable
}

/// A random 128-bit key for operation `i` (SplitMix64, twice).
fn zobrist_key(i: u64) -> u128 {
    let mut rng = crate::rng::Rng::new(i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
    (u128::from(rng.next()) << 64) | u128::from(rng.next())
}

/// A small failing sub-history of `ops` (which fails): the shortest failing prefix by
/// invocation, then chunks of operations, halving in size down to one, left out while the rest
/// still fails. A write whose value a remaining operation reads (or compares) is kept, so the
/// witness shows where each value came from.
fn minimise(mut ops: Vec<Op>) -> Vec<Op> {
    ops.sort_by_key(|op| op.invoked_us);
    let fails = |ops: &[Op]| search(ops) == Search::Violation;
    let (mut low, mut high) = (1, ops.len());
    while low < high {
        let mid = (low + high) / 2;
        if fails(&ops[..mid]) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    ops.truncate(high);
    let started = std::time::Instant::now();
    let mut chunk = ops.len().div_ceil(2);
    while chunk >= 1 && started.elapsed() < MINIMISE_WITHIN {
        let mut start = 0;
        while start < ops.len() && started.elapsed() < MINIMISE_WITHIN {
            let end = (start + chunk).min(ops.len());
            let without: Vec<Op> = ops[..start].iter().chain(&ops[end..]).cloned().collect();
            let needed = ops[start..end]
                .iter()
                .any(|op| written(op).is_some_and(|v| read_by(&without, v)));
            if !needed && fails(&without) {
                ops = without;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    ops
}

/// The value an operation writes.
fn written(op: &Op) -> Option<&str> {
    match &op.call {
        Call::Write { value } | Call::Cas { new: value, .. } => Some(value),
        _ => None,
    }
}

/// Whether an operation of `ops` reads or compares against `value`.
fn read_by(ops: &[Op], value: &str) -> bool {
    ops.iter().any(|op| match &op.call {
        Call::Read { value: Some(v) } | Call::Cas { old: v, .. } => v == value,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, outcome: Outcome, invoked: u64, completed: u64) -> Op {
        Op {
            client,
            node: 1,
            protocol: "test",
            key: "r".into(),
            call,
            outcome,
            invoked_us: invoked,
            completed_us: completed,
        }
    }
    fn write(v: &str) -> Call {
        Call::Write { value: v.into() }
    }
    fn read(v: Option<&str>) -> Call {
        Call::Read {
            value: v.map(str::to_string),
        }
    }
    fn cas(old: &str, new: &str) -> Call {
        Call::Cas {
            old: old.into(),
            new: new.into(),
        }
    }
    const OK: Outcome = Outcome::Ok;
    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".into())
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        let ops = vec![
            op(1, write("a"), OK, 0, 10),
            op(2, write("b"), OK, 1, 11),
            op(3, read(Some("a")), OK, 12, 13),
        ];
        assert!(check(&ops).holds());
    }

    #[test]
    fn a_read_of_a_value_overwritten_before_it_began_is_a_violation() {
        let ops = vec![
            op(1, write("a"), OK, 0, 1),
            op(1, write("b"), OK, 2, 3),
            op(2, read(Some("a")), OK, 4, 5),
        ];
        let Verdict::Violation { key, witness } = check(&ops) else {
            panic!("a stale read passed")
        };
        assert_eq!(key, "r");
        assert_eq!(witness.len(), 3, "every operation is needed: {witness:?}");
    }

    #[test]
    fn a_read_of_nothing_after_an_acknowledged_write_is_a_violation() {
        let ops = vec![op(1, write("a"), OK, 0, 1), op(2, read(None), OK, 2, 3)];
        assert!(!check(&ops).holds());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let late = vec![
            op(1, write("a"), OK, 0, 1),
            op(2, write("b"), unknown(), 2, 3),
            op(3, read(Some("a")), OK, 4, 5),
            op(3, read(Some("b")), OK, 100, 101),
        ];
        assert!(check(&late).holds());
        let never = vec![
            op(1, write("a"), OK, 0, 1),
            op(2, write("b"), unknown(), 2, 3),
            op(3, read(Some("a")), OK, 100, 101),
        ];
        assert!(check(&never).holds());
    }

    #[test]
    fn thousands_of_unknown_writes_nobody_read_do_not_exhaust_the_search() {
        // A register under a long partition: every other write times out and is never read;
        // the acknowledged ones are read back. Each unknown write stays open to the end.
        let mut ops = Vec::new();
        let mut t = 0;
        for i in 0..5_000 {
            ops.push(op(1, write(&format!("lost{i}")), unknown(), t, t + 1));
            ops.push(op(2, write(&format!("v{i}")), OK, t + 2, t + 3));
            ops.push(op(3, read(Some(&format!("v{i}"))), OK, t + 4, t + 5));
            t += 6;
        }
        assert!(check(&ops).holds(), "{:?}", check(&ops));
        // One that was read is still placed where it can be: here, nowhere after its invocation.
        ops.push(op(4, read(Some("lost10")), OK, 1, 2));
        assert!(!check(&ops).holds());
    }

    #[test]
    fn a_value_seen_before_its_write_was_invoked_is_a_violation() {
        let ops = vec![
            op(1, read(Some("b")), OK, 0, 1),
            op(2, write("b"), unknown(), 2, 3),
        ];
        assert!(!check(&ops).holds());
    }

    #[test]
    fn compare_and_set_succeeds_only_from_its_old_value() {
        let good = vec![
            op(1, write("a"), OK, 0, 1),
            op(2, cas("a", "b"), OK, 2, 3),
            op(3, read(Some("b")), OK, 4, 5),
        ];
        assert!(check(&good).holds());
        let bad = vec![
            op(1, write("a"), OK, 0, 1),
            op(1, write("c"), OK, 2, 3),
            op(2, cas("a", "b"), OK, 4, 5),
        ];
        assert!(!check(&bad).holds());
    }

    #[test]
    fn failed_operations_are_left_out() {
        let ops = vec![
            op(1, write("a"), OK, 0, 1),
            op(2, write("b"), Outcome::Fail("refused".into()), 2, 3),
            op(3, read(Some("a")), OK, 4, 5),
        ];
        assert!(check(&ops).holds());
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut other = op(2, read(None), OK, 2, 3);
        other.key = "s".into();
        let ops = vec![op(1, write("a"), OK, 0, 1), other];
        assert!(check(&ops).holds());
    }

    #[test]
    fn a_long_history_with_one_stale_read_is_cut_down_to_a_few_operations() {
        let mut ops = Vec::new();
        let mut t = 0;
        for i in 0..300 {
            ops.push(op(1, write(&format!("v{i}")), OK, t, t + 1));
            ops.push(op(2, read(Some(&format!("v{i}"))), OK, t + 2, t + 3));
            t += 4;
        }
        // A read of v10 long after v11 was written.
        ops.push(op(3, read(Some("v10")), OK, t, t + 1));
        let Verdict::Violation { witness, .. } = check(&ops) else {
            panic!("the stale read passed")
        };
        assert!(witness.len() <= 4, "witness of {} ops", witness.len());
    }
}
