"""`rsflow ingest-text` and `rsflow pair`: geo-located text into the store, paired with chips by place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsflow.cli.common import (
    EXIT_PARTIAL,
    JsonOption,
    StoreOption,
    console,
    parse_id_ranges,
    print_json,
    progress_bar,
    reported_errors,
    store_path,
)


def ingest_text(
    paths: Annotated[list[Path], typer.Argument(help="Text sources: JSONL, CSV, GeoJSON, GeoPackage, RSICD captions, "
                                                     "RSVQA folders or class-named image folders.")],
    store: StoreOption = None,
    llm: Annotated[
        str | None,
        typer.Option(help="Causal LLM whose input embeddings make the priors: hub id or local folder. "
                     "Default: the store's LLM."),
    ] = None,
    prefix_slots: Annotated[
        int | None,
        typer.Option(help="K, the prefix slots each prior is pooled into; only for the first text ingest. Default: 8."),
    ] = None,
    text_field: Annotated[str | None, typer.Option(help="Field that holds the text (default 'text').")] = None,
    text_fields: Annotated[
        str | None,
        typer.Option(help="Comma-separated fields joined into the text as 'name=value; ...' (for example OSM tags)."),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Kind of every text: caption, label, question-answer or map feature.")] = None,
    layout: Annotated[str, typer.Option(help="Source layout; 'auto' detects it from the file.")] = "auto",
    split: Annotated[str | None, typer.Option(help="RSVQA split to read (train, val, test).")] = None,
    rsvqa_images: Annotated[
        str | None,
        typer.Option(help="RSVQA image ids whose questions to read, e.g. 0-15 or 1,4,9 (to hold images out)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Store geo-located texts as LLM token-embedding priors and pair them with chips by place.

    Only the LLM's input-embedding matrix is read. Rows that cannot be used (malformed lines,
    missing or out-of-range coordinates, invalid geometry, empty text) are reported with their line
    and skipped. Exit status: 0 all stored, 3 some rows rejected, 1 stopped by an error.
    """
    from rsflow.store.db import Store
    from rsflow.textingest import ensure_llm, ingest_texts
    from rsflow.texts import TextSourceError

    fields = [f.strip() for f in text_fields.split(",")] if text_fields else None
    with reported_errors((TextSourceError, ValueError)):
        opened = Store.open_or_create(store_path(store))
        embeddings = ensure_llm(opened, llm, prefix_slots)
        with progress_bar("texts") as progress:
            task = progress.add_task("texts", total=None, status="")

            def on_event(event: str, data: dict) -> None:
                if event == "source":
                    progress.update(task, status=Path(data["path"]).name)
                elif event == "texts":
                    progress.advance(task, data["count"])

            report = ingest_texts(
                opened, paths, embeddings, text_field=text_field, text_fields=fields, kind=kind,
                layout=layout, split=split, image_ids=parse_id_ranges(rsvqa_images, "--rsvqa-images"),
                progress=on_event,
            )

    if json_output:
        print_json(report.to_dict())
    else:
        console.print(
            f"{report.texts_read} texts read from {report.sources} source{'s' if report.sources != 1 else ''}, "
            f"{report.texts_written} written, "
            f"{report.texts_already_stored} already stored; {report.texts_placed_by_image} placed by their image, "
            f"{report.texts_without_place} without place."
        )
        _print_pairing(report.pairing)
        for line in report.repaired:
            console.print(f"[yellow]repaired:[/] {line}", highlight=False, soft_wrap=True)
        for line in report.warnings:
            console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
        for line in report.rejected:
            console.print(f"[red]rejected:[/] {line}", highlight=False, soft_wrap=True)
    if report.rejected:
        raise typer.Exit(EXIT_PARTIAL)


def pair(store: StoreOption = None, json_output: JsonOption = False) -> None:
    """Recompute the pairs of texts and chips: same image, intersecting geometry, or same H3 cell."""
    from rsflow.store.db import Store
    from rsflow.store.pairs import pair_store

    with reported_errors((ValueError,)):
        report = pair_store(Store.open(store_path(store)))
    if json_output:
        print_json(report.to_dict())
    else:
        _print_pairing(report.to_dict())


def _print_pairing(pairing: dict) -> None:
    if not pairing:
        return
    by_rule = ", ".join(f"{count} by {how}" for how, count in pairing["pairs"].items())
    console.print(
        f"{pairing['pairs_total']} pairs ({by_rule}); {pairing['chips_without_text']} chips without text, "
        f"{pairing['texts_without_chip']} texts without chip."
    )
