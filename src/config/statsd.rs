//! The `statsd` section: UDP listen address, tenant and packet size, checked
//! even while statsd is off so a typo never hides until it is turned on.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::process::{defaults, IngestLimits};

/// statsd / DogStatsD ingest over UDP.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdConfig {
    /// UDP listen address, `host:port`, e.g. `127.0.0.1:8125` (the statsd convention). Default: none, statsd is off.
    pub listen: Option<String>,
    /// Tenant every statsd sample belongs to. Default `default`.
    pub tenant: Option<String>,
    /// Largest datagram read whole (1..=65535); a longer one loses its tail, counted as one malformed line. Default 65535.
    pub max_packet_bytes: Option<usize>,
    /// Gauges whose last value is held, so that a relative change (`+3|g`) applies to it as in Etsy statsd (at least 1). Default 100000.
    pub max_gauges: Option<usize>,
    /// A held gauge value not updated for this long is forgotten; a later relative change starts from 0, as Etsy statsd's does for a gauge it does not have (at least 1000). Default 3600000 (1 h).
    pub gauge_idle_ms: Option<u64>,
    /// UDP sockets bound to the listen address with `SO_REUSEPORT`, one reader thread each; the kernel spreads senders over them by address, so one sender's datagrams stay in order on one reader (1..=64). Default: the CPU cores, at most 4.
    pub readers: Option<usize>,
    /// Datagrams a reader folds as one engine batch at most (1..=16384): it reads up to 64 per system call (`recvmmsg`) and keeps reading while whole calls come back, so a batch grows only while datagrams are queued. Each reader holds min(this, 64) buffers of `max_packet_bytes`. Default 1024.
    pub batch_datagrams: Option<usize>,
    /// Longest a reader keeps a batch open for more datagrams after its first, in ms (0..=1000): more lines per series per batch make the fold cheaper per line. Samples without a timestamp get the time of the fold, so this much later at most. 0 folds as soon as nothing is queued. Default 25 (a 25 ms delay against windows of seconds; it gave about 23 % more lines per CPU-second than 5 ms at 2 M lines/s, BENCHMARKS.md).
    pub batch_wait_ms: Option<u64>,
    /// Kernel receive buffer asked for each socket (`SO_RCVBUF`), which absorbs bursts while a reader folds; Linux caps it at `net.core.rmem_max` (the effective size is logged). At least 4096. Default 4194304 (4 MiB).
    pub receive_buffer_bytes: Option<usize>,
}

/// Checked statsd settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsdSettings {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Tenant of every sample.
    pub tenant: String,
    /// Largest datagram read whole.
    pub max_packet_bytes: usize,
    /// Gauges whose last value is held for relative changes.
    pub max_gauges: usize,
    /// Idle time after which a held gauge value is forgotten.
    pub gauge_idle_ms: u64,
    /// Sockets on the port, one reader thread each.
    pub readers: usize,
    /// Datagrams folded as one batch at most.
    pub batch_datagrams: usize,
    /// Longest a batch stays open for more datagrams.
    pub batch_wait_ms: u64,
    /// `SO_RCVBUF` asked for each socket.
    pub receive_buffer_bytes: usize,
    /// Label limits, shared with the other protocols (`ingest.*`).
    pub limits: IngestLimits,
}

/// Checks the `statsd` section even when it is off, so a typo never hides until it is turned on.
pub(super) fn check_statsd(
    config: &StatsdConfig,
    limits: &IngestLimits,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<StatsdSettings>, ConfigError> {
    let tenant = config
        .tenant
        .clone()
        .unwrap_or_else(|| defaults::STATSD_TENANT.to_string());
    if tenant.is_empty() || tenant.len() > 256 || !tenant.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "statsd.tenant",
            format!("{tenant:?} is not 1 to 256 printable characters without spaces"),
        ));
    }
    let max_packet_bytes = config.max_packet_bytes.unwrap_or(defaults::STATSD_MAX_PACKET_BYTES);
    if !(1..=defaults::STATSD_MAX_PACKET_BYTES).contains(&max_packet_bytes) {
        return Err(invalid(
            "statsd.max_packet_bytes",
            format!("{max_packet_bytes} is outside 1..=65535"),
        ));
    }
    let max_gauges = config.max_gauges.unwrap_or(defaults::STATSD_MAX_GAUGES);
    if max_gauges == 0 {
        return Err(invalid("statsd.max_gauges", "0 must be at least 1".to_string()));
    }
    let gauge_idle_ms = config.gauge_idle_ms.unwrap_or(defaults::STATSD_GAUGE_IDLE_MS);
    if gauge_idle_ms < 1_000 {
        return Err(invalid(
            "statsd.gauge_idle_ms",
            format!("{gauge_idle_ms} must be at least 1000"),
        ));
    }
    let readers = config.readers.unwrap_or_else(defaults::statsd_readers);
    if !(1..=64).contains(&readers) {
        return Err(invalid("statsd.readers", format!("{readers} is outside 1..=64")));
    }
    let batch_datagrams = config.batch_datagrams.unwrap_or(defaults::STATSD_BATCH_DATAGRAMS);
    if !(1..=16_384).contains(&batch_datagrams) {
        return Err(invalid(
            "statsd.batch_datagrams",
            format!("{batch_datagrams} is outside 1..=16384"),
        ));
    }
    let batch_wait_ms = config.batch_wait_ms.unwrap_or(defaults::STATSD_BATCH_WAIT_MS);
    if batch_wait_ms > 1_000 {
        return Err(invalid(
            "statsd.batch_wait_ms",
            format!("{batch_wait_ms} is outside 0..=1000"),
        ));
    }
    let receive_buffer_bytes = config
        .receive_buffer_bytes
        .unwrap_or(defaults::STATSD_RECEIVE_BUFFER_BYTES);
    if !(4096..=i32::MAX as usize).contains(&receive_buffer_bytes) {
        return Err(invalid(
            "statsd.receive_buffer_bytes",
            format!("{receive_buffer_bytes} is outside 4096..=2147483647"),
        ));
    }
    let Some(listen) = config.listen.as_deref() else {
        return Ok(None);
    };
    let listen: SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "statsd.listen",
            format!("{listen:?} is not a host:port address such as 127.0.0.1:8125"),
        )
    })?;
    Ok(Some(StatsdSettings {
        listen,
        tenant,
        max_packet_bytes,
        max_gauges,
        gauge_idle_ms,
        readers,
        batch_datagrams,
        batch_wait_ms,
        receive_buffer_bytes,
        limits: limits.clone(),
    }))
}
