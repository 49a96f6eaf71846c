//! The run's report: every checker's verdict, operation counts and, per kind of fault, the
//! unavailability window (from the fault to the first write acknowledged after it began).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::checker::counter::CounterReport;
use crate::checker::linearizable::{self, Verdict};
use crate::checker::locks::LockReport;
use crate::checker::pubsub::PubsubReport;
use crate::checker::set::SetReport;
use crate::checker::watch::WatchReport;
use crate::history::{Call, Op, Outcome};
use crate::nemesis::FaultRecord;
use crate::workload::{Finals, ReadLevel};

#[derive(Serialize)]
pub struct Report {
    seed: u64,
    consistency: &'static str,
    ops: OpCounts,
    /// Register workload: "linearizable", "violation on KEY" or "unknown (search budget) on KEY".
    registers: String,
    #[serde(skip)]
    register_witness: Vec<Op>,
    registers_hold: bool,
    sets: SetReport,
    counters: CounterReport,
    locks: LockReport,
    watch: WatchReport,
    pubsub: PubsubReport,
    faults: Vec<FaultRecord>,
    unavailability_ms: BTreeMap<&'static str, Window>,
    unrecovered_faults: usize,
}

#[derive(Default, Serialize)]
struct OpCounts {
    total: usize,
    ok: usize,
    failed: usize,
    unknown: usize,
}

#[derive(Serialize)]
struct Window {
    faults: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Report {
    pub fn build(
        ops: &[Op],
        faults: &[FaultRecord],
        finals: &Finals,
        reads: ReadLevel,
        seed: u64,
    ) -> Report {
        let mut counts = OpCounts {
            total: ops.len(),
            ..Default::default()
        };
        for op in ops {
            match op.outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Fail(_) => counts.failed += 1,
                Outcome::Unknown(_) => counts.unknown += 1,
            }
        }
        // Session reads are not linearizable by design (a replica behind the leader answers
        // them): at that level only the writes and compare-and-sets are checked.
        let checked: Vec<Op> = ops
            .iter()
            .filter(|op| reads != ReadLevel::Session || !matches!(op.call, Call::Read { .. }))
            .cloned()
            .collect();
        let verdict = linearizable::check(&checked);
        let registers_hold = verdict.holds();
        let (registers, register_witness) = match verdict {
            Verdict::Linearizable => ("linearizable".to_string(), Vec::new()),
            Verdict::Violation { key, witness } => (format!("violation on {key}"), witness),
            Verdict::Unknown { key } => (format!("unknown (search budget) on {key}"), Vec::new()),
        };
        Report {
            seed,
            consistency: reads.name(),
            ops: counts,
            registers,
            register_witness,
            registers_hold,
            sets: crate::checker::set::check(ops, &finals.sets),
            counters: crate::checker::counter::check(ops, &finals.counters),
            locks: crate::checker::locks::check(ops),
            watch: crate::checker::watch::check(ops),
            pubsub: crate::checker::pubsub::check(ops, faults),
            faults: faults.to_vec(),
            unavailability_ms: unavailability(ops, faults),
            unrecovered_faults: faults.iter().filter(|f| f.recovered_us.is_none()).count(),
        }
    }

    pub fn holds(&self) -> bool {
        self.registers_hold
            && self.sets.holds()
            && self.counters.holds()
            && self.locks.holds()
            && self.watch.holds()
            && self.pubsub.holds()
            && self.unrecovered_faults == 0
    }

    pub fn print(&self) {
        println!();
        println!(
            "== operations: {} ({} ok, {} failed, {} unknown)",
            self.ops.total, self.ops.ok, self.ops.failed, self.ops.unknown
        );
        println!(
            "== faults: {} ({} without an agreed leader 30 s after healing)",
            self.faults.len(),
            self.unrecovered_faults
        );
        if !self.unavailability_ms.is_empty() {
            println!("   unavailability, fault to first acknowledged write (ms):");
            println!(
                "   {:<18} {:>6} {:>9} {:>9} {:>9}",
                "fault", "count", "p50", "p99", "max"
            );
            for (kind, w) in &self.unavailability_ms {
                println!(
                    "   {kind:<18} {:>6} {:>9.0} {:>9.0} {:>9.0}",
                    w.faults, w.p50, w.p99, w.max
                );
            }
        }
        println!(
            "== register ({} reads): {}",
            self.consistency, self.registers
        );
        if !self.register_witness.is_empty() {
            println!("   smallest failing sub-history found (times in ms since the start):");
            for op in &self.register_witness {
                println!(
                    "   client {:>3} node {} {:<4} {:>10.3} .. {:>10.3}  {:?} -> {:?}",
                    op.client,
                    op.node,
                    op.protocol,
                    op.invoked_us as f64 / 1e3,
                    op.completed_us as f64 / 1e3,
                    op.call,
                    op.outcome
                );
            }
        }
        println!(
            "== set: {} acknowledged adds, {} unknown ({} present); lost {}, unexpected {}: {}",
            self.sets.acknowledged,
            self.sets.unknown,
            self.sets.unknown_present,
            self.sets.lost.len(),
            self.sets.unexpected.len(),
            if self.sets.holds() { "ok" } else { "VIOLATED" }
        );
        for element in self.sets.lost.iter().take(20) {
            println!("   lost: {element}");
        }
        for element in self.sets.unexpected.iter().take(20) {
            println!("   unexpected: {element}");
        }
        let (acked, unknown) = self
            .counters
            .counters
            .values()
            .fold((0, 0), |(a, u), c| (a + c.acknowledged, u + c.unknown));
        println!(
            "== counter: {acked} acknowledged increments, {unknown} unknown; lost {}, duplicated {}: {}",
            self.counters.lost,
            self.counters.duplicated,
            if self.counters.holds() { "ok" } else { "VIOLATED" }
        );
        for (key, c) in &self.counters.counters {
            if c.final_value < c.acknowledged || c.final_value > c.acknowledged + c.unknown {
                println!(
                    "   {key}: final {} outside [{}, {}]",
                    c.final_value,
                    c.acknowledged,
                    c.acknowledged + c.unknown
                );
            }
        }
        println!(
            "== locks: {} acquisitions, {} fenced writes ({} refused); tokens shared {}, stale fenced {}; leases kept {} of {}: {}",
            self.locks.acquisitions,
            self.locks.fenced_ok,
            self.locks.fenced_refused,
            self.locks.shared_tokens.len(),
            self.locks.stale_fenced.len(),
            self.locks.leases_checked - self.locks.leases_lost.len(),
            self.locks.leases_checked,
            if self.locks.holds() { "ok" } else { "VIOLATED" }
        );
        if self.watch.ran() {
            let w = &self.watch;
            println!(
                "== watch: {} acknowledged puts, {} streams, {} events; skipped {}, duplicated {}, out of order {}, diverged {}, phantom {}, unfinished {}: {}",
                w.writes_acknowledged, w.streams, w.events, w.skipped, w.duplicated,
                w.out_of_order, w.diverged, w.phantom, w.unfinished,
                if w.holds() { "ok" } else { "VIOLATED" }
            );
            for example in &w.examples {
                println!("   {example}");
            }
        }
        if self.pubsub.ran() {
            let p = &self.pubsub;
            println!(
                "== pubsub: {} acknowledged publishes, {} subscriptions, {} deliveries; lost {} near faults (at most once), {} far from any; duplicated {}, reordered {}, phantom {}; causal {} of {} checked ({} read after the node restarted): {}",
                p.published, p.subscriptions, p.delivered, p.lost_near_faults, p.lost_quiet,
                p.duplicated, p.reordered, p.phantom,
                p.causal_checked - p.causal_violations, p.causal_checked, p.causal_after_restart,
                if p.holds() { "ok" } else { "VIOLATED" }
            );
            for example in &p.examples {
                println!("   {example}");
            }
        }
        println!(
            "== verdict: {}",
            if self.holds() {
                "every check holds"
            } else {
                "FAILED"
            }
        );
    }

    /// Writes `report.json` and `history.jsonl` (one operation a line) into `dir`.
    pub fn write(&self, dir: &Path, ops: &[Op]) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        let mut history =
            std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
        for op in ops {
            serde_json::to_writer(&mut history, op)?;
            history.write_all(b"\n")?;
        }
        history.flush()?;
        Ok(())
    }

    pub fn result_line(&self) -> String {
        format!(
            "RESULT lost={} duplicated={} linearizable={} ops={} faults={}",
            self.sets.lost.len() as u64
                + self.counters.lost
                + self.locks.leases_lost.len() as u64
                + self.watch.skipped
                + self.pubsub.lost_quiet,
            self.counters.duplicated
                + self.sets.unexpected.len() as u64
                + self.watch.duplicated
                + self.pubsub.duplicated,
            // A lock is a linearizable object too (two holders at once break it), and the
            // order of watch events and of a publisher's messages is part of the same promise.
            self.registers_hold
                && self.locks.shared_tokens.is_empty()
                && self.locks.stale_fenced.is_empty()
                && self.watch.out_of_order == 0
                && self.watch.diverged == 0
                && self.watch.phantom == 0
                && self.pubsub.reordered == 0
                && self.pubsub.phantom == 0
                && self.pubsub.causal_violations == 0,
            self.ops.total,
            self.faults.len()
        )
    }
}

/// Per kind of fault: how long after it began the first write was acknowledged.
fn unavailability(ops: &[Op], faults: &[FaultRecord]) -> BTreeMap<&'static str, Window> {
    let mut acked_writes: Vec<(u64, u64)> = ops
        .iter()
        .filter(|op| {
            op.is_ok()
                && !matches!(
                    op.call,
                    Call::Read { .. }
                        | Call::Watch { .. }
                        | Call::Publish { .. }
                        | Call::Subscription { .. }
                        | Call::LeaseKept { .. }
                )
        })
        .map(|op| (op.invoked_us, op.completed_us))
        .collect();
    acked_writes.sort();
    let mut windows: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for fault in faults {
        let first = acked_writes
            .iter()
            .filter(|(invoked, _)| *invoked >= fault.start_us)
            .map(|(_, completed)| *completed)
            .min();
        if let Some(completed) = first {
            windows
                .entry(fault.kind)
                .or_default()
                .push((completed - fault.start_us) as f64 / 1e3);
        }
    }
    windows
        .into_iter()
        .map(|(kind, mut w)| {
            w.sort_by(f64::total_cmp);
            let at = |q: f64| w[((w.len() as f64 - 1.0) * q).round() as usize];
            let window = Window {
                faults: w.len(),
                p50: at(0.5),
                p99: at(0.99),
                max: *w.last().expect("non-empty"),
            };
            (kind, window)
        })
        .collect()
}
