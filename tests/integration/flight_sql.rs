//! The Flight SQL server driven by arrow-flight's Flight SQL client, as a BI driver drives
//! it: statements, prepared statements with parameters, metadata, and errors that leave
//! the server answering.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, CommandStatementUpdate, ProstMessageExt,
    SqlInfo,
};
use arrow_flight::{Action, FlightDescriptor, FlightInfo, IpcMessage, Ticket};
use futures::TryStreamExt;
use prost::Message;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;
use tributary::server::Options;
use tributary::{Config, Engine};
use tributary_testkit::mysql::{Database, server_url};

use crate::common::ServeProcess;

pub type Client = FlightSqlServiceClient<Channel>;

/// A server on a free loopback port, stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(engine: Engine) -> Running {
    start_with(engine, Options::default()).await
}

/// A server with `options` on a free loopback port.
pub async fn start_with(engine: Engine, options: Options) -> Running {
    let listener = tributary::server::bind("127.0.0.1:0".parse().unwrap(), &options)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tributary::server::serve(engine, listener, options, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        stop: Some(stop),
    }
}

async fn demo() -> Running {
    start(Engine::new(&Config::demo(0.01)).unwrap()).await
}

async fn client(server: &Running) -> Client {
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

/// Every batch behind a `FlightInfo`, with the schema the info announced.
pub async fn fetch(client: &mut Client, info: FlightInfo) -> (Schema, Vec<RecordBatch>) {
    let schema = info.clone().try_decode_schema().unwrap();
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("an endpoint with a ticket");
        let stream = client.do_get(ticket).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    (schema, batches)
}

pub async fn query(client: &mut Client, sql: &str) -> String {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let (schema, batches) = fetch(client, info).await;
    for batch in &batches {
        assert_eq!(batch.schema().as_ref(), &schema, "{sql}: announced schema");
    }
    pretty_format_batches(&batches).unwrap().to_string()
}

pub fn code_and_message(e: arrow_flight::error::FlightError) -> (Code, String) {
    match e {
        arrow_flight::error::FlightError::Tonic(status) => {
            (status.code(), status.message().to_string())
        }
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test]
async fn statements_stream_results_with_their_schema() {
    let server = demo().await;
    let mut client = client(&server).await;
    assert_eq!(
        query(
            &mut client,
            "SELECT n_nationkey, n_name FROM nation WHERE n_nationkey < 3 ORDER BY n_nationkey"
        )
        .await,
        "+-------------+-----------+\n\
         | n_nationkey | n_name    |\n\
         +-------------+-----------+\n\
         | 0           | ALGERIA   |\n\
         | 1           | ARGENTINA |\n\
         | 2           | BRAZIL    |\n\
         +-------------+-----------+"
    );
    // An empty result still tells its schema.
    let info = client
        .execute(
            "SELECT n_name FROM demo.tpch.nation WHERE false".into(),
            None,
        )
        .await
        .unwrap();
    let (schema, batches) = fetch(&mut client, info).await;
    assert_eq!(schema.field(0).name(), "n_name");
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    // A large result arrives whole, in many messages.
    let info = client
        .execute("SELECT l_orderkey FROM lineitem".into(), None)
        .await
        .unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        60_175
    );
}

#[tokio::test]
async fn errors_are_statuses_and_the_server_keeps_answering() {
    let server = demo().await;
    let mut client = client(&server).await;
    let (code, message) =
        code_and_message(client.execute("SELEC 1".into(), None).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("SELEC"), "{message}");

    let (code, message) = code_and_message(
        client
            .execute("SELECT * FROM demo.tpch.no_such_table".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("no_such_table"), "{message}");

    let (code, message) = code_and_message(
        client
            .execute_update("DELETE FROM nation".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("read-only"), "{message}");
    let (code, message) = code_and_message(
        client
            .execute("CREATE TABLE t (a int)".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("read-only"), "{message}");

    // Garbage tickets are refused, not fatal.
    for garbage in [&b"not a ticket"[..], &[0xff, 0x00, 0x12][..], &[][..]] {
        let e = client
            .do_get(Ticket::new(garbage.to_vec()))
            .await
            .unwrap_err();
        let (code, _) = code_and_message(e);
        assert_ne!(code, Code::Ok);
    }
    assert_eq!(
        query(&mut client, "SELECT 1 AS one").await,
        "+-----+\n| one |\n+-----+\n| 1   |\n+-----+"
    );
}

/// One row of parameter values, cast to the types the server announced (as drivers do);
/// values of parameters whose type the server could not infer keep their own.
fn bind(parameters: &Schema, values: Vec<ArrayRef>) -> RecordBatch {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = parameters
        .fields()
        .iter()
        .zip(values)
        .map(|(field, value)| match field.data_type() {
            DataType::Null => (
                Field::new(field.name(), value.data_type().clone(), true),
                value,
            ),
            wanted => (field.as_ref().clone(), cast(&value, wanted).unwrap()),
        })
        .unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

#[tokio::test]
async fn prepared_statements_bind_parameters() {
    let server = demo().await;
    let mut client = client(&server).await;
    let mut prepared = client
        .prepare(
            "SELECT n_name FROM nation WHERE n_nationkey = ? OR n_name = ? ORDER BY n_name".into(),
            None,
        )
        .await
        .unwrap();
    let parameters = prepared.parameter_schema().unwrap().clone();
    assert_eq!(parameters.fields().len(), 2, "{parameters:?}");
    assert_eq!(prepared.dataset_schema().unwrap().field(0).name(), "n_name");
    prepared
        .set_parameters(bind(
            &parameters,
            vec![
                Arc::new(Int32Array::from(vec![3])),
                Arc::new(StringArray::from(vec!["JAPAN"])),
            ],
        ))
        .unwrap();
    let info = prepared.execute().await.unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        pretty_format_batches(&batches).unwrap().to_string(),
        "+--------+\n| n_name |\n+--------+\n| CANADA |\n| JAPAN  |\n+--------+"
    );
    prepared.close().await.unwrap();

    // `$n` placeholders, reused, and a statement without any.
    let mut prepared = client
        .prepare("SELECT $1 + 1 AS a, $1 * 2 AS b".into(), None)
        .await
        .unwrap();
    let parameters = prepared.parameter_schema().unwrap().clone();
    assert_eq!(parameters.fields().len(), 1);
    prepared
        .set_parameters(bind(
            &parameters,
            vec![Arc::new(arrow::array::Int64Array::from(vec![20]))],
        ))
        .unwrap();
    let info = prepared.execute().await.unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        pretty_format_batches(&batches).unwrap().to_string(),
        "+----+----+\n| a  | b  |\n+----+----+\n| 21 | 40 |\n+----+----+"
    );
    // A client that binds its own type (Int32 for an Int64 placeholder) has it cast.
    prepared
        .set_parameters(
            RecordBatch::try_from_iter([("$1", Arc::new(Int32Array::from(vec![4])) as ArrayRef)])
                .unwrap(),
        )
        .unwrap();
    let info = prepared.execute().await.unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        pretty_format_batches(&batches).unwrap().to_string(),
        "+---+---+\n| a | b |\n+---+---+\n| 5 | 8 |\n+---+---+"
    );

    let mut prepared = client
        .prepare("SELECT 7 AS seven".into(), None)
        .await
        .unwrap();
    assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 0);
    let info = prepared.execute().await.unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(batches[0].num_rows(), 1);

    // Preparing bad SQL fails at once.
    let e = client
        .prepare("SELECT nope FROM nation".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code_and_message(e).0, Code::InvalidArgument);
}

/// Strings DataFusion holds as views (every Parquet, Delta and CSV string column) reach
/// clients as plain `Utf8` and `Binary`, at any depth, in results, prepared statements'
/// schemas and parameters: the Flight SQL JDBC driver refuses view types.
#[tokio::test]
async fn view_columns_reach_clients_as_plain_strings() {
    let server = demo().await;
    let mut client = client(&server).await;
    let sql = "SELECT arrow_cast(n_name, 'Utf8View') AS s, \
                      arrow_cast(arrow_cast(n_name, 'Binary'), 'BinaryView') AS b, \
                      [arrow_cast(n_name, 'Utf8View'), NULL] AS l, \
                      named_struct('v', arrow_cast(n_name, 'Utf8View')) AS st \
               FROM nation WHERE n_nationkey < 2 ORDER BY n_nationkey";
    let info = client.execute(sql.into(), None).await.unwrap();
    let (schema, batches) = fetch(&mut client, info).await;
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(
        types,
        ["Utf8", "Binary", "List(Utf8)", "Struct(\"v\": Utf8)"]
    );
    for batch in &batches {
        assert_eq!(batch.schema().as_ref(), &schema, "as announced");
    }
    assert_eq!(
        pretty_format_batches(&batches).unwrap().to_string(),
        "+-----------+--------------------+---------------+----------------+\n\
         | s         | b                  | l             | st             |\n\
         +-----------+--------------------+---------------+----------------+\n\
         | ALGERIA   | 414c4745524941     | [ALGERIA, ]   | {v: ALGERIA}   |\n\
         | ARGENTINA | 415247454e54494e41 | [ARGENTINA, ] | {v: ARGENTINA} |\n\
         +-----------+--------------------+---------------+----------------+"
    );

    // A placeholder compared with a view column is announced, and bound, as `Utf8`.
    let mut prepared = client
        .prepare(
            "SELECT n_nationkey FROM nation WHERE arrow_cast(n_name, 'Utf8View') = $1".into(),
            None,
        )
        .await
        .unwrap();
    let parameters = prepared.parameter_schema().unwrap().clone();
    let dataset = prepared.dataset_schema().unwrap().clone();
    assert_eq!(dataset.field(0).name(), "n_nationkey");
    assert_eq!(
        parameters.field(0).data_type(),
        &DataType::Utf8,
        "{parameters:?}"
    );
    prepared
        .set_parameters(bind(
            &parameters,
            vec![Arc::new(StringArray::from(vec!["JAPAN"]))],
        ))
        .unwrap();
    let info = prepared.execute().await.unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        pretty_format_batches(&batches).unwrap().to_string(),
        "+-------------+\n| n_nationkey |\n+-------------+\n| 12          |\n+-------------+"
    );
}

#[tokio::test]
async fn get_schema_answers_without_running() {
    let server = demo().await;
    let mut client = client(&server).await;
    let sql = "SELECT n_nationkey, n_name, n_nationkey * 1.5 AS x FROM nation";
    let announced = client
        .execute(sql.into(), None)
        .await
        .unwrap()
        .try_decode_schema()
        .unwrap();
    let statement = CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    };
    assert_eq!(
        get_schema(&mut client, statement.as_any()).await.unwrap(),
        announced
    );

    // A prepared statement's, before its parameters are bound.
    let request = ActionCreatePreparedStatementRequest {
        query: "SELECT n_name, n_regionkey FROM nation WHERE n_nationkey = ?".into(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let results: Vec<_> = client
        .do_action(action)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let created: ActionCreatePreparedStatementResult = Any::decode(results[0].body.clone())
        .unwrap()
        .unpack()
        .unwrap()
        .unwrap();
    let prepared = CommandPreparedStatementQuery {
        prepared_statement_handle: created.prepared_statement_handle,
    };
    let schema = get_schema(&mut client, prepared.as_any()).await.unwrap();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["n_name", "n_regionkey"]);

    // A metadata command's, as its FlightInfo announces it.
    let tables = CommandGetTables {
        include_schema: true,
        ..Default::default()
    };
    let announced = client
        .get_tables(tables.clone())
        .await
        .unwrap()
        .try_decode_schema()
        .unwrap();
    assert_eq!(
        get_schema(&mut client, tables.as_any()).await.unwrap(),
        announced
    );

    // Bad SQL and a path are the client's mistakes.
    let bad = CommandStatementQuery {
        query: "SELECT nope FROM nation".into(),
        transaction_id: None,
    };
    let (code, message) = get_schema(&mut client, bad.as_any()).await.unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("nope"), "{message}");
    let update = CommandStatementUpdate {
        query: "DELETE FROM nation".into(),
        transaction_id: None,
    };
    let (code, message) = get_schema(&mut client, update.as_any()).await.unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("read-only"), "{message}");
    let path = client
        .inner_mut()
        .get_schema(FlightDescriptor::new_path(vec!["nation".into()]))
        .await
        .unwrap_err();
    assert_eq!(path.code(), Code::InvalidArgument, "{path}");
}

/// The schema `GetSchema` answers for `command`, or the status's code and message.
async fn get_schema(client: &mut Client, command: Any) -> Result<Schema, (Code, String)> {
    let descriptor = FlightDescriptor::new_cmd(command.encode_to_vec());
    match client.inner_mut().get_schema(descriptor).await {
        Ok(answer) => Ok(Schema::try_from(answer.into_inner()).unwrap()),
        Err(status) => Err((status.code(), status.message().to_string())),
    }
}

#[tokio::test]
async fn metadata_lists_catalogs_schemas_tables_types_and_keys() {
    let db = Database::create("flight").await;
    db.execute(
        "CREATE TABLE orders (region varchar(10), id int, amount decimal(10, 2), PRIMARY KEY (region, id));
         CREATE VIEW big AS SELECT * FROM orders WHERE amount > 100;",
    )
    .await;
    let yaml = format!(
        "sources:\n  - name: demo\n    kind: tpch\n    scale_factor: 0.01\n  - name: my\n    kind: mysql\n    url: {}\n    schemas: {{include: [{}]}}\n",
        server_url(),
        db.name
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap();
    let server = start(Engine::new(&config).unwrap()).await;
    let mut client = client(&server).await;

    let info = client.get_catalogs().await.unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    let text = pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains("| demo ") && text.contains("| my "), "{text}");

    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("my".into()),
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    let text = pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains(&db.name), "{text}");
    assert!(!text.contains("tpch"), "{text}");

    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some(db.name.clone()),
            table_name_filter_pattern: Some("%r%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let names = b.column_by_name("table_name").unwrap();
            let types = b.column_by_name("table_type").unwrap();
            let names = names
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let types = types
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..b.num_rows())
                .map(move |i| format!("{}:{}", names.value(i), types.value(i)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(names, ["orders:TABLE"]);
    let schema_bytes = batches[0]
        .column_by_name("table_schema")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec();
    let schema = Schema::try_from(IpcMessage(schema_bytes.into())).unwrap();
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(columns, ["region", "id", "amount"]);

    let info = client
        .get_tables(CommandGetTables {
            catalog: Some("my".into()),
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec!["VIEW".into()],
            include_schema: false,
        })
        .await
        .unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    let text = pretty_format_batches(&batches).unwrap().to_string();
    assert!(
        text.contains("| big ") && !text.contains("orders"),
        "{text}"
    );

    let info = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: Some("my".into()),
            db_schema: Some(db.name.clone()),
            table: "orders".into(),
        })
        .await
        .unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    let text = pretty_format_batches(&batches).unwrap().to_string();
    assert!(
        text.contains("| region ") && text.contains("| id "),
        "{text}"
    );
    let e = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: Some("my".into()),
            db_schema: Some(db.name.clone()),
            table: "no_such".into(),
        })
        .await
        .unwrap_err();
    let (code, message) = code_and_message(e);
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("no_such"), "{message}");

    let info = client.get_table_types().await.unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert!(
        pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .contains("VIEW")
    );

    let info = client
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
        ])
        .await
        .unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
    let text = pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains("Tributary"), "{text}");

    let info = client
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    let (_, batches) = fetch(&mut client, info).await;
    let text = pretty_format_batches(&batches).unwrap().to_string();
    assert!(
        text.contains("VARCHAR") && text.contains("TIMESTAMP"),
        "{text}"
    );
}

#[tokio::test]
async fn only_loopback_addresses_are_served_without_authentication() {
    let e = tributary::server::bind("0.0.0.0:0".parse().unwrap(), &Options::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("server.auth"), "{e}");
}

#[tokio::test]
async fn the_adbc_driver_queries_binds_and_lists() {
    let server = demo().await;
    let uri = format!("grpc://{}", server.addr);
    let stdout = run_adbc_client(&[uri]).await;
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, 14, "{stdout}");
}

/// Runs `tests/clients/adbc_flight_sql.py` with `args`; its output if it succeeded.
pub async fn run_adbc_client(args: &[String]) -> String {
    let args = args.to_vec();
    let python = std::env::var("TRIBUTARY_PYTHON")
        .expect("TRIBUTARY_PYTHON names the test venv's python (scripts/test sets it)");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/adbc_flight_sql.py"
    );
    // The driver blocks; the server answers on this test's runtime meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .expect("running the ADBC client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ADBC client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout.into_owned()
}

#[tokio::test]
async fn cancel_flight_info_stops_a_streaming_query() {
    let server = demo().await;
    let mut client = client(&server).await;
    // 1.5 million rows: far more than gRPC's flow-control window lets the server send ahead.
    let info = client
        .execute(
            "SELECT a.l_orderkey, b.n_name FROM lineitem a CROSS JOIN nation b".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let first = stream.try_next().await.unwrap().expect("a first batch");
    let mut rows = first.num_rows();

    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = arrow_flight::FlightClient::new(channel);
    let status = flight
        .cancel_flight_info(arrow_flight::CancelFlightInfoRequest::new(info))
        .await
        .unwrap();
    assert_eq!(status.status(), arrow_flight::CancelStatus::Cancelled);

    // What was already on its way still arrives; then the stream ends with CANCELLED.
    let code = loop {
        match stream.try_next().await {
            Ok(Some(batch)) => rows += batch.num_rows(),
            Ok(None) => panic!("the query finished ({rows} rows) despite the cancel"),
            Err(e) => break code_and_message(e).0,
        }
    };
    assert_eq!(code, Code::Cancelled);
    assert!(rows < 60_175 * 25, "{rows}");
    // The server goes on answering.
    assert_eq!(
        query(&mut client, "SELECT 1 AS one").await,
        "+-----+\n| one |\n+-----+\n| 1   |\n+-----+"
    );
}

#[tokio::test]
async fn the_serve_command_answers_and_stops_on_sigterm() {
    let server = ServeProcess::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "tributary=info",
            "--metrics-listen",
            "off",
        ],
        &[],
    );
    let addr = server.after("grpc://");
    assert!(
        server.banner.contains("catalogs: demo"),
        "{}",
        server.banner
    );

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM region").await,
        "+---+\n| n |\n+---+\n| 5 |\n+---+"
    );
    drop(client);

    let (status, rest) = server.stop().await;
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("Tributary stopped"), "{rest}");
    // The query's life is logged in a span carrying its id and SQL.
    let ended = rest
        .lines()
        .find(|l| l.contains("query ended"))
        .unwrap_or_else(|| panic!("no end of query logged: {rest}"));
    assert!(
        ended.contains("query{id=")
            && ended.contains("FROM region")
            && ended.contains("rows=1")
            && ended.contains("outcome=Done"),
        "{ended}"
    );
}

#[tokio::test]
async fn health_checks_report_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let server = demo().await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "arrow.flight.protocol.FlightService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let e = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// How many queries on `database`'s `big` table the MariaDB server is running.
async fn running_on_big(database: &str) -> i64 {
    use mysql_async::prelude::Queryable;
    let mut conn = tributary_testkit::mysql::connect().await;
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND IN ('Query', 'Execute') AND INFO LIKE '%{database}%big%' AND INFO NOT LIKE '%PROCESSLIST%'"
    );
    conn.query_first(&sql).await.unwrap().unwrap_or(0)
}

#[tokio::test]
async fn a_client_that_goes_away_stops_the_source_query() {
    let db = Database::create("flight_gone").await;
    db.execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, f double);
         INSERT INTO big SELECT seq, seq FROM seq_1_to_1000000;",
    )
    .await;
    let yaml = format!(
        "sources:\n  - name: my\n    kind: mysql\n    url: {}\n    schemas: {{include: [{}]}}\n    partitions: 1\n",
        server_url(),
        db.name
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap();
    let server = start(Engine::new(&config).unwrap()).await;
    let mut client = client(&server).await;
    let info = client
        .execute(format!("SELECT id, f FROM my.{}.big", db.name), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    assert!(stream.try_next().await.unwrap().is_some());
    // The client reads no further: flow control holds the server, which holds MariaDB.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        running_on_big(&db.name).await,
        1,
        "the query should be running"
    );

    drop(stream);
    drop(client);
    let mut active = 1;
    for _ in 0..50 {
        active = running_on_big(&db.name).await;
        if active == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(active, 0, "the abandoned query is still running on MariaDB");
}

#[tokio::test]
async fn stopping_lets_a_running_query_finish() {
    let mut server = demo().await;
    let mut client = client(&server).await;
    let info = client
        .execute("SELECT l_orderkey FROM lineitem".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let mut rows = stream.try_next().await.unwrap().unwrap().num_rows();
    let _ = server.stop.take().unwrap().send(());
    while let Some(batch) = stream.try_next().await.unwrap() {
        rows += batch.num_rows();
    }
    assert_eq!(rows, 60_175);
}
