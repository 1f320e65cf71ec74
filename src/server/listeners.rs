//! The listeners beside the main gRPC and HTTP servers: OTLP (gRPC and
//! HTTP), the rules watcher (file changes and SIGHUP), and the HTTP listener
//! that is plaintext or TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::cluster::stage::Stage;
use crate::config::ServiceSettings;
use crate::engine::Engine;
use crate::ingest::auth::Auth;
use crate::ingest::otlp::{auth_refusal, otlp_grpc_router, otlp_http_router, OtlpIngest};
use crate::reload::RulesReloader;
use crate::telemetry::Telemetry;
use crate::tls::TlsListener;

use super::ServiceError;

/// The started OTLP listeners.
pub(super) struct OtlpServers {
    pub(super) grpc_addr: Option<SocketAddr>,
    pub(super) http_addr: Option<SocketAddr>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

pub(super) async fn bind(
    addr: SocketAddr,
    key: &'static str,
) -> Result<(tokio::net::TcpListener, SocketAddr), ServiceError> {
    let bind_error = |source| ServiceError::Bind { addr, key, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Binds and serves OTLP/gRPC and OTLP/HTTP where configured. They serve until
/// `closing` turns true (after the final flush; the engine refuses writes
/// with UNAVAILABLE / 503 from the moment shutdown begins).
pub(super) async fn start_otlp(
    settings: &ServiceSettings,
    engine: &Arc<Engine>,
    clock: &Arc<dyn Clock>,
    telemetry: &Arc<Telemetry>,
    stage: &Stage,
    auth: &Auth,
    closing: &watch::Receiver<bool>,
) -> Result<OtlpServers, ServiceError> {
    let ingest = OtlpIngest::new(
        Arc::clone(engine),
        settings.ingest.clone(),
        settings.otlp.clone(),
        Arc::clone(clock),
        Arc::clone(telemetry),
        stage.clone(),
    );
    let mut servers = OtlpServers {
        grpc_addr: None,
        http_addr: None,
        tasks: Vec::new(),
    };
    let closed = |mut closing: watch::Receiver<bool>| async move {
        let _ = closing.wait_for(|closed| *closed).await;
    };
    let tls_error = |problem: String| ServiceError::Tls {
        listener: "otlp",
        problem,
    };
    if let Some(addr) = settings.otlp.grpc_listen {
        let (listener, local) = bind(addr, "otlp.grpc_listen").await?;
        servers.grpc_addr = Some(local);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let router = otlp_grpc_router(ingest.clone(), auth, settings.otlp.tls.as_ref())
            .map_err(|error| tls_error(error.to_string()))?;
        let stop = closed(closing.clone());
        servers.tasks.push(tokio::spawn(async move {
            if let Err(error) = router.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(%error, "otlp grpc server failed");
            }
        }));
    }
    if let Some(addr) = settings.otlp.http_listen {
        let (listener, local) = bind(addr, "otlp.http_listen").await?;
        servers.http_addr = Some(local);
        let router = auth.protect_answering(otlp_http_router(ingest), auth_refusal);
        let stop = closed(closing.clone());
        let task = match &settings.otlp.tls {
            Some(tls) => {
                let config = crate::tls::server_config(tls, &[b"h2", b"http/1.1"]).map_err(tls_error)?;
                let listener = TlsListener::new(listener, Arc::new(config)).map_err(|source| ServiceError::Bind {
                    addr,
                    key: "otlp.http_listen",
                    source,
                })?;
                tokio::spawn(async move {
                    if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
                        tracing::error!(%error, "otlp http server failed");
                    }
                })
            }
            None => tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
                    tracing::error!(%error, "otlp http server failed");
                }
            }),
        };
        servers.tasks.push(task);
    }
    Ok(servers)
}

/// Reloads the rules when the file changes (checked every `interval_ms`; 0 =
/// not watched) and on SIGHUP, until `closing`.
pub(super) async fn watch_rules(
    reloader: Arc<RulesReloader>,
    interval_ms: u64,
    #[cfg(unix)] mut hangup: Option<tokio::signal::unix::Signal>,
    mut closing: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let signal = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signal = std::future::pending::<Option<()>>();
        let reloader = Arc::clone(&reloader);
        tokio::select! {
            _ = closing.changed() => break,
            _ = ticks.tick(), if interval_ms > 0 => {
                let _ = tokio::task::spawn_blocking(move || reloader.poll()).await;
            }
            Some(()) = signal => {
                let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
            }
        }
    }
}

/// The HTTP listener: plaintext, or TLS when `http.tls` is set.
pub(super) enum HttpListener {
    Plain(tokio::net::TcpListener),
    Tls(TlsListener),
}
