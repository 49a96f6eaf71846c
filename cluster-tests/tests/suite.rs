//! The chaos suite run as a program, as `cluster-tests/run.sh` runs it: its contract (the
//! report, the files, the RESULT line, the exit status) and that its checker is not one that
//! passes everything.

use std::path::PathBuf;
use std::process::Command;

/// The `conclave` binary beside this package's `chaos` (one workspace target directory).
fn conclave() -> PathBuf {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_chaos"));
    let path = chaos.with_file_name("conclave");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p conclave`) first",
        path.display()
    );
    path
}

struct Run {
    status: std::process::ExitStatus,
    stdout: String,
}

fn chaos(args: &[&str]) -> Run {
    let out = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .arg("--binary")
        .arg(conclave())
        .arg("--out")
        .arg(out.path())
        .args(args)
        .output()
        .expect("chaos runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let run_dir = std::fs::read_dir(out.path())
        .expect("out dir")
        .next()
        .expect("a directory for the run")
        .expect("entry")
        .path();
    for file in ["report.json", "history.jsonl"] {
        assert!(run_dir.join(file).exists(), "{file} written");
    }
    Run {
        status: output.status,
        stdout,
    }
}

/// The fields of the RESULT line, which must be the last line.
fn result(stdout: &str) -> Vec<(String, String)> {
    let last = stdout.lines().last().expect("output");
    let fields = last
        .strip_prefix("RESULT ")
        .expect("the last line is the RESULT line");
    fields
        .split(' ')
        .map(|f| {
            let (k, v) = f.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    &fields.iter().find(|(k, _)| k == name).expect(name).1
}

#[test]
fn local_reads_under_partitions_are_reported_as_not_linearizable() {
    // Local reads are served by whatever a replica holds: a node cut off from the leader (or
    // just behind it) answers with old values, which the register checker must catch.
    let run = chaos(&[
        "--duration",
        "20",
        "--nemesis",
        "partition-leader,partition-halves",
        "--seed",
        "7",
        "--consistency",
        "local",
        "--workloads",
        "register",
    ]);
    let fields = result(&run.stdout);
    assert_eq!(
        field(&fields, "linearizable"),
        "false",
        "stale local reads passed the checker"
    );
    assert!(!run.status.success(), "a failed check exits non-zero");
    assert!(
        run.stdout.contains("smallest failing sub-history"),
        "the report shows the failing sub-history"
    );
}
