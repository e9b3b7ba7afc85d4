"""Benchmark reading one LLM's input embedding against loading the whole model, and the prior rate.

Run from the repository root:

    python -m bench.bench_prior

It writes a random-weight LLaMA checkpoint (by default hidden size 4096, vocabulary 32000,
2 decoder layers, about 0.67 billion parameters, 1.3 GB of bfloat16 in 500 MB shards) to
a temporary folder. Each load then runs several times, each in a fresh Python process,
so the peak resident set size (RSS) of one does not hide another. Last, it computes priors
for synthetic captions with the loaded embeddings. The results are printed as markdown tables.

The checkpoint files were just written, so every load reads them from the page cache. A
cold read from disk would add transfer time for each byte that a load touches.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

WORDS = (
    "river farmland town forest hills road valley residential area houses gardens roads satellite "
    "image sentinel bands vegetation water soil clouds buildings airport runway harbour parking "
    "golf course stadium commercial district lake shore wetlands meadows industrial railway bridges"
).split()


def write_checkpoint(folder: Path, hidden_size: int, vocab_size: int, num_layers: int, shard_size: str) -> int:
    """Write a random-weight bfloat16 LLaMA checkpoint with a BPE tokenizer and return its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rsflow.tiny_llm import train_tokenizer

    tokenizer = train_tokenizer(vocab_size=1000)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 11008 // 4096,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 128,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size=shard_size)
    tokenizer.save_pretrained(folder)
    return sum(parameter.numel() for parameter in model.parameters())


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB, from VmHWM in /proc/self/status (Linux).

    `resource.getrusage` is not used because Linux carries ru_maxrss over from the parent
    process, which here has just held the whole model.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM is missing from /proc/self/status; this benchmark needs Linux")


def measure_single_tensor(folder: Path) -> dict[str, float]:
    """Time `load_token_embeddings`, and the SHA-256 part of it apart."""
    from rsflow.llm import load_token_embeddings, tensor_sha256

    baseline = peak_rss_mib()
    start = time.perf_counter()
    embeddings = load_token_embeddings(str(folder))
    seconds = time.perf_counter() - start

    start = time.perf_counter()
    tensor_sha256(embeddings.weight)
    hash_seconds = time.perf_counter() - start
    return {"seconds": seconds, "hash_seconds": hash_seconds, "peak_rss_mib": peak_rss_mib(), "baseline_mib": baseline}


def measure_full_model(folder: Path, read_every_weight: bool) -> dict[str, float]:
    """Time loading the whole model with `from_pretrained` and taking its input embedding as float32.

    transformers 5.25 keeps the weights of a safetensors checkpoint memory-mapped until they
    are used (measured with this script), so the untouched layers stay out of RSS. With `read_every_weight`, each
    parameter is summed once, as a forward pass would read it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rsflow.llm  # noqa: F401  (the same imports as the other process, for the same baseline)

    baseline = peak_rss_mib()
    start = time.perf_counter()
    AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    model.get_input_embeddings().weight.detach().to(torch.float32)
    if read_every_weight:
        with torch.inference_mode():
            for parameter in model.parameters():
                parameter.sum()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "baseline_mib": baseline}


def measure_prior_rate(folder: Path, num_texts: int, batch_size: int, num_slots: int) -> dict[str, float]:
    """Time `text_priors` over synthetic captions of 5 to 40 words, in batches."""
    from rsflow.llm import load_token_embeddings, text_priors

    embeddings = load_token_embeddings(str(folder))
    generator = random.Random(0)
    texts = [" ".join(generator.choices(WORDS, k=generator.randint(5, 40))) for _ in range(num_texts)]

    tokens = 0
    start = time.perf_counter()
    for batch_start in range(0, num_texts, batch_size):
        result = text_priors(texts[batch_start : batch_start + batch_size], embeddings, num_slots)
        tokens += int(result.token_counts.sum())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts_per_second": num_texts / seconds, "tokens_per_text": tokens / num_texts}


LOADS = {
    "single": "input embedding only (`load_token_embeddings`)",
    "full": "whole model (`from_pretrained`, weights memory-mapped)",
    "full-read": "whole model, every weight read once",
}


def run_child(measurement: str, folder: Path, arguments: argparse.Namespace) -> dict[str, float]:
    """Run one measurement in a fresh interpreter and return the JSON it prints last."""
    command = [sys.executable, "-m", "bench.bench_prior", "--child", measurement, "--folder", str(folder)]
    command += ["--texts", str(arguments.texts), "--batch-size", str(arguments.batch_size)]
    command += ["--slots", str(arguments.slots)]
    completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"measurement {measurement} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_child_median(measurement: str, folder: Path, arguments: argparse.Namespace) -> dict[str, float]:
    """Run a measurement `arguments.repeats` times and return the median of each number."""
    runs = [run_child(measurement, folder, arguments) for _ in range(arguments.repeats)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def folder_size_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file()) / 2**20


def print_report(arguments: argparse.Namespace, folder: Path, parameters: int, results: dict[str, dict]) -> None:
    shards = len(list(folder.glob("*.safetensors")))
    print(
        f"Checkpoint: LLaMA, hidden {arguments.hidden_size}, vocabulary {arguments.vocab_size}, "
        f"{arguments.layers} layers, {parameters / 1e6:.0f} M parameters, bfloat16, "
        f"{folder_size_mib(folder):.0f} MiB in {shards} shards (page cache warm). "
        f"Median of {arguments.repeats} runs, each in a fresh process.\n"
    )
    print("| read | time (s) | peak RSS (MiB) | peak RSS above imports (MiB) |")
    print("| --- | ---: | ---: | ---: |")
    for measurement, label in LOADS.items():
        row = results[measurement]
        above = row["peak_rss_mib"] - row["baseline_mib"]
        print(f"| {label} | {row['seconds']:.2f} | {row['peak_rss_mib']:.0f} | {above:.0f} |")
    hash_seconds = results["single"]["hash_seconds"]
    print(f"\nThe single-tensor read includes the SHA-256 of the float32 matrix, {hash_seconds:.2f} s.\n")

    rate = results["rate"]
    print("| priors | texts | batch | K | tokens per text | time (s) | texts per second |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| `text_priors` | {arguments.texts} | {arguments.batch_size} | {arguments.slots} | "
        f"{rate['tokens_per_text']:.1f} | {rate['seconds']:.2f} | {rate['texts_per_second']:.0f} |"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=4096, help="LLaMA hidden size")
    parser.add_argument("--vocab-size", type=int, default=32000, help="rows of the input embedding")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--shard-size", default="500MB", help="max_shard_size for save_pretrained")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per load measurement")
    parser.add_argument("--texts", type=int, default=20000, help="synthetic captions for the prior rate")
    parser.add_argument("--batch-size", type=int, default=1000, help="texts per text_priors call")
    parser.add_argument("--slots", type=int, default=8, help="prior slots K")
    parser.add_argument("--child", choices=[*LOADS, "rate"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def run_measurement(arguments: argparse.Namespace) -> dict[str, float]:
    """Run the measurement that `--child` names, in this process."""
    if arguments.child == "single":
        return measure_single_tensor(arguments.folder)
    if arguments.child in ("full", "full-read"):
        return measure_full_model(arguments.folder, read_every_weight=arguments.child == "full-read")
    return measure_prior_rate(arguments.folder, arguments.texts, arguments.batch_size, arguments.slots)


def main() -> None:
    arguments = parse_arguments()
    if arguments.child:
        print(json.dumps(run_measurement(arguments)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-prior-") as temporary:
        folder = Path(temporary) / "llama"
        start = time.perf_counter()
        parameters = write_checkpoint(
            folder, arguments.hidden_size, arguments.vocab_size, arguments.layers, arguments.shard_size
        )
        print(f"wrote the checkpoint in {time.perf_counter() - start:.1f} s", file=sys.stderr)

        results = {measurement: run_child_median(measurement, folder, arguments) for measurement in LOADS}
        results["rate"] = run_child("rate", folder, arguments)
        print_report(arguments, folder, parameters, results)


if __name__ == "__main__":
    main()
