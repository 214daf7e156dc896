"""The command line: thin typer commands over the library (``fedhex-hep --help``)."""

from fedhex_hep.cli.app import app, main

__all__ = ["app", "main"]
