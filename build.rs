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
    tonic_prost_build::configure().compile_fds(descriptors)?;

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
    Ok(())
}
