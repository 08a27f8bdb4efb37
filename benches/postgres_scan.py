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

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/tributary/target"))
VENV = Path(os.environ.get("TRIBUTARY_BENCH_VENV", Path.home() / ".cache/tributary/bench-venv"))
PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PSQL = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]

CONNECTORX = r"""
import sys, connectorx as cx
url, query, parts = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = dict(partition_on="l_orderkey", partition_num=parts) if parts > 1 else {}
table = cx.read_sql(url, query, return_type="arrow", **kw)
print(table.num_rows)
"""

DUCKDB = r"""
import sys, duckdb
query, threads, extension = sys.argv[1], int(sys.argv[2]), sys.argv[3]
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"SET threads = {threads}")
con.execute(f"LOAD '{extension}'")
con.execute("ATTACH 'host=127.0.0.1 port=5432 user=postgres dbname=postgres' AS pg (TYPE postgres, READ_ONLY)")
rows = 0
for batch in con.execute(query).fetch_record_batch(122880):
    rows += batch.num_rows
print(rows)
"""


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def psql(sql, capture=True):
    out = run(PSQL + ["-Atqc", sql], capture_output=capture, text=True)
    return out.stdout.strip() if capture else ""


def ensure_venv():
    requirements = ROOT / "benches/requirements.txt"
    stamp = VENV / ".requirements"
    if not (VENV / "bin/python").exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    if not stamp.exists() or stamp.read_text() != requirements.read_text():
        run([str(VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-r", str(requirements)])
        stamp.write_text(requirements.read_text())
    return str(VENV / "bin/python")


def duckdb_extension():
    paths = glob.glob(str(VENV / "lib/python*/site-packages/duckdb_extension_postgres_scanner/**/*.duckdb_extension"), recursive=True)
    if not paths:
        sys.exit("postgres_scanner extension not found in the bench venv")
    return paths[0]


def build():
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET))
    run(["cargo", "build", "--release", "--locked", "--bin", "tributary"], cwd=ROOT, env=env)
    return str(TARGET / "release/tributary")


def load(binary, schema, scale):
    """Loads lineitem at `scale` into `schema` unless it is there already."""
    expected = run(
        [binary, "--demo-scale", str(scale), "query", "--format", "csv",
         "SELECT count(*) AS n FROM demo.tpch.lineitem"],
        capture_output=True, text=True,
    ).stdout.split()[-1]
    present = psql(f"SELECT to_regclass('{schema}.lineitem') IS NOT NULL")
    if present == "t" and psql(f"SELECT count(*) FROM {schema}.lineitem") == expected:
        return int(expected)
    print(f"loading lineitem SF{scale} ({expected} rows) into {schema} …", file=sys.stderr)
    psql(f"""DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
        CREATE TABLE {schema}.lineitem (
          l_orderkey bigint NOT NULL, l_partkey bigint NOT NULL, l_suppkey bigint NOT NULL,
          l_linenumber integer NOT NULL, l_quantity numeric(15,2) NOT NULL,
          l_extendedprice numeric(15,2) NOT NULL, l_discount numeric(15,2) NOT NULL,
          l_tax numeric(15,2) NOT NULL, l_returnflag text NOT NULL, l_linestatus text NOT NULL,
          l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
          l_shipinstruct text NOT NULL, l_shipmode text NOT NULL, l_comment text NOT NULL)""")
    generate = subprocess.Popen(
        [binary, "--demo-scale", str(scale), "query", "--format", "csv", "SELECT * FROM demo.tpch.lineitem"],
        stdout=subprocess.PIPE,
    )
    run(PSQL + ["-qc", f"\\copy {schema}.lineitem FROM STDIN (FORMAT csv, HEADER)"], stdin=generate.stdout)
    if generate.wait() != 0:
        sys.exit("generating lineitem failed")
    psql(f"ALTER TABLE {schema}.lineitem ADD PRIMARY KEY (l_orderkey, l_linenumber)", capture=False)
    # Set hint bits and statistics now, so no contender pays for them on its first scan.
    run(PSQL + ["-qc", f"VACUUM (FREEZE, ANALYZE) {schema}.lineitem"])
    return int(expected)


def measure(cmd):
    """Runs `cmd` to completion; returns the seconds it took."""
    start = time.perf_counter()
    child = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if child.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} … failed:\n{child.stderr}")
    return elapsed


def measured(cmd, runs):
    """Median time and peak RSS over `runs` runs, each under GNU time for its own peak."""
    times, peaks = [], []
    for _ in range(runs):
        with tempfile.NamedTemporaryFile("r") as report:
            wrapped = ["/usr/bin/time", "-f", "%M", "-o", report.name] + cmd
            elapsed = measure(wrapped)
            times.append(elapsed)
            peaks.append(int(report.read().strip().splitlines()[-1]) / 1024)
    return statistics.median(times), min(times), max(peaks)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    python = ensure_venv()
    extension = duckdb_extension()
    binary = build()
    schema = "tributary_bench_sf" + str(args.scale).replace(".", "_")
    rows = load(binary, schema, args.scale)

    queries = {
        "full scan": f"SELECT * FROM {schema}.lineitem",
        "selective": f"SELECT l_orderkey, l_extendedprice, l_discount FROM {schema}.lineitem "
                     f"WHERE l_shipdate = DATE '1995-06-17' AND l_quantity < 10",
    }
    workdir = Path(tempfile.mkdtemp(prefix="tributary-bench-"))
    configs = {}
    for parts in (1, 2):
        path = workdir / f"p{parts}.yaml"
        path.write_text(
            f"sources:\n  - name: pg\n    kind: postgres\n    url: {PG_URL}\n"
            f"    schemas: {{include: [{schema}]}}\n    partitions: {parts}\n    pool_size: 4\n"
        )
        configs[parts] = str(path)

    report = [f"# PostgreSQL extraction, TPC-H lineitem SF{args.scale:g} ({rows:,} rows), median of {args.runs} runs\n"]
    for name, query in queries.items():
        size = len(run(PSQL + ["-Atqc", f"\\copy ({query}) TO STDOUT WITH (FORMAT binary)"],
                       capture_output=True).stdout)
        returned = int(psql(f"SELECT count(*) FROM ({query}) q"))
        contenders = [("psql binary COPY (ceiling)", 1, PSQL + ["-qc", f"\\copy ({query}) TO '/dev/null' WITH (FORMAT binary)"])]
        for parts in (1, 2):
            contenders.append(("tributary", parts, [binary, "-c", configs[parts], "query", "--format", "null", query.replace(f"{schema}.", f"pg.{schema}.")]))
            contenders.append(("connectorx", parts, [python, "-c", CONNECTORX, PG_URL, query, str(parts)]))
            contenders.append(("duckdb postgres scanner", parts, [python, "-c", DUCKDB, query.replace(f"{schema}.", f"pg.{schema}."), str(parts), extension]))
        report.append(f"\n## {name}: {returned:,} rows returned, {size / 1e6:,.1f} MB as binary COPY\n")
        report.append("| contender | parts | median s | best s | M rows/s | MB/s | peak RSS MB | vs psql |")
        report.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        ceiling = None
        for label, parts, cmd in contenders:
            median, best, peak = measured(cmd, args.runs)
            ceiling = ceiling or median
            report.append(
                f"| {label} | {parts} | {median:.2f} | {best:.2f} | {returned / median / 1e6:.2f} | "
                f"{size / median / 1e6:.0f} | {peak:.0f} | {ceiling / median:.2f}x |"
            )
            print(report[-1], file=sys.stderr)
        if name == "selective":
            explained = run([binary, "-c", configs[1], "explain", "--analyze",
                             query.replace(f"{schema}.", f"pg.{schema}.")], capture_output=True, text=True).stdout
            scan = next((l for l in explained.splitlines() if "RemoteScanExec" in l), "")
            fetched = scan.split("output_rows=")[1].split(",")[0].split("]")[0] if "output_rows=" in scan else "?"
            report.append(f"\nTributary fetched {fetched} rows from PostgreSQL for {returned:,} returned "
                          f"(filters pushed: `{scan.split('sql[0]=')[-1][:160] if 'sql[0]=' in scan else scan}`).")
    text = "\n".join(report) + "\n"
    out = TARGET / "bench/postgres_scan.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
