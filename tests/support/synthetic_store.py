"""Stores of generated rows, written with the real schemas, for tests that need many pairs quickly."""

from __future__ import annotations

from pathlib import Path

import h3
import numpy as np
import pyarrow as pa

from rsflow.store.db import Store
from rsflow.store.schema import images_schema, texts_schema


def make_synthetic_store(
    path: Path,
    *,
    chips: int = 200,
    texts: int = 200,
    pairs: int = 2000,
    embedding_dim: int = 16,
    prior_dim: int = 8,
    prefix_slots: int = 2,
    seed: int = 0,
) -> Path:
    """Write a store with random embeddings, priors and pairs; chips spread over about 50 cells."""
    rng = np.random.default_rng(seed)
    store = Store.open_or_create(path)
    store.manifest.encoder = {"model_id": "synthetic-encoder", "weights_sha256": "0" * 64, "embedding_dim": embedding_dim}
    store.manifest.llm = {"model_id": "synthetic-llm", "weights_sha256": "1" * 64, "dim": prior_dim}
    store.manifest.prefix_slots = prefix_slots
    store.save_manifest()

    lons = rng.uniform(4.0, 6.0, chips)
    lats = rng.uniform(51.0, 52.0, chips)
    cells = [h3.str_to_int(h3.latlng_to_cell(lat, lon, 5)) for lon, lat in zip(lons, lats)]
    image_schema = images_schema(embedding_dim)
    embeddings = rng.normal(size=(chips, embedding_dim)).astype(np.float32)
    images = pa.table(
        {
            "chip_id": [f"chip{i:06d}" for i in range(chips)],
            "source": ["synthetic.tif"] * chips,
            "source_sha256": ["2" * 64] * chips,
            "window": [{"col": i, "row": 0, "width": 1, "height": 1} for i in range(chips)],
            "lon": lons,
            "lat": lats,
            "cell": cells,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), embedding_dim),
        }
    )
    store.add_rows("images", "chip_id", _conform(images, image_schema), image_schema)

    text_schema = texts_schema(prefix_slots, prior_dim)
    priors = rng.normal(size=(texts, prefix_slots * prior_dim)).astype(np.float32)
    texts_table = pa.table(
        {
            "text_id": [f"text{i:06d}" for i in range(texts)],
            "text": [f"text number {i}" for i in range(texts)],
            "kind": ["caption"] * texts,
            "prior": pa.FixedSizeListArray.from_arrays(pa.array(priors.ravel()), prefix_slots * prior_dim),
        }
    )
    store.add_rows("texts", "text_id", _conform(texts_table, text_schema), text_schema)

    chip_rows = rng.integers(0, chips, pairs)
    text_rows = rng.integers(0, texts, pairs)
    keys = np.unique(chip_rows * texts + text_rows)
    store.replace_pairs(
        pa.table(
            {
                "chip_id": [f"chip{k // texts:06d}" for k in keys.tolist()],
                "text_id": [f"text{k % texts:06d}" for k in keys.tolist()],
                "how": ["cell"] * len(keys),
            }
        )
    )
    return path


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Add the schema's missing columns as nulls, in the schema's order."""
    columns = [
        table[field.name] if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)
