//! `${VAR}` and `${VAR:-default}` in config values.
//!
//! Interpolation runs on the parsed YAML tree, on string values only, so a secret holding
//! YAML syntax (`:`, `#`, quotes) cannot change the document's structure, and an error can
//! name the key whose value referred to a missing variable. `$$` stands for a literal `$`.

use serde_yaml_ng::Value;

/// Replaces every `${…}` in the string values of `value`, reading variables with `lookup`.
/// `path` is the key path of `value`, used in errors.
pub fn interpolate(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                *s = substitute(s, lookup).map_err(|m| (path.to_string(), m))?;
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), lookup)?;
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = match key {
                    Value::String(k) => k.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .map(|k| k.trim().to_string())
                        .unwrap_or_default(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate(item, &child, lookup)?;
            }
        }
        Value::Tagged(tagged) => interpolate(&mut tagged.value, path, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

fn substitute(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                format!("unclosed `${{` in `{text}` (write `$$` for a literal `$`)")
            })?;
            out.push_str(&expand(&body[..end], lookup)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(expr: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match expr.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (expr, None),
    };
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(format!(
            "`${{{expr}}}` is not a valid variable reference (expected `${{NAME}}` or `${{NAME:-default}}`)"
        ));
    }
    match (
        lookup(name).filter(|v| !v.is_empty() || default.is_none()),
        default,
    ) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("ada".into()),
            "EMPTY" => Some(String::new()),
            "TRICKY" => Some("p@ss: #word".into()),
            _ => None,
        }
    }

    fn sub(text: &str) -> Result<String, String> {
        substitute(text, &env)
    }

    #[test]
    fn variables_defaults_and_escapes() {
        assert_eq!(sub("postgres://${USER}@db").unwrap(), "postgres://ada@db");
        assert_eq!(sub("${MISSING:-5432}").unwrap(), "5432");
        assert_eq!(sub("${USER:-x}").unwrap(), "ada");
        assert_eq!(sub("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(sub("${EMPTY}").unwrap(), "");
        assert_eq!(sub("${MISSING:-}").unwrap(), "");
        assert_eq!(sub("cost $$5 and $x").unwrap(), "cost $5 and $x");
        assert_eq!(sub("${TRICKY}").unwrap(), "p@ss: #word");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = sub("${MISSING}").unwrap_err();
        assert!(
            e.contains("environment variable `MISSING` is not set"),
            "{e}"
        );
        let e = sub("${OPEN").unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        let e = sub("${1BAD}").unwrap_err();
        assert!(e.contains("not a valid variable reference"), "{e}");
    }

    #[test]
    fn errors_carry_the_key_path() {
        let mut v: Value =
            serde_yaml_ng::from_str("sources:\n  - name: pg\n    password: ${NOPE}\n").unwrap();
        let (path, msg) = interpolate(&mut v, "", &env).unwrap_err();
        assert_eq!(path, "sources[0].password");
        assert!(msg.contains("NOPE"));
    }
}
