"""Text ingest into a real store: priors, places, the manifest's LLM, idempotency and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h3
import numpy as np
import pytest
import shapely
from typer.testing import CliRunner

from rsflow.ingest import IngestOptions, ingest_images
from rsflow.llm import load_token_embeddings, text_priors
from rsflow.store.db import Store, StoreError
from rsflow.store.manifest import StoreMismatchError
from rsflow.textingest import ensure_llm, ingest_texts

EXAMPLE_TEXTS = Path(__file__).resolve().parents[1] / "examples" / "texts"


def texts_rows(path: Path) -> list[dict]:
    return Store.open(path).table("texts").to_arrow().to_pylist()


def test_priors_match_llm_embeddings(paired_store, tiny_llm_dir):
    rows = texts_rows(paired_store)
    embeddings = load_token_embeddings(str(tiny_llm_dir))
    expected = text_priors([r["text"] for r in rows], embeddings, 4).priors
    stored = np.asarray([r["prior"] for r in rows], dtype=np.float32).reshape(len(rows), 4, embeddings.dim)
    np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-7)


def test_manifest_records_llm(paired_store, tiny_llm_dir):
    manifest = Store.open(paired_store).manifest
    assert manifest.llm["model_id"] == str(tiny_llm_dir.resolve())
    assert manifest.prefix_slots == 4
    assert manifest.llm["dim"] == 32


def test_text_places_match_h3(paired_store):
    for row in texts_rows(paired_store):
        if row["geometry"] is None:
            continue
        center = shapely.from_wkb(row["geometry"]).centroid
        assert row["lon"] == pytest.approx(center.x)
        assert row["lat"] == pytest.approx(center.y)
        assert row["cell"] == h3.str_to_int(h3.latlng_to_cell(center.y, center.x, 7))


def test_ingest_texts_again_adds_nothing(paired_store):
    store = Store.open(paired_store)
    before = store.count("texts")
    embeddings = ensure_llm(store, None, None)
    report = ingest_texts(store, [EXAMPLE_TEXTS / "points.jsonl"], embeddings)
    assert report.texts_written == 0
    assert report.texts_already_stored == report.texts_read
    assert Store.open(paired_store).count("texts") == before


def test_other_llm_rejected(paired_store, other_llm_dir):
    store = Store.open(paired_store)
    before = store.count("texts")
    with pytest.raises(StoreMismatchError, match="Leave --llm out"):
        ensure_llm(store, str(other_llm_dir), None)
    assert Store.open(paired_store).count("texts") == before


def test_prefix_slots_fixed(paired_store):
    with pytest.raises(StoreError, match="4 prefix slots, not 8"):
        ensure_llm(Store.open(paired_store), None, 8)


def test_llm_required_for_new_store(tmp_path):
    with pytest.raises(StoreError, match="name one with --llm"):
        ensure_llm(Store.open_or_create(tmp_path / "store"), None, None)


def test_labels_take_image_footprint(tmp_path, imagery_dir, tiny_encoder, tiny_llm_dir):
    store = Store.open_or_create(tmp_path / "store")
    ingest_images(store, [imagery_dir / "eurosat_ms"], tiny_encoder, IngestOptions(bands=[4, 3, 2]))
    report = ingest_texts(store, [imagery_dir / "eurosat_ms"], ensure_llm(store, str(tiny_llm_dir), None))
    assert report.texts_placed_by_image == 2
    rows = {r["text"]: r for r in texts_rows(tmp_path / "store")}
    assert set(rows) == {"annual crop", "pasture"}

    chips = Store.open(tmp_path / "store").table("images").to_arrow().to_pylist()
    pasture = [shapely.from_wkb(c["footprint"]) for c in chips if "Pasture" in c["source"]]
    assert shapely.from_wkb(rows["pasture"]["geometry"]).equals(shapely.union_all(pasture))
    assert report.pairing["pairs"]["image_ref"] == len(chips)


def test_caption_of_unknown_image(tmp_path, imagery_dir, tiny_encoder, tiny_llm_dir):
    store = Store.open_or_create(tmp_path / "store")
    ingest_images(store, [imagery_dir / "rsvqa_lr" / "52.tif"], tiny_encoder, IngestOptions(chip_size=64))
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"filename": "missing_image.jpg", "captions": ["a harbour with boats"]}) + "\n")
    report = ingest_texts(store, [captions], ensure_llm(store, str(tiny_llm_dir), None))
    assert report.texts_written == 1
    assert report.texts_without_place == 1
    assert any("missing_image.jpg, which is not in the store" in w for w in report.warnings)
    assert report.pairing["texts_without_chip"] == 1


def test_long_text_truncated(tmp_path, tiny_llm_dir):
    store = Store.open_or_create(tmp_path / "store")
    source = tmp_path / "long.jsonl"
    long_text = " ".join(["farmland beside a river"] * 200)
    source.write_text(json.dumps({"text": long_text, "lon": 5.0, "lat": 51.0}) + "\n")
    report = ingest_texts(store, [source], ensure_llm(store, str(tiny_llm_dir), None))
    assert report.texts_truncated == 1
    assert "longer than the LLM's context of 128 tokens" in report.warnings[0]


def test_bad_rows_reported_good_kept(tmp_path, tiny_llm_dir):
    store = Store.open_or_create(tmp_path / "store")
    report = ingest_texts(store, [EXAMPLE_TEXTS / "bad_rows.jsonl"], ensure_llm(store, str(tiny_llm_dir), None))
    assert report.texts_written >= 1
    assert any("bad_rows.jsonl:2:" in line for line in report.rejected)
    assert any("swapped" in line for line in report.rejected)
    stored = {r["text"] for r in texts_rows(tmp_path / "store")}
    assert "a valid point row" in stored


def test_cli_ingest_text_json(paired_store, tmp_path):
    from rsflow.cli.main import app

    result = CliRunner().invoke(
        app, ["ingest-text", str(EXAMPLE_TEXTS / "bad_rows.jsonl"), "--store", str(paired_store), "--json"]
    )
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["texts_written"] >= 1
    assert summary["rejected"]
    assert summary["pairing"]["pairs_total"] > 0


def test_cli_info_shows_pairing(paired_store):
    from rsflow.cli.main import app

    result = CliRunner().invoke(app, ["info", "--store", str(paired_store), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"]["pairs"] > 0
    assert set(summary["pairing"]["pairs"]) == {"image_ref", "intersects", "cell"}
    assert summary["pairing"]["texts_without_chip"] >= 0


def test_image_ingest_repairs_pairs(paired_store, imagery_dir, tiny_encoder):
    store = Store.open(paired_store)
    before = store.count("pairs")
    report = ingest_images(store, [imagery_dir / "eurosat_ms"], tiny_encoder, IngestOptions(bands=[4, 3, 2]))
    assert report.chips_written == 8
    assert report.pairing["pairs_total"] == Store.open(paired_store).count("pairs")
    assert report.pairing["pairs_total"] >= before


def test_lookup_columns_indexed(paired_store):
    store = Store.open(paired_store)
    text_indices = {tuple(index.columns) for index in store.table("texts").list_indices()}
    assert {("text_id",), ("cell",)} <= text_indices
    pair_indices = {tuple(index.columns) for index in store.table("pairs").list_indices()}
    assert ("chip_id",) in pair_indices
