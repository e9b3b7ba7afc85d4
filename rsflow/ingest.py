"""Ingest imagery: walk folders, cut images into chips, embed them, write the `images` table.

Each chip gets a stable id, the SHA-256 of its file's content and its window, so a second ingest of
the same file adds nothing and a rerun after an interrupted ingest embeds only the chips that are
missing. Rows are written in batches (each a LanceDB commit); a file counts as complete in the
`sources` table only after all its chips are committed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import rasterio

from rsflow.encoders import ImageEncoder
from rsflow.raster import (
    IMAGE_SUFFIXES,
    Chip,
    Georef,
    ImageInfo,
    RasterError,
    Place,
    block_cache_bytes,
    chip_places,
    chip_windows,
    open_image,
    read_chip,
    select_bands,
    value_scaling,
)
from rsflow.store.db import Store
from rsflow.store.schema import SOURCES_SCHEMA, images_schema

logger = logging.getLogger(__name__)

_HASH_CHUNK = 8 * 1024 * 1024
# Windows whose footprints are computed together: one reprojection call each, bounded memory.
PLACE_SLICE = 1024


class IngestError(RuntimeError):
    """An ingest stopped by a rejected file under `strict`, after storing what came before it."""


@dataclass
class IngestOptions:
    """Settings of cutting, reading and embedding images. None means the encoder's default."""

    chip_size: int | None = None
    stride: int | None = None
    edge: str = "pad"
    bands: list[int] | None = None
    value_range: tuple[float, float] | None = None
    batch_size: int = 32
    commit_every: int = 2048
    strict: bool = False
    georefs: dict[str, Georef] = field(default_factory=dict)


@dataclass
class IngestReport:
    """The summary of an ingest, in a form that scripts can read (`to_dict`)."""

    files_found: int = 0
    files_read: int = 0
    files_already_stored: int = 0
    files_not_images: Counter = field(default_factory=Counter)
    chips_written: int = 0
    chips_already_stored: int = 0
    chips_skipped: Counter = field(default_factory=Counter)
    files_rejected: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pairing: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "files_found": self.files_found,
            "files_read": self.files_read,
            "files_already_stored": self.files_already_stored,
            "files_not_images": dict(self.files_not_images),
            "chips_written": self.chips_written,
            "chips_already_stored": self.chips_already_stored,
            "chips_skipped": dict(self.chips_skipped),
            "files_rejected": self.files_rejected,
            "warnings": self.warnings,
            "pairing": self.pairing,
        }


ProgressCallback = Callable[[str, dict], None]


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], Counter]:
    """Return the image files under `paths` (recursively, sorted) and a count of other files by suffix."""
    found: list[Path] = []
    others: Counter = Counter()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder.")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.suffix.lower() in IMAGE_SUFFIXES:
                found.append(candidate.resolve())
            elif not candidate.name.startswith("."):
                others[candidate.suffix.lower() or "(no suffix)"] += 1
    return list(dict.fromkeys(found)), others


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def chip_id(source_sha256: str, col: int, row: int, width: int, height: int) -> str:
    """Return the stable id of one window of one file content."""
    return hashlib.sha256(f"{source_sha256}:{col}:{row}:{width}:{height}".encode()).hexdigest()[:32]


def ingest_images(
    store: Store,
    paths: Iterable[str | Path],
    encoder: ImageEncoder,
    options: IngestOptions | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Embed the chips of every image under `paths` into `store`, as the module docstring describes."""
    options = options or IngestOptions()
    progress = progress or (lambda event, data: None)
    encoder_record = encoder.info.to_dict()
    store.manifest.check_encoder(encoder_record, store.path)
    if store.manifest.encoder is None:
        store.manifest.encoder = encoder_record
        store.save_manifest()

    files, others = find_images(paths)
    report = IngestReport(files_found=len(files), files_not_images=others)
    writer = _ChipWriter(store, encoder, options.batch_size, options.commit_every)
    completed = store.completed_sources()
    progress("start", {"files": len(files)})

    for path in files:
        progress("file", {"path": str(path)})
        try:
            _ingest_file(path, writer, encoder, options, completed, report, progress)
        except RasterError as error:
            # A file that fails part-way leaves nothing behind: a later, complete copy of it has
            # another content hash, and its chips would otherwise sit beside these ones.
            writer.discard(path)
            report.files_rejected.append({"file": str(path), "reason": str(error)})
            logger.info("rejected %s", error)
            if options.strict:
                writer.flush()
                report.chips_written = writer.written
                raise IngestError(f"{error} (stopped by --strict; the files before it are stored)") from error

    writer.flush()
    report.chips_written = writer.written
    if store.has_table("images"):
        store.finish_images()
    if report.chips_written and store.has_table("texts"):
        # New chips may lie under stored texts; pairs are cheap to recompute and stale ones would
        # train the flow on part of the data.
        from rsflow.store.pairs import pair_store

        report.pairing = pair_store(store).to_dict()
    progress("done", report.to_dict())
    return report


def _ingest_file(
    path: Path,
    writer: "_ChipWriter",
    encoder: ImageEncoder,
    options: IngestOptions,
    completed: set[str],
    report: IngestReport,
    progress: ProgressCallback,
) -> None:
    sha = file_sha256(path)
    if sha in completed:
        report.files_already_stored += 1
        return

    with open_image(path, options.georefs.get(str(path))) as (dataset, info):
        bands = select_bands(info, encoder.info.num_channels, options.bands)
        report.warnings.extend(info.warnings)
        if not info.georeferenced:
            report.warnings.append(
                f"{path}: no georeference (no CRS); its chips are stored without footprint, position or cell."
            )
        chip_size = options.chip_size or encoder.info.image_size
        windows = chip_windows(info.width, info.height, chip_size, options.stride or chip_size, options.edge)
        stored = writer.store.chip_ids_of_source(sha)
        scaling = value_scaling(dataset, info, bands, options.value_range)

        identifiers = [
            chip_id(sha, int(w.col_off), int(w.row_off), int(w.width), int(w.height)) for w in windows
        ]
        todo = [(i, w) for i, w in zip(identifiers, windows) if i not in stored]
        file_rows = _FileRows(path=path, sha=sha, info=info, bands=bands, already_stored=len(windows) - len(todo))

        # Unless the user set GDAL_CACHEMAX, cap GDAL's block cache at what one row of chips needs,
        # so that memory does not grow with the scene.
        cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": block_cache_bytes(dataset, info, chip_size, bands)}
        with rasterio.Env(**cache):
            for start in range(0, len(todo), PLACE_SLICE):
                part = todo[start : start + PLACE_SLICE]
                places = chip_places(info, [w for _, w in part])
                for (identifier, window), place in zip(part, places):
                    chip = read_chip(dataset, info, window, bands, scaling)
                    if not chip.valid.any():
                        file_rows.skipped_nodata += 1
                        continue
                    writer.add(identifier, chip, place, file_rows)
                    progress("chip", {"path": str(path)})

    report.files_read += 1
    report.chips_already_stored += file_rows.already_stored
    report.chips_skipped["nodata"] += file_rows.skipped_nodata
    if file_rows.pending == 0 and file_rows.already_stored == 0:
        raise RasterError(f"{path}: every chip is entirely nodata, so nothing was stored from it.")
    writer.finish_file(file_rows)


@dataclass
class _FileRows:
    path: Path
    sha: str
    info: ImageInfo
    bands: list[int]
    pending: int = 0
    already_stored: int = 0
    skipped_nodata: int = 0


class _ChipWriter:
    """Batches chips through the encoder and commits rows, at file ends, every `commit_every` rows."""

    def __init__(self, store: Store, encoder: ImageEncoder, batch_size: int, commit_every: int):
        self.store = store
        self.commit_every = max(1, commit_every)
        self.encoder = encoder
        self.batch_size = batch_size
        self.schema = images_schema(encoder.info.embedding_dim)
        self.resolution = store.manifest.h3_resolution
        self.chips: list[tuple[str, Chip, Place | None, _FileRows]] = []
        self.rows: list[dict] = []
        self.embeddings: list[np.ndarray] = []
        self.finished_files: list[_FileRows] = []
        self.written = 0

    def add(self, identifier: str, chip: Chip, place: Place | None, file_rows: _FileRows) -> None:
        self.chips.append((identifier, chip, place, file_rows))
        file_rows.pending += 1
        if len(self.chips) >= self.batch_size:
            self._embed()
        # Commit inside a large scene too, so that memory stays bounded; the file is marked complete
        # only by `flush` after its last chip.
        if len(self.rows) >= self.commit_every:
            self._commit()

    def finish_file(self, file_rows: _FileRows) -> None:
        self.finished_files.append(file_rows)
        if len(self.rows) + len(self.chips) >= self.commit_every:
            self.flush()

    def discard(self, path: Path) -> None:
        """Drop every chip of `path`: those still buffered, and those already committed."""
        keep = [i for i, row in enumerate(self.rows) if row["source"] != str(path)]
        self.rows = [self.rows[i] for i in keep]
        self.embeddings = [self.embeddings[i] for i in keep]
        self.chips = [c for c in self.chips if c[3].path != path]
        if self.store.has_table("images"):
            table = self.store.table("images")
            source = str(path).replace("'", "''")
            if table.count_rows(f"source = '{source}'"):
                table.delete(f"source = '{source}'")

    def flush(self) -> None:
        self._embed()
        self._commit()
        self._complete_files()

    def _embed(self) -> None:
        if not self.chips:
            return
        # Chips of different sizes (whole small images) cannot share one tensor.
        shapes = {chip.values.shape for _, chip, _, _ in self.chips}
        groups = [[c for c in self.chips if c[1].values.shape == shape] for shape in shapes]
        for group in groups:
            values = np.stack([chip.values for _, chip, _, _ in group])
            valid = np.stack([chip.valid for _, chip, _, _ in group])
            vectors = self.encoder.embed(values, valid)
            for (identifier, chip, place, file_rows), vector in zip(group, vectors):
                self.rows.append(self._row(identifier, chip, place, file_rows))
                self.embeddings.append(vector)
        self.chips = []

    def _row(self, identifier: str, chip: Chip, place: Place | None, file_rows: _FileRows) -> dict:
        info = file_rows.info
        window = chip.window
        return {
            "chip_id": identifier,
            "source": str(file_rows.path),
            "source_sha256": file_rows.sha,
            "window": {
                "col": int(window.col_off),
                "row": int(window.row_off),
                "width": int(window.width),
                "height": int(window.height),
            },
            "crs": info.crs.to_string() if info.crs is not None else None,
            "bands": file_rows.bands,
            "dtype": info.dtype,
            "valid_fraction": chip.valid_fraction,
            "footprint": place.footprint if place else None,
            "lon": place.lon if place else None,
            "lat": place.lat if place else None,
            "cell": int(h3.str_to_int(h3.latlng_to_cell(place.lat, place.lon, self.resolution))) if place else None,
            "acquired": info.acquired,
        }

    def _commit(self) -> None:
        if not self.rows:
            return
        # Rows in cell order make the scalar index on `cell` and queries by place read fewer pages.
        order = sorted(range(len(self.rows)), key=lambda i: (self.rows[i]["cell"] is None, self.rows[i]["cell"] or 0))
        rows = [self.rows[i] for i in order]
        vectors = np.stack([self.embeddings[i] for i in order]).astype(np.float32)
        columns = {name: [row[name] for row in rows] for name in self.schema.names if name != "embedding"}
        arrays = [pa.array(columns[name], type=self.schema.field(name).type) for name in columns]
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
        table = pa.Table.from_arrays([*arrays, embedding], schema=self.schema)
        written = self.store.add_rows("images", "chip_id", table, self.schema)
        self.written += written
        logger.info("committed %d chips (%d new)", len(rows), written)
        self.rows, self.embeddings = [], []

    def _complete_files(self) -> None:
        if not self.finished_files:
            return
        now = datetime.now(timezone.utc)
        sources = pa.table(
            {
                "source_sha256": [f.sha for f in self.finished_files],
                "source": [str(f.path) for f in self.finished_files],
                "chips": [f.pending + f.already_stored for f in self.finished_files],
                "skipped_nodata": [f.skipped_nodata for f in self.finished_files],
                "completed": [now] * len(self.finished_files),
            },
            schema=SOURCES_SCHEMA,
        )
        self.store.mark_sources_completed(sources)
        self.finished_files = []
