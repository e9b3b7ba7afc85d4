"""Measure rsflow's models at real scale: ViT-L encoder, LLaMA-2-7B-sized LLM, flow at K x 4096.

All weights are random (nothing is downloaded); the shapes are those of the real checkpoints, so
time and memory are representative. Each figure is a ratio of two runs side by side:

- encoder: chips per second of a ViT-L/16 MAE encoder (1024 wide, 24 layers, 224 px), fp32 and bf16;
- flow: training pairs per second and peak memory of `PrefixFlow` at D = 4096, Dv = 1024, K = 8;
- LLM: generation latency of a 32-layer, 4096-wide LLaMA with and without the K prefix vectors.

It needs a GPU for the full sizes (the LLM alone is 13 GB in bf16); `--small` runs every step at
toy sizes, on the CPU too, to check the script.

    python -m bench.bench_scale            # on a CUDA machine
    python -m bench.bench_scale --small    # anywhere, in seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(function, repeats: int, device: str) -> float:
    """Return the median wall time of `function()` over `repeats` runs, after one warm-up run."""
    function()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mib(device: str) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else "n/a"


def bench_encoder(small: bool, device: str, repeats: int) -> list[str]:
    from transformers import ViTMAEConfig, ViTMAEModel

    config = ViTMAEConfig(mask_ratio=0.0) if small else ViTMAEConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, mask_ratio=0.0
    )
    if small:
        config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size = 64, 2, 2, 128
    batch = 4 if small else 64
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = ViTMAEModel(config).to(device=device, dtype=dtype).eval()
        pixels = torch.randn(batch, 3, config.image_size, config.image_size, device=device, dtype=dtype)
        patches = (config.image_size // config.patch_size) ** 2
        noise = torch.arange(patches, device=device, dtype=torch.float32).expand(batch, -1)

        def forward():
            with torch.inference_mode():
                model(pixel_values=pixels, noise=noise)

        seconds = timed(forward, repeats, device)
        rows.append(f"| encoder {config.hidden_size}-wide, {dtype} | {batch / seconds:.1f} chips/s | |")
        del model
    return rows


def bench_flow(small: bool, device: str, repeats: int) -> list[str]:
    from rsflow.flow import FlowConfig, PrefixFlow

    prior_dim, embedding_dim, slots, batch = (32, 32, 4, 16) if small else (4096, 1024, 8, 64)
    flow = PrefixFlow(FlowConfig.for_dims(prior_dim, embedding_dim, slots)).to(device)
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-4)
    prior = torch.randn(batch, slots, prior_dim, device=device)
    embedding = torch.randn(batch, embedding_dim, device=device)
    lonlat = torch.tensor([[5.0, 52.0]], device=device).expand(batch, -1)

    def step():
        optimizer.zero_grad()
        loss = -flow.log_prob_prior(prior, embedding, lonlat).mean()
        loss.backward()
        optimizer.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, repeats, device)
    prefix_seconds = timed(lambda: flow.prefix(embedding[:1], lonlat[:1]), repeats, device)
    return [
        f"| flow D={prior_dim}, Dv={embedding_dim}, K={slots}, {flow.num_parameters():,} parameters: train step "
        f"(batch {batch}) | {batch / seconds:.1f} pairs/s | {peak_memory_mib(device)} |",
        f"| flow prefix for one image | {1000 * prefix_seconds:.1f} ms | |",
    ]


def bench_llm(small: bool, device: str, repeats: int) -> list[str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=1000) if small else LlamaConfig()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    prompt = torch.randint(0, config.vocab_size, (1, 128), device=device)
    embeds = model.get_input_embeddings()(prompt)
    prefix = torch.randn(1, 8, config.hidden_size, device=device, dtype=dtype)
    rows = []
    for name, inputs in (("without prefix", embeds), ("with 8 prefix vectors", torch.cat([prefix, embeds], dim=1))):
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=device)

        def generate():
            with torch.inference_mode():
                model.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=32, do_sample=False,
                               min_new_tokens=32, pad_token_id=0)

        seconds = timed(generate, repeats, device)
        rows.append(f"| LLM {config.num_hidden_layers} layers x {config.hidden_size}, 128-token prompt {name}: "
                    f"32 new tokens | {1000 * seconds:.0f} ms | {peak_memory_mib(device)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="toy sizes, to check the script on any machine")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.small and device != "cuda":
        parser.error("the full sizes need a CUDA GPU; use --small to check the script here")

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}\n")
    print("| what | rate or time | peak GPU memory |")
    print("| --- | ---: | ---: |")
    for bench in (bench_encoder, bench_flow, bench_llm):
        for row in bench(args.small, device, args.repeats):
            print(row, flush=True)


if __name__ == "__main__":
    main()
