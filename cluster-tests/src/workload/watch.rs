//! The watch workload: writers put new fields of a few hashes (`watched:0..2`, ~2.2 KB values,
//! as LiveKit's participant records), and watchers follow the prefix `watched:`. Watchers move
//! to another node now and then, resuming from the last revision they saw plus one; half of them
//! lag on purpose (they stop reading for seconds, so the node sends them megabytes of backlog).
//! After the faults every watcher reads on until it has seen the last acknowledged write.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conclave_client::{v1, Client, Error, WatchTarget};

use super::{sdk_write_outcome, write_outcome, ClientContext, RespClient, SDK_TIMEOUT};
use crate::history::{Call, Outcome, Seen};
use crate::resp::Reply;

/// The prefix every watched key starts with.
pub const PREFIX: &str = "watched:";
/// How many hashes the writers spread over.
const KEYS: u64 = 3;
/// Size of a value: a participant record with its metadata.
const VALUE_BYTES: usize = 2_200;
/// How long a watcher may take to catch up after the faults.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(30);
/// How long one batch may take before the watcher gives up on its node.
const BATCH_WITHIN: Duration = Duration::from_secs(3);

/// What writers and watchers share: the highest revision a write was acknowledged at, and how
/// many writers are still writing.
#[derive(Default)]
pub struct Progress {
    acknowledged: AtomicU64,
    writers: AtomicUsize,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::default()
    }

    /// Registers a writer (before it is spawned, so watchers never see zero too early).
    pub fn add_writer(&self) {
        self.writers.fetch_add(1, Ordering::SeqCst);
    }

    /// The revision every watcher must reach, once every writer has stopped.
    fn target(&self) -> Option<u64> {
        (self.writers.load(Ordering::SeqCst) == 0).then(|| self.acknowledged.load(Ordering::SeqCst))
    }
}

fn value(field: &str) -> String {
    let mut value = format!("{field}|");
    value.extend(std::iter::repeat_n(
        'x',
        VALUE_BYTES.saturating_sub(value.len()),
    ));
    value
}

fn key(context: &mut ClientContext) -> String {
    format!("{PREFIX}{}", context.rng.below(KEYS))
}

/// A pause between writes: the workload writes about 30 fields a second per writer.
async fn pace(context: &mut ClientContext) {
    tokio::time::sleep(Duration::from_millis(20 + context.rng.below(30))).await;
}

/// Puts fields through the SDK, which answers with the write's revision.
pub async fn sdk_writer(mut context: ClientContext, progress: Arc<Progress>) {
    if let Ok(client) = Client::connect(&context.grpc).await {
        let (history, id, node) = (context.history.clone(), context.id, context.node);
        let mut n = 0u64;
        while context.running() {
            n += 1;
            let field = format!("{id}-{n}");
            let key = key(&mut context);
            let put = history.invoke(id, node, "grpc", &key);
            let request = v1::HSetRequest {
                key: key.into_bytes(),
                fields: vec![v1::HashField {
                    field: field.clone().into_bytes(),
                    value: value(&field).into_bytes(),
                }],
                write: None,
                lease: 0,
            };
            let result = tokio::time::timeout(SDK_TIMEOUT, client.hset_with(request)).await;
            let outcome = sdk_write_outcome(&result);
            let revision = match &result {
                Ok(Ok(response)) => response.header.as_ref().map_or(0, |h| h.revision),
                _ => 0,
            };
            if outcome == Outcome::Ok {
                progress.acknowledged.fetch_max(revision, Ordering::SeqCst);
            }
            history.complete(put, Call::Put { field, revision }, outcome);
            pace(&mut context).await;
        }
    }
    progress.writers.fetch_sub(1, Ordering::SeqCst);
}

/// Puts fields over RESP (`HSET`), whose reply carries no revision.
pub async fn resp_writer(mut context: ClientContext, progress: Arc<Progress>) {
    let mut client = RespClient::new(&context.address);
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    let mut n = 0u64;
    while context.running() {
        if !client.ready().await {
            continue;
        }
        n += 1;
        let field = format!("{id}-{n}");
        let key = key(&mut context);
        let put = history.invoke(id, node, "resp", &key);
        let value = value(&field);
        let reply = client
            .call(&[b"HSET", key.as_bytes(), field.as_bytes(), value.as_bytes()])
            .await;
        let outcome = write_outcome(&reply, |r| r == &Reply::Integer(1));
        history.complete(put, Call::Put { field, revision: 0 }, outcome);
        pace(&mut context).await;
    }
    progress.writers.fetch_sub(1, Ordering::SeqCst);
}

/// Follows every key under [`PREFIX`] from the first revision, moving between nodes, and
/// records what it received as one `Watch` operation per unbroken stream (a stream breaks only
/// where the node says the history it needs was compacted).
pub async fn watcher(mut context: ClientContext, progress: Arc<Progress>, lagging: bool) {
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    let mut endpoints = context.grpc.clone();
    let mut segment = history.invoke(id, node, "grpc", PREFIX);
    let (mut start, mut through) = (1u64, 0u64);
    let mut events: Vec<Seen> = Vec::new();
    let mut stream = None;
    let mut move_at = history.now_us() + 5_000_000 + context.rng.below(10_000_000);
    let mut drain_until = None;
    let caught_up = loop {
        if !context.running() {
            if let Some(target) = progress.target() {
                if through >= target {
                    break true;
                }
            }
            let deadline =
                *drain_until.get_or_insert(history.now_us() + CATCH_UP_WITHIN.as_micros() as u64);
            if history.now_us() > deadline {
                break false;
            }
        } else if history.now_us() > move_at {
            // Resume on another node.
            stream = None;
            let others = endpoints.len() as u64 - 1;
            endpoints.rotate_left(1 + context.rng.below(others.max(1)) as usize);
            move_at = history.now_us() + 5_000_000 + context.rng.below(10_000_000);
        }
        if stream.is_none() {
            let Ok(Ok(client)) =
                tokio::time::timeout(BATCH_WITHIN, Client::connect(&endpoints)).await
            else {
                endpoints.rotate_left(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let watcher = client
                .watch(WatchTarget::Prefix(PREFIX.into()), Some(through + 1))
                .progress_interval(Duration::from_millis(500));
            stream = Some(watcher);
        }
        let watcher = stream.as_mut().expect("just made");
        match tokio::time::timeout(BATCH_WITHIN, watcher.next_batch()).await {
            Ok(Ok(batch)) => {
                for event in batch.events {
                    let value = String::from_utf8_lossy(&event.value);
                    events.push(Seen {
                        revision: event.revision,
                        key: String::from_utf8_lossy(&event.key).into_owned(),
                        field: event
                            .field
                            .map(|f| String::from_utf8_lossy(&f).into_owned())
                            .unwrap_or_default(),
                        tag: value.split('|').next().unwrap_or_default().to_string(),
                    });
                }
                through = through.max(batch.revision);
            }
            Ok(Err(Error::Compacted { compacted })) => {
                // The history this stream needs is gone: this stream ends here, and the next
                // starts after what was compacted.
                history.complete(
                    segment,
                    Call::Watch {
                        start,
                        through,
                        events: std::mem::take(&mut events),
                        caught_up: false,
                    },
                    Outcome::Fail(format!("compacted through {compacted}")),
                );
                segment = history.invoke(id, node, "grpc", PREFIX);
                (start, through) = (compacted + 1, compacted);
                stream = None;
            }
            Ok(Err(_)) | Err(_) => {
                // The node failed or stalled: resume from the next revision elsewhere.
                stream = None;
                endpoints.rotate_left(1);
            }
        }
        if lagging && context.running() && context.rng.below(40) == 0 {
            tokio::time::sleep(Duration::from_millis(5_000 + context.rng.below(15_000))).await;
        }
    };
    history.complete(
        segment,
        Call::Watch {
            start,
            through,
            events,
            caught_up,
        },
        Outcome::Ok,
    );
}
