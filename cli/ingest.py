"""`rsflow ingest`: imagery folders into the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsflow.cli.common import (
    EXIT_PARTIAL,
    JsonOption,
    StoreOption,
    console,
    parse_int_list,
    parse_range,
    print_json,
    progress_bar,
    reported_errors,
    store_path,
)


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    store: StoreOption = None,
    encoder: Annotated[
        str | None,
        typer.Option(help="Image encoder: Hugging Face hub id or local folder of a ViTMAE-style checkpoint. "
                     "Default: the store's encoder."),
    ] = None,
    chip_size: Annotated[int | None, typer.Option(help="Chip width and height in pixels. Default: the encoder's image size.")] = None,
    stride: Annotated[int | None, typer.Option(help="Pixels between chip origins. Default: the chip size (no overlap).")] = None,
    edge: Annotated[str, typer.Option(help="Edge chips that do not fit: 'pad' (with nodata) or 'drop'.")] = "pad",
    bands: Annotated[str | None, typer.Option(help="1-based bands to read, in encoder channel order, e.g. 4,3,2.")] = None,
    value_range: Annotated[
        str | None,
        typer.Option(help="LOW,HIGH raw values mapped to 0 and 1 for every band (e.g. 0,10000 for Sentinel-2). "
                     "Default: uint8 / 255, other types a 2-98 percentile stretch per image."),
    ] = None,
    h3_resolution: Annotated[int | None, typer.Option(help="H3 resolution of the cells; only when creating a store. Default: 7.")] = None,
    batch_size: Annotated[int, typer.Option(help="Chips per encoder forward pass.")] = 32,
    commit_every: Annotated[int, typer.Option(help="Chips per store commit; an interrupted ingest loses at most this many.")] = 2048,
    device: Annotated[str | None, typer.Option(help="Torch device for the encoder. Default: cuda, then mps, then cpu.")] = None,
    rsvqa: Annotated[
        Path | None,
        typer.Option(help="RSVQA dataset folder whose images JSON places its images (PNG or TIFF) on the map."),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first rejected file instead of going on.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Cut images into chips, embed them with the frozen encoder and store them by place.

    Walks files and folders for GeoTIFF/COG (.tif, .tiff) and JPEG/PNG files; other files are
    counted and skipped. A second ingest of the same files adds nothing, and a rerun after an
    interrupted ingest completes it. Exit status: 0 when every image was stored, 3 when some files
    were rejected (the rest is stored), 1 on an error that stopped the ingest.
    """
    from rsflow.encoders import ImageEncoder
    from rsflow.ingest import IngestOptions
    from rsflow.store.db import Store

    options = IngestOptions(
        chip_size=chip_size,
        stride=stride,
        edge=edge,
        bands=parse_int_list(bands, "--bands"),
        value_range=parse_range(value_range, "--value-range"),
        batch_size=batch_size,
        commit_every=commit_every,
        strict=strict,
    )
    if edge not in ("pad", "drop"):
        raise typer.BadParameter(f"{edge!r} is not 'pad' or 'drop'.", param_hint="--edge")

    with reported_errors():
        if encoder is None and not (store_path(store) / "manifest.json").is_file():
            raise typer.BadParameter("the store is new, so name its encoder with --encoder.", param_hint="--encoder")
        opened = Store.open_or_create(store_path(store), h3_resolution)
        if encoder is None:
            if opened.manifest.encoder is None:
                raise typer.BadParameter("the store has no encoder yet; name one with --encoder.", param_hint="--encoder")
            encoder = opened.manifest.encoder["model_id"]
        if rsvqa is not None:
            options.georefs = _rsvqa_georefs(rsvqa)
        model = ImageEncoder.load(encoder, device)
        report = _run(opened, paths, model, options)

    if json_output:
        print_json(report.to_dict())
    else:
        _print_report(report)
    if report.files_rejected:
        raise typer.Exit(EXIT_PARTIAL)


def _rsvqa_georefs(dataset_dir: Path) -> dict:
    from rsflow.rsvqa import image_georefs, load_rsvqa

    return image_georefs(load_rsvqa(dataset_dir, split=None))


def _run(opened, paths, model, options):
    from rsflow.ingest import ingest_images

    with progress_bar("ingest") as progress:
        task = progress.add_task("files", total=None, status="")
        counts = {"files": 0, "chips": 0}

        def on_event(event: str, data: dict) -> None:
            if event == "start":
                progress.update(task, total=data["files"])
            elif event == "file":
                if counts["files"]:
                    progress.advance(task)
                counts["files"] += 1
                progress.update(task, status=Path(data["path"]).name)
            elif event == "chip":
                counts["chips"] += 1
                progress.update(task, status=f"{Path(data['path']).name}: {counts['chips']} chips")
            elif event == "done":
                progress.update(task, completed=counts["files"])

        return ingest_images(opened, paths, model, options, on_event)


def _print_report(report) -> None:
    console.print(
        f"{_count(report.files_read, 'file')} read, {_count(report.chips_written, 'chip')} written, "
        f"{_count(report.chips_already_stored, 'chip')} and {_count(report.files_already_stored, 'file')} "
        "already stored."
    )
    for reason, count in report.chips_skipped.items():
        if count:
            console.print(f"{_count(count, 'chip')} skipped: {reason}")
    for suffix, count in report.files_not_images.items():
        console.print(f"{_count(count, suffix + ' file')} skipped (not an image)")
    for message in report.warnings:
        console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    if report.pairing:
        pairing = report.pairing
        console.print(f"{pairing['pairs_total']} pairs after re-pairing with the stored texts.")
    for rejected in report.files_rejected:
        console.print(f"[red]rejected:[/] {rejected['reason']}", highlight=False, soft_wrap=True)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
