"""Ingest geo-located text: read sources, compute LLM token-embedding priors, write the `texts` table.

A text's prior is the LLM's token input embeddings of the text pooled into K contiguous slots
(`rsflow.llm.text_priors`); only the LLM's input-embedding matrix is read. A text that names an image
(`image_ref`) but carries no geometry takes the place of that image's chips when they are in the
store. Each text gets a stable id (a hash of its kind, text, image and geometry), so ingesting a
source again adds nothing. Pairs are recomputed after every text ingest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from rsflow.llm import DEFAULT_PREFIX_SLOTS, TokenEmbeddings, load_token_embeddings, text_priors
from rsflow.store.db import Store, StoreError
from rsflow.store.pairs import pair_store
from rsflow.store.schema import texts_schema
from rsflow.texts import TextRecord, read_texts

logger = logging.getLogger(__name__)

# Texts per prior computation and per store commit.
TEXT_BATCH = 512


@dataclass
class TextIngestReport:
    """The summary of a text ingest, in a form that scripts can read (`to_dict`)."""

    sources: int = 0
    texts_read: int = 0
    texts_written: int = 0
    texts_already_stored: int = 0
    texts_truncated: int = 0
    texts_placed_by_image: int = 0
    texts_without_place: int = 0
    rejected: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pairing: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def text_id(record: TextRecord) -> str:
    """Return the stable id of a text: a hash of its kind, text, named image and geometry."""
    digest = hashlib.sha256()
    for part in (record.kind, record.text, record.image_ref or "", (record.geometry or b"").hex()):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def ensure_llm(store: Store, llm: str | None, prefix_slots: int | None) -> TokenEmbeddings:
    """Load the store's LLM embeddings (or `llm` for a new store) and record it in the manifest."""
    manifest = store.manifest
    if llm is None:
        if manifest.llm is None:
            raise StoreError(f"{store.path}: the store has no LLM yet; name one with --llm.")
        llm = manifest.llm["model_id"]
    if prefix_slots is not None and manifest.prefix_slots is not None and prefix_slots != manifest.prefix_slots:
        raise StoreError(
            f"{store.path}: the store's priors have {manifest.prefix_slots} prefix slots, not {prefix_slots}. "
            "Leave --prefix-slots out, or use another store."
        )
    if prefix_slots is not None and prefix_slots < 1:
        raise StoreError(f"--prefix-slots must be at least 1, got {prefix_slots}.")

    embeddings = load_token_embeddings(llm)
    record = {
        "model_id": _recorded_id(llm),
        "weights_sha256": embeddings.weights_sha256,
        "dim": embeddings.dim,
        "vocab_size": int(embeddings.weight.shape[0]),
        "max_length": embeddings.max_length,
    }
    manifest.check_llm(record, store.path)
    if manifest.llm is None:
        manifest.llm = record
        manifest.prefix_slots = prefix_slots or DEFAULT_PREFIX_SLOTS
        store.save_manifest()
    return embeddings


def _recorded_id(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def ingest_texts(
    store: Store,
    paths: Iterable[str | Path],
    embeddings: TokenEmbeddings,
    *,
    text_field: str | None = None,
    text_fields: list[str] | None = None,
    kind: str | None = None,
    layout: str = "auto",
    split: str | None = None,
    image_ids: list[int] | None = None,
    progress: Callable[[str, dict], None] | None = None,
) -> TextIngestReport:
    """Read every text source in `paths`, compute the priors, write them, and re-pair the store."""
    progress = progress or (lambda event, data: None)
    slots = store.manifest.prefix_slots or DEFAULT_PREFIX_SLOTS
    schema = texts_schema(slots, embeddings.dim)
    report = TextIngestReport()
    places = _ImagePlaces(store)

    for path in paths:
        result = read_texts(
            path, text_field=text_field, text_fields=text_fields, kind=kind, layout=layout, split=split,
            image_ids=image_ids,
        )
        report.sources += 1
        report.texts_read += result.accepted
        report.rejected.extend(str(r) for r in result.rejected)
        report.repaired.extend(str(r) for r in result.repaired)
        progress("source", {"path": str(path), "texts": result.accepted})
        for start in range(0, len(result.records), TEXT_BATCH):
            batch = result.records[start : start + TEXT_BATCH]
            table = _rows(batch, embeddings, slots, places, report, store.manifest.h3_resolution, schema)
            written = store.add_rows("texts", "text_id", table, schema)
            report.texts_written += written
            report.texts_already_stored += len(batch) - written
            progress("texts", {"count": len(batch)})

    if report.texts_truncated:
        report.warnings.append(
            f"{report.texts_truncated} texts were longer than the LLM's context of "
            f"{embeddings.max_length} tokens and were truncated."
        )
    if store.has_table("texts") and report.texts_written:
        store.finish_texts()
    if store.has_table("images") and store.has_table("texts"):
        pairing = pair_store(store)
        report.pairing = pairing.to_dict()
        for ref in pairing.unknown_image_refs[:20]:
            report.warnings.append(f"a text names image {ref}, which is not in the store; it has no chip to pair with.")
    return report


def _rows(
    records: list[TextRecord],
    embeddings: TokenEmbeddings,
    slots: int,
    places: "_ImagePlaces",
    report: TextIngestReport,
    resolution: int,
    schema: pa.Schema,
) -> pa.Table:
    result = text_priors([r.text for r in records], embeddings, slots)
    report.texts_truncated += result.truncated

    geometries: list[bytes | None] = []
    for record in records:
        geometry = record.geometry
        if geometry is None and record.image_ref:
            geometry = places.footprint(record.image_ref)
            report.texts_placed_by_image += geometry is not None
        report.texts_without_place += geometry is None
        geometries.append(geometry)

    shapes = shapely.from_wkb(np.asarray(geometries, dtype=object))
    centers = shapely.centroid(shapes)
    lons = [None if c is None else float(shapely.get_x(c)) for c in centers]
    lats = [None if c is None else float(shapely.get_y(c)) for c in centers]
    cells = [
        None if lon is None else h3.str_to_int(h3.latlng_to_cell(lat, lon, resolution)) for lon, lat in zip(lons, lats)
    ]
    priors = result.priors.astype(np.float32)
    prior_column = pa.FixedSizeListArray.from_arrays(pa.array(priors.reshape(-1)), slots * embeddings.dim)
    return pa.table(
        {
            "text_id": [text_id(r) for r in records],
            "text": [r.text for r in records],
            "kind": [r.kind for r in records],
            "source": [r.source for r in records],
            "geometry": geometries,
            "lon": lons,
            "lat": lats,
            "cell": cells,
            "image_ref": [r.image_ref for r in records],
            "attributes": [json.dumps(r.attributes, default=str) if r.attributes else None for r in records],
            "prior": prior_column,
        },
        schema=schema,
    )


class _ImagePlaces:
    """The union of the chip footprints of each stored image, looked up by `image_ref`."""

    def __init__(self, store: Store):
        self.store = store
        self.cache: dict[str, bytes | None] = {}

    def footprint(self, image_ref: str) -> bytes | None:
        if image_ref not in self.cache:
            self.cache[image_ref] = self._lookup(image_ref)
        return self.cache[image_ref]

    def _lookup(self, image_ref: str) -> bytes | None:
        if not self.store.has_table("images"):
            return None
        dataset = self.store.table("images").to_lance()
        name = Path(image_ref).name
        found = dataset.to_table(columns=["source", "footprint"], filter=pc.field("source").isin([image_ref]))
        if found.num_rows == 0:
            candidates = dataset.to_table(columns=["source", "footprint"], filter=pc.ends_with(pc.field("source"), "/" + name))
            found = candidates.filter(pc.ends_with(candidates["source"], image_ref.lstrip("./"))) if candidates.num_rows else candidates
        footprints = [f for f in found["footprint"].to_pylist() if f is not None]
        if not footprints:
            return None
        return shapely.to_wkb(shapely.union_all(shapely.from_wkb(np.asarray(footprints, dtype=object))))
