"""The DuckDB catalog: every table of a run as a view named after its folder.

Views list the table's completed Parquet files explicitly (bookkeeping ``_`` files are
never read), so SQL over a run sees exactly what the markers say is there.
"""

from __future__ import annotations

import re

import duckdb

from infra.storage import RunDir

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(run: RunDir, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per table folder of ``run``."""
    if run.fs.type_name != "local":
        raise NotImplementedError(f"query over {run.location}: only local run directories yet")
    con = duckdb.connect(database)
    for table in run.tables():
        if not _IDENT.match(table):
            continue
        files = ", ".join(_sql_str(f) for f in run.data_files(table))
        con.execute(
            f'CREATE OR REPLACE VIEW "{table}" AS '
            f"SELECT * FROM read_parquet([{files}], union_by_name = true)"
        )
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return sorted(r[0] for r in rows)
