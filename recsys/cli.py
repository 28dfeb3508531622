"""The shared shape of ``python -m ... CONFIG.yaml [key=value ...]`` commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .config import ConfigError, load_config
from .data import DataError
from .experiment import ExperimentConfig


def experiment_main(
    prog: str, description: str, run: Callable, argv: list[str] | None = None
) -> int:
    """Parse a config and overrides, run, and turn user errors into one line and exit status 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="YAML config, e.g. configs/recsys/hstu-beauty.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="key=value, e.g. train.epochs=5 model.num_blocks=4"
    )
    args = parser.parse_args(argv)
    try:
        run(load_config(ExperimentConfig, args.config, args.overrides))
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
