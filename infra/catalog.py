"""The DuckDB catalog: every table of a run as a view named after its folder.

Views list the table's committed Parquet files explicitly (``RunDir.committed_files``:
marked shards only, never bookkeeping ``_`` files or what a killed run left half-written),
so SQL over a run sees exactly what the markers say is there.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow.dataset as pads

from infra.storage import RunDir

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(run: RunDir, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per table folder of ``run``.

    Local tables use DuckDB's own Parquet reader; tables in object storage are scanned as
    pyarrow datasets through the run's filesystem (no DuckDB extension needed).
    """
    # never fetch an extension from the network (a recipe's `>>=` once waited 6 s to fail)
    con = duckdb.connect(database, config={"autoinstall_known_extensions": False})
    local = run.fs.type_name == "local"
    for table in run.tables():
        if not _IDENT.match(table):
            continue
        files = run.committed_files(table)
        if not files:
            continue
        if local:
            listed = ", ".join(_sql_str(f) for f in files)
            con.execute(
                f'CREATE OR REPLACE VIEW "{table}" AS '
                f"SELECT * FROM read_parquet([{listed}], union_by_name = true)"
            )
        else:
            con.register(table, pads.dataset(files, filesystem=run.fs, format="parquet"))
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the run's tables visible to SQL (views and registered Arrow scans)."""
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return sorted(r[0] for r in rows)
