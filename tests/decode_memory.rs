//! The memory bound of decoding, against the real binary: each hostile body
//! shape (8 MiB decompressed, one request) goes to a fresh `tailfold`
//! process, and the growth of its peak resident set (`VmHWM` in
//! /proc/PID/status, from the resident set once it is listening) stays
//! within the documented bound: 4x the decompressed size plus 1 MiB
//! (`ingest::budget`), plus a fixed allowance for what a fresh process's
//! first request costs whatever its body (threads, buffers, allocator arenas).
//! The count limits are raised out of the way, so the budget is what bounds.

use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::process::{Child, ChildStdout, Command, Stdio};

use bytes::{BufMut, Bytes};
use tailfold::api::otlp::collector::metrics::v1::ExportMetricsServiceResponse;
use tailfold::api::otlp::collector::trace::v1::ExportTraceServiceResponse;
use tailfold::api::v1;
use tailfold::ingest::otlp::RpcStatus;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

const BINARY: &str = env!("CARGO_BIN_EXE_tailfold");
/// Decompressed size of every body.
const SIZE: usize = 8 << 20;
/// The documented bound per request (README "Running it safely").
const BOUND: u64 = 4 * SIZE as u64 + (1 << 20);
/// OTLP's (prost builds its tree whole; see `ingest::otlp::bounds`).
const OTLP_BOUND: u64 = 6 * SIZE as u64 + (1 << 20);
/// What a fresh process's first request costs whatever its body: runtime
/// threads started on demand, hyper and h2 buffers, allocator arenas.
const FIRST_REQUEST: u64 = 12 << 20;
const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Count limits out of the way: the memory budget alone must hold.
const LIMITS: &str = "ingest: {max_series_per_request: 100000000, max_points_per_request: 100000000, \
                      max_request_bytes: 67108864, max_decompressed_bytes: 67108864}";

struct Service {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    grpc: String,
    http: String,
    otlp_grpc: String,
    otlp_http: String,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(limits: &str) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {}\n\
         flush: {{progress_interval_ms: 0}}\nselections: {{file: false}}\n{limits}\n\
         otlp: {{grpc_listen: \"127.0.0.1:0\", http_listen: \"127.0.0.1:0\"}}\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("rules.yaml"), "").unwrap();
    std::fs::write(dir.path().join("tailfold.yaml"), config).unwrap();
    let mut child = Command::new(BINARY)
        .args(["run", "-c"])
        .arg(dir.path().join("tailfold.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tailfold");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut address = |prefix: &str| {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?}"))
            .to_string()
    };
    let grpc = address("tailfold: listening on grpc ");
    let http = address("tailfold: listening on http ");
    let otlp_grpc = address("tailfold: listening on otlp_grpc ");
    let otlp_http = address("tailfold: listening on otlp_http ");
    Service {
        child,
        _stdout: stdout,
        grpc,
        http,
        otlp_grpc,
        otlp_http,
        _dir: dir,
    }
}

/// A `/proc/PID/status` field in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Field `field` (length-delimited) holding `payload`.
fn message(buf: &mut Vec<u8>, field: u32, payload: &[u8]) {
    varint(buf, u64::from(field) << 3 | 2);
    varint(buf, payload.len() as u64);
    buf.extend_from_slice(payload);
}

/// `entry` repeated until the body is `SIZE` bytes, after `head`.
fn fill(head: &[u8], entry: &[u8]) -> Vec<u8> {
    let mut body = head.to_vec();
    while body.len() + entry.len() <= SIZE {
        body.extend_from_slice(entry);
    }
    body
}

/// One series (field 1) made of `head` then `entry` repeated, `SIZE` bytes in all.
fn one_big_series(head: &[u8], entry: &[u8]) -> Vec<u8> {
    // The series' tag and its 4-byte length take 5 bytes.
    let mut inner = head.to_vec();
    while inner.len() + entry.len() + 5 <= SIZE {
        inner.extend_from_slice(entry);
    }
    let mut body = Vec::with_capacity(SIZE);
    message(&mut body, 1, &inner);
    body
}

fn label(name: &str, value: &str) -> Vec<u8> {
    let mut label = Vec::new();
    message(&mut label, 1, name.as_bytes());
    message(&mut label, 2, value.as_bytes());
    label
}

/// How a body is sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    RemoteWrite,
    Grpc,
    OtlpHttpMetrics,
    OtlpGrpcMetrics,
    OtlpGrpcTraces,
}

/// `entry` repeated to fill what `wrap` leaves of `SIZE` bytes, wrapped:
/// `wrap` nests the list in its messages (each adding a tag and a 4-byte length at most).
fn nested(head: &[u8], entry: &[u8], levels: usize, wrap: impl Fn(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut inner = head.to_vec();
    while inner.len() + entry.len() + 6 * levels <= SIZE {
        inner.extend_from_slice(entry);
    }
    wrap(inner)
}

fn wrapped(field: u32, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len() + 6);
    message(&mut out, field, inner);
    out
}

/// The bodies, named, with the protocol they go over.
fn bodies() -> Vec<(&'static str, Protocol, Vec<u8>)> {
    let empty_entry = [0x0a, 0x00];
    let name = {
        let mut head = Vec::new();
        message(&mut head, 1, &label("__name__", "m"));
        head
    };
    // A refused ordinary series: labels without a metric name, one sample with a timestamp.
    let ordinary = {
        let mut series = Vec::new();
        message(&mut series, 1, &label("instance", "host-000123.example.com:9100"));
        message(&mut series, 1, &label("job", "node"));
        let mut sample = vec![0x09];
        sample.extend_from_slice(&1.5f64.to_le_bytes());
        sample.push(0x10);
        varint(&mut sample, 1_800_000_000_000);
        message(&mut series, 2, &sample);
        let mut entry = Vec::new();
        message(&mut entry, 1, &series);
        entry
    };
    // gRPC: a gauge series named m with millions of empty points (field 3).
    let grpc_head = {
        let mut head = name.clone();
        head.extend_from_slice(&[0x10, 0x02]);
        head
    };
    // OTLP metrics: resource (field 1) > scope (2) > metric (2) > gauge (5) > data point (1).
    let in_metric = |points: Vec<u8>| {
        let mut metric = Vec::new();
        message(&mut metric, 1, b"m");
        message(&mut metric, 5, &points);
        wrapped(1, &wrapped(2, &wrapped(2, &metric)))
    };
    // A data point with empty attributes (field 7).
    let attributes = nested(&[], &[0x3a, 0x00], 6, |attributes| in_metric(wrapped(1, &attributes)));
    let empty_points = nested(&[], &[0x0a, 0x00], 5, in_metric);
    // OTLP traces: resource (1) > scope spans (2) > spans (2), empty.
    let empty_spans = nested(&[], &[0x12, 0x00], 2, |spans| wrapped(1, &wrapped(2, &spans)));
    use Protocol::*;
    vec![
        ("remote write, empty TimeSeries", RemoteWrite, fill(&[], &empty_entry)),
        (
            "remote write, one series of empty labels",
            RemoteWrite,
            one_big_series(&[], &empty_entry),
        ),
        (
            "remote write, ordinary series, all refused",
            RemoteWrite,
            fill(&[], &ordinary),
        ),
        (
            "remote write, one series of empty samples",
            RemoteWrite,
            one_big_series(&name, &[0x12, 0x00]),
        ),
        ("gRPC Write, empty Series", Grpc, fill(&[], &empty_entry)),
        (
            "gRPC Write, one series of empty labels",
            Grpc,
            one_big_series(&[0x10, 0x02], &empty_entry),
        ),
        (
            "gRPC Write, one series of empty points",
            Grpc,
            one_big_series(&grpc_head, &[0x1a, 0x00]),
        ),
        (
            "OTLP/HTTP metrics, empty ResourceMetrics",
            OtlpHttpMetrics,
            fill(&[], &empty_entry),
        ),
        (
            "OTLP/HTTP metrics, one point of empty attributes",
            OtlpHttpMetrics,
            attributes.clone(),
        ),
        (
            "OTLP/gRPC metrics, empty ResourceMetrics",
            OtlpGrpcMetrics,
            fill(&[], &empty_entry),
        ),
        (
            "OTLP/gRPC metrics, one point of empty attributes",
            OtlpGrpcMetrics,
            attributes,
        ),
        ("OTLP/gRPC metrics, empty data points", OtlpGrpcMetrics, empty_points),
        ("OTLP/gRPC traces, empty spans", OtlpGrpcTraces, empty_spans),
    ]
}

/// Sends raw protobuf bytes as a request message; decodes the response as `R`.
struct RawCodec<R>(PhantomData<R>);

struct RawEncoder;
struct ResponseDecoder<R>(PhantomData<R>);

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl<R: prost::Message + Default> Decoder for ResponseDecoder<R> {
    type Item = R;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(buf).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder<R>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder<R> {
        ResponseDecoder(PhantomData)
    }
}

/// Sends `body` as the request of gRPC method `path`.
async fn grpc_call<R: prost::Message + Default + Send + 'static>(
    address: &str,
    path: &'static str,
    body: Bytes,
) -> Result<R, Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    client.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    client
        .unary(tonic::Request::new(body), path, RawCodec(PhantomData))
        .await
        .map(tonic::Response::into_inner)
}

async fn grpc_write(address: &str, body: Bytes) -> Result<v1::WriteResponse, Status> {
    grpc_call(address, "/tailfold.v1.Ingest/Write", body).await
}

async fn otlp_http(address: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/metrics"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("post");
    (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
}

async fn remote_write(address: &str, body: &[u8]) -> (u16, String) {
    let compressed = snap::raw::Encoder::new().compress_vec(body).unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{address}/api/v1/write"))
        .header("content-encoding", "snappy")
        .body(compressed)
        .send()
        .await
        .expect("post");
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_shape_stays_within_the_bound_in_a_fresh_process() {
    let mut report = Vec::new();
    for (shape, protocol, body) in bodies() {
        assert!(
            body.len() > SIZE - 64 && body.len() <= SIZE,
            "{shape}: {} bytes",
            body.len()
        );
        let service = start(LIMITS);
        let pid = service.child.id();
        let before = status_bytes(pid, "VmRSS");
        let invalid = |status: Status| {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{shape}: {status:?}");
            status.message().to_string()
        };
        let answer = match protocol {
            Protocol::RemoteWrite => {
                let (status, text) = remote_write(&service.http, &body).await;
                assert_eq!(status, 400, "{shape}: {text}");
                text
            }
            Protocol::Grpc => invalid(grpc_write(&service.grpc, Bytes::from(body)).await.unwrap_err()),
            Protocol::OtlpHttpMetrics => {
                let (status, answer) = otlp_http(&service.otlp_http, body).await;
                let answer: RpcStatus = prost::Message::decode(&answer[..]).expect("a google.rpc.Status body");
                assert_eq!((status, answer.code), (400, 3), "{shape}: {answer:?}");
                answer.message
            }
            Protocol::OtlpGrpcMetrics => invalid(
                grpc_call::<ExportMetricsServiceResponse>(&service.otlp_grpc, METRICS_EXPORT, Bytes::from(body))
                    .await
                    .unwrap_err(),
            ),
            Protocol::OtlpGrpcTraces => invalid(
                grpc_call::<ExportTraceServiceResponse>(&service.otlp_grpc, TRACES_EXPORT, Bytes::from(body))
                    .await
                    .unwrap_err(),
            ),
        };
        let growth = status_bytes(pid, "VmHWM").saturating_sub(before);
        let bound = match protocol {
            Protocol::RemoteWrite | Protocol::Grpc => BOUND,
            _ => OTLP_BOUND,
        };
        let answer: String = answer.chars().take(160).collect();
        report.push(format!("{shape}: +{} MiB ({answer})", growth >> 20));
        assert!(
            growth <= bound + FIRST_REQUEST,
            "{shape}: peak grew by {} MiB, bound {} MiB + {} MiB: {answer}",
            growth >> 20,
            bound >> 20,
            FIRST_REQUEST >> 20
        );
    }
    eprintln!("{}", report.join("\n"));
}

/// Requests decoded at once at most (`limits.max_inflight_requests`, default).
const IN_FLIGHT: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_hostile_requests_at_once_stay_within_the_worst_case() {
    // At the default count limits, so that 64 debug-build decodes stay quick: each
    // body is walked once, refused for its series count, and held meanwhile.
    let (_, _, body) = bodies().swap_remove(0);
    let service = start("");
    let pid = service.child.id();
    let before = status_bytes(pid, "VmRSS");
    let body = Bytes::from(body);
    let sends = (0..IN_FLIGHT).map(|_| {
        let (address, body) = (service.http.clone(), body.clone());
        tokio::spawn(async move { remote_write(&address, &body).await })
    });
    for answer in futures::future::join_all(sends).await {
        let (status, text) = answer.unwrap();
        // 429 when the in-flight gate was full; never anything else.
        assert!(status == 400 || status == 429, "{status}: {text}");
    }
    let growth = status_bytes(pid, "VmHWM").saturating_sub(before);
    eprintln!("{IN_FLIGHT} requests at once: +{} MiB", growth >> 20);
    assert!(
        growth <= IN_FLIGHT as u64 * BOUND + FIRST_REQUEST,
        "peak grew by {} MiB",
        growth >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_grpc_write_is_invalid_argument_and_the_service_keeps_serving() {
    let service = start("");
    let mut truncated = Vec::new();
    message(&mut truncated, 1, &label("__name__", "m"));
    truncated.truncate(truncated.len() - 1);
    for (what, body, needle) in [
        (
            "garbage",
            vec![0xff, 0xff, 0xff],
            "invalid protobuf tailfold.v1.WriteRequest",
        ),
        ("truncated", truncated, "truncated field at byte 0"),
        ("group wire type", vec![0x0b], "unsupported wire type 3"),
        (
            "series as a varint",
            vec![0x08, 0x01],
            "field 1 has wire type 0, expected 2",
        ),
    ] {
        let status = grpc_write(&service.grpc, Bytes::from(body)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {status:?} lacks {needle:?}");
    }
    let good = v1::WriteRequest {
        series: vec![v1::Series {
            labels: vec![v1::Label {
                name: "__name__".into(),
                value: "m".into(),
            }],
            kind: v1::Kind::Gauge as i32,
            points: vec![v1::Point {
                value: 1.0,
                ..Default::default()
            }],
        }],
    };
    let answer = grpc_write(&service.grpc, Bytes::from(prost::Message::encode_to_vec(&good)))
        .await
        .expect("a good write after garbage");
    assert_eq!((answer.accepted, answer.rejected), (1, 0));
}
