//! The mesh's receiving side on one real (single-node) hub: relay streams opened by hand, as a
//! peer whose connection broke and reconnected would open them, never deliver one origin's
//! messages out of order.

use std::time::{Duration, Instant};

use conclave_consensus::{ClusterSpec, Node, NodeOptions, Timing};
use conclave_proto::peer::mesh_client::MeshClient;
use conclave_proto::peer::{RelayBatch, RelayedMessage};
use conclave_pubsub::{Change, Item, Limits, PubSub, Receiver};
use conclave_state::{Bytes, Command, WriteRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The peer the hand-made streams claim to come from.
const ORIGIN: u64 = 2;
const CHANNEL: &[u8] = b"ordered";

struct Hub {
    _dir: tempfile::TempDir,
    node: Node,
    pubsub: PubSub,
    url: String,
    cluster_id: u64,
}

async fn start_hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cluster = ClusterSpec::parse(&format!("1={address}")).unwrap();
    let cluster_id = cluster.cluster_id();
    let node = Node::open(NodeOptions {
        id: 1,
        data_dir: dir.path().to_path_buf(),
        cluster,
        join: false,
        timing: Timing::default(),
        snapshot_every: 100_000,
        clock_offset_file: None,
        source_ip: None,
        peer_tls: None,
        disk_reserve: 0,
    })
    .await
    .unwrap();
    let pubsub = PubSub::start(node.clone(), Limits::default());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .add_service(node.peer_service().into_server())
        .add_service(pubsub.mesh_service().into_server())
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    node.form().await.unwrap();
    // The first write waits for the node to elect itself.
    write(&node).await;
    Hub {
        _dir: dir,
        node,
        pubsub,
        url: format!("http://{address}"),
        cluster_id,
    }
}

async fn write(node: &Node) {
    let request = WriteRequest {
        id: None,
        stamp: 0,
        command: Command::Delete {
            keys: vec![Bytes::from(b"nothing".to_vec())],
        },
    };
    node.write(request, Instant::now() + Duration::from_secs(15))
        .await
        .unwrap();
}

/// Opens a relay stream to the hub, as node `ORIGIN` would; batches sent on the returned
/// sender go out in order.
async fn open_stream(hub: &Hub) -> mpsc::Sender<RelayBatch> {
    let (batches, outgoing) = mpsc::channel(8);
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    request.metadata_mut().insert(
        conclave_proto::CLUSTER_ID_HEADER,
        format!("{:016x}", hub.cluster_id).parse().unwrap(),
    );
    let mut client = MeshClient::connect(hub.url.clone()).await.unwrap();
    tokio::spawn(async move { client.relay(request).await });
    batches
}

fn batch(messages: &[(u64, u64)]) -> RelayBatch {
    RelayBatch {
        origin_node: ORIGIN,
        messages: messages
            .iter()
            .map(|(number, revision)| RelayedMessage {
                channel: CHANNEL.to_vec(),
                payload: number.to_string().into_bytes(),
                revision: *revision,
            })
            .collect(),
        ..Default::default()
    }
}

/// The numbers delivered to `receiver` until it has been quiet for `quiet`.
async fn received(receiver: &mut Receiver, quiet: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, receiver.recv()).await {
        if let Item::Message(delivery) = item.unwrap() {
            let text = String::from_utf8(delivery.message.payload.clone()).unwrap();
            got.push(text.parse().unwrap());
        }
    }
    got
}

async fn subscribe(hub: &Hub) -> Receiver {
    let (subscriptions, mut receiver) = hub.pubsub.subscriber();
    subscriptions
        .apply(vec![(Change::Subscribe, vec![CHANNEL.to_vec()])])
        .await;
    match receiver.recv().await {
        Some(Ok(Item::Subscriptions { channels: 1, .. })) => receiver,
        other => panic!("{other:?}"),
    }
}

/// A stream from the origin that is still delivering (here: its second message waits for a
/// revision this node has not applied yet) when a new stream from the same origin arrives: the
/// new stream's messages are never delivered before the old stream's that precede them. The old
/// stream may lose the rest of its messages (at most once), never deliver them late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_stream_from_the_same_origin_is_never_overtaken_by_an_older_one() {
    let hub = start_hub().await;
    let mut receiver = subscribe(&hub).await;
    let pending = hub.node.view().applied() + 10;

    let old = open_stream(&hub).await;
    old.send(batch(&[(0, 0), (1, pending), (2, 0), (3, 0)]))
        .await
        .unwrap();
    let mut got = received(&mut receiver, Duration::from_millis(300)).await;
    assert_eq!(
        got,
        [0],
        "the old stream's second message waits for its revision"
    );

    // The origin reconnected: its next messages come on a new stream.
    let new = open_stream(&hub).await;
    new.send(batch(&[(10, 0), (11, 0)])).await.unwrap();
    got.extend(received(&mut receiver, Duration::from_millis(300)).await);

    // The revision the old stream's message waited for is applied now.
    while hub.node.view().applied() < pending {
        write(&hub.node).await;
    }
    got.extend(received(&mut receiver, Duration::from_millis(500)).await);

    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "one origin's messages were delivered out of order: {got:?}"
    );
    assert_eq!(got.last(), Some(&11), "the new stream delivered: {got:?}");
    drop((old, new));
}

fn numbered(sender_epoch: u64, stream: u64, messages: &[(u64, u64)]) -> RelayBatch {
    RelayBatch {
        sender_epoch,
        stream,
        ..batch(messages)
    }
}

/// The sender numbers its streams: one that reaches the hub after a later stream of the same
/// sender process (its bytes sat in a stalled node's socket) is stale and delivers nothing, while
/// a stream of a restarted sender (another epoch) is taken as the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_stream_of_the_same_sender_delivers_nothing() {
    let hub = start_hub().await;
    let mut receiver = subscribe(&hub).await;

    let second = open_stream(&hub).await;
    second
        .send(numbered(7, 2, &[(10, 0), (11, 0)]))
        .await
        .unwrap();
    assert_eq!(
        received(&mut receiver, Duration::from_millis(300)).await,
        [10, 11]
    );

    let first = open_stream(&hub).await;
    first.send(numbered(7, 1, &[(5, 0), (6, 0)])).await.unwrap();
    second.send(numbered(7, 2, &[(12, 0)])).await.unwrap();
    assert_eq!(
        received(&mut receiver, Duration::from_millis(300)).await,
        [12],
        "the stale stream delivered, or ended the current one"
    );

    let restarted = open_stream(&hub).await;
    restarted.send(numbered(9, 1, &[(20, 0)])).await.unwrap();
    assert_eq!(
        received(&mut receiver, Duration::from_millis(300)).await,
        [20]
    );
    // The hub ends a superseded stream, so this send may fail; either way nothing is delivered.
    let _ = second.send(numbered(7, 2, &[(13, 0)])).await;
    assert_eq!(
        received(&mut receiver, Duration::from_millis(300)).await,
        [] as [u64; 0],
        "the superseded stream still delivered"
    );
    drop((first, second, restarted));
}
