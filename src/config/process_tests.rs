//! Tests of the process config: defaults and errors that name the file and field.
use super::*;

#[test]
fn empty_config_gives_documented_defaults() {
    let settings = ServiceSettings::parse("", Path::new("config/tailfold.yaml")).unwrap();
    assert_eq!(settings.grpc_listen.to_string(), defaults::GRPC_LISTEN);
    assert_eq!(settings.http_listen.to_string(), defaults::HTTP_LISTEN);
    assert_eq!(settings.rules_file, Path::new("config/rules.yaml"));
    assert_eq!(settings.data_dir, Path::new("data"));
    assert_eq!(settings.ingest, IngestLimits::default());
    assert_eq!(settings.engine.histogram.scale, 6);
    assert_eq!(settings.engine.histogram.exemplar_scale_reduction, 0);
    assert_eq!(
        settings.engine.histogram.max_exemplars,
        defaults::HISTOGRAM_MAX_EXEMPLARS
    );
    assert!(settings.store_enabled && settings.selections_file);
    assert_eq!(settings.statsd, None);
    assert!(!settings.limits.any_limit(), "no tenant limit unless configured");
    assert_eq!(settings.limits.max_inflight_requests, defaults::MAX_INFLIGHT_REQUESTS);
    assert_eq!(settings.limits.idle_series_ms, defaults::IDLE_SERIES_MS);
}

#[test]
fn statsd_section_is_checked_and_off_without_listen() {
    let path = Path::new("conf/t.yaml");
    let on = ServiceSettings::parse(
        "statsd: {listen: \"127.0.0.1:8125\", tenant: team-a}\ningest: {max_label_value_bytes: 100}",
        path,
    )
    .unwrap()
    .statsd
    .expect("statsd on");
    assert_eq!(on.listen.to_string(), "127.0.0.1:8125");
    assert_eq!(on.tenant, "team-a");
    assert_eq!(on.max_packet_bytes, defaults::STATSD_MAX_PACKET_BYTES);
    assert_eq!(on.limits.max_label_value_bytes, 100);
    let off = ServiceSettings::parse("statsd: {tenant: team-a}", path).unwrap();
    assert_eq!(off.statsd, None);
}

#[test]
fn broken_configs_name_the_file_and_field() {
    let path = Path::new("conf/t.yaml");
    for (text, needle) in [
        (
            "grpc: {listen: nowhere}",
            "conf/t.yaml: field grpc.listen: \"nowhere\" is not a host:port",
        ),
        (
            "http: {listen: \"localhost\"}",
            "conf/t.yaml: field http.listen: \"localhost\" is not a host:port",
        ),
        (
            "engine: {lateness_ms: {10x: 5}}",
            "field engine.lateness_ms.10x: invalid duration \"10x\"",
        ),
        ("engine: {histogram: {scale: 12}}", "field engine.histogram:"),
        (
            "engine: {histogram: {exemplar_scale_reduction: 19}}",
            "field engine.histogram: exemplar_scale_reduction 19 is above the maximum of 18",
        ),
        (
            "engine: {histogram: {max_exemplars: 7}}",
            "field engine.histogram: max_exemplars 7 is below the minimum of 8 (0 turns the limit off)",
        ),
        (
            "engine: {histogram: {max_exemplars: -1}}",
            "conf/t.yaml: invalid yaml: engine.histogram.max_exemplars",
        ),
        (
            "engine: {histogram: {exemplar_scale_reduction: -1}}",
            "conf/t.yaml: invalid yaml: engine.histogram.exemplar_scale_reduction",
        ),
        ("engine: {shards: 0}", "field engine.shards: 0 is outside"),
        ("log: {format: xml}", "field log.format: \"xml\""),
        (
            "ingest: {max_labels_per_series: 0}",
            "field ingest.max_labels_per_series: must be greater",
        ),
        (
            "store: {segment_duration: soon}",
            "field store.segment_duration: invalid duration",
        ),
        (
            "grpc: {listen: 1, port: 2}",
            "conf/t.yaml: invalid yaml: grpc: unknown field `port`",
        ),
        ("flush: [1, 2]", "conf/t.yaml: invalid yaml"),
        ("remote_write: [{url: \"http://x\", storage_policies: [\"1m:1d\"]}]", "field remote_write[0].name: missing"),
        ("remote_write: [{name: p, url: \"x\", storage_policies: [\"1m:1d\"]}]", "field remote_write[0].url: \"x\" is not"),
        ("remote_write: [{name: p, url: \"http://x\"}]", "field remote_write[0].storage_policies: missing"),
        ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1q:1d\"]}]", "field remote_write[0].storage_policies[0]: invalid storage policy"),
        ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1m:1d\", \"1h:1y\"]}]", "field remote_write[0].policy_label: missing"),
        ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1m:1d\"], shards: 0}]", "field remote_write[0].shards: must be greater"),
        ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1m:1d\"]}, {name: p, url: \"http://y\", storage_policies: [\"1m:1d\"]}]", "field remote_write[1].name: \"p\" is used"),
        (
            "statsd: {listen: \"localhost\"}",
            "field statsd.listen: \"localhost\" is not a host:port",
        ),
        ("statsd: {tenant: \"\"}", "field statsd.tenant: \"\" is not 1 to 256"),
        (
            "statsd: {tenant: \"a b\", listen: \"127.0.0.1:8125\"}",
            "field statsd.tenant: \"a b\"",
        ),
        (
            "statsd: {max_packet_bytes: 0}",
            "field statsd.max_packet_bytes: 0 is outside 1..=65535",
        ),
        (
            "statsd: {max_packet_bytes: 70000}",
            "field statsd.max_packet_bytes: 70000 is outside",
        ),
        ("statsd: {max_gauges: 0}", "field statsd.max_gauges: 0 must be at least 1"),
        ("statsd: {readers: 0}", "field statsd.readers: 0 is outside 1..=64"),
        (
            "statsd: {batch_datagrams: 20000}",
            "field statsd.batch_datagrams: 20000 is outside 1..=16384",
        ),
        (
            "statsd: {batch_wait_ms: 5000}",
            "field statsd.batch_wait_ms: 5000 is outside 0..=1000",
        ),
        (
            "statsd: {receive_buffer_bytes: 100}",
            "field statsd.receive_buffer_bytes: 100 is outside 4096..=2147483647",
        ),
        (
            "statsd: {gauge_idle_ms: 10}",
            "field statsd.gauge_idle_ms: 10 must be at least 1000",
        ),
        ("statsd: {port: 8125}", "invalid yaml: statsd: unknown field `port`"),
        (
            "engine: {set_max_exact_values: 0}",
            "field engine.set_max_exact_values: 0 is outside 1..=1000000",
        ),
    ] {
        let error = ServiceSettings::parse(text, path).unwrap_err().to_string();
        assert!(error.contains(needle), "{text:?} gave {error:?}, wanted {needle:?}");
    }
}

#[test]
fn wal_is_off_by_default_and_checked_when_on() {
    let path = Path::new("conf/t.yaml");
    assert_eq!(ServiceSettings::parse("", path).unwrap().wal, None);
    let on = ServiceSettings::parse("data_dir: /var/tf\nwal: {enabled: true}", path)
        .unwrap()
        .wal
        .expect("wal on");
    assert_eq!(on.dir, Path::new("/var/tf/wal"));
    assert_eq!(on.segment_bytes, defaults::WAL_SEGMENT_BYTES);
    let error = ServiceSettings::parse("wal: {enabled: true, segment_bytes: 0}", path)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("conf/t.yaml") && error.contains("wal.segment_bytes"),
        "{error}"
    );
    let error = ServiceSettings::parse("wal: {enabled: true, fsync: always}", path)
        .unwrap_err()
        .to_string();
    assert!(error.contains("fsync"), "{error}");
}

#[test]
fn remote_write_spill_and_shutdown_drain_are_checked() {
    let path = Path::new("conf/t.yaml");
    let sink = "remote_write: [{name: p, url: \"http://p:9090/api/v1/write\", storage_policies: [\"1m:1d\"]";
    let settings = ServiceSettings::parse(
        &format!("flush: {{shutdown_grace_ms: 8000}}\n{sink}, spill_dir: /var/spill, max_spill_bytes: 4096}}]"),
        path,
    )
    .unwrap();
    let checked = &settings.remote_write[0];
    assert_eq!(checked.spill_dir.as_deref(), Some(Path::new("/var/spill")));
    assert_eq!(checked.max_spill_bytes, 4096);
    assert_eq!(checked.shutdown_drain_ms, 4000);
    let defaults_only = ServiceSettings::parse(&format!("{sink}}}]"), path).unwrap();
    assert_eq!(defaults_only.remote_write[0].spill_dir, None);
    assert_eq!(
        defaults_only.remote_write[0].max_spill_bytes,
        defaults::REMOTE_WRITE_MAX_SPILL_BYTES
    );
    let error = ServiceSettings::parse(&format!("{sink}, max_spill_bytes: 0}}]"), path)
        .unwrap_err()
        .to_string();
    assert!(error.contains("remote_write[0].max_spill_bytes"), "{error}");
}
