//! Watch streams that resume on another node after a node loss.

use std::time::{Duration, Instant};

use conclave_proto::v1::{self, watch_client::WatchClient};
use conclave_proto::COMPACTED_REVISION_TRAILER;
use tonic::{Code, Status, Streaming};

use crate::{node_unreachable, Client, Error, FAILOVER_BUDGET};

/// What to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchTarget {
    /// One key (events for its hash fields included).
    Key(Vec<u8>),
    /// Every key starting with the prefix.
    Prefix(Vec<u8>),
}

/// Events of one or more whole revisions.
#[derive(Clone, Debug)]
pub struct WatchBatch {
    /// Every matching event up to this revision has been delivered.
    pub revision: u64,
    pub events: Vec<v1::Event>,
}

/// A watch; see [`Client::watch`].
pub struct Watcher {
    client: Client,
    target: WatchTarget,
    /// Where the next stream starts (0 until the first response: "from now").
    next_start: u64,
    progress_interval: Duration,
    stream: Option<Streaming<v1::WatchResponse>>,
}

impl Client {
    /// Watches `target` from revision `start` (None: from now). The watcher reconnects by itself
    /// to another node after a node loss and resumes after the last revision it delivered, so no
    /// event is missed or repeated within the retained history.
    pub fn watch(&self, target: WatchTarget, start: Option<u64>) -> Watcher {
        Watcher {
            client: self.clone(),
            target,
            next_start: start.unwrap_or(0),
            progress_interval: Duration::from_secs(5),
            stream: None,
        }
    }
}

/// The compaction error, if the node refused the watch for that reason (tonic also reports an
/// oversized message as OUT_OF_RANGE, so the trailer decides).
fn compacted(status: &Status) -> Option<Error> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let compacted = status
        .metadata()
        .get(COMPACTED_REVISION_TRAILER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Error::Compacted { compacted })
}

impl Watcher {
    /// Sets how often an idle watch hears from its node (progress batches without events).
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// The revision up to which every matching event has been delivered (0 before the first).
    pub fn revision(&self) -> u64 {
        self.next_start.saturating_sub(1)
    }

    /// The next batch with events.
    pub async fn next(&mut self) -> Result<WatchBatch, Error> {
        loop {
            let batch = self.next_batch().await?;
            if !batch.events.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// The next response, progress responses (no events) included.
    pub async fn next_batch(&mut self) -> Result<WatchBatch, Error> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            let (index, stream) = match self.stream.as_mut() {
                Some(stream) => (None, stream),
                None => {
                    let (index, channel) = self.client.channel();
                    let (key, prefix) = match &self.target {
                        WatchTarget::Key(k) => (k.clone(), false),
                        WatchTarget::Prefix(p) => (p.clone(), true),
                    };
                    let request = v1::WatchRequest {
                        key,
                        prefix,
                        start_revision: self.next_start,
                        progress_interval_ms: self.progress_interval.as_millis() as u64,
                    };
                    let mut client = WatchClient::new(channel)
                        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES);
                    match client.watch(request).await {
                        Ok(response) => (Some(index), self.stream.insert(response.into_inner())),
                        Err(status) => {
                            if let Some(e) = compacted(&status) {
                                return Err(e);
                            }
                            if !node_unreachable(&status) || started.elapsed() > FAILOVER_BUDGET {
                                return Err(status.into());
                            }
                            attempts += 1;
                            self.client.fail_over_from(index);
                            if attempts % self.client.channels.len() == 0 {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            continue;
                        }
                    }
                }
            };
            let _ = index;
            match stream.message().await {
                Ok(Some(response)) => {
                    let revision = response.header.map_or(0, |h| h.revision);
                    self.next_start = revision + 1;
                    self.client.observe_revision(revision);
                    return Ok(WatchBatch {
                        revision,
                        events: response.events,
                    });
                }
                Ok(None) => self.stream = None,
                Err(status) => {
                    self.stream = None;
                    if let Some(e) = compacted(&status) {
                        return Err(e);
                    }
                    if !node_unreachable(&status) {
                        return Err(status.into());
                    }
                    let (index, _) = self.client.channel();
                    self.client.fail_over_from(index);
                }
            }
        }
    }
}
