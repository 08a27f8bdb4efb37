//! String comparisons written so that MySQL and MariaDB, whose collations equate
//! different strings, compare them as DataFusion does.
//!
//! MySQL's and MariaDB's default collations ignore case and accents (`'abc' = 'ÄBC'`), and
//! their PAD SPACE collations trailing spaces (`'abc' = 'abc '`). A comparison with a
//! binary string compares bytes, trailing spaces included, whatever the column's
//! collation, so `s = CAST('abc' AS BINARY)` keeps exactly the rows DataFusion keeps for
//! `s = 'abc'` where `s` holds UTF-8 text (the connection's character set, in which the
//! literal is written). Order follows bytes as well, which for UTF-8 is code point order,
//! DataFusion's.
//!
//! Equality and `IN` keep the collated comparison beside the exact one: it keeps every
//! row the exact one keeps (equal bytes are equal under any collation), and the server
//! answers it from an index on the column, which it cannot use for the binary comparison.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, BinaryOperator, VisitMut, visit_expressions_mut};

/// Writes the string literals of `node`'s comparisons (`=`, `<>`, `<`, `<=`, `>`, `>=`,
/// `<=>`, `IN`, `BETWEEN`) as binary strings if `wanted`, as the source's rules say
/// ([`PushdownRules::exact_strings`](super::PushdownRules::exact_strings)). The pushdown
/// rules only let through string comparisons between one column and literals, which this
/// makes exact.
pub(crate) fn write_exact_strings<V: VisitMut>(wanted: bool, node: &mut V) {
    if !wanted {
        return;
    }
    let _ = visit_expressions_mut(node, |e| {
        if let Some(exact) = exact_form(e) {
            *e = exact;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `e` comparing its string literals as binary strings, if it is a comparison of
/// something other than literals with a literal.
fn exact_form(e: &ast::Expr) -> Option<ast::Expr> {
    match e {
        ast::Expr::BinaryOp { left, op, right }
            if is_comparison(op) && is_string_literal(left) != is_string_literal(right) =>
        {
            let exact = ast::Expr::BinaryOp {
                left: Box::new(binary(left)),
                op: op.clone(),
                right: Box::new(binary(right)),
            };
            Some(
                if *op == BinaryOperator::Eq && collated_comparable([left.as_ref(), right.as_ref()])
                {
                    beside(e, exact)
                } else {
                    exact
                },
            )
        }
        ast::Expr::InList {
            expr,
            list,
            negated,
        } if list.iter().chain([expr.as_ref()]).any(is_string_literal)
            && !list.iter().chain([expr.as_ref()]).all(is_string_literal) =>
        {
            let exact = ast::Expr::InList {
                expr: Box::new(binary(expr)),
                list: list.iter().map(binary).collect(),
                negated: *negated,
            };
            // `'x' IN (s, t)` compares with columns, which no index on one of them answers.
            let indexed = !is_string_literal(expr) && collated_comparable(list);
            Some(if !*negated && indexed {
                beside(e, exact)
            } else {
                exact
            })
        }
        ast::Expr::Between {
            expr,
            negated,
            low,
            high,
        } if [expr, low, high].iter().any(|o| is_string_literal(o))
            && ![expr, low, high].iter().all(|o| is_string_literal(o)) =>
        {
            Some(ast::Expr::Between {
                expr: Box::new(binary(expr)),
                negated: *negated,
                low: Box::new(binary(low)),
                high: Box::new(binary(high)),
            })
        }
        _ => None,
    }
}

/// Whether the collated comparison with these operands can stand beside the exact one: a
/// `utf8mb3` column compared with a character beyond the Basic Multilingual Plane, which
/// it cannot hold, fails (error 1267) where the binary comparison is just false.
fn collated_comparable<'a>(operands: impl IntoIterator<Item = &'a ast::Expr>) -> bool {
    operands.into_iter().all(|o| match o {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.chars().all(|c| c <= '\u{FFFF}'),
            _ => true,
        },
        _ => true,
    })
}

/// `collated AND exact`: the collated comparison for the server's indexes, the exact one
/// for the answer.
fn beside(collated: &ast::Expr, exact: ast::Expr) -> ast::Expr {
    ast::Expr::Nested(Box::new(ast::Expr::BinaryOp {
        left: Box::new(collated.clone()),
        op: BinaryOperator::And,
        right: Box::new(exact),
    }))
}

fn is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
            | BinaryOperator::Spaceship
    )
}

fn is_string_literal(e: &ast::Expr) -> bool {
    matches!(e, ast::Expr::Value(v) if matches!(v.value, ast::Value::SingleQuotedString(_)))
}

/// `e` as a binary string if it is a string literal, else unchanged.
fn binary(e: &ast::Expr) -> ast::Expr {
    if !is_string_literal(e) {
        return e.clone();
    }
    ast::Expr::Cast {
        kind: ast::CastKind::Cast,
        expr: Box::new(e.clone()),
        data_type: ast::DataType::Binary(None),
        array: false,
        format: None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn written(sql: &str, exact_strings: bool) -> String {
        let mut statement = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        write_exact_strings(exact_strings, &mut statement);
        statement.to_string()
    }

    #[test]
    fn comparisons_with_string_literals_compare_bytes() {
        assert_eq!(
            written(
                "SELECT a FROM t WHERE s = 'x' AND s <> 'y' AND 'b' < s AND s <=> 'z'",
                true
            ),
            "SELECT a FROM t WHERE (s = 'x' AND s = CAST('x' AS BINARY)) \
             AND s <> CAST('y' AS BINARY) AND CAST('b' AS BINARY) < s \
             AND s <=> CAST('z' AS BINARY)"
        );
        assert_eq!(
            written(
                "SELECT a FROM t WHERE s IN ('x', 'y') OR s NOT IN ('z') \
                 OR s BETWEEN 'a' AND 'b'",
                true
            ),
            "SELECT a FROM t WHERE (s IN ('x', 'y') AND s IN (CAST('x' AS BINARY), \
             CAST('y' AS BINARY))) OR s NOT IN (CAST('z' AS BINARY)) \
             OR s BETWEEN CAST('a' AS BINARY) AND CAST('b' AS BINARY)"
        );
    }

    #[test]
    fn everything_else_is_left_as_written() {
        // Dates are cast literals; literals compared with literals, numbers and values
        // that are not compared keep their form; without the rule nothing changes.
        let kept = "SELECT 'x' AS k FROM t WHERE d >= CAST('2024-01-01' AS DATE) \
                    AND 'a' = 'b' AND i = 1 AND n IN (1, 2)";
        assert_eq!(written(kept, true), kept);
        let other = "SELECT a FROM t WHERE s = 'x'";
        assert_eq!(written(other, false), other);
    }
}
