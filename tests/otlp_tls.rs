//! TLS on the OTLP listeners (`otlp.tls`): OTLP/gRPC and OTLP/HTTP serve
//! TLS clients, verified against the test certificate, and a plaintext
//! client gets no answer from either.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tailfold::api::otlp::collector::trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest};
use tailfold::api::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tailfold::clock::ManualClock;
use tailfold::config::ServiceSettings;
use tailfold::rules::RuleSet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

const T0: i64 = 1_800_000_000_000;

/// The HTTP status of `POST /v1/traces` with `body` over `stream`; an error when no HTTP answer comes.
async fn post<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, body: &[u8]) -> std::io::Result<u16> {
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no HTTP status in {text:?}")))
}

fn spans(seed: u8) -> ExportTraceServiceRequest {
    let start = (T0 as u64) * 1_000_000;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![seed; 16],
                    span_id: vec![seed; 8],
                    name: "GET /".to_string(),
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + 50_000_000,
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

#[tokio::test]
async fn otlp_listeners_serve_tls_and_refuse_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {}\n\
         flush: {{interval_ms: 3600000, progress_interval_ms: 0}}\n\
         otlp: {{grpc_listen: \"127.0.0.1:0\", http_listen: \"127.0.0.1:0\", tls: {{cert_file: {}, key_file: {}}}}}\n",
        dir.path().join("data").display(),
        cert_file.display(),
        key_file.display()
    );
    let settings = ServiceSettings::parse(&config, Path::new("test/tailfold.yaml")).expect("config");
    let rules = RuleSet::parse("", "rules.yaml").unwrap();
    let handle = tailfold::server::start(settings, rules, Arc::new(ManualClock::new(T0)))
        .await
        .expect("start");
    let (grpc, http) = (handle.otlp_grpc_addr().unwrap(), handle.otlp_http_addr().unwrap());

    // OTLP/gRPC over TLS.
    let client_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(certified.cert.pem()))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(client_tls)
        .unwrap()
        .connect()
        .await
        .expect("tls connect");
    let answer = TraceServiceClient::new(channel)
        .export(spans(1))
        .await
        .expect("export over tls");
    assert_eq!(answer.into_inner().partial_success, None);
    let plain = async {
        let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await?;
        client.export(spans(2)).await.map_err(Into::into).map(|_| ())
    };
    let plain: Result<(), Box<dyn std::error::Error>> = tokio::time::timeout(Duration::from_secs(20), plain)
        .await
        .expect("plaintext attempt hung");
    assert!(plain.is_err(), "plaintext OTLP/gRPC was served");

    // OTLP/HTTP over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(client_config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("tls handshake");
    let status = post(stream, &spans(3).encode_to_vec()).await.expect("post over tls");
    assert_eq!(status, 200);
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let plain = tokio::time::timeout(Duration::from_secs(20), post(tcp, &spans(4).encode_to_vec()))
        .await
        .expect("plaintext attempt hung");
    assert!(plain.is_err(), "plaintext OTLP/HTTP was served: {plain:?}");

    assert_eq!(handle.telemetry().snapshot().ingest.accepted, 2);
    handle.shutdown().await.expect("clean shutdown");
}
