//! Reading a condition as MariaDB prints it in `EXPLAIN FORMAT=JSON`
//! (`attached_condition`): whether one of its conjuncts filters the table it is attached
//! to by a condition the server did not estimate.
//!
//! MariaDB prints column references as `alias.column`, quoting a name with backticks
//! where it needs them (`` w.`my col` ``), strings in single quotes, and `and` in lower
//! case. The reading errs on the side of finding no filter: a conjunct it cannot tell
//! apart counts as not filtering, which leaves the server's own estimate as it is.

/// The table a condition is attached to, and the names of the query's tables.
pub struct Table<'a> {
    /// The table's name or alias, as `EXPLAIN` names it.
    pub name: &'a str,
    /// The columns of the key the server reads the table by (a range or a lookup), whose
    /// conditions its row count already reflects; empty for a whole read.
    pub key_parts: &'a [String],
    /// The names of every table in the query (this one's among them).
    pub tables: &'a [&'a str],
}

/// Whether `condition` holds a conjunct that filters `table`: one that names the table's
/// columns, other than the key the server reads the table by, and is not the
/// `… IS NOT NULL` the server adds to a column it looks another table up by. For a table
/// read whole, the conjunct must name no other table: a buffered join's condition is the
/// join itself. For a table read by key, one that names another table too is a join
/// condition beside the key, which the server does not estimate either (TPC-H q05's
/// `s_nationkey = c_nationkey` on `supplier`, looked up by `s_suppkey`).
pub fn filters(condition: &str, table: &Table) -> bool {
    let tokens = tokens(condition);
    conjuncts(&tokens).any(|conjunct| {
        let (named, others) = references(conjunct, table);
        !named.is_empty()
            && (!others || !table.key_parts.is_empty())
            && !is_not_null_check(conjunct)
            && !named
                .iter()
                .all(|c| table.key_parts.iter().any(|k| k.eq_ignore_ascii_case(c)))
    })
}

/// A token of a condition: a name (a word, or a backtick-quoted name), a dot, a
/// parenthesis, or anything else (an operator, a literal).
#[derive(Debug, PartialEq)]
enum Token {
    Name { text: String, quoted: bool },
    Dot,
    Open,
    Close,
    Other,
}

impl Token {
    /// Whether the token is the unquoted keyword `word`.
    fn is_keyword(&self, word: &str) -> bool {
        matches!(self, Token::Name { text, quoted: false } if text.eq_ignore_ascii_case(word))
    }
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '.' => out.push(Token::Dot),
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            '`' => {
                let mut name = String::new();
                while let Some(c) = chars.next() {
                    if c == '`' {
                        // A doubled backtick is one inside the name.
                        if chars.peek() == Some(&'`') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    name.push(c);
                }
                out.push(Token::Name {
                    text: name,
                    quoted: true,
                });
            }
            '\'' | '"' => {
                while let Some(s) = chars.next() {
                    if s == '\\' {
                        chars.next();
                    } else if s == c {
                        // A doubled quote is one inside the string.
                        if chars.peek() == Some(&c) {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                out.push(Token::Other);
            }
            c if is_word(c) => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek().filter(|c| is_word(**c)) {
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Name {
                    text: word,
                    quoted: false,
                });
            }
            _ => out.push(Token::Other),
        }
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The conjuncts of a condition: its tokens between the `and`s outside parentheses. A
/// `BETWEEN … AND …` is cut in two; the first half still names its column.
fn conjuncts(tokens: &[Token]) -> impl Iterator<Item = &[Token]> {
    let mut depth = 0usize;
    tokens
        .split(move |token| {
            match token {
                Token::Open => depth += 1,
                Token::Close => depth = depth.saturating_sub(1),
                _ => {}
            }
            depth == 0 && token.is_keyword("and")
        })
        .filter(|conjunct| !conjunct.is_empty())
}

/// The columns of `table` a conjunct names as `table.column`, and whether it names
/// another table of the query.
fn references(tokens: &[Token], table: &Table) -> (Vec<String>, bool) {
    let mut columns = Vec::new();
    let mut others = false;
    for window in tokens.windows(3) {
        let [
            Token::Name {
                text: qualifier, ..
            },
            Token::Dot,
            Token::Name { text: column, .. },
        ] = window
        else {
            continue;
        };
        if qualifier.eq_ignore_ascii_case(table.name) {
            columns.push(column.clone());
        } else if table
            .tables
            .iter()
            .any(|other| other.eq_ignore_ascii_case(qualifier))
        {
            others = true;
        }
    }
    (columns, others)
}

/// Whether the conjunct is `name.column IS NOT NULL` and nothing else.
fn is_not_null_check(tokens: &[Token]) -> bool {
    let [reference @ .., is, not, null] = tokens else {
        return false;
    };
    is.is_keyword("is")
        && not.is_keyword("not")
        && null.is_keyword("null")
        && !reference.is_empty()
        && reference.iter().enumerate().all(|(i, token)| {
            if i % 2 == 0 {
                matches!(token, Token::Name { .. })
            } else {
                *token == Token::Dot
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alone(condition: &str, name: &str, others: &[&str]) -> bool {
        let mut tables = vec![name];
        tables.extend(others);
        filters(
            condition,
            &Table {
                name,
                key_parts: &[],
                tables: &tables,
            },
        )
    }

    #[test]
    fn a_condition_on_the_tables_own_columns_filters_it() {
        let q10 = "orders.o_orderdate >= '1993-10-01' and orders.o_orderdate < '1994-01-01'";
        assert!(alone(q10, "orders", &["customer"]));
        assert!(alone("t2.s = 'x' or t2.s like 'z%'", "t2", &["w"]));
        // Quoted names, and a string holding ` and ` and a quote.
        assert!(alone(
            "w.`my col` <> 'a and b''s' and ucase(w.`my col`) = 'B'",
            "w",
            &["t2"]
        ));
        assert!(alone("`we ird`.n between 1 and 5", "we ird", &[]));
    }

    #[test]
    fn the_servers_null_check_on_a_lookup_column_does_not() {
        assert!(!alone("t2.wid is not null", "t2", &["w"]));
        assert!(!alone("`t 2`.`w id` is not null", "t 2", &["w"]));
        // Beside a real filter, the filter counts.
        assert!(alone("t2.wid is not null and t2.s = 'x'", "t2", &["w"]));
    }

    #[test]
    fn a_join_condition_does_not() {
        assert!(!alone("t2.wid = w.n", "t2", &["w"]));
        // The join condition of a buffered join, with the table's own filter beside it.
        assert!(alone(
            "t2.wid = w.n and (t2.s = 'x' or t2.s like 'z%')",
            "t2",
            &["w"]
        ));
        // An `and` inside parentheses joins no conjuncts.
        assert!(!alone(
            "(t2.wid = w.n and t2.s = 'x') or t2.s = 'y'",
            "t2",
            &["w"]
        ));
        // A string that looks like another table's column is no reference.
        assert!(alone("t2.s = 'w.n'", "t2", &["w"]));
    }

    #[test]
    fn a_join_condition_beside_the_key_a_table_is_looked_up_by_does() {
        let key_parts = ["s_suppkey".to_string()];
        let table = Table {
            name: "supplier",
            key_parts: &key_parts,
            tables: &["supplier", "customer", "lineitem"],
        };
        assert!(filters(
            "supplier.s_nationkey = customer.c_nationkey",
            &table
        ));
        // The key's own equality is what the lookup reads by.
        assert!(!filters("supplier.s_suppkey = lineitem.l_suppkey", &table));
        assert!(!filters("lineitem.l_suppkey is not null", &table));
    }

    #[test]
    fn a_condition_on_the_key_the_table_is_read_by_does_not() {
        let key_parts = ["o_orderdate".to_string()];
        let table = Table {
            name: "orders",
            key_parts: &key_parts,
            tables: &["orders"],
        };
        let range = "orders.o_orderdate >= '1993-10-01' and orders.o_orderdate < '1994-01-01'";
        assert!(!filters(range, &table));
        assert!(filters(
            &format!("{range} and orders.o_comment like '%x%'"),
            &table
        ));
    }

    #[test]
    fn conditions_naming_no_column_do_not() {
        assert!(!alone("1 = 1", "t", &[]));
        assert!(!alone("", "t", &[]));
        // A decimal reads as a name and a dot, but names no table.
        assert!(alone("t.d > 1.5", "t", &[]));
    }
}
