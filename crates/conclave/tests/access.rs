//! Users and roles on a real cluster with a users file: RESP (exact frames, redis-cli,
//! redis-py) and gRPC (the SDK, `conclave ctl`) as each role, the users file changing under
//! open connections, and no secret in any log.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::compose::repo;
use common::resp::{Frame, RespConnection};
use common::{binary, serial, Cluster};
use conclave_client::{Client, ConnectOptions, Credentials};
use tonic::Code;

const USERS: &str = r#"
[[user]]
name = "ops"
role = "admin"
password = "ops-pass-1"
tokens = ["ops-token-0123456789"]

[[user]]
name = "livekit"
role = "read-write"
password = "lk-pass-1"
tokens = ["livekit-token-0123456789"]

[[user]]
name = "viewer"
role = "read-only"
password = "view-pass-1"
tokens = ["viewer-token-0123456789"]

[[user]]
name = "writer"
role = "read-write"
password = "writer-pass-1"
"#;

/// Every secret of `USERS`: none may appear in a log.
const SECRETS: &[&str] = &[
    "ops-pass-1",
    "ops-token-0123456789",
    "lk-pass-1",
    "livekit-token-0123456789",
    "view-pass-1",
    "viewer-token-0123456789",
    "writer-pass-1",
];

/// A 3-node cluster serving RESP, with `users` as its users file; the harness authenticates
/// as ops.
async fn cluster_with_users(users: &str) -> (Cluster, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(&file, users).unwrap();
    let mut cluster = Cluster::start_with_resp(3, &["--users", file.to_str().unwrap()]);
    cluster.credentials = Some(Credentials::Token("ops-token-0123456789".into()));
    cluster.wait_leader(Duration::from_secs(15)).await;
    (cluster, dir, file)
}

/// A follower of the cluster (requests there are forwarded to the leader).
async fn follower(cluster: &Cluster) -> u64 {
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    (1..=3).find(|id| *id != leader).unwrap()
}

fn error(frame: Frame) -> String {
    frame.error_text().to_string()
}

fn assert_no_secrets(cluster: &Cluster) {
    let logs = cluster.logs();
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} is in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_users_get_what_their_role_allows() {
    let _serial = serial().await;
    let (cluster, _dir, _file) = cluster_with_users(USERS).await;
    let node = follower(&cluster).await;
    let address = cluster.resp(node);

    let mut anonymous = RespConnection::connect(&address);
    assert!(error(anonymous.cmd("GET k")).starts_with("NOAUTH"));
    assert!(error(anonymous.cmd("PING")).starts_with("NOAUTH"));
    assert!(error(anonymous.cmd("AUTH viewer wrong")).starts_with("WRONGPASS"));
    assert!(error(anonymous.cmd("AUTH nobody view-pass-1")).starts_with("WRONGPASS"));
    // No default user: the one-argument form names nobody who could log in.
    assert!(error(anonymous.cmd("AUTH view-pass-1")).starts_with("WRONGPASS"));
    assert!(error(anonymous.cmd("HELLO 3")).starts_with("NOAUTH"));

    // read-only, logged in by HELLO 3 AUTH (as LiveKit does).
    let mut viewer = RespConnection::connect(&address);
    assert!(matches!(
        viewer.cmd("HELLO 3 AUTH viewer view-pass-1"),
        Frame::Map(_)
    ));
    assert_eq!(viewer.cmd("ACL WHOAMI"), Frame::bulk("viewer"));
    assert_eq!(viewer.cmd("GET k"), Frame::Nil);
    assert_eq!(
        error(viewer.cmd("SET k v")),
        "NOPERM User viewer has no permissions to run the 'set' command"
    );
    assert!(error(viewer.cmd("PUBLISH ch m")).starts_with("NOPERM"));
    assert!(error(viewer.cmd("CONFIG GET maxclients")).starts_with("NOPERM"));
    assert!(error(viewer.cmd("ACL USERS")).starts_with("NOPERM"));
    // A pipeline of writes (sent to the leader together for a user who may write).
    viewer.send(&[b"SET", b"a", b"1"]);
    viewer.send(&[b"INCR", b"b"]);
    assert!(error(viewer.read()).starts_with("NOPERM"));
    assert!(error(viewer.read()).starts_with("NOPERM"));
    // MULTI: refused when queued, so EXEC aborts.
    assert_eq!(viewer.cmd("MULTI"), Frame::status("OK"));
    assert!(error(viewer.cmd("SET k v")).starts_with("NOPERM"));
    assert!(error(viewer.cmd("EXEC")).starts_with("EXECABORT"));
    // A script that writes (the lock-release script clients send) is refused.
    let release = br#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
    let refused = viewer.call(&[b"EVAL", release, b"1", b"k", b"v"]);
    assert_eq!(
        error(refused),
        "NOPERM this user has no permissions to run a script that writes"
    );

    // read-write, with redis-cli.
    let (host, port) = address.rsplit_once(':').unwrap();
    let cli = |user: &str, password: &str, args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", host, "-p", port, "--user", user, "--pass", password])
            .arg("--no-auth-warning")
            .args(args)
            .output()
            .expect("redis-cli (scripts/setup-test-deps.sh installs it)");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
            + &String::from_utf8_lossy(&output.stderr)
    };
    assert_eq!(cli("livekit", "lk-pass-1", &["SET", "k", "written"]), "OK");
    assert_eq!(cli("livekit", "lk-pass-1", &["GET", "k"]), "written");
    assert!(cli("livekit", "lk-pass-1", &["CONFIG", "GET", "maxclients"]).contains("NOPERM"));
    assert!(cli("livekit", "wrong", &["GET", "k"]).contains("WRONGPASS"));
    // The read-only connection now reads the write.
    assert_eq!(viewer.cmd("GET k"), Frame::bulk("written"));

    // admin, with redis-py.
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='{host}', port={port}, username='ops', password='ops-pass-1', decode_responses=True)\n\
         assert r.acl_whoami() == 'ops', r.acl_whoami()\n\
         assert sorted(r.acl_users()) == ['livekit', 'ops', 'viewer', 'writer'], r.acl_users()\n\
         assert r.config_get('maxclients')\n\
         # requirepass never shows a secret\n\
         assert r.config_get('requirepass')['requirepass'] in ('', '<redacted>')\n\
         bad = redis.Redis(host='{host}', port={port}, username='ops', password='nope')\n\
         try:\n    bad.get('k')\n    raise SystemExit('a wrong password was let in')\n\
         except redis.exceptions.AuthenticationError:\n    pass\n\
         print('ok')\n"
    );
    let output = Command::new(repo().join(".test-env/bin/python"))
        .args(["-c", &script])
        .output()
        .expect("redis-py (scripts/setup-test-deps.sh installs it)");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_no_secrets(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_users_file_applies_to_open_connections() {
    let _serial = serial().await;
    let (cluster, _dir, file) = cluster_with_users(USERS).await;
    let address = cluster.resp(follower(&cluster).await);
    let mut viewer = RespConnection::connect(&address);
    assert_eq!(viewer.cmd("AUTH viewer view-pass-1"), Frame::status("OK"));
    assert!(error(viewer.cmd("SET k v")).starts_with("NOPERM"));
    let mut livekit = RespConnection::connect(&address);
    assert_eq!(livekit.cmd("AUTH livekit lk-pass-1"), Frame::status("OK"));
    let mut subscriber = RespConnection::connect(&address);
    assert_eq!(
        subscriber.cmd("AUTH livekit lk-pass-1"),
        Frame::status("OK")
    );
    assert!(matches!(subscriber.cmd("SUBSCRIBE ch"), Frame::Array(_)));

    // writer, with a transaction queued, and a pipeline of writes behind.
    let mut writer = RespConnection::connect(&address);
    assert_eq!(writer.cmd("AUTH writer writer-pass-1"), Frame::status("OK"));
    assert_eq!(writer.cmd("SET w 1"), Frame::status("OK"));
    assert_eq!(writer.cmd("MULTI"), Frame::status("OK"));
    assert_eq!(writer.cmd("SET w 2"), Frame::status("QUEUED"));

    // viewer becomes read-write, writer read-only; livekit is removed.
    let changed = USERS
        .replace("role = \"read-only\"", "role = \"read-write\"")
        .replace(
            "name = \"writer\"\nrole = \"read-write\"",
            "name = \"writer\"\nrole = \"read-only\"",
        )
        .replace(
            "[[user]]\nname = \"livekit\"\nrole = \"read-write\"\npassword = \"lk-pass-1\"\ntokens = [\"livekit-token-0123456789\"]\n",
            "",
        );
    assert!(!changed.contains("livekit"));
    std::fs::write(&file, &changed).unwrap(); // the node reads the file every 2 s
    let started = Instant::now();
    loop {
        match viewer.cmd("SET k v") {
            Frame::Status(ok) if ok == "OK" => break,
            other => assert!(error(other).starts_with("NOPERM")),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new role was not taken"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The downgraded user's queued transaction and its plain writes, pipelined or not, are
    // refused from now on.
    assert!(error(writer.cmd("EXEC")).starts_with("NOPERM"));
    writer.send(&[b"SET", b"w", b"3"]);
    writer.send(&[b"INCR", b"n"]);
    assert!(error(writer.read()).starts_with("NOPERM"));
    assert!(error(writer.read()).starts_with("NOPERM"));
    assert_eq!(writer.cmd("GET w"), Frame::bulk("1"));
    // The removed user's connections end: one at its next command (a plain write, which
    // takes the pipeline's path), the subscriber at its next message.
    assert!(error(livekit.cmd("SET k x")).starts_with("NOAUTH"));
    assert!(livekit.is_closed());
    let mut publisher = RespConnection::connect(&address);
    assert_eq!(publisher.cmd("AUTH ops ops-pass-1"), Frame::status("OK"));
    publisher.cmd("PUBLISH ch m");
    assert!(subscriber.is_closed());
    // New logins follow the file too.
    let mut again = RespConnection::connect(&address);
    assert!(error(again.cmd("AUTH livekit lk-pass-1")).starts_with("WRONGPASS"));

    // A broken file keeps the users in use.
    std::fs::write(&file, "[[user]\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut ops = RespConnection::connect(&address);
    assert_eq!(ops.cmd("AUTH ops ops-pass-1"), Frame::status("OK"));
    assert!(cluster
        .logs()
        .contains("users file changed but cannot be used"));
    assert_no_secrets(&cluster);
}

fn connect_options(credentials: Option<Credentials>) -> ConnectOptions {
    ConnectOptions {
        tls: None,
        credentials,
    }
}

async fn client_as(cluster: &Cluster, id: u64, credentials: Option<Credentials>) -> Client {
    Client::connect_with([cluster.endpoint(id)], connect_options(credentials))
        .await
        .unwrap()
}

fn token(token: &str) -> Option<Credentials> {
    Some(Credentials::Token(token.into()))
}

fn password(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials::Password {
        user: user.into(),
        password: password.into(),
    })
}

fn code<T: std::fmt::Debug>(result: Result<T, conclave_client::Error>) -> Code {
    result.unwrap_err().code().expect("a status from the node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_need_credentials_and_a_role_that_allows_them() {
    let _serial = serial().await;
    let (cluster, _dir, _file) = cluster_with_users(USERS).await;
    let node = follower(&cluster).await;

    let anonymous = client_as(&cluster, node, None).await;
    assert_eq!(code(anonymous.get("k").await), Code::Unauthenticated);
    assert_eq!(code(anonymous.status().await), Code::Unauthenticated);
    let forged = client_as(&cluster, node, token("not-a-token-0123456789")).await;
    assert_eq!(code(forged.get("k").await), Code::Unauthenticated);
    let wrong = client_as(&cluster, node, password("ops", "nope")).await;
    assert_eq!(code(wrong.get("k").await), Code::Unauthenticated);

    let viewer = client_as(&cluster, node, token("viewer-token-0123456789")).await;
    assert_eq!(viewer.get("k").await.unwrap(), None);
    assert_eq!(code(viewer.set("k", "v").await), Code::PermissionDenied);

    let livekit = client_as(&cluster, node, password("livekit", "lk-pass-1")).await;
    livekit.set("k", "v").await.unwrap();
    assert_eq!(
        code(livekit.transfer_leadership(None).await),
        Code::PermissionDenied
    );
    assert_eq!(code(livekit.remove_member(3).await), Code::PermissionDenied);
    assert_eq!(
        code(livekit.add_member(9, "127.0.0.1:1", true).await),
        Code::PermissionDenied
    );
    // The read-only user reads the write.
    assert_eq!(viewer.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));

    let ops = client_as(&cluster, node, token("ops-token-0123456789")).await;
    let (after, _) = ops.transfer_leadership(Some(node)).await.unwrap();
    assert_eq!(after, node);

    // The health service answers anyone (load balancers probe it).
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(node)))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "{health:?}");

    // ctl: refused without credentials, with the reason; served with a token from the
    // environment or a user and password.
    let ctl = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = Command::new(binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CONCLAVE_") {
                command.env_remove(key);
            }
        }
        command
            .args(["ctl", "--endpoint", &cluster.endpoint(node)])
            .args(args)
            .envs(env.iter().copied());
        command.output().unwrap()
    };
    let refused = ctl(&[], &["status"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("credentials required"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let served = ctl(
        &[("CONCLAVE_TOKEN", "viewer-token-0123456789")],
        &["status"],
    );
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    let denied = ctl(
        &[
            ("CONCLAVE_USER", "livekit"),
            ("CONCLAVE_PASSWORD", "lk-pass-1"),
        ],
        &["members", "remove", "3"],
    );
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("may not call"), "{stderr}");
    for output in [&refused, &served, &denied] {
        for secret in SECRETS {
            assert!(!String::from_utf8_lossy(&output.stdout).contains(secret));
            assert!(!String::from_utf8_lossy(&output.stderr).contains(secret));
        }
    }
    assert_no_secrets(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_user_is_open_by_default_and_closed_by_a_password() {
    let _serial = serial().await;
    // No users file, no password: as a Redis without requirepass.
    let open = Cluster::start_with_resp(1, &[]);
    open.wait_leader(Duration::from_secs(15)).await;
    let mut connection = RespConnection::connect(&open.resp(1));
    assert_eq!(connection.cmd("SET k v"), Frame::status("OK"));
    // LiveKit sends AUTH default <something> when configured with one: accepted.
    assert_eq!(connection.cmd("AUTH default anything"), Frame::status("OK"));
    assert!(error(connection.cmd("AUTH anything")).contains("without any password configured"));
    assert_eq!(connection.cmd("ACL WHOAMI"), Frame::bulk("default"));
    client_as(&open, 1, None).await.set("k", "v").await.unwrap();
    drop(open);

    // --resp-password: the default user's password, over RESP and gRPC alike.
    let mut closed = Cluster::start_with_resp(1, &["--resp-password", "default-pass-1"]);
    closed.credentials = password("default", "default-pass-1");
    closed.wait_leader(Duration::from_secs(15)).await;
    let mut connection = RespConnection::connect(&closed.resp(1));
    assert!(error(connection.cmd("GET k")).starts_with("NOAUTH"));
    assert!(error(connection.cmd("AUTH wrong")).starts_with("WRONGPASS"));
    assert_eq!(connection.cmd("AUTH default-pass-1"), Frame::status("OK"));
    assert_eq!(connection.cmd("SET k v"), Frame::status("OK"));
    assert_eq!(
        code(client_as(&closed, 1, None).await.get("k").await),
        Code::Unauthenticated
    );
    let default = client_as(&closed, 1, password("default", "default-pass-1")).await;
    assert_eq!(default.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    let logs = closed.logs();
    assert!(!logs.contains("default-pass-1"), "{logs}");
    drop(closed);

    // A users file that gives the default user nopass and read-only: anonymous reads work,
    // anonymous writes do not.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(
        &file,
        "[[user]]\nname = \"default\"\nrole = \"read-only\"\nnopass = true\n",
    )
    .unwrap();
    let reader = Cluster::start_with_resp(1, &["--users", file.to_str().unwrap()]);
    reader.wait_leader(Duration::from_secs(15)).await;
    let anonymous = client_as(&reader, 1, None).await;
    assert_eq!(anonymous.get("k").await.unwrap(), None);
    assert_eq!(code(anonymous.set("k", "v").await), Code::PermissionDenied);
    let mut connection = RespConnection::connect(&reader.resp(1));
    assert_eq!(connection.cmd("GET k"), Frame::Nil);
    assert!(error(connection.cmd("SET k v")).starts_with("NOPERM"));
}

#[test]
fn a_bad_users_file_stops_the_start_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(&file, "[[user]]\nname = \"a\"\nrole = \"root\"\n").unwrap();
    let output = Command::new(binary())
        .args([
            "server",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--check-config",
        ])
        .args(["--initial-cluster", "1=127.0.0.1:1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--users")
        .arg(&file)
        .env_remove("CONCLAVE_USERS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(stderr.contains("unknown role \"root\""), "{stderr}");
}
