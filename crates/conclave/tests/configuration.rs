//! `conclave server`'s settings: flags over environment variables over a TOML file over the
//! defaults, `--check-config`, unknown keys, and the reference table in docs/configuration.md.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::{binary, free_port, serial};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary, with none of the CONCLAVE_ variables of the environment the tests run in.
fn conclave() -> Command {
    let mut command = Command::new(binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("CONCLAVE_") {
            command.env_remove(key);
        }
    }
    command
}

/// `conclave server ARGS` with only `env` from the CONCLAVE_ variables.
fn server(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = conclave();
    command.arg("server").args(args).envs(env.iter().copied());
    command.output().expect("run conclave server")
}

/// The `--check-config` line of setting `name`.
fn line_of<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{stdout}"))
}

#[test]
fn each_setting_comes_from_the_flag_else_the_environment_else_the_file_else_the_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("conclave.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7999\"\n\
         data-dir = \"/tmp/conclave-config-test\"\n\
         initial-cluster = \"1=127.0.0.1:7999\"\n\
         heartbeat-ms = 40\n\
         election-min-ms = 140\n\
         resp_password = \"s3cret-in-file\"\n",
    )
    .expect("write the file");
    let file = file.to_str().expect("utf-8 path");
    let output = server(
        &[
            "--config",
            file,
            "--check-config",
            "--id",
            "1",
            "--election-min-ms",
            "150",
        ],
        &[("CONCLAVE_HEARTBEAT_MS", "45")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let flag = line_of(&stdout, "election-min-ms");
    assert!(
        flag.contains("\"150\"") && flag.ends_with("# flag"),
        "{flag}"
    );
    let env = line_of(&stdout, "heartbeat-ms");
    assert!(
        env.contains("\"45\"") && env.contains("# environment CONCLAVE_HEARTBEAT_MS"),
        "{env}"
    );
    let from_file = line_of(&stdout, "listen");
    assert!(
        from_file.contains("\"127.0.0.1:7999\"") && from_file.ends_with("# file"),
        "{from_file}"
    );
    let default = line_of(&stdout, "snapshot-every");
    assert!(
        default.contains("\"5000\"") && default.ends_with("# default"),
        "{default}"
    );
    // A secret is never printed, wherever it came from.
    assert!(line_of(&stdout, "resp-password").contains("<redacted>"));
    assert!(!stdout.contains("s3cret-in-file"), "{stdout}");
    assert!(stdout.contains("# the settings are valid"), "{stdout}");
}

#[test]
fn a_config_file_with_an_unknown_key_or_invalid_settings_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("conclave.toml");
    std::fs::write(&file, "listne = \"127.0.0.1:7999\"\n").expect("write");
    let file = file.to_str().expect("utf-8 path");
    let unknown = server(&["--config", file, "--check-config"], &[]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("unknown key \"listne\""), "{stderr}");

    // Valid keys, settings that cannot work together: the election timeout below the heartbeat.
    let invalid = server(
        &[
            "--check-config",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7999",
            "--data-dir",
            "/tmp/x",
            "--initial-cluster",
            "1=127.0.0.1:7999",
            "--heartbeat-ms",
            "500",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&invalid.stdout);
    assert_eq!(invalid.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("# the settings are not valid"), "{stdout}");

    // Started for real, the same settings are refused the same way.
    let started = server(
        &[
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7999",
            "--data-dir",
            "/tmp/x",
            "--initial-cluster",
            "1=127.0.0.1:7999",
            "--resp",
            "nonsense",
        ],
        &[],
    );
    assert_eq!(started.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&started.stderr).contains("--resp nonsense"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_runs_from_a_config_file_alone() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let file = dir.path().join("conclave.toml");
    std::fs::write(
        &file,
        format!(
            "id = 1\nlisten = \"127.0.0.1:{port}\"\ndata-dir = {:?}\ninitial-cluster = \"1=127.0.0.1:{port}\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write");
    let mut child = conclave()
        .args(["server", "--config"])
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let client = conclave_client::Client::connect([format!("127.0.0.1:{port}")])
        .await
        .expect("client");
    let mut written = None;
    for _ in 0..100 {
        if let Ok(revision) = client.set("from-file", "yes").await {
            written = Some(revision);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(written.is_some(), "the node never took a write");
}

#[test]
fn the_settings_table_in_docs_is_the_one_the_binary_prints() {
    let output = Command::new(binary())
        .arg("config-reference")
        .output()
        .expect("run");
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    let docs = std::fs::read_to_string(repo().join("docs/configuration.md")).expect("docs");
    let begin = "<!-- settings:begin (conclave config-reference) -->\n";
    let start = docs.find(begin).expect("begin marker") + begin.len();
    let end = docs.find("<!-- settings:end -->").expect("end marker");
    assert_eq!(
        &docs[start..end],
        table,
        "docs/configuration.md is out of date: regenerate its table with `conclave config-reference`"
    );
}
