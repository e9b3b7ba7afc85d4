"""The store: one folder that is a LanceDB database, with the manifest beside the tables.

Every write is a LanceDB commit, which is atomic: a process killed during a write leaves the table at
its previous version. Chips and texts are written with `merge_insert` on their ids, so writing a row
that is already there adds nothing. That makes a second ingest a no-op, and lets a rerun complete an
interrupted one without duplicates.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from rsflow.store.manifest import MANIFEST_NAME, Manifest
from rsflow.store.schema import PAIRS_SCHEMA, SOURCES_SCHEMA, images_schema, texts_schema

logger = logging.getLogger(__name__)

DEFAULT_STORE = "rsflow-store"
STORE_VARIABLE = "RSFLOW_STORE"
TABLES = ("images", "texts", "pairs", "sources")


class StoreError(ValueError):
    """A store folder that does not exist, is not a store, or cannot serve a request."""


def default_store_dir() -> Path:
    """Return the store named by `RSFLOW_STORE`, or `./rsflow-store`."""
    return Path(os.environ.get(STORE_VARIABLE) or DEFAULT_STORE)


class Store:
    """A store folder: the LanceDB connection, its tables and its manifest."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest
        # Imported here: importing lancedb takes seconds, which `rsflow --help` should not pay.
        import lancedb

        self.db = lancedb.connect(str(path))

    @classmethod
    def open(cls, path: str | Path) -> "Store":
        """Open an existing store, raising `StoreError` when `path` is not one."""
        path = Path(path)
        if not (path / MANIFEST_NAME).is_file():
            if path.exists() and any(path.iterdir()):
                raise StoreError(f"{path}: not an rsflow store (no {MANIFEST_NAME}).")
            raise StoreError(
                f"{path}: no store here. Create one with `rsflow ingest IMAGES --store {path} --encoder MODEL`."
            )
        return cls(path, Manifest.load(path))

    @classmethod
    def open_or_create(cls, path: str | Path, h3_resolution: int | None = None) -> "Store":
        """Open the store at `path`, or create it with `h3_resolution` when the folder has none."""
        path = Path(path)
        if (path / MANIFEST_NAME).is_file():
            store = cls.open(path)
            if h3_resolution is not None and h3_resolution != store.manifest.h3_resolution:
                raise StoreError(
                    f"{path}: the store uses H3 resolution {store.manifest.h3_resolution}, not "
                    f"{h3_resolution}. Leave --h3-resolution out, or use another store."
                )
            return store
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path}: the folder is not empty and is not an rsflow store; choose another folder.")
        manifest = Manifest() if h3_resolution is None else Manifest(h3_resolution=h3_resolution)
        if not 0 <= manifest.h3_resolution <= 15:
            raise StoreError(f"H3 resolution must be between 0 and 15, got {manifest.h3_resolution}.")
        manifest.save(path)
        return cls(path, manifest)

    def save_manifest(self) -> None:
        self.manifest.save(self.path)

    # Tables ---------------------------------------------------------------------------------------

    def has_table(self, name: str) -> bool:
        return name in self.db.list_tables().tables

    def table(self, name: str):
        """Return the LanceDB table `name`, raising `StoreError` when the store has none yet."""
        if not self.has_table(name):
            raise StoreError(f"{self.path}: the store has no {name} table yet.")
        return self.db.open_table(name)

    def ensure_table(self, name: str, schema: pa.Schema):
        if self.has_table(name):
            return self.db.open_table(name)
        return self.db.create_table(name, schema=schema)

    def images(self, embedding_dim: int | None = None):
        if embedding_dim is None:
            return self.table("images")
        return self.ensure_table("images", images_schema(embedding_dim))

    def texts(self, prefix_slots: int | None = None, prior_dim: int | None = None):
        if prefix_slots is None or prior_dim is None:
            return self.table("texts")
        return self.ensure_table("texts", texts_schema(prefix_slots, prior_dim))

    def count(self, name: str) -> int:
        return self.db.open_table(name).count_rows() if self.has_table(name) else 0

    def version(self, name: str) -> int | None:
        return self.db.open_table(name).version if self.has_table(name) else None

    # Writes ---------------------------------------------------------------------------------------

    def add_rows(self, name: str, key: str, rows: pa.Table, schema: pa.Schema) -> int:
        """Insert the rows of `rows` whose `key` is not in table `name` yet; return how many were new."""
        if rows.num_rows == 0:
            return 0
        table = self.ensure_table(name, schema)
        result = table.merge_insert(key).when_not_matched_insert_all().execute(rows.cast(schema))
        return int(result.num_inserted_rows)

    def completed_sources(self) -> set[str]:
        """Return the content hashes of image files whose chips are all in the store."""
        if not self.has_table("sources"):
            return set()
        column = self.db.open_table("sources").to_lance().to_table(columns=["source_sha256"])["source_sha256"]
        return set(column.to_pylist())

    def mark_sources_completed(self, rows: pa.Table) -> None:
        self.add_rows("sources", "source_sha256", rows, SOURCES_SCHEMA)

    def chip_ids_of_source(self, source_sha256: str) -> set[str]:
        """Return the chip ids already stored for one file content (a partly written file)."""
        if not self.has_table("images"):
            return set()
        dataset = self.db.open_table("images").to_lance()
        found = dataset.to_table(columns=["chip_id"], filter=pc.field("source_sha256") == source_sha256)
        return set(found["chip_id"].to_pylist())

    def replace_pairs(self, pairs: pa.Table) -> None:
        """Replace the whole `pairs` table; pairing is recomputed from the images and texts tables."""
        # Dropped and created anew, not overwritten: an overwrite of a missing table makes Lance log a
        # warning on stderr. The FAISS index is of the images table, so it is not affected.
        if self.has_table("pairs"):
            self.db.drop_table("pairs")
        table = self.db.create_table("pairs", schema=PAIRS_SCHEMA)
        if pairs.num_rows:
            table.add(pairs.cast(PAIRS_SCHEMA))
            # Asking looks pairs up by chip; the scalar index spares a scan of the whole table.
            from lancedb.index import BTree

            table.create_index("chip_id", config=BTree(), replace=True)

    def finish_texts(self) -> None:
        """(Re)build the scalar indexes of the texts table on `text_id` and `cell`, which asking filters on."""
        from lancedb.index import BTree

        table = self.table("texts")
        for column in ("text_id", "cell"):
            table.create_index(column, config=BTree(), replace=True)

    def finish_images(self) -> None:
        """Compact the images table and (re)build the scalar index on `cell`."""
        from lancedb.index import BTree

        table = self.table("images")
        table.optimize()
        table.create_index("cell", config=BTree(), replace=True)
