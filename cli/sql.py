"""`rsflow sql`: one read-only DuckDB query over the store's tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rsflow.cli.common import StoreOption, console, reported_errors, stdout, store_path

# Output formats by file suffix, for --output without --format.
SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}
MAX_CELL_CHARS = 48


def sql(
    query: Annotated[str, typer.Argument(help="One SELECT statement, or - to read it from standard input.")],
    store: StoreOption = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="table, csv, json (JSON Lines: one object per row) or parquet. "
            "Default: from the --output suffix, else table.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write every row to. Default: standard output (not for parquet).",
                     show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows shown by the table format; the total is counted in full.")] = 20,
) -> None:
    """Run one read-only SQL query (DuckDB) over the store's tables.

    The tables are images, texts, pairs and sources, read in place from the store. Embeddings are
    FLOAT[D] arrays, so array_cosine_similarity(embedding, ...) ranks chips; footprints and
    geometries are WKB blobs (ST_AsText(ST_GeomFromWKB(footprint)) shows one). Statements that
    write, and functions that read other files or URLs, are rejected. Quote the column "window":
    it is a keyword in SQL.
    """
    from rsflow.store.db import Store
    from rsflow.store.sql import SqlError, run_sql

    if query == "-":
        query = sys.stdin.read()
    chosen = _output_format(format, output)
    if chosen == "parquet" and output is None:
        raise typer.BadParameter("Parquet is binary; name a file with --output.", param_hint="--format")
    if chosen == "table" and output is not None:
        raise typer.BadParameter(
            "the table format is for the terminal; choose csv, json or parquet.", param_hint="--format"
        )
    if limit < 0:
        raise typer.BadParameter(f"{limit} is negative; give a row count of 0 or more.", param_hint="--limit")

    sink = output
    if chosen != "table" and output is None:
        sys.stdout.flush()
        sink = sys.stdout.buffer
    with reported_errors((SqlError,)):
        result = run_sql(Store.open(store_path(store)), query, output=sink, format=chosen, limit_display=limit)

    if chosen == "table":
        _print_table(result)
    elif output is not None:
        console.print(f"{result.row_count:,} rows written to {output}", highlight=False)


def _output_format(format: str | None, output: Path | None) -> str:
    from rsflow.store.sql import FORMATS

    if format is None:
        return SUFFIX_FORMATS.get(output.suffix.lower(), "table") if output is not None else "table"
    if format not in FORMATS:
        raise typer.BadParameter(f"{format!r} is not one of {', '.join(FORMATS)}.", param_hint="--format")
    return format


def _print_table(result) -> None:
    from rich.table import Table
    from rich.text import Text

    # Text objects, so that brackets in names and values are shown and not read as rich markup.
    table = Table()
    for name in result.columns:
        table.add_column(Text(name))
    for row in result.rows:
        table.add_row(*(Text(_cell_text(value)) for value in row))
    stdout.print(table)
    shown_rows = len(result.rows)
    if shown_rows < result.row_count:
        console.print(
            f"{shown_rows:,} of {result.row_count:,} rows shown; use --limit or --output for more.", highlight=False
        )
    else:
        console.print(f"{result.row_count:,} rows", highlight=False)


def _cell_text(value: object) -> str:
    """Return a short text for one value: NULL, a hex prefix for WKB, the first elements of an array."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        text = value.hex()
        return text if len(text) <= MAX_CELL_CHARS else f"{text[:MAX_CELL_CHARS - 12]}… ({len(value)} B)"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and value and not isinstance(value[0], (list, dict)):
        first_items = ", ".join(_cell_text(item) for item in value[:4])
        return f"[{first_items}]" if len(value) <= 4 else f"[{first_items}, … {len(value)} values]"
    text = str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 1] + "…"
