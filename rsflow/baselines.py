"""Baselines that every flow result is reported beside: a ridge map and nearest-neighbour texts.

`RidgeMap` is the linear map of LiMBeR (Merullo et al., "Linearly Mapping from Image to Text
Space", https://arxiv.org/abs/2209.15162): image embedding v to the K prefix vectors, here
fitted in closed form by ridge regression instead of by gradient descent through the LLM.
A diagonal Gaussian on its residuals gives it a log-likelihood, so it is compared with the
flow in the same bits per dimension.

`NearestNeighbourText` skips learning altogether: a query image gets the prior of the most
cosine-similar training image.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
import faiss
import numpy as np
from safetensors.numpy import load_file, save_file

logger = logging.getLogger(__name__)

RIDGE_WEIGHTS_FILE = "ridge.safetensors"
RIDGE_CONFIG_FILE = "ridge.json"


def _as_pairs(embedding: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check a batch of pairs and return v [B, Dv] and flattened priors [B, K * D] as float64."""
    embedding = np.asarray(embedding)
    prior = np.asarray(prior)
    if embedding.ndim != 2:
        raise ValueError(f"embedding must have shape [B, Dv], got {embedding.shape}")
    if prior.ndim != 3 or prior.shape[0] != embedding.shape[0]:
        raise ValueError(f"prior must have shape [{embedding.shape[0]}, K, D], got {prior.shape}")
    return embedding.astype(np.float64), prior.reshape(prior.shape[0], -1).astype(np.float64)


class RidgeMap:
    """Closed-form ridge regression from v [N, Dv] to priors [N, K, D], with Gaussian residuals.

    The model is y = W^T v + b + e with e ~ N(0, diag(sigma^2)) over the K * D outputs.
    `partial_fit` accumulates sums of v, y, v v^T, v y^T and y^2 in float64, so memory is
    O(Dv^2 + Dv K D) whatever the number of pairs. For Dv = 1024, K = 8 and D = 4096 the
    Dv x K D cross term alone is 256 MiB, and `solve` needs about three more arrays of that
    size. `solve` sets

        W = (C_vv + alpha I)^-1 C_vy,   b = mean(y) - W^T mean(v)

    with C the centred sums, and sigma^2 to the mean squared residual on the training
    pairs, computed from the same sums. The intercept is not penalized.

    Arguments:
        alpha: The ridge penalty, in the units of the centred sums of squares of v.
        min_variance: Floor of each residual variance, so that an output that the map fits
            exactly still has a finite log-likelihood.

    Example:
        >>> ridge = RidgeMap(alpha=1.0)
        >>> rng = np.random.default_rng(0)
        >>> v = rng.normal(size=(100, 4)).astype(np.float32)
        >>> ridge.partial_fit(v, np.repeat(v[:, None, :2], 3, axis=1))
        >>> ridge.solve().predict(v).shape
        (100, 3, 2)
    """

    def __init__(self, alpha: float = 1.0, min_variance: float = 1e-10) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be 0 or more, got {alpha}")
        self.alpha = alpha
        self.min_variance = min_variance
        self.num_pairs = 0
        self.prior_shape: tuple[int, int] | None = None
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.variance: np.ndarray | None = None
        self._sums: dict[str, np.ndarray] = {}

    def partial_fit(self, embedding: np.ndarray, prior: np.ndarray) -> None:
        """Add a batch of pairs: embedding [B, Dv] and prior [B, K, D]."""
        v, y = _as_pairs(embedding, prior)
        if self.prior_shape is None:
            self.prior_shape = tuple(np.asarray(prior).shape[1:])
            self._sums = {
                "v": np.zeros(v.shape[1]),
                "y": np.zeros(y.shape[1]),
                "vv": np.zeros((v.shape[1], v.shape[1])),
                "vy": np.zeros((v.shape[1], y.shape[1])),
                "yy": np.zeros(y.shape[1]),
            }
        elif tuple(np.asarray(prior).shape[1:]) != self.prior_shape or v.shape[1] != self._sums["v"].shape[0]:
            raise ValueError(
                f"batch shapes {v.shape[1:]} and {np.asarray(prior).shape[1:]} differ from the first batch's "
                f"({self._sums['v'].shape[0]},) and {self.prior_shape}"
            )
        if not (np.isfinite(v).all() and np.isfinite(y).all()):
            raise ValueError("the batch contains NaN or infinite values in embedding or prior")

        self._sums["v"] += v.sum(axis=0)
        self._sums["y"] += y.sum(axis=0)
        self._sums["vv"] += v.T @ v
        self._sums["vy"] += v.T @ y
        self._sums["yy"] += (y**2).sum(axis=0)
        self.num_pairs += v.shape[0]

    def fit(self, batches: Iterable[Mapping[str, np.ndarray]]) -> RidgeMap:
        """Fit from batches of dicts with `embedding` [B, Dv] and `prior` [B, K, D], and return self."""
        for batch in batches:
            self.partial_fit(batch["embedding"], batch["prior"])
        return self.solve()

    def solve(self) -> RidgeMap:
        """Solve for the weights and residual variances from the accumulated sums, and return self."""
        if self.num_pairs < 2:
            raise ValueError(f"ridge needs at least 2 pairs, got {self.num_pairs}; call partial_fit with data first")

        # Centre the sums so the intercept stays out of the penalty.
        n = self.num_pairs
        mean_v = self._sums["v"] / n
        mean_y = self._sums["y"] / n
        cov_vv = self._sums["vv"] - n * np.outer(mean_v, mean_v)
        cov_vy = self._sums["vy"] - n * np.outer(mean_v, mean_y)
        var_y = self._sums["yy"] - n * mean_y**2

        # alpha = 0 with rank-deficient v makes the system singular, so fall back to least squares.
        penalized = cov_vv + self.alpha * np.eye(cov_vv.shape[0])
        try:
            weight = np.linalg.solve(penalized, cov_vy)
        except np.linalg.LinAlgError:
            logger.warning("ridge system is singular (alpha=%s); using least squares instead", self.alpha)
            weight = np.linalg.lstsq(penalized, cov_vy, rcond=None)[0]

        # Residual sum of squares per output: C_yy - 2 w^T C_vy + w^T C_vv w, in closed form.
        residual = var_y - 2 * np.einsum("ij,ij->j", weight, cov_vy) + np.einsum("ij,ij->j", weight, cov_vv @ weight)
        self.weight = weight
        self.bias = mean_y - mean_v @ weight
        self.variance = np.maximum(residual / n, self.min_variance)
        logger.info("ridge map solved on %d pairs, mean residual variance %.3g", n, float(self.variance.mean()))
        return self

    def _check_solved(self) -> None:
        if self.weight is None:
            raise ValueError("the ridge map is not fitted; call fit() or partial_fit() and solve() first")

    def predict(self, embedding: np.ndarray) -> np.ndarray:
        """Map embeddings [B, Dv] to predicted priors [B, K, D], float32."""
        self._check_solved()
        embedding = np.asarray(embedding, dtype=np.float64)
        if embedding.ndim != 2 or embedding.shape[1] != self.weight.shape[0]:
            raise ValueError(f"embedding must have shape [B, {self.weight.shape[0]}], got {embedding.shape}")
        flat = embedding @ self.weight + self.bias
        return flat.reshape(-1, *self.prior_shape).astype(np.float32)

    def log_prob(self, embedding: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Return log p(prior | v) in nats under the Gaussian residual model, shape [B], float64."""
        self._check_solved()
        _, y = _as_pairs(embedding, prior)
        mean = self.predict(embedding).reshape(y.shape[0], -1).astype(np.float64)
        squared = (y - mean) ** 2 / self.variance
        return -0.5 * (squared + np.log(2 * math.pi * self.variance)).sum(axis=1)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `ridge.safetensors` (weight, bias, variance) and `ridge.json` to a folder.

        Only the solved map is saved, not the accumulated sums, so a loaded map cannot
        take more batches.
        """
        self._check_solved()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": self.weight, "bias": self.bias, "variance": self.variance},
            directory / RIDGE_WEIGHTS_FILE,
        )
        document = {
            "alpha": self.alpha,
            "min_variance": self.min_variance,
            "num_pairs": self.num_pairs,
            "prior_shape": list(self.prior_shape),
        }
        (directory / RIDGE_CONFIG_FILE).write_text(json.dumps(document, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RidgeMap:
        """Load a map written by `save`."""
        directory = Path(directory)
        for name in (RIDGE_WEIGHTS_FILE, RIDGE_CONFIG_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found; pass a folder written by RidgeMap.save")
        document = json.loads((directory / RIDGE_CONFIG_FILE).read_text(encoding="utf-8"))
        tensors = load_file(directory / RIDGE_WEIGHTS_FILE)

        ridge = cls(alpha=document["alpha"], min_variance=document["min_variance"])
        ridge.num_pairs = document["num_pairs"]
        ridge.prior_shape = tuple(document["prior_shape"])
        ridge.weight = tensors["weight"]
        ridge.bias = tensors["bias"]
        ridge.variance = tensors["variance"]
        return ridge


def _normalized(embedding: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm. An all-zero row stays zero."""
    embedding = np.array(embedding, dtype=np.float32, copy=True)
    if embedding.ndim != 2:
        raise ValueError(f"embedding must have shape [B, Dv], got {embedding.shape}")
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return embedding / np.maximum(norms, np.finfo(np.float32).tiny)


class NearestNeighbourText:
    """Return the prior paired with the most cosine-similar training image.

    Training embeddings go into an exact `faiss.IndexFlatIP` after L2 normalization, so the
    inner product is the cosine similarity. Priors are kept in memory as given.

    Example:
        >>> index = NearestNeighbourText(embedding_dim=4)
        >>> v = np.eye(4, dtype=np.float32)
        >>> index.add(v, np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3))
        >>> index.predict(v[2:3] * 5)[0, 0]
        array([12., 13., 14.], dtype=float32)
    """

    def __init__(self, embedding_dim: int) -> None:
        self.embedding_dim = embedding_dim
        self.index = faiss.IndexFlatIP(embedding_dim)
        # NOTE: priors stay in RAM (N x K x D float32, 128 KiB per pair at K = 8, D = 4096). Beyond
        # a few hundred thousand pairs this needs a store-backed lookup by row id instead.
        self._priors: list[np.ndarray] = []
        self._stacked: np.ndarray | None = None

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, embedding: np.ndarray, prior: np.ndarray) -> None:
        """Add training images [B, Dv] and their paired priors [B, K, D]."""
        vectors = _normalized(embedding)
        prior = np.asarray(prior, dtype=np.float32)
        if vectors.shape[1] != self.embedding_dim:
            raise ValueError(f"embedding must have shape [B, {self.embedding_dim}], got {vectors.shape}")
        if prior.ndim != 3 or prior.shape[0] != vectors.shape[0]:
            raise ValueError(f"prior must have shape [{vectors.shape[0]}, K, D], got {prior.shape}")
        if self._priors and prior.shape[1:] != self._priors[0].shape[1:]:
            raise ValueError(f"prior slots {prior.shape[1:]} differ from earlier batches' {self._priors[0].shape[1:]}")

        self.index.add(vectors)
        self._priors.append(prior)
        self._stacked = None

    def search(self, embedding: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Return cosine similarities [B, k] and training row indices [B, k], best first."""
        if len(self) == 0:
            raise ValueError("the index is empty; add() training images first")
        vectors = _normalized(embedding)
        if vectors.shape[1] != self.embedding_dim:
            raise ValueError(f"embedding must have shape [B, {self.embedding_dim}], got {vectors.shape}")
        similarities, indices = self.index.search(vectors, min(k, len(self)))
        return similarities, indices

    def priors(self) -> np.ndarray:
        """Return all training priors [N, K, D] in the order they were added."""
        if self._stacked is None:
            self._stacked = np.concatenate(self._priors) if self._priors else np.zeros((0, 0, 0), np.float32)
            self._priors = [self._stacked]
        return self._stacked

    def predict(self, embedding: np.ndarray) -> np.ndarray:
        """Return the nearest training image's prior for each query, shape [B, K, D]."""
        _, indices = self.search(embedding, k=1)
        return self.priors()[indices[:, 0]]
