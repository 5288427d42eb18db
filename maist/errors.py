"""Errors that a user's input causes: each prints as one line that names the file or setting and
the fix (``train.py`` and the model commands exit with code 2), never a traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (a file, a setting); the message says what and how to fix it."""


class ConfigError(UserError):
    """A configuration value that cannot work (``data.batch_size=0``, a negative rate, …)."""


class CheckpointError(UserError):
    """A checkpoint that is missing or cannot be used; the message names the file."""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (for wrapping another library's error)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class UsageError(UserError):
    """Bad command-line arguments of a model command (``maist.predict`` and the others)."""


def user_error(err: BaseException) -> BaseException | None:
    """The user-input error behind ``err`` (Hydra wraps errors raised while instantiating a config
    in its own exception): a :class:`UserError` (ETL format errors are ones) or a missing file;
    else ``None``."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (UserError, FileNotFoundError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
