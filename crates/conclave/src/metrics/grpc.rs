//! gRPC request figures: a tower layer timing every call by method, and a wrapper on accepted
//! connections that counts them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use conclave_metrics::{Counter, Exposition, Gauge, HistogramFamily, Kind, LATENCY_BUCKETS};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Distinct methods timed; calls to further (unknown) paths are counted together.
const MAX_METHODS: usize = 128;

/// What the gRPC listener counts.
#[derive(Debug)]
pub struct GrpcMetrics {
    /// Time from a call's arrival to its response headers, by method path: a unary call's
    /// whole handling, or a stream's opening.
    latency: HistogramFamily,
    connections: Gauge,
    connections_accepted: Counter,
    connections_refused: Counter,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            latency: HistogramFamily::new(LATENCY_BUCKETS, MAX_METHODS),
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
        }
    }
}

impl GrpcMetrics {
    pub fn encode(&self, out: &mut Exposition) {
        out.single(
            "conclave_grpc_connections",
            Kind::Gauge,
            "gRPC (HTTP/2) connections open now: clients and other nodes.",
            self.connections.get() as f64,
        );
        out.single(
            "conclave_grpc_connections_accepted_total",
            Kind::Counter,
            "gRPC connections accepted since the node started.",
            self.connections_accepted.get() as f64,
        );
        out.single(
            "conclave_grpc_connections_refused_total",
            Kind::Counter,
            "gRPC connections refused since the node started: --grpc-max-connections were open.",
            self.connections_refused.get() as f64,
        );
    }

    /// The samples of gRPC request latencies (under a header the caller wrote).
    pub fn encode_latencies(&self, out: &mut Exposition, family: &str) {
        out.histogram_samples(family, &[("api", "grpc")], "method", &self.latency);
    }

    /// gRPC connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.get().max(0) as usize
    }

    /// Counts a connection refused for `--grpc-max-connections`.
    pub fn count_refused(&self) {
        self.connections_refused.inc();
    }

    /// Wraps an accepted connection so it is counted while open.
    pub fn track<T>(self: &Arc<Self>, io: T) -> Tracked<T> {
        self.connections.inc();
        self.connections_accepted.inc();
        Tracked {
            io,
            metrics: self.clone(),
        }
    }
}

/// The tower layer timing each call into [`GrpcMetrics`].
#[derive(Clone)]
pub struct TimingLayer(pub Arc<GrpcMetrics>);

impl<S> tower_layer::Layer<S> for TimingLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A service whose calls are timed.
#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Timed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let histogram = self.metrics.latency.with_label(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            histogram.observe_duration(started.elapsed());
            response
        })
    }
}

/// An accepted connection, counted in [`GrpcMetrics`] until dropped.
pub struct Tracked<T> {
    io: T,
    metrics: Arc<GrpcMetrics>,
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

impl<T: Connected> Connected for Tracked<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
