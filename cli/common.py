"""What every command shares: the store option, errors as exit codes, JSON output, progress bars."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

# The Lance writer logs a warning for every table it creates; rsflow reports what matters itself.
os.environ.setdefault("LANCE_LOG", "error")

# soft_wrap: lines piped to a file or grep stay whole instead of breaking at 80 columns.
console = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)

EXIT_FAILED = 1
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Store folder (a LanceDB database). Default: $RSFLOW_STORE, else ./rsflow-store.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]


def store_path(store: Path | None) -> Path:
    from rsflow.store.db import default_store_dir

    return store if store is not None else default_store_dir()


def known_errors() -> tuple[type[BaseException], ...]:
    """Return the error types that end a command with a message instead of a traceback."""
    from rsflow.encoders import EncoderError
    from rsflow.hub import ModelNotFoundError
    from rsflow.ingest import IngestError
    from rsflow.raster import RasterError
    from rsflow.store.db import StoreError
    from rsflow.store.manifest import StoreMismatchError

    return (RasterError, StoreError, StoreMismatchError, ModelNotFoundError, EncoderError, IngestError, FileNotFoundError)


@contextmanager
def reported_errors(extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn the library's errors into one line on stderr and exit status 1."""
    try:
        yield
    except known_errors() + extra as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        console.print("interrupted; what was committed is kept, and the same command resumes the work.")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
        force=True,
    )


def progress_bar(description: str):
    """Return a rich progress bar on stderr, shown only on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers.", param_hint=option) from None


def parse_id_ranges(text: str | None, option: str) -> list[int] | None:
    """Parse "0-15,20,22-23" into a list of integers."""
    if text is None:
        return None
    ids: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            ids.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a list of ids and ranges such as 0-15,20.", param_hint=option) from None
    return ids


def parse_range(text: str | None, option: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not LOW,HIGH.", param_hint=option) from None
    return low, high


Callback = Callable[[str, dict], None]
