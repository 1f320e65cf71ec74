//! The wire types generated from `proto/`: the gRPC API (`tailfold.v1`) and
//! the Prometheus remote write 1.0 messages (`prometheus`).

/// `tailfold.v1`: ingest `Write` and the `Selections` stream.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tailfold.v1");
}

/// `tailfold.cluster.v1`: forwarding between the instances of a cluster.
pub mod cluster_v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tailfold.cluster.v1");
}

/// `prometheus`: the remote write 1.0 messages (`WriteRequest` and its parts).
pub mod prometheus {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("prometheus");
}

/// OTLP (`opentelemetry.proto.*`): the official OpenTelemetry messages and the
/// trace and metrics collector services, generated from the vendored `.proto`
/// files. Modules mirror the proto packages (generated code refers across them).
#[allow(missing_docs, clippy::all)]
pub mod otlp {
    /// `opentelemetry.proto.common.v1`.
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.common.v1");
        }
    }
    /// `opentelemetry.proto.resource.v1`.
    pub mod resource {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.resource.v1");
        }
    }
    /// `opentelemetry.proto.trace.v1`.
    pub mod trace {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.trace.v1");
        }
    }
    /// `opentelemetry.proto.metrics.v1`.
    pub mod metrics {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.metrics.v1");
        }
    }
    /// `opentelemetry.proto.collector.*`: `TraceService.Export`, `MetricsService.Export`.
    pub mod collector {
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
            }
        }
        pub mod metrics {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.collector.metrics.v1");
            }
        }
    }
}

/// Encoded descriptors of the API, served by gRPC reflection (so `grpcurl` needs no .proto).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tailfold_descriptor.bin"));
