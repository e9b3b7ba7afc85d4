"""A summary of a store: its manifest, row counts, cells, bounds and size on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import shapely

from rsflow.store.db import TABLES, Store


def store_summary(store: Store) -> dict:
    """Return the manifest, row counts, distinct cells, lon/lat bounds and size of `store`."""
    summary: dict = {
        "store": str(store.path.resolve()),
        "manifest": store.manifest.__dict__.copy(),
        "rows": {name: store.count(name) for name in TABLES},
        "versions": {name: store.version(name) for name in TABLES},
        "distinct_cells": 0,
        "chips_without_place": 0,
        "bounds": None,
        "size_bytes": _folder_size(store.path),
    }
    if store.has_table("pairs"):
        summary["pairing"] = _pairing(store)
    if not store.has_table("images"):
        return summary

    dataset = store.table("images").to_lance()
    places = dataset.to_table(columns=["cell", "footprint"])
    cells = places["cell"]
    summary["distinct_cells"] = int(pc.count_distinct(cells).as_py())
    summary["chips_without_place"] = int(cells.null_count)
    footprints = shapely.from_wkb(np.asarray(places["footprint"].drop_null().to_pylist(), dtype=object))
    if len(footprints):
        west, south, east, north = shapely.total_bounds(footprints)
        summary["bounds"] = {"west": west, "south": south, "east": east, "north": north}
    return summary


def _pairing(store: Store) -> dict:
    pairs = store.table("pairs").to_lance().to_table(columns=["chip_id", "text_id", "how"])
    by_rule = pairs.group_by("how").aggregate([("how", "count")])
    counts = {"image_ref": 0, "intersects": 0, "cell": 0}
    counts.update(dict(zip(by_rule["how"].to_pylist(), by_rule["how_count"].to_pylist())))
    paired_chips = pc.count_distinct(pairs["chip_id"]).as_py()
    paired_texts = pc.count_distinct(pairs["text_id"]).as_py()
    return {
        "pairs": counts,
        "pairs_total": pairs.num_rows,
        "chips_without_text": store.count("images") - paired_chips,
        "texts_without_chip": store.count("texts") - paired_texts,
    }


def _folder_size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
