"""The FAISS index of the images table's embeddings, saved beside the store, for nearest-neighbour search.

The index lives in `<store>/faiss/`:
- `index.faiss`: the FAISS index (always the CPU copy), one vector per chip, in table order.
- `ids.parquet`: the chip ids in index order, because a FAISS label is a position in this column.
- `index.json`: what the index was built from: the images table version and the id of the Lance
  transaction that made it, the number of rows, the dimension, the metric and the index type.
- `.lock`: a lock file, so that one process at a time checks, builds and saves the index.

Metric: cosine similarity. Vectors are L2-normalized before they are added or searched, so an inner
product index (`IndexFlatIP`) ranks by cosine similarity. Results report the cosine distance,
1 - similarity, which is 0 for a stored chip searched with its own embedding and lies in [0, 2].

Index types:
- "flat" (the default): exact search over every vector. It needs no training and gives the exact
  neighbours, at a cost linear in the number of rows per query.
- "ivf": `IndexIVFFlat` (the inverted file of Sivic and Zisserman, "Video Google",
  https://doi.org/10.1109/ICCV.2003.1238663), for stores of more than about 100k chips. A spherical
  k-means over a sample of the rows places nlist = 4 * sqrt(N) centroids, the low end of the range in
  the Faiss wiki (https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index).
  A query scans the vectors of its `nprobe` nearest lists only, so results are approximate:
  raise `nprobe` for recall, lower it for speed.

Staleness: `ChipIndex.open` compares the saved record with the table. The same version, made by
the same transaction, loads the saved index. A table that has only grown since (appends, inserts,
compaction, new table indexes) with the indexed chip ids still first and in order gets the new rows
added. Anything else (deleted or updated rows, an overwrite, a restore, a damaged or missing file,
a version history cleaned up since) rebuilds the index from the table. `ChipIndex.status` and
`ChipIndex.reason` record which of these happened and why.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rsflow.store.db import Store, StoreError
from rsflow.store.schema import vectors_to_numpy

logger = logging.getLogger(__name__)

INDEX_DIR = "faiss"
INDEX_FILE = "index.faiss"
RECORD_FILE = "index.json"
IDS_FILE = "ids.parquet"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1
METRIC = "cosine"
INDEX_TYPES = ("flat", "ivf")
DEFAULT_NPROBE = 32

# Rows per record batch read from Lance: 8192 x 768 float32 is 25 MB.
READ_BATCH_ROWS = 8192
# Faiss's k-means warns below 39 training points per centroid, so nlist is capped at N / 39 and
# the training sample has 40 points per list.
MIN_POINTS_PER_LIST = 39
TRAIN_POINTS_PER_LIST = 40
# IVF centroids are trained once. New rows go into the existing lists until the table has more
# than this many times the rows that the centroids were trained on. Then the index is rebuilt.
IVF_RETRAIN_GROWTH = 2.0
# Faiss computes a flat search with BLAS only when a batch has at least this many queries. The faiss
# source has long set the threshold to 20, and the faiss-cpu 1.15.1 wheel reports 128000. On a 2-core
# AMD EPYC machine (bench/bench_search.py, faiss-cpu 1.15.1 and its bundled OpenBLAS), batches of 100
# queries ran 1.3 to 3.5 times slower on the BLAS path. So a lower threshold is raised to this value,
# and a higher one is left alone.
MIN_BLAS_QUERIES = 1000

# Lance operations that keep every stored row with its values. Any other operation forces a rebuild.
# pylance 14 returns a bare `BaseOperation` for the operations that it has no Python class for, such
# as the one that `optimize()` commits before a compaction. None of those writes rows.
_ROW_KEEPING_OPERATIONS = {"Append", "Rewrite", "CreateIndex", "UpdateConfig", "BaseOperation"}

IndexStatus = Literal["built", "loaded", "extended", "rebuilt"]


@dataclass(frozen=True)
class Neighbour:
    """One search result: a stored chip, its cosine distance to the query, and its rank (1 = nearest)."""

    chip_id: str
    distance: float
    rank: int


@dataclass
class IndexRecord:
    """The contents of `index.json`: what a saved index was built from."""

    table_version: int
    table_transaction: str | None
    rows: int
    dimension: int
    index_type: str
    nlist: int | None = None
    trained_rows: int | None = None
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    updated: str = ""

    @classmethod
    def load(cls, path: Path) -> "IndexRecord":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


@dataclass
class _TableState:
    """The images table at the moment an index is opened: one Lance snapshot, read consistently."""

    dataset: Any
    version: int
    transaction: str | None
    rows: int
    dimension: int


class ChipIndex:
    """The FAISS index of a store's chip embeddings, as the module docstring describes.

    Open it with `ChipIndex.open(store)`, then search it with `index.search(vectors, k)`.
    """

    def __init__(
        self,
        folder: Path,
        index: faiss.Index,
        chip_ids: pa.Array,
        record: IndexRecord,
        status: IndexStatus,
        reason: str,
        nprobe: int,
    ):
        self.folder = folder
        self.record = record
        self.status: IndexStatus = status
        self.reason = reason
        self._index = index
        self._chip_ids = chip_ids
        self._gpu_index: faiss.Index | None = None
        self._nprobe = 1
        self.nprobe = nprobe

    # Opening --------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        store: Store,
        *,
        rebuild: bool = False,
        index_type: str | None = None,
        nprobe: int = DEFAULT_NPROBE,
    ) -> "ChipIndex":
        """Load, extend or rebuild the index of `store`'s images table, whichever keeps it current.

        `index_type` is "flat" or "ivf". None keeps the type of the saved index ("flat" when there is
        none), and a type other than the saved one rebuilds. `nprobe` is the number of IVF lists that
        a query scans. Raises `StoreError` when the store has no images table.
        """
        if index_type is not None and index_type not in INDEX_TYPES:
            raise ValueError(f"index type {index_type!r} is not supported. Use one of {', '.join(INDEX_TYPES)}.")
        folder = store.path / INDEX_DIR
        with _index_lock(folder):
            chip_index = cls._open_current(store, folder, rebuild, index_type, nprobe)

        logger.info(
            "FAISS index of %s %s: %s. It has %d chips of images table version %d",
            store.path, chip_index.status, chip_index.reason, len(chip_index), chip_index.version,
        )
        return chip_index

    @classmethod
    def _open_current(
        cls, store: Store, folder: Path, rebuild: bool, index_type: str | None, nprobe: int
    ) -> "ChipIndex":
        table = _read_table_state(store)
        saved, problem = _read_record(folder)
        if rebuild:
            problem = "a rebuild was requested"
        if problem is None:
            problem = _record_problem(saved, table, index_type)

        if problem is None and saved.table_version == table.version:
            return cls._open_saved(folder, saved, table, nprobe)
        if problem is None:
            return cls._extend_saved(folder, saved, table, nprobe)
        status: IndexStatus = "rebuilt" if (folder / RECORD_FILE).is_file() else "built"
        new_type = index_type or (saved.index_type if saved else "flat")
        return cls._build(folder, table, new_type, nprobe, status, problem)

    @classmethod
    def _open_saved(cls, folder: Path, saved: IndexRecord, table: _TableState, nprobe: int) -> "ChipIndex":
        loaded, problem = _read_saved_index(folder, saved)
        if loaded is None:
            return cls._build(folder, table, saved.index_type, nprobe, "rebuilt", problem)
        index, chip_ids = loaded
        return cls(folder, index, chip_ids, saved, "loaded", f"the saved index matches version {table.version}", nprobe)

    @classmethod
    def _extend_saved(cls, folder: Path, saved: IndexRecord, table: _TableState, nprobe: int) -> "ChipIndex":
        """Add the rows that the table gained since `saved` was built, or rebuild when it changed otherwise."""
        problem = _history_problem(table.dataset, saved)
        if problem is None:
            problem = _growth_problem(saved, table)
        loaded = None
        if problem is None:
            loaded, problem = _read_saved_index(folder, saved)
        if problem is None:
            problem = _prefix_problem(table.dataset, loaded[1])
        if problem is not None:
            return cls._build(folder, table, saved.index_type, nprobe, "rebuilt", problem)

        index, chip_ids = loaded
        new_ids = _add_rows(index, table.dataset, offset=saved.rows)
        chip_ids = pa.concat_arrays([chip_ids, new_ids])
        record = IndexRecord(
            table_version=table.version,
            table_transaction=table.transaction,
            rows=len(chip_ids),
            dimension=table.dimension,
            index_type=saved.index_type,
            nlist=saved.nlist,
            trained_rows=saved.trained_rows,
        )
        reason = f"added {len(new_ids)} new chips of versions {saved.table_version + 1} to {table.version}"
        chip_index = cls(folder, index, chip_ids, record, "extended", reason, nprobe)
        chip_index._save()
        return chip_index

    @classmethod
    def _build(
        cls, folder: Path, table: _TableState, index_type: str, nprobe: int, status: IndexStatus, reason: str
    ) -> "ChipIndex":
        """Build a new index from every row of the table snapshot and save it."""
        nlist = None
        trained_rows = None
        if index_type == "ivf" and table.rows == 0:
            logger.warning("%s: the images table is empty, so a flat index is built instead of an IVF one", folder)
            index_type = "flat"
        if index_type == "ivf":
            index, nlist = _train_ivf(table.dataset, table.rows, table.dimension)
            trained_rows = table.rows
        else:
            index = faiss.IndexFlatIP(table.dimension)

        chip_ids = _add_rows(index, table.dataset, offset=0)
        record = IndexRecord(
            table_version=table.version,
            table_transaction=table.transaction,
            rows=len(chip_ids),
            dimension=table.dimension,
            index_type=index_type,
            nlist=nlist,
            trained_rows=trained_rows,
        )
        chip_index = cls(folder, index, chip_ids, record, status, reason, nprobe)
        chip_index._save()
        return chip_index

    # Properties -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def version(self) -> int:
        """The images table version that the index is current with."""
        return self.record.table_version

    @property
    def dimension(self) -> int:
        return self.record.dimension

    @property
    def index_type(self) -> str:
        return self.record.index_type

    @property
    def metric(self) -> str:
        return self.record.metric

    @property
    def nprobe(self) -> int:
        """The number of IVF lists that a query scans (unused by a flat index)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"nprobe must be at least 1, got {value}.")
        self._nprobe = int(value)
        if self.index_type == "ivf":
            faiss.extract_index_ivf(self._index).nprobe = self._nprobe
            # The GPU copy took nprobe from the CPU index when it was made, so make it again.
            self._gpu_index = None

    # Search ---------------------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int = 10) -> list[list[Neighbour]]:
        """Return the `k` nearest stored chips of each row of `vectors` ([Q, D]), nearest first.

        A row gets fewer than `k` neighbours when the store has fewer chips, or, with an IVF index,
        when its `nprobe` lists contain fewer.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        queries = self._prepare_queries(vectors)
        if len(queries) == 0 or len(self) == 0:
            return [[] for _ in range(len(queries))]

        _raise_blas_threshold()
        similarities, positions = self._search_index().search(queries, min(k, len(self)))

        results = []
        for row_positions, row_similarities in zip(positions, similarities):
            found = row_positions >= 0
            chip_ids = self._chip_ids.take(pa.array(row_positions[found])).to_pylist()
            # Rounding can put a vector's similarity to itself a little above 1.
            distances = np.clip(1.0 - row_similarities[found], 0.0, 2.0)
            ranked = enumerate(zip(chip_ids, distances), start=1)
            results.append([Neighbour(chip_id, float(distance), rank) for rank, (chip_id, distance) in ranked])
        return results

    def _prepare_queries(self, vectors: np.ndarray) -> np.ndarray:
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.dimension:
            raise ValueError(
                f"query vectors have shape {array.shape}, expected (Q, {self.dimension}), the store's embedding "
                "size. Pass one vector as vector[None, :]."
            )
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"query vectors must be numbers, got dtype {array.dtype}.")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("query vectors contain NaN or infinity. Check the encoder output.")
        return _normalize(array)

    def _search_index(self) -> faiss.Index:
        """Return the index to search: a copy on every GPU when faiss-gpu finds one, else the CPU index."""
        if self._gpu_index is None and faiss.get_num_gpus() > 0:
            # NOTE: the CI machines have no GPU and install faiss-cpu, so this branch has not run there.
            self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
        return self._gpu_index if self._gpu_index is not None else self._index

    # Saving ---------------------------------------------------------------------------------------

    def _save(self) -> None:
        """Write the index, the chip ids and the record, each through a temporary file and a rename.

        The old record is removed first and the new one written last. A process killed in between
        leaves no record, so the next open rebuilds instead of pairing a new index with an old record.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / RECORD_FILE).unlink(missing_ok=True)
        _write_atomically(self.folder / INDEX_FILE, lambda path: faiss.write_index(self._index, str(path)))
        ids_table = pa.table({"chip_id": self._chip_ids})
        _write_atomically(self.folder / IDS_FILE, lambda path: pq.write_table(ids_table, path))
        self.record.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _write_atomically(self.folder / RECORD_FILE, lambda path: path.write_text(self.record.to_json()))


# Reading the table ---------------------------------------------------------------------------------


def _read_table_state(store: Store) -> _TableState:
    dataset = store.table("images").to_lance()
    field = dataset.schema.field("embedding")
    if not pa.types.is_fixed_size_list(field.type):
        raise StoreError(f"{store.path}: the images table's embedding column is {field.type}, not a fixed-size list.")
    return _TableState(
        dataset=dataset,
        version=dataset.version,
        transaction=_transaction_id(dataset, dataset.version),
        rows=dataset.count_rows(),
        dimension=field.type.list_size,
    )


def _read_transaction(dataset, version: int):
    """Return the Lance transaction that made `version`, or None when its files were cleaned up."""
    try:
        return dataset.read_transaction(version)
    except OSError:
        return None


def _transaction_id(dataset, version: int) -> str | None:
    transaction = _read_transaction(dataset, version)
    return None if transaction is None else transaction.uuid


def _embedding_batches(dataset, offset: int) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """Yield (chip ids, normalized float32 embeddings) of the rows from `offset` on, in table order."""
    batches = dataset.to_batches(
        columns=["chip_id", "embedding"], offset=offset or None, batch_size=READ_BATCH_ROWS, scan_in_order=True
    )
    for batch in batches:
        chip_ids = batch.column("chip_id")
        vectors = vectors_to_numpy(batch.column("embedding"))
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = chip_ids[int(np.argmin(finite))].as_py()
            raise StoreError(
                f"chip {bad} has NaN or infinite values in its embedding. Delete its rows and ingest its file again."
            )
        yield chip_ids, _normalize(vectors)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    """Return `vectors` scaled to unit L2 norm. A zero vector stays zero, at cosine distance 1 from all."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float32), where=norms > 0)


def _add_rows(index: faiss.Index, dataset, offset: int) -> pa.Array:
    """Add the table's rows from `offset` on to `index`, in batches, and return their chip ids."""
    id_chunks = []
    for chip_ids, vectors in _embedding_batches(dataset, offset):
        index.add(vectors)
        id_chunks.append(chip_ids)
    if not id_chunks:
        return pa.array([], pa.string())
    return pa.concat_arrays([chunk.cast(pa.string()) for chunk in id_chunks])


def _train_ivf(dataset, rows: int, dimension: int) -> tuple[faiss.Index, int]:
    """Return an `IndexIVFFlat` whose centroids are trained on a sample of the table, and its nlist."""
    nlist = max(1, min(round(4 * math.sqrt(rows)), rows // MIN_POINTS_PER_LIST))
    sample_size = min(rows, TRAIN_POINTS_PER_LIST * nlist)
    # A fixed seed makes a rebuild of the same table give the same lists.
    positions = np.sort(np.random.default_rng(0).choice(rows, size=sample_size, replace=False))
    sample = dataset.take(positions, columns=["embedding"])
    vectors = _normalize(vectors_to_numpy(sample.column("embedding")))

    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    # Spherical k-means keeps the centroids on the unit sphere, where the normalized vectors lie.
    index.cp.spherical = True
    logger.info("training %d IVF lists on %d of %d chips", nlist, sample_size, rows)
    index.train(vectors)
    return index, nlist


# Checking a saved index ----------------------------------------------------------------------------


def _read_record(folder: Path) -> tuple[IndexRecord | None, str | None]:
    """Return the saved record, or None and the reason why there is none to use."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return None, f"no saved index in {folder}"
    try:
        return IndexRecord.load(path), None
    except (json.JSONDecodeError, TypeError) as error:
        logger.warning("%s is not a valid index record (%s), so the index is rebuilt", path, error)
        return None, f"{path} is not a valid index record"


def _record_problem(saved: IndexRecord, table: _TableState, index_type: str | None) -> str | None:
    """Return why the saved record cannot be used with the table as it is now, or None."""
    if saved.format_version != FORMAT_VERSION or saved.metric != METRIC:
        return f"the saved index has format {saved.format_version} and metric {saved.metric}"
    if saved.dimension != table.dimension:
        return f"the saved index has dimension {saved.dimension}, the table's embeddings {table.dimension}"
    if index_type is not None and index_type != saved.index_type:
        return f"the saved index is {saved.index_type} and {index_type} was requested"
    if saved.table_version > table.version:
        return f"the table is at version {table.version}, older than the index's version {saved.table_version}"
    if saved.table_version == table.version and saved.table_transaction != table.transaction:
        return f"version {table.version} of the table was written by another transaction, so the table was recreated"
    return None


def _history_problem(dataset, saved: IndexRecord) -> str | None:
    """Return why the table versions since `saved` may have changed indexed rows, or None."""
    if _transaction_id(dataset, saved.table_version) != saved.table_transaction:
        return f"version {saved.table_version} of the table is no longer the one the index was built from"
    for version in range(saved.table_version + 1, dataset.version + 1):
        transaction = _read_transaction(dataset, version)
        if transaction is None:
            return f"the record of table version {version} is not available (cleaned up), so changes cannot be checked"
        operation = transaction.operation
        name = type(operation).__name__
        if name == "Update" and (operation.updated_fragments or operation.removed_fragment_ids):
            return f"table version {version} updated or removed stored rows"
        if name != "Update" and name not in _ROW_KEEPING_OPERATIONS:
            return f"table version {version} is a {name} operation, which can change stored rows"
    return None


def _growth_problem(saved: IndexRecord, table: _TableState) -> str | None:
    if saved.index_type == "ivf" and table.rows > IVF_RETRAIN_GROWTH * (saved.trained_rows or 0):
        return f"the IVF lists were trained on {saved.trained_rows} chips and the table now has {table.rows}"
    return None


def _prefix_problem(dataset, indexed_ids: pa.Array) -> str | None:
    """Return why the table's first chip ids are not the indexed ones, in order, or None."""
    current = dataset.to_table(columns=["chip_id"], limit=len(indexed_ids), scan_in_order=True)["chip_id"]
    current = current.combine_chunks().cast(pa.string())
    if len(current) < len(indexed_ids) or not current.equals(indexed_ids):
        return "the indexed chips are no longer the first rows of the table, in the same order"
    return None


def _read_saved_index(folder: Path, saved: IndexRecord) -> tuple[tuple[faiss.Index, pa.Array] | None, str | None]:
    """Return the saved FAISS index and chip ids, or None and why they cannot be used."""
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
        chip_ids = pq.read_table(folder / IDS_FILE, columns=["chip_id"])["chip_id"].combine_chunks().cast(pa.string())
    except (RuntimeError, OSError, KeyError, pa.ArrowException) as error:
        logger.warning("the saved index in %s cannot be read (%s), so it is rebuilt", folder, error)
        return None, f"the saved index in {folder} cannot be read"

    if index.ntotal != saved.rows or len(chip_ids) != saved.rows or index.d != saved.dimension:
        return None, (
            f"the saved index in {folder} is incomplete: {index.ntotal} vectors of dimension {index.d} and "
            f"{len(chip_ids)} chip ids, where its record says {saved.rows} of dimension {saved.dimension}"
        )
    return (index, chip_ids), None


# Helpers -------------------------------------------------------------------------------------------


@contextmanager
def _index_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` so that one process at a time checks, builds and saves the index.

    A second process waits, then finds the index current and loads it. A folder that cannot be
    written (a read-only store) is opened without the lock.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a")
    except OSError as error:
        logger.debug("%s: no lock file (%s), so the index is opened without a lock", folder, error)
        yield
        return

    # NOTE: flock is advisory and local, so processes on other machines that share the store through
    # a network file system or object storage are not kept out.
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _raise_blas_threshold() -> None:
    """Keep flat searches of fewer than `MIN_BLAS_QUERIES` queries off faiss's BLAS path (process-wide)."""
    if faiss.cvar.distance_compute_blas_threshold < MIN_BLAS_QUERIES:
        faiss.cvar.distance_compute_blas_threshold = MIN_BLAS_QUERIES
