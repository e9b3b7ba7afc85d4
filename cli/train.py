"""`rsflow train` and `rsflow evaluate`: the flow bridge on the store's pairs, against its baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsflow.cli.common import JsonOption, StoreOption, console, print_json, progress_bar, reported_errors, stdout, store_path


def train(
    store: StoreOption = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Pairs per optimizer step (each pair is K rows of the flow).")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate of AdamW (cosine schedule).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialization and the shuffling.")] = 0,
    validation_fraction: Annotated[float, typer.Option(help="Share of H3 cells held out for validation.")] = 0.2,
    location_dropout: Annotated[
        float | None, typer.Option(help="Probability of dropping a pair's location in training. Default: the flow's (0.2).")
    ] = None,
    transforms: Annotated[int | None, typer.Option(help="Coupling transforms of the flow. Default: scaled with the LLM width.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint instead of starting over.")] = False,
    device: Annotated[str, typer.Option(help="Torch device: auto (CUDA when present), cpu, cuda, ...")] = "auto",
    json_output: JsonOption = False,
) -> None:
    """Train the normalizing flow from image embeddings to LLM prefix vectors on the store's pairs.

    Reads pairs from the Lance tables in batches, holds out whole H3 cells for validation, keeps the
    best checkpoint by validation likelihood and fits the ridge-regression baseline on the same
    pairs. The flow is saved in the store's flow/ folder.
    """
    from rsflow.bridge import train_store
    from rsflow.store.db import Store
    from rsflow.train import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                         location_dropout=location_dropout, device=device)
    overrides = {"transforms": transforms} if transforms else None
    with reported_errors((ValueError, FileExistsError)):
        opened = Store.open(store_path(store))
        with progress_bar("train") as progress:
            task = progress.add_task("epochs", total=epochs, status="")

            def on_step(step: dict) -> None:
                progress.update(task, completed=step["epoch"], status=f"epoch {step['epoch'] + 1}: "
                                f"{step['bits_per_dim']:.3f} bits/dim")

            training = train_store(opened, config, resume=resume, validation_fraction=validation_fraction,
                                   flow_overrides=overrides, on_step=on_step)
            progress.update(task, completed=epochs)

    summary = training.to_dict()
    if json_output:
        print_json(summary)
        return
    console.print(
        f"{summary['train_pairs']} training pairs, {summary['validation_pairs']} held out in "
        f"{summary['validation_cells']} cells; {summary['num_parameters']:,} flow parameters."
    )
    if summary["validation_bits_per_dim"]:
        best = summary["best_epoch"]
        console.print(f"best epoch {best}: {summary['validation_bits_per_dim'][best - 1]:.4f} bits/dim held out.")


def evaluate(
    store: StoreOption = None,
    candidates: Annotated[int, typer.Option(help="Texts each held-out pair's true text is ranked among.")] = 100,
    max_queries: Annotated[int, typer.Option(help="Held-out pairs used as retrieval queries (a seeded sample).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the query sample and the distractors.")] = 0,
    output: Annotated[Path | None, typer.Option(help="Also write the markdown table to this file.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Score the flow and its baselines on the held-out cells: bits per dimension and Recall@1/5/10.

    Baselines on the same pairs: a ridge-regression map from image embedding to prior, the prior of
    the nearest training image's text, and chance.
    """
    from rsflow.bridge import NoFlowError, evaluate_store, format_evaluation
    from rsflow.store.db import Store

    with reported_errors((ValueError, NoFlowError)):
        report = evaluate_store(Store.open(store_path(store)), candidates=candidates, max_queries=max_queries, seed=seed)
    table = format_evaluation(report)
    if output is not None:
        output.write_text(table + "\n")
    if json_output:
        print_json(report)
    else:
        stdout.print(table, highlight=False)
