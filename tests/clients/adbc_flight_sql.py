"""Drives a Tributary Flight SQL server with the ADBC Flight SQL driver through Python's
DBAPI, as a notebook or BI tool would.

Usage: adbc_flight_sql.py grpc://host:port
       adbc_flight_sql.py grpc+tls://localhost:port USER PASSWORD CA_PEM_FILE
The second form logs in (handshake with Basic credentials, then the bearer token the server
returns) over TLS trusting the given CA, and first checks that a wrong password is refused.

Serving the built-in demo catalog (TPC-H at SF 0.01, default schema demo.tpch) is assumed.
Each check prints `ok <name>`; the first failure raises, so the exit status tells."""

import sys

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok {name}", flush=True)


def main(uri, user=None, password=None, ca=None):
    options = {}
    if ca is not None:
        with open(ca) as f:
            options[adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value] = f.read()
    if user is not None:
        try:
            with flight_sql.connect(uri, db_kwargs={**options, "username": user, "password": password + "x"},
                                    autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        except adbc_driver_manager.Error as e:
            check("wrong password refused", "invalid user name or password" in str(e), e)
        else:
            raise AssertionError("a wrong password was accepted")
        options.update({"username": user, "password": password})
    # Tributary is read-only and has no transactions: autocommit is the only mode.
    with flight_sql.connect(uri, db_kwargs=options, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT n_nationkey, n_name FROM nation WHERE n_nationkey < 3 ORDER BY n_nationkey")
        table = cur.fetch_arrow_table()
        check("query", table.column("n_name").to_pylist() == ["ALGERIA", "ARGENTINA", "BRAZIL"], table)

        cur.execute("SELECT count(*) AS n FROM lineitem")
        check("aggregate", cur.fetchone() == (60175,))

        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ? OR n_name = ? ORDER BY n_name", (3, "JAPAN"))
        rows = cur.fetchall()
        check("parameters", rows == [("CANADA",), ("JAPAN",)], rows)

        # The same statement again with other values (a prepared statement reused).
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ? OR n_name = ? ORDER BY n_name", (0, "PERU"))
        rows = cur.fetchall()
        check("parameters rebound", rows == [("ALGERIA",), ("PERU",)], rows)

        cur.execute("SELECT n_name FROM nation WHERE false")
        table = cur.fetch_arrow_table()
        check("empty result", table.num_rows == 0 and table.schema.names == ["n_name"], table.schema)

        # The columns of a statement, without running it (Flight's GetSchema).
        schema = cur.adbc_execute_schema("SELECT n_nationkey, n_name FROM nation")
        check("execute_schema", schema.names == ["n_nationkey", "n_name"], schema)

        objects = conn.adbc_get_objects(depth="all", catalog_filter="demo", table_name_filter="nat%").read_all().to_pylist()
        schemas = {s["db_schema_name"]: s for c in objects for s in c["catalog_db_schemas"]}
        tables = {t["table_name"]: t for t in schemas["tpch"]["db_schema_tables"]}
        columns = [c["column_name"] for c in tables["nation"]["table_columns"]]
        check("get_objects", list(tables) == ["nation"] and columns == ["n_nationkey", "n_name", "n_regionkey", "n_comment"],
              (list(tables), columns))

        schema = conn.adbc_get_table_schema("region", catalog_filter="demo", db_schema_filter="tpch")
        check("get_table_schema", schema.names == ["r_regionkey", "r_name", "r_comment"], schema)

        types = conn.adbc_get_table_types()
        check("get_table_types", "TABLE" in types and "VIEW" in types, types)

        info = conn.adbc_get_info()
        check("get_info", info.get("vendor_name") == "Tributary", info)

        for sql, wanted in [("SELEC 1", "SELEC"), ("SELECT * FROM no_such_table", "no_such_table"),
                            ("INSERT INTO nation VALUES (1, 'x', 1, 'y')", "read-only")]:
            try:
                cur.execute(sql)
                cur.fetchall()
            except adbc_driver_manager.Error as e:
                check(f"error for {sql!r}", wanted in str(e), e)
            else:
                raise AssertionError(f"{sql!r} succeeded")

        cur.execute("SELECT 42 AS answer")
        check("answers after errors", cur.fetchone() == (42,))


if __name__ == "__main__":
    main(*sys.argv[1:])
