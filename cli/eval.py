"""`rsflow eval rsvqa`: the RSVQA benchmark through the `rsflow ask` pipeline, per question type and ablation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rsflow.cli.common import JsonOption, StoreOption, console, print_json, progress_bar, reported_errors, stdout, store_path

app = typer.Typer(help="Measure rsflow on public benchmarks.", no_args_is_help=True)


@app.command()
def rsvqa(
    dataset_dir: Annotated[Path, typer.Argument(help="RSVQA folder in its published layout (see docs/rsvqa.md).")],
    store: StoreOption = None,
    split: Annotated[
        str | None, typer.Option(help="Split: train, val, test (HR also test_phili). Leave out for a website subset.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Ask only the first N questions (by image, then question id).")] = None,
    ablation: Annotated[
        list[str] | None,
        typer.Option(help="Ablations to run (repeatable): llm, retrieval, prefix, both, candidates. Default: all."),
    ] = None,
    count_bins: Annotated[
        bool | None, typer.Option("--count-bins/--exact-counts", help="Score counts in bins. Default: bins for LR, exact for HR.")
    ] = None,
    chip_size: Annotated[int | None, typer.Option(help="Chip size for tiling the images. Default: the encoder's image size.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum length of a generated answer, in tokens.")] = 16,
    cache: Annotated[Path | None, typer.Option(help="JSON Lines file of answers, for resuming. Default: STORE/eval/.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the markdown table here and the JSON beside it (.json).")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device for the encoder.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Ask every question of an RSVQA split and report accuracy per question type, AA and OA.

    Runs each ablation (the LLM alone, with retrieved text, with the flow prefix, with both, and the
    flow's candidate scoring alone), caches every answer so that an interrupted run resumes, and maps
    free-form answers to the benchmark's vocabulary as docs/rsvqa.md describes.
    """
    from rsflow.ask import AskError, Asker
    from rsflow.rsvqa_eval import ABLATIONS, EvalSettings, evaluate_rsvqa, format_report
    from rsflow.store.db import Store

    settings = EvalSettings(split=split, limit=limit, ablations=tuple(ablation or ABLATIONS), count_bins=count_bins,
                            chip_size=chip_size, max_new_tokens=max_new_tokens)
    with reported_errors((AskError, ValueError)):
        asker = Asker(Store.open(store_path(store)), device=device)
        with progress_bar("rsvqa") as progress:
            task = progress.add_task("questions", total=None, status="")

            def on_event(event: str, data: dict) -> None:
                if event == "start":
                    progress.update(task, total=data["questions"], status=f"{data['cached']} answers cached")
                elif event == "question":
                    progress.advance(task)

            report = evaluate_rsvqa(asker, dataset_dir, settings, cache=cache, progress=on_event)

    table = format_report(report)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table + "\n")
        output.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if json_output:
        print_json(report)
    else:
        stdout.print(table, highlight=False)
