"""The `rsflow` command: one thin command per verb; the work lives in the library."""

from __future__ import annotations

from typing import Annotated

import typer

from rsflow.cli.ask import ask
from rsflow.cli.common import setup_logging
from rsflow.cli.eval import app as eval_app
from rsflow.cli.export import export
from rsflow.cli.info import info
from rsflow.cli.ingest import ingest
from rsflow.cli.sql import sql
from rsflow.cli.texts import ingest_text, pair
from rsflow.cli.train import evaluate, train

app = typer.Typer(
    name="rsflow",
    help="Ask questions about remote-sensing imagery in plain language, with a frozen image encoder, "
    "a frozen LLM and a normalizing flow between them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    setup_logging(verbose)


app.command()(ingest)
app.command("ingest-text")(ingest_text)
app.command()(pair)
app.command()(train)
app.command()(ask)
app.command()(evaluate)
app.command()(info)
app.command()(sql)
app.command()(export)
app.add_typer(eval_app, name="eval")
