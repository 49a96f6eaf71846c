//! Cluster-wide pub/sub on real clusters: fan-out, order, causality, patterns, slow subscribers.

mod common;

use std::time::{Duration, Instant};

use common::resp::{Frame, RespConnection};
use common::{serial, Cluster};
use conclave_client::{v1, Consistency, Message, Subscriber};

/// Receives `count` messages, or fails after `within`.
async fn receive(subscriber: &mut Subscriber, count: usize, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, subscriber.next()).await {
            Ok(Some(Ok(message))) => got.push(message),
            Ok(other) => panic!("subscriber ended after {} messages: {other:?}", got.len()),
            Err(_) => panic!("only {} of {count} messages arrived", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_subscribers_on_every_node_in_publish_order() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let mut subscribers = Vec::new();
    for id in 1..=3 {
        let client = cluster.client(id).await;
        let subscriber = client.subscriber();
        subscriber.subscribe(&["room:42"]).await.unwrap();
        subscribers.push((client, subscriber));
    }
    let publisher = cluster.client(1).await;
    let total = 500;
    for i in 0..total {
        publisher.publish("room:42", i.to_string()).await.unwrap();
    }
    publisher
        .publish("room:other", "not for them")
        .await
        .unwrap();
    for (_, subscriber) in &mut subscribers {
        let got = receive(subscriber, total, Duration::from_secs(20)).await;
        let payloads: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8(m.payload.clone()).unwrap())
            .collect();
        let expected: Vec<String> = (0..total).map(|i| i.to_string()).collect();
        assert_eq!(payloads, expected);
        assert!(got
            .iter()
            .all(|m| m.channel == b"room:42" && m.origin_node == 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reads_its_own_node_upon_receipt_sees_the_write_before_the_message() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // The subscriber's reads use a separate client at LOCAL consistency, so nothing but the
    // node's causal delivery can make the write visible.
    let subscriber_client = cluster.client(follower).await;
    let mut subscriber = subscriber_client.subscriber();
    subscriber.subscribe(&["turns"]).await.unwrap();
    let reader = cluster.client(follower).await;
    let publisher = cluster.client(leader).await;
    let rounds = 60;
    let publishing = tokio::spawn(async move {
        for i in 0..rounds {
            publisher.set("turn", i.to_string()).await.unwrap();
            publisher.publish("turns", i.to_string()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Stall the subscriber's node for a while: the messages published meanwhile wait in its
    // relay stream, and when it wakes they are there before the log entries they follow.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.pause(follower);
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.resume(follower);
    for received in 0..rounds {
        let message = receive(&mut subscriber, 1, Duration::from_secs(30))
            .await
            .remove(0);
        let announced: u64 = String::from_utf8(message.payload).unwrap().parse().unwrap();
        assert_eq!(announced, received as u64, "in publish order");
        let read = reader
            .get_with("turn", Consistency::Local)
            .await
            .unwrap()
            .expect("the write before the message is visible");
        let current: u64 = String::from_utf8(read.value).unwrap().parse().unwrap();
        assert!(
            current >= announced,
            "message {announced} delivered before its write (the node had {current})"
        );
    }
    publishing.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_node_dies_resubscribes_on_another_by_itself() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let doomed = (1..=3).find(|id| *id != leader).unwrap();
    let client = cluster.client_preferring(doomed).await;
    let mut subscriber = client.subscriber();
    subscriber.subscribe(&["events"]).await.unwrap();
    subscriber.psubscribe(&["rpc:*"]).await.unwrap();
    let publisher = cluster.client(leader).await;
    publisher.publish("events", "before").await.unwrap();
    assert_eq!(
        receive(&mut subscriber, 1, Duration::from_secs(10)).await[0].payload,
        b"before"
    );

    cluster.kill(doomed);
    // Messages published while the subscriber moves are lost (at most once); keep publishing
    // until both subscriptions deliver again.
    let mut seen_channel = false;
    let mut seen_pattern = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(seen_channel && seen_pattern) {
        assert!(Instant::now() < deadline, "the subscriber never came back");
        publisher.publish("events", "after").await.unwrap();
        publisher.publish("rpc:x", "after").await.unwrap();
        if let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await
        {
            seen_channel |= message.channel == b"events";
            seen_pattern |= message.pattern.as_deref() == Some(&b"rpc:*"[..]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_subscriptions_match_globs_and_unsubscribe_stops_delivery() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(2).await;
    let mut subscriber = client.subscriber();
    subscriber.psubscribe(&["rpc:node_*"]).await.unwrap();
    subscriber.subscribe(&["direct"]).await.unwrap();
    let publisher = cluster.client(3).await;
    publisher.publish("rpc:node_7", "a").await.unwrap();
    publisher.publish("rpc:room_7", "b").await.unwrap();
    publisher.publish("direct", "c").await.unwrap();
    let got = receive(&mut subscriber, 2, Duration::from_secs(10)).await;
    assert_eq!(got[0].payload, b"a");
    assert_eq!(got[0].pattern.as_deref(), Some(&b"rpc:node_*"[..]));
    assert_eq!(got[1].payload, b"c");
    assert_eq!(got[1].pattern, None);

    subscriber.unsubscribe(&["direct"]).await.unwrap();
    subscriber.punsubscribe(&["rpc:node_*"]).await.unwrap();
    subscriber.subscribe(&["marker"]).await.unwrap();
    publisher.publish("direct", "late").await.unwrap();
    publisher.publish("rpc:node_1", "late").await.unwrap();
    publisher.publish("marker", "end").await.unwrap();
    let got = receive(&mut subscriber, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].payload, b"end", "nothing after unsubscribing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_disconnected_and_never_stalls_others() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    // A raw gRPC subscriber that never reads its stream.
    let endpoint = format!("http://{}", cluster.endpoint(2));
    let mut raw = v1::pub_sub_client::PubSubClient::connect(endpoint)
        .await
        .unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::unbounded_channel();
    requests
        .send(v1::SubscribeRequest {
            subscribe: vec![b"flood".to_vec()],
            ..Default::default()
        })
        .unwrap();
    let mut stalled = raw
        .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(
            outgoing,
        ))
        .await
        .unwrap()
        .into_inner();
    // Wait for the acknowledgement, then stop reading.
    stalled.message().await.unwrap().expect("subscribed");

    let healthy_client = cluster.client(2).await;
    let mut healthy = healthy_client.subscriber();
    healthy.subscribe(&["flood"]).await.unwrap();

    // 48 MiB towards a reader that takes none: beyond its 32 MiB buffer and the transport's
    // windows.
    let publisher = cluster.client(1).await;
    let payload = vec![b'x'; 256 * 1024];
    let count = 192;
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        let got = receive(&mut healthy, count, Duration::from_secs(120)).await;
        got.len()
    });
    for _ in 0..count {
        publisher.publish("flood", &payload).await.unwrap();
    }
    let published_in = started.elapsed();
    assert_eq!(
        receiving.await.unwrap(),
        count,
        "the healthy subscriber got everything"
    );

    // The stalled subscriber, when it finally reads, finds it was cut off with a reason.
    let mut read = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), stalled.message()).await {
            Ok(Ok(Some(_))) => read += 1,
            Ok(Ok(None)) => panic!("stream ended without a reason after {read} messages"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stalled subscriber was never disconnected"),
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("disconnected"),
        "{}",
        status.message()
    );
    assert!(
        read < count,
        "it was cut off before everything was queued for it"
    );
    eprintln!("published {count} x 256 KiB in {published_in:?}; the stalled reader got {read}");
}

/// One publisher's messages stay in order on a node whose relay stream from the publisher's node
/// broke and reconnected (the node was stalled): whatever the old stream still held is delivered
/// before, or instead of, what the new stream brings, never interleaved with it. Messages may be
/// lost (at most once), never reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_reconnects_keeps_one_publishers_messages_in_order() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let stalled = (1..=3).find(|id| *id != leader).unwrap();

    // A raw subscriber stream (no keep-alive, so it survives the stall and shows everything the
    // stalled node delivers, in its order).
    let endpoint = format!("http://{}", cluster.endpoint(stalled));
    let mut raw = v1::pub_sub_client::PubSubClient::connect(endpoint)
        .await
        .unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::unbounded_channel();
    requests
        .send(v1::SubscribeRequest {
            subscribe: vec![b"numbered".to_vec()],
            ..Default::default()
        })
        .unwrap();
    let mut stream = raw
        .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(
            outgoing,
        ))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("subscribed");

    let publisher = cluster.client(leader).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut next = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publisher
                    .publish("numbered", next.to_string())
                    .await
                    .unwrap();
                next += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            next
        })
    };
    let receiving = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Ok(Some(response))) =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await
        {
            if let Some(v1::subscribe_response::Event::Message(message)) = response.event {
                let n: u64 = String::from_utf8(message.payload).unwrap().parse().unwrap();
                got.push(n);
            }
        }
        got
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.pause(stalled);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.resume(stalled);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publishing.await.unwrap();
    let got = receiving.await.unwrap();

    let out_of_order: Vec<(u64, u64)> = got
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for n in &got {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == *n => *end = *n,
            _ => runs.push((*n, *n)),
        }
    }
    assert!(
        out_of_order.is_empty(),
        "{} of {published} messages received; out of order (previous, next): {:?}; runs: {:?}",
        got.len(),
        &out_of_order[..out_of_order.len().min(20)],
        &runs[..runs.len().min(40)]
    );
    assert!(
        got.last().is_some_and(|last| last + 200 > published),
        "delivery resumed after the stall: got {} of {published}, last {:?}",
        got.len(),
        got.last()
    );
    eprintln!("received {} of {published} in order", got.len());
}

/// The value of `field` in node `id`'s INFO.
fn info_counter(cluster: &Cluster, id: u64, field: &str) -> u64 {
    let mut connection = RespConnection::connect(&cluster.resp(id));
    let Frame::Bulk(text) = connection.cmd("INFO stats") else {
        panic!("INFO answers a bulk string");
    };
    let text = String::from_utf8(text).unwrap();
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {field} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until every node knows every other node's interest (their relay streams exchanged it),
/// as a cluster that has run for a moment does: PUBLISH on each node counts a subscriber on
/// each other node.
async fn wait_for_the_mesh(cluster: &Cluster) {
    let mut subscribers = Vec::new();
    for id in 1..=3u64 {
        let mut subscriber = RespConnection::connect(&cluster.resp(id));
        assert!(matches!(
            subscriber.cmd(&format!("SUBSCRIBE mesh:{id}")),
            Frame::Array(_)
        ));
        subscribers.push(subscriber);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for from in 1..=3u64 {
        let mut publisher = RespConnection::connect(&cluster.resp(from));
        for to in (1..=3u64).filter(|to| *to != from) {
            while publisher.cmd(&format!("PUBLISH mesh:{to} ready")) != Frame::Integer(1) {
                assert!(
                    Instant::now() < deadline,
                    "node {from} never learnt node {to}'s interest"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn message(channel: &str, payload: &str) -> Frame {
    Frame::Array(vec![
        Frame::bulk("message"),
        Frame::bulk(channel),
        Frame::bulk(payload),
    ])
}

/// Messages are relayed only to members with a matching subscriber. A subscription therefore
/// answers only once every member will relay to it: a message published on another member the
/// moment SUBSCRIBE answered arrives, and PUBLISH counts it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_another_member_right_after_subscribe_answered_arrives() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    wait_for_the_mesh(&cluster).await;
    let mut publishers: Vec<RespConnection> = (1..=3)
        .map(|id| RespConnection::connect(&cluster.resp(id)))
        .collect();
    for round in 0..30u64 {
        let subscriber_node = round % 3 + 1;
        let publisher_node = (round + 1) % 3 + 1;
        let channel = format!("fresh:{round}");
        let mut subscriber = RespConnection::connect(&cluster.resp(subscriber_node));
        assert!(matches!(
            subscriber.cmd(&format!("SUBSCRIBE {channel}")),
            Frame::Array(_)
        ));
        let publisher = &mut publishers[publisher_node as usize - 1];
        assert_eq!(
            publisher.call(&[b"PUBLISH", channel.as_bytes(), b"hello"]),
            Frame::Integer(1),
            "round {round}: PUBLISH on node {publisher_node} counts the subscriber on node {subscriber_node}"
        );
        assert_eq!(
            subscriber.read(),
            message(&channel, "hello"),
            "round {round}"
        );
    }
}

/// Each member relays a message only to members whose subscribers match it (by channel or
/// pattern), counts the receivers on every member, and stops relaying once they unsubscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_relayed_only_to_members_with_matching_subscribers() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    wait_for_the_mesh(&cluster).await;
    let mut direct: Vec<RespConnection> = (0..2)
        .map(|_| RespConnection::connect(&cluster.resp(2)))
        .collect();
    for subscriber in &mut direct {
        assert!(matches!(
            subscriber.cmd("SUBSCRIBE room:1"),
            Frame::Array(_)
        ));
    }
    let mut by_pattern = RespConnection::connect(&cluster.resp(3));
    assert!(matches!(
        by_pattern.cmd("PSUBSCRIBE room:*"),
        Frame::Array(_)
    ));

    let mut publisher = RespConnection::connect(&cluster.resp(1));
    let unrouted_before = info_counter(&cluster, 1, "conclave_pubsub_unrouted");
    let rounds = 50;
    for _ in 0..rounds {
        assert_eq!(publisher.cmd("PUBLISH room:1 a"), Frame::Integer(3));
        assert_eq!(publisher.cmd("PUBLISH room:2 b"), Frame::Integer(1));
        assert_eq!(publisher.cmd("PUBLISH lobby c"), Frame::Integer(0));
    }
    // room:2 has no subscriber on node 2; lobby none on either peer.
    let unrouted = info_counter(&cluster, 1, "conclave_pubsub_unrouted") - unrouted_before;
    assert_eq!(unrouted, rounds * 3);
    for subscriber in &mut direct {
        for _ in 0..rounds {
            assert_eq!(subscriber.read(), message("room:1", "a"));
        }
    }
    for _ in 0..rounds {
        for (channel, payload) in [("room:1", "a"), ("room:2", "b")] {
            assert_eq!(
                by_pattern.read(),
                Frame::Array(vec![
                    Frame::bulk("pmessage"),
                    Frame::bulk("room:*"),
                    Frame::bulk(channel),
                    Frame::bulk(payload),
                ])
            );
        }
    }

    // Unsubscribing is not waited for, but reaches the publisher's node shortly after.
    for subscriber in &mut direct {
        assert!(matches!(
            subscriber.cmd("UNSUBSCRIBE room:1"),
            Frame::Array(_)
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while publisher.cmd("PUBLISH room:1 late") != Frame::Integer(1) {
        assert!(
            Instant::now() < deadline,
            "node 1 still counts node 2's subscribers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Known to have none left (not merely unknown): node 2 no longer gets room:1.
    let unrouted_before = info_counter(&cluster, 1, "conclave_pubsub_unrouted");
    assert_eq!(publisher.cmd("PUBLISH room:1 later"), Frame::Integer(1));
    let unrouted = info_counter(&cluster, 1, "conclave_pubsub_unrouted") - unrouted_before;
    assert_eq!(unrouted, 1, "room:1 is still relayed to node 2");
}

/// A node's interest larger than one peer message may be (here about 5 MiB of channel names in
/// one SUBSCRIBE) still reaches the other members, and their messages reach the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interest_larger_than_a_peer_message_still_reaches_every_member() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    wait_for_the_mesh(&cluster).await;
    let channels: Vec<String> = (0..160_000)
        .map(|i| format!("big-interest:channel:{i:09}"))
        .collect();
    let mut subscriber = RespConnection::connect(&cluster.resp(2));
    let mut subscribe: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    subscribe.extend(channels.iter().map(|c| c.as_bytes()));
    subscriber.send(&subscribe);
    for _ in &channels {
        assert!(matches!(subscriber.read(), Frame::Array(_)));
    }
    let mut publisher = RespConnection::connect(&cluster.resp(1));
    let last = channels.last().unwrap();
    assert_eq!(
        publisher.call(&[b"PUBLISH", last.as_bytes(), b"found"]),
        Frame::Integer(1)
    );
    assert_eq!(subscriber.read(), message(last, "found"));
}
