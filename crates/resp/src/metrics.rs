//! What the RESP listener counts: connections, commands, and each command's latency.
//!
//! One place for these figures: INFO reads them from here, and so does the node's Prometheus
//! endpoint ([`RespMetrics::encode`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conclave_metrics::{Counter, Exposition, HistogramFamily, Kind, LATENCY_BUCKETS};

/// The RESP listener's counters; shared by its connections and the metrics endpoint.
#[derive(Debug)]
pub struct RespMetrics {
    /// Connections open now (including one being refused for `maxclients`).
    pub(crate) connected: AtomicUsize,
    pub(crate) connections_received: Counter,
    pub(crate) commands_processed: Counter,
    /// Whole-keyspace walks (KEYS, large SCAN steps) that waited for a turn: every turn was
    /// taken when they came.
    pub(crate) walks_waited: Counter,
    /// Time from a command's turn on its connection to its reply, by command name.
    latency: HistogramFamily,
}

/// The label of commands the table does not know.
const UNKNOWN_COMMAND: &str = "unknown";

impl Default for RespMetrics {
    fn default() -> Self {
        RespMetrics {
            connected: AtomicUsize::new(0),
            connections_received: Counter::default(),
            commands_processed: Counter::default(),
            walks_waited: Counter::default(),
            // Every name in the table, "unknown" and the family's overflow label.
            latency: HistogramFamily::new(LATENCY_BUCKETS, crate::table::COMMANDS.len() + 2),
        }
    }
}

impl RespMetrics {
    /// Counts one command answered after `elapsed`; `name` is the table's name, or None.
    pub(crate) fn answered(&self, name: Option<&str>, elapsed: Duration) {
        self.commands_processed.inc();
        self.latency
            .with_label(name.unwrap_or(UNKNOWN_COMMAND))
            .observe_duration(elapsed);
    }

    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Writes the listener's families; request latencies go under the shared
    /// `conclave_request_duration_seconds` family, whose header the caller writes.
    pub fn encode(&self, out: &mut Exposition) {
        out.single(
            "conclave_resp_connections",
            Kind::Gauge,
            "RESP connections open now.",
            self.connected() as f64,
        );
        out.single(
            "conclave_resp_connections_received_total",
            Kind::Counter,
            "RESP connections accepted since the node started.",
            self.connections_received.get() as f64,
        );
        out.single(
            "conclave_resp_commands_total",
            Kind::Counter,
            "RESP commands answered since the node started.",
            self.commands_processed.get() as f64,
        );
        out.single(
            "conclave_resp_keyspace_walks_waited_total",
            Kind::Counter,
            "Whole-keyspace walks (KEYS, large SCAN steps) that waited for one of the node's turns.",
            self.walks_waited.get() as f64,
        );
    }

    /// The samples of the RESP requests' latencies (under a header the caller wrote).
    pub fn encode_latencies(&self, out: &mut Exposition, family: &str) {
        out.histogram_samples(family, &[("api", "resp")], "method", &self.latency);
    }
}
