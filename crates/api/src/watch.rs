//! The `Watch` service: a stream of change events for a key or a prefix, from a revision on.
//!
//! Events come from the replica's history (every replica derives the same events at the same
//! revisions), so a watch resumes on any node from the last revision it saw. A revision's events
//! are never split across responses. A watcher that asks for events already dropped from the
//! history, or falls that far behind, gets OUT_OF_RANGE with the compacted revision.

use std::pin::Pin;
use std::time::Duration;

use conclave_proto::v1::watch_server::{Watch, WatchServer};
use conclave_proto::v1::*;
use conclave_proto::COMPACTED_REVISION_TRAILER;
use conclave_state::{Compacted, EventKind, KeyFilter};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::check_key;
use crate::gateway::Gateway;

/// Most events, and bytes of event weight (a fixed overhead plus key, field and value), gathered
/// into one response (a revision is never split, so one may hold more: up to a whole command,
/// 16 MiB).
const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Default interval of progress responses on an idle watch.
const DEFAULT_PROGRESS: Duration = Duration::from_secs(5);
/// Responses buffered towards a slow watcher before the producer waits.
const STREAM_BUFFER: usize = 64;

/// Serves `conclave.v1.Watch` from one node.
#[derive(Clone)]
pub struct WatchService {
    gw: Gateway,
}

impl WatchService {
    pub fn new(node: conclave_consensus::Node) -> Self {
        WatchService {
            gw: Gateway::new(node),
        }
    }

    pub fn into_server(self) -> WatchServer<Self> {
        WatchServer::new(self).max_decoding_message_size(crate::MAX_REQUEST_BYTES)
    }

    /// Feeds `out` until the watcher goes away or falls behind the history.
    async fn run(
        self,
        filter: KeyFilter,
        mut cursor: u64,
        progress: Duration,
        out: mpsc::Sender<Result<WatchResponse, Status>>,
    ) {
        let view = self.gw.node().view().clone();
        // The first response names where the watch starts, so a client that asked for "from
        // now" knows where to resume.
        let created = WatchResponse {
            header: self.gw.header(cursor),
            events: Vec::new(),
        };
        if out.send(Ok(created)).await.is_err() {
            return;
        }
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let batch = match view.read(|m| read_batch(m, cursor, &filter)) {
                Ok(batch) => batch,
                Err(compacted) => {
                    let _ = out.send(Err(compacted_status(compacted))).await;
                    return;
                }
            };
            if !batch.events.is_empty() {
                let response = WatchResponse {
                    header: self.gw.header(batch.through),
                    events: batch.events.into_iter().map(wire_event).collect(),
                };
                if out.send(Ok(response)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            cursor = cursor.max(batch.through);
            if !batch.complete {
                continue;
            }
            if tokio::time::Instant::now() >= last_sent + progress {
                let response = WatchResponse {
                    header: self.gw.header(cursor),
                    events: Vec::new(),
                };
                if out.send(Ok(response)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            let quiet_for =
                (last_sent + progress).saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                _ = out.closed() => return,
                _ = view.wait_applied(cursor + 1, quiet_for) => {}
            }
        }
    }
}

/// One response's worth of events after `cursor`.
#[derive(Debug)]
struct Batch {
    events: Vec<conclave_state::Event>,
    /// The watch has seen every matching event up to and including this revision.
    through: u64,
    /// Whether the batch reached the machine's revision; if not, more is ready to read at once.
    complete: bool,
}

/// The next batch after `cursor`, and how far it covers, as `events_after` reports it: a batch
/// cut short at its bounds covers only through its last revision, so nothing past it is skipped.
fn read_batch(
    machine: &conclave_state::Machine,
    cursor: u64,
    filter: &KeyFilter,
) -> Result<Batch, Compacted> {
    let found = machine
        .history()
        .events_after(cursor, filter, BATCH_EVENTS, BATCH_BYTES)?;
    let (through, complete) = match found.stopped_after {
        Some(last) => (last, false),
        None => (machine.revision(), true),
    };
    Ok(Batch {
        events: found.events,
        through,
        complete,
    })
}

fn wire_event(event: conclave_state::Event) -> Event {
    Event {
        r#type: match event.kind {
            EventKind::Put => EventType::EventPut,
            EventKind::Delete => EventType::EventDelete,
        } as i32,
        key: event.key.into_vec(),
        field: event.field.map(|f| f.into_vec()),
        value: event.value.into_vec(),
        revision: event.revision,
    }
}

fn compacted_status(compacted: Compacted) -> Status {
    let mut status = Status::out_of_range(compacted.to_string());
    if let Ok(value) = compacted.compacted.to_string().parse() {
        status
            .metadata_mut()
            .insert(COMPACTED_REVISION_TRAILER, value);
    }
    status
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        let filter = if r.prefix {
            KeyFilter::Prefix(r.key.into())
        } else {
            check_key(&r.key)?;
            KeyFilter::Key(r.key.into())
        };
        let view = self.gw.node().view();
        let cursor = match r.start_revision {
            0 => view.applied(),
            start => start - 1,
        };
        // Refuse at once (rather than in the stream) what is already compacted.
        let compacted = view.read(|m| m.history().compacted());
        if cursor < compacted {
            return Err(compacted_status(Compacted { compacted }));
        }
        let progress = match r.progress_interval_ms {
            0 => DEFAULT_PROGRESS,
            ms => Duration::from_millis(ms),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(self.clone().run(filter, cursor, progress, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use conclave_state::{Bytes, Command, Machine, Outcome, WriteRequest};

    use super::*;

    /// A watcher far behind ~900 participant writes of 2.2 KB values, reading batch after batch
    /// as the stream does, gets every field once, in revision order: a batch cut at the byte cap
    /// (counted by event weight, not keys and values alone) never moves the cursor past events
    /// it did not carry.
    #[test]
    fn a_lagging_reader_of_large_hash_writes_gets_every_event_once() {
        let key = b"conclave:participants:standup".to_vec();
        let value = vec![b'x'; 2200];
        let mut machine = Machine::new();
        for i in 0..1000u64 {
            let reply = machine.apply(
                i + 1,
                &WriteRequest {
                    id: None,
                    stamp: 1000,
                    command: Command::HashSet {
                        key: Bytes::from(key.clone()),
                        fields: vec![(
                            Bytes::from(format!("p{i:04}").into_bytes()),
                            Bytes::from(value.clone()),
                        )],
                        lease: None,
                    },
                },
            );
            assert_eq!(reply.outcome, Outcome::Count(1));
        }
        let filter = KeyFilter::Key(Bytes::from(key));
        let mut cursor = 0;
        let mut seen = Vec::new();
        let mut revisions = Vec::new();
        let mut batches = 0;
        loop {
            let batch = read_batch(&machine, cursor, &filter).expect("nothing compacted");
            batches += 1;
            assert!(batch.through >= cursor, "the cursor never goes back");
            for event in &batch.events {
                assert!(event.revision > cursor && event.revision <= batch.through);
                revisions.push(event.revision);
                seen.push(String::from_utf8(event.field.clone().unwrap().into_vec()).unwrap());
            }
            cursor = batch.through;
            if batch.complete {
                break;
            }
            assert!(batches < 100, "the reader makes progress");
        }
        assert!(batches > 1, "the byte cap splits the backlog");
        assert_eq!(cursor, machine.revision());
        let expected: Vec<String> = (0..1000).map(|i| format!("p{i:04}")).collect();
        assert_eq!(seen, expected, "every field once, in order");
        assert!(revisions.windows(2).all(|w| w[0] < w[1]));
    }
}
