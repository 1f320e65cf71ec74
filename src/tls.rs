//! TLS (rustls, ring provider) for the listeners: the rustls server config of
//! a checked identity, tonic's TLS settings for gRPC, and a TLS listener for
//! axum whose handshakes run concurrently, so a stalled client blocks no one.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;

/// The rustls server config of `settings` (TLS 1.2 and 1.3, no client
/// certificates) advertising `alpn` protocols. Fails when the key does not
/// fit the certificate.
pub fn server_config(settings: &TlsSettings, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&settings.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{}: {error}", settings.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&settings.key_pem).map_err(|error| error.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| format!("{}: {error}", settings.cert_file.display()))?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

/// tonic's TLS settings for the gRPC server.
pub fn grpc_tls_config(settings: &TlsSettings) -> tonic::transport::ServerTlsConfig {
    let identity = tonic::transport::Identity::from_pem(&settings.cert_pem, &settings.key_pem);
    tonic::transport::ServerTlsConfig::new().identity(identity)
}

/// An axum listener serving TLS: accepts TCP, handshakes each connection on
/// its own task (with a timeout), hands over the ones that succeed. A
/// plaintext client fails its handshake and is closed.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(ACCEPT_QUEUE);
        let tls = TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = sender.closed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and the like: wait rather than spin.
                            tracing::warn!(%error, "tls accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                // Without TCP_NODELAY a request larger than one segment waits out delayed ACKs.
                let _ = stream.set_nodelay(true);
                let tls = tls.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local_addr,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Releases the port as soon as the server stops.
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task is gone (it never ends while `ready` lives): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
