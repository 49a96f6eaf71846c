//! Counters, gauges and histograms, and their exposition in the Prometheus text format (0.0.4).
//!
//! Owns: the metric types every crate records into (atomics; a labelled histogram is found
//! under a shared read lock), a family of histograms keyed by one label (a command or an RPC
//! method) with a bound on how many label values it keeps, and [`Exposition`], the writer of
//! one scrape's text.
//!
//! Does not own: which metrics exist and what they mean (each crate owns the figures it counts;
//! the `conclave` binary names the ones read from a node's status at scrape time), nor serving
//! them over HTTP (the binary's `metrics` module).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds, in seconds, of the buckets of a request latency: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the buckets of a count per event (commands per batch, entries per flush).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Observations counted into fixed buckets, with their sum: a cumulative Prometheus histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the last for values above every bound (`+Inf`); not cumulative.
    buckets: Box<[AtomicU64]>,
    /// The sum in millionths of the unit, so it adds up without a lock.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must rise");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts a value (in the bounds' unit: seconds for latencies).
    pub fn observe(&self, value: f64) {
        let value = value.max(0.0);
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// Counts a duration, in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn sum(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Histograms of one family, one per value of a single label (a RESP command, a gRPC method).
///
/// Label values come from what clients send, so the family keeps at most `max_labels` of them;
/// observations under further values are counted under [`OTHER_LABEL`].
#[derive(Debug)]
pub struct HistogramFamily {
    bounds: &'static [f64],
    max_labels: usize,
    by_label: RwLock<HashMap<String, Arc<Histogram>>>,
}

/// Where a [`HistogramFamily`] counts observations once it holds its maximum of label values.
pub const OTHER_LABEL: &str = "other";

impl HistogramFamily {
    pub fn new(bounds: &'static [f64], max_labels: usize) -> Self {
        HistogramFamily {
            bounds,
            max_labels: max_labels.max(1),
            by_label: RwLock::new(HashMap::new()),
        }
    }

    /// The histogram for `label`, created on first use.
    pub fn with_label(&self, label: &str) -> Arc<Histogram> {
        if let Some(h) = self.by_label.read().expect("metrics lock").get(label) {
            return h.clone();
        }
        let mut map = self.by_label.write().expect("metrics lock");
        let label = if map.len() + 1 >= self.max_labels && !map.contains_key(label) {
            OTHER_LABEL
        } else {
            label
        };
        map.entry(label.to_string())
            .or_insert_with(|| Arc::new(Histogram::new(self.bounds)))
            .clone()
    }

    /// Every label value and its histogram, sorted by label.
    fn snapshot(&self) -> Vec<(String, Arc<Histogram>)> {
        let mut all: Vec<_> = self
            .by_label
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// What a metric is, as its `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One scrape's text: each family's `# HELP` and `# TYPE` lines, then its samples.
///
/// Samples of a family must follow its header and be written together (the format requires
/// it); label values are escaped here.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// Labels of a sample, as (name, value) pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    /// One sample of the family just started (`name` may carry a suffix such as `_bucket`).
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        push_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram (after [`Exposition::family`] with [`Kind::Histogram`]).
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, histogram: &Histogram) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, count) in histogram.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match histogram.bounds.get(i) {
                Some(bound) => format_value(*bound),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, histogram.sum());
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    /// A whole histogram family: `label` names the family's one label.
    pub fn histogram_family(
        &mut self,
        name: &str,
        help: &str,
        extra: Labels<'_>,
        label: &str,
        family: &HistogramFamily,
    ) {
        self.family(name, Kind::Histogram, help);
        self.histogram_samples(name, extra, label, family);
    }

    /// The samples of a histogram family, under a header already written (so that two sources,
    /// such as RESP and gRPC request latencies, can share one family).
    pub fn histogram_samples(
        &mut self,
        name: &str,
        extra: Labels<'_>,
        label: &str,
        family: &HistogramFamily,
    ) {
        for (value, histogram) in family.snapshot() {
            let mut labels: Vec<(&str, &str)> = extra.to_vec();
            labels.push((label, &value));
            self.histogram(name, &labels, &histogram);
        }
    }

    /// The text, ready to serve as `text/plain; version=0.0.4`.
    pub fn finish(self) -> String {
        self.text
    }
}

/// The content type of [`Exposition::finish`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    let mut s = String::new();
    push_value(&mut s, v);
    s
}

fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_written_cumulatively_with_its_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let mut out = Exposition::new();
        out.family("x_seconds", Kind::Histogram, "a test");
        out.histogram("x_seconds", &[("cmd", "get")], &h);
        let text = out.finish();
        assert!(
            text.contains("x_seconds_bucket{cmd=\"get\",le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{cmd=\"get\",le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{cmd=\"get\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_sum{cmd=\"get\"} 3.65\n"), "{text}");
        assert!(text.contains("x_seconds_count{cmd=\"get\"} 4\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::new();
        out.family("y", Kind::Gauge, "help with \\ and\nnewline");
        out.sample("y", &[("k", "a\"b\\c\nd")], 1.5);
        assert_eq!(
            out.finish(),
            "# HELP y help with \\\\ and\\nnewline\n# TYPE y gauge\ny{k=\"a\\\"b\\\\c\\nd\"} 1.5\n"
        );
    }

    #[test]
    fn a_family_keeps_a_bounded_number_of_label_values() {
        let family = HistogramFamily::new(LATENCY_BUCKETS, 3);
        for name in ["a", "b", "c", "d", "e"] {
            family.with_label(name).observe(0.001);
        }
        let labels: Vec<String> = family.snapshot().into_iter().map(|(l, _)| l).collect();
        assert_eq!(labels, ["a", "b", "other"]);
        assert_eq!(family.with_label("other").count(), 3);
        // A label already kept still gets its own histogram.
        family.with_label("a").observe(0.5);
        assert_eq!(family.with_label("a").count(), 2);
    }
}
