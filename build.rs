//! Compiles `proto/` with protox, a pure-Rust protobuf compiler, so building
//! tailfold never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tailfold/v1/tailfold.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Kept so the server can offer gRPC reflection (grpcurl works without the .proto).
    std::fs::write(
        out_dir.join("tailfold_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Trace and span IDs as `Bytes`: decoding slices them out of the request
    // buffer instead of allocating two `Vec`s per traced point.
    tonic_prost_build::configure()
        .bytes(".tailfold.v1.Point")
        .compile_fds(descriptors)?;

    // Prometheus remote write messages: plain prost types, no services, and
    // kept out of the reflection descriptors (they are not part of the gRPC API).
    let prometheus = ["proto/prometheus/remote.proto", "proto/prometheus/types.proto"];
    for proto in prometheus {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(protox::compile(prometheus, ["proto"])?)?;

    // The cluster's internal forwarding API: client and server, kept out of
    // the reflection descriptors (not for clients).
    let cluster = ["proto/tailfold/cluster/v1/cluster.proto"];
    for proto in cluster {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .bytes(".tailfold.cluster.v1.ForwardRequest")
        .compile_fds(protox::compile(cluster, ["proto"])?)?;

    // OTLP (the official OpenTelemetry .proto files, vendored): messages plus the
    // trace and metrics collector services; a client too, for tests that send
    // hand-made (and broken) requests.
    let otlp = [
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
        "proto/opentelemetry/proto/collector/metrics/v1/metrics_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto/opentelemetry");
    tonic_prost_build::configure()
        .codec_path("crate::ingest::otlp::OtlpCodec")
        .compile_fds(protox::compile(otlp, ["proto"])?)?;

    // etcd's v3 API (vendored from release-3.4, gRPC-gateway and gogoproto
    // options stripped): clients only, for the cluster's placement, leases,
    // elections and watches. tailfold never serves it.
    let etcd = ["proto/etcd/etcdserver/etcdserverpb/rpc.proto"];
    println!("cargo:rerun-if-changed=proto/etcd");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile(etcd, ["proto"])?)?;
    Ok(())
}
