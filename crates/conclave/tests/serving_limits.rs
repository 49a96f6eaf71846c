//! Limits on what a node serves at once, each hit and answered in its protocol's own terms while
//! the node keeps serving: RESP clients (`--resp-max-clients`), gRPC connections
//! (`--grpc-max-connections`), subscriptions per subscriber (`--max-subscriptions`), and a
//! subscriber's unread output over time (the soft limit of `--pubsub-output-buffer-limit`).

mod common;

use std::time::{Duration, Instant};

use common::resp::{Frame, RespConnection};
use common::{eventually, serial, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_each_protocols_limit_are_refused_and_the_node_keeps_serving() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(
        1,
        &["--resp-max-clients", "2", "--grpc-max-connections", "3"],
    );
    cluster.wait_leader(Duration::from_secs(15)).await;

    // RESP: the third client is told why, as Redis tells it, and closed.
    let mut first = RespConnection::connect(&cluster.resp(1));
    let mut second = RespConnection::connect(&cluster.resp(1));
    assert_eq!(first.cmd("PING"), Frame::status("PONG"));
    assert_eq!(second.cmd("PING"), Frame::status("PONG"));
    let mut third = RespConnection::connect(&cluster.resp(1));
    let refused = third.read();
    assert_eq!(refused.error_text(), "ERR max number of clients reached");
    assert!(third.is_closed());
    assert_eq!(
        first.cmd("CONFIG GET maxclients"),
        Frame::Array(vec![Frame::bulk("maxclients"), Frame::bulk("2")])
    );
    drop(second);
    let mut again = eventually(
        Duration::from_secs(5),
        "a RESP client taken again",
        async || {
            let mut connection = RespConnection::connect(&cluster.resp(1));
            (connection.cmd("PING") == Frame::status("PONG")).then_some(connection)
        },
    )
    .await;
    assert_eq!(again.cmd("SET k v"), Frame::status("OK"));

    // gRPC: connections are taken until three are open; the next is refused with a GOAWAY
    // that says why, and no call on it runs.
    let url = format!("http://{}", cluster.endpoint(1));
    let mut open = Vec::new();
    let refusal = loop {
        assert!(open.len() <= 3, "more than 3 gRPC connections were served");
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .expect("the TCP connection is accepted");
        let mut kv = conclave_client::v1::kv_client::KvClient::new(channel.clone());
        let call = kv
            .set(conclave_client::v1::SetRequest {
                key: format!("conn{}", open.len()).into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await;
        match call {
            Ok(_) => open.push(channel),
            Err(status) => break status,
        }
    };
    // tonic reads ENHANCE_YOUR_CALM as RESOURCE_EXHAUSTED, and keeps the reason in the source.
    let text = format!("{refusal:?}");
    assert!(
        text.contains("too many connections: this node serves at most 3 gRPC connections"),
        "the refusal says why: {text}"
    );
    assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{text}");
    assert_eq!(open.len(), 3, "three connections were served");
    // Every refused client hears why. A GOAWAY sent before the client's first request let
    // the client close the idle connection itself, and the request then failed as CANCELLED
    // ("connection closed"), now and then.
    for attempt in 0..30 {
        let status = refused_call(&url, "again").await;
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "refused connection {attempt}: {status:?}"
        );
    }
    // What the refused connection sent was never applied.
    let served = open.len();
    drop(open);
    let client = eventually(
        Duration::from_secs(5),
        "a gRPC client served again",
        async || {
            let client = cluster.client(1).await;
            client.get("k").await.ok().map(|_| client)
        },
    )
    .await;
    assert_eq!(
        client.get(format!("conn{served}")).await.unwrap(),
        None,
        "the call on the refused connection did not run"
    );
    assert_eq!(
        client.get("again").await.unwrap(),
        None,
        "no refused call ran"
    );
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// A call on a new connection to `url`, which the node must refuse.
async fn refused_call(url: &str, key: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("the TCP connection is accepted");
    let mut kv = conclave_client::v1::kv_client::KvClient::new(channel);
    kv.set(conclave_client::v1::SetRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .expect_err("the connection is refused")
}

/// The subscription count a RESP2 (P)SUBSCRIBE reply carries.
fn subscribed_count(reply: Frame) -> i64 {
    match reply {
        Frame::Array(items) if items.len() == 3 => match items[2] {
            Frame::Integer(n) => n,
            _ => panic!("not a subscription reply: {items:?}"),
        },
        other => panic!("not a subscription reply: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_change_past_the_limit_is_refused_whole() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &["--max-subscriptions", "3"]);
    cluster.wait_leader(Duration::from_secs(15)).await;

    // RESP: the change that would make four is refused, none of it applied; the subscriber
    // keeps what it had and may still go up to the limit.
    let mut subscriber = RespConnection::connect(&cluster.resp(2));
    subscriber.send(&[b"SUBSCRIBE", b"a", b"b"]);
    assert_eq!(subscribed_count(subscriber.read()), 1);
    assert_eq!(subscribed_count(subscriber.read()), 2);
    let refused = subscriber.call(&[b"SUBSCRIBE", b"c", b"d"]);
    assert!(
        refused
            .error_text()
            .starts_with("ERR too many subscriptions: a subscriber holds at most 3"),
        "{refused:?}"
    );
    let refused = subscriber.call(&[b"PSUBSCRIBE", b"p*", b"q*"]);
    assert!(
        refused.error_text().contains("would make it 4"),
        "{refused:?}"
    );
    // Names it already holds do not count again.
    subscriber.send(&[b"SUBSCRIBE", b"a", b"c", b"c"]);
    assert_eq!(subscribed_count(subscriber.read()), 2);
    assert_eq!(subscribed_count(subscriber.read()), 3);
    assert_eq!(subscribed_count(subscriber.read()), 3);
    let mut publisher = RespConnection::connect(&cluster.resp(1));
    assert_eq!(publisher.cmd("PUBLISH c hello"), Frame::Integer(1));
    assert_eq!(
        subscriber.read(),
        Frame::Array(vec![
            Frame::bulk("message"),
            Frame::bulk("c"),
            Frame::bulk("hello")
        ])
    );
    assert_eq!(publisher.cmd("PUBLISH d nobody"), Frame::Integer(0));

    // A connection whose first SUBSCRIBE is refused is not left in subscribed mode.
    let mut fresh = RespConnection::connect(&cluster.resp(3));
    let refused = fresh.call(&[b"SUBSCRIBE", b"w", b"x", b"y", b"z"]);
    assert!(refused.error_text().contains("at most 3"), "{refused:?}");
    assert_eq!(fresh.cmd("SET after refusal"), Frame::status("OK"));

    // gRPC: the stream ends with the reason, as RESOURCE_EXHAUSTED.
    let client = cluster.client(3).await;
    let mut grpc = client.subscriber();
    grpc.subscribe(&["a", "b", "c"]).await.expect("three");
    assert!(grpc.subscribe(&["d"]).await.is_err());
    let ended = tokio::time::timeout(Duration::from_secs(5), grpc.next())
        .await
        .expect("the subscriber ends");
    let reason = format!("{ended:?}");
    assert!(reason.contains("too many subscriptions"), "{reason}");
    client.set("still", "serving").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_over_the_soft_limit_for_its_time_is_disconnected() {
    let _serial = serial().await;
    // Hard 64 MiB, soft 1 MiB for 2 s.
    let cluster = Cluster::start_with_resp(1, &["--pubsub-output-buffer-limit", "64mb 1mb 2"]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let mut slow = RespConnection::connect(&cluster.resp(1));
    assert_eq!(subscribed_count(slow.call(&[b"SUBSCRIBE", b"flood"])), 1);
    let mut publisher = RespConnection::connect(&cluster.resp(1));
    assert_eq!(
        publisher.cmd("CONFIG GET client-output-buffer-limit"),
        Frame::Array(vec![
            Frame::bulk("client-output-buffer-limit"),
            Frame::bulk("normal 0 0 0 replica 0 0 0 pubsub 67108864 1048576 2"),
        ])
    );

    // 16 MiB unread: more than the sockets hold, so several MiB wait in the node's buffer for
    // the subscriber, over the soft limit and under the hard one.
    let payload = vec![b'x'; 256 * 1024];
    let started = Instant::now();
    for _ in 0..64 {
        assert_eq!(
            publisher.call(&[b"PUBLISH", b"flood", &payload]),
            Frame::Integer(1)
        );
    }
    let flooded = started.elapsed();
    assert!(
        flooded < Duration::from_secs(2),
        "the flood took {flooded:?}, as long as the soft limit's time: nothing to tell apart"
    );

    // Once it has been over the soft limit for 2 s, the next message disconnects it.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    eventually(
        Duration::from_secs(5),
        "the slow subscriber disconnected",
        async || {
            let receivers = publisher.call(&[b"PUBLISH", b"flood", b"more"]);
            (receivers == Frame::Integer(0)).then_some(())
        },
    )
    .await;
    assert!(slow.is_closed());
    let logs = cluster.logs();
    assert!(
        logs.contains("more than 1048576 bytes were waiting to be read for 2s"),
        "the soft limit's reason is logged: {logs}"
    );
    assert_eq!(publisher.cmd("PING"), Frame::status("PONG"));
}
