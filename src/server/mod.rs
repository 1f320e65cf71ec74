//! The running service: binds the gRPC and HTTP servers, runs the flush loop (jittered
//! ticks, flush work off the async threads), feeds the sinks, logs progress,
//! and on shutdown stops ingest, flushes every open window and drains sinks.

mod cluster_flush;
mod flush_loop;
mod listeners;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use rand::Rng;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::{admin_router, AdminAccess, AdminState};
use crate::api::{self, v1};
use crate::clock::Clock;
use crate::cluster::coordinator::{ClusterError, Coordinator, Registration};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::router::Router;
use crate::cluster::service::ForwardService;
use crate::cluster::stage::{LocalFold, Stage};
use crate::config::ServiceSettings;
use crate::engine::{Engine, FlushStats};
use crate::ingest::auth::Auth;
use crate::ingest::backpressure::Backpressure;
use crate::ingest::grpc::GrpcIngest;
use crate::ingest::remote_write::{ingest_router, probe_router, HttpState};
use crate::ingest::statsd::{bind_statsd, serve_statsd};
use crate::limits::Limits;
use crate::profile::Profiler;
use crate::reload::{ClusterLink, RulesReloader};
use crate::rules::RuleSet;
use crate::sink::file_store::FileStore;
use crate::sink::remote_write::RemoteWriteShard;
use crate::sink::selection_query::{selection_router, SelectionQuery};
use crate::sink::selections::{selection_dir, GrpcSelections, SelectionHub, SelectionWriter};
use crate::sink::SinkSet;
use crate::telemetry::Telemetry;
use crate::tls::TlsListener;
use crate::wal::{read_stop_marks, stop_marks_path, write_stop_marks, Wal, WalError};

use flush_loop::FlushLoop;
use listeners::{start_otlp, watch_rules, HttpListener};

/// Why the service could not start or stopped badly.
/// What to do about a port another process holds: said with the config key,
/// since "Address already in use" alone does not say which listener it was.
fn busy_hint(source: &std::io::Error, key: &str) -> String {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        format!("; another process holds this port: stop it, or set {key} to a free address")
    } else {
        String::new()
    }
}

#[derive(Debug, Error)]
pub enum ServiceError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr} (config key {key}): {source}{}", busy_hint(source, key))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The config key that set it, e.g. `http.listen`: it names the listener.
        key: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A sink thread cannot start.
    #[error("cannot start sink {name}: {source}")]
    Sink {
        /// The sink.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// gRPC reflection could not load the API descriptors.
    #[error("grpc reflection: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(std::io::Error),
    /// The write-ahead log cannot be opened or replayed.
    #[error("{0}")]
    Wal(#[from] WalError),
    /// A TLS certificate or key cannot be used.
    #[error("tls of the {listener} listener: {problem}")]
    Tls {
        /// `grpc` or `http`.
        listener: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The cluster cannot be joined (etcd, placement).
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// The cluster's rules cannot be read or published.
    #[error("{0}")]
    ClusterRules(#[from] crate::cluster::rules::ClusterRulesError),
    /// Shutdown did not finish within the grace period.
    #[error("shutdown took longer than the {0} ms grace period; windows still open were lost")]
    ShutdownTimeout(u64),
}

enum Command {
    FlushNow(oneshot::Sender<FlushStats>),
}

/// A started service.
pub struct ServiceHandle {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    statsd_addr: Option<SocketAddr>,
    otlp_grpc_addr: Option<SocketAddr>,
    otlp_http_addr: Option<SocketAddr>,
    engine: Arc<Engine>,
    telemetry: Arc<Telemetry>,
    reloader: Arc<RulesReloader>,
    hub: SelectionHub,
    commands: mpsc::Sender<Command>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServiceError>>,
    grace_ms: u64,
    wal: Option<Arc<Wal>>,
    /// In a cluster: its etcd side (says when this instance has left).
    coordinator: Option<Arc<Coordinator>>,
}

/// Builds the gRPC router: ingest and the selection stream (behind bearer-token
/// auth when `auth.tokens` are set), reflection, and TLS when `grpc.tls` is set.
pub fn grpc_router(
    engine: Arc<Engine>,
    settings: &ServiceSettings,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    hub: SelectionHub,
    closing: watch::Receiver<bool>,
    stage: Stage,
) -> Result<tonic::transport::server::Router, ServiceError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| ServiceError::Reflection(error.to_string()))?;
    let gate = engine.limits().gate().clone();
    let ingest = GrpcIngest::new(engine, settings.ingest.clone(), clock, Arc::clone(&telemetry)).with_stage(stage);
    let ingest = Backpressure::new(ingest.into_server(), gate, Arc::clone(&telemetry));
    let selections = GrpcSelections::new(hub, settings.ingest.tenant_header.clone(), telemetry, closing);
    let auth = Auth::new(settings.auth.as_ref(), &settings.ingest.tenant_header);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &settings.grpc_tls {
        builder = builder
            .tls_config(crate::tls::grpc_tls_config(tls))
            .map_err(|error| ServiceError::Tls {
                listener: "grpc",
                problem: error.to_string(),
            })?;
    }
    // The token is checked first, so a caller without one never takes an in-flight permit.
    Ok(builder
        .add_service(auth.grpc(ingest))
        .add_service(auth.grpc(v1::selections_server::SelectionsServer::new(selections)))
        .add_service(reflection))
}

/// Starts the service: binds, spawns the server, sinks and flush loop.
pub async fn start(
    settings: ServiceSettings,
    rules: RuleSet,
    clock: Arc<dyn Clock>,
) -> Result<ServiceHandle, ServiceError> {
    let telemetry = Arc::new(Telemetry::default());
    let limits = Limits::new(settings.limits.clone(), Arc::clone(&telemetry));
    // A cluster instance folds the cluster's rules from etcd (see `cluster::rules`).
    let cluster_rules = match &settings.cluster {
        Some(cluster) => {
            let timeout = std::time::Duration::from_millis(cluster.etcd_timeout_ms);
            let client = EtcdClient::connect(&cluster.etcd_endpoints, timeout)
                .await
                .map_err(ClusterError::from)?;
            let start =
                crate::cluster::rules::at_start(&client, cluster, &settings.rules_file, rules.clone(), clock.now_ms())
                    .await?;
            Some((client, start))
        }
        None => None,
    };
    let rules = match &cluster_rules {
        Some((_, start)) => start.sets[0].1.clone(),
        None => rules,
    };
    let mut engine = Engine::new(settings.engine.clone(), rules).with_limits(limits);
    if let Some(cluster) = &settings.cluster {
        engine = engine.with_rollup_forwarding(cluster.forward_lateness_ms);
    }
    if let Some(profile) = settings.profile.clone() {
        engine = engine.with_profiler(Arc::new(Profiler::new(profile, clock.now_ms())));
    }
    let engine = Arc::new(engine);
    let reloader = match (cluster_rules, &settings.cluster) {
        (Some((client, start)), Some(cluster)) => {
            for (from_ms, rules, _) in &start.sets[1..] {
                let from_ms = from_ms.expect("later sets have an effective time");
                engine
                    .stage_rules_at(rules.clone(), from_ms)
                    .expect("the sets of one published value follow each other");
            }
            let link = ClusterLink {
                client: client.clone(),
                settings: cluster.clone(),
            };
            let reloader = Arc::new(RulesReloader::clustered(
                &settings.rules_file,
                Arc::clone(&engine),
                Arc::clone(&clock),
                Arc::clone(&telemetry),
                link,
                &start,
            ));
            tokio::spawn(crate::cluster::rules::follow(
                client,
                cluster.cluster.clone(),
                Arc::clone(&reloader),
            ));
            reloader
        }
        _ => Arc::new(RulesReloader::new(
            &settings.rules_file,
            Arc::clone(&engine),
            Arc::clone(&clock),
            Arc::clone(&telemetry),
        )),
    };
    let hub = SelectionHub::new(settings.selection_stream_buffer);
    let store_root = settings.data_dir.join("store");
    // Windows a stop without the log flushed partial stay closed: later
    // points for them are refused (and counted per output), never emitted twice.
    if let Some(marks) = read_stop_marks(&stop_marks_path(&settings.data_dir))? {
        engine.restore_watermarks(&marks);
    }
    let wal = match &settings.wal {
        Some(wal_settings) => {
            // Recovery and replay before any sink or listener starts: the store is cut
            // back to the last checkpoint, then the log refills the open windows.
            let (wal, replay) = Wal::open(wal_settings, &engine)?;
            tracing::info!(
                segments = replay.segments,
                batches = replay.batches,
                accepted = replay.accepted,
                skipped_already_flushed = replay.already_flushed,
                refused = replay.refused,
                skipped_bytes = replay.skipped_bytes,
                rollup_shares = replay.shares,
                rollup_shares_already_flushed = replay.shares_already_flushed,
                dir = %wal_settings.dir.display(),
                "write-ahead log replayed (points of windows flushed before the stop are skipped: they are in the store)"
            );
            Some(Arc::new(wal))
        }
        None => None,
    };
    let store_failures = Arc::new(AtomicU64::new(0));

    let mut sinks = SinkSet::default();
    if settings.store_enabled {
        let counters = Arc::clone(&telemetry);
        let failures = Arc::clone(&store_failures);
        let store = FileStore::new(&store_root, settings.segment_duration_ms).with_sync(wal.is_some());
        sinks
            .spawn("store", store, move |records, result| match result {
                Ok(()) => counters.written(records as u64),
                Err(error) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    counters.sink_error();
                    tracing::error!(%error, records, "store write failed; records lost");
                }
            })
            .map_err(|source| ServiceError::Sink { name: "store", source })?;
    }
    for sink in &settings.remote_write {
        for shard in 0..sink.shards {
            let writer = RemoteWriteShard::new(sink.clone(), shard, Arc::clone(&telemetry));
            sinks
                .spawn("remote-write", writer, |_, _| {})
                .map_err(|source| ServiceError::Sink {
                    name: "remote-write",
                    source,
                })?;
        }
    }
    let selection_files = settings.selections_file.then(|| selection_dir(&settings.data_dir));
    let counters = Arc::clone(&telemetry);
    sinks
        .spawn(
            "selections",
            SelectionWriter::new(hub.clone(), selection_files.clone(), Arc::clone(&telemetry)),
            move |records, result| {
                if let Err(error) = result {
                    counters.sink_error();
                    tracing::error!(%error, records, "selection write failed");
                }
            },
        )
        .map_err(|source| ServiceError::Sink {
            name: "selections",
            source,
        })?;

    let (listener, grpc_addr) = listeners::bind(settings.grpc_listen, "grpc.listen").await?;
    let (closing, closing_receiver) = watch::channel(false);
    let (http_listener, http_addr) = listeners::bind(settings.http_listen, "http.listen").await?;
    let local = LocalFold::new(Arc::clone(&engine), wal.clone());
    let cluster = match &settings.cluster {
        Some(cluster_settings) => Some(
            start_cluster(
                cluster_settings,
                http_addr,
                &local,
                &reloader,
                &clock,
                &telemetry,
                wal.is_some(),
                closing_receiver.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let stage = match &cluster {
        Some(cluster) => Stage::clustered(local.clone(), Arc::clone(&cluster.router)),
        None => Stage::local(Arc::clone(&engine), wal.clone()),
    };
    let mut statsd_addr = None;
    let mut statsd_task = None;
    if let Some(statsd) = settings.statsd.clone() {
        let bind_error = |source| ServiceError::Bind {
            addr: statsd.listen,
            key: "statsd.listen",
            source,
        };
        let sockets = bind_statsd(&statsd).map_err(bind_error)?;
        statsd_addr = Some(sockets.local_addr());
        statsd_task = Some(tokio::spawn(serve_statsd(
            sockets,
            stage.clone(),
            Arc::clone(&clock),
            Arc::clone(&telemetry),
            statsd,
            closing_receiver.clone(),
        )));
    }
    let auth = Auth::new(settings.auth.as_ref(), &settings.ingest.tenant_header);
    let otlp = start_otlp(&settings, &engine, &clock, &telemetry, &stage, &auth, &closing_receiver).await?;
    // Listening for SIGHUP from here on (not from whenever the task first
    // runs), so a SIGHUP after `start` returns never meets the default action.
    #[cfg(unix)]
    let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reload with POST /-/reload");
            None
        }
    };
    let rules_watch = tokio::spawn(watch_rules(
        Arc::clone(&reloader),
        settings.reload_watch_interval_ms,
        #[cfg(unix)]
        hangup,
        closing_receiver.clone(),
    ));
    let router = grpc_router(
        Arc::clone(&engine),
        &settings,
        Arc::clone(&clock),
        Arc::clone(&telemetry),
        hub.clone(),
        closing_receiver,
        stage.clone(),
    )?;
    let http_listener = match &settings.http_tls {
        Some(tls) => {
            let config =
                crate::tls::server_config(tls, &[b"h2", b"http/1.1"]).map_err(|problem| ServiceError::Tls {
                    listener: "http",
                    problem,
                })?;
            HttpListener::Tls(TlsListener::new(http_listener, Arc::new(config)).map_err(|source| {
                ServiceError::Bind {
                    addr: settings.http_listen,
                    key: "http.listen",
                    source,
                }
            })?)
        }
        None => HttpListener::Plain(http_listener),
    };
    let http_state = HttpState::new(
        Arc::clone(&engine),
        settings.ingest.clone(),
        Arc::clone(&clock),
        Arc::clone(&telemetry),
    )
    .with_stage(stage.clone());

    let (commands, command_receiver) = mpsc::channel(16);
    let (stop, stop_receiver) = oneshot::channel();
    let coordinator = cluster.as_ref().map(|cluster| Arc::clone(&cluster.coordinator));
    let task = tokio::spawn(run(
        Servers {
            grpc: router,
            grpc_listener: listener,
            // Ingest and the selection query sit behind the tokens (the token's tenant becomes the
            // tenant header, so a query sees its own tenant only); probes stay open; admin
            // endpoints need the admin token, or a loopback listener when none is set.
            http: auth
                .protect(
                    ingest_router(http_state.clone()).merge(selection_router(SelectionQuery::new(
                        selection_files.clone(),
                        settings.ingest.tenant_header.clone(),
                    ))),
                )
                .merge(probe_router(http_state.clone()))
                .merge(admin_router(
                    AdminState {
                        engine: Arc::clone(&engine),
                        telemetry: Arc::clone(&telemetry),
                        reloader: Arc::clone(&reloader),
                        clock: Arc::clone(&clock),
                        cluster: cluster.as_ref().map(|cluster| Arc::clone(&cluster.coordinator)),
                        ingest: http_state.clone(),
                    },
                    AdminAccess::new(
                        settings.admin_token.as_ref(),
                        settings.http_listen.ip().is_loopback(),
                        auth.clone(),
                    ),
                )),
            http_listener,
            http_state,
            statsd: statsd_task,
            otlp: otlp.tasks,
            rules_watch,
        },
        FlushLoop {
            engine: Arc::clone(&engine),
            sinks: Arc::new(sinks),
            clock,
            telemetry: Arc::clone(&telemetry),
            wal: wal.clone(),
            store_paths: settings
                .store_enabled
                .then(|| FileStore::new(&store_root, settings.segment_duration_ms)),
            store_failures,
            cluster: cluster.map(|cluster| cluster_flush::ClusterFlush {
                coordinator: cluster.coordinator,
                router: cluster.router,
            }),
        },
        settings.clone(),
        command_receiver,
        stop_receiver,
        closing,
    ));
    tracing::info!(grpc = %grpc_addr, http = %http_addr, statsd = ?statsd_addr, otlp_grpc = ?otlp.grpc_addr, otlp_http = ?otlp.http_addr, data_dir = %settings.data_dir.display(), "tailfold started");
    Ok(ServiceHandle {
        grpc_addr,
        http_addr,
        statsd_addr,
        otlp_grpc_addr: otlp.grpc_addr,
        otlp_http_addr: otlp.http_addr,
        engine,
        telemetry,
        reloader,
        hub,
        commands,
        stop,
        task,
        grace_ms: settings.shutdown_grace_ms,
        wal,
        coordinator,
    })
}

/// A started cluster membership: the coordinator (etcd) and the router.
struct ClusterRuntime {
    coordinator: Arc<Coordinator>,
    router: Arc<Router>,
}

/// Joins the cluster: binds the internal forwarding listener, registers in
/// etcd (reading the placement) and serves forwards until `closing`.
#[allow(clippy::too_many_arguments)]
async fn start_cluster(
    cluster: &crate::config::ClusterSettings,
    http_addr: SocketAddr,
    local: &LocalFold,
    rules: &Arc<RulesReloader>,
    clock: &Arc<dyn Clock>,
    telemetry: &Arc<Telemetry>,
    logged: bool,
    mut closing: watch::Receiver<bool>,
) -> Result<ClusterRuntime, ServiceError> {
    let (internal, internal_addr) = listeners::bind(cluster.listen, "cluster.listen").await?;
    let now_ms = clock.now_ms();
    let registration = Registration {
        id: cluster.instance.clone(),
        endpoint: internal_addr.to_string(),
        http: http_addr.to_string(),
        started_ms: now_ms,
        rules_hash: rules.newest_hash(),
        rules_version: 0,
        rules_differ: None,
        // Set by the coordinator, which knows the set's replicas.
        warm_at_ms: 0,
        draining: false,
    };
    // A replica that just started has not seen the windows open now, nor the
    // rollup shares already sent for rollup windows not yet flushed: it may
    // lead only once every window it could flush opened, and every such share
    // was sent, after the others' liveness poll saw it registered.
    let warm_after_ms = local
        .engine()
        .flush_horizon_ms()
        .max(cluster.forward_lateness_ms as i64)
        + crate::cluster::coordinator::LIVENESS_MARGIN_MS as i64;
    let time = Arc::clone(clock);
    let coordinator = Coordinator::start(
        cluster.clone(),
        registration,
        rules.subscribe(),
        logged,
        warm_after_ms,
        move || time.now_ms(),
        Arc::clone(telemetry),
    )
    .await?;
    let view = Arc::clone(coordinator.view());
    let router = Arc::new(Router::new(
        Arc::clone(&view),
        local.clone(),
        Arc::clone(telemetry),
        Arc::clone(rules),
    ));
    let service = ForwardService::new(view, local.clone(), Arc::clone(telemetry), Arc::clone(rules)).into_server();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(internal);
    tokio::spawn(async move {
        let stop = async move {
            let _ = closing.wait_for(|closed| *closed).await;
        };
        if let Err(error) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await
        {
            tracing::error!(%error, "cluster forwarding server failed");
        }
    });
    tracing::info!(cluster = %cluster.cluster, instance = %cluster.instance, forwarding = %internal_addr, "joined the cluster");
    Ok(ClusterRuntime { coordinator, router })
}

/// The bound servers `run` serves until shutdown.
struct Servers {
    grpc: tonic::transport::server::Router,
    grpc_listener: tokio::net::TcpListener,
    http: axum::Router,
    http_listener: HttpListener,
    http_state: HttpState,
    /// The statsd listener task, when statsd is on.
    statsd: Option<JoinHandle<()>>,
    /// The OTLP servers, when on; they stop once `closing` turns true.
    otlp: Vec<JoinHandle<()>>,
    /// The rules file watcher (and SIGHUP listener).
    rules_watch: JoinHandle<()>,
}

async fn run(
    servers: Servers,
    flusher: FlushLoop,
    settings: ServiceSettings,
    mut commands: mpsc::Receiver<Command>,
    stop: oneshot::Receiver<()>,
    closing: watch::Sender<bool>,
) -> Result<(), ServiceError> {
    let (server_stop, server_stop_receiver) = oneshot::channel::<()>();
    // Without TCP_NODELAY a request larger than one segment waits out
    // delayed ACKs (tens of ms); tonic only sets it on listeners it binds itself.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(servers.grpc_listener),
        |stream| {
            stream.inspect(|stream| {
                let _ = stream.set_nodelay(true);
            })
        },
    );
    let server = tokio::spawn(servers.grpc.serve_with_incoming_shutdown(incoming, async {
        let _ = server_stop_receiver.await;
    }));
    let (http_stop, http_stop_receiver) = oneshot::channel::<()>();
    let http_stopped = async {
        let _ = http_stop_receiver.await;
    };
    let http_server = match servers.http_listener {
        HttpListener::Tls(listener) => tokio::spawn(
            axum::serve(listener, servers.http)
                .with_graceful_shutdown(http_stopped)
                .into_future(),
        ),
        HttpListener::Plain(listener) => {
            // Same for HTTP: axum leaves TCP_NODELAY to the listener.
            let listener = listener.tap_io(|stream| {
                let _ = stream.set_nodelay(true);
            });
            tokio::spawn(
                axum::serve(listener, servers.http)
                    .with_graceful_shutdown(http_stopped)
                    .into_future(),
            )
        }
    };

    let flusher = Arc::new(flusher);
    let progress_every = Duration::from_millis(settings.progress_interval_ms.max(1));
    let mut next_progress = tokio::time::Instant::now() + progress_every;
    let mut last_line = String::new();
    tokio::pin!(stop);
    loop {
        let jitter = rand::rng().random_range(0..=settings.flush_jitter_ms);
        let tick = tokio::time::sleep(Duration::from_millis(settings.flush_interval_ms + jitter));
        tokio::select! {
            _ = &mut stop => break,
            Some(Command::FlushNow(reply)) = commands.recv() => {
                let _ = reply.send(flusher.flush(false, true).await);
            }
            _ = tick => {
                flusher.flush(false, false).await;
            }
        }
        if settings.progress_interval_ms > 0 && tokio::time::Instant::now() >= next_progress {
            next_progress += progress_every;
            let line = flusher.telemetry.snapshot().progress_line();
            if line != last_line {
                tracing::info!(target: "tailfold::progress", "{line}");
                last_line = line;
            }
        }
    }

    // Close ingest first (waiting out writes in flight, refusing later ones with
    // UNAVAILABLE / 503), so the final flush sees every accepted sample.
    servers.http_state.set_ready(false);
    if let Some(wal) = &flusher.wal {
        // No batch is logged from here on that the closed engine would refuse.
        wal.seal().await;
    }
    flusher.engine.close();
    // In a cluster the set's other replica keeps the open windows, and with
    // the write-ahead log the log keeps them (replayed at the next start, so
    // no window is written partial): flush what is due only. A cluster then
    // hands leadership over at once instead of after the lease TTL.
    let everything = flusher.cluster.is_none() && flusher.wal.is_none();
    let stats = flusher.flush(everything, true).await;
    if let Some(cluster) = &flusher.cluster {
        cluster.coordinator.resign().await;
        cluster.coordinator.leave().await;
    }
    if everything {
        tracing::info!(
            windows = stats.windows,
            records = stats.records,
            "flushed every open window at shutdown (those not ended are partial; later points for them will be refused)"
        );
        let marks = flusher.engine.watermarks();
        let path = stop_marks_path(&settings.data_dir);
        if let Err(error) = tokio::task::spawn_blocking(move || write_stop_marks(&path, &marks))
            .await
            .unwrap_or(Ok(()))
        {
            tracing::error!(%error, "cannot keep the shutdown flush's watermarks; a restart may emit its partial windows again");
        }
    } else {
        tracing::info!(
            windows = stats.windows,
            records = stats.records,
            open_windows = flusher.engine.open_windows(),
            "flushed the due windows at shutdown; open windows stay in the write-ahead log (or with the shard set's other replica)"
        );
    }
    // Selection streams deliver what that flush published, then end; only then
    // can the server's graceful shutdown finish.
    let _ = closing.send(true);
    let _ = servers.rules_watch.await;
    if let Some(task) = servers.statsd {
        // Already stopped if a datagram met the closed engine; else `closing` stops it.
        let _ = task.await;
    }
    for task in servers.otlp {
        let _ = task.await;
    }
    let _ = server_stop.send(());
    let _ = http_stop.send(());
    let served = server.await;
    let http_served = http_server.await;
    tracing::info!(target: "tailfold::progress", "{}", flusher.telemetry.snapshot().progress_line());
    let wal = flusher.wal.clone();
    match Arc::try_unwrap(flusher).map(|flusher| Arc::try_unwrap(flusher.sinks)) {
        Ok(Ok(sinks)) => tokio::task::spawn_blocking(move || sinks.close()).await.unwrap_or(()),
        _ => tracing::error!("sinks still in use at shutdown"),
    }
    if let Some(wal) = wal {
        // Segments go only when the shutdown flush was committed; otherwise the next start replays them.
        if let Err(error) = tokio::task::spawn_blocking(move || wal.close()).await.unwrap_or(Ok(())) {
            tracing::error!(%error, "cannot close the write-ahead log");
        }
    }
    match http_served {
        Ok(Err(error)) => return Err(ServiceError::Http(error)),
        Ok(Ok(())) => {}
        Err(error) => tracing::error!(%error, "http server task failed"),
    }
    match served {
        Ok(result) => result.map_err(ServiceError::Serve),
        Err(error) => {
            tracing::error!(%error, "grpc server task failed");
            Ok(())
        }
    }
}

impl ServiceHandle {
    /// Address the gRPC server listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Address the statsd UDP listener is bound to, when statsd is on.
    pub fn statsd_addr(&self) -> Option<SocketAddr> {
        self.statsd_addr
    }

    /// Address the OTLP/gRPC server listens on, when on.
    pub fn otlp_grpc_addr(&self) -> Option<SocketAddr> {
        self.otlp_grpc_addr
    }

    /// Address the OTLP/HTTP server listens on, when on.
    pub fn otlp_http_addr(&self) -> Option<SocketAddr> {
        self.otlp_http_addr
    }

    /// Address the HTTP server (Prometheus remote write) listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The engine (for inspection).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The service counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The write-ahead log, when on.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref()
    }

    /// The rules reloader (what `POST /-/reload` and SIGHUP call).
    pub fn reloader(&self) -> &Arc<RulesReloader> {
        &self.reloader
    }

    /// The selection hub (subscribe in-process).
    pub fn selections(&self) -> &SelectionHub {
        &self.hub
    }

    /// Flushes what is due now and returns once sinks have written it.
    pub async fn flush_now(&self) -> FlushStats {
        let (reply, wait) = oneshot::channel();
        if self.commands.send(Command::FlushNow(reply)).await.is_err() {
            return FlushStats::default();
        }
        wait.await.unwrap_or_default()
    }

    /// Resolves once a completed placement change took this cluster
    /// instance out of the placement (never on a single node).
    pub async fn left_cluster(&self) {
        match &self.coordinator {
            Some(coordinator) => coordinator.left().await,
            None => std::future::pending().await,
        }
    }

    /// Stops ingest, flushes every open window, drains sinks, within the grace period.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_millis(self.grace_ms), self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                tracing::error!(%error, "service task failed");
                Ok(())
            }
            Err(_) => Err(ServiceError::ShutdownTimeout(self.grace_ms)),
        }
    }
}
