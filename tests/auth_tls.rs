//! Bearer-token auth and TLS on real sockets: requests without a valid token
//! get 401 / UNAUTHENTICATED and change nothing, a token only ever acts as its
//! own tenant (ingest and the selection stream), and with TLS on both
//! listeners serve TLS clients and refuse plaintext.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use prost::Message;
use tailfold::api::prometheus as wire;
use tailfold::api::v1::{self, Kind};
use tailfold::clock::ManualClock;
use tailfold::config::ServiceSettings;
use tailfold::rules::RuleSet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

const T0: i64 = 1_800_000_000_000;
const RULES: &str = r#"
defaults:
  storage_policies: ["10s:2d"]
mapping_rules:
  - name: latency
    filter: '__name__:latency_seconds'
    aggregations: [count, p50]
"#;
const TOKEN_A: &str = "token-of-tenant-a-7f3e9c";
const TOKEN_B: &str = "token-of-tenant-b-2d81aa";

/// Status and body of one HTTP/1.1 exchange on `stream`.
async fn http_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no HTTP status in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    http_on(stream, method, path, headers, body)
        .await
        .expect("http exchange")
}

fn remote_write_body(name: &str, value: f64) -> Vec<u8> {
    let request = wire::WriteRequest {
        timeseries: vec![wire::TimeSeries {
            labels: vec![wire::Label {
                name: "__name__".into(),
                value: name.into(),
            }],
            samples: vec![wire::Sample { value, timestamp: T0 }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

fn gauge_request(name: &str, headers: &[(&str, &str)]) -> tonic::Request<v1::WriteRequest> {
    let mut request = tonic::Request::new(v1::WriteRequest {
        series: vec![series(&[("__name__", name)], Kind::Gauge, vec![point(1.0, T0)])],
    });
    for (name, value) in headers {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()).expect("metadata key");
        request
            .metadata_mut()
            .insert(key, value.parse().expect("metadata value"));
    }
    request
}

/// Auth config: tenant `a` with an inline token, tenant `b` with a token file.
fn auth_config(dir: &Path) -> String {
    let file = dir.join("b.token");
    std::fs::write(&file, format!("{TOKEN_B}\n")).expect("write token file");
    format!(
        "auth:\n  tokens:\n    - {{tenant: a, token: {TOKEN_A}}}\n    - {{tenant: b, token_file: {}}}\n",
        file.display()
    )
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_and_change_nothing() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let mut service = start_service_with(RULES, T0, &auth_config(secrets.path())).await;
    let http_addr = service.handle().http_addr();
    let bearer_a = format!("Bearer {TOKEN_A}");
    let snappy = [
        ("Content-Encoding", "snappy"),
        ("Content-Type", "application/x-protobuf"),
    ];

    // gRPC: no token, an unknown token, another scheme: UNAUTHENTICATED; a tenant header
    // naming another tenant than the token's: PERMISSION_DENIED.
    for (headers, code) in [
        (vec![], tonic::Code::Unauthenticated),
        (
            vec![("authorization", "Bearer token-of-tenant-a-7f3e9d")],
            tonic::Code::Unauthenticated,
        ),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            tonic::Code::Unauthenticated,
        ),
        (
            vec![("authorization", bearer_a.as_str()), ("x-scope-orgid", "b")],
            tonic::Code::PermissionDenied,
        ),
    ] {
        let status = service
            .client
            .write(gauge_request("refused", &headers))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{headers:?}: {status:?}");
        assert!(!status.message().contains(TOKEN_A), "a token leaked: {status:?}");
    }
    // Remote write: the same as 401 / 403, with a reason and a WWW-Authenticate challenge.
    let body = remote_write_body("refused", 1.0);
    for (extra, status) in [
        (vec![], 401),
        (vec![("Authorization", "Bearer nope-nope-nope-nope-nope")], 401),
        (vec![("Authorization", bearer_a.as_str()), ("X-Scope-OrgID", "b")], 403),
    ] {
        let headers: Vec<(&str, &str)> = snappy.iter().copied().chain(extra.iter().copied()).collect();
        let (code, reason) = http(http_addr, "POST", "/api/v1/write", &headers, &body).await;
        assert_eq!(code, status, "{extra:?}: {reason}");
        assert!(reason.contains("token"), "{reason:?}");
    }
    // Nothing of it reached the engine or any counter.
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!(snapshot.received_points, 0);
    assert_eq!(snapshot.ingest.accepted, 0);
    assert_eq!(snapshot.ingest.rejected_total(), 0);
    // Probes stay open for orchestrators.
    assert_eq!(http(http_addr, "GET", "/-/healthy", &[], b"").await.0, 200);
    assert_eq!(http(http_addr, "GET", "/-/ready", &[], b"").await.0, 200);

    // A valid token writes as its tenant, with or without naming it.
    let bearer_b = format!("Bearer {TOKEN_B}");
    let written = service
        .client
        .write(gauge_request("grpc_gauge", &[("authorization", bearer_a.as_str())]))
        .await
        .expect("token a");
    assert_eq!(written.into_inner().accepted, 1);
    let headers: Vec<(&str, &str)> = snappy
        .iter()
        .copied()
        .chain([("Authorization", bearer_b.as_str()), ("X-Scope-OrgID", "b")])
        .collect();
    let (code, reason) = http(
        http_addr,
        "POST",
        "/api/v1/write",
        &headers,
        &remote_write_body("rw_gauge", 2.0),
    )
    .await;
    assert_eq!(code, 204, "{reason}");
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    let tenants: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.tenant.as_str(), r.labels["__name__"].as_str()))
        .collect();
    assert!(tenants.contains(&("a", "grpc_gauge")), "{tenants:?}");
    assert!(tenants.contains(&("b", "rw_gauge")), "{tenants:?}");
    assert!(!tenants.iter().any(|(_, name)| *name == "refused"), "{tenants:?}");
    service.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_sees_only_the_selections_of_its_tokens_tenant() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let mut service = start_service_with(RULES, T0, &auth_config(secrets.path())).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.handle().grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::selections_client::SelectionsClient::new(channel);
    let subscribe = |token: Option<&str>, tenant: &str| {
        let mut request = tonic::Request::new(v1::SubscribeRequest {
            tenant: tenant.into(),
            metric: String::new(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    assert_eq!(
        client.subscribe(subscribe(None, "")).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // Asking for another tenant's selections with one's own token is refused.
    assert_eq!(
        client
            .subscribe(subscribe(Some(TOKEN_A), "b"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    // No tenant asked for: the token's tenant only, not every tenant.
    let mut stream_a = client
        .subscribe(subscribe(Some(TOKEN_A), ""))
        .await
        .unwrap()
        .into_inner();
    let mut stream_b = client
        .subscribe(subscribe(Some(TOKEN_B), ""))
        .await
        .unwrap()
        .into_inner();

    for (token, trace) in [(TOKEN_A, 1u8), (TOKEN_B, 2u8)] {
        let points = (1..=10)
            .map(|i| traced_point(i as f64, T0 + i, [trace; 16], [trace; 8]))
            .collect();
        let mut request = tonic::Request::new(v1::WriteRequest {
            series: vec![series(&[("__name__", "latency_seconds")], Kind::Distribution, points)],
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(service.client.write(request).await.unwrap().into_inner().accepted, 10);
    }
    service.flush_at(T0 + 60_000).await;

    for (stream, tenant, trace) in [(&mut stream_a, "a", 1u8), (&mut stream_b, "b", 2u8)] {
        let mut received = Vec::new();
        while let Ok(Ok(Some(selection))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
            received.push(selection);
        }
        assert_eq!(received.len(), 1, "the p50 of {tenant} only: {received:#?}");
        assert_eq!(received[0].tenant, tenant);
        assert_eq!(received[0].trace_id, vec![trace; 16]);
    }
    service.shutdown().await;
}

struct Tls {
    _dir: tempfile::TempDir,
    config: String,
    roots: rustls::RootCertStore,
}

/// A self-signed certificate for `localhost`, and the config serving it on both listeners.
fn tls_setup() -> Tls {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let tls = format!(
        "tls: {{cert_file: {}, key_file: {}}}",
        cert_file.display(),
        key_file.display()
    );
    Tls {
        config: format!("grpc: {{listen: \"127.0.0.1:0\", {tls}}}\nhttp: {{listen: \"127.0.0.1:0\", {tls}}}\n"),
        _dir: dir,
        roots,
    }
}

#[tokio::test]
async fn with_tls_both_listeners_serve_tls_clients_and_refuse_plaintext() {
    let tls = tls_setup();
    let data_dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "{}data_dir: {}\nflush: {{interval_ms: 3600000, progress_interval_ms: 0}}\n",
        tls.config,
        data_dir.path().display()
    );
    let settings = ServiceSettings::parse(&config, Path::new("test/tailfold.yaml")).expect("config");
    assert!(!format!("{settings:?}").contains("key_pem"), "the key shows in Debug");
    let rules = RuleSet::parse(RULES, "rules.yaml").expect("rules");
    let handle = tailfold::server::start(settings, rules, Arc::new(ManualClock::new(T0)))
        .await
        .expect("start");

    // gRPC over TLS, verified against the test CA.
    let pem = std::fs::read_to_string(tls._dir.path().join("cert.pem")).unwrap();
    let client_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", handle.grpc_addr()))
        .unwrap()
        .tls_config(client_tls)
        .unwrap()
        .connect()
        .await
        .expect("tls connect");
    let mut client = v1::ingest_client::IngestClient::new(channel);
    let written = client
        .write(gauge_request("over_tls", &[]))
        .await
        .expect("write over tls");
    assert_eq!(written.into_inner().accepted, 1);
    // Plaintext gRPC to the TLS port gets no answer.
    let plain = async {
        let mut client = v1::ingest_client::IngestClient::connect(format!("http://{}", handle.grpc_addr())).await?;
        client
            .write(gauge_request("plaintext", &[]))
            .await
            .map_err(Into::into)
            .map(|_| ())
    };
    let plain: Result<(), Box<dyn std::error::Error>> = tokio::time::timeout(Duration::from_secs(20), plain)
        .await
        .expect("plaintext attempt hung");
    assert!(plain.is_err(), "plaintext gRPC was served");

    // HTTP over TLS: probes and a remote write.
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tls.roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(handle.http_addr())
            .await
            .expect("connect");
        connector
            .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("tls handshake")
    };
    let (code, body) = http_on(connect().await, "GET", "/-/healthy", &[], b"")
        .await
        .expect("https");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let headers = [
        ("Content-Encoding", "snappy"),
        ("Content-Type", "application/x-protobuf"),
    ];
    let (code, reason) = http_on(
        connect().await,
        "POST",
        "/api/v1/write",
        &headers,
        &remote_write_body("rw_tls", 1.0),
    )
    .await
    .expect("https write");
    assert_eq!(code, 204, "{reason}");
    // Plaintext HTTP to the TLS port gets no HTTP answer.
    let tcp = tokio::net::TcpStream::connect(handle.http_addr())
        .await
        .expect("connect");
    let plain = tokio::time::timeout(Duration::from_secs(20), http_on(tcp, "GET", "/-/healthy", &[], b""))
        .await
        .expect("plaintext attempt hung");
    assert!(plain.is_err(), "plaintext HTTP was served: {plain:?}");

    assert_eq!(handle.telemetry().snapshot().ingest.accepted, 2);
    handle.shutdown().await.expect("clean shutdown");
}

#[test]
fn broken_auth_and_tls_config_is_refused_with_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = tls_setup();
    let cert = tls._dir.path().join("cert.pem");
    let other_key = dir.path().join("other.pem");
    std::fs::write(
        &other_key,
        rcgen::generate_simple_self_signed(vec!["x".into()])
            .unwrap()
            .signing_key
            .serialize_pem(),
    )
    .unwrap();
    let cases = [
        (
            "auth: {tokens: [{tenant: a, token: short}]}",
            "auth.tokens[0]",
            "at least 16",
        ),
        ("auth: {tokens: [{tenant: a}]}", "auth.tokens[0]", "exactly one of"),
        (
            "auth: {tokens: [{tenant: a, token: aaaaaaaaaaaaaaaaaaaa, token_env: X}]}",
            "auth.tokens[0]",
            "exactly one of",
        ),
        (
            "auth: {tokens: [{tenant: a, token_file: /nonexistent/token}]}",
            "auth.tokens[0].token_file",
            "cannot read",
        ),
        (
            "auth: {tokens: [{tenant: a, token_env: TAILFOLD_TEST_UNSET_VARIABLE}]}",
            "auth.tokens[0].token_env",
            "TAILFOLD_TEST_UNSET_VARIABLE",
        ),
        (
            "auth: {tokens: [{tenant: \"a b\", token: aaaaaaaaaaaaaaaaaaaa}]}",
            "auth.tokens[0].tenant",
            "invalid tenant",
        ),
        (
            "auth: {tokens: [{tenant: a, token: aaaaaaaaaaaaaaaaaaaa}, {tenant: b, token: aaaaaaaaaaaaaaaaaaaa}]}",
            "auth.tokens[1]",
            "also the token of tenant \"a\"",
        ),
        ("auth: {tokens: [{tenant: a, tokn: x}]}", "", "unknown field"),
        ("grpc: {tls: {cert_file: cert.pem}}", "grpc.tls", "needs both"),
        ("otlp: {tls: {cert_file: cert.pem}}", "otlp.tls", "needs both"),
        (
            "otlp: {tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}}",
            "otlp.tls.cert_file",
            "cannot read",
        ),
        ("auth: {admin_token: short}", "auth", "at least 16 are required"),
        (
            "auth: {admin_token: same-token-as-an-ingest-one, tokens: [{tenant: a, token: same-token-as-an-ingest-one}]}",
            "auth",
            "the admin token is also the token of tenant \"a\"",
        ),
        (
            "http: {tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}}",
            "http.tls.cert_file",
            "cannot read",
        ),
        (
            &format!(
                "http: {{tls: {{cert_file: {}, key_file: {}}}}}",
                other_key.display(),
                other_key.display()
            ),
            "http.tls.cert_file",
            "no PEM certificate",
        ),
        (
            &format!(
                "grpc: {{tls: {{cert_file: {}, key_file: {}}}}}",
                cert.display(),
                cert.display()
            ),
            "grpc.tls.key_file",
            "",
        ),
        (
            &format!(
                "grpc: {{tls: {{cert_file: {}, key_file: {}}}}}",
                cert.display(),
                other_key.display()
            ),
            "grpc.tls",
            "",
        ),
        (
            "ingest: {tenant_header: \"bad header\"}",
            "ingest.tenant_header",
            "not an HTTP header name",
        ),
        (
            "ingest: {max_decompressed_bytes: 0}",
            "ingest.max_decompressed_bytes",
            "greater than zero",
        ),
    ];
    for (config, field, needle) in cases {
        let error = ServiceSettings::parse(config, &dir.path().join("tailfold.yaml"))
            .expect_err(config)
            .to_string();
        assert!(
            error.contains(&format!("field {field}")) || field.is_empty(),
            "{config}: {error}"
        );
        assert!(error.contains(needle), "{config}: {error}");
        assert!(!error.contains("aaaaaaaaaaaaaaaa"), "a token leaked: {error}");
    }
}

#[test]
fn tokens_are_read_from_files_the_environment_or_inline() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.token"), "  token-from-a-file-0001\n").unwrap();
    // A variable only this test sets.
    std::env::set_var("TAILFOLD_TEST_TOKEN_FROM_ENV", "token-from-the-env-0001");
    let config = "auth:\n  tokens:\n    - {tenant: a, token_file: a.token}\n    - {tenant: b, token_env: TAILFOLD_TEST_TOKEN_FROM_ENV}\n    - {tenant: b, token: token-inline-00000001}\n";
    let settings = ServiceSettings::parse(config, &dir.path().join("tailfold.yaml")).expect("config");
    let tokens: Vec<(String, String)> = settings
        .auth
        .as_ref()
        .expect("auth on")
        .tokens
        .iter()
        .map(|(token, tenant)| (String::from_utf8(token.clone()).unwrap(), tenant.to_string()))
        .collect();
    assert_eq!(
        tokens,
        [
            ("token-from-a-file-0001", "a"),
            ("token-from-the-env-0001", "b"),
            ("token-inline-00000001", "b")
        ]
        .map(|(token, tenant)| (token.to_string(), tenant.to_string()))
    );
    // Settings may be logged: their Debug form shows tenants, not tokens.
    let debug = format!("{settings:?}");
    assert!(debug.contains("tokens_of_tenants: [\"a\", \"b\", \"b\"]"), "{debug}");
    assert!(!debug.contains("token-from"), "{debug}");
    assert!(ServiceSettings::parse("", &dir.path().join("tailfold.yaml"))
        .unwrap()
        .auth
        .is_none());
}

/// OTLP sits behind the same tokens: without one, OTLP/HTTP gets 401 and
/// OTLP/gRPC UNAUTHENTICATED, nothing is counted; with one, the spans land
/// under the token's tenant. The selection query answers only that tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_and_the_selection_query_need_a_token_too() {
    use tailfold::api::otlp::collector::trace::v1::{
        trace_service_client::TraceServiceClient, ExportTraceServiceRequest,
    };
    use tailfold::api::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    let secrets = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "{}otlp: {{grpc_listen: \"127.0.0.1:0\", http_listen: \"127.0.0.1:0\"}}\n",
        auth_config(secrets.path())
    );
    let mut service = start_service_with(RULES, T0 + 5_000, &extra).await;
    let spans = |trace: u8| ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![trace; 16],
                    span_id: vec![trace; 8],
                    name: "op".into(),
                    start_time_unix_nano: T0 as u64 * 1_000_000,
                    end_time_unix_nano: (T0 as u64 + 20) * 1_000_000,
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let otlp_http = service.handle().otlp_http_addr().unwrap();
    let protobuf = ("Content-Type", "application/x-protobuf");
    let body = spans(1).encode_to_vec();
    let (code, reason) = http(otlp_http, "POST", "/v1/traces", &[protobuf], &body).await;
    assert_eq!(code, 401, "{reason}");
    // Every OTLP/HTTP error body is a google.rpc.Status, a refused token's too.
    let response = reqwest::Client::new()
        .post(format!("http://{otlp_http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("authorization", "Bearer not-a-token-at-all")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let status = tailfold::ingest::otlp::RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, tonic::Code::Unauthenticated as i32);
    assert_eq!(status.message, "invalid bearer token");
    let mut grpc = TraceServiceClient::connect(format!("http://{}", service.handle().otlp_grpc_addr().unwrap()))
        .await
        .unwrap();
    let status = grpc.export(spans(2)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!(snapshot.received_points, 0, "a refused export is not even received");

    let bearer_a = format!("Bearer {TOKEN_A}");
    let (code, reason) = http(
        otlp_http,
        "POST",
        "/v1/traces",
        &[protobuf, ("Authorization", bearer_a.as_str())],
        &body,
    )
    .await;
    assert_eq!(code, 200, "{reason}");
    let mut request = tonic::Request::new(spans(3));
    let bearer_b = format!("Bearer {TOKEN_B}");
    request
        .metadata_mut()
        .insert("authorization", bearer_b.parse().unwrap());
    grpc.export(request).await.expect("token b");
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    let tenants: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r.labels["__name__"].starts_with("span_duration_seconds"))
        .map(|r| r.tenant.as_str())
        .collect();
    assert_eq!(tenants, ["a", "b"].into_iter().collect());

    // The selection query: no token, 401; token a sees tenant a only.
    let http_addr = service.handle().http_addr();
    let query = format!("/api/v1/selections?start_ms={T0}&end_ms={}", T0 + 60_000);
    assert_eq!(http(http_addr, "GET", &query, &[], b"").await.0, 401);
    let (code, lines) = http(http_addr, "GET", &query, &[("Authorization", bearer_a.as_str())], b"").await;
    assert_eq!(code, 200, "{lines}");
    assert!(lines.contains("\"tenant\":\"a\""), "{lines}");
    assert!(!lines.contains("\"tenant\":\"b\""), "{lines}");
    service.shutdown().await;
}
