//! The `postgres` source against the local PostgreSQL: discovery, every type, parallel
//! partitions, TLS, and failures that name the source without leaking the password.

use std::sync::Arc;

use arrow::array::RecordBatch;
use tributary::{Config, Engine};
use tributary_testkit::postgres::{Schema, url};

use crate::common::{assert_counts_without_columns, cells, error, run, table};

/// An engine with one `postgres` source, `pg`, limited to `schema`, which is also the
/// default schema. `extra` adds settings to the source.
pub fn pg_engine(schema: &str, pushdown: bool, extra: &str) -> Engine {
    let yaml = format!(
        "server:\n  default_catalog: pg\n  default_schema: {schema}\nsources:\n  - name: pg\n    kind: postgres\n    url: {}\n    schemas: {{include: [{schema}]}}\n    pushdown: {pushdown}\n{extra}",
        url()
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn every_type_round_trips() {
    let schema = Schema::create("types").await;
    schema
        .execute(
            r#"
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN positive AS numeric(8, 2) CHECK (VALUE > 0);
        CREATE TABLE every_type (
            id int PRIMARY KEY,
            b bool, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8,
            n numeric(12, 3), nu numeric, nw numeric(50, 10),
            t text, vc varchar(10), c char(5), nm name, ch "char", ci citext,
            by bytea, d date, tm time, ts timestamp, tstz timestamptz, iv interval,
            u uuid, j json, jb jsonb, ip inet, net cidr, mac macaddr, m money,
            e mood, dom positive, ai int[], at text[], an numeric(5, 2)[], ae mood[],
            pt point, r int4range, bits bit(4), x xml, ttz timetz
        );
        INSERT INTO every_type VALUES (
            1, true, -32768, 2147483647, -9223372036854775808, 4294967295, 1.5, -2.25e-300,
            -123456789.125, 12345.678901234567, 1234567890123456789012345678901234567890.0123456789,
            'it''s "quoted" \ and ünïcödé 東京', 'varchar', 'ab', 'a_name', 'x', 'MiXeD',
            '\x00ff10', '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59.5',
            '2024-06-01 12:00:00+02', '1 year 2 months 3 days 04:05:06.7',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": null, "a": 1}',
            '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34,
            'happy', 42.5, '{1,NULL,3}', '{"x","y z",NULL}', '{1.5,2.25}', '{sad,ok}',
            '(1.5,2)', '[1,5)', B'1010', '<a>b</a>', '10:00:00+02'
        );
        INSERT INTO every_type (id) VALUES (2);
        INSERT INTO every_type (id, f8, d, ts, n, ai) VALUES
            (3, 'NaN', 'infinity', '-infinity', 0.001, '{{1,2},{3,4}}');
    "#,
        )
        .await;
    let engine = pg_engine(&schema.name, true, "");
    let batches = run(&engine, "SELECT * FROM every_type ORDER BY id")
        .await
        .unwrap();
    let expected = [
        ("id", "Int32", "1"),
        ("b", "Boolean", "true"),
        ("i2", "Int16", "-32768"),
        ("i4", "Int32", "2147483647"),
        ("i8", "Int64", "-9223372036854775808"),
        ("o", "Int64", "4294967295"),
        ("f4", "Float32", "1.5"),
        ("f8", "Float64", "-2.25e-300"),
        ("n", "Decimal128(12, 3)", "-123456789.125"),
        ("nu", "Decimal128(38, 10)", "12345.6789012345"),
        (
            "nw",
            "Decimal256(50, 10)",
            "1234567890123456789012345678901234567890.0123456789",
        ),
        ("t", "Utf8", "it's \"quoted\" \\ and ünïcödé 東京"),
        ("vc", "Utf8", "varchar"),
        ("c", "Utf8", "ab   "),
        ("nm", "Utf8", "a_name"),
        ("ch", "Utf8", "x"),
        ("ci", "Utf8", "MiXeD"),
        ("by", "Binary", "00ff10"),
        ("d", "Date32", "2024-02-29"),
        ("tm", "Time64(µs)", "23:59:59.999999"),
        ("ts", "Timestamp(µs)", "1999-12-31T23:59:59.500"),
        ("tstz", "Timestamp(µs, \"UTC\")", "2024-06-01T10:00:00Z"),
        (
            "iv",
            "Interval(MonthDayNano)",
            "14 mons 3 days 4 hours 5 mins 6.700000000 secs",
        ),
        ("u", "Utf8", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("j", "Utf8", "{\"a\": [1, 2]}"),
        ("jb", "Utf8", "{\"a\": 1, \"b\": null}"),
        ("ip", "Utf8", "192.168.1.5/24"),
        ("net", "Utf8", "10.0.0.0/8"),
        ("mac", "Utf8", "08:00:2b:01:02:03"),
        ("m", "Utf8", "$12.34"),
        ("e", "Utf8", "happy"),
        ("dom", "Decimal128(8, 2)", "42.50"),
        ("ai", "List(Int32)", "[1, NULL, 3]"),
        ("at", "List(Utf8)", "[x, y z, NULL]"),
        ("an", "List(Decimal128(5, 2))", "[1.50, 2.25]"),
        ("ae", "List(Utf8)", "[sad, ok]"),
        ("pt", "Utf8", "(1.5,2)"),
        ("r", "Utf8", "[1,5)"),
        ("bits", "Utf8", "1010"),
        ("x", "Utf8", "<a>b</a>"),
        ("ttz", "Utf8", "10:00:00+02"),
    ];
    let got = cells(&batches, 0);
    assert_eq!(got.len(), expected.len());
    for ((name, data_type, value), (e_name, e_type, e_value)) in got.iter().zip(expected) {
        assert_eq!(name, e_name);
        assert!(
            data_type.replace("nullable ", "").contains(e_type),
            "{name}: type {data_type}, expected {e_type}"
        );
        assert_eq!(value, e_value, "{name}");
    }
    // Row 2: every column but the key is NULL.
    for (name, _, value) in cells(&batches, 1).iter().skip(1) {
        assert_eq!(value, "NULL", "{name} should be NULL");
    }
    // Row 3: NaN stays NaN; infinite dates and timestamps become NULL; multi-dimensional
    // arrays are flattened.
    let row3: std::collections::HashMap<_, _> = cells(&batches, 2)
        .into_iter()
        .map(|(n, _, v)| (n, v))
        .collect();
    assert_eq!(row3["f8"], "NaN");
    assert_eq!(row3["d"], "NULL");
    assert_eq!(row3["ts"], "NULL");
    assert_eq!(row3["n"], "0.001");
    assert_eq!(row3["ai"], "[1, 2, 3, 4]");
    // PostgreSQL would match 4294967295 to -1 (and fail on a key past 2^32), so a filter on
    // an oid is DataFusion's to evaluate.
    for (sql, rows) in [
        ("SELECT id FROM every_type WHERE o = -1", 0),
        ("SELECT id FROM every_type WHERE o IN (-1, 4294967295)", 1),
        ("SELECT id FROM every_type WHERE o = 8589934591", 0),
    ] {
        let batches = run(&engine, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            rows,
            "{sql}"
        );
    }
}

#[tokio::test]
async fn discovery_lists_relations_with_keys_and_estimates() {
    let schema = Schema::create("discovery").await;
    schema
        .execute(&format!(
            r#"
        CREATE TABLE base (id int PRIMARY KEY, grp text NOT NULL, v numeric(6,2));
        INSERT INTO base SELECT i, 'g' || (i % 3), i FROM generate_series(1, 3000) i;
        ANALYZE base;
        CREATE TABLE composite (a int, b text, c int, PRIMARY KEY (b, a));
        CREATE VIEW v_base AS SELECT grp, count(*) AS n FROM base GROUP BY grp;
        CREATE MATERIALIZED VIEW mv_base AS SELECT id FROM base WHERE id <= 10;
        CREATE TABLE events (day date NOT NULL, what text) PARTITION BY RANGE (day);
        CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        INSERT INTO events VALUES ('2024-05-01', 'a'), ('2025-05-01', 'b'), ('2025-06-01', 'c');
        DROP SERVER IF EXISTS {s}_loop CASCADE;
        CREATE SERVER {s}_loop FOREIGN DATA WRAPPER postgres_fdw
            OPTIONS (host '127.0.0.1', port '5432', dbname 'postgres');
        CREATE USER MAPPING FOR CURRENT_USER SERVER {s}_loop OPTIONS (user 'postgres');
        CREATE FOREIGN TABLE remote_base (id int, grp text) SERVER {s}_loop
            OPTIONS (schema_name '{s}', table_name 'base');
    "#,
            s = schema.name
        ))
        .await;
    let engine = pg_engine(&schema.name, true, "");
    assert_eq!(
        table(
            &engine,
            &format!(
                "SELECT table_name, table_type FROM information_schema.tables \
                 WHERE table_catalog = 'pg' AND table_schema = '{}' ORDER BY 1",
                schema.name
            )
        )
        .await,
        "\
+-------------+------------+
| table_name  | table_type |
+-------------+------------+
| base        | BASE TABLE |
| composite   | BASE TABLE |
| events      | BASE TABLE |
| mv_base     | VIEW       |
| remote_base | BASE TABLE |
| v_base      | VIEW       |
+-------------+------------+"
    );
    assert_eq!(
        table(&engine, "SELECT * FROM v_base ORDER BY grp").await,
        "+-----+------+\n| grp | n    |\n+-----+------+\n| g0  | 1000 |\n| g1  | 1000 |\n| g2  | 1000 |\n+-----+------+"
    );
    assert_eq!(
        table(&engine, "SELECT count(*) AS n, max(id) AS m FROM mv_base").await,
        "+----+----+\n| n  | m  |\n+----+----+\n| 10 | 10 |\n+----+----+"
    );
    assert_eq!(
        table(
            &engine,
            "SELECT what FROM events WHERE day >= DATE '2025-01-01' ORDER BY what"
        )
        .await,
        "+------+\n| what |\n+------+\n| b    |\n| c    |\n+------+"
    );
    // A partition is reachable by name though only its parent is listed.
    assert_eq!(
        table(&engine, "SELECT count(*) AS n FROM events_2025").await,
        "+---+\n| n |\n+---+\n| 2 |\n+---+"
    );
    assert_eq!(
        table(
            &engine,
            "SELECT count(*) AS n FROM remote_base WHERE grp = 'g1'"
        )
        .await,
        "+------+\n| n    |\n+------+\n| 1000 |\n+------+"
    );

    // Keys and size estimates reach DataFusion.
    let provider = engine
        .context()
        .table_provider(format!("pg.{}.base", schema.name))
        .await
        .unwrap();
    let remote = tributary_core::remote::remote_table(provider.as_ref()).unwrap();
    assert_eq!(remote.info().primary_key, vec![0]);
    assert_eq!(remote.info().rows, Some(3000));
    assert!(remote.info().bytes.is_some_and(|b| b > 0));
    let provider = engine
        .context()
        .table_provider(format!("pg.{}.composite", schema.name))
        .await
        .unwrap();
    let remote = tributary_core::remote::remote_table(provider.as_ref()).unwrap();
    assert_eq!(remote.info().primary_key, vec![1, 0]);
    let base = remote.info().schema.clone();
    assert!(!base.field_with_name("b").unwrap().is_nullable());
    assert!(base.field_with_name("c").unwrap().is_nullable());
}

#[tokio::test]
async fn large_scans_split_into_ctid_ranges_that_cover_every_row() {
    let schema = Schema::create("split").await;
    schema
        .execute(
            "CREATE TABLE big (id bigint, pad text);
             INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, 50000) i;
             DELETE FROM big WHERE id % 7 = 0;
             ANALYZE big;",
        )
        .await;
    let single = pg_engine(&schema.name, true, "    partitions: 1\n");
    let split = pg_engine(&schema.name, true, "    partitions: 3\n");
    let plan = split
        .explain("SELECT id FROM big")
        .await
        .unwrap()
        .to_string();
    assert!(plan.contains("partitions=3"), "{plan}");
    assert!(
        plan.contains("ctid < '(") && plan.contains("::tid"),
        "{plan}"
    );
    let ids = |batches: Vec<RecordBatch>| {
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0))
                    .values()
                    .to_vec()
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    let from_split = ids(run(&split, "SELECT id FROM big").await.unwrap());
    assert_eq!(
        from_split,
        ids(run(&single, "SELECT id FROM big").await.unwrap())
    );
    let expected: Vec<i64> = (1..=50000).filter(|i| i % 7 != 0).collect();
    assert_eq!(from_split, expected);
    // A limited scan reads in one part.
    let plan = split
        .explain("SELECT id FROM big LIMIT 10")
        .await
        .unwrap()
        .to_string();
    assert!(plan.contains("partitions=1"), "{plan}");
    assert_eq!(
        run(&split, "SELECT id FROM big LIMIT 10").await.unwrap()[0].num_rows(),
        10
    );
}

#[tokio::test]
async fn failures_name_the_source_and_never_the_password() {
    let schema = Schema::create("failures").await;
    schema
        .execute(
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1);
             CREATE VIEW slow AS SELECT pg_sleep(5) IS NULL AS done;
             GRANT USAGE ON SCHEMA public TO tributary_auth;",
        )
        .await;
    let yaml = |source: &str| {
        format!("sources:\n{source}  - name: demo\n    kind: tpch\n    scale_factor: 0.001\n")
    };
    let engine_for = |source: &str| {
        let config = Config::parse(&yaml(source), None, &|_| None).unwrap();
        Engine::new(&config).unwrap()
    };

    // Wrong password.
    let wrong = engine_for(
        "  - name: pg\n    kind: postgres\n    host: 127.0.0.1\n    user: tributary_auth\n    password: not-the-password-x9\n    database: postgres\n",
    );
    let e = error(&wrong, "SELECT * FROM pg.public.anything").await;
    assert!(e.contains("source `pg`"), "{e}");
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password-x9"), "{e}");
    let health = wrong.check().await;
    assert_eq!(health[0].status, tributary_core::HealthStatus::Unhealthy);
    assert!(!health[0].detail.contains("not-the-password-x9"));
    // Other sources keep working.
    assert_eq!(
        table(&wrong, "SELECT count(*) AS n FROM demo.tpch.region").await,
        "+---+\n| n |\n+---+\n| 5 |\n+---+"
    );

    // The right password in a URL works, and the URL never shows in errors.
    let right = engine_for(&format!(
        "  - name: pg\n    kind: postgres\n    url: postgres://tributary_auth:tributary-test-password@127.0.0.1:5432/postgres\n    schemas: {{include: [{}]}}\n",
        schema.name
    ));
    let e = error(&right, &format!("SELECT * FROM pg.{}.t", schema.name)).await;
    assert!(e.contains("permission denied"), "{e}");
    assert!(!e.contains("tributary-test-password"), "{e}");

    // Unreachable host.
    let down = engine_for(
        "  - name: pg\n    kind: postgres\n    host: 127.0.0.1\n    port: 1\n    user: postgres\n    connect_timeout: 2s\n",
    );
    let e = error(&down, "SELECT * FROM pg.public.t").await;
    assert!(
        e.contains("source `pg`: cannot connect to postgres@127.0.0.1:1/postgres"),
        "{e}"
    );

    // A table dropped after discovery.
    let engine = pg_engine(&schema.name, true, "    statement_timeout: 500ms\n");
    assert_eq!(
        table(&engine, "SELECT id FROM t").await,
        "+----+\n| id |\n+----+\n| 1  |\n+----+"
    );
    schema.execute("DROP TABLE t").await;
    let e = error(&engine, "SELECT id FROM t").await;
    assert!(e.contains("source `pg`"), "{e}");
    assert!(e.contains("does not exist"), "{e}");

    // A statement that runs past the statement timeout.
    let e = error(&engine, "SELECT * FROM slow").await;
    assert!(e.contains("source `pg`"), "{e}");
    assert!(e.contains("statement timeout"), "{e}");
}

#[tokio::test]
async fn tls_modes_follow_libpq() {
    let schema = Schema::create("tls").await;
    schema
        .execute("CREATE VIEW tls AS SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();")
        .await;
    let root = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let engine = |host: &str, mode: &str, rootcert: bool| {
        let cert = if rootcert {
            format!("    sslrootcert: {root}\n")
        } else {
            String::new()
        };
        pg_engine_at(
            &schema.name,
            &format!(
                "    host: {host}\n    user: postgres\n    database: postgres\n    sslmode: {mode}\n{cert}"
            ),
        )
    };
    let encrypted = "+------+\n| ssl  |\n+------+\n| true |\n+------+";
    assert_eq!(
        table(&engine("127.0.0.1", "require", false), "SELECT * FROM tls").await,
        encrypted
    );
    assert_eq!(
        table(&engine("127.0.0.1", "disable", false), "SELECT * FROM tls").await,
        "+-------+\n| ssl   |\n+-------+\n| false |\n+-------+"
    );
    assert_eq!(
        table(
            &engine("localhost", "verify-full", true),
            "SELECT * FROM tls"
        )
        .await,
        encrypted
    );
    assert_eq!(
        table(&engine("127.0.0.1", "verify-ca", true), "SELECT * FROM tls").await,
        encrypted
    );
    let e = error(
        &engine("127.0.0.1", "verify-full", true),
        "SELECT * FROM tls",
    )
    .await;
    assert!(
        e.contains("source `pg`") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
}

/// Connections are opened here, not by tokio-postgres (so that plaintext reads are merged
/// too): each host is tried in turn, Unix sockets work, `target_session_attrs` is checked,
/// and rows of every size, up to many times the merging buffer, come back whole, with TLS
/// and without.
#[tokio::test]
async fn connections_try_each_host_and_read_rows_of_any_size() {
    let schema = Schema::create("hosts").await;
    schema
        .execute(
            "CREATE TABLE t (id int, wide text);
             INSERT INTO t SELECT i, repeat('ü', (i * 7919) % 100000)
                 FROM generate_series(1, 400) i;
             INSERT INTO t SELECT i, 'x' FROM generate_series(401, 50000) i;
             ANALYZE t;",
        )
        .await;
    let expected = schema
        .client()
        .query_one(
            "SELECT count(*)::text, sum(char_length(wide))::text, sum(id)::text,                     md5(string_agg(wide, ',' ORDER BY id)) FROM t",
            &[],
        )
        .await
        .unwrap();
    let expected = format!(
        "{} {} {} {}",
        expected.get::<_, String>(0),
        expected.get::<_, String>(1),
        expected.get::<_, String>(2),
        expected.get::<_, String>(3)
    );
    // Not pushed, so that DataFusion computes over the rows read.
    let sql = "SELECT count(*) AS n, sum(character_length(wide)) AS chars, sum(id) AS ids,                md5(string_agg(wide, ',' ORDER BY id)) AS digest FROM t";
    let read = |engine: Engine| async move {
        let batches = run(&engine, sql).await.unwrap_or_else(|e| panic!("{e}"));
        cells(&batches, 0)
            .into_iter()
            .map(|(_, _, value)| value)
            .collect::<Vec<_>>()
            .join(" ")
    };
    for mode in ["disable", "require"] {
        let engine = pg_engine_at(
            &schema.name,
            &format!(
                "    host: 127.0.0.1
    user: postgres
    database: postgres
    sslmode: {mode}
    pushdown: false
    partitions: 2
    partition_rows: 10000
"
            ),
        );
        assert_eq!(read(engine).await, expected, "sslmode {mode}");
    }
    // The first host refuses; the second answers.
    let engine = pg_engine_at(
        &schema.name,
        "    url: postgres://postgres@127.0.0.1:1/postgres?host=127.0.0.1&port=5432
    pushdown: false
",
    );
    assert_eq!(read(engine).await, expected);

    // A host that accepts and then says nothing is given up after the connect timeout,
    // one that hangs up at once straight away, and the next host answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (silent_port, rude_port) = (
        silent.local_addr().unwrap().port(),
        rude.local_addr().unwrap().port(),
    );
    let listeners = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                Ok((socket, _)) = silent.accept() => held.push(socket),
                Ok((socket, _)) = rude.accept() => drop(socket),
            }
        }
    });
    let engine = pg_engine_at(
        &schema.name,
        &format!(
            "    url: postgres://postgres@127.0.0.1:{silent_port}/postgres?host=127.0.0.1,127.0.0.1&port={rude_port},5432
    connect_timeout: 1s
    pushdown: false
"
        ),
    );
    assert_eq!(read(engine).await, expected);
    // When no host answers, the error says what each did.
    let engine = pg_engine_at(
        &schema.name,
        &format!(
            "    url: postgres://postgres@127.0.0.1:{silent_port}/postgres?host=127.0.0.1&port={rude_port}
    connect_timeout: 1s
"
        ),
    );
    let e = error(&engine, "SELECT count(*) FROM t").await;
    assert!(
        e.contains(&format!(
            "127.0.0.1:{silent_port}: no answer within the connect timeout (1s); 127.0.0.1:{rude_port}: "
        )),
        "{e}"
    );
    listeners.abort();

    // A Unix socket, as the operating system's user (the server's local connections use
    // peer authentication); as in libpq, `sslmode` does not apply to it.
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let me = String::from_utf8(me.stdout).unwrap().trim().to_string();
    schema
        .execute(&format!(
            "DO $$ BEGIN CREATE ROLE \"{me}\" LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT USAGE ON SCHEMA {0} TO \"{me}\"; GRANT SELECT ON {0}.t TO \"{me}\";",
            schema.name
        ))
        .await;
    let engine = pg_engine_at(
        &schema.name,
        &format!(
            "    host: /var/run/postgresql
    user: {me}
    database: postgres
    sslmode: require
    pushdown: false
"
        ),
    );
    assert_eq!(read(engine).await, expected);

    // A writable server is taken when one is asked for, and refused when a read-only
    // one is.
    let engine = pg_engine_at(
        &schema.name,
        "    url: postgres://postgres@127.0.0.1:5432/postgres?target_session_attrs=read-write
    pushdown: false
",
    );
    assert_eq!(read(engine).await, expected);
    let engine = pg_engine_at(
        &schema.name,
        "    url: postgres://postgres@127.0.0.1:5432/postgres?target_session_attrs=read-only
",
    );
    let e = error(&engine, "SELECT count(*) FROM t").await;
    assert!(
        e.contains("source `pg`") && e.contains("target_session_attrs asks for read-only"),
        "{e}"
    );
}

/// Like [`pg_engine`] with connection settings instead of the URL.
fn pg_engine_at(schema: &str, connection: &str) -> Engine {
    let yaml = format!(
        "server:\n  default_catalog: pg\n  default_schema: {schema}\nsources:\n  - name: pg\n    kind: postgres\n{connection}    schemas: {{include: [{schema}]}}\n"
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

/// `count(*)` over a scan DataFusion runs reads no column (`SELECT FROM t`): only its
/// rows count, in partitions, in batches, and none at all.
#[tokio::test]
async fn a_scan_of_no_columns_counts_its_rows() {
    let schema = Schema::create("no_columns").await;
    schema
        .execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text);
             INSERT INTO t SELECT i, 'ü''' || i FROM generate_series(1, 10007) i;
             ANALYZE t;",
        )
        .await;
    let engine = pg_engine(
        &schema.name,
        false,
        "    partitions: 3\n    partition_rows: 1000\n    batch_size: 1000\n",
    );
    assert_counts_without_columns(&engine).await;
}

/// 300,000 rows of `big (id bigint, f float8)`.
const BIG_FLOATS: &str = "CREATE TABLE big (id bigint, f float8);
    INSERT INTO big SELECT i, i FROM generate_series(1, 300000) i;
    ANALYZE big;";

/// Reads one row of [`BIG_FLOATS`] through a scan that stops mid-`COPY`: the float filter
/// stays in DataFusion, so the limit cannot be pushed, and DataFusion drops the stream
/// after the first match.
async fn stop_a_copy_early(engine: &Engine) {
    let batches = run(engine, "SELECT id FROM big WHERE f > 10 LIMIT 1")
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

/// A query of [`BIG_FLOATS`] that PostgreSQL answers whole (its SQL has `<= 10`).
async fn assert_reads_ten(engine: &Engine) {
    assert_eq!(
        table(engine, "SELECT count(*) AS n FROM big WHERE id <= 10").await,
        "+----+\n| n  |\n+----+\n| 10 |\n+----+"
    );
}

#[tokio::test]
async fn a_scan_stopped_early_cancels_its_query() {
    let schema = Schema::create("cancel").await;
    schema.execute(BIG_FLOATS).await;
    let engine = pg_engine(
        &schema.name,
        true,
        "    partitions: 1\n    batch_size: 1024\n",
    );
    stop_a_copy_early(&engine).await;
    let client = schema.client();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY%{}%'",
        schema.name
    );
    let mut active: i64 = 1;
    for _ in 0..50 {
        active = client.query_one(&sql, &[]).await.unwrap().get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(active, 0, "the abandoned COPY is still running");
    // The engine keeps working (the interrupted connection was not pooled).
    assert_reads_ten(&engine).await;
}

#[tokio::test]
async fn session_settings_reach_every_connection() {
    let schema = Schema::create("settings").await;
    schema
        .execute(
            "CREATE VIEW settings AS SELECT current_setting('work_mem') AS work_mem,
                current_setting('lock_timeout') AS lock_timeout,
                current_setting('tributary.note') AS note,
                current_setting('TimeZone') AS tz",
        )
        .await;
    // `options` in the URL are kept, `settings` come after them (and win), and the time zone
    // reading depends on comes last.
    let separator = if url().contains('?') { '&' } else { '?' };
    let connection = format!(
        "    url: {}{separator}options=-c%20lock_timeout%3D1234%20-c%20work_mem%3D1MB%20-c%20TimeZone%3DAsia/Tokyo\n    settings:\n      work_mem: 64MB\n      tributary.note: 'two words, a \\ and ünï'\n",
        url()
    );
    let engine = pg_engine_at(&schema.name, &connection);
    let batches = run(&engine, "SELECT * FROM settings").await.unwrap();
    let values: Vec<String> = cells(&batches, 0).into_iter().map(|c| c.2).collect();
    assert_eq!(values, ["64MB", "1234ms", "two words, a \\ and ünï", "UTC"]);

    let rejected = |settings: &str| {
        let yaml = format!(
            "sources:\n  - name: pg\n    kind: postgres\n    url: {}\n    settings:\n      {settings}\n",
            url()
        );
        let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        match Engine::new(&config) {
            Ok(_) => panic!("{settings} was accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = rejected("TimeZone: Europe/Paris");
    assert!(e.contains("settings.TimeZone"), "{e}");
    assert!(e.contains("UTC"), "{e}");
    let e = rejected("statement_timeout: 5s");
    assert!(e.contains("`statement_timeout` key"), "{e}");
    let e = rejected("'work_mem=1MB -c jit': on");
    assert!(e.contains("not a PostgreSQL setting name"), "{e}");
}

/// An ordinary close says goodbye (`Terminate`), so the server logs no broken connection,
/// while a connection abandoned mid-`COPY` is cancelled and closed without reading on.
/// Seen from the client's side of a proxy in front of the server.
#[tokio::test]
async fn connections_say_goodbye_unless_a_copy_is_abandoned() {
    let schema = Schema::create("goodbye").await;
    schema.execute(BIG_FLOATS).await;
    let proxy = ClientRecorder::start().await;
    let engine = pg_engine_at(
        &schema.name,
        &format!(
            "    url: postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable
    partitions: 1
    batch_size: 1024
",
            proxy.port
        ),
    );
    stop_a_copy_early(&engine).await;
    assert_reads_ten(&engine).await;
    drop(engine);

    let sessions = proxy.sessions_once_closed().await;
    assert_eq!(
        sessions.iter().filter(|s| s.cancel).count(),
        1,
        "one cancel, for the abandoned COPY: {sessions:#?}"
    );
    let abandoned = |s: &&Session| {
        s.queries
            .iter()
            .any(|q| q.starts_with("COPY") && !q.contains("<= 10"))
    };
    let (copied, others): (Vec<&Session>, Vec<&Session>) =
        sessions.iter().filter(|s| !s.cancel).partition(abandoned);
    assert_eq!(copied.len(), 1, "{sessions:#?}");
    assert_ne!(copied[0].messages.last(), Some(&b'X'), "{sessions:#?}");
    assert!(
        others
            .iter()
            .any(|s| s.queries.iter().any(|q| q.contains("<= 10"))),
        "{sessions:#?}"
    );
    for session in others {
        assert_eq!(session.messages.last(), Some(&b'X'), "{session:#?}");
    }
}

/// What a client sent over one connection.
#[derive(Debug, Default)]
struct Session {
    /// The connection carried a cancel request and nothing else.
    cancel: bool,
    /// The type byte of each message after the startup message, in order.
    messages: Vec<u8>,
    /// The text of each simple query (`Q`) and statement parsed (`P`).
    queries: Vec<String>,
}

impl Session {
    fn read(bytes: &[u8]) -> Session {
        if bytes.len() < 8 {
            return Session::default();
        }
        let int = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let mut session = Session {
            cancel: int(4) == 80877102,
            ..Session::default()
        };
        let mut at = int(0);
        while at + 5 <= bytes.len() {
            let (kind, len) = (bytes[at], int(at + 1));
            let body = &bytes[at + 5..(at + 1 + len).min(bytes.len())];
            let text = |b: &[u8]| {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                String::from_utf8_lossy(&b[..end]).into_owned()
            };
            match kind {
                b'Q' => session.queries.push(text(body)),
                // A statement name, then the query.
                b'P' => {
                    let name = body.iter().position(|&c| c == 0).unwrap_or(0);
                    session.queries.push(text(&body[name + 1..]));
                }
                _ => {}
            }
            session.messages.push(kind);
            at += 1 + len;
        }
        session
    }
}

/// A TCP proxy to the test server that keeps what each client sent.
struct ClientRecorder {
    port: u16,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>>,
}

impl ClientRecorder {
    async fn start() -> ClientRecorder {
        let config: tokio_postgres::Config = url().parse().unwrap();
        let server = match (&config.get_hosts()[0], config.get_ports().first()) {
            (tokio_postgres::config::Host::Tcp(host), port) => {
                format!("{host}:{}", port.copied().unwrap_or(5432))
            }
            other => panic!("the test server is not on TCP: {other:?}"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // One slot per connection: None while open, what the client sent once it closed.
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let slots = sent.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (client, _) = listener.accept().await.unwrap();
                // Counted as open from the moment it is accepted.
                let slot = {
                    let mut slots = slots.lock().unwrap();
                    slots.push(None);
                    slots.len() - 1
                };
                let slots = slots.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    let upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = upstream.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let mut kept = Vec::new();
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = from_client.read(&mut buf).await {
                        if n == 0 || to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        kept.extend_from_slice(&buf[..n]);
                    }
                    let _ = to_server.shutdown().await;
                    slots.lock().unwrap()[slot] = Some(kept);
                });
            }
        });
        ClientRecorder { port, sent }
    }

    /// What each client sent, once every connection has closed (or after 10 s, failing).
    async fn sessions_once_closed(&self) -> Vec<Session> {
        for _ in 0..100 {
            {
                let sent = self.sent.lock().unwrap();
                if sent.iter().all(Option::is_some) {
                    return sent.iter().flatten().map(|b| Session::read(b)).collect();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let sent = self.sent.lock().unwrap();
        panic!(
            "{} of {} connections are still open: {:#?}",
            sent.iter().filter(|s| s.is_none()).count(),
            sent.len(),
            sent.iter()
                .flatten()
                .map(|b| Session::read(b))
                .collect::<Vec<_>>()
        );
    }
}

/// Table `t` of 50,000 rows, and an engine that reads it in two parts over a pool of three
/// connections (DataFusion computing everything else).
async fn split_table_on_a_small_pool(name: &str) -> (Schema, Engine) {
    let schema = Schema::create(name).await;
    schema
        .execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text);
             INSERT INTO t SELECT i, 'ü''' || i FROM generate_series(1, 50000) i;
             ANALYZE t;",
        )
        .await;
    let engine = pg_engine(
        &schema.name,
        false,
        "    pool_size: 3\n    partitions: 2\n    partition_rows: 1000\n    batch_size: 1000\n",
    );
    (schema, engine)
}

/// More split scans at once than the pool has connections for: each scan needs its parts'
/// connections and the one holding their shared snapshot at the same time, so scans that
/// each took some of them would wait on each other for ever. Every query must finish, with
/// the right answer, and the pool must be left usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_split_scans_share_a_small_pool() {
    let (_schema, engine) = split_table_on_a_small_pool("small_pool").await;
    let plan = table(&engine, "EXPLAIN SELECT count(*), max(v) FROM t").await;
    assert!(plan.contains("partitions=2"), "{plan}");
    let queries: Vec<_> = (0..8)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(
                async move { table(&engine, "SELECT count(*) AS n, max(v) AS m FROM t").await },
            )
        })
        .collect();
    // A generous bound that only a hang exceeds: the eight scans take well under a
    // second each.
    let all = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        futures::future::join_all(queries),
    )
    .await
    .expect("concurrent scans waited on each other's connections for ever");
    for answer in all {
        assert_eq!(
            answer.unwrap(),
            "+-------+--------+\n| n     | m      |\n+-------+--------+\n| 50000 | ü'9999 |\n+-------+--------+"
        );
    }
    assert_reads_count(&engine).await;
}

/// A query abandoned while its parts wait inside their shared snapshot's transaction
/// (here for a lock on the table) must not hand those connections back to the pool still
/// inside it: the next query to get one would fail to join its own snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_split_scan_leaves_no_connection_in_a_transaction() {
    let (schema, engine) = split_table_on_a_small_pool("abandoned_split").await;
    let frame = engine
        .sql("SELECT count(*) AS n, max(v) AS m FROM t")
        .await
        .unwrap();
    let context = Arc::new(frame.task_ctx());
    // Planned before the lock: measuring the table for its split needs the table too.
    let plan = frame.create_physical_plan().await.unwrap();
    let locker = schema.client();
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {}.t IN ACCESS EXCLUSIVE MODE",
            schema.name
        ))
        .await
        .unwrap();
    let query = tokio::spawn(datafusion::physical_plan::collect(plan, context));
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%{}%ctid%'",
        schema.name
    );
    let mut parts: i64 = 0;
    for _ in 0..300 {
        // Inside the locking transaction, activity is read as of its first read unless
        // the snapshot is cleared.
        locker
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        parts = locker.query_one(&waiting, &[]).await.unwrap().get(0);
        if parts == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    query.abort();
    let aborted = query.await;
    // Released before any assertion: the schema cannot be dropped while it is held.
    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(parts, 2, "the scan's parts never waited for the lock");
    assert!(aborted.unwrap_err().is_cancelled());
    for _ in 0..4 {
        assert_reads_count(&engine).await;
    }
}

async fn assert_reads_count(engine: &Engine) {
    assert_eq!(
        table(engine, "SELECT count(*) AS n FROM t").await,
        "+-------+\n| n     |\n+-------+\n| 50000 |\n+-------+"
    );
}

/// The tables of [`early_probe`](crate::early_probe), in a schema of their own.
async fn customers_and_orders(name: &str) -> Schema {
    let schema = Schema::create(name).await;
    schema
        .execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, name text);
             INSERT INTO customers SELECT i, 'ü''' || i FROM generate_series(1, 2000) i;
             CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint, amount numeric(10, 2));
             INSERT INTO orders SELECT i, i % 1500 + 1, i / 100.0 FROM generate_series(1, 400000) i;
             ANALYZE customers; ANALYZE orders;",
        )
        .await;
    schema
}

/// Locks `customers` in a transaction; sees `orders` read in `pg_stat_activity`.
struct PgLocker<'a>(&'a Schema);

impl crate::early_probe::Locker for PgLocker<'_> {
    async fn lock_customers(&mut self) {
        self.0
            .client()
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {}.customers IN ACCESS EXCLUSIVE MODE",
                self.0.name
            ))
            .await
            .unwrap();
    }

    async fn orders_running(&mut self) -> bool {
        let client = self.0.client();
        // Inside the locking transaction, activity is read as of its first read unless
        // the snapshot is cleared.
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let orders = format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE query LIKE '%\"{}\".\"orders\"%' AND pid <> pg_backend_pid()",
            self.0.name
        );
        client
            .query_one(&orders, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    }

    async fn unlock(&mut self) {
        self.0.client().batch_execute("COMMIT").await.unwrap();
    }
}

/// A probe side that queries PostgreSQL starts early with a pool for both sides' 2 parts
/// and their shared snapshot's connection (2 × 3), and not with one fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_probe_side_starts_early_only_with_connections_for_both_sides() {
    let schema = customers_and_orders("early_probe").await;
    let settings = "    partitions: 2\n    partition_rows: 1000\n    batch_size: 1000\n";
    let roomy = pg_engine(
        &schema.name,
        false,
        &format!("    pool_size: 6\n{settings}"),
    );
    let tight = pg_engine(
        &schema.name,
        false,
        &format!("    pool_size: 5\n{settings}"),
    );
    crate::early_probe::starts_only_with_connections_for_both_sides(
        &roomy,
        &tight,
        &mut PgLocker(&schema),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_early_probe_sides_share_a_small_pool() {
    let schema = customers_and_orders("early_probe_pool").await;
    let engine = pg_engine(
        &schema.name,
        false,
        "    pool_size: 6\n    partitions: 2\n    partition_rows: 1000\n    batch_size: 1000\n",
    );
    crate::early_probe::concurrent_joins_share_a_small_pool(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_waits_for_a_busy_pool_at_most_pool_timeout() {
    let schema = customers_and_orders("pool_timeout").await;
    let engine = pg_engine(&schema.name, false, crate::pool_timeout::ONE_CONNECTION);
    crate::pool_timeout::a_query_waits_at_most_pool_timeout(&engine).await;
}
