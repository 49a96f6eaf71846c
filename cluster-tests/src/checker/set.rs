//! The set checker: every element whose add was acknowledged is present in the final read, and
//! nothing is present that no client tried to add.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Call, Op, Outcome};

#[derive(Debug, Default, Serialize)]
pub struct SetReport {
    /// Adds acknowledged, over every set.
    pub acknowledged: usize,
    /// Adds whose outcome is unknown, and how many of them are present.
    pub unknown: usize,
    pub unknown_present: usize,
    /// Acknowledged adds missing from the final read (`set/element`).
    pub lost: Vec<String>,
    /// Elements present that were never added, or whose add certainly failed.
    pub unexpected: Vec<String>,
}

impl SetReport {
    pub fn holds(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty()
    }
}

/// Checks the adds of `ops` against `finals`, the final read of each set.
pub fn check(ops: &[Op], finals: &BTreeMap<String, BTreeSet<String>>) -> SetReport {
    let mut report = SetReport::default();
    // Per set: element -> whether some add of it may have happened.
    let mut attempted: BTreeMap<&str, BTreeMap<&str, bool>> = BTreeMap::new();
    for op in ops {
        let Call::Add { element } = &op.call else {
            continue;
        };
        let present = finals.get(&op.key).is_some_and(|s| s.contains(element));
        let may_have = !matches!(op.outcome, Outcome::Fail(_));
        *attempted
            .entry(&op.key)
            .or_default()
            .entry(element)
            .or_default() |= may_have;
        match op.outcome {
            Outcome::Ok => {
                report.acknowledged += 1;
                if !present {
                    report.lost.push(format!("{}/{element}", op.key));
                }
            }
            Outcome::Unknown(_) => {
                report.unknown += 1;
                report.unknown_present += usize::from(present);
            }
            Outcome::Fail(_) => {}
        }
    }
    for (key, elements) in finals {
        for element in elements {
            let may_have = attempted
                .get(key.as_str())
                .and_then(|s| s.get(element.as_str()))
                .copied()
                .unwrap_or(false);
            if !may_have {
                report.unexpected.push(format!("{key}/{element}"));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(element: &str, outcome: Outcome) -> Op {
        Op {
            client: 1,
            node: 1,
            protocol: "test",
            key: "s".into(),
            call: Call::Add {
                element: element.into(),
            },
            outcome,
            invoked_us: 0,
            completed_us: 1,
        }
    }

    fn finals(elements: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        let set = elements.iter().map(|e| e.to_string()).collect();
        BTreeMap::from([("s".to_string(), set)])
    }

    #[test]
    fn an_acknowledged_add_missing_at_the_end_is_lost() {
        let ops = vec![add("a", Outcome::Ok), add("b", Outcome::Ok)];
        let report = check(&ops, &finals(&["a"]));
        assert_eq!(report.lost, vec!["s/b"]);
        assert!(!report.holds());
    }

    #[test]
    fn an_element_never_added_or_whose_add_failed_is_unexpected() {
        let ops = vec![add("a", Outcome::Ok), add("b", Outcome::Fail("no".into()))];
        let report = check(&ops, &finals(&["a", "b", "c"]));
        assert_eq!(report.unexpected, vec!["s/b", "s/c"]);
    }

    #[test]
    fn an_unknown_add_may_be_present_or_not() {
        let ops = vec![
            add("a", Outcome::Unknown("timeout".into())),
            add("b", Outcome::Unknown("timeout".into())),
        ];
        let report = check(&ops, &finals(&["a"]));
        assert!(report.holds());
        assert_eq!((report.unknown, report.unknown_present), (2, 1));
    }
}
