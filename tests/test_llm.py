"""Tests of resolving and loading a causal LLM, and of generation behind a soft prefix."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from torch.utils.hooks import RemovableHandle

from rsflow.llm import FrozenLLM, load_token_embeddings, resolve_model_dir
from tests.support.tiny_llm import make_tiny_llama

QUESTION = "Is there a river in the image?"
CONTEXT = ["A river crosses farmland near a small town.", "Dense forest covers the hills."]
NUM_SLOTS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def llm(checkpoint: Path) -> FrozenLLM:
    return FrozenLLM.load(str(checkpoint), device="cpu")


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache that contains `tiny-org/tiny-llama` as a hub download would."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repository = cache / "models--tiny-org--tiny-llama"
    make_tiny_llama(repository / "snapshots" / commit, sharded=True)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return repository / "snapshots" / commit


def capture_first_layer_input(llm: FrozenLLM) -> tuple[list[torch.Tensor], RemovableHandle]:
    """Record the hidden states that enter the first decoder layer at each forward pass."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden_states.detach().clone())

    handle = llm.model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def test_resolve_local_folder(checkpoint: Path) -> None:
    assert resolve_model_dir(str(checkpoint)) == checkpoint


def test_resolve_file_rejected(checkpoint: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_model_dir(str(checkpoint / "config.json"))


def test_resolve_uncached_id(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tiny-org/absent.*HF_HUB_OFFLINE"):
        resolve_model_dir("tiny-org/absent", local_files_only=True, cache_dir=tmp_path)


def test_resolve_cached_id(hub_cache: Path) -> None:
    assert resolve_model_dir("tiny-org/tiny-llama") == hub_cache


def test_hub_id_embeddings(hub_cache: Path) -> None:
    embeddings = load_token_embeddings("tiny-org/tiny-llama")
    local = load_token_embeddings(str(hub_cache))

    assert embeddings.model_id == "tiny-org/tiny-llama"
    assert torch.equal(embeddings.weight, local.weight)


def test_hub_id_generate(hub_cache: Path) -> None:
    llm = FrozenLLM.load("tiny-org/tiny-llama", device="cpu")

    assert llm.model_id == "tiny-org/tiny-llama"
    assert isinstance(llm.generate(QUESTION, CONTEXT, max_new_tokens=2), str)


def test_load_frozen(llm: FrozenLLM) -> None:
    assert not llm.model.training
    assert all(not module.training for module in llm.model.modules())
    assert all(not parameter.requires_grad for parameter in llm.model.parameters())
    assert llm.device == torch.device("cpu")
    assert llm.dtype == torch.float32
    assert llm.dim == 32


def test_generate_inference_mode(llm: FrozenLLM) -> None:
    modes: list[bool] = []
    handle = llm.model.register_forward_pre_hook(lambda module, args: modes.append(torch.is_inference_mode_enabled()))
    try:
        llm.generate(QUESTION, CONTEXT, max_new_tokens=3)
    finally:
        handle.remove()

    assert modes
    assert all(modes)


def test_prompt_chat_template(llm: FrozenLLM) -> None:
    prompt = llm.build_prompt(QUESTION, CONTEXT)

    assert prompt.startswith("<s><|user|>\n")
    assert prompt.endswith("<|assistant|>\n")
    assert QUESTION in prompt
    assert all(text in prompt for text in CONTEXT)


def test_prompt_plain_text(tmp_path: Path) -> None:
    llm = FrozenLLM.load(str(make_tiny_llama(tmp_path / "plain", chat_template=False)), device="cpu")

    prompt = llm.build_prompt(QUESTION, [])
    embeds, _ = llm.input_embeddings(prompt)

    assert prompt.endswith(f"Question: {QUESTION}\nAnswer in a few words.\nAnswer:")
    assert "Context" not in prompt
    # Plain text lacks BOS, so it is added in front of the prompt tokens.
    bos_row = llm.model.get_input_embeddings().weight[llm.tokenizer.bos_token_id]
    assert torch.equal(embeds[0, 0], bos_row)


def test_prompt_empty_question(llm: FrozenLLM) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        llm.build_prompt("  ", CONTEXT)


def test_embeddings_single_bos(llm: FrozenLLM) -> None:
    prompt = llm.build_prompt(QUESTION, CONTEXT)
    token_ids = llm.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    embeds, attention_mask = llm.input_embeddings(prompt)

    assert token_ids[0] == llm.tokenizer.bos_token_id
    assert token_ids[1] != llm.tokenizer.bos_token_id
    assert embeds.shape == (1, len(token_ids), llm.dim)
    assert torch.equal(embeds[0], llm.model.get_input_embeddings().weight[token_ids])
    assert attention_mask.shape == (1, len(token_ids))
    assert bool((attention_mask == 1).all())


def test_embeddings_prefix_first(llm: FrozenLLM) -> None:
    prompt = llm.build_prompt(QUESTION, CONTEXT)
    prefix = torch.randn(NUM_SLOTS, llm.dim, generator=torch.Generator().manual_seed(1))
    plain, _ = llm.input_embeddings(prompt)

    embeds, attention_mask = llm.input_embeddings(prompt, prefix)

    assert embeds.shape == (1, NUM_SLOTS + plain.shape[1], llm.dim)
    assert attention_mask.shape == (1, NUM_SLOTS + plain.shape[1])
    assert torch.equal(embeds[0, :NUM_SLOTS], prefix)
    assert torch.equal(embeds[0, NUM_SLOTS:], plain[0])


@pytest.mark.parametrize("shape", [(NUM_SLOTS, 16), (1, NUM_SLOTS, 32), (32,)])
def test_embeddings_prefix_shape(llm: FrozenLLM, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"prefix must have shape \[K, 32\]"):
        llm.input_embeddings("Is there a road?", torch.zeros(shape))


def test_embeddings_prefix_gradient(llm: FrozenLLM) -> None:
    prefix = torch.zeros(NUM_SLOTS, llm.dim, requires_grad=True)

    embeds, attention_mask = llm.input_embeddings("Is there a road?", prefix)
    llm.model(inputs_embeds=embeds, attention_mask=attention_mask).logits.sum().backward()

    assert prefix.grad is not None
    assert float(prefix.grad.abs().sum()) > 0
    assert all(parameter.grad is None for parameter in llm.model.parameters())


def test_generate_prefix_reaches_model(llm: FrozenLLM) -> None:
    prefix = torch.randn(NUM_SLOTS, llm.dim, generator=torch.Generator().manual_seed(2))
    prompt_embeds, _ = llm.input_embeddings(llm.build_prompt(QUESTION, CONTEXT))
    seen, handle = capture_first_layer_input(llm)
    try:
        llm.generate(QUESTION, CONTEXT, prefix=prefix, max_new_tokens=3)
    finally:
        handle.remove()

    first_pass = seen[0]
    assert first_pass.shape == (1, NUM_SLOTS + prompt_embeds.shape[1], llm.dim)
    assert torch.equal(first_pass[0, :NUM_SLOTS], prefix)
    assert torch.equal(first_pass[0, NUM_SLOTS:], prompt_embeds[0])
    # Later passes feed one new token each, from the cache.
    assert [hidden.shape[1] for hidden in seen[1:]] == [1, 1]


def test_generate_prefix_changes_answer(llm: FrozenLLM) -> None:
    generator = torch.Generator().manual_seed(3)
    prefixes = [10 * torch.randn(NUM_SLOTS, llm.dim, generator=generator) for _ in range(3)]

    answers = {llm.generate(QUESTION, CONTEXT, prefix=prefix, max_new_tokens=8) for prefix in prefixes}

    assert len(answers) > 1


def test_generate_new_tokens_only(llm: FrozenLLM) -> None:
    prompt = llm.build_prompt(QUESTION, CONTEXT)
    input_ids = llm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        reference = llm.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=llm.tokenizer.pad_token_id,
        )
    new_tokens = reference[0, input_ids.shape[1] :]
    assert len(new_tokens) > 0

    answer = llm.generate(QUESTION, CONTEXT, max_new_tokens=6)

    assert answer == llm.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    assert answer
    assert QUESTION not in answer


def test_generate_bfloat16_prefix_cast(checkpoint: Path) -> None:
    llm = FrozenLLM.load(str(checkpoint), device="cpu", dtype=torch.bfloat16)
    prefix = torch.randn(NUM_SLOTS, llm.dim, dtype=torch.float64)

    embeds, _ = llm.input_embeddings("Is there a road?", prefix)

    assert llm.dtype == torch.bfloat16
    assert embeds.dtype == torch.bfloat16
    assert isinstance(llm.generate(QUESTION, CONTEXT, prefix=prefix, max_new_tokens=2), str)


def test_generate_sampling(llm: FrozenLLM) -> None:
    torch.manual_seed(0)
    answer = llm.generate(QUESTION, CONTEXT, max_new_tokens=4, greedy=False)

    assert isinstance(answer, str)


def test_load_missing_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        FrozenLLM.load(str(tmp_path / "no-such-model"))


def test_load_copied_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder)

    llm = FrozenLLM.load(str(folder), device="cpu")

    assert llm.generate(QUESTION, CONTEXT, max_new_tokens=6) == FrozenLLM.load(str(checkpoint), device="cpu").generate(
        QUESTION, CONTEXT, max_new_tokens=6
    )
