"""Write the tiny random-weight models that the sample job runs with.

They stand in for real checkpoints, which cannot be bundled: a ViTMAE encoder (in place of, for
example, facebook/vit-mae-base). Their answers carry no meaning; they show that the pipeline runs.

    python examples/make_sample_models.py OUTPUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from rsflow.tiny import make_tiny_vitmae


def main(output: Path) -> None:
    encoder = output / "encoder"
    if not (encoder / "config.json").is_file():
        make_tiny_vitmae(encoder, image_size=64, patch_size=16, hidden_size=64)
    print(encoder)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "sample-output/models"))
