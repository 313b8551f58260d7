"""Errors a user can act on, and the one place that turns them into a clean exit.

An *expected* error is bad input, a missing file, a bad param or an incompatible checkpoint: a
`UserError` (every reader's error class derives from it) or an `OSError` that names its file. Stage
scripts and CLI commands wrap their entry point with `clean_errors`, which prints such an error as
one line naming the thing and exits non-zero, without a traceback. `--debug` or `DIYSC_DEBUG=1`
shows the traceback; anything else (a bug) always does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

DEBUG_ENV = "DIYSC_DEBUG"


class UserError(Exception):
    """An error the user can fix from its message, which names the file, key or setting."""


# File-system errors a user fixes (a missing input, a read-only output folder); other OSErrors only
# when they name their file.
FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_expected(err: BaseException) -> bool:
    return isinstance(err, (UserError, *FILE_ERRORS)) or (
        isinstance(err, OSError) and err.filename is not None
    )


def one_line(err: BaseException) -> str:
    """The error's message on one line; an OSError as `<file>: <reason>`."""
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command's function (directly above `def`): adds `--debug`, and turns an
    expected error into `Error: <one line>` with exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as err:
            if debug or not is_expected(err):
                raise
            raise click.ClickException(one_line(err)) from None

    return click.option(
        "--debug",
        is_flag=True,
        envvar=DEBUG_ENV,
        help=f"Show the traceback of an error (also {DEBUG_ENV}=1).",
    )(wrapper)
