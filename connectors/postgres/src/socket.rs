//! Opening connections ourselves, so that every connection's reads pass through
//! [`CopyCoalescing`], encrypted or not.
//!
//! tokio-postgres's own `connect` reads a plaintext connection from a socket it keeps to
//! itself; only a TLS stream could be wrapped. So this opens the socket as it would (each
//! host in turn, each of its addresses, the connect timeout, TCP keepalives and user
//! timeout, `load_balance_hosts` and `target_session_attrs`), and hands it to
//! `connect_raw`, which does the rest (TLS negotiation, authentication, startup).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryFutureExt;
use futures::future::MapOk;
use socket2::{SockRef, TcpKeepalive};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode, TargetSessionAttrs};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{CancelToken, Client, Config, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;
use tributary_core::random_fraction;

use crate::coalesce::CopyCoalescing;

/// A byte stream to the server. (An enum, not a trait object: the lifetime a boxed one
/// carries defeats the `Send` proofs of the futures that hold it.)
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix-domain socket.
    Unix(UnixStream),
}

/// A connection's socket, read through the merging layer.
pub type Socket = CopyCoalescing<Stream>;

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The settings name no place to connect to, or cannot be used.
    Settings(String),
    /// The socket could not be opened (or the name not resolved).
    Socket(io::Error),
    /// The place did not answer within the connect timeout.
    TimedOut(Duration),
    /// The server refused, or the protocol failed.
    Postgres(tokio_postgres::Error),
    /// The server is not what `target_session_attrs` asks for.
    Session(String),
    /// Every place tried failed: where, and why, in the order tried.
    Failed(Vec<(String, ConnectError)>),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Settings(m) | ConnectError::Session(m) => f.write_str(m),
            ConnectError::Socket(e) => write!(f, "cannot open a connection: {e}"),
            ConnectError::TimedOut(limit) => {
                write!(f, "no answer within the connect timeout ({limit:?})")
            }
            ConnectError::Postgres(e) => f.write_str(&crate::connect::describe_error(e)),
            ConnectError::Failed(failures) => {
                for (i, (at, e)) in failures.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{at}: {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectError::Postgres(e)
    }
}

/// An open connection: the client, the task that drives its socket, and where it
/// leads (where a cancel for it goes).
///
/// Dropping it drops the client, upon which the driver says goodbye to the server
/// (`Terminate`) and ends; [`Connection::abort`] stops the driver at once instead.
pub struct Connection {
    client: Client,
    driver: JoinHandle<()>,
    place: Target,
    /// Set before a transaction is opened and cleared once it has ended: a connection
    /// given up halfway (its query dropped or failed) must not go back to the pool inside
    /// it, where the next query would run in someone else's snapshot, or fail.
    in_transaction: AtomicBool,
}

impl Connection {
    /// Closes the connection without reading what the server is still sending (a `COPY`
    /// no one wants any more), which an ordinary drop would read to its end first.
    pub fn abort(self) {
        self.driver.abort();
    }

    /// Where the connection leads.
    pub fn place(&self) -> &Target {
        &self.place
    }

    /// Runs `sql`, which opens a transaction. Until [`end`](Self::end) succeeds, the
    /// connection counts as inside it, even if `sql` itself failed halfway.
    pub async fn begin(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.in_transaction.store(true, Ordering::SeqCst);
        self.client.batch_execute(sql).await
    }

    /// Runs `sql` (`COMMIT` or `ROLLBACK`), which ends the transaction.
    pub async fn end(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await?;
        self.in_transaction.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a transaction [`begin`](Self::begin) opened has not ended.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::SeqCst)
    }
}

impl std::ops::Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({})", self.place)
    }
}

/// One place to try: where to open the socket and the name TLS checks the certificate
/// against.
#[derive(Debug, Clone)]
pub struct Target {
    address: Address,
    port: u16,
    tls_name: Option<String>,
}

#[derive(Debug, Clone)]
enum Address {
    Name(String),
    Ip(IpAddr),
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Address::Name(name) => write!(f, "{name}:{}", self.port),
            Address::Ip(ip) => {
                let at = std::net::SocketAddr::new(*ip, self.port);
                match &self.tls_name {
                    Some(name) if name.parse::<IpAddr>().ok() != Some(*ip) => {
                        write!(f, "{name}:{} ({at})", self.port)
                    }
                    _ => write!(f, "{at}"),
                }
            }
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Opens connections to the server(s) one source's settings name.
#[derive(Clone)]
pub struct Opener {
    pg: Config,
    tls: MakeRustlsConnect,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the settings: they hold the password.
        f.write_str("Opener")
    }
}

impl Opener {
    /// Checks that `pg` names somewhere to connect to.
    pub fn new(pg: Config, tls: MakeRustlsConnect) -> Result<Self, String> {
        targets(&pg)?;
        Ok(Opener { pg, tls })
    }

    /// Connects to the first place that accepts, in the order of the settings (shuffled
    /// with `load_balance_hosts=random`), each address of a name in turn, and starts
    /// driving the connection. As in libpq, the connect timeout applies to each place
    /// separately and covers the whole startup (socket, TLS, authentication, the
    /// `target_session_attrs` check).
    pub async fn open(&self) -> Result<Connection, ConnectError> {
        let limit = self.pg.get_connect_timeout().copied();
        let mut failures = Vec::new();
        for target in self.targets()? {
            let places = match within(limit, self.resolve(&target)).await {
                Ok(places) => places,
                Err(e) => {
                    failures.push((target.to_string(), e));
                    continue;
                }
            };
            for place in places {
                match within(limit, self.open_at(&place)).await {
                    Ok(connection) => return Ok(connection),
                    Err(e) => failures.push((place.to_string(), e)),
                }
            }
        }
        Err(ConnectError::Failed(failures))
    }

    /// Asks the server at `place` (where the token's connection leads) to cancel what
    /// that connection runs.
    pub async fn cancel(&self, token: &CancelToken, place: &Target) -> Result<(), ConnectError> {
        let limit = self.pg.get_connect_timeout().copied();
        within(limit, async {
            let socket = self.socket(place).await?;
            let tls = self.tls_for(place)?;
            token.cancel_query_raw(socket, tls).await?;
            Ok(())
        })
        .await
        .map_err(|e| ConnectError::Failed(vec![(place.to_string(), e)]))
    }

    fn targets(&self) -> Result<Vec<Target>, ConnectError> {
        let mut targets = targets(&self.pg).map_err(ConnectError::Settings)?;
        if self.pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
            shuffle(&mut targets);
        }
        Ok(targets)
    }

    /// The addresses a host name stands for (shuffled with `load_balance_hosts=random`,
    /// as libpq does); other targets are one place already.
    async fn resolve(&self, target: &Target) -> Result<Vec<Target>, ConnectError> {
        let Address::Name(name) = &target.address else {
            return Ok(vec![target.clone()]);
        };
        let mut places = tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(ConnectError::Socket)?
            .map(|addr| Target {
                address: Address::Ip(addr.ip()),
                ..target.clone()
            })
            .collect::<Vec<_>>();
        if places.is_empty() {
            return Err(ConnectError::Socket(io::Error::new(
                io::ErrorKind::NotFound,
                "the name resolves to no address",
            )));
        }
        if self.pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
            shuffle(&mut places);
        }
        Ok(places)
    }

    fn tls_for(&self, place: &Target) -> Result<MergeAfterTls, ConnectError> {
        let mut make = self.tls.clone();
        // Without a host name, the certificate is checked against the address.
        let name = match (&place.tls_name, &place.address) {
            (Some(name), _) => name.clone(),
            (None, Address::Ip(ip)) => ip.to_string(),
            (None, _) => String::new(),
        };
        let tls = <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(&mut make, &name)
            .map_err(|e| ConnectError::Settings(format!("TLS: {e}")))?;
        Ok(MergeAfterTls(tls))
    }

    /// Whether the connection to `place` starts by asking for TLS: libpq does not encrypt
    /// Unix-socket connections, whatever `sslmode` says.
    fn asks_for_tls(&self, place: &Target) -> bool {
        !matches!(place.address, Address::Unix(_)) && self.pg.get_ssl_mode() != SslMode::Disable
    }

    /// The settings for `place`: TLS turned off where it is not asked for.
    fn settings_for(&self, place: &Target) -> std::borrow::Cow<'_, Config> {
        if self.asks_for_tls(place) || self.pg.get_ssl_mode() == SslMode::Disable {
            std::borrow::Cow::Borrowed(&self.pg)
        } else {
            let mut pg = self.pg.clone();
            pg.ssl_mode(SslMode::Disable);
            std::borrow::Cow::Owned(pg)
        }
    }

    async fn open_at(&self, place: &Target) -> Result<Connection, ConnectError> {
        let socket = self.socket(place).await?;
        let tls = self.tls_for(place)?;
        let (client, connection) = self.settings_for(place).connect_raw(socket, tls).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL connection ended with an error");
            }
        });
        let connection = Connection {
            client,
            driver,
            place: place.clone(),
            in_transaction: AtomicBool::new(false),
        };
        check_session(&connection, self.pg.get_target_session_attrs()).await?;
        Ok(connection)
    }

    /// Opens the socket to `place` (an address or a Unix socket), with the settings' TCP
    /// options. The reads are merged from the first message; the answer to `SSLRequest`,
    /// if one is sent, passes first.
    async fn socket(&self, place: &Target) -> Result<Socket, ConnectError> {
        let io = match &place.address {
            Address::Unix(path) => Stream::Unix(
                UnixStream::connect(path)
                    .await
                    .map_err(ConnectError::Socket)?,
            ),
            Address::Ip(ip) => Stream::Tcp(
                self.tcp((*ip, place.port).into())
                    .await
                    .map_err(ConnectError::Socket)?,
            ),
            Address::Name(_) => unreachable!("names are resolved to addresses first"),
        };
        Ok(if self.asks_for_tls(place) {
            CopyCoalescing::before_ssl_request(io)
        } else {
            CopyCoalescing::new(io)
        })
    }

    async fn tcp(&self, addr: std::net::SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let socket = SockRef::from(&stream);
        #[cfg(target_os = "linux")]
        if let Some(limit) = self.pg.get_tcp_user_timeout() {
            socket.set_tcp_user_timeout(Some(*limit))?;
        }
        if self.pg.get_keepalives() {
            let mut keepalive = TcpKeepalive::new().with_time(self.pg.get_keepalives_idle());
            if let Some(interval) = self.pg.get_keepalives_interval() {
                keepalive = keepalive.with_interval(interval);
            }
            if let Some(retries) = self.pg.get_keepalives_retries() {
                keepalive = keepalive.with_retries(retries);
            }
            socket.set_tcp_keepalive(&keepalive)?;
        }
        Ok(stream)
    }
}

async fn within<T>(
    limit: Option<Duration>,
    attempt: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| ConnectError::TimedOut(limit))?,
        None => attempt.await,
    }
}

/// Refuses a server whose read-only state is not what `target_session_attrs` asks for.
async fn check_session(client: &Client, wanted: TargetSessionAttrs) -> Result<(), ConnectError> {
    let want_read_only = match wanted {
        TargetSessionAttrs::ReadWrite => false,
        TargetSessionAttrs::ReadOnly => true,
        _ => return Ok(()),
    };
    let rows = client.simple_query("SHOW transaction_read_only").await?;
    let read_only = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "on"),
        _ => None,
    });
    let name = |read_only: bool| if read_only { "read-only" } else { "read-write" };
    match read_only {
        Some(read_only) if read_only == want_read_only => Ok(()),
        Some(read_only) => Err(ConnectError::Session(format!(
            "the server is {}, and target_session_attrs asks for {}",
            name(read_only),
            name(want_read_only)
        ))),
        None => Err(ConnectError::Session(format!(
            "the server did not say whether it is read-only, and target_session_attrs asks for {}",
            name(want_read_only)
        ))),
    }
}

/// The places to try, in order, paired as libpq pairs `host`, `hostaddr` and `port`.
fn targets(pg: &Config) -> Result<Vec<Target>, String> {
    let (hosts, addrs, ports) = (pg.get_hosts(), pg.get_hostaddrs(), pg.get_ports());
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        ));
    }
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Err("no host to connect to".into());
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(format!("{count} hosts but {} ports", ports.len()));
    }
    Ok((0..count)
        .map(|i| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let host = hosts.get(i);
            let address = match (addrs.get(i), host) {
                (Some(ip), _) => Address::Ip(*ip),
                (None, Some(Host::Tcp(name))) => Address::Name(name.clone()),
                (None, Some(Host::Unix(dir))) => {
                    Address::Unix(dir.join(format!(".s.PGSQL.{port}")))
                }
                (None, None) => unreachable!("`count` is the longer list's length"),
            };
            let tls_name = match host {
                Some(Host::Tcp(name)) => Some(name.clone()),
                _ => None,
            };
            Target {
                address,
                port,
                tls_name,
            }
        })
        .collect())
}

fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = ((random_fraction() * (i + 1) as f64) as usize).min(i);
        items.swap(i, j);
    }
}

/// rustls's connector for this crate's sockets.
type RustlsFor = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

/// Starts TLS over the socket, which then stops interpreting the (encrypted) bytes, and
/// merges the decrypted ones instead.
pub struct MergeAfterTls(RustlsFor);

/// The stream TLS gives: rustls's, over the socket.
type RustlsStream = <RustlsFor as TlsConnect<Socket>>::Stream;

impl TlsConnect<Socket> for MergeAfterTls {
    type Stream = CopyCoalescing<RustlsStream>;
    type Error = <RustlsFor as TlsConnect<Socket>>::Error;
    type Future = MapOk<
        <RustlsFor as TlsConnect<Socket>>::Future,
        fn(RustlsStream) -> CopyCoalescing<RustlsStream>,
    >;

    fn connect(self, stream: Socket) -> Self::Future {
        self.0
            .connect(stream.into_opaque())
            .map_ok(CopyCoalescing::new as fn(_) -> _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(settings: &str) -> Result<Vec<String>, String> {
        let pg: Config = settings.parse().map_err(|e| format!("{e}"))?;
        targets(&pg).map(|t| {
            t.iter()
                .map(|t| format!("{t} tls={}", t.tls_name.as_deref().unwrap_or("-")))
                .collect()
        })
    }

    #[test]
    fn hosts_pair_with_their_addresses_and_ports_as_in_libpq() {
        assert_eq!(
            places("host=a,b port=1,2").unwrap(),
            ["a:1 tls=a", "b:2 tls=b"]
        );
        // One port serves every host; without one, 5432.
        assert_eq!(
            places("host=a,b port=7").unwrap(),
            ["a:7 tls=a", "b:7 tls=b"]
        );
        assert_eq!(places("host=a").unwrap(), ["a:5432 tls=a"]);
        // A URL's host and port come first, its `host` and `port` parameters after.
        assert_eq!(
            places("postgres://u@127.0.0.1:1/db?host=localhost&port=5432").unwrap(),
            ["127.0.0.1:1 tls=127.0.0.1", "localhost:5432 tls=localhost"]
        );
        // `hostaddr` is where to connect; `host` stays the name TLS checks.
        assert_eq!(
            places("host=db.example hostaddr=127.0.0.1").unwrap(),
            ["db.example:5432 (127.0.0.1:5432) tls=db.example"]
        );
        assert_eq!(places("hostaddr=::1 port=6").unwrap(), ["[::1]:6 tls=-"]);
        // A directory is a Unix socket, named by the port.
        assert_eq!(
            places("host=/var/run/postgresql port=5433").unwrap(),
            ["/var/run/postgresql/.s.PGSQL.5433 tls=-"]
        );
        assert_eq!(
            places("host=a,b hostaddr=127.0.0.1").unwrap_err(),
            "2 hosts but 1 hostaddrs"
        );
        assert_eq!(
            places("host=a,b,c port=1,2").unwrap_err(),
            "3 hosts but 2 ports"
        );
        assert_eq!(places("user=x").unwrap_err(), "no host to connect to");
    }
}
