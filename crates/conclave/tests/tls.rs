//! TLS and mutual TLS on a real 3-node cluster, with certificates from `conclave certs`: the
//! cluster forms and serves over TLS; a plaintext client gets nothing; a client certificate
//! (not a node one) cannot make node-to-node calls; a certificate from another CA does not get
//! through the handshake; a renewed certificate is served without a restart; connections that
//! never start their handshake are closed when their time is up, without holding up the others.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binary, serial, Cluster};
use conclave_client::{Certificate, Client, ClientTlsConfig, Identity};
use conclave_proto::peer::peer_client::PeerClient;
use conclave_proto::peer::IdentifyRequest;

/// Runs `conclave certs --dir DIR ARGS`.
fn certs(dir: &Path, args: &[&str]) {
    let output = Command::new(binary())
        .args(["certs", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run conclave certs");
    assert!(
        output.status.success(),
        "certs {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// TLS settings trusting `ca_dir`'s CA, presenting `identity` (a NAME in `identity_dir`).
fn tls_config(ca_dir: &Path, identity: Option<(&Path, &str)>) -> ClientTlsConfig {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca_dir.join("ca.pem"))));
    if let Some((dir, name)) = identity {
        tls = tls.identity(Identity::from_pem(
            read(dir.join(format!("{name}.pem"))),
            read(dir.join(format!("{name}-key.pem"))),
        ));
    }
    tls
}

/// A 3-node cluster whose nodes use TLS with certificates from a CA in `dir`.
fn tls_cluster(dir: &Path) -> Cluster {
    certs(dir, &["ca"]);
    let mut cluster = Cluster::define(3, &[], false);
    for id in 1..=3u64 {
        let name = format!("n{id}");
        certs(dir, &["node", &name, "--host", "127.0.0.1"]);
        let node = cluster.nodes.get_mut(&id).expect("defined");
        for (flag, file) in [
            ("--tls-cert", format!("{name}.pem")),
            ("--tls-key", format!("{name}-key.pem")),
            ("--tls-ca", "ca.pem".to_string()),
        ] {
            node.extra_args.push(flag.to_string());
            node.extra_args.push(dir.join(file).display().to_string());
        }
        cluster.restart(id);
    }
    cluster
}

/// Waits until node `id`, asked over TLS, knows a leader; returns it.
async fn wait_leader(cluster: &Cluster, id: u64, tls: &ClientTlsConfig) -> u64 {
    let client = Client::connect_with([cluster.endpoint(id)], over_tls(tls.clone()))
        .await
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), client.status()).await
        {
            if let Some(leader) = status.leader {
                return leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader over TLS\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_cluster_serves_clients_and_only_nodes_make_node_calls() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let certs_dir = dir.path().join("certs");
    let cluster = tls_cluster(&certs_dir);
    let ca_only = tls_config(&certs_dir, None);
    wait_leader(&cluster, 1, &ca_only).await;

    // The peers replicate over mutual TLS: a write through one node is read on another.
    let writer = Client::connect_with([cluster.endpoint(2)], over_tls(ca_only.clone()))
        .await
        .expect("client");
    let revision = writer.set("over-tls", "yes").await.expect("write over TLS");
    let reader = Client::connect_with([cluster.endpoint(3)], over_tls(ca_only.clone()))
        .await
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = reader.status().await.expect("status over TLS");
        if status.applied >= revision {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never applied the write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A plaintext client gets no answer at all.
    let plain = Client::connect([cluster.endpoint(1)])
        .await
        .expect("client");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), plain.status())
            .await
            .map_or(true, |answer| answer.is_err()),
        "a plaintext client was answered"
    );

    // Node-to-node calls: a node certificate is let through; a client certificate from the
    // same CA, or no certificate, is refused with UNAUTHENTICATED.
    certs(&certs_dir, &["client", "alice"]);
    let identify = |tls: ClientTlsConfig| {
        let endpoint = format!("https://{}", cluster.endpoint(1));
        async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .expect("uri")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("connect");
            PeerClient::new(channel)
                .identify(IdentifyRequest { caller_id: 3 })
                .await
        }
    };
    let as_node = identify(tls_config(&certs_dir, Some((&certs_dir, "n3")))).await;
    assert!(
        as_node.is_ok(),
        "a node certificate was refused: {as_node:?}"
    );
    for (who, tls) in [
        (
            "a client certificate",
            tls_config(&certs_dir, Some((&certs_dir, "alice"))),
        ),
        ("no certificate", ca_only.clone()),
    ] {
        let refused = identify(tls).await.expect_err(who);
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "{who}: {refused:?}"
        );
    }

    // A certificate from the cluster's CA without any extended key usage is not a node
    // certificate either (webpki alone would take it for a server certificate).
    write_certificate_without_usages(&certs_dir, "bare");
    let refused = identify(tls_config(&certs_dir, Some((&certs_dir, "bare"))))
        .await
        .expect_err("a certificate without usages");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A node certificate from another CA does not get through the handshake.
    let other = dir.path().join("other");
    certs(&other, &["ca"]);
    certs(&other, &["node", "rogue", "--host", "127.0.0.1"]);
    let rogue = tls_config(&certs_dir, Some((&other, "rogue")));
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.endpoint(1)))
            .expect("uri")
            .tls_config(rogue)
            .expect("tls")
            .connect()
            .await;
    let refused = match channel {
        Err(_) => true,
        Ok(channel) => PeerClient::new(channel)
            .identify(IdentifyRequest { caller_id: 3 })
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");
}

/// Writes NAME.pem and NAME-key.pem in `dir`: a certificate signed by the CA there, with no
/// extended key usage extension at all.
fn write_certificate_without_usages(dir: &Path, name: &str) {
    let ca_key =
        rcgen::KeyPair::from_pem(&String::from_utf8(read(dir.join("ca-key.pem"))).unwrap())
            .expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Conclave cluster CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
}

/// The end-entity certificate node `address` serves now.
async fn served_certificate(address: &str, ca: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = connector.connect(name, socket).await.expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_without_a_restart() {
    use rustls::pki_types::pem::PemObject;
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let certs_dir = dir.path().join("certs");
    let cluster = tls_cluster(&certs_dir);
    let ca_only = tls_config(&certs_dir, None);
    wait_leader(&cluster, 1, &ca_only).await;
    let file_der = || {
        rustls::pki_types::CertificateDer::from_pem_file(certs_dir.join("n1.pem"))
            .expect("n1.pem")
            .to_vec()
    };
    let before = served_certificate(&cluster.endpoint(1), &certs_dir.join("ca.pem")).await;
    assert_eq!(before, file_der());

    // Renew node 1's certificate in place (a new key and serial number).
    certs(&certs_dir, &["node", "n1", "--host", "127.0.0.1"]);
    let renewed = file_der();
    assert_ne!(renewed, before);
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_certificate(&cluster.endpoint(1), &certs_dir.join("ca.pem")).await != renewed {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the cluster still works, node 1 included.
    let client = Client::connect_with([cluster.endpoint(1)], over_tls(ca_only))
        .await
        .expect("client");
    client
        .set("after-renewal", "yes")
        .await
        .expect("write after the renewal");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_talks_to_the_resp_port_over_tls_and_plaintext_gets_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let certs_dir = dir.path().join("certs");
    let mut cluster = tls_cluster(&certs_dir);
    // Node 1 again, now with RESP over TLS too.
    let resp = format!("127.0.0.1:{}", common::free_port());
    cluster.kill(1);
    let node = cluster.nodes.get_mut(&1).expect("node 1");
    node.extra_args
        .extend(["--resp".to_string(), resp.clone(), "--resp-tls".to_string()]);
    cluster.restart(1);
    wait_leader(&cluster, 1, &tls_config(&certs_dir, None)).await;
    let port = resp.rsplit_once(':').expect("port").1.to_string();
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli is missing: run scripts/setup-test-deps.sh")
    };
    let ca = certs_dir.join("ca.pem").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let set = cli(&["--tls", "--cacert", &ca, "set", "tls-key", "tls-value"]);
        if String::from_utf8_lossy(&set.stdout).trim() == "OK" {
            break;
        }
        assert!(Instant::now() < deadline, "SET over TLS: {set:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let get = cli(&["--tls", "--cacert", &ca, "get", "tls-key"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "tls-value");
    let plain = cli(&["get", "tls-key"]);
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("tls-value"),
        "a plaintext client read the value: {plain:?}"
    );
}

/// A one-node cluster, defined and not started, on a CA and a node certificate `n1` for
/// 127.0.0.1 made in `certs_dir`.
fn single_tls_node(certs_dir: &Path) -> Cluster {
    certs(certs_dir, &["ca"]);
    certs(certs_dir, &["node", "n1", "--host", "127.0.0.1"]);
    let mut cluster = Cluster::define(1, &[], false);
    let node = cluster.nodes.get_mut(&1).unwrap();
    for (flag, file) in [
        ("--tls-cert", "n1.pem"),
        ("--tls-key", "n1-key.pem"),
        ("--tls-ca", "ca.pem"),
    ] {
        node.extra_args
            .extend([flag.to_string(), certs_dir.join(file).display().to_string()]);
    }
    cluster
}

/// Connect options with TLS and no credentials.
fn over_tls(tls: conclave_client::ClientTlsConfig) -> conclave_client::ConnectOptions {
    conclave_client::ConnectOptions {
        tls: Some(tls),
        credentials: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_over_https_with_the_node_certificate() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let mut cluster = single_tls_node(&certs_dir);
    let node = cluster.nodes.get_mut(&1).unwrap();
    node.extra_args.extend([
        "--metrics".to_string(),
        metrics.clone(),
        "--metrics-tls".into(),
    ]);
    cluster.restart(1);
    wait_leader(&cluster, 1, &tls_config(&certs_dir, None)).await;

    let scrape = |url: String, ca: Option<&Path>| common::run_metrics_scraper(&url, ca);
    let scraped = scrape(
        format!("https://{metrics}/metrics"),
        Some(&certs_dir.join("ca.pem")),
    );
    let stdout = String::from_utf8_lossy(&scraped.stdout);
    assert!(
        scraped.status.success(),
        "{}",
        String::from_utf8_lossy(&scraped.stderr)
    );
    assert!(stdout.contains("\"conclave_raft_term\""), "{stdout}");
    // Plain HTTP gets no metrics from it.
    let plain = scrape(format!("http://{metrics}/metrics"), None);
    assert!(!plain.status.success(), "plain HTTP was answered");
}

/// A flood of connections that never start their TLS handshake: each is closed once its
/// handshake time (10 s) is up, at most 256 hold a turn at once and later ones wait for one, a
/// client connected before the flood is served throughout, and a new client after it.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_are_closed_when_their_handshake_time_is_up() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let mut cluster = single_tls_node(&certs_dir);
    cluster.restart(1);
    let tls = tls_config(&certs_dir, None);
    wait_leader(&cluster, 1, &tls).await;
    let before = Client::connect_with([cluster.endpoint(1)], over_tls(tls.clone()))
        .await
        .expect("client");
    before.set("flood:before", "1").await.expect("put before");

    const SILENT: usize = 300; // past the 256 handshakes in progress at once
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(
            tokio::net::TcpStream::connect(cluster.endpoint(1))
                .await
                .expect("connect"),
        );
    }
    // Served on its connection while every handshake turn is held.
    for i in 0..5 {
        tokio::time::timeout(
            Duration::from_secs(5),
            before.set(format!("flood:{i}"), "1"),
        )
        .await
        .expect("a connected client is served during the flood")
        .expect("put during the flood");
    }
    let closed = silent.into_iter().map(|mut socket| async move {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        // Closed by the node: end of stream or a reset, never data.
        let read = socket.read(&mut byte).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a silent connection got {read:?}"
        );
        started.elapsed()
    });
    let closed = tokio::time::timeout(Duration::from_secs(40), futures::future::join_all(closed))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "silent connections were still open 40 s on\n{}",
                cluster.logs()
            )
        });
    let first = closed.iter().min().copied().expect("some");
    let last = closed.iter().max().copied().expect("some");
    assert!(
        first >= Duration::from_secs(9),
        "a silent connection was closed after {first:?}, before its 10 s"
    );
    // The ones past the 256 turns got theirs when the first were closed: a second 10 s.
    assert!(
        last >= Duration::from_secs(19),
        "every silent connection had a turn at once (last closed after {last:?}): no cap"
    );
    let after = Client::connect_with([cluster.endpoint(1)], over_tls(tls))
        .await
        .expect("client after the flood");
    let value = tokio::time::timeout(Duration::from_secs(5), after.get("flood:4"))
        .await
        .expect("a new client is served after the flood")
        .expect("get");
    assert!(value.is_some(), "the write made during the flood is there");
}
