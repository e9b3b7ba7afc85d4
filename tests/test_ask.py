"""`rsflow ask` end to end on the sample imagery, with tiny real models and a trained flow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rsflow.ask import AskError, AskOptions, Asker, closed_candidates
from rsflow.bridge import load_store_flow, train_store
from rsflow.ingest import IngestOptions, ingest_images
from rsflow.store.db import Store
from rsflow.textingest import ensure_llm, ingest_texts
from rsflow.train import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL_FLOW = {"transforms": 2, "hidden_features": (32, 32), "kind": "affine", "mixing": "permutation"}


@pytest.fixture(scope="module")
def ask_store_template(tmp_path_factory, tiny_encoder, tiny_llm_dir) -> Path:
    """RSVQA-LR GeoTIFFs and the COG as whole 256-pixel chips, the example texts, and a trained flow."""
    path = tmp_path_factory.mktemp("ask") / "store"
    store = Store.open_or_create(path)
    options = IngestOptions(chip_size=256)
    ingest_images(store, [EXAMPLES / "data" / "imagery" / "rsvqa_lr", EXAMPLES / "data" / "imagery" / "cog"],
                  tiny_encoder, options)
    embeddings = ensure_llm(store, str(tiny_llm_dir), 4)
    ingest_texts(store, [EXAMPLES / "texts" / "points.jsonl", EXAMPLES / "texts" / "areas.csv"], embeddings)
    train_store(Store.open(path), TrainConfig(epochs=1, batch_size=64), flow_overrides=SMALL_FLOW)
    return path


@pytest.fixture
def ask_store(ask_store_template, tmp_path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(ask_store_template, path)
    return path


@pytest.fixture
def asker(ask_store) -> Asker:
    return Asker(Store.open(ask_store), device="cpu")


class InputRecorder:
    """Records the `inputs_embeds` that reach the LLM's forward pass."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None:
            self.calls.append(embeds.detach().clone())

    @property
    def first(self) -> torch.Tensor:
        return self.calls[0][0]


LR_IMAGE = EXAMPLES / "data" / "imagery" / "rsvqa_lr" / "52.tif"


def test_stored_chip_finds_itself(asker):
    answer = asker.ask(LR_IMAGE, "Is there a road?", AskOptions(chip_size=256))
    first = answer.neighbours[0]
    assert Path(first["source"]).name == "52.tif"
    assert first["distance"] == pytest.approx(0.0, abs=1e-5)
    assert first["rank"] == 1


def test_prefix_reaches_llm_first(asker):
    recorder = InputRecorder(asker.llm.model)
    options = AskOptions(chip_size=256, score_candidates=False)
    query = asker.embed_image(LR_IMAGE, options)
    expected = asker.prefix(query).to(asker.llm.dtype)
    asker.ask(LR_IMAGE, "Is there a road?", options)
    recorder.handle.remove()
    k = asker.flow.config.num_slots
    torch.testing.assert_close(recorder.first[:k], expected)


def test_ablations_change_llm_input(asker):
    options = AskOptions(chip_size=256, score_candidates=False, max_new_tokens=2)
    lengths = {}
    for name, change in {"both": {}, "no prefix": {"use_prefix": False}, "no retrieval": {"use_retrieval": False}}.items():
        recorder = InputRecorder(asker.llm.model)
        answer = asker.ask(LR_IMAGE, "Is there a road?", AskOptions(**{**options.__dict__, **change}))
        recorder.handle.remove()
        lengths[name] = recorder.first.shape[0]
        if name == "no retrieval":
            assert answer.context == []
            assert answer.neighbours == []
            assert not answer.retrieval_used
        if name == "no prefix":
            assert not answer.prefix_used
    k = asker.flow.config.num_slots
    assert lengths["both"] - lengths["no prefix"] == k
    assert lengths["no retrieval"] < lengths["both"]


def test_closed_question_scored(asker):
    answer = asker.ask(LR_IMAGE, "Is there a road?", AskOptions(chip_size=256, max_new_tokens=2))
    assert [c["answer"] for c in answer.candidates] in (["yes", "no"], ["no", "yes"])
    assert sum(c["probability"] for c in answer.candidates) == pytest.approx(1.0)
    assert all(np.isfinite(c["log_likelihood"]) for c in answer.candidates)


@pytest.mark.parametrize(
    "question, expected",
    [
        ("Is there a road?", ["yes", "no"]),
        ("How many buildings are there?", ["0", "between 0 and 10", "between 10 and 100", "between 100 and 1000", "more than 1000"]),
        ("Is it a rural or an urban area", ["rural", "urban"]),
        ("What land use class is this?", ["forest", "pasture"]),
        ("Describe the image.", []),
    ],
)
def test_closed_candidates(question, expected):
    assert closed_candidates(question, ["forest", "pasture"]) == expected


def test_new_ingest_extends_index(ask_store, tiny_encoder):
    asker = Asker(Store.open(ask_store), device="cpu", load_llm=False)
    assert asker.index.status in ("built", "loaded")
    ingest_images(Store.open(ask_store), [EXAMPLES / "data" / "imagery" / "landsat"], tiny_encoder,
                  IngestOptions(chip_size=256))
    again = Asker(Store.open(ask_store), device="cpu", load_llm=False)
    assert again.index.status == "extended"
    assert len(again.index) == Store.open(ask_store).count("images")


def test_store_without_flow_answers(ask_store):
    shutil.rmtree(Path(ask_store) / "flow")
    answer = Asker(Store.open(ask_store), device="cpu").ask(LR_IMAGE, "Is there a road?", AskOptions(chip_size=256))
    assert not answer.prefix_used
    assert any("no trained flow" in note for note in answer.notes)
    assert answer.candidates == []


def test_bad_questions_and_images(asker, tmp_path):
    with pytest.raises(AskError, match="question is empty"):
        asker.ask(LR_IMAGE, "   ")
    with pytest.raises(ValueError, match="file not found"):
        asker.ask(tmp_path / "missing.tif", "Is there a road?")
    multispectral = EXAMPLES / "data" / "imagery" / "eurosat_ms" / "Pasture" / "Pasture_300.tif"
    with pytest.raises(ValueError, match="13 data bands"):
        asker.ask(multispectral, "Is there a road?")


def test_empty_store_rejected(tmp_path):
    with pytest.raises(AskError, match="no images"):
        Asker(Store.open_or_create(tmp_path / "empty"))


def test_cli_ask_json_fields(ask_store):
    from rsflow.cli.main import app

    result = CliRunner().invoke(
        app, ["ask", str(LR_IMAGE), "Is there a road?", "--store", str(ask_store), "--chip-size", "256",
              "--max-new-tokens", "3", "--json"],
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    for key in ("question", "image", "answer", "neighbours", "context", "candidates", "location", "models",
                "timings", "prefix_used", "retrieval_used", "notes"):
        assert key in answer
    for key in ("chip_id", "source", "distance", "cell", "lon", "lat"):
        assert key in answer["neighbours"][0]
    for step in ("embed", "neighbours", "context", "prefix", "generate", "candidates"):
        assert step in answer["timings"]
    assert set(answer["models"]) >= {"encoder", "llm", "ranker", "flow"}


def test_cli_ask_missing_image(ask_store, tmp_path):
    from rsflow.cli.main import app

    result = CliRunner().invoke(app, ["ask", str(tmp_path / "nope.tif"), "Is there a road?", "--store", str(ask_store)])
    assert result.exit_code == 1
    assert "nope.tif: file not found" in result.output


def test_flow_loaded_matches_store(ask_store):
    flow, metadata = load_store_flow(Store.open(ask_store))
    assert metadata["prefix_slots"] == 4


def test_neighbours_without_texts(ask_store):
    import pyarrow as pa

    from rsflow.store.schema import PAIRS_SCHEMA

    Store.open(ask_store).replace_pairs(pa.table({"chip_id": [], "text_id": [], "how": []}, schema=PAIRS_SCHEMA))
    asker = Asker(Store.open(ask_store), device="cpu")
    answer = asker.ask(LR_IMAGE, "Is there a road?", AskOptions(chip_size=256, max_new_tokens=2))
    assert answer.neighbours
    assert all(item["found_by"] == "cell" for item in answer.context)
