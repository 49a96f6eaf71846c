//! The process's own figures under Prometheus's standard `process_*` names, read from /proc.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use conclave_metrics::{Exposition, Kind};

static STARTED: OnceLock<f64> = OnceLock::new();

/// Notes the process's start time; call early in `main`.
pub fn note_start() {
    STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
}

pub fn encode(out: &mut Exposition) {
    if let Some(rss) = status_kib("VmRSS:") {
        out.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss * 1024.0,
        );
    }
    if let Some(vsz) = status_kib("VmSize:") {
        out.single(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            vsz * 1024.0,
        );
    }
    if let Some(cpu) = cpu_seconds() {
        out.single(
            "process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time spent, in seconds.",
            cpu,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single(
            "process_open_fds",
            Kind::Gauge,
            "Open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(started) = STARTED.get() {
        out.single(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since the Unix epoch, in seconds.",
            started.floor(),
        );
    }
}

/// A `/proc/self/status` line's value in KiB.
fn status_kib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// utime + stime from `/proc/self/stat`, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of the whole line; the first after ')' is field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}
