"""Read-only SQL over the store: DuckDB with the store's Lance tables registered as views.

Every table of the store (`images`, `texts`, `pairs`, `sources` and any other) is registered on an
in-memory DuckDB connection as the Lance dataset itself. DuckDB then pushes the columns and filters
of a query down into the Lance scan, and no table is copied in full. Embeddings and priors arrive
as DuckDB arrays (`FLOAT[D]`, a nested fixed-size list as `FLOAT[D][K]`), so that

    SELECT chip_id, array_cosine_similarity(embedding,
        (SELECT embedding FROM images WHERE chip_id = '...')) AS similarity
    FROM images ORDER BY similarity DESC LIMIT 10

ranks chips by similarity. Footprints and text geometries stay WKB blobs. DuckDB 2.0 has a
`GEOMETRY` type and a few functions without any extension (`ST_GeomFromWKB`, `ST_AsText`,
`ST_AsGeoJSON`, `ST_Intersects_Extent`), so `ST_AsText(ST_GeomFromWKB(footprint))` always works.
The full function set of DuckDB's spatial extension (`ST_Intersects`, `ST_Area`, ...) is there only
where that extension is already installed on the machine: the connection tries `LOAD spatial` and
never installs it, because installing needs the network.

The connection is read-only for the store and reads no other file. Two layers enforce this:
1. DuckDB parses the query, and only one SELECT (WITH, DESCRIBE, SHOW, SUMMARIZE and PIVOT with
   an IN list included), EXPLAIN of a SELECT, or a PRAGMA that only reads (`ALLOWED_PRAGMAS`)
   passes. `window` is an SQL keyword, so that column is written `"window"`.
2. After the views are registered, DuckDB's own settings turn off file and network access
   (`enable_external_access = false`), extension loading and Python replacement scans, and
   `lock_configuration = true` keeps a query from turning them back on.

Results stream from DuckDB in Arrow record batches. The `table` format keeps the first rows and
counts the rest. `csv`, `json` and `parquet` write each batch to the output as it arrives. `json`
is JSON Lines (one object per row), which a reader can take row by row. In CSV and JSON, binary
values (WKB) are written as hex strings, and in CSV, arrays, lists and structs are written as JSON
text.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rsflow.store.db import Store

logger = logging.getLogger(__name__)

FORMATS = ("table", "csv", "json", "parquet")

# PRAGMA statements that only report on the connection; every other PRAGMA is rejected.
ALLOWED_PRAGMAS = frozenset(
    {"table_info", "show", "show_tables", "show_tables_expanded", "database_list", "version", "platform", "functions"}
)

# Record batches are sized so that one contains about this many bytes, estimated from the column types:
# a row of `texts.prior` for a LLaMA-7B store (8 slots of 4096 floats) alone is 128 KiB.
BATCH_BYTES = 32 * 1024 * 1024
MAX_BATCH_ROWS = 65_536

_COMMENTS = r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
_EXPLAIN_PREFIX = re.compile(rf"^{_COMMENTS}explain\s+(?:analyze\s+)?", re.IGNORECASE | re.DOTALL)
_PRAGMA_NAME = re.compile(rf"^{_COMMENTS}pragma\s+(\w+)\s*(=)?", re.IGNORECASE | re.DOTALL)
_FIRST_WORD = re.compile(rf"^{_COMMENTS}(\w+)", re.IGNORECASE | re.DOTALL)
_ARRAY_SIZE = re.compile(r"\[(\d+)\]")


class SqlError(ValueError):
    """A query that DuckDB cannot run, or one that would write or read outside the store."""


@dataclass
class SqlResult:
    """Columns, the first rows and the row count of a query, and where its rows were written."""

    columns: list[str]
    types: list[str]
    rows: list[tuple] = field(default_factory=list)
    row_count: int = 0
    format: str = "table"
    output: Path | None = None
    spatial_extension: bool = False


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection with the store's tables as views, locked to read-only.

    Each view is the table's current Lance version, so one query reads one consistent snapshot.
    """
    return _open(store)[0]


def _open(store: Store) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """Return the locked connection of `connect` and whether DuckDB's spatial extension is loaded."""
    connection = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            # Without this, a query could name any Arrow table or data frame of the calling process.
            "python_enable_replacements": False,
        }
    )
    names = store.db.list_tables().tables
    for name in names:
        connection.register(name, store.db.open_table(name).to_lance())
    logger.info("registered tables %s of store %s", ", ".join(names), store.path)

    # The extension must be loaded before external access is turned off, since loading reads a file.
    try:
        connection.execute("LOAD spatial")
        spatial_extension = True
    except duckdb.Error as error:
        logger.debug("DuckDB spatial extension not loaded (%s); footprints stay WKB blobs", error)
        spatial_extension = False

    # The order matters: the Lance views are registered first, then file access goes off for good.
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection, spatial_extension


def read_only_statement(connection: duckdb.DuckDBPyConnection, query: str) -> str:
    """Parse `query` with DuckDB and return its one statement, raising `SqlError` unless it only reads."""
    statements = _parse(connection, query)
    if not statements:
        raise SqlError("The query is empty: give one SELECT statement.")
    if len(statements) > 1:
        raise SqlError(f"The query has {len(statements)} statements; `rsflow sql` runs one statement at a time.")

    statement = statements[0]
    kind = _statement_type(statement)
    if kind == "SELECT":
        return statement.query
    if kind == "EXPLAIN" and _explains_select(connection, statement.query):
        return statement.query
    if kind == "PRAGMA" and _is_allowed_pragma(statement.query):
        return statement.query
    if kind == "MULTI":
        raise SqlError(
            "The query expands into several statements, which `rsflow sql` does not run: DuckDB does "
            "this for a PIVOT without an IN list. List the pivot values, as in PIVOT ... ON kind IN ('a', 'b')."
        )
    raise SqlError(_rejection(_statement_kind(statement)))


def run_sql(
    store: Store,
    query: str,
    *,
    output: str | Path | BinaryIO | None = None,
    format: str = "table",
    limit_display: int = 20,
) -> SqlResult:
    """Run one read-only `query` over `store` and keep its first rows or write all rows to `output`.

    `format` "table" keeps the first `limit_display` rows in the result and counts the others; it
    takes no output. "csv", "json" (JSON Lines) and "parquet" stream every row to `output`: a path,
    written to a hidden partial file first and renamed when complete, or an open binary file.
    Raises `SqlError` for a query that fails to parse or bind, or that would write or read files.
    """
    _check_format(format, output)
    connection, spatial_extension = _open(store)
    try:
        statement = read_only_statement(connection, query)
        relation = _relation(connection, statement)
        types = [str(column_type) for column_type in relation.types]
        result = SqlResult(
            columns=list(relation.columns),
            types=types,
            format=format,
            output=Path(output) if isinstance(output, (str, Path)) else None,
            spatial_extension=spatial_extension,
        )

        reader = _reader(relation, types)
        batches = _tally(_batches(reader), result, limit_display)
        if format == "table":
            for _ in batches:
                pass
        else:
            _write_output(batches, reader.schema, output, format)
    finally:
        connection.close()
    logger.info("query returned %d rows", result.row_count)
    return result


# Checking statements ------------------------------------------------------------------------------


def _parse(connection: duckdb.DuckDBPyConnection, query: str) -> list:
    try:
        return connection.extract_statements(query)
    except duckdb.Error as error:
        raise SqlError(str(error)) from None


def _statement_type(statement) -> str:
    """Return DuckDB's name of the statement type, or UNKNOWN where the Python client has none.

    The duckdb 2.0.1 client raises ValueError on the type of UPDATE EXTENSIONS, for one.
    """
    try:
        return statement.type.name
    except ValueError:
        return "UNKNOWN"


def _explains_select(connection: duckdb.DuckDBPyConnection, query: str) -> bool:
    """Return whether an EXPLAIN statement explains one SELECT (EXPLAIN ANALYZE runs it)."""
    prefix = _EXPLAIN_PREFIX.match(query)
    if prefix is None:
        return False
    inner = _parse(connection, query[prefix.end():])
    return len(inner) == 1 and _statement_type(inner[0]) == "SELECT"


def _is_allowed_pragma(query: str) -> bool:
    pragma = _PRAGMA_NAME.match(query)
    return pragma is not None and pragma.group(2) is None and pragma.group(1).lower() in ALLOWED_PRAGMAS


def _statement_kind(statement) -> str:
    """Name a statement for a message: its first keyword where DuckDB's type is too broad (INSTALL is LOAD)."""
    kind = _statement_type(statement).replace("_", " ")
    pragma = _PRAGMA_NAME.match(statement.query)
    if kind == "PRAGMA" and pragma is not None:
        return f"PRAGMA {pragma.group(1).lower()}"
    if kind in ("LOAD", "PRAGMA", "SET", "CALL", "UNKNOWN"):
        first = _FIRST_WORD.match(statement.query)
        if first is not None:
            return first.group(1).upper()
    return kind


def _rejection(kind: str) -> str:
    return (
        f"{kind} statements are not allowed: the store is read-only through `rsflow sql`, which reads "
        "only the store's tables. Run one SELECT (WITH, DESCRIBE, SHOW and SUMMARIZE included), "
        f"EXPLAIN [ANALYZE] SELECT, or PRAGMA {', '.join(sorted(ALLOWED_PRAGMAS))}."
    )


def _relation(connection: duckdb.DuckDBPyConnection, statement: str) -> duckdb.DuckDBPyRelation:
    try:
        relation = connection.sql(statement)
    except duckdb.Error as error:
        raise SqlError(_explain_error(error)) from None
    if relation is None:
        raise SqlError(f"The statement returned no result: {statement.strip()[:80]}")
    return relation


def _reader(relation: duckdb.DuckDBPyRelation, types: list[str]) -> pa.RecordBatchReader:
    try:
        return relation.to_arrow_reader(_batch_rows(types))
    except duckdb.Error as error:
        raise SqlError(_explain_error(error)) from None


def _explain_error(error: BaseException) -> str:
    if isinstance(error, duckdb.PermissionException):
        return f"{error}. `rsflow sql` reads only the store's tables, not other files or URLs."
    return str(error)


def _check_format(format: str, output: str | Path | BinaryIO | None) -> None:
    if format not in FORMATS:
        raise ValueError(f"Unknown output format {format!r}; choose one of {', '.join(FORMATS)}.")
    if format == "table" and output is not None:
        raise ValueError("The table format is for display only; choose csv, json or parquet to write a file.")
    if format != "table" and output is None:
        raise ValueError(f"The {format} format needs an output: a file path or an open binary file.")
    if isinstance(output, (str, Path)) and not Path(output).parent.is_dir():
        raise FileNotFoundError(f"{Path(output).parent}: no such folder for the output file; create it first.")


# Streaming rows -----------------------------------------------------------------------------------


def _batch_rows(types: list[str]) -> int:
    """Return rows per record batch so that a batch takes about `BATCH_BYTES`.

    Arrays count their elements at 8 bytes each, and every other column 64 bytes: an estimate
    that only has to keep a batch of large priors from taking gigabytes.
    """
    row_bytes = 0
    for column_type in types:
        elements = math.prod(int(size) for size in _ARRAY_SIZE.findall(column_type))
        row_bytes += 8 * elements if elements > 1 else 64
    return max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // max(row_bytes, 1)))


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """Yield the reader's batches, turning an error that DuckDB raises while running into `SqlError`."""
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (duckdb.Error, OSError) as error:
            # Through the Arrow reader, DuckDB's runtime errors (a failed cast, say) arrive as OSError.
            raise SqlError(_explain_error(error)) from None
        yield batch


def _tally(batches: Iterable[pa.RecordBatch], result: SqlResult, limit_display: int) -> Iterator[pa.RecordBatch]:
    """Pass batches through, counting rows into `result` and keeping its first `limit_display` rows."""
    for batch in batches:
        missing = limit_display - len(result.rows)
        if missing > 0:
            # Column by column, because a query may return two columns of the same name.
            first_columns = [column.to_pylist() for column in batch.slice(0, missing).columns]
            result.rows.extend(zip(*first_columns))
        result.row_count += batch.num_rows
        yield batch


def _write_output(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, output: str | Path | BinaryIO, format: str
) -> None:
    writer = {"csv": _write_csv, "json": _write_json_lines, "parquet": _write_parquet}[format]
    if not isinstance(output, (str, Path)):
        writer(batches, schema, output)
        return

    # A partial file renamed at the end keeps an interrupted query from leaving a truncated output.
    path = Path(output)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as sink:
            writer(batches, schema, sink)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _write_parquet(batches: Iterable[pa.RecordBatch], schema: pa.Schema, sink: BinaryIO) -> None:
    with pq.ParquetWriter(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _write_json_lines(batches: Iterable[pa.RecordBatch], schema: pa.Schema, sink: BinaryIO) -> None:
    for batch in batches:
        columns = [_nan_to_null(column) for column in batch.columns]
        rows = pa.RecordBatch.from_arrays(columns, names=batch.schema.names).to_pylist()
        lines = "".join(json.dumps(row, default=_json_value, ensure_ascii=False) + "\n" for row in rows)
        sink.write(lines.encode("utf-8"))


def _write_csv(batches: Iterable[pa.RecordBatch], schema: pa.Schema, sink: BinaryIO) -> None:
    writer = None
    for batch in batches:
        text_batch = pa.RecordBatch.from_arrays([_csv_column(column) for column in batch.columns], names=schema.names)
        if writer is None:
            writer = pa_csv.CSVWriter(sink, text_batch.schema)
        writer.write_batch(text_batch)
    if writer is None:
        # No rows: write the header alone, so that the file still names the columns.
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(schema.names)
        sink.write(text.getvalue().encode("utf-8"))
        return
    writer.close()


# Converting values --------------------------------------------------------------------------------


def _csv_column(column: pa.Array) -> pa.Array:
    """Return `column` in a type that the Arrow CSV writer takes: flat values as they are, others as text."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    flat = column.type
    if (
        pa.types.is_integer(flat)
        or pa.types.is_floating(flat)
        or pa.types.is_boolean(flat)
        or pa.types.is_string(flat)
        or pa.types.is_large_string(flat)
        or pa.types.is_decimal(flat)
        or pa.types.is_temporal(flat) and not pa.types.is_interval(flat)
        or pa.types.is_null(flat)
    ):
        return column
    if pa.types.is_binary(flat) or pa.types.is_large_binary(flat) or pa.types.is_fixed_size_binary(flat):
        return pa.array([None if value is None else value.hex() for value in column.to_pylist()], pa.string())
    values = _nan_to_null(column).to_pylist()
    return pa.array(
        [None if value is None else json.dumps(value, default=_json_value) for value in values], pa.string()
    )


def _nan_to_null(column: pa.Array) -> pa.Array:
    """Replace NaN by null in float columns and in lists and arrays of floats, since JSON has no NaN."""
    kind = column.type
    if pa.types.is_floating(kind):
        if not pc.any(pc.is_nan(column)).as_py():
            return column
        return pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
        values = column.values.slice(column.offset * size, len(column) * size)
        return pa.FixedSizeListArray.from_arrays(_nan_to_null(values), type=kind, mask=column.is_null())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        array_type = pa.ListArray if pa.types.is_list(kind) else pa.LargeListArray
        return array_type.from_arrays(column.offsets, _nan_to_null(column.values), type=kind, mask=column.is_null())
    # NOTE: a NaN inside a struct or map column is written as the bare token NaN, which Python's
    # json module reads but strict JSON parsers reject.
    return column


def _json_value(value: object) -> object:
    """Return a JSON-ready form of a value that `json` cannot write by itself."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)
