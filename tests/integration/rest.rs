//! The `rest` source against a JSON API on loopback that behaves like a SaaS list
//! endpoint: every pagination style, every authentication scheme (tokens expiring
//! mid-scan), throttling and server errors, timeouts, fields appearing and disappearing,
//! malformed answers, wrong paths, filter and limit pushdown, records that do not fit, and
//! materializations of an API table.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tempfile::TempDir;
use tributary::materialize::RunOptions;
use tributary::{Config, Engine};
use tributary_testkit::rest_api::{ApiAuth, Fault, SaasApi};

use crate::common::{error, table};
use crate::materialize::try_sync;

const COLUMNS: &str = "
        columns:
          - {name: id, type: bigint, nullable: false}
          - {name: name, type: text}
          - {name: email, type: text}
          - {name: balance, type: 'decimal(12,2)'}
          - {name: updated_at, type: timestamp with time zone}
          - {name: tier, path: $.attributes.tier, type: text}
          - {name: score, path: \"$['attributes']['score']\", type: double}";

/// An engine over `api` with `source` (extra source keys) and `tables` (YAML list
/// items), `${VAR}`s read from `env`.
fn engine_with_env(
    dir: &Path,
    api: &SaasApi,
    source: &str,
    tables: &str,
    env: &[(&str, &str)],
) -> Result<Engine, String> {
    let yaml = format!(
        "sources:\n  - name: api\n    kind: rest\n    base_url: {}\n{source}    tables:\n{tables}",
        api.url()
    );
    let path = dir.join("tributary.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let config = Config::parse(&yaml, Some(&path), &lookup).map_err(|e| e.to_string())?;
    Engine::new(&config).map_err(|e| e.to_string())
}

fn rest_engine(dir: &Path, api: &SaasApi, source: &str, tables: &str) -> Engine {
    engine_with_env(dir, api, source, tables, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// The offset-paginated table, pages of 10, with `extra` table keys.
fn offset_table(extra: &str) -> String {
    format!(
        "      - name: customers\n        path: offset/customers\n        records: $.data\n        pagination: {{type: offset, page_size: 10, total_path: $.total}}\n{extra}{COLUMNS}\n"
    )
}

const ALL_ROWS: &str = "SELECT * FROM api.main.customers ORDER BY id";

#[tokio::test]
async fn every_pagination_style_reads_every_record_once() {
    let api = SaasApi::start(53).await;
    let dir = TempDir::new().unwrap();
    let tables = [
        offset_table(""),
        format!(
            "      - name: by_page\n        path: page/customers\n        records: $.items\n        pagination: {{type: page, size_param: per_page, page_size: 10, total_pages_path: $.total_pages}}\n{COLUMNS}\n"
        ),
        format!(
            "      - name: by_cursor\n        path: cursor/customers\n        records: $.data\n        pagination: {{type: cursor, cursor_path: $.meta.next_cursor, cursor_param: after, size_param: limit, page_size: 10}}\n{COLUMNS}\n"
        ),
        format!(
            "      - name: by_link\n        path: link/customers\n        pagination: {{type: link, size_param: per_page, page_size: 10}}\n{COLUMNS}\n"
        ),
        format!(
            "      - name: by_next\n        path: next/customers\n        records: results\n        pagination: {{type: next_url, next_path: $.next, size_param: limit, page_size: 10}}\n{COLUMNS}\n"
        ),
    ]
    .concat();
    let engine = rest_engine(dir.path(), &api, "", &tables);
    let expected = table(&engine, ALL_ROWS).await;
    let row = |id: &str| {
        expected
            .lines()
            .find(|l| l.starts_with(&format!("| {id} ")))
            .unwrap_or_else(|| panic!("no row {id}: {expected}"))
            .split('|')
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("4")[1..8],
        [
            "4",
            "Zoë \"Z\" O'Brien 4",
            "c4@example.com",
            "12.04",
            "2024-01-01T00:04:00Z",
            "silver",
            "1.0"
        ]
    );
    assert_eq!(row("5")[2], "東京 5");
    assert_eq!(row("2")[2], "");
    assert_eq!(expected.lines().count(), 53 + 4);
    // 6 pages; the reported total ends the list without asking for an empty page.
    assert_eq!(api.take_requests().len(), 6);
    for name in ["by_page", "by_cursor", "by_link", "by_next"] {
        let rows = table(
            &engine,
            &format!("SELECT * FROM api.main.{name} ORDER BY id"),
        )
        .await;
        assert_eq!(rows, expected, "{name}");
        let requests = api.take_requests();
        assert!((6..=7).contains(&requests.len()), "{name}: {requests:?}");
    }
    // Without a total, the offset style reads until an empty page.
    let dir = TempDir::new().unwrap();
    let engine = rest_engine(
        dir.path(),
        &api,
        "    pagination: {type: offset, page_size: 20}\n",
        &format!(
            "      - name: customers\n        path: offset/customers\n        records: $.data\n{COLUMNS}\n"
        ),
    );
    assert_eq!(table(&engine, ALL_ROWS).await, expected);
    assert_eq!(
        api.take_requests(),
        [0, 20, 40, 53].map(|o| format!("/offset/customers?limit=20&offset={o}"))
    );
}

#[tokio::test]
async fn mapped_filters_go_to_the_api_and_limits_stop_paging() {
    let api = SaasApi::start(53).await;
    let dir = TempDir::new().unwrap();
    let filters =
        "        filters:\n          - {column: updated_at, op: '>=', param: updated_since}\n";
    let tables = format!(
        "{}{}",
        offset_table(filters),
        offset_table("").replace("name: customers", "name: unfiltered")
    );
    let engine = rest_engine(dir.path(), &api, "", &tables);
    let pushed = "SELECT id, name, updated_at FROM api.main.customers WHERE updated_at > '2024-01-01T00:45:00Z' AND name IS NOT NULL ORDER BY id";
    let rows = table(&engine, pushed).await;
    assert_eq!(
        rows,
        table(&engine, &pushed.replace("customers", "unfiltered")).await
    );
    assert!(
        rows.contains("| 47 |") && !rows.contains("| 45 |") && !rows.contains("| 46 |"),
        "{rows}"
    );
    // `>` is served by the `>=` parameter (DataFusion drops the equal row); `IS NOT NULL`
    // has no parameter and stays in DataFusion.
    let requests = api.take_requests();
    assert_eq!(
        requests[0],
        "/offset/customers?updated_since=2024-01-01T00%3A45%3A00Z&limit=10&offset=0"
    );
    // One page of 9 records for the filtered table, six for the unfiltered one.
    assert_eq!(requests.len(), 1 + 6);
    let explain = table(&engine, &format!("EXPLAIN {pushed}")).await;
    assert!(explain.contains("RestScanExec: GET"), "{explain}");

    // A limit asks for pages no larger than it and stops when it is reached.
    let rows = table(&engine, "SELECT id FROM api.main.customers LIMIT 3").await;
    assert_eq!(rows.lines().count(), 3 + 4);
    assert_eq!(api.take_requests(), ["/offset/customers?limit=3&offset=0"]);
    let empty = table(
        &engine,
        "SELECT count(*) AS n FROM api.main.customers WHERE updated_at > '2030-01-01T00:00:00Z'",
    )
    .await;
    assert!(empty.contains("| 0 |"), "{empty}");
    assert_eq!(api.take_requests().len(), 1);
}

#[tokio::test]
async fn every_authentication_scheme_is_sent_and_refusals_name_no_secret() {
    let api = SaasApi::start(12).await;
    let env = [("API_SECRET", "s3cr3t-value"), ("WRONG", "wrong-value")];
    let cases = [
        (
            ApiAuth::Basic("ada".into(), "s3cr3t-value".into()),
            "{type: basic, username: ada, password: '${API_SECRET}'}",
        ),
        (
            ApiAuth::Bearer("s3cr3t-value".into()),
            "{type: bearer, token: '${API_SECRET}'}",
        ),
        (
            ApiAuth::KeyHeader("x-api-key".into(), "s3cr3t-value".into()),
            "{type: api_key, name: X-Api-Key, value: '${API_SECRET}'}",
        ),
        (
            ApiAuth::KeyQuery("api_key".into(), "s3cr3t-value".into()),
            "{type: api_key, name: api_key, value: '${API_SECRET}', in: query}",
        ),
    ];
    for (required, auth) in cases {
        api.require(required);
        let dir = TempDir::new().unwrap();
        let source = format!("    auth: {auth}\n    retry: {{max_retries: 0}}\n");
        let ok = engine_with_env(dir.path(), &api, &source, &offset_table(""), &env).unwrap();
        let rows = table(&ok, "SELECT count(*) AS n FROM api.main.customers").await;
        assert!(rows.contains("| 12 |"), "{auth}: {rows}");
        let wrong = source.replace("API_SECRET", "WRONG");
        let refused = engine_with_env(dir.path(), &api, &wrong, &offset_table(""), &env).unwrap();
        let e = error(&refused, "SELECT count(*) FROM api.main.customers").await;
        assert!(e.contains("401 Unauthorized"), "{auth}: {e}");
        assert!(e.contains("source `api`: table `main.customers`"), "{e}");
        assert!(!e.contains("wrong-value") && !e.contains("s3cr3t"), "{e}");
    }
    // Secrets written into the file are refused.
    let dir = TempDir::new().unwrap();
    let e = engine_with_env(
        dir.path(),
        &api,
        "    auth: {type: bearer, token: plain-text}\n",
        &offset_table(""),
        &env,
    )
    .unwrap_err();
    assert!(
        e.contains("sources[0].auth.token: write this secret as an environment variable reference"),
        "{e}"
    );
}

#[tokio::test]
async fn oauth_tokens_are_renewed_when_they_expire_mid_scan() {
    let api = SaasApi::start(53).await;
    let env = [("CLIENT_SECRET", "client-secret"), ("REFRESH", "refresh-0")];
    api.require(ApiAuth::OAuth {
        client_id: "tributary".into(),
        client_secret: "client-secret".into(),
        refresh_token: "refresh-0".into(),
    });
    // Each token is refused after two requests: a six-page scan renews it twice.
    api.tokens_last(2);
    let token_url = format!("{}oauth/token", api.url());
    let dir = TempDir::new().unwrap();
    let credentials = format!(
        "    auth: {{type: oauth2, token_url: '{token_url}', client_id: tributary, client_secret: '${{CLIENT_SECRET}}'}}\n"
    );
    let engine = engine_with_env(dir.path(), &api, &credentials, &offset_table(""), &env).unwrap();
    let rows = table(
        &engine,
        "SELECT count(*) AS n, sum(id) AS s FROM api.main.customers",
    )
    .await;
    assert!(rows.contains("| 53 | 1431 |"), "{rows}");
    assert_eq!(api.token_requests(), 3);
    assert_eq!(api.refusals(), 2, "each expiry found by a refusal");

    // A token that says when it expires is renewed before then, without a refusal:
    // one lasting 2 s is renewed after half of it.
    api.tokens_last(u32::MAX);
    api.tokens_expire_after(Duration::from_secs(2));
    let engine = engine_with_env(dir.path(), &api, &credentials, &offset_table(""), &env).unwrap();
    let count = "SELECT count(*) AS n FROM api.main.customers";
    assert!(table(&engine, count).await.contains("| 53 |"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(table(&engine, count).await.contains("| 53 |"));
    assert_eq!(api.token_requests(), 3 + 2);
    assert_eq!(api.refusals(), 2, "the expired token was not sent");
    api.tokens_expire_after(Duration::from_secs(3600));
    api.tokens_last(2);

    // A refresh token, rotated by the endpoint at each use; client id and secret in the body.
    let refresh = format!(
        "    auth: {{type: oauth2, grant: refresh_token, token_url: '{token_url}', client_id: tributary, client_secret: '${{CLIENT_SECRET}}', refresh_token: '${{REFRESH}}', client_auth: body}}\n"
    );
    api.require(ApiAuth::OAuth {
        client_id: "tributary".into(),
        client_secret: "client-secret".into(),
        refresh_token: "refresh-0".into(),
    });
    let engine = engine_with_env(dir.path(), &api, &refresh, &offset_table(""), &env).unwrap();
    let rows = table(&engine, "SELECT count(*) AS n FROM api.main.customers").await;
    assert!(rows.contains("| 53 |"), "{rows}");
    assert_eq!(api.token_requests(), 5 + 3);

    // A refused grant is named, without the secret.
    let wrong = credentials.replace("CLIENT_SECRET", "REFRESH");
    let engine = engine_with_env(dir.path(), &api, &wrong, &offset_table(""), &env).unwrap();
    let e = error(&engine, "SELECT count(*) FROM api.main.customers").await;
    assert!(
        e.contains("OAuth 2 token request to")
            && e.contains("invalid_grant: bad client or refresh token"),
        "{e}"
    );
    assert!(!e.contains("refresh-0"), "{e}");
}

#[tokio::test]
async fn throttling_server_errors_and_timeouts_are_retried_within_limits() {
    let api = SaasApi::start(53).await;
    let dir = TempDir::new().unwrap();
    let source = "    timeout: 300ms\n    retry: {max_retries: 4, backoff: 10ms}\n";
    let engine = rest_engine(dir.path(), &api, source, &offset_table(""));
    let expected = "SELECT count(*) AS n, sum(id) AS s FROM api.main.customers";
    // A burst of 429s (one with Retry-After), a 500, a 503 and a response too slow.
    api.fail_next([
        Fault::Status(429, Some(1)),
        Fault::Status(429, None),
        Fault::Status(500, None),
    ]);
    let started = std::time::Instant::now();
    let rows = table(&engine, expected).await;
    assert!(rows.contains("| 53 | 1431 |"), "{rows}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(api.take_requests().len(), 6 + 3);
    api.fail_next([
        Fault::Status(503, None),
        Fault::Slow(Duration::from_secs(2)),
    ]);
    let rows = table(&engine, expected).await;
    assert!(rows.contains("| 53 | 1431 |"), "{rows}");

    // Retries run out.
    api.fail_next(std::iter::repeat_n(Fault::Status(502, None), 5));
    let e = error(&engine, expected).await;
    assert!(
        e.contains("HTTP 502 Bad Gateway") && e.contains("gave up after 4 retries"),
        "{e}"
    );
    api.fail_next(std::iter::repeat_n(Fault::Slow(Duration::from_secs(1)), 5));
    let e = error(&engine, expected).await;
    assert!(e.contains("no complete response within 300ms"), "{e}");
    // A client error is not retried.
    api.take_requests();
    api.fail_next([Fault::Status(404, None)]);
    let e = error(&engine, expected).await;
    assert!(e.contains("HTTP 404 Not Found"), "{e}");
    assert_eq!(api.take_requests().len(), 1);
}

#[tokio::test]
async fn fields_that_appear_or_disappear_read_as_nulls_or_fail_by_name() {
    let api = SaasApi::start(30).await;
    let dir = TempDir::new().unwrap();
    // `plan` appears from the 25th record on (the third page); `email` goes away.
    let plan = "          - {name: plan, type: text}\n";
    let engine = rest_engine(dir.path(), &api, "", &format!("{}{plan}", offset_table("")));
    api.add_field_from(24, "plan");
    let rows = table(
        &engine,
        "SELECT count(plan) AS with_plan, count(*) AS n FROM api.main.customers",
    )
    .await;
    assert!(rows.contains("| 6         | 30 |"), "{rows}");
    api.remove_field("email");
    let rows = table(
        &engine,
        "SELECT count(email) AS e, count(*) AS n FROM api.main.customers",
    )
    .await;
    assert!(rows.contains("| 0 | 30 |"), "{rows}");
    // Declared required, a missing field fails the query naming the column and record.
    let strict = offset_table("").replace(
        "{name: email, type: text}",
        "{name: email, type: text, nullable: false}",
    );
    let engine = rest_engine(dir.path(), &api, "", &strict);
    let e = error(&engine, "SELECT id, email FROM api.main.customers").await;
    assert!(
        e.contains("record 0 of the page does not fit table `main.customers`: column `email` ($.email) is missing or null"),
        "{e}"
    );
    // Inferred columns come from the first page.
    let inferred = "      - name: customers\n        path: offset/customers\n        records: $.data\n        pagination: {type: offset, page_size: 10}\n";
    let engine = rest_engine(dir.path(), &api, "", inferred);
    let rows = table(&engine, "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = 'api' ORDER BY ordinal_position").await;
    for expected in [
        "| id          | Int64 ",
        "| attributes  | Struct(",
        "| updated_at  | Utf8 ",
    ] {
        assert!(rows.contains(expected), "{rows}");
    }
    assert!(!rows.contains("email"), "{rows}");
}

#[tokio::test]
async fn malformed_answers_and_wrong_paths_are_named() {
    let api = SaasApi::start(30).await;
    let dir = TempDir::new().unwrap();
    let engine = rest_engine(dir.path(), &api, "", &offset_table(""));
    api.fail_next([Fault::Malformed]);
    let e = error(&engine, "SELECT * FROM api.main.customers").await;
    assert!(
        e.contains("source `api`: table `main.customers`")
            && e.contains("the response is not valid JSON: EOF while parsing"),
        "{e}"
    );
    let wrong = offset_table("").replace("records: $.data", "records: $.dta");
    let engine = rest_engine(dir.path(), &api, "", &wrong);
    let e = error(&engine, "SELECT * FROM api.main.customers").await;
    assert!(
        e.contains("the records path `$.dta` of table `main.customers` (`sources[0].tables[0].records`) is not in the response; the response's top-level keys are: data, total"),
        "{e}"
    );
    let not_array = offset_table("").replace("records: $.data", "records: $.total");
    let engine = rest_engine(dir.path(), &api, "", &not_array);
    let e = error(&engine, "SELECT * FROM api.main.customers").await;
    assert!(
        e.contains("does not name an array of records: expected an array, found a number"),
        "{e}"
    );
    // Paths that cannot name one value are refused when the config loads.
    let e = engine_with_env(
        dir.path(),
        &api,
        "",
        &offset_table("").replace("records: $.data", "records: $.data[*]"),
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains(
            "sources[0].tables[0].records: `$.data[*]`: a wildcard (`[*]`) is not supported"
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_page_is_fetched_while_one_is_read_and_no_further() {
    let api = SaasApi::start(53).await;
    let dir = TempDir::new().unwrap();
    let engine = rest_engine(dir.path(), &api, "", &offset_table(""));
    // The scan itself, without operators above it that could pull batches ahead.
    let ctx = engine.context();
    let provider = ctx.table_provider("api.main.customers").await.unwrap();
    let scan = provider.scan(&ctx.state(), None, &[], None).await.unwrap();
    let mut stream = scan.execute(0, ctx.task_ctx()).unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 10);
    // While the first page is held, the second is asked for, and at most a third
    // (fetched and waiting for room): memory stays a few pages.
    let mut requested = api.take_requests().len();
    for _ in 0..500 {
        if requested >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        requested += api.take_requests().len();
    }
    assert!(
        requested >= 2,
        "the next page was not asked for: {requested}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    requested += api.take_requests().len();
    assert!(
        requested <= 3,
        "{requested} pages asked for while one is held"
    );
    let mut rows = first.num_rows();
    while let Some(batch) = stream.next().await {
        rows += batch.unwrap().num_rows();
    }
    assert_eq!(rows, 53);
    assert_eq!(requested + api.take_requests().len(), 6);
}

#[tokio::test]
async fn records_that_do_not_fit_fail_are_skipped_or_kept_as_rejects() {
    let api = SaasApi::start(30).await;
    api.set(5, "balance", json!("a lot"));
    api.set(17, "id", json!("seventeen"));
    let dir = TempDir::new().unwrap();
    let engine = rest_engine(dir.path(), &api, "", &offset_table(""));
    let e = error(&engine, "SELECT * FROM api.main.customers").await;
    // The API sorts the record whose id is text first.
    assert!(
        e.contains("record 0 of the page does not fit table `main.customers`: whilst decoding field 'id': failed to parse \"seventeen\" as Int64; the record: {"),
        "{e}"
    );
    assert!(e.contains("on_invalid: skip"), "{e}");

    let engine = engine_with_env(
        dir.path(),
        &api,
        "",
        &offset_table("        on_invalid: skip\n"),
        &[],
    )
    .unwrap();
    let rows = table(&engine, "SELECT count(*) AS n FROM api.main.customers").await;
    // Projection skips unused fields: a count reads no column and finds nothing wrong.
    assert!(rows.contains("| 30 |"), "{rows}");
    let rows = table(
        &engine,
        "SELECT count(balance) AS n FROM api.main.customers",
    )
    .await;
    assert!(rows.contains("| 29 |"), "{rows}");
    let rows = table(
        &engine,
        "SELECT count(balance) AS n FROM api.main.customers WHERE id > 0",
    )
    .await;
    assert!(rows.contains("| 28 |"), "{rows}");

    let e = engine_with_env(
        dir.path(),
        &api,
        "",
        &offset_table("        on_invalid: dead_letter\n"),
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("sources[0].rejects: `on_invalid: dead_letter` needs a `rejects` folder"),
        "{e}"
    );
    let engine = rest_engine(
        dir.path(),
        &api,
        "    rejects: rejects\n",
        &offset_table("        on_invalid: dead_letter\n"),
    );
    let rows = table(
        &engine,
        "SELECT id, balance FROM api.main.customers WHERE id IN (4, 5, 6, 17)",
    )
    .await;
    assert!(
        rows.contains("| 4  |") && rows.contains("| 6  |") && !rows.contains("| 5  |"),
        "{rows}"
    );
    let rejects = table(
        &engine,
        "SELECT reason, raw, url FROM api.main.customers__rejects ORDER BY raw",
    )
    .await;
    assert!(
        rejects.contains("\"id\":17") || rejects.contains("seventeen"),
        "{rejects}"
    );
    assert!(rejects.contains("a lot"), "{rejects}");
    assert!(
        rejects.contains("/offset/customers?limit=10&offset=0"),
        "{rejects}"
    );
    // Pages rejected again replace their files: no record is kept twice.
    table(&engine, "SELECT * FROM api.main.customers").await;
    let kept = table(
        &engine,
        "SELECT count(*) AS n FROM api.main.customers__rejects",
    )
    .await;
    assert!(kept.contains("| 2 |"), "{kept}");
    let listed = table(
        &engine,
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'api' ORDER BY 1",
    )
    .await;
    assert!(listed.contains("customers__rejects"), "{listed}");
}

#[tokio::test]
async fn an_api_table_materializes_incrementally_and_by_upsert() {
    let api = SaasApi::start(40).await;
    let dir = TempDir::new().unwrap();
    let filters = "        primary_key: [id]\n        cursor: updated_at\n        filters:\n          - {column: updated_at, op: '>=', param: updated_since}\n";
    let yaml_tables = format!(
        "{}{}",
        offset_table(filters),
        offset_table("").replace("name: customers", "name: plain")
    );
    // `customers` names neither key nor cursor: they come from the table.
    let materializations = "materializations:\n  - name: customers_log\n    from: api.main.customers\n    mode: incremental\n    cursor: updated_at\n  - name: customers\n    from: api.main.customers\n    mode: upsert\n  - name: plain_log\n    from: api.main.plain\n    mode: incremental\n  - name: plain\n    from: api.main.plain\n    mode: upsert\n";
    let yaml = format!(
        "sources:\n  - name: api\n    kind: rest\n    base_url: {}\n    tables:\n{yaml_tables}{materializations}",
        api.url()
    );
    let path = dir.path().join("tributary.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let engine = Engine::new(&Config::load(&path).unwrap()).unwrap();
    let sync = |name: &'static str| {
        let engine = &engine;
        async move {
            try_sync(engine, name, RunOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        }
    };
    for (name, why) in [
        (
            "plain_log",
            "`incremental` mode needs a cursor column: `api.main.plain` declares none; set `cursor`",
        ),
        (
            "plain",
            "`upsert` mode needs the key columns: `api.main.plain` declares no primary key; set `key`",
        ),
    ] {
        let e = try_sync(&engine, name, RunOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{e}");
    }
    assert_eq!(sync("customers_log").await.rows_read, 40);
    assert_eq!(sync("customers").await.rows_read, 40);
    api.take_requests();

    api.upsert(7, "Renamed");
    api.upsert(41, "New");
    assert_eq!(sync("customers_log").await.rows_read, 2);
    let requests = api.take_requests();
    assert!(
        requests
            .iter()
            .all(|r| r.contains("updated_since=2024-01-01T00%3A40%3A00Z")),
        "the cursor went to the API: {requests:?}"
    );
    // The changed records are read once (into the run's spool), not once to find the
    // upper bound and again to take them: one page (its `total` ends the list).
    assert_eq!(requests.len(), 1, "{requests:?}");
    let spool = dir.path().join("data/_tributary/spool");
    assert!(spool.is_dir(), "the run spooled under the data folder");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "and removed its file"
    );
    assert_eq!(sync("customers").await.rows_read, 2);
    let log = table(
        &engine,
        "SELECT count(*) AS n FROM materialized.public.customers_log",
    )
    .await;
    assert!(log.contains("| 42 |"), "{log}");
    let copy = table(
        &engine,
        "SELECT id, name FROM materialized.public.customers WHERE id IN (7, 41) ORDER BY id",
    )
    .await;
    assert!(
        copy.contains("| 7  | Renamed |") && copy.contains("| 41 | New     |"),
        "{copy}"
    );
    let n = table(
        &engine,
        "SELECT count(*) AS n FROM materialized.public.customers",
    )
    .await;
    assert!(n.contains("| 41 |"), "{n}");
    assert_eq!(sync("customers").await.rows_read, 0);
}
