"""The frozen causal LLM: token-embedding priors of texts, and generation behind a soft prefix.

A text's prior is the LLM's own input embeddings of its tokens, pooled into K contiguous
slots, so it lives in the space where the flow's prefix vectors must land. At question
time `FrozenLLM` prepends K such vectors to the embedded prompt through `inputs_embeds`, as
in prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691) but with vectors
that the flow computes per image instead of vectors learned once. The LLM is never changed.

Any Hugging Face causal LM works, by hub id or local folder. Importing this module imports
torch and transformers, which takes a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rsflow.hub import HUB_BIN_PATTERNS, HUB_METADATA_PATTERNS, HUB_SAFETENSORS_PATTERNS, resolve_model_dir

logger = logging.getLogger(__name__)

# Eight slots keep a prior at 8 x D_llm floats, 128 KiB a text for a 4096-wide LLaMA. A
# one-sentence caption (an estimated 10 to 30 tokens) still gets 1 to 4 tokens a slot, so the
# slots follow its word order. The store records K in its manifest, so another K needs a new store.
DEFAULT_PREFIX_SLOTS = 8

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

def context_length(config: PretrainedConfig) -> int | None:
    """Return the LLM's maximum number of positions from its config, or None if it has no limit.

    The text part of a multimodal config is used where there is one. GPT-2 style configs
    map `max_position_embeddings` to `n_positions`, so one attribute covers most models.
    """
    text_config = config.get_text_config()
    for name in ("max_position_embeddings", "max_sequence_length", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class TokenEmbeddings:
    """The input-embedding matrix of an LLM with its tokenizer, enough to compute priors.

    `weight` is [vocab, dim] float32 on the CPU. `max_length` is the LLM's context length
    from its config (None where the config sets none). `weights_sha256` is the SHA-256 of
    `weight`'s bytes as little-endian float32 in row-major order. It hashes the tensor, not
    the checkpoint files, so the single-tensor read and the full-model read give the same
    digest, and a re-sharded or re-saved copy of the same weights matches as well.
    """

    model_id: str
    tokenizer: PreTrainedTokenizerBase
    weight: torch.Tensor
    dim: int
    max_length: int | None
    weights_sha256: str


def load_token_embeddings(model: str) -> TokenEmbeddings:
    """Load the tokenizer and the input-embedding matrix of a causal LLM without its other weights.

    For a safetensors checkpoint (one file, or shards with `model.safetensors.index.json`)
    only the tensor of the input embedding is read, from the one file that contains it. Its
    name comes from the model class itself, built on the meta device, so the same code
    serves any architecture. A `.bin` checkpoint, or a safetensors one where that name is
    missing, falls back to loading the whole model on the CPU.

    Raises:
        FileNotFoundError: the model cannot be found, or its folder has no weights.
        ValueError: the weights lack the input embedding, or it has fewer rows than the
            tokenizer has tokens.
    """
    folder = resolve_model_dir(model, allow_patterns=HUB_METADATA_PATTERNS)
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    weight = read_input_embedding(model, folder, config)
    if weight is None:
        weight = read_input_embedding_from_full_model(model, folder)
    weight = weight.detach().to(device="cpu", dtype=torch.float32).contiguous()

    if weight.shape[0] < len(tokenizer):
        raise ValueError(
            f"model {model!r}: the input embedding has {weight.shape[0]} rows but the tokenizer has "
            f"{len(tokenizer)} tokens; the tokenizer does not belong to these weights"
        )
    return TokenEmbeddings(
        model_id=model,
        tokenizer=tokenizer,
        weight=weight,
        dim=int(weight.shape[1]),
        max_length=context_length(config),
        weights_sha256=tensor_sha256(weight),
    )


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Return the SHA-256 of a CPU tensor's bytes in row-major order."""
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    return hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()


def input_embedding_names(config: PretrainedConfig) -> list[str]:
    """Return the checkpoint names that the input-embedding weight may be stored under.

    The model is built on the meta device, which allocates no memory, and asked for its
    input embedding. A tied output head shares the parameter, so its name is a candidate
    too. Some checkpoints were saved from the base model (GPT-2's, for one) and lack the
    `base_model_prefix`, so each name without it and with it added follows the plain names.
    """
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    embedding = skeleton.get_input_embeddings().weight
    names = [name for name, parameter in skeleton.named_parameters(remove_duplicate=False) if parameter is embedding]

    prefix = skeleton.base_model_prefix
    variants = []
    for name in names:
        if prefix and name.startswith(prefix + "."):
            variants.append(name[len(prefix) + 1 :])
        if prefix:
            variants.append(f"{prefix}.{name}")
    return list(dict.fromkeys(names + variants))


def read_input_embedding(model: str, folder: Path, config: PretrainedConfig) -> torch.Tensor | None:
    """Read only the input-embedding tensor from a safetensors checkpoint, or return None.

    None means that the checkpoint has no safetensors weights or that none of the
    candidate names is in them, and the caller then loads the whole model.
    """
    names = input_embedding_names(config)
    index_path = folder / SAFETENSORS_INDEX_FILE

    # A sharded checkpoint's index names the one shard to open, and otherwise the single file is tried.
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        filename = next((weight_map[name] for name in names if name in weight_map), None)
        if filename is None:
            logger.warning("%s: none of %s found in %s, so the whole model is loaded", model, names, index_path)
            return None
    else:
        filename = SAFETENSORS_FILE

    path = resolve_weight_file(model, folder, filename)
    if path is None and index_path.is_file():
        raise FileNotFoundError(f"model {model!r}: shard {filename!r} listed in {index_path} is missing")
    if path is None:
        return None

    with safe_open(path, framework="pt") as reader:
        name = next((name for name in names if name in reader.keys()), None)
        if name is None:
            logger.warning("%s: none of %s found in %s, so the whole model is loaded", model, names, path)
            return None
        logger.info("%s: reading %s from %s", model, name, path.name)
        return reader.get_tensor(name)


def is_local_folder(model: str) -> bool:
    """Return whether `model` names an existing folder rather than a hub id."""
    return Path(model).expanduser().is_dir()


def resolve_weight_file(model: str, folder: Path, filename: str) -> Path | None:
    """Return the path of one weight file of the checkpoint, fetching only it for a hub id.

    Returns None when the file does not exist (a local folder, or a hub repository
    without it).
    """
    path = folder / filename
    if path.is_file() or is_local_folder(model):
        return path if path.is_file() else None

    fetched = resolve_model_dir(model, allow_patterns=[filename]) / filename
    return fetched if fetched.is_file() else None


def read_input_embedding_from_full_model(model: str, folder: Path) -> torch.Tensor:
    """Load the whole model on the CPU in its stored dtype and return its input-embedding weight.

    Raises:
        FileNotFoundError: the folder has no weights that transformers can load.
        ValueError: the weights load but lack the input embedding, which transformers
            would otherwise fill with random values.
    """
    if not is_local_folder(model):
        folder = resolve_model_dir(model, allow_patterns=HUB_METADATA_PATTERNS + HUB_BIN_PATTERNS)
    logger.info("%s: no safetensors input embedding, so the whole model is loaded from %s", model, folder)

    try:
        full_model, loading_info = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", output_loading_info=True)
    except OSError as error:
        raise FileNotFoundError(
            f"model {model!r}: no loadable weights in {folder} ({error}). Expected model.safetensors, "
            "a model.safetensors.index.json with its shards, or pytorch_model.bin."
        ) from error

    missing = set(loading_info["missing_keys"]) & set(input_embedding_names(full_model.config))
    if missing:
        raise ValueError(
            f"model {model!r}: the checkpoint in {folder} has no input embedding under {sorted(missing)}; "
            "check that the folder contains the weights of this architecture"
        )
    return full_model.get_input_embeddings().weight.detach()


@dataclass
class PriorResult:
    """Priors of a batch of texts.

    `priors` is float32 [N, K, D]. `token_counts` [N] is the number of tokens pooled
    into each prior, after truncation. `truncated` is the number of texts that were cut to
    the LLM's context length, for the caller to report.
    """

    priors: np.ndarray
    token_counts: np.ndarray
    truncated: int


def slot_bounds(num_tokens: int, num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the [start, end) token range that each of K slots averages.

    Slot k covers tokens floor(k n / K) up to, not including, max(floor(k n / K) + 1,
    floor((k + 1) n / K)). With n >= K the ranges are contiguous, disjoint and cover every
    token, and their sizes differ by at most one. With n < K each slot takes the single
    token floor(k n / K), so each token fills floor(K / n) or ceil(K / n) consecutive slots.
    """
    slots = np.arange(num_slots)
    starts = slots * num_tokens // num_slots
    ends = np.maximum(starts + 1, (slots + 1) * num_tokens // num_slots)
    return starts, ends


def text_priors(texts: list[str], embeddings: TokenEmbeddings, num_slots: int = DEFAULT_PREFIX_SLOTS) -> PriorResult:
    """Compute the prior of each text: its token input embeddings averaged over K contiguous slots.

    Texts are tokenized without special tokens (no BOS or EOS), and a text with more tokens
    than the LLM's context length keeps only its first `max_length` tokens. The slots are
    defined in `slot_bounds`. All slots of all texts are averaged in one
    `torch.nn.functional.embedding_bag` call, so no [tokens, D] copy of the rows is made.

    Raises:
        ValueError: `num_slots` is below 1, or a text is empty, blank or has no tokens.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be at least 1, got {num_slots}")
    for position, text in enumerate(texts):
        if not text or not text.strip():
            raise ValueError(f"text {position} is empty or blank; drop it before computing priors")
    if not texts:
        return PriorResult(np.zeros((0, num_slots, embeddings.dim), np.float32), np.zeros(0, np.int64), 0)

    # verbose=False silences the tokenizer's warning about texts past its model_max_length,
    # because truncation happens below and is counted.
    token_ids = embeddings.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    bag_ids, bag_offsets, token_counts, truncated = [], [], [], 0
    offset = 0
    for position, ids in enumerate(token_ids):
        if not ids:
            raise ValueError(
                f"text {position} ({texts[position][:40]!r}) has no tokens; drop it before computing priors"
            )
        if embeddings.max_length is not None and len(ids) > embeddings.max_length:
            ids = ids[: embeddings.max_length]
            truncated += 1

        # Contiguous slots are the token run itself split at the slot starts, and shorter texts repeat tokens.
        ids = np.asarray(ids, dtype=np.int64)
        starts, _ = slot_bounds(len(ids), num_slots)
        if len(ids) >= num_slots:
            bag_ids.append(ids)
            bag_offsets.append(offset + starts)
        else:
            bag_ids.append(ids[starts])
            bag_offsets.append(offset + np.arange(num_slots))
        offset += len(bag_ids[-1])
        token_counts.append(len(ids))

    pooled = torch.nn.functional.embedding_bag(
        torch.from_numpy(np.concatenate(bag_ids)),
        embeddings.weight,
        torch.from_numpy(np.concatenate(bag_offsets)),
        mode="mean",
    )
    priors = pooled.reshape(len(texts), num_slots, embeddings.dim).numpy()
    return PriorResult(priors=priors, token_counts=np.asarray(token_counts, dtype=np.int64), truncated=truncated)


def default_device() -> torch.device:
    """Return the first CUDA device where there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """Return bfloat16 on a GPU that supports it, float16 on other GPUs, and float32 on the CPU."""
    # NOTE: the tests run on the CPU only, so the GPU defaults have not been run.
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class FrozenLLM:
    """A causal LLM and its tokenizer, frozen, that answers a question behind a soft prefix.

    Frozen means `eval()`, `requires_grad_(False)` on every parameter, and generation under
    `torch.inference_mode()`. `input_embeddings` runs outside inference mode, so a caller
    can still send gradients through the frozen model to a prefix that requires them.

    Example (`folder` is any causal LM checkpoint; the prefix is [K, hidden size]):

        llm = FrozenLLM.load(folder)
        prefix = torch.zeros(8, llm.dim)
        answer = llm.generate("Is there a river?", ["A river crosses farmland."], prefix=prefix)
    """

    def __init__(self, model_id: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model_id = model_id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.leading_special_ids = leading_special_ids(tokenizer)

    @classmethod
    def load(
        cls, model: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> FrozenLLM:
        """Load a causal LM and its tokenizer from a folder or hub id, frozen, on `device`.

        `device` defaults to the first CUDA device where there is one, else the CPU, and
        `dtype` to bfloat16 on a GPU (float16 where bfloat16 is unsupported) and float32
        on the CPU.
        """
        folder = resolve_model_dir(model, allow_patterns=HUB_METADATA_PATTERNS + HUB_SAFETENSORS_PATTERNS)
        if not any(folder.glob("*.safetensors")) and not is_local_folder(model):
            folder = resolve_model_dir(model, allow_patterns=HUB_METADATA_PATTERNS + HUB_BIN_PATTERNS)
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype if dtype is not None else default_dtype(device)

        # NOTE: the whole model goes to one device, so a model larger than one GPU fails to load here.
        # Splitting it would need device_map="auto" and the accelerate package.
        tokenizer = AutoTokenizer.from_pretrained(folder)
        network = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        logger.info("loaded %s on %s as %s", model, device, dtype)
        return cls(model, network, tokenizer)

    @property
    def dim(self) -> int:
        """Width of the LLM's input embeddings, which a prefix vector must match."""
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        """Device of the model's input embedding."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's input embedding, to which a prefix is cast."""
        return self.model.get_input_embeddings().weight.dtype

    def build_prompt(self, question: str, context: list[str]) -> str:
        """Build the prompt text for a question and its context texts.

        The chat template is applied where the tokenizer has one, with a single user turn
        and the assistant turn opened. A tokenizer without a template gets plain text that
        ends in "Answer:".
        """
        message = format_question(question, context)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
        return f"{message}\nAnswer:"

    def input_embeddings(self, prompt: str, prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompt and put the prefix vectors before it.

        Returns `inputs_embeds` [1, K + L, D] in the model's dtype and device, and the
        attention mask [1, K + L] of ones. The prompt keeps the tokenizer's leading special
        tokens (such as LLaMA's BOS) after the prefix, added only when the prompt text
        lacks them, because a chat template usually writes them itself.

        Raises:
            ValueError: the prefix is not a [K, D] tensor with D the model's embedding width.
        """
        token_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        leading = self.leading_special_ids
        if leading and token_ids[: len(leading)] != leading:
            token_ids = leading + token_ids
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        embeds = self.model.get_input_embeddings()(ids)

        if prefix is not None:
            if prefix.ndim != 2 or prefix.shape[1] != self.dim:
                raise ValueError(
                    f"prefix must have shape [K, {self.dim}] for {self.model_id}, got {list(prefix.shape)}"
                )
            prefix = prefix.to(device=embeds.device, dtype=embeds.dtype)
            embeds = torch.cat([prefix.unsqueeze(0), embeds], dim=1)

        attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds, attention_mask

    def generate(
        self,
        question: str,
        context: list[str],
        prefix: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        greedy: bool = True,
    ) -> str:
        """Answer a question from its context texts behind an optional [K, D] soft prefix.

        Decoding is greedy unless `greedy` is false, which samples with the model's
        generation config. Returns the new tokens only, decoded without special tokens and
        stripped.
        """
        prompt = self.build_prompt(question, context)
        inputs_embeds, attention_mask = self.input_embeddings(prompt, prefix)
        pad_token_id = self.tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.tokenizer.eos_token_id

        # Given inputs_embeds and no input_ids, a decoder-only model returns the new tokens alone.
        with torch.inference_mode():
            output = self.model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=not greedy,
                pad_token_id=pad_token_id,
            )
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()


def format_question(question: str, context: list[str]) -> str:
    """Write the question after the context texts, one bullet each, as the user message."""
    if not question.strip():
        raise ValueError("question is empty; pass the question to answer")
    lines = []
    if context:
        lines.append("Context about this place:")
        lines.extend(f"- {text.strip()}" for text in context)
        lines.append("")
    lines.append(f"Question: {question.strip()}")
    lines.append("Answer in a few words.")
    return "\n".join(lines)


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Return the special tokens that the tokenizer puts before a text, such as LLaMA's BOS."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    special = set(tokenizer.all_special_ids)
    leading: list[int] = []
    for token_id in probe:
        if token_id not in special:
            break
        leading.append(token_id)
    return leading
