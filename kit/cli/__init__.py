"""The ``kit`` command line: thin commands over library functions."""

from __future__ import annotations

import typer

from kit.cli import blend, bundle, check, data_tools, import_data, predict, runs, stack, submit, sweep, synth, train

app = typer.Typer(
    name="kit",
    help="Kaggle competition kit for dense facial landmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
for module in (synth, import_data, check, data_tools, train, predict, blend, stack, submit, sweep, runs, bundle):
    module.register(app)


def main() -> None:
    app()
