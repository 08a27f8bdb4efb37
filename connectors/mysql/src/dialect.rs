//! How DataFusion's unparser writes SQL for MySQL: its MySQL dialect, with timestamps cast
//! to `DATETIME(6)` (a bare `DATETIME` cast drops fractions of a second).

use std::sync::Arc;

use datafusion::arrow::datatypes::TimeUnit;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::sql::sqlparser::ast;
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::{
    DateFieldExtractStyle, Dialect, DistinctFromStyle, IntervalStyle, MySqlDialect,
};

/// DataFusion's `MySqlDialect` with microsecond timestamp casts.
pub struct MysqlDialect(MySqlDialect);

impl MysqlDialect {
    /// The dialect.
    pub fn new() -> Self {
        MysqlDialect(MySqlDialect {})
    }
}

impl Default for MysqlDialect {
    fn default() -> Self {
        Self::new()
    }
}

impl Dialect for MysqlDialect {
    fn supports_qualify(&self) -> bool {
        self.0.supports_qualify()
    }

    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.0.identifier_quote_style(identifier)
    }

    fn supports_nulls_first_in_sort(&self) -> bool {
        self.0.supports_nulls_first_in_sort()
    }

    fn interval_style(&self) -> IntervalStyle {
        self.0.interval_style()
    }

    fn utf8_cast_dtype(&self) -> ast::DataType {
        self.0.utf8_cast_dtype()
    }

    fn large_utf8_cast_dtype(&self) -> ast::DataType {
        self.0.large_utf8_cast_dtype()
    }

    fn date_field_extract_style(&self) -> DateFieldExtractStyle {
        self.0.date_field_extract_style()
    }

    fn distinct_from_style(&self) -> DistinctFromStyle {
        self.0.distinct_from_style()
    }

    fn int64_cast_dtype(&self) -> ast::DataType {
        self.0.int64_cast_dtype()
    }

    fn int32_cast_dtype(&self) -> ast::DataType {
        self.0.int32_cast_dtype()
    }

    fn timestamp_cast_dtype(&self, _unit: &TimeUnit, _tz: &Option<Arc<str>>) -> ast::DataType {
        ast::DataType::Datetime(Some(6))
    }

    fn requires_derived_table_alias(&self) -> bool {
        self.0.requires_derived_table_alias()
    }

    fn scalar_function_to_sql_overrides(
        &self,
        unparser: &Unparser,
        func_name: &str,
        args: &[Expr],
    ) -> Result<Option<ast::Expr>> {
        self.0
            .scalar_function_to_sql_overrides(unparser, func_name, args)
    }
}
