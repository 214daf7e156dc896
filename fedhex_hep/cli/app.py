"""The ``fedhex-hep`` command line: one verb per pipeline step, each a thin layer over a function.

Each command group lives in its own module (data, model, generation, results, run); this module
holds the typer app, the global options and the one error path of ``main()``. Only typer and the
config module are imported at start-up; TensorFlow, coffea and plotting are imported inside the
command that needs them, so ``fedhex-hep --help`` answers at once.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated, Any

import typer

from fedhex_hep import __version__
from fedhex_hep.cli import config, data, generation, model, results, run
from fedhex_hep.errors import FedhexError

app = typer.Typer(
    name="fedhex-hep",
    help="Generate signal MC at any mass point with a conditional normalizing flow "
    "(extract -> train -> generate -> export/compare/validate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# the commands, in the order --help lists them
app.command("make-samples")(data.make_samples_cmd)
app.command("extract")(data.extract_cmd)
app.command("train")(model.train_cmd)
app.command("generate")(generation.generate_cmd)
app.command("datacard")(generation.datacard_cmd)
app.command("export")(results.export_cmd)
app.command("compare")(results.compare_cmd)
app.command("validate")(results.validate_cmd)
app.command("run")(run.run_cmd)
app.add_typer(config.config_app, name="config")


_VERBOSE = [False]  # set by the --verbose option; main() then prints tracebacks too


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fedhex-hep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    import os

    from rich.logging import RichHandler

    if verbose:  # TensorFlow's own start-up and device messages too
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    _VERBOSE[0] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("tensorflow", "absl", "distributed", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.showwarning = _warning_as_log_line


def _warning_as_log_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None
) -> None:
    """Show a Python warning as one log line, like the rest of the command's messages."""
    if issubclass(category, UserWarning):
        logging.getLogger("fedhex_hep").warning("%s", message)
    else:
        logging.getLogger("fedhex_hep").warning("%s: %s", category.__name__, message)


def main() -> None:
    """Console-script entry point: every error is one line naming its culprit, no traceback.

    A package error exits with its ``exit_code`` (2: bad config or option, 1: run-time failure);
    an operating-system error names its file and exits 1; ``--verbose`` adds the traceback.
    """
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Usage errors of typer's (vendored) click: print its usual message, not a traceback.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        _report(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _describe(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) of any exception that reaches the command line."""
    from fedhex_hep.errors import one_line

    if isinstance(exc, FedhexError):
        return one_line(exc), exc.exit_code
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or one_line(exc)}", 1
    if isinstance(exc, MemoryError):
        return "out of memory (MemoryError); use smaller sizes or generate in parts", 1
    if isinstance(exc, UnicodeError):
        return f"text encoding problem ({one_line(exc)}); set LANG=C.UTF-8 for non-ASCII paths", 1
    return f"unexpected {type(exc).__name__}: {one_line(exc)} (run with --verbose for the traceback)", 1


def _report(exc: BaseException) -> None:
    message, code = _describe(exc)
    if _VERBOSE[0]:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
