//! What the benchmark measures: a latency histogram per kind of operation (HDR, microseconds),
//! deadline misses per kind, and command errors.
//!
//! Latencies run from when an operation was *scheduled*, not from when it was sent: with load
//! arriving at fixed rates, a stall shows as latency on everything scheduled during it (no
//! coordinated omission). Only operations scheduled after the warm-up count, however late they
//! end.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The kinds of operation measured. The first four make up the result line's storage, pub/sub
/// and claim figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Every storage command or pipeline (HSET, HVALS, HGET, HDEL, DEL, the unlock script).
    Storage,
    /// A PUBLISH from send to its reply.
    Publish,
    /// A message from its PUBLISH to its receipt by the subscribing media node.
    Delivery,
    /// A psrpc request from its PUBLISH to the caller's receipt of the claim (deadline 1 s).
    Claim,
    /// A whole unary RPC: request to response (deadline 3 s).
    Rpc,
    /// A signal relay message to its ack (deadline 500 ms, the first attempt's).
    SignalAck,
    /// Room lock: first `SET NX` to acquired (deadline 5 s).
    Lock,
    /// A media node's keepalive to itself (late beyond 2 s).
    Keepalive,
    /// SUBSCRIBE / UNSUBSCRIBE of a set of channels (no deadline).
    Subscribe,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Storage,
        Kind::Publish,
        Kind::Delivery,
        Kind::Claim,
        Kind::Rpc,
        Kind::SignalAck,
        Kind::Lock,
        Kind::Keepalive,
        Kind::Subscribe,
    ];

    /// The deadline LiveKit applies, if any: later than this is a miss.
    pub fn deadline(self) -> Option<Duration> {
        match self {
            Kind::Claim => Some(Duration::from_secs(1)),
            Kind::Rpc => Some(Duration::from_secs(3)),
            Kind::SignalAck => Some(Duration::from_millis(500)),
            Kind::Lock => Some(Duration::from_secs(5)),
            Kind::Keepalive => Some(Duration::from_secs(2)),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Storage => "storage",
            Kind::Publish => "publish",
            Kind::Delivery => "delivery",
            Kind::Claim => "claim",
            Kind::Rpc => "rpc",
            Kind::SignalAck => "signal_ack",
            Kind::Lock => "lock",
            Kind::Keepalive => "keepalive",
            Kind::Subscribe => "subscribe",
        }
    }
}

struct Series {
    latency: Histogram<u64>,
    misses: u64,
    /// Operations that never completed (no reply, no message): counted as misses too when the
    /// kind has a deadline.
    lost: u64,
    /// Operations sent again for want of an answer (signal relay messages).
    retries: u64,
}

/// Shared by every task of the run. Nothing scheduled during the warm-up counts.
pub struct Recorder {
    series: Mutex<BTreeMap<Kind, Series>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// When the measured part began.
    start: OnceLock<Instant>,
}

/// One kind's figures, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub kind: Kind,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub deadline_ms: Option<u64>,
    pub misses: u64,
    pub lost: u64,
    pub retries: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        let series = Kind::ALL
            .iter()
            .map(|kind| {
                let latency =
                    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
                (
                    *kind,
                    Series {
                        latency,
                        misses: 0,
                        lost: 0,
                        retries: 0,
                    },
                )
            })
            .collect();
        Recorder {
            series: Mutex::new(series),
            errors: Mutex::default(),
            start: OnceLock::new(),
        }
    }

    /// Starts counting (after the warm-up): operations scheduled from now on.
    pub fn start(&self) {
        let _ = self.start.set(Instant::now());
    }

    fn on(&self) -> bool {
        self.start.get().is_some()
    }

    /// Whether an operation scheduled at `scheduled` is measured.
    fn counts(&self, scheduled: Option<Instant>) -> bool {
        match (self.start.get(), scheduled) {
            (Some(start), Some(scheduled)) => scheduled >= *start,
            _ => false,
        }
    }

    /// An operation of `kind` that took `latency` (from when it was scheduled).
    pub fn record(&self, kind: Kind, latency: Duration) {
        if !self.counts(Instant::now().checked_sub(latency)) {
            return;
        }
        let mut series = self.series.lock().expect("metrics lock");
        let series = series.get_mut(&kind).expect("every kind has a series");
        series
            .latency
            .saturating_record(latency.as_micros().max(1) as u64);
        if kind.deadline().is_some_and(|deadline| latency > deadline) {
            series.misses += 1;
        }
    }

    /// An operation of `kind`, scheduled at `scheduled`, that never completed.
    pub fn lost(&self, kind: Kind, scheduled: Instant) {
        if !self.counts(Some(scheduled)) {
            return;
        }
        let mut series = self.series.lock().expect("metrics lock");
        let series = series.get_mut(&kind).expect("every kind has a series");
        series.lost += 1;
        if kind.deadline().is_some() {
            series.misses += 1;
        }
    }

    /// An operation of `kind`, scheduled at `scheduled`, sent again.
    pub fn retry(&self, kind: Kind, scheduled: Instant) {
        if !self.counts(Some(scheduled)) {
            return;
        }
        let mut series = self.series.lock().expect("metrics lock");
        series
            .get_mut(&kind)
            .expect("every kind has a series")
            .retries += 1;
    }

    /// A command answered with an error, or a connection failure.
    pub fn error(&self, what: impl Into<String>) {
        if !self.on() {
            return;
        }
        *self
            .errors
            .lock()
            .expect("metrics lock")
            .entry(what.into())
            .or_default() += 1;
    }

    pub fn figures(&self) -> Vec<Figures> {
        let series = self.series.lock().expect("metrics lock");
        series
            .iter()
            .map(|(kind, s)| {
                let ms = |q: f64| s.latency.value_at_quantile(q) as f64 / 1000.0;
                Figures {
                    kind: *kind,
                    count: s.latency.len(),
                    p50_ms: ms(0.5),
                    p99_ms: ms(0.99),
                    p999_ms: ms(0.999),
                    max_ms: s.latency.max() as f64 / 1000.0,
                    deadline_ms: kind.deadline().map(|d| d.as_millis() as u64),
                    misses: s.misses,
                    lost: s.lost,
                    retries: s.retries,
                }
            })
            .collect()
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().expect("metrics lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(recorder: &Recorder, kind: Kind) -> Figures {
        recorder
            .figures()
            .into_iter()
            .find(|f| f.kind == kind)
            .unwrap()
    }

    #[test]
    fn operations_scheduled_in_the_warm_up_never_count_however_late_they_end() {
        let recorder = Recorder::new();
        let warm_up_op = Instant::now();
        recorder.record(Kind::Claim, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        recorder.start();
        // Scheduled before the start, answered (late) or lost after it: not measured.
        recorder.record(Kind::Claim, warm_up_op.elapsed() + Duration::from_secs(2));
        recorder.lost(Kind::Claim, warm_up_op);
        recorder.retry(Kind::SignalAck, warm_up_op);
        let claim = figures(&recorder, Kind::Claim);
        assert_eq!((claim.count, claim.misses, claim.lost), (0, 0, 0));
        assert_eq!(figures(&recorder, Kind::SignalAck).retries, 0);

        // Scheduled after it: measured; a lost one counts as a miss.
        std::thread::sleep(Duration::from_millis(10));
        let measured_op = Instant::now();
        recorder.record(Kind::Claim, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        recorder.record(Kind::Claim, measured_op.elapsed());
        recorder.lost(Kind::Claim, measured_op);
        recorder.retry(Kind::SignalAck, measured_op);
        let claim = figures(&recorder, Kind::Claim);
        assert_eq!((claim.count, claim.misses, claim.lost), (2, 1, 1));
        assert_eq!(figures(&recorder, Kind::SignalAck).retries, 1);
    }
}
