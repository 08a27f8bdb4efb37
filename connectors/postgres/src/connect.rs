//! Connecting: the libpq-style settings, TLS with rustls, and the connection pool.

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use deadpool::Runtime;
use deadpool::managed::{Metrics, PoolError, RecycleError, RecycleResult};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tributary_core::remote::connections::{Reservation, Slots};
use tributary_core::{Error, Result};

use crate::config::{PostgresConfig, SslMode};
use crate::socket::{ConnectError, Connection, Opener};

/// A pooled connection.
type Object = deadpool::managed::Object<Manager>;

/// Opens and recycles the pool's connections.
#[derive(Debug)]
pub struct Manager(Opener);

impl deadpool::managed::Manager for Manager {
    type Type = Connection;
    type Error = ConnectError;

    async fn create(&self) -> std::result::Result<Connection, ConnectError> {
        self.0.open().await
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<ConnectError> {
        if conn.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        if conn.in_transaction() {
            return Err(RecycleError::message(
                "the connection was given up inside a transaction",
            ));
        }
        Ok(())
    }
}

/// A pool of connections to one PostgreSQL database.
#[derive(Clone)]
pub struct Connector {
    pool: deadpool::managed::Pool<Manager>,
    /// One permit per connection the pool may open. Work that needs several connections
    /// at once takes all their permits together ([`Reservation`]), so two such pieces of
    /// work never each hold some and wait for the rest.
    slots: Slots,
    opener: Opener,
    /// `user@host:port/database`, for messages; never the password.
    target: String,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({})", self.target)
    }
}

impl Connector {
    /// Builds the pool from the config (`key` is the source's config path). Nothing is
    /// connected until a connection is asked for.
    pub fn new(config: &PostgresConfig, key: &str, config_dir: &Path) -> Result<Self> {
        let (pg, sslmode, rootcert) = pg_config(config, key)?;
        let rootcert = rootcert.map(|p| config_dir.join(p));
        let tls = tls_config(sslmode, rootcert.as_deref())
            .map_err(|m| Error::config(format!("{key}.sslrootcert"), m))?;
        let target = describe(&pg);
        let opener = Opener::new(pg, MakeRustlsConnect::new(tls))
            .map_err(|m| Error::config(format!("{key}.url"), m))?;
        let size = config.pool_size.max(1);
        let pool = deadpool::managed::Pool::builder(Manager(opener.clone()))
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::config(format!("{key}.pool_size"), e.to_string()))?;
        Ok(Connector {
            pool,
            slots: Slots::new(size, config.pool_timeout, key),
            opener,
            target,
        })
    }

    /// A connection from the pool, opening one if needed.
    pub async fn get(&self) -> Result<Pooled> {
        let place = self.slots.one().await?;
        self.take(place).await
    }

    /// A reservation of `wanted` connections held together (see [`Reservation`]).
    pub fn reservation(&self, wanted: usize) -> Reservation {
        self.slots.reservation(wanted)
    }

    /// A connection of `reservation`: the first reserves all of them at once.
    pub async fn get_reserved(&self, reservation: &Reservation) -> Result<Pooled> {
        let place = reservation.take().await?;
        self.take(place).await
    }

    /// A connection from the pool for the holder of `place`. The pool never makes it
    /// wait: there are as many places as connections.
    async fn take(&self, place: OwnedSemaphorePermit) -> Result<Pooled> {
        let object = self.pool.get().await.map_err(|e| {
            let reason = match e {
                PoolError::Backend(e) => e.to_string(),
                PoolError::Timeout(_) => "timed out waiting for a connection".to_string(),
                other => other.to_string(),
            };
            Error::Unavailable(format!("cannot connect to {}: {reason}", self.target))
        })?;
        Ok(Pooled {
            object,
            _place: place,
        })
    }

    /// Asks the server `conn` reached to cancel what it is running. Best effort: the
    /// query may already have finished.
    pub fn cancel(&self, conn: &Connection) {
        let opener = self.opener.clone();
        let (token, place) = (conn.cancel_token(), conn.place().clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = opener.cancel(&token, &place).await {
                    tracing::debug!(error = %e, "cancelling a PostgreSQL query failed");
                }
            });
        }
    }

    /// The most connections the pool opens.
    pub fn max_connections(&self) -> usize {
        self.slots.size()
    }

    /// `user@host:port/database`.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// A connection taken from the pool, returned to it when dropped.
pub struct Pooled {
    // Declared first, so dropped first: the connection is back in the pool before its
    // place goes to whoever waits for one.
    object: Object,
    _place: OwnedSemaphorePermit,
}

impl Pooled {
    /// Closes the connection without reading what the server is still sending (a `COPY`
    /// no one wants any more) and without returning it to the pool.
    pub fn abort(self) {
        Object::take(self.object).abort();
    }

    /// Closes the connection rather than return it to the pool.
    pub fn close(self) {
        drop(Object::take(self.object));
    }
}

impl Deref for Pooled {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.object
    }
}

impl fmt::Debug for Pooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.object, f)
    }
}

/// The text of a PostgreSQL error: the server's message with its detail and hint, or the
/// client library's message (which never carries the password).
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = db.message().to_string();
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn describe(pg: &tokio_postgres::Config) -> String {
    let host = pg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        pg.get_user().unwrap_or(""),
        pg.get_dbname().unwrap_or("")
    )
}

/// The client settings: the URL (minus the `sslmode`/`sslrootcert` parameters, which are
/// handled here because tokio-postgres does not know `verify-ca`/`verify-full`), then the
/// individual fields, then the session settings every connection gets.
fn pg_config(
    config: &PostgresConfig,
    key: &str,
) -> Result<(tokio_postgres::Config, SslMode, Option<String>)> {
    let mut sslmode = None;
    let mut rootcert = None;
    let mut pg = match &config.url {
        Some(url) => {
            let mut parsed = url::Url::parse(url.expose())
                .map_err(|e| Error::config(format!("{key}.url"), format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "postgres" | "postgresql") {
                return Err(Error::config(
                    format!("{key}.url"),
                    format!(
                        "expected a postgres:// URL, got a {}:// one",
                        parsed.scheme()
                    ),
                ));
            }
            // Parameters other than the two TLS ones are kept as written: re-encoding
            // them as a form would turn `%20` into `+`, which tokio-postgres does not
            // read as a space.
            let mut kept = Vec::new();
            for pair in parsed.query().unwrap_or_default().split('&') {
                let decoded = url::form_urlencoded::parse(pair.as_bytes()).next();
                match decoded.as_ref().map(|(k, v)| (k.as_ref(), v)) {
                    Some(("sslmode", v)) => sslmode = Some(parse_sslmode(v, key)?),
                    Some(("sslrootcert", v)) => rootcert = Some(v.to_string()),
                    // libpq reads a list of hosts here, tokio-postgres one host per
                    // parameter.
                    Some(("host", _)) => {
                        let (_, hosts) = pair.split_once('=').unwrap_or_default();
                        kept.extend(hosts.split(',').map(|host| format!("host={host}")));
                    }
                    Some(_) => kept.push(pair.to_string()),
                    None => {}
                }
            }
            parsed.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
            parsed
                .as_str()
                .parse::<tokio_postgres::Config>()
                .map_err(|e| {
                    Error::config(format!("{key}.url"), format!("not a PostgreSQL URL: {e}"))
                })?
        }
        None => tokio_postgres::Config::new(),
    };
    if let Some(host) = &config.host {
        pg.host(host);
    }
    if pg.get_hosts().is_empty() {
        return Err(Error::config(key, "give `host` or `url`"));
    }
    if let Some(port) = config.port {
        pg.port(port);
    }
    if let Some(user) = &config.user {
        pg.user(user);
    }
    if pg.get_user().is_none() {
        return Err(Error::config(key, "give `user` (or a user in `url`)"));
    }
    if let Some(password) = &config.password {
        pg.password(password.expose());
    }
    if let Some(database) = &config.database {
        pg.dbname(database);
    }
    if pg.get_dbname().is_none() {
        let user = pg.get_user().unwrap_or_default().to_string();
        pg.dbname(user);
    }
    let sslmode = config.sslmode.or(sslmode).unwrap_or(SslMode::Prefer);
    pg.ssl_mode(match sslmode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    pg.connect_timeout(config.connect_timeout);
    pg.keepalives(true);
    pg.application_name("tributary");
    let options = session_options(config, pg.get_options(), key)?;
    pg.options(options);
    Ok((pg, sslmode, config.sslrootcert.clone().or(rootcert)))
}

/// Settings `settings` may not name: reading depends on the first three (they are sent
/// last, so they also win over `url` options), and `statement_timeout` has its own key.
const FIXED_SETTINGS: [(&str, &str); 4] = [
    ("timezone", "timestamps are read as UTC instants"),
    ("extra_float_digits", "floats are read with full precision"),
    ("client_encoding", "text is read as UTF-8"),
    (
        "statement_timeout",
        "set it with the source's `statement_timeout` key",
    ),
];

/// The startup `options` (`-c name=value` each): the URL's own `options` first, then the
/// source's `settings`, then the ones reading depends on, so that later ones win.
fn session_options(
    config: &PostgresConfig,
    url_options: Option<&str>,
    key: &str,
) -> Result<String> {
    let mut options = url_options.unwrap_or_default().trim().to_string();
    let mut set = |name: &str, value: &str| {
        if !options.is_empty() {
            options.push(' ');
        }
        // libpq splits `options` at spaces unless a backslash escapes them.
        let value = value.replace('\\', "\\\\").replace(' ', "\\ ");
        options.push_str(&format!("-c {name}={value}"));
    };
    for (name, value) in &config.settings {
        let setting = format!("{key}.settings.{name}");
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'));
        if !valid {
            return Err(Error::config(setting, "not a PostgreSQL setting name"));
        }
        if let Some((_, why)) = FIXED_SETTINGS
            .iter()
            .find(|(fixed, _)| fixed.eq_ignore_ascii_case(name))
        {
            return Err(Error::config(setting, format!("cannot be changed: {why}")));
        }
        set(name, &value.0);
    }
    set("TimeZone", "UTC");
    set("extra_float_digits", "3");
    if let Some(timeout) = config.statement_timeout {
        set("statement_timeout", &timeout.as_millis().to_string());
    }
    Ok(options)
}

fn parse_sslmode(text: &str, key: &str) -> Result<SslMode> {
    Ok(match text {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(Error::config(
                format!("{key}.url"),
                format!("unknown sslmode `{other}`"),
            ));
        }
    })
}

/// rustls settings for `sslmode`, as libpq reads it: `prefer` and `require` encrypt without
/// checking the certificate, `verify-ca` checks the chain, `verify-full` also the host name.
fn tls_config(sslmode: SslMode, rootcert: Option<&Path>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require if rootcert.is_none() => {
            Arc::new(Unverified(provider))
        }
        _ => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // A malformed system certificate should not stop the others from loading.
                let _ = roots.add(cert);
            }
            if let Some(path) = rootcert {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            if sslmode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Encrypts without authenticating the server (`sslmode=prefer|require`), still checking
/// that the handshake is signed by the presented certificate.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the certificate chain but not the host name (`sslmode=verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_lists_hosts_and_ports_as_in_libpq() {
        let config: PostgresConfig = serde_json::from_value(serde_json::json!({
            "url": "postgres://u@a:1/db?host=b,%2Ftmp&port=2,3&sslmode=require&options=-c%20work_mem%3D1MB"
        }))
        .unwrap();
        let (pg, sslmode, _) = pg_config(&config, "sources[0]").unwrap();
        let hosts: Vec<String> = pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        assert_eq!(hosts, ["a", "b", "/tmp"]);
        assert_eq!(pg.get_ports(), [1, 2, 3]);
        assert_eq!(sslmode, SslMode::Require);
        // Kept as written, the session settings reading depends on after it.
        assert!(
            pg.get_options()
                .unwrap()
                .starts_with("-c work_mem=1MB -c TimeZone=UTC"),
            "{:?}",
            pg.get_options()
        );
    }
}
