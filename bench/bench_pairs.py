"""Benchmark pairing: `pair_store` (an STRtree and H3 cells) against a brute-force intersection.

Run from the repository root:

    python -m bench.bench_pairs
    python -m bench.bench_pairs --texts 20000 --chips 20000 --sample 100 --rounds 3

The script writes a new store in a temporary folder, with generated places over a box around the
Netherlands (3.36 to 7.23 E, 50.75 to 53.55 N):
- chips: square footprints of `--chip-size` degrees (0.01 by default, about 1.1 km north to
  south) at uniform random centres, with the H3 cell of the centre at resolution 7 (the store's
  default) and filler values in the other columns;
- texts: 70 % points and 30 % small polygons (half of them axis-aligned rectangles, half 8-sided
  discs), between 0.002 and 0.02 degrees across, at uniform random places. A text's cell is the
  cell of its centroid, as text ingest computes it. Priors are zeros of 1 x 2 floats, because
  pairing never reads them.

Two sides then alternate for `--rounds` rounds, and the table gives the median of each:
- `pair_store`: the whole pairing of every text, as `rsflow ingest-text` runs it. This covers
  reading both tables from Lance, parsing the WKB, the STRtree query, the cell lookup, the merge
  and writing the pairs table.
- brute force: for each text of a random sample, shapely's `intersects` of its geometry against
  every chip footprint, in one vectorized call over all chips and with no index. A point text's
  cell is also compared with every chip's cell. The footprints are parsed once before the loop,
  and that setup is timed apart and added once to the extrapolation to all texts.

After the first round the script checks that the brute-force pairs of the sample equal the rows
of the pairs table for those texts, each with the rule that found it. An intersection comes
before a shared cell, as `pair_store` keeps them. The script exits with status 1 when they differ.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from rsflow.store.db import Store
from rsflow.store.manifest import DEFAULT_H3_RESOLUTION
from rsflow.store.pairs import pair_store
from rsflow.store.schema import images_schema, texts_schema

# A box around the Netherlands in EPSG:4326: west, south, east, north.
AREA = (3.36, 50.75, 7.23, 53.55)
POINT_SHARE = 0.7
POLYGON_SIZE = (0.002, 0.02)
PRIOR_SLOTS = 1
PRIOR_DIM = 2
EMBEDDING_DIM = 2
WINDOW = {"col": 0, "row": 0, "width": 224, "height": 224}


def random_places(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    west, south, east, north = AREA
    return rng.uniform(west, east, count), rng.uniform(south, north, count)


def cells_of(lons: np.ndarray, lats: np.ndarray) -> list[int]:
    places = zip(lons.tolist(), lats.tolist())
    return [h3.str_to_int(h3.latlng_to_cell(lat, lon, DEFAULT_H3_RESOLUTION)) for lon, lat in places]


def conform(columns: dict[str, pa.Array], schema: pa.Schema, rows: int) -> pa.Table:
    """Build a table of `schema` from `columns`, with nulls in the nullable columns not given."""
    arrays = [columns.get(field.name, pa.nulls(rows, field.type)) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def chip_table(count: int, chip_size: float, rng: np.random.Generator) -> pa.Table:
    """Generate chips with square footprints of `chip_size` degrees and the cell of each centre."""
    schema = images_schema(EMBEDDING_DIM)
    lons, lats = random_places(count, rng)
    half = chip_size / 2
    footprints = shapely.box(lons - half, lats - half, lons + half, lats + half)
    columns = {
        "chip_id": pa.array([f"chip-{i:07d}" for i in range(count)]),
        "source": pa.array(["generated.tif"] * count),
        "source_sha256": pa.array(["0" * 64] * count),
        "window": pa.array([WINDOW] * count, schema.field("window").type),
        "crs": pa.array(["EPSG:4326"] * count),
        "footprint": pa.array(shapely.to_wkb(footprints).tolist(), pa.binary()),
        "lon": pa.array(lons),
        "lat": pa.array(lats),
        "cell": pa.array(cells_of(lons, lats), pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(count * EMBEDDING_DIM, np.float32)), EMBEDDING_DIM
        ),
    }
    return conform(columns, schema, count)


def text_geometries(count: int, rng: np.random.Generator) -> np.ndarray:
    """Generate points, rectangles and 8-sided discs. The polygons are `POLYGON_SIZE` degrees across."""
    lons, lats = random_places(count, rng)
    geometries = shapely.points(lons, lats)
    polygon = rng.random(count) >= POINT_SHARE
    rectangle = polygon & (rng.random(count) < 0.5)
    disc = polygon & ~rectangle

    width = rng.uniform(*POLYGON_SIZE, count)
    height = rng.uniform(*POLYGON_SIZE, count)
    geometries[rectangle] = shapely.box(
        lons[rectangle] - width[rectangle] / 2, lats[rectangle] - height[rectangle] / 2,
        lons[rectangle] + width[rectangle] / 2, lats[rectangle] + height[rectangle] / 2,
    )
    # quad_segs=2 gives 8 segments around the circle.
    geometries[disc] = shapely.buffer(geometries[disc], width[disc] / 2, quad_segs=2)
    return geometries


def text_table(count: int, rng: np.random.Generator) -> pa.Table:
    """Generate texts with point and polygon geometries and the cell of each centroid."""
    schema = texts_schema(PRIOR_SLOTS, PRIOR_DIM)
    geometries = text_geometries(count, rng)
    centroids = shapely.centroid(geometries)
    lons, lats = shapely.get_x(centroids), shapely.get_y(centroids)
    prior_size = PRIOR_SLOTS * PRIOR_DIM
    columns = {
        "text_id": pa.array([f"text-{i:07d}" for i in range(count)]),
        "text": pa.array([f"generated text {i}" for i in range(count)]),
        "kind": pa.array(["map feature"] * count),
        "source": pa.array(["generated.jsonl"] * count),
        "geometry": pa.array(shapely.to_wkb(geometries).tolist(), pa.binary()),
        "lon": pa.array(lons),
        "lat": pa.array(lats),
        "cell": pa.array(cells_of(lons, lats), pa.int64()),
        "prior": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(count * prior_size, np.float32)), prior_size),
    }
    return conform(columns, schema, count)


def write_store(folder: Path, chips: int, texts: int, chip_size: float) -> Store:
    rng = np.random.default_rng(0)
    store = Store.open_or_create(folder)
    store.db.create_table("images", data=chip_table(chips, chip_size, rng), schema=images_schema(EMBEDDING_DIM))
    store.db.create_table("texts", data=text_table(texts, rng), schema=texts_schema(PRIOR_SLOTS, PRIOR_DIM))
    return store


@dataclass
class BruteForce:
    """Every chip footprint and cell, parsed once, for the per-text brute-force loop."""

    chip_ids: np.ndarray
    footprints: np.ndarray
    cells: np.ndarray

    @classmethod
    def load(cls, store: Store) -> "BruteForce":
        images = store.table("images").to_lance().to_table(columns=["chip_id", "footprint", "cell"])
        return cls(
            chip_ids=np.asarray(images["chip_id"].to_pylist(), dtype=object),
            footprints=shapely.from_wkb(np.asarray(images["footprint"].to_pylist(), dtype=object)),
            # Every generated chip has a cell, so the column has no null and converts to int64.
            cells=images["cell"].to_numpy(),
        )

    def pairs(self, sample: pa.Table) -> set[tuple[str, str, str]]:
        """Return (text_id, chip_id, how) of each sampled text, intersections first, then shared cells."""
        found: set[tuple[str, str, str]] = set()
        rows = zip(sample["text_id"].to_pylist(), sample["geometry"].to_pylist(), sample["cell"].to_pylist())
        for text_id, wkb, cell in rows:
            geometry = shapely.from_wkb(wkb)
            hits = np.flatnonzero(shapely.intersects(geometry, self.footprints))
            found.update((text_id, chip, "intersects") for chip in self.chip_ids[hits].tolist())
            if shapely.get_type_id(geometry) == shapely.GeometryType.POINT:
                same_cell = np.setdiff1d(np.flatnonzero(self.cells == cell), hits)
                found.update((text_id, chip, "cell") for chip in self.chip_ids[same_cell].tolist())
        return found


def stored_pairs(store: Store, text_ids: list[str]) -> set[tuple[str, str, str]]:
    pairs = store.table("pairs").to_lance().to_table(filter=pc.field("text_id").isin(text_ids))
    return set(zip(pairs["text_id"].to_pylist(), pairs["chip_id"].to_pylist(), pairs["how"].to_pylist()))


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def check_agreement(store: Store, sample: pa.Table, brute: set[tuple[str, str, str]]) -> None:
    """Exit with status 1 when the brute-force pairs of the sample differ from the pairs table."""
    stored = stored_pairs(store, sample["text_id"].to_pylist())
    if stored != brute:
        print(
            f"The pairs differ on the sample: {len(stored - brute)} only in the pairs table, "
            f"{len(brute - stored)} only from brute force, for example "
            f"{sorted(stored ^ brute)[:5]}. The benchmark is invalid.",
            file=sys.stderr,
        )
        sys.exit(1)
    by_how = {how: sum(1 for *_, h in brute if h == how) for how in ("intersects", "cell")}
    print(f"The {len(brute)} pairs of the {sample.num_rows} sampled texts agree with the pairs table: {by_how}.\n")


def print_table(arguments: argparse.Namespace, pairing: list[float], brute: list[float], setup: float) -> None:
    pairing_median = statistics.median(pairing)
    brute_median = statistics.median(brute)
    pairing_per_1k = 1000 * pairing_median / arguments.texts
    brute_per_1k = 1000 * brute_median / arguments.sample
    extrapolated = brute_per_1k * arguments.texts / 1000 + setup
    rows = [
        ("`pair_store` (STRtree, cells, reads and write)", arguments.texts, pairing_median, pairing_per_1k),
        ("brute force, sample (shapely, no index)", arguments.sample, brute_median, brute_per_1k),
        ("brute force, extrapolated to all texts", arguments.texts, extrapolated, brute_per_1k),
    ]
    print("| method | texts | chips | seconds | seconds per 1k texts | ratio to `pair_store` |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method, texts, seconds, per_1k in rows:
        ratio = per_1k / pairing_per_1k
        print(f"| {method} | {texts:,} | {arguments.chips:,} | {seconds:.2f} | {per_1k:.3f} | {ratio:.0f} |")
    print(
        f"\nMedians of {arguments.rounds} rounds. `pair_store` runs: {', '.join(f'{s:.2f}' for s in pairing)} s; "
        f"brute-force sample runs: {', '.join(f'{s:.2f}' for s in brute)} s; brute-force setup (reading and "
        f"parsing the footprints, counted once in the extrapolation): {setup:.2f} s."
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000, help="texts to generate and pair")
    parser.add_argument("--chips", type=int, default=100_000, help="chips to generate")
    parser.add_argument("--chip-size", type=float, default=0.01, help="side of a chip footprint, in degrees")
    parser.add_argument("--sample", type=int, default=200, help="texts paired by brute force in each round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of both sides")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    print(
        f"bench_pairs, {datetime.now(timezone.utc):%Y-%m-%d}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, shapely {shapely.__version__} (GEOS {shapely.geos_version_string}), "
        f"h3 {h3.__version__}\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as folder:
        path = Path(folder) / "store"
        write_seconds, store = timed(lambda: write_store(path, arguments.chips, arguments.texts, arguments.chip_size))
        print(f"Generated and wrote {arguments.chips:,} chips and {arguments.texts:,} texts in {write_seconds:.1f} s.")

        texts = store.table("texts").to_lance().to_table(columns=["text_id", "geometry", "cell"])
        rows = np.sort(np.random.default_rng(1).choice(texts.num_rows, arguments.sample, replace=False))
        sample = texts.take(pa.array(rows))
        setup_seconds, brute_force = timed(lambda: BruteForce.load(store))

        pairing_seconds, brute_seconds = [], []
        for round_index in range(arguments.rounds):
            seconds, report = timed(lambda: pair_store(store))
            pairing_seconds.append(seconds)
            seconds, brute = timed(lambda: brute_force.pairs(sample))
            brute_seconds.append(seconds)
            if round_index == 0:
                print(f"`pair_store` found {report.to_dict()['pairs_total']:,} pairs: {report.pairs}; "
                      f"{report.texts_without_chip:,} texts and {report.chips_without_text:,} chips have no partner.")
                check_agreement(store, sample, brute)
        print_table(arguments, pairing_seconds, brute_seconds, setup_seconds)


if __name__ == "__main__":
    main()
