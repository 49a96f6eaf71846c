//! The counter checker: each client increments a counter of its own, retrying `TRYAGAIN` as
//! go-redis does. The final value must lie between the increments acknowledged and those
//! acknowledged plus those of unknown outcome: above it a retry applied twice (a duplicate),
//! below it an acknowledged increment was lost.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Call, Op, Outcome};

#[derive(Debug, Default, Serialize)]
pub struct CounterReport {
    pub counters: BTreeMap<String, CounterFigures>,
    pub lost: u64,
    pub duplicated: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct CounterFigures {
    pub acknowledged: u64,
    pub unknown: u64,
    pub final_value: u64,
}

impl CounterReport {
    pub fn holds(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

/// Checks the increments of `ops` against `finals`, each counter's final value.
pub fn check(ops: &[Op], finals: &BTreeMap<String, u64>) -> CounterReport {
    let mut report = CounterReport::default();
    for op in ops.iter().filter(|op| op.call == Call::Incr) {
        let figures = report.counters.entry(op.key.clone()).or_default();
        match op.outcome {
            Outcome::Ok => figures.acknowledged += 1,
            Outcome::Unknown(_) => figures.unknown += 1,
            Outcome::Fail(_) => {}
        }
    }
    for (key, figures) in &mut report.counters {
        figures.final_value = finals.get(key).copied().unwrap_or(0);
        report.lost += figures.acknowledged.saturating_sub(figures.final_value);
        report.duplicated += figures
            .final_value
            .saturating_sub(figures.acknowledged + figures.unknown);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(outcome: Outcome) -> Op {
        Op {
            client: 1,
            node: 1,
            protocol: "resp",
            key: "c".into(),
            call: Call::Incr,
            outcome,
            invoked_us: 0,
            completed_us: 1,
        }
    }

    #[test]
    fn a_final_value_above_every_possible_increment_counts_duplicates() {
        let ops = vec![incr(Outcome::Ok), incr(Outcome::Ok)];
        let report = check(&ops, &BTreeMap::from([("c".to_string(), 3)]));
        assert_eq!((report.lost, report.duplicated), (0, 1));
    }

    #[test]
    fn a_final_value_below_the_acknowledged_increments_counts_losses() {
        let ops = vec![incr(Outcome::Ok), incr(Outcome::Ok)];
        let report = check(&ops, &BTreeMap::from([("c".to_string(), 1)]));
        assert_eq!((report.lost, report.duplicated), (1, 0));
    }

    #[test]
    fn unknown_increments_may_or_may_not_count() {
        let ops = vec![incr(Outcome::Ok), incr(Outcome::Unknown("lost".into()))];
        for value in [1, 2] {
            let report = check(&ops, &BTreeMap::from([("c".to_string(), value)]));
            assert!(report.holds(), "final value {value}");
        }
    }
}
