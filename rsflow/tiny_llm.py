"""A tiny random-weight LLaMA checkpoint with a trained BPE tokenizer, for tests and the sample job.

The checkpoint is written with `save_pretrained` in the layout of a downloaded one, so
the code under test loads it along the same path as a real model.
Building one takes well under a second once transformers is imported.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# Role markers are plain text, so the template needs no extra special tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = [
    "The satellite image shows a river crossing farmland near a small town.",
    "Dense forest covers the hills, and a road runs along the valley floor.",
    "Is there a residential area in the image? Yes, with houses, gardens and roads.",
    "Sentinel-2 multispectral bands capture vegetation, water, bare soil and clouds.",
    "How many buildings are in the scene? More than one hundred buildings.",
    "An airport runway lies east of the harbour, next to a parking lot.",
    "Aerial photo of a golf course, a stadium and a commercial district.",
    "The chip footprint intersects a lake shore with wetlands and meadows.",
    "Is a water area present? No. Is the number of roads equal to zero? No.",
    "Urban land use: industrial buildings, railway tracks, bridges and highways.",
]


def train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `CORPUS` that adds a BOS token like LLaMA's."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()

    # The full byte alphabet keeps any input text encodable with no unknown token.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)

    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
    )


def make_tiny_llama(
    directory: str | Path,
    vocab_size: int = 320,
    hidden_size: int = 32,
    sharded: bool = False,
    *,
    num_layers: int = 2,
    max_position_embeddings: int = 128,
    tie_word_embeddings: bool = False,
    chat_template: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiny LLaMA checkpoint and its tokenizer to `directory` and return the folder.

    `vocab_size` is the BPE target size. The 256 byte tokens and 4 special tokens come
    first, and the small corpus stops the merges at 562 tokens, so the model's vocabulary
    is `len(tokenizer)`, between 260 and 562. The model has 4 attention heads of even size,
    so `hidden_size` must be a multiple of 8. With `sharded`, `max_shard_size` is 16 kB, so
    the folder gets a `model.safetensors.index.json` and several shards, and any tensor
    above 16 kB (the default input embedding has 40 kB) gets a shard of its own. Without
    `chat_template`, the tokenizer has no chat template. The weights depend only on
    `seed`, and the global torch random state is left as it was.
    """
    if hidden_size % 8:
        raise ValueError(f"hidden_size must be a multiple of 8 (4 heads of even size), got {hidden_size}")
    directory = Path(directory)
    tokenizer = train_tokenizer(vocab_size)
    if not chat_template:
        tokenizer.chat_template = None

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)

    model.save_pretrained(directory, max_shard_size="16kB" if sharded else "50GB")
    tokenizer.save_pretrained(directory)
    return directory
