//! `tributary serve`: the Arrow Flight SQL endpoint BI tools, drivers and notebooks connect
//! to, over the engine's session.

pub mod auth;
mod get_schema;
mod guard;
mod handles;
mod metadata;
mod metrics;
mod planned;
mod running;
mod service;
mod status;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use auth::Authenticator;
pub use get_schema::WithGetSchema;
pub use metrics::{Metrics, serve_metrics};
pub use service::TributaryFlightSql;

use crate::config::{ServerConfig, TlsConfig};
use crate::engine::Engine;
use guard::GuardLayer;

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
    /// A file `server.tls` names could not be read, or the certificate is unusable.
    #[error("{key}: {message}")]
    Tls {
        /// The config key, e.g. `server.tls.cert`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// `server.auth` could not be set up.
    #[error("server.auth: {0}")]
    Auth(String),
    /// The gRPC server failed.
    #[error("the server failed: {}", chain(.0))]
    Transport(#[from] tonic::transport::Error),
}

/// An error and its causes, `a: b: c` (tonic's own message is only "transport error").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How the server protects itself, and where it counts what it does.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Checks logins and tokens; `None` lets anyone in (loopback only).
    pub auth: Option<Arc<Authenticator>>,
    /// Serve over TLS.
    pub tls: Option<ServerTlsConfig>,
    /// The counters `/metrics` shows.
    pub metrics: Arc<Metrics>,
}

impl Options {
    /// The options `server` sets; relative paths resolve against `dir`.
    pub fn from_config(server: &ServerConfig, dir: &Path) -> Result<Options, ServeError> {
        let auth = match &server.auth {
            Some(config) => Some(Arc::new(
                Authenticator::new(config).map_err(ServeError::Auth)?,
            )),
            None => None,
        };
        let tls = server
            .tls
            .as_ref()
            .map(|tls| tls_config(tls, dir))
            .transpose()?;
        Ok(Options {
            auth,
            tls,
            metrics: Arc::default(),
        })
    }
}

/// Reads the certificate, key and client CA `tls` names.
fn tls_config(tls: &TlsConfig, dir: &Path) -> Result<ServerTlsConfig, ServeError> {
    let read = |key: &'static str, path: &Path| {
        let path = dir.join(path);
        let pem = std::fs::read(&path).map_err(|e| ServeError::Tls {
            key,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(ServeError::Tls {
                key,
                message: format!("{} is not a PEM file", path.display()),
            });
        }
        Ok(pem)
    };
    let cert = read("server.tls.cert", &tls.cert)?;
    let key = read("server.tls.key", &tls.key)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("server.tls.client_ca", ca)?));
    }
    Ok(config)
}

/// Binds `addr`, refusing an address other machines can reach unless `options`
/// authenticate callers.
pub async fn bind(addr: SocketAddr, options: &Options) -> Result<TcpListener, ServeError> {
    if !addr.ip().is_loopback() && options.auth.is_none() {
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
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    type Flight = FlightServiceServer<WithGetSchema>;
    let flight_sql = WithGetSchema(TributaryFlightSql::new(
        engine,
        options.auth.clone(),
        Arc::clone(&options.metrics),
    ));
    let service = Flight::new(flight_sql)
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
    let mut server = Server::builder();
    if let Some(tls) = options.tls {
        server = server.tls_config(tls).map_err(|e| ServeError::Tls {
            key: "server.tls",
            message: format!("cannot use the certificate and key: {}", chain(&e)),
        })?;
    }
    server
        .layer(GuardLayer::new(options.auth, options.metrics))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, draining)
        .await?;
    Ok(())
}
