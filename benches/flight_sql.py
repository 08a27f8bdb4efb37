#!/usr/bin/env python3
"""Flight SQL server benchmark: a large result streamed to a real client against the same
query executed in process, and the latency of a trivial query, in one run.

  in process   `tributary query --format null`: DataFusion runs the query and drops the
               batches (no Flight, no client)
  adbc         `tributary serve` on loopback, read with the ADBC Flight SQL driver's Python
               DBAPI as Arrow record batches (`fetch_record_batch`)

Both read `demo.tpch.lineitem` generated in process at the chosen scale (SF 2: 12 million
rows). Reports rows/s and GB/s (Arrow bytes of the result) and their ratio, then p50/p99 of
`SELECT 1` over 1,000 runs on one connection. Usage:

  benches/flight_sql.py [--scale 2] [--runs 3] [--latency-runs 1000]

Installs its client into the bench venv (benches/requirements.txt) and builds the release
binary.
"""

import argparse
import socket
import subprocess
import sys

from scanbench import build, ensure_venv, measured, run, write_report

CLIENT = r"""
import sys, time
import adbc_driver_flightsql.dbapi as flight_sql
uri, query, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with flight_sql.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
    if mode == "stream":
        cur.execute(query)
        rows = nbytes = 0
        for batch in cur.fetch_record_batch():
            rows += batch.num_rows
            nbytes += batch.nbytes
        print(rows, nbytes)
    else:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            cur.execute(query)
            cur.fetchall()
            times.append(time.perf_counter() - start)
        times.sort()
        print(times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=1000)
    args = parser.parse_args()

    python = ensure_venv()
    binary = build()
    query = "SELECT * FROM demo.tpch.lineitem"
    port = free_port()
    server = subprocess.Popen([binary, "--demo-scale", str(args.scale), "serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off"],
                              stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stderr.readline()
        if "grpc://" not in banner:
            sys.exit(f"the server did not start: {banner}{server.stderr.read()}")
        uri = f"grpc://127.0.0.1:{port}"
        rows, nbytes = map(int, run([python, "-c", CLIENT, uri, query, "stream", "0"],
                                    capture_output=True, text=True).stdout.split())
        contenders = [
            ("in process (tributary query --format null)",
             [binary, "--demo-scale", str(args.scale), "query", "--format", "null", query]),
            ("ADBC Flight SQL client over loopback", [python, "-c", CLIENT, uri, query, "stream", "0"]),
        ]
        report = [f"# Flight SQL: `{query}` at SF{args.scale:g} ({rows:,} rows, {nbytes / 1e9:.2f} GB as Arrow), "
                  f"median of {args.runs} runs\n",
                  "| path | median s | best s | M rows/s | GB/s | vs in process |", "|---|---:|---:|---:|---:|---:|"]
        baseline = None
        for label, cmd in contenders:
            median, best, _ = measured(cmd, args.runs)
            baseline = baseline or median
            report.append(f"| {label} | {median:.2f} | {best:.2f} | {rows / median / 1e6:.2f} | "
                          f"{nbytes / median / 1e9:.2f} | {baseline / median:.2f}x |")
            print(report[-1], file=sys.stderr)
        p50, p99 = map(float, run([python, "-c", CLIENT, uri, "SELECT 1", "latency", str(args.latency_runs)],
                                  capture_output=True, text=True).stdout.split())
        report.append(f"\n`SELECT 1` through ADBC, {args.latency_runs} runs on one connection: "
                      f"p50 {p50:.2f} ms, p99 {p99:.2f} ms.")
    finally:
        server.terminate()
        server.wait()
    write_report("flight_sql", report)


if __name__ == "__main__":
    main()
