"""Errors that the CLI turns into one-line messages.

`EdgeftError` is a user mistake or an unmet precondition (exit code 2); the CLI prints
its message alone, without a traceback. `RefusedError` is one engine (format × precision)
that failed validation or could not be made: the export records it and goes on with the others.
"""
from __future__ import annotations


class EdgeftError(Exception):
    """A user-facing error: one line that says what is wrong and what to do."""

    exit_code = 2


class DataError(EdgeftError):
    """The image data cannot be used as given."""


class WeightsError(EdgeftError):
    """Model weights cannot be found, loaded or matched."""


class ConfigError(EdgeftError):
    """An option or config file value is invalid."""


class Interrupted(EdgeftError):
    """The user stopped the command (Ctrl-C); the message says how to continue it."""

    exit_code = 130  # 128 + SIGINT, as shells report it


class RefusedError(EdgeftError):
    """One engine (format × precision) failed validation or its quantiser failed; the others go on."""


class StrictError(EdgeftError):
    """`--strict`: some engine was refused although every format has one that passed."""

    exit_code = 4
