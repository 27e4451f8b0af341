"""Command-line flags generated from `TrainConfig`, so each key is declared once (in mf/config.py)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from mf.config import KEYS, TrainConfig, doc, from_dict, parse_value, read_values


def flag(name: str) -> str:
    """The command-line flag of config key `name`: `--` and dashes for underscores (`val_n` -> `--val-n`)."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = ()) -> None:
    """Add `--config FILE` plus one `--key` flag per config key; unset flags stay out of the namespace.

    Flag values are kept as the strings given: `explicit_keys` parses and checks them.

    Args:
        parser: the parser to add them to (in place).
        exclude: config keys that get no flag (a CLI that sets them itself).
    """
    parser.add_argument("--config", type=Path, help="YAML file of config keys (see mf/config.py)")
    group = parser.add_argument_group("config keys (override --config)")
    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        group.add_argument(
            flag(f.name),
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=(f.type.split("|")[0].strip() if f.default is None else type(f.default).__name__).upper(),
            help=f"{doc(f.name)} (default {f.default!r})",
        )


def explicit_keys(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the user set, from --config and the flags, flags winning.

    Args:
        args: a namespace parsed by a parser that `add_config_flags` set up.

    Returns:
        The keys set and their values (a flag's string parsed by `parse_value`); keys not set are
        absent, so that they keep their defaults.

    Raises:
        ConfigError: where the --config file cannot be read, is not YAML, or sets an unknown key or
            a bad value (the flags' values are checked later, by `from_dict`).
    """
    values = read_values(args.config) if getattr(args, "config", None) else {}
    values.update({k: parse_value(k, getattr(args, k)) for k in KEYS if k in vars(args)})
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the command line: defaults < `--config FILE` < the per-key flags.

    Raises:
        ConfigError: as `explicit_keys`, or where a flag's value breaks its key's rule.
    """
    return from_dict(explicit_keys(args), where="command line")
