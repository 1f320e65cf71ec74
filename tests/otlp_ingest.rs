//! OTLP end to end with the real OpenTelemetry Python SDK (tests/otlp/export.py):
//! spans over OTLP/gRPC and OTLP/HTTP become per-window quantiles within the
//! stated error whose selected traces sit in the quantile's bucket; above()
//! names the slowest traces; the HTTP selection query and the gRPC stream
//! agree; a histogram with exemplars comes out as quantiles with those
//! exemplars; malformed payloads get OTLP's error answers and the service
//! keeps serving.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use prost::Message;
use tailfold::aggregate::histogram::{bucket_index, relative_error};
use tailfold::api::otlp::collector::trace::v1::{
    trace_service_client::TraceServiceClient, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tailfold::api::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tailfold::api::otlp::resource::v1::Resource;
use tailfold::api::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tailfold::api::v1;
use tailfold::model::DropReason;
use tailfold::sink::selections::SelectionRecord;

const T0: i64 = 1_800_000_000_000; // a 1m window boundary
const SCALE: i8 = 6;
const RULES: &str = r#"
defaults:
  storage_policies: ["1m:1d"]
mapping_rules:
  - name: spans
    filter: '__name__:span_duration_seconds'
    aggregations: [count, p50, p99, p999, above(0.2)]
  - name: latency
    filter: '__name__:request_latency*'
    aggregations: [count, p50, p99]
    storage_policies: ["1h:1d"]
"#;
const OTLP_CONFIG: &str = r#"
otlp: {grpc_listen: "127.0.0.1:0", http_listen: "127.0.0.1:0"}
selections: {above_max_traces: 5}
"#;

/// One span the SDK sent, as the script reports it.
#[derive(Debug, serde::Deserialize)]
struct SentSpan {
    trace_id: String,
    span_id: String,
    duration_ns: u64,
    end_ms: i64,
    service: String,
    sampled: bool,
}

async fn send_spans(protocol: &str, endpoint: String, seed: u64) -> Vec<SentSpan> {
    let args = [
        "spans",
        "--protocol",
        protocol,
        "--endpoint",
        &endpoint,
        "--seed",
        &seed.to_string(),
        "--base-ms",
        &T0.to_string(),
        "--count",
        "1500",
    ];
    let lines = otlp_export(args.iter().map(|s| s.to_string()).collect()).await;
    lines
        .into_iter()
        .map(|line| serde_json::from_value(line).unwrap())
        .collect()
}

/// Checks quantiles, counts and selections of every service and window against what was sent.
fn check_spans(service: &TestService, sent: &[SentSpan]) {
    let records = service.records();
    let selections = service.selections();
    let mut by_window: BTreeMap<(&str, i64), Vec<&SentSpan>> = BTreeMap::new();
    for span in sent {
        assert!(span.sampled, "the SDK only exports sampled spans");
        by_window
            .entry((span.service.as_str(), span.end_ms.div_euclid(60_000) * 60_000))
            .or_default()
            .push(span);
    }
    assert_eq!(by_window.len(), 8, "4 services x 2 windows");
    let seconds = |span: &SentSpan| span.duration_ns as f64 / 1e9;
    for ((name, window), spans) in &by_window {
        let base = [("__name__", "span_duration_seconds"), ("service_name", *name)];
        let count = value(one(
            &records,
            &[("__name__", "span_duration_seconds:count"), base[1]],
            *window,
        ));
        assert_eq!(
            count,
            spans.len() as f64,
            "{name} {window}: every span, late and out of order, counted"
        );
        let mut durations: Vec<f64> = spans.iter().map(|s| seconds(s)).collect();
        durations.sort_by(f64::total_cmp);
        let by_trace: HashMap<&str, &SentSpan> = spans.iter().map(|s| (s.trace_id.as_str(), *s)).collect();
        for (q, label) in [(0.5, "0.5"), (0.99, "0.99"), (0.999, "0.999")] {
            let reported = value(one(
                &records,
                &[
                    ("__name__", "span_duration_seconds:quantile"),
                    base[1],
                    ("quantile", label),
                ],
                *window,
            ));
            let exact = exact_quantile(&durations, q);
            assert!(
                (reported - exact).abs() / exact <= relative_error(SCALE) + 1e-12,
                "{name} {window} p{label}: {reported} vs exact {exact}"
            );
            let picked: Vec<&SelectionRecord> = selections
                .iter()
                .filter(|s| s.window_start_ms == *window && s.quantile == Some(q))
                .filter(|s| s.series.get("service_name").map(String::as_str) == Some(*name))
                .collect();
            assert_eq!(picked.len(), 1, "{name} {window} p{label}: one selection");
            let span = by_trace
                .get(picked[0].exemplar.trace_id.as_str())
                .unwrap_or_else(|| panic!("{name} {window} p{label}: selected trace not sent in this window"));
            assert_eq!(picked[0].exemplar.span_id.as_deref(), Some(span.span_id.as_str()));
            assert_eq!(
                bucket_index(SCALE, seconds(span)),
                bucket_index(SCALE, reported),
                "{name} {window} p{label}: selected span {} s is not in the quantile's bucket ({reported})",
                seconds(span)
            );
            let link = picked[0].link.as_ref().expect("a selection states its tightness");
            assert_eq!(link.tightness, "own_bucket", "{name} {window} p{label}");
            assert_eq!(link.scale, Some(SCALE));
            let (lower, upper) = (link.bucket_lower.unwrap(), link.bucket_upper.unwrap());
            assert!(lower < seconds(span) && seconds(span) <= upper);
        }
        // above(0.2): exactly the 5 slowest spans beyond the threshold, slowest first.
        let above: Vec<&SelectionRecord> = selections
            .iter()
            .filter(|s| s.window_start_ms == *window && s.aggregation == "above(0.2)")
            .filter(|s| s.series.get("service_name").map(String::as_str) == Some(*name))
            .collect();
        let slow = durations.iter().filter(|d| **d > 0.2).count();
        let slowest: Vec<f64> = durations.iter().rev().copied().filter(|d| *d > 0.2).take(5).collect();
        assert_eq!(above.len(), slowest.len(), "{name} {window}: {slow} slow spans");
        for (rank, selection) in above.iter().enumerate() {
            assert_eq!(selection.rank, Some(rank as u32));
            let span = by_trace[selection.exemplar.trace_id.as_str()];
            assert_eq!(seconds(span), slowest[rank], "{name} {window}: rank {rank}");
            assert_eq!(selection.link.as_ref().map(|l| l.tightness.as_str()), Some("ranked"));
        }
        let above_count = value(one(
            &records,
            &[
                ("__name__", "span_duration_seconds:above"),
                base[1],
                ("threshold", "0.2"),
            ],
            *window,
        ));
        assert_eq!(above_count, slow as f64, "{name} {window}: above(0.2) counts exactly");
    }
}

async fn otlp_service() -> TestService {
    // Spans of the first window arrive 25 s after it ended (lateness of 1m is 30 s).
    start_service_with(RULES, T0 + 85_000, OTLP_CONFIG).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_over_grpc_give_quantiles_whose_traces_sit_in_their_bucket() {
    let mut service = otlp_service().await;
    let endpoint = format!("http://{}", service.handle().otlp_grpc_addr().unwrap());
    let sent = send_spans("grpc", endpoint, 7).await;
    service.flush_at(T0 + 600_000).await;
    check_spans(&service, &sent);
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!(snapshot.ingest.rejected, [0; DropReason::ALL.len()], "{snapshot:?}");
    service.shutdown().await;
}

/// A selection as both transports carry it.
fn key_of_wire(s: &v1::TraceSelection) -> String {
    let series: BTreeMap<&str, &str> = s.series.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
    format!(
        "{} {series:?} {} {} {} {} {} {}",
        s.tenant,
        s.window_start_ms,
        s.aggregation,
        s.reported_value,
        hex::encode(&s.trace_id),
        hex::encode(&s.span_id),
        s.rank
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_over_http_and_the_selection_query_matches_the_stream() {
    let mut service = otlp_service().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.handle().grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stream = v1::selections_client::SelectionsClient::new(channel)
        .subscribe(v1::SubscribeRequest {
            tenant: String::new(),
            metric: "span_*".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let endpoint = format!("http://{}", service.handle().otlp_http_addr().unwrap());
    let sent = send_spans("http", endpoint, 11).await;
    service.flush_at(T0 + 600_000).await;
    check_spans(&service, &sent);

    let mut streamed = BTreeSet::new();
    while let Ok(Ok(Some(selection))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        streamed.insert(key_of_wire(&selection));
    }
    assert!(
        streamed.len() >= 8 * 4,
        "quantile and above selections streamed: {}",
        streamed.len()
    );
    let url = format!(
        "http://{}/api/v1/selections?start_ms={T0}&end_ms={}&metric=span_*",
        service.handle().http_addr(),
        T0 + 120_000
    );
    let body = tokio::task::spawn_blocking(move || {
        let response = reqwest::blocking::get(url).unwrap();
        assert_eq!(response.status(), 200);
        response.text().unwrap()
    })
    .await
    .unwrap();
    let queried: BTreeSet<String> = body
        .lines()
        .map(|line| key_of_wire(&serde_json::from_str::<SelectionRecord>(line).unwrap().to_wire()))
        .collect();
    assert_eq!(
        queried, streamed,
        "the HTTP query and the gRPC stream return the same selections"
    );

    // One service, one window, one aggregation: "the p99 of checkout in the first minute".
    let url = format!(
        "http://{}/api/v1/selections?start_ms={T0}&end_ms={}&label=service_name=checkout&aggregation=p99",
        service.handle().http_addr(),
        T0 + 60_000
    );
    let body = tokio::task::spawn_blocking(move || reqwest::blocking::get(url).unwrap().text().unwrap())
        .await
        .unwrap();
    let p99: Vec<SelectionRecord> = body.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(p99.len(), 1, "{body}");
    assert_eq!(p99[0].window_start_ms, T0);
    assert!(sent
        .iter()
        .any(|s| s.trace_id == p99[0].exemplar.trace_id && s.service == "checkout"));
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_histogram_exemplars_over_http_come_out_on_the_quantiles() {
    histogram_exemplars_come_out_on_the_quantiles("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_histogram_exemplars_over_grpc_come_out_on_the_quantiles() {
    histogram_exemplars_come_out_on_the_quantiles("grpc").await;
}

/// A histogram recorded inside sampled spans, exported by the SDK's metric
/// exporter with delta temporality: quantiles within the error, each carrying
/// the exemplar (trace and measurement) the SDK sent for that bucket.
async fn histogram_exemplars_come_out_on_the_quantiles(protocol: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut service = start_service_with(RULES, now, OTLP_CONFIG).await;
    let addr = match protocol {
        "grpc" => service.handle().otlp_grpc_addr(),
        _ => service.handle().otlp_http_addr(),
    };
    let endpoint = format!("http://{}", addr.unwrap());
    let args = [
        "metrics",
        "--protocol",
        protocol,
        "--endpoint",
        &endpoint,
        "--seed",
        "3",
        "--count",
        "800",
    ];
    let lines = otlp_export(args.iter().map(|s| s.to_string()).collect()).await;
    let mut values: Vec<f64> = lines.iter().map(|l| l["value"].as_f64().unwrap()).collect();
    let traces: HashMap<String, f64> = lines
        .iter()
        .map(|l| {
            (
                l["trace_id"].as_str().unwrap().to_string(),
                l["value"].as_f64().unwrap(),
            )
        })
        .collect();
    values.sort_by(f64::total_cmp);
    service.flush_at(now + 3 * 3_600_000).await;
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!(snapshot.ingest.rejected, [0; DropReason::ALL.len()], "{snapshot:?}");
    let records = service.records();
    let selections = service.selections();

    // Exponential histogram: merged exactly (downscaled to scale <= 8), so quantiles keep the error bound.
    let quantile_name = ("__name__", "request_latency:quantile");
    let route = ("route", "/checkout");
    let count = find(&records, &[("__name__", "request_latency:count"), route]);
    assert_eq!(count.len(), 1, "one window: {count:?}");
    assert_eq!(value(count[0]), values.len() as f64);
    let window = count[0].window_start_ms;
    for (q, label) in [(0.5, "0.5"), (0.99, "0.99")] {
        let reported = value(one(&records, &[quantile_name, route, ("quantile", label)], window));
        let exact = exact_quantile(&values, q);
        // The SDK's histogram (max 160 buckets) may sit at a coarser scale than ours.
        let scale = SCALE.min(4);
        assert!(
            (reported - exact).abs() / exact <= relative_error(scale) + 1e-12,
            "p{label}: {reported} vs exact {exact}"
        );
        let picked: Vec<&SelectionRecord> = selections
            .iter()
            .filter(|s| s.series.get("__name__").map(String::as_str) == Some("request_latency"))
            .filter(|s| s.quantile == Some(q))
            .collect();
        assert_eq!(
            picked.len(),
            1,
            "p{label}: the exemplar of the quantile's bucket: {picked:?}"
        );
        let sent_value = traces
            .get(&picked[0].exemplar.trace_id)
            .unwrap_or_else(|| panic!("p{label}: exemplar trace was never sent"));
        assert_eq!(
            *sent_value, picked[0].exemplar.value,
            "the exemplar keeps its measurement"
        );
        let bucket = |v: f64| bucket_index(4, v);
        assert!(
            (bucket(*sent_value) - bucket(reported)).abs() <= 1,
            "p{label}: exemplar {sent_value} far from the quantile {reported}"
        );
    }

    // Explicit buckets: an approximation, exact to the explicit bucket; exemplars still link to sent traces.
    let bounds = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, f64::INFINITY];
    let explicit_bucket = |v: f64| bounds.iter().position(|b| v <= *b).unwrap();
    for (q, label) in [(0.5, "0.5"), (0.99, "0.99")] {
        let reported = value(one(
            &records,
            &[
                ("__name__", "request_latency_explicit:quantile"),
                route,
                ("quantile", label),
            ],
            window,
        ));
        assert_eq!(
            explicit_bucket(reported),
            explicit_bucket(exact_quantile(&values, q)),
            "explicit p{label} {reported} is in the exact quantile's explicit bucket"
        );
        let picked: Vec<&SelectionRecord> = selections
            .iter()
            .filter(|s| s.series.get("__name__").map(String::as_str) == Some("request_latency_explicit"))
            .filter(|s| s.quantile == Some(q))
            .collect();
        assert_eq!(
            picked.len(),
            1,
            "explicit p{label}: the SDK keeps one exemplar per bucket"
        );
        let sent_value = traces[&picked[0].exemplar.trace_id];
        assert_eq!(
            explicit_bucket(sent_value),
            explicit_bucket(reported),
            "explicit p{label}: exemplar {sent_value} in the quantile's explicit bucket"
        );
    }
    service.shutdown().await;
}

/// Sends bytes as they are: for payloads no OTLP client would build.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::copy_to_bytes(buf, bytes::Buf::remaining(buf));
        Ok(Some(bytes.to_vec()))
    }
}

fn span(trace: u8, span: u8, start_ms: i64, millis: i64, flags: u32) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        name: "op".into(),
        flags,
        start_time_unix_nano: (start_ms * 1_000_000) as u64,
        end_time_unix_nano: ((start_ms + millis) * 1_000_000) as u64,
        ..Span::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("svc".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_otlp_gets_the_protocol_error_answer_and_serving_goes_on() {
    let mut service = otlp_service().await;
    let grpc = format!("http://{}", service.handle().otlp_grpc_addr().unwrap());
    let mut client = TraceServiceClient::connect(grpc).await.unwrap();
    // Sampled (flags 0x1) and unsampled (0) spans count alike; broken ones are refused alone.
    let mut bad_trace = span(1, 1, T0, 10, 1);
    bad_trace.trace_id = vec![1; 5];
    let backwards = span(2, 2, T0 + 100, -50, 1);
    let zero_span = span(3, 0, T0, 10, 1);
    let good = vec![
        span(4, 4, T0, 10, 1),
        span(5, 5, T0 + 1, 20, 0),
        span(6, 6, T0 + 2, 30, 0x100),
    ];
    let mut spans = good.clone();
    spans.extend([bad_trace, backwards, zero_span]);
    let answer = client.export(request(spans)).await.unwrap().into_inner();
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 3, "{partial:?}");
    assert!(
        partial.error_message.contains("trace_id has 5 bytes"),
        "{}",
        partial.error_message
    );
    assert!(
        partial.error_message.contains("before start time"),
        "{}",
        partial.error_message
    );

    // Bytes that are no protobuf: INVALID_ARGUMENT (not retried), and the server goes on.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", service.handle().otlp_grpc_addr().unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let status = raw
        .unary(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0x0a, 0x99]),
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                .parse()
                .unwrap(),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("invalid protobuf"), "{status:?}");

    // OTLP/HTTP: garbage, JSON, broken gzip, a gzip bomb and brotli get 4xx with a
    // google.rpc.Status body; good gzip is taken as the Collector sends it.
    let http = format!("http://{}", service.handle().otlp_http_addr().unwrap());
    let gzip = |bytes: &[u8]| {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    // 17 MiB of zeros inflate past the 16 MiB default of ingest.max_decompressed_bytes.
    let bomb = gzip(&vec![0u8; 17 << 20]);
    let gzipped_span = gzip(&request(vec![span(8, 8, T0 + 4, 50, 1)]).encode_to_vec());
    let (garbage, json, broken_gzip, bomb, brotli, gzipped, ok) = tokio::task::spawn_blocking(move || {
        let client = reqwest::blocking::Client::new();
        let post = |path: &str, content_type: &str, encoding: Option<&str>, body: Vec<u8>| {
            let mut request = client
                .post(format!("{http}{path}"))
                .header("content-type", content_type)
                .body(body);
            if let Some(encoding) = encoding {
                request = request.header("content-encoding", encoding);
            }
            let response = request.send().unwrap();
            (response.status().as_u16(), response.bytes().unwrap().to_vec())
        };
        let garbage = post(
            "/v1/traces",
            "application/x-protobuf",
            None,
            vec![0xff, 0xff, 0xff, 0x0a, 0x99],
        );
        let json = post("/v1/metrics", "application/json", None, b"{}".to_vec());
        let broken_gzip = post("/v1/traces", "application/x-protobuf", Some("gzip"), vec![1, 2, 3]);
        let bomb = post("/v1/traces", "application/x-protobuf", Some("gzip"), bomb);
        let brotli = post("/v1/traces", "application/x-protobuf", Some("br"), vec![1, 2, 3]);
        let gzipped = post("/v1/traces", "application/x-protobuf", Some("gzip"), gzipped_span);
        let ok = post(
            "/v1/traces",
            "application/x-protobuf",
            None,
            request(vec![span(7, 7, T0 + 3, 40, 1)]).encode_to_vec(),
        );
        (garbage, json, broken_gzip, bomb, brotli, gzipped, ok)
    })
    .await
    .unwrap();
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    assert_eq!(garbage.0, 400);
    let status = RpcStatus::decode(garbage.1.as_slice()).unwrap();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(status.message.contains("invalid protobuf"), "{}", status.message);
    assert_eq!(json.0, 415);
    assert!(RpcStatus::decode(json.1.as_slice())
        .unwrap()
        .message
        .contains("application/json"));
    assert_eq!(broken_gzip.0, 400);
    assert!(RpcStatus::decode(broken_gzip.1.as_slice())
        .unwrap()
        .message
        .contains("invalid gzip"));
    assert_eq!(bomb.0, 400);
    assert!(RpcStatus::decode(bomb.1.as_slice())
        .unwrap()
        .message
        .contains("max_decompressed_bytes"));
    assert_eq!(brotli.0, 415);
    assert_eq!(gzipped.0, 200, "gzip taken");
    assert_eq!(ok.0, 200, "still serving");
    let answer = ExportTraceServiceResponse::decode(ok.1.as_slice()).unwrap();
    assert_eq!(answer.partial_success, None, "nothing refused");

    // OTLP/gRPC with gzip, as the Collector's exporter sends by default.
    let mut compressed = TraceServiceClient::connect(format!("http://{}", service.handle().otlp_grpc_addr().unwrap()))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let answer = compressed
        .export(request(vec![span(9, 9, T0 + 5, 60, 1)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.partial_success, None, "gzip over gRPC taken");

    service.flush_at(T0 + 600_000).await;
    let records = service.records();
    let count = value(one(
        &records,
        &[("__name__", "span_duration_seconds:count"), ("service_name", "svc")],
        T0,
    ));
    assert_eq!(
        count, 6.0,
        "three good gRPC spans, sampled or not, the plain and the gzip HTTP ones, the gzip gRPC one"
    );
    service.shutdown().await;
}
