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


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    from support.tiny_llm import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def other_llm_dir(tmp_path_factory) -> Path:
    """A second tiny LLM with other weights, for the LLM-mismatch checks."""
    from support.tiny_llm import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("other-llama"), seed=1)


@pytest.fixture(scope="session")
def paired_store_template(tmp_path_factory, tiny_encoder, tiny_llm_dir) -> Path:
    """A store of RSVQA-LR GeoTIFFs, the COG and Landsat scenes, and the example texts, paired."""
    from rsflow.ingest import IngestOptions, ingest_images
    from rsflow.store.db import Store
    from rsflow.textingest import ensure_llm, ingest_texts

    path = tmp_path_factory.mktemp("paired-store") / "store"
    store = Store.open_or_create(path)
    folders = [IMAGERY_DIR / "rsvqa_lr", IMAGERY_DIR / "cog", IMAGERY_DIR / "landsat", IMAGERY_DIR / "rsicd"]
    ingest_images(store, folders, tiny_encoder, IngestOptions(chip_size=64))
    embeddings = ensure_llm(store, str(tiny_llm_dir), 4)
    texts = REPO_DIR / "examples" / "texts"
    sources = [texts / "points.jsonl", texts / "areas.csv", IMAGERY_DIR / "rsicd" / "stadium_1_captions.jsonl"]
    ingest_texts(store, sources, embeddings)
    return path


@pytest.fixture
def paired_store(paired_store_template, tmp_path) -> Path:
    """A private copy of the paired store."""
    path = tmp_path / "paired"
    shutil.copytree(paired_store_template, path)
    return path


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Run torch on one thread: on a busy 2-core machine two threads make tiny models many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
