"""Command-line flags generated from `TrainConfig`, so each key is declared once (in mf/config.py)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from mf.config import KEYS, TrainConfig, doc, from_dict, parse_value, read_values


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = ()) -> None:
    """`--config FILE` plus one `--key` flag per config key; unset flags stay out of the namespace."""
    parser.add_argument("--config", type=Path, help="YAML file of config keys (see mf/config.py)")
    group = parser.add_argument_group("config keys (override --config)")
    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        group.add_argument(
            flag(f.name),
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar="INT" if f.default is None else type(f.default).__name__.upper(),
            help=f"{doc(f.name)} (default {f.default!r})",
        )


def explicit_keys(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the user set, from --config and the flags, flags winning."""
    values = read_values(args.config) if getattr(args, "config", None) else {}
    values.update({k: parse_value(k, getattr(args, k)) for k in KEYS if k in vars(args)})
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return from_dict(explicit_keys(args), where="command line")
