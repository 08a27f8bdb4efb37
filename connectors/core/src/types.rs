//! Arrow type helpers shared by connectors.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionConfig;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

/// Parses a SQL type name (`bigint`, `varchar`, `decimal(12,2)`, `timestamp with time zone`,
/// `int[]`, …) into the Arrow type DataFusion gives that name, so declared schemas in the
/// config use the same words as a `CAST` in a query.
pub fn parse_sql_type(sql_type: &str) -> Result<DataType, String> {
    // Check that the text is exactly one type before it is placed into a CAST.
    let mut parser = Parser::new(&GenericDialect {})
        .try_with_sql(sql_type)
        .map_err(|e| format!("`{sql_type}` is not a SQL type: {e}"))?;
    parser
        .parse_data_type()
        .and_then(|_| parser.expect_token(&Token::EOF))
        .map_err(|e| format!("`{sql_type}` is not a SQL type: {e}"))?;

    // `timestamp with time zone` takes the session time zone; declared columns mean UTC.
    let mut config = SessionConfig::new();
    config.options_mut().execution.time_zone = Some("UTC".to_string());
    let state = SessionStateBuilder::new().with_config(config).build();
    let expr = state
        .create_logical_expr(&format!("CAST(NULL AS {sql_type})"), &DFSchema::empty())
        .map_err(|e| format!("`{sql_type}` is not a supported type: {e}"))?;
    match expr {
        Expr::Cast(cast) => Ok(cast.field.data_type().clone()),
        other => Err(format!(
            "`{sql_type}` is not a supported type (planned as {other})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn sql_names_map_to_datafusion_types() {
        assert_eq!(parse_sql_type("bigint").unwrap(), DataType::Int64);
        assert_eq!(parse_sql_type("INT").unwrap(), DataType::Int32);
        assert_eq!(
            parse_sql_type("decimal(12, 2)").unwrap(),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(parse_sql_type("date").unwrap(), DataType::Date32);
        assert_eq!(parse_sql_type("double").unwrap(), DataType::Float64);
        assert_eq!(parse_sql_type("boolean").unwrap(), DataType::Boolean);
        assert!(matches!(
            parse_sql_type("timestamp").unwrap(),
            DataType::Timestamp(TimeUnit::Nanosecond, None)
        ));
        assert!(matches!(
            parse_sql_type("timestamp with time zone").unwrap(),
            DataType::Timestamp(_, Some(tz)) if tz.as_ref() == "UTC"
        ));
    }

    #[test]
    fn junk_is_rejected_with_the_text() {
        let err = parse_sql_type("int) + (1").unwrap_err();
        assert!(err.contains("`int) + (1` is not a SQL type"), "{err}");
        let err = parse_sql_type("frobnicate").unwrap_err();
        assert!(err.contains("frobnicate"), "{err}");
    }
}
