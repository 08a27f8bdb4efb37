//! Reading a config file into [`Config`], with errors that name the key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use datafusion::prelude::SessionConfig;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::AuthConfig;
use super::interpolate::interpolate;
use super::security::FROM_ENV_ONLY;
use super::{Config, MaterializationConfig, RefreshMode, ServerConfig, SourceConfig, SourceKind};
use crate::server::auth::PasswordHash;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but a value is wrong.
    #[error("{file}: {}{message}", key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: String,
        /// Path of the offending key, e.g. `sources[2].url`; `None` for syntax errors.
        key: Option<String>,
        /// What was expected.
        message: String,
    },
}

/// Reasons are collected as (key path, message) and given the file name at the end.
type KeyError = (String, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    sources: Vec<Value>,
    #[serde(default)]
    materializations: Vec<MaterializationConfig>,
}

/// Names a source may not take: DataFusion's own catalog and schema, and Tributary's.
const RESERVED_NAMES: &[&str] = &[
    "datafusion",
    "information_schema",
    "tributary",
    crate::materialize::CATALOG,
];

impl Config {
    /// Loads the config file at `path`, reading `${VAR}`s from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path), &|name| std::env::var(name).ok())
    }

    /// Parses config text; `path` (for messages and relative paths) is the file it came
    /// from, and `env` looks up `${VAR}`s.
    pub fn parse(
        text: &str,
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = path.map_or_else(|| "<config>".to_string(), |p| p.display().to_string());
        let invalid = |(key, message): KeyError| ConfigError::Invalid {
            file: file.clone(),
            key: (!key.is_empty()).then_some(key),
            message,
        };

        let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Invalid {
            file: file.clone(),
            key: None,
            message: format!("not valid YAML: {e}"),
        })?;
        if value.is_null() {
            value = Value::Mapping(Mapping::new());
        }
        if !value.is_mapping() {
            return Err(invalid((
                String::new(),
                "expected a mapping with `server`, `sources` and `materializations`".into(),
            )));
        }
        secrets_from_env(&value).map_err(invalid)?;
        interpolate(&mut value, "", env).map_err(invalid)?;

        let raw: RawConfig = deserialize(value, "").map_err(invalid)?;
        let sources = raw
            .sources
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse_source(i, v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;

        // Absolute, because paths relative to it become `file://` URLs (sources' folders,
        // the data directory), which cannot be relative: `-c conf/tributary.yaml` would
        // otherwise leave every such path unusable.
        let dir = match path.and_then(Path::parent) {
            Some(p) if !p.as_os_str().is_empty() => {
                std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
            }
            _ => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        let config = Config {
            path: path.map(Path::to_path_buf),
            dir,
            server: raw.server,
            sources,
            materializations: raw.materializations,
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Checks what no single value shows: names unique, references resolvable.
    fn validate(&self) -> Result<(), KeyError> {
        let mut names = BTreeSet::new();
        for source in &self.sources {
            if !names.insert(source.name.as_str()) {
                return Err((
                    format!("{}.name", source.key),
                    format!("source `{}` is defined twice", source.name),
                ));
            }
        }
        if let Some(catalog) = &self.server.default_catalog
            && !names.contains(catalog.as_str())
        {
            return Err((
                "server.default_catalog".into(),
                format!("`{catalog}` is not a configured source"),
            ));
        }
        if self.server.default_schema.is_some() && self.server.default_catalog.is_none() {
            return Err((
                "server.default_schema".into(),
                "set `default_catalog` too".into(),
            ));
        }
        let mut session = SessionConfig::new();
        for (key, value) in &self.server.datafusion {
            session
                .options_mut()
                .set(key, &value.0)
                .map_err(|e| (format!("server.datafusion.{key}"), e.strip_backtrace()))?;
        }

        if let Some(auth) = &self.server.auth {
            validate_auth(auth)?;
        }

        let mut jobs = BTreeSet::new();
        for (i, m) in self.materializations.iter().enumerate() {
            let key = format!("materializations[{i}]");
            if !jobs.insert(m.name.as_str()) {
                return Err((
                    format!("{key}.name"),
                    format!("materialization `{}` is defined twice", m.name),
                ));
            }
            validate_materialization(m, &key)?;
        }
        let mut accelerated = BTreeSet::new();
        for (i, m) in self.materializations.iter().enumerate() {
            if m.accelerate && !accelerated.insert(m.from.trim().to_lowercase()) {
                return Err((
                    format!("materializations[{i}].accelerate"),
                    format!(
                        "`{}` is already accelerated by another materialization",
                        m.from
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks the settings of one materialization that only make sense together.
fn validate_materialization(m: &MaterializationConfig, key: &str) -> Result<(), KeyError> {
    let err = |field: &str, message: &str| Err((format!("{key}.{field}"), message.to_string()));
    if m.name.is_empty()
        || !m
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        // The name is a table name and, by default, a folder name.
        return err(
            "name",
            "expected letters, digits and `_` only (it names a table and a folder)",
        );
    }
    if m.from.trim().is_empty() {
        return err("from", "expected a table or a query");
    }
    // A table `from` may leave them to the table (its primary key, a REST table's
    // `cursor`), which is checked when the materialization runs; a query declares none.
    let from_query = datafusion::sql::parser::DFParser::parse_sql(&m.from).is_ok();
    match m.mode {
        RefreshMode::Incremental if m.cursor.is_none() && from_query => {
            return err(
                "cursor",
                "`incremental` mode over a query needs a cursor column",
            );
        }
        RefreshMode::Upsert if m.key.is_empty() && from_query => {
            return err("key", "`upsert` mode over a query needs the key columns");
        }
        RefreshMode::Full | RefreshMode::Append if m.cursor.is_some() => {
            return err(
                "cursor",
                "only `incremental` and `upsert` modes read from a cursor",
            );
        }
        _ => {}
    }
    if m.lookback.is_some() && m.mode != RefreshMode::Incremental {
        return err("lookback", "only `incremental` mode reads back");
    }
    if m.delete_missing {
        if m.mode != RefreshMode::Upsert {
            return err("delete_missing", "only `upsert` mode deletes missing rows");
        }
        if m.cursor.is_some() {
            return err(
                "delete_missing",
                "a run that reads only rows past the cursor cannot tell which rows were deleted; drop `cursor` or `delete_missing`",
            );
        }
    }
    if !m.key.is_empty() && m.mode != RefreshMode::Upsert {
        return err("key", "only `upsert` mode merges on a key");
    }
    if m.accelerate && datafusion::sql::parser::DFParser::parse_sql(&m.from).is_ok() {
        return err(
            "accelerate",
            "only a table `from` (e.g. `pg.public.orders`) can be served from its copy, not a query",
        );
    }
    if m.max_staleness.is_some() && !m.accelerate {
        return err(
            "max_staleness",
            "only an `accelerate`d materialization routes queries by staleness",
        );
    }
    Ok(())
}

/// Checks that the secrets of `server.auth` and of REST sources' `auth` are written as
/// `${ENV}` references, so that they never sit in a config file that gets copied,
/// committed or attached to a ticket.
fn secrets_from_env(config: &Value) -> Result<(), KeyError> {
    let mut secrets: Vec<(String, &Value)> = Vec::new();
    if let Some(auth) = config.get("server").and_then(|s| s.get("auth")) {
        for (list, field) in FROM_ENV_ONLY {
            if list.is_empty() {
                secrets.extend(
                    auth.get(*field)
                        .map(|v| (format!("server.auth.{field}"), v)),
                );
                continue;
            }
            let items = auth.get(*list).and_then(Value::as_sequence);
            for (i, item) in items.into_iter().flatten().enumerate() {
                if let Some(v) = item.get(*field) {
                    secrets.push((format!("server.auth.{list}[{i}].{field}"), v));
                }
            }
        }
    }
    let sources = config.get("sources").and_then(Value::as_sequence);
    for (i, source) in sources.into_iter().flatten().enumerate() {
        if source.get("kind").and_then(Value::as_str) != Some("rest") {
            continue;
        }
        let Some(auth) = source.get("auth") else {
            continue;
        };
        for field in REST_SECRETS {
            if let Some(v) = auth.get(*field) {
                secrets.push((format!("sources[{i}].auth.{field}"), v));
            }
        }
    }
    for (key, value) in secrets {
        let reference = value.as_str().is_some_and(|text| {
            let text = text.trim();
            text.starts_with("${") && text.ends_with('}') && text.matches("${").count() == 1
        });
        if !reference {
            let hint = if key.starts_with("server.auth.users") {
                " (or store a hash in `password_hash`: `tributary hash-password`)"
            } else {
                ""
            };
            return Err((
                key,
                format!(
                    "write this secret as an environment variable reference, `${{NAME}}`{hint}"
                ),
            ));
        }
    }
    Ok(())
}

/// The fields of a REST source's `auth` that are secrets.
const REST_SECRETS: &[&str] = &[
    "password",
    "token",
    "value",
    "client_secret",
    "refresh_token",
];

/// Checks each user has one usable credential and names are unique.
fn validate_auth(auth: &AuthConfig) -> Result<(), KeyError> {
    let mut names = BTreeSet::new();
    for (i, user) in auth.users.iter().enumerate() {
        let key = format!("server.auth.users[{i}]");
        if !names.insert(user.name.as_str()) {
            return Err((
                format!("{key}.name"),
                format!("user `{}` is defined twice", user.name),
            ));
        }
        match (&user.password_hash, &user.password) {
            (Some(hash), None) => {
                PasswordHash::parse(hash).map_err(|e| (format!("{key}.password_hash"), e))?;
            }
            (None, Some(_)) => {}
            _ => {
                return Err((
                    key,
                    "give exactly one of `password_hash` and `password`".into(),
                ));
            }
        }
    }
    for (i, token) in auth.tokens.iter().enumerate() {
        if token.token.expose().len() < 16 {
            return Err((
                format!("server.auth.tokens[{i}].token"),
                "a static token must be at least 16 characters".into(),
            ));
        }
    }
    if auth.users.is_empty() && auth.tokens.is_empty() {
        return Err((
            "server.auth".into(),
            "configure at least one of `users` and `tokens`".into(),
        ));
    }
    if let Some(secret) = &auth.token_secret
        && secret.expose().len() < 32
    {
        return Err((
            "server.auth.token_secret".into(),
            "the signing secret must be at least 32 characters".into(),
        ));
    }
    Ok(())
}

/// Reads one `sources[i]` entry: `name` and `kind` first, then the rest as that kind's
/// settings, so unknown keys and bad values are reported with their full path.
fn parse_source(i: usize, value: Value) -> Result<SourceConfig, KeyError> {
    let key = format!("sources[{i}]");
    let Value::Mapping(mut map) = value else {
        return Err((key, "expected a mapping with `name` and `kind`".into()));
    };
    let name = take_string(&mut map, "name", &key)?;
    let kind = take_string(&mut map, "kind", &key)?;
    let valid_name = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_name {
        return Err((
            format!("{key}.name"),
            format!(
                "`{name}` is not a valid catalog name (lowercase letters, digits and `_`, not starting with a digit)"
            ),
        ));
    }
    if RESERVED_NAMES.contains(&name.as_str()) {
        return Err((
            format!("{key}.name"),
            format!("`{name}` is reserved; choose another name"),
        ));
    }
    let rest = Value::Mapping(map);
    let kind = match kind.as_str() {
        "files" => SourceKind::Files(deserialize(rest, &key)?),
        "mysql" | "mariadb" => SourceKind::Mysql(deserialize(rest, &key)?),
        "postgres" | "postgresql" => SourceKind::Postgres(deserialize(rest, &key)?),
        "rest" => SourceKind::Rest(deserialize(rest, &key)?),
        "tpch" => SourceKind::Tpch(deserialize(rest, &key)?),
        other => {
            return Err((
                format!("{key}.kind"),
                format!(
                    "unknown source kind `{other}`, expected one of: {}",
                    SourceKind::NAMES.join(", ")
                ),
            ));
        }
    };
    Ok(SourceConfig { name, key, kind })
}

fn take_string(map: &mut Mapping, field: &str, key: &str) -> Result<String, KeyError> {
    match map.remove(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(other) => Err((
            format!("{key}.{field}"),
            format!("expected a non-empty string, got {}", describe(&other)),
        )),
        None => Err((key.to_string(), format!("missing field `{field}`"))),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("`{s}`"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Deserializes `value`, reporting errors at `prefix` + the path inside `value`.
fn deserialize<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, KeyError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (prefix.is_empty(), inner.as_str()) {
            (_, ".") => prefix.to_string(),
            (true, _) => inner,
            (false, _) => format!("{prefix}.{inner}"),
        };
        (key, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(name: &str) -> Option<String> {
        (name == "LAKE").then(|| "/srv/lake".to_string())
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Some(Path::new("/etc/tributary.yaml")), &env).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_config_parses() {
        let c = parse(
            r#"
server:
  listen: 0.0.0.0:50051
  default_catalog: lake
  metadata_ttl: 10m
  memory_limit: 2GiB
  datafusion:
    datafusion.execution.target_partitions: 4
sources:
  - name: lake
    kind: files
    url: ${LAKE}
    tables:
      - name: orders
        path: orders/
        format: parquet
  - name: gen
    kind: tpch
    scale_factor: "0.1"
materializations:
  - name: orders_copy
    from: lake.main.orders
    mode: incremental
    cursor: updated_at
    schedule:
      every: 15m
"#,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 50051);
        assert_eq!(c.server.metadata_ttl, Duration::from_secs(600));
        assert_eq!(c.server.memory_limit, Some(2 << 30));
        assert_eq!(c.dir, PathBuf::from("/etc"));
        assert_eq!(c.sources.len(), 2);
        let SourceKind::Files(files) = &c.sources[0].kind else {
            panic!()
        };
        assert_eq!(files.url, "/srv/lake");
        assert_eq!(files.tables[0].name, "orders");
        let SourceKind::Tpch(tpch) = &c.sources[1].kind else {
            panic!()
        };
        assert_eq!(tpch.scale_factor, 0.1);
        assert_eq!(
            c.materializations[0].schedule,
            Some(super::super::Schedule::Every(Duration::from_secs(900)))
        );
    }

    #[test]
    fn a_relative_config_path_gives_an_absolute_folder() {
        let c = Config::parse("", Some(Path::new("conf/t.yaml")), &env).unwrap();
        assert!(c.dir.is_absolute(), "{}", c.dir.display());
        assert_eq!(c.dir, std::env::current_dir().unwrap().join("conf"));
    }

    #[test]
    fn an_empty_file_is_an_empty_config() {
        let c = parse("").unwrap();
        assert!(c.sources.is_empty());
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e =
            parse("sources:\n  - name: a\n    kind: files\n    url: x\n    urll: y\n").unwrap_err();
        assert!(e.starts_with("/etc/tributary.yaml: sources[0]"), "{e}");
        assert!(e.contains("unknown field `urll`"), "{e}");
        assert!(e.contains("expected one of"), "{e}");

        let e = parse("sources:\n  - name: a\n    kind: files\n    url: x\n    tables:\n      - name: t\n        path: p\n        formt: csv\n").unwrap_err();
        assert!(e.contains("sources[0].tables[0]"), "{e}");
        assert!(e.contains("unknown field `formt`"), "{e}");

        let e = parse("servr:\n  listen: x\n").unwrap_err();
        assert!(e.contains("unknown field `servr`"), "{e}");
    }

    #[test]
    fn bad_types_name_the_key_and_the_expectation() {
        let e = parse("server:\n  listen: not-an-address\n").unwrap_err();
        assert_eq!(
            e,
            "/etc/tributary.yaml: server.listen: invalid value `not-an-address`: invalid socket address syntax"
        );
        let e = parse("server:\n  metadata_ttl: soon\n").unwrap_err();
        assert!(
            e.starts_with("/etc/tributary.yaml: server.metadata_ttl: expected a duration"),
            "{e}"
        );
        let e = parse("sources:\n  - name: a\n    kind: files\n    url: [1]\n").unwrap_err();
        assert!(
            e.starts_with(
                "/etc/tributary.yaml: sources[0].url: invalid type: sequence, expected a string"
            ),
            "{e}"
        );
        let e = parse("sources:\n  - name: a\n    kind: files\n    url: x\n    tables:\n      - name: t\n        path: p\n        columns:\n          - name: c\n            type: notatype\n").unwrap_err();
        assert!(
            e.contains("sources[0].tables[0].columns[0].type: `notatype` is not"),
            "{e}"
        );
        let e = parse("sources:\n  - name: a\n    kind: oracle\n").unwrap_err();
        assert!(
            e.contains(
                "sources[0].kind: unknown source kind `oracle`, expected one of: files, mysql, postgres, rest, tpch"
            ),
            "{e}"
        );
        let e = parse("sources:\n  - kind: files\n").unwrap_err();
        assert!(e.contains("sources[0]: missing field `name`"), "{e}");
        let e = parse("sources:\n  - name: Bad-Name\n    kind: tpch\n").unwrap_err();
        assert!(
            e.contains("sources[0].name: `Bad-Name` is not a valid catalog name"),
            "{e}"
        );
        let e = parse("server:\n  datafusion:\n    datafusion.execution.no_such_option: 1\n")
            .unwrap_err();
        assert!(
            e.contains("server.datafusion.datafusion.execution.no_such_option"),
            "{e}"
        );
    }

    #[test]
    fn missing_env_vars_name_the_key_and_the_variable() {
        let e = parse("sources:\n  - name: a\n    kind: files\n    url: ${NOT_SET_ANYWHERE}\n")
            .unwrap_err();
        assert_eq!(
            e,
            "/etc/tributary.yaml: sources[0].url: environment variable `NOT_SET_ANYWHERE` is not set (write `${NOT_SET_ANYWHERE:-default}` to give a default)"
        );
    }

    #[test]
    fn cross_references_are_checked() {
        let e = parse("sources:\n  - name: a\n    kind: tpch\n  - name: a\n    kind: tpch\n")
            .unwrap_err();
        assert!(
            e.contains("sources[1].name: source `a` is defined twice"),
            "{e}"
        );
        let e = parse("server:\n  default_catalog: nope\n").unwrap_err();
        assert!(
            e.contains("server.default_catalog: `nope` is not a configured source"),
            "{e}"
        );
        let e = parse(
            "materializations:\n  - name: m\n    from: SELECT * FROM a.b.c\n    mode: upsert\n",
        )
        .unwrap_err();
        assert!(
            e.contains("materializations[0].key: `upsert` mode over a query needs the key columns"),
            "{e}"
        );
        let e = parse("materializations:\n  - name: m\n    from: a.b.c\n    mode: sometimes\n")
            .unwrap_err();
        assert!(
            e.contains("materializations[0].mode: unknown variant `sometimes`"),
            "{e}"
        );
        let e = parse(
            "materializations:\n  - name: m\n    from: SELECT * FROM a.b.c\n    accelerate: true\n",
        )
        .unwrap_err();
        assert!(
            e.contains("materializations[0].accelerate: only a table `from`"),
            "{e}"
        );
        let e = parse("materializations:\n  - name: m\n    from: a.b.c\n    max_staleness: 5m\n")
            .unwrap_err();
        assert!(
            e.contains("materializations[0].max_staleness: only an `accelerate`d"),
            "{e}"
        );
        let e = parse(
            "materializations:\n  - {name: m, from: a.b.c, accelerate: true}\n  - {name: n, from: A.b.c, accelerate: true}\n",
        )
        .unwrap_err();
        assert!(
            e.contains("materializations[1].accelerate: `A.b.c` is already accelerated"),
            "{e}"
        );
        let e = parse(
            "materializations:\n  - {name: m, from: a.b.c, schedule: {cron: '61 * * * *'}}\n",
        )
        .unwrap_err();
        assert!(
            e.contains("materializations[0].schedule") && e.contains("is not a cron expression"),
            "{e}"
        );
        let c = parse(
            "materializations:\n  - {name: m, from: a.b.c, schedule: {cron: '*/5 * * * *'}, retries: 0, retry_backoff: 1m}\n",
        )
        .unwrap();
        let m = &c.materializations[0];
        assert_eq!((m.retries, m.retry_backoff), (0, Duration::from_secs(60)));
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = parse("sources:\n  - name: a\n   kind: [\n").unwrap_err();
        assert!(e.starts_with("/etc/tributary.yaml: not valid YAML:"), "{e}");
        assert!(e.contains("line"), "{e}");
    }
}
