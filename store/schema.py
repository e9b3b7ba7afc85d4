"""Arrow schemas of the store's tables.

`images`, one row per chip; `texts`, one row per geo-located text; `pairs`, a chip and a text that
share a place; `sources`, one row per image file whose chips are all written, so that a second
ingest of the same file content skips it and an interrupted ingest knows where to resume.

Geometries are WKB in EPSG:4326; `cell` is the H3 index (h3's uint64 cells are all below 2^63, so
int64 holds them); embeddings and priors are fixed-size lists of float32, a prior flattened from its
K x D shape (the manifest records K and D).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

WINDOW_TYPE = pa.struct(
    [("col", pa.int32()), ("row", pa.int32()), ("width", pa.int32()), ("height", pa.int32())]
)
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


def images_schema(embedding_dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chip_id", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("source_sha256", pa.string(), nullable=False),
            pa.field("window", WINDOW_TYPE, nullable=False),
            pa.field("crs", pa.string()),
            pa.field("bands", pa.list_(pa.int16())),
            pa.field("dtype", pa.string()),
            pa.field("valid_fraction", pa.float32()),
            pa.field("footprint", pa.binary()),
            pa.field("lon", pa.float64()),
            pa.field("lat", pa.float64()),
            pa.field("cell", pa.int64()),
            pa.field("acquired", TIMESTAMP_TYPE),
            pa.field("embedding", pa.list_(pa.float32(), embedding_dim), nullable=False),
        ]
    )


def texts_schema(prefix_slots: int, prior_dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("text_id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("geometry", pa.binary()),
            pa.field("lon", pa.float64()),
            pa.field("lat", pa.float64()),
            pa.field("cell", pa.int64()),
            pa.field("image_ref", pa.string()),
            pa.field("attributes", pa.string()),
            # K x D, flattened row-major: slot k is prior[k * D : (k + 1) * D]. A nested fixed-size list
            # would say the shape itself, but pylance 14 writes it and then fails to read it back.
            pa.field("prior", pa.list_(pa.float32(), prefix_slots * prior_dim), nullable=False),
        ]
    )


PAIRS_SCHEMA = pa.schema(
    [
        pa.field("chip_id", pa.string(), nullable=False),
        pa.field("text_id", pa.string(), nullable=False),
        # "image_ref": the text names the chip's image; "intersects": the text's geometry meets the
        # chip's footprint; "cell": a point text and the chip's centre lie in the same H3 cell.
        pa.field("how", pa.string(), nullable=False),
    ]
)

SOURCES_SCHEMA = pa.schema(
    [
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("chips", pa.int32()),
        pa.field("skipped_nodata", pa.int32()),
        pa.field("completed", TIMESTAMP_TYPE),
    ]
)


def vectors_to_numpy(column: pa.Array | pa.ChunkedArray, copy: bool = False) -> np.ndarray:
    """Return a fixed-size-list column of float32 as a [rows, size] numpy array.

    `copy=True` returns writable memory, for torch, which warns about read-only Arrow buffers.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    # `flatten` honours a slice's offset, unlike `values`.
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.array(values, dtype=np.float32, copy=copy).reshape(len(column), column.type.list_size)
