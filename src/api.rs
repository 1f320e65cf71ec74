//! The gRPC wire types and services generated from `proto/tailfold/v1`.

/// `tailfold.v1`: ingest `Write` and the `Selections` stream.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tailfold.v1");
}

/// Encoded descriptors of the API, served by gRPC reflection (so `grpcurl` needs no .proto).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tailfold_descriptor.bin"));
