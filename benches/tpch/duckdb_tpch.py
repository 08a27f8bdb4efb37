#!/usr/bin/env python3
"""Runs TPC-H queries in DuckDB over the same placement Tributary reads: PostgreSQL and
MariaDB through DuckDB's scanner extensions (loaded from their PyPI wheels, nothing is
downloaded), Parquet through `read_parquet`. Each table is a view, so the queries run
unchanged.

Usage: duckdb_tpch.py SPEC, where SPEC is JSON:

  {"tables": {"lineitem": "postgres", "part": "parquet", ...},
   "postgres": {"dsn": "host=... port=... user=... dbname=...", "schema": "..."},
   "mysql": {"dsn": "host=... port=... user=... database=...", "database": "..."},
   "parquet": "/folder/with/<table>.parquet",
   "runs": 1, "threads": 2, "timeout": seconds or null, "out": "/folder/for/answers" or null}

then one query per line on standard input, {"name": "q01", "path": "/…/q01.sql"}, for
as long as it stays open: a caller can time each query right beside its other
contenders, over one connection. For each query it prints one JSON line,
{"name", "seconds": [one per run], "error"}, and writes the answer to
`<out>/<name>.arrow` (Arrow IPC file) when `out` is set. A query still running after
`timeout` seconds is interrupted and reported as an error.
"""

import glob
import importlib
import json
import os
import sys
import threading
import time

import duckdb
import pyarrow as pa


def extension(package):
    """The extension file a `duckdb-extension-*` wheel ships."""
    module = importlib.import_module(package)
    found = glob.glob(os.path.join(os.path.dirname(module.__file__), "**", "*.duckdb_extension"),
                      recursive=True)
    if not found:
        sys.exit(f"no DuckDB extension in {package}")
    return found[0]


def connect(spec):
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"SET threads = {int(spec.get('threads', 2))}")
    stores = set(spec["tables"].values())
    if "postgres" in stores:
        con.execute(f"LOAD '{extension('duckdb_extension_postgres_scanner')}'")
        con.execute(f"ATTACH '{spec['postgres']['dsn']}' AS pg (TYPE postgres, READ_ONLY)")
    if "mysql" in stores:
        con.execute(f"LOAD '{extension('duckdb_extension_mysql_scanner')}'")
        con.execute(f"ATTACH '{spec['mysql']['dsn']}' AS my (TYPE mysql, READ_ONLY)")
    for table, store in spec["tables"].items():
        if store == "postgres":
            source = f"pg.\"{spec['postgres']['schema']}\".{table}"
        elif store == "mysql":
            source = f"my.\"{spec['mysql']['database']}\".{table}"
        else:
            path = os.path.join(spec["parquet"], f"{table}.parquet").replace("'", "''")
            source = f"read_parquet('{path}')"
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {source}")
    return con


def run(con, spec, query):
    """Runs `query` `runs` times; its JSON line's fields."""
    with open(query["path"]) as f:
        sql = f.read()
    result = {"name": query["name"], "seconds": [], "error": None}
    timeout = spec.get("timeout")
    out = spec.get("out")
    try:
        for _ in range(int(spec.get("runs", 1))):
            timer = threading.Timer(timeout, con.interrupt) if timeout else None
            started = time.perf_counter()
            if timer:
                timer.start()
            try:
                answer = con.execute(sql).to_arrow_table()
            finally:
                if timer:
                    timer.cancel()
            elapsed = time.perf_counter() - started
            if timeout and elapsed >= timeout:
                raise TimeoutError(f"timed out after {timeout} s")
            result["seconds"].append(elapsed)
        if out:
            path = os.path.join(out, f"{query['name']}.arrow")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, answer.schema) as writer:
                writer.write_table(answer)
    except (duckdb.Error, TimeoutError) as e:
        result["error"] = str(e)
        result["seconds"] = []
    return result


def main():
    spec = json.loads(sys.argv[1])
    con = connect(spec)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(con, spec, json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
