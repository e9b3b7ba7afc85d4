"""The flow on a store: training from the store's pairs, loading checks, and evaluation against baselines."""

from __future__ import annotations

import json
import shutil

import pytest

from rsflow.bridge import NoFlowError, evaluate_store, flow_dir, format_evaluation, load_store_flow, train_store
from rsflow.store.db import Store
from rsflow.store.manifest import StoreMismatchError
from rsflow.train import TrainConfig
from support.synthetic_store import make_synthetic_store

SMALL_FLOW = {"transforms": 2, "hidden_features": (32, 32), "kind": "affine", "mixing": "permutation"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = make_synthetic_store(tmp_path_factory.mktemp("bridge") / "store", chips=120, texts=120, pairs=1200)
    training = train_store(Store.open(path), TrainConfig(epochs=2, batch_size=128), flow_overrides=SMALL_FLOW)
    return path, training


def test_train_writes_flow_and_baseline(trained):
    path, training = trained
    directory = flow_dir(Store.open(path))
    assert (directory / "model" / "flow.safetensors").is_file()
    assert (directory / "ridge").is_dir()
    document = json.loads((directory / "training.json").read_text())
    assert document["summary"]["train_pairs"] == training.train_pairs
    assert training.train_pairs + training.validation_pairs == Store.open(path).count("pairs")
    assert len(training.result.val_bits_per_dim) == 2


def test_flow_metadata_names_models(trained):
    path, _ = trained
    flow, metadata = load_store_flow(Store.open(path))
    assert metadata["encoder"]["model_id"] == "synthetic-encoder"
    assert metadata["llm"]["model_id"] == "synthetic-llm"
    assert metadata["prefix_slots"] == 2
    assert set(metadata["versions"]) == {"images", "texts", "pairs"}
    assert flow.config.prior_dim == 8


def test_flow_of_other_encoder_rejected(trained, tmp_path):
    path, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    store = Store.open(copy)
    store.manifest.encoder["weights_sha256"] = "f" * 64
    store.save_manifest()
    with pytest.raises(StoreMismatchError, match="trained with encoder"):
        load_store_flow(Store.open(copy))


def test_store_without_flow(tmp_path):
    path = make_synthetic_store(tmp_path / "store", chips=20, texts=20, pairs=50)
    with pytest.raises(NoFlowError, match="rsflow train"):
        load_store_flow(Store.open(path))


def test_resume_continues(trained, tmp_path):
    path, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    resumed = train_store(Store.open(copy), TrainConfig(epochs=3, batch_size=128), resume=True, flow_overrides=SMALL_FLOW)
    assert len(resumed.result.val_bits_per_dim) == 3
    first = json.loads((flow_dir(Store.open(path)) / "training.json").read_text())["split"]
    assert resumed.split.to_dict() == first


def test_evaluate_reports_flow_and_baselines(trained):
    path, _ = trained
    report = evaluate_store(Store.open(path), candidates=20, max_queries=50)
    assert set(report["retrieval"]) == {
        "flow (likelihood)",
        "flow (cosine of prefix)",
        "ridge map (cosine)",
        "nearest-neighbour text (cosine)",
        "chance",
    }
    for metrics in report["retrieval"].values():
        assert 0.0 <= metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"] <= 1.0
        assert metrics["num_queries"] == report["queries"]
    assert set(report["bits_per_dim"]) == {"flow", "ridge map (Gaussian residuals)"}
    chance = report["retrieval"]["chance"]
    assert chance["recall@1"] == pytest.approx(1 / 20)
    assert chance["recall@10"] == pytest.approx(10 / 20)
    assert chance["mean_rank"] == pytest.approx(10.5)
    table = format_evaluation(report)
    assert "| flow (likelihood) |" in table
    assert "| ridge map (cosine) |" in table


def test_same_seed_same_result(tmp_path):
    path = make_synthetic_store(tmp_path / "store", chips=60, texts=60, pairs=400)
    results = []
    for _ in range(2):
        training = train_store(Store.open(path), TrainConfig(epochs=1, batch_size=64, seed=7), flow_overrides=SMALL_FLOW)
        results.append(training.result.val_bits_per_dim)
    assert results[0] == results[1]
