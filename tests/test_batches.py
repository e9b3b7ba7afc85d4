"""Training batches read from the Lance tables: shapes, the split by cell, and bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rsflow.batches import PairSource, PairSplit
from rsflow.store.db import Store
from support.synthetic_store import make_synthetic_store


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("synthetic") / "store")


def test_batches_shapes(synthetic):
    source = PairSource(Store.open(synthetic))
    batch = next(source.batches("train", 32))
    assert batch["embedding"].shape == (32, 16)
    assert batch["prior"].shape == (32, 2, 8)
    assert batch["lon"].shape == batch["lat"].shape == (32,)
    assert batch["embedding"].dtype == np.float32
    assert batch["embedding"].flags.writeable


def test_batches_cover_every_pair_once(synthetic):
    store = Store.open(synthetic)
    source = PairSource(store)
    total = store.count("pairs")
    assert source.count("train") + source.count("validation") == total
    seen = sum(len(b["embedding"]) for b in source.batches("train", 50, shuffle_buffer=128))
    assert seen == source.count("train")


def test_batch_vectors_match_tables(synthetic):
    store = Store.open(synthetic)
    source = PairSource(store)
    images = {r["chip_id"]: r for r in store.table("images").to_arrow().to_pylist()}
    texts = {r["text_id"]: r for r in store.table("texts").to_arrow().to_pylist()}
    pair = store.table("pairs").to_arrow().to_pylist()[0]
    chip_row = source.chip_ids.to_pylist().index(pair["chip_id"])
    text_row = source.text_ids.to_pylist().index(pair["text_id"])
    batch = source.read(np.array([chip_row]), np.array([text_row]))
    np.testing.assert_array_equal(batch["embedding"][0], images[pair["chip_id"]]["embedding"])
    np.testing.assert_array_equal(batch["prior"][0].ravel(), texts[pair["text_id"]]["prior"])
    assert batch["lon"][0] == images[pair["chip_id"]]["lon"]


def test_split_keeps_cells_apart(synthetic):
    source = PairSource(Store.open(synthetic), seed=3)
    cells = np.asarray(source.chip_cells.to_pylist())
    train_cells, validation_cells = set(), set()
    for split, cell_set in (("train", train_cells), ("validation", validation_cells)):
        for chip_rows, _ in source._scan(split):
            cell_set.update(cells[chip_rows].tolist())
    assert train_cells and validation_cells
    assert not train_cells & validation_cells
    assert validation_cells == set(source.split.validation_cells) & (train_cells | validation_cells)


def test_split_reproducible(synthetic):
    first = PairSource(Store.open(synthetic), seed=5).split
    second = PairSource(Store.open(synthetic), seed=5).split
    assert first == second
    restored = PairSource(Store.open(synthetic), PairSplit.from_dict(json.loads(json.dumps(first.to_dict()))))
    assert restored.split == first


def test_split_random_without_cells(tmp_path, caplog):
    path = make_synthetic_store(tmp_path / "store", chips=40, texts=10, pairs=200)
    Store.open(path).table("images").update(values={"cell": None})
    with caplog.at_level("WARNING"):
        source = PairSource(Store.open(path))
    assert not source.split.by_cell
    assert "random by chip" in caplog.text
    assert 0 < source.count("validation") < Store.open(path).count("pairs")


def test_empty_pairs_rejected(lr_store):
    with pytest.raises(ValueError, match="texts table is empty"):
        PairSource(Store.open(lr_store))


PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from rsflow.batches import PairSource
    from rsflow.store.db import Store
    source = PairSource(Store.open(sys.argv[1]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        for batch in source.batches("train", 256):
            pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """
)


def test_memory_flat_when_pairs_double(tmp_path):
    # The same chips and texts with 20k and 40k pairs: the iteration's peak RSS growth must not
    # follow the pairs. Keeping the extra 20k pairs' vectors would cost 20k x (64 + 8 x 64) x 4 B = 46 MB.
    sizes = {}
    for pairs in (20_000, 40_000):
        path = make_synthetic_store(tmp_path / f"p{pairs}", chips=2000, texts=2000, pairs=pairs,
                                    embedding_dim=64, prior_dim=64, prefix_slots=8)
        output = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True)
        sizes[pairs] = int(output.stdout.strip()) / 1024
    assert sizes[40_000] - sizes[20_000] < 16, sizes
