"""Export the store's tables as GeoParquet 1.1 files, for GeoPandas, QGIS, DuckDB and GDAL.

GeoParquet (https://geoparquet.org/releases/v1.1.0/) is Parquet with a `geo` entry in the file
metadata that names the geometry columns, their encoding, geometry types and bounding box. rsflow
writes:
- the geometry column (`images.footprint`, `texts.geometry`) as WKB, as stored;
- no `crs` member, which GeoParquet reads as OGC:CRS84: longitude, latitude on WGS 84, the
  coordinates of the store (EPSG:4326 with x = longitude);
- a bounding-box covering column `<geometry>_bbox` (a struct of xmin, ymin, xmax, ymax), the
  GeoParquet 1.1 way to let a reader skip row groups outside an area;
- every other column unchanged, embeddings and priors as fixed-size lists of float32.

A table without a geometry column (`pairs`, `sources`) is written as plain Parquet.

GeoPandas reads the `geo` metadata from the Arrow schema that pyarrow stores in the file, so the
metadata must be complete before the first row is written. A first pass over the geometry column
alone (Lance reads only that column) computes the geometry types and bounding box. A second pass
writes the rows in batches with `pyarrow.parquet.ParquetWriter`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from rsflow.store.db import Store

logger = logging.getLogger(__name__)

GEOPARQUET_VERSION = "1.1.0"
GEOMETRY_COLUMNS = ("footprint", "geometry")
BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")

# Record batches and row groups are sized to hold about this many bytes of fixed-size columns.
BATCH_BYTES = 64 * 1024 * 1024
MAX_BATCH_ROWS = 65_536



class ExportError(ValueError):
    """An export request that cannot be written: no table named, or an output path that does not fit."""


# shapely's geometry type ids and the GeoParquet names of the types.
_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


def export_geoparquet(
    store: Store, out_dir_or_file: str | Path, tables: Iterable[str] = ("images", "texts")
) -> list[Path]:
    """Write each of `tables` as a GeoParquet 1.1 file and return the paths written.

    `out_dir_or_file` is a folder (created when missing) that receives `<table>.parquet` for each
    table, or a `.parquet` file path when exactly one table is exported. Raises `StoreError` when
    the store lacks one of the tables, and `ExportError` for an output path that does not fit, in
    both cases before anything is written.
    """
    names = list(tables)
    if not names:
        raise ExportError("No table to export: name at least one of the store's tables.")
    datasets = {name: store.table(name).to_lance() for name in names}
    paths = _output_paths(Path(out_dir_or_file), names)

    for name, path in zip(names, paths):
        _write_table(datasets[name], path, _table_metadata(store, name, datasets[name].version))
        logger.info("exported table %s (%d rows) to %s", name, datasets[name].count_rows(), path)
    return paths


def geometry_column(schema: pa.Schema) -> str | None:
    """Return the name of the table's WKB geometry column, or None for a table without one."""
    for name in GEOMETRY_COLUMNS:
        if name in schema.names and pa.types.is_binary(schema.field(name).type):
            return name
    return None


def _output_paths(out: Path, names: list[str]) -> list[Path]:
    if out.suffix.lower() == ".parquet":
        if len(names) != 1:
            raise ExportError(
                f"{out}: a file path takes one table, but {len(names)} were given ({', '.join(names)}); "
                "give a folder to export several."
            )
        if not out.parent.is_dir():
            raise FileNotFoundError(f"{out.parent}: no such folder for the export file; create it first.")
        return [out]
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; give a folder or a path ending in .parquet.")
    out.mkdir(parents=True, exist_ok=True)
    return [out / f"{name}.parquet" for name in names]


def _table_metadata(store: Store, name: str, version: int) -> dict:
    """Return the `rsflow` file metadata: which store, table and table version the rows come from."""
    return {"table": name, "table_version": version, "manifest": store.manifest.__dict__}


# Writing ------------------------------------------------------------------------------------------


def _write_table(dataset, path: Path, rsflow_metadata: dict) -> None:
    """Write one Lance dataset to `path`, through a hidden partial file renamed when complete."""
    geometry = geometry_column(dataset.schema)
    schema = dataset.schema
    metadata = {"rsflow": json.dumps(rsflow_metadata, default=str)}
    if geometry is not None:
        schema = schema.append(pa.field(f"{geometry}_bbox", _bbox_type()))
        metadata["geo"] = json.dumps(_geo_metadata(dataset, geometry))
    else:
        logger.info("%s: the table has no geometry column; writing plain Parquet", path.name)
    schema = schema.with_metadata({**(schema.metadata or {}), **metadata})

    partial = path.with_name(f".{path.name}.partial")
    batch_rows = _batch_rows(dataset.schema)
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for batch in _batches(dataset, batch_rows):
                if geometry is not None:
                    batch = batch.append_column(schema.field(f"{geometry}_bbox"), _bbox_column(batch[geometry]))
                writer.write_batch(batch, row_group_size=batch_rows)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _batches(dataset, rows: int) -> Iterator[pa.RecordBatch]:
    for batch in dataset.to_batches(batch_size=rows):
        if batch.num_rows:
            yield batch


def _batch_rows(schema: pa.Schema) -> int:
    """Return rows per batch so that the fixed-size list columns of a batch take about `BATCH_BYTES`."""
    row_bytes = 0
    for column in schema:
        elements = 1
        kind = column.type
        while pa.types.is_fixed_size_list(kind):
            elements *= kind.list_size
            kind = kind.value_type
        # A variable-size value (a text, a WKB polygon) counts as 64 bytes, a rough mean.
        row_bytes += elements * (kind.bit_width // 8 if pa.types.is_primitive(kind) else 64)
    return max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // max(row_bytes, 1)))


# GeoParquet metadata ------------------------------------------------------------------------------


def _geo_metadata(dataset, geometry: str) -> dict:
    """Return the `geo` metadata, scanning the geometry column for its types and bounding box."""
    types: set[str] = set()
    west = south = math.inf
    east = north = -math.inf
    for batch in dataset.to_batches(columns=[geometry], batch_size=MAX_BATCH_ROWS):
        shapes = _shapes(batch[geometry])
        types |= _geometry_types(shapes)
        bounds = shapely.bounds(shapes)
        if len(bounds) and not np.isnan(bounds).all():
            west = min(west, float(np.nanmin(bounds[:, 0])))
            south = min(south, float(np.nanmin(bounds[:, 1])))
            east = max(east, float(np.nanmax(bounds[:, 2])))
            north = max(north, float(np.nanmax(bounds[:, 3])))

    column: dict = {"encoding": "WKB", "geometry_types": sorted(types)}
    if west <= east:
        column["bbox"] = [west, south, east, north]
    column["covering"] = {"bbox": {name: [f"{geometry}_bbox", name] for name in BBOX_FIELDS}}
    return {"version": GEOPARQUET_VERSION, "primary_column": geometry, "columns": {geometry: column}}


def _shapes(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Decode a WKB column into shapely geometries, None where the value is null."""
    return shapely.from_wkb(np.asarray(column.to_pylist(), dtype=object))


def _geometry_types(shapes: np.ndarray) -> set[str]:
    """Return the GeoParquet type names of `shapes`, with a " Z" suffix for 3D geometries."""
    present = shapes[~shapely.is_missing(shapes)]
    if not len(present):
        return set()
    # One code per (type, 3D) combination, so that only the distinct ones reach Python.
    codes = np.unique(shapely.get_type_id(present) * 2 + shapely.has_z(present))
    return {_TYPE_NAMES[int(code) // 2] + (" Z" if code % 2 else "") for code in codes}


def _bbox_type() -> pa.DataType:
    return pa.struct([pa.field(name, pa.float64()) for name in BBOX_FIELDS])


def _bbox_column(column: pa.Array) -> pa.StructArray:
    """Return each row's bounding box: null for a null geometry, NaN values for an empty one.

    GeoParquet wants a box in a row exactly when the row has a geometry, and an empty one has no bounds.
    """
    shapes = _shapes(column)
    bounds = shapely.bounds(shapes)
    return pa.StructArray.from_arrays(
        [pa.array(bounds[:, index], pa.float64()) for index in range(4)],
        fields=list(_bbox_type()),
        mask=pa.array(shapely.is_missing(shapes)),
    )
