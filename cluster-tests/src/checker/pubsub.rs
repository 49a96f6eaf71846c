//! The pub/sub checker. Pub/sub is at most once and ordered per publisher and channel, and causal
//! (README): within one subscription a message arrives at most once, a publisher's messages in
//! the order they were published, and a causal message only once the subscriber's node has the
//! write made before it. Loss is allowed while faults make it so; a message published while the
//! subscription was open, far from any fault, must arrive.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::history::{Call, Op, Outcome};
use crate::nemesis::FaultRecord;

/// How long a message may be on its way (the mesh drops one it could not relay within 2 s).
const IN_FLIGHT_US: u64 = 2_000_000;
/// How long around a fault losses are put down to it: from a second before it began to five
/// seconds after the cluster recovered (relays reconnect with backoff).
const FAULT_MARGIN_BEFORE_US: u64 = 1_000_000;
const FAULT_MARGIN_AFTER_US: u64 = 5_000_000;
const EXAMPLES: usize = 20;

#[derive(Debug, Default, Serialize)]
pub struct PubsubReport {
    pub published: usize,
    pub subscriptions: usize,
    pub delivered: usize,
    /// Messages a subscription should have received and did not: near a fault (allowed: at
    /// most once) and far from every fault (a violation).
    pub lost_near_faults: u64,
    pub lost_quiet: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub phantom: u64,
    pub causal_checked: u64,
    pub causal_violations: u64,
    /// Causal reads that found no marker, made after the subscriber's node was restarted during
    /// the subscription: the frame may come from the process before, the read was served by the
    /// one after, which may not have re-applied the write yet. Not a violation.
    pub causal_after_restart: u64,
    pub examples: Vec<String>,
}

impl PubsubReport {
    pub fn ran(&self) -> bool {
        self.published > 0
    }

    pub fn holds(&self) -> bool {
        self.lost_quiet == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.phantom == 0
            && self.causal_violations == 0
    }

    fn note(&mut self, example: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }
}

pub fn check(ops: &[Op], faults: &[FaultRecord]) -> PubsubReport {
    let mut report = PubsubReport::default();
    // (publisher, seq) -> the publish, for those that may have happened.
    let mut published: HashMap<(usize, u64), &Op> = HashMap::new();
    for op in ops {
        if let Call::Publish { seq, .. } = op.call {
            if !matches!(op.outcome, Outcome::Fail(_)) {
                published.insert((op.client, seq), op);
            }
            report.published += usize::from(op.is_ok());
        }
    }
    let near_fault = |from: u64, to: u64| {
        faults.iter().any(|f| {
            let end = f.recovered_us.unwrap_or(u64::MAX).max(f.healed_us);
            from < end.saturating_add(FAULT_MARGIN_AFTER_US)
                && to + FAULT_MARGIN_BEFORE_US > f.start_us
        })
    };
    for op in ops {
        let Call::Subscription { messages } = &op.call else {
            continue;
        };
        report.subscriptions += 1;
        report.delivered += messages.len();
        let mut received: HashSet<(usize, u64)> = HashSet::new();
        let mut last: HashMap<usize, u64> = HashMap::new();
        for m in messages {
            let id = (m.publisher, m.seq);
            if !published.contains_key(&id) {
                report.phantom += 1;
                report.note(format!(
                    "subscriber {}: message {}:{} was never published",
                    op.client, m.publisher, m.seq
                ));
            }
            if !received.insert(id) {
                report.duplicated += 1;
                report.note(format!(
                    "subscriber {}: message {}:{} twice",
                    op.client, m.publisher, m.seq
                ));
            }
            let previous = last.entry(m.publisher).or_default();
            if m.seq < *previous {
                report.reordered += 1;
                report.note(format!(
                    "subscriber {}: message {}:{} after {}",
                    op.client, m.publisher, m.seq, previous
                ));
            }
            *previous = (*previous).max(m.seq);
            if let Some(causal) = m.causal {
                report.causal_checked += 1;
                let restarted_meanwhile = faults.iter().any(|f| {
                    f.restarted.contains(&op.node)
                        && f.start_us >= op.invoked_us
                        && f.start_us <= m.checked_us
                });
                if !causal && restarted_meanwhile {
                    report.causal_after_restart += 1;
                } else if !causal {
                    report.causal_violations += 1;
                    report.note(format!(
                        "subscriber {} (node {}): message {}:{} arrived before its write",
                        op.client, op.node, m.publisher, m.seq
                    ));
                }
            }
        }
        // What this subscription should have heard: every acknowledged publish made while it
        // was open, with time to arrive before it ended.
        for (&(publisher, seq), publish) in &published {
            let expected = publish.is_ok()
                && publish.invoked_us >= op.invoked_us
                && publish.completed_us + IN_FLIGHT_US <= op.completed_us;
            if !expected || received.contains(&(publisher, seq)) {
                continue;
            }
            if near_fault(publish.invoked_us, publish.completed_us + IN_FLIGHT_US) {
                report.lost_near_faults += 1;
            } else {
                report.lost_quiet += 1;
                report.note(format!(
                    "subscriber {} (node {}): message {publisher}:{seq} (published at {:.3} s, far from any fault) never arrived",
                    op.client,
                    op.node,
                    publish.invoked_us as f64 / 1e6
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Received;

    fn publish(client: usize, seq: u64, at: u64) -> Op {
        Op {
            client,
            node: 1,
            protocol: "test",
            key: "chaos:bus".into(),
            call: Call::Publish { seq, marked: false },
            outcome: Outcome::Ok,
            invoked_us: at,
            completed_us: at + 1_000,
        }
    }
    fn subscription(messages: &[(usize, u64)], from: u64, to: u64) -> Op {
        Op {
            client: 9,
            node: 2,
            protocol: "test",
            key: "chaos:bus".into(),
            call: Call::Subscription {
                messages: messages
                    .iter()
                    .map(|&(publisher, seq)| Received {
                        publisher,
                        seq,
                        causal: None,
                        checked_us: 0,
                    })
                    .collect(),
            },
            outcome: Outcome::Ok,
            invoked_us: from,
            completed_us: to,
        }
    }
    fn fault(start: u64, healed: u64) -> FaultRecord {
        restart_of(1, start, healed)
    }
    fn restart_of(node: u64, start: u64, healed: u64) -> FaultRecord {
        FaultRecord {
            kind: "kill",
            description: String::new(),
            start_us: start,
            healed_us: healed,
            recovered_us: Some(healed),
            restarted: vec![node],
        }
    }

    #[test]
    fn every_message_once_and_in_order_passes() {
        let ops = vec![
            publish(1, 1, 1_000_000),
            publish(1, 2, 2_000_000),
            subscription(&[(1, 1), (1, 2)], 0, 10_000_000),
        ];
        let report = check(&ops, &[]);
        assert!(report.holds(), "{report:?}");
        assert_eq!(report.delivered, 2);
    }

    #[test]
    fn repeats_reordering_and_phantoms_are_violations() {
        let ops = vec![
            publish(1, 1, 1_000_000),
            publish(1, 2, 2_000_000),
            subscription(&[(1, 2), (1, 1), (1, 1), (3, 7)], 0, 10_000_000),
        ];
        let report = check(&ops, &[]);
        assert_eq!(report.reordered, 2, "{report:?}");
        assert_eq!(report.duplicated, 1, "{report:?}");
        assert_eq!(report.phantom, 1, "{report:?}");
    }

    #[test]
    fn a_loss_is_a_violation_only_far_from_faults() {
        let ops = vec![
            publish(1, 1, 1_000_000),
            publish(1, 2, 20_000_000),
            subscription(&[], 0, 40_000_000),
        ];
        let report = check(&ops, &[fault(500_000, 3_000_000)]);
        assert_eq!(report.lost_near_faults, 1, "{report:?}");
        assert_eq!(report.lost_quiet, 1, "{report:?}");
        assert!(!report.holds());
        // A message published before the subscription began, or too late to arrive, is not
        // expected.
        let ops = vec![
            publish(1, 1, 1_000_000),
            publish(1, 2, 9_500_000),
            subscription(&[], 2_000_000, 10_000_000),
        ];
        assert!(check(&ops, &[]).holds());
    }

    #[test]
    fn a_message_delivered_before_its_write_is_a_causal_violation() {
        let mut sub = subscription(&[(1, 1)], 0, 10_000_000);
        if let Call::Subscription { messages } = &mut sub.call {
            messages[0].causal = Some(false);
        }
        let report = check(&[publish(1, 1, 1_000_000), sub], &[]);
        assert_eq!(report.causal_violations, 1);
    }

    /// A frame read after the subscriber's node was killed came from the process before; the
    /// causal read was served by the one after, which may not have re-applied the marker yet.
    #[test]
    fn a_causal_miss_read_after_the_subscribers_node_restarted_is_not_a_violation() {
        let missed_at = |checked_us: u64| {
            let mut sub = subscription(&[(1, 1)], 0, 10_000_000);
            if let Call::Subscription { messages } = &mut sub.call {
                messages[0].causal = Some(false);
                messages[0].checked_us = checked_us;
            }
            sub
        };
        // The subscriber is on node 2, restarted at 4 s.
        let restart = [restart_of(2, 4_000_000, 5_000_000)];
        let report = check(&[publish(1, 1, 1_000_000), missed_at(6_000_000)], &restart);
        assert_eq!(report.causal_violations, 0, "{report:?}");
        assert_eq!(report.causal_after_restart, 1, "{report:?}");
        // Read before the restart, or with another node restarted: a violation.
        let report = check(&[publish(1, 1, 1_000_000), missed_at(3_000_000)], &restart);
        assert_eq!(report.causal_violations, 1, "{report:?}");
        let other = [restart_of(3, 4_000_000, 5_000_000)];
        let report = check(&[publish(1, 1, 1_000_000), missed_at(6_000_000)], &other);
        assert_eq!(report.causal_violations, 1, "{report:?}");
    }
}
