"""Ingest into a real LanceDB store: rows, places, idempotency, resume and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import h3
import numpy as np
import pyarrow.compute as pc
import pytest
import rasterio
import shapely
from rasterio.warp import transform as warp_transform

from rsflow.ingest import IngestError, IngestOptions, chip_id, file_sha256, find_images, ingest_images
from rsflow.store.db import Store, StoreError
from rsflow.store.manifest import StoreMismatchError


def images_table(path: Path):
    return Store.open(path).table("images").to_arrow()


def test_find_images_counts_other_files(imagery_dir):
    files, others = find_images([imagery_dir / "ljubljana", imagery_dir / "rsicd"])
    assert [f.name for f in files] == ["import-tiff-test1.tiff", "import-tiff-test2.tiff", "stadium_1.jpg"]
    assert others == {".gpkg": 1, ".jsonl": 1}


def test_find_images_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such file"):
        find_images([tmp_path / "nope"])


def test_ingest_rows_match_sample(lr_store, imagery_dir):
    table = images_table(lr_store)
    # Seven 256 x 256 images in 64-pixel chips: 16 chips each, none nodata.
    assert table.num_rows == 7 * 16
    assert pc.count_distinct(table["chip_id"]).as_py() == table.num_rows
    assert table.schema.field("embedding").type.list_size == 32
    assert set(table["crs"].to_pylist()) == {"EPSG:3857"}
    assert set(table["dtype"].to_pylist()) == {"uint8"}
    assert table["bands"][0].as_py() == [1, 2, 3]

    manifest = Store.open(lr_store).manifest
    assert manifest.encoder["embedding_dim"] == 32
    assert manifest.h3_resolution == 7


def test_ingest_places_match_rasterio_and_h3(lr_store, imagery_dir):
    table = images_table(lr_store).to_pylist()
    row = next(r for r in table if r["source"].endswith("55.tif") and r["window"] == {"col": 64, "row": 128, "width": 64, "height": 64})
    with rasterio.open(imagery_dir / "rsvqa_lr" / "55.tif") as dataset:
        x, y = dataset.transform @ (64 + 32, 128 + 32)
        (lon,), (lat,) = warp_transform(dataset.crs, "EPSG:4326", [x], [y])
        sha = file_sha256(Path(dataset.name))
    assert row["lon"] == pytest.approx(lon, abs=1e-9)
    assert row["lat"] == pytest.approx(lat, abs=1e-9)
    assert row["cell"] == h3.str_to_int(h3.latlng_to_cell(lat, lon, 7))
    assert row["chip_id"] == chip_id(sha, 64, 128, 64, 64)
    assert shapely.from_wkb(row["footprint"]).contains(shapely.Point(lon, lat))


def test_ingest_embeddings_match_encoder(lr_store, imagery_dir, tiny_encoder):
    row = next(r for r in images_table(lr_store).to_pylist() if r["source"].endswith("52.tif") and r["window"]["col"] == 0 and r["window"]["row"] == 0)
    with rasterio.open(imagery_dir / "rsvqa_lr" / "52.tif") as dataset:
        pixels = dataset.read(window=((0, 64), (0, 64))).astype(np.float32) / 255.0
    expected = tiny_encoder.embed(pixels[None], np.ones((1, 64, 64), bool))[0]
    np.testing.assert_allclose(row["embedding"], expected, rtol=1e-5, atol=1e-6)


def test_ingest_again_adds_nothing(lr_store, imagery_dir, tiny_encoder):
    before = images_table(lr_store)
    report = ingest_images(Store.open(lr_store), [imagery_dir / "rsvqa_lr"], tiny_encoder, IngestOptions(chip_size=64))
    assert report.chips_written == 0
    assert report.files_already_stored == 7
    after = images_table(lr_store)
    assert after.num_rows == before.num_rows
    assert sorted(after["chip_id"].to_pylist()) == sorted(before["chip_id"].to_pylist())


def test_ingest_scalar_index_on_cell(lr_store):
    indices = Store.open(lr_store).table("images").list_indices()
    assert any(index.columns == ["cell"] and index.index_type == "BTree" for index in indices)


class Interrupt(Exception):
    """Stands for a kill in the middle of an ingest."""


@pytest.mark.parametrize("stop_after_batches", [1, 4, 9])
def test_ingest_resumes_after_interrupt(tmp_path, imagery_dir, tiny_encoder, lr_store_template, stop_after_batches, monkeypatch):
    store = Store.open_or_create(tmp_path / "store")
    calls = {"n": 0}
    original = tiny_encoder.embed

    def failing_embed(values, valid):
        calls["n"] += 1
        if calls["n"] > stop_after_batches:
            raise Interrupt
        return original(values, valid)

    monkeypatch.setattr(tiny_encoder, "embed", failing_embed)
    options = IngestOptions(chip_size=64, batch_size=8, commit_every=16)
    with pytest.raises(Interrupt):
        ingest_images(store, [imagery_dir / "rsvqa_lr"], tiny_encoder, options)
    monkeypatch.setattr(tiny_encoder, "embed", original)

    partial = Store.open(tmp_path / "store")
    stored_before = partial.count("images") if partial.has_table("images") else 0
    assert stored_before < 7 * 16

    report = ingest_images(Store.open(tmp_path / "store"), [imagery_dir / "rsvqa_lr"], tiny_encoder, options)
    resumed = images_table(tmp_path / "store")
    clean = images_table(lr_store_template)
    assert resumed.num_rows == clean.num_rows
    assert report.chips_written == clean.num_rows - stored_before
    assert sorted(resumed["chip_id"].to_pylist()) == sorted(clean["chip_id"].to_pylist())


def test_ingest_resumes_after_sigkill(tmp_path, imagery_dir, tiny_encoder_dir, lr_store_template):
    import os
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "store"
    command = [
        sys.executable, "-m", "rsflow.cli", "ingest", str(imagery_dir / "rsvqa_lr"), "--store", str(store),
        "--encoder", str(tiny_encoder_dir), "--chip-size", "32", "--batch-size", "16", "--commit-every", "32",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (store / "images.lance" / "_versions").is_dir() and len(list((store / "images.lance" / "_versions").iterdir())) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the ingest finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = Store.open(store)
    assert partial.count("images") < 7 * 64

    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table = images_table(store)
    # 256 / 32 = 8 chips per side, 64 chips per image.
    assert table.num_rows == 7 * 64
    assert pc.count_distinct(table["chip_id"]).as_py() == table.num_rows


def test_ingest_other_folder_later(lr_store, imagery_dir, tiny_encoder):
    report = ingest_images(Store.open(lr_store), [imagery_dir / "cog"], tiny_encoder, IngestOptions(chip_size=64))
    assert report.chips_written == 16 * 16
    assert Store.open(lr_store).count("images") == 7 * 16 + 16 * 16


def test_ingest_other_encoder_rejected(lr_store, imagery_dir, other_encoder_dir):
    from rsflow.encoders import ImageEncoder

    other = ImageEncoder.load(str(other_encoder_dir), device="cpu")
    before = images_table(lr_store).num_rows
    with pytest.raises(StoreMismatchError, match="not of .*Leave --encoder out"):
        ingest_images(Store.open(lr_store), [imagery_dir / "cog"], other, IngestOptions(chip_size=64))
    assert images_table(lr_store).num_rows == before


def test_ingest_bad_files_reported(tmp_path, imagery_dir, test_data_dir, tiny_encoder):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "empty.tif").touch()
    (folder / "notes.tif").write_text("not an image")
    (folder / "truncated.tif").write_bytes((imagery_dir / "rsvqa_lr" / "53.tif").read_bytes()[:60_000])
    shutil.copy(imagery_dir / "eurosat_ms" / "Pasture" / "Pasture_300.tif", folder)
    shutil.copy(imagery_dir / "rsvqa_lr" / "52.tif", folder)
    (folder / "readme.txt").write_text("hello")

    store = Store.open_or_create(tmp_path / "store")
    report = ingest_images(store, [folder], tiny_encoder, IngestOptions(chip_size=64))
    reasons = {Path(r["file"]).name: r["reason"] for r in report.files_rejected}
    assert set(reasons) == {"empty.tif", "notes.tif", "truncated.tif", "Pasture_300.tif"}
    assert "the file is empty" in reasons["empty.tif"]
    assert "not a readable image" in reasons["notes.tif"]
    assert "truncated or corrupt" in reasons["truncated.tif"]
    assert "--bands" in reasons["Pasture_300.tif"]
    assert report.files_not_images == {".txt": 1}
    # The good image is stored in full, and a partly read truncated file is not marked complete.
    sources = Store.open(tmp_path / "store").table("sources").to_arrow()["source"].to_pylist()
    assert [Path(s).name for s in sources] == ["52.tif"]
    chip_sources = set(images_table(tmp_path / "store")["source"].to_pylist())
    assert {Path(s).name for s in chip_sources} == {"52.tif"}


def test_ingest_truncated_file_leaves_no_chips(tmp_path, imagery_dir, tiny_encoder):
    folder = tmp_path / "incoming"
    folder.mkdir()
    truncated = folder / "53.tif"
    truncated.write_bytes((imagery_dir / "rsvqa_lr" / "53.tif").read_bytes()[:120_000])
    store = Store.open_or_create(tmp_path / "store")
    options = IngestOptions(chip_size=64, commit_every=4)
    report = ingest_images(store, [folder], tiny_encoder, options)
    assert len(report.files_rejected) == 1
    assert Store.open(tmp_path / "store").count("images") == 0

    truncated.write_bytes((imagery_dir / "rsvqa_lr" / "53.tif").read_bytes())
    ingest_images(Store.open(tmp_path / "store"), [folder], tiny_encoder, options)
    table = images_table(tmp_path / "store")
    assert table.num_rows == 16
    assert pc.count_distinct(table["chip_id"]).as_py() == 16


def test_ingest_all_nodata_rejected(tmp_path, test_data_dir, tiny_encoder):
    store = Store.open_or_create(tmp_path / "store")
    options = IngestOptions(chip_size=64, bands=[1, 2, 3])
    report = ingest_images(store, [test_data_dir / "all-nodata.tif"], tiny_encoder, options)
    assert len(report.files_rejected) == 1
    assert "every chip is entirely nodata" in report.files_rejected[0]["reason"]
    # 71 x 2475 pixels in 64-pixel chips: 2 columns x 39 rows, all skipped.
    assert report.chips_skipped["nodata"] == 2 * 39
    assert report.chips_written == 0


def test_ingest_strict_stops_and_keeps_earlier(tmp_path, imagery_dir, tiny_encoder):
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(imagery_dir / "rsvqa_lr" / "52.tif", folder / "a.tif")
    (folder / "b.tif").write_text("not an image")
    shutil.copy(imagery_dir / "rsvqa_lr" / "53.tif", folder / "c.tif")
    store = Store.open_or_create(tmp_path / "store")
    with pytest.raises(IngestError, match="b.tif.*--strict"):
        ingest_images(store, [folder], tiny_encoder, IngestOptions(chip_size=64, strict=True))
    sources = images_table(tmp_path / "store")["source"].to_pylist()
    assert {Path(s).name for s in sources} == {"a.tif"}


def test_ingest_without_georeference(tmp_path, imagery_dir, tiny_encoder):
    store = Store.open_or_create(tmp_path / "store")
    report = ingest_images(store, [imagery_dir / "ucmerced"], tiny_encoder, IngestOptions(chip_size=128))
    assert report.chips_written == 2 * 4
    assert sum("no georeference" in w for w in report.warnings) == 2
    table = images_table(tmp_path / "store")
    for column in ("footprint", "lon", "lat", "cell", "crs"):
        assert table[column].null_count == table.num_rows


def test_ingest_multispectral_with_bands(tmp_path, imagery_dir, tiny_encoder):
    store = Store.open_or_create(tmp_path / "store")
    options = IngestOptions(bands=[4, 3, 2], value_range=(0, 10000))
    report = ingest_images(store, [imagery_dir / "eurosat_ms"], tiny_encoder, options)
    # Each 64 x 64 image is larger than a 32-pixel chip: 2 x 2 chips.
    assert report.chips_written == 2 * 4
    table = images_table(tmp_path / "store")
    assert set(table["dtype"].to_pylist()) == {"uint16"}
    assert table["bands"][0].as_py() == [4, 3, 2]
    assert set(table["crs"].to_pylist()) == {"EPSG:32635", "EPSG:32632"}


def test_ingest_rgba_uses_alpha_as_mask(tmp_path, test_data_dir, tiny_encoder):
    store = Store.open_or_create(tmp_path / "store")
    report = ingest_images(store, [test_data_dir / "RGBA.uint16.tif"], tiny_encoder, IngestOptions(chip_size=128))
    assert not report.files_rejected
    table = images_table(tmp_path / "store")
    assert table["bands"][0].as_py() == [1, 2, 3]
    assert min(table["valid_fraction"].to_pylist()) < 1.0


def test_store_h3_resolution_fixed(lr_store):
    with pytest.raises(StoreError, match="uses H3 resolution 7, not 9"):
        Store.open_or_create(lr_store, h3_resolution=9)


def test_store_rejects_foreign_folder(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(StoreError, match="not an rsflow store"):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match="not empty and is not an rsflow store"):
        Store.open_or_create(tmp_path)
    with pytest.raises(StoreError, match="no store here"):
        Store.open(tmp_path / "missing")


def test_cli_new_store_needs_encoder(tmp_path, imagery_dir):
    from typer.testing import CliRunner

    from rsflow.cli.main import app

    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["ingest", str(imagery_dir / "rsvqa_lr"), "--store", str(store)])
    assert result.exit_code == 2
    assert "--encoder" in result.output
    assert not store.exists()


def test_cli_ingest_json_summary(tmp_path, imagery_dir, tiny_encoder_dir):
    import json

    from typer.testing import CliRunner

    from rsflow.cli.main import app

    store = tmp_path / "store"
    arguments = ["ingest", str(imagery_dir / "rsvqa_lr" / "52.tif"), str(tmp_path / "missing-nothing"),
                 "--store", str(store), "--encoder", str(tiny_encoder_dir), "--chip-size", "128", "--json"]
    (tmp_path / "missing-nothing").mkdir()
    (tmp_path / "missing-nothing" / "notes.tif").write_text("not an image")
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["chips_written"] == 4
    assert summary["files_read"] == 1
    assert summary["files_rejected"][0]["file"].endswith("notes.tif")
    assert set(summary) >= {"files_found", "chips_skipped", "files_not_images", "warnings"}
