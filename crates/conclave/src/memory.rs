//! Giving freed heap memory back to the system.
//!
//! glibc's malloc keeps memory freed by the program in its arenas for reuse, so a node that held
//! a large keyspace stays near its peak RSS after the keys are deleted. Every
//! [`TRIM_EVERY`] the node asks malloc to return the free pages it holds (`malloc_trim`), on a
//! blocking thread: the call walks the arenas and may take milliseconds.

use std::time::Duration;

/// How often freed memory is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Hands freed memory back every [`TRIM_EVERY`], for as long as the runtime runs.
pub fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // SAFETY: malloc_trim has no preconditions; it only releases memory malloc owns and
            // no live allocation uses.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}
