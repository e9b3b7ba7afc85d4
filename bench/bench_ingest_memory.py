"""Benchmark the peak resident set size (RSS) of `rsflow ingest` on a large scene against a small one.

Run from the repository root:

    python -m bench.bench_ingest_memory

It writes a tiny random-weight ViTMAE (`rsflow.tiny_encoder.make_tiny_vitmae`, image 256, patch
32) and two generated 3-band uint8 GeoTIFFs in EPSG:32633. Both are tiled 256 x 256 and DEFLATE
compressed, with smooth gradients and waves plus noise. The large scene is 26000 x 26000 pixels by
default, about 2 GB of pixels in 10404 chips. The small one is 1024 x 1024. The scenes are written
one strip at a time, so the generator stays small. Each scene is then ingested by
`python -m rsflow.cli ingest` in a fresh process into a new store, and the table shows each peak
RSS and the difference. The generated files are deleted at the end.

GDAL keeps decoded blocks in its block cache up to `GDAL_CACHEMAX`, by default 5% of physical RAM,
so the large scene's peak depends on the machine's RAM. `--gdal-cachemax` sets the cache size of
the ingest processes, to compare.

The peak RSS is the child's `ru_maxrss` from `os.wait4`, its peak over its whole life. Linux
counts in it the high-water mark of the process image that `exec` replaced, which is this
process's memory at the spawn: `/bin/true`, spawned from a Python process with 600 MB resident,
reports about 614 MB. This script therefore writes the checkpoint in a subprocess too, stays far
below the ingest's own peak, and warns when it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_ingest import write_scene

REPOSITORY = Path(__file__).resolve().parent.parent
CHIP_SIZE = 256
PATCH_SIZE = 32


def peak_rss_mb_self() -> float:
    """Return this process's own peak RSS in MB of 10^6 bytes, from ru_maxrss (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def write_tiny_encoder(folder: Path) -> Path:
    """Write the tiny ViTMAE in a subprocess, so that importing torch does not raise this process's peak RSS."""
    code = (
        "import sys; from rsflow.tiny_encoder import make_tiny_vitmae; "
        f"make_tiny_vitmae(sys.argv[1], image_size={CHIP_SIZE}, patch_size={PATCH_SIZE})"
    )
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, cwd=REPOSITORY)
    return folder


def run_ingest(scene: Path, store: Path, encoder: Path, batch_size: int, gdal_cachemax_mb: int | None) -> dict:
    """Run `rsflow ingest` on `scene` in a new process and return its peak RSS, time and JSON report."""
    command = [
        sys.executable, "-m", "rsflow.cli", "ingest", str(scene), "--store", str(store),
        "--encoder", str(encoder), "--batch-size", str(batch_size), "--device", "cpu", "--json",
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "LANCE_LOG": "error"}
    if gdal_cachemax_mb is not None:
        # GDAL reads a value below 100000 as MiB.
        environment["GDAL_CACHEMAX"] = str(gdal_cachemax_mb)
    start = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=environment, stdout=output, stderr=subprocess.DEVNULL)
        # wait4 returns the usage of this one child, not the maximum over all children so far.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        output.seek(0)
        text = output.read().decode()

    if process.returncode != 0:
        raise RuntimeError(f"rsflow ingest {scene} exited with status {process.returncode}:\n{text[-4000:]}")
    return {"peak_rss_mb": usage.ru_maxrss * 1024 / 1e6, "seconds": seconds, "report": json.loads(text)}


def print_report(rows: dict[str, dict], goal_mb: float) -> None:
    """Print one markdown table row per scene, with the peak RSS above the small scene's."""
    small = rows["small"]["peak_rss_mb"]
    print("| scene | pixels | chips | seconds | peak RSS (MB) | above small scene (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows.values():
        pixels = f"{row['width']} x {row['height']} x 3"
        extra = row["peak_rss_mb"] - small
        print(
            f"| {row['name']} | {pixels} | {row['report']['chips_written']} | {row['seconds']:.0f} "
            f"| {row['peak_rss_mb']:.0f} | {extra:.0f} |"
        )
    extra = rows["large"]["peak_rss_mb"] - small
    verdict = "met" if extra < goal_mb else "missed"
    print(f"\nGoal: under {goal_mb:.0f} MB above the small scene: {verdict} ({extra:.0f} MB).")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-size", type=int, default=26000, help="width and height of the large scene, pixels")
    parser.add_argument("--small-size", type=int, default=1024, help="width and height of the small scene, pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="chips per encoder forward pass")
    parser.add_argument("--goal-mb", type=float, default=300.0, help="allowed peak RSS above the small scene, MB (10^6 bytes)")
    parser.add_argument(
        "--gdal-cachemax",
        type=int,
        default=None,
        help="GDAL block cache size for the ingest processes, MiB (default: GDAL's, 5%% of physical RAM)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the generated files (default: system temp)")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-memory-", dir=arguments.work_dir))
    try:
        encoder = write_tiny_encoder(work_dir / "encoder")
        rows = {}
        for name, size in (("small", arguments.small_size), ("large", arguments.large_size)):
            start = time.perf_counter()
            scene = write_scene(work_dir / f"{name}.tif", size, size)
            megabytes = scene.stat().st_size / 1e6
            print(f"wrote {scene.name} ({megabytes:.0f} MB) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            store = work_dir / f"store-{name}"
            result = run_ingest(scene, store, encoder, arguments.batch_size, arguments.gdal_cachemax)
            rows[name] = {"name": name, "width": size, "height": size, **result}
            print(f"ingested {name}: peak RSS {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    own_peak = peak_rss_mb_self()
    if own_peak >= min(row["peak_rss_mb"] for row in rows.values()):
        print(f"warning: this process peaked at {own_peak:.0f} MB, so a child's ru_maxrss may be this process's.", file=sys.stderr)
    cache = "GDAL's default" if arguments.gdal_cachemax is None else f"{arguments.gdal_cachemax} MiB"
    print(f"Peak RSS of `rsflow ingest` in a fresh process per scene, GDAL block cache: {cache}.\n")
    print_report(rows, arguments.goal_mb)


if __name__ == "__main__":
    main()
