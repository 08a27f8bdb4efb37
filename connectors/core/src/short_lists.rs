//! Dynamic filters as local file scans take them: without long `IN` lists.
//!
//! A hash join sends its build-side keys to the probe side's scans as `k IN (…)` up to the
//! session's limit, which Tributary raises so that remote sources receive thousands of keys
//! (see `tributary_core::remote::dynamic`). A Parquet scan gains nothing from a list that
//! long and pays for it: it simplifies and re-evaluates the predicate for every file and
//! row group (10,000 keys made TPC-H q11 over Parquet 1.6x slower). [`ShortListsOnly`]
//! wraps such a filter for a file scan: it reads as the filter with every list longer than
//! DataFusion's default limit replaced by `true`, a weaker predicate that still keeps every
//! row the filter keeps (the join checks its keys itself).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{FieldRef, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, DynamicFilterPhysicalExpr, InListExpr, lit,
};
use datafusion::physical_expr_common::physical_expr::PhysicalExpr;

/// The longest `IN` list a local scan is given: DataFusion's own default.
pub const LOCAL_MAX_IN_LIST: usize = 150;

/// A dynamic filter, read without its `IN` lists longer than [`LOCAL_MAX_IN_LIST`].
#[derive(Debug)]
pub struct ShortListsOnly {
    inner: Arc<dyn PhysicalExpr>,
    /// The stripped expression of the inner filter's last generation seen.
    current: Mutex<Option<(u64, Arc<dyn PhysicalExpr>)>>,
}

impl ShortListsOnly {
    /// Wraps `filter`.
    pub fn new(filter: Arc<dyn PhysicalExpr>) -> Self {
        ShortListsOnly {
            inner: filter,
            current: Mutex::new(None),
        }
    }

    /// The inner filter's current state without long lists.
    fn current(&self) -> Result<Arc<dyn PhysicalExpr>> {
        // A snapshot of a tree holding this wrapper gives it the filter's current state as
        // its child: a static expression, stripped as it is. Walking into a long list (to
        // snapshot or to compute generations) would cost what the wrapper saves.
        let Some(dynamic) = self.inner.downcast_ref::<DynamicFilterPhysicalExpr>() else {
            return strip(Arc::clone(&self.inner));
        };
        let generation = self.inner.snapshot_generation();
        if let Ok(cached) = self.current.lock()
            && let Some((g, expr)) = cached.as_ref()
            && *g == generation
        {
            return Ok(Arc::clone(expr));
        }
        let stripped = strip(dynamic.current()?)?;
        if let Ok(mut cached) = self.current.lock() {
            *cached = Some((generation, Arc::clone(&stripped)));
        }
        Ok(stripped)
    }
}

/// `expr` with every long `IN` list in a position that only ever makes rows pass (under
/// AND, OR and CASE results) replaced by `true`.
fn strip(expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
    if let Some(list) = expr.downcast_ref::<InListExpr>()
        && !list.negated()
        && list.len() > LOCAL_MAX_IN_LIST
    {
        return Ok(lit(true));
    }
    if let Some(binary) = expr.downcast_ref::<BinaryExpr>()
        && matches!(binary.op(), Operator::And | Operator::Or)
    {
        return Ok(Arc::new(BinaryExpr::new(
            strip(Arc::clone(binary.left()))?,
            *binary.op(),
            strip(Arc::clone(binary.right()))?,
        )));
    }
    if let Some(case) = expr.downcast_ref::<CaseExpr>() {
        let branches = case
            .when_then_expr()
            .iter()
            .map(|(when, then)| Ok((Arc::clone(when), strip(Arc::clone(then))?)))
            .collect::<Result<Vec<_>>>()?;
        let otherwise = case.else_expr().map(|e| strip(Arc::clone(e))).transpose()?;
        return Ok(Arc::new(CaseExpr::try_new(
            case.expr().cloned(),
            branches,
            otherwise,
        )?));
    }
    Ok(expr)
}

impl fmt::Display for ShortListsOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortListsOnly({})", self.inner)
    }
}

impl PartialEq for ShortListsOnly {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for ShortListsOnly {}

impl Hash for ShortListsOnly {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl PhysicalExpr for ShortListsOnly {
    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        self.current()?.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        // The dynamic filter stays visible: its producer finds its consumers through it.
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        match (children.pop(), children.is_empty()) {
            (Some(inner), true) => Ok(Arc::new(ShortListsOnly::new(inner))),
            _ => datafusion::common::internal_err!("ShortListsOnly takes one child"),
        }
    }

    fn snapshot(&self) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        self.current().map(Some)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;

    #[test]
    fn long_lists_become_true_and_short_ones_stay() {
        let schema = Schema::new(vec![Field::new("k", DataType::Int64, true)]);
        let k = col("k", &schema).unwrap();
        let list = |n: i64| -> Arc<dyn PhysicalExpr> {
            Arc::new(
                InListExpr::try_new(Arc::clone(&k), (0..n).map(lit).collect(), false, &schema)
                    .unwrap(),
            )
        };
        let range: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(Arc::clone(&k), Operator::GtEq, lit(0i64)));
        let dynamic = Arc::new(DynamicFilterPhysicalExpr::new(
            vec![Arc::clone(&k)],
            lit(true),
        ));
        let wrapped = ShortListsOnly::new(Arc::clone(&dynamic) as Arc<dyn PhysicalExpr>);

        dynamic
            .update(Arc::new(BinaryExpr::new(
                Arc::clone(&range),
                Operator::And,
                list(1000),
            )))
            .unwrap();
        assert_eq!(
            wrapped.snapshot().unwrap().unwrap().to_string(),
            "k@0 >= 0 AND true"
        );
        dynamic
            .update(Arc::new(BinaryExpr::new(range, Operator::And, list(3))))
            .unwrap();
        assert_eq!(
            wrapped.snapshot().unwrap().unwrap().to_string(),
            "k@0 >= 0 AND k@0 IN (SET) ([0, 1, 2])"
        );
        // Through a snapshot of a tree holding it, as scans take theirs.
        let tree: Arc<dyn PhysicalExpr> = Arc::new(wrapped);
        assert_eq!(
            snapshot_physical_expr(tree).unwrap().to_string(),
            "k@0 >= 0 AND k@0 IN (SET) ([0, 1, 2])"
        );
    }
}
