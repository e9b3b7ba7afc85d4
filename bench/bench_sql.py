"""Benchmark `rsflow sql` (DuckDB over the store's Lance data) against DuckDB over a Parquet copy.

Run from the repository root:

    python -m bench.bench_sql

It generates an images table of synthetic chips (by default 1,000,000 rows with 64-float
embeddings, points spread over one degree of longitude and latitude, H3 resolution 7 cells,
footprints alternating between WKB points and 0.01-degree polygons) in the store schema. The same
batches go to a new store's Lance table and to one Parquet file. Two queries then run on both:
a group-by over cells and a cosine top-10 against one chip's embedding. The Lance data is queried
twice: through `run_sql`, the whole user-facing path that opens a connection for each query, and on
one connection from `connect`, reused, which leaves the scan and the query. The Parquet side runs on
a plain DuckDB connection with a view over `read_parquet`. DuckDB reads a Parquet fixed-size list as
a variable-size list, so the view casts `embedding` back to `FLOAT[dim]` for
`array_cosine_similarity`. Each query runs once to warm the page cache, then `--repeats` times,
and the table reports the median and the minimum in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import h3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from rsflow.store.db import Store
from rsflow.store.schema import images_schema
from rsflow.store.sql import connect, run_sql

CELLS_BY_COUNT = (
    "SELECT cell, count(*) AS chips, avg(lon) AS lon, avg(lat) AS lat "
    "FROM images GROUP BY cell ORDER BY chips DESC, cell LIMIT 10"
)
COSINE_TOP_10 = (
    "SELECT chip_id, array_cosine_similarity(embedding, "
    "(SELECT embedding FROM images WHERE chip_id = '{chip}')) AS similarity "
    "FROM images ORDER BY similarity DESC LIMIT 10"
)


def generate_batches(rows: int, dim: int, batch_rows: int, seed: int = 0) -> Iterator[pa.RecordBatch]:
    """Yield synthetic chips in the images schema, `batch_rows` at a time."""
    schema = images_schema(dim)
    generator = np.random.default_rng(seed)
    for start in range(0, rows, batch_rows):
        count = min(batch_rows, rows - start)
        lon = generator.uniform(14.0, 15.0, count)
        lat = generator.uniform(45.5, 46.5, count)
        cells = [h3.str_to_int(h3.latlng_to_cell(y, x, 7)) for y, x in zip(lat.tolist(), lon.tolist())]

        # Every other footprint a point, the others a 0.01-degree square around the centre.
        shapes = shapely.box(lon - 0.005, lat - 0.005, lon + 0.005, lat + 0.005)
        shapes[::2] = shapely.points(lon[::2], lat[::2])
        embedding = generator.standard_normal((count, dim), dtype=np.float32)

        window_type = schema.field("window").type
        columns = {
            "chip_id": pa.array([f"chip-{index:08d}" for index in range(start, start + count)]),
            "source": pa.array(["synthetic.tif"] * count),
            "source_sha256": pa.array(["0" * 64] * count),
            "window": pa.array([{"col": 0, "row": 0, "width": 224, "height": 224}] * count, window_type),
            "crs": pa.array(["EPSG:4326"] * count),
            "bands": pa.array([[1, 2, 3]] * count, schema.field("bands").type),
            "dtype": pa.array(["uint8"] * count),
            "valid_fraction": pa.array(np.ones(count, np.float32)),
            "footprint": pa.array(shapely.to_wkb(shapes).tolist(), pa.binary()),
            "lon": pa.array(lon),
            "lat": pa.array(lat),
            "cell": pa.array(cells, pa.int64()),
            "acquired": pa.nulls(count, schema.field("acquired").type),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.ravel()), dim),
        }
        yield pa.RecordBatch.from_pydict(columns, schema=schema)


def build(folder: Path, rows: int, dim: int, batch_rows: int) -> tuple[Store, Path, float]:
    """Write the same batches to a new store and to `images.parquet`; return both and the seconds taken."""
    started = time.perf_counter()
    store = Store.open_or_create(folder / "store")
    parquet_path = folder / "images.parquet"
    schema = images_schema(dim)

    with pq.ParquetWriter(parquet_path, schema) as parquet:

        def both() -> Iterator[pa.RecordBatch]:
            for batch in generate_batches(rows, dim, batch_rows):
                parquet.write_batch(batch)
                yield batch

        store.db.create_table("images", data=pa.RecordBatchReader.from_batches(schema, both()), schema=schema)
    return store, parquet_path, time.perf_counter() - started


def time_runs(run, repeats: int) -> tuple[list[float], object]:
    """Run once to warm up, then `repeats` times; return the timings in milliseconds and the last result."""
    result = run()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        timings.append((time.perf_counter() - started) * 1000)
    return timings, result


def folder_megabytes(path: Path) -> float:
    files = [path] if path.is_file() else [file for file in path.rglob("*") if file.is_file()]
    return sum(file.stat().st_size for file in files) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Chips to generate.")
    parser.add_argument("--dim", type=int, default=64, help="Embedding size in float32 values.")
    parser.add_argument("--batch-rows", type=int, default=100_000, help="Chips per generated batch.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each query after one warm-up run.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sql-") as temporary:
        folder = Path(temporary)
        store, parquet_path, seconds = build(folder, args.rows, args.dim, args.batch_rows)
        print(f"{args.rows:,} chips, {args.dim}-float embeddings, written in {seconds:.1f} s: "
              f"Lance {folder_megabytes(store.path):.0f} MB, Parquet {folder_megabytes(parquet_path):.0f} MB\n")

        parquet = duckdb.connect()
        parquet.execute(
            f"CREATE VIEW images AS SELECT * REPLACE (embedding::FLOAT[{args.dim}] AS embedding) "
            f"FROM read_parquet('{parquet_path}')"
        )
        lance = connect(store)
        chip = f"chip-{args.rows // 2:08d}"
        queries = {
            "group by cell, top 10 cells": CELLS_BY_COUNT,
            "cosine top-10 of one chip": COSINE_TOP_10.format(chip=chip),
        }

        print("| median / min ms | Lance, `run_sql` | Lance, one connection | Parquet | `run_sql` / Parquet |")
        print("| --- | --- | --- | --- | --- |")
        for name, query in queries.items():
            runs = {
                "run_sql": lambda: run_sql(store, query).rows,
                "lance": lambda: lance.sql(query).fetchall(),
                "parquet": lambda: parquet.sql(query).fetchall(),
            }
            timings = {}
            results = {}
            for side, run in runs.items():
                timings[side], results[side] = time_runs(run, args.repeats)
            if len({tuple(row[0] for row in rows) for rows in results.values()}) != 1:
                raise RuntimeError(f"{name}: Lance and Parquet returned different rows; the benchmark is invalid.")

            cells = " | ".join(f"{statistics.median(ms):.0f} / {min(ms):.0f}" for ms in timings.values())
            ratio = statistics.median(timings["run_sql"]) / statistics.median(timings["parquet"])
            print(f"| {name} | {cells} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
