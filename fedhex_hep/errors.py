"""The one base class of every error fedhex-hep raises.

Catch ``FedhexError`` to handle any failure of the package (bad config, bad input file, broken
model directory, ...). Each error's message is one line naming the file, key or branch at fault.

>>> from fedhex_hep.errors import FedhexError
>>> from fedhex_hep.config import ConfigError
>>> issubclass(ConfigError, FedhexError)
True
"""

from __future__ import annotations


class FedhexError(Exception):
    """Base class of every fedhex-hep error: one line naming the file, key or branch at fault."""

    #: process exit status of the command line: 2 for usage errors (bad config or option), 1 otherwise
    exit_code: int = 1
