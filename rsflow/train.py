"""Training the flow by maximum likelihood on (image, text prior) pairs, with resumable checkpoints.

The file reads top to bottom: the configuration, the result, `train_flow`, `evaluate_flow`,
then the helpers in the order `train_flow` calls them.

A batch is a dict of numpy arrays: `embedding` float32 [B, Dv], `prior` float32 [B, K, D],
`lon` and `lat` float64 [B] with NaN where the location is missing. The two location keys
may be left out when no pair has a location. Incoming batches of any size are cut into steps
of `TrainConfig.batch_size` pairs. Each pair becomes K rows of the flow, one per slot.

Checkpoints, under `checkpoint_dir`:
    best/   flow.safetensors + flow.json of the epoch with the lowest validation NLL
    last/   the same for the latest epoch, plus optimizer.pt, rng.pt and train_state.json,
            from which `train_flow(..., resume=True)` continues
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from rsflow.flow import WEIGHTS_FILE, FlowConfig, NormalizationStats, PrefixFlow, bits_per_dim, read_flow_json

logger = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]
Batches = Callable[[], Iterable[Batch]]

OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "train_state.json"


@dataclass
class TrainConfig:
    """Settings of `train_flow`."""

    epochs: int = 20
    batch_size: int = 256  # pairs per optimizer step (K rows each)
    lr: float = 1e-3
    min_lr: float = 1e-5  # where the cosine schedule ends
    lr_schedule: str = "cosine"  # "cosine" over epochs, or "constant"
    weight_decay: float = 1e-4
    grad_clip: float | None = 1.0  # max gradient L2 norm, or None for no clipping
    seed: int = 0  # torch seed set before the first epoch, which location dropout draws from
    location_dropout: float | None = None  # None keeps the flow's FlowConfig.location_dropout
    fit_normalization: bool = True  # False keeps a normalization that was set before
    device: str = "auto"  # "auto" takes CUDA when available, else "cpu"
    log_every: int = 100  # steps between progress log lines

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be 1 or more, got {self.epochs} and {self.batch_size}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")


@dataclass
class TrainResult:
    """Per-epoch history of a training run, with NLL in nats per pair (summed over K slots and D)."""

    train_nll: list[float] = field(default_factory=list)
    train_bits_per_dim: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    val_bits_per_dim: list[float] = field(default_factory=list)
    best_epoch: int = -1  # 0-based, and -1 until an epoch completes
    best_nll: float = math.inf  # validation NLL of best_epoch (training NLL without validation batches)
    steps: int = 0
    checkpoint_dir: str = ""

    @property
    def best_dir(self) -> Path:
        return Path(self.checkpoint_dir) / "best"

    @property
    def last_dir(self) -> Path:
        return Path(self.checkpoint_dir) / "last"


def train_flow(
    flow: PrefixFlow,
    train_batches: Batches,
    val_batches: Batches | None,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike[str],
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `flow` in place by maximum likelihood and return the per-epoch history.

    `train_batches` and `val_batches` are callables that return a fresh iterable of batches,
    one pass per epoch. A `train_batches` that takes one argument receives the 0-based epoch
    (the normalization pass gets epoch 0), so it can reshuffle per epoch and still resume exactly. Without `val_batches` the best checkpoint is
    chosen by training NLL. `on_step` receives a dict with step, epoch, loss (nats per
    dimension), bits_per_dim and lr after every optimizer step.

    A fresh run (`resume=False`) raises FileExistsError when `checkpoint_dir` already contains
    `last/`. With `resume=True` training continues after the last completed epoch. It gives the
    same weights as an uninterrupted run when `train_batches` yields the same batches in
    every call, because the optimizer state and torch's random state are restored.
    """
    checkpoint_dir = Path(checkpoint_dir)
    last_dir = checkpoint_dir / "last"
    device = _resolve_device(config.device)
    flow.to(device)
    if config.location_dropout is not None:
        flow.location_dropout = config.location_dropout
    optimizer = torch.optim.AdamW(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    dims = flow.config.num_slots * flow.config.prior_dim

    # Start fresh, or continue after the last completed epoch.
    resume_dir = _complete_checkpoint(last_dir) if resume else None
    if resume_dir is not None:
        result = _load_last(flow, optimizer, resume_dir, device)
        result.checkpoint_dir = str(checkpoint_dir)
        logger.info("resuming from %s after epoch %d of %d", last_dir, len(result.train_nll), config.epochs)
    else:
        if resume:
            logger.warning("no checkpoint to resume in %s; training from the start", last_dir)
        elif last_dir.exists():
            raise FileExistsError(
                f"{last_dir} already exists; pass resume=True to continue that training or choose an empty folder"
            )
        torch.manual_seed(config.seed)
        result = TrainResult(checkpoint_dir=str(checkpoint_dir))
        if config.fit_normalization:
            _fit_normalization(flow, train_batches)

    for epoch in range(len(result.train_nll), config.epochs):
        lr = _learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_nll = _train_epoch(flow, optimizer, _epoch_batches(train_batches, epoch), config, result, epoch, lr, on_step)

        # Record the epoch. Validation NLL (or training NLL without validation) picks the best checkpoint.
        result.train_nll.append(train_nll)
        result.train_bits_per_dim.append(float(bits_per_dim(-train_nll, dims)))
        score = train_nll
        if val_batches is not None:
            evaluation = evaluate_flow(flow, val_batches, batch_size=config.batch_size)
            result.val_nll.append(evaluation["nll"])
            result.val_bits_per_dim.append(evaluation["bits_per_dim"])
            score = evaluation["nll"]
        if score < result.best_nll:
            result.best_epoch, result.best_nll = epoch, score
            flow.save(checkpoint_dir / "best", metadata=_checkpoint_metadata(result, config, epoch))

        _save_last(flow, optimizer, result, config, last_dir)
        logger.info(
            "epoch %d/%d: train %.4f bits/dim, validation %s bits/dim, best epoch %d",
            epoch + 1, config.epochs, result.train_bits_per_dim[-1],
            f"{result.val_bits_per_dim[-1]:.4f}" if result.val_bits_per_dim else "n/a", result.best_epoch + 1,
        )
    return result


def _train_epoch(
    flow: PrefixFlow,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    config: TrainConfig,
    result: TrainResult,
    epoch: int,
    lr: float,
    on_step: Callable[[dict[str, Any]], None] | None,
) -> float:
    """Run one pass over the training pairs and return their mean NLL in nats per pair.

    The loss is nats per dimension, so the step size does not depend on K or D.
    """
    flow.train()
    device = flow.prior_mean.device
    dims = flow.config.num_slots * flow.config.prior_dim
    total_nll, num_pairs = 0.0, 0
    for batch in _rebatch(batches, config.batch_size):
        embedding, prior, lonlat = _to_tensors(batch, flow.config, device)
        log_prob = flow.log_prob_prior(prior, embedding, lonlat)
        loss = -log_prob.mean() / dims
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch}, step {result.steps}; lower TrainConfig.lr "
                "or check the priors and embeddings for extreme values"
            )

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(flow.parameters(), config.grad_clip)
        optimizer.step()

        # float() waits for the device once per step, which a progress bar needs anyway.
        result.steps += 1
        total_nll -= float(log_prob.detach().sum())
        num_pairs += prior.shape[0]
        step_loss = float(loss.detach())
        if on_step is not None:
            on_step({"step": result.steps, "epoch": epoch, "loss": step_loss,
                     "bits_per_dim": step_loss / math.log(2), "lr": lr})
        if result.steps % config.log_every == 0:
            logger.info("epoch %d step %d: %.4f bits/dim", epoch, result.steps, step_loss / math.log(2))

    if num_pairs == 0:
        raise ValueError("train_batches() yielded no pairs; check the training data")
    return total_nll / num_pairs


@torch.no_grad()
def evaluate_flow(
    flow: PrefixFlow,
    batches: Batches | Iterable[Batch],
    batch_size: int = 256,
) -> dict[str, float]:
    """Return the held-out NLL (nats per pair), bits per dimension and number of pairs.

    `batches` is an iterable of batches or a zero-argument callable that returns one. The
    flow runs in eval mode, so no location is dropped, and its mode is restored afterwards.
    """
    was_training = flow.training
    flow.eval()
    device = flow.prior_mean.device
    dims = flow.config.num_slots * flow.config.prior_dim

    total_nll, num_pairs = 0.0, 0
    for batch in _rebatch(batches() if callable(batches) else batches, batch_size):
        embedding, prior, lonlat = _to_tensors(batch, flow.config, device)
        total_nll -= float(flow.log_prob_prior(prior, embedding, lonlat).sum())
        num_pairs += prior.shape[0]
    flow.train(was_training)

    if num_pairs == 0:
        raise ValueError("the evaluation batches yielded no pairs; check the held-out data")
    nll = total_nll / num_pairs
    return {"nll": nll, "bits_per_dim": float(bits_per_dim(-nll, dims)), "num_pairs": num_pairs}


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _complete_checkpoint(last_dir: Path) -> Path | None:
    """Return the folder of the latest complete checkpoint: `last/`, or `last.old/` after a crash mid-swap."""
    for candidate in (last_dir, last_dir.with_name(last_dir.name + ".old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def _load_last(flow: PrefixFlow, optimizer: torch.optim.Optimizer, directory: Path, device: torch.device) -> TrainResult:
    """Restore weights, optimizer state, torch's random state and the history from a `last/` folder."""
    saved = FlowConfig.from_dict(read_flow_json(directory)["config"])
    ours = dataclasses.replace(flow.config, location_dropout=saved.location_dropout)
    if saved != ours:
        raise ValueError(
            f"the checkpoint in {directory} was trained with another flow config ({saved}); "
            "build the flow with that config, or start a fresh run in another folder"
        )

    flow.load_state_dict(load_file(directory / WEIGHTS_FILE, device=str(device)))
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True))
    rng = torch.load(directory / RNG_FILE, weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])

    state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    return TrainResult(**state["result"])


def _epoch_batches(batches: Batches, epoch: int) -> Iterable[Batch]:
    """Call `batches(epoch)` when it takes the epoch (to reshuffle per epoch, also on resume), else `batches()`."""
    try:
        parameters = inspect.signature(batches).parameters
    except (TypeError, ValueError):
        return batches()
    return batches(epoch) if parameters else batches()


def _fit_normalization(flow: PrefixFlow, train_batches: Batches) -> None:
    """Fit the per-dimension mean and std of prior rows and of embeddings in one streaming pass."""
    prior_stats = NormalizationStats(flow.config.prior_dim)
    embedding_stats = NormalizationStats(flow.config.embedding_dim)
    for batch in _epoch_batches(train_batches, 0):
        prior_stats.update(np.asarray(batch["prior"]).reshape(-1, flow.config.prior_dim))
        embedding_stats.update(np.asarray(batch["embedding"]))
    if prior_stats.count == 0:
        raise ValueError("train_batches() yielded no pairs; check the training data")

    flow.set_normalization(prior_stats.mean, prior_stats.std())
    flow.set_embedding_normalization(embedding_stats.mean, embedding_stats.std())
    logger.info(
        "normalization fitted on %d pairs, mean prior std %.4g",
        embedding_stats.count, float(prior_stats.std().mean()),
    )


def _learning_rate(config: TrainConfig, epoch: int) -> float:
    """Return the learning rate of an epoch: constant, or cosine from lr down to min_lr."""
    if config.lr_schedule == "constant" or config.epochs == 1:
        return config.lr
    progress = epoch / (config.epochs - 1)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _rebatch(batches: Iterable[Batch], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Cut incoming batches of any size into batches of `batch_size` pairs (the last may be smaller).

    Memory use is at most one incoming batch plus one step's pairs.
    """
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for batch in batches:
        batch = _check_batch(batch)
        pending.append(batch)
        count += len(batch["embedding"])
        if count < batch_size:
            continue

        merged = _concatenate(pending)
        full = count - count % batch_size
        for start in range(0, full, batch_size):
            yield {key: value[start : start + batch_size] for key, value in merged.items()}
        pending = [{key: value[full:] for key, value in merged.items()}] if full < count else []
        count -= full
    if count:
        yield _concatenate(pending)


def _check_batch(batch: Batch) -> dict[str, np.ndarray]:
    """Return the batch as numpy arrays, with NaN lon/lat filled in when the keys are absent."""
    missing = [key for key in ("embedding", "prior") if key not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; a batch needs embedding, prior, lon and lat")
    embedding = np.asarray(batch["embedding"])
    size = len(embedding)
    arrays = {
        "embedding": embedding,
        "prior": np.asarray(batch["prior"]),
        "lon": np.asarray(batch["lon"], dtype=np.float64) if "lon" in batch else np.full(size, np.nan),
        "lat": np.asarray(batch["lat"], dtype=np.float64) if "lat" in batch else np.full(size, np.nan),
    }
    for key, value in arrays.items():
        if len(value) != size:
            raise ValueError(f"batch[{key!r}] has {len(value)} rows but embedding has {size}")
    return arrays


def _concatenate(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(batches) == 1:
        return batches[0]
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def _to_tensors(
    batch: Mapping[str, np.ndarray], config: FlowConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return embedding [B, Dv], prior [B, K, D] (float32) and lonlat [B, 2] (float64) on `device`."""
    expected = (config.num_slots, config.prior_dim)
    if batch["prior"].ndim != 3 or tuple(batch["prior"].shape[1:]) != expected:
        raise ValueError(
            f"batch['prior'] must have shape [B, {expected[0]}, {expected[1]}] for this flow, "
            f"got {batch['prior'].shape}"
        )
    # torch.tensor copies, so read-only arrays (zero-copy Arrow buffers) are fine.
    embedding = torch.tensor(batch["embedding"], dtype=torch.float32, device=device)
    prior = torch.tensor(batch["prior"], dtype=torch.float32, device=device)
    lonlat = torch.tensor(np.stack((batch["lon"], batch["lat"]), axis=-1), dtype=torch.float64, device=device)
    return embedding, prior, lonlat


def _checkpoint_metadata(result: TrainResult, config: TrainConfig, epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "steps": result.steps,
        "train_nll": result.train_nll[-1],
        "val_nll": result.val_nll[-1] if result.val_nll else None,
        "val_bits_per_dim": result.val_bits_per_dim[-1] if result.val_bits_per_dim else None,
        "train_config": dataclasses.asdict(config),
    }


def _save_last(
    flow: PrefixFlow, optimizer: torch.optim.Optimizer, result: TrainResult, config: TrainConfig, last_dir: Path
) -> None:
    """Write the resumable checkpoint next to `last/`, then swap it in.

    An interruption leaves either the old or the new `last/` whole, or the old one under
    `last.old/`, which `_complete_checkpoint` also finds.
    """
    partial = last_dir.with_name(last_dir.name + ".partial")
    old = last_dir.with_name(last_dir.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)

    epoch = len(result.train_nll) - 1
    flow.save(partial, metadata=_checkpoint_metadata(result, config, epoch))
    torch.save(optimizer.state_dict(), partial / OPTIMIZER_FILE)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, partial / RNG_FILE)
    state = {"result": dataclasses.asdict(result), "train_config": dataclasses.asdict(config)}
    (partial / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    if last_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(last_dir, old)
    os.replace(partial, last_dir)
    shutil.rmtree(old, ignore_errors=True)
