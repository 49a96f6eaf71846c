//! Replays every input kept in `fuzz/regressions/<target>/` through its fuzz target's entry
//! point, on stable and without libFuzzer: inputs that once crashed a target (named after what
//! they broke) and a few seeds. A target panics on the invariant it checks, so a regression
//! fails here. `scripts/fuzz.sh` runs the targets themselves.

use std::path::PathBuf;

/// The kept inputs of one target; a target without any fails, so a moved directory is noticed.
fn kept_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs kept in {}", dir.display());
    inputs
}

/// Runs each input on a thread with a quarter of a tokio worker's stack (2 MiB), so an input
/// that recursed too deep for a node fails here too (libFuzzer runs on an 8 MiB main stack).
fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in kept_inputs(target) {
        let outcome = std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || run(&bytes))
            .unwrap()
            .join();
        assert!(outcome.is_ok(), "{target} broke on {}", path.display());
    }
}

#[test]
fn resp_requests() {
    replay("resp_requests", conclave_resp::fuzzing::requests);
}

#[test]
fn peer_messages() {
    replay("peer_messages", conclave_consensus::fuzzing::peer_messages);
}

#[test]
fn replicas_agree() {
    replay("replicas_agree", conclave_storage::fuzzing::replicas_agree);
}

#[test]
fn snapshot_file() {
    replay("snapshot_file", conclave_storage::fuzzing::snapshot_file);
}
