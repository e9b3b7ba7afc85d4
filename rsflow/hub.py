"""Finding model checkpoints (local folder or Hugging Face hub id), hashing weights, choosing a device."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HASH_CHUNK = 8 * 1024 * 1024


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a local folder nor a hub id in the local cache."""


def resolve_model_dir(model: str) -> Path:
    """Return the local folder of `model`: a folder as is, or a hub id from the Hugging Face cache.

    A hub id is looked up in the local cache first and downloaded only where the hub is reachable
    and `HF_HUB_OFFLINE` is not set, as `huggingface_hub.snapshot_download` does.
    """
    if not model or not model.strip():
        raise ModelNotFoundError("No model given. Pass a Hugging Face hub id or a local folder.")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: the folder has no config.json, so it is not a Hugging Face checkpoint.")
        return path.resolve()
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"{model}: no such model folder.")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id=model))
    except HFValidationError as error:
        raise ModelNotFoundError(f"{model}: neither a local folder nor a valid hub id ({error}).") from error
    except Exception as error:  # noqa: BLE001 - the hub raises many kinds of network and cache errors
        raise ModelNotFoundError(
            f"{model}: not a local folder, and the hub id could not be found in the local cache or "
            f"downloaded ({type(error).__name__}: {error}). Download the checkpoint first, or pass its "
            "local folder."
        ) from error


def weights_sha256(model_dir: Path) -> str:
    """Hash the checkpoint's weight files (sorted by name) into one SHA-256 hex digest."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelNotFoundError(f"{model_dir}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in the folder.")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def best_device(requested: str | None = None) -> str:
    """Return `requested`, or the best device present: CUDA, then Apple MPS, then the CPU."""
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (a decoder left out is expected here)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
