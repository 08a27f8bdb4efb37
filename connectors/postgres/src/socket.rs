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
    /// The settings name no place to connect to.
    Settings(String),
    /// No socket could be opened to any place; the last failure, naming where.
    Socket(String, io::Error),
    /// The server refused, or the protocol failed.
    Postgres(tokio_postgres::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Settings(m) => f.write_str(m),
            ConnectError::Socket(at, e) if e.kind() == io::ErrorKind::TimedOut => {
                write!(f, "connecting to {at} timed out")
            }
            ConnectError::Socket(at, e) => write!(f, "cannot open a connection to {at}: {e}"),
            ConnectError::Postgres(e) => f.write_str(&crate::connect::describe_error(e)),
        }
    }
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectError::Postgres(e)
    }
}

/// An open connection: the client, and the task that drives its socket (stopped when the
/// client is dropped, so a connection taken out of the pool closes).
pub struct Connection {
    client: Client,
    driver: JoinHandle<()>,
}

impl std::ops::Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connection")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One place to try: where to open the socket and the name TLS checks the certificate
/// against.
#[derive(Debug, Clone)]
struct Target {
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
            Address::Ip(ip) => write!(f, "{ip}:{}", self.port),
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
    /// with `load_balance_hosts=random`), and starts driving the connection.
    pub async fn open(&self) -> Result<Connection, ConnectError> {
        let mut last = None;
        for target in self.targets()? {
            match self.open_at(&target).await {
                Ok(connection) => return Ok(connection),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::Settings("no host to connect to".into())))
    }

    /// Asks the server to cancel what `token`'s connection runs. Sent to every place the
    /// settings name, since the token does not say which one the connection reached; the
    /// others do not know its key and ignore it.
    pub async fn cancel(&self, token: &CancelToken) -> Result<(), ConnectError> {
        let mut failure = None;
        let mut sent = false;
        for target in self.targets()? {
            let attempt = async {
                let socket = self.socket(&target).await?;
                let tls = self.tls_for(&target)?;
                token.cancel_query_raw(socket, tls).await?;
                Ok::<_, ConnectError>(())
            };
            match attempt.await {
                Ok(()) => sent = true,
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if !sent => Err(e),
            _ => Ok(()),
        }
    }

    fn targets(&self) -> Result<Vec<Target>, ConnectError> {
        let mut targets = targets(&self.pg).map_err(ConnectError::Settings)?;
        if self.pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
            shuffle(&mut targets);
        }
        Ok(targets)
    }

    fn tls_for(&self, target: &Target) -> Result<MergeAfterTls, ConnectError> {
        let mut make = self.tls.clone();
        let tls = <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(
            &mut make,
            target.tls_name.as_deref().unwrap_or(""),
        )
        .map_err(|e| ConnectError::Settings(format!("TLS: {e}")))?;
        Ok(MergeAfterTls(tls))
    }

    async fn open_at(&self, target: &Target) -> Result<Connection, ConnectError> {
        let socket = self.socket(target).await?;
        let tls = self.tls_for(target)?;
        let (client, connection) = self.pg.connect_raw(socket, tls).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL connection ended with an error");
            }
        });
        let connection = Connection { client, driver };
        check_session(&connection, self.pg.get_target_session_attrs()).await?;
        Ok(connection)
    }

    /// Opens the socket to `target`, with the settings' timeout and TCP options. The
    /// reads are merged from the first message; the answer to `SSLRequest`, if one is
    /// sent, passes first.
    async fn socket(&self, target: &Target) -> Result<Socket, ConnectError> {
        let timeout = self.pg.get_connect_timeout().copied();
        let failed = |e| ConnectError::Socket(target.to_string(), e);
        let io = match &target.address {
            Address::Unix(path) => Stream::Unix(
                within(timeout, UnixStream::connect(path))
                    .await
                    .map_err(failed)?,
            ),
            Address::Ip(ip) => Stream::Tcp(
                self.tcp((*ip, target.port).into(), timeout)
                    .await
                    .map_err(failed)?,
            ),
            Address::Name(name) => {
                let addrs = tokio::net::lookup_host((name.as_str(), target.port))
                    .await
                    .map_err(failed)?
                    .collect::<Vec<_>>();
                let mut last =
                    io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
                let mut opened = None;
                for addr in addrs {
                    match self.tcp(addr, timeout).await {
                        Ok(stream) => {
                            opened = Some(stream);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                Stream::Tcp(opened.ok_or_else(|| failed(last))?)
            }
        };
        Ok(if self.pg.get_ssl_mode() == SslMode::Disable {
            CopyCoalescing::new(io)
        } else {
            CopyCoalescing::before_ssl_request(io)
        })
    }

    async fn tcp(
        &self,
        addr: std::net::SocketAddr,
        timeout: Option<Duration>,
    ) -> io::Result<TcpStream> {
        let stream = within(timeout, TcpStream::connect(addr)).await?;
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
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?,
        None => connect.await,
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
    if read_only == Some(want_read_only) {
        Ok(())
    } else {
        Err(ConnectError::Settings(format!(
            "the server is {}, and target_session_attrs asks for {}",
            if read_only == Some(true) {
                "read-only"
            } else {
                "writable"
            },
            if want_read_only {
                "read-only"
            } else {
                "read-write"
            },
        )))
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
            ["127.0.0.1:5432 tls=db.example"]
        );
        assert_eq!(places("hostaddr=::1 port=6").unwrap(), ["::1:6 tls=-"]);
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
