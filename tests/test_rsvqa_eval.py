"""The RSVQA harness on a tiny data set in the published layout: scores, ablations and resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsflow.ask import Asker
from rsflow.bridge import train_store
from rsflow.ingest import IngestOptions, ingest_images
from rsflow.rsvqa import load_rsvqa, score
from rsflow.rsvqa_eval import ABLATIONS, EvalSettings, evaluate_rsvqa, format_report
from rsflow.store.db import Store
from rsflow.textingest import ensure_llm, ingest_texts
from rsflow.train import TrainConfig

TINY = Path(__file__).resolve().parent / "data" / "rsvqa_tiny"
SMALL_FLOW = {"transforms": 2, "hidden_features": (16, 16), "kind": "affine", "mixing": "permutation"}


@pytest.fixture(scope="module")
def rsvqa_store_template(tmp_path_factory, tiny_encoder, tiny_llm_dir) -> Path:
    """The tiny LR images, the train split's questions and answers, and a flow trained on them."""
    path = tmp_path_factory.mktemp("rsvqa") / "store"
    store = Store.open_or_create(path)
    ingest_images(store, [TINY / "Images_LR"], tiny_encoder, IngestOptions())
    ingest_texts(store, [TINY], ensure_llm(store, str(tiny_llm_dir), 2), split="train")
    train_store(Store.open(path), TrainConfig(epochs=1, batch_size=8), flow_overrides=SMALL_FLOW)
    return path


@pytest.fixture
def rsvqa_store(rsvqa_store_template, tmp_path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(rsvqa_store_template, path)
    return path


def test_report_matches_cached_answers(rsvqa_store, tmp_path):
    asker = Asker(Store.open(rsvqa_store), device="cpu")
    cache = tmp_path / "answers.jsonl"
    report = evaluate_rsvqa(asker, TINY, EvalSettings(split="test", max_new_tokens=2), cache=cache)

    questions = sorted(load_rsvqa(TINY, "test").questions, key=lambda q: (q.image_id, q.id))
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(records) == len(questions) * len(ABLATIONS)
    assert set(report["results"]) == set(ABLATIONS)
    for ablation in ABLATIONS:
        predicted = {r["question_id"]: r["prediction"] for r in records if r["ablation"] == ablation}
        expected = score([predicted[q.id] for q in questions], [q.answer for q in questions],
                         [q.type for q in questions], dataset="LR", count_bins=True)
        assert report["results"][ablation] == expected
    assert report["count_bins"] is True
    assert report["questions"] == len(questions)


def test_candidates_answer_in_vocabulary(rsvqa_store, tmp_path):
    asker = Asker(Store.open(rsvqa_store), device="cpu")
    cache = tmp_path / "answers.jsonl"
    evaluate_rsvqa(asker, TINY, EvalSettings(split="test", ablations=("candidates",)), cache=cache)
    vocabulary = {"yes", "no", "rural", "urban", "0", "between 0 and 10", "between 10 and 100",
                  "between 100 and 1000", "more than 1000"}
    for line in cache.read_text().splitlines():
        assert json.loads(line)["prediction"] in vocabulary


class Interrupt(Exception):
    """Stands for a kill in the middle of an evaluation."""


def test_interrupted_run_resumes(rsvqa_store, tmp_path, monkeypatch):
    asker = Asker(Store.open(rsvqa_store), device="cpu")
    cache = tmp_path / "answers.jsonl"
    settings = EvalSettings(split="test", ablations=("llm", "retrieval"), max_new_tokens=2)
    original = asker.llm.generate
    calls = {"n": 0}

    def counting_generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(asker.llm, "generate", counting_generate)
    with pytest.raises(Interrupt):
        evaluate_rsvqa(asker, TINY, settings, cache=cache)
    assert len(cache.read_text().splitlines()) == 5

    calls["n"] = -1000
    report = evaluate_rsvqa(asker, TINY, settings, cache=cache)
    total = 2 * report["questions"]
    assert calls["n"] == -1000 + (total - 5)
    assert len(cache.read_text().splitlines()) == total

    calls["n"] = -1000
    evaluate_rsvqa(asker, TINY, settings, cache=cache)
    assert calls["n"] == -1000


def test_limit_and_unknown_ablation(rsvqa_store, tmp_path):
    asker = Asker(Store.open(rsvqa_store), device="cpu")
    report = evaluate_rsvqa(asker, TINY, EvalSettings(split="test", limit=3, ablations=("candidates",)),
                            cache=tmp_path / "a.jsonl")
    assert report["questions"] == 3
    with pytest.raises(ValueError, match="unknown ablation 'vision'"):
        evaluate_rsvqa(asker, TINY, EvalSettings(split="test", ablations=("vision",)), cache=tmp_path / "b.jsonl")


def test_leaked_answers_warned(rsvqa_store, tmp_path):
    store = Store.open(rsvqa_store)
    ingest_texts(store, [TINY], ensure_llm(store, None, None), split="test")
    asker = Asker(Store.open(rsvqa_store), device="cpu")
    report = evaluate_rsvqa(asker, TINY, EvalSettings(split="test", ablations=("candidates",)), cache=tmp_path / "c.jsonl")
    assert "reference answers" in report["warnings"][0]


def test_markdown_table_has_every_type(rsvqa_store, tmp_path):
    asker = Asker(Store.open(rsvqa_store), device="cpu")
    report = evaluate_rsvqa(asker, TINY, EvalSettings(split="test", ablations=("candidates",)), cache=tmp_path / "d.jsonl")
    table = format_report(report)
    assert "| ablation | rural_urban | presence | count | comp | AA | OA |" in table
    assert "| candidates |" in table


def test_cli_eval_writes_outputs(rsvqa_store, tmp_path):
    from rsflow.cli.main import app

    output = tmp_path / "out" / "rsvqa.md"
    result = CliRunner().invoke(app, [
        "eval", "rsvqa", str(TINY), "--store", str(rsvqa_store), "--split", "test", "--ablation", "candidates",
        "--ablation", "llm", "--max-new-tokens", "2", "--output", str(output), "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["results"]) == {"candidates", "llm"}
    assert output.read_text().startswith("RSVQA LR test")
    assert json.loads(output.with_suffix(".json").read_text())["split"] == "test"
