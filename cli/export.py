"""`rsflow export`: the store's tables as GeoParquet files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsflow.cli.common import JsonOption, StoreOption, console, print_json, reported_errors, store_path

FORMATS = ("geoparquet",)
DEFAULT_TABLES = ("images", "texts")


def export(
    out: Annotated[
        Path,
        typer.Argument(help="Folder that receives <table>.parquet for each table, or a .parquet file for one table."),
    ],
    store: StoreOption = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="Output format; geoparquet is the only one.")
    ] = "geoparquet",
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table", "-t", help="Table to export; repeat for several. Default: images and texts, where the store has them."
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Write the store's tables as GeoParquet 1.1 files, for GeoPandas, QGIS and DuckDB.

    Geometries (image footprints, text geometries) are WKB in longitude/latitude (OGC:CRS84), with a
    per-row bounding-box column; embeddings and priors stay fixed-size float32 lists. Tables
    without geometry (pairs, sources) are written as plain Parquet.
    """
    from rsflow.store.db import Store, StoreError
    from rsflow.store.export import ExportError, export_geoparquet

    if format not in FORMATS:
        raise typer.BadParameter(f"{format!r} is not a supported format; use geoparquet.", param_hint="--format")

    with reported_errors((ExportError,)):
        opened = Store.open(store_path(store))
        # Without --table, the default tables that the store has; a named table must exist.
        tables = table or [name for name in DEFAULT_TABLES if opened.has_table(name)]
        if not tables:
            raise StoreError(f"{opened.path}: the store has no images or texts table yet; nothing to export.")
        paths = export_geoparquet(opened, out, tables)

    written = [{"table": name, "path": str(path), "rows": opened.count(name)} for name, path in zip(tables, paths)]
    if json_output:
        print_json(written)
        return
    for entry in written:
        console.print(f"{entry['table']}: {entry['rows']:,} rows written to {entry['path']}", highlight=False)
