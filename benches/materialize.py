#!/usr/bin/env python3
"""Materialization benchmark: copying TPC-H `lineitem` from PostgreSQL into Delta, against the
ceiling and a peer, in one run; then the cost of an incremental run after 1% of rows changed.

Loads `lineitem` at the chosen scale factor into the local PostgreSQL (once, shared with
postgres_scan.py), then times, each in its own process:

  psql        `\\copy lineitem TO '/dev/null' (FORMAT binary)`: the server's binary COPY with
              nothing decoded or written, the ceiling for reading the table
  tributary   `tributary sync lineitem`: a `full` materialization, PostgreSQL → Delta (Parquet
              files and one commit) on local disk, at 1 and 2 source partitions
  duckdb      DuckDB's postgres scanner copying the same table to one Parquet file
              (`COPY (SELECT …) TO 'x.parquet'`), at 1 and 2 threads

and, on `lineitem_changes` (lineitem plus an `l_updated_at` cursor column, indexed), two
materializations with that cursor: `incremental` (each run appends the rows whose cursor
moved: a change log) and `upsert` keyed on (l_orderkey, l_linenumber) (each run merges them
into the copy): their first runs, then runs after updating 1% of the rows each time
(scattered: every order whose key ends in a given two digits). The target is an incremental
run costing at most 5% of the full run.

  benches/materialize.py [--scale 1] [--runs 3]

Needs the services of scripts/services.sh; installs its Python peers into a venv
(benches/requirements.txt) and builds the release binary. Writes target/bench/materialize.md.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from postgres_scan import PG_URL, PSQL, load, psql
from scanbench import bench_schema, build, duckdb_extension, ensure_venv, measured, options, run, write_report

ATTACH = "ATTACH 'host=127.0.0.1 port=5432 user=postgres dbname=postgres' AS pg (TYPE postgres, READ_ONLY)"

DUCKDB_TO_PARQUET = r"""
import sys, duckdb
query, threads, extension, attach, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"SET threads = {threads}")
con.execute(f"LOAD '{extension}'")
con.execute(attach)
con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
"""


def load_changes(schema):
    """`schema`.lineitem_changes: lineitem with a cursor column, made once and reset to
    unchanged (every cursor at 2000-01-01) on each benchmark run."""
    present = psql(f"SELECT to_regclass('{schema}.lineitem_changes') IS NOT NULL")
    if present != "t":
        print("creating lineitem_changes …", file=sys.stderr)
        psql(f"""CREATE TABLE {schema}.lineitem_changes AS
                   SELECT *, timestamptz '2000-01-01 00:00:00+00' AS l_updated_at FROM {schema}.lineitem;
                 ALTER TABLE {schema}.lineitem_changes ADD PRIMARY KEY (l_orderkey, l_linenumber);
                 CREATE INDEX ON {schema}.lineitem_changes (l_updated_at)""", capture=False)
    psql(f"""UPDATE {schema}.lineitem_changes SET l_updated_at = timestamptz '2000-01-01 00:00:00+00'
             WHERE l_updated_at <> timestamptz '2000-01-01 00:00:00+00'""", capture=False)
    run(PSQL + ["-qc", f"VACUUM (ANALYZE) {schema}.lineitem_changes"])


def config(workdir, schema, parts):
    path = workdir / f"p{parts}.yaml"
    path.write_text(f"""server:
  data_dir: data-p{parts}
sources:
  - name: pg
    kind: postgres
    url: {PG_URL}
    schemas: {{include: [{schema}]}}
    partitions: {parts}
    pool_size: 4
materializations:
  - name: lineitem
    from: pg.{schema}.lineitem
  - name: changes
    from: pg.{schema}.lineitem_changes
    mode: upsert
    key: [l_orderkey, l_linenumber]
    cursor: l_updated_at
  - name: changes_log
    from: pg.{schema}.lineitem_changes
    mode: incremental
    cursor: l_updated_at
""")
    return str(path)


def delta_size(folder):
    """Bytes of the Parquet files the latest version of the Delta table in `folder` uses
    (replaced versions' files stay on disk until vacuum)."""
    live = {}
    for log in sorted((folder / "_delta_log").glob("*.json")):
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = action["add"]["size"]
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return sum(live.values())


def timed(cmd):
    start = time.perf_counter()
    out = run(cmd, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout.strip()


def main():
    args = options(__doc__)

    python = ensure_venv()
    extension = duckdb_extension("postgres_scanner")
    binary = build()
    schema = bench_schema(args.scale)
    rows = load(binary, schema, args.scale)
    load_changes(schema)
    workdir = Path(tempfile.mkdtemp(prefix="tributary-bench-materialize-"))
    configs = {parts: config(workdir, schema, parts) for parts in (1, 2)}
    size = len(run(PSQL + ["-Atqc", f"\\copy {schema}.lineitem TO STDOUT WITH (FORMAT binary)"],
                   capture_output=True).stdout)

    report = [f"# Materialization, TPC-H lineitem SF{args.scale:g} ({rows:,} rows, "
              f"{size / 1e6:,.1f} MB as binary COPY), median of {args.runs} runs\n",
              "## Full copy into a table on local disk\n",
              "| contender | parts | median s | best s | M rows/s | MB/s | peak RSS MB | vs ceiling | output MB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    query = f"SELECT * FROM pg.{schema}.lineitem"
    contenders = [("psql binary COPY to /dev/null (ceiling)", 1,
                   PSQL + ["-qc", f"\\copy {schema}.lineitem TO '/dev/null' WITH (FORMAT binary)"], None)]
    for parts in (1, 2):
        data = workdir / f"data-p{parts}" / "materialized" / "lineitem"
        contenders.append(("tributary sync → Delta", parts, [binary, "-c", configs[parts], "sync", "lineitem"], data))
        out = workdir / f"duckdb-{parts}.parquet"
        contenders.append(("duckdb postgres scanner → Parquet", parts,
                           [python, "-c", DUCKDB_TO_PARQUET, query, str(parts), extension, ATTACH, str(out)], out))
    ceiling = None
    full = {}
    for label, parts, cmd, output in contenders:
        median, best, peak = measured(cmd, args.runs)
        ceiling = ceiling or median
        if label.startswith("tributary"):
            full[parts] = median
        written = ""
        if output is not None and output.exists():
            size_bytes = output.stat().st_size if output.is_file() else delta_size(output)
            written = f"{size_bytes / 1e6:,.0f}"
        report.append(f"| {label} | {parts} | {median:.2f} | {best:.2f} | {rows / median / 1e6:.2f} | "
                      f"{size / median / 1e6:.0f} | {peak:.0f} | {ceiling / median:.2f}x | {written} |")
        print(report[-1], file=sys.stderr)

    # After 1% of rows changed: the first runs copy everything; each later one reads only
    # the rows whose cursor moved (an index range scan at the source), then appends them
    # (incremental) or merges them into the copy (upsert).
    report += ["\n## Runs after 1% of rows changed (2 partitions)\n",
               "| run | rows changed | incremental s | vs full copy | upsert s | vs full copy |",
               "|---|---:|---:|---:|---:|---:|"]
    cfg = configs[2]
    jobs = ("changes_log", "changes")
    for job in jobs:
        shutil.rmtree(workdir / "data-p2" / "materialized" / job, ignore_errors=True)
    first = [timed([binary, "-c", cfg, "sync", job])[0] for job in jobs]
    report.append(f"| first run (everything) | {rows:,} | {first[0]:.2f} | {first[0] / full[2]:.2f}x | "
                  f"{first[1]:.2f} | {first[1] / full[2]:.2f}x |")
    print(report[-1], file=sys.stderr)
    after = {job: [] for job in jobs}
    for i in range(args.runs):
        changed = psql(f"""WITH u AS (UPDATE {schema}.lineitem_changes
                             SET l_updated_at = now(), l_comment = left(l_comment, 40) || ' changed {i}'
                             WHERE l_orderkey % 100 = {17 + i} RETURNING 1) SELECT count(*) FROM u""")
        cells = []
        for job in jobs:
            seconds, out = timed([binary, "-c", cfg, "sync", job])
            after[job].append(seconds)
            cells += [f"{seconds:.2f}", f"{seconds / full[2]:.1%}"]
            print(out, file=sys.stderr)
        report.append(f"| after changing 1% ({i + 1}) | {int(changed):,} | {' | '.join(cells)} |")
        print(report[-1], file=sys.stderr)
    report.append("")
    for job, label in zip(jobs, ("incremental (append the changed rows)", "upsert (merge them)")):
        times = sorted(after[job])
        median = times[len(times) // 2]
        verdict = "meets" if median <= 0.05 * full[2] else "misses"
        report.append(f"Median {label}: {median:.2f} s = {median / full[2]:.1%} of the full copy "
                      f"({full[2]:.2f} s); the target is at most 5%: {verdict} it.  ")
    write_report("materialize", report)


if __name__ == "__main__":
    main()
