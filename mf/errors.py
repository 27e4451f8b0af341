"""Errors meant for users: each names the file or field, the value found and what was expected."""

from __future__ import annotations


class MFError(Exception):
    """Base class for every error the project raises about a user's input or environment."""


class DataError(MFError):
    """A ratings file, archive or data set name that cannot be read as MovieLens ratings."""


class ConfigError(MFError):
    """A configuration key or value (YAML, CLI, search space) that breaks a rule."""
