"""Tiny ViTMAE checkpoints built from the real config class, for tests and the sample job.

They have random weights: their embeddings carry no meaning, but they go through the same loading,
normalization and pooling code as a real checkpoint such as facebook/vit-mae-base.
"""

from __future__ import annotations

import json
from pathlib import Path


def make_tiny_vitmae(
    directory: str | Path,
    image_size: int = 32,
    patch_size: int = 8,
    num_channels: int = 3,
    hidden_size: int = 32,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised two-layer ViTMAE with its image processor to `directory`."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    directory = Path(directory)
    config = ViTMAEConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        decoder_hidden_size=hidden_size,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=2 * hidden_size,
    )
    torch.manual_seed(seed)
    ViTMAEForPreTraining(config).save_pretrained(directory)
    if num_channels == 3:
        # The file that ViTImageProcessor.save_pretrained writes, without the PIL dependency it needs.
        processor = {
            "image_processor_type": "ViTImageProcessor",
            "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
            "size": {"height": image_size, "width": image_size},
        }
        (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return directory
