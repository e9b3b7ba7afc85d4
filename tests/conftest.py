"""Shared fixtures: the bundled sample imagery, tiny real models, and stores built from them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# No test may reach the Hugging Face hub; models are built locally from the real config classes.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("LANCE_LOG", "error")

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
SAMPLE_DIR = REPO_DIR / "examples" / "data"
IMAGERY_DIR = SAMPLE_DIR / "imagery"
TEST_DATA_DIR = TESTS_DIR / "data"

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def imagery_dir() -> Path:
    return IMAGERY_DIR


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def test_data_dir() -> Path:
    return TEST_DATA_DIR


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    from support.tiny_encoder import make_tiny_vitmae

    return make_tiny_vitmae(tmp_path_factory.mktemp("tiny-vitmae"))


@pytest.fixture(scope="session")
def other_encoder_dir(tmp_path_factory) -> Path:
    """A second tiny encoder with other weights, for the encoder-mismatch checks."""
    from support.tiny_encoder import make_tiny_vitmae

    return make_tiny_vitmae(tmp_path_factory.mktemp("other-vitmae"), seed=1)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    from rsflow.encoders import ImageEncoder

    return ImageEncoder.load(str(tiny_encoder_dir), device="cpu")


@pytest.fixture(scope="session")
def lr_store_template(tmp_path_factory, tiny_encoder) -> Path:
    """A store of the RSVQA low-resolution GeoTIFFs, built once; copy it before changing it."""
    from rsflow.ingest import IngestOptions, ingest_images
    from rsflow.store.db import Store

    path = tmp_path_factory.mktemp("lr-store") / "store"
    store = Store.open_or_create(path)
    ingest_images(store, [IMAGERY_DIR / "rsvqa_lr"], tiny_encoder, IngestOptions(chip_size=64))
    return path


@pytest.fixture
def lr_store(lr_store_template, tmp_path) -> Path:
    """A private copy of the RSVQA low-resolution store."""
    path = tmp_path / "store"
    shutil.copytree(lr_store_template, path)
    return path
