"""The frozen image encoder: any Hugging Face ViTMAE-style checkpoint, by hub id or local folder.

A chip's embedding is the mean of the encoder's patch tokens in its last hidden layer, the CLS token
left out. That is the "global pool" with which He et al. fine-tune and probe MAE encoders ("Masked
Autoencoders Are Scalable Vision Learners", https://arxiv.org/abs/2111.06377). ViTMAE masks patches
at random even at inference. Here the mask ratio is set to zero and the patch order fixed, so every
patch is seen once, in order, and the same chip always gives the same embedding.

Input values arrive scaled to [0, 1] by `rsflow.raster`; the encoder normalizes them with the
checkpoint's image processor mean and standard deviation (ImageNet's when the checkpoint has
none and takes 3 channels, 0.5 and 0.5 otherwise), resizes chips to the encoder's image size
(bilinear, antialiased), and sets invalid pixels to zero after normalization, that is to the mean.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rsflow.hub import best_device, quiet_transformers, resolve_model_dir, weights_sha256

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Model types whose first output token is a CLS token and the rest are patch tokens.
SUPPORTED_MODEL_TYPES = ("vit_mae", "vit", "vit_msn", "dinov2", "deit")


class EncoderError(ValueError):
    """An encoder checkpoint that rsflow cannot use."""


@dataclass(frozen=True)
class EncoderInfo:
    """The record of the encoder that produced a store's vectors, as the manifest keeps it."""

    model_id: str
    weights_sha256: str
    model_type: str
    embedding_dim: int
    image_size: int
    num_channels: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    pooling: str = "mean of patch tokens, CLS excluded"

    def to_dict(self) -> dict:
        return asdict(self)


class ImageEncoder:
    """A frozen ViT-family encoder that turns chips into one vector each."""

    def __init__(self, model, info: EncoderInfo, device: str):
        self.model = model
        self.info = info
        self.device = device

    @classmethod
    def load(cls, model: str, device: str | None = None) -> "ImageEncoder":
        """Load `model` (hub id or local folder) frozen, in eval mode, on the best device."""
        from transformers import AutoConfig, AutoModel

        model_dir = resolve_model_dir(model)
        config = AutoConfig.from_pretrained(model_dir)
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise EncoderError(
                f"{model}: model type {config.model_type!r} is not a ViT-style image encoder; "
                f"rsflow supports {', '.join(SUPPORTED_MODEL_TYPES)}."
            )
        if config.model_type == "vit_mae":
            config.mask_ratio = 0.0

        device = best_device(device)
        with quiet_transformers():
            network = AutoModel.from_pretrained(model_dir, config=config)
        network.eval().requires_grad_(False).to(device)

        mean, std = _normalization(model_dir, config.num_channels)
        image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        # A local folder is recorded by its absolute path, so the store finds it from any directory.
        model_id = str(model_dir) if Path(model).expanduser().is_dir() else model
        info = EncoderInfo(
            model_id=model_id,
            weights_sha256=weights_sha256(model_dir),
            model_type=config.model_type,
            embedding_dim=int(config.hidden_size),
            image_size=int(image_size),
            num_channels=int(config.num_channels),
            image_mean=mean,
            image_std=std,
        )
        logger.info("loaded encoder %s (%s, %d-d) on %s", model, config.model_type, info.embedding_dim, device)
        return cls(network, info, device)

    def embed(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Embed chips: `values` float32 [N, C, H, W] in [0, 1], `valid` bool [N, H, W] -> float32 [N, D]."""
        import torch
        import torch.nn.functional as F

        if values.ndim != 4 or values.shape[1] != self.info.num_channels:
            raise EncoderError(
                f"expected chips of shape [N, {self.info.num_channels}, H, W], got {tuple(values.shape)}."
            )
        size = self.info.image_size
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(valid)).to(self.device).unsqueeze(1).float()
            if pixels.shape[-2:] != (size, size):
                pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                mask = F.interpolate(mask, size=(size, size), mode="nearest")

            mean = torch.tensor(self.info.image_mean, device=self.device).view(1, -1, 1, 1)
            std = torch.tensor(self.info.image_std, device=self.device).view(1, -1, 1, 1)
            pixels = (pixels - mean) / std * mask

            model_dtype = next(self.model.parameters()).dtype
            hidden = self._forward(pixels.to(model_dtype))
            pooled = hidden[:, 1:, :].float().mean(dim=1)
        return pooled.cpu().numpy().astype(np.float32)

    def _forward(self, pixels):
        import torch

        if self.info.model_type != "vit_mae":
            return self.model(pixel_values=pixels).last_hidden_state
        # A fixed noise makes ViTMAE keep patches in their own order (its random shuffle sorts by noise).
        patches = (self.info.image_size // self.model.config.patch_size) ** 2
        noise = torch.arange(patches, device=pixels.device, dtype=torch.float32).expand(pixels.shape[0], -1)
        return self.model(pixel_values=pixels, noise=noise).last_hidden_state


def _normalization(model_dir: Path, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    processor_file = model_dir / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean, std = processor.get("image_mean"), processor.get("image_std")
        if mean and std and len(mean) == channels and len(std) == channels:
            return tuple(float(m) for m in mean), tuple(float(s) for s in std)
        logger.warning(
            "%s: image_mean/image_std do not have %d entries; using 0.5 and 0.5 per channel", processor_file, channels
        )
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels
