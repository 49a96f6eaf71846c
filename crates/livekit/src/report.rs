//! The run's report: a table per kind of operation, errors, the processes sampled, as text,
//! JSON, and the result line.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::media::Shared;
use crate::metrics::{Figures, Kind};
use crate::procstat::ProcessFigures;

#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub rooms: usize,
    pub media_nodes: usize,
    pub endpoints: Vec<String>,
    pub measured_s: f64,
    pub operations: Vec<Figures>,
    pub deadline_misses: u64,
    pub errors: BTreeMap<String, u64>,
    pub error_count: u64,
    pub processes: Vec<ProcessFigures>,
}

impl Report {
    pub(crate) fn build(
        shared: &Shared,
        measured: Duration,
        processes: Vec<ProcessFigures>,
    ) -> Report {
        let operations = shared.recorder.figures();
        let errors = shared.recorder.errors();
        Report {
            label: shared.options.label.clone(),
            rooms: shared.options.rooms,
            media_nodes: shared.options.media_nodes,
            endpoints: shared.options.resp.clone(),
            measured_s: measured.as_secs_f64(),
            deadline_misses: operations.iter().map(|f| f.misses).sum(),
            error_count: errors.values().sum(),
            operations,
            errors,
            processes,
        }
    }

    fn p99(&self, kind: Kind) -> f64 {
        self.operations
            .iter()
            .find(|f| f.kind == kind)
            .map_or(0.0, |f| f.p99_ms)
    }

    /// `RESULT rooms=N deadline_misses=K errors=E storage_p99_ms=X pubsub_p99_ms=Y claim_p99_ms=Z`
    pub fn result_line(&self) -> String {
        format!(
            "RESULT rooms={} deadline_misses={} errors={} storage_p99_ms={:.2} pubsub_p99_ms={:.2} claim_p99_ms={:.2}",
            self.rooms,
            self.deadline_misses,
            self.error_count,
            self.p99(Kind::Storage),
            self.p99(Kind::Delivery),
            self.p99(Kind::Claim)
        )
    }

    pub fn print(&self) {
        println!(
            "bench livekit{}: {} rooms on {} media nodes ({}), {:.0} s measured",
            if self.label.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.label)
            },
            self.rooms,
            self.media_nodes,
            self.endpoints.join(","),
            self.measured_s
        );
        println!(
            "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>7}",
            "operation",
            "count",
            "per s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "deadline",
            "misses",
            "retries"
        );
        for f in &self.operations {
            println!(
                "{:<11} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.1} {:>8} {:>6} {:>7}",
                f.kind.name(),
                f.count,
                f.count as f64 / self.measured_s.max(1e-9),
                f.p50_ms,
                f.p99_ms,
                f.p999_ms,
                f.max_ms,
                f.deadline_ms.map_or("-".to_string(), |d| format!("{d} ms")),
                f.misses,
                f.retries
            );
        }
        for (error, count) in &self.errors {
            println!("error x{count}: {error}");
        }
        for p in &self.processes {
            println!(
                "{} {}: RSS max {:.1} MiB (at the end {:.1}), CPU {:.0}% of a core",
                match p.role {
                    crate::procstat::Role::Server => "server",
                    crate::procstat::Role::Bench => "bench (this process)",
                    crate::procstat::Role::Proxy => "delay proxy",
                },
                p.pid,
                p.max_rss_mib,
                p.last_rss_mib,
                p.cpu_percent
            );
        }
    }
}
