//! The node's Prometheus endpoint (`--metrics HOST:PORT`, `GET /metrics`): every figure the
//! node's parts count, written out at scrape time.
//!
//! Each part counts its own figures (the node in `conclave-consensus`, RESP in `conclave-resp`,
//! pub/sub in `conclave-pubsub`); this module names pub/sub's, times gRPC calls ([`grpc`]),
//! reads the process's own figures ([`process`]) and serves the text over a minimal HTTP/1.1
//! (one request per connection, as Prometheus scrapes), plain or over TLS (`--metrics-tls`,
//! the node's certificate).

pub mod grpc;
pub mod process;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use conclave_consensus::Node;
use conclave_metrics::{Exposition, Kind, CONTENT_TYPE};
use conclave_pubsub::PubSub;
use conclave_resp::RespMetrics;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The family every request latency goes under, labelled by `api` and `method`.
const REQUEST_DURATION: &str = "conclave_request_duration_seconds";
/// The longest request head read, and how long a scraper gets to send it.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes answered at once; more get 503 (a scrape renders every figure).
const MAX_SCRAPES: usize = 8;

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub node: Node,
    pub pubsub: PubSub,
    pub grpc: Arc<grpc::GrpcMetrics>,
    pub resp: Option<Arc<RespMetrics>>,
}

impl Sources {
    /// One scrape's text.
    pub fn render(&self) -> String {
        let mut out = Exposition::new();
        self.node.encode_metrics(&mut out);
        out.family(
            REQUEST_DURATION,
            Kind::Histogram,
            "Time to answer a request, by API and method (gRPC: to the response headers).",
        );
        self.grpc.encode_latencies(&mut out, REQUEST_DURATION);
        if let Some(resp) = &self.resp {
            resp.encode_latencies(&mut out, REQUEST_DURATION);
        }
        self.grpc.encode(&mut out);
        if let Some(resp) = &self.resp {
            resp.encode(&mut out);
        }
        encode_pubsub(&self.pubsub, &mut out);
        process::encode(&mut out);
        out.finish()
    }
}

fn encode_pubsub(pubsub: &PubSub, out: &mut Exposition) {
    let (channels, patterns, subscriptions) = pubsub.registry_counts();
    out.single(
        "conclave_pubsub_channels",
        Kind::Gauge,
        "Channels with a subscriber on this node.",
        channels as f64,
    );
    out.single(
        "conclave_pubsub_patterns",
        Kind::Gauge,
        "Patterns with a subscriber on this node.",
        patterns as f64,
    );
    out.single(
        "conclave_pubsub_subscriptions",
        Kind::Gauge,
        "Channel and pattern subscriptions of this node's subscribers.",
        subscriptions as f64,
    );
    let stats = pubsub.stats();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    out.single(
        "conclave_pubsub_published_total",
        Kind::Counter,
        "Messages published through this node.",
        count(&stats.published),
    );
    out.single(
        "conclave_pubsub_delivered_total",
        Kind::Counter,
        "Messages delivered to this node's subscribers.",
        count(&stats.delivered),
    );
    out.single(
        "conclave_pubsub_unrouted_total",
        Kind::Counter,
        "Messages not relayed to a member because none of its subscribers listens on their channel.",
        count(&stats.unrouted),
    );
    out.family(
        "conclave_pubsub_dropped_total",
        Kind::Counter,
        "Messages dropped, by reason: relay (a member's queue full or away), causal (the publisher's revision late), local (this node's queue full).",
    );
    for (reason, counter) in [
        ("relay", &stats.dropped_relay),
        ("causal", &stats.dropped_causal),
        ("local", &stats.dropped_local),
    ] {
        out.sample(
            "conclave_pubsub_dropped_total",
            &[("reason", reason)],
            count(counter),
        );
    }
    out.single(
        "conclave_pubsub_slow_disconnects_total",
        Kind::Counter,
        "Subscribers disconnected for not reading their messages.",
        count(&stats.slow_disconnects),
    );
}

/// Serves the endpoint until `stopping` turns true, over TLS with `tls` if given.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((mut socket, _)) => {
                let Ok(permit) = scrapes.clone().try_acquire_owned() else {
                    if acceptor.is_some() {
                        continue; // no turn for a handshake either
                    }
                    tokio::spawn(async move {
                        let busy = "too many scrapes at once\n";
                        let _ = respond(
                            &mut socket,
                            "503 Service Unavailable",
                            "text/plain",
                            busy,
                            true,
                        )
                        .await;
                    });
                    continue;
                };
                let (sources, acceptor) = (sources.clone(), acceptor.clone());
                tokio::spawn(async move {
                    // The handshake and the request share the scrape's time.
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(socket).await {
                                    let _ = answer(stream, &sources).await;
                                }
                            }
                            None => {
                                let _ = answer(socket, &sources).await;
                            }
                        }
                    })
                    .await;
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one request head and answers it.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    sources: &Sources,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return respond(
                &mut socket,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
                true,
            )
            .await;
        }
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let with_body = method == "GET";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = sources.render();
            respond(&mut socket, "200 OK", CONTENT_TYPE, &text, with_body).await
        }
        ("GET" | "HEAD", "/") => {
            respond(
                &mut socket,
                "200 OK",
                "text/plain",
                "conclave: metrics at /metrics\n",
                with_body,
            )
            .await
        }
        ("GET" | "HEAD", _) => {
            respond(
                &mut socket,
                "404 Not Found",
                "text/plain",
                "not found: try /metrics\n",
                with_body,
            )
            .await
        }
        _ => {
            respond(
                &mut socket,
                "405 Method Not Allowed",
                "text/plain",
                "only GET and HEAD\n",
                true,
            )
            .await
        }
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    socket: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if with_body {
        response.push_str(body);
    }
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}
