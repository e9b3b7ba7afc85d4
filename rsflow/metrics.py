"""Retrieval metrics: cosine scoring of prefixes against candidate priors, ranks, Recall@k.

A query (an image) has one true candidate among C candidates (priors of texts). Any score
where higher is better works: the cosine similarity of `cosine_scores`, or the flow's
log-likelihood of each candidate from `PrefixFlow.score_priors`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

CosineMode = Literal["flatten", "slots"]


def cosine_scores(
    prefixes: Tensor | np.ndarray,
    priors: Tensor | np.ndarray,
    mode: CosineMode = "flatten",
) -> Tensor:
    """Return the cosine similarity [B, C] of each prefix [B, K, D] with each candidate prior [C, K, D].

    Modes:
        "flatten": the cosine of the two K * D vectors. Slot order matters and slots with a
            large norm weigh more.
        "slots": the mean over slots k of cos(prefix_k, prior_k). Each slot counts equally,
            whatever its norm.

    The result is float32. A zero vector has similarity 0 with everything.
    """
    prefixes = torch.as_tensor(prefixes, dtype=torch.float32)
    priors = torch.as_tensor(priors, dtype=torch.float32, device=prefixes.device)
    if prefixes.ndim != 3 or priors.ndim != 3 or prefixes.shape[1:] != priors.shape[1:]:
        raise ValueError(
            f"prefixes [B, K, D] and priors [C, K, D] must share K and D, got {tuple(prefixes.shape)} "
            f"and {tuple(priors.shape)}"
        )

    if mode == "flatten":
        left = torch.nn.functional.normalize(prefixes.flatten(1), dim=-1)
        right = torch.nn.functional.normalize(priors.flatten(1), dim=-1)
        return left @ right.T
    if mode == "slots":
        left = torch.nn.functional.normalize(prefixes, dim=-1)
        right = torch.nn.functional.normalize(priors, dim=-1)
        return torch.einsum("bkd,ckd->bc", left, right) / prefixes.shape[1]
    raise ValueError(f"mode must be 'flatten' or 'slots', got {mode!r}")


def true_ranks(scores: Tensor | np.ndarray, true_index: Tensor | np.ndarray | Sequence[int]) -> Tensor:
    """Return the 1-based rank of each query's true candidate, shape [Q], int64.

    `scores` is [Q, C] with higher = better, `true_index` [Q] the column of the true
    candidate. Ties count against the query: a rival with a score equal to the true one's
    ranks ahead of it, so constant scores give rank C and never an optimistic rank 1.
    """
    scores = torch.as_tensor(scores)
    true_index = torch.as_tensor(true_index, dtype=torch.long, device=scores.device)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [Q, C], got {tuple(scores.shape)}")
    if true_index.shape != scores.shape[:1]:
        raise ValueError(f"true_index must have shape [{scores.shape[0]}], got {tuple(true_index.shape)}")
    if true_index.numel() and (true_index.min() < 0 or true_index.max() >= scores.shape[1]):
        raise ValueError(f"true_index values must lie in [0, {scores.shape[1]}), got {true_index.tolist()}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a NaN score cannot be ranked")

    true_scores = scores.gather(1, true_index[:, None])
    # Counting scores >= the true one includes the true candidate itself, so the count is the rank.
    return (scores >= true_scores).sum(dim=1)


def retrieval_metrics(
    scores: Tensor | np.ndarray,
    true_index: Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Return Recall@k for each k, the mean and median rank and the mean reciprocal rank.

    Keys: "recall@1", "recall@5", "recall@10" (for the default `ks`), "mean_rank",
    "median_rank", "mrr" and "num_queries". Ranks are those of `true_ranks`, so ties are
    pessimistic. Recall@k is the share of queries whose true candidate ranks k or better.
    """
    ranks = true_ranks(scores, true_index).to(torch.float64)
    if ranks.numel() == 0:
        raise ValueError("no queries to evaluate; scores has 0 rows")

    metrics = {f"recall@{k}": float((ranks <= k).double().mean()) for k in ks}
    metrics["mean_rank"] = float(ranks.mean())
    metrics["median_rank"] = float(np.median(ranks.cpu().numpy()))
    metrics["mrr"] = float((1.0 / ranks).mean())
    metrics["num_queries"] = int(ranks.numel())
    return metrics
