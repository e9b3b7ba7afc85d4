"""Pairing texts with chips, checked against an independent brute-force computation."""

from __future__ import annotations

from pathlib import PurePath

import h3
import pytest
import shapely

from rsflow.store.db import Store
from rsflow.store.pairs import pair_store


def rows(store: Store, name: str, columns: list[str]) -> list[dict]:
    return store.table(name).to_lance().to_table(columns=columns).to_pylist()


def brute_force_pairs(store: Store) -> dict[tuple[str, str], str]:
    """Pairs by the three rules, each computed directly, pair by pair."""
    chips = rows(store, "images", ["chip_id", "source", "footprint", "lon", "lat"])
    texts = rows(store, "texts", ["text_id", "geometry", "image_ref", "lon", "lat"])
    resolution = store.manifest.h3_resolution
    expected: dict[tuple[str, str], str] = {}
    for text in texts:
        geometry = shapely.from_wkb(text["geometry"]) if text["geometry"] else None
        for chip in chips:
            key = (chip["chip_id"], text["text_id"])
            ref = text["image_ref"]
            if ref and (chip["source"] == ref or PurePath(chip["source"]).name == PurePath(ref).name):
                expected[key] = "image_ref"
            elif geometry is not None and chip["footprint"] and geometry.intersects(shapely.from_wkb(chip["footprint"])):
                expected[key] = "intersects"
            elif (
                geometry is not None
                and geometry.geom_type == "Point"
                and chip["lat"] is not None
                and h3.latlng_to_cell(geometry.y, geometry.x, resolution)
                == h3.latlng_to_cell(chip["lat"], chip["lon"], resolution)
            ):
                expected[key] = "cell"
    return expected


def test_pairs_match_brute_force(paired_store):
    store = Store.open(paired_store)
    report = pair_store(store)
    stored = {(r["chip_id"], r["text_id"]): r["how"] for r in rows(store, "pairs", ["chip_id", "text_id", "how"])}
    expected = brute_force_pairs(store)
    assert stored == expected
    for how in ("image_ref", "intersects", "cell"):
        assert report.pairs[how] == sum(1 for value in expected.values() if value == how)
        assert report.pairs[how] > 0, f"the sample has no pair by {how}"


def test_pairs_report_unpaired(paired_store):
    store = Store.open(paired_store)
    report = pair_store(store)
    chip_ids = {r["chip_id"] for r in rows(store, "images", ["chip_id"])}
    text_ids = {r["text_id"] for r in rows(store, "texts", ["text_id"])}
    paired = rows(store, "pairs", ["chip_id", "text_id"])
    assert report.chips_without_text == len(chip_ids - {p["chip_id"] for p in paired})
    assert report.texts_without_chip == len(text_ids - {p["text_id"] for p in paired})


def test_pairs_need_both_tables(lr_store):
    with pytest.raises(ValueError, match="needs both an images and a texts table"):
        pair_store(Store.open(lr_store))


def test_pairs_recomputed_not_appended(paired_store):
    store = Store.open(paired_store)
    first = pair_store(store)
    second = pair_store(store)
    assert second.to_dict() == first.to_dict()
    assert store.count("pairs") == sum(first.pairs.values())
