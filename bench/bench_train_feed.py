"""Benchmark the training feed: the flow fed from the store's Lance tables against in-memory arrays.

Run from the repository root:

    python -m bench.bench_train_feed                      # Dv = 768, D = 256, K = 8, batches of 256
    python -m bench.bench_train_feed --prior-dim 512 --steps 8 --threads 2

The script writes a new store in a temporary folder. It has `--chips` chips with random
embeddings of `--embedding-dim` floats at random places over the Netherlands, with their H3 cells
at resolution 7. It has `--texts` texts with random priors of `--slots` x `--prior-dim` floats,
and `--pairs-per-chip` pairs for each chip with texts drawn at random. `PairSource` holds out a
fifth of the cells, as `rsflow train` does, and the benchmark uses the training split.

The same pairs are then fed to `rsflow.train.train_flow` in two ways, for `--steps` optimizer
steps each:
- Lance: `PairSource(store).batches("train", batch_size, epoch=...)`, the feed of `rsflow train`,
  which reads each batch's vectors from Lance with random-access `take`;
- memory: every training pair's vectors read into numpy arrays once before timing, and batches
  cut from them by a permutation per epoch.
Everything else is the same. Each run trains a fresh `PrefixFlow` of
`FlowConfig.for_dims(prior_dim, embedding_dim, slots)` from the same torch seed, with the same
`TrainConfig`, for one epoch cut to `--steps` batches. Its normalization is set from the
in-memory arrays beforehand, so `fit_normalization=False` and neither side makes an extra pass.

The rate is taken between the end of the first and the end of the last optimizer step (from
`on_step`). It leaves out the one-time start of a run (the optimizer, the first batch, and for
Lance the scan of the pairs table that fills the shuffle buffer) and the checkpoint written at
the end. Each rate is given by the wall clock and by the CPU time of the whole process (torch and
Lance threads together), which other jobs on the machine disturb less. Inside each run, the
script also times every request for the next batch. The share of the run spent waiting for data
gives a ratio that the load changes little. The feed-alone table covers whole epochs, that scan
included, and its CPU time per batch gives another estimate of the ratio.

The two sides alternate for `--rounds` rounds (Lance first in odd rounds, memory first in even
ones), after one untimed warm-up run, because the first optimizer steps of a process are several
times slower. The tables give medians.

Torch runs on `--threads` threads, 1 by default. On a 2-core machine shared with other jobs, torch's
default of 2 threads made the same step 3 to 10 times slower from one step to the next (1.1 s
against 3.4 to 16.8 s for D = 256 and batches of 128), which drowns the difference between the
feeds. D = 512 took about 8.5 s per step of 256 pairs there on one thread, too slow for three
rounds of both sides in 10 minutes, so the default D is 256.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h3
import lance
import numpy as np
import pyarrow as pa
import torch

from rsflow.batches import PairSource
from rsflow.flow import FlowConfig, NormalizationStats, PrefixFlow
from rsflow.store.db import Store
from rsflow.store.manifest import DEFAULT_H3_RESOLUTION
from rsflow.store.schema import images_schema, texts_schema
from rsflow.train import TrainConfig, train_flow

Batch = dict[str, np.ndarray]

# A box around the Netherlands in EPSG:4326: west, south, east, north.
AREA = (3.36, 50.75, 7.23, 53.55)
WRITE_BATCH_ROWS = 4096
WINDOW = {"col": 0, "row": 0, "width": 224, "height": 224}
LABELS = {"memory": "memory (numpy arrays)", "Lance": "Lance (`PairSource.batches`)"}


def conform(columns: dict[str, pa.Array], schema: pa.Schema, rows: int) -> pa.Table:
    """Build a table of `schema` from `columns`, with nulls in the nullable columns not given."""
    arrays = [columns.get(field.name, pa.nulls(rows, field.type)) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def vectors(rng: np.random.Generator, rows: int, width: int) -> pa.FixedSizeListArray:
    values = rng.standard_normal((rows, width), dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width)


def chip_batches(arguments: argparse.Namespace, rng: np.random.Generator) -> Iterator[pa.Table]:
    schema = images_schema(arguments.embedding_dim)
    west, south, east, north = AREA
    for start in range(0, arguments.chips, WRITE_BATCH_ROWS):
        count = min(WRITE_BATCH_ROWS, arguments.chips - start)
        lons, lats = rng.uniform(west, east, count), rng.uniform(south, north, count)
        cells = [h3.str_to_int(h3.latlng_to_cell(lat, lon, DEFAULT_H3_RESOLUTION)) for lon, lat in zip(lons, lats)]
        columns = {
            "chip_id": pa.array([f"chip-{i:07d}" for i in range(start, start + count)]),
            "source": pa.array(["generated.tif"] * count),
            "source_sha256": pa.array(["0" * 64] * count),
            "window": pa.array([WINDOW] * count, schema.field("window").type),
            "lon": pa.array(lons),
            "lat": pa.array(lats),
            "cell": pa.array(cells, pa.int64()),
            "embedding": vectors(rng, count, arguments.embedding_dim),
        }
        yield conform(columns, schema, count)


def text_batches(arguments: argparse.Namespace, rng: np.random.Generator) -> Iterator[pa.Table]:
    schema = texts_schema(arguments.slots, arguments.prior_dim)
    for start in range(0, arguments.texts, WRITE_BATCH_ROWS):
        count = min(WRITE_BATCH_ROWS, arguments.texts - start)
        columns = {
            "text_id": pa.array([f"text-{i:07d}" for i in range(start, start + count)]),
            "text": pa.array([f"generated text {i}" for i in range(start, start + count)]),
            "kind": pa.array(["caption"] * count),
            "prior": vectors(rng, count, arguments.slots * arguments.prior_dim),
        }
        yield conform(columns, schema, count)


def write_store(folder: Path, arguments: argparse.Namespace) -> Store:
    """Write chips, texts and random pairs in the store's schemas, and a manifest that names no real model."""
    rng = np.random.default_rng(0)
    store = Store.open_or_create(folder)
    store.manifest.encoder = {
        "model_id": "generated", "weights_sha256": "0" * 64, "embedding_dim": arguments.embedding_dim,
    }
    store.manifest.llm = {"model_id": "generated", "weights_sha256": "1" * 64, "dim": arguments.prior_dim}
    store.manifest.prefix_slots = arguments.slots
    store.save_manifest()

    for name, batches, schema in (
        ("images", chip_batches(arguments, rng), images_schema(arguments.embedding_dim)),
        ("texts", text_batches(arguments, rng), texts_schema(arguments.slots, arguments.prior_dim)),
    ):
        record_batches = (batch for table in batches for batch in table.to_batches())
        reader = pa.RecordBatchReader.from_batches(schema, record_batches)
        store.db.create_table(name, data=reader, schema=schema)

    chip_rows = np.repeat(np.arange(arguments.chips), arguments.pairs_per_chip)
    text_rows = rng.integers(0, arguments.texts, len(chip_rows))
    store.replace_pairs(pa.table({
        "chip_id": [f"chip-{i:07d}" for i in chip_rows.tolist()],
        "text_id": [f"text-{i:07d}" for i in text_rows.tolist()],
        "how": ["cell"] * len(chip_rows),
    }))
    return store


def read_all(source: PairSource) -> Batch:
    """Read every training pair's vectors into memory, in pairs-table order."""
    batches = list(source.batches("train", 4096, shuffle=False))
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def memory_batches(pairs: Batch, batch_size: int, seed: int) -> Iterator[Batch]:
    """Yield shuffled batches cut from in-memory arrays, as `PairSource.batches` yields them from Lance."""
    order = np.random.default_rng(seed).permutation(len(pairs["embedding"]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield {key: value[rows] for key, value in pairs.items()}


def normalized_flow(config: FlowConfig, pairs: Batch) -> PrefixFlow:
    """Build the flow from torch seed 0 and set its normalization from the in-memory pairs."""
    torch.manual_seed(0)
    flow = PrefixFlow(config)
    prior_stats = NormalizationStats(config.prior_dim)
    prior_stats.update(pairs["prior"].reshape(-1, config.prior_dim))
    embedding_stats = NormalizationStats(config.embedding_dim)
    embedding_stats.update(pairs["embedding"])
    flow.set_normalization(prior_stats.mean, prior_stats.std())
    flow.set_embedding_normalization(embedding_stats.mean, embedding_stats.std())
    return flow


@dataclass
class Rate:
    """Pairs per second of one run, by the wall clock and by the CPU time of this process (all threads).

    `feed_share` is the share of the run's wall-clock time spent waiting for the next batch, measured
    inside the run, so the machine's load changes it less than it changes the rates.
    """

    wall: float
    cpu: float
    feed_share: float


class FetchTimer:
    """An iterator over batches that records the wall-clock seconds of each `next` call."""

    def __init__(self, batches: Iterator[Batch]):
        self.batches = batches
        self.seconds: list[float] = []

    def __iter__(self) -> "FetchTimer":
        return self

    def __next__(self) -> Batch:
        start = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds.append(time.perf_counter() - start)


@dataclass
class FeedRun:
    """One epoch of a feed alone: batches, wall and CPU seconds of the epoch, and seconds to the first batch."""

    batches: int
    wall: float
    cpu: float
    first: float


def train_rate(
    config: FlowConfig, pairs: Batch, batches: Callable[[], Iterator[Batch]], train_config: TrainConfig
) -> Rate:
    """Train a fresh flow on `batches` with `train_flow`; return its rate between the first and the last step."""
    flow = normalized_flow(config, pairs)
    step_ends: list[tuple[float, float]] = []
    fetches = FetchTimer(batches())
    with tempfile.TemporaryDirectory(prefix="bench-train-feed-checkpoints-") as checkpoints:
        train_flow(
            flow, lambda: fetches, None, train_config, checkpoints,
            on_step=lambda _: step_ends.append((time.perf_counter(), time.process_time())),
        )

    # Fetches 2 to N fall between the end of step 1 and the end of step N. The first fetch comes
    # before that window, and the last call (which ends the iteration) after it.
    wall = step_ends[-1][0] - step_ends[0][0]
    timed_pairs = (len(step_ends) - 1) * train_config.batch_size
    return Rate(
        wall=timed_pairs / wall,
        cpu=timed_pairs / (step_ends[-1][1] - step_ends[0][1]),
        feed_share=sum(fetches.seconds[1 : len(step_ends)]) / wall,
    )


def feed_run(batches: Iterator[Batch]) -> FeedRun:
    """Read a whole epoch of `batches` and time it."""
    wall, cpu = time.perf_counter(), time.process_time()
    first = None
    count = 0
    for _ in batches:
        count += 1
        if first is None:
            first = time.perf_counter() - wall
    return FeedRun(count, time.perf_counter() - wall, time.process_time() - cpu, first or 0.0)


def run_training(arguments: argparse.Namespace, source: PairSource, pairs: Batch) -> dict[str, list[Rate]]:
    config = FlowConfig.for_dims(arguments.prior_dim, arguments.embedding_dim, arguments.slots)
    train_config = TrainConfig(
        epochs=1, batch_size=arguments.batch_size, lr_schedule="constant", fit_normalization=False,
        device="cpu", log_every=10**9,
    )
    print(f"Flow: {PrefixFlow(config).num_parameters():,} parameters, {config.kind} couplings, {config.mixing} mixing.")
    feeds = {
        "Lance": lambda epoch: lambda: itertools.islice(
            source.batches("train", arguments.batch_size, epoch=epoch), arguments.steps),
        "memory": lambda epoch: lambda: itertools.islice(
            memory_batches(pairs, arguments.batch_size, epoch), arguments.steps),
    }
    train_rate(config, pairs, lambda: itertools.islice(memory_batches(pairs, arguments.batch_size, 0), 3), train_config)

    rates: dict[str, list[Rate]] = {"Lance": [], "memory": []}
    for round_index in range(arguments.rounds):
        order = ("Lance", "memory") if round_index % 2 == 0 else ("memory", "Lance")
        for side in order:
            rates[side].append(train_rate(config, pairs, feeds[side](round_index + 1), train_config))
        lance, memory = rates["Lance"][-1], rates["memory"][-1]
        print(f"round {round_index + 1}: Lance {lance.wall:.1f} pairs/s ({lance.cpu:.1f} per CPU second), "
              f"memory {memory.wall:.1f} ({memory.cpu:.1f})", flush=True)
    return rates


def run_feed(arguments: argparse.Namespace, source: PairSource, pairs: Batch) -> dict[str, list[FeedRun]]:
    runs: dict[str, list[FeedRun]] = {"Lance": [], "memory": []}
    for round_index in range(arguments.rounds):
        epoch = 100 + round_index
        runs["Lance"].append(feed_run(source.batches("train", arguments.batch_size, epoch=epoch)))
        runs["memory"].append(feed_run(memory_batches(pairs, arguments.batch_size, epoch)))
    return runs


def print_training(arguments: argparse.Namespace, train_pairs: int, rates: dict[str, list[Rate]]) -> None:
    wall = {side: statistics.median(rate.wall for rate in runs) for side, runs in rates.items()}
    cpu = {side: statistics.median(rate.cpu for rate in runs) for side, runs in rates.items()}
    print(f"\n{train_pairs:,} training pairs; Dv = {arguments.embedding_dim}, D = {arguments.prior_dim}, "
          f"K = {arguments.slots}; batches of {arguments.batch_size} pairs; {arguments.steps} optimizer steps "
          f"per run; median of {arguments.rounds} runs per side.\n")
    share = {side: statistics.median(rate.feed_share for rate in runs) for side, runs in rates.items()}
    print("| feed | pairs/s | ratio to memory | pairs per CPU second | ratio to memory | time waiting for batches |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for side in ("memory", "Lance"):
        print(f"| {LABELS[side]} | {wall[side]:.1f} | {wall[side] / wall['memory']:.2f} | "
              f"{cpu[side]:.1f} | {cpu[side] / cpu['memory']:.2f} | {100 * share[side]:.2f} % |")
    # Waiting for batches is the only part of a step that differs between the two sides.
    in_run = (1 - share["Lance"]) / (1 - share["memory"])
    print(f"\nFrom the time waiting for batches inside the runs, the Lance rate is {in_run:.3f} of the in-memory "
          "rate for the same model time.")
    for clock in ("wall", "cpu"):
        rounds = zip(rates["Lance"], rates["memory"])
        ratios = [getattr(lance, clock) / getattr(memory, clock) for lance, memory in rounds]
        print(f"\n{'Wall-clock' if clock == 'wall' else 'CPU-time'} ratio of each round (Lance / memory): "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}.")


def print_feed(arguments: argparse.Namespace, runs: dict[str, list[FeedRun]], rates: dict[str, list[Rate]]) -> None:
    print(f"\nFeed alone, without the model: whole epochs of the training split, median of {arguments.rounds}.\n")
    print("| feed | batches per epoch | batches/s | pairs/s | CPU ms per batch | seconds to the first batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    cpu_per_batch = {}
    for side in ("memory", "Lance"):
        per_second = statistics.median(run.batches / run.wall for run in runs[side])
        cpu_per_batch[side] = statistics.median(run.cpu / run.batches for run in runs[side])
        first = statistics.median(run.first for run in runs[side])
        print(f"| {LABELS[side]} | {runs[side][0].batches} | {per_second:.1f} | "
              f"{per_second * arguments.batch_size:,.0f} | {1000 * cpu_per_batch[side]:.2f} | {first:.3f} |")

    # The Lance feed adds its extra CPU time per batch to every step of the in-memory run.
    step_cpu = arguments.batch_size / statistics.median(rate.cpu for rate in rates["memory"])
    extra = cpu_per_batch["Lance"] - cpu_per_batch["memory"]
    print(f"\nThe Lance feed costs {1000 * extra:.1f} CPU ms per batch more than the in-memory one, against "
          f"{1000 * step_cpu:.0f} CPU ms per optimizer step with the in-memory feed. Added to every step, that "
          f"gives an estimated Lance rate of {step_cpu / (step_cpu + extra):.3f} of the in-memory rate.")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=20_000, help="chips to generate")
    parser.add_argument("--texts", type=int, default=20_000, help="texts to generate")
    parser.add_argument("--pairs-per-chip", type=int, default=2, help="texts paired with each chip")
    parser.add_argument("--embedding-dim", type=int, default=768, help="Dv, the image embedding width")
    parser.add_argument("--prior-dim", type=int, default=256, help="D, the LLM input-embedding width")
    parser.add_argument("--slots", type=int, default=8, help="K, the number of prefix slots")
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per optimizer step")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per training run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs of each side")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(arguments.threads)
    print(
        f"bench_train_feed, {datetime.now(timezone.utc):%Y-%m-%d}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"pylance {lance.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-train-feed-") as folder:
        start = time.perf_counter()
        store = write_store(Path(folder) / "store", arguments)
        source = PairSource(store)
        pairs = read_all(source)
        print(f"Wrote the store and read {len(pairs['embedding']):,} training pairs into memory "
              f"in {time.perf_counter() - start:.1f} s.")

        feeds = run_feed(arguments, source, pairs)
        rates = run_training(arguments, source, pairs)
        print_training(arguments, len(pairs["embedding"]), rates)
        print_feed(arguments, feeds, rates)


if __name__ == "__main__":
    main()
