"""Benchmark nearest-neighbour search of chip embeddings: FAISS beside the store against LanceDB's own.

Run from the repository root:

    python -m bench.bench_search                                # 10k, 100k and 1M vectors of 768 dimensions
    python -m bench.bench_search --sizes 10000 100000           # 768 dimensions
    python -m bench.bench_search --sizes 1000000 --dim 128

For each size N the script writes N generated vectors into the images table of a new store in a
temporary folder (the store's schema, with filler values in the other columns). It then measures,
on the same vectors and the same query vectors:
- FAISS flat (`ChipIndex`, exact): build time, load time, and time per query, both for one batch of
  all queries and for one query at a time;
- FAISS flat without `ChipIndex`, with faiss's BLAS threshold at 20 (the old faiss default) and at
  a value that keeps every batch off BLAS, to show what that process-wide setting does here;
- FAISS IVF (`ChipIndex(index_type="ivf")`): build time, and time per query and recall@10 for
  several `nprobe` values;
- LanceDB brute force (`bypass_vector_index`, cosine), one query at a time;
- LanceDB IVF_PQ (`create_index("embedding", config=IvfPq(distance_type="cosine"))`, default
  partitions and sub-vectors), with its default nprobes, without and with `refine_factor`.
Recall@10 is the share of the exact cosine top 10 (from the FAISS flat index) that a method returns.

The vectors are random but clustered, as encoder embeddings are: each is a point of one of N/1000
Gaussian clusters in a 32-dimensional space, mapped to `--dim` dimensions by a random linear map,
plus isotropic noise. Independent uniform vectors would have no meaningful neighbours, so every
approximate method would look worse on them than on embeddings. Queries are new draws from the same
clusters. The results are printed as one markdown table per size.

Run time: on a 2-core machine, 10k and 100k vectors of 768 dimensions took about 4.5 minutes
together, and 1M vectors of 128 dimensions about 3 minutes. 1M vectors of 768 dimensions would take
several times longer (an estimate from how the IVF and IVF_PQ builds grew), so run that size with
`--dim 128`, or with fewer rows, where time is short.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import faiss
import lancedb
import numpy as np
import pyarrow as pa

from rsflow.store.db import Store
from rsflow.store.index import ChipIndex
from rsflow.store.schema import images_schema

LATENT_DIM = 32
VECTORS_PER_CLUSTER = 1000
NOISE = 0.3
WRITE_BATCH_ROWS = 50_000
K = 10
IVF_NPROBES = (8, 32, 128)
NEVER_BLAS = 2**30
WINDOW = {"col": 0, "row": 0, "width": 224, "height": 224}


class VectorSource:
    """Clustered random vectors, drawn by seed, so that stored and query vectors share clusters."""

    def __init__(self, rows: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((max(1, rows // VECTORS_PER_CLUSTER), LATENT_DIM)).astype(np.float32)
        self.projection = (rng.standard_normal((LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(np.float32)
        self.dim = dim

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        clusters = rng.integers(0, len(self.centres), size=count)
        latent = self.centres[clusters] + 0.5 * rng.standard_normal((count, LATENT_DIM), dtype=np.float32)
        noise = NOISE * rng.standard_normal((count, self.dim), dtype=np.float32)
        return latent @ self.projection + noise


def filler_batches(rows: int, source: VectorSource) -> Iterator[pa.Table]:
    """Yield the images table rows in batches: generated embeddings and constant other columns."""
    schema = images_schema(source.dim)
    rng = np.random.default_rng(1)
    for start in range(0, rows, WRITE_BATCH_ROWS):
        count = min(WRITE_BATCH_ROWS, rows - start)
        vectors = source.draw(count, rng)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), source.dim)
        columns = {
            "chip_id": pa.array([f"chip-{start + i:09d}" for i in range(count)]),
            "source": pa.array(["generated"] * count),
            "source_sha256": pa.array(["0" * 64] * count),
            "window": pa.array([WINDOW] * count, schema.field("window").type),
            "embedding": embedding,
        }
        arrays = [columns.get(field.name, pa.nulls(count, field.type)) for field in schema]
        yield pa.Table.from_arrays(arrays, schema=schema)


def write_store(folder: Path, rows: int, source: VectorSource) -> Store:
    store = Store.open_or_create(folder)
    table = store.images(embedding_dim=source.dim)
    for batch in filler_batches(rows, source):
        table.add(batch)
    return store


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def recall_at_k(found: list[list[str]], exact: list[list[str]]) -> float:
    hits = sum(len(set(row) & set(truth)) for row, truth in zip(found, exact))
    return hits / sum(len(truth) for truth in exact)


def chip_ids_of(results) -> list[list[str]]:
    return [[neighbour.chip_id for neighbour in row] for row in results]


def measure_faiss_flat(store: Store, queries: np.ndarray, single_queries: int) -> tuple[list[dict], list[list[str]]]:
    build_seconds, index = timed(lambda: ChipIndex.open(store, rebuild=True, index_type="flat"))
    load_seconds, index = timed(lambda: ChipIndex.open(store))
    assert index.status == "loaded", index.reason

    index.search(queries[:1], k=K)
    batch_seconds, results = timed(lambda: index.search(queries, k=K))
    single_seconds, _ = timed(lambda: [index.search(queries[i : i + 1], k=K) for i in range(single_queries)])
    exact = chip_ids_of(results)
    row = {
        "method": "FAISS flat (ChipIndex, exact)",
        "build_s": build_seconds,
        "load_s": load_seconds,
        "batch_ms": 1000 * batch_seconds / len(queries),
        "single_ms": 1000 * single_seconds / single_queries,
        "recall": recall_at_k(exact, exact),
    }
    return [row], exact


def measure_blas_threshold(store: Store, queries: np.ndarray) -> list[dict]:
    """Time a raw faiss flat search of all queries in one batch at two BLAS thresholds."""
    index = faiss.read_index(str(store.path / "faiss" / "index.faiss"))
    normalized = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    previous = faiss.cvar.distance_compute_blas_threshold
    rows = []
    for threshold, label in ((20, "BLAS for 20 or more queries"), (NEVER_BLAS, "never BLAS")):
        faiss.cvar.distance_compute_blas_threshold = threshold
        index.search(normalized[:1], K)
        seconds, _ = timed(lambda: index.search(normalized, K))
        rows.append({"method": f"faiss IndexFlatIP alone, {label}", "batch_ms": 1000 * seconds / len(queries)})
    faiss.cvar.distance_compute_blas_threshold = previous
    return rows


def measure_faiss_ivf(store: Store, queries: np.ndarray, exact: list[list[str]]) -> list[dict]:
    build_seconds, index = timed(lambda: ChipIndex.open(store, index_type="ivf"))
    rows = []
    for nprobe in IVF_NPROBES:
        index.nprobe = nprobe
        index.search(queries[:1], k=K)
        seconds, results = timed(lambda: index.search(queries, k=K))
        rows.append(
            {
                "method": f"FAISS IVF, nlist {index.record.nlist}, nprobe {nprobe}",
                "build_s": build_seconds if nprobe == IVF_NPROBES[0] else None,
                "batch_ms": 1000 * seconds / len(queries),
                "recall": recall_at_k(chip_ids_of(results), exact),
            }
        )
    return rows


def lance_search(table, vector: np.ndarray, configure: Callable) -> list[str]:
    query = table.search(vector, vector_column_name="embedding").distance_type("cosine").limit(K)
    return configure(query).select(["chip_id", "_distance"]).to_arrow()["chip_id"].to_pylist()


def measure_lance(
    table, queries: np.ndarray, exact: list[list[str]], label: str, configure: Callable, build_s: float | None = None
) -> dict:
    lance_search(table, queries[0], configure)
    seconds, found = timed(lambda: [lance_search(table, vector, configure) for vector in queries])
    return {
        "method": label,
        "build_s": build_s,
        "single_ms": 1000 * seconds / len(queries),
        "recall": recall_at_k(found, exact[: len(queries)]),
    }


def measure_lancedb(store: Store, queries: np.ndarray, exact: list[list[str]], flat_queries: int) -> list[dict]:
    from lancedb.index import IvfPq

    table = store.table("images")
    flat_queries_only = queries[:flat_queries]
    rows = [measure_lance(table, flat_queries_only, exact, "LanceDB brute force", lambda q: q.bypass_vector_index())]
    build_seconds, _ = timed(lambda: table.create_index("embedding", config=IvfPq(distance_type="cosine")))
    table = store.table("images")
    rows.append(measure_lance(table, queries, exact, "LanceDB IVF_PQ", lambda q: q, build_seconds))
    rows.append(measure_lance(table, queries, exact, "LanceDB IVF_PQ, refine_factor 10", lambda q: q.refine_factor(10)))
    return rows


def format_cell(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_table(rows: int, dim: int, query_count: int, results: list[dict], write_seconds: float) -> None:
    print(f"\n### {rows:,} vectors x {dim} dimensions, {query_count} queries, k = {K}\n")
    print(f"Writing the vectors into the images table took {write_seconds:.1f} s.\n")
    print("| method | build (s) | load (s) | ms per query, one batch | ms per query, one at a time | recall@10 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        cells = [
            format_cell(result.get("build_s"), 1),
            format_cell(result.get("load_s"), 2),
            format_cell(result.get("batch_ms"), 2),
            format_cell(result.get("single_ms"), 2),
            format_cell(result.get("recall"), 3),
        ]
        print(f"| {result['method']} | " + " | ".join(cells) + " |")


def run_size(rows: int, arguments: argparse.Namespace) -> None:
    source = VectorSource(rows, arguments.dim)
    queries = source.draw(arguments.queries, np.random.default_rng(2))
    with tempfile.TemporaryDirectory(prefix="bench-search-") as folder:
        write_seconds, store = timed(lambda: write_store(Path(folder) / "store", rows, source))
        results, exact = measure_faiss_flat(store, queries, min(arguments.single_queries, len(queries)))
        results += measure_blas_threshold(store, queries)
        results += measure_faiss_ivf(store, queries, exact)
        results += measure_lancedb(store, queries, exact, min(arguments.lance_flat_queries, len(queries)))
        print_table(rows, arguments.dim, arguments.queries, results, write_seconds)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000, 1_000_000],
        help="numbers of stored vectors, one run each",
    )
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (768 is the ViT-Base width)")
    parser.add_argument("--queries", type=int, default=100, help="query vectors per method")
    parser.add_argument("--single-queries", type=int, default=20, help="queries searched one at a time in FAISS flat")
    parser.add_argument("--lance-flat-queries", type=int, default=20, help="queries for LanceDB brute force")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    print(
        f"bench_search, {datetime.now(timezone.utc):%Y-%m-%d}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, faiss {faiss.__version__} (BLAS threshold default "
        f"{faiss.cvar.distance_compute_blas_threshold}), lancedb {lancedb.__version__}"
    )
    for rows in arguments.sizes:
        start = time.perf_counter()
        run_size(rows, arguments)
        print(f"\n({rows:,} vectors: {time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
