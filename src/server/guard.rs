//! The layer every gRPC call passes through: it refuses calls without a valid bearer token
//! (when `server.auth` is configured) before they reach a service, and counts the calls
//! answered with an error.
//!
//! Checking here, on the HTTP request, rather than in each Flight SQL method, means no
//! method, present or added later, can forget the check.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::auth::Authenticator;
use super::metrics::Metrics;

/// The Flight handshake: where clients log in, so it is the one call without a token.
const HANDSHAKE: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// gRPC health checks: answered to anyone, so load balancers need no credentials.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Wraps the server's services in a [`Guard`].
#[derive(Debug, Clone)]
pub struct GuardLayer {
    auth: Option<Arc<Authenticator>>,
    metrics: Arc<Metrics>,
}

impl GuardLayer {
    /// Checks tokens with `auth` (every call is let through without it) and counts errors
    /// in `metrics`.
    pub fn new(auth: Option<Arc<Authenticator>>, metrics: Arc<Metrics>) -> Self {
        GuardLayer { auth, metrics }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

/// The caller's address, with or without TLS.
pub fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(|info| info.get_ref())
        })
        .and_then(TcpConnectInfo::remote_addr)
}

/// The method's name without its service, e.g. `DoGet`.
fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Guard<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_string();
        let metrics = Arc::clone(&self.layer.metrics);
        if let Some(auth) = &self.layer.auth
            && path != HANDSHAKE
            && !path.starts_with(HEALTH)
        {
            let header = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match auth.check_header(header) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(refusal) => {
                    let method = method_name(&path);
                    tracing::warn!(
                        method,
                        peer = ?peer(&request),
                        reason = refusal.label(),
                        "call refused"
                    );
                    metrics.refused(refusal.label());
                    metrics.rpc_error(method, tonic::Code::Unauthenticated);
                    let refused = Status::unauthenticated(refusal.message()).into_http();
                    return Box::pin(std::future::ready(Ok(refused)));
                }
            }
        }
        // The service that was polled ready answers; its clone waits for the next call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let response = inner.call(request).await?;
            // Errors raised before a stream starts come back as trailers-only responses,
            // with the status in the headers; errors in a stream are counted by its query.
            if let Some(status) = Status::from_header_map(response.headers())
                && status.code() != tonic::Code::Ok
            {
                metrics.rpc_error(method_name(&path), status.code());
            }
            Ok(response)
        })
    }
}
