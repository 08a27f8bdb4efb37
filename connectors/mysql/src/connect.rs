//! Connecting: settings from the config, TLS with rustls, the pool, and the session every
//! connection is set up with.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};
use tokio::sync::OwnedSemaphorePermit;
use tributary_core::remote::connections::{Reservation, Slots};
use tributary_core::{Error, Result};

use crate::config::{MysqlConfig, SslMode};

/// Which server family is on the other end; decides the few session settings that are
/// spelled differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MySQL.
    Mysql,
    /// MariaDB.
    Mariadb,
}

/// A pool of connections to one MySQL or MariaDB server.
#[derive(Clone)]
pub struct Connector {
    pool: Pool,
    /// What the pool connects with, for the connections made outside it.
    opts: Opts,
    /// For `ssl-mode: preferred`: the plain-text pool (and its options) used once the
    /// server turns out not to offer TLS.
    plain: Option<(Pool, Opts, Arc<AtomicBool>)>,
    /// One permit per connection the pool may open. Work that needs several connections
    /// at once takes all their permits together ([`Reservation`]), so two such pieces of
    /// work never each hold some and wait for the rest.
    slots: Slots,
    /// `user@host:port`, for messages; never the password.
    target: String,
    connect_timeout: Duration,
    /// The flavor, learned on the first connection (0 = not yet known).
    flavor: Arc<AtomicU8>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({})", self.target)
    }
}

/// What every connection runs first, so the server's answers mean what the pushdown rules
/// and the decoder assume: UTF-8 results, timestamps in UTC, `'…'` literals without
/// backslash escapes (as the unparser writes them) and `||` as concatenation.
///
/// MariaDB (10.3.18 on; the `/*M!…*/` part is a comment to MySQL and older MariaDB) is
/// also told to keep long `IN` lists as lists. It otherwise turns a list of 1,000 values
/// or more, such as a dynamic filter's join keys, into a subquery it joins by looking up
/// every value, even those outside the partition's key range beside it: in TPC-H q21 each
/// of two partitions looked up all 72,110 order keys of `lineitem` (5.8 s), where the
/// range optimizer reads just its own half in key order (2.1 s). Lists on columns without
/// an index were faster as lists too (binary search).
const SESSION: &str = "SET NAMES utf8mb4, time_zone = '+00:00', \
    sql_mode = CONCAT_WS(',', @@sql_mode, 'NO_BACKSLASH_ESCAPES', 'PIPES_AS_CONCAT') \
    /*M!100318 , in_predicate_conversion_threshold = 0 */";

/// How long an idle pooled connection stays open (the pool checks every 30 seconds).
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

impl Connector {
    /// Builds the pool from the config (`key` is the source's config path). Nothing is
    /// connected until a connection is asked for.
    pub fn new(config: &MysqlConfig, key: &str, config_dir: &Path) -> Result<Self> {
        let settings = Settings::from_config(config, key)?;
        let target = format!("{}@{}:{}", settings.user, settings.host, settings.port);
        let max = config.pool_size.max(1);
        let constraints = PoolConstraints::new(0, max)
            .ok_or_else(|| Error::config(format!("{key}.pool_size"), "expected 1 or more"))?;
        let ssl = ssl_opts(
            settings.ssl_mode,
            config
                .ssl_ca
                .as_ref()
                .map(|p| config_dir.join(p))
                .as_deref(),
        );
        let flavor = Arc::new(AtomicU8::new(0));
        let timeout = config.statement_timeout;
        let seen = Arc::clone(&flavor);
        let opts = OptsBuilder::default()
            .ip_or_hostname(settings.host.clone())
            .tcp_port(settings.port)
            .user(Some(settings.user.clone()))
            .pass(settings.password.clone())
            .db_name(settings.database.clone())
            .ssl_opts(ssl)
            .tcp_nodelay(true)
            // Scans run as prepared statements, which stay open on the server until closed:
            // a bounded cache closes the least recently used (0 would close none).
            .stmt_cache_size(16)
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    // With no idle time to live, the pool keeps no more idle connections
                    // than its minimum (0): every connection was closed after one query.
                    .with_inactive_connection_ttl(IDLE_CONNECTION_TTL)
                    // Sessions are never changed after setup; resetting would undo it.
                    .with_reset_connection(false),
            )
            .after_connect(move |conn: &mut Conn| {
                let seen = Arc::clone(&seen);
                Box::pin(async move {
                    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
                    let mariadb = version.is_some_and(|v| v.contains("MariaDB"));
                    seen.store(if mariadb { 2 } else { 1 }, Ordering::Relaxed);
                    conn.query_drop(SESSION).await?;
                    if let Some(t) = timeout {
                        let set = if mariadb {
                            format!("SET max_statement_time = {}", t.as_secs_f64())
                        } else {
                            format!("SET max_execution_time = {}", t.as_millis().max(1))
                        };
                        conn.query_drop(set).await?;
                    }
                    Ok(())
                })
            });
        let opts = Opts::from(opts);
        let plain = (settings.ssl_mode == SslMode::Preferred).then(|| {
            let plain = Opts::from(OptsBuilder::from_opts(opts.clone()).ssl_opts(None::<SslOpts>));
            (
                Pool::new(plain.clone()),
                plain,
                Arc::new(AtomicBool::new(false)),
            )
        });
        Ok(Connector {
            pool: Pool::new(opts.clone()),
            opts,
            plain,
            slots: Slots::new(max, config.pool_timeout, key),
            target,
            connect_timeout: config.connect_timeout,
            flavor,
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
    /// wait for another holder's connection: there are as many places as connections.
    async fn take(&self, place: OwnedSemaphorePermit) -> Result<Pooled> {
        let conn = self.connect(true).await?;
        Ok(Pooled { conn, place })
    }

    /// A connection from the pool (`pooled`) or one of its own, over plain TCP from then
    /// on if `ssl-mode: preferred` meets a server without TLS.
    async fn connect(&self, pooled: bool) -> Result<Conn> {
        let (pool, opts) = match &self.plain {
            Some((plain, opts, chosen)) if chosen.load(Ordering::Relaxed) => (plain, opts),
            _ => (&self.pool, &self.opts),
        };
        let opening = async {
            if pooled {
                pool.get_conn().await
            } else {
                Conn::new(opts.clone()).await
            }
        };
        match tokio::time::timeout(self.connect_timeout, opening).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            ))) if self.plain.is_some() => {
                if let Some((_, _, chosen)) = &self.plain {
                    chosen.store(true, Ordering::Relaxed);
                }
                Box::pin(self.connect(pooled)).await
            }
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "cannot connect to {}: {}",
                self.target,
                describe_error(&e)
            ))),
            Err(_) => Err(Error::Unavailable(format!(
                "cannot connect to {}: connecting timed out after {}",
                self.target,
                humantime::format_duration(self.connect_timeout)
            ))),
        }
    }

    /// Asks the server to stop what connection `id` is running. Best effort: the query may
    /// already have finished. Over a connection of its own, outside the pool: the query
    /// to stop may hold the pool's last connection.
    pub async fn kill_query(&self, id: u32) {
        let result = match self.connect(false).await {
            Ok(mut conn) => {
                let killed = conn
                    .query_drop(format!("KILL QUERY {id}"))
                    .await
                    .map_err(|e| describe_error(&e));
                let _ = conn.disconnect().await;
                killed
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "stopping a MySQL query failed");
        }
    }

    /// The server family, once a connection has been made.
    pub fn flavor(&self) -> Option<Flavor> {
        match self.flavor.load(Ordering::Relaxed) {
            1 => Some(Flavor::Mysql),
            2 => Some(Flavor::Mariadb),
            _ => None,
        }
    }

    /// The most connections the pool opens.
    pub fn max_connections(&self) -> usize {
        self.slots.size()
    }

    /// `user@host:port`.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// A connection taken from the pool, returned to it when dropped.
pub struct Pooled {
    // Declared first, so dropped first: the connection is on its way back to the pool
    // before its place goes to whoever waits for one.
    conn: Conn,
    place: OwnedSemaphorePermit,
}

impl Pooled {
    /// The connection, and its place in the pool: held for as long as the connection is
    /// (a query that owns its connection until its rows are read).
    pub fn into_parts(self) -> (Conn, OwnedSemaphorePermit) {
        (self.conn, self.place)
    }
}

impl Deref for Pooled {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// The text of a MySQL error: the server's code and message, or the client library's
/// message (which never carries the password).
pub fn describe_error(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("{} (error {})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Connection settings after merging the URL with the separate fields.
struct Settings {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: Option<String>,
    ssl_mode: SslMode,
}

impl Settings {
    fn from_config(config: &MysqlConfig, key: &str) -> Result<Settings> {
        let url_key = || format!("{key}.url");
        let mut s = Settings {
            host: String::new(),
            port: 3306,
            user: String::new(),
            password: None,
            database: None,
            ssl_mode: SslMode::Preferred,
        };
        if let Some(url) = &config.url {
            // The parse error text never includes the URL (and so the password).
            let parsed = url::Url::parse(url.expose())
                .map_err(|e| Error::config(url_key(), format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "mysql" | "mariadb") {
                return Err(Error::config(
                    url_key(),
                    format!("expected a mysql:// URL, got scheme `{}`", parsed.scheme()),
                ));
            }
            s.host = parsed.host_str().unwrap_or_default().to_string();
            s.port = parsed.port().unwrap_or(3306);
            s.user = decode(parsed.username());
            s.password = parsed.password().map(decode);
            let path = parsed.path().trim_start_matches('/');
            s.database = (!path.is_empty()).then(|| decode(path));
            for (name, value) in parsed.query_pairs() {
                match name.as_ref() {
                    "ssl-mode" | "ssl_mode" | "sslmode" => {
                        s.ssl_mode = parse_ssl_mode(&value).ok_or_else(|| {
                            Error::config(
                                url_key(),
                                format!(
                                    "unknown ssl-mode `{value}` (expected disabled, preferred, required, verify-ca or verify-identity)"
                                ),
                            )
                        })?;
                    }
                    other => {
                        return Err(Error::config(
                            url_key(),
                            format!(
                                "unknown URL parameter `{other}` (only `ssl-mode` is read; use the source's keys)"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(host) = &config.host {
            s.host = host.clone();
        }
        if let Some(port) = config.port {
            s.port = port;
        }
        if let Some(user) = &config.user {
            s.user = user.clone();
        }
        if let Some(password) = &config.password {
            s.password = Some(password.expose().to_string());
        }
        if let Some(database) = &config.database {
            s.database = Some(database.clone());
        }
        if let Some(mode) = config.ssl_mode {
            s.ssl_mode = mode;
        }
        if s.host.is_empty() {
            return Err(Error::config(key, "give `host` or `url`"));
        }
        if s.user.is_empty() {
            return Err(Error::config(key, "give `user` (or a user in `url`)"));
        }
        Ok(s)
    }
}

/// A URL part with its `%XX` escapes decoded (`+` stays a plus, as in any URL's user info).
fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_ssl_mode(text: &str) -> Option<SslMode> {
    Some(match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "disabled" | "disable" => SslMode::Disabled,
        "preferred" | "prefer" => SslMode::Preferred,
        "required" | "require" => SslMode::Required,
        "verify-ca" => SslMode::VerifyCa,
        "verify-identity" | "verify-full" => SslMode::VerifyIdentity,
        _ => return None,
    })
}

/// TLS options for `mode`; `preferred` asks for TLS without checking the certificate and
/// falls back to plain text when the server offers no TLS.
fn ssl_opts(mode: SslMode, ca: Option<&Path>) -> Option<SslOpts> {
    let base = || {
        let opts = SslOpts::default();
        match ca {
            Some(path) => opts.with_root_certs(vec![path.to_path_buf().into()]),
            None => opts,
        }
    };
    match mode {
        SslMode::Disabled => None,
        SslMode::Preferred | SslMode::Required => Some(
            base()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyCa => Some(base().with_danger_skip_domain_validation(true)),
        SslMode::VerifyIdentity => Some(base()),
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn url_parts_are_percent_decoded_only() {
        assert_eq!(decode("p%40ss+w%2Frd"), "p@ss+w/rd");
    }
}
