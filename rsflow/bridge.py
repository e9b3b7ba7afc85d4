"""The bridge on a store: train the flow and its baselines on the store's pairs, and evaluate them.

Everything lives in `<store>/flow/`:

    checkpoints/best, checkpoints/last   the training loop's checkpoints (`rsflow.train`)
    model/                                the best flow, with the store's encoder, LLM and versions
    ridge/                                the ridge-regression baseline fitted on the same pairs
    training.json                         the split (held-out cells), sizes, history

Evaluation runs on the held-out cells only. The flow is compared with the two baselines trained on
the same pairs: a ridge-regression linear map from image embedding to prior, and the prior of the
nearest training image's text. Retrieval ranks, for each held-out (chip, text) pair, the true text
among `candidates` texts of the held-out split (the true one and distractors drawn with a seed).
The "chance" row is the expectation of a random ranking, not one random draw.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsflow.baselines import NearestNeighbourText, RidgeMap
from rsflow.batches import PairSource, PairSplit
from rsflow.flow import FlowConfig, PrefixFlow, bits_per_dim
from rsflow.metrics import cosine_scores, retrieval_metrics
from rsflow.store.db import Store
from rsflow.store.manifest import StoreMismatchError
from rsflow.train import TrainConfig, TrainResult, evaluate_flow, train_flow

logger = logging.getLogger(__name__)

FLOW_DIR = "flow"
TRAINING_FILE = "training.json"


class NoFlowError(FileNotFoundError):
    """A store without a trained flow."""


def flow_dir(store: Store) -> Path:
    return store.path / FLOW_DIR


def _store_identity(store: Store) -> dict[str, Any]:
    manifest = store.manifest
    return {
        "encoder": {key: manifest.encoder[key] for key in ("model_id", "weights_sha256", "embedding_dim")},
        "llm": {key: manifest.llm[key] for key in ("model_id", "weights_sha256", "dim")},
        "prefix_slots": manifest.prefix_slots,
    }


@dataclass
class StoreTraining:
    """The result of `train_store`: the history, the split, and the number of pairs on each side."""

    result: TrainResult
    split: PairSplit
    train_pairs: int
    validation_pairs: int
    num_parameters: int

    def to_dict(self) -> dict:
        return {
            "train_pairs": self.train_pairs,
            "validation_pairs": self.validation_pairs,
            "validation_cells": len(self.split.validation_cells),
            "split_by_cell": self.split.by_cell,
            "num_parameters": self.num_parameters,
            "best_epoch": self.result.best_epoch + 1,  # 1-based, as printed
            "train_bits_per_dim": self.result.train_bits_per_dim,
            "validation_bits_per_dim": self.result.val_bits_per_dim,
        }


def train_store(
    store: Store,
    config: TrainConfig,
    *,
    resume: bool = False,
    validation_fraction: float = 0.2,
    flow_overrides: dict[str, Any] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> StoreTraining:
    """Train the flow and the ridge baseline on the store's pairs; see the module docstring."""
    directory = flow_dir(store)
    checkpoints = directory / "checkpoints"
    split = None
    if resume and (directory / TRAINING_FILE).is_file():
        split = PairSplit.from_dict(json.loads((directory / TRAINING_FILE).read_text())["split"])
    elif not resume and checkpoints.exists():
        # A fresh run replaces the previous flow; the loop refuses to overwrite its checkpoints.
        shutil.rmtree(checkpoints)

    source = PairSource(store, split, seed=config.seed, validation_fraction=validation_fraction)
    train_pairs, validation_pairs = source.count("train"), source.count("validation")
    if train_pairs == 0:
        raise ValueError(f"{store.path}: no training pairs outside the held-out cells; ingest more paired data.")
    if validation_pairs == 0:
        logger.warning(
            "no pairs are held out, so the best checkpoint is chosen by training loss and `rsflow evaluate` "
            "has nothing to score; ingest texts over more places"
        )

    # The seed fixes the initial weights too, so that a run with the same seed repeats.
    torch.manual_seed(config.seed)
    flow = PrefixFlow(
        FlowConfig.for_dims(source.prior_dim, source.embedding_dim, source.prefix_slots, **(flow_overrides or {}))
    )
    result = train_flow(
        flow,
        lambda epoch: source.batches("train", config.batch_size, epoch=epoch),
        (lambda: source.batches("validation", config.batch_size, shuffle=False)) if validation_pairs else None,
        config,
        checkpoints,
        resume=resume,
        on_step=on_step,
    )

    best, _ = PrefixFlow.load(result.best_dir)
    identity = _store_identity(store) | {"versions": source.versions, "split": source.split.to_dict()}
    best.save(directory / "model", metadata=identity)

    ridge = RidgeMap().fit(source.batches("train", 1024, shuffle=False)).solve()
    ridge.save(directory / "ridge")

    training = StoreTraining(result, source.split, train_pairs, validation_pairs, best.num_parameters())
    document = {"split": source.split.to_dict(), "versions": source.versions, "summary": training.to_dict(),
                "train_config": config.__dict__}
    (directory / TRAINING_FILE).write_text(json.dumps(document, indent=2, default=str))
    return training


def load_store_flow(store: Store, device: str | torch.device = "cpu") -> tuple[PrefixFlow, dict]:
    """Load the store's trained flow, rejecting one trained with another encoder, LLM or K."""
    model = flow_dir(store) / "model"
    if not (model / "flow.json").is_file():
        raise NoFlowError(f"{store.path}: the store has no trained flow yet; run `rsflow train --store {store.path}`.")
    flow, metadata = PrefixFlow.load(model, device=device)
    expected = _store_identity(store)
    for key in ("encoder", "llm"):
        if metadata.get(key, {}).get("weights_sha256") != expected[key]["weights_sha256"]:
            raise StoreMismatchError(
                f"{model}: the flow was trained with {key} {metadata.get(key, {}).get('model_id')}, but the store "
                f"uses {expected[key]['model_id']}. Train a flow for this store with `rsflow train`."
            )
    if metadata.get("prefix_slots") != expected["prefix_slots"]:
        raise StoreMismatchError(
            f"{model}: the flow makes {metadata.get('prefix_slots')} prefix slots, the store's priors have "
            f"{expected['prefix_slots']}. Train a flow for this store with `rsflow train`."
        )
    return flow, metadata


def evaluate_store(store: Store, *, candidates: int = 100, max_queries: int = 500, seed: int = 0) -> dict:
    """Score the flow and the baselines on the held-out cells: bits per dimension and retrieval."""
    flow, metadata = load_store_flow(store)
    source = PairSource(store, PairSplit.from_dict(metadata["split"]))
    if source.count("validation") == 0:
        raise ValueError(f"{store.path}: the held-out split has no pairs, so there is nothing to evaluate.")
    ridge = RidgeMap.load(flow_dir(store) / "ridge")
    dims = source.prefix_slots * source.prior_dim

    queries, pool = _held_out_queries(source, max_queries, seed)
    rng = np.random.default_rng(seed)
    candidate_sets, true_index = _candidate_sets(queries["text_rows"], pool, candidates, rng)
    priors = source.read(np.zeros(len(pool), np.int64), pool)["prior"]
    position = {row: i for i, row in enumerate(pool.tolist())}
    candidate_priors = [priors[[position[row] for row in rows]] for rows in candidate_sets]

    lonlat = torch.from_numpy(np.stack([queries["lon"], queries["lat"]], axis=1)).float()
    embedding = torch.from_numpy(queries["embedding"])
    prefixes = flow.prefix(embedding, lonlat)
    flow_likelihood = np.stack([
        flow.score_priors(embedding[i : i + 1], lonlat[i : i + 1], torch.from_numpy(candidate_priors[i]))[0].numpy()
        for i in range(len(candidate_sets))
    ])
    nearest = _nearest_neighbour(source)

    rows = {
        "flow (likelihood)": flow_likelihood,
        "flow (cosine of prefix)": _cosine_each(prefixes.numpy(), candidate_priors),
        "ridge map (cosine)": _cosine_each(ridge.predict(queries["embedding"]), candidate_priors),
        "nearest-neighbour text (cosine)": _cosine_each(nearest.predict(queries["embedding"]), candidate_priors),
    }
    retrieval = {name: retrieval_metrics(scores, true_index) for name, scores in rows.items()}
    retrieval["chance"] = _chance_metrics(len(candidate_sets[0]) if candidate_sets else candidates, len(candidate_sets))

    held_out = evaluate_flow(flow, lambda: source.batches("validation", 256, shuffle=False))
    ridge_nll = -np.mean(np.concatenate([
        ridge.log_prob(batch["embedding"], batch["prior"]) for batch in source.batches("validation", 1024, shuffle=False)
    ]))
    return {
        "held_out_pairs": held_out["num_pairs"],
        "held_out_cells": len(source.split.validation_cells),
        "split_by_cell": source.split.by_cell,
        "candidates": candidates,
        "queries": len(candidate_sets),
        "bits_per_dim": {
            "flow": held_out["bits_per_dim"],
            "ridge map (Gaussian residuals)": float(bits_per_dim(-ridge_nll, dims)),
        },
        "retrieval": retrieval,
        "models": _store_identity(store),
    }


def _chance_metrics(candidates: int, queries: int) -> dict:
    """Return the expected retrieval metrics of a random ranking of `candidates` texts."""
    ranks = np.arange(1, candidates + 1)
    return {
        **{f"recall@{k}": min(k, candidates) / candidates for k in (1, 5, 10)},
        "mean_rank": (candidates + 1) / 2,
        "median_rank": float(np.median(ranks)),
        "mrr": float(np.mean(1.0 / ranks)),
        "num_queries": queries,
    }


def _held_out_queries(source: PairSource, max_queries: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Return a seeded sample of the held-out pairs as queries, and every held-out text row (the candidates)."""
    chips, texts = [], []
    for chip_rows, text_rows in source._scan("validation"):
        chips.append(chip_rows)
        texts.append(text_rows)
    chip_rows, text_rows = np.concatenate(chips), np.concatenate(texts)
    pool = np.unique(text_rows)
    if len(chip_rows) > max_queries:
        keep = np.sort(np.random.default_rng(seed).choice(len(chip_rows), max_queries, replace=False))
        chip_rows, text_rows = chip_rows[keep], text_rows[keep]
    batch = source.read(chip_rows, text_rows)
    queries = {"embedding": batch["embedding"], "lon": batch["lon"], "lat": batch["lat"], "text_rows": text_rows}
    return queries, pool


def _candidate_sets(true_rows: np.ndarray, pool: np.ndarray, size: int, rng) -> tuple[list[np.ndarray], np.ndarray]:
    """For each query, its true text row first in a shuffled set of `size` rows from `pool`."""
    size = min(size, len(pool))
    sets, true_index = [], []
    for row in true_rows:
        others = pool[pool != row]
        chosen = np.concatenate([[row], rng.choice(others, size - 1, replace=False)]) if size > 1 else np.array([row])
        order = rng.permutation(len(chosen))
        sets.append(chosen[order])
        true_index.append(int(np.flatnonzero(order == 0)[0]))
    return sets, np.asarray(true_index)


def _cosine_each(predictions: np.ndarray, candidate_priors: list[np.ndarray]) -> np.ndarray:
    return np.stack([
        cosine_scores(predictions[i : i + 1], candidate_priors[i])[0].numpy() for i in range(len(candidate_priors))
    ])


def _nearest_neighbour(source: PairSource) -> NearestNeighbourText:
    nearest = NearestNeighbourText(source.embedding_dim)
    for batch in source.batches("train", 1024, shuffle=False):
        nearest.add(batch["embedding"], batch["prior"])
    return nearest


def format_evaluation(report: dict) -> str:
    """Render an evaluation report as a markdown table."""
    lines = [
        f"Held-out: {report['held_out_pairs']} pairs in {report['held_out_cells']} cells; "
        f"retrieval of the true text among {report['candidates']} candidates for {report['queries']} pairs.",
        "",
        "| model | bits/dim | R@1 | R@5 | R@10 | mean rank |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    bits = report["bits_per_dim"]
    bits_of = {"flow (likelihood)": bits["flow"], "ridge map (cosine)": bits["ridge map (Gaussian residuals)"]}
    for name, metrics in report["retrieval"].items():
        value = bits_of.get(name)
        shown = "" if value is None or not math.isfinite(value) else f"{value:.3f}"
        lines.append(
            f"| {name} | {shown} | {metrics['recall@1']:.3f} | {metrics['recall@5']:.3f} | "
            f"{metrics['recall@10']:.3f} | {metrics['mean_rank']:.1f} |"
        )
    return "\n".join(lines)
