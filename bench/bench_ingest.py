"""Benchmark the whole ingest against the bare encoder forward pass on the same chips.

Run from the repository root:

    python -m bench.bench_ingest

For each encoder size, it writes a random-weight ViTMAE checkpoint to a temporary folder and loads
it with `ImageEncoder.load`. ViT-Base has the `ViTMAEConfig` defaults: hidden size 768, 12 layers,
12 heads, MLP size 3072, image 224, patch 16. ViT-Small has hidden size 384, 12 layers, 6 heads
and MLP size 1536. The script then writes a 3-band uint8 GeoTIFF in EPSG:32633 (tiled 256 x 256,
DEFLATE) that divides into exactly N chips of the encoder's image size. It times two sides with
the same batch size:

- encoder: `ImageEncoder.embed` on the N chips, already read into memory;
- ingest: `ingest_images` into a new store, the code that `rsflow ingest` runs. This covers
  hashing the file, reading and scaling the chips, footprints, H3 cells, the encoder, the Lance
  commits and the final compaction and index.

The sides alternate (encoder, ingest, encoder, ingest, ...) so that a change in machine load falls
on both sides. The first table gives the median seconds of each side and three ratios of ingest to
encoder: of the median wall-clock times, the median of each ingest over the encoder run just before
it, and of the median process CPU times. The second table splits every ingest run into the seconds
inside `ImageEncoder.embed` and the rest. That split is measured within one run, so it holds up
best on a machine that other jobs share.

The default N (192 chips for ViT-Base, 640 for ViT-Small) is an estimate of about 45 s per side
on 2 idle cores of an AMD EPYC virtual machine. Under load from other jobs a side took up to 3.5
times as long there. Other machines may need `--base-chips` and `--small-chips`.

Loading the encoder is outside both timings. One untimed embed and one untimed ingest of a
one-chip scene come first, so that one-time setup (oneDNN kernels, Lance threads) is not charged
to the first timed run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Keyword arguments of ViTMAEConfig for each benchmarked size. The rest stays at the defaults,
# which the transformers documentation describes as similar to facebook/vit-mae-base.
ENCODER_SIZES = {
    "ViT-Base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "ViT-Small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
}
TILE_SIZE = 256
CRS = "EPSG:32633"
# Upper-left corner of the generated scenes in EPSG:32633 (about 15.0 E, 46.9 N), with 1 m pixels.
ORIGIN = (500_000.0, 5_200_000.0)
PIXEL_SIZE = 1.0


def write_encoder(folder: Path, size: dict[str, int]) -> Path:
    """Save a random-weight ViTMAE checkpoint of `size` (ViTMAEConfig keyword arguments) to `folder`."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    ViTMAEForPreTraining(ViTMAEConfig(**size)).save_pretrained(folder)
    return folder


def scene_strip(width: int, height: int, row_off: int, rows: int, generator: np.random.Generator) -> np.ndarray:
    """Return `rows` image rows from `row_off` of a 3-band uint8 scene: smooth gradients and waves plus noise.

    The noise keeps every chip different, and the smooth part keeps DEFLATE effective.
    """
    y = np.arange(row_off, row_off + rows, dtype=np.float32)[:, None] / height
    x = np.arange(width, dtype=np.float32)[None, :] / width
    bands = []
    for band in range(3):
        wave = 24.0 * np.sin(2 * np.pi * (7 + band) * x) * np.cos(2 * np.pi * (5 + 2 * band) * y)
        smooth = 60.0 + 70.0 * x + 70.0 * y + wave
        noise = generator.integers(-6, 7, size=(rows, width), dtype=np.int16)
        bands.append(np.clip(smooth + noise, 0, 255).astype(np.uint8))
    return np.stack(bands)


def write_scene(path: Path, width: int, height: int, strip_rows: int = TILE_SIZE, seed: int = 0) -> Path:
    """Write a generated 3-band uint8 GeoTIFF in EPSG:32633, tiled and DEFLATE-compressed, one strip at a time.

    Only one strip of `strip_rows` rows is in memory at once, so the writer stays small for any scene size.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, PIXEL_SIZE, PIXEL_SIZE),
        "tiled": True,
        "blockxsize": TILE_SIZE,
        "blockysize": TILE_SIZE,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 1,
        "num_threads": "ALL_CPUS",
        "bigtiff": "IF_SAFER",
    }
    generator = np.random.default_rng(seed)
    with rasterio.open(path, "w", **profile) as dataset:
        for row_off in range(0, height, strip_rows):
            rows = min(strip_rows, height - row_off)
            strip = scene_strip(width, height, row_off, rows, generator)
            dataset.write(strip, window=Window(0, row_off, width, rows))
    return path


def read_chips(path: Path, chip_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read every chip of `path` with the ingest's own reading functions: values [N, 3, H, W] and valid [N, H, W]."""
    from rsflow.raster import chip_windows, open_image, read_chip, select_bands, value_scaling

    with open_image(path) as (dataset, info):
        bands = select_bands(info, 3)
        scaling = value_scaling(dataset, info, bands)
        windows = chip_windows(info.width, info.height, chip_size, chip_size)
        chips = [read_chip(dataset, info, window, bands, scaling) for window in windows]
    return np.stack([chip.values for chip in chips]), np.stack([chip.valid for chip in chips])


@dataclass
class Timing:
    """Wall-clock and process CPU seconds of one run. The CPU time adds up every thread of this process."""

    wall: float = 0.0
    cpu: float = 0.0

    def __iadd__(self, other: "Timing") -> "Timing":
        self.wall += other.wall
        self.cpu += other.cpu
        return self


@contextmanager
def timed() -> Iterator[Timing]:
    """Measure the wall and CPU seconds of the block into the yielded `Timing`."""
    timing = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield timing
    finally:
        timing.wall = time.perf_counter() - wall
        timing.cpu = time.process_time() - cpu


class EmbedTimer:
    """An encoder whose `embed` adds its seconds to `inside`, so one ingest splits into encoder and the rest."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.info = encoder.info
        self.inside = Timing()

    def embed(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        with timed() as timing:
            vectors = self.encoder.embed(values, valid)
        self.inside += timing
        return vectors


def time_encoder(encoder, values: np.ndarray, valid: np.ndarray, batch_size: int) -> Timing:
    """Time `encoder.embed` on all chips, `batch_size` at a time."""
    with timed() as timing:
        for batch_start in range(0, len(values), batch_size):
            batch = slice(batch_start, batch_start + batch_size)
            encoder.embed(values[batch], valid[batch])
    return timing


def time_ingest(encoder, scene: Path, store_dir: Path, batch_size: int, expected_chips: int) -> tuple[Timing, Timing]:
    """Time one `ingest_images` of `scene` into a new store, and the part of it inside `embed`."""
    from rsflow.ingest import IngestOptions, ingest_images
    from rsflow.store.db import Store

    timer = EmbedTimer(encoder)
    with timed() as timing:
        store = Store.open_or_create(store_dir)
        report = ingest_images(store, [scene], timer, IngestOptions(batch_size=batch_size))

    if report.chips_written != expected_chips or report.files_rejected:
        raise RuntimeError(
            f"{scene}: the ingest wrote {report.chips_written} chips, expected {expected_chips} "
            f"(rejected: {report.files_rejected})."
        )
    return timing, timer.inside


def chip_grid(chips: int) -> tuple[int, int]:
    """Return (columns, rows) of chips, the factor pair of `chips` closest to a square."""
    rows = max(r for r in range(1, int(chips**0.5) + 1) if chips % r == 0)
    return chips // rows, rows


def measure_size(name: str, chips: int, arguments: argparse.Namespace, work_dir: Path) -> dict:
    """Write and load one encoder size, then time both sides `arguments.repeats` times, alternating."""
    from rsflow.encoders import ImageEncoder

    encoder = ImageEncoder.load(str(write_encoder(work_dir / name, ENCODER_SIZES[name])), device="cpu")
    chip_size = encoder.info.image_size
    columns, rows = chip_grid(chips)
    scene = write_scene(work_dir / f"{name}-scene.tif", columns * chip_size, rows * chip_size)
    values, valid = read_chips(scene, chip_size)

    warmup_scene = write_scene(work_dir / f"{name}-warmup.tif", chip_size, chip_size, seed=1)
    encoder.embed(values[: arguments.batch_size], valid[: arguments.batch_size])
    time_ingest(encoder, warmup_scene, work_dir / f"{name}-store-warmup", arguments.batch_size, 1)

    runs = []
    for repeat in range(arguments.repeats):
        encoder_run = time_encoder(encoder, values, valid, arguments.batch_size)
        store_dir = work_dir / f"{name}-store-{repeat}"
        ingest_run, inside_run = time_ingest(encoder, scene, store_dir, arguments.batch_size, chips)
        runs.append({"encoder": encoder_run, "ingest": ingest_run, "inside": inside_run})
        print(
            f"{name} run {repeat + 1}: encoder {encoder_run.wall:.1f} s, ingest {ingest_run.wall:.1f} s "
            f"({inside_run.wall:.1f} s in embed)",
            file=sys.stderr,
        )
    return {"chips": chips, "runs": runs}


def median_of(runs: list[dict], side: str, clock: str) -> float:
    return statistics.median(getattr(run[side], clock) for run in runs)


def print_sides(results: dict[str, dict]) -> None:
    """Print the table of both sides: medians of wall and CPU seconds and their ingest/encoder ratios."""
    print("| encoder | side | chips | seconds | chips/s | ratio | pair ratio | CPU seconds | CPU ratio | runs (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, result in results.items():
        runs = result["runs"]
        for side, label in (("encoder", "`ImageEncoder.embed`"), ("ingest", "`ingest_images`")):
            wall, cpu = median_of(runs, side, "wall"), median_of(runs, side, "cpu")
            ratio = wall / median_of(runs, "encoder", "wall")
            cpu_ratio = cpu / median_of(runs, "encoder", "cpu")
            pair_ratio = statistics.median(run[side].wall / run["encoder"].wall for run in runs)
            each = ", ".join(f"{run[side].wall:.1f}" for run in runs)
            print(
                f"| {name} | {label} | {result['chips']} | {wall:.1f} | {result['chips'] / wall:.2f} "
                f"| {ratio:.3f} | {pair_ratio:.3f} | {cpu:.1f} | {cpu_ratio:.3f} | {each} |"
            )


def print_split(results: dict[str, dict]) -> None:
    """Print the table of each ingest split into `embed` and the rest, measured in the same run."""
    print("| encoder | ingest (s) | in `embed` (s) | rest (s) | ingest / in `embed` | runs |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, result in results.items():
        runs = result["runs"]
        ratios = [run["ingest"].wall / run["inside"].wall for run in runs]
        rests = [run["ingest"].wall - run["inside"].wall for run in runs]
        each = ", ".join(f"{ratio:.3f}" for ratio in ratios)
        print(
            f"| {name} | {median_of(runs, 'ingest', 'wall'):.1f} | {median_of(runs, 'inside', 'wall'):.1f} "
            f"| {statistics.median(rests):.1f} | {statistics.median(ratios):.3f} | {each} |"
        )


def print_report(results: dict[str, dict], arguments: argparse.Namespace) -> None:
    """Print both markdown tables with a line on how they were measured."""
    print(
        f"Median of {arguments.repeats} alternating runs per side, batch size {arguments.batch_size}, "
        "random-weight ViTMAE, CPU. Each scene is a tiled DEFLATE GeoTIFF cut into chips of 224 x 224. "
        "Ratio: median ingest seconds over median encoder seconds. Pair ratio: median over runs of "
        "ingest seconds over the seconds of the encoder run just before it.\n"
    )
    print_sides(results)
    print(
        "\nThe same ingest runs split in place: the seconds inside `ImageEncoder.embed` and the rest "
        "(hashing, reading, footprints, cells, Lance commits, compaction and index).\n"
    )
    print_split(results)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-chips", type=int, default=192, help="chips in the ViT-Base scene")
    parser.add_argument("--small-chips", type=int, default=640, help="chips in the ViT-Small scene")
    parser.add_argument("--batch-size", type=int, default=32, help="chips per encoder forward pass, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side and encoder size")
    parser.add_argument("--sizes", default="ViT-Base,ViT-Small", help="comma-separated encoder sizes to run")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    # The checkpoints are local folders, so nothing needs the hub. Lance logs only errors.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LANCE_LOG", "error")
    chips = {"ViT-Base": arguments.base_chips, "ViT-Small": arguments.small_chips}
    names = [name.strip() for name in arguments.sizes.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENCODER_SIZES]
    if unknown:
        raise SystemExit(f"--sizes: no encoder size named {unknown[0]!r}. Choose from {', '.join(ENCODER_SIZES)}.")

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as temporary:
        results = {name: measure_size(name, chips[name], arguments, Path(temporary)) for name in names}
    print_report(results, arguments)


if __name__ == "__main__":
    main()
