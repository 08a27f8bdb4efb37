//! The Flight SQL server's protections and counters: logins and tokens checked on every
//! call, TLS (and client certificates), and the Prometheus endpoint.
//!
//! `tests/fixtures/tls` holds a test CA and a server certificate for `localhost` and
//! `127.0.0.1` and a client certificate it signed, valid until 2126 (the CA's key was
//! discarded).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{ActionCreatePreparedStatementRequest, ProstMessageExt};
use arrow_flight::{
    Action, Criteria, FlightData, FlightDescriptor, HandshakeRequest, PollInfo, Ticket,
};
use futures::TryStreamExt;
use prost::Message;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tributary::server::Options;
use tributary::{Config, Engine};

use crate::common::ServeProcess;
use crate::flight_sql::{Client, code_and_message, query, run_adbc_client, start_with};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls")
}

/// A static token, as the environment would hold it.
const STATIC_TOKEN: &str = "dashboards-0123456789-token";

/// The demo with `server:` settings read from `yaml` (with `${…}` from a fixed
/// environment), and the options they give.
fn configured(yaml: &str) -> (Engine, Options) {
    let env = |name: &str| match name {
        "ETL_PASSWORD" => Some("etl pa:ss".to_string()),
        "DASHBOARD_TOKEN" => Some(STATIC_TOKEN.to_string()),
        "TOKEN_SECRET" => Some("a-secret-shared-by-all-nodes-0123456789".to_string()),
        _ => None,
    };
    let parsed = Config::parse(yaml, None, &env).unwrap();
    let mut config = Config::demo(0.01);
    config.server.auth = parsed.server.auth;
    config.server.tls = parsed.server.tls;
    let options = Options::from_config(&config.server, &fixtures()).unwrap();
    (Engine::new(&config).unwrap(), options)
}

/// Users `ada` (Argon2 hash of `lovelace`), `grace` (bcrypt hash of `hopper`) and `etl`
/// (password from the environment), and a static token.
fn auth_yaml(ttl: &str) -> String {
    let ada = tributary::server::auth::hash_password("lovelace").unwrap();
    let grace = bcrypt::hash("hopper", 4).unwrap();
    format!(
        r#"
server:
  auth:
    token_ttl: {ttl}
    token_secret: ${{TOKEN_SECRET}}
    users:
      - name: ada
        password_hash: "{ada}"
      - name: grace
        password_hash: "{grace}"
      - name: etl
        password: ${{ETL_PASSWORD}}
    tokens:
      - name: dashboards
        token: ${{DASHBOARD_TOKEN}}
"#
    )
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn bearer<T>(mut request: tonic::Request<T>, token: Option<&str>) -> tonic::Request<T> {
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Every kind of call, each with `token` (or none): the code each is answered with.
async fn every_call(
    channel: Channel,
    token: Option<&str>,
    ticket: &Ticket,
) -> Vec<(&'static str, Code)> {
    let mut flight = FlightServiceClient::new(channel);
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let sql = arrow_flight::sql::CommandStatementQuery {
        query: "SELECT 1".into(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(sql.as_any().encode_to_vec());
    let prepare = ActionCreatePreparedStatementRequest {
        query: "SELECT 1".into(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", prepare.as_any().encode_to_vec());
    let data = FlightData::new().with_descriptor(descriptor.clone());
    vec![
        (
            "GetFlightInfo",
            code(
                flight
                    .get_flight_info(bearer(tonic::Request::new(descriptor.clone()), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "PollFlightInfo",
            code(
                flight
                    .poll_flight_info(bearer(tonic::Request::new(descriptor.clone()), token))
                    .await
                    .map(|_: tonic::Response<PollInfo>| ()),
            ),
        ),
        (
            "GetSchema",
            code(
                flight
                    .get_schema(bearer(tonic::Request::new(descriptor.clone()), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "DoGet",
            code(
                match flight
                    .do_get(bearer(tonic::Request::new(ticket.clone()), token))
                    .await
                {
                    Ok(stream) => stream.into_inner().try_collect::<Vec<_>>().await.map(drop),
                    Err(e) => Err(e),
                },
            ),
        ),
        (
            "DoAction",
            code(
                match flight
                    .do_action(bearer(tonic::Request::new(action), token))
                    .await
                {
                    Ok(stream) => stream.into_inner().try_collect::<Vec<_>>().await.map(drop),
                    Err(e) => Err(e),
                },
            ),
        ),
        (
            "ListActions",
            code(
                flight
                    .list_actions(bearer(tonic::Request::new(arrow_flight::Empty {}), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListFlights",
            code(
                flight
                    .list_flights(bearer(tonic::Request::new(Criteria::default()), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "DoPut",
            code(
                match flight
                    .do_put(bearer(
                        tonic::Request::new(futures::stream::iter([data.clone()])),
                        token,
                    ))
                    .await
                {
                    Ok(stream) => stream.into_inner().try_collect::<Vec<_>>().await.map(drop),
                    Err(e) => Err(e),
                },
            ),
        ),
        (
            "DoExchange",
            code(
                match flight
                    .do_exchange(bearer(
                        tonic::Request::new(futures::stream::iter([data])),
                        token,
                    ))
                    .await
                {
                    Ok(stream) => stream.into_inner().try_collect::<Vec<_>>().await.map(drop),
                    Err(e) => Err(e),
                },
            ),
        ),
    ]
}

/// Logs in with HTTP Basic credentials in the handshake, as arrow-flight, ADBC and JDBC do.
async fn log_in(channel: Channel, user: &str, password: &str) -> Result<Client, (Code, String)> {
    let mut client = FlightSqlServiceClient::new(channel);
    match client.handshake(user, password).await {
        Ok(_) => Ok(client),
        Err(e) => {
            // The client folds the status into its message.
            let message = e.to_string();
            let code = if message.contains("Unauthenticated")
                || message.contains("does not have valid authentication credentials")
            {
                Code::Unauthenticated
            } else {
                Code::Unknown
            };
            Err((code, message))
        }
    }
}

#[tokio::test]
async fn every_call_needs_a_valid_token() {
    let (engine, options) = configured(&auth_yaml("1h"));
    let server = start_with(engine, options).await;

    // Logins: Argon2, bcrypt and environment passwords; wrong ones are refused alike.
    for (user, password) in [
        ("ada", "lovelace"),
        ("grace", "hopper"),
        ("etl", "etl pa:ss"),
    ] {
        let mut client = log_in(channel(server.addr).await, user, password)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"));
        assert_eq!(
            query(&mut client, "SELECT count(*) AS n FROM region").await,
            "+---+\n| n |\n+---+\n| 5 |\n+---+"
        );
        let (code, message) = log_in(channel(server.addr).await, user, "wrong")
            .await
            .err()
            .unwrap();
        assert_eq!(code, Code::Unauthenticated, "{message}");
        assert!(
            message.contains("invalid user name or password"),
            "{message}"
        );
    }
    let (code, _) = log_in(channel(server.addr).await, "mallory", "lovelace")
        .await
        .err()
        .unwrap();
    assert_eq!(code, Code::Unauthenticated);

    // A valid token opens every call; without one, or with a wrong or forged one, every
    // call is refused before it does anything.
    let mut ada = log_in(channel(server.addr).await, "ada", "lovelace")
        .await
        .unwrap();
    let token = ada.token().unwrap().to_string();
    let info = ada.execute("SELECT 1 AS one".into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    for (method, code) in every_call(channel(server.addr).await, Some(&token), &ticket).await {
        assert_ne!(code, Code::Unauthenticated, "{method} with a valid token");
    }
    let forged = format!("{}x", &token);
    for bad in [None, Some("nonsense"), Some(forged.as_str())] {
        for (method, code) in every_call(channel(server.addr).await, bad, &ticket).await {
            assert_eq!(code, Code::Unauthenticated, "{method} with {bad:?}");
        }
    }

    // A static token from the config works as a bearer token.
    let mut dashboards = FlightSqlServiceClient::new(channel(server.addr).await);
    dashboards.set_token(STATIC_TOKEN.into());
    assert_eq!(
        query(&mut dashboards, "SELECT 1 AS one").await,
        "+-----+\n| one |\n+-----+\n| 1   |\n+-----+"
    );

    // Health checks need no credentials (load balancers probe them).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(server.addr).await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn tokens_expire_and_are_accepted_by_every_node_sharing_the_secret() {
    // Two nodes with the same secret: a token from one opens the other.
    let (engine, options) = configured(&auth_yaml("1h"));
    let first = start_with(engine, options).await;
    let (engine, options) = configured(&auth_yaml("1h"));
    let second = start_with(engine, options).await;
    let ada = log_in(channel(first.addr).await, "ada", "lovelace")
        .await
        .unwrap();
    let mut other = FlightSqlServiceClient::new(channel(second.addr).await);
    other.set_token(ada.token().unwrap().to_string());
    assert_eq!(
        query(&mut other, "SELECT 2 AS two").await,
        "+-----+\n| two |\n+-----+\n| 2   |\n+-----+"
    );

    // A token past its expiry is refused with a message saying so.
    let (engine, options) = configured(&auth_yaml("1s"));
    let server = start_with(engine, options).await;
    let mut client = log_in(channel(server.addr).await, "etl", "etl pa:ss")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (code, message) =
        code_and_message(client.execute("SELECT 1".into(), None).await.unwrap_err());
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn the_handshake_without_auth_configured_succeeds() {
    // Clients that always log in (some JDBC setups) still connect to an open server.
    let (engine, options) = configured("");
    let server = start_with(engine, options).await;
    let mut flight = FlightServiceClient::new(channel(server.addr).await);
    let answers: Vec<_> = flight
        .handshake(futures::stream::iter([HandshakeRequest::default()]))
        .await
        .unwrap()
        .into_inner()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(answers.len(), 1);
}

fn tls_yaml(client_ca: bool) -> String {
    let client_ca = if client_ca {
        "\n    client_ca: ca.pem"
    } else {
        ""
    };
    format!("server:\n  tls:\n    cert: server.pem\n    key: server.key{client_ca}\n")
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let ca = std::fs::read(fixtures().join("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if identity {
        let cert = std::fs::read(fixtures().join("client.pem")).unwrap();
        let key = std::fs::read(fixtures().join("client.key")).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn tls_serves_encrypted_and_checks_client_certificates() {
    let (engine, options) = configured(&tls_yaml(false));
    let server = start_with(engine, options).await;
    let mut client = FlightSqlServiceClient::new(tls_channel(server.addr, false).await.unwrap());
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM nation").await,
        "+----+\n| n  |\n+----+\n| 25 |\n+----+"
    );
    // A plaintext client gets nowhere.
    let mut plain = FlightSqlServiceClient::new(channel(server.addr).await);
    assert!(plain.execute("SELECT 1".into(), None).await.is_err());

    // With `client_ca`, only clients with a certificate it signed get in.
    let (engine, options) = configured(&tls_yaml(true));
    let server = start_with(engine, options).await;
    let mut client = FlightSqlServiceClient::new(tls_channel(server.addr, true).await.unwrap());
    assert_eq!(
        query(&mut client, "SELECT 1 AS one").await,
        "+-----+\n| one |\n+-----+\n| 1   |\n+-----+"
    );
    let anonymous = match tls_channel(server.addr, false).await {
        Ok(channel) => FlightSqlServiceClient::new(channel)
            .execute("SELECT 1".into(), None)
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate was served");
}

#[tokio::test]
async fn bad_tls_and_auth_settings_name_their_key() {
    let mut config = Config::demo(0.01);
    let parsed = Config::parse(
        "server:\n  tls:\n    cert: missing.pem\n    key: server.key\n",
        None,
        &|_| None,
    )
    .unwrap();
    config.server.tls = parsed.server.tls;
    let e = Options::from_config(&config.server, &fixtures()).unwrap_err();
    assert!(
        e.to_string().starts_with("server.tls.cert: cannot read"),
        "{e}"
    );

    for (yaml, key, says) in [
        (
            "server:\n  auth:\n    users:\n      - name: a\n        password: plain\n",
            "server.auth.users[0].password",
            "environment variable reference",
        ),
        (
            "server:\n  auth:\n    users:\n      - name: a\n        password_hash: abc\n",
            "server.auth.users[0].password_hash",
            "hash-password",
        ),
        (
            "server:\n  auth:\n    tokens:\n      - name: t\n        token: literal-token-here\n",
            "server.auth.tokens[0].token",
            "environment variable reference",
        ),
        (
            "server:\n  auth:\n    users: []\n",
            "server.auth",
            "at least one",
        ),
    ] {
        let e = Config::parse(yaml, None, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{key}: ")) && e.contains(says),
            "{yaml}: {e}"
        );
    }
}

#[tokio::test]
async fn metrics_count_queries_sources_errors_and_refusals() {
    let (engine, options) = configured(&auth_yaml("1h"));
    let metrics = Arc::clone(&options.metrics);
    let server = start_with(engine, options).await;
    let mut client = log_in(channel(server.addr).await, "ada", "lovelace")
        .await
        .unwrap();
    query(&mut client, "SELECT * FROM region").await;
    query(
        &mut client,
        "SELECT n_name FROM nation WHERE n_regionkey = 1",
    )
    .await;
    let _ = client.execute("SELEC 1".into(), None).await.unwrap_err();
    let _ = log_in(channel(server.addr).await, "ada", "wrong").await;
    let mut anonymous = FlightSqlServiceClient::new(channel(server.addr).await);
    let _ = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();

    let text = metrics.render();
    for expected in [
        "tributary_queries_total{outcome=\"done\"} 2",
        "tributary_query_duration_seconds_count{outcome=\"done\"} 2",
        "tributary_queries_running 0",
        "tributary_result_rows_total 10",
        // The generated tables take no filters: all of region and nation are read.
        "tributary_source_rows_total{source=\"demo\"} 30",
        "tributary_rpc_errors_total{method=\"GetFlightInfo\",code=\"InvalidArgument\"} 1",
        "tributary_rpc_errors_total{method=\"GetFlightInfo\",code=\"Unauthenticated\"} 1",
        "tributary_auth_refusals_total{reason=\"wrong_password\"} 1",
        "tributary_auth_refusals_total{reason=\"missing_credentials\"} 1",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    for counter in [
        "tributary_result_bytes_total ",
        "tributary_source_bytes_total{source=\"demo\"} ",
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(counter))
            .unwrap_or_else(|| panic!("no {counter} in {text}"));
        assert!(value.parse::<u64>().unwrap() > 0, "{counter}{value}");
    }
    assert!(
        text.contains("tributary_process_resident_memory_bytes "),
        "{text}"
    );
}

/// Reads `http://addr/metrics` (HTTP/1.0, so the server closes the connection).
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

#[tokio::test]
async fn the_serve_command_with_auth_and_tls_listens_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures();
    let config = dir.path().join("tributary.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: demo\n    kind: tpch\n    scale_factor: 0.01\n\
             server:\n  default_catalog: demo\n  default_schema: tpch\n  tls:\n    cert: {cert}\n    key: {key}\n\
             \x20 auth:\n    users:\n      - name: etl\n        password: ${{ETL_PASSWORD}}\n",
            cert = fixtures.join("server.pem").display(),
            key = fixtures.join("server.key").display(),
        ),
    )
    .unwrap();
    let server = ServeProcess::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log",
            "tributary=info",
        ],
        &[("ETL_PASSWORD", "correct horse")],
    );
    let port = server.after("grpc+tls://0.0.0.0:");
    let metrics = server.after("metrics on http://");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let wrong = log_in(
        tls_channel(addr, false).await.unwrap(),
        "etl",
        "battery staple",
    )
    .await;
    assert_eq!(wrong.err().unwrap().0, Code::Unauthenticated);
    let mut client = log_in(
        tls_channel(addr, false).await.unwrap(),
        "etl",
        "correct horse",
    )
    .await
    .unwrap();
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM region").await,
        "+---+\n| n |\n+---+\n| 5 |\n+---+"
    );
    let scraped = scrape(&metrics).await;
    assert!(
        scraped.contains("tributary_queries_total{outcome=\"done\"} 1"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tributary_auth_refusals_total{reason=\"wrong_password\"} 1"),
        "{scraped}"
    );

    drop(client);
    let (status, log) = server.stop().await;
    assert!(status.success(), "{status}: {log}");
    // The failed login is logged with the user and the reason, never the password.
    let failed = log
        .lines()
        .find(|l| l.contains("login failed"))
        .unwrap_or_else(|| panic!("no failed login logged: {log}"));
    assert!(
        failed.contains("etl") && failed.contains("wrong_password"),
        "{failed}"
    );
    assert!(
        !log.contains("battery") && !log.contains("correct horse"),
        "{log}"
    );
    let ended = log.lines().find(|l| l.contains("query ended")).unwrap();
    assert!(
        ended.contains("user=\"etl\"") || ended.contains("user=etl"),
        "{ended}"
    );
}

#[tokio::test]
async fn the_adbc_driver_logs_in_over_tls() {
    let yaml = format!(
        "{}{}",
        auth_yaml("1h"),
        tls_yaml(false).replace("server:\n", "")
    );
    let (engine, options) = configured(&yaml);
    let server = start_with(engine, options).await;
    let stdout = run_adbc_client(&[
        format!("grpc+tls://localhost:{}", server.addr.port()),
        "etl".into(),
        "etl pa:ss".into(),
        fixtures().join("ca.pem").display().to_string(),
    ])
    .await;
    assert!(stdout.contains("ok wrong password refused"), "{stdout}");
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, 15, "{stdout}");
}
