"""Write the tiny random-weight models that the sample job runs with.

They stand in for real checkpoints, which cannot be bundled: a ViTMAE encoder (in place of, for
example, facebook/vit-mae-base) and a LLaMA-architecture LLM (in place of, for example,
meta-llama/Llama-2-7b-chat-hf). Both are built from the real transformers config classes and saved
as checkpoints, so rsflow loads them as it would load real ones. Their answers carry no meaning.

    python examples/make_sample_models.py OUTPUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rsflow.tiny_encoder import make_tiny_vitmae
from rsflow.tiny_llm import make_tiny_llama


def main(output: Path) -> None:
    encoder = output / "encoder"
    if not (encoder / "config.json").is_file():
        make_tiny_vitmae(encoder, image_size=64, patch_size=16, hidden_size=64)
    llm = output / "llm"
    if not (llm / "config.json").is_file():
        make_tiny_llama(llm, hidden_size=64, max_position_embeddings=512)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the tiny random-weight sample models.")
    parser.add_argument("output", nargs="?", default="sample-output/models", type=Path,
                        help="folder that receives encoder/ and llm/")
    main(parser.parse_args().output)
