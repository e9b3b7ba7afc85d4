"""Tiny ViTMAE checkpoints for tests; they live in the library so that the sample job can use them."""

from rsflow.tiny_encoder import make_tiny_vitmae

__all__ = ["make_tiny_vitmae"]
