//! The lock and lease checker: every acquisition got a token of its own (two holders at once
//! would share one), fenced writes that succeeded never go back to an older token in revision
//! order (a holder whose lock moved on was refused), and every lease kept alive survived.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Call, Op, Outcome};

#[derive(Debug, Default, Serialize)]
pub struct LockReport {
    pub acquisitions: usize,
    pub fenced_ok: usize,
    pub fenced_refused: usize,
    /// Tokens handed to more than one client.
    pub shared_tokens: Vec<u64>,
    /// Fenced writes that succeeded after a write with a newer token: "token@revision".
    pub stale_fenced: Vec<String>,
    pub leases_checked: usize,
    /// Clients whose kept lease (or its key) was gone after the faults.
    pub leases_lost: Vec<usize>,
}

impl LockReport {
    pub fn holds(&self) -> bool {
        self.shared_tokens.is_empty() && self.stale_fenced.is_empty() && self.leases_lost.is_empty()
    }
}

pub fn check(ops: &[Op]) -> LockReport {
    let mut report = LockReport::default();
    // Token -> the clients it was handed to (an owner that takes its own lock again gets its
    // current token back: one client, one holder).
    let mut holders: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    let mut fenced = Vec::new();
    for op in ops {
        match (&op.call, &op.outcome) {
            (Call::Acquire { token }, Outcome::Ok) => {
                report.acquisitions += 1;
                holders.entry(*token).or_default().insert(op.client);
            }
            (Call::Fenced { token, revision }, Outcome::Ok) => {
                report.fenced_ok += 1;
                fenced.push((*revision, *token));
            }
            (Call::Fenced { .. }, Outcome::Fail(_)) => report.fenced_refused += 1,
            (Call::LeaseKept { alive }, _) => {
                report.leases_checked += 1;
                if !alive {
                    report.leases_lost.push(op.client);
                }
            }
            _ => {}
        }
    }
    report.shared_tokens = holders
        .into_iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(t, _)| t)
        .collect();
    fenced.sort();
    let mut newest = 0;
    for (revision, token) in fenced {
        if token < newest {
            report.stale_fenced.push(format!("{token}@{revision}"));
        }
        newest = newest.max(token);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, outcome: Outcome) -> Op {
        Op {
            client,
            node: 1,
            protocol: "grpc",
            key: "chaos".into(),
            call,
            outcome,
            invoked_us: 0,
            completed_us: 1,
        }
    }

    #[test]
    fn a_fenced_write_with_an_older_token_after_a_newer_one_is_stale() {
        let ops = vec![
            op(
                1,
                Call::Fenced {
                    token: 10,
                    revision: 12,
                },
                Outcome::Ok,
            ),
            op(
                2,
                Call::Fenced {
                    token: 20,
                    revision: 21,
                },
                Outcome::Ok,
            ),
            op(
                1,
                Call::Fenced {
                    token: 10,
                    revision: 25,
                },
                Outcome::Ok,
            ),
        ];
        assert_eq!(check(&ops).stale_fenced, vec!["10@25"]);
        let refused = vec![
            op(
                2,
                Call::Fenced {
                    token: 20,
                    revision: 21,
                },
                Outcome::Ok,
            ),
            op(
                1,
                Call::Fenced {
                    token: 10,
                    revision: 25,
                },
                Outcome::Fail("refused".into()),
            ),
        ];
        assert!(check(&refused).holds());
    }

    #[test]
    fn one_client_taking_its_own_lock_again_is_one_holder() {
        let ops = vec![
            op(1, Call::Acquire { token: 7 }, Outcome::Ok),
            op(1, Call::Acquire { token: 7 }, Outcome::Ok),
        ];
        assert!(check(&ops).holds());
    }

    #[test]
    fn one_token_for_two_clients_means_two_holders() {
        let ops = vec![
            op(1, Call::Acquire { token: 7 }, Outcome::Ok),
            op(2, Call::Acquire { token: 7 }, Outcome::Ok),
        ];
        assert_eq!(check(&ops).shared_tokens, vec![7]);
    }

    #[test]
    fn a_kept_lease_gone_after_the_faults_is_reported() {
        let ops = vec![
            op(3, Call::LeaseKept { alive: true }, Outcome::Ok),
            op(4, Call::LeaseKept { alive: false }, Outcome::Ok),
        ];
        assert_eq!(check(&ops).leases_lost, vec![4]);
    }
}
