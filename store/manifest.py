"""The store manifest: what produced the vectors of a store, so that no other model writes into it.

The manifest is `manifest.json` in the store folder, written atomically (a temporary file renamed
over the old one), so an interrupted write leaves the previous manifest in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# H3 resolution 7 cells cover 5.16 km^2 on average (an edge of about 1.4 km), close to the ground
# area of one 224-pixel chip of 10 m imagery (2.24 km square), the Sentinel-2 case. A cell then
# holds about one chip, so "same cell" means "same place" for point texts, and a split by cell keeps
# neighbouring chips apart. Aerial imagery at decimetre resolution wants a finer level (11 to 13).
DEFAULT_H3_RESOLUTION = 7


class StoreMismatchError(ValueError):
    """Vectors from another model than the store's, or a store of another format version."""


@dataclass
class Manifest:
    """The record of what produced a store's vectors: encoder, LLM, prefix slots, H3 resolution, format."""

    h3_resolution: int = DEFAULT_H3_RESOLUTION
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    encoder: dict | None = None
    llm: dict | None = None
    prefix_slots: int | None = None

    @classmethod
    def load(cls, store_dir: Path) -> "Manifest":
        path = store_dir / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise StoreMismatchError(f"{path}: the manifest is not valid JSON ({error}).") from error
        if data.get("format_version") != FORMAT_VERSION:
            raise StoreMismatchError(
                f"{store_dir}: store format version {data.get('format_version')} is not supported "
                f"by this rsflow (format {FORMAT_VERSION}). Ingest into a new store."
            )
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})

    def save(self, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=store_dir, prefix=".manifest-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(asdict(self), out, indent=2)
            out.write("\n")
        os.replace(temporary, store_dir / MANIFEST_NAME)

    def check_encoder(self, encoder: dict, store_dir: Path) -> None:
        """Raise `StoreMismatchError` unless `encoder` has the weights of the store's encoder."""
        if self.encoder is None:
            return
        if encoder["weights_sha256"] != self.encoder["weights_sha256"]:
            raise StoreMismatchError(
                f"{store_dir}: the store contains embeddings of encoder {self.encoder['model_id']} "
                f"(weights sha256 {self.encoder['weights_sha256'][:12]}), not of {encoder['model_id']} "
                f"(weights sha256 {encoder['weights_sha256'][:12]}). Leave --encoder out to use the "
                "store's encoder, or ingest into another store."
            )

    def check_llm(self, llm: dict, store_dir: Path) -> None:
        """Raise `StoreMismatchError` unless `llm` has the input embeddings of the store's LLM."""
        if self.llm is None:
            return
        if llm["weights_sha256"] != self.llm["weights_sha256"]:
            raise StoreMismatchError(
                f"{store_dir}: the store contains priors of LLM {self.llm['model_id']} (embedding sha256 "
                f"{self.llm['weights_sha256'][:12]}), not of {llm['model_id']} (embedding sha256 "
                f"{llm['weights_sha256'][:12]}). Leave --llm out to use the store's LLM, or use another store."
            )
