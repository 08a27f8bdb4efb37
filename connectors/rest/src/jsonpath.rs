//! JSONPath, the part of it that names one value (`$.data.items`, `$['odd key'][0]`), and a
//! scanner that finds such a value in a response body without building a document tree:
//! records are cut out as byte slices and decoded by arrow-json straight into Arrow arrays.
//!
//! The scanner trusts the body to be valid JSON (the caller validates it first) but never
//! panics on bytes that are not: it reports what it expected instead.

use std::fmt;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Key(String),
    /// An array element (0-based).
    Index(usize),
}

/// A parsed JSONPath naming one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// Parses `$`, `$.a.b`, `$['a b'][0]`, or the same without the leading `$` (`a.b`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let unsupported = |what: &str| {
            Err(format!(
                "`{text}`: {what} is not supported; a path names one value with keys and indexes, e.g. `$.data.items` or `$['a b'][0]`"
            ))
        };
        let chars: Vec<char> = text.trim().chars().collect();
        let mut i = 0;
        if chars.first() == Some(&'$') {
            i = 1;
        } else if !chars.is_empty() && chars[0] != '.' && chars[0] != '[' {
            // `a.b` reads as `$.a.b`.
            let rooted = Self::parse(&format!("$.{}", text.trim()))?;
            return Ok(JsonPath {
                text: text.trim().to_string(),
                steps: rooted.steps,
            });
        }
        let mut steps = Vec::new();
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    if chars.get(i + 1) == Some(&'.') {
                        return unsupported("recursive descent (`..`)");
                    }
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
                        end += 1;
                    }
                    let key: String = chars[start..end].iter().collect();
                    if key.is_empty() {
                        return Err(format!("`{text}`: a `.` must be followed by a key"));
                    }
                    if key == "*" {
                        return unsupported("a wildcard (`*`)");
                    }
                    steps.push(Step::Key(key));
                    i = end;
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .map(|p| i + p)
                        .ok_or_else(|| format!("`{text}`: `[` is never closed"))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    if let Some(quoted) = inner
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    {
                        steps.push(Step::Key(quoted.to_string()));
                    } else if let Ok(n) = inner.parse::<usize>() {
                        steps.push(Step::Index(n));
                    } else if inner == "*" {
                        return unsupported("a wildcard (`[*]`)");
                    } else if inner.starts_with('?') {
                        return unsupported("a filter (`[?…]`)");
                    } else {
                        return Err(format!(
                            "`{text}`: `[{inner}]` is neither a quoted key nor an index"
                        ));
                    }
                    i = close + 1;
                }
                c => return Err(format!("`{text}`: unexpected `{c}`")),
            }
        }
        Ok(JsonPath {
            text: text.trim().to_string(),
            steps,
        })
    }

    /// The steps from the root.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The keys of a path made of keys only (`$.a.b` → `[a, b]`); `None` if it indexes.
    pub fn keys(&self) -> Option<Vec<&str>> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Key(k) => Some(k.as_str()),
                Step::Index(_) => None,
            })
            .collect()
    }

    /// The value this path names in `json`, as its bytes; `None` when a key or index on the
    /// way is missing or the value there is not an object or array.
    pub fn find<'a>(&self, json: &'a [u8]) -> Result<Option<&'a [u8]>, String> {
        let mut start = skip_ws(json, 0);
        for step in &self.steps {
            let found = match step {
                Step::Key(key) => member(json, start, key)?,
                Step::Index(n) => element(json, start, *n)?,
            };
            match found {
                Some(at) => start = at,
                None => return Ok(None),
            }
        }
        let end = value_end(json, start)?;
        Ok(Some(&json[start..end]))
    }
}

/// The members' keys of the object `json`, to tell a user what a path could have named.
pub fn keys(json: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    let _ = walk_object(json, skip_ws(json, 0), |key, _| {
        keys.push(key.to_string());
        false
    });
    keys
}

/// The elements of the array `json`, as byte slices.
pub fn elements(json: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut at = skip_ws(json, 0);
    if json.get(at) != Some(&b'[') {
        return Err(format!("expected an array, found {}", describe(json, at)));
    }
    at = skip_ws(json, at + 1);
    let mut items = Vec::new();
    if json.get(at) == Some(&b']') {
        return Ok(items);
    }
    loop {
        let end = value_end(json, at)?;
        items.push(&json[at..end]);
        at = skip_ws(json, end);
        match json.get(at) {
            Some(b',') => at = skip_ws(json, at + 1),
            Some(b']') => return Ok(items),
            _ => return Err(format!("expected `,` or `]`, found {}", describe(json, at))),
        }
    }
}

/// A short description of what is at `at`, for errors.
pub fn describe(json: &[u8], at: usize) -> String {
    match json.get(at) {
        None => "the end of the document".to_string(),
        Some(b'{') => "an object".to_string(),
        Some(b'[') => "an array".to_string(),
        Some(b'"') => "a string".to_string(),
        Some(b'n') => "null".to_string(),
        Some(b't' | b'f') => "a boolean".to_string(),
        Some(_) => "a number".to_string(),
    }
}

/// Where the value of `key` starts in the object at `start`, if it has that member.
fn member(json: &[u8], start: usize, key: &str) -> Result<Option<usize>, String> {
    if json.get(start) != Some(&b'{') {
        return Ok(None);
    }
    let mut found = None;
    walk_object(json, start, |k, at| {
        if k == key {
            found = Some(at);
            true
        } else {
            false
        }
    })?;
    Ok(found)
}

/// Where element `n` of the array at `start` starts, if it has one.
fn element(json: &[u8], start: usize, n: usize) -> Result<Option<usize>, String> {
    if json.get(start) != Some(&b'[') {
        return Ok(None);
    }
    let mut at = skip_ws(json, start + 1);
    if json.get(at) == Some(&b']') {
        return Ok(None);
    }
    let mut index = 0;
    loop {
        if index == n {
            return Ok(Some(at));
        }
        at = skip_ws(json, value_end(json, at)?);
        match json.get(at) {
            Some(b',') => at = skip_ws(json, at + 1),
            _ => return Ok(None),
        }
        index += 1;
    }
}

/// Calls `visit(key, value_start)` for each member of the object at `start` until it
/// returns true.
fn walk_object(
    json: &[u8],
    start: usize,
    mut visit: impl FnMut(&str, usize) -> bool,
) -> Result<(), String> {
    if json.get(start) != Some(&b'{') {
        return Err(format!(
            "expected an object, found {}",
            describe(json, start)
        ));
    }
    let mut at = skip_ws(json, start + 1);
    if json.get(at) == Some(&b'}') {
        return Ok(());
    }
    loop {
        if json.get(at) != Some(&b'"') {
            return Err(format!("expected a key, found {}", describe(json, at)));
        }
        let key_end = string_end(json, at)?;
        let raw = &json[at..key_end];
        let key = if raw.contains(&b'\\') {
            serde_json::from_slice::<String>(raw).map_err(|e| e.to_string())?
        } else {
            String::from_utf8_lossy(&raw[1..raw.len() - 1]).into_owned()
        };
        at = skip_ws(json, key_end);
        if json.get(at) != Some(&b':') {
            return Err(format!("expected `:`, found {}", describe(json, at)));
        }
        let value = skip_ws(json, at + 1);
        if visit(&key, value) {
            return Ok(());
        }
        at = skip_ws(json, value_end(json, value)?);
        match json.get(at) {
            Some(b',') => at = skip_ws(json, at + 1),
            Some(b'}') => return Ok(()),
            _ => {
                return Err(format!(
                    "expected `,` or `}}`, found {}",
                    describe(json, at)
                ));
            }
        }
    }
}

fn skip_ws(json: &[u8], mut at: usize) -> usize {
    while matches!(json.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The index just past the string starting (with its `"`) at `start`.
fn string_end(json: &[u8], start: usize) -> Result<usize, String> {
    let mut at = start + 1;
    while let Some(&b) = json.get(at) {
        match b {
            b'\\' => at += 2,
            b'"' => return Ok(at + 1),
            _ => at += 1,
        }
    }
    Err("a string is never closed".to_string())
}

/// The index just past the value starting at `start`.
fn value_end(json: &[u8], start: usize) -> Result<usize, String> {
    match json.get(start) {
        None => Err("expected a value, found the end of the document".to_string()),
        Some(b'"') => string_end(json, start),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut at = start;
            while let Some(&b) = json.get(at) {
                match b {
                    b'"' => {
                        at = string_end(json, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
            Err("an object or array is never closed".to_string())
        }
        Some(_) => {
            let mut at = start;
            while let Some(&b) = json.get(at) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                at += 1;
            }
            Ok(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(path: &str, json: &str) -> Option<String> {
        JsonPath::parse(path)
            .unwrap()
            .find(json.as_bytes())
            .unwrap()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn paths_parse_keys_and_indexes() {
        let p = JsonPath::parse("$.data['odd key'][2].x").unwrap();
        assert_eq!(
            p.steps(),
            &[
                Step::Key("data".into()),
                Step::Key("odd key".into()),
                Step::Index(2),
                Step::Key("x".into())
            ]
        );
        assert_eq!(JsonPath::parse("a.b").unwrap().keys(), Some(vec!["a", "b"]));
        assert!(JsonPath::parse("$").unwrap().steps().is_empty());
        for bad in ["$..a", "$.a[*]", "$.a[?(@.x)]", "$.", "$[x]", "$.a[0"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_found_without_being_fooled_by_strings() {
        let json = r#" { "s": "a\"}],{[", "data" : { "items": [ {"id": 1}, {"id": 2, "t": "x,y"} ] },
            "n": null, "k\u0041": 7, "odd key": [10, 20, 30] } "#;
        assert_eq!(
            find("$.data.items[1]", json).unwrap(),
            r#"{"id": 2, "t": "x,y"}"#
        );
        assert_eq!(find("$.n", json).unwrap(), "null");
        assert_eq!(find("$.kA", json).unwrap(), "7");
        assert_eq!(find("$['odd key'][2]", json).unwrap(), "30");
        assert_eq!(find("$.missing", json), None);
        assert_eq!(find("$.s.x", json), None);
        assert_eq!(find("$['odd key'][3]", json), None);
        let items = find("$.data.items", json).unwrap();
        let elements = elements(items.as_bytes()).unwrap();
        assert_eq!(
            elements,
            vec![&b"{\"id\": 1}"[..], b"{\"id\": 2, \"t\": \"x,y\"}"]
        );
        assert!(elements_of("[]").is_empty());
        assert_eq!(
            keys(json.as_bytes()),
            vec!["s", "data", "n", "kA", "odd key"]
        );
    }

    fn elements_of(json: &str) -> Vec<&[u8]> {
        elements(json.as_bytes()).unwrap()
    }

    #[test]
    fn broken_documents_are_errors_not_panics() {
        for bad in [
            r#"{"a": "#,
            r#"{"a": [1, 2"#,
            r#"{"a": "x"#,
            r#"{"a" 1}"#,
            "{",
        ] {
            let _ = JsonPath::parse("$.a.b").unwrap().find(bad.as_bytes());
            let _ = elements(bad.as_bytes());
        }
        assert!(
            elements(b"{\"a\": 1}")
                .unwrap_err()
                .contains("expected an array")
        );
    }
}
