"""Errors meant for users: each names the file or field, the value found and what was expected."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class MFError(Exception):
    """Base class for every error the project raises about a user's input or environment."""


class DataError(MFError):
    """A ratings file, archive or data set name that cannot be read as MovieLens ratings."""


class ConfigError(MFError):
    """A configuration key or value (YAML, CLI, search space) that breaks a rule."""


def user_errors_exit(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a CLI's main(): a user's mistake (an MFError) becomes one `error:` line and exit code 2,
    never a traceback.

    Args:
        main: the CLI's entry point, `main(argv) -> exit code`.

    Returns:
        `main` wrapped: it returns what `main` returns, or 2 after printing `error: <message>` to
        stderr where `main` raised an MFError. Any other exception (and argparse's SystemExit)
        passes through unchanged.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except MFError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapper
