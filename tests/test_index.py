"""The FAISS index beside a real store: search, load, extend, rebuild and the record on disk."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

from rsflow.ingest import IngestOptions, ingest_images
from rsflow.store.db import Store, StoreError
from rsflow.store.index import ChipIndex, Neighbour


def stored_rows(store: Store) -> tuple[list[str], np.ndarray]:
    """Return the chip ids and embeddings of the images table, in table order."""
    table = store.table("images").to_lance().to_table(columns=["chip_id", "embedding"])
    embeddings = table["embedding"].combine_chunks()
    vectors = embeddings.flatten().to_numpy().reshape(len(embeddings), embeddings.type.list_size)
    return table["chip_id"].to_pylist(), vectors


def assert_each_finds_itself(index: ChipIndex, chip_ids: list[str], vectors: np.ndarray) -> None:
    results = index.search(vectors, k=3)
    assert [found[0].chip_id for found in results] == chip_ids
    assert max(found[0].distance for found in results) == pytest.approx(0.0, abs=1e-5)
    assert {found[0].rank for found in results} == {1}


def ingest_cog(store_path, imagery_dir, tiny_encoder) -> None:
    ingest_images(Store.open(store_path), [imagery_dir / "cog"], tiny_encoder, IngestOptions(chip_size=64))


def test_index_search_finds_itself(lr_store):
    store = Store.open(lr_store)
    index = ChipIndex.open(store)
    assert index.status == "built"
    assert len(index) == 7 * 16
    assert index.metric == "cosine"
    assert index.index_type == "flat"

    chip_ids, vectors = stored_rows(store)
    assert_each_finds_itself(index, chip_ids, vectors)


def test_index_loaded_on_second_open(lr_store):
    first = ChipIndex.open(Store.open(lr_store))
    second = ChipIndex.open(Store.open(lr_store))
    assert first.status == "built"
    assert second.status == "loaded"
    assert second.version == first.version

    chip_ids, vectors = stored_rows(Store.open(lr_store))
    assert second.search(vectors[:5], k=4) == first.search(vectors[:5], k=4)


def test_index_record_on_disk(lr_store):
    store = Store.open(lr_store)
    ChipIndex.open(store)
    folder = lr_store / "faiss"
    assert (folder / "index.faiss").is_file()

    record = json.loads((folder / "index.json").read_text())
    assert record["table_version"] == store.version("images")
    assert record["rows"] == 7 * 16
    assert record["dimension"] == 32
    assert record["metric"] == "cosine"
    assert record["index_type"] == "flat"

    chip_ids, _ = stored_rows(store)
    assert pq.read_table(folder / "ids.parquet")["chip_id"].to_pylist() == chip_ids


def test_index_extended_after_ingest(lr_store, imagery_dir, tiny_encoder):
    ChipIndex.open(Store.open(lr_store))
    ingest_cog(lr_store, imagery_dir, tiny_encoder)

    store = Store.open(lr_store)
    index = ChipIndex.open(store)
    assert index.status == "extended"
    assert "added 256 new chips" in index.reason
    assert len(index) == 7 * 16 + 16 * 16
    assert index.version == store.version("images")
    assert json.loads((lr_store / "faiss" / "index.json").read_text())["table_version"] == store.version("images")

    chip_ids, vectors = stored_rows(store)
    assert_each_finds_itself(index, chip_ids[7 * 16 :], vectors[7 * 16 :])
    assert ChipIndex.open(Store.open(lr_store)).status == "loaded"


def test_index_rebuilt_after_delete(lr_store):
    ChipIndex.open(Store.open(lr_store))
    store = Store.open(lr_store)
    chip_ids, vectors = stored_rows(store)
    store.table("images").delete(f"chip_id = '{chip_ids[40]}'")

    index = ChipIndex.open(Store.open(lr_store))
    assert index.status == "rebuilt"
    assert "Delete" in index.reason
    assert len(index) == 7 * 16 - 1
    found = index.search(vectors[40:41], k=len(index))[0]
    assert chip_ids[40] not in {neighbour.chip_id for neighbour in found}


def test_index_rebuilt_after_update_of_last_row(lr_store):
    # Lance rewrites an updated row at the end, so updating the last row keeps the chip id order.
    # Only the table's transaction history shows the change.
    ChipIndex.open(Store.open(lr_store))
    store = Store.open(lr_store)
    chip_ids, _ = stored_rows(store)
    changed = np.linspace(-1.0, 1.0, 32, dtype=np.float32)
    store.table("images").update(where=f"chip_id = '{chip_ids[-1]}'", values={"embedding": changed.tolist()})
    assert stored_rows(Store.open(lr_store))[0] == chip_ids

    index = ChipIndex.open(Store.open(lr_store))
    assert index.status == "rebuilt"
    assert "updated or removed" in index.reason
    nearest = index.search(changed[None], k=1)[0][0]
    assert nearest.chip_id == chip_ids[-1]
    assert nearest.distance == pytest.approx(0.0, abs=1e-6)


def test_index_rebuilt_for_recreated_table(lr_store):
    index = ChipIndex.open(Store.open(lr_store))
    store = Store.open(lr_store)
    rows = store.table("images").to_arrow()
    schema = rows.schema
    store.db.drop_table("images")

    # Recreate the table with the rows in reverse order, committed in steps until it reaches the
    # version number that the index records.
    table = store.db.create_table("images", schema=schema)
    reversed_rows = rows.take(np.arange(rows.num_rows)[::-1])
    steps = index.version - table.version
    assert steps >= 1
    for part in np.array_split(np.arange(rows.num_rows), steps):
        table.add(reversed_rows.take(part))
    assert Store.open(lr_store).version("images") == index.version

    reopened = ChipIndex.open(Store.open(lr_store))
    assert reopened.status == "rebuilt"
    assert "recreated" in reopened.reason
    chip_ids, vectors = stored_rows(Store.open(lr_store))
    assert_each_finds_itself(reopened, chip_ids, vectors)


def test_index_concurrent_opens_build_once(lr_store):
    with ThreadPoolExecutor(max_workers=2) as pool:
        indexes = list(pool.map(lambda _: ChipIndex.open(Store.open(lr_store)), range(2)))
    assert sorted(index.status for index in indexes) == ["built", "loaded"]
    assert len(indexes[0]) == len(indexes[1]) == 7 * 16


def test_index_rebuild_requested(lr_store):
    ChipIndex.open(Store.open(lr_store))
    index = ChipIndex.open(Store.open(lr_store), rebuild=True)
    assert index.status == "rebuilt"
    assert index.reason == "a rebuild was requested"


@pytest.mark.parametrize("damage", ["garbage index", "missing ids", "short ids", "bad record", "record list"])
def test_index_damaged_files_rebuilt(lr_store, damage):
    ChipIndex.open(Store.open(lr_store))
    folder = lr_store / "faiss"
    if damage == "garbage index":
        (folder / "index.faiss").write_bytes(b"not a faiss index")
    elif damage == "missing ids":
        (folder / "ids.parquet").unlink()
    elif damage == "short ids":
        ids = pq.read_table(folder / "ids.parquet")
        pq.write_table(ids.slice(0, 10), folder / "ids.parquet")
    elif damage == "bad record":
        (folder / "index.json").write_text("{ not json")
    else:
        (folder / "index.json").write_text("[1, 2]")

    index = ChipIndex.open(Store.open(lr_store))
    assert index.status == "rebuilt"
    assert len(index) == 7 * 16
    assert ChipIndex.open(Store.open(lr_store)).status == "loaded"


def test_index_missing_record_built(lr_store):
    ChipIndex.open(Store.open(lr_store))
    (lr_store / "faiss" / "index.json").unlink()
    assert ChipIndex.open(Store.open(lr_store)).status == "built"


def test_index_ivf_search_and_retrain(lr_store, imagery_dir, tiny_encoder):
    store = Store.open(lr_store)
    index = ChipIndex.open(store, index_type="ivf")
    assert index.index_type == "ivf"
    # 4 * sqrt(112) = 42 lists, capped at 112 // 39 = 2 so that k-means has enough points.
    assert index.record.nlist == 2
    assert index.record.trained_rows == 7 * 16

    index.nprobe = index.record.nlist
    chip_ids, vectors = stored_rows(store)
    assert_each_finds_itself(index, chip_ids, vectors)

    reopened = ChipIndex.open(Store.open(lr_store))
    assert reopened.status == "loaded"
    assert reopened.index_type == "ivf"

    # 368 chips are more than twice the 112 that the lists were trained on.
    ingest_cog(lr_store, imagery_dir, tiny_encoder)
    grown = ChipIndex.open(Store.open(lr_store))
    assert grown.status == "rebuilt"
    assert "trained on 112 chips" in grown.reason
    assert grown.record.trained_rows == 7 * 16 + 16 * 16


def test_index_type_change_rebuilds(lr_store):
    ChipIndex.open(Store.open(lr_store))
    index = ChipIndex.open(Store.open(lr_store), index_type="ivf")
    assert index.status == "rebuilt"
    assert index.index_type == "ivf"
    with pytest.raises(ValueError, match="'hnsw' is not supported"):
        ChipIndex.open(Store.open(lr_store), index_type="hnsw")


def test_search_more_than_stored(lr_store):
    index = ChipIndex.open(Store.open(lr_store))
    _, vectors = stored_rows(Store.open(lr_store))
    found = index.search(vectors[:2], k=1000)
    assert [len(row) for row in found] == [7 * 16, 7 * 16]
    assert [neighbour.rank for neighbour in found[0]] == list(range(1, 7 * 16 + 1))
    distances = [neighbour.distance for neighbour in found[0]]
    assert distances == sorted(distances)
    assert all(0.0 <= distance <= 2.0 for distance in distances)
    assert isinstance(found[0][0], Neighbour)


def test_search_distance_is_cosine(lr_store):
    index = ChipIndex.open(Store.open(lr_store))
    chip_ids, vectors = stored_rows(Store.open(lr_store))
    # A scaled copy has cosine distance 0, and the negated vector has distance 2.
    assert index.search(vectors[3:4] * 7.5, k=1)[0][0].chip_id == chip_ids[3]
    farthest = index.search(-vectors[3:4], k=len(index))[0][-1]
    assert farthest.chip_id == chip_ids[3]
    assert farthest.distance == pytest.approx(2.0, abs=1e-5)


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        (np.zeros(32, np.float32), r"shape \(32,\), expected \(Q, 32\)"),
        (np.zeros((2, 16), np.float32), r"shape \(2, 16\)"),
        (np.full((1, 32), np.nan, np.float32), "NaN or infinity"),
        (np.array([["a"] * 32]), "must be numbers"),
    ],
)
def test_search_rejects_bad_queries(lr_store, queries, message):
    index = ChipIndex.open(Store.open(lr_store))
    with pytest.raises(ValueError, match=message):
        index.search(queries, k=3)


def test_search_rejects_bad_k(lr_store):
    index = ChipIndex.open(Store.open(lr_store))
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(np.ones((1, 32), np.float32), k=0)
    with pytest.raises(ValueError, match="nprobe must be at least 1"):
        index.nprobe = 0


def test_index_empty_table(tmp_path, imagery_dir, tiny_encoder):
    store = Store.open_or_create(tmp_path / "store")
    store.images(embedding_dim=32)
    index = ChipIndex.open(store, index_type="ivf")
    assert len(index) == 0
    assert index.index_type == "flat"
    assert index.search(np.ones((2, 32), np.float32), k=5) == [[], []]

    ingest_cog(tmp_path / "store", imagery_dir, tiny_encoder)
    grown = ChipIndex.open(Store.open(tmp_path / "store"))
    assert grown.status == "extended"
    assert len(grown) == 16 * 16
    chip_ids, vectors = stored_rows(Store.open(tmp_path / "store"))
    assert_each_finds_itself(grown, chip_ids, vectors)


def test_index_needs_images_table(tmp_path):
    store = Store.open_or_create(tmp_path / "store")
    with pytest.raises(StoreError, match="no images table yet"):
        ChipIndex.open(store)
