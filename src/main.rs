//! The `tailfold` command line: `run` the service, `check` a config or rules
//! file, `loadgen` to send realistic traffic. All logic lives in the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tailfold::clock::SystemClock;
use tailfold::config::ServiceSettings;
use tailfold::loadgen::{self, LoadgenOptions, Protocol};
use tailfold::model::parse_duration_ms;
use tailfold::rules::RuleSet;

/// mimalloc instead of glibc malloc: ingest decodes label strings for every
/// request, and under glibc the service spent about a fifth of its time in
/// malloc and free (`perf` of the service under `loadgen`, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tailfold",
    version,
    about = "Streaming aggregation tier for metrics, with trace exemplars per quantile"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run {
        /// Process config file.
        #[arg(short, long, default_value = "config/tailfold.yaml")]
        config: PathBuf,
    },
    /// Validate a process config (and the rules file it names) or a rules file; non-zero exit on error.
    /// A config with a `cluster:` section is also compared with the cluster's rules in etcd (non-zero when they differ).
    Check {
        /// The file to check. A file with any process setting (grpc, http, rules_file, data_dir, engine, flush,
        /// ingest, store, selections, statsd, otlp, limits, auth, log, wal, profile, reload) is a process config;
        /// otherwise it is read as a rules file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Exit 0 when a running service answers `GET /-/healthy` (the container health check).
    Health {
        /// HTTP endpoint of tailfold.
        #[arg(long, default_value = "http://127.0.0.1:4771")]
        target: String,
    },
    /// Show who is costing what: top metrics by series and samples, label cardinality, owners, rule effect.
    Top {
        /// HTTP endpoint of tailfold.
        #[arg(long, default_value = "http://127.0.0.1:4771")]
        target: String,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this metric name (all its labels are listed).
        #[arg(long)]
        metric: Option<String>,
        /// Rows per table.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Refresh interval, e.g. 2s.
        #[arg(long, default_value = "2s")]
        interval: String,
        /// Print the tables once and exit (no screen clearing), for scripts.
        #[arg(long)]
        once: bool,
        /// Line width; default the terminal's `COLUMNS`, else 160.
        #[arg(long)]
        width: Option<usize>,
    },
    /// Create and inspect a cluster's placement in etcd.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Send realistic traffic over gRPC and account for every point.
    Loadgen {
        /// gRPC endpoint of tailfold.
        #[arg(long, default_value = "http://127.0.0.1:4770")]
        target: String,
        /// Distinct series.
        #[arg(long, default_value_t = 1000)]
        series: usize,
        /// Points per second overall; 0 means as fast as the service answers.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// How long to run, e.g. 30s or 2m.
        #[arg(long, default_value = "30s")]
        duration: String,
        /// Points per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Weights of distribution:counter:gauge series.
        #[arg(long, default_value = "8:1:1")]
        mix: String,
        /// Concurrent requests in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Tenant to send in the x-scope-orgid metadata.
        #[arg(long, default_value = "")]
        tenant: String,
        /// Seed of the value and trace ID generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// `grpc` (Ingest.Write, target http://127.0.0.1:4770) or `remote-write`
        /// (Prometheus remote write, target http://127.0.0.1:4771).
        #[arg(long, default_value = "grpc")]
        protocol: String,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create the placement: shards, and shard sets of `--replicas` instances (in the order given).
    Init {
        /// etcd endpoint (repeat for several).
        #[arg(long, required = true)]
        etcd: Vec<String>,
        /// Cluster id (`cluster.cluster` in each instance's config).
        #[arg(long)]
        cluster: String,
        /// Virtual shards, fixed for the cluster's life.
        #[arg(long, default_value_t = 1024)]
        shards: u32,
        /// Mirrored replicas per shard set (1 allowed).
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        /// `ID=HOST:PORT[,http=HOST:PORT]`: an instance and its forwarding (`cluster.listen`) and HTTP addresses.
        #[arg(long = "instance", required = true)]
        instances: Vec<String>,
    },
    /// Add a shard set of new instances (started first; they wait, registered, to be placed).
    Add {
        #[command(flatten)]
        target: ChangeTarget,
        /// `ID=HOST:PORT[,http=HOST:PORT]` of each new instance (as many as the replicas per set).
        #[arg(long = "instance", required = true)]
        instances: Vec<String>,
    },
    /// Remove a whole shard set; its shards are handed to the others at the cutover.
    Remove {
        #[command(flatten)]
        target: ChangeTarget,
        /// Instance id of each instance of the set.
        #[arg(long = "instance", required = true)]
        instances: Vec<String>,
    },
    /// Swap one instance for a new one (started first); no shard changes sets.
    Replace {
        #[command(flatten)]
        target: ChangeTarget,
        /// Id of the instance leaving.
        #[arg(long)]
        old: String,
        /// `ID=HOST:PORT[,http=HOST:PORT]` of the instance taking its place.
        #[arg(long)]
        new: String,
    },
    /// Show the placement, live instances, leaders and flush marks.
    Status {
        /// etcd endpoint (repeat for several).
        #[arg(long, required = true)]
        etcd: Vec<String>,
        /// Cluster id.
        #[arg(long)]
        cluster: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drain an instance before stopping it: it hands its set's leadership to a
    /// ready replica and stops campaigning (refused when none is ready).
    Drain(DrainArgs),
    /// End a drain: the instance campaigns again (a restart ends it too).
    Undrain(DrainArgs),
}

#[derive(clap::Args)]
struct DrainArgs {
    /// etcd endpoint (repeat for several).
    #[arg(long, required = true)]
    etcd: Vec<String>,
    /// Cluster id.
    #[arg(long)]
    cluster: String,
    /// File holding the instances' admin token (`auth.admin_token_file`), if they have one.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The instance's id.
    instance: String,
}

/// `tailfold cluster drain` / `undrain`: POSTs `/api/v1/cluster/<action>` to the instance's HTTP API.
fn drain_command(runtime: &tokio::runtime::Runtime, args: DrainArgs, action: &str) -> ExitCode {
    let address = match runtime.block_on(tailfold::cluster::cli::admin_address(
        &args.etcd,
        &args.cluster,
        &args.instance,
    )) {
        Ok(address) => address,
        Err(error) => return fail(&error),
    };
    let token = match &args.admin_token_file {
        Some(file) => match std::fs::read_to_string(file) {
            Ok(token) => Some(token.trim().to_string()),
            Err(error) => return fail(&format!("--admin-token-file {}: {error}", file.display())),
        },
        None => None,
    };
    let client = match reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(client) => client,
        Err(error) => return fail(&format!("cannot build an HTTP client: {error}")),
    };
    let url = format!("http://{address}/api/v1/cluster/{action}");
    let mut request = client.post(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send() {
        Ok(response) => {
            let status = response.status();
            let body = response.text().unwrap_or_default();
            if status.is_success() {
                print!("{body}");
                ExitCode::SUCCESS
            } else {
                fail(&format!("{action} {}: {status}: {}", args.instance, body.trim_end()))
            }
        }
        Err(error) => fail(&format!("{action} {}: POST {url}: {error}", args.instance)),
    }
}

/// Where a placement change goes and how it is staged.
#[derive(clap::Args)]
struct ChangeTarget {
    /// etcd endpoint (repeat for several).
    #[arg(long, required = true)]
    etcd: Vec<String>,
    /// Cluster id.
    #[arg(long)]
    cluster: String,
    /// Least time from now to the cutover, in ms (then the next boundary of every policy in force).
    #[arg(long, default_value_t = tailfold::config::cluster_defaults::HANDOFF_MARGIN_MS)]
    margin_ms: u64,
    /// JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Stages a change and says what it came to.
fn change_command(
    runtime: &tokio::runtime::Runtime,
    target: ChangeTarget,
    request: Result<tailfold::cluster::change::Request, String>,
) -> ExitCode {
    let request = match request {
        Ok(request) => request,
        Err(error) => return fail(&error),
    };
    match runtime.block_on(tailfold::cluster::cli::change(
        &target.etcd,
        &target.cluster,
        &request,
        target.margin_ms,
    )) {
        Ok(staged) if target.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&staged).expect("a staged change serialises")
            );
            ExitCode::SUCCESS
        }
        Ok(staged) => {
            print!("{}", staged.report());
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

fn cluster_command(command: ClusterCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start a runtime: {error}")),
    };
    match command {
        ClusterCommand::Init {
            etcd,
            cluster,
            shards,
            replicas,
            instances,
        } => match runtime.block_on(tailfold::cluster::cli::init(
            &etcd, &cluster, shards, replicas, &instances,
        )) {
            Ok(placement) => {
                println!(
                    "created cluster {cluster}: {} shards in {} sets of {replicas}",
                    placement.shards,
                    placement.sets.len()
                );
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        },
        ClusterCommand::Add { target, instances } => {
            let specs = instances
                .iter()
                .map(|text| tailfold::cluster::cli::parse_instance(text))
                .collect::<Result<Vec<_>, _>>();
            change_command(&runtime, target, specs.map(tailfold::cluster::change::Request::Add))
        }
        ClusterCommand::Remove { target, instances } => change_command(
            &runtime,
            target,
            Ok(tailfold::cluster::change::Request::Remove(instances)),
        ),
        ClusterCommand::Replace { target, old, new } => {
            let request = tailfold::cluster::cli::parse_instance(&new)
                .map(|new| tailfold::cluster::change::Request::Replace { old, new });
            change_command(&runtime, target, request)
        }
        ClusterCommand::Status { etcd, cluster, json } => {
            match runtime.block_on(tailfold::cluster::cli::status(&etcd, &cluster)) {
                Ok(status) if json => {
                    println!("{}", serde_json::to_string_pretty(&status).expect("status serialises"));
                    ExitCode::SUCCESS
                }
                Ok(status) => {
                    print!("{}", status.table());
                    ExitCode::SUCCESS
                }
                Err(error) => fail(&error),
            }
        }
        ClusterCommand::Drain(args) => drain_command(&runtime, args, "drain"),
        ClusterCommand::Undrain(args) => drain_command(&runtime, args, "undrain"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Cluster { command } => cluster_command(command),
        Command::Health { target } => {
            let url = format!("{}/-/healthy", target.trim_end_matches('/'));
            let client = match reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
            {
                Ok(client) => client,
                Err(error) => return fail(&format!("http client: {error}")),
            };
            match client.get(&url).send() {
                Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
                Ok(response) => fail(&format!("GET {url}: {}", response.status())),
                Err(error) => fail(&format!("GET {url}: {error}")),
            }
        }
        Command::Top {
            target,
            tenant,
            metric,
            limit,
            interval,
            once,
            width,
        } => {
            let interval = match parse_duration_ms(&interval) {
                Ok(ms) => Duration::from_millis(ms.max(100)),
                Err(error) => return fail(&format!("--interval: {error}")),
            };
            let width = width
                .or_else(|| std::env::var("COLUMNS").ok().and_then(|columns| columns.parse().ok()))
                .unwrap_or(160);
            let query = tailfold::profile::ProfileQuery {
                tenant,
                metric,
                limit: Some(limit),
            };
            loop {
                let report = match tailfold::profile::top::fetch(&target, &query) {
                    Ok(report) => report,
                    Err(error) => return fail(&error),
                };
                let text = tailfold::profile::top::render(&report, width);
                let mut stdout = std::io::stdout().lock();
                if once {
                    let _ = stdout.write_all(text.as_bytes());
                    return ExitCode::SUCCESS;
                }
                // Clear the screen and home the cursor, then draw.
                let _ = write!(stdout, "\x1b[2J\x1b[H{text}");
                let _ = stdout.flush();
                drop(stdout);
                std::thread::sleep(interval);
            }
        }
        Command::Loadgen {
            target,
            series,
            rate,
            duration,
            batch,
            mix,
            concurrency,
            tenant,
            seed,
            protocol,
        } => {
            init_logs(false);
            let duration = match parse_duration_ms(&duration) {
                Ok(ms) => Duration::from_millis(ms),
                Err(error) => return fail(&format!("--duration: {error}")),
            };
            let mix = match parse_mix(&mix) {
                Some(mix) => mix,
                None => return fail(&format!("--mix {mix:?}: expected three whole weights like 8:1:1")),
            };
            let protocol = match protocol.as_str() {
                "grpc" => Protocol::Grpc,
                "remote-write" => Protocol::RemoteWrite,
                other => return fail(&format!("--protocol {other:?}: expected grpc or remote-write")),
            };
            let options = LoadgenOptions {
                target,
                series,
                rate,
                duration,
                batch,
                mix,
                concurrency,
                tenant,
                seed,
                progress: true,
                protocol,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => return fail(&format!("cannot start runtime: {error}")),
            };
            match runtime.block_on(loadgen::run(options)) {
                Ok(report) => {
                    println!(
                        "loadgen: sent={} accepted={} rejected={:?} failed={} requests={} in {:.1}s = {:.0} points/s",
                        report.sent,
                        report.accepted,
                        report.rejected,
                        report.failed,
                        report.requests,
                        report.elapsed.as_secs_f64(),
                        report.rate()
                    );
                    let [p50, p99, p999, max] = report.latency_us.map(|us| us as f64 / 1000.0);
                    println!("loadgen: write latency p50={p50:.2}ms p99={p99:.2}ms p999={p999:.2}ms max={max:.2}ms");
                    if let Some(error) = &report.first_error {
                        println!("loadgen: first failed request: {error}");
                    }
                    if report.accounted() {
                        println!("loadgen: accounted: every point sent was accepted or rejected with a reason");
                        ExitCode::SUCCESS
                    } else {
                        println!("loadgen: NOT accounted: sent != accepted + rejected + failed");
                        ExitCode::FAILURE
                    }
                }
                Err(error) => fail(&error.to_string()),
            }
        }
    }
}

fn parse_mix(text: &str) -> Option<(u32, u32, u32)> {
    let parts: Vec<u32> = text
        .split(':')
        .map(|part| part.trim().parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [d, c, g] if d + c + g > 0 => Some((d, c, g)),
        _ => None,
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("tailfold: {message}");
    ExitCode::FAILURE
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: in a file or a pipe they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

const PROCESS_KEYS: [&str; 17] = [
    "grpc",
    "http",
    "rules_file",
    "data_dir",
    "engine",
    "flush",
    "ingest",
    "store",
    "selections",
    "statsd",
    "otlp",
    "limits",
    "auth",
    "log",
    "wal",
    "profile",
    "reload",
];

fn is_process_config(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(serde_yaml::Value::Mapping(map)) => map
            .keys()
            .any(|key| key.as_str().is_some_and(|key| PROCESS_KEYS.contains(&key))),
        _ => false,
    }
}

fn check(path: &Path) -> ExitCode {
    let (rules_file, via, cluster) = if is_process_config(path) {
        match ServiceSettings::load(path) {
            Ok(settings) => (settings.rules_file.clone(), Some(settings.rules_file), settings.cluster),
            Err(error) => return fail(&error.to_string()),
        }
    } else {
        (path.to_path_buf(), None, None)
    };
    match RuleSet::load(&rules_file) {
        Ok(rules) => {
            let named = via
                .map(|file| format!("rules {}: ", file.display()))
                .unwrap_or_default();
            println!(
                "{}: ok ({named}{} rules, policies {})",
                path.display(),
                rules.rule_count(),
                policies_text(&rules)
            );
            match cluster {
                Some(cluster) => check_cluster_rules(&cluster, &rules_file),
                None => ExitCode::SUCCESS,
            }
        }
        Err(error) => fail(&error.to_string()),
    }
}

/// A cluster instance's config: compares its rules file with the cluster's
/// rules in etcd; non-zero exit when they differ or etcd cannot be read.
fn check_cluster_rules(cluster: &tailfold::config::ClusterSettings, rules_file: &Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start a runtime: {error}")),
    };
    match runtime.block_on(tailfold::cluster::cli::check_rules(
        &cluster.etcd_endpoints,
        &cluster.cluster,
        rules_file,
    )) {
        Ok(check) => {
            print!("{}", check.report);
            if check.matches {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => fail(&format!("cluster {}: {error}", cluster.cluster)),
    }
}

fn policies_text(rules: &RuleSet) -> String {
    rules
        .storage_policies()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn run(config: &Path) -> ExitCode {
    let settings = match ServiceSettings::load(config) {
        Ok(settings) => settings,
        Err(error) => return fail(&error.to_string()),
    };
    init_logs(settings.log_json);
    let rules = match RuleSet::load(&settings.rules_file) {
        Ok(rules) => rules,
        Err(error) => return fail(&error.to_string()),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start runtime: {error}")),
    };
    runtime.block_on(async move {
        let handle = match tailfold::server::start(settings, rules, Arc::new(SystemClock)).await {
            Ok(handle) => handle,
            Err(error) => return fail(&error.to_string()),
        };
        // Tests and scripts read this line to find the port when listening on port 0.
        println!("tailfold: listening on grpc {}", handle.grpc_addr());
        // Written after the grpc line, which scripts may read alone and then close
        // the pipe: a failed write here must not stop the service.
        let _ = writeln!(std::io::stdout(), "tailfold: listening on http {}", handle.http_addr());
        // Then the OTLP listeners that are on, in this order.
        if let Some(address) = handle.otlp_grpc_addr() {
            let _ = writeln!(std::io::stdout(), "tailfold: listening on otlp_grpc {address}");
        }
        if let Some(address) = handle.otlp_http_addr() {
            let _ = writeln!(std::io::stdout(), "tailfold: listening on otlp_http {address}");
        }
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = handle.left_cluster() => {
                tracing::info!("left the cluster (a placement change took this instance out): stopping");
            }
        }
        tracing::info!("shutting down: flushing (see the flush line for what stays in the write-ahead log)");
        match handle.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error.to_string()),
        }
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
