//! The Flight SQL service: statements, prepared statements and metadata over the engine.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{ActionCancelQueryRequest, ActionCancelQueryResult};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, Command, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementSubstraitPlan,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, BasicAuth, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus,
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, SchemaResult, Ticket,
};
use bytes::Bytes;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::DataFrame;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Authorization, Issued, Principal, Refusal};
use super::handles::StatementHandle;
use super::metadata;
use super::metrics::Metrics;
use super::planned::PlannedStatements;
use super::running::{Query, Running};
use super::status::{read_only, status};
use super::wire::{to_wire, wire_schema};
use crate::engine::Engine;

/// The standard action that cancels a query.
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

/// Tributary's Flight SQL service. Handles and tickets carry the statement; a plan made for
/// `GetFlightInfo` is kept briefly for its `DoGet`, which plans again without it. Served
/// inside [`WithGetSchema`](super::WithGetSchema), which answers `GetSchema` with
/// [`schema_of`](Self::schema_of).
#[derive(Clone)]
pub struct TributaryFlightSql {
    engine: Engine,
    sql_info: Arc<SqlInfoData>,
    xdbc_types: Arc<XdbcTypeInfoData>,
    running: Arc<Running>,
    auth: Option<Arc<Authenticator>>,
    metrics: Arc<Metrics>,
    planned: Arc<PlannedStatements>,
}

impl TributaryFlightSql {
    /// A service over `engine`'s session, logging users in with `auth` (every call is let
    /// in without it) and counting queries in `metrics`.
    pub fn new(engine: Engine, auth: Option<Arc<Authenticator>>, metrics: Arc<Metrics>) -> Self {
        TributaryFlightSql {
            engine,
            sql_info: Arc::new(metadata::sql_info()),
            xdbc_types: Arc::new(metadata::xdbc_types()),
            running: Arc::new(Running::new(Arc::clone(&metrics))),
            auth,
            metrics,
            planned: Arc::default(),
        }
    }

    /// Checks a login's credentials: the `authorization: Basic …` header arrow-flight,
    /// ADBC and the JDBC driver send, or a `BasicAuth` message in the handshake's payload
    /// (older Flight clients).
    async fn log_in(
        &self,
        auth: &Arc<Authenticator>,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<Issued, Status> {
        let peer = request.remote_addr();
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let credentials = match header.as_deref().map(Authorization::parse) {
            Some(Authorization::Basic { user, password }) => Ok((user, password)),
            Some(_) => Err(Refusal::Malformed),
            None => {
                let mut messages = request.into_inner();
                match messages.message().await? {
                    Some(message) => BasicAuth::decode(message.payload)
                        .ok()
                        .filter(|basic| !basic.username.is_empty())
                        .map(|basic| (basic.username, basic.password))
                        .ok_or(Refusal::Missing),
                    None => Err(Refusal::Missing),
                }
            }
        };
        let (user, outcome) = match credentials {
            Ok((user, password)) => {
                let auth = Arc::clone(auth);
                let checked = user.clone();
                // Password hashes take tens of milliseconds on purpose: keep them off the
                // threads that stream results.
                let outcome = tokio::task::spawn_blocking(move || auth.login(&checked, &password))
                    .await
                    .map_err(|e| Status::internal(format!("checking the password: {e}")))?;
                (Some(user), outcome)
            }
            Err(refusal) => (None, Err(refusal)),
        };
        match outcome {
            Ok(issued) => {
                tracing::info!(user = user.as_deref(), ?peer, "logged in");
                Ok(issued)
            }
            Err(refusal) => {
                tracing::warn!(
                    user = user.as_deref(),
                    ?peer,
                    reason = refusal.label(),
                    "login failed"
                );
                self.metrics.refused(refusal.label());
                Err(Status::unauthenticated(refusal.message()))
            }
        }
    }

    /// Plans the handle's statement with its bound parameters. `?` placeholders are
    /// numbered (`$1`, `$2`, …) in the order they appear, as JDBC and ADBC expect.
    async fn plan(&self, handle: &StatementHandle) -> Result<DataFrame, Status> {
        let mut statement = self.engine.statement(&handle.sql).map_err(status)?;
        number_placeholders(&mut statement);
        let df = self.engine.plan(statement).await.map_err(status)?;
        match handle.parameters()? {
            None => Ok(df),
            Some(batch) => {
                let values = (0..batch.num_columns())
                    .map(|i| ScalarValue::try_from_array(batch.column(i), 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(status)?;
                df.with_param_values(ParamValues::from(values))
                    .map_err(status)
            }
        }
    }

    /// The schema the statement's results will have on the wire. The plan is kept for the
    /// `DoGet` that runs it.
    async fn dataset_schema(&self, handle: &StatementHandle) -> Result<SchemaRef, Status> {
        let plan = self.plan(handle).await?;
        let schema = result_schema(&plan);
        self.planned.keep(handle.encode(), plan);
        Ok(schema)
    }

    /// Runs the statement, streaming its batches as they come, until it ends, the client
    /// goes away, or `CancelFlightInfo` names `ticket`.
    async fn execute(
        &self,
        handle: &StatementHandle,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let user = request.extensions().get::<Principal>().map(|p| p.0.clone());
        let ticket = request.into_inner().ticket;
        let kept = self.planned.take(&handle.encode());
        tracing::debug!(
            planned_for_flight_info = kept.is_some(),
            "DoGet runs a statement"
        );
        let df = match kept {
            Some(df) => df,
            None => self.plan(handle).await?,
        };
        let schema = result_schema(&df);
        let task = Arc::new(df.task_ctx());
        // Kept for the sources' row and byte counts when the query ends.
        let plan = df.create_physical_plan().await.map_err(status)?;
        let batches = execute_stream(Arc::clone(&plan), task).map_err(status)?;
        let batches = batches.map_err(|e| FlightError::Tonic(Box::new(status(e))));
        let query = Query {
            ticket,
            sql: &handle.sql,
            user: user.as_deref(),
            plan,
        };
        let data = self
            .running
            .track(query, batches, |batches| encode(schema, batches));
        Ok(Response::new(Box::pin(data)))
    }

    /// Answers `GetSchema`: the schema a command's results will have, without running
    /// it. A statement or prepared statement is planned (its plan is not kept: no `DoGet`
    /// follows a `GetSchema`); any other command answers with its `FlightInfo`'s schema.
    pub async fn schema_of(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        if request.get_ref().r#type != DescriptorType::Cmd as i32 {
            return Err(Status::invalid_argument(
                "GetSchema takes a command descriptor (a statement or a metadata command); \
                 this server names no datasets by path",
            ));
        }
        let message = Any::decode(&*request.get_ref().cmd)
            .map_err(|e| Status::invalid_argument(format!("unreadable command: {e}")))?;
        let command = Command::try_from(message)
            .map_err(|e| Status::invalid_argument(format!("unreadable command: {e}")))?;
        let handle = match command {
            Command::CommandStatementQuery(query) => StatementHandle::new(query.query),
            Command::CommandPreparedStatementQuery(cmd) => {
                StatementHandle::decode(&cmd.prepared_statement_handle)?
            }
            Command::CommandStatementUpdate(_)
            | Command::CommandPreparedStatementUpdate(_)
            | Command::CommandStatementIngest(_) => return Err(read_only()),
            _ => {
                let info = FlightService::get_flight_info(self, request).await?;
                return Ok(Response::new(SchemaResult {
                    schema: info.into_inner().schema,
                }));
            }
        };
        let schema = result_schema(&self.plan(&handle).await?);
        Ok(Response::new(SchemaResult {
            schema: schema_bytes(&schema)?,
        }))
    }

    /// Stops the queries behind `info`'s tickets.
    fn cancel(&self, info: Option<FlightInfo>) -> usize {
        let tickets: Vec<Bytes> = info
            .map(|i| i.endpoint)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.ticket.map(|t| t.ticket))
            .collect();
        let cancelled = self.running.cancel(&tickets);
        tracing::info!(cancelled, "CancelFlightInfo");
        cancelled
    }
}

/// The schema a query's results have on the wire.
fn result_schema(df: &DataFrame) -> SchemaRef {
    wire_schema(Arc::new(df.schema().as_arrow().clone()))
}

/// Record batches as Flight data, the schema first even when no batch follows; `schema`
/// is what clients are told (a [`wire_schema`]), and each batch is cast to it.
fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> DoGetStream {
    let wire = Arc::clone(&schema);
    let sent = batches.map(move |batch| to_wire(batch?, &wire).map_err(FlightError::Arrow));
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(sent)
            .map_err(Status::from),
    )
}

/// One metadata batch as a `DoGet` answer.
fn one_batch(batch: RecordBatch) -> Response<DoGetStream> {
    let schema = batch.schema();
    Response::new(encode(schema, futures::stream::iter([Ok(batch)])))
}

/// The `FlightInfo` of a foreign-key command (`command`): sources declare none.
fn foreign_keys_info(
    command: Any,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    flight_info(
        &metadata::foreign_keys_schema(),
        command,
        request.into_inner(),
    )
}

/// The answer to every foreign-key command: none, with the schema drivers expect.
fn no_foreign_keys() -> Response<DoGetStream> {
    one_batch(RecordBatch::new_empty(metadata::foreign_keys_schema()))
}

/// A `FlightInfo` whose one endpoint's ticket is `ticket` (a packed command).
fn flight_info(
    schema: &Schema,
    ticket: Any,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec())))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| {
            Status::internal(format!("encoding a schema: {e}"))
        })?;
    Ok(bytes)
}

/// Numbers `?` placeholders `$1`, `$2`, … in the order they appear; DataFusion would
/// otherwise read every `?` as the same parameter.
fn number_placeholders(statement: &mut Statement) {
    let Statement::Statement(statement) = statement else {
        return;
    };
    let mut next = 0;
    let _ = visit_expressions_mut(statement.as_mut(), |expr| {
        if let Expr::Value(v) = expr
            && let Value::Placeholder(name) = &mut v.value
            && name == "?"
        {
            next += 1;
            *name = format!("${next}");
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

#[tonic::async_trait]
impl FlightSqlService for TributaryFlightSql {
    type FlightService = TributaryFlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = StatementHandle::new(query.query);
        let schema = self.dataset_schema(&handle).await?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode(),
        };
        flight_info(&schema, ticket.as_any(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = StatementHandle::decode(&ticket.statement_handle)?;
        self.execute(&handle, request).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = StatementHandle::decode(&cmd.prepared_statement_handle)?;
        let schema = self.dataset_schema(&handle).await?;
        flight_info(&schema, cmd.as_any(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = StatementHandle::decode(&cmd.prepared_statement_handle)?;
        self.execute(&handle, request).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let handle = StatementHandle::new(query.query);
        let df = self.plan(&handle).await?;
        let mut parameters: Vec<(usize, Field)> = df
            .logical_plan()
            .get_parameter_fields()
            .map_err(status)?
            .into_iter()
            .map(|(id, field)| {
                let position = id
                    .trim_start_matches('$')
                    .parse::<usize>()
                    .unwrap_or(usize::MAX);
                let data_type = field
                    .map(|f| f.data_type().clone())
                    .unwrap_or(arrow::datatypes::DataType::Null);
                (position, Field::new(id, data_type, true))
            })
            .collect();
        parameters.sort_by_key(|(position, _)| *position);
        // Announced as sent: a client binds what it was told (`Utf8` for a `Utf8View`).
        let parameter_schema = wire_schema(Arc::new(Schema::new(
            parameters.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
        )));
        let dataset_schema = result_schema(&df);
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode(),
            dataset_schema: schema_bytes(&dataset_schema)?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Nothing is kept per statement.
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = StatementHandle::decode(&query.prepared_statement_handle)?;
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        )
        .try_collect()
        .await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Err(Status::invalid_argument("no parameter values were sent"));
        };
        if rows > 1 {
            return Err(Status::invalid_argument(format!(
                "{rows} rows of parameters were sent; a query takes exactly one"
            )));
        }
        let bound = handle.with_parameters(batch)?;
        // Answering with a new handle (the statement and its values) keeps the server
        // stateless: the client sends it back to run the query.
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bound.encode()),
        })
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_statement_ingest(
        &self,
        _ticket: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "Substrait plans are not accepted; send SQL",
        ))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(
            &self.sql_info.schema(),
            query.as_any(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query.into_builder(&self.sql_info).build()?;
        Ok(one_batch(batch))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(
            &self.xdbc_types.schema(),
            query.as_any(),
            request.into_inner(),
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query.into_builder(&self.xdbc_types).build()?;
        Ok(one_batch(batch))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for name in self.engine.context().catalog_names() {
            builder.append(name);
        }
        Ok(one_batch(builder.build()?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(one_batch(metadata::db_schemas(&self.engine, query).await?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(one_batch(metadata::tables(&self.engine, query).await?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for kind in metadata::TABLE_TYPES {
            builder.append(kind);
        }
        Ok(one_batch(builder.build()?))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        // A table that does not exist is an error now, not an empty answer later.
        metadata::key_table(&self.engine, &query).await?;
        flight_info(
            &metadata::primary_keys_schema(),
            query.as_any(),
            request.into_inner(),
        )
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(one_batch(
            metadata::primary_keys(&self.engine, query).await?,
        ))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        foreign_keys_info(query.as_any(), request)
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(no_foreign_keys())
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        foreign_keys_info(query.as_any(), request)
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(no_foreign_keys())
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        foreign_keys_info(query.as_any(), request)
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(no_foreign_keys())
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type != CANCEL_FLIGHT_INFO {
            return Err(Status::invalid_argument(format!(
                "unknown action `{}`",
                action.r#type
            )));
        }
        let request = CancelFlightInfoRequest::decode(action.body).map_err(|e| {
            Status::invalid_argument(format!("malformed CancelFlightInfo request: {e}"))
        })?;
        self.cancel(request.info);
        // Done: whatever ran on this node has stopped.
        let result = CancelFlightInfoResult::new(CancelStatus::Cancelled);
        let answer = arrow_flight::Result::new(result.encode_to_vec());
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(answer)]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(vec![Ok(ActionType {
            r#type: CANCEL_FLIGHT_INFO.into(),
            description: "Stop a query: its result streams end with CANCELLED".into(),
        })])
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        // The form older drivers send: the FlightInfo, serialized.
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("malformed CancelQuery request: {e}")))?;
        self.cancel(Some(info));
        Ok(ActionCancelQueryResult {
            // `CANCEL_RESULT_CANCELLED`; arrow-flight does not export the enum.
            result: 1,
        })
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}

    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let Some(auth) = &self.auth else {
            // Nothing to check: clients that always log in get an empty answer and no token.
            let answer = futures::stream::iter([Ok(HandshakeResponse::default())]);
            return Ok(Response::new(Box::pin(answer)));
        };
        let issued = self.log_in(auth, request).await?;
        let bearer = format!("Bearer {}", issued.token)
            .parse()
            .map_err(|_| Status::internal("the token is not a valid header value"))?;
        let answer = futures::stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::from(issued.token),
        })]);
        let mut response = Response::new(Box::pin(answer) as HandshakeStream);
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }
}
