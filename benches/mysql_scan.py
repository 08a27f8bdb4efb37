#!/usr/bin/env python3
"""MySQL/MariaDB extraction benchmark: Tributary against the ceiling and its peers, in one run.

Loads TPC-H `lineitem` at the chosen scale factor into the local MariaDB (once; it is kept
for later runs), warms InnoDB's buffer pool with it, then times, each in its own process and
on the same query:

  mysql       `mysql --quick --batch -e query > /dev/null`: the server's rows over the text
              protocol with nothing decoded, the ceiling for one stream
  tributary   `tributary query --format null`: rows decoded into Arrow batches, at 1 and 2
              partitions
  connectorx  `connectorx.read_sql(..., return_type="arrow")`, at 1 and 2 partitions
  duckdb      DuckDB's mysql scanner streaming Arrow batches, at 1 and 2 threads

for a full scan and for a selective query, and reports rows/s, MB/s (of the `mysql` client's
output for the query) and peak RSS. Usage:

  benches/mysql_scan.py [--scale 1] [--runs 3]

Needs the services of scripts/services.sh; installs its Python peers into a venv
(benches/requirements.txt) and builds the release binary. It raises the server's InnoDB
buffer pool to 2 GiB (a runtime setting, gone at the next restart) so that every contender
reads from memory.
"""

import sys

from scanbench import (build, duckdb_extension, ensure_venv, generate_lineitem, lineitem_queries, lineitem_rows,
                       options, bench_schema, peers, pushed_scan, run, timing_table, tributary_configs,
                       write_report)

MYSQL_URL = "mysql://root@127.0.0.1:3306"
MYSQL = ["mysql", "-h", "127.0.0.1", "-P", "3306", "-u", "root", "--batch", "--skip-column-names"]


def mysql(sql, database=None):
    out = run(MYSQL + ([database] if database else []) + ["-e", sql], capture_output=True, text=True)
    return out.stdout.strip()


def load(binary, database, scale):
    """Loads lineitem at `scale` into `database` unless it is there already."""
    expected = lineitem_rows(binary, scale)
    present = mysql(f"SELECT count(*) FROM information_schema.tables "
                    f"WHERE table_schema = '{database}' AND table_name = 'lineitem'")
    if present == "1" and mysql(f"SELECT count(*) FROM {database}.lineitem") == str(expected):
        return expected
    print(f"loading lineitem SF{scale} ({expected} rows) into {database} …", file=sys.stderr)
    mysql(f"""DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database};
        CREATE TABLE {database}.lineitem (
          l_orderkey bigint NOT NULL, l_partkey bigint NOT NULL, l_suppkey bigint NOT NULL,
          l_linenumber int NOT NULL, l_quantity decimal(15,2) NOT NULL,
          l_extendedprice decimal(15,2) NOT NULL, l_discount decimal(15,2) NOT NULL,
          l_tax decimal(15,2) NOT NULL, l_returnflag char(1) NOT NULL, l_linestatus char(1) NOT NULL,
          l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
          l_shipinstruct char(25) NOT NULL, l_shipmode char(10) NOT NULL, l_comment varchar(44) NOT NULL,
          PRIMARY KEY (l_orderkey, l_linenumber)) ENGINE = InnoDB""")
    generate = generate_lineitem(binary, scale)
    # The generator writes in primary-key order, so InnoDB appends to its clustered index.
    run(MYSQL + ["--local-infile=1", database, "-e",
                 "SET unique_checks = 0; LOAD DATA LOCAL INFILE '/dev/stdin' INTO TABLE lineitem "
                 "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' IGNORE 1 LINES"],
        stdin=generate.stdout)
    if generate.wait() != 0:
        sys.exit("generating lineitem failed")
    mysql(f"ANALYZE TABLE {database}.lineitem")
    return expected


def main():
    args = options(__doc__)

    python = ensure_venv()
    extension = duckdb_extension("mysql_scanner")
    binary = build()
    database = bench_schema(args.scale)
    mysql("SET GLOBAL innodb_buffer_pool_size = 2147483648")
    rows = load(binary, database, args.scale)
    url = f"{MYSQL_URL}/{database}"
    attach = f"ATTACH 'host=127.0.0.1 port=3306 user=root database={database}' AS my (TYPE mysql, READ_ONLY)"

    configs = tributary_configs("my", "mysql", MYSQL_URL, database)
    # One untimed scan puts the table in the buffer pool.
    mysql(f"SELECT count(*) FROM {database}.lineitem FORCE INDEX (PRIMARY)")

    report = [f"# MariaDB extraction, TPC-H lineitem SF{args.scale:g} ({rows:,} rows), median of {args.runs} runs\n",
              f"Server: {mysql('SELECT version()')}."]
    for name, query in lineitem_queries(database).items():
        ours = query.replace(f"{database}.", f"my.{database}.")
        client = MYSQL + ["--quick", "-e", query]
        size = len(run(client, capture_output=True).stdout)
        returned = int(mysql(f"SELECT count(*) FROM ({query}) q"))
        contenders = [("mysql --quick (ceiling)", 1, ["sh", "-c", '"$@" > /dev/null', "mysql"] + client)]
        contenders += peers(binary, python, configs, ours, query, url, "duckdb mysql scanner",
                            query.replace(f"{database}.", "my."), extension, attach)
        report += timing_table(name, returned, size, "as the mysql client's text output", contenders, args.runs)
        if name == "selective":
            report.append(pushed_scan(binary, configs[1], ours, returned, "MariaDB"))
    write_report("mysql_scan", report)


if __name__ == "__main__":
    main()
