//! `tributary serve`: the Arrow Flight SQL endpoint BI tools, drivers and notebooks connect
//! to, over the engine's session.

mod handles;
mod metadata;
mod running;
mod service;
mod status;

use std::future::Future;
use std::net::SocketAddr;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use service::TributaryFlightSql;

use crate::engine::Engine;

/// Largest gRPC message accepted or sent (bound parameters, metadata answers).
const MAX_MESSAGE: usize = 64 << 20;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is not loopback and no authentication is configured.
    #[error(
        "refusing to listen on {0} without authentication: bind to 127.0.0.1 (or ::1), or configure `server.auth`"
    )]
    Unprotected(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("the server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `addr`, refusing a non-loopback address: nothing authenticates clients yet.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    if !addr.ip().is_loopback() {
        return Err(ServeError::Unprotected(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves Flight SQL, and gRPC health checks, on `listener` until `shutdown` completes;
/// health then turns to NOT_SERVING (so load balancers stop sending work) while requests
/// under way finish, before this returns.
pub async fn serve(
    engine: Engine,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    type Flight = FlightServiceServer<TributaryFlightSql>;
    let service = Flight::new(TributaryFlightSql::new(engine))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<Flight>().await;
    let draining = async move {
        shutdown.await;
        health.set_not_serving::<Flight>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, draining)
        .await?;
    Ok(())
}
