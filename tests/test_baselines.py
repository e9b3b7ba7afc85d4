"""Tests of the ridge map and nearest-neighbour baselines."""

import math
import tracemalloc

import numpy as np
import pytest

from rsflow.baselines import NearestNeighbourText, RidgeMap


def linear_pairs(num_pairs: int, seed: int = 0, noise: float = 0.05):
    """Return v [N, 6], priors [N, 2, 3] = linear map of v plus Gaussian noise, and the map.

    The map is the same for every seed, and the seed draws v and the noise.
    """
    map_rng = np.random.default_rng(100)
    weight = map_rng.normal(size=(6, 6))
    bias = map_rng.normal(size=6)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(num_pairs, 6)).astype(np.float32)
    y = v.astype(np.float64) @ weight + bias + noise * rng.normal(size=(num_pairs, 6))
    return v, y.reshape(num_pairs, 2, 3).astype(np.float32), weight, bias


def direct_ridge(v: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Solve ridge with an unpenalized intercept from the full centred data."""
    v = v.astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    v_mean, y_mean = v.mean(axis=0), y.mean(axis=0)
    centred = v - v_mean
    weight = np.linalg.solve(centred.T @ centred + alpha * np.eye(v.shape[1]), centred.T @ (y - y_mean))
    return weight, y_mean - v_mean @ weight


def test_ridge_recovers_linear_map():
    v, prior, weight, bias = linear_pairs(2000, noise=0.0)
    ridge = RidgeMap(alpha=0.0)
    ridge.partial_fit(v, prior)
    ridge.solve()

    assert np.allclose(ridge.weight, weight, atol=1e-4)
    assert np.allclose(ridge.bias, bias, atol=1e-4)
    assert np.allclose(ridge.predict(v), prior, atol=1e-4)


def test_ridge_batches_match_direct_solve():
    v, prior, _, _ = linear_pairs(500)
    ridge = RidgeMap(alpha=30.0)
    batches = [{"embedding": v[i : i + 37], "prior": prior[i : i + 37]} for i in range(0, 500, 37)]
    ridge.fit(batches)
    weight, bias = direct_ridge(v, prior, alpha=30.0)

    assert ridge.num_pairs == 500
    assert np.allclose(ridge.weight, weight, atol=1e-8)
    assert np.allclose(ridge.bias, bias, atol=1e-8)


def test_ridge_penalty_shrinks_weights():
    v, prior, _, _ = linear_pairs(200)
    loose = RidgeMap(alpha=0.0).fit([{"embedding": v, "prior": prior}])
    tight = RidgeMap(alpha=1e4).fit([{"embedding": v, "prior": prior}])

    assert np.linalg.norm(tight.weight) < 0.5 * np.linalg.norm(loose.weight)


def test_ridge_residual_variance_matches_data():
    v, prior, _, _ = linear_pairs(3000, noise=0.2)
    ridge = RidgeMap(alpha=1.0).fit([{"embedding": v, "prior": prior}])
    residual = (prior - ridge.predict(v)).reshape(3000, -1).astype(np.float64)

    assert np.allclose(ridge.variance, (residual**2).mean(axis=0), rtol=1e-4)
    assert np.allclose(ridge.variance, 0.04, rtol=0.15)


def test_ridge_log_prob_gaussian():
    v, prior, _, _ = linear_pairs(3000, noise=0.2)
    ridge = RidgeMap(alpha=1.0).fit([{"embedding": v, "prior": prior}])
    held_v, held_prior, _, _ = linear_pairs(2000, seed=1, noise=0.2)
    log_prob = ridge.log_prob(held_v, held_prior)

    # The true density: 6 independent N(0, 0.2^2) residuals, entropy 0.5 log(2 pi e 0.04) each.
    true_nll = 6 * 0.5 * math.log(2 * math.pi * math.e * 0.04)
    assert log_prob.shape == (2000,)
    assert abs(-log_prob.mean() - true_nll) < 0.1


def test_ridge_save_load_identical(tmp_path):
    v, prior, _, _ = linear_pairs(300)
    ridge = RidgeMap(alpha=2.0).fit([{"embedding": v, "prior": prior}])
    ridge.save(tmp_path / "ridge")
    loaded = RidgeMap.load(tmp_path / "ridge")

    assert loaded.alpha == 2.0
    assert loaded.num_pairs == 300
    assert np.array_equal(loaded.predict(v), ridge.predict(v))
    assert np.array_equal(loaded.log_prob(v, prior), ridge.log_prob(v, prior))


def test_ridge_load_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="ridge"):
        RidgeMap.load(tmp_path)


def test_ridge_unfitted_raises():
    with pytest.raises(ValueError, match="not fitted"):
        RidgeMap().predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        RidgeMap().solve()


def test_ridge_rejects_shape_change():
    ridge = RidgeMap()
    ridge.partial_fit(np.zeros((4, 3)), np.zeros((4, 2, 5)))

    with pytest.raises(ValueError, match="differ"):
        ridge.partial_fit(np.zeros((4, 3)), np.zeros((4, 2, 6)))
    with pytest.raises(ValueError, match="NaN"):
        ridge.partial_fit(np.full((4, 3), np.nan), np.zeros((4, 2, 5)))


def test_ridge_memory_flat_in_pairs():
    def peak_bytes(num_batches: int) -> int:
        rng = np.random.default_rng(0)
        ridge = RidgeMap()
        tracemalloc.start()
        for _ in range(num_batches):
            ridge.partial_fit(rng.normal(size=(256, 16)), rng.normal(size=(256, 4, 8)))
        ridge.solve()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    # One batch of float64 inputs is 256 * (16 + 32) * 8 bytes = 96 KiB, and the sums are ~8 KiB.
    assert peak_bytes(40) < peak_bytes(20) + 64 * 1024


def test_neighbour_returns_nearest_prior():
    embedding = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    prior = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    index = NearestNeighbourText(embedding_dim=3)
    index.add(embedding[:2], prior[:2])
    index.add(embedding[2:], prior[2:])

    queries = np.array([[0.1, 5.0, 0.2], [0.0, 0.1, -3.0], [2.0, 0.1, 0.3]], dtype=np.float32)
    predicted = index.predict(queries)

    assert len(index) == 3
    assert np.array_equal(predicted[0], prior[1])
    assert np.array_equal(predicted[2], prior[0])


def test_neighbour_search_is_cosine():
    index = NearestNeighbourText(embedding_dim=2)
    index.add(np.array([[10.0, 0.0], [1.0, 1.0]], dtype=np.float32), np.zeros((2, 1, 1), np.float32))
    similarities, indices = index.search(np.array([[1.0, 1.2]], dtype=np.float32), k=2)

    # Cosine prefers the short vector at 45 degrees over the long one at 0 degrees.
    assert indices[0].tolist() == [1, 0]
    assert similarities[0, 1] == pytest.approx(1.0 / math.sqrt(1 + 1.44), abs=1e-6)


def test_neighbour_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        NearestNeighbourText(embedding_dim=2).predict(np.ones((1, 2), dtype=np.float32))


def test_neighbour_rejects_wrong_dim():
    index = NearestNeighbourText(embedding_dim=2)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.ones((1, 3), dtype=np.float32), np.zeros((1, 1, 1), np.float32))
