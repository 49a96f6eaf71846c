//! Work on large entries, done without holding up the node's other tasks.
//!
//! openraft calls the log's `append` on its Raft core task and the state machine's `apply` on
//! its state-machine task, and both do their work synchronously. For a large entry (up to the
//! 16 MiB command limit) that is long: writing it, or applying it, took 80-180 ms in a debug build
//! on a loaded 2-core machine. With one worker thread per core, a follower writing such an entry
//! while its state machine applied the one before had every worker busy: the node answered no
//! heartbeat and sent none, and elections followed. Large entries are handled in
//! `block_in_place`, which moves the worker's other tasks to another thread meanwhile.
//!
//! Does not own: the work itself (`log_store.rs`, `state_machine.rs`).

use openraft::{Entry, EntryPayload};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::StoreConfig;

/// Entries whose commands carry at least this many bytes in all count as large.
const LARGE_FROM_BYTES: usize = 256 * 1024;

/// The bytes of keys and values an entry carries (0 for blank and membership entries).
pub(crate) fn entry_bytes<C: StoreConfig>(entry: &Entry<C>) -> usize {
    match &entry.payload {
        EntryPayload::Normal(request) => request.command.payload_bytes(),
        _ => 0,
    }
}

/// Runs `work` now, on this thread. When `bytes` make it large and the runtime can spare the
/// thread, the runtime's other tasks move off this worker while it runs.
pub(crate) fn run<T>(bytes: usize, work: impl FnOnce() -> T) -> T {
    let multi_thread = Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
    if bytes >= LARGE_FROM_BYTES && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large piece of work on a multi-thread runtime leaves the other tasks running: a task
    /// waiting on a timer is served while the work holds its thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn large_work_leaves_the_other_tasks_running() {
        let ticker = tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            std::time::Instant::now()
        });
        tokio::task::yield_now().await;
        let (started, ended) = run(LARGE_FROM_BYTES, || {
            let started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(300));
            (started, std::time::Instant::now())
        });
        let ticked = ticker.await.unwrap();
        assert!(
            ticked > started && ticked < ended,
            "the timer task ran during the work"
        );
    }

    /// Small work, or work on a current-thread runtime (where `block_in_place` would panic), runs
    /// inline.
    #[tokio::test]
    async fn work_on_a_current_thread_runtime_runs_inline() {
        assert_eq!(run(LARGE_FROM_BYTES, || 7), 7);
        assert_eq!(run(0, || 8), 8);
    }
}
