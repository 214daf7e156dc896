"""The one base class of every error fedhex-hep raises.

Catch ``FedhexError`` to handle any failure of the package (bad config, bad input file, broken
model directory, ...). Each error's message is one line naming the file, key or branch at fault.
The command line prints that line and exits with the error's ``exit_code``: 2 for a usage error
(a bad configuration key or command-line option, see :class:`UsageError`), 1 for a failure at
run time (an unreadable file, a lost connection, a diverging training).

>>> from fedhex_hep.errors import FedhexError, UsageError
>>> from fedhex_hep.config import ConfigError
>>> issubclass(ConfigError, UsageError) and issubclass(UsageError, FedhexError)
True
>>> ConfigError("x").exit_code, FedhexError("x").exit_code
(2, 1)
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FedhexError", "UsageError", "closest_match", "did_you_mean", "one_line", "suggestion_hint"]


class FedhexError(Exception):
    """Base class of every fedhex-hep error: one line naming the file, key or branch at fault."""

    #: process exit status of the command line: 2 for usage errors (bad config or option), 1 otherwise
    exit_code: int = 1

    def __str__(self) -> str:
        # one line, whatever a wrapped library put into the text
        text = super().__str__()
        return " ".join(part.strip() for part in text.splitlines() if part.strip()) if "\n" in text or "\r" in text else text


class UsageError(FedhexError):
    """The user asked for something invalid (config key, option, expression): exit status 2."""

    exit_code = 2


def one_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of an exception's message (its type name when empty), at most ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def closest_match(name: str, known: Iterable[str]) -> str:
    """The known name closest to ``name`` (difflib's ratio >= 0.6), or an empty string."""
    import difflib

    match = difflib.get_close_matches(name, sorted(known), n=1)
    return match[0] if match else ""


def suggestion_hint(match: str, prefix: str = "") -> str:
    """`` (did you mean 'X'?)`` for a suggestion ``match`` (``prefix`` put before it), or an
    empty string when there is none."""
    return f" (did you mean {prefix + match!r}?)" if match else ""


def did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'X'?)`` for the known name closest to ``name`` (``prefix`` put before
    it, e.g. a config section), or an empty string."""
    return suggestion_hint(closest_match(name, known), prefix)
