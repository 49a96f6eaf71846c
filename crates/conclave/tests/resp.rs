//! The Redis protocol front end on real clusters, seen frame by frame: malformed input,
//! pipelining, WATCH/MULTI/EXEC across nodes, SET NX races, scripts, pub/sub in RESP2 and RESP3,
//! slow subscribers, one keyspace shared with gRPC, and a session that outlives the leader.

mod common;

use std::time::{Duration, Instant};

use common::resp::{Frame, RespConnection};
use common::{serial, start_with_clock_offsets, Cluster};

const LOCK_RELEASE: &str = "if redis.call(\"get\", KEYS[1]) == ARGV[1] then\n\treturn redis.call(\"del\", KEYS[1])\nelse\n\treturn 0\nend";

async fn resp_cluster() -> Cluster {
    let cluster = Cluster::start_with_resp(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    cluster
}

/// Reads on `connection` until `line` answers `expected`, or fails after 5 s (another node's
/// write reaches this replica shortly after it is acknowledged).
fn eventually(connection: &mut RespConnection, line: &str, expected: Frame) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = connection.cmd(line);
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line}: got {got:?}, want {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_an_error_and_a_closed_connection() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let address = cluster.resp(1);
    for (input, expected) in [
        (
            &b"*abc\r\n"[..],
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$-7\r\n",
            "ERR Protocol error: invalid bulk length",
        ),
        (
            b"*1\r\n$99999999999\r\n",
            "ERR Protocol error: invalid bulk length 99999999999",
        ),
        (
            // One argument past the limit of 1,048,576 (Redis's), refused before any is read.
            b"*1048577\r\n",
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*1\r\n$16777217\r\n",
            "ERR Protocol error: invalid bulk length 16777217",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n:12\r\n",
            "ERR Protocol error: expected '$', got ':'",
        ),
        (
            b"*1\r\n$4\r\nPINGxx\r\n",
            "ERR Protocol error: bulk argument is not terminated",
        ),
        (
            b"SET k \"unbalanced\r\n",
            "ERR Protocol error: unbalanced quotes",
        ),
    ] {
        let mut connection = RespConnection::connect(&address);
        connection.send_raw(input);
        let reply = connection.read();
        assert!(
            reply.error_text().starts_with(expected),
            "{:?}: {reply:?}",
            String::from_utf8_lossy(input)
        );
        assert!(
            connection.is_closed(),
            "the connection must be closed after {reply:?}"
        );
    }
    // A header line that never ends is refused once it passes the inline limit, not buffered.
    let mut connection = RespConnection::connect(&address);
    connection.send_raw(&vec![b'x'; 70 * 1024]);
    assert!(connection
        .read()
        .error_text()
        .starts_with("ERR Protocol error: too big inline request"));
    assert!(connection.is_closed());

    // Errors that are not about framing keep the connection.
    let mut connection = RespConnection::connect(&address);
    connection.send_raw(b"\x01\x02garbage here\r\n");
    assert!(connection
        .read()
        .error_text()
        .starts_with("ERR unknown command"));
    assert_eq!(
        connection.cmd("GET"),
        Frame::Error("ERR wrong number of arguments for 'get' command".into())
    );
    let big = vec![b'v'; 2 * 1024 * 1024];
    let reply = connection.call(&[b"SET", b"big", &big]);
    assert!(reply.error_text().contains("limit"), "{reply:?}");
    assert_eq!(connection.cmd("SET k v"), Frame::status("OK"));
    assert!(connection
        .cmd("HGET k f")
        .error_text()
        .starts_with("WRONGTYPE"));
    assert!(connection
        .cmd("INCR k")
        .error_text()
        .contains("not an integer"));
    assert_eq!(
        connection.cmd("PING"),
        Frame::status("PONG"),
        "the node keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let mut connection = RespConnection::connect(&cluster.resp(2));
    let rounds = 200;
    for i in 0..rounds {
        let value = format!("v{i}");
        connection.send(&[b"SET", b"p", value.as_bytes()]);
        connection.send(&[b"GET", b"p"]);
        connection.send(&[b"INCR", b"counter"]);
        connection.send(&[b"HSET", b"h", value.as_bytes(), b"x"]);
    }
    for i in 0..rounds {
        assert_eq!(connection.read(), Frame::status("OK"));
        assert_eq!(
            connection.read(),
            Frame::bulk(&format!("v{i}")),
            "a read sees the write before it"
        );
        assert_eq!(connection.read(), Frame::Integer(i + 1));
        assert_eq!(connection.read(), Frame::Integer(1));
    }
    assert_eq!(connection.cmd("HLEN h"), Frame::Integer(rounds));

    // Pipelined writes travel to the leader together, yet each answers for itself: a failing
    // one fails alone, and the others apply in order around it.
    for line in [
        "SET s 1",
        "HSET s f v",
        "INCR s",
        "APPEND s x",
        "INCR s",
        "MSET m1 a m2 b",
        "DEL m1",
    ] {
        let words: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        connection.send(&words);
    }
    assert_eq!(connection.read(), Frame::status("OK"));
    assert!(connection.read().error_text().starts_with("WRONGTYPE"));
    assert_eq!(connection.read(), Frame::Integer(2));
    assert_eq!(connection.read(), Frame::Integer(2));
    assert!(connection.read().error_text().contains("not an integer"));
    assert_eq!(connection.read(), Frame::status("OK"));
    assert_eq!(connection.read(), Frame::Integer(1));
    assert_eq!(
        connection.cmd("MGET s m1 m2"),
        Frame::Array(vec![Frame::bulk("2x"), Frame::Nil, Frame::bulk("b")])
    );
    // A key named twice is deleted once, and counted once, as in Redis.
    assert_eq!(connection.cmd("DEL m2 m2"), Frame::Integer(1));
    assert_eq!(connection.cmd("DEL m2 m2"), Frame::Integer(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_aborts_when_a_watched_key_changed_on_another_node() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let mut a = RespConnection::connect(&cluster.resp(1));
    let mut b = RespConnection::connect(&cluster.resp(2));
    assert_eq!(a.cmd("SET balance 1"), Frame::status("OK"));

    // A watches, B writes on another node, A's EXEC is refused and applies nothing.
    assert_eq!(a.cmd("WATCH balance ingress"), Frame::status("OK"));
    assert_eq!(a.cmd("GET balance"), Frame::bulk("1"));
    assert_eq!(b.cmd("HSET ingress id1 info"), Frame::Integer(1));
    assert_eq!(a.cmd("MULTI"), Frame::status("OK"));
    assert_eq!(a.cmd("SET balance 100"), Frame::status("QUEUED"));
    assert_eq!(a.cmd("SADD room_ingress id1"), Frame::status("QUEUED"));
    assert_eq!(a.cmd("EXEC"), Frame::Nil);
    assert_eq!(a.cmd("GET balance"), Frame::bulk("1"));
    assert_eq!(a.cmd("EXISTS room_ingress"), Frame::Integer(0));

    // Without a conflict, EXEC applies everything and answers each command, reads included.
    assert_eq!(a.cmd("WATCH balance"), Frame::status("OK"));
    assert_eq!(a.cmd("MULTI"), Frame::status("OK"));
    for line in [
        "SET balance 100",
        "GET balance",
        "INCRBY balance 5",
        "HGET ingress id1",
        "SADD room_ingress id1",
    ] {
        assert_eq!(a.cmd(line), Frame::status("QUEUED"));
    }
    assert_eq!(
        a.cmd("EXEC"),
        Frame::Array(vec![
            Frame::status("OK"),
            Frame::bulk("100"),
            Frame::Integer(105),
            Frame::bulk("info"),
            Frame::Integer(1),
        ])
    );
    eventually(&mut b, "GET balance", Frame::bulk("105"));

    // A key the transaction's own connection wrote before WATCH does not abort it; an expiry
    // set by another node after WATCH does.
    assert_eq!(a.cmd("SET mine 1"), Frame::status("OK"));
    assert_eq!(a.cmd("WATCH mine"), Frame::status("OK"));
    assert_eq!(b.cmd("PEXPIRE mine 60000"), Frame::Integer(1));
    assert_eq!(a.cmd("MULTI"), Frame::status("OK"));
    assert_eq!(a.cmd("SET mine 2"), Frame::status("QUEUED"));
    assert_eq!(a.cmd("EXEC"), Frame::Nil);

    // A command refused while queueing discards the whole transaction.
    assert_eq!(a.cmd("MULTI"), Frame::status("OK"));
    assert_eq!(a.cmd("SET balance 0"), Frame::status("QUEUED"));
    assert!(a
        .cmd("NOSUCHCOMMAND x")
        .error_text()
        .starts_with("ERR unknown command"));
    assert!(a.cmd("EXEC").error_text().starts_with("EXECABORT"));
    assert_eq!(a.cmd("GET balance"), Frame::bulk("105"));
    assert!(a
        .cmd("EXEC")
        .error_text()
        .starts_with("ERR EXEC without MULTI"));
    assert_eq!(a.cmd("MULTI"), Frame::status("OK"));
    assert_eq!(a.cmd("DISCARD"), Frame::status("OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_ex_has_exactly_one_winner_across_nodes() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let addresses: Vec<String> = (1..=3).map(|id| cluster.resp(id)).collect();
    for round in 0..10 {
        let key = format!("dedup:{round}");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(9));
        let racers: Vec<_> = (0..9)
            .map(|racer| {
                let address = addresses[racer % 3].clone();
                let key = key.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut connection = RespConnection::connect(&address);
                    barrier.wait();
                    let token = format!("racer{racer}");
                    let reply = connection.call(&[
                        b"SET",
                        key.as_bytes(),
                        token.as_bytes(),
                        b"EX",
                        b"5",
                        b"NX",
                    ]);
                    (token, reply)
                })
            })
            .collect();
        let results: Vec<(String, Frame)> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let winners: Vec<&String> = results
            .iter()
            .filter(|(_, reply)| *reply == Frame::status("OK"))
            .map(|(token, _)| token)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(results
            .iter()
            .all(|(_, r)| *r == Frame::status("OK") || *r == Frame::Nil));
        let mut check = RespConnection::connect(&addresses[0]);
        eventually(&mut check, &format!("GET {key}"), Frame::bulk(winners[0]));
        let ttl = check.cmd(&format!("TTL {key}"));
        assert!(matches!(ttl, Frame::Integer(4 | 5)), "{ttl:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_release_script_runs_by_sha_and_by_source() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let mut connection = RespConnection::connect(&cluster.resp(3));
    let sha = "a".repeat(40);
    let reply = connection.cmd(&format!("EVALSHA {sha} 1 room_lock:r t"));
    assert_eq!(
        reply,
        Frame::Error("NOSCRIPT No matching script. Please use EVAL.".into())
    );
    assert_eq!(
        connection.cmd("SET room_lock:r token-1 EX 5 NX"),
        Frame::status("OK")
    );
    assert_eq!(
        connection.cmd("SET room_lock:r token-2 EX 5 NX"),
        Frame::Nil
    );
    let script = LOCK_RELEASE.as_bytes();
    // EVAL registers the script under the SHA-1 of its exact text.
    let wrong = connection.call(&[b"EVAL", script, b"1", b"room_lock:r", b"token-2"]);
    assert_eq!(
        wrong,
        Frame::Integer(0),
        "another holder's token releases nothing"
    );
    let loaded = connection.call(&[b"SCRIPT", b"LOAD", script]);
    let Frame::Bulk(sha) = loaded else {
        panic!("SCRIPT LOAD answered {loaded:?}");
    };
    assert_eq!(sha.len(), 40);
    assert_eq!(
        connection.call(&[
            b"SCRIPT",
            b"EXISTS",
            &sha,
            b"0000000000000000000000000000000000000000"
        ]),
        Frame::Array(vec![Frame::Integer(1), Frame::Integer(0)])
    );
    assert_eq!(
        connection.call(&[b"EVALSHA", &sha, b"1", b"room_lock:r", b"token-1"]),
        Frame::Integer(1)
    );
    assert_eq!(connection.cmd("EXISTS room_lock:r"), Frame::Integer(0));
    assert_eq!(
        connection.call(&[b"EVALSHA", &sha, b"1", b"room_lock:r", b"token-1"]),
        Frame::Integer(0)
    );
    // The script holds on another node too (EVALSHA after a NOSCRIPT falls back to EVAL there).
    let mut other = RespConnection::connect(&cluster.resp(1));
    assert!(other
        .call(&[b"EVALSHA", &sha, b"1", b"k", b"t"])
        .error_text()
        .starts_with("NOSCRIPT"));
    let unsupported = connection.call(&[b"EVAL", b"return redis.call('flushall')", b"0"]);
    assert!(
        unsupported.error_text().contains("recognised scripts"),
        "{unsupported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_crosses_nodes_in_resp2_and_resp3() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    // RESP2 subscriber on node 3: thousands of channels in one SUBSCRIBE, as psrpc resubscribes.
    let mut resp2 = RespConnection::connect(&cluster.resp(3));
    let channels: Vec<String> = (0..3000)
        .map(|i| format!("Svc|Method|topic{i}|REQ"))
        .collect();
    let mut subscribe: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    subscribe.extend(channels.iter().map(|c| c.as_bytes()));
    resp2.send(&subscribe);
    for (i, channel) in channels.iter().enumerate() {
        assert_eq!(
            resp2.read(),
            Frame::Array(vec![
                Frame::bulk("subscribe"),
                Frame::bulk(channel),
                Frame::Integer(i as i64 + 1)
            ])
        );
    }
    assert_eq!(
        resp2.cmd("PSUBSCRIBE Signal|*"),
        Frame::Array(vec![
            Frame::bulk("psubscribe"),
            Frame::bulk("Signal|*"),
            Frame::Integer(3001)
        ])
    );
    assert_eq!(
        resp2.cmd("PING"),
        Frame::Array(vec![Frame::bulk("pong"), Frame::bulk("")])
    );
    assert!(resp2
        .cmd("GET x")
        .error_text()
        .contains("only (P|S)SUBSCRIBE"));

    // RESP3 subscriber on node 2: push frames, and ordinary commands still work.
    let mut resp3 = RespConnection::connect(&cluster.resp(2));
    assert!(matches!(resp3.cmd("HELLO 3"), Frame::Map(_)));
    assert_eq!(
        resp3.cmd("SUBSCRIBE Svc|Method|topic7|REQ"),
        Frame::Push(vec![
            Frame::bulk("subscribe"),
            Frame::bulk("Svc|Method|topic7|REQ"),
            Frame::Integer(1)
        ])
    );
    assert_eq!(resp3.cmd("GET nothing"), Frame::Nil);

    let mut publisher = RespConnection::connect(&cluster.resp(1));
    assert_eq!(publisher.cmd("SET before message"), Frame::status("OK"));
    for i in 0..100 {
        publisher.send(&[
            b"PUBLISH",
            b"Svc|Method|topic7|REQ",
            format!("m{i}").as_bytes(),
        ]);
    }
    publisher.send(&[b"PUBLISH", b"Signal|RelaySignal|node1|STR", b"signal"]);
    for _ in 0..101 {
        assert!(matches!(publisher.read(), Frame::Integer(_)));
    }
    for i in 0..100 {
        let message = Frame::bulk(&format!("m{i}"));
        assert_eq!(
            resp2.read(),
            Frame::Array(vec![
                Frame::bulk("message"),
                Frame::bulk("Svc|Method|topic7|REQ"),
                message.clone()
            ])
        );
        assert_eq!(
            resp3.read(),
            Frame::Push(vec![
                Frame::bulk("message"),
                Frame::bulk("Svc|Method|topic7|REQ"),
                message
            ])
        );
    }
    assert_eq!(
        resp2.read(),
        Frame::Array(vec![
            Frame::bulk("pmessage"),
            Frame::bulk("Signal|*"),
            Frame::bulk("Signal|RelaySignal|node1|STR"),
            Frame::bulk("signal"),
        ])
    );
    // Causal: the subscriber's node has the write published before the message.
    assert_eq!(resp3.cmd("GET before"), Frame::bulk("message"));

    let mut observer = RespConnection::connect(&cluster.resp(3));
    assert_eq!(
        observer.cmd("PUBSUB NUMSUB Svc|Method|topic7|REQ Svc|Method|none|REQ"),
        Frame::Array(vec![
            Frame::bulk("Svc|Method|topic7|REQ"),
            Frame::Integer(1),
            Frame::bulk("Svc|Method|none|REQ"),
            Frame::Integer(0),
        ])
    );
    assert_eq!(observer.cmd("PUBSUB NUMPAT"), Frame::Integer(1));
    let Frame::Array(listed) = observer.cmd("PUBSUB CHANNELS Svc|Method|topic1*") else {
        panic!("PUBSUB CHANNELS answers an array");
    };
    assert_eq!(
        listed.len(),
        1111,
        "topic1, topic10-19, topic100-199, topic1000-1999"
    );

    // Unsubscribing everything leaves subscribed mode.
    resp2.send(&[b"UNSUBSCRIBE"]);
    for _ in 0..3000 {
        assert!(
            matches!(resp2.read(), Frame::Array(items) if items[0] == Frame::bulk("unsubscribe"))
        );
    }
    assert_eq!(
        resp2.cmd("PUNSUBSCRIBE"),
        Frame::Array(vec![
            Frame::bulk("punsubscribe"),
            Frame::bulk("Signal|*"),
            Frame::Integer(0)
        ])
    );
    assert_eq!(resp2.cmd("GET before"), Frame::bulk("message"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_disconnected_and_the_node_keeps_serving() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let mut slow = RespConnection::connect(&cluster.resp(2));
    assert!(matches!(slow.cmd("SUBSCRIBE flood"), Frame::Array(_)));
    let mut publisher = RespConnection::connect(&cluster.resp(2));
    let payload = vec![b'x'; 256 * 1024];
    // 64 MiB: twice the 32 MiB a subscriber may leave unread.
    for _ in 0..256 {
        publisher.send(&[b"PUBLISH", b"flood", &payload]);
        // 1 while the subscriber is connected, 0 once it was disconnected.
        let receivers = publisher.read();
        assert!(matches!(receivers, Frame::Integer(0 | 1)), "{receivers:?}");
    }
    assert!(slow.is_closed(), "the slow subscriber must be disconnected");
    assert_eq!(publisher.cmd("PING"), Frame::status("PONG"));
    let mut info = RespConnection::connect(&cluster.resp(2));
    let Frame::Bulk(text) = info.cmd("INFO stats") else {
        panic!("INFO answers a bulk string");
    };
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("conclave_pubsub_slow_disconnects:1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_reads_agree_across_skewed_nodes_at_linearizable() {
    let _serial = serial().await;
    let (cluster, offsets) =
        start_with_clock_offsets(3, &["--resp-consistency", "linearizable"], true);
    // Node 3's wall clock runs 2 s ahead of the others'.
    std::fs::write(&offsets[&3], "2000").unwrap();
    cluster.wait_leader(Duration::from_secs(15)).await;
    let mut one = RespConnection::connect(&cluster.resp(1));
    let mut three = RespConnection::connect(&cluster.resp(3));
    assert_eq!(one.cmd("SET k v PX 3000"), Frame::status("OK"));
    std::thread::sleep(Duration::from_millis(1500));
    let pttl = |connection: &mut RespConnection| match connection.cmd("PTTL k") {
        Frame::Integer(ms) => ms,
        other => panic!("PTTL answered {other:?}"),
    };
    let on_one = pttl(&mut one);
    let on_three = pttl(&mut three);
    assert!(
        on_one > 0 && on_three > 0,
        "the key expired early: PTTL {on_one} on node 1, {on_three} on node 3"
    );
    assert!(
        on_one.abs_diff(on_three) <= 100,
        "PTTL {on_one} on node 1, {on_three} on node 3"
    );
    assert_eq!(three.cmd("GET k"), Frame::bulk("v"));
    assert_eq!(three.cmd("EXISTS k"), Frame::Integer(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_and_grpc_share_one_keyspace() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let mut connection = RespConnection::connect(&cluster.resp(1));
    assert_eq!(
        connection.call(&[b"HSET", b"rooms", b"r1", b"\x00\xffproto"]),
        Frame::Integer(1)
    );
    let client = cluster.client(1).await;
    let got = client.hget("rooms", "r1").await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"\x00\xffproto"[..]));
    client.set("from-grpc", "hello").await.unwrap();
    // Acknowledged by node 1 over gRPC: its next session read on RESP sees it at once.
    assert_eq!(connection.cmd("GET from-grpc"), Frame::bulk("hello"));
    assert_eq!(connection.cmd("TYPE rooms"), Frame::status("hash"));
    assert_eq!(connection.cmd("TYPE from-grpc"), Frame::status("string"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_visible_across_protocols_at_once() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    // A follower answers a forwarded write before it has applied it itself: only a node-wide
    // record of what it acknowledged, on either protocol, makes the next read see it.
    let a = (1..=3).find(|id| *id != leader).unwrap();
    let mut resp_writer = RespConnection::connect(&cluster.resp(a));
    let grpc_writer = cluster.client(a).await;
    for i in 0..50 {
        let (x, y, value) = (
            format!("across:x{i}"),
            format!("across:y{i}"),
            i.to_string(),
        );
        let reply = tokio::task::block_in_place(|| {
            resp_writer.call(&[b"SET", x.as_bytes(), value.as_bytes()])
        });
        assert_eq!(reply, Frame::status("OK"));
        let grpc_reader = cluster.client(a).await;
        let got = grpc_reader.get(&x).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "round {i}: a gRPC read after a RESP write"
        );
        grpc_writer.set(&y, &value).await.unwrap();
        let got = tokio::task::block_in_place(|| {
            RespConnection::connect(&cluster.resp(a)).call(&[b"GET", y.as_bytes()])
        });
        assert_eq!(
            got,
            Frame::bulk(&value),
            "round {i}: a RESP read after a gRPC write"
        );
    }
}

/// GET `key` on fresh connections to `address` (a node that may still be starting) until one is
/// answered with something other than an error; returns that answer.
fn resp_get_when_served(address: &str, key: &str) -> Frame {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "GET {key} was never served");
        if std::net::TcpStream::connect(address).is_err() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let mut connection = RespConnection::connect(address);
        connection.send(&[b"GET", key.as_bytes()]);
        match connection.try_read() {
            Some(Frame::Error(_)) | None => std::thread::sleep(Duration::from_millis(20)),
            Some(frame) => return frame,
        }
    }
}

/// A session GET of `key` through fresh gRPC clients of node `id`, retried until one answers.
async fn grpc_get_when_served(cluster: &Cluster, id: u64, key: &str) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "GET {key} was never served");
        let client = cluster.client(id).await;
        match tokio::time::timeout(Duration::from_secs(5), client.get(key)).await {
            Ok(Ok(value)) => return value,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_never_reads_below_what_it_acknowledged() {
    let _serial = serial().await;
    let mut cluster = resp_cluster().await;
    for round in 0..4 {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let a = (1..=3).find(|id| *id != leader).unwrap();
        let key = format!("restart:{round}");
        let (old, new) = (format!("v1-{round}"), format!("v2-{round}"));
        let address = cluster.resp(a);
        tokio::task::block_in_place(|| {
            let mut connection = RespConnection::connect(&address);
            for value in [&old, &new] {
                let reply = connection.call(&[b"SET", key.as_bytes(), value.as_bytes()]);
                assert_eq!(reply, Frame::status("OK"), "round {round}");
            }
        });
        // With the leader frozen the restarted node cannot catch up from it at once: it must
        // wait for the new leader rather than answer from what it had applied before the crash.
        cluster.pause(leader);
        cluster.kill(a);
        cluster.restart(a);
        let check_resp = || {
            let got = tokio::task::block_in_place(|| resp_get_when_served(&address, &key));
            assert_eq!(
                got,
                Frame::bulk(&new),
                "round {round}: RESP read after the restart"
            );
        };
        // Each protocol gets to be the first to read from the restarted process.
        if round % 2 == 0 {
            check_resp();
        }
        let got = grpc_get_when_served(&cluster, a, &key).await;
        assert_eq!(
            got.as_deref(),
            Some(new.as_bytes()),
            "round {round}: gRPC read after the restart"
        );
        if round % 2 == 1 {
            check_resp();
        }
        cluster.resume(leader);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_a_surviving_node_keeps_working_while_the_leader_is_killed() {
    let _serial = serial().await;
    let mut cluster = resp_cluster().await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let address = cluster.resp(survivor);
    let writer = std::thread::spawn(move || {
        let mut connection = RespConnection::connect(&address);
        let mut slowest = Duration::ZERO;
        for i in 0..300 {
            let started = Instant::now();
            let reply = connection.call(&[b"INCR", b"joins"]);
            slowest = slowest.max(started.elapsed());
            assert_eq!(
                reply,
                Frame::Integer(i + 1),
                "write {i} during the failover"
            );
            let reply = connection.call(&[
                b"HSET",
                b"room_participants:r",
                format!("p{i}").as_bytes(),
                b"info",
            ]);
            assert_eq!(reply, Frame::Integer(1));
            assert_eq!(
                connection.cmd("HLEN room_participants:r"),
                Frame::Integer(i + 1)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        slowest
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(leader);
    let slowest = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    eprintln!("slowest write across the failover: {slowest:?}");
    let new_leader = cluster.wait_leader(Duration::from_secs(15)).await;
    assert_ne!(new_leader, leader);
}

/// A cluster whose two other nodes are dead, and a connection to the follower left, which wrote
/// `k` before: the killed leader refuses connections, so no leader is ever handed a write.
async fn a_follower_without_a_quorum() -> (Cluster, RespConnection, u64) {
    let mut cluster = resp_cluster().await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut connection = RespConnection::connect(&cluster.resp(follower));
    assert_eq!(connection.cmd("SET k before"), Frame::status("OK"));
    for id in (1..=3).filter(|id| *id != follower) {
        cluster.kill(id);
    }
    // Once the follower has given up on the dead leader, no write can reach a leader. (A write
    // sent before may have gone out on the old leader's connection as it broke: its outcome
    // would be unknown.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .status(follower)
        .await
        .is_some_and(|s| s.leader.is_some())
    {
        assert!(
            Instant::now() < deadline,
            "the follower still follows a dead leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (cluster, connection, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_no_leader_was_given_is_answered_tryagain_within_its_deadline() {
    let _serial = serial().await;
    let (_cluster, mut connection, _) = a_follower_without_a_quorum().await;
    let started = Instant::now();
    let reply = tokio::task::block_in_place(|| connection.cmd("SET k after"));
    let waited = started.elapsed();
    assert!(reply.error_text().starts_with("TRYAGAIN"), "{reply:?}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "held for the 2.5 s deadline, then answered: {waited:?}"
    );
    // The connection stays usable: a local read still answers.
    assert_eq!(connection.cmd("PING"), Frame::status("PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_leader_may_still_commit_is_never_answered_tryagain() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let mut connection = RespConnection::connect(&cluster.resp(leader));
    assert_eq!(connection.cmd("SET k before"), Frame::status("OK"));
    // The leader appends the write but cannot commit it while both followers are stopped.
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.pause(*id);
    }
    let reply = tokio::task::block_in_place(|| connection.cmd("INCR counter"));
    // TRYAGAIN would make go-redis send INCR again: applied twice once the followers return.
    assert!(reply.error_text().starts_with("UNCERTAIN"), "{reply:?}");
    // And indeed it is applied once one follower is back: only the leader, whose log holds the
    // write, can win a vote of these two, and it commits its whole log.
    cluster.resume(followers[0]);
    eventually(&mut connection, "GET counter", Frame::bulk("1"));
    cluster.resume(followers[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_for_a_leader_is_still_answered_when_its_node_stops() {
    let _serial = serial().await;
    let (cluster, mut connection, node) = a_follower_without_a_quorum().await;
    // The write waits for a leader (until its deadline) while the node is told to stop: the
    // node must answer it before it exits, not cut the connection.
    connection.send(&[b"SET", b"k", b"after"]);
    std::thread::sleep(Duration::from_millis(200));
    cluster.terminate(node);
    let reply = tokio::task::block_in_place(|| connection.try_read());
    assert!(
        matches!(&reply, Some(Frame::Error(e)) if e.starts_with("TRYAGAIN")),
        "{reply:?}"
    );
    assert_eq!(
        tokio::task::block_in_place(|| connection.try_read()),
        None,
        "then closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_on_one_connection_is_read_on_the_next_to_the_same_node() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let address = cluster.resp(follower);
    // A client pool: each write on one connection, each read on a fresh one. The follower
    // answers a forwarded write before it has applied it itself, so only the node-wide session
    // makes the read see it.
    let mut writer = RespConnection::connect(&address);
    for i in 0..100 {
        let value = i.to_string();
        assert_eq!(
            writer.call(&[b"HSET", b"pool", b"field", value.as_bytes()]),
            Frame::Integer(if i == 0 { 1 } else { 0 })
        );
        let mut reader = RespConnection::connect(&address);
        assert_eq!(
            reader.call(&[b"HGET", b"pool", b"field"]),
            Frame::bulk(&value),
            "round {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_answers_what_it_read_then_closes_and_accepts_no_more() {
    let _serial = serial().await;
    let cluster = resp_cluster().await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let address = cluster.resp(follower);
    let mut connection = RespConnection::connect(&address);
    for i in 0..500 {
        let (key, value) = (format!("stop:{}", i % 10), i.to_string());
        connection.send(&[b"SET", key.as_bytes(), value.as_bytes()]);
    }
    cluster.terminate(follower);
    // The listener is gone at once, while the node still winds down (a second or so).
    std::thread::sleep(Duration::from_millis(300));
    let refused = match std::net::TcpStream::connect(&address) {
        Err(_) => true,
        Ok(mut stream) => {
            use std::io::{Read, Write};
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let _ = stream.write_all(b"PING\r\n");
            let mut reply = [0u8; 16];
            matches!(stream.read(&mut reply), Ok(0) | Err(_))
        }
    };
    assert!(refused, "a stopping node still took a new RESP connection");
    // Every command it had read is answered, then the connection ends: commands still unread
    // in the socket get no reply and were not run (a client may retry them elsewhere).
    let mut answered = 0;
    while let Some(frame) = connection.try_read() {
        assert_eq!(frame, Frame::status("OK"), "reply {answered}");
        answered += 1;
    }
    assert!(answered > 0);
    eprintln!("{answered} of 500 pipelined commands answered before the node closed");
    let mut other = RespConnection::connect(&cluster.resp(leader));
    for key in 0..10 {
        let last_answered = (0..answered).filter(|i| i % 10 == key).max();
        let expected = match last_answered {
            Some(i) => Frame::bulk(&i.to_string()),
            None => Frame::Nil,
        };
        let line = format!("GET stop:{key}");
        eventually(&mut other, &line, expected);
    }
}
