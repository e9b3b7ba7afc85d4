"""Finding model checkpoints (local folder or Hugging Face hub id), hashing weights, choosing a device."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Files fetched for a hub id: configuration and tokenizer files, then the weights in either format.
HUB_METADATA_PATTERNS = ["*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt"]
HUB_SAFETENSORS_PATTERNS = ["*.safetensors"]
HUB_BIN_PATTERNS = ["*.bin"]
_HASH_CHUNK = 8 * 1024 * 1024


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a local folder nor a hub id in the local cache."""


def resolve_model_dir(
    model: str,
    *,
    allow_patterns: list[str] | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Return the local folder of a model given as a folder path or a Hugging Face hub id.

    An existing folder is returned as it is, once it is checked to hold a `config.json`. Anything
    else is taken as a hub id and resolved with `huggingface_hub.snapshot_download`, which fetches
    only the files that match `allow_patterns` (default: metadata and safetensors weights). With
    `local_files_only` (default: true when the environment variable `HF_HUB_OFFLINE` is set), only
    the local cache under `cache_dir` (default: the Hugging Face cache) is read.

    Raises:
        ModelNotFoundError: `model` is neither a checkpoint folder nor a hub id that can be resolved.
    """
    if not model or not model.strip():
        raise ModelNotFoundError("No model given. Pass a Hugging Face hub id or a local folder.")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: the folder has no config.json, so it is not a Hugging Face checkpoint.")
        return path
    if path.exists():
        raise ModelNotFoundError(f"model {model!r} is a file; pass the checkpoint folder or a hub id")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    patterns = allow_patterns if allow_patterns is not None else HUB_METADATA_PATTERNS + HUB_SAFETENSORS_PATTERNS
    try:
        folder = snapshot_download(
            repo_id=model, allow_patterns=patterns, local_files_only=local_files_only, cache_dir=cache_dir
        )
    except (LocalEntryNotFoundError, ValueError, OSError) as error:
        # ValueError covers a string that is not a valid repo id (huggingface_hub's HFValidationError).
        raise ModelNotFoundError(
            f"model {model!r} is not a local folder and could not be resolved as a Hugging Face hub id "
            f"({type(error).__name__}: {error}). Pass a local checkpoint folder, or download the model "
            "into the Hugging Face cache first (`hf download ID`) and set HF_HUB_OFFLINE=1."
        ) from error
    return Path(folder)


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
