"""`rsflow ask`: a question about an image, answered by the frozen LLM with the image's evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsflow.cli.common import (
    JsonOption,
    StoreOption,
    console,
    parse_int_list,
    parse_range,
    print_json,
    reported_errors,
    stdout,
    store_path,
)


def ask(
    image: Annotated[Path, typer.Argument(help="The image: GeoTIFF, COG, JPEG or PNG.")],
    question: Annotated[str, typer.Argument(help="The question, in plain language.")],
    store: StoreOption = None,
    top_k: Annotated[int, typer.Option(help="Nearest stored chips to look up.")] = 5,
    context_texts: Annotated[int, typer.Option(help="Ranked texts put into the prompt.")] = 5,
    no_prefix: Annotated[bool, typer.Option("--no-prefix", help="Leave out the flow's image prefix (ablation).")] = False,
    no_retrieval: Annotated[bool, typer.Option("--no-retrieval", help="Leave out neighbours and texts (ablation).")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum answer length, in tokens.")] = 32,
    chip_size: Annotated[int | None, typer.Option(help="Chip size for tiling the image. Default: the encoder's image size.")] = None,
    bands: Annotated[str | None, typer.Option(help="1-based bands to read, e.g. 4,3,2.")] = None,
    value_range: Annotated[str | None, typer.Option(help="LOW,HIGH raw values mapped to 0 and 1, as in ingest.")] = None,
    rsvqa: Annotated[Path | None, typer.Option(help="RSVQA dataset folder whose images JSON places the image on the map.")] = None,
    ranker: Annotated[str | None, typer.Option(help="sentence-transformers model ranking the texts. Default: all-MiniLM-L6-v2.")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device for the encoder.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Answer a question about an image with the store's frozen encoder and LLM and the trained flow.

    The answer comes with its evidence: the nearest stored chips, the texts used, and for a closed
    question (yes/no, a count, a land-use class) the flow's score of each candidate answer. A store
    without a trained flow answers with retrieval alone and says so.
    """
    from rsflow.ask import AskError, AskOptions, Asker
    from rsflow.store.db import Store

    with reported_errors((AskError, ValueError)):
        options = AskOptions(
            top_k=top_k, context_texts=context_texts, use_prefix=not no_prefix, use_retrieval=not no_retrieval,
            max_new_tokens=max_new_tokens, chip_size=chip_size, bands=parse_int_list(bands, "--bands"),
            value_range=parse_range(value_range, "--value-range"), georef=_georef(image, rsvqa),
        )
        asker = Asker(Store.open(store_path(store)), device=device, ranker=ranker)
        with console.status("asking"):
            answer = asker.ask(image, question, options)

    if json_output:
        print_json(answer.to_dict())
        return
    _print_answer(answer)


def _georef(image: Path, rsvqa: Path | None):
    if rsvqa is None:
        return None
    from rsflow.rsvqa import image_georefs, load_rsvqa

    georefs = image_georefs(load_rsvqa(rsvqa))
    found = georefs.get(str(image.resolve()))
    if found is None:
        raise ValueError(f"{image}: not an image of the RSVQA dataset in {rsvqa}.")
    return found


def _print_answer(answer) -> None:
    stdout.print(f"[bold]Q:[/] {answer.question}", highlight=False)
    stdout.print(f"[bold]A:[/] {answer.answer or '(empty answer)'}", highlight=False)
    if answer.candidates:
        # Summed over K x D dimensions, log-likelihoods differ by tens of nats, so a softmax saturates, and
        # the differences are more informative.
        best = answer.candidates[0]["log_likelihood"]
        scored = ", ".join(f"{c['answer']} {c['log_likelihood'] - best:+.1f}" for c in answer.candidates[:5])
        stdout.print(f"flow's candidate log-likelihoods, relative to the best: {scored}", highlight=False)
    if answer.location:
        stdout.print(f"image centre: {answer.location['lon']:.5f}, {answer.location['lat']:.5f} "
                     f"(cell {answer.location['cell']})", highlight=False)
    for n in answer.neighbours:
        stdout.print(f"  neighbour {n['rank']}: {Path(n['source']).name} chip at "
                     f"({n['window']['col']}, {n['window']['row']}), distance {n['distance']:.4f}", highlight=False)
    for c in answer.context:
        stdout.print(f"  context ({c['found_by']}, {c['score']:.2f}): {c['text']}", highlight=False)
    for note in answer.notes:
        stdout.print(f"[yellow]note:[/] {note}", highlight=False)
    models = answer.models
    stdout.print(f"models: encoder {models['encoder']}, LLM {models['llm']}, ranker {models['ranker']}", highlight=False)
