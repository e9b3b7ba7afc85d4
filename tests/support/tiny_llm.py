"""Tiny LLaMA checkpoints for tests; they live in the library so that the sample job can use them."""

from rsflow.tiny_llm import make_tiny_llama, train_tokenizer

__all__ = ["make_tiny_llama", "train_tokenizer"]
