//! A tower layer on the gRPC server that counts calls and times them per method (`baton_grpc_requests_total`,
//! `baton_grpc_request_duration_seconds`).
//!
//! The time is to the response's headers, which for a unary call is the whole call. The code is the
//! `grpc-status` of a trailers-only response (how tonic answers an error), else 0 (OK): a streaming call that fails
//! after it started counts as OK here. Only Baton's and gRPC's own services get a series of their own; any other
//! path counts as `other`, so a client cannot create series at will.
//!
//! Being the one layer in front of every gRPC service, it also refuses a `grpc-timeout` that is not gRPC's (1 to 8
//! digits and a unit) with `INVALID_ARGUMENT`: tonic would ignore it silently and run the call with no deadline,
//! and the peer service would otherwise have to guess one (a 19-digit value used to overflow its deadline and
//! panic).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The layer: wraps each service in [`GrpcMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// Counts and times the calls `inner` answers.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// The method's label: its path for Baton's and gRPC's services, `other` for anything else.
fn method_label(path: &str) -> String {
    if path.starts_with("/baton.") || path.starts_with("/grpc.") {
        path.to_string()
    } else {
        "other".to_string()
    }
}

/// Why the request's `grpc-timeout` header is refused, if it is.
fn malformed_timeout<B>(request: &http::Request<B>) -> Option<tonic::Status> {
    let value = request.headers().get("grpc-timeout")?;
    let why = match value.to_str() {
        Ok(text) => crate::raft::wire::parse_grpc_timeout(text).err()?,
        Err(_) => "not ASCII".to_string(),
    };
    Some(tonic::Status::invalid_argument(format!("grpc-timeout: {why}")))
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let call = match malformed_timeout(&request) {
            None => Ok(self.inner.call(request)),
            Some(status) => Err(status),
        };
        Box::pin(async move {
            let result = match call {
                Ok(call) => call.await,
                // A trailers-only answer, as tonic gives an error.
                Err(status) => Ok(status.into_http()),
            };
            let code = match &result {
                Ok(response) => {
                    response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string()
                }
                Err(_) => "transport".to_string(),
            };
            let metrics = crate::metrics::metrics();
            metrics.grpc_requests.with_label_values(&[method.as_str(), code.as_str()]).inc();
            metrics.grpc_request_seconds.with_label_values(&[method.as_str()]).observe(started.elapsed().as_secs_f64());
            result
        })
    }
}
