"""Pairing texts with chips by place: the pairs the flow learns from.

A text pairs with a chip when
- it names the chip's image (`image_ref`, how = "image_ref"),
- its geometry intersects the chip's footprint (how = "intersects"), found with a shapely STRtree
  over the footprints so that pairing scales past a brute-force loop, or
- it is a point and lies in the same H3 cell as the chip's centre (how = "cell").
A pair found by several rules is kept once, under the first rule of that list.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
import pyarrow as pa
import shapely

from rsflow.store.db import Store
from rsflow.store.schema import PAIRS_SCHEMA

logger = logging.getLogger(__name__)

HOW_ORDER = ("image_ref", "intersects", "cell")


@dataclass
class PairingReport:
    """Pairs by rule, and what found no partner."""

    pairs: dict[str, int] = field(default_factory=dict)
    chips_without_text: int = 0
    texts_without_chip: int = 0
    unknown_image_refs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "pairs_total": sum(self.pairs.values()),
            "chips_without_text": self.chips_without_text,
            "texts_without_chip": self.texts_without_chip,
            "unknown_image_refs": self.unknown_image_refs,
        }


def pair_store(store: Store) -> PairingReport:
    """Recompute the `pairs` table of `store` from its images and texts tables."""
    if not store.has_table("images") or not store.has_table("texts"):
        raise ValueError(f"{store.path}: pairing needs both an images and a texts table; ingest both first.")
    images = store.table("images").to_lance().to_table(columns=["chip_id", "source", "footprint", "cell"])
    texts = store.table("texts").to_lance().to_table(columns=["text_id", "geometry", "cell", "image_ref"])

    chip_ids = np.asarray(images["chip_id"].to_pylist(), dtype=object)
    text_ids = np.asarray(texts["text_id"].to_pylist(), dtype=object)
    found: list[tuple[np.ndarray, np.ndarray, str]] = []

    ref_texts, ref_chips, unknown = _pairs_by_image_ref(images, texts)
    found.append((ref_texts, ref_chips, "image_ref"))
    geometries = shapely.from_wkb(np.asarray(texts["geometry"].to_pylist(), dtype=object))
    found.append((*_pairs_by_intersection(images, geometries), "intersects"))
    found.append((*_pairs_by_cell(images, texts, geometries), "cell"))

    table, counts = _merge(found, text_ids, chip_ids)
    store.replace_pairs(table)

    report = PairingReport(pairs=counts, unknown_image_refs=unknown)
    report.chips_without_text = len(chip_ids) - len(set(table["chip_id"].to_pylist()))
    report.texts_without_chip = len(text_ids) - len(set(table["text_id"].to_pylist()))
    logger.info("paired %d texts with %d chips: %s", len(text_ids), len(chip_ids), counts)
    return report


def _pairs_by_image_ref(images: pa.Table, texts: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Match each `image_ref` to chips whose source path equals it or ends with it."""
    chips_by_source: dict[str, list[int]] = defaultdict(list)
    sources_by_name: dict[str, set[str]] = defaultdict(set)
    for row, source in enumerate(images["source"].to_pylist()):
        chips_by_source[source].append(row)
        sources_by_name[PurePath(source).name].add(source)

    text_rows, chip_rows, unknown = [], [], []
    for row, ref in enumerate(texts["image_ref"].to_pylist()):
        if not ref:
            continue
        sources = _sources_for(ref, chips_by_source, sources_by_name)
        if not sources:
            unknown.append(ref)
            continue
        for source in sources:
            chips = chips_by_source[source]
            text_rows.extend([row] * len(chips))
            chip_rows.extend(chips)
    return np.asarray(text_rows, dtype=np.int64), np.asarray(chip_rows, dtype=np.int64), sorted(set(unknown))


def _sources_for(ref: str, chips_by_source: dict, sources_by_name: dict) -> list[str]:
    if ref in chips_by_source:
        return [ref]
    # A reference written as a relative path or a bare file name matches the stored paths that
    # end with it, component by component ("images/0.png" matches ".../rsvqa/images/0.png").
    parts = PurePath(ref).parts
    candidates = sources_by_name.get(PurePath(ref).name, set())
    return sorted(s for s in candidates if PurePath(s).parts[-len(parts):] == parts)


def _pairs_by_intersection(images: pa.Table, geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    footprints = shapely.from_wkb(np.asarray(images["footprint"].to_pylist(), dtype=object))
    has_footprint = np.flatnonzero(~shapely.is_missing(footprints))
    has_geometry = np.flatnonzero(~shapely.is_missing(geometries))
    if not len(has_footprint) or not len(has_geometry):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    tree = shapely.STRtree(footprints[has_footprint])
    geometry_index, footprint_index = tree.query(geometries[has_geometry], predicate="intersects")
    return has_geometry[geometry_index], has_footprint[footprint_index]


def _pairs_by_cell(images: pa.Table, texts: pa.Table, geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    is_point = shapely.get_type_id(geometries) == shapely.GeometryType.POINT
    # Python ints, not numpy: a float64 array (what nulls would force) cannot hold H3 cells exactly.
    text_cells = texts["cell"].to_pylist()

    chips_by_cell: dict[int, list[int]] = defaultdict(list)
    for row, cell in enumerate(images["cell"].to_pylist()):
        if cell is not None:
            chips_by_cell[cell].append(row)
    text_rows, chip_rows = [], []
    for row in np.flatnonzero(is_point).tolist():
        chips = chips_by_cell.get(text_cells[row], []) if text_cells[row] is not None else []
        text_rows.extend([row] * len(chips))
        chip_rows.extend(chips)
    return np.asarray(text_rows, dtype=np.int64), np.asarray(chip_rows, dtype=np.int64)


def _merge(found, text_ids: np.ndarray, chip_ids: np.ndarray) -> tuple[pa.Table, dict[str, int]]:
    """Concatenate the pairs of every rule and keep each (text, chip) once, under its first rule."""
    text_rows = np.concatenate([t for t, _, _ in found])
    chip_rows = np.concatenate([c for _, c, _ in found])
    rules = np.concatenate([np.full(len(t), HOW_ORDER.index(how)) for t, _, how in found])

    keys = text_rows * max(len(chip_ids), 1) + chip_rows
    _, first = np.unique(keys, return_index=True)
    first.sort()
    table = pa.table(
        {
            "chip_id": chip_ids[chip_rows[first]].tolist(),
            "text_id": text_ids[text_rows[first]].tolist(),
            "how": [HOW_ORDER[r] for r in rules[first].tolist()],
        },
        schema=PAIRS_SCHEMA,
    )
    counts = {how: int(np.sum(rules[first] == i)) for i, how in enumerate(HOW_ORDER)}
    return table, counts
