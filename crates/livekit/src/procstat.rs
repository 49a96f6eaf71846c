//! RSS and CPU of the processes under test, sampled once a second from `/proc/<pid>`.

use std::time::{Duration, Instant};

use serde::Serialize;

/// What a sampled process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A server under test.
    Server,
    /// The benchmark itself (to show whether it, not the server, ran out of CPU).
    Bench,
    /// A delay proxy adding round trips.
    Proxy,
}

/// One process over the run.
#[derive(Debug, Serialize)]
pub struct ProcessFigures {
    pub pid: u32,
    pub role: Role,
    pub max_rss_mib: f64,
    pub last_rss_mib: f64,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
}

pub struct Sampler {
    task: Option<tokio::task::JoinHandle<Vec<ProcessFigures>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Sampler {
    pub fn start(processes: &[(u32, Role)]) -> Sampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        if processes.is_empty() {
            return Sampler { task: None, stop };
        }
        let processes = processes.to_vec();
        let pids: Vec<u32> = processes.iter().map(|(pid, _)| *pid).collect();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let first: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
            let mut max_rss = vec![0u64; pids.len()];
            let mut last_rss = vec![0u64; pids.len()];
            loop {
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(rss) = rss_kib(*pid) {
                        max_rss[i] = max_rss[i].max(rss);
                        last_rss[i] = rss;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => break,
                }
            }
            let wall = started.elapsed().as_secs_f64();
            let ticks_per_s = 100.0; // USER_HZ on Linux
            pids.iter()
                .enumerate()
                .map(|(i, pid)| {
                    let used = match (first[i], cpu_ticks(*pid)) {
                        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / ticks_per_s,
                        _ => 0.0,
                    };
                    ProcessFigures {
                        pid: *pid,
                        role: processes[i].1,
                        max_rss_mib: max_rss[i] as f64 / 1024.0,
                        last_rss_mib: last_rss[i] as f64 / 1024.0,
                        cpu_percent: 100.0 * used / wall.max(1e-9),
                    }
                })
                .collect()
        });
        Sampler {
            task: Some(task),
            stop,
        }
    }

    pub async fn finish(self) -> Vec<ProcessFigures> {
        let _ = self.stop.send(true);
        match self.task {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
