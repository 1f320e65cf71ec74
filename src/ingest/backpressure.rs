//! Backpressure for gRPC ingest: a tower wrapper around the `Ingest` service
//! that takes an in-flight permit before the request body is even read, and
//! answers RESOURCE_EXHAUSTED at once when none is left (clients back off and
//! retry; nothing of the request was folded in).

use std::convert::Infallible;
use std::sync::Arc;

use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;

use crate::limits::InflightGate;
use crate::telemetry::Telemetry;

/// `inner` behind the in-flight gate.
#[derive(Clone)]
pub struct Backpressure<S> {
    inner: S,
    gate: InflightGate,
    telemetry: Arc<Telemetry>,
    protocol: &'static str,
}

impl<S> Backpressure<S> {
    /// Wraps `inner`; refusals are counted as `overloaded_requests[grpc]`.
    pub fn new(inner: S, gate: InflightGate, telemetry: Arc<Telemetry>) -> Self {
        Backpressure {
            inner,
            gate,
            telemetry,
            protocol: "grpc",
        }
    }

    /// The same, counting refusals as `overloaded_requests[protocol]`.
    pub fn counted_as(mut self, protocol: &'static str) -> Self {
        self.protocol = protocol;
        self
    }
}

impl<S: NamedService> NamedService for Backpressure<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Backpressure<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(permit) = self.gate.try_enter() else {
            self.telemetry.overloaded(self.protocol);
            let status = tonic::Status::resource_exhausted(format!(
                "ingest is saturated: {} requests in flight (limits.max_inflight_requests); retry with backoff",
                self.gate.capacity()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}
