#!/usr/bin/env python3
"""PostgreSQL extraction benchmark: Tributary against the ceiling and its peers, in one run.

Loads TPC-H `lineitem` at the chosen scale factor into the local PostgreSQL (once; it is
kept for later runs), then times, each in its own process and on the same query:

  psql        `\\copy (query) TO '/dev/null' (FORMAT binary)`: the server's binary COPY with
              nothing decoded, the ceiling for one stream
  tributary   `tributary query --format null`: binary COPY decoded into Arrow batches, at 1
              and 2 partitions
  connectorx  `connectorx.read_sql(..., return_type="arrow")`, at 1 and 2 partitions
  duckdb      DuckDB's postgres scanner streaming Arrow batches, at 1 and 2 threads

for a full scan and for a selective query, and reports rows/s, MB/s (of PostgreSQL's
binary COPY output for the query) and peak RSS. Usage:

  benches/postgres_scan.py [--scale 1] [--runs 3]

Needs the services of scripts/services.sh; installs its Python peers into a venv
(benches/requirements.txt) and builds the release binary.
"""

import sys

from scanbench import (build, duckdb_extension, ensure_venv, generate_lineitem, lineitem_queries, lineitem_rows,
                       options, bench_schema, peers, pushed_scan, run, timing_table, tributary_configs,
                       write_report)

PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PSQL = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
ATTACH = "ATTACH 'host=127.0.0.1 port=5432 user=postgres dbname=postgres' AS pg (TYPE postgres, READ_ONLY)"


def psql(sql, capture=True):
    out = run(PSQL + ["-Atqc", sql], capture_output=capture, text=True)
    return out.stdout.strip() if capture else ""


def load(binary, schema, scale):
    """Loads lineitem at `scale` into `schema` unless it is there already."""
    expected = lineitem_rows(binary, scale)
    present = psql(f"SELECT to_regclass('{schema}.lineitem') IS NOT NULL")
    if present == "t" and psql(f"SELECT count(*) FROM {schema}.lineitem") == str(expected):
        return expected
    print(f"loading lineitem SF{scale} ({expected} rows) into {schema} …", file=sys.stderr)
    psql(f"""DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
        CREATE TABLE {schema}.lineitem (
          l_orderkey bigint NOT NULL, l_partkey bigint NOT NULL, l_suppkey bigint NOT NULL,
          l_linenumber integer NOT NULL, l_quantity numeric(15,2) NOT NULL,
          l_extendedprice numeric(15,2) NOT NULL, l_discount numeric(15,2) NOT NULL,
          l_tax numeric(15,2) NOT NULL, l_returnflag text NOT NULL, l_linestatus text NOT NULL,
          l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
          l_shipinstruct text NOT NULL, l_shipmode text NOT NULL, l_comment text NOT NULL)""")
    generate = generate_lineitem(binary, scale)
    run(PSQL + ["-qc", f"\\copy {schema}.lineitem FROM STDIN (FORMAT csv, HEADER)"], stdin=generate.stdout)
    if generate.wait() != 0:
        sys.exit("generating lineitem failed")
    psql(f"ALTER TABLE {schema}.lineitem ADD PRIMARY KEY (l_orderkey, l_linenumber)", capture=False)
    # Set hint bits and statistics now, so no contender pays for them on its first scan.
    run(PSQL + ["-qc", f"VACUUM (FREEZE, ANALYZE) {schema}.lineitem"])
    return expected


def main():
    args = options(__doc__)

    python = ensure_venv()
    extension = duckdb_extension("postgres_scanner")
    binary = build()
    schema = bench_schema(args.scale)
    rows = load(binary, schema, args.scale)

    configs = tributary_configs("pg", "postgres", PG_URL, schema)

    report = [f"# PostgreSQL extraction, TPC-H lineitem SF{args.scale:g} ({rows:,} rows), median of {args.runs} runs\n"]
    for name, query in lineitem_queries(schema).items():
        ours = query.replace(f"{schema}.", f"pg.{schema}.")
        size = len(run(PSQL + ["-Atqc", f"\\copy ({query}) TO STDOUT WITH (FORMAT binary)"],
                       capture_output=True).stdout)
        returned = int(psql(f"SELECT count(*) FROM ({query}) q"))
        contenders = [("psql binary COPY (ceiling)", 1, PSQL + ["-qc", f"\\copy ({query}) TO '/dev/null' WITH (FORMAT binary)"])]
        contenders += peers(binary, python, configs, ours, query, PG_URL, "duckdb postgres scanner", ours, extension, ATTACH)
        report += timing_table(name, returned, size, "as binary COPY", contenders, args.runs)
        if name == "selective":
            report.append(pushed_scan(binary, configs[1], ours, returned, "PostgreSQL"))
    write_report("postgres_scan", report)


if __name__ == "__main__":
    main()
