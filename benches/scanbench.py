"""What the extraction benchmarks share: the peers' venv, the release build, timing under
GNU time, and the Markdown report. Each `*_scan.py` script names its source, ceiling, peers
and loader; this module runs them the same way."""

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

CONNECTORX = r"""
import sys, connectorx as cx
url, query, parts = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = dict(partition_on="l_orderkey", partition_num=parts) if parts > 1 else {}
table = cx.read_sql(url, query, return_type="arrow", **kw)
print(table.num_rows)
"""

DUCKDB = r"""
import sys, duckdb
query, threads, extension, attach = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"SET threads = {threads}")
con.execute(f"LOAD '{extension}'")
con.execute(attach)
rows = 0
for batch in con.execute(query).fetch_record_batch(122880):
    rows += batch.num_rows
print(rows)
"""


def options(doc):
    """The benchmarks' command line (`--scale`, `--runs`), with `doc` as its help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    return parser.parse_args()


def bench_schema(scale):
    """The schema (database) the benchmark data of `scale` is loaded into."""
    return "tributary_bench_sf" + str(scale).replace(".", "_")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_venv():
    """The bench venv's python, with benches/requirements.txt installed."""
    requirements = ROOT / "benches/requirements.txt"
    stamp = VENV / ".requirements"
    if not (VENV / "bin/python").exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    if not stamp.exists() or stamp.read_text() != requirements.read_text():
        run([str(VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-r", str(requirements)])
        stamp.write_text(requirements.read_text())
    return str(VENV / "bin/python")


def duckdb_extension(package):
    """The path of a DuckDB extension shipped in a PyPI wheel, e.g. `mysql_scanner`."""
    paths = glob.glob(str(VENV / f"lib/python*/site-packages/duckdb_extension_{package}/**/*.duckdb_extension"),
                      recursive=True)
    if not paths:
        sys.exit(f"{package} extension not found in the bench venv")
    return paths[0]


def build():
    """The release binary, built if stale."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET))
    run(["cargo", "build", "--release", "--locked", "--bin", "tributary"], cwd=ROOT, env=env)
    return str(TARGET / "release/tributary")


def lineitem_rows(binary, scale):
    """How many rows the demo generator's lineitem has at `scale`."""
    return int(run(
        [binary, "--demo-scale", str(scale), "query", "--format", "csv",
         "SELECT count(*) AS n FROM demo.tpch.lineitem"],
        capture_output=True, text=True,
    ).stdout.split()[-1])


def generate_lineitem(binary, scale):
    """A running generator writing lineitem at `scale` as CSV with a header to its stdout."""
    return subprocess.Popen(
        [binary, "--demo-scale", str(scale), "query", "--format", "csv", "SELECT * FROM demo.tpch.lineitem"],
        stdout=subprocess.PIPE,
    )


def measured(cmd, runs):
    """Median and best time and peak RSS (MB) over `runs` runs, each under GNU time."""
    times, peaks = [], []
    for _ in range(runs):
        with tempfile.NamedTemporaryFile("r") as report:
            start = time.perf_counter()
            child = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name] + cmd,
                                   capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if child.returncode != 0:
                sys.exit(f"{' '.join(cmd[:6])} … failed:\n{child.stderr}")
            peaks.append(int(report.read().strip().splitlines()[-1]) / 1024)
    return statistics.median(times), min(times), max(peaks)


def lineitem_queries(schema):
    """The full scan and the selective query both benchmarks time, on `schema`.lineitem."""
    return {
        "full scan": f"SELECT * FROM {schema}.lineitem",
        "selective": f"SELECT l_orderkey, l_extendedprice, l_discount FROM {schema}.lineitem "
                     f"WHERE l_shipdate = DATE '1995-06-17' AND l_quantity < 10",
    }


def tributary_configs(name, kind, url, schema):
    """Config files for 1 and 2 partitions of a source `name` of `kind` limited to `schema`."""
    workdir = Path(tempfile.mkdtemp(prefix="tributary-bench-"))
    configs = {}
    for parts in (1, 2):
        path = workdir / f"p{parts}.yaml"
        path.write_text(f"sources:\n  - name: {name}\n    kind: {kind}\n    url: {url}\n"
                        f"    schemas: {{include: [{schema}]}}\n    partitions: {parts}\n    pool_size: 4\n")
        configs[parts] = str(path)
    return configs


def peers(binary, python, configs, ours, query, connectorx_url, duckdb_label, duckdb_query, extension, attach):
    """Tributary (running `ours`), ConnectorX and DuckDB (running `duckdb_query`) at 1 and 2
    parts, as timing_table's contenders."""
    contenders = []
    for parts in (1, 2):
        contenders.append(("tributary", parts, [binary, "-c", configs[parts], "query", "--format", "null", ours]))
        contenders.append(("connectorx", parts, [python, "-c", CONNECTORX, connectorx_url, query, str(parts)]))
        contenders.append((duckdb_label, parts, [python, "-c", DUCKDB, duckdb_query, str(parts), extension, attach]))
    return contenders


def timing_table(name, returned, size, size_unit, contenders, runs):
    """Times `contenders` — (label, parts, command), the ceiling first — as Markdown lines."""
    lines = [f"\n## {name}: {returned:,} rows returned, {size / 1e6:,.1f} MB {size_unit}\n",
             "| contender | parts | median s | best s | M rows/s | MB/s | peak RSS MB | vs ceiling |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ceiling = None
    for label, parts, cmd in contenders:
        median, best, peak = measured(cmd, runs)
        ceiling = ceiling or median
        lines.append(
            f"| {label} | {parts} | {median:.2f} | {best:.2f} | {returned / median / 1e6:.2f} | "
            f"{size / median / 1e6:.0f} | {peak:.0f} | {ceiling / median:.2f}x |"
        )
        print(lines[-1], file=sys.stderr)
    return lines


def pushed_scan(binary, config, query, returned, server):
    """A sentence on how many rows Tributary fetched from `server` for `query` and the SQL
    it sent."""
    explained = run([binary, "-c", config, "explain", "--analyze", query], capture_output=True, text=True).stdout
    scan = next((l for l in explained.splitlines() if "RemoteScanExec" in l), "")
    fetched = scan.split("output_rows=")[1].split(",")[0].split("]")[0] if "output_rows=" in scan else "?"
    sql = scan.split("sql=", 1)[-1].split(", metrics=")[0]
    return f"\nTributary fetched {fetched} rows from {server} for {returned:,} returned (filters pushed: `{sql}`)."


def write_report(name, lines):
    text = "\n".join(lines) + "\n"
    out = TARGET / f"bench/{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
