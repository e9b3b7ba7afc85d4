"""Tests of retrieval metrics and cosine scoring."""

import math

import numpy as np
import pytest
import torch

from rsflow.metrics import cosine_scores, retrieval_metrics, true_ranks


def test_ranks_of_clear_scores():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.2, 0.9], [0.5, 0.4, 0.3]])

    assert true_ranks(scores, [0, 1, 2]).tolist() == [1, 2, 3]


def test_ranks_ties_pessimistic():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0]])

    assert true_ranks(scores, [2, 0]).tolist() == [4, 2]


def test_ranks_accept_numpy():
    scores = np.array([[0.1, 0.3], [0.7, 0.2]])

    assert true_ranks(scores, np.array([1, 0])).tolist() == [1, 1]


def test_metrics_hand_example():
    # True candidates rank 1, 3, 6 and 12 among 12.
    scores = torch.zeros(4, 12)
    true_index = [0, 1, 2, 3]
    for query, rank in enumerate((1, 3, 6, 12)):
        order = torch.arange(12, 0, -1, dtype=torch.float32)
        order[[query, rank - 1]] = order[[rank - 1, query]]
        scores[query] = order
    metrics = retrieval_metrics(scores, true_index)

    assert metrics["recall@1"] == 0.25
    assert metrics["recall@5"] == 0.5
    assert metrics["recall@10"] == 0.75
    assert metrics["mean_rank"] == (1 + 3 + 6 + 12) / 4
    assert metrics["median_rank"] == 4.5
    assert math.isclose(metrics["mrr"], (1 + 1 / 3 + 1 / 6 + 1 / 12) / 4)
    assert metrics["num_queries"] == 4


def test_metrics_constant_scores_worst():
    metrics = retrieval_metrics(torch.ones(3, 20), [0, 5, 19])

    assert metrics["recall@10"] == 0.0
    assert metrics["mean_rank"] == 20


def test_metrics_custom_ks():
    metrics = retrieval_metrics(torch.eye(3), [0, 1, 2], ks=(2,))

    assert list(key for key in metrics if key.startswith("recall")) == ["recall@2"]
    assert metrics["recall@2"] == 1.0


def test_ranks_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        true_ranks(torch.tensor([[float("nan"), 1.0]]), [0])
    with pytest.raises(ValueError, match="true_index"):
        true_ranks(torch.zeros(2, 3), [0, 3])
    with pytest.raises(ValueError, match="shape"):
        true_ranks(torch.zeros(3), [0])
    with pytest.raises(ValueError, match="no queries"):
        retrieval_metrics(torch.zeros(0, 3), [])


def test_cosine_flatten_identity():
    priors = torch.randn(4, 3, 5)
    scores = cosine_scores(priors * 7.0, priors)

    assert scores.shape == (4, 4)
    assert torch.allclose(scores.diagonal(), torch.ones(4), atol=1e-5)
    assert true_ranks(scores, torch.arange(4)).tolist() == [1, 1, 1, 1]


def test_cosine_modes_differ():
    # Slot 0 is tiny in the prefix and points the other way, while slot 1 is large and agrees.
    prefix = torch.tensor([[[-0.01, 0.0], [10.0, 0.0]]])
    prior = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])

    flatten = cosine_scores(prefix, prior, mode="flatten")
    slots = cosine_scores(prefix, prior, mode="slots")

    assert math.isclose(float(flatten), 9.99 / math.sqrt(2 * (100 + 1e-4)), rel_tol=1e-5)
    assert math.isclose(float(slots), 0.0, abs_tol=1e-6)


def test_cosine_zero_vector_scores_zero():
    prefix = torch.zeros(1, 2, 3)
    priors = torch.randn(2, 2, 3)

    assert torch.equal(cosine_scores(prefix, priors), torch.zeros(1, 2))
    assert torch.equal(cosine_scores(prefix, priors, mode="slots"), torch.zeros(1, 2))


def test_cosine_rejects_mismatch():
    with pytest.raises(ValueError, match="share K and D"):
        cosine_scores(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="mode"):
        cosine_scores(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), mode="mean")
