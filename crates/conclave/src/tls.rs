//! TLS on the node's gRPC listener, which serves clients and peers alike, and on its
//! connections to peers: the node's certificate and key and the cluster's CA, from PEM files
//! that are read again when they change (no restart).
//!
//! Clients may present a certificate from the cluster's CA or none (they authenticate in other
//! ways); calls to the node-to-node services (`conclave.peer.v1`: Raft, forwarding, the pub/sub
//! mesh) need a *node* certificate: one from the cluster's CA that is valid for server
//! authentication, as `conclave certs node` issues and `conclave certs client` does not
//! (`crate::guard`). So a process without a node certificate cannot join, vote, forward or
//! relay.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use crate::metrics::grpc::{GrpcMetrics, Tracked};

/// How often the certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How long a connection gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The DER content of id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// TLS handshakes in progress at once; connections beyond wait for a turn (a flood of silent
/// connections does not hold every file descriptor and task).
const MAX_HANDSHAKES: usize = 256;

/// Where the node's TLS files are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The node's TLS material, reloaded as its files change.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
}

/// One reading of the files.
struct Loaded {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    verifier: Arc<dyn ClientCertVerifier>,
    pem: (Vec<u8>, Vec<u8>, Vec<u8>),
    stamps: [Option<SystemTime>; 3],
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Tls {
    /// Reads the files; fails with what is wrong with them.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = Self::read(&files, &provider)?;
        Ok(Arc::new(Tls {
            files,
            provider,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn read(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> anyhow::Result<Loaded> {
        let stamps = [
            modified(&files.cert),
            modified(&files.key),
            modified(&files.ca),
        ];
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .with_context(|| format!("cannot read the {what} {}", path.display()))
        };
        let cert_pem = read(&files.cert, "certificate")?;
        let key_pem = read(&files.key, "key")?;
        let ca_pem = read(&files.ca, "CA certificate")?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} is not a PEM certificate", files.cert.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "{} holds no certificate",
            files.cert.display()
        );
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", files.key.display()))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .with_context(|| format!("{}: unsupported key", files.key.display()))?;
        let key = Arc::new(CertifiedKey::new(chain, signing));
        key.keys_match().with_context(|| {
            format!(
                "{} is not the key of {}",
                files.key.display(),
                files.cert.display()
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca_pem) {
            let ca =
                ca.with_context(|| format!("{} is not a PEM certificate", files.ca.display()))?;
            roots
                .add(ca)
                .with_context(|| format!("{}: not a usable CA certificate", files.ca.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "{} holds no certificate",
            files.ca.display()
        );
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .context("a client verifier for the CA")?;
        Ok(Loaded {
            key,
            roots,
            verifier,
            pem: (cert_pem, key_pem, ca_pem),
            stamps,
        })
    }

    /// Checks that `files` are a node's: the key is the certificate's, and the certificate
    /// chains to the CA, is valid at `at` and names server authentication.
    pub fn check_node_files(files: TlsFiles, at: SystemTime) -> anyhow::Result<()> {
        let cert = files.cert.clone();
        let tls = Self::load(files)?;
        let chain = tls.current().key.cert.clone();
        let at = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .context("a time before 1970")?;
        anyhow::ensure!(
            tls.is_node_at(&chain, UnixTime::since_unix_epoch(at)),
            "{} is not a node certificate from the CA, or it is not valid then",
            cert.display()
        );
        Ok(())
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().expect("tls lock").clone()
    }

    /// Reads the files again if one changed since the last reading; Ok(true) if it did. A
    /// reading that fails keeps the material in use.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let stamps = [
            modified(&self.files.cert),
            modified(&self.files.key),
            modified(&self.files.ca),
        ];
        if stamps == self.current().stamps {
            return Ok(false);
        }
        let loaded = Self::read(&self.files, &self.provider)?;
        *self.current.write().expect("tls lock") = Arc::new(loaded);
        Ok(true)
    }

    /// The server configuration: this node's certificate, any client certificate from the
    /// cluster's CA or none, the given ALPN protocols; both follow reloads.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(Arc::new(ReloadingVerifier(self.clone())))
            .with_cert_resolver(Arc::new(ReloadingResolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// How this node connects to its peers: the cluster's CA and this node's certificate.
    pub fn peer_client(&self) -> tonic::transport::ClientTlsConfig {
        let current = self.current();
        let (cert, key, ca) = &current.pem;
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(cert, key))
    }

    /// Whether `chain` (a client's, already verified against the CA) is a node certificate:
    /// one that chains to the cluster's CA and names server authentication among its extended
    /// key usages. A certificate without that extension is not one (webpki's own server check
    /// would let it through).
    fn is_node(&self, chain: &[CertificateDer<'static>]) -> bool {
        self.is_node_at(chain, UnixTime::now())
    }

    /// [`Tls::is_node`] at the time `at`.
    fn is_node_at(&self, chain: &[CertificateDer<'static>], at: UnixTime) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
            return false;
        };
        let current = self.current();
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &current.roots.roots,
            intermediates,
            at,
            webpki::KeyUsage::required(EKU_SERVER_AUTH),
            None,
            None,
        )
        .is_ok()
    }
}

/// Keeps the material in step with its files, and the node's peer connections with it.
pub async fn follow_files(tls: Arc<Tls>, node: conclave_consensus::Node) {
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        match tls.reload_if_changed() {
            Ok(true) => {
                tracing::info!("TLS certificate files changed: reloaded");
                node.set_peer_tls(Some(tls.peer_client()));
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(
                "TLS certificate files changed but cannot be used (keeping the ones in use): {error:#}"
            ),
        }
    }
}

#[derive(Debug)]
struct ReloadingResolver(Arc<Tls>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

#[derive(Debug)]
struct ReloadingVerifier(Arc<Tls>);

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are advisory; a client with one certificate sends it anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().verifier.supported_verify_schemes()
    }
}

/// Who is at the other end of an accepted connection (the gRPC services find it in each
/// request's extensions).
#[derive(Clone, Debug)]
pub struct Peer {
    pub auth: PeerAuth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAuth {
    /// The listener runs without TLS.
    Plaintext,
    /// Over TLS; `node`: with a node certificate from the cluster's CA.
    Tls { node: bool },
}

/// An accepted connection, plain or TLS, counted in the gRPC metrics while open.
pub enum Connection {
    Plain(Tracked<TcpStream>, Peer),
    Tls(
        Box<tokio_rustls::server::TlsStream<Tracked<TcpStream>>>,
        Peer,
    ),
}

impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Connection::Plain(_, peer) | Connection::Tls(_, peer) => peer.clone(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Connection::Plain($io, _) => {
                let $io = Pin::new($io);
                $call
            }
            Connection::Tls($io, _) => {
                let $io = Pin::new($io.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(io, _) => io.is_write_vectored(),
            Connection::Tls(io, _) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// The gRPC listener's connections: plain, or TLS with each handshake on a task of its own (a
/// slow or silent client holds up nobody), counted in `metrics`. Past `max_connections` open
/// at once, a connection is refused in HTTP/2's own terms (see [`crate::refusal::refuse`]).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    metrics: Arc<GrpcMetrics>,
    max_connections: usize,
) -> anyhow::Result<tokio_stream::wrappers::ReceiverStream<std::io::Result<Connection>>> {
    let acceptor = match &tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
            tls.server_config(&[b"h2"])?,
        )),
        None => None,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // Once tonic drops the stream (shutdown), the listener closes at once.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = sender.closed() => return,
            };
            let (socket, _) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            if metrics.open_connections() >= max_connections {
                metrics.count_refused();
                // Refusals share the handshakes' turns: a flood past the limit costs no more
                // than one under it. Without a turn free, the connection is just closed.
                let Ok(turn) = handshakes.clone().try_acquire_owned() else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _turn = turn;
                    match acceptor {
                        Some(acceptor) => {
                            let handshake = acceptor.accept(socket);
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await
                            {
                                crate::refusal::refuse(stream, max_connections).await;
                            }
                        }
                        None => crate::refusal::refuse(socket, max_connections).await,
                    }
                });
                continue;
            }
            let socket = metrics.track(socket);
            let Some(acceptor) = &acceptor else {
                let peer = Peer {
                    auth: PeerAuth::Plaintext,
                };
                if sender
                    .send(Ok(Connection::Plain(socket, peer)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            let Ok(turn) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (acceptor, handed, tls) = (acceptor.clone(), sender.clone(), tls.clone());
            tokio::spawn(async move {
                let _turn = turn;
                let Ok(Ok(stream)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await
                else {
                    return; // a failed handshake is the client's business; rustls told it why
                };
                let node = match (stream.get_ref().1.peer_certificates(), &tls) {
                    (Some(chain), Some(tls)) => tls.is_node(chain),
                    _ => false,
                };
                let peer = Peer {
                    auth: PeerAuth::Tls { node },
                };
                let _ = handed
                    .send(Ok(Connection::Tls(Box::new(stream), peer)))
                    .await;
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
