//! The wire types generated from `proto/`: the gRPC API (`tailfold.v1`) and
//! the Prometheus remote write 1.0 messages (`prometheus`).

/// `tailfold.v1`: ingest `Write` and the `Selections` stream.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tailfold.v1");
}

/// `prometheus`: the remote write 1.0 messages (`WriteRequest` and its parts).
pub mod prometheus {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("prometheus");
}

/// Encoded descriptors of the API, served by gRPC reflection (so `grpcurl` needs no .proto).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tailfold_descriptor.bin"));
