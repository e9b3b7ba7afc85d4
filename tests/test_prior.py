"""Tests of the token-embedding priors and of reading the input embedding alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rsflow.llm import (
    DEFAULT_PREFIX_SLOTS,
    TokenEmbeddings,
    input_embedding_names,
    load_token_embeddings,
    slot_bounds,
    tensor_sha256,
    text_priors,
)
from tests.support.tiny_llm import make_tiny_llama

TEXTS = [
    "The satellite image shows a river crossing farmland near a small town.",
    "Dense forest covers the hills.",
    "Yes",
    "Is there a residential area in the image? Yes, with houses, gardens and roads, and a "
    "railway runs north of the airport runway.",
]


@pytest.fixture(scope="module")
def single_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("sharded"), sharded=True)


@pytest.fixture(scope="module")
def embeddings(single_checkpoint: Path) -> TokenEmbeddings:
    return load_token_embeddings(str(single_checkpoint))


def full_model_embedding(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder)
    return model.get_input_embeddings().weight.detach()


def reference_prior(token_ids: list[int], weight: torch.Tensor, num_slots: int) -> np.ndarray:
    """Pool rows the slow way: slot k averages tokens [floor(k n / K), floor((k + 1) n / K)),
    or takes token floor(k n / K) alone where that range is empty."""
    rows = weight.numpy()[token_ids]
    n = len(token_ids)
    slots = []
    for k in range(num_slots):
        start = (k * n) // num_slots
        end = ((k + 1) * n) // num_slots
        if end <= start:
            end = start + 1
        slots.append(rows[start:end].mean(axis=0))
    return np.stack(slots)


def test_read_single_file(single_checkpoint: Path, embeddings: TokenEmbeddings) -> None:
    expected = full_model_embedding(single_checkpoint)

    assert embeddings.weight.dtype == torch.float32
    assert embeddings.weight.shape == expected.shape
    assert torch.equal(embeddings.weight, expected)
    assert embeddings.dim == expected.shape[1]
    assert embeddings.max_length == 128
    assert embeddings.model_id == str(single_checkpoint)


def test_read_sharded(sharded_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    index = json.loads((sharded_checkpoint / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2

    with caplog.at_level("INFO", logger="rsflow.llm"):
        embeddings = load_token_embeddings(str(sharded_checkpoint))

    assert torch.equal(embeddings.weight, full_model_embedding(sharded_checkpoint))
    embedding_shard = index["weight_map"]["model.embed_tokens.weight"]
    assert f"from {embedding_shard}" in caplog.text
    assert "whole model is loaded" not in caplog.text


def test_read_sharded_only_its_shard(sharded_checkpoint: Path, tmp_path: Path) -> None:
    # Without every other shard, only a single-tensor read can still succeed.
    folder = tmp_path / "partial"
    shutil.copytree(sharded_checkpoint, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    embedding_shard = index["weight_map"]["model.embed_tokens.weight"]
    for shard in set(index["weight_map"].values()) - {embedding_shard}:
        (folder / shard).unlink()

    embeddings = load_token_embeddings(str(folder))

    assert torch.equal(embeddings.weight, full_model_embedding(sharded_checkpoint))


def test_read_missing_shard(sharded_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(sharded_checkpoint, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    embedding_shard = index["weight_map"]["model.embed_tokens.weight"]
    (folder / embedding_shard).unlink()

    with pytest.raises(FileNotFoundError, match=embedding_shard):
        load_token_embeddings(str(folder))


def test_read_tied(tmp_path: Path) -> None:
    folder = make_tiny_llama(tmp_path / "tied", tie_word_embeddings=True)

    embeddings = load_token_embeddings(str(folder))

    assert torch.equal(embeddings.weight, full_model_embedding(folder))


def test_read_bin_fallback(single_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # transformers 5 saves safetensors only, so the .bin file is written as older versions did.
    folder = tmp_path / "bin"
    shutil.copytree(single_checkpoint, folder)
    (folder / "model.safetensors").unlink()
    torch.save(AutoModelForCausalLM.from_pretrained(single_checkpoint).state_dict(), folder / "pytorch_model.bin")

    with caplog.at_level("INFO", logger="rsflow.llm"):
        embeddings = load_token_embeddings(str(folder))

    assert torch.equal(embeddings.weight, full_model_embedding(single_checkpoint))
    assert "whole model is loaded" in caplog.text


def test_read_no_weights(single_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    shutil.copytree(single_checkpoint, folder)
    (folder / "model.safetensors").unlink()

    with pytest.raises(FileNotFoundError, match="no loadable weights"):
        load_token_embeddings(str(folder))


def test_read_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        load_token_embeddings(str(tmp_path / "no-such-model"))


def test_embedding_names_llama(single_checkpoint: Path) -> None:
    names = input_embedding_names(AutoModelForCausalLM.from_pretrained(single_checkpoint).config)

    assert names[0] == "model.embed_tokens.weight"
    assert "embed_tokens.weight" in names


def test_sha256_same_for_both_layouts(
    embeddings: TokenEmbeddings, sharded_checkpoint: Path, single_checkpoint: Path
) -> None:
    sharded = load_token_embeddings(str(sharded_checkpoint))

    assert embeddings.weights_sha256 == sharded.weights_sha256
    assert embeddings.weights_sha256 == tensor_sha256(full_model_embedding(single_checkpoint))
    assert len(embeddings.weights_sha256) == 64


def test_sha256_differs_by_seed(embeddings: TokenEmbeddings, tmp_path: Path) -> None:
    other = load_token_embeddings(str(make_tiny_llama(tmp_path / "seed1", seed=1)))

    assert other.weights_sha256 != embeddings.weights_sha256


def test_prior_equals_pooled_rows(single_checkpoint: Path, embeddings: TokenEmbeddings) -> None:
    tokenizer = AutoTokenizer.from_pretrained(single_checkpoint)
    with safe_open(single_checkpoint / "model.safetensors", framework="pt") as reader:
        weight = reader.get_tensor("model.embed_tokens.weight")

    for num_slots in (1, 3, DEFAULT_PREFIX_SLOTS):
        result = text_priors(TEXTS, embeddings, num_slots)

        assert result.priors.shape == (len(TEXTS), num_slots, weight.shape[1])
        assert result.priors.dtype == np.float32
        for position, text in enumerate(TEXTS):
            token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            expected = reference_prior(token_ids, weight, num_slots)
            np.testing.assert_allclose(result.priors[position], expected, rtol=1e-5, atol=1e-6)
            assert result.token_counts[position] == len(token_ids)


def test_prior_no_special_tokens(embeddings: TokenEmbeddings) -> None:
    bos_row = embeddings.weight[embeddings.tokenizer.bos_token_id].numpy()
    token_ids = embeddings.tokenizer("Yes", add_special_tokens=False)["input_ids"]

    result = text_priors(["Yes"], embeddings, 1)

    assert embeddings.tokenizer.bos_token_id not in token_ids
    np.testing.assert_allclose(result.priors[0, 0], embeddings.weight[token_ids].mean(0).numpy(), atol=1e-6)
    assert not np.allclose(result.priors[0, 0], bos_row)


def test_prior_short_text_repeats(embeddings: TokenEmbeddings) -> None:
    token_ids = embeddings.tokenizer("Yes", add_special_tokens=False)["input_ids"]
    assert 1 < len(token_ids) < DEFAULT_PREFIX_SLOTS

    prior = text_priors(["Yes"], embeddings, DEFAULT_PREFIX_SLOTS).priors[0]

    starts, _ = slot_bounds(len(token_ids), DEFAULT_PREFIX_SLOTS)
    for slot, start in enumerate(starts):
        np.testing.assert_array_equal(prior[slot], embeddings.weight[token_ids[start]].numpy())
    # Each token fills a run of consecutive slots, in text order.
    assert list(starts) == sorted(starts)
    assert set(starts) == set(range(len(token_ids)))


def test_slot_bounds_cases() -> None:
    cases = {
        (8, 8): ([0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]),
        (10, 4): ([0, 2, 5, 7], [2, 5, 7, 10]),
        (3, 8): ([0, 0, 0, 1, 1, 1, 2, 2], [1, 1, 1, 2, 2, 2, 3, 3]),
        (1, 4): ([0, 0, 0, 0], [1, 1, 1, 1]),
    }
    for (num_tokens, num_slots), (starts, ends) in cases.items():
        got_starts, got_ends = slot_bounds(num_tokens, num_slots)
        assert list(got_starts) == starts, (num_tokens, num_slots)
        assert list(got_ends) == ends, (num_tokens, num_slots)


def test_prior_truncation_counted(embeddings: TokenEmbeddings) -> None:
    long_text = "forest river road " * 100
    full_ids = embeddings.tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(full_ids) > embeddings.max_length

    result = text_priors([TEXTS[0], long_text, long_text], embeddings, 4)

    assert result.truncated == 2
    assert list(result.token_counts[1:]) == [embeddings.max_length, embeddings.max_length]
    expected = reference_prior(full_ids[: embeddings.max_length], embeddings.weight, 4)
    np.testing.assert_allclose(result.priors[1], expected, rtol=1e-5, atol=1e-6)


def test_prior_no_truncation(embeddings: TokenEmbeddings) -> None:
    result = text_priors(TEXTS, embeddings, 4)

    assert result.truncated == 0


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_prior_rejects_empty(embeddings: TokenEmbeddings, blank: str) -> None:
    with pytest.raises(ValueError, match="text 1 is empty"):
        text_priors([TEXTS[0], blank], embeddings, 4)


def test_prior_rejects_zero_slots(embeddings: TokenEmbeddings) -> None:
    with pytest.raises(ValueError, match="num_slots"):
        text_priors(TEXTS, embeddings, 0)


def test_prior_empty_batch(embeddings: TokenEmbeddings) -> None:
    result = text_priors([], embeddings, 4)

    assert result.priors.shape == (0, 4, embeddings.dim)
    assert result.truncated == 0


def test_read_renamed_embedding(single_checkpoint: Path, tmp_path: Path) -> None:
    # Under an unknown name the embedding is not found by either read, and random rows must not stand in.
    folder = tmp_path / "renamed"
    shutil.copytree(single_checkpoint, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["unknown.embedding"] = tensors.pop("model.embed_tokens.weight")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ValueError, match="no input embedding under"):
        load_token_embeddings(str(folder))
