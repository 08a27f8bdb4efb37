//! Reading a condition as MariaDB prints it in `EXPLAIN FORMAT=JSON`
//! (`attached_condition`): which of its conjuncts filter one table by that table's own
//! columns.
//!
//! MariaDB prints column references as `alias.column`, quoting a name with backticks
//! where it needs them (`` w.`my col` ``), strings in single quotes, and `and` in lower
//! case. The reading errs on the side of finding no filter: a conjunct it cannot tell
//! apart counts as not filtering, which leaves the server's own estimate as it is.

/// The table a condition is attached to, and the names of the query's other tables.
pub struct Table<'a> {
    /// The table's name or alias, as `EXPLAIN` names it.
    pub name: &'a str,
    /// The columns of the key the server reads the table by (a range or a lookup), whose
    /// conditions its row count already reflects; empty for a whole read.
    pub key_parts: &'a [String],
    /// The names of every other table in the query.
    pub others: &'a [&'a str],
}

/// Whether `condition` holds a conjunct that filters `table` by its own columns alone:
/// one that names the table and no other, is not the `… IS NOT NULL` the server adds to a
/// column it looks another table up by, and is not a condition on the key the server
/// reads the table by.
pub fn filters_alone(condition: &str, table: &Table) -> bool {
    conjuncts(condition).any(|conjunct| {
        let tokens = tokens(conjunct);
        let columns = own_columns(&tokens, table);
        let named = match columns {
            Some(columns) => columns,
            None => return false,
        };
        !named.is_empty()
            && !is_not_null_check(&tokens)
            && !named
                .iter()
                .all(|c| table.key_parts.iter().any(|k| k.eq_ignore_ascii_case(c)))
    })
}

/// The conjuncts of `condition`: its parts joined by `and` outside parentheses and
/// quotes. A `BETWEEN … AND …` is cut in two; each half still names its column.
fn conjuncts(condition: &str) -> impl Iterator<Item = &str> {
    let bytes = condition.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0usize, 0, 0);
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' && q != b'`' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\'' | b'"' | b'`' => quote = Some(b),
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b' ' if depth == 0 && starts_with_and(&bytes[i..]) => {
                    parts.push(&condition[start..i]);
                    i += " and ".len();
                    start = i;
                    continue;
                }
                _ => {}
            },
        }
        i += 1;
    }
    parts.push(&condition[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

fn starts_with_and(bytes: &[u8]) -> bool {
    bytes.len() >= 5 && bytes[..5].eq_ignore_ascii_case(b" and ")
}

/// A token of a condition: a name (a word, or a backtick-quoted name), a dot, or anything
/// else (an operator, a literal, a parenthesis).
#[derive(Debug, PartialEq)]
enum Token {
    Name { text: String, quoted: bool },
    Dot,
    Other,
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '.' => out.push(Token::Dot),
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

/// The columns of `table` a conjunct names as `table.column`, or `None` if it names
/// another table of the query.
fn own_columns(tokens: &[Token], table: &Table) -> Option<Vec<String>> {
    let mut columns = Vec::new();
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
            .others
            .iter()
            .any(|other| other.eq_ignore_ascii_case(qualifier))
        {
            return None;
        }
    }
    Some(columns)
}

/// Whether the conjunct is `name.column IS NOT NULL` and nothing else.
fn is_not_null_check(tokens: &[Token]) -> bool {
    let keyword = |token: &Token, word: &str| matches!(token, Token::Name { text, quoted: false } if text.eq_ignore_ascii_case(word));
    let [reference @ .., is, not, null] = tokens else {
        return false;
    };
    keyword(is, "is")
        && keyword(not, "not")
        && keyword(null, "null")
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
        filters_alone(
            condition,
            &Table {
                name,
                key_parts: &[],
                others,
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
        // A string that looks like another table's column is no reference.
        assert!(alone("t2.s = 'w.n'", "t2", &["w"]));
    }

    #[test]
    fn a_condition_on_the_key_the_table_is_read_by_does_not() {
        let key_parts = ["o_orderdate".to_string()];
        let table = Table {
            name: "orders",
            key_parts: &key_parts,
            others: &[],
        };
        let range = "orders.o_orderdate >= '1993-10-01' and orders.o_orderdate < '1994-01-01'";
        assert!(!filters_alone(range, &table));
        assert!(filters_alone(
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
