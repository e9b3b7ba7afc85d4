"""Training batches of (chip embedding, location, text prior) pairs, read from the store's Lance tables.

The pairs table holds only ids. Each epoch scans it in record batches, maps the ids to row positions
of the images and texts tables, keeps the pairs of the requested split, shuffles them in a buffer of
row positions, and reads the vectors of each batch with Lance's random-access `take`. Memory grows
with the number of chips and texts (one id and one cell per row, for the lookups), not with the
number of pairs, and no vector is read twice per epoch.

The validation split holds out whole H3 cells, chosen at random with a seed, so that no cell is on
both sides and spatial autocorrelation between neighbouring chips does not inflate the scores. Chips
without a cell (images without georeference) are split at random by chip, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rsflow.store.db import Store
from rsflow.store.schema import vectors_to_numpy

logger = logging.getLogger(__name__)

DEFAULT_VALIDATION_FRACTION = 0.2
# Row positions held for shuffling: 16 bytes each, so 2^16 of them cost 1 MB at any vector size.
DEFAULT_SHUFFLE_BUFFER = 65536
_SCAN_ROWS = 8192


@dataclass
class PairSplit:
    """The validation split: whole held-out cells, plus a random share of the chips without a cell."""

    validation_cells: list[int] = field(default_factory=list)
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    seed: int = 0
    by_cell: bool = True

    def to_dict(self) -> dict:
        return {
            "validation_cells": self.validation_cells,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
            "by_cell": self.by_cell,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PairSplit":
        return cls(**data)


class PairSource:
    """The store's pairs, readable as shuffled batches of one split, epoch after epoch.

    The images and texts tables are read at the versions current when the source is made, so that
    row positions stay valid for the whole training run.
    """

    def __init__(self, store: Store, split: PairSplit | None = None, *, seed: int = 0,
                 validation_fraction: float = DEFAULT_VALIDATION_FRACTION):
        for name in ("images", "texts", "pairs"):
            if not store.has_table(name) or store.count(name) == 0:
                raise ValueError(
                    f"{store.path}: the {name} table is empty; ingest images and texts (they pair by place) first."
                )
        manifest = store.manifest
        self.store = store
        self.prefix_slots = manifest.prefix_slots
        self.prior_dim = manifest.llm["dim"]
        self.embedding_dim = manifest.encoder["embedding_dim"]
        self.images = store.table("images").to_lance()
        self.texts = store.table("texts").to_lance()
        self.pairs = store.table("pairs").to_lance()
        self.versions = {"images": self.images.version, "texts": self.texts.version, "pairs": self.pairs.version}

        chips = self.images.to_table(columns=["chip_id", "cell"])
        self.chip_ids = chips["chip_id"].combine_chunks()
        self.chip_cells = chips["cell"].combine_chunks()
        self.text_ids = self.texts.to_table(columns=["text_id"])["text_id"].combine_chunks()
        self.split = split or self._choose_split(seed, validation_fraction)
        self.is_validation = self._validation_mask()

    def _choose_split(self, seed: int, fraction: float) -> PairSplit:
        # Cells of paired chips only: a held-out cell without pairs would hold out nothing.
        paired = np.zeros(len(self.chip_ids), dtype=bool)
        for batch in self.pairs.to_batches(columns=["chip_id"], batch_size=_SCAN_ROWS):
            rows = _positions(batch["chip_id"], self.chip_ids)
            paired[rows[rows >= 0]] = True
        cells = pc.unique(self.chip_cells.filter(pa.array(paired)).drop_null()).to_numpy()
        by_cell = len(cells) >= 2
        if not by_cell:
            logger.warning(
                "the paired chips have fewer than two H3 cells, so the validation split is random by chip; "
                "scores may be inflated by neighbouring chips on both sides"
            )
        rng = np.random.default_rng(seed)
        count = max(1, int(round(fraction * len(cells)))) if by_cell else 0
        chosen = sorted(int(c) for c in rng.choice(np.sort(cells), size=count, replace=False)) if count else []
        return PairSplit(validation_cells=chosen, validation_fraction=fraction, seed=seed, by_cell=by_cell)

    def _validation_mask(self) -> np.ndarray:
        chosen = pa.array(self.split.validation_cells, type=pa.int64())
        mask = pc.fill_null(pc.is_in(self.chip_cells, value_set=chosen), False).to_numpy(zero_copy_only=False)

        # Chips without a cell: a random share, seeded by the chip id so the choice is stable.
        no_cell = self.chip_cells.is_null().to_numpy(zero_copy_only=False)
        if no_cell.any():
            if self.split.by_cell:
                logger.warning("%d chips have no H3 cell; they are split at random by chip", int(no_cell.sum()))
            hashes = _stable_hash(self.chip_ids.filter(pa.array(no_cell)), self.split.seed)
            mask[no_cell] = hashes / float(2**64) < self.split.validation_fraction
        return mask

    def count(self, split: str) -> int:
        """Return the number of pairs in `split` ("train" or "validation")."""
        return sum(len(chips) for chips, _ in self._scan(split))

    def batches(self, split: str, batch_size: int, *, epoch: int = 0,
                shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, shuffle: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches of `split`: `embedding` [B, Dv], `prior` [B, K, D], `lon`, `lat` [B] (NaN if missing)."""
        rng = np.random.default_rng((self.split.seed, epoch))
        chip_buffer: list[np.ndarray] = []
        text_buffer: list[np.ndarray] = []
        held = 0
        for chips, texts in self._scan(split):
            chip_buffer.append(chips)
            text_buffer.append(texts)
            held += len(chips)
            if held >= shuffle_buffer:
                yield from self._emit(chip_buffer, text_buffer, batch_size, rng, shuffle, keep_tail=True)
                held = sum(len(c) for c in chip_buffer)
        yield from self._emit(chip_buffer, text_buffer, batch_size, rng, shuffle, keep_tail=False)

    def _scan(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}.")
        want_validation = split == "validation"
        for batch in self.pairs.to_batches(columns=["chip_id", "text_id"], batch_size=_SCAN_ROWS):
            chip_rows = _positions(batch["chip_id"], self.chip_ids)
            text_rows = _positions(batch["text_id"], self.text_ids)
            # A pair whose chip or text is not in the pinned table versions has no position; skip it.
            known = (chip_rows >= 0) & (text_rows >= 0)
            chip_rows, text_rows = chip_rows[known], text_rows[known]
            keep = self.is_validation[chip_rows] == want_validation
            yield chip_rows[keep], text_rows[keep]

    def _emit(self, chip_buffer, text_buffer, batch_size, rng, shuffle, keep_tail):
        chips = np.concatenate(chip_buffer) if chip_buffer else np.zeros(0, np.int64)
        texts = np.concatenate(text_buffer) if text_buffer else np.zeros(0, np.int64)
        order = rng.permutation(len(chips)) if shuffle else np.arange(len(chips))
        full = (len(order) // batch_size) * batch_size if keep_tail else len(order)
        for start in range(0, full, batch_size):
            rows = order[start : start + batch_size]
            yield self.read(chips[rows], texts[rows])
        chip_buffer.clear()
        text_buffer.clear()
        if keep_tail and full < len(order):
            chip_buffer.append(chips[order[full:]])
            text_buffer.append(texts[order[full:]])

    def read(self, chip_rows: np.ndarray, text_rows: np.ndarray) -> dict[str, np.ndarray]:
        """Read the vectors of the given image and text row positions."""
        images = _take(self.images, chip_rows, ["embedding", "lon", "lat"])
        texts = _take(self.texts, text_rows, ["prior"])
        embedding = vectors_to_numpy(images["embedding"], copy=True)
        prior = vectors_to_numpy(texts["prior"], copy=True).reshape(len(text_rows), self.prefix_slots, self.prior_dim)
        return {
            "embedding": embedding,
            "prior": prior,
            "lon": images["lon"].to_numpy(zero_copy_only=False).astype(np.float64),
            "lat": images["lat"].to_numpy(zero_copy_only=False).astype(np.float64),
        }


def _take(dataset, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """Read `rows` (in any order, with repeats) from a Lance dataset, in the order given."""
    unique, inverse = np.unique(rows, return_inverse=True)
    table = dataset.take(unique.tolist(), columns=columns)
    return table.take(pa.array(inverse))


def _positions(ids: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Return the row position of each id in `value_set`, or -1 where it is absent."""
    found = pc.fill_null(pc.index_in(ids, value_set=value_set), -1)
    return found.to_numpy(zero_copy_only=False).astype(np.int64)


def _stable_hash(ids: pa.Array, seed: int) -> np.ndarray:
    """Return a 64-bit hash of each id, the same in every process (unlike Python's `hash`)."""
    import hashlib

    key = seed.to_bytes(8, "little", signed=True)
    return np.asarray(
        [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=key).digest(), "little") for i in ids.to_pylist()],
        dtype=np.float64,
    )
